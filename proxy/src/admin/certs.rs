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

/// The DNS SANs, then the URIs, then the IP addresses (each in certificate order), as Envoy's
/// `Utility::certificateDetails` lists them.
fn sans(d: &CertDetails) -> Vec<admin::SubjectAlternateName> {
    use admin::subject_alternate_name::Name;
    let of = |f: fn(&San) -> Option<Name>| {
        d.sans
            .iter()
            .filter_map(f)
            .map(|name| admin::SubjectAlternateName { name: Some(name) })
            .collect::<Vec<_>>()
    };
    let mut out = of(|s| match s {
        San::Dns(n) => Some(Name::Dns(n.clone())),
        _ => None,
    });
    out.extend(of(|s| match s {
        San::Uri(u) => Some(Name::Uri(u.clone())),
        _ => None,
    }));
    out.extend(of(|s| match s {
        San::Ip(a) => Some(Name::IpAddress(a.to_string())),
        _ => None,
    }));
    out
}

fn details(path: String, d: &CertDetails, now: SystemTime) -> admin::CertificateDetails {
    admin::CertificateDetails {
        path,
        serial_number: d.serial.clone(),
        subject_alt_names: sans(d),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// DNS SANs first, then URIs, as Envoy's `/certs` lists them (not the certificate's order).
    #[test]
    fn dns_sans_come_first() {
        use remora_certs::ca::{DevCa, KeyAlgorithm, LeafRequest};
        let ca = DevCa::generate_root("t", KeyAlgorithm::EcdsaP256).unwrap();
        let id = remora_certs::SpiffeId::parse("spiffe://t/ns/a/sa/b").unwrap();
        let mut req = LeafRequest::spiffe(id, std::time::Duration::from_secs(60));
        req.dns_names = vec!["b.test".into()];
        let pem = ca.issue(&req).unwrap().cert_chain_pem;
        let der = remora_certs::pem::certificates(pem.as_bytes()).unwrap();
        let d = CertDetails::parse(&der[0]).unwrap();
        use admin::subject_alternate_name::Name;
        let names: Vec<Option<Name>> = sans(&d).into_iter().map(|s| s.name).collect();
        assert_eq!(
            names,
            [
                Some(Name::Dns("b.test".into())),
                Some(Name::Uri("spiffe://t/ns/a/sa/b".into()))
            ]
        );
    }
}
