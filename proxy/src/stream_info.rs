//! Per-stream (HTTP request or TCP connection) facts that access logs, header formatters and
//! stats read: Envoy's StreamInfo. Filled in along the request path; read once at the end.

pub use crate::model::response_flags::ResponseFlags;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Instant, SystemTime};

/// The downstream connection a stream belongs to. Shared by all streams of the connection.
#[derive(Debug)]
pub struct ConnectionInfo {
    pub id: u64,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// SNI seen by the TLS inspector, if any.
    pub requested_server_name: Option<Box<str>>,
    /// The ALPN protocols the TLS inspector saw, or the protocol the HTTP inspector detected.
    pub application_protocols: Vec<Box<str>>,
    /// `raw_buffer` or `tls`, as filter-chain matching saw it.
    pub transport_protocol: &'static str,
    /// What the TLS handshake established, when the filter chain terminated TLS.
    pub tls: Option<Box<crate::transport_sockets::tls::TlsInfo>>,
}

/// HTTP protocol of a stream as `%PROTOCOL%` prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http10,
    Http11,
    Http2,
}

// === impl Protocol ===

impl Protocol {
    pub fn as_str(&self) -> &'static str {
        match self {
            Protocol::Http10 => "HTTP/1.0",
            Protocol::Http11 => "HTTP/1.1",
            Protocol::Http2 => "HTTP/2",
        }
    }
}

/// Envoy's StreamInfo for one HTTP request or one TCP connection.
#[derive(Debug)]
pub struct StreamInfo {
    pub start_time: SystemTime,
    pub start: Instant,
    pub connection: Arc<ConnectionInfo>,
    /// The client address after `x-forwarded-for` processing (`%DOWNSTREAM_REMOTE_ADDRESS%`).
    pub downstream_remote: SocketAddr,
    pub protocol: Option<Protocol>,
    pub response_code: Option<u16>,
    pub response_flags: ResponseFlags,
    pub response_code_details: std::borrow::Cow<'static, str>,
    pub connection_termination_details: Option<std::borrow::Cow<'static, str>>,
    /// Why remora closed the downstream connection, when it did (Envoy's local close reason,
    /// `%DOWNSTREAM_LOCAL_CLOSE_REASON%`).
    pub downstream_local_close_reason: Option<std::borrow::Cow<'static, str>>,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub route_name: Option<Arc<str>>,
    /// The cluster's observability name (`%UPSTREAM_CLUSTER%`) and its raw name.
    pub upstream_cluster: Option<Arc<str>>,
    pub upstream_host: Option<SocketAddr>,
    pub upstream_local: Option<SocketAddr>,
    pub upstream_transport_failure_reason: Option<String>,
    /// What the upstream connection's TLS handshake established (TLS clusters).
    pub upstream_tls: Option<Arc<crate::transport_sockets::tls::TlsInfo>>,
    /// Why the downstream TLS handshake failed (`%DOWNSTREAM_TRANSPORT_FAILURE_REASON%`).
    pub downstream_transport_failure_reason: Option<String>,
    pub attempt_count: u32,
    /// When the last byte of the request was received from downstream.
    pub last_downstream_rx: Option<Instant>,
    /// When the (last) upstream request got its connection and its first byte went out.
    pub first_upstream_tx: Option<Instant>,
    /// When the last byte of the (last) upstream request went out.
    pub last_upstream_tx: Option<Instant>,
    /// When the first byte of the response was received from upstream.
    pub first_upstream_rx: Option<Instant>,
    /// When the last byte of the response was received from upstream.
    pub last_upstream_rx: Option<Instant>,
    /// When the first byte of the response was sent downstream.
    pub first_downstream_tx: Option<Instant>,
    /// When the last byte of the response was sent downstream.
    pub last_downstream_tx: Option<Instant>,
    /// Set when the stream was a health check answered locally (access-log `not_health_check_filter`).
    pub health_check: bool,
    /// What filters published along the stream (`%DYNAMIC_METADATA(ns:key)%`).
    pub dynamic_metadata: DynamicMetadata,
    /// Envoy's filter state: named values filters share (`%FILTER_STATE(key)%`, RBAC's
    /// `filter_state` matcher).
    pub filter_state: FilterState,
    /// What Istio's metadata exchange learnt about the downstream and upstream workloads.
    pub downstream_peer: Option<Arc<crate::telemetry::istio::Peer>>,
    pub upstream_peer: Option<Arc<crate::telemetry::istio::Peer>>,
    /// The `grpc-status` of the response trailers sent downstream.
    pub grpc_status_trailer: Option<u32>,
}

/// Dynamic metadata: what filters set, per namespace and key, read as a JSON object per
/// namespace. Values are kept as they were set (typed: a static string, a shared string, a
/// boolean, or JSON) and the namespaces' JSON objects are built only when something reads them
/// (`%DYNAMIC_METADATA%`, RBAC `metadata` matchers, tracing tags), so a filter that publishes a
/// decision on every request (RBAC) costs no JSON and, with static keys, one allocation.
#[derive(Debug, Default, Clone)]
pub struct DynamicMetadata {
    /// `(namespace, key, value)` in the order first set; a key set again keeps its place
    /// (Envoy's `setDynamicMetadata` merges into the namespace).
    entries: Vec<(MetadataName, MetadataName, MetadataValue)>,
    /// The namespaces' objects, built from `entries` on the first read after a change.
    json: std::sync::OnceLock<Vec<(Box<str>, JsonMap)>>,
}

type JsonMap = serde_json::Map<String, serde_json::Value>;

/// A namespace's or a key's name: static, or owned.
pub type MetadataName = std::borrow::Cow<'static, str>;

/// A dynamic metadata value as a filter set it.
#[derive(Debug, Clone, PartialEq)]
pub enum MetadataValue {
    Str(&'static str),
    Shared(Arc<str>),
    Bool(bool),
    Json(serde_json::Value),
}

impl MetadataValue {
    fn to_json(&self) -> serde_json::Value {
        match self {
            MetadataValue::Str(s) => serde_json::Value::String((*s).to_string()),
            MetadataValue::Shared(s) => serde_json::Value::String(s.to_string()),
            MetadataValue::Bool(b) => serde_json::Value::Bool(*b),
            MetadataValue::Json(v) => v.clone(),
        }
    }
}

impl From<serde_json::Value> for MetadataValue {
    fn from(v: serde_json::Value) -> Self {
        MetadataValue::Json(v)
    }
}

impl DynamicMetadata {
    /// Namespace `ns` as a JSON object (built on the first read after a change).
    pub fn namespace(&self, ns: &str) -> Option<&JsonMap> {
        if !self.entries.iter().any(|(n, _, _)| n == ns) {
            return None;
        }
        let all = self.json.get_or_init(|| self.build());
        all.iter().find(|(n, _)| &**n == ns).map(|(_, m)| m)
    }

    fn build(&self) -> Vec<(Box<str>, JsonMap)> {
        let mut out: Vec<(Box<str>, JsonMap)> = Vec::new();
        for (ns, key, value) in &self.entries {
            let i = match out.iter().position(|(n, _)| **n == **ns) {
                Some(i) => i,
                None => {
                    out.push((ns.as_ref().into(), JsonMap::new()));
                    out.len() - 1
                }
            };
            out[i].1.insert(key.to_string(), value.to_json());
        }
        out
    }

    /// Set `key` in namespace `ns` to a JSON value.
    pub fn set(&mut self, ns: &str, key: impl Into<String>, value: serde_json::Value) {
        self.set_typed(
            MetadataName::Owned(ns.to_string()),
            MetadataName::Owned(key.into()),
            MetadataValue::Json(value),
        );
    }

    /// Set `key` in namespace `ns` (static names and a typed value cost no allocation beyond
    /// the entry's).
    pub fn set_typed(&mut self, ns: MetadataName, key: MetadataName, value: MetadataValue) {
        self.json = std::sync::OnceLock::new();
        match self
            .entries
            .iter_mut()
            .find(|(n, k, _)| *n == ns && *k == key)
        {
            Some((_, _, v)) => *v = value,
            None => {
                if self.entries.capacity() == 0 {
                    self.entries.reserve_exact(4);
                }
                self.entries.push((ns, key, value));
            }
        }
    }

    /// The value of `key` in `ns` as it was set.
    pub fn get(&self, ns: &str, key: &str) -> Option<&MetadataValue> {
        self.entries
            .iter()
            .find(|(n, k, _)| n == ns && k == key)
            .map(|(_, _, v)| v)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod dynamic_metadata_tests {
    use super::*;
    use std::borrow::Cow;

    #[test]
    fn dynamic_metadata_is_json_when_read() {
        let mut md = DynamicMetadata::default();
        assert!(md.is_empty() && md.namespace("a").is_none());
        md.set_typed(
            Cow::Borrowed("a"),
            Cow::Borrowed("result"),
            MetadataValue::Str("allowed"),
        );
        md.set("b", "n", serde_json::json!({"x": 1}));
        md.set_typed(
            Cow::Borrowed("a"),
            Cow::Owned("policy".to_string()),
            MetadataValue::Shared("p1".into()),
        );
        assert_eq!(
            serde_json::Value::Object(md.namespace("a").unwrap().clone()),
            serde_json::json!({"result": "allowed", "policy": "p1"})
        );
        assert_eq!(md.namespace("b").unwrap()["n"]["x"], 1);
        // Set again after a read: the key keeps its place, the new value is read.
        md.set_typed(
            Cow::Borrowed("a"),
            Cow::Borrowed("result"),
            MetadataValue::Bool(false),
        );
        let keys: Vec<&String> = md.namespace("a").unwrap().keys().collect();
        assert_eq!(keys, ["result", "policy"]);
        assert_eq!(md.namespace("a").unwrap()["result"], false);
        assert_eq!(
            md.get("a", "policy"),
            Some(&MetadataValue::Shared("p1".into()))
        );
        assert!(md.namespace("c").is_none());
        let copy = md.clone();
        assert_eq!(copy.namespace("a"), md.namespace("a"));
    }
}

/// Filter state: values by name, as their string serialisation (what RBAC's `filter_state`
/// matcher and `%FILTER_STATE(key:PLAIN)%` read).
#[derive(Debug, Default, Clone)]
pub struct FilterState {
    values: Vec<(Box<str>, Arc<str>)>,
    /// `envoy.filters.http.grpc_stats` (Envoy's `GrpcStatsObject`), counted as the bodies
    /// stream; present once a message was counted, as Envoy writes it on the first one.
    grpc_stats: Option<Arc<GrpcMessageCounts>>,
}

/// The gRPC message counts `grpc_stats` publishes with `emit_filter_state`.
#[derive(Debug, Default)]
pub struct GrpcMessageCounts {
    pub request: AtomicU64,
    pub response: AtomicU64,
}

impl GrpcMessageCounts {
    /// `(request, response)`, `None` before the first message.
    pub fn get(&self) -> Option<(u64, u64)> {
        let (rq, rs) = (self.request.load(Relaxed), self.response.load(Relaxed));
        (rq + rs > 0).then_some((rq, rs))
    }
}

impl FilterState {
    /// The value as `%FILTER_STATE(key)%` prints it (a string as itself, the gRPC counts as
    /// their `FilterObject` JSON, as Envoy 1.40 prints them).
    pub fn get(&self, key: &str) -> Option<std::borrow::Cow<'_, str>> {
        if key == crate::model::grpc_stats::FILTER_STATE_KEY {
            return self.typed_json(key).map(Into::into);
        }
        self.values
            .iter()
            .find(|(k, _)| &**k == key)
            .map(|(_, v)| std::borrow::Cow::Borrowed(&**v))
    }

    /// The value's typed (protobuf JSON) form where it is not a string: the gRPC counts'
    /// `FilterObject`.
    pub fn typed_json(&self, key: &str) -> Option<String> {
        if key != crate::model::grpc_stats::FILTER_STATE_KEY {
            return None;
        }
        let (rq, rs) = self.grpc_stats()?;
        // proto3 JSON: uint64 as strings, zero fields left out.
        let field = |name: &str, n: u64| (n > 0).then(|| format!(r#""{name}":"{n}""#));
        let fields: Vec<String> = [
            field("requestMessageCount", rq),
            field("responseMessageCount", rs),
        ]
        .into_iter()
        .flatten()
        .collect();
        Some(format!("{{{}}}", fields.join(",")))
    }

    pub fn set(&mut self, key: &str, value: Arc<str>) {
        match self.values.iter_mut().find(|(k, _)| &**k == key) {
            Some((_, v)) => *v = value,
            None => self.values.push((key.into(), value)),
        }
    }

    /// Where `grpc_stats` counts this stream's messages.
    pub fn set_grpc_stats(&mut self, counts: Arc<GrpcMessageCounts>) {
        self.grpc_stats = Some(counts);
    }

    /// The gRPC message counts `(request, response)`, once one was counted.
    pub fn grpc_stats(&self) -> Option<(u64, u64)> {
        self.grpc_stats.as_ref()?.get()
    }
}

// === impl StreamInfo ===

impl StreamInfo {
    pub fn new(connection: Arc<ConnectionInfo>) -> Self {
        let downstream_remote = connection.remote;
        Self {
            start_time: SystemTime::now(),
            start: Instant::now(),
            connection,
            downstream_remote,
            protocol: None,
            response_code: None,
            response_flags: ResponseFlags::empty(),
            response_code_details: std::borrow::Cow::Borrowed(""),
            connection_termination_details: None,
            downstream_local_close_reason: None,
            bytes_received: 0,
            bytes_sent: 0,
            route_name: None,
            upstream_cluster: None,
            upstream_host: None,
            upstream_local: None,
            upstream_transport_failure_reason: None,
            downstream_transport_failure_reason: None,
            upstream_tls: None,
            attempt_count: 0,
            last_downstream_rx: None,
            first_upstream_tx: None,
            last_upstream_tx: None,
            first_upstream_rx: None,
            last_upstream_rx: None,
            first_downstream_tx: None,
            last_downstream_tx: None,
            health_check: false,
            dynamic_metadata: DynamicMetadata::default(),
            filter_state: FilterState::default(),
            downstream_peer: None,
            upstream_peer: None,
            grpc_status_trailer: None,
        }
    }

    pub fn set_flag(&mut self, f: ResponseFlags) {
        self.response_flags |= f;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// grpc_stats' counts as Envoy 1.40 prints `%FILTER_STATE(envoy.filters.http.grpc_stats)%`
    /// (plain and typed alike): the `FilterObject`'s proto3 JSON, zero fields left out;
    /// absent until a message was counted.
    #[test]
    fn grpc_counts_print_as_envoys_filter_object() {
        let key = crate::model::grpc_stats::FILTER_STATE_KEY;
        let mut fs = FilterState::default();
        assert_eq!(fs.get(key), None);
        let counts = Arc::new(GrpcMessageCounts::default());
        fs.set_grpc_stats(counts.clone());
        assert_eq!(fs.get(key), None);
        counts.request.fetch_add(2, Relaxed);
        assert_eq!(
            fs.get(key).as_deref(),
            Some(r#"{"requestMessageCount":"2"}"#)
        );
        counts.response.fetch_add(3, Relaxed);
        assert_eq!(
            fs.typed_json(key).as_deref(),
            Some(r#"{"requestMessageCount":"2","responseMessageCount":"3"}"#)
        );
        assert_eq!(fs.grpc_stats(), Some((2, 3)));
    }
}
