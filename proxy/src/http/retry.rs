//! The router's retries (Envoy's `RetryStateImpl`): which upstream answers and failures are
//! retried under the route's `retry_policy` and the `x-envoy-retry-*` request headers, the
//! retry limit, the cluster's `max_retries` circuit breaker or retry budget, Envoy's jittered
//! exponential back-off (or the upstream's rate-limit reset headers), the hosts already tried
//! (`previous_hosts`), and the request body kept for replay.

use super::body::{Body, BodyError};
use super::names;
use crate::model::matcher::RequestHeaders;
use crate::model::retry::{ResetFormat, RetryOn, RetryPolicy};
use crate::telemetry::stats::Counter;
use crate::upstream::cluster::Cluster;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, Method};
use http_body::{Body as HttpBody, Frame, SizeHint};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

/// Why an attempt ended without a usable response, as the retry conditions see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reset {
    /// No connection could be made (`connect-failure`).
    ConnectFailure,
    /// The upstream refused the stream (HTTP/2 REFUSED_STREAM, `refused-stream`).
    RefusedStream,
    /// The upstream reset or closed the stream, or the per-try timeout fired.
    Other,
    /// A circuit breaker refused the attempt: never retried.
    Overflow,
}

/// The outcome of asking whether to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Retry after this back-off.
    Retry(Duration),
    No,
    /// A retry was called for but `num_retries` is spent (`URX`).
    LimitExceeded,
    /// A retry was called for but the cluster's retry circuit breaker or budget is full (`UO`).
    Overflow,
}

/// One request's retry state.
pub struct RetryState<'a> {
    policy: &'a RetryPolicy,
    cluster: &'a Cluster,
    retry_on: RetryOn,
    remaining: u32,
    /// `x-envoy-retriable-status-codes` (added to the policy's).
    extra_codes: Vec<u16>,
    /// `x-envoy-retriable-header-names` (name-only matchers, added to the policy's).
    extra_headers: Vec<HeaderName>,
    /// The next exponential back-off ceiling.
    next_interval: Duration,
    /// A retry is in flight: it holds one unit of the `max_retries` resource.
    armed: bool,
    /// Hosts already tried (for `previous_hosts`): the first inline, so that a request that is
    /// never retried allocates nothing.
    first_tried: Option<SocketAddr>,
    more_tried: Vec<SocketAddr>,
    /// A rate-limit reset interval read from the last retried response.
    rate_limited: Option<Duration>,
}

// === impl RetryState ===

impl<'a> RetryState<'a> {
    /// The state for a request, or `None` when nothing could be retried. Reads (and the caller
    /// then removes) the `x-envoy-retry-on`, `x-envoy-retry-grpc-on`, `x-envoy-max-retries`,
    /// `x-envoy-retriable-status-codes` and `x-envoy-retriable-header-names` headers.
    /// `envoy_headers`: whether the request has any `x-envoy-*` header (without one, the
    /// header lookups are skipped).
    pub fn new(
        policy: &'a RetryPolicy,
        cluster: &'a Cluster,
        request: &http::request::Parts,
        envoy_headers: bool,
    ) -> Option<Self> {
        let headers = &request.headers;
        let header = |n: &HeaderName| {
            if envoy_headers {
                headers.get(n).and_then(|v| v.to_str().ok())
            } else {
                None
            }
        };
        let mut bits = policy.retry_on.0;
        let retry_on_header = header(&names::X_ENVOY_RETRY_ON);
        let grpc_header = header(&names::X_ENVOY_RETRY_GRPC_ON);
        if bits == 0 && retry_on_header.is_none() && grpc_header.is_none() {
            return None;
        }
        if let Some(v) = retry_on_header {
            bits |= RetryOn::parse_http_header(v);
        }
        if let Some(v) = grpc_header {
            bits |= RetryOn::parse_grpc_header(v);
        }
        if !policy.retriable_request_headers.is_empty() {
            let req = RequestHeaders {
                method: &request.method,
                path_and_query: request.uri.path_and_query().map_or("/", |p| p.as_str()),
                authority: headers
                    .get(http::header::HOST)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or(""),
                scheme: request.uri.scheme_str().unwrap_or("http"),
                headers,
            };
            if !policy
                .retriable_request_headers
                .iter()
                .any(|m| m.matches(&req))
            {
                bits = 0;
            }
        }
        let mut remaining = policy.num_retries;
        if bits != 0
            && let Some(n) = header(&names::X_ENVOY_MAX_RETRIES).and_then(|v| v.parse().ok())
        {
            remaining = n;
        }
        let extra_codes = header(&names::X_ENVOY_RETRIABLE_STATUS_CODES)
            .map(|v| v.split(',').filter_map(|c| c.trim().parse().ok()).collect())
            .unwrap_or_default();
        let extra_headers = header(&names::X_ENVOY_RETRIABLE_HEADER_NAMES)
            .map(|v| {
                v.split(',')
                    .filter_map(|n| {
                        HeaderName::from_bytes(n.trim().to_ascii_lowercase().as_bytes()).ok()
                    })
                    .collect()
            })
            .unwrap_or_default();
        Some(Self {
            policy,
            cluster,
            retry_on: RetryOn(bits),
            remaining,
            extra_codes,
            extra_headers,
            next_interval: policy.base_interval,
            armed: false,
            first_tried: None,
            more_tried: Vec::new(),
            rate_limited: None,
        })
    }

    /// Whether any retry can still happen (the request body must then be kept).
    pub fn may_retry(&self) -> bool {
        self.retry_on.0 != 0 && self.remaining > 0
    }

    pub fn per_try_timeout(&self) -> Option<Duration> {
        self.policy.per_try_timeout
    }

    pub fn per_try_idle_timeout(&self) -> Option<Duration> {
        self.policy.per_try_idle_timeout
    }

    /// Remember a host this request was sent to.
    pub fn tried(&mut self, host: SocketAddr) {
        if self.policy.previous_hosts {
            match self.first_tried {
                None => self.first_tried = Some(host),
                Some(_) => self.more_tried.push(host),
            }
        }
    }

    /// `previous_hosts`: a host already tried is to be replaced, up to
    /// `host_selection_retry_max_attempts` times.
    pub fn reject_host(&self, host: SocketAddr) -> bool {
        self.policy.previous_hosts
            && (self.first_tried == Some(host) || self.more_tried.contains(&host))
    }

    pub fn host_selection_max_attempts(&self) -> u32 {
        self.policy.host_selection_max_attempts
    }

    /// Envoy's `wouldRetryFromHeaders`.
    pub fn would_retry_response(&self, status: u16, headers: &HeaderMap) -> bool {
        let on = self.retry_on;
        if headers.contains_key(names::X_ENVOY_RATELIMITED) {
            return on.has(RetryOn::ENVOY_RATELIMITED);
        }
        if on.has(RetryOn::FIVE_XX) && (500..600).contains(&status) {
            return true;
        }
        if on.has(RetryOn::GATEWAY_ERROR) && (502..=504).contains(&status) {
            return true;
        }
        if on.has(RetryOn::RETRIABLE_4XX) && status == 409 {
            return true;
        }
        if on.has(RetryOn::RETRIABLE_STATUS_CODES)
            && (self.policy.retriable_status_codes.contains(&status)
                || self.extra_codes.contains(&status))
        {
            return true;
        }
        if on.has(RetryOn::RETRIABLE_HEADERS) {
            // (Only named headers: the configuration refuses pseudo-headers here.)
            let resp = RequestHeaders {
                method: &Method::GET,
                path_and_query: "",
                authority: "",
                scheme: "",
                headers,
            };
            if self
                .policy
                .retriable_headers
                .iter()
                .any(|m| m.matches(&resp))
                || self.extra_headers.iter().any(|n| headers.contains_key(n))
            {
                return true;
            }
        }
        if on.has(RetryOn::GRPC)
            && let Some(code) = headers
                .get(names::GRPC_STATUS)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u32>().ok())
        {
            let wanted = match code {
                1 => RetryOn::GRPC_CANCELLED,
                4 => RetryOn::GRPC_DEADLINE_EXCEEDED,
                8 => RetryOn::GRPC_RESOURCE_EXHAUSTED,
                13 => RetryOn::GRPC_INTERNAL,
                14 => RetryOn::GRPC_UNAVAILABLE,
                _ => 0,
            };
            return on.has(wanted);
        }
        false
    }

    /// Envoy's `wouldRetryFromReset`. `request_sent`: some of the request reached the upstream
    /// (`reset-before-request` retries only when none did).
    pub fn would_retry_reset(&self, reset: Reset, request_sent: bool) -> bool {
        let on = self.retry_on;
        match reset {
            Reset::Overflow => false,
            Reset::ConnectFailure if on.has(RetryOn::CONNECT_FAILURE) => true,
            _ if on.has(RetryOn::FIVE_XX | RetryOn::GATEWAY_ERROR | RetryOn::RESET) => true,
            _ if on.has(RetryOn::RESET_BEFORE_REQUEST) && !request_sent => true,
            Reset::RefusedStream => on.has(RetryOn::REFUSED_STREAM),
            _ => false,
        }
    }

    /// Read a rate-limit reset interval from a response about to be retried
    /// (`rate_limited_retry_back_off`).
    pub fn note_response(&mut self, headers: &HeaderMap) {
        let Some(rl) = &self.policy.rate_limited else {
            return;
        };
        self.rate_limited = rl.reset_headers.iter().find_map(|(name, format)| {
            let v = headers
                .get(name)?
                .to_str()
                .ok()?
                .trim()
                .parse::<u64>()
                .ok()?;
            let d = match format {
                ResetFormat::Seconds => Duration::from_secs(v),
                ResetFormat::UnixTimestamp => {
                    let now = SystemTime::now()
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .ok()?
                        .as_secs();
                    Duration::from_secs(v.checked_sub(now)?)
                }
            };
            (d <= rl.max_interval && d > Duration::from_millis(1)).then_some(d)
        });
    }

    /// Envoy's `shouldRetry`: given whether this answer calls for a retry, decide, count, and
    /// take the retry circuit breaker.
    pub fn decide(&mut self, would_retry: bool) -> Decision {
        let s = self.cluster.stats.traffic();
        if self.armed && !would_retry {
            s.upstream_rq_retry_success.inc();
        }
        self.release();
        if !would_retry {
            return Decision::No;
        }
        if self.remaining == 0 {
            s.upstream_rq_retry_limit_exceeded.inc();
            return Decision::LimitExceeded;
        }
        self.remaining -= 1;
        if !self.cluster.circuit_breakers.default.retry_allowed() {
            s.upstream_rq_retry_overflow.inc();
            return Decision::Overflow;
        }
        self.cluster.circuit_breakers.default.retries.inc();
        self.armed = true;
        s.upstream_rq_retry.inc();
        Decision::Retry(self.backoff())
    }

    /// The back-off before the retry: the rate-limit interval if the upstream gave one
    /// (jittered up to 1.5×), else Envoy's fully jittered exponential back-off.
    fn backoff(&mut self) -> Duration {
        let s = self.cluster.stats.traffic();
        if let Some(d) = self.rate_limited.take() {
            s.upstream_rq_retry_backoff_ratelimited.inc();
            let ms = d.as_millis() as u64;
            return Duration::from_millis(ms + fastrand::u64(..(ms / 2).max(1)));
        }
        s.upstream_rq_retry_backoff_exponential.inc();
        next_backoff(
            &mut self.next_interval,
            self.policy.max_interval,
            fastrand::u64(..),
        )
    }

    fn release(&mut self) {
        if self.armed {
            self.armed = false;
            self.cluster.circuit_breakers.default.retries.dec();
        }
    }
}

impl Drop for RetryState<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

/// Envoy's `JitteredExponentialBackOffStrategy`: a random duration below the current ceiling,
/// which doubles each time up to `max`.
fn next_backoff(next: &mut Duration, max: Duration, random: u64) -> Duration {
    let ceiling = (*next).max(Duration::from_millis(1));
    *next = if ceiling > max / 2 { max } else { ceiling * 2 };
    let ms = ceiling.as_millis() as u64;
    Duration::from_millis(random % ms).min(max)
}

// === Request body replay ===

enum Kept {
    Data(Bytes),
    Trailers(HeaderMap),
}

struct Shared {
    /// The downstream body still being read (None once it ended).
    inner: Option<Body>,
    kept: Vec<Kept>,
    /// Frames taken from `inner` so far.
    taken: usize,
    bytes: usize,
    limit: usize,
    /// More than `limit` arrived: what was kept is dropped and no replay is possible.
    overflowed: bool,
    hint: SizeHint,
    /// `retry_or_shadow_abandoned`.
    abandoned: Arc<Counter>,
}

/// The downstream request body as each attempt reads it: the first attempt streams it (and
/// keeps the frames, up to the buffer limit); a retry replays what was kept, then continues
/// with whatever the client has not sent yet.
pub struct ReplayBody {
    shared: Arc<Mutex<Shared>>,
    pos: usize,
}

/// The handle the router keeps to start further attempts.
#[derive(Clone)]
pub struct Replay(Arc<Mutex<Shared>>);

impl Replay {
    pub fn new(body: Body, limit: usize, abandoned: Arc<Counter>) -> Self {
        let hint = body.size_hint();
        Replay(Arc::new(Mutex::new(Shared {
            inner: Some(body),
            kept: Vec::new(),
            taken: 0,
            bytes: 0,
            limit,
            overflowed: false,
            hint,
            abandoned,
        })))
    }

    /// A body for the next attempt, or `None` when the body outgrew the buffer limit.
    pub fn attempt(&self) -> Option<Body> {
        let s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if s.overflowed && s.taken > 0 {
            return None;
        }
        drop(s);
        Some(Body::Boxed(Box::pin(ReplayBody {
            shared: self.0.clone(),
            pos: 0,
        })))
    }

    /// Whether the body outgrew the buffer limit (the request can no longer be retried).
    pub fn overflowed(&self) -> bool {
        let s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        s.overflowed
    }
}

impl HttpBody for ReplayBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let mut s = this.shared.lock().unwrap_or_else(|e| e.into_inner());
        if this.pos < s.taken {
            if s.overflowed {
                return Poll::Ready(Some(Err("request body exceeded the retry buffer".into())));
            }
            let frame = match &s.kept[this.pos] {
                Kept::Data(b) => Frame::data(b.clone()),
                Kept::Trailers(t) => Frame::trailers(t.clone()),
            };
            this.pos += 1;
            return Poll::Ready(Some(Ok(frame)));
        }
        let Some(inner) = s.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                s.inner = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(Some(Ok(frame))) => {
                s.taken += 1;
                this.pos += 1;
                if !s.overflowed {
                    let len = frame.data_ref().map_or(0, |d| d.len());
                    if s.bytes + len > s.limit {
                        s.overflowed = true;
                        s.kept = Vec::new();
                        s.abandoned.inc();
                    } else {
                        s.bytes += len;
                        let kept = match frame.data_ref() {
                            Some(d) => Kept::Data(d.clone()),
                            None => {
                                Kept::Trailers(frame.trailers_ref().cloned().unwrap_or_default())
                            }
                        };
                        s.kept.push(kept);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let s = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        self.pos >= s.taken && s.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let s = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        s.hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn backoff_is_fully_jittered_and_doubles_to_the_cap() {
        let mut next = Duration::from_millis(25);
        let max = Duration::from_millis(250);
        // A random value one below a multiple of every ceiling shows each ceiling: 25, 50,
        // 100, 200, then the cap.
        let top: Vec<u64> = (0..6)
            .map(|_| next_backoff(&mut next, max, 1_000_000_000_000 - 1).as_millis() as u64)
            .collect();
        assert_eq!(top, [24, 49, 99, 199, 249, 249]);
        let mut next = Duration::from_millis(25);
        assert_eq!(next_backoff(&mut next, max, 0), Duration::ZERO);
    }

    #[tokio::test]
    async fn replay_repeats_the_body_and_stops_at_the_limit() {
        let body = Body::Boxed(Box::pin(http_body_util::StreamBody::new(
            futures_util::stream::iter(vec![
                Ok::<_, BodyError>(Frame::data(Bytes::from_static(b"hello "))),
                Ok(Frame::data(Bytes::from_static(b"world"))),
            ]),
        )));
        let r = Replay::new(body, 1024, Arc::default());
        let first = r.attempt().unwrap().collect().await.unwrap().to_bytes();
        assert_eq!(&first[..], b"hello world");
        let second = r.attempt().unwrap().collect().await.unwrap().to_bytes();
        assert_eq!(&second[..], b"hello world");

        // A first attempt that read only part: the retry replays it and reads on.
        let body = Body::Boxed(Box::pin(http_body_util::StreamBody::new(
            futures_util::stream::iter(vec![
                Ok::<_, BodyError>(Frame::data(Bytes::from_static(b"a"))),
                Ok(Frame::data(Bytes::from_static(b"b"))),
            ]),
        )));
        let r = Replay::new(body, 1024, Arc::default());
        let mut a = r.attempt().unwrap();
        let f = a.frame().await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), "a");
        drop(a);
        let all = r.attempt().unwrap().collect().await.unwrap().to_bytes();
        assert_eq!(&all[..], b"ab");

        // Over the limit: the first attempt still gets everything; no replay.
        let counter = Arc::<Counter>::default();
        let r = Replay::new(Body::full("0123456789"), 4, counter.clone());
        let first = r.attempt().unwrap().collect().await.unwrap().to_bytes();
        assert_eq!(first.len(), 10);
        assert!(r.overflowed());
        assert!(r.attempt().is_none());
        assert_eq!(counter.value(), 1, "retry_or_shadow_abandoned");
    }
}
