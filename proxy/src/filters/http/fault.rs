//! `envoy.filters.http.fault`: delays, aborts and response rate limits injected into requests
//! (Envoy's `FaultFilter`). Settings come from `model::fault` (the filter's, or the route's
//! override), percentages and values from the runtime snapshot at the time of each decision
//! (`fault.http.*`, the `*_runtime` names, the `fault.http.<downstream cluster>.*` forms), and
//! from the request's `x-envoy-fault-*` headers where the settings ask for header control.
//!
//! - A delay pauses the stream on a timer (`Flow::Pause`): the worker and the other streams
//!   of the connection go on. The response flag is `DI`; an abort may follow the delay.
//! - An abort answers locally: `FI`, details `fault_filter_abort`; a gRPC status is a 200 with
//!   `grpc-status` (trailers-only for a gRPC request).
//! - A response rate limit throttles the response body to `kbps` KiB/s in sixteenths of a
//!   second, a second's worth first (Envoy's `StreamRateLimiter` token bucket).
//! - Stats under the connection manager's `http.<stat_prefix>.fault.`: `delays_injected`,
//!   `aborts_injected`, `faults_overflow`, `response_rl_injected`, `active_faults`, and
//!   `<downstream cluster>.delays_injected`/`aborts_injected` from
//!   `x-envoy-downstream-service-cluster`. `max_active_faults` bounds `active_faults`.

use super::{Flow, HttpFilter, HttpFilterFactory, LocalReply, StreamCx};
use crate::http::body::{Body, BodyError};
use crate::model::fault::{AbortKind, DelayKind, FaultSettings, RateKind};
use crate::model::matcher::RequestHeaders;
use crate::model::per_filter::PerFilterConfig;
use crate::model::runtime::{Percent, Runtime};
use crate::runtime::RuntimeLoader;
use crate::stream_info::ResponseFlags;
use crate::telemetry::stats::{Counter, Gauge, Store};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const ABORT_REQUEST: HeaderName = HeaderName::from_static("x-envoy-fault-abort-request");
const ABORT_GRPC_REQUEST: HeaderName = HeaderName::from_static("x-envoy-fault-abort-grpc-request");
const ABORT_PERCENTAGE: HeaderName =
    HeaderName::from_static("x-envoy-fault-abort-request-percentage");
const DELAY_REQUEST: HeaderName = HeaderName::from_static("x-envoy-fault-delay-request");
const DELAY_PERCENTAGE: HeaderName =
    HeaderName::from_static("x-envoy-fault-delay-request-percentage");
const THROUGHPUT: HeaderName = HeaderName::from_static("x-envoy-fault-throughput-response");
const THROUGHPUT_PERCENTAGE: HeaderName =
    HeaderName::from_static("x-envoy-fault-throughput-response-percentage");
const DOWNSTREAM_CLUSTER: HeaderName =
    HeaderName::from_static("x-envoy-downstream-service-cluster");
const DOWNSTREAM_NODE: HeaderName = HeaderName::from_static("x-envoy-downstream-service-node");

/// `%RESPONSE_CODE_DETAILS%` of an abort.
pub const ABORT_DETAILS: &str = "fault_filter_abort";

/// The filter of one chain: its settings, stats and the runtime it reads.
pub struct FaultFactory {
    /// Shared with every stream (its dynamic metadata namespace).
    name: Arc<str>,
    settings: Arc<FaultSettings>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for FaultFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultFactory")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// What every stream of the chain shares.
struct Shared {
    runtime: Arc<RuntimeLoader>,
    store: Arc<Store>,
    /// `http.<stat_prefix>.fault.`
    prefix: String,
    stats: FaultStats,
    /// `<downstream cluster>.delays_injected|aborts_injected`, created when first counted and
    /// kept (at most `DOWNSTREAM_STATS` clusters: the header's value is the client's) so that
    /// a request only increments.
    downstream: Mutex<HashMap<Box<str>, DownstreamStats>>,
}

/// A downstream cluster's counters: delays, aborts.
type DownstreamStats = [Option<Arc<Counter>>; 2];

/// Downstream clusters whose counters are kept (past it, a counter is looked up by name).
const DOWNSTREAM_STATS: usize = 256;

struct FaultStats {
    aborts_injected: Arc<Counter>,
    delays_injected: Arc<Counter>,
    faults_overflow: Arc<Counter>,
    response_rl_injected: Arc<Counter>,
    active_faults: Arc<Gauge>,
}

impl FaultFactory {
    /// `name` is the filter's `HttpFilter.name`; `stat_prefix` the connection manager's.
    pub fn new(
        name: String,
        settings: &Arc<FaultSettings>,
        stat_prefix: &str,
        store: &Arc<Store>,
        runtime: &Arc<RuntimeLoader>,
    ) -> Self {
        let prefix = format!("http.{stat_prefix}.fault.");
        let c = |n: &str| store.counter(&format!("{prefix}{n}"));
        let stats = FaultStats {
            aborts_injected: c("aborts_injected"),
            delays_injected: c("delays_injected"),
            faults_overflow: c("faults_overflow"),
            response_rl_injected: c("response_rl_injected"),
            active_faults: store.gauge(&format!("{prefix}active_faults")),
        };
        stats.active_faults.add(0);
        Self {
            name: name.into(),
            settings: settings.clone(),
            shared: Arc::new(Shared {
                runtime: runtime.clone(),
                store: store.clone(),
                prefix,
                stats,
                downstream: Mutex::new(HashMap::new()),
            }),
        }
    }
}

impl HttpFilterFactory for FaultFactory {
    fn name(&self) -> &str {
        &self.name
    }

    fn create(
        &self,
        per_route: Option<&PerFilterConfig>,
        _cx: &StreamCx<'_>,
    ) -> Option<Box<dyn HttpFilter>> {
        // A route's HTTPFault replaces the filter's settings.
        let settings = match per_route {
            Some(PerFilterConfig::Fault(s)) => s.clone(),
            _ => self.settings.clone(),
        };
        // Nothing to inject (istiod's empty filter): no instance on the stream.
        if settings.delay.is_none()
            && settings.abort.is_none()
            && settings.response_rate_limit.is_none()
        {
            return None;
        }
        Some(Box::new(Fault {
            name: self.name.clone(),
            settings,
            shared: self.shared.clone(),
            active: None,
            rate_kbps: None,
        }))
    }
}

/// One stream's fault filter.
struct Fault {
    name: Arc<str>,
    settings: Arc<FaultSettings>,
    shared: Arc<Shared>,
    /// This stream's charge to `active_faults` (one however many faults it gets).
    active: Option<Arc<ActiveFault>>,
    /// The response body's rate, when limited.
    rate_kbps: Option<u64>,
}

/// One stream counted in `active_faults` until dropped.
struct ActiveFault(Arc<Gauge>);

impl Drop for ActiveFault {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The downstream cluster of `x-envoy-downstream-service-cluster` (present, possibly empty).
#[derive(Clone)]
struct Downstream(Option<String>);

impl Downstream {
    fn key(&self, what: &str) -> Option<String> {
        self.0.as_ref().map(|c| format!("fault.http.{c}.{what}"))
    }

    /// The downstream cluster's key, else `general` (borrowed: nothing is formatted for a
    /// request without the header).
    fn key_or<'a>(&self, what: &str, general: &'a str) -> Cow<'a, str> {
        self.key(what).map_or(Cow::Borrowed(general), Cow::Owned)
    }
}

/// What an abort decision reads from the request, kept for a decision after a delay.
#[derive(Clone)]
struct AbortInputs {
    settings: Arc<FaultSettings>,
    shared: Arc<Shared>,
    downstream: Downstream,
    http_header: Option<u64>,
    grpc_header: Option<u64>,
    percent_header: Option<u32>,
    grpc_request: bool,
}

impl HttpFilter for Fault {
    fn on_request_headers(
        &mut self,
        req: &mut http::request::Parts,
        _end_stream: bool,
        cx: &mut StreamCx<'_>,
    ) -> Flow {
        if !self.applies(req, cx) {
            return Flow::Continue;
        }
        let headers = &req.headers;
        let downstream = Downstream(header_str(headers, &DOWNSTREAM_CLUSTER).map(str::to_string));
        let rt = self.shared.runtime.snapshot();
        self.maybe_rate_limit(headers, &rt);
        // The abort headers count only for a header-controlled abort (Envoy reads them then).
        let header_abort = matches!(
            self.settings.abort.as_ref().map(|a| &a.kind),
            Some(AbortKind::Header)
        );
        let abort = AbortInputs {
            settings: self.settings.clone(),
            shared: self.shared.clone(),
            downstream: downstream.clone(),
            http_header: header_abort
                .then(|| header_u64(headers, &ABORT_REQUEST))
                .flatten(),
            grpc_header: header_abort
                .then(|| header_u64(headers, &ABORT_GRPC_REQUEST))
                .flatten(),
            percent_header: header_abort
                .then(|| header_u32(headers, &ABORT_PERCENTAGE))
                .flatten(),
            grpc_request: is_grpc(headers),
        };
        if let Some(delay) = self.delay_duration(headers, &downstream, &rt)
            && self.try_activate(&rt)
        {
            self.record(
                &downstream,
                DownstreamStat::DelaysInjected,
                &self.shared.stats.delays_injected,
            );
            cx.info.response_flags |= ResponseFlags::DELAY_INJECTED;
            self.set_metadata(cx);
            // Held by the delay: a delay alone stops counting once it has elapsed (unless the
            // response is rate limited, which keeps the stream's charge).
            let guard = if self.rate_kbps.is_some() {
                self.active.clone()
            } else {
                self.active.take()
            };
            return Flow::Pause(Box::pin(async move {
                tokio::time::sleep(delay).await;
                let rt = abort.shared.runtime.snapshot();
                match abort.status(&rt) {
                    Some(status) => {
                        let reply = abort.reply(status);
                        drop(guard);
                        Flow::LocalReply(reply)
                    }
                    None => {
                        drop(guard);
                        Flow::Continue
                    }
                }
            }));
        }
        if let Some(status) = abort.status(&rt)
            && self.try_activate(&rt)
        {
            self.set_metadata(cx);
            return Flow::LocalReply(abort.reply(status));
        }
        Flow::Continue
    }

    fn on_response_body(&mut self, body: Body, _cx: &mut StreamCx<'_>) -> Body {
        match self.rate_kbps {
            Some(kbps) => Body::Boxed(Box::pin(Throttled::new(body, kbps, self.active.clone()))),
            None => body,
        }
    }
}

impl Fault {
    /// `upstream_cluster`, `downstream_nodes` and `headers`: whether faults apply at all.
    fn applies(&self, req: &http::request::Parts, cx: &StreamCx<'_>) -> bool {
        let s = &*self.settings;
        if let Some(cluster) = &s.upstream_cluster
            && cx.route.and_then(|r| r.cluster_name(&req.headers)) != Some(&**cluster)
        {
            return false;
        }
        if !s.downstream_nodes.is_empty() {
            let node = header_str(&req.headers, &DOWNSTREAM_NODE);
            if !node.is_some_and(|n| s.downstream_nodes.iter().any(|d| &**d == n)) {
                return false;
            }
        }
        if s.headers.is_empty() {
            return true;
        }
        let rh = RequestHeaders {
            method: &req.method,
            path_and_query: req.uri.path_and_query().map_or("/", |p| p.as_str()),
            authority: header_str(&req.headers, &http::header::HOST)
                .or_else(|| req.uri.authority().map(|a| a.as_str()))
                .unwrap_or(""),
            scheme: req.uri.scheme_str().unwrap_or("http"),
            headers: &req.headers,
        };
        s.headers.iter().all(|m| m.matches(&rh))
    }

    fn maybe_rate_limit(&mut self, headers: &HeaderMap, rt: &Runtime) {
        let Some(rl) = &self.settings.response_rate_limit else {
            return;
        };
        let (kbps, percent) = match rl.kind {
            RateKind::Fixed(k) => (Some(k), rl.percentage),
            RateKind::Header => (
                header_u64(headers, &THROUGHPUT).filter(|k| *k > 0),
                header_percent(headers, &THROUGHPUT_PERCENTAGE, rl.percentage),
            ),
        };
        let key = &self.settings.keys.response_rate_limit_percent;
        if !rt.feature_enabled(key, percent, fastrand::u64(..)) {
            return;
        }
        let Some(kbps) = kbps else {
            return;
        };
        if self.try_activate(rt) {
            self.shared.stats.response_rl_injected.inc();
            self.rate_kbps = Some(kbps);
        }
    }

    /// The delay to inject, if one is drawn.
    fn delay_duration(
        &self,
        headers: &HeaderMap,
        ds: &Downstream,
        rt: &Runtime,
    ) -> Option<Duration> {
        let delay = self.settings.delay.as_ref()?;
        let percent = match delay.kind {
            DelayKind::Fixed(_) => delay.percentage,
            DelayKind::Header => header_percent(headers, &DELAY_PERCENTAGE, delay.percentage),
        };
        let key = ds.key_or(
            "delay.fixed_delay_percent",
            &self.settings.keys.delay_percent,
        );
        if !rt.feature_enabled(&key, percent, fastrand::u64(..)) {
            return None;
        }
        let configured = match delay.kind {
            DelayKind::Fixed(d) => d.as_millis() as u64,
            DelayKind::Header => header_u64(headers, &DELAY_REQUEST)?,
        };
        let mut ms = rt.integer(&self.settings.keys.delay_duration, configured);
        if let Some(k) = ds.key("delay.fixed_duration_ms") {
            ms = rt.integer(&k, ms);
        }
        (ms > 0).then(|| Duration::from_millis(ms))
    }

    /// Charge this stream to `active_faults`, unless `max_active_faults` is reached (counted
    /// in `faults_overflow`). A stream already charged is not charged again.
    fn try_activate(&mut self, rt: &Runtime) -> bool {
        if self.active.is_some() {
            return true;
        }
        let s = &self.settings;
        let max = rt.integer(
            &s.keys.max_active_faults,
            s.max_active_faults.unwrap_or(u64::MAX),
        );
        let gauge = &self.shared.stats.active_faults;
        if u64::try_from(gauge.value()).unwrap_or(0) >= max {
            self.shared.stats.faults_overflow.inc();
            return false;
        }
        gauge.inc();
        self.active = Some(Arc::new(ActiveFault(gauge.clone())));
        true
    }

    fn record(&self, ds: &Downstream, stat: DownstreamStat, general: &Counter) {
        self.shared.record_downstream(&self.settings, ds, stat);
        general.inc();
    }

    /// `filter_metadata`, under the filter's name.
    fn set_metadata(&self, cx: &mut StreamCx<'_>) {
        if let Some(m) = &self.settings.filter_metadata {
            for (k, v) in m {
                cx.info
                    .dynamic_metadata
                    .set(&self.name, k.clone(), v.clone());
            }
        }
    }
}

impl Shared {
    /// `http.<prefix>.fault.<downstream cluster>.<stat>`.
    fn record_downstream(&self, s: &FaultSettings, ds: &Downstream, stat: DownstreamStat) {
        let Some(c) = ds.0.as_deref().filter(|c| !c.is_empty()) else {
            return;
        };
        if s.disable_downstream_cluster_stats {
            return;
        }
        let slot = stat as usize;
        let mut cache = self.downstream.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(counter) = cache.get(c).and_then(|d| d[slot].as_ref()) {
            counter.inc();
            return;
        }
        let counter = self
            .store
            .counter(&format!("{}{c}.{}", self.prefix, stat.name()));
        counter.inc();
        if cache.len() < DOWNSTREAM_STATS || cache.contains_key(c) {
            cache.entry(c.into()).or_default()[slot] = Some(counter);
        }
    }
}

/// A per-downstream-cluster stat.
#[derive(Debug, Clone, Copy)]
enum DownstreamStat {
    DelaysInjected = 0,
    AbortsInjected = 1,
}

impl DownstreamStat {
    fn name(self) -> &'static str {
        match self {
            DownstreamStat::DelaysInjected => "delays_injected",
            DownstreamStat::AbortsInjected => "aborts_injected",
        }
    }
}

/// An abort's status: HTTP, and the gRPC status when the abort is a gRPC one.
type AbortStatus = (StatusCode, Option<u64>);

impl AbortInputs {
    /// Drawn now, from the runtime `rt`: `None` when no abort.
    fn status(&self, rt: &Runtime) -> Option<AbortStatus> {
        let abort = self.settings.abort.as_ref()?;
        let percent = match abort.kind {
            AbortKind::Header => self
                .percent_header
                .map_or(abort.percentage, |n| abort.percentage.capped(n)),
            _ => abort.percentage,
        };
        let keys = &self.settings.keys;
        let key = self
            .downstream
            .key_or("abort.abort_percent", &keys.abort_percent);
        if !rt.feature_enabled(&key, percent, fastrand::u64(..)) {
            return None;
        }
        let http = match abort.kind {
            AbortKind::Http(c) => Some(u64::from(c)),
            AbortKind::Header => self.http_header.filter(|c| (200..600).contains(c)),
            AbortKind::Grpc(_) => None,
        };
        if let Some(default) = http {
            let code = self.overridden(rt, &keys.abort_http_status, "abort.http_status", default);
            // A runtime value that is no HTTP status keeps the configured one.
            let status = u16::try_from(code)
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .or_else(|| StatusCode::from_u16(default as u16).ok())?;
            return Some((status, None));
        }
        let grpc = match abort.kind {
            AbortKind::Grpc(c) => Some(u64::from(c)),
            AbortKind::Header => self.grpc_header,
            AbortKind::Http(_) => None,
        }?;
        let code = self.overridden(rt, &keys.abort_grpc_status, "abort.grpc_status", grpc);
        Some((StatusCode::OK, Some(code)))
    }

    /// The runtime's value for `key`, then for the downstream cluster's form (both defaulting
    /// to the configured value, as Envoy reads them).
    fn overridden(&self, rt: &Runtime, key: &str, ds_what: &str, default: u64) -> u64 {
        let v = rt.integer(key, default);
        match self.downstream.key(ds_what) {
            Some(k) => rt.integer(&k, default),
            None => v,
        }
    }

    /// The abort's local reply (and its stats).
    fn reply(&self, (status, grpc): AbortStatus) -> LocalReply {
        self.shared.record_downstream(
            &self.settings,
            &self.downstream,
            DownstreamStat::AbortsInjected,
        );
        self.shared.stats.aborts_injected.inc();
        let body = self
            .settings
            .abort
            .as_ref()
            .map_or(crate::model::fault::DEFAULT_ABORT_BODY, |a| &a.body)
            .to_string();
        let mut reply = LocalReply {
            status,
            body: body.into(),
            details: ABORT_DETAILS.into(),
            flags: ResponseFlags::FAULT_INJECTED,
            headers: HeaderMap::new(),
        };
        if self.grpc_request {
            // Trailers-only: the status in grpc-status, the body text in grpc-message.
            let code = grpc.unwrap_or_else(|| http_to_grpc(status));
            let h = &mut reply.headers;
            h.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            h.insert("grpc-status", HeaderValue::from(code));
            if let Ok(v) = HeaderValue::from_str(&reply.body) {
                h.insert("grpc-message", v);
            }
            reply.status = StatusCode::OK;
            reply.body = "".into();
        }
        reply
    }
}

/// Envoy's `Grpc::Utility::httpToGrpcStatus`.
fn http_to_grpc(status: StatusCode) -> u64 {
    match status.as_u16() {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

fn is_grpc(headers: &HeaderMap) -> bool {
    header_str(headers, &http::header::CONTENT_TYPE).is_some_and(|ct| {
        ct == "application/grpc"
            || ct.starts_with("application/grpc+")
            || ct.starts_with("application/grpc;")
    })
}

fn header_str<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// A header's first value as an unsigned integer (only the first: these headers are
/// untrusted).
fn header_u64(headers: &HeaderMap, name: &HeaderName) -> Option<u64> {
    header_str(headers, name)?.parse().ok()
}

fn header_u32(headers: &HeaderMap, name: &HeaderName) -> Option<u32> {
    header_str(headers, name)?.parse().ok()
}

/// The configured percentage, lowered by the header's numerator when it carries one.
fn header_percent(headers: &HeaderMap, name: &HeaderName, configured: Percent) -> Percent {
    header_u32(headers, name).map_or(configured, |n| configured.capped(n))
}

// === response rate limit ===

/// Envoy divides each second into this many slices of the rate.
const SLICES_PER_SECOND: f64 = 16.0;

/// A response body let through at `kbps` KiB/s: a token per sixteenth of a second, sixteen
/// held at most (a second's worth goes at once), each token `kbps * 1024 / 16` bytes.
struct Throttled {
    inner: Body,
    bytes_per_token: usize,
    tokens: f64,
    refilled: tokio::time::Instant,
    pending: Option<Bytes>,
    trailers: Option<HeaderMap>,
    done: bool,
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
    _active: Option<Arc<ActiveFault>>,
}

impl Throttled {
    fn new(inner: Body, kbps: u64, active: Option<Arc<ActiveFault>>) -> Self {
        let now = tokio::time::Instant::now();
        Self {
            inner,
            bytes_per_token: usize::try_from((kbps.saturating_mul(1024) / 16).max(1))
                .unwrap_or(usize::MAX),
            tokens: SLICES_PER_SECOND,
            refilled: now,
            pending: None,
            trailers: None,
            done: false,
            sleep: Box::pin(tokio::time::sleep_until(now)),
            _active: active,
        }
    }

    fn refill(&mut self) {
        let now = tokio::time::Instant::now();
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * SLICES_PER_SECOND).min(SLICES_PER_SECOND);
        self.refilled = now;
    }
}

impl http_body::Body for Throttled {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BodyError>>> {
        use std::task::Poll;
        let this = &mut *self;
        loop {
            if this.pending.is_some() {
                this.refill();
                if this.tokens < 1.0 {
                    let wait = (1.0 - this.tokens) / SLICES_PER_SECOND;
                    let at = tokio::time::Instant::now() + Duration::from_secs_f64(wait);
                    this.sleep.as_mut().reset(at);
                    if this.sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    continue;
                }
                let Some(buf) = this.pending.as_mut() else {
                    continue;
                };
                let needed = buf.len().div_ceil(this.bytes_per_token);
                let used = needed.min(this.tokens as usize);
                this.tokens -= used as f64;
                let n = (used * this.bytes_per_token).min(buf.len());
                let out = buf.split_to(n);
                if buf.is_empty() {
                    this.pending = None;
                }
                return Poll::Ready(Some(Ok(http_body::Frame::data(out))));
            }
            if let Some(t) = this.trailers.take() {
                return Poll::Ready(Some(Ok(http_body::Frame::trailers(t))));
            }
            if this.done {
                return Poll::Ready(None);
            }
            match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => this.done = true,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(d) if d.is_empty() => {}
                    Ok(d) => this.pending = Some(d),
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            this.trailers = Some(t);
                        }
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.pending.is_none() && self.trailers.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fault::FAULT_TYPE;
    use crate::stream_info::{ConnectionInfo, StreamInfo};

    fn settings(yaml: &str) -> Arc<FaultSettings> {
        let path = crate::config::FieldPath::new("fault");
        let pb: crate::model::pb::fault::HttpFault =
            crate::config::decode_yaml(FAULT_TYPE, yaml, &path);
        Arc::new(FaultSettings::from_proto(&path, &pb).expect("translates"))
    }

    /// A plain-text connection from 127.0.0.1:5000 to 127.0.0.1:80.
    fn connection() -> Arc<ConnectionInfo> {
        Arc::new(ConnectionInfo {
            id: 1,
            local: "127.0.0.1:80".parse().unwrap(),
            remote: "127.0.0.1:5000".parse().unwrap(),
            requested_server_name: None,
            application_protocols: vec![],
            transport_protocol: "raw_buffer",
            tls: None,
        })
    }

    struct Setup {
        factory: FaultFactory,
        store: Arc<Store>,
        runtime: Arc<RuntimeLoader>,
    }

    fn setup(yaml: &str) -> Setup {
        let store = Arc::new(Store::default());
        let runtime = RuntimeLoader::new(Arc::new(Runtime::default()), &store);
        let factory = FaultFactory::new(
            "envoy.filters.http.fault".into(),
            &settings(yaml),
            "in",
            &store,
            &runtime,
        );
        Setup {
            factory,
            store,
            runtime,
        }
    }

    impl Setup {
        fn stat(&self, name: &str) -> u64 {
            self.store.counter(&format!("http.in.fault.{name}")).value()
        }
        fn active(&self) -> i64 {
            self.store.gauge("http.in.fault.active_faults").value()
        }
        fn runtime(&self, kv: &[(&str, serde_json::Value)]) {
            let mut rt = Runtime::default();
            for (k, v) in kv {
                rt.values.insert(k.to_string(), v.clone());
            }
            self.runtime.set(rt);
        }
        /// One stream: the filter and what its request headers decided.
        fn run(
            &self,
            per_route: Option<&PerFilterConfig>,
            headers: &[(&str, &str)],
        ) -> (Option<Box<dyn HttpFilter>>, Flow, StreamInfo) {
            let conn = connection();
            let mut info = StreamInfo::new(conn.clone());
            let mut req = http::Request::builder().uri("/x");
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            let (mut parts, ()) = req.body(()).unwrap().into_parts();
            let mut cx = StreamCx {
                connection: &conn,
                info: &mut info,
                route: None,
            };
            let mut f = self.factory.create(per_route, &cx).expect("a filter");
            let flow = f.on_request_headers(&mut parts, true, &mut cx);
            (Some(f), flow, info)
        }
    }

    fn reply(flow: Flow) -> LocalReply {
        match flow {
            Flow::LocalReply(r) => r,
            other => panic!("expected a local reply, got {other:?}"),
        }
    }

    async fn after_pause(flow: Flow) -> Flow {
        match flow {
            Flow::Pause(f) => f.await,
            other => panic!("expected a pause, got {other:?}"),
        }
    }

    #[test]
    fn an_abort_answers_with_fi_and_counts() {
        let s = setup("abort: {http_status: 503, percentage: {numerator: 100}}");
        let (f, flow, _) = s.run(None, &[("x-envoy-downstream-service-cluster", "front")]);
        let r = reply(flow);
        assert_eq!(r.status, 503);
        assert_eq!(r.body, "fault filter abort");
        assert_eq!(r.details, ABORT_DETAILS);
        assert_eq!(r.flags, ResponseFlags::FAULT_INJECTED);
        assert_eq!(s.stat("aborts_injected"), 1);
        assert_eq!(s.stat("front.aborts_injected"), 1);
        assert_eq!(s.active(), 1, "charged while the stream lives");
        drop(f);
        assert_eq!(s.active(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_delay_pauses_then_an_abort_may_follow() {
        let s = setup(
            "delay: {fixed_delay: 3s, percentage: {numerator: 100}}\nabort: {http_status: 429, percentage: {numerator: 100}}",
        );
        let (f, flow, info) = s.run(None, &[]);
        assert!(info.response_flags.contains(ResponseFlags::DELAY_INJECTED));
        assert_eq!(
            (s.stat("delays_injected"), s.stat("aborts_injected")),
            (1, 0)
        );
        let start = tokio::time::Instant::now();
        let r = reply(after_pause(flow).await);
        assert_eq!(start.elapsed(), Duration::from_secs(3));
        assert_eq!(r.status, 429);
        assert_eq!(s.stat("aborts_injected"), 1);
        drop(f);
        assert_eq!(s.active(), 0);

        // A delay alone continues, and stops counting as active once elapsed.
        let s = setup("delay: {fixed_delay: 1s, percentage: {numerator: 100}}");
        let (_f, flow, _) = s.run(None, &[]);
        assert_eq!(s.active(), 1);
        assert!(matches!(after_pause(flow).await, Flow::Continue));
        assert_eq!(s.active(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_delayed_stream_does_not_hold_up_another() {
        let s = setup("delay: {header_delay: {}, percentage: {numerator: 100}}");
        let (_a, slow, _) = s.run(None, &[("x-envoy-fault-delay-request", "5000")]);
        let slow = tokio::spawn(after_pause(slow));
        // The next stream on the same worker is not delayed (no header): decided at once.
        let (_b, fast, _) = s.run(None, &[]);
        assert!(matches!(fast, Flow::Continue));
        tokio::time::sleep(Duration::from_millis(4999)).await;
        assert!(!slow.is_finished());
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert!(matches!(slow.await.unwrap(), Flow::Continue));
    }

    #[test]
    fn headers_control_only_where_configured() {
        let s = setup("abort: {header_abort: {}, percentage: {numerator: 100}}");
        assert_eq!(
            reply(s.run(None, &[("x-envoy-fault-abort-request", "418")]).1).status,
            418
        );
        // Out of range, absent, or a 0 percentage header: no abort.
        assert!(matches!(
            s.run(None, &[("x-envoy-fault-abort-request", "600")]).1,
            Flow::Continue
        ));
        assert!(matches!(s.run(None, &[]).1, Flow::Continue));
        let pct = [
            ("x-envoy-fault-abort-request", "500"),
            ("x-envoy-fault-abort-request-percentage", "0"),
        ];
        assert!(matches!(s.run(None, &pct).1, Flow::Continue));
        // gRPC: a 200 with grpc-status, trailers-only for a gRPC request.
        let r = reply(
            s.run(
                None,
                &[
                    ("x-envoy-fault-abort-grpc-request", "5"),
                    ("content-type", "application/grpc"),
                ],
            )
            .1,
        );
        assert_eq!(
            (r.status, r.headers["grpc-status"].to_str().unwrap()),
            (StatusCode::OK, "5")
        );
        assert_eq!(r.headers["grpc-message"], "fault filter abort");
        assert_eq!(r.body, "");

        // A fixed abort ignores the headers.
        let s = setup("abort: {http_status: 503, percentage: {numerator: 0}}");
        assert!(matches!(
            s.run(None, &[("x-envoy-fault-abort-request", "500")]).1,
            Flow::Continue
        ));
    }

    #[test]
    fn runtime_keys_override_the_configuration() {
        let s = setup("abort: {http_status: 503, percentage: {numerator: 0}}");
        assert!(matches!(s.run(None, &[]).1, Flow::Continue));
        s.runtime(&[
            ("fault.http.abort.abort_percent", 100.into()),
            ("fault.http.abort.http_status", 502.into()),
        ]);
        assert_eq!(reply(s.run(None, &[]).1).status, 502);
        // The downstream cluster's key replaces the general one.
        s.runtime(&[
            ("fault.http.abort.abort_percent", 100.into()),
            ("fault.http.front.abort.abort_percent", 0.into()),
        ]);
        let ds = [("x-envoy-downstream-service-cluster", "front")];
        assert!(matches!(s.run(None, &ds).1, Flow::Continue));

        // Named keys.
        let s = setup("abort: {http_status: 503}\nabort_percent_runtime: my.abort");
        s.runtime(&[("my.abort", "100".into())]);
        assert_eq!(reply(s.run(None, &[]).1).status, 503);
    }

    #[test]
    fn max_active_faults_overflows() {
        let s =
            setup("abort: {http_status: 503, percentage: {numerator: 100}}\nmax_active_faults: 1");
        let (first, flow, _) = s.run(None, &[]);
        assert!(matches!(flow, Flow::LocalReply(_)));
        assert!(matches!(s.run(None, &[]).1, Flow::Continue));
        assert_eq!(s.stat("faults_overflow"), 1);
        drop(first);
        assert!(matches!(s.run(None, &[]).1, Flow::LocalReply(_)));
    }

    #[test]
    fn matching_and_per_route_settings() {
        let s = setup(
            "abort: {http_status: 503, percentage: {numerator: 100}}\ndownstream_nodes: [n1]\nheaders: [{name: x-test, exact_match: yes}]",
        );
        let ok = [("x-envoy-downstream-service-node", "n1"), ("x-test", "yes")];
        assert!(matches!(s.run(None, &ok).1, Flow::LocalReply(_)));
        let other_node = [("x-envoy-downstream-service-node", "n2"), ("x-test", "yes")];
        assert!(matches!(s.run(None, &other_node).1, Flow::Continue));
        assert!(matches!(s.run(None, &ok[..1]).1, Flow::Continue));
        // The route's settings replace the filter's; upstream_cluster needs a route to match.
        let route = PerFilterConfig::Fault(settings(
            "abort: {http_status: 401, percentage: {numerator: 100}}",
        ));
        assert_eq!(reply(s.run(Some(&route), &[]).1).status, 401);
        let route = PerFilterConfig::Fault(settings(
            "abort: {http_status: 401, percentage: {numerator: 100}}\nupstream_cluster: c",
        ));
        assert!(matches!(s.run(Some(&route), &[]).1, Flow::Continue));
    }

    #[test]
    fn an_empty_fault_filter_creates_nothing() {
        let s = setup("upstream_cluster: c");
        let conn = connection();
        let mut info = StreamInfo::new(conn.clone());
        let cx = StreamCx {
            connection: &conn,
            info: &mut info,
            route: None,
        };
        assert!(s.factory.create(None, &cx).is_none());
    }

    #[test]
    fn filter_metadata_is_set_on_a_fault() {
        let s = setup(
            "abort: {http_status: 503, percentage: {numerator: 100}}\nfilter_metadata: {k: v}",
        );
        let (_f, _, info) = s.run(None, &[]);
        let ns = info
            .dynamic_metadata
            .namespace("envoy.filters.http.fault")
            .unwrap();
        assert_eq!(ns["k"], "v");
    }

    /// Percentages drawn per request stay within statistical bounds (5 standard deviations).
    #[test]
    fn percentages_within_statistical_bounds() {
        for (yaml, p) in [
            (
                "abort: {http_status: 503, percentage: {numerator: 30}}",
                0.30,
            ),
            (
                "abort: {http_status: 503, percentage: {numerator: 2550, denominator: TEN_THOUSAND}}",
                0.255,
            ),
            (
                "abort: {http_status: 503, percentage: {numerator: 5000, denominator: MILLION}}",
                0.005,
            ),
        ] {
            let s = setup(yaml);
            let n: f64 = 20_000.0;
            let hits = (0..n as usize)
                .filter(|_| matches!(s.run(None, &[]).1, Flow::LocalReply(_)))
                .count() as f64;
            let sd = (n * p * (1.0 - p)).sqrt();
            assert!((hits - n * p).abs() < 5.0 * sd, "{yaml}: {hits} of {n}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_limited_body_goes_at_its_rate() {
        use http_body_util::BodyExt;
        let s = setup(
            "response_rate_limit: {fixed_limit: {limit_kbps: 1}, percentage: {numerator: 100}}",
        );
        let (f, flow, _) = s.run(None, &[]);
        assert!(matches!(flow, Flow::Continue));
        assert_eq!(s.stat("response_rl_injected"), 1);
        let mut f = f.unwrap();
        let conn = connection();
        let mut info = StreamInfo::new(conn.clone());
        let mut cx = StreamCx {
            connection: &conn,
            info: &mut info,
            route: None,
        };
        // 3 KiB at 1 KiB/s: the first second's worth at once, then 64 bytes every 1/16 s.
        let body = f.on_response_body(Body::full(vec![b'x'; 3072]), &mut cx);
        let start = tokio::time::Instant::now();
        let mut first = None;
        let mut got = 0;
        let mut body = Box::pin(body);
        while let Some(frame) = body.frame().await {
            let n = frame.unwrap().into_data().unwrap().len();
            first.get_or_insert(n);
            got += n;
        }
        assert_eq!((first, got), (Some(1024), 3072));
        assert_eq!(start.elapsed().as_millis(), 2000);
        drop(f);
        drop(body);
        assert_eq!(s.active(), 0);
    }
}
