//! `envoy.filters.network.http_connection_manager` at runtime: request sanitation
//! (hop-by-hop headers, x-forwarded-for, x-request-id, edge headers), route selection, the
//! HTTP filter chain ending in the router, response headers (server, date), local replies,
//! Envoy's `http.<stat_prefix>.*` stats and the access log.

use super::body::Body;
use super::local_reply::{self, LocalReply};
use super::names;
use super::stream::{ActiveStream, RequestProgress, RequestSnapshot, TrackedBody, WatchedBody};
use crate::filters::http::{RouteCx, StreamCx, chain};
use crate::model::hcm::{HttpConnectionManager as Config, ServerHeader, StripPort};
use crate::model::matcher::RequestHeaders;
use crate::model::route::{ClusterTarget, RouteAction, RouteConfig, RouteMatch, RouteRequest};
use crate::stream_info::{ConnectionInfo, Protocol, ResponseFlags, StreamInfo};
use crate::telemetry::access_log::{AccessLogger, filter_input};
use crate::telemetry::stats::{CodeStats, Counter, Gauge, Histogram, Store};
use crate::upstream::cluster::Cluster;
use crate::upstream::cluster::ClusterManager;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body::Body as _;
use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Instant;

/// `http.<stat_prefix>.*` (and the per-listener `listener.<addr>.http.<prefix>.downstream_rq_<N>xx`).
#[derive(Debug)]
pub struct HcmStats {
    pub downstream_cx_total: Arc<Counter>,
    pub downstream_cx_active: Arc<Gauge>,
    /// Connections that negotiated TLS (Envoy's `downstream_cx_ssl_total` / `_active`).
    pub downstream_cx_ssl_total: Arc<Counter>,
    pub downstream_cx_ssl_active: Arc<Gauge>,
    /// `request_headers_timeout` fired before a request head was complete.
    pub downstream_rq_header_timeout: Arc<Counter>,
    pub downstream_cx_http1_total: Arc<Counter>,
    pub downstream_cx_http1_active: Arc<Gauge>,
    pub downstream_cx_http2_total: Arc<Counter>,
    pub downstream_cx_http2_active: Arc<Gauge>,
    pub downstream_cx_destroy: Arc<Counter>,
    pub downstream_cx_destroy_remote: Arc<Counter>,
    pub downstream_cx_destroy_local: Arc<Counter>,
    pub downstream_cx_length_ms: Arc<Histogram>,
    pub downstream_cx_protocol_error: Arc<Counter>,
    pub downstream_cx_idle_timeout: Arc<Counter>,
    pub downstream_cx_max_duration_reached: Arc<Counter>,
    pub downstream_cx_max_requests_reached: Arc<Counter>,
    pub downstream_cx_drain_close: Arc<Counter>,
    pub downstream_cx_rx_bytes_total: Arc<Counter>,
    pub downstream_cx_tx_bytes_total: Arc<Counter>,
    pub downstream_cx_upgrades_total: Arc<Counter>,
    pub downstream_cx_upgrades_active: Arc<Gauge>,
    pub downstream_rq_total: Arc<Counter>,
    pub downstream_rq_http1_total: Arc<Counter>,
    pub downstream_rq_http2_total: Arc<Counter>,
    pub downstream_rq_active: Arc<Gauge>,
    pub downstream_rq_time: Arc<Histogram>,
    pub downstream_rq_timeout: Arc<Counter>,
    pub downstream_rq_idle_timeout: Arc<Counter>,
    pub downstream_rq_tx_reset: Arc<Counter>,
    pub downstream_rq_rx_reset: Arc<Counter>,
    pub downstream_rq_too_large: Arc<Counter>,
    pub downstream_rq_ws_on_non_ws_route: Arc<Counter>,
    pub downstream_rq_non_relative_path: Arc<Counter>,
    pub downstream_rq_codes: CodeStats,
    pub listener_rq_codes: CodeStats,
    pub no_route: Arc<Counter>,
    pub no_cluster: Arc<Counter>,
    pub rq_total: Arc<Counter>,
    pub rq_direct_response: Arc<Counter>,
    pub rq_redirect: Arc<Counter>,
    /// Envoy's root-scope `http2.*` flood counters.
    pub http2_flood: Arc<super::h2_flood::FloodStats>,
}

impl HcmStats {
    pub fn new(store: &Arc<Store>, prefix: &str, listener_stat_name: &str) -> Self {
        let p = format!("http.{prefix}.");
        let c = |n: &str| store.counter(&format!("{p}{n}"));
        let g = |n: &str| store.gauge(&format!("{p}{n}"));
        let h = |n: &str| store.histogram(&format!("{p}{n}"));
        Self {
            downstream_cx_total: c("downstream_cx_total"),
            downstream_cx_active: g("downstream_cx_active"),
            downstream_cx_ssl_total: c("downstream_cx_ssl_total"),
            downstream_cx_ssl_active: g("downstream_cx_ssl_active"),
            downstream_rq_header_timeout: c("downstream_rq_header_timeout"),
            downstream_cx_http1_total: c("downstream_cx_http1_total"),
            downstream_cx_http1_active: g("downstream_cx_http1_active"),
            downstream_cx_http2_total: c("downstream_cx_http2_total"),
            downstream_cx_http2_active: g("downstream_cx_http2_active"),
            downstream_cx_destroy: c("downstream_cx_destroy"),
            downstream_cx_destroy_remote: c("downstream_cx_destroy_remote"),
            downstream_cx_destroy_local: c("downstream_cx_destroy_local"),
            downstream_cx_length_ms: h("downstream_cx_length_ms"),
            downstream_cx_protocol_error: c("downstream_cx_protocol_error"),
            downstream_cx_idle_timeout: c("downstream_cx_idle_timeout"),
            downstream_cx_max_duration_reached: c("downstream_cx_max_duration_reached"),
            downstream_cx_max_requests_reached: c("downstream_cx_max_requests_reached"),
            downstream_cx_drain_close: c("downstream_cx_drain_close"),
            downstream_cx_rx_bytes_total: c("downstream_cx_rx_bytes_total"),
            downstream_cx_tx_bytes_total: c("downstream_cx_tx_bytes_total"),
            downstream_cx_upgrades_total: c("downstream_cx_upgrades_total"),
            downstream_cx_upgrades_active: g("downstream_cx_upgrades_active"),
            downstream_rq_total: c("downstream_rq_total"),
            downstream_rq_http1_total: c("downstream_rq_http1_total"),
            downstream_rq_http2_total: c("downstream_rq_http2_total"),
            downstream_rq_active: g("downstream_rq_active"),
            downstream_rq_time: h("downstream_rq_time"),
            downstream_rq_timeout: c("downstream_rq_timeout"),
            downstream_rq_idle_timeout: c("downstream_rq_idle_timeout"),
            downstream_rq_tx_reset: c("downstream_rq_tx_reset"),
            downstream_rq_rx_reset: c("downstream_rq_rx_reset"),
            downstream_rq_too_large: c("downstream_rq_too_large"),
            downstream_rq_ws_on_non_ws_route: c("downstream_rq_ws_on_non_ws_route"),
            downstream_rq_non_relative_path: c("downstream_rq_non_relative_path"),
            downstream_rq_codes: CodeStats::new(store, &format!("{p}downstream_rq"), false, true),
            listener_rq_codes: CodeStats::new(
                store,
                &format!("listener.{listener_stat_name}.http.{prefix}.downstream_rq"),
                false,
                true,
            ),
            no_route: c("no_route"),
            no_cluster: c("no_cluster"),
            rq_total: c("rq_total"),
            rq_direct_response: c("rq_direct_response"),
            rq_redirect: c("rq_redirect"),
            http2_flood: Arc::new(super::h2_flood::FloodStats::new(store)),
        }
    }
}

/// The node identity some headers carry (`--service-cluster`, `--service-node`).
#[derive(Debug, Clone, Default)]
pub struct LocalInfo {
    pub service_cluster: String,
    pub service_node: String,
    /// The bootstrap's node (Istio's peer metadata is built from it).
    pub node: crate::model::bootstrap::Node,
    /// The server's own address (Envoy's `LocalInfo::address()`): what an edge appends to
    /// x-forwarded-for for a loopback peer. `None`: the loopback address.
    pub address: Option<IpAddr>,
}

impl LocalInfo {
    /// Envoy's `Network::Utility::getLocalAddress`: the first interface address of the
    /// `--local-address-ip-version` family that is not loopback, else loopback.
    pub fn interface_address(v6: bool) -> IpAddr {
        let found = nix::ifaddrs::getifaddrs().ok().and_then(|mut addrs| {
            addrs.find_map(|a| {
                let sa = a.address?;
                let ip = match (sa.as_sockaddr_in(), sa.as_sockaddr_in6()) {
                    (Some(v4), _) if !v6 => IpAddr::V4(v4.ip()),
                    (_, Some(s6)) if v6 => IpAddr::V6(s6.ip()),
                    _ => return None,
                };
                (!is_loopback(ip)).then_some(ip)
            })
        });
        found.unwrap_or(if v6 {
            IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
        } else {
            IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
        })
    }
}

/// A downstream connection as the connection manager sees it.
#[derive(Debug)]
pub struct DownstreamConn {
    pub info: Arc<ConnectionInfo>,
    pub is_tls: bool,
    /// Requests served on this connection (for `max_requests_per_connection`).
    pub requests: AtomicU64,
    /// Streams in flight (for the connection idle timeout).
    pub active_streams: AtomicUsize,
    /// When the connection last had no stream in flight (ms since `opened`).
    idle_since_ms: AtomicU64,
    pub opened: Instant,
    /// Signalled when the connection should stop taking streams (HTTP/2 max requests reached).
    pub close_requested: tokio::sync::Notify,
    /// Why remora closes the connection, once it decided to (Envoy's local close reason, for
    /// the listener's access log).
    close_reason: std::sync::Mutex<Option<&'static str>>,
}

/// Envoy's local close reasons (`StreamInfo::LocalCloseReasons`) of the connections a
/// connection manager closes.
pub const CLOSE_IDLE_TIMEOUT: &str = "on_idle_timeout";
pub const CLOSE_DRAINED: &str = "deferred_close_on_drained_connection";

impl DownstreamConn {
    pub fn new(info: Arc<ConnectionInfo>, is_tls: bool) -> Arc<Self> {
        Arc::new(Self {
            info,
            is_tls,
            requests: AtomicU64::new(0),
            active_streams: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            opened: Instant::now(),
            close_requested: tokio::sync::Notify::new(),
            close_reason: std::sync::Mutex::new(None),
        })
    }

    /// remora closes the connection, for this reason (the first one given stays).
    pub fn closing(&self, reason: &'static str) {
        let mut r = self.close_reason.lock().unwrap_or_else(|e| e.into_inner());
        r.get_or_insert(reason);
    }

    pub fn close_reason(&self) -> Option<&'static str> {
        *self.close_reason.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn stream_started(&self) {
        self.active_streams.fetch_add(1, Relaxed);
    }

    pub fn stream_ended(&self) {
        if self.active_streams.fetch_sub(1, Relaxed) == 1 {
            self.idle_since_ms
                .store(self.opened.elapsed().as_millis() as u64, Relaxed);
        }
    }

    /// `Some(since)` when no stream is in flight.
    pub fn idle_since(&self) -> Option<Instant> {
        (self.active_streams.load(Relaxed) == 0).then(|| {
            self.opened + std::time::Duration::from_millis(self.idle_since_ms.load(Relaxed))
        })
    }
}

/// A built connection manager (one per filter chain).
pub struct ConnectionManager {
    pub config: Arc<Config>,
    /// The route table: inline, or kept current by RDS (swapped atomically per lookup).
    pub routes: Arc<crate::xds::rds::RouteTable>,
    pub stats: HcmStats,
    pub clusters: Arc<ClusterManager>,
    pub access_logs: Vec<AccessLogger>,
    /// Filters that record at the end of every stream (`istio.stats`), run for those the
    /// stream's route enables.
    completions: chain::Completions,
    /// The observers that run on a stream that ends before its route is known.
    pub no_route_completions: chain::CompletionSet,
    log_request_headers: Vec<HeaderName>,
    log_response_headers: Vec<HeaderName>,
    pub local: Arc<LocalInfo>,
    pub listener_port: u16,
    pub h1_limits: super::codec::h1::Limits,
    /// The HTTP filters before the router, built once (empty: the router alone).
    filters: Vec<chain::ChainEntry>,
    /// `istio.alpn`: ALPN offered to TLS upstreams by upstream protocol (read by the router).
    pub alpn: Option<Arc<crate::model::hcm::AlpnOverrides>>,
    /// The access log or the local-reply mappers read the request.
    keep_request: bool,
    /// `tracing`: the sampling decision and the stream's span.
    pub tracer: Option<Arc<crate::tracing::HttpTracer>>,
    /// The runtime snapshot request-time reads use (mirror policies' `runtime_fraction`).
    pub runtime: Arc<crate::runtime::RuntimeLoader>,
    /// `http.async-client.rq_total`: the mirrored copies sent (Envoy's async client counts them).
    pub async_client_rq_total: Arc<Counter>,
}

impl std::fmt::Debug for ConnectionManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionManager")
            .field("stat_prefix", &self.config.stat_prefix)
            .finish()
    }
}

/// What Envoy's `cleanInternalHeaders` removes from every request that is not internal.
const ENVOY_INTERNAL_HEADERS: [HeaderName; 14] = [
    names::X_ENVOY_RETRIABLE_STATUS_CODES,
    names::X_ENVOY_RETRIABLE_HEADER_NAMES,
    names::X_ENVOY_RETRY_ON,
    names::X_ENVOY_RETRY_GRPC_ON,
    names::X_ENVOY_MAX_RETRIES,
    names::X_ENVOY_UPSTREAM_ALT_STAT_NAME,
    names::X_ENVOY_UPSTREAM_RQ_TIMEOUT_MS,
    names::X_ENVOY_UPSTREAM_RQ_PER_TRY_TIMEOUT_MS,
    HeaderName::from_static("x-envoy-upstream-rq-timeout-alt-response"),
    names::X_ENVOY_EXPECTED_RQ_TIMEOUT_MS,
    names::X_ENVOY_FORCE_TRACE,
    names::X_ENVOY_IP_TAGS,
    HeaderName::from_static("x-envoy-original-url"),
    names::X_ENVOY_HEDGE_ON_PER_TRY_TIMEOUT,
];

/// And from an edge request (external, `use_remote_address`) also these.
const ENVOY_EDGE_HEADERS: [HeaderName; 3] = [
    names::X_ENVOY_DECORATOR_OPERATION,
    names::X_ENVOY_DOWNSTREAM_SERVICE_CLUSTER,
    names::X_ENVOY_DOWNSTREAM_SERVICE_NODE,
];

/// The XFCC element for a client certificate: `By=` (each of our URI SANs), `Hash=`, then the
/// configured fields in Envoy's order (Cert, Subject, URI, DNS).
fn xfcc_element(
    cfg: &crate::model::hcm::Xfcc,
    tls: &crate::transport_sockets::tls::TlsInfo,
) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(256);
    let sep = |out: &mut String| {
        if !out.is_empty() {
            out.push(';');
        }
    };
    if let Some(local) = &tls.local {
        for by in local.chain[0].uri_sans() {
            sep(&mut out);
            let _ = write!(out, "By={by}");
        }
    }
    let Some(peer) = &tls.peer else { return out };
    sep(&mut out);
    let _ = write!(out, "Hash={}", peer.details.sha256);
    if cfg.cert {
        sep(&mut out);
        let _ = write!(out, "Cert=\"{}\"", url_encode(&peer.pem()));
    }
    if cfg.subject {
        sep(&mut out);
        let _ = write!(out, "Subject=\"{}\"", peer.details.subject);
    }
    if cfg.uri {
        let mut any = false;
        for u in peer.details.uri_sans() {
            sep(&mut out);
            let _ = write!(out, "URI={u}");
            any = true;
        }
        if !any {
            sep(&mut out);
            out.push_str("URI=");
        }
    }
    if cfg.dns {
        for d in peer.details.dns_sans() {
            sep(&mut out);
            let _ = write!(out, "DNS={d}");
        }
    }
    out
}

/// Envoy's URL encoding of a PEM certificate in XFCC (RFC 3986 unreserved characters kept).
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3 / 2);
    url_encode_into(s, &mut out);
    out
}

/// The same, appended to `out` (also `%DOWNSTREAM_PEER_CERT%`).
pub fn url_encode_into(s: &str, out: &mut String) {
    use std::fmt::Write;
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

impl ConnectionManager {
    /// `x-forwarded-client-cert` as `forward_client_cert_details` says: removed unless the
    /// connection is mutual TLS (or the mode is ALWAYS_FORWARD_ONLY); with APPEND_FORWARD or
    /// SANITIZE_SET, this hop's client certificate element is appended or set.
    fn mutate_xfcc(&self, conn: &DownstreamConn, headers: &mut http::HeaderMap) {
        use crate::model::hcm::XfccMode as M;
        let cfg = &self.config.xfcc;
        if cfg.mode == M::AlwaysForwardOnly {
            return;
        }
        let mtls = conn.info.tls.as_deref().filter(|t| t.peer.is_some());
        let Some(tls) = mtls.filter(|_| cfg.mode != M::Sanitize) else {
            headers.remove(names::X_FORWARDED_CLIENT_CERT);
            return;
        };
        if cfg.mode == M::ForwardOnly {
            return;
        }
        let element = xfcc_element(cfg, tls);
        let value = match (cfg.mode, headers.get(names::X_FORWARDED_CLIENT_CERT)) {
            (M::AppendForward, Some(prev)) => {
                let mut v = prev.as_bytes().to_vec();
                v.push(b',');
                v.extend_from_slice(element.as_bytes());
                HeaderValue::from_bytes(&v)
            }
            _ => HeaderValue::from_str(&element),
        };
        match value {
            Ok(v) => {
                headers.insert(names::X_FORWARDED_CLIENT_CERT, v);
            }
            Err(_) => {
                headers.remove(names::X_FORWARDED_CLIENT_CERT);
            }
        }
    }

    pub fn new(
        config: Arc<Config>,
        cx: &crate::context::ServerContext,
        clusters: Arc<ClusterManager>,
        listener_stat_name: &str,
        listener_port: u16,
        direction: crate::model::listener::Direction,
    ) -> std::io::Result<Self> {
        let (store, local) = (&cx.store, cx.local.clone());
        let mut access_logs = Vec::new();
        let mut req_headers = Vec::new();
        let mut resp_headers = Vec::new();
        for l in &config.access_logs {
            req_headers.extend(l.request_headers());
            resp_headers.extend(l.response_headers());
            access_logs.push(AccessLogger::new(l.clone(), &cx.access_logs)?);
        }
        // Local-reply mappers select by request headers too.
        for m in &config.local_reply.mappers {
            m.filter.request_headers(&mut req_headers);
        }
        req_headers.push(header::HOST);
        let filters = chain::build(
            &config.http_filters,
            &chain::BuildCx {
                server: cx,
                stat_prefix: &config.stat_prefix,
                clusters: &clusters,
                direction,
            },
        );
        // Filters that record at the end of the stream read it as the access log does.
        let completions = chain::Completions::new(&filters);
        let no_route_completions = completions.for_route(&filters, None);
        for f in completions.factories() {
            let (rq, rs) = f.completion_headers();
            req_headers.extend(rq.iter().cloned());
            resp_headers.extend(rs.iter().cloned());
        }
        req_headers.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        req_headers.dedup();
        resp_headers.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        resp_headers.dedup();
        let h1_limits = super::codec::h1::Limits {
            max_header_bytes: config.max_request_headers_bytes,
            max_headers: config.max_headers_count,
            allow_absolute_url: config.http1.allow_absolute_url,
            accept_http_10: config.http1.accept_http_10,
            default_host_for_http_10: config.http1.default_host_for_http_10.clone(),
            allow_chunked_length: config.http1.allow_chunked_length,
            underscores: config.underscore_headers,
        };
        let routes = match &config.rds {
            Some(name) => crate::xds::rds::RouteTable::rds(
                &cx.routes,
                name,
                config.route_config.clone(),
                store,
                &config.stat_prefix,
            ),
            None => crate::xds::rds::RouteTable::fixed(config.route_config.clone()),
        };
        let alpn = crate::filters::http::alpn::router_overrides(&config.http_filters);
        let keep_request = !access_logs.is_empty()
            || !config.local_reply.mappers.is_empty()
            || !completions.is_empty();
        let tracer = crate::tracing::HttpTracer::new(&config, cx, &clusters, direction);
        Ok(Self {
            tracer,
            alpn,
            filters,
            keep_request,
            runtime: cx.runtime.clone(),
            async_client_rq_total: store.counter("http.async-client.rq_total"),
            stats: HcmStats::new(store, &config.stat_prefix, listener_stat_name),
            routes,
            config,
            clusters,
            access_logs,
            completions,
            no_route_completions,
            log_request_headers: req_headers,
            log_response_headers: resp_headers,
            local,
            listener_port,
            h1_limits,
        })
    }

    /// Write the access log lines of a finished stream.
    pub fn log(&self, s: &ActiveStream) {
        if !self.completions.is_empty() {
            let done = crate::filters::http::CompletedStream {
                info: &s.info,
                request: s.request.as_ref(),
                response_headers: s.response_headers.as_ref(),
            };
            self.completions
                .complete(&self.filters, s.completions, &done);
        }
        if self.access_logs.is_empty() {
            return;
        }
        let ctx = s.format_context();
        s.with_request_headers(|rh| {
            let input = filter_input(&s.info, rh);
            for l in &self.access_logs {
                l.log(&ctx, &input);
            }
        });
    }

    fn charge_response(&self, status: u16) {
        self.stats.downstream_rq_codes.charge(status);
        self.stats.listener_rq_codes.charge(status);
    }

    /// A response leaving the connection manager: response headers, stats, and the body
    /// wrapped so the stream finishes when it ends.
    pub fn respond(
        &self,
        mut stream: ActiveStream,
        mut resp: Response<Body>,
        deadline: Option<Instant>,
        idle: Option<std::time::Duration>,
    ) -> Response<Body> {
        let status = resp.status().as_u16();
        stream.info.response_code = Some(status);
        let h = resp.headers_mut();
        match self.config.server_header {
            ServerHeader::Overwrite => {
                h.insert(header::SERVER, self.config.server_name.clone());
            }
            ServerHeader::AppendIfAbsent => {
                if !h.contains_key(header::SERVER) {
                    h.insert(header::SERVER, self.config.server_name.clone());
                }
            }
            ServerHeader::PassThrough => {}
        }
        if !h.contains_key(header::DATE) {
            h.insert(header::DATE, http_date());
        }
        if self.config.always_set_request_id_in_response
            && let Some(id) = stream.request_id.clone()
        {
            h.insert(names::X_REQUEST_ID, id);
        }
        if let Some(via) = &self.config.via {
            h.append(header::VIA, via.clone());
        }
        if let Some(span) = &mut stream.span {
            span.on_response(h);
        }
        if !self.log_response_headers.is_empty() {
            let mut snap = http::HeaderMap::new();
            for name in &self.log_response_headers {
                for v in h.get_all(name) {
                    snap.append(name.clone(), v.clone());
                }
            }
            stream.response_headers = Some(snap);
        }
        self.charge_response(status);
        resp.map(|body| Body::Tracked(Box::new(TrackedBody::new(body, stream, deadline, idle))))
    }

    /// A local reply (`status`, Envoy's body text, details and flags) before a route was
    /// chosen, through `local_reply_config`.
    pub fn local_reply(
        &self,
        stream: &mut ActiveStream,
        status: StatusCode,
        body: &str,
        details: &'static str,
        flags: ResponseFlags,
    ) -> Response<Body> {
        let reply = LocalReply::new(status, body.to_string());
        self.local_response(stream, reply, details.into(), flags, None)
    }

    /// A local reply rendered: once a route was chosen, the route's response header mutations
    /// first, then `local_reply_config` (Envoy's order). It leaves through the encoder filters
    /// and `respond` like any response.
    pub fn local_response(
        &self,
        stream: &mut ActiveStream,
        mut reply: LocalReply,
        details: Cow<'static, str>,
        flags: ResponseFlags,
        route: Option<RouteCx<'_>>,
    ) -> Response<Body> {
        stream.info.response_code_details = details;
        stream.info.set_flag(flags);
        stream.info.response_code = Some(reply.status.as_u16());
        if let Some(levels) = route {
            self.apply_response_mutations(levels, &mut reply.headers, stream);
        }
        let mapped = stream.with_request_headers(|rh| {
            let input = filter_input(&stream.info, rh);
            local_reply::map(&self.config.local_reply, &mut reply, &input)
        });
        // The body format's %RESPONSE_CODE% (and the access log) see the mapped status.
        stream.info.response_code = Some(reply.status.as_u16());
        let mut resp = local_reply::render(reply, mapped, &stream.format_context());
        if stream.head_request {
            *resp.body_mut() = Body::Empty;
        }
        resp
    }

    /// A filter's local reply, through `local_reply_config`. The route's response header
    /// mutations are the router's (Envoy 1.40 adds them to the router's own replies, not to a
    /// filter's `sendLocalReply`: a local rate limit 429 or a CORS preflight answer has none).
    fn filter_reply(
        &self,
        stream: &mut ActiveStream,
        r: crate::filters::http::LocalReply,
        _route: Option<RouteCx<'_>>,
    ) -> Response<Body> {
        let body = match r.body {
            Cow::Borrowed(s) => bytes::Bytes::from_static(s.as_bytes()),
            Cow::Owned(s) => bytes::Bytes::from(s),
        };
        let mut reply = LocalReply::new(r.status, body);
        reply.headers = r.headers;
        self.local_response(stream, reply, r.details, r.flags, None)
    }

    /// Handle one request (HTTP/1 or HTTP/2): sanitation, route selection, the decoder
    /// filters, the router (terminal filter), the encoder filters, `respond`.
    pub async fn handle(
        self: &Arc<Self>,
        conn: &Arc<DownstreamConn>,
        req: Request<Body>,
        protocol: Protocol,
    ) -> Response<Body> {
        let mut stream = self.begin_stream(conn, protocol);
        let (mut parts, body) = req.into_parts();
        stream.head_request = parts.method == http::Method::HEAD;
        let facts = match self.sanitise(&mut stream, conn, &mut parts, protocol) {
            Ok(facts) => facts,
            Err(refusal) => {
                let resp = self.refuse(&mut stream, &parts, refusal);
                return self.respond(stream, resp, None, None);
            }
        };
        let route_config = self.routes.current.load_full();
        let selected = self.select_route(&route_config, &mut stream, conn, &parts, &facts);
        if let Some(t) = &self.tracer {
            let decorator = selected.route_cx().and_then(|r| r.route.decorator.as_ref());
            stream.span = crate::tracing::start_span(t, &mut parts, &stream.info, decorator);
        }
        if let Some(resp) = self.refuse_upgrade(&mut stream, &parts, &selected, &facts) {
            return self.respond(stream, resp, None, None);
        }
        if !self.filters.is_empty() {
            return self
                .run_chain(stream, conn, parts, body, &selected, &facts)
                .await;
        }
        let answer = self
            .terminal(&mut stream, parts, body, &selected, &facts)
            .await;
        self.respond(stream, answer.resp, answer.deadline, answer.idle)
    }

    /// The stream's start: stats, `max_requests_per_connection` on HTTP/2, its StreamInfo.
    fn begin_stream(
        self: &Arc<Self>,
        conn: &Arc<DownstreamConn>,
        protocol: Protocol,
    ) -> ActiveStream {
        let stats = &self.stats;
        stats.downstream_rq_total.inc();
        stats.downstream_rq_active.inc();
        match protocol {
            Protocol::Http2 => stats.downstream_rq_http2_total.inc(),
            _ => stats.downstream_rq_http1_total.inc(),
        }
        let served = conn.requests.fetch_add(1, Relaxed) + 1;
        if protocol == Protocol::Http2
            && self
                .config
                .max_requests_per_connection
                .is_some_and(|m| served >= m as u64)
        {
            stats.downstream_cx_max_requests_reached.inc();
            conn.close_requested.notify_one();
        }
        let mut info = StreamInfo::new(conn.info.clone());
        info.protocol = Some(protocol);
        ActiveStream::new(self.clone(), conn.clone(), info)
    }

    /// The access log (and the local-reply mappers) see the request as it left the
    /// connection manager: taken once, where the request is answered or forwarded.
    pub fn snapshot_request(&self, stream: &mut ActiveStream, parts: &http::request::Parts) {
        if self.keep_request {
            stream.request = Some(snapshot(parts, &self.log_request_headers));
        }
    }

    /// An early refusal (before the filters), as Envoy's connection manager answers it.
    fn refuse(
        &self,
        stream: &mut ActiveStream,
        parts: &http::request::Parts,
        (status, details, flags): Refusal,
    ) -> Response<Body> {
        self.snapshot_request(stream, parts);
        self.local_reply(stream, status, "", details, flags)
    }

    /// Envoy's request checks and header sanitation (`mutateRequestHeaders`): host, path form,
    /// header count, x-forwarded-*, internal/edge headers, XFCC, x-request-id, via, user agent,
    /// hop-by-hop headers, merged slashes. `Err`: the refusal to send.
    fn sanitise(
        &self,
        stream: &mut ActiveStream,
        conn: &DownstreamConn,
        parts: &mut http::request::Parts,
        protocol: Protocol,
    ) -> Result<RequestFacts, Refusal> {
        // A CONNECT's authority-form target has no :path: no path matcher matches it (Envoy
        // routes such a request only by connect_matcher, which remora refuses).
        let no_path = parts.method == http::Method::CONNECT && parts.uri.path_and_query().is_none();
        normalise_authority(parts);
        self.check_request(parts, protocol)?;
        // Downstream address, internal/external, x-forwarded-for.
        let remote = conn.info.remote;
        let (downstream_ip, internal) = self.forwarded_for(&mut parts.headers, remote.ip());
        let port = if downstream_ip == remote.ip() {
            remote.port()
        } else {
            0
        };
        stream.info.downstream_remote = SocketAddr::new(downstream_ip, port);
        self.sanitise_internal(&mut parts.headers, internal, downstream_ip);
        // Envoy's router counts a request as internal by this header (after edge sanitation).
        let internal_request = parts
            .headers
            .get(names::X_ENVOY_INTERNAL)
            .is_some_and(|v| v == "true");
        self.mutate_xfcc(conn, &mut parts.headers);
        let scheme = if conn.is_tls { "https" } else { "http" };
        self.forwarded_headers(&mut parts.headers, conn, scheme);
        self.request_id(stream, &mut parts.headers, internal);
        self.node_headers(&mut parts.headers);
        // Hop-by-hop headers and upgrades.
        let upgrade = upgrade_type(&parts.headers);
        strip_hop_by_hop(&mut parts.headers, upgrade.is_some());
        if self.config.merge_slashes {
            merge_slashes(&mut parts.uri);
        }
        Ok(RequestFacts {
            internal,
            internal_request,
            scheme,
            upgrade,
            no_path,
        })
    }

    /// The refusals before sanitation: no host, a path that is not relative, too many headers
    /// on HTTP/2. Envoy answers them without a response flag but the last.
    fn check_request(
        &self,
        parts: &http::request::Parts,
        protocol: Protocol,
    ) -> Result<(), Refusal> {
        let stats = &self.stats;
        let none = ResponseFlags::empty();
        if !parts.headers.contains_key(header::HOST) {
            return Err((StatusCode::BAD_REQUEST, "missing_host_header", none));
        }
        // Only relative paths reach routing (`OPTIONS *` and other forms are refused).
        if parts.method != http::Method::CONNECT && !parts.uri.path().starts_with('/') {
            stats.downstream_rq_non_relative_path.inc();
            return Err((StatusCode::NOT_FOUND, "absolute_path_rejected", none));
        }
        if protocol == Protocol::Http2 && parts.headers.len() > self.config.max_headers_count {
            stats.downstream_rq_too_large.inc();
            let status = StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
            let flags = ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR;
            return Err((status, "too_many_headers", flags));
        }
        Ok(())
    }

    /// x-forwarded-proto and x-forwarded-port.
    fn forwarded_headers(
        &self,
        h: &mut http::HeaderMap,
        conn: &DownstreamConn,
        scheme: &'static str,
    ) {
        if self.config.use_remote_address || !h.contains_key(names::X_FORWARDED_PROTO) {
            h.insert(names::X_FORWARDED_PROTO, HeaderValue::from_static(scheme));
        }
        if self.config.append_x_forwarded_port {
            h.insert(
                names::X_FORWARDED_PORT,
                HeaderValue::from(conn.info.local.port()),
            );
        }
    }

    /// x-request-id: generated when absent (or regenerated for an external request at the
    /// edge), kept for the response with `always_set_request_id_in_response`.
    fn request_id(&self, stream: &mut ActiveStream, h: &mut http::HeaderMap, internal: bool) {
        if self.config.generate_request_id {
            let regenerate = match h.get(names::X_REQUEST_ID) {
                None => true,
                Some(_) => {
                    self.config.use_remote_address
                        && !internal
                        && !self.config.preserve_external_request_id
                }
            };
            if regenerate {
                h.insert(names::X_REQUEST_ID, uuid_v4());
            }
        }
        if self.config.always_set_request_id_in_response {
            stream.request_id = h.get(names::X_REQUEST_ID).cloned();
        }
    }

    /// via, and with `add_user_agent` the user agent and x-envoy-downstream-service-*.
    fn node_headers(&self, h: &mut http::HeaderMap) {
        if let Some(via) = &self.config.via {
            h.append(header::VIA, via.clone());
        }
        if self.config.add_user_agent && !self.local.service_cluster.is_empty() {
            if let Ok(cluster) = HeaderValue::from_str(&self.local.service_cluster) {
                if !h.contains_key(header::USER_AGENT) {
                    h.insert(header::USER_AGENT, cluster.clone());
                }
                h.insert(names::X_ENVOY_DOWNSTREAM_SERVICE_CLUSTER, cluster);
            }
            if let Ok(node) = HeaderValue::from_str(&self.local.service_node) {
                h.insert(names::X_ENVOY_DOWNSTREAM_SERVICE_NODE, node);
            }
        }
    }

    /// The virtual host and route, and (as Envoy resolves them with the route) the weighted
    /// cluster and the cluster: the filters' per-route configuration and `%UPSTREAM_CLUSTER%`
    /// are known before the decoder filters run.
    fn select_route<'r>(
        &self,
        rc: &'r RouteConfig,
        stream: &mut ActiveStream,
        conn: &DownstreamConn,
        parts: &http::request::Parts,
        facts: &RequestFacts,
    ) -> Selected<'r> {
        let (path_and_query, authority) = request_target(parts, facts.no_path);
        let host_for_routing = self.routing_host(authority);
        let rr = RouteRequest {
            headers: RequestHeaders {
                method: &parts.method,
                path_and_query,
                authority,
                scheme: facts.scheme,
                headers: &parts.headers,
            },
            host: &host_for_routing,
            is_tls: conn.is_tls,
            is_internal: facts.internal,
        };
        let (vhost, route, matched_len) = match rc.route(&rr) {
            RouteMatch::NoRoute => return Selected::NoRoute,
            RouteMatch::RequireTls { .. } => return Selected::RequireTls,
            RouteMatch::Route {
                vhost,
                route,
                matched_prefix_len,
            } => (vhost, route, matched_prefix_len),
        };
        stream.info.route_name = route.name.clone();
        let (weighted, cluster) = match &route.action {
            RouteAction::Forward(fwd) => {
                let (name, weighted): (&str, _) = match &fwd.cluster {
                    ClusterTarget::Name(n) => (n, None),
                    ClusterTarget::Header(h) => (
                        parts
                            .headers
                            .get(h)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or(""),
                        None,
                    ),
                    ClusterTarget::Weighted(w) => {
                        let c = w.pick(fastrand::u64(..));
                        (&c.name, Some(c))
                    }
                };
                let cluster = self.clusters.get(name);
                if let Some(c) = &cluster {
                    stream.info.upstream_cluster = Some(c.config.name.clone());
                }
                (weighted, cluster)
            }
            _ => (None, None),
        };
        Selected::Route {
            at: RouteCx {
                route_config: rc,
                vhost,
                route,
                weighted,
            },
            matched_len,
            cluster,
        }
    }

    /// An upgrade the route does not allow: refused before the filter chain (Envoy creates
    /// no chain for it).
    fn refuse_upgrade(
        &self,
        stream: &mut ActiveStream,
        parts: &http::request::Parts,
        selected: &Selected<'_>,
        facts: &RequestFacts,
    ) -> Option<Response<Body>> {
        let up = facts.upgrade.as_ref()?;
        let Selected::Route { at, .. } = selected else {
            return None;
        };
        let RouteAction::Forward(fwd) = &at.route.action else {
            return None;
        };
        if self.config.upgrade_allowed(&fwd.upgrades, up) {
            return None;
        }
        self.stats.downstream_rq_ws_on_non_ws_route.inc();
        let refusal = (
            StatusCode::FORBIDDEN,
            "upgrade_failed",
            ResponseFlags::empty(),
        );
        Some(self.refuse(stream, parts, refusal))
    }

    /// The request through the decoder filters, the router, and the response back through the
    /// encoder filters (reverse order). A decoder filter's local reply goes back through the
    /// encoder side of the filters before it.
    async fn run_chain(
        self: &Arc<Self>,
        mut stream: ActiveStream,
        conn: &DownstreamConn,
        mut parts: http::request::Parts,
        body: Body,
        selected: &Selected<'_>,
        facts: &RequestFacts,
    ) -> Response<Body> {
        let route = selected.route_cx();
        let mut filters = chain::create(&self.filters, &stream_cx(conn, &mut stream, route));
        if !self.completions.is_empty() {
            stream.completions = self.completions.for_route(&self.filters, route);
        }
        if filters.is_empty() {
            let a = self
                .terminal(&mut stream, parts, body, selected, facts)
                .await;
            return self.respond(stream, a.resp, a.deadline, a.idle);
        }
        let end_stream = body.is_end_stream();
        let decoded = {
            let (keep, names) = (self.keep_request, &self.log_request_headers);
            let request = &mut stream.request;
            let mut before_pause = |p: &http::request::Parts| {
                if keep {
                    *request = Some(snapshot(p, names));
                }
            };
            let mut cx = StreamCx {
                connection: &conn.info,
                info: &mut stream.info,
                route,
            };
            chain::decode_headers(
                &mut filters,
                &mut parts,
                end_stream,
                &mut cx,
                &mut before_pause,
            )
            .await
        };
        let answer = match decoded {
            Ok(()) => {
                let body = chain::decode_body(
                    &mut filters,
                    body,
                    &mut stream_cx(conn, &mut stream, route),
                );
                self.terminal(&mut stream, parts, body, selected, facts)
                    .await
            }
            Err((i, reply)) => {
                filters.truncate(i);
                self.snapshot_request(&mut stream, &parts);
                Answer::local(self.filter_reply(&mut stream, reply, route))
            }
        };
        let (resp, replaced) = self
            .encode(&mut filters, &mut stream, conn, route, answer.resp)
            .await;
        match replaced {
            true => self.respond(stream, resp, None, None),
            false => self.respond(stream, resp, answer.deadline, answer.idle),
        }
    }

    /// The encoder side: response headers through the filters in reverse order (a filter's
    /// local reply replaces the response and goes on through the filters before it), then the
    /// body. `true`: a filter replaced the response.
    async fn encode(
        &self,
        filters: &mut chain::StreamFilters,
        stream: &mut ActiveStream,
        conn: &DownstreamConn,
        route: Option<RouteCx<'_>>,
        resp: Response<Body>,
    ) -> (Response<Body>, bool) {
        let (mut parts, mut body) = resp.into_parts();
        let mut upto = filters.len();
        let mut replaced = false;
        loop {
            stream.info.response_code = Some(parts.status.as_u16());
            let end = body.is_end_stream();
            let mut cx = stream_cx(conn, stream, route);
            let Some((i, reply)) =
                chain::encode_headers(&mut filters[..upto], &mut parts, end, &mut cx).await
            else {
                break;
            };
            (parts, body) = self.filter_reply(stream, reply, route).into_parts();
            upto = i;
            replaced = true;
        }
        let body = chain::encode_body(
            &mut filters[..upto],
            body,
            &mut stream_cx(conn, stream, route),
        );
        (Response::from_parts(parts, body), replaced)
    }

    /// The router's part, as the terminal filter: no route (404 `NR`), the https redirect of
    /// `require_tls`, direct responses, redirects, and forwarding.
    async fn terminal(
        self: &Arc<Self>,
        stream: &mut ActiveStream,
        parts: http::request::Parts,
        body: Body,
        selected: &Selected<'_>,
        facts: &RequestFacts,
    ) -> Answer {
        let stats = &self.stats;
        // Envoy's router counts every request it decodes, routed or not (no route, direct
        // responses and redirects included).
        stats.rq_total.inc();
        let (levels, matched_len, cluster) = match selected {
            Selected::NoRoute => {
                stats.no_route.inc();
                self.snapshot_request(stream, &parts);
                let (nf, nr) = (StatusCode::NOT_FOUND, ResponseFlags::NO_ROUTE_FOUND);
                return Answer::local(self.local_reply(stream, nf, "", "route_not_found", nr));
            }
            Selected::RequireTls => {
                stats.rq_redirect.inc();
                self.snapshot_request(stream, &parts);
                let (pq, authority) = request_target(&parts, facts.no_path);
                let location = format!("https://{authority}{pq}");
                let reply = redirect_reply(StatusCode::MOVED_PERMANENTLY, &location);
                let (details, none) = ("direct_response".into(), ResponseFlags::empty());
                return Answer::local(self.local_response(stream, reply, details, none, None));
            }
            Selected::Route {
                at,
                matched_len,
                cluster,
            } => (*at, *matched_len, cluster),
        };
        // Direct responses and redirects are the router's local replies (Envoy: mapped by
        // local_reply_config, finalized with the route's response headers).
        let reply = match &levels.route.action {
            RouteAction::Direct(d) => {
                stats.rq_direct_response.inc();
                LocalReply::new(d.status, d.body.clone().unwrap_or_default())
            }
            RouteAction::Redirect(r) => {
                stats.rq_redirect.inc();
                redirect_reply(
                    r.code,
                    &self.redirect_location(r, &parts, facts, matched_len),
                )
            }
            RouteAction::Forward(fwd) => {
                let body = self.watch_request_body(stream, body);
                let ctx = super::router::Forward {
                    route_config: levels.route_config,
                    vhost: levels.vhost,
                    route: levels.route,
                    action: fwd,
                    matched_len,
                    internal: facts.internal_request,
                    upgrade: facts.upgrade.is_some(),
                    weighted: levels.weighted,
                    cluster: cluster.clone(),
                };
                let req = Request::from_parts(parts, body);
                return super::router::forward(self, stream, req, ctx).await;
            }
        };
        self.snapshot_request(stream, &parts);
        let (details, none) = ("direct_response".into(), ResponseFlags::empty());
        Answer::local(self.local_response(stream, reply, details, none, Some(levels)))
    }

    /// A route's redirect target for this request.
    fn redirect_location(
        &self,
        r: &crate::model::route::Redirect,
        parts: &http::request::Parts,
        facts: &RequestFacts,
        matched_len: usize,
    ) -> String {
        let (path_and_query, authority) = request_target(parts, facts.no_path);
        // The scheme of the request as Envoy sees it: x-forwarded-proto (sanitised above).
        let request_scheme = parts
            .headers
            .get(names::X_FORWARDED_PROTO)
            .and_then(|v| v.to_str().ok())
            .filter(|s| s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("https"))
            .unwrap_or(facts.scheme);
        super::router::redirect_location(r, request_scheme, authority, path_and_query, matched_len)
    }

    /// The request body as the router reads it: watched for its end, activity and size unless
    /// the request came complete.
    fn watch_request_body(&self, stream: &mut ActiveStream, body: Body) -> Body {
        if body.is_end_stream() {
            stream.info.last_downstream_rx = Some(Instant::now());
            return body;
        }
        let progress = RequestProgress::new(stream.info.start);
        stream.progress = Some(progress.clone());
        Body::Watched(Box::new(WatchedBody::new(body, progress)))
    }

    /// Response header mutations, innermost first (weighted cluster, route, virtual host, route
    /// configuration), or outermost first with `most_specific_header_mutations_wins`.
    pub fn apply_response_mutations(
        &self,
        levels: RouteCx<'_>,
        headers: &mut http::HeaderMap,
        stream: &ActiveStream,
    ) {
        let all = [
            levels.weighted.map(|w| &w.response_headers),
            Some(&levels.route.response_headers),
            Some(&levels.vhost.response_headers),
            Some(&levels.route_config.response_headers),
        ];
        let ctx = stream.format_context();
        if levels.route_config.most_specific_header_mutations_wins {
            for m in all.iter().rev().flatten() {
                m.apply_response(headers, &ctx);
            }
        } else {
            for m in all.iter().flatten() {
                m.apply_response(headers, &ctx);
            }
        }
    }

    /// x-forwarded-for handling (Envoy's `mutateRequestHeaders`); returns the downstream client
    /// IP and whether the request is internal. At the edge a request is internal only when it
    /// came without XFF from an internal address; behind it, when XFF holds a single internal one.
    fn forwarded_for(&self, headers: &mut http::HeaderMap, remote: IpAddr) -> (IpAddr, bool) {
        let cfg = &self.config;
        if !cfg.use_remote_address {
            return match last_xff_address(headers, cfg.xff_num_trusted_hops) {
                Some((ip, single)) => (ip, single && cfg.internal_addresses.is_internal(ip)),
                None => (remote, false),
            };
        }
        let trusted_checks = !headers.contains_key(names::X_FORWARDED_FOR);
        let client = cfg
            .xff_num_trusted_hops
            .checked_sub(1)
            .and_then(|skip| last_xff_address(headers, skip))
            .map_or(remote, |(ip, _)| ip);
        if !cfg.skip_xff_append {
            // Envoy appends its own address for a loopback peer.
            let appended = if is_loopback(remote) {
                self.local
                    .address
                    .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
            } else {
                remote
            };
            let xff = match headers
                .get(names::X_FORWARDED_FOR)
                .and_then(|v| v.to_str().ok())
            {
                Some(existing) if !existing.is_empty() => format!("{existing},{appended}"),
                _ => appended.to_string(),
            };
            if let Ok(v) = HeaderValue::from_str(&xff) {
                headers.insert(names::X_FORWARDED_FOR, v);
            }
        }
        (
            client,
            trusted_checks && cfg.internal_addresses.is_internal(client),
        )
    }

    /// Envoy's internal/edge header rules: a client's x-envoy-internal never passes; an
    /// internal request gets `x-envoy-internal: true`; any other loses the x-envoy-* request
    /// controls and the internal-only headers, and an edge one gets x-envoy-external-address.
    fn sanitise_internal(&self, headers: &mut http::HeaderMap, internal: bool, client: IpAddr) {
        if internal {
            headers.insert(names::X_ENVOY_INTERNAL, HeaderValue::from_static("true"));
            return;
        }
        let edge = self.config.use_remote_address;
        if names::any_envoy_header(headers) {
            headers.remove(names::X_ENVOY_INTERNAL);
            for name in &ENVOY_INTERNAL_HEADERS {
                headers.remove(name);
            }
            if edge {
                for name in &ENVOY_EDGE_HEADERS {
                    headers.remove(name);
                }
            }
        }
        for h in &self.routes.current.load().internal_only_headers {
            headers.remove(h);
        }
        if edge && let Ok(v) = HeaderValue::from_str(&client.to_string()) {
            headers.insert(names::X_ENVOY_EXTERNAL_ADDRESS, v);
        }
    }

    /// The host the virtual hosts are matched against: lower-cased, with the port stripped as
    /// configured. Borrowed from the header unless something had to change.
    fn routing_host<'h>(&self, raw: &'h str) -> Cow<'h, str> {
        let mut host: Cow<'h, str> = if raw.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(raw.to_ascii_lowercase())
        } else {
            Cow::Borrowed(raw)
        };
        let strip = match self.config.strip_port {
            StripPort::None => None,
            StripPort::Any => Some(None),
            StripPort::Matching => Some(Some(self.listener_port)),
        };
        if let Some(only) = strip
            && let Some((h, p)) = split_port(&host)
            && only.is_none_or(|lp| p == lp)
        {
            let keep = h.len();
            truncate(&mut host, keep);
        }
        if self.config.strip_trailing_host_dot {
            if let Some((h, p)) = split_port(&host) {
                if let Some(h) = h.strip_suffix('.') {
                    host = Cow::Owned(format!("{h}:{p}"));
                }
            } else if host.ends_with('.') {
                let keep = host.len() - 1;
                truncate(&mut host, keep);
            }
        }
        host
    }

    /// A codec error on HTTP/1 (before a request could be formed): count it and log it.
    pub fn codec_error(
        self: &Arc<Self>,
        conn: &Arc<DownstreamConn>,
        status: StatusCode,
        details: &'static str,
    ) {
        self.stats.downstream_cx_protocol_error.inc();
        self.stats.downstream_rq_total.inc();
        self.stats.downstream_rq_http1_total.inc();
        self.stats.downstream_rq_active.inc();
        let mut info = StreamInfo::new(conn.info.clone());
        info.protocol = Some(Protocol::Http11);
        info.response_code = Some(status.as_u16());
        info.response_code_details = details.into();
        info.set_flag(ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR);
        let reason = status.canonical_reason().unwrap_or("");
        info.bytes_sent = reason.len() as u64;
        self.charge_response(status.as_u16());
        let mut stream = ActiveStream::new(self.clone(), conn.clone(), info);
        stream.finish(super::stream::End::Complete);
    }
}

/// A request the connection manager refuses before the filters: status, details, flags.
type Refusal = (StatusCode, &'static str, ResponseFlags);

/// What sanitation learned about a request that routing and the router use.
struct RequestFacts {
    /// Internal by x-forwarded-for (route matching's `is_internal`).
    internal: bool,
    /// `x-envoy-internal: true` after sanitation (the router's internal/external stats).
    internal_request: bool,
    scheme: &'static str,
    /// The upgrade asked for (`Connection: upgrade`), if any.
    upgrade: Option<String>,
    /// A CONNECT without a path.
    no_path: bool,
}

/// What route selection found.
enum Selected<'r> {
    NoRoute,
    /// `require_tls` on the virtual host: the router redirects to https.
    RequireTls,
    Route {
        /// The route, its virtual host and configuration, and the weighted cluster drawn (for
        /// a route with weighted clusters).
        at: RouteCx<'r>,
        matched_len: usize,
        /// The route's cluster, when it exists.
        cluster: Option<Arc<Cluster>>,
    },
}

impl<'r> Selected<'r> {
    /// What the filters see of the route.
    fn route_cx(&self) -> Option<RouteCx<'r>> {
        match self {
            Selected::Route { at, .. } => Some(*at),
            _ => None,
        }
    }
}

/// What the router answered: the response, and the route timeout's deadline and the stream
/// idle timeout that still bound its body.
pub struct Answer {
    pub resp: Response<Body>,
    pub deadline: Option<Instant>,
    pub idle: Option<std::time::Duration>,
}

impl Answer {
    pub fn local(resp: Response<Body>) -> Self {
        Self {
            resp,
            deadline: None,
            idle: None,
        }
    }
}

/// What a filter sees of its stream.
fn stream_cx<'a>(
    conn: &'a DownstreamConn,
    stream: &'a mut ActiveStream,
    route: Option<RouteCx<'a>>,
) -> StreamCx<'a> {
    StreamCx {
        connection: &conn.info,
        info: &mut stream.info,
        route,
    }
}

/// HTTP/2's :authority (or an absolute-form target) becomes Host, and the target origin-form.
fn normalise_authority(parts: &mut http::request::Parts) {
    let Some(auth) = parts.uri.authority() else {
        return;
    };
    if let Ok(v) = HeaderValue::from_str(auth.as_str()) {
        parts.headers.insert(header::HOST, v);
    }
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    parts.uri = http::Uri::try_from(pq).unwrap_or_else(|_| http::Uri::from_static("/"));
}

/// The path (with its query; empty for a CONNECT without one) and the authority.
fn request_target(parts: &http::request::Parts, no_path: bool) -> (&str, &str) {
    let path_and_query = match parts.uri.path_and_query() {
        _ if no_path => "",
        pq => pq.map_or("/", |p| p.as_str()),
    };
    let authority = parts
        .headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    (path_and_query, authority)
}

/// A redirect: a `location` and no body (until `local_reply_config` formats one).
fn redirect_reply(code: StatusCode, location: &str) -> LocalReply {
    let mut reply = LocalReply::new(code, bytes::Bytes::new());
    if let Ok(v) = HeaderValue::from_str(location) {
        reply.headers.insert(header::LOCATION, v);
    }
    reply
}

fn split_port(host: &str) -> Option<(&str, u16)> {
    if host.starts_with('[') {
        let end = host.rfind("]:")?;
        return Some((&host[..=end], host[end + 2..].parse().ok()?));
    }
    let (h, p) = host.rsplit_once(':')?;
    if h.contains(':') {
        return None;
    }
    Some((h, p.parse().ok()?))
}

/// Envoy's `isLoopbackAddress`: exactly 127.0.0.1 or ::1.
fn is_loopback(ip: IpAddr) -> bool {
    ip == IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
        || ip == IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
}

/// The XFF entry `skip` places from the right (Envoy's `getLastAddressFromXFF`), and whether
/// XFF held a single address.
fn last_xff_address(headers: &http::HeaderMap, skip: u32) -> Option<(IpAddr, bool)> {
    let xff = headers.get(names::X_FORWARDED_FOR)?.to_str().ok()?;
    let parts: Vec<&str> = xff.split(',').map(str::trim).collect();
    let idx = parts.len().checked_sub(1 + skip as usize)?;
    let ip = parts.get(idx)?.parse::<IpAddr>().ok()?;
    Some((ip, parts.len() == 1))
}

/// The upgrade protocol requested (`Connection: upgrade` + `Upgrade: x`), ignoring `h2c`.
fn upgrade_type(h: &http::HeaderMap) -> Option<String> {
    let conn_upgrade = h.get_all(header::CONNECTION).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
    });
    if !conn_upgrade {
        return None;
    }
    let up = h
        .get(header::UPGRADE)?
        .to_str()
        .ok()?
        .trim()
        .to_ascii_lowercase();
    (up != "h2c" && !up.is_empty()).then_some(up)
}

/// Remove hop-by-hop request headers (keeping `te: trailers`, and the upgrade pair for allowed upgrades).
fn strip_hop_by_hop(h: &mut http::HeaderMap, keep_upgrade: bool) {
    if !keep_upgrade && !names::any_hop_by_hop(h) {
        return;
    }
    for name in [
        names::KEEP_ALIVE,
        names::PROXY_CONNECTION,
        header::TRANSFER_ENCODING,
        names::HTTP2_SETTINGS,
    ] {
        h.remove(name);
    }
    if keep_upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        h.remove(header::CONNECTION);
        h.remove(header::UPGRADE);
    }
    let te_trailers = h.get_all(header::TE).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"))
    });
    h.remove(header::TE);
    if te_trailers {
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

fn truncate(s: &mut Cow<'_, str>, len: usize) {
    match s {
        Cow::Borrowed(b) => *b = &b[..len],
        Cow::Owned(o) => o.truncate(len),
    }
}

fn merge_slashes(uri: &mut http::Uri) {
    let Some(pq) = uri.path_and_query() else {
        return;
    };
    let (path, query) = (pq.path(), pq.query());
    if !path.contains("//") {
        return;
    }
    let mut out = String::with_capacity(pq.as_str().len());
    let mut prev_slash = false;
    for c in path.chars() {
        if c == '/' && prev_slash {
            continue;
        }
        prev_slash = c == '/';
        out.push(c);
    }
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    if let Ok(u) = http::Uri::try_from(out) {
        *uri = u;
    }
}

fn snapshot(parts: &http::request::Parts, names: &[HeaderName]) -> RequestSnapshot {
    let mut headers = http::HeaderMap::with_capacity(names.len());
    for n in names {
        for v in parts.headers.get_all(n) {
            headers.append(n.clone(), v.clone());
        }
    }
    RequestSnapshot {
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        headers,
    }
}

/// A random UUID v4 (`x-request-id`).
pub fn uuid_v4() -> HeaderValue {
    let mut b = fastrand::u128(..).to_be_bytes();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = [0u8; 36];
    let mut j = 0;
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s[j] = b'-';
            j += 1;
        }
        s[j] = HEX[(byte >> 4) as usize];
        s[j + 1] = HEX[(byte & 0xf) as usize];
        j += 2;
    }
    HeaderValue::from_bytes(&s).expect("hex and dashes")
}

thread_local! {
    static DATE: std::cell::RefCell<(u64, HeaderValue)> = const { std::cell::RefCell::new((0, HeaderValue::from_static(""))) };
}

/// The `date` header value, formatted once per second per worker.
pub fn http_date() -> HeaderValue {
    let now = std::time::SystemTime::now();
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs {
            *d = (
                secs,
                HeaderValue::from_str(&httpdate::fmt_http_date(now)).expect("ASCII date"),
            );
        }
        d.1.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_shape() {
        let v = uuid_v4();
        let s = v.to_str().unwrap();
        assert_eq!(s.len(), 36);
        assert_eq!(&s[14..15], "4");
        assert!(matches!(&s[19..20], "8" | "9" | "a" | "b"));
        assert_ne!(uuid_v4(), v);
    }

    #[test]
    fn hop_by_hop_and_upgrade() {
        let mut h = http::HeaderMap::new();
        h.insert("connection", "keep-alive, Upgrade".parse().unwrap());
        h.insert("upgrade", "websocket".parse().unwrap());
        h.insert("te", "trailers, gzip".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        assert_eq!(upgrade_type(&h).as_deref(), Some("websocket"));
        strip_hop_by_hop(&mut h, false);
        assert!(
            !h.contains_key("connection")
                && !h.contains_key("upgrade")
                && !h.contains_key("keep-alive")
        );
        assert_eq!(h["te"], "trailers");
    }

    #[test]
    fn slashes_and_ports() {
        let mut u: http::Uri = "//a///b?x=//".parse().unwrap();
        merge_slashes(&mut u);
        assert_eq!(u, "/a/b?x=//");
        assert_eq!(split_port("h:80"), Some(("h", 80)));
        assert_eq!(split_port("[::1]:80"), Some(("[::1]", 80)));
        assert_eq!(split_port("::1"), None);
    }

    #[test]
    fn last_xff_address_skips_trusted_hops() {
        let mut h = http::HeaderMap::new();
        assert_eq!(last_xff_address(&h, 0), None);
        h.insert(names::X_FORWARDED_FOR, HeaderValue::from_static("1.2.3.4"));
        assert_eq!(
            last_xff_address(&h, 0),
            Some(("1.2.3.4".parse().unwrap(), true))
        );
        assert_eq!(last_xff_address(&h, 1), None);
        h.insert(
            names::X_FORWARDED_FOR,
            HeaderValue::from_static("1.2.3.4, 10.0.0.1"),
        );
        assert_eq!(
            last_xff_address(&h, 0),
            Some(("10.0.0.1".parse().unwrap(), false))
        );
        assert_eq!(
            last_xff_address(&h, 1),
            Some(("1.2.3.4".parse().unwrap(), false))
        );
    }
}
