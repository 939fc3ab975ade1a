//! Istio's HTTP metadata exchange (`io.istio.http.peer_metadata.Config`, the HTTP filter istiod
//! names `istio.metadata_exchange`): the `x-envoy-peer-metadata-id` and `x-envoy-peer-metadata`
//! headers. Propagation (this workload's identity, to the upstream on requests and back to the
//! downstream on responses) and the removal of the peer's headers are done here. What discovery
//! learns about the peer feeds Istio's telemetry (`istio.stats`), a later stage.

use crate::model::bootstrap::Node;
use crate::model::hcm::PeerMetadataConfig;
use base64::Engine;
use http::{HeaderMap, HeaderName, HeaderValue};
use std::collections::BTreeMap;
use std::sync::Arc;

pub const ID: HeaderName = HeaderName::from_static("x-envoy-peer-metadata-id");
pub const METADATA: HeaderName = HeaderName::from_static("x-envoy-peer-metadata");

/// The filter at runtime: its configuration and this workload's two header values.
#[derive(Debug)]
pub struct PeerMetadata {
    config: PeerMetadataConfig,
    id: Option<HeaderValue>,
    metadata: HeaderValue,
}

/// Which of the two headers the request carried (the response side answers in kind).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Carried {
    pub id: bool,
    pub metadata: bool,
}

impl PeerMetadata {
    pub fn new(config: &PeerMetadataConfig, node: &Node) -> Self {
        let encoded = workload_struct(node, &config.additional_labels).encode();
        let b64 = base64::engine::general_purpose::STANDARD.encode(encoded);
        Self {
            config: config.clone(),
            id: (!node.id.is_empty())
                .then(|| HeaderValue::from_str(&node.id).ok())
                .flatten(),
            metadata: HeaderValue::from_str(&b64).expect("base64 is a valid header value"),
        }
    }

    /// Request side, before routing: the peer's headers are taken off the request.
    pub fn on_request(&self, headers: &mut HeaderMap) -> Carried {
        let carried = Carried {
            id: headers.contains_key(ID),
            metadata: headers.contains_key(METADATA),
        };
        if self.config.downstream_istio_headers {
            headers.remove(ID);
            headers.remove(METADATA);
        }
        carried
    }

    /// Whether the request side sends this workload's headers upstream (then the route's
    /// cluster decides).
    pub fn propagates_upstream(&self) -> bool {
        self.config.upstream_propagation.is_some()
    }

    /// Request side, once the cluster is known: this workload's headers for the upstream
    /// (not to clusters istiod marks external or without metadata exchange).
    pub fn propagate_upstream(
        &self,
        headers: &mut HeaderMap,
        cluster: &crate::model::cluster::Cluster,
    ) {
        let Some(skip_external) = self.config.upstream_propagation else {
            return;
        };
        if cluster.istio.disable_mx
            || (skip_external && (cluster.istio.external || &*cluster.name == "PassthroughCluster"))
        {
            return;
        }
        if let Some(id) = &self.id {
            headers.insert(ID, id.clone());
        }
        headers.insert(METADATA, self.metadata.clone());
    }

    /// Response side: the upstream peer's headers are taken off; this workload's are added for
    /// the downstream where the request carried them.
    pub fn on_response(&self, headers: &mut HeaderMap, carried: Carried) {
        if self.config.upstream_istio_headers {
            headers.remove(ID);
            headers.remove(METADATA);
        }
        if self.config.downstream_propagation.is_some() {
            if carried.id
                && let Some(id) = &self.id
            {
                headers.insert(ID, id.clone());
            }
            if carried.metadata {
                headers.insert(METADATA, self.metadata.clone());
            }
        }
    }
}

// === the chain's filter ===

/// The filter's factory: this workload's header values (built once) and the clusters, whose
/// Istio metadata says where the headers may go.
#[derive(Debug)]
pub struct PeerMetadataFactory {
    name: String,
    filter: Arc<PeerMetadata>,
    clusters: Arc<crate::upstream::cluster::ClusterManager>,
    peers: Arc<crate::telemetry::istio::PeerCache>,
}

impl PeerMetadataFactory {
    pub fn new(
        name: String,
        config: &PeerMetadataConfig,
        node: &Node,
        clusters: Arc<crate::upstream::cluster::ClusterManager>,
    ) -> Self {
        Self {
            name,
            filter: Arc::new(PeerMetadata::new(config, node)),
            clusters,
            peers: Default::default(),
        }
    }
}

impl super::HttpFilterFactory for PeerMetadataFactory {
    fn name(&self) -> &str {
        &self.name
    }

    fn create(
        &self,
        _per_route: Option<&crate::model::per_filter::PerFilterConfig>,
        _cx: &super::StreamCx<'_>,
    ) -> Option<Box<dyn super::HttpFilter>> {
        Some(Box::new(PeerMetadataFilter {
            filter: self.filter.clone(),
            clusters: self.clusters.clone(),
            peers: self.peers.clone(),
            carried: Carried::default(),
        }))
    }
}

struct PeerMetadataFilter {
    filter: Arc<PeerMetadata>,
    clusters: Arc<crate::upstream::cluster::ClusterManager>,
    /// Decoded peers (what discovery learns, for `istio.stats`).
    peers: Arc<crate::telemetry::istio::PeerCache>,
    carried: Carried,
}

impl PeerMetadataFilter {
    /// The peer the headers describe, when discovery reads them.
    fn discover(
        &self,
        on: bool,
        headers: &HeaderMap,
    ) -> Option<Arc<crate::telemetry::istio::Peer>> {
        if !on {
            return None;
        }
        self.peers.get(headers.get(METADATA)?.as_bytes())
    }
}

impl super::HttpFilter for PeerMetadataFilter {
    fn on_request_headers(
        &mut self,
        req: &mut http::request::Parts,
        _end_stream: bool,
        cx: &mut super::StreamCx<'_>,
    ) -> super::Flow {
        let on = self.filter.config.downstream_istio_headers;
        if let Some(p) = self.discover(on, &req.headers) {
            cx.info.downstream_peer = Some(p);
        }
        self.carried = self.filter.on_request(&mut req.headers);
        if !self.filter.propagates_upstream() {
            // Nothing goes upstream: the route's cluster is not looked up.
            return super::Flow::Continue;
        }
        // The route's cluster, as Envoy's filter reads it from the route.
        let cluster = cx
            .route
            .as_ref()
            .and_then(|r| r.cluster_name(&req.headers))
            .and_then(|name| self.clusters.get(name));
        if let Some(c) = cluster {
            self.filter.propagate_upstream(&mut req.headers, &c.config);
        }
        super::Flow::Continue
    }

    fn on_response_headers(
        &mut self,
        resp: &mut http::response::Parts,
        _end_stream: bool,
        cx: &mut super::StreamCx<'_>,
    ) -> super::Flow {
        let on = self.filter.config.upstream_istio_headers;
        if let Some(p) = self.discover(on, &resp.headers) {
            cx.info.upstream_peer = Some(p);
        }
        self.filter.on_response(&mut resp.headers, self.carried);
        super::Flow::Continue
    }
}

/// The TCP exchange's payload: an `Any` holding the Struct `{x-envoy-peer-metadata: <workload>,
/// x-envoy-peer-metadata-id: <node id>}` (the id left out when empty).
pub(crate) fn exchange_payload(node: &Node, additional_labels: &[String]) -> Vec<u8> {
    let mut fields = BTreeMap::new();
    fields.insert(
        "x-envoy-peer-metadata".to_string(),
        SortedValue {
            kind: Some(Kind::Struct(workload_struct(node, additional_labels))),
        },
    );
    if !node.id.is_empty() {
        fields.insert("x-envoy-peer-metadata-id".to_string(), text(&node.id));
    }
    let any = envoy_types::pb::google::protobuf::Any {
        type_url: "type.googleapis.com/google.protobuf.Struct".into(),
        value: SortedStruct { fields }.encode(),
    };
    prost::Message::encode_to_vec(&any)
}

// === the workload Struct ===

/// `google.protobuf.Struct` with its keys in order (Istio serializes deterministically).
#[derive(Clone, PartialEq, prost::Message)]
struct SortedStruct {
    #[prost(btree_map = "string, message", tag = "1")]
    fields: BTreeMap<String, SortedValue>,
}

/// `google.protobuf.Value`, the two kinds the workload metadata uses.
#[derive(Clone, PartialEq, prost::Message)]
struct SortedValue {
    #[prost(oneof = "Kind", tags = "3, 5")]
    kind: Option<Kind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum Kind {
    #[prost(string, tag = "3")]
    String(String),
    #[prost(message, tag = "5")]
    Struct(SortedStruct),
}

impl SortedStruct {
    fn encode(&self) -> Vec<u8> {
        prost::Message::encode_to_vec(self)
    }
}

fn text(v: &str) -> SortedValue {
    SortedValue {
        kind: Some(Kind::String(v.to_string())),
    }
}

/// The workload metadata Istio exchanges, from the node metadata: only NAME, NAMESPACE,
/// WORKLOAD_NAME, CLUSTER_ID, IDENTITY, LABELS (canonical name and revision, app, version, and
/// `additional_labels`), OWNER (rebuilt from its workload type), REGION, AVAILABILITY_ZONE.
fn workload_struct(node: &Node, additional_labels: &[String]) -> SortedStruct {
    let md = &node.metadata;
    let get = |k: &str| md.get(k).and_then(|v| v.as_str()).filter(|s| !s.is_empty());
    let mut fields = BTreeMap::new();
    for key in [
        "NAME",
        "NAMESPACE",
        "WORKLOAD_NAME",
        "CLUSTER_ID",
        "IDENTITY",
    ] {
        if let Some(v) = get(key) {
            fields.insert(key.to_string(), text(v));
        }
    }
    let labels = md.get("LABELS").and_then(|v| v.as_object());
    let label = |k: &str| {
        labels
            .and_then(|l| l.get(k))
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
    };
    let mut out = BTreeMap::new();
    for k in [
        "service.istio.io/canonical-name",
        "service.istio.io/canonical-revision",
    ] {
        if let Some(v) = label(k) {
            out.insert(k.to_string(), text(v));
        }
    }
    if let Some(app) = label("app.kubernetes.io/name").or_else(|| label("app")) {
        out.insert("app".into(), text(app));
    }
    if let Some(version) = label("app.kubernetes.io/version").or_else(|| label("version")) {
        out.insert("version".into(), text(version));
    }
    for k in additional_labels {
        if let Some(v) = label(k) {
            out.insert(k.clone(), text(v));
        }
    }
    fields.insert(
        "LABELS".into(),
        SortedValue {
            kind: Some(Kind::Struct(SortedStruct { fields: out })),
        },
    );
    if let (Some(owner), Some(ns), Some(workload)) =
        (get("OWNER"), get("NAMESPACE"), get("WORKLOAD_NAME"))
    {
        let kind = ["pod", "deployment", "job", "cronjob"]
            .into_iter()
            .find(|k| owner.ends_with(&format!("/{k}s/{workload}")));
        if let Some(kind) = kind {
            fields.insert(
                "OWNER".into(),
                text(&format!(
                    "kubernetes://apis/apps/v1/namespaces/{ns}/{kind}s/{workload}"
                )),
            );
        }
    }
    if !node.region.is_empty() {
        fields.insert("REGION".into(), text(&node.region));
    }
    if !node.zone.is_empty() {
        fields.insert("AVAILABILITY_ZONE".into(), text(&node.zone));
    }
    SortedStruct { fields }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn productpage() -> Node {
        Node {
            id: "sidecar~10.52.0.34~productpage-v1-84975bc778-pxz2w.default~default.svc.cluster.local"
                .into(),
            cluster: "productpage.default".into(),
            metadata: serde_json::json!({
                "NAME": "productpage-v1-84975bc778-pxz2w",
                "NAMESPACE": "default",
                "CLUSTER_ID": "Kubernetes",
                "WORKLOAD_NAME": "productpage-v1",
                "OWNER": "kubernetes://apis/apps/v1/namespaces/default/deployments/productpage-v1",
                "ISTIO_VERSION": "1.24.0",
                "MESH_ID": "cluster.local",
                "LABELS": {
                    "app": "productpage",
                    "version": "v1",
                    "pod-template-hash": "84975bc778",
                    "service.istio.io/canonical-name": "productpage",
                    "service.istio.io/canonical-revision": "v1"
                }
            }),
            region: String::new(),
            zone: String::new(),
        }
    }

    /// The header value Istio's reference documents for this workload, byte for byte.
    #[test]
    fn metadata_header_matches_istios_encoding() {
        let cfg = PeerMetadataConfig::default();
        let pm = PeerMetadata::new(&cfg, &productpage());
        assert_eq!(
            pm.metadata.to_str().unwrap(),
            "ChoKCkNMVVNURVJfSUQSDBoKS3ViZXJuZXRlcwqUAQoGTEFCRUxTEokBKoYBChQKA2FwcBINGgtwcm9kdWN0cGFnZQowCh9zZXJ2aWNlLmlzdGlvLmlvL2Nhbm9uaWNhbC1uYW1lEg0aC3Byb2R1Y3RwYWdlCisKI3NlcnZpY2UuaXN0aW8uaW8vY2Fub25pY2FsLXJldmlzaW9uEgQaAnYxCg8KB3ZlcnNpb24SBBoCdjEKKQoETkFNRRIhGh9wcm9kdWN0cGFnZS12MS04NDk3NWJjNzc4LXB4ejJ3ChYKCU5BTUVTUEFDRRIJGgdkZWZhdWx0ClIKBU9XTkVSEkkaR2t1YmVybmV0ZXM6Ly9hcGlzL2FwcHMvdjEvbmFtZXNwYWNlcy9kZWZhdWx0L2RlcGxveW1lbnRzL3Byb2R1Y3RwYWdlLXYxCiEKDVdPUktMT0FEX05BTUUSEBoOcHJvZHVjdHBhZ2UtdjE="
        );
        assert_eq!(
            pm.id.as_ref().unwrap(),
            "sidecar~10.52.0.34~productpage-v1-84975bc778-pxz2w.default~default.svc.cluster.local"
        );
    }

    #[test]
    fn request_and_response_sides() {
        let cfg = PeerMetadataConfig {
            downstream_istio_headers: true,
            downstream_propagation: Some(false),
            ..Default::default()
        };
        let pm = PeerMetadata::new(&cfg, &productpage());
        let mut req = HeaderMap::new();
        req.insert(ID, HeaderValue::from_static("peer"));
        let carried = pm.on_request(&mut req);
        assert!(
            !req.contains_key(ID),
            "the peer's headers do not reach the app"
        );
        assert_eq!(
            carried,
            Carried {
                id: true,
                metadata: false
            }
        );
        let mut resp = HeaderMap::new();
        pm.on_response(&mut resp, carried);
        assert!(resp.contains_key(ID), "answered in kind");
        assert!(!resp.contains_key(METADATA));
    }
}
