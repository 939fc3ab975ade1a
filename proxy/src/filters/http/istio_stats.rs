//! Istio's `istio.stats` HTTP filter (`stats.PluginConfig`): at the end of every stream
//! (Envoy's access-log time, so local replies of earlier filters count too) it records
//! `istio_requests_total`, `istio_request_duration_milliseconds`, `istio_request_bytes` and
//! `istio_response_bytes` with Istio's labels. The peer comes from the metadata exchange
//! (`StreamInfo::{downstream_peer, upstream_peer}`, set by `peer_metadata`), the principals
//! from the TLS connections. [`Recorder`] is shared with the network filter.
//!
//! Hot path: the label values are borrowed (`&str` into the node, the peer, the stream) and
//! the series is found by hashing them in place, so a stream whose series exists allocates
//! nothing (overrides with expressions excepted).

use crate::http::stream::RequestSnapshot;
use crate::model::istio_stats::{
    Attr, Expr, GRPC_STATUS, HTTP_LABELS, IstioStats, LabelOp, Part, PeerField, RESPONSE_CODE,
    Reporter, STANDARD_METRICS, Side,
};
use crate::telemetry::istio::{Facts, Local, Peer, UNKNOWN, standard_labels};
use crate::telemetry::labelled::{Family, Kind};
use crate::telemetry::stats::Store;
use std::borrow::Cow;
use std::sync::Arc;

/// Indices into [`STANDARD_METRICS`].
pub const REQUESTS_TOTAL: usize = 0;
pub const REQUEST_DURATION: usize = 1;
pub const REQUEST_BYTES: usize = 2;
pub const RESPONSE_BYTES: usize = 3;
pub const REQUEST_MESSAGES: usize = 4;
pub const RESPONSE_MESSAGES: usize = 5;
pub const TCP_OPENED: usize = 6;
pub const TCP_CLOSED: usize = 7;
pub const TCP_SENT: usize = 8;
pub const TCP_RECEIVED: usize = 9;

fn kind_of(metric: usize) -> Kind {
    match metric {
        REQUEST_DURATION | REQUEST_BYTES | RESPONSE_BYTES => Kind::Histogram,
        _ => Kind::Counter,
    }
}

/// Which of the standard labels a metric carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Labels {
    /// All of them.
    Http,
    /// All but `response_code` and `grpc_response_status`.
    Tcp,
    /// The reporter and the peers' labels only, up to `destination_cluster`: what Istio's
    /// filter has pushed when it reports the gRPC message counts.
    Peer,
}

/// `request_protocol`'s index in [`HTTP_LABELS`]: where [`Labels::Peer`] stops.
const REQUEST_PROTOCOL: usize = 20;

impl Labels {
    /// The indices in [`HTTP_LABELS`] of the labels this set carries, in order.
    fn indices(self) -> impl Iterator<Item = usize> {
        let end = match self {
            Labels::Peer => REQUEST_PROTOCOL,
            Labels::Http | Labels::Tcp => HTTP_LABELS.len(),
        };
        let tcp = self == Labels::Tcp;
        (0..end).filter(move |&i| !(tcp && (i == RESPONSE_CODE || i == GRPC_STATUS)))
    }
}

/// What an expression can read.
#[derive(Default)]
pub struct EvalCx<'a> {
    pub request: Option<&'a RequestSnapshot>,
    pub protocol: Option<&'a str>,
    pub response_code: Option<u16>,
    pub grpc_status: &'a str,
    pub cluster_name: Option<&'a str>,
    pub route_name: Option<&'a str>,
    pub upstream_peer: Option<&'a Peer>,
    pub downstream_peer: Option<&'a Peer>,
}

impl<'a> EvalCx<'a> {
    fn attr(&self, a: &Attr) -> Option<Cow<'a, str>> {
        let r = self.request;
        let header = |n: &http::HeaderName| {
            r.and_then(|r| r.headers.get(n))
                .and_then(|v| v.to_str().ok())
                .map(Cow::Borrowed)
        };
        Some(match a {
            Attr::RequestHost => return header(&http::header::HOST),
            Attr::RequestHeader(h) => return header(h),
            Attr::RequestId => return header(&http::HeaderName::from_static("x-request-id")),
            Attr::RequestPath => Cow::Borrowed(r?.uri.path_and_query()?.as_str()),
            Attr::RequestUrlPath => Cow::Borrowed(r?.uri.path()),
            Attr::RequestMethod => Cow::Borrowed(r?.method.as_str()),
            Attr::RequestScheme => Cow::Borrowed(r?.uri.scheme_str().unwrap_or("http")),
            Attr::RequestProtocol => Cow::Borrowed(self.protocol?),
            Attr::ResponseCode => Cow::Owned(self.response_code?.to_string()),
            Attr::ResponseGrpcStatus => {
                Cow::Borrowed(Some(self.grpc_status).filter(|s| !s.is_empty())?)
            }
            Attr::ClusterName => Cow::Borrowed(self.cluster_name?),
            Attr::RouteName => Cow::Borrowed(self.route_name?),
            // Resolved when the recorder is built.
            Attr::NodeMetadata(_) => return None,
            Attr::Peer(side, field) => {
                let p = match side {
                    Side::Upstream => self.upstream_peer?,
                    Side::Downstream => self.downstream_peer?,
                };
                let v: &'a str = match field {
                    PeerField::Workload => &p.workload,
                    PeerField::Namespace => &p.namespace,
                    PeerField::Cluster => &p.cluster,
                    PeerField::Service => &p.canonical_name,
                    PeerField::Revision => &p.canonical_revision,
                    PeerField::App => &p.app,
                    PeerField::Version => &p.version,
                    PeerField::Name => &p.name,
                    PeerField::Identity => &p.identity,
                    PeerField::Label(k) => p.label(k)?,
                };
                Cow::Borrowed(v)
            }
        })
    }

    /// An expression's value; `unknown` when an attribute is absent (Istio's evaluation
    /// error).
    pub fn eval(&self, e: &Expr) -> Cow<'a, str> {
        let mut out: Option<Cow<'a, str>> = None;
        for p in &e.0 {
            let v = match p {
                Part::Lit(s) => Cow::Owned(s.to_string()),
                Part::Attr(a) => match self.attr(a) {
                    Some(v) => v,
                    None => return Cow::Borrowed(UNKNOWN),
                },
            };
            out = Some(match out {
                None => v,
                Some(prev) => Cow::Owned(prev.into_owned() + &v),
            });
        }
        out.unwrap_or(Cow::Borrowed(UNKNOWN))
    }
}

/// One `istio.stats` config at runtime: its families and overrides (HTTP and network).
#[derive(Debug)]
pub struct Recorder {
    pub reporter: Reporter,
    pub local: Local,
    pub config: IstioStats,
    store: Arc<Store>,
    families: Vec<Arc<Family>>,
}

const MAX_LABELS: usize = 48;

impl Recorder {
    pub fn new(
        config: &IstioStats,
        direction: crate::model::listener::Direction,
        node: &crate::model::bootstrap::Node,
        store: &Arc<Store>,
    ) -> Self {
        let mut config = config.clone();
        resolve_node_metadata(&mut config, &node.metadata);
        let local = Local::from_node(node);
        let families = STANDARD_METRICS
            .iter()
            .enumerate()
            .map(|(i, m)| store.labelled().family(&format!("istio_{m}"), kind_of(i)))
            .collect();
        let build = store.labelled().family("istio_build", Kind::Gauge);
        let tag = if local.istio_version.is_empty() {
            UNKNOWN
        } else {
            &local.istio_version
        };
        build
            .series(&[("component", "proxy"), ("tag", tag)], &|n| {
                store.accepts(n)
            })
            .set(1);
        Self {
            reporter: config
                .reporter
                .unwrap_or_else(|| Reporter::from_direction(direction)),
            local,
            config,
            store: store.clone(),
            families,
        }
    }

    /// Add `amount` to `metric` (a counter, or one histogram sample) with these standard
    /// label values, after the config's overrides.
    pub fn record(
        &self,
        metric: usize,
        std: &[&str; HTTP_LABELS.len()],
        labels: Labels,
        cx: &EvalCx<'_>,
        amount: u64,
    ) {
        let o = &self.config.overrides[metric];
        if o.drop {
            return;
        }
        // Expression values first (they own what they computed).
        let evaluated: Vec<Cow<'_, str>> = if o.changed.is_empty() && o.added.is_empty() {
            Vec::new()
        } else {
            o.changed
                .iter()
                .filter_map(|(_, op)| match op {
                    LabelOp::Set(e) => Some(cx.eval(e)),
                    LabelOp::Remove => None,
                })
                .chain(o.added.iter().map(|(_, e)| cx.eval(e)))
                .collect()
        };
        let mut pairs: [(&str, &str); MAX_LABELS] = [("", ""); MAX_LABELS];
        let mut n = 0;
        for i in labels.indices() {
            let name = &HTTP_LABELS[i];
            let mut value = std[i];
            if !o.changed.is_empty() {
                let mut k = 0;
                let mut removed = false;
                for (label, op) in &o.changed {
                    match op {
                        LabelOp::Set(_) if label == name => value = &evaluated[k],
                        LabelOp::Remove if label == name => removed = true,
                        _ => {}
                    }
                    if matches!(op, LabelOp::Set(_)) {
                        k += 1;
                    }
                }
                if removed {
                    continue;
                }
            }
            pairs[n] = (name, value);
            n += 1;
        }
        let sets = o
            .changed
            .iter()
            .filter(|(_, op)| matches!(op, LabelOp::Set(_)))
            .count();
        for (j, (name, _)) in o.added.iter().enumerate() {
            if n == MAX_LABELS {
                break;
            }
            pairs[n] = (name, &evaluated[sets + j]);
            n += 1;
        }
        let store = &self.store;
        let key = crate::telemetry::labelled::hash(&pairs[..n]);
        self.families[metric].add(key, &pairs[..n], &|name| store.accepts(name), amount);
    }

    /// [`Recorder::record`] for several metrics with the same labels: the label set is built
    /// and hashed once for the metrics without overrides (all of them in Istio's default
    /// config).
    pub fn record_all(
        &self,
        metrics: &[(usize, u64)],
        std: &[&str; HTTP_LABELS.len()],
        labels: Labels,
        cx: &EvalCx<'_>,
    ) {
        let mut shared: Option<SharedLabels<'_>> = None;
        for &(metric, amount) in metrics {
            let o = &self.config.overrides[metric];
            if o.drop || !o.changed.is_empty() || !o.added.is_empty() {
                self.record(metric, std, labels, cx, amount);
                continue;
            }
            let (pairs, n, key) = shared.get_or_insert_with(|| {
                let mut pairs = [("", ""); HTTP_LABELS.len()];
                let mut n = 0;
                for i in labels.indices() {
                    pairs[n] = (HTTP_LABELS[i], std[i]);
                    n += 1;
                }
                let key = crate::telemetry::labelled::hash(&pairs[..n]);
                (pairs, n, key)
            });
            let store = &self.store;
            self.families[metric].add(*key, &pairs[..*n], &|name| store.accepts(name), amount);
        }
    }
}

/// The standard label pairs of a stream (`.1` of them used) and their key.
type SharedLabels<'a> = ([(&'static str, &'a str); HTTP_LABELS.len()], usize, u64);

/// Node metadata expressions are constants: resolved once.
fn resolve_node_metadata(config: &mut IstioStats, meta: &serde_json::Value) {
    let resolve = |e: &mut Expr| {
        for p in &mut e.0 {
            if let Part::Attr(Attr::NodeMetadata(path)) = p {
                let v = crate::model::istio_stats::node_metadata_value(meta, path);
                *p = Part::Lit(v.as_deref().unwrap_or(UNKNOWN).into());
            }
        }
    };
    for o in &mut config.overrides {
        for (_, op) in &mut o.changed {
            if let LabelOp::Set(e) = op {
                resolve(e);
            }
        }
        for (_, e) in &mut o.added {
            resolve(e);
        }
    }
}

/// The gRPC status as Envoy's `getGrpcStatus` finds it: the trailers' `grpc-status`, the
/// headers' (trailers-only responses), else inferred from the HTTP status; empty without a
/// response.
fn grpc_status<'b>(
    info: &crate::stream_info::StreamInfo,
    headers: Option<&'b http::HeaderMap>,
    buf: &'b mut [u8; 5],
) -> &'b str {
    if let Some(t) = info.grpc_status_trailer {
        return code_str(t.min(u16::MAX as u32) as u16, buf);
    }
    if let Some(h) = headers
        .and_then(|h| h.get(GRPC_STATUS_HEADER))
        .and_then(|v| v.to_str().ok())
    {
        return h;
    }
    match info.response_code {
        Some(code) => code_str(http_to_grpc_status(code), buf),
        None => "",
    }
}

/// Envoy's `Grpc::Utility::httpToGrpcStatus`.
fn http_to_grpc_status(code: u16) -> u16 {
    match code {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

/// `200` → "200" without allocating.
fn code_str(code: u16, buf: &mut [u8; 5]) -> &str {
    let mut n = code;
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[i..]).unwrap_or("0")
}

/// The filter's factory. It creates no per-stream instance: all it does happens at the end
/// of the stream.
#[derive(Debug)]
pub struct IstioStatsFactory {
    name: String,
    recorder: Recorder,
    clusters: Arc<crate::upstream::cluster::ClusterManager>,
}

pub const GRPC_STATUS_HEADER: http::HeaderName = http::HeaderName::from_static("grpc-status");

impl IstioStatsFactory {
    pub fn new(
        name: String,
        config: &IstioStats,
        direction: crate::model::listener::Direction,
        server: &crate::context::ServerContext,
        clusters: Arc<crate::upstream::cluster::ClusterManager>,
    ) -> Self {
        Self {
            name,
            recorder: Recorder::new(config, direction, &server.local.node, &server.store),
            clusters,
        }
    }

    /// Record one finished stream.
    pub fn complete(&self, s: &super::CompletedStream<'_>) {
        let info = s.info;
        let r = &self.recorder;
        let headers = s.request.map(|r| &r.headers);
        let header =
            |n: &http::HeaderName| headers.and_then(|h| h.get(n)).and_then(|v| v.to_str().ok());
        // Envoy's `isGrpcRequestHeaders` (`application/grpc` or `application/grpc+…`).
        let grpc = headers.is_some_and(crate::filters::http::grpc_stats::grpc_content_type);
        let cluster = info
            .upstream_cluster
            .as_deref()
            .and_then(|c| self.clusters.get(c));
        let (service_host, service_name) = crate::telemetry::istio::destination_service(
            header(&http::header::HOST),
            r.config.disable_host_header_fallback,
            info.route_name.as_deref(),
            info.upstream_cluster.as_deref(),
            cluster
                .as_ref()
                .and_then(|c| c.config.istio_service.as_ref()),
        );
        let (peer, (peer_san, local_san)) = match r.reporter {
            Reporter::ClientSidecar => (
                info.upstream_peer.as_deref(),
                crate::telemetry::istio::sans(info.upstream_tls.as_deref()),
            ),
            _ => (
                info.downstream_peer.as_deref(),
                crate::telemetry::istio::sans(info.connection.tls.as_deref()),
            ),
        };
        let mut buf = [0u8; 5];
        let code = code_str(info.response_code.unwrap_or(0), &mut buf);
        let mut gbuf = [0u8; 5];
        let grpc_status = match grpc {
            true => grpc_status(info, s.response_headers, &mut gbuf),
            false => "",
        };
        let flags: Cow<'_, str> = match info.response_flags.is_empty() {
            true => Cow::Borrowed("-"),
            false => Cow::Owned(info.response_flags.short_string()),
        };
        let facts = Facts {
            peer,
            peer_san,
            local_san,
            service_host,
            service_name,
            protocol: if grpc { "grpc" } else { "http" },
            response_code: code,
            grpc_status,
            flags: &flags,
        };
        let std = standard_labels(r.reporter, &r.local, &facts);
        let cx = EvalCx {
            request: s.request,
            protocol: info.protocol.map(|p| p.as_str()),
            response_code: info.response_code,
            grpc_status,
            cluster_name: info.upstream_cluster.as_deref(),
            route_name: info.route_name.as_deref(),
            upstream_peer: info.upstream_peer.as_deref(),
            downstream_peer: info.downstream_peer.as_deref(),
        };
        let end = info.last_downstream_tx.unwrap_or(info.start);
        let ms = end.duration_since(info.start).as_millis() as u64;
        let metrics = [
            (REQUESTS_TOTAL, 1),
            (REQUEST_DURATION, ms),
            (REQUEST_BYTES, info.bytes_received),
            (RESPONSE_BYTES, info.bytes_sent),
        ];
        r.record_all(&metrics, &std, Labels::Http, &cx);
        // Istio reads grpc_stats' filter state at the end of a gRPC stream (its periodic
        // reports while the stream lasts are not done): the counts with the peer labels.
        if let Some((rq, rs)) = info.filter_state.grpc_stats().filter(|_| grpc) {
            let messages = [(REQUEST_MESSAGES, rq), (RESPONSE_MESSAGES, rs)];
            r.record_all(&messages, &std, Labels::Peer, &cx);
        }
    }
}

impl super::HttpFilterFactory for IstioStatsFactory {
    fn name(&self) -> &str {
        &self.name
    }

    fn create(
        &self,
        _per_route: Option<&crate::model::per_filter::PerFilterConfig>,
        _cx: &super::StreamCx<'_>,
    ) -> Option<Box<dyn super::HttpFilter>> {
        None
    }

    fn on_stream_complete(&self, s: &super::CompletedStream<'_>) {
        self.complete(s)
    }

    fn observes_completion(&self) -> bool {
        true
    }

    fn completion_headers(&self) -> (&[http::HeaderName], &[http::HeaderName]) {
        static REQ: [http::HeaderName; 3] = [
            http::header::HOST,
            http::header::CONTENT_TYPE,
            http::HeaderName::from_static("x-request-id"),
        ];
        static RESP: [http::HeaderName; 1] = [GRPC_STATUS_HEADER];
        (&REQ, &RESP)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::istio_stats::parse;

    #[test]
    fn grpc_status_from_trailers_headers_or_http_status() {
        let conn = Arc::new(crate::stream_info::ConnectionInfo {
            id: 1,
            local: "127.0.0.1:1".parse().unwrap(),
            remote: "127.0.0.1:2".parse().unwrap(),
            requested_server_name: None,
            application_protocols: vec![],
            transport_protocol: "raw_buffer",
            tls: None,
        });
        let mut info = crate::stream_info::StreamInfo::new(conn);
        let mut b = [0u8; 5];
        assert_eq!(grpc_status(&info, None, &mut b), "");
        info.response_code = Some(503);
        assert_eq!(grpc_status(&info, None, &mut b), "14");
        let mut h = http::HeaderMap::new();
        h.insert(GRPC_STATUS_HEADER, "5".parse().unwrap());
        assert_eq!(grpc_status(&info, Some(&h), &mut b), "5");
        info.grpc_status_trailer = Some(0);
        assert_eq!(grpc_status(&info, Some(&h), &mut b), "0");
    }

    #[test]
    fn codes_format_without_allocating() {
        let mut b = [0u8; 5];
        assert_eq!(code_str(200, &mut b), "200");
        assert_eq!(code_str(0, &mut b), "0");
        assert_eq!(code_str(503, &mut b), "503");
    }

    #[test]
    fn expressions_evaluate_or_say_unknown() {
        let peer = Peer {
            workload: "w".into(),
            labels: vec![("role".into(), "server".into())],
            ..Default::default()
        };
        let cx = EvalCx {
            upstream_peer: Some(&peer),
            cluster_name: Some("c"),
            ..Default::default()
        };
        assert_eq!(
            cx.eval(&parse("upstream_peer.labels['role']").unwrap()),
            "server"
        );
        assert_eq!(
            cx.eval(&parse("'_' + upstream_peer.workload").unwrap()),
            "_w"
        );
        assert_eq!(cx.eval(&parse("xds.cluster_name").unwrap()), "c");
        assert_eq!(
            cx.eval(&parse("downstream_peer.workload").unwrap()),
            "unknown"
        );
        assert_eq!(cx.eval(&parse("request.host").unwrap()), "unknown");
    }

    fn recorder(cfg: crate::model::istio_pb::PluginConfig) -> (Recorder, Arc<Store>) {
        let store = Arc::new(Store::default());
        let cfg = IstioStats::from_proto(&crate::config::FieldPath::root(), &cfg).unwrap();
        let node = crate::model::bootstrap::Node {
            metadata: serde_json::json!({"ISTIO_VERSION": "1.5-dev", "LABELS": {"app": "a"}}),
            ..Default::default()
        };
        let r = Recorder::new(
            &cfg,
            crate::model::listener::Direction::Inbound,
            &node,
            &store,
        );
        (r, store)
    }

    fn render(store: &Store) -> String {
        crate::admin::stats::prometheus(
            store,
            &crate::admin::stats::Selection {
                filter: None,
                used_only: false,
            },
        )
    }

    /// The stats matcher sees Envoy's joined name: Istio's bootstrap keeps the families with
    /// its `istio` prefix (`istiocustom.…`); a matcher without it hides them.
    #[test]
    fn the_stats_matcher_applies_to_the_families() {
        use crate::telemetry::tags::TagProducer;
        for (prefix, shown) in [("istio", true), ("cluster.", false)] {
            let store = Arc::new(Store::new(
                TagProducer::envoy_defaults(),
                Some(Box::new(move |n: &str| n.starts_with(prefix))),
            ));
            let cfg =
                IstioStats::from_proto(&crate::config::FieldPath::root(), &Default::default())
                    .unwrap();
            let node = crate::model::bootstrap::Node::default();
            let r = Recorder::new(
                &cfg,
                crate::model::listener::Direction::Outbound,
                &node,
                &store,
            );
            let std = standard_labels(r.reporter, &r.local, &Facts::default());
            r.record(REQUESTS_TOTAL, &std, Labels::Http, &EvalCx::default(), 1);
            let text = render(&store);
            assert_eq!(
                text.contains("istio_requests_total{reporter=\"source\""),
                shown,
                "{text}"
            );
            assert_eq!(
                text.contains("istio_build{component=\"proxy\",tag=\"unknown\"} 1"),
                shown
            );
        }
    }

    #[test]
    fn overrides_change_remove_and_add_labels() {
        use crate::model::istio_pb::{MetricConfig, PluginConfig};
        let (r, store) = recorder(PluginConfig {
            metrics: vec![
                MetricConfig {
                    name: "requests_total".into(),
                    dimensions: [
                        (
                            "source_app".to_string(),
                            "'x' + node.metadata.LABELS.app".to_string(),
                        ),
                        ("extra".to_string(), "xds.cluster_name".to_string()),
                    ]
                    .into(),
                    tags_to_remove: vec!["response_flags".into()],
                    ..Default::default()
                },
                MetricConfig {
                    name: "request_bytes".into(),
                    drop: true,
                    ..Default::default()
                },
            ],
            ..Default::default()
        });
        assert_eq!(r.reporter, Reporter::ServerSidecar);
        let std = standard_labels(r.reporter, &r.local, &Facts::default());
        let cx = EvalCx {
            cluster_name: Some("inbound|9080||"),
            ..Default::default()
        };
        r.record(REQUESTS_TOTAL, &std, Labels::Http, &cx, 1);
        r.record(REQUEST_BYTES, &std, Labels::Http, &cx, 10);
        let text = render(&store);
        assert!(
            text.contains("# TYPE istio_requests_total counter"),
            "{text}"
        );
        assert!(text.contains("source_app=\"xa\""), "{text}");
        assert!(text.contains("extra=\"inbound|9080||\"} 1"), "{text}");
        assert!(!text.contains("response_flags"), "{text}");
        assert!(!text.contains("istio_request_bytes"), "{text}");
        assert!(
            text.contains("istio_build{component=\"proxy\",tag=\"1.5-dev\"} 1"),
            "{text}"
        );
    }

    /// The message counters carry the reporter and the peers' labels only, up to
    /// `destination_cluster`, as Istio has pushed them when it reports the counts.
    #[test]
    fn message_counters_carry_the_peer_labels_only() {
        let (r, store) = recorder(Default::default());
        let std = standard_labels(r.reporter, &r.local, &Facts::default());
        r.record(REQUEST_MESSAGES, &std, Labels::Peer, &EvalCx::default(), 5);
        r.record(RESPONSE_MESSAGES, &std, Labels::Peer, &EvalCx::default(), 7);
        let text = render(&store);
        assert!(
            text.contains("# TYPE istio_request_messages_total counter"),
            "{text}"
        );
        let line = |f: &str| {
            text.lines()
                .find(|l| l.starts_with(&format!("{f}{{")))
                .unwrap_or_else(|| panic!("{f} in {text}"))
                .to_string()
        };
        let rq = line("istio_request_messages_total");
        assert!(rq.ends_with("\"} 5"), "{rq}");
        // destination_cluster is the last label.
        let last = rq.rsplit(',').next().unwrap();
        assert!(last.starts_with("destination_cluster="), "{rq}");
        assert!(!rq.contains("request_protocol"), "{rq}");
        assert!(line("istio_response_messages_total").ends_with("} 7"));
    }
}
