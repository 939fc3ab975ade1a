//! `/certs`: every TLS context's certificates as Envoy prints them (`envoy.admin.v3.Certificates`:
//! per context the trusted CA certificates and the certificate chain, each with its file path,
//! serial number, subject alt names, validity and days until expiration).

use crate::server::ServerState;
use envoy_types::pb::envoy::admin::v3 as admin;
use envoy_types::pb::google::protobuf::Timestamp;
use remora_certs::info::{CertDetails, San};
use remora_certs::source::{CertificateSource, TrustSource};
use std::sync::Arc;
use std::time::SystemTime;

fn timestamp(t: SystemTime) -> Timestamp {
    let (seconds, nanos) = match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos() as i32),
        Err(e) => (-(e.duration().as_secs() as i64), 0),
    };
    Timestamp { seconds, nanos }
}

fn details(path: String, d: &CertDetails, now: SystemTime) -> admin::CertificateDetails {
    use admin::subject_alternate_name::Name;
    admin::CertificateDetails {
        path,
        serial_number: d.serial.clone(),
        subject_alt_names: d
            .sans
            .iter()
            .filter_map(|s| {
                let name = match s {
                    San::Uri(u) => Name::Uri(u.clone()),
                    San::Dns(n) => Name::Dns(n.clone()),
                    San::Ip(a) => Name::IpAddress(a.to_string()),
                    _ => return None,
                };
                Some(admin::SubjectAlternateName { name: Some(name) })
            })
            .collect(),
        days_until_expiration: d.days_until_expiration(now),
        valid_from: Some(timestamp(d.not_before)),
        expiration_time: Some(timestamp(d.not_after)),
        ocsp_details: None,
    }
}

/// One context's entry: its CA bundle and its certificates (the leaf of each chain).
fn context(
    certificates: &[Arc<dyn CertificateSource>],
    trust: Option<&Arc<dyn TrustSource>>,
    now: SystemTime,
) -> admin::Certificate {
    admin::Certificate {
        ca_cert: trust
            .and_then(|t| t.current().map(|b| (t.origin(), b)))
            .map(|(origin, b)| {
                b.certs
                    .iter()
                    .map(|c| details(origin.clone(), c, now))
                    .collect()
            })
            .unwrap_or_default(),
        cert_chain: certificates
            .iter()
            .filter_map(|c| c.current().map(|id| details(c.origin(), &id.chain[0], now)))
            .collect(),
    }
}

/// Listeners' filter chains first, then clusters, as Envoy's context manager iterates.
pub fn certificates(state: &ServerState) -> admin::Certificates {
    let now = SystemTime::now();
    let mut out = Vec::new();
    for l in state.listeners.all().iter() {
        for fc in l
            .config
            .filter_chains
            .iter()
            .chain(l.config.default_filter_chain.iter())
        {
            if let Some(tls) = &fc.tls {
                out.push(context(&tls.certificates, tls.trust.as_ref(), now));
            }
        }
    }
    for c in state.clusters.all() {
        if let Some(tls) = &c.config.tls {
            out.push(context(&tls.certificates, tls.trust.as_ref(), now));
        }
    }
    admin::Certificates { certificates: out }
}
