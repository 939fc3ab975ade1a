//! Distributed tracing at runtime (Envoy's `Tracing::HttpTracer` and the `envoy.tracers.*`
//! drivers). A connection manager with `tracing` holds an [`HttpTracer`]: when the request
//! headers arrive it makes Envoy's sampling decision (written into `x-request-id`'s version
//! nibble, `mutateTracingRequestHeader`), starts the stream's span from the propagated context
//! ([`b3`], [`w3c`]); the router injects the span's context into the upstream request; the span
//! ends with the stream (tags from the `StreamInfo`) and goes to its driver's bounded queue
//! ([`zipkin`]), which a task on the main runtime drains: a dead collector never slows a
//! request (a full queue drops and counts).
//!
//! [`TracerManager`] (in the `ServerContext`) shares one driver per provider configuration and
//! runs the flush task, started by `server::start`.

pub mod b3;
pub mod opentelemetry;
pub mod queue;
pub mod upstream;
pub mod w3c;
pub mod zipkin;

pub use upstream::{UpstreamEnd, UpstreamSpan};

use crate::http::names;
use crate::model::listener::Direction;
use crate::model::route::Decorator;
use crate::model::tracing::{CustomTagValue, HcmTracing, Provider};
use crate::stream_info::StreamInfo;
use crate::telemetry::stats::Counter;
use crate::upstream::cluster::ClusterManager;
use http::{HeaderMap, HeaderName, HeaderValue};
use std::borrow::Cow;
use std::sync::{Arc, Mutex, Weak};
use std::time::SystemTime;

const X_CLIENT_TRACE_ID: HeaderName = HeaderName::from_static("x-client-trace-id");
const X_ENVOY_DECORATOR_OPERATION: HeaderName =
    HeaderName::from_static("x-envoy-decorator-operation");

/// A span's identity as propagated (trace id high bits 0 for 64-bit traces; parent 0: none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_high: u64,
    pub trace_id: u64,
    pub id: u64,
    pub parent_id: u64,
    pub sampled: bool,
}

impl SpanContext {
    /// The trace id in hex: 32 digits for a 128-bit trace, else 16.
    pub fn trace_id_hex<'b>(&self, buf: &'b mut [u8; 32]) -> &'b str {
        let (hi, lo) = buf.split_at_mut(16);
        let (hi, lo): (&mut [u8; 16], &mut [u8; 16]) = match (hi.try_into(), lo.try_into()) {
            (Ok(h), Ok(l)) => (h, l),
            _ => return "",
        };
        b3::hex16(self.trace_high, hi);
        b3::hex16(self.trace_id, lo);
        let s = std::str::from_utf8(buf).unwrap_or("");
        if self.trace_high == 0 { &s[16..] } else { s }
    }
}

/// Envoy's trace reasons (`Tracing::Reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    NotTraceable,
    Sampling,
    ServiceForced,
    ClientForced,
}

impl Reason {
    pub fn traced(self) -> bool {
        self != Reason::NotTraceable
    }
}

/// Client (egress: an outbound listener) or server (ingress) span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Client,
    Server,
}

/// `http.<stat_prefix>.tracing.*`.
#[derive(Debug)]
struct TracingStats {
    random_sampling: Arc<Counter>,
    service_forced: Arc<Counter>,
    client_enabled: Arc<Counter>,
    not_traceable: Arc<Counter>,
}

/// One connection manager's tracing: its configuration and driver.
#[derive(Debug)]
pub struct HttpTracer {
    config: Arc<HcmTracing>,
    /// The listener's direction: the operation (`ingress`, `egress <host>`) and the decorator's
    /// way.
    kind: Kind,
    /// The stream span's kind: a server span with `spawn_upstream_span` (the upstream requests
    /// are its client children), else as the direction says.
    span_kind: Kind,
    /// A child span per upstream request (`spawn_upstream_span`, or the router's
    /// `start_child_span`).
    spawn_upstream: bool,
    /// `None`: no provider here nor in the bootstrap (sampling decisions only, no spans).
    driver: Option<Driver>,
    stats: TracingStats,
    pack_trace_reason: bool,
    request_id_sampling: bool,
    runtime: Arc<crate::runtime::RuntimeLoader>,
    node_id: Arc<str>,
    zone: Arc<str>,
}

impl HttpTracer {
    /// The connection manager's tracer, when it configures `tracing`. Its
    /// `http.<prefix>.tracing.*` counters exist either way, as Envoy defines them for every
    /// connection manager.
    pub fn new(
        hcm: &crate::model::hcm::HttpConnectionManager,
        cx: &crate::context::ServerContext,
        clusters: &Arc<ClusterManager>,
        direction: Direction,
    ) -> Option<Arc<Self>> {
        let prefix = format!("http.{}.tracing.", hcm.stat_prefix);
        let counter = |n: &str| cx.store.counter(&format!("{prefix}{n}"));
        // remora has no health-check filter to charge `health_check`.
        counter("health_check");
        let Some(config) = hcm.tracing.clone() else {
            for n in [
                "random_sampling",
                "service_forced",
                "client_enabled",
                "not_traceable",
            ] {
                counter(n);
            }
            return None;
        };
        let provider = config.provider.as_ref().or(cx.tracers.bootstrap.as_ref());
        let driver = provider.and_then(|p| cx.tracers.driver(p, cx, clusters));
        let kind = match direction {
            Direction::Outbound => Kind::Client,
            Direction::Inbound | Direction::Unspecified => Kind::Server,
        };
        Some(Arc::new(Self {
            kind,
            span_kind: match config.spawn_upstream_span {
                true => Kind::Server,
                false => kind,
            },
            spawn_upstream: config.spawn_upstream_span || hcm.router.start_child_span,
            driver,
            stats: TracingStats {
                random_sampling: counter("random_sampling"),
                service_forced: counter("service_forced"),
                client_enabled: counter("client_enabled"),
                not_traceable: counter("not_traceable"),
            },
            pack_trace_reason: hcm.pack_trace_reason,
            request_id_sampling: hcm.request_id_sampling,
            runtime: cx.runtime.clone(),
            node_id: cx.local.service_node.as_str().into(),
            zone: cx.local.node.zone.as_str().into(),
            config,
        }))
    }

    /// The request's headers have arrived (sanitised, the route chosen): the sampling
    /// decision, then the span (`None`: no driver, or a malformed propagated context).
    pub fn start(
        self: &Arc<Self>,
        headers: &mut HeaderMap,
        method: &http::Method,
        uri: &http::Uri,
        info: &StreamInfo,
    ) -> Option<Box<ActiveSpan>> {
        let reason = self.decide(headers);
        match reason {
            Reason::NotTraceable => &self.stats.not_traceable,
            Reason::Sampling => &self.stats.random_sampling,
            Reason::ServiceForced => &self.stats.service_forced,
            Reason::ClientForced => &self.stats.client_enabled,
        }
        .inc();
        let driver = self.driver.as_ref()?;
        let (cx, shared) = driver.start(headers, reason.traced(), self.span_kind)?;
        let mut span = Box::new(ActiveSpan {
            tracer: self.clone(),
            driver: driver.clone(),
            cx,
            shared,
            name: Default::default(),
            start: info.start_time,
            tags: Vec::new(),
            decorated: None,
        });
        if cx.sampled {
            span.request_tags(headers, method, uri, info);
        }
        Some(span)
    }

    /// Envoy's `mutateTracingRequestHeader`: the decision packed in (or read from)
    /// `x-request-id`, then client / forced / random sampling, then the overall cap.
    fn decide(&self, headers: &mut HeaderMap) -> Reason {
        if !self.request_id_sampling {
            return Reason::Sampling;
        }
        let Some(rid) = headers.get(names::X_REQUEST_ID) else {
            return Reason::NotTraceable;
        };
        let Some(value) = rid_integer(rid.as_bytes()) else {
            return Reason::NotTraceable;
        };
        let result = value % 10_000;
        let runtime = self.runtime.snapshot();
        let c = &self.config;
        let mut reason = trace_reason(rid.as_bytes());
        if reason == Reason::NotTraceable {
            if headers.contains_key(X_CLIENT_TRACE_ID)
                && runtime.feature_enabled(
                    "tracing.client_enabled",
                    c.client_sampling,
                    fastrand::u64(..),
                )
            {
                reason = Reason::ClientForced;
            } else if headers.contains_key(names::X_ENVOY_FORCE_TRACE) {
                reason = Reason::ServiceForced;
            } else if runtime.feature_enabled("tracing.random_sampling", c.random_sampling, result)
            {
                reason = Reason::Sampling;
            }
        }
        if reason.traced()
            && !runtime.feature_enabled("tracing.global_enabled", c.overall_sampling, result)
        {
            reason = Reason::NotTraceable;
        }
        if self.pack_trace_reason {
            set_trace_reason(headers, reason);
        }
        reason
    }
}

/// The UUID extension's `toInteger`: the first 8 hex digits.
fn rid_integer(rid: &[u8]) -> Option<u64> {
    let head = std::str::from_utf8(rid.get(..8)?).ok()?;
    u64::from_str_radix(head, 16).ok()
}

/// Where the UUID extension keeps the decision: the version digit.
const TRACE_BYTE: usize = 14;

fn trace_reason(rid: &[u8]) -> Reason {
    if rid.len() != 36 {
        return Reason::NotTraceable;
    }
    match rid[TRACE_BYTE] {
        b'a' => Reason::ServiceForced,
        b'9' => Reason::Sampling,
        b'b' => Reason::ClientForced,
        _ => Reason::NotTraceable,
    }
}

fn set_trace_reason(headers: &mut HeaderMap, reason: Reason) {
    let Some(rid) = headers.get(names::X_REQUEST_ID) else {
        return;
    };
    if rid.len() != 36 {
        return;
    }
    let digit = match reason {
        Reason::ServiceForced => b'a',
        Reason::ClientForced => b'b',
        Reason::Sampling => b'9',
        Reason::NotTraceable => b'4',
    };
    if rid.as_bytes()[TRACE_BYTE] == digit {
        return;
    }
    let mut bytes = [0u8; 36];
    bytes.copy_from_slice(rid.as_bytes());
    bytes[TRACE_BYTE] = digit;
    if let Ok(v) = HeaderValue::from_bytes(&bytes) {
        headers.insert(names::X_REQUEST_ID, v);
    }
}

/// The stream's span, from the request's headers to the end of the stream.
#[derive(Debug)]
pub struct ActiveSpan {
    tracer: Arc<HttpTracer>,
    driver: Driver,
    cx: SpanContext,
    shared: bool,
    /// The request's authority (Envoy's zipkin span name).
    name: String,
    start: SystemTime,
    /// Tags known once the request's headers are (sampled spans only).
    tags: Vec<(Cow<'static, str>, String)>,
    /// An ingress span's decorator operation to announce on the response.
    decorated: Option<HeaderValue>,
}

impl ActiveSpan {
    pub fn context(&self) -> &SpanContext {
        &self.cx
    }

    /// The context for the upstream request (the router's `injectContext`).
    pub fn inject(&self, headers: &mut HeaderMap) {
        self.driver.inject(&self.cx, headers);
    }

    /// A child span for one upstream request (the router's, per attempt), when the connection
    /// manager spawns them: named `router <cluster> egress`, a retry's tagged `retry.count`.
    /// `headers` are the request's (the custom tags read them).
    pub fn spawn_upstream(
        &self,
        cluster: &str,
        attempt: u32,
        headers: &HeaderMap,
    ) -> Option<Box<UpstreamSpan>> {
        if !self.tracer.spawn_upstream {
            return None;
        }
        let cx = SpanContext {
            id: nonzero_random(),
            parent_id: self.cx.id,
            ..self.cx
        };
        let mut span = UpstreamSpan::new(
            self.driver.clone(),
            cx,
            format!("router {cluster} egress"),
            self.tracer.config.clone(),
        );
        if attempt > 1 {
            span.retry(attempt - 1);
        }
        span.request_headers(headers);
        Some(Box::new(span))
    }

    /// The router injects this span's context (no child span per upstream request).
    pub fn spawns_upstream(&self) -> bool {
        self.tracer.spawn_upstream
    }

    /// The context with another sampling decision: a mirror copy's (its policy's
    /// `trace_sampled`) in place of the one `inject` wrote.
    pub fn inject_sampled(&self, headers: &mut HeaderMap, sampled: bool) {
        let cx = SpanContext { sampled, ..self.cx };
        self.driver.inject(&cx, headers);
    }

    /// The route's decorator (Envoy's `traceRequest`): the operation names the span; egress
    /// passes it on in `x-envoy-decorator-operation` (with `propagate`), ingress takes that
    /// header's operation instead (and removes it) or announces its own on the response.
    fn decorate(&mut self, h: &mut HeaderMap, decorator: Option<&Decorator>) {
        if let Some(d) = decorator {
            self.name.clone_from(&d.operation);
        }
        let propagated = decorator
            .filter(|d| d.propagate)
            .and_then(|d| HeaderValue::from_str(&d.operation).ok());
        match self.tracer.kind {
            Kind::Client => {
                if let Some(op) = propagated {
                    h.insert(X_ENVOY_DECORATOR_OPERATION, op);
                }
            }
            Kind::Server => {
                self.decorated = propagated;
                if let Some(op) = h.remove(X_ENVOY_DECORATOR_OPERATION)
                    && !op.is_empty()
                {
                    self.name = op.to_str().unwrap_or_default().to_string();
                    self.decorated = None;
                }
            }
        }
    }

    /// The response's headers leave the connection manager: ingress announces its decorated
    /// operation; egress takes the upstream's as the span's name (and removes it).
    pub fn on_response(&mut self, h: &mut HeaderMap) {
        match self.tracer.kind {
            Kind::Server => {
                if let Some(op) = self.decorated.take() {
                    h.insert(X_ENVOY_DECORATOR_OPERATION, op);
                }
            }
            Kind::Client => {
                if let Some(op) = h.remove(X_ENVOY_DECORATOR_OPERATION)
                    && let Ok(op) = op.to_str()
                    && !op.is_empty()
                {
                    self.name = op.to_string();
                }
            }
        }
    }

    /// `finalizeDownstreamSpan`'s request half, and the custom tags from request headers.
    fn request_tags(
        &mut self,
        h: &HeaderMap,
        method: &http::Method,
        uri: &http::Uri,
        info: &StreamInfo,
    ) {
        let get = |n: &HeaderName| h.get(n).and_then(|v| v.to_str().ok());
        let host = get(&http::header::HOST)
            .or(uri.authority().map(|a| a.as_str()))
            .unwrap_or("");
        self.name = self.driver.span_name(self.tracer.kind, host);
        let t = &mut self.tags;
        t.push(("node_id".into(), self.tracer.node_id.to_string()));
        t.push(("zone".into(), self.tracer.zone.to_string()));
        if let Some(rid) = get(&names::X_REQUEST_ID) {
            t.push(("guid:x-request-id".into(), rid.to_string()));
        }
        let path = get(&names::X_ENVOY_ORIGINAL_PATH)
            .or(uri.path_and_query().map(|p| p.as_str()))
            .unwrap_or("");
        let max = self.tracer.config.max_path_tag_length;
        let path = match path.char_indices().nth(max) {
            Some((i, _)) => &path[..i],
            None => path,
        };
        let proto = get(&names::X_FORWARDED_PROTO).unwrap_or("");
        t.push(("http.url".into(), format!("{proto}://{host}{path}")));
        t.push(("http.method".into(), method.as_str().to_string()));
        let or_dash = |v: Option<&str>| v.unwrap_or("-").to_string();
        t.push((
            "downstream_cluster".into(),
            or_dash(get(&names::X_ENVOY_DOWNSTREAM_SERVICE_CLUSTER)),
        ));
        t.push(("user_agent".into(), or_dash(get(&http::header::USER_AGENT))));
        let protocol = info.protocol.map_or("-", |p| p.as_str());
        t.push(("http.protocol".into(), protocol.to_string()));
        if let Some(id) = get(&X_CLIENT_TRACE_ID) {
            t.push(("guid:x-client-trace-id".into(), id.to_string()));
        }
        header_custom_tags(&self.tracer.config, h, t);
    }

    /// The stream ended: the response half of the tags, then the span to the driver.
    pub fn finish(&mut self, info: &StreamInfo) {
        if !self.cx.sampled {
            return;
        }
        let end = SystemTime::now();
        self.response_tags(info);
        let duration = end.duration_since(self.start).unwrap_or_default();
        let record = Record {
            cx: self.cx,
            kind: self.tracer.span_kind,
            shared: self.shared,
            name: std::mem::take(&mut self.name),
            timestamp_us: micros(self.start),
            duration_us: duration.as_micros() as u64,
            tags: std::mem::take(&mut self.tags),
            annotations: match self.tracer.config.verbose {
                true => timing_annotations(info),
                false => Vec::new(),
            },
        };
        self.driver.report(record);
    }

    /// `finalizeDownstreamSpan`'s response half and `TracerUtility::finalizeSpan`.
    fn response_tags(&mut self, info: &StreamInfo) {
        let t = &mut self.tags;
        // The client's address without its port (Envoy's `addressAsString`).
        t.push((
            "peer.address".into(),
            info.connection.remote.ip().to_string(),
        ));
        t.push(("request_size".into(), info.bytes_received.to_string()));
        t.push(("response_size".into(), info.bytes_sent.to_string()));
        t.push(("component".into(), "proxy".into()));
        if let Some(c) = &info.upstream_cluster {
            t.push(("upstream_cluster".into(), c.to_string()));
            t.push(("upstream_cluster.name".into(), c.to_string()));
        }
        let code = info.response_code.unwrap_or(0);
        t.push(("http.status_code".into(), code.to_string()));
        t.push(("response_flags".into(), info.response_flags.short_string()));
        if code == 0 || code >= 500 {
            t.push(("error".into(), "true".into()));
        }
        stream_custom_tags(&self.tracer.config, info, t);
    }
}

/// The custom tags read from the request's headers.
fn header_custom_tags(
    config: &HcmTracing,
    h: &HeaderMap,
    t: &mut Vec<(Cow<'static, str>, String)>,
) {
    for tag in &config.custom_tags {
        if let CustomTagValue::RequestHeader { name, default } = &tag.value {
            let v = h.get(name).and_then(|v| v.to_str().ok()).unwrap_or(default);
            if !v.is_empty() {
                t.push((tag.tag.clone().into(), v.to_string()));
            }
        }
    }
}

/// The custom tags known at the end of the stream: literal, environment and metadata ones.
fn stream_custom_tags(
    config: &HcmTracing,
    info: &StreamInfo,
    t: &mut Vec<(Cow<'static, str>, String)>,
) {
    for tag in &config.custom_tags {
        let v = match &tag.value {
            CustomTagValue::Fixed(v) => v.clone(),
            CustomTagValue::RequestHeader { .. } => continue,
            CustomTagValue::RequestMetadata {
                namespace,
                path,
                default,
            } => metadata_value(info, namespace, path).unwrap_or_else(|| default.clone()),
        };
        if !v.is_empty() {
            t.push((tag.tag.clone().into(), v));
        }
    }
}

/// A value of the request's dynamic metadata rendered as Envoy's metadata tag does.
fn metadata_value(info: &StreamInfo, ns: &str, path: &[String]) -> Option<String> {
    let mut v = info.dynamic_metadata.namespace(ns)?.get(path.first()?)?;
    for k in &path[1..] {
        v = v.get(k)?;
    }
    Some(match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Bool(b) => b.to_string(),
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::Null => return None,
        other => other.to_string(),
    })
}

fn micros(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Starts the span of a request (the connection manager's hook): `parts` are the sanitised
/// request parts, `decorator` the route's. Returns the span to keep on the stream.
pub fn start_span(
    tracer: &Arc<HttpTracer>,
    parts: &mut http::request::Parts,
    info: &StreamInfo,
    decorator: Option<&Decorator>,
) -> Option<Box<ActiveSpan>> {
    let mut span = tracer.start(&mut parts.headers, &parts.method, &parts.uri, info)?;
    span.decorate(&mut parts.headers, decorator);
    Some(span)
}

/// A finished, sampled span, as the drivers export it.
#[derive(Debug)]
pub struct Record {
    pub cx: SpanContext,
    pub kind: Kind,
    pub shared: bool,
    pub name: String,
    pub timestamp_us: u64,
    pub duration_us: u64,
    pub tags: Vec<(Cow<'static, str>, String)>,
    /// `verbose`: the stream's timings (microseconds since the epoch, Envoy's log names).
    pub annotations: Vec<(u64, &'static str)>,
}

/// `verbose`'s span logs (Envoy's `annotateVerbose`): the stream's timings, in Envoy's order.
fn timing_annotations(info: &StreamInfo) -> Vec<(u64, &'static str)> {
    let base = micros(info.start_time);
    let at = |t: Option<std::time::Instant>| {
        t.map(|t| base + t.saturating_duration_since(info.start).as_micros() as u64)
    };
    [
        (info.last_downstream_rx, LAST_DOWNSTREAM_RX),
        (info.first_upstream_tx, FIRST_UPSTREAM_TX),
        (info.last_upstream_tx, LAST_UPSTREAM_TX),
        (info.first_upstream_rx, FIRST_UPSTREAM_RX),
        (info.last_upstream_rx, LAST_UPSTREAM_RX),
        (info.first_downstream_tx, FIRST_DOWNSTREAM_TX),
        (info.last_downstream_tx, LAST_DOWNSTREAM_TX),
    ]
    .into_iter()
    .filter_map(|(t, name)| Some((at(t)?, name)))
    .collect()
}

/// Envoy's `Tracing::Logs`: the names of the timing span logs.
pub const LAST_DOWNSTREAM_RX: &str = "last_downstream_rx_byte_received";
pub const FIRST_UPSTREAM_TX: &str = "first_upstream_tx_byte_sent";
pub const LAST_UPSTREAM_TX: &str = "last_upstream_tx_byte_sent";
pub const FIRST_UPSTREAM_RX: &str = "first_upstream_rx_byte_received";
pub const LAST_UPSTREAM_RX: &str = "last_upstream_rx_byte_received";
pub const FIRST_DOWNSTREAM_TX: &str = "first_downstream_tx_byte_sent";
pub const LAST_DOWNSTREAM_TX: &str = "last_downstream_tx_byte_sent";

/// A tracer provider at runtime.
#[derive(Debug, Clone)]
pub enum Driver {
    Zipkin(Arc<zipkin::Driver>),
    OpenTelemetry(Arc<opentelemetry::Driver>),
}

impl Driver {
    fn start(&self, h: &HeaderMap, traced: bool, kind: Kind) -> Option<(SpanContext, bool)> {
        match self {
            Driver::Zipkin(d) => d.start(h, traced, kind),
            Driver::OpenTelemetry(d) => d.start(h, traced),
        }
    }

    fn inject(&self, cx: &SpanContext, h: &mut HeaderMap) {
        match self {
            Driver::Zipkin(d) => d.inject(cx, h),
            Driver::OpenTelemetry(_) => w3c::inject(cx, h),
        }
    }

    fn report(&self, r: Record) {
        match self {
            Driver::Zipkin(d) => d.report(r),
            Driver::OpenTelemetry(d) => d.report(r),
        }
    }

    /// Envoy's zipkin spans are named by the authority; the others by the operation
    /// (`ingress`, `egress <authority>`).
    fn span_name(&self, kind: Kind, host: &str) -> String {
        match (self, kind) {
            (Driver::Zipkin(_), _) => host.to_string(),
            (Driver::OpenTelemetry(_), Kind::Server) => "ingress".to_string(),
            (Driver::OpenTelemetry(_), Kind::Client) => format!("egress {host}"),
        }
    }

    fn flush(&self, timer: bool) {
        match self {
            Driver::Zipkin(d) => d.flush(timer),
            Driver::OpenTelemetry(d) => d.flush(timer),
        }
    }

    fn downgrade(&self) -> WeakDriver {
        match self {
            Driver::Zipkin(d) => WeakDriver::Zipkin(Arc::downgrade(d)),
            Driver::OpenTelemetry(d) => WeakDriver::OpenTelemetry(Arc::downgrade(d)),
        }
    }
}

#[derive(Debug)]
enum WeakDriver {
    Zipkin(Weak<zipkin::Driver>),
    OpenTelemetry(Weak<opentelemetry::Driver>),
}

impl WeakDriver {
    fn upgrade(&self) -> Option<Driver> {
        match self {
            WeakDriver::Zipkin(d) => d.upgrade().map(Driver::Zipkin),
            WeakDriver::OpenTelemetry(d) => d.upgrade().map(Driver::OpenTelemetry),
        }
    }
}

/// The drivers in service, shared by provider configuration, and their flush task.
#[derive(Debug, Default)]
pub struct TracerManager {
    /// The bootstrap's `tracing.http`: the provider of connection managers naming none.
    pub bootstrap: Option<Arc<Provider>>,
    drivers: Mutex<Vec<(Arc<Provider>, WeakDriver)>>,
    wake: Arc<tokio::sync::Notify>,
}

impl TracerManager {
    pub fn new(bootstrap: Option<Arc<Provider>>) -> Self {
        Self {
            bootstrap,
            ..Default::default()
        }
    }

    /// The driver for `provider` (one per distinct configuration, as Envoy's tracer manager
    /// caches them).
    fn driver(
        &self,
        provider: &Arc<Provider>,
        cx: &crate::context::ServerContext,
        clusters: &Arc<ClusterManager>,
    ) -> Option<Driver> {
        let mut drivers = self.drivers.lock().unwrap_or_else(|e| e.into_inner());
        drivers.retain(|(_, d)| d.upgrade().is_some());
        if let Some(d) = drivers
            .iter()
            .find(|(p, _)| **p == **provider)
            .and_then(|(_, d)| d.upgrade())
        {
            return Some(d);
        }
        let (rt, wake) = (cx.runtime.clone(), self.wake.clone());
        let d = match &**provider {
            Provider::Zipkin(z) => Driver::Zipkin(Arc::new(zipkin::Driver::new(
                z.clone(),
                clusters,
                &cx.store,
                &cx.local,
                rt,
                wake,
            ))),
            Provider::OpenTelemetry(o) => Driver::OpenTelemetry(Arc::new(
                opentelemetry::Driver::new(o.clone(), clusters, &cx.store, rt, wake),
            )),
        };
        drivers.push((provider.clone(), d.downgrade()));
        Some(d)
    }

    fn live(&self) -> Vec<Driver> {
        let drivers = self.drivers.lock().unwrap_or_else(|e| e.into_inner());
        drivers.iter().filter_map(|(_, d)| d.upgrade()).collect()
    }

    /// The flush task, on the main runtime: every flush interval (`tracing.zipkin.flush_interval_ms`
    /// and `tracing.opentelemetry.flush_interval_ms`, 5 s) each driver's pending spans go out; a
    /// driver that reached its `min_flush_spans` wakes it sooner. It ends with the manager.
    pub fn start(
        self: &Arc<Self>,
        handle: &tokio::runtime::Handle,
        runtime: Arc<crate::runtime::RuntimeLoader>,
    ) {
        let weak = Arc::downgrade(self);
        let wake = self.wake.clone();
        handle.spawn(async move {
            let mut due = [tokio::time::Instant::now(); 2];
            loop {
                let rt = runtime.snapshot();
                let every = [
                    rt.integer("tracing.zipkin.flush_interval_ms", 5000).max(1),
                    rt.integer("tracing.opentelemetry.flush_interval_ms", 5000)
                        .max(1),
                ]
                .map(std::time::Duration::from_millis);
                drop(rt);
                let now = tokio::time::Instant::now();
                for (d, e) in due.iter_mut().zip(every) {
                    if *d <= now {
                        *d = now + e;
                    }
                }
                let next = due[0].min(due[1]);
                let woken = tokio::select! {
                    _ = tokio::time::sleep_until(next) => false,
                    _ = wake.notified() => true,
                };
                let Some(manager) = weak.upgrade() else {
                    return;
                };
                let now = tokio::time::Instant::now();
                let timer = [!woken && due[0] <= now, !woken && due[1] <= now];
                for d in manager.live() {
                    let t = match d {
                        Driver::Zipkin(_) => timer[0],
                        Driver::OpenTelemetry(_) => timer[1],
                    };
                    d.flush(t);
                }
            }
        });
    }
}

/// A random span or trace id (never 0: 0 means none).
pub(crate) fn nonzero_random() -> u64 {
    loop {
        let v = fastrand::u64(..);
        if v != 0 {
            return v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_id_carries_the_decision() {
        let mut h = HeaderMap::new();
        h.insert(
            names::X_REQUEST_ID,
            "6b5c1e2a-1c0d-4f6e-9a8b-7c6d5e4f3a2b".parse().unwrap(),
        );
        assert_eq!(
            trace_reason(h[names::X_REQUEST_ID].as_bytes()),
            Reason::NotTraceable
        );
        set_trace_reason(&mut h, Reason::Sampling);
        assert_eq!(
            h[names::X_REQUEST_ID],
            "6b5c1e2a-1c0d-9f6e-9a8b-7c6d5e4f3a2b"
        );
        assert_eq!(
            trace_reason(h[names::X_REQUEST_ID].as_bytes()),
            Reason::Sampling
        );
        assert_eq!(rid_integer(b"6b5c1e2a-..."), Some(0x6b5c1e2a));
        assert_eq!(rid_integer(b"short"), None);
    }

    fn tracer(random: u32, overall: u32, client: u32) -> HttpTracer {
        let p = |n| crate::model::runtime::Percent {
            numerator: n,
            denominator: 10_000,
        };
        let cx = crate::context::ServerContext::for_tests();
        let counter = |n: &str| cx.store.counter(n);
        HttpTracer {
            config: Arc::new(HcmTracing {
                client_sampling: p(client),
                random_sampling: p(random),
                overall_sampling: p(overall),
                verbose: false,
                max_path_tag_length: 256,
                custom_tags: Vec::new(),
                provider: None,
                spawn_upstream_span: false,
            }),
            kind: Kind::Server,
            span_kind: Kind::Server,
            spawn_upstream: false,
            driver: None,
            stats: TracingStats {
                random_sampling: counter("r"),
                service_forced: counter("s"),
                client_enabled: counter("c"),
                not_traceable: counter("n"),
            },
            pack_trace_reason: true,
            request_id_sampling: true,
            runtime: cx.runtime.clone(),
            node_id: "n".into(),
            zone: "z".into(),
        }
    }

    fn with_rid(rid: &str, extra: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(names::X_REQUEST_ID, rid.parse().unwrap());
        for name in extra {
            h.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                "1".parse().unwrap(),
            );
        }
        h
    }

    /// Envoy's order: an already packed decision stays; else client, forced, random by the
    /// request id's first 8 hex digits modulo 10 000; the overall cap last.
    #[test]
    fn sampling_decisions() {
        // 0x00000fa0 = 4000: sampled below 40.01 %, not at 40 %.
        let rid = "00000fa0-0000-4000-8000-000000000000";
        let mut h = with_rid(rid, &[]);
        assert_eq!(tracer(4001, 10_000, 0).decide(&mut h), Reason::Sampling);
        assert_eq!(
            h[names::X_REQUEST_ID],
            "00000fa0-0000-9000-8000-000000000000"
        );
        let mut h = with_rid(rid, &[]);
        assert_eq!(tracer(4000, 10_000, 0).decide(&mut h), Reason::NotTraceable);
        let mut h = with_rid(rid, &["x-envoy-force-trace"]);
        assert_eq!(tracer(0, 10_000, 0).decide(&mut h), Reason::ServiceForced);
        assert_eq!(h[names::X_REQUEST_ID].as_bytes()[14], b'a');
        let mut h = with_rid(rid, &["x-client-trace-id"]);
        assert_eq!(
            tracer(0, 10_000, 10_000).decide(&mut h),
            Reason::ClientForced
        );
        // The overall cap undoes any decision, a packed one included.
        let mut h = with_rid("00000fa0-0000-9000-8000-000000000000", &[]);
        assert_eq!(tracer(10_000, 4000, 0).decide(&mut h), Reason::NotTraceable);
        assert_eq!(h[names::X_REQUEST_ID].as_bytes()[14], b'4');
        // A packed decision is kept even when random sampling is off.
        let mut h = with_rid("00000fa0-0000-9000-8000-000000000000", &[]);
        assert_eq!(tracer(0, 10_000, 0).decide(&mut h), Reason::Sampling);
        // No usable request id: not traceable.
        let mut h = with_rid("zz", &["x-envoy-force-trace"]);
        assert_eq!(
            tracer(10_000, 10_000, 0).decide(&mut h),
            Reason::NotTraceable
        );
    }

    #[test]
    fn trace_ids_print_64_or_128_bits() {
        let mut cx = SpanContext {
            trace_high: 0,
            trace_id: 0xab,
            id: 1,
            parent_id: 0,
            sampled: true,
        };
        let mut buf = [0u8; 32];
        assert_eq!(cx.trace_id_hex(&mut buf), "00000000000000ab");
        cx.trace_high = 1;
        let mut buf = [0u8; 32];
        assert_eq!(
            cx.trace_id_hex(&mut buf),
            "000000000000000100000000000000ab"
        );
    }
}
