//! One HTTP stream's lifetime: what it needs to finish correctly after the response headers
//! have left the router — upstream accounting, response timeouts, connection reuse, stats and
//! the access log, all run once when the response body ends or is abandoned.

use super::body::{Body, BodyError};
use super::conn_manager::ConnectionManager;
use crate::model::matcher::RequestHeaders;
use crate::stream_info::{ResponseFlags, StreamInfo};
use crate::telemetry::format::{FormatContext, RequestView};
use crate::upstream::cluster::Cluster;
use crate::upstream::host::Host;
use bytes::Bytes;
use http::{HeaderMap, Method, Uri};
use http_body::{Body as HttpBody, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio::time::Sleep;

/// The request parts kept for the access log (only the headers a log reads).
#[derive(Debug)]
pub struct RequestSnapshot {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
}

/// The upstream side of a stream, once a request was sent.
#[derive(Debug)]
pub struct UpstreamRequest {
    pub cluster: Arc<Cluster>,
    pub host: Arc<Host>,
    pub started: Instant,
    pub internal: bool,
    pub dynamic_stats: bool,
    /// The request's own span (`tracing.spawn_upstream_span`, the router's `start_child_span`).
    pub span: Option<Box<crate::tracing::UpstreamSpan>>,
    /// What the request went out with, and when (it had a connection).
    pub protocol: Option<crate::stream_info::Protocol>,
    pub first_tx: Option<Instant>,
    /// The upstream's response status, and when its head arrived.
    pub status: Option<u16>,
    pub first_rx: Option<Instant>,
}

impl UpstreamRequest {
    pub fn new(
        cluster: Arc<Cluster>,
        host: Arc<Host>,
        internal: bool,
        dynamic_stats: bool,
    ) -> Self {
        Self {
            cluster,
            host,
            started: Instant::now(),
            internal,
            dynamic_stats,
            span: None,
            protocol: None,
            first_tx: None,
            status: None,
            first_rx: None,
        }
    }

    /// The request is over: its timings are the stream's upstream timings (the last request's,
    /// as Envoy keeps them), and its span ends. `canceled`: remora reset it; `last_rx`: when
    /// its response ended, if it did.
    pub fn close(
        &mut self,
        info: &mut StreamInfo,
        progress: Option<&RequestProgress>,
        canceled: bool,
        last_rx: Option<Instant>,
    ) {
        // The last byte went with the first when the request had no body to stream.
        let last_tx = self.first_tx.and_then(|first| match progress {
            None => Some(first),
            Some(p) => p.completed_at().map(|done| done.max(first)),
        });
        info.first_upstream_tx = self.first_tx;
        info.last_upstream_tx = last_tx;
        info.first_upstream_rx = self.first_rx;
        info.last_upstream_rx = last_rx;
        let Some(span) = self.span.take() else {
            return;
        };
        span.finish(&crate::tracing::UpstreamEnd {
            protocol: self.protocol,
            cluster: &self.cluster.config.name,
            host: Some(self.host.address),
            status: self.status,
            canceled,
            first_tx: self.first_tx,
            last_tx,
            first_rx: self.first_rx,
            last_rx,
            info,
        });
    }
}

/// How a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The response body was sent completely.
    Complete,
    /// The upstream reset or closed during the response body: Envoy's flag and details.
    UpstreamReset(ResponseFlags, &'static str),
    /// The route timeout or stream idle timeout fired during the response body.
    Timeout(ResponseFlags),
    /// The downstream went away before the response was complete.
    DownstreamGone,
}

/// The state of one HTTP request from arrival to the end of its response.
pub struct ActiveStream {
    pub hcm: Arc<ConnectionManager>,
    pub downstream: Arc<super::conn_manager::DownstreamConn>,
    pub info: StreamInfo,
    pub request: Option<RequestSnapshot>,
    /// The request's `x-request-id` (for `always_set_request_id_in_response`).
    pub request_id: Option<http::HeaderValue>,
    pub response_headers: Option<HeaderMap>,
    pub upstream: Option<UpstreamRequest>,
    pub progress: Option<Arc<RequestProgress>>,
    /// The retry policy's `per_try_idle_timeout`, which also bounds the pauses of the last
    /// attempt's response body.
    pub per_try_idle: Option<Duration>,
    /// A HEAD request: local replies keep their length headers but send no body.
    pub head_request: bool,
    /// The stream's tracing span (connection managers with `tracing`).
    pub span: Option<Box<crate::tracing::ActiveSpan>>,
    /// The completion observers (`istio.stats`) enabled for the stream's route.
    pub completions: crate::filters::http::chain::CompletionSet,
    finished: bool,
}

impl std::fmt::Debug for ActiveStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActiveStream")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl ActiveStream {
    pub fn new(
        hcm: Arc<ConnectionManager>,
        downstream: Arc<super::conn_manager::DownstreamConn>,
        info: StreamInfo,
    ) -> Self {
        downstream.stream_started();
        Self {
            completions: hcm.no_route_completions,
            hcm,
            downstream,
            info,
            request: None,
            request_id: None,
            response_headers: None,
            upstream: None,
            progress: None,
            per_try_idle: None,
            head_request: false,
            span: None,
            finished: false,
        }
    }

    /// Run the end-of-stream accounting exactly once.
    pub fn finish(&mut self, end: End) {
        if self.finished {
            return;
        }
        self.finished = true;
        let now = Instant::now();
        self.info.last_downstream_tx = Some(now);
        if let Some(p) = &self.progress {
            self.info.bytes_received = p.bytes.load(Relaxed);
        }
        match end {
            End::Complete => {}
            End::UpstreamReset(flag, details) => {
                self.info.set_flag(flag);
                self.info.response_code_details = details.into();
            }
            End::Timeout(f) => self.info.set_flag(f),
            End::DownstreamGone => self
                .info
                .set_flag(ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION),
        }
        if let Some(mut up) = self.upstream.take() {
            let canceled = matches!(end, End::Timeout(_) | End::DownstreamGone);
            let last_rx = (end == End::Complete).then_some(now);
            up.close(&mut self.info, self.progress.as_deref(), canceled, last_rx);
            let s = up.cluster.stats.traffic();
            s.upstream_rq_active.dec();
            up.cluster.circuit_breakers.default.requests.dec();
            up.host.stats.rq_active.fetch_sub(1, Relaxed);
            let elapsed = now.duration_since(up.started).as_millis() as u64;
            if up.dynamic_stats {
                s.upstream_rq_time.record(elapsed);
                if up.internal {
                    s.internal_rq_time.record(elapsed)
                } else {
                    s.external_rq_time.record(elapsed)
                }
            }
            // The upstream connection itself goes back to its pool from the response body.
            match end {
                End::Complete => {}
                End::UpstreamReset(..) => s.upstream_rq_rx_reset.inc(),
                End::Timeout(_) | End::DownstreamGone => s.upstream_rq_tx_reset.inc(),
            }
        }
        let hcm = self.hcm.clone();
        let stats = &hcm.stats;
        stats.downstream_rq_active.dec();
        stats
            .downstream_rq_time
            .record(now.duration_since(self.info.start).as_millis() as u64);
        if end != End::Complete {
            stats.downstream_rq_tx_reset.inc();
        }
        if let Some(mut span) = self.span.take() {
            span.finish(&self.info);
        }
        hcm.log(self);
        self.downstream.stream_ended();
    }

    /// The request as formatters and filters see it.
    pub fn format_context(&self) -> FormatContext<'_> {
        FormatContext {
            info: Some(&self.info),
            request: self.request.as_ref().map(|r| RequestView {
                method: &r.method,
                uri: &r.uri,
                headers: &r.headers,
            }),
            response_headers: self.response_headers.as_ref(),
            response_trailers: None,
            local_reply_body: None,
        }
    }

    pub fn with_request_headers<T>(&self, f: impl FnOnce(Option<&RequestHeaders<'_>>) -> T) -> T {
        match &self.request {
            Some(r) => {
                let authority = r
                    .headers
                    .get(http::header::HOST)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                let rh = RequestHeaders {
                    method: &r.method,
                    path_and_query: r.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"),
                    authority,
                    scheme: "http",
                    headers: &r.headers,
                };
                f(Some(&rh))
            }
            None => f(None),
        }
    }
}

impl Drop for ActiveStream {
    fn drop(&mut self) {
        self.finish(End::DownstreamGone);
    }
}

// === response bodies ===

/// A response body tied to its stream: counts bytes, enforces the route timeout and the stream
/// idle timeout while the body streams, and finishes the stream at the end.
pub struct TrackedBody {
    inner: Body,
    stream: ActiveStream,
    deadline: Option<Instant>,
    idle: Option<Duration>,
    timer: Option<Pin<Box<Sleep>>>,
    timer_kind: TimerKind,
}

/// Which of the response-body timeouts the armed timer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimerKind {
    /// The route timeout.
    Deadline,
    /// The stream idle timeout.
    Idle,
    /// The retry policy's per-try idle timeout.
    PerTryIdle,
}

impl TrackedBody {
    pub fn new(
        inner: Body,
        stream: ActiveStream,
        deadline: Option<Instant>,
        idle: Option<Duration>,
    ) -> Self {
        Self {
            inner,
            stream,
            deadline,
            idle,
            timer: None,
            timer_kind: TimerKind::Deadline,
        }
    }

    pub fn stream(&self) -> &ActiveStream {
        &self.stream
    }

    pub fn stream_mut(&mut self) -> &mut ActiveStream {
        &mut self.stream
    }

    fn arm_timer(&mut self) {
        let now = Instant::now();
        // The earliest; the route timeout wins a tie, then the stream idle timeout.
        let first = [
            self.deadline.map(|d| (d, TimerKind::Deadline)),
            self.idle.map(|d| (now + d, TimerKind::Idle)),
            self.stream
                .per_try_idle
                .map(|d| (now + d, TimerKind::PerTryIdle)),
        ]
        .into_iter()
        .flatten()
        .min_by_key(|(at, _)| *at);
        match (first, self.timer.as_mut()) {
            (Some((at, kind)), Some(t)) => {
                self.timer_kind = kind;
                t.as_mut().reset(at.into())
            }
            (Some((at, kind)), None) => {
                self.timer_kind = kind;
                self.timer = Some(Box::pin(tokio::time::sleep_until(at.into())))
            }
            (None, _) => self.timer = None,
        }
    }

    /// Whether a timer re-arms on body activity.
    fn idles(&self) -> bool {
        self.idle.is_some() || self.stream.per_try_idle.is_some()
    }
}

/// Envoy's flag and details for a response body the upstream cut short: a stream the HTTP/2
/// upstream reset is `UR`; an HTTP/1.1 body ended early (the connection closed or reset, or the
/// framing broken) is a protocol error, `UPE`, as Envoy's HTTP/1 codec reports it; anything else
/// (an HTTP/2 connection lost) is `UC`.
fn reset_after_response_started(
    e: &(dyn std::error::Error + 'static),
) -> (ResponseFlags, &'static str) {
    let mut src = Some(e);
    while let Some(s) = src {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            if h2.is_reset() && h2.is_remote() {
                return (
                    ResponseFlags::UPSTREAM_REMOTE_RESET,
                    "upstream_reset_after_response_started{remote_reset}",
                );
            }
            break;
        }
        if s.is::<std::io::Error>() {
            return (
                ResponseFlags::UPSTREAM_PROTOCOL_ERROR,
                "upstream_reset_after_response_started{protocol_error}",
            );
        }
        src = s.source();
    }
    (
        ResponseFlags::UPSTREAM_CONNECTION_TERMINATION,
        "upstream_reset_after_response_started{connection_termination}",
    )
}

impl HttpBody for TrackedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.stream.info.bytes_sent += d.len() as u64;
                    if this.stream.info.first_downstream_tx.is_none() {
                        this.stream.info.first_downstream_tx = Some(Instant::now());
                    }
                } else if let Some(t) = frame.trailers_ref() {
                    // gRPC's status, for Istio's grpc_response_status.
                    this.stream.info.grpc_status_trailer = t
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse().ok());
                }
                if this.timer.is_some() && this.idles() {
                    this.arm_timer();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.timer = None;
                this.stream.finish(End::Complete);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.timer = None;
                let (flag, details) = reset_after_response_started(e.as_ref());
                this.stream.finish(End::UpstreamReset(flag, details));
                Poll::Ready(Some(Err(e)))
            }
            Poll::Pending => {
                if this.timer.is_none() && (this.deadline.is_some() || this.idles()) {
                    this.arm_timer();
                }
                if let Some(t) = this.timer.as_mut()
                    && t.as_mut().poll(cx).is_ready()
                {
                    let flag = match this.timer_kind {
                        TimerKind::Deadline | TimerKind::PerTryIdle => {
                            ResponseFlags::UPSTREAM_REQUEST_TIMEOUT
                        }
                        TimerKind::Idle => ResponseFlags::STREAM_IDLE_TIMEOUT,
                    };
                    match (this.timer_kind, &this.stream.upstream) {
                        (TimerKind::Idle, _) => {
                            this.stream.hcm.stats.downstream_rq_idle_timeout.inc()
                        }
                        (kind, Some(up)) => {
                            let s = up.cluster.stats.traffic();
                            match kind {
                                TimerKind::Deadline => s.upstream_rq_timeout.inc(),
                                _ => s.upstream_rq_per_try_idle_timeout.inc(),
                            }
                            up.host.stats.rq_timeout.fetch_add(1, Relaxed);
                        }
                        (_, None) => {}
                    }
                    this.timer = None;
                    this.stream.finish(End::Timeout(flag));
                    return Poll::Ready(Some(Err("response timed out".into())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        // A codec may stop polling once the body reports its end (HTTP/2 sends END_STREAM with
        // the last frame, or with the headers of an empty body): that is a complete response.
        if self.inner.is_end_stream() {
            self.stream.finish(End::Complete);
        }
    }
}

// === request bodies ===

/// Progress of a downstream request body, shared with the router.
#[derive(Debug, Default)]
pub struct RequestProgress {
    pub done: AtomicBool,
    pub notify: Notify,
    pub bytes: AtomicU64,
    /// Milliseconds since `origin` of the last body activity.
    last_activity_ms: AtomicU64,
    origin: std::sync::OnceLock<Instant>,
    pub done_at: std::sync::Mutex<Option<Instant>>,
}

impl RequestProgress {
    pub fn new(now: Instant) -> Arc<Self> {
        let p = Self::default();
        let _ = p.origin.set(now);
        Arc::new(p)
    }

    fn touch(&self) {
        let origin = *self.origin.get().expect("set at creation");
        self.last_activity_ms
            .store(origin.elapsed().as_millis() as u64, Relaxed);
    }

    pub fn last_activity(&self) -> Instant {
        let origin = *self.origin.get().expect("set at creation");
        origin + Duration::from_millis(self.last_activity_ms.load(Relaxed))
    }

    fn mark_done(&self) {
        if !self.done.swap(true, Relaxed) {
            *self.done_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
            self.notify.notify_waiters();
        }
    }

    /// Wait until the request body has ended.
    pub async fn wait_done(&self) {
        loop {
            let notified = self.notify.notified();
            if self.done.load(Relaxed) {
                return;
            }
            notified.await;
        }
    }

    pub fn completed_at(&self) -> Option<Instant> {
        *self.done_at.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A request body whose end and activity are reported to `RequestProgress`.
pub struct WatchedBody {
    inner: Body,
    progress: Arc<RequestProgress>,
}

impl WatchedBody {
    pub fn new(inner: Body, progress: Arc<RequestProgress>) -> Self {
        Self { inner, progress }
    }
}

impl HttpBody for WatchedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.progress.bytes.fetch_add(d.len() as u64, Relaxed);
                }
                this.progress.touch();
                if this.inner.is_end_stream() {
                    this.progress.mark_done();
                }
            }
            Poll::Ready(None) => this.progress.mark_done(),
            Poll::Ready(Some(Err(_))) => {}
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_cut_short_is_named_as_envoy_names_it() {
        let eof: BodyError = Box::new(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "closed",
        ));
        assert_eq!(
            reset_after_response_started(eof.as_ref()),
            (
                ResponseFlags::UPSTREAM_PROTOCOL_ERROR,
                "upstream_reset_after_response_started{protocol_error}"
            )
        );
        // A locally made HTTP/2 error is not the peer's reset.
        let local: BodyError = Box::new(h2::Error::from(h2::Reason::INTERNAL_ERROR));
        assert_eq!(
            reset_after_response_started(local.as_ref()),
            (
                ResponseFlags::UPSTREAM_CONNECTION_TERMINATION,
                "upstream_reset_after_response_started{connection_termination}"
            )
        );
    }
}
