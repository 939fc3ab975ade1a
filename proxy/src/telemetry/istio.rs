//! Istio's standard metrics: who the peers are (this workload from the bootstrap node, the
//! other side from the metadata exchange or its certificate) and the label values of the
//! `istio.stats` filter (HTTP and network), with Istio's fallbacks (`unknown`, `latest`).

use crate::model::istio_stats::{GRPC_STATUS, HTTP_LABELS, RESPONSE_CODE, Reporter};
use base64::Engine;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub const UNKNOWN: &str = "unknown";
const LATEST: &str = "latest";

/// A workload as the metadata exchange describes it (empty: absent).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peer {
    pub name: Arc<str>,
    pub workload: Arc<str>,
    pub namespace: Arc<str>,
    pub cluster: Arc<str>,
    pub identity: Arc<str>,
    pub canonical_name: Arc<str>,
    pub canonical_revision: Arc<str>,
    pub app: Arc<str>,
    pub version: Arc<str>,
    /// Every label the peer sent (the additional ones included).
    pub labels: Vec<(Box<str>, Arc<str>)>,
}

fn string_of(v: Option<&Value>) -> Arc<str> {
    match v.and_then(|v| v.kind.as_ref()) {
        Some(Kind::StringValue(s)) => s.as_str().into(),
        _ => "".into(),
    }
}

impl Peer {
    /// From the exchanged Struct (Istio's flat node: `WORKLOAD_NAME`, `LABELS`, …).
    pub fn from_struct(s: &Struct) -> Self {
        let f = |k: &str| string_of(s.fields.get(k));
        let labels: Vec<(Box<str>, Arc<str>)> =
            match s.fields.get("LABELS").and_then(|v| v.kind.as_ref()) {
                Some(Kind::StructValue(l)) => l
                    .fields
                    .iter()
                    .map(|(k, v)| (k.as_str().into(), string_of(Some(v))))
                    .collect(),
                _ => Vec::new(),
            };
        let label = |k: &str| {
            labels
                .iter()
                .find(|(n, _)| &**n == k)
                .map_or_else(|| Arc::from(""), |(_, v)| v.clone())
        };
        Self {
            name: f("NAME"),
            workload: f("WORKLOAD_NAME"),
            namespace: f("NAMESPACE"),
            cluster: f("CLUSTER_ID"),
            identity: f("IDENTITY"),
            canonical_name: label("service.istio.io/canonical-name"),
            canonical_revision: label("service.istio.io/canonical-revision"),
            app: label("app"),
            version: label("version"),
            labels,
        }
    }

    /// From the `x-envoy-peer-metadata` header (base64 of the Struct).
    pub fn from_header(value: &[u8]) -> Option<Self> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(value)
            .ok()?;
        let s: Struct = prost::Message::decode(&bytes[..]).ok()?;
        Some(Self::from_struct(&s))
    }

    /// From the TCP exchange's payload (an Any holding `{x-envoy-peer-metadata: <Struct>}`).
    pub fn from_exchange(payload: &[u8]) -> Option<Self> {
        let any: envoy_types::pb::google::protobuf::Any = prost::Message::decode(payload).ok()?;
        let outer: Struct = prost::Message::decode(&any.value[..]).ok()?;
        match outer.fields.get("x-envoy-peer-metadata")?.kind.as_ref()? {
            Kind::StructValue(s) => Some(Self::from_struct(s)),
            _ => None,
        }
    }

    pub fn label(&self, k: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| &**n == k)
            .map(|(_, v)| &**v)
    }
}

/// Decoded peers by header value: a workload talks to few peers, so a request decodes none
/// once its peer was seen (bounded: cleared when full).
#[derive(Debug, Default)]
pub struct PeerCache(Mutex<HashMap<Box<[u8]>, Arc<Peer>>>);

const PEER_CACHE_MAX: usize = 1024;

impl PeerCache {
    pub fn get(&self, header: &[u8]) -> Option<Arc<Peer>> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = map.get(header) {
            return Some(p.clone());
        }
        let peer = Arc::new(Peer::from_header(header)?);
        if map.len() >= PEER_CACHE_MAX {
            map.clear();
        }
        map.insert(header.into(), peer.clone());
        Some(peer)
    }
}

/// This workload, from the bootstrap node's metadata.
#[derive(Debug, Clone, Default)]
pub struct Local {
    pub workload: Arc<str>,
    pub namespace: Arc<str>,
    pub canonical_name: Arc<str>,
    pub canonical_revision: Arc<str>,
    pub cluster: Arc<str>,
    pub app: Arc<str>,
    pub version: Arc<str>,
    pub istio_version: Arc<str>,
}

impl Local {
    pub fn from_node(node: &crate::model::bootstrap::Node) -> Self {
        let md = &node.metadata;
        let s = |v: Option<&serde_json::Value>| -> Arc<str> {
            v.and_then(|v| v.as_str()).unwrap_or("").into()
        };
        let label = |k: &str| s(md.get("LABELS").and_then(|l| l.get(k)));
        Self {
            workload: s(md.get("WORKLOAD_NAME")),
            namespace: s(md.get("NAMESPACE")),
            canonical_name: label("service.istio.io/canonical-name"),
            canonical_revision: label("service.istio.io/canonical-revision"),
            cluster: s(md.get("CLUSTER_ID")),
            app: label("app"),
            version: label("version"),
            istio_version: s(md.get("ISTIO_VERSION")),
        }
    }
}

/// The namespace of a SPIFFE ID (`…/ns/<ns>/sa/…`), as Istio finds it.
pub fn san_namespace(san: &str) -> Option<&str> {
    let at = san.find("/ns/")? + 4;
    let rest = &san[at..];
    Some(rest.find('/').map_or(rest, |e| &rest[..e]))
}

/// `destination_service` and `destination_service_name` before their fallbacks (empty when
/// unknown): the cluster's `filter_metadata.istio.services[0]`, else the Host header (unless
/// `disable_host_header_fallback`); Istio's catch-all clusters and routes name themselves.
pub fn destination_service<'a>(
    host_header: Option<&'a str>,
    disable_host_header_fallback: bool,
    route_name: Option<&str>,
    cluster_name: Option<&'a str>,
    cluster_service: Option<&'a crate::model::cluster::IstioService>,
) -> (&'a str, &'a str) {
    let (mut host, mut name) = ("", "");
    if !disable_host_header_fallback && let Some(h) = host_header {
        (host, name) = (h, h);
    }
    match route_name {
        Some("block_all") => return (host, "BlackHoleCluster"),
        Some("allow_any") => return (host, "PassthroughCluster"),
        _ => {}
    }
    match cluster_name {
        Some(
            c @ ("BlackHoleCluster"
            | "PassthroughCluster"
            | "InboundPassthroughCluster"
            | "InboundPassthroughClusterIpv4"
            | "InboundPassthroughClusterIpv6"),
        ) => name = c,
        Some(_) => {
            if let Some(svc) = cluster_service {
                if let Some(h) = &svc.host {
                    host = h;
                }
                name = match &svc.name {
                    Some(n) => n,
                    None => host.split('.').next().unwrap_or(""),
                };
            }
        }
        None => {}
    }
    (host, name)
}

/// What one stream (or connection) says, for its labels.
#[derive(Debug, Default)]
pub struct Facts<'a> {
    pub peer: Option<&'a Peer>,
    pub peer_san: &'a str,
    pub local_san: &'a str,
    pub service_host: &'a str,
    pub service_name: &'a str,
    /// `http`, `grpc` or `tcp`.
    pub protocol: &'a str,
    pub response_code: &'a str,
    /// Empty for non-gRPC.
    pub grpc_status: &'a str,
    pub flags: &'a str,
}

fn or<'a>(v: &'a str, fallback: &'a str) -> &'a str {
    if v.is_empty() { fallback } else { v }
}

/// The standard labels' values in [`HTTP_LABELS`] order (for TCP, `response_code` and
/// `grpc_response_status` are left out by the caller).
pub fn standard_labels<'a>(
    reporter: Reporter,
    local: &'a Local,
    f: &Facts<'a>,
) -> [&'a str; HTTP_LABELS.len()] {
    let p = f.peer;
    let pf = |get: fn(&Peer) -> &str, fallback: &'a str| -> &'a str {
        p.map_or(fallback, |p| or(get(p), fallback))
    };
    let peer_ns = san_namespace(f.peer_san)
        .filter(|n| !n.is_empty())
        .or_else(|| p.map(|p| &*p.namespace).filter(|n| !n.is_empty()))
        .unwrap_or("");
    let mut v = [UNKNOWN; HTTP_LABELS.len()];
    v[0] = reporter.label();
    match reporter {
        Reporter::ClientSidecar => {
            v[1] = &local.workload;
            v[2] = &local.canonical_name;
            v[3] = &local.canonical_revision;
            v[4] = &local.namespace;
            v[5] = or(f.local_san, UNKNOWN);
            v[6] = &local.app;
            v[7] = &local.version;
            v[8] = &local.cluster;
            v[9] = pf(|p| &p.workload, UNKNOWN);
            v[10] = or(peer_ns, UNKNOWN);
            v[11] = or(f.peer_san, UNKNOWN);
            v[12] = pf(|p| &p.app, UNKNOWN);
            v[13] = pf(|p| &p.version, UNKNOWN);
            v[14] = or(f.service_host, UNKNOWN);
            v[15] = pf(|p| &p.canonical_name, UNKNOWN);
            v[16] = pf(|p| &p.canonical_revision, LATEST);
            v[17] = or(f.service_name, UNKNOWN);
            v[18] = or(peer_ns, UNKNOWN);
            v[19] = pf(|p| &p.cluster, UNKNOWN);
        }
        Reporter::ServerSidecar | Reporter::ServerGateway => {
            v[1] = pf(|p| &p.workload, UNKNOWN);
            v[2] = pf(|p| &p.canonical_name, UNKNOWN);
            v[3] = pf(|p| &p.canonical_revision, LATEST);
            v[4] = or(peer_ns, UNKNOWN);
            v[5] = or(f.peer_san, UNKNOWN);
            v[6] = pf(|p| &p.app, UNKNOWN);
            v[7] = pf(|p| &p.version, UNKNOWN);
            v[8] = pf(|p| &p.cluster, UNKNOWN);
            v[9] = &local.workload;
            v[10] = &local.namespace;
            v[11] = or(f.local_san, UNKNOWN);
            v[12] = &local.app;
            v[13] = &local.version;
            v[14] = or(f.service_host, &local.canonical_name);
            v[15] = &local.canonical_name;
            v[16] = &local.canonical_revision;
            v[17] = or(f.service_name, &local.canonical_name);
            v[18] = &local.namespace;
            v[19] = &local.cluster;
        }
    }
    v[20] = f.protocol;
    v[RESPONSE_CODE] = f.response_code;
    v[GRPC_STATUS] = f.grpc_status;
    v[23] = f.flags;
    v[24] = match reporter {
        Reporter::ClientSidecar => UNKNOWN,
        _ if !f.peer_san.is_empty() && !f.local_san.is_empty() => "mutual_tls",
        _ => "none",
    };
    v
}

/// The URI SAN of a certificate's details (the first one), as Envoy's `uriSan…Certificate()[0]`.
pub fn uri_san(details: &remora_certs::info::CertDetails) -> Option<&str> {
    details.sans.iter().find_map(|s| match s {
        remora_certs::info::San::Uri(u) => Some(u.as_str()),
        _ => None,
    })
}

/// The peer's and our own URI SAN on a TLS connection (empty when absent).
pub fn sans(tls: Option<&crate::transport_sockets::tls::TlsInfo>) -> (&str, &str) {
    let Some(t) = tls else { return ("", "") };
    let peer = t
        .peer
        .as_ref()
        .and_then(|p| uri_san(&p.details))
        .unwrap_or("");
    let local = t
        .local
        .as_ref()
        .and_then(|l| l.chain.first())
        .and_then(uri_san)
        .unwrap_or("");
    (peer, local)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::cluster::IstioService;

    fn node(v: serde_json::Value) -> crate::model::bootstrap::Node {
        crate::model::bootstrap::Node {
            metadata: v,
            ..Default::default()
        }
    }

    fn client() -> Local {
        Local::from_node(&node(serde_json::json!({
            "WORKLOAD_NAME": "productpage-v1", "NAMESPACE": "default", "CLUSTER_ID": "client-cluster",
            "ISTIO_VERSION": "1.5-dev",
            "LABELS": {"app": "productpage", "version": "v1",
                "service.istio.io/canonical-name": "productpage-v1",
                "service.istio.io/canonical-revision": "version-1"}
        })))
    }

    fn server_peer() -> Peer {
        let local = node(serde_json::json!({
            "WORKLOAD_NAME": "ratings-v1", "NAMESPACE": "default", "CLUSTER_ID": "server-cluster",
            "LABELS": {"app": "ratings", "version": "v1", "role": "server",
                "service.istio.io/canonical-name": "ratings",
                "service.istio.io/canonical-revision": "version-1"}
        }));
        let payload =
            crate::filters::http::peer_metadata::exchange_payload(&local, &["role".into()]);
        Peer::from_exchange(&payload).expect("decodes")
    }

    #[test]
    fn the_exchanged_struct_decodes_to_a_peer() {
        let p = server_peer();
        assert_eq!(&*p.workload, "ratings-v1");
        assert_eq!(&*p.canonical_name, "ratings");
        assert_eq!(&*p.canonical_revision, "version-1");
        assert_eq!(&*p.app, "ratings");
        assert_eq!(p.label("role"), Some("server"));
    }

    #[test]
    fn client_side_labels_match_istios_fixture() {
        let local = client();
        let peer = server_peer();
        let f = Facts {
            peer: Some(&peer),
            service_host: "server.default.svc.cluster.local",
            service_name: "server",
            protocol: "http",
            response_code: "200",
            flags: "-",
            ..Default::default()
        };
        let v = standard_labels(Reporter::ClientSidecar, &local, &f);
        assert_eq!(
            v,
            [
                "source",
                "productpage-v1",
                "productpage-v1",
                "version-1",
                "default",
                "unknown",
                "productpage",
                "v1",
                "client-cluster",
                "ratings-v1",
                "default",
                "unknown",
                "ratings",
                "v1",
                "server.default.svc.cluster.local",
                "ratings",
                "version-1",
                "server",
                "default",
                "server-cluster",
                "http",
                "200",
                "",
                "-",
                "unknown"
            ]
        );
    }

    #[test]
    fn server_side_without_a_peer_falls_back_and_reads_the_san() {
        let local = client();
        let f = Facts {
            peer_san: "spiffe://cluster.local/ns/foo/sa/client",
            local_san: "spiffe://cluster.local/ns/default/sa/server",
            protocol: "tcp",
            flags: "-",
            ..Default::default()
        };
        let v = standard_labels(Reporter::ServerSidecar, &local, &f);
        assert_eq!(v[0], "destination");
        assert_eq!(v[1], "unknown");
        assert_eq!(v[3], "latest");
        assert_eq!(v[4], "foo");
        assert_eq!(v[5], "spiffe://cluster.local/ns/foo/sa/client");
        // destination_service falls back to the canonical name.
        assert_eq!(v[14], "productpage-v1");
        assert_eq!(v[17], "productpage-v1");
        assert_eq!(v[24], "mutual_tls");
        let plain = standard_labels(Reporter::ServerSidecar, &local, &Facts::default());
        assert_eq!(plain[24], "none");
    }

    #[test]
    fn spiffe_namespaces() {
        assert_eq!(
            san_namespace("spiffe://td/ns/default/sa/x"),
            Some("default")
        );
        assert_eq!(san_namespace("spiffe://td/ns/only"), Some("only"));
        assert_eq!(san_namespace("spiffe://td/sa/x"), None);
    }

    #[test]
    fn destination_service_sources() {
        let svc = IstioService {
            host: Some("server.default.svc.cluster.local".into()),
            name: None,
        };
        let c = Some("outbound|9080||server.default.svc.cluster.local");
        assert_eq!(
            destination_service(Some("h:80"), false, None, c, Some(&svc)),
            ("server.default.svc.cluster.local", "server")
        );
        let named = IstioService {
            host: Some("a.b".into()),
            name: Some("named".into()),
        };
        assert_eq!(
            destination_service(None, false, None, c, Some(&named)),
            ("a.b", "named")
        );
        // No metadata: the Host header, unless disabled.
        assert_eq!(
            destination_service(Some("h:80"), false, None, c, None),
            ("h:80", "h:80")
        );
        assert_eq!(
            destination_service(Some("h:80"), true, None, c, None),
            ("", "")
        );
        assert_eq!(
            destination_service(Some("h"), false, None, Some("PassthroughCluster"), None),
            ("h", "PassthroughCluster")
        );
        assert_eq!(
            destination_service(Some("h"), false, Some("block_all"), c, Some(&svc)),
            ("h", "BlackHoleCluster")
        );
    }
}
