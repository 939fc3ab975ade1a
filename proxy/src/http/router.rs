//! `envoy.filters.http.router`: picks the cluster and host, rewrites the request for the
//! upstream, sends it over the worker's connection pool, waits with the route timeout and the
//! stream idle timeout, and maps every upstream failure to Envoy's response flag, response-code
//! details and local-reply body.

use super::body::Body;
use super::codec::{h1, h1_client};
use super::conn_manager::{Answer, ConnectionManager};
use super::local_reply::{LocalReply, bodies};
use super::names;
use super::retry::{Decision, Replay, Reset, RetryState};
use super::stream::{ActiveStream, RequestProgress, UpstreamRequest};
use crate::filters::http::RouteCx;
use crate::model::cluster::UpstreamProtocol;
use crate::model::retry::RetryPolicy;
use crate::model::route::{
    ForwardAction, HostRewrite, Redirect, RedirectPath, Route, RouteConfig, VirtualHost,
    WeightedCluster, rewrite_path,
};
use crate::stream_info::{Protocol, ResponseFlags};
use crate::upstream::cluster::Cluster;
use crate::upstream::host::Host;
use crate::upstream::outlier::Outcome;
use crate::upstream::{lb, pool};
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// The route decision the connection manager hands to the router.
pub struct Forward<'a> {
    pub route_config: &'a RouteConfig,
    pub vhost: &'a VirtualHost,
    pub route: &'a Route,
    pub action: &'a ForwardAction,
    pub matched_len: usize,
    pub internal: bool,
    pub upgrade: bool,
    /// The weighted cluster drawn with the route (its per-filter config and header mutations).
    pub weighted: Option<&'a WeightedCluster>,
    /// The route's cluster, looked up with the route (`None`: 503/404 `NC`).
    pub cluster: Option<Arc<Cluster>>,
}

impl<'a> Forward<'a> {
    /// The levels whose response header mutations a response (or local reply) gets.
    pub fn levels(&self) -> RouteCx<'a> {
        RouteCx {
            route_config: self.route_config,
            vhost: self.vhost,
            route: self.route,
            weighted: self.weighted,
        }
    }
}

/// A local reply for the routed request (the route's response headers, then local_reply_config).
fn routed_reply(
    hcm: &ConnectionManager,
    stream: &mut ActiveStream,
    levels: RouteCx<'_>,
    reply: (StatusCode, &str, &'static str, ResponseFlags),
) -> Response<Body> {
    let (status, body, details, flags) = reply;
    let reply = LocalReply::new(status, body.to_string());
    hcm.local_response(stream, reply, details.into(), flags, Some(levels))
}

/// The upstream half of a WebSocket (or other HTTP/1.1 upgrade) that the downstream codec
/// joins to the client once the 101 response is written.
pub struct UpgradeBridge {
    pub upstream: pool::CountedStream,
    /// Bytes the upstream sent after its 101 response head.
    pub leftover: bytes::BytesMut,
    pub cluster: Arc<Cluster>,
}

/// Request headers the router consumes and never forwards.
const ROUTER_CONSUMED: [HeaderName; 9] = [
    names::X_ENVOY_UPSTREAM_RQ_TIMEOUT_MS,
    names::X_ENVOY_UPSTREAM_RQ_PER_TRY_TIMEOUT_MS,
    names::X_ENVOY_MAX_RETRIES,
    names::X_ENVOY_RETRY_ON,
    names::X_ENVOY_RETRY_GRPC_ON,
    names::X_ENVOY_RETRIABLE_STATUS_CODES,
    names::X_ENVOY_RETRIABLE_HEADER_NAMES,
    names::X_ENVOY_UPSTREAM_STREAM_DURATION_MS,
    names::X_ENVOY_HEDGE_ON_PER_TRY_TIMEOUT,
];

/// What bounds the wait for an upstream response.
#[derive(Clone, Copy)]
struct Timers<'a> {
    /// The downstream request body's progress (absent when the request was complete at once).
    progress: Option<&'a RequestProgress>,
    /// The route timeout, counted from the end of the request.
    route: Option<Duration>,
    /// The stream idle timeout.
    idle: Option<Duration>,
    /// The connection manager's request timeout, as a deadline.
    request_deadline: Option<Instant>,
    /// When forwarding began (the route timeout of a complete request counts from here, across
    /// retries).
    origin: Instant,
    /// The retry policy's per-try timeout (counted from the attempt, after the request ends).
    per_try: Option<Duration>,
    /// The retry policy's per-try idle timeout (no response from the upstream for this long).
    per_try_idle: Option<Duration>,
}

pub(super) enum Failure {
    Connect(pool::ConnectError),
    /// The route timeout fired while an attempt was in flight.
    Timeout,
    /// The route timeout fired while backing off before a retry.
    TimeoutBetweenAttempts,
    /// The retry policy's `per_try_timeout` fired.
    PerTryTimeout,
    /// The retry policy's `per_try_idle_timeout` fired.
    PerTryIdle,
    Idle,
    RequestTimeout,
    /// The upstream closed or reset the connection before a response (`UC`).
    Terminated,
    /// The upstream reset the stream (HTTP/2 RST_STREAM, `UR`); `refused`: REFUSED_STREAM.
    RemoteReset {
        refused: bool,
    },
    /// A retry found no host to go to (`UH`).
    NoHealthyUpstream,
    /// The upstream's response was not valid HTTP (`UPE`).
    Protocol,
    DownstreamGone,
    /// The downstream request body broke its HTTP/1 framing (`DPE`): 400, and the connection
    /// closes.
    DownstreamProtocol(h1::CodecError),
}

impl Failure {
    /// remora reset the upstream request (a timeout, the client gone), rather than the upstream
    /// failing it.
    fn canceled(&self) -> bool {
        matches!(
            self,
            Failure::PerTryTimeout
                | Failure::PerTryIdle
                | Failure::Timeout
                | Failure::Idle
                | Failure::RequestTimeout
                | Failure::DownstreamGone
                | Failure::DownstreamProtocol(_)
        )
    }

    /// The failure as the retry conditions see it, and whether any of the request was sent;
    /// `None`: never retried (timeouts of the whole request, the downstream going away).
    fn reset(&self) -> Option<(Reset, bool)> {
        Some(match self {
            Failure::Connect(pool::ConnectError::Overflow) => (Reset::Overflow, false),
            Failure::Connect(
                pool::ConnectError::PendingTimeout | pool::ConnectError::PoolOverflow,
            ) => {
                return None;
            }
            Failure::Connect(_) => (Reset::ConnectFailure, false),
            Failure::RemoteReset { refused: true } => (Reset::RefusedStream, true),
            Failure::PerTryTimeout
            | Failure::PerTryIdle
            | Failure::Terminated
            | Failure::Protocol
            | Failure::RemoteReset { refused: false } => (Reset::Other, true),
            Failure::Timeout
            | Failure::TimeoutBetweenAttempts
            | Failure::Idle
            | Failure::RequestTimeout
            | Failure::DownstreamGone
            | Failure::DownstreamProtocol(_)
            | Failure::NoHealthyUpstream => return None,
        })
    }
}

/// The router's forwarding: host choice, the request rewritten for the upstream, the attempts
/// (retries, timeouts), and the answer.
pub async fn forward(
    hcm: &Arc<ConnectionManager>,
    stream: &mut ActiveStream,
    req: Request<Body>,
    f: Forward<'_>,
) -> Answer {
    let (mut parts, body) = req.into_parts();
    let (cluster, host, request_hash) = match choose_upstream(hcm, stream, &parts, &f) {
        Ok(chosen) => chosen,
        Err(answer) => return *answer,
    };
    let plan = prepare(hcm, stream, &mut parts, &f, &cluster, &host);
    if f.upgrade && cluster.config.protocol == UpstreamProtocol::Http2 {
        return Answer::local(hcm.local_reply(
            stream,
            StatusCode::FORBIDDEN,
            "",
            "upgrade_failed",
            ResponseFlags::empty(),
        ));
    }
    let progress = stream.progress.clone();
    let mirror_timing = (plan.timeout, progress.as_ref());
    let span = stream.span.as_deref();
    let body = super::shadow::mirror(hcm, &parts, &f, &cluster, mirror_timing, span, body);
    let (replay, body) = keep_for_replay(hcm, &f, &cluster, plan.retry.as_ref(), body);
    let mut x = Exchange {
        hcm,
        f: &f,
        cluster: &cluster,
        replay,
        retry: plan.retry,
        timers: Timers {
            progress: progress.as_deref(),
            route: plan.timeout,
            idle: plan.idle,
            request_deadline: hcm.config.request_timeout.map(|t| stream.info.start + t),
            origin: Instant::now(),
            per_try: plan.per_try,
            per_try_idle: None,
        },
        lb_context: lb::Context {
            hash: request_hash.hash,
            attempt: 0,
        },
        downstream_h2: stream.info.protocol == Some(Protocol::Http2),
        downstream_http10: stream.info.protocol == Some(Protocol::Http10)
            && matches!(
                cluster.config.protocol,
                UpstreamProtocol::UseDownstream { .. }
            ),
    };
    x.timers.per_try_idle = x.retry.as_ref().and_then(|r| r.per_try_idle_timeout());
    let (result, host, started, attempt) = match x.attempts(stream, &mut parts, host, body).await {
        Ok(done) => done,
        Err(answer) => return answer,
    };
    names::recycle_header_map(std::mem::take(&mut parts.headers));
    match result {
        Ok(resp) => {
            let done = Answered {
                per_try_idle: x.timers.per_try_idle,
                cluster: &cluster,
                host: &host,
                started,
                attempt,
                timeout: plan.timeout,
                idle: plan.idle,
                set_cookie: request_hash.set_cookie.as_ref(),
            };
            upstream_response(hcm, stream, resp, &f, done)
        }
        Err(failure) => Answer::local(fail(hcm, stream, (&cluster, &host), failure, f.levels())),
    }
}

/// The cluster (looked up with the route), the request's hash under the route's hash policy
/// (RING_HASH / MAGLEV), and the host. `Err`: 503/404 `NC` or 503 `UH`.
fn choose_upstream(
    hcm: &ConnectionManager,
    stream: &mut ActiveStream,
    parts: &http::request::Parts,
    f: &Forward<'_>,
) -> Result<(Arc<Cluster>, Arc<Host>, super::hash_policy::RequestHash), Box<Answer>> {
    let levels = f.levels();
    let Some(cluster) = f.cluster.clone() else {
        hcm.stats.no_cluster.inc();
        hcm.snapshot_request(stream, parts);
        let nc = (
            f.action.cluster_not_found_code,
            "",
            "cluster_not_found",
            ResponseFlags::NO_CLUSTER_FOUND,
        );
        return Err(Box::new(Answer::local(routed_reply(
            hcm, stream, levels, nc,
        ))));
    };
    let request_hash = if cluster.config.lb_policy.is_hashing() && !f.action.hash_policy.is_empty()
    {
        super::hash_policy::compute(
            &f.action.hash_policy,
            parts,
            &super::hash_policy::Addresses {
                client: stream.info.downstream_remote,
                connection_remote: stream.info.connection.remote,
                connection_local: stream.info.connection.local,
            },
        )
    } else {
        Default::default()
    };
    let lb_context = lb::Context {
        hash: request_hash.hash,
        attempt: 0,
    };
    let Some(host) = lb::choose_with(&cluster, lb_context) else {
        cluster.stats.traffic().upstream_cx_none_healthy.inc();
        let uh = (
            StatusCode::SERVICE_UNAVAILABLE,
            bodies::NO_HEALTHY_UPSTREAM,
            "no_healthy_upstream",
            ResponseFlags::NO_HEALTHY_UPSTREAM,
        );
        hcm.snapshot_request(stream, parts);
        return Err(Box::new(Answer::local(routed_reply(
            hcm, stream, levels, uh,
        ))));
    };
    stream.info.upstream_host = Some(host.address);
    Ok((cluster, host, request_hash))
}

/// The request made ready for the upstream, and what bounds its attempts.
struct Plan<'a> {
    timeout: Option<Duration>,
    per_try: Option<Duration>,
    retry: Option<RetryState<'a>>,
    /// The stream idle timeout (the route's, else the connection manager's).
    idle: Option<Duration>,
}

/// Rewrites (header mutations, host, path), the timeouts and retry state from the route and
/// the trusted `x-envoy-*` headers (which are then consumed), `x-envoy-expected-rq-timeout-ms`,
/// and the access log's snapshot of the request as it goes out.
fn prepare<'a>(
    hcm: &ConnectionManager,
    stream: &mut ActiveStream,
    parts: &mut http::request::Parts,
    f: &Forward<'a>,
    cluster: &'a Cluster,
    host: &Host,
) -> Plan<'a> {
    let router = &hcm.config.router;
    let keep_original = !router.suppress_envoy_headers;
    rewrite_request(parts, f, f.weighted, host, stream, keep_original);
    let envoy_headers = names::any_envoy_header(&parts.headers);
    let policy = f
        .action
        .retry_policy
        .as_deref()
        .or(f.vhost.retry_policy.as_deref());
    let (timeout, per_try) = timeouts(parts, f, router, policy, envoy_headers);
    // Retries: the route's (or else the virtual host's) policy, plus what `x-envoy-retry-*`
    // asks (those headers only survive from trusted sources: see the connection manager).
    let retry = match (policy, envoy_headers) {
        (Some(p), e) => RetryState::new(p, cluster, parts, e),
        (None, true) => RetryState::new(&DEFAULT_RETRY_POLICY, cluster, parts, true),
        (None, false) => None,
    };
    if envoy_headers {
        for h in ROUTER_CONSUMED {
            parts.headers.remove(h);
        }
    }
    if !router.suppress_envoy_headers {
        announce_timeout(parts, timeout, per_try);
    }
    // With a child span per upstream request, each attempt injects its own (`attempt`).
    if let Some(span) = stream.span.as_ref().filter(|s| !s.spawns_upstream()) {
        span.inject(&mut parts.headers);
    }
    hcm.snapshot_request(stream, parts);
    let idle = match f.action.idle_timeout {
        Some(d) => Some(d).filter(|d| !d.is_zero()),
        None => hcm.config.stream_idle_timeout,
    };
    Plan {
        timeout,
        per_try,
        retry,
        idle,
    }
}

/// The request body kept for replay (up to the buffer limit) while a retry may need it, or
/// left for the first attempt.
fn keep_for_replay(
    hcm: &ConnectionManager,
    f: &Forward<'_>,
    cluster: &Cluster,
    retry: Option<&RetryState<'_>>,
    body: Body,
) -> (Option<Replay>, Option<Body>) {
    if !retry.is_some_and(|r| r.may_retry()) || http_body::Body::is_end_stream(&body) {
        return (None, Some(body));
    }
    let listener = hcm.config.buffer_limit;
    let limit = f
        .route
        .buffer_limit
        .or(f.vhost.buffer_limit.map(|v| v.min(listener)))
        .unwrap_or(listener);
    let abandoned = cluster.stats.traffic().retry_or_shadow_abandoned.clone();
    (Some(Replay::new(body, limit as usize, abandoned)), None)
}

/// What every attempt of one routed request shares.
struct Exchange<'a> {
    hcm: &'a Arc<ConnectionManager>,
    f: &'a Forward<'a>,
    cluster: &'a Arc<Cluster>,
    retry: Option<RetryState<'a>>,
    replay: Option<Replay>,
    timers: Timers<'a>,
    lb_context: lb::Context,
    downstream_h2: bool,
    downstream_http10: bool,
}

/// An attempt's outcome: the upstream's response or why there is none.
type AttemptResult = Result<Response<Body>, Failure>;

impl Exchange<'_> {
    /// Attempts until one answers or no retry follows: the last result, its host, when it
    /// started and how many attempts were made. `Err`: a circuit breaker refused (503 `UO`).
    async fn attempts(
        &mut self,
        stream: &mut ActiveStream,
        parts: &mut http::request::Parts,
        mut host: Arc<Host>,
        mut body: Option<Body>,
    ) -> Result<(AttemptResult, Arc<Host>, Instant, u32), Answer> {
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let first_body = body.take();
            let (result, started) = self
                .attempt(stream, parts, &host, attempt, first_body)
                .await?;
            let Some(backoff) = self.retry_after(stream, &result) else {
                return Ok((result, host, started, attempt));
            };
            self.retried(stream, &host, result);
            if let Err(failure) = self.back_off(backoff).await {
                return Ok((Err(failure), host, started, attempt));
            }
            match retry_host(self.cluster, self.retry.as_ref(), self.lb_context) {
                Some(h) => host = h,
                None => return Ok((Err(Failure::NoHealthyUpstream), host, started, attempt)),
            }
        }
    }

    /// One attempt on `host`: the circuit breaker, upstream accounting, the protocol, the
    /// exchange.
    async fn attempt(
        &mut self,
        stream: &mut ActiveStream,
        parts: &mut http::request::Parts,
        host: &Arc<Host>,
        attempt: u32,
        first_body: Option<Body>,
    ) -> Result<(AttemptResult, Instant), Answer> {
        let (f, cluster) = (self.f, self.cluster);
        stream.info.attempt_count = attempt;
        stream.info.upstream_host = Some(host.address);
        stream.info.upstream_local = None;
        if let Some(r) = &mut self.retry {
            r.tried(host.address);
        }
        if f.vhost.attempt_count_upstream {
            let n = names::number(u64::from(attempt));
            parts.headers.insert(names::X_ENVOY_ATTEMPT_COUNT, n);
        }
        if attempt > 1 && !self.hcm.config.router.suppress_envoy_headers {
            announce_remaining(parts, &self.timers);
        }
        // The cluster's max_requests circuit breaker (Envoy counts the refusal as a pending
        // overflow).
        if !cluster.circuit_breakers.default.requests.try_inc() {
            cluster.stats.traffic().upstream_rq_pending_overflow.inc();
            names::recycle_header_map(std::mem::take(&mut parts.headers));
            let levels = f.levels();
            let mut resp = overflow_reply(self.hcm, stream, levels);
            count_attempts(levels, stream, &mut resp);
            return Err(Answer::local(resp));
        }
        // Upstream accounting starts here; `ActiveStream::finish` (or `end_attempt`) ends it.
        // (`upstream_rq_total` counts once the request has a connection: `sent_on_connection`.)
        cluster.stats.traffic().upstream_rq_active.inc();
        host.stats.rq_active.fetch_add(1, Relaxed);
        let dynamic_stats = self.hcm.config.router.dynamic_stats;
        let mut up = UpstreamRequest::new(cluster.clone(), host.clone(), f.internal, dynamic_stats);
        let started = up.started;
        up.span = stream
            .span
            .as_ref()
            .and_then(|s| s.spawn_upstream(&cluster.config.name, attempt, &parts.headers));
        if let Some(span) = &up.span {
            span.inject(&mut parts.headers);
        }
        stream.upstream = Some(up);
        // The request body: the first attempt's, or (with a retry possible) a replay.
        let body = match (&self.replay, first_body) {
            (Some(r), _) => r.attempt().unwrap_or(Body::Empty),
            (None, Some(b)) => b,
            (None, None) => Body::Empty,
        };
        let result = self.send(stream, parts, host, body).await;
        if let (Ok(resp), Some(up)) = (&result, &mut stream.upstream) {
            up.first_rx = Some(Instant::now());
            up.status = Some(resp.status().as_u16());
        }
        Ok((result, started))
    }

    /// The request over HTTP/1.1 or HTTP/2 as the cluster's protocol (and the host's, for
    /// auto_config) says.
    async fn send(
        &self,
        stream: &mut ActiveStream,
        parts: &mut http::request::Parts,
        host: &Arc<Host>,
        body: Body,
    ) -> AttemptResult {
        let (f, cluster) = (self.f, self.cluster);
        let use_h2 = !f.upgrade
            && match cluster.config.protocol {
                UpstreamProtocol::Http1 => false,
                UpstreamProtocol::Http2 => true,
                UpstreamProtocol::UseDownstream { http2_allowed, .. } => {
                    self.downstream_h2 && http2_allowed
                }
                UpstreamProtocol::Auto => host.alpn.load(Relaxed) == 2,
            };
        // auto_config and the host's protocol not known yet: the first connection's ALPN decides.
        let learn = !f.upgrade
            && cluster.config.protocol == UpstreamProtocol::Auto
            && host.alpn.load(Relaxed) == 0;
        let use_h2 = match learn {
            true => pool::learn_protocol(cluster, host, self.alpn_for(true)).await,
            false => Ok(use_h2),
        };
        match use_h2 {
            Ok(true) => {
                // The request head is needed again only if a retry may follow.
                let attempt_parts = match self.retry.as_ref().is_some_and(|r| r.may_retry()) {
                    true => clone_parts(parts),
                    false => std::mem::replace(parts, Request::new(()).into_parts().0),
                };
                let alpn = self.alpn_for(true);
                send_h2(
                    cluster,
                    host,
                    alpn,
                    attempt_parts,
                    body,
                    self.timers,
                    stream,
                )
                .await
            }
            Ok(false) => {
                let alpn = self.alpn_for(false);
                send_h1(cluster, host, alpn, parts, body, self.timers, stream).await
            }
            Err(e) => Err(Failure::Connect(e)),
        }
    }

    /// `istio.alpn`: a TLS cluster is offered the list for the protocol it will carry
    /// (auto_config learns with the HTTP/2 list, as Envoy's first upstream protocol is HTTP/2
    /// there).
    fn alpn_for(&self, h2: bool) -> pool::Alpn<'_> {
        let cluster = &self.cluster.config;
        let o = self
            .hcm
            .alpn
            .as_deref()
            .filter(|_| cluster.tls.is_some() && cluster.istio.alpn_override)?;
        match (h2, self.downstream_http10) {
            (true, _) => o.http2.as_ref(),
            (false, true) => o.http10.as_ref(),
            (false, false) => o.http11.as_ref(),
        }
    }

    /// Whether to retry this result, and after what back-off (flags set when a retry was
    /// wanted but the limit or the budget said no).
    fn retry_after(
        &mut self,
        stream: &mut ActiveStream,
        result: &AttemptResult,
    ) -> Option<Duration> {
        let r = self.retry.as_mut()?;
        let replayable = self.replay.as_ref().is_none_or(|r| !r.overflowed());
        let would = match result {
            Ok(resp) if resp.status() == StatusCode::SWITCHING_PROTOCOLS => false,
            Ok(resp) => {
                let would = r.would_retry_response(resp.status().as_u16(), resp.headers());
                if would {
                    r.note_response(resp.headers());
                }
                would
            }
            Err(failure) => failure
                .reset()
                .is_some_and(|(reset, sent)| r.would_retry_reset(reset, sent)),
        };
        match r.decide(would && replayable) {
            Decision::Retry(backoff) => Some(backoff),
            Decision::No => None,
            Decision::LimitExceeded => {
                let flag = ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED;
                stream.info.set_flag(flag);
                None
            }
            Decision::Overflow => {
                stream.info.set_flag(ResponseFlags::UPSTREAM_OVERFLOW);
                None
            }
        }
    }

    /// A retried attempt is over: account for it as Envoy does.
    fn retried(&self, stream: &mut ActiveStream, host: &Arc<Host>, result: AttemptResult) {
        let cluster = self.cluster;
        // remora resets an answered attempt (or one out of time) to try again.
        let canceled = match &result {
            Ok(_) => true,
            Err(f) => f.canceled(),
        };
        match result {
            Ok(resp) => {
                let status = resp.status().as_u16();
                cluster.report(host, Outcome::Status(status));
                host.stats.rq_error.fetch_add(1, Relaxed);
                if self.hcm.config.router.dynamic_stats {
                    cluster.stats.traffic().retry_codes.charge(status);
                }
            }
            Err(failure) => {
                let reply = describe(self.hcm, stream, cluster, host, failure);
                account_failure(stream, cluster, host, &reply, false);
            }
        }
        end_attempt(stream, canceled);
    }

    /// Back off before a retry, within the route timeout.
    async fn back_off(&self, backoff: Duration) -> Result<(), Failure> {
        let t = self.timers;
        let deadline = t.route.and_then(|route| match t.progress {
            None => Some(t.origin + route),
            Some(p) => p.completed_at().map(|d| d + route),
        });
        let wake = Instant::now() + backoff;
        if let Some(d) = deadline
            && d <= wake
        {
            tokio::time::sleep_until(d.into()).await;
            return Err(Failure::TimeoutBetweenAttempts);
        }
        tokio::time::sleep_until(wake.into()).await;
        Ok(())
    }
}

/// The route timeout and the per-try timeout, as configured or (from a trusted client) as the
/// `x-envoy-upstream-rq-timeout-ms`, `x-envoy-expected-rq-timeout-ms` and
/// `x-envoy-upstream-rq-per-try-timeout-ms` headers ask.
fn timeouts(
    parts: &http::request::Parts,
    f: &Forward<'_>,
    router: &crate::model::hcm::RouterConfig,
    policy: Option<&RetryPolicy>,
    envoy_headers: bool,
) -> (Option<Duration>, Option<Duration>) {
    let mut timeout = f.action.timeout;
    let mut per_try = policy.and_then(|p| p.per_try_timeout);
    if envoy_headers {
        let header_ms = |name: &HeaderName| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|s| s.parse::<u64>().ok())
        };
        if let Some(ms) = header_ms(&names::X_ENVOY_UPSTREAM_RQ_TIMEOUT_MS) {
            timeout = (ms > 0).then(|| Duration::from_millis(ms));
        } else if router.respect_expected_rq_timeout
            && let Some(ms) = header_ms(&names::X_ENVOY_EXPECTED_RQ_TIMEOUT_MS)
        {
            timeout = (ms > 0).then(|| Duration::from_millis(ms));
        }
        if let Some(ms) = header_ms(&names::X_ENVOY_UPSTREAM_RQ_PER_TRY_TIMEOUT_MS) {
            per_try = (ms > 0).then(|| Duration::from_millis(ms));
        }
    }
    (timeout, per_try)
}

/// `x-envoy-expected-rq-timeout-ms` for the upstream: the per-try timeout when it is the
/// shorter one, as Envoy does.
fn announce_timeout(
    parts: &mut http::request::Parts,
    timeout: Option<Duration>,
    per_try: Option<Duration>,
) {
    let expected = match (per_try, timeout) {
        (Some(p), Some(t)) if p < t => Some(p),
        (Some(p), None) => Some(p),
        (_, t) => t,
    };
    match expected {
        Some(t) => {
            parts.headers.insert(
                names::X_ENVOY_EXPECTED_RQ_TIMEOUT_MS,
                names::number(t.as_millis() as u64),
            );
        }
        None => {
            parts.headers.remove(names::X_ENVOY_EXPECTED_RQ_TIMEOUT_MS);
        }
    }
}

/// `x-envoy-expected-rq-timeout-ms` on a retry: what remains of the route timeout (whole
/// milliseconds since the request was complete; 1 once it has run out, as 0 would mean none),
/// capped by the per-try timeout — Envoy's `setTimeoutHeaders` at `doRetry`. Without a route
/// timeout the first attempt's value (the per-try timeout) stands.
fn announce_remaining(parts: &mut http::request::Parts, t: &Timers<'_>) {
    let Some(route) = t.route else {
        return;
    };
    let completed = match t.progress {
        None => Some(t.origin),
        Some(p) => p.completed_at(),
    };
    let elapsed = completed.map_or(0, |c| c.elapsed().as_millis() as u64);
    let global = route.as_millis() as u64;
    let left = global.checked_sub(elapsed).filter(|&l| l > 0).unwrap_or(1);
    let expected = t.per_try.map_or(left, |p| (p.as_millis() as u64).min(left));
    parts.headers.insert(
        names::X_ENVOY_EXPECTED_RQ_TIMEOUT_MS,
        names::number(expected),
    );
}

/// The request as the upstream gets it, in Envoy's order (`finalizeRequestHeaders`): the header
/// mutations of the weighted cluster, route, virtual host and route configuration, then the host
/// rewrite, then the path rewrite. Unless the router suppresses Envoy's headers, the replaced
/// values travel on as `x-envoy-original-host` and `x-envoy-original-path` (with its query).
fn rewrite_request(
    parts: &mut http::request::Parts,
    f: &Forward<'_>,
    weighted: Option<&WeightedCluster>,
    host: &Host,
    stream: &ActiveStream,
    keep_original: bool,
) {
    apply_request_mutations(parts, f, weighted, stream);
    let new_host = match (
        &f.action.host_rewrite,
        weighted.and_then(|w| w.host_rewrite_literal.clone()),
    ) {
        (_, Some(lit)) => Some(lit),
        (HostRewrite::Literal(h), None) => Some(h.clone()),
        (HostRewrite::Auto, None) if !host.hostname.is_empty() => {
            HeaderValue::from_str(&host.hostname).ok()
        }
        (HostRewrite::Header(h), None) => parts.headers.get(h).cloned(),
        _ => None,
    };
    if let Some(h) = new_host.filter(|h| !h.is_empty()) {
        update_authority(
            &mut parts.headers,
            h,
            f.action.append_x_forwarded_host,
            keep_original,
        );
    }
    let original_pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    if let Some(new_pq) = rewrite_path(f.action, original_pq, f.matched_len)
        && let Ok(uri) = http::Uri::try_from(new_pq.as_str())
    {
        if keep_original && let Ok(orig) = HeaderValue::from_str(original_pq) {
            parts.headers.insert(names::X_ENVOY_ORIGINAL_PATH, orig);
        }
        parts.uri = uri;
    }
}

/// Envoy's `Utility::updateAuthority`: the new host, with the original one (when there was
/// one) appended to `x-forwarded-host` and kept in `x-envoy-original-host`.
fn update_authority(headers: &mut http::HeaderMap, new: HeaderValue, xfh: bool, keep: bool) {
    if let Some(orig) = headers.get(header::HOST).filter(|o| !o.is_empty()).cloned() {
        if xfh {
            headers.append(names::X_FORWARDED_HOST, orig.clone());
        }
        if keep {
            headers.insert(names::X_ENVOY_ORIGINAL_HOST, orig);
        }
    }
    headers.insert(header::HOST, new);
}

/// `request_headers_to_add/_remove` of every level, most specific first (or last with
/// `most_specific_header_mutations_wins`), evaluated against the request as it stands.
fn apply_request_mutations(
    parts: &mut http::request::Parts,
    f: &Forward<'_>,
    weighted: Option<&WeightedCluster>,
    stream: &ActiveStream,
) {
    let levels = [
        weighted.map(|w| &w.request_headers),
        Some(&f.route.request_headers),
        Some(&f.vhost.request_headers),
        Some(&f.route_config.request_headers),
    ];
    let ctx = stream.format_context();
    let mut apply = |m: &crate::model::headers::HeaderMutations| m.apply_request(parts, &ctx);
    if f.route_config.most_specific_header_mutations_wins {
        levels.iter().rev().flatten().for_each(|m| apply(m));
    } else {
        levels.iter().flatten().for_each(|m| apply(m));
    }
}

/// What the response path needs to know about the answered attempt.
struct Answered<'a> {
    cluster: &'a Arc<Cluster>,
    host: &'a Arc<Host>,
    started: Instant,
    attempt: u32,
    timeout: Option<Duration>,
    idle: Option<Duration>,
    /// Also bounds the pauses of the response body.
    per_try_idle: Option<Duration>,
    set_cookie: Option<&'a HeaderValue>,
}

/// The upstream's answer on its way downstream: stats, outlier detection, hop-by-hop headers
/// removed, Envoy's response headers and mutations, and the response-body timeouts.
fn upstream_response(
    hcm: &Arc<ConnectionManager>,
    stream: &mut ActiveStream,
    mut resp: Response<Body>,
    f: &Forward<'_>,
    done: Answered<'_>,
) -> Answer {
    let Answered {
        cluster,
        host,
        started,
        attempt,
        timeout,
        idle,
        per_try_idle,
        set_cookie,
    } = done;
    let router = &hcm.config.router;
    let progress = stream.progress.clone();
    let now = Instant::now();
    stream.info.first_upstream_rx = Some(now);
    let status = resp.status().as_u16();
    charge_upstream(stream, status);
    cluster.report(host, Outcome::Status(status));
    if status >= 500 {
        host.stats.rq_error.fetch_add(1, Relaxed);
    } else {
        host.stats.rq_success.fetch_add(1, Relaxed);
    }
    stream.info.response_code_details = "via_upstream".into();
    // Known to the response header mutations' %RESPONSE_CODE%.
    stream.info.response_code = Some(status);
    let h = resp.headers_mut();
    if status != 101 && names::any_hop_by_hop(h) {
        for name in [
            header::CONNECTION,
            names::KEEP_ALIVE,
            names::PROXY_CONNECTION,
            header::TRANSFER_ENCODING,
            header::UPGRADE,
        ] {
            h.remove(name);
        }
    }
    if !router.suppress_envoy_headers {
        h.insert(
            names::X_ENVOY_UPSTREAM_SERVICE_TIME,
            names::number(now.duration_since(started).as_millis() as u64),
        );
    }
    if let Some(c) = set_cookie {
        h.append(header::SET_COOKIE, c.clone());
    }
    if f.vhost.attempt_count_downstream {
        h.insert(
            names::X_ENVOY_ATTEMPT_COUNT,
            names::number(u64::from(attempt)),
        );
    }
    hcm.apply_response_mutations(f.levels(), resp.headers_mut(), stream);
    let deadline = timeout.map(|t| {
        progress
            .as_ref()
            .and_then(|p| p.completed_at())
            .unwrap_or(now)
            + t
    });
    if status == 101 && f.upgrade {
        return Answer::local(resp);
    }
    stream.per_try_idle = per_try_idle;
    Answer {
        resp,
        deadline,
        idle,
    }
}

/// What `x-envoy-retry-on` gets on a route without a retry policy (Envoy's defaults).
static DEFAULT_RETRY_POLICY: std::sync::LazyLock<RetryPolicy> =
    std::sync::LazyLock::new(RetryPolicy::default);

/// A copy of the request head for one attempt (HTTP/2 attempts consume theirs).
fn clone_parts(p: &http::request::Parts) -> http::request::Parts {
    let mut r = Request::new(());
    *r.method_mut() = p.method.clone();
    *r.uri_mut() = p.uri.clone();
    *r.version_mut() = p.version;
    *r.headers_mut() = p.headers.clone();
    r.into_parts().0
}

/// The host for a retry: `previous_hosts` asks for another than those tried, up to
/// `host_selection_retry_max_attempts` times (a hashing balancer moves along its table with
/// each attempt); then the last one chosen is used.
fn retry_host(
    cluster: &Cluster,
    retry: Option<&RetryState<'_>>,
    ctx: lb::Context,
) -> Option<Arc<Host>> {
    let mut host = lb::choose_with(cluster, ctx)?;
    if let Some(r) = retry {
        for attempt in 1..=r.host_selection_max_attempts() {
            if !r.reject_host(host.address) {
                break;
            }
            host = lb::choose_with(cluster, lb::Context { attempt, ..ctx })?;
        }
    }
    Some(host)
}

fn charge_upstream(stream: &ActiveStream, status: u16) {
    if let Some(up) = &stream.upstream
        && up.dynamic_stats
    {
        up.cluster.stats.traffic().upstream_rq_codes.charge(status);
        if up.internal {
            up.cluster.stats.traffic().internal_rq_codes.charge(status);
        } else {
            up.cluster.stats.traffic().external_rq_codes.charge(status);
        }
    }
}

/// The local reply for a failed attempt.
struct FailureReply {
    status: StatusCode,
    body: String,
    details: std::borrow::Cow<'static, str>,
    flags: ResponseFlags,
    /// What the host did, for outlier detection (overflow, a pending timeout and the downstream
    /// going away are not the host's doing).
    outcome: Option<Outcome>,
}

/// Map a failure to Envoy's reply, flag and details, counting the failure's own stats.
fn describe(
    hcm: &ConnectionManager,
    stream: &mut ActiveStream,
    cluster: &Cluster,
    host: &Host,
    failure: Failure,
) -> FailureReply {
    let s = cluster.stats.traffic();
    let timed_out = |counter: &crate::telemetry::stats::Counter| {
        counter.inc();
        host.stats.rq_timeout.fetch_add(1, Relaxed);
    };
    let connected = stream.info.upstream_local.is_some();
    // Envoy's details name the transport failure too: `{reset reason|transport failure}`.
    let mut transport = None;
    let (status, body, details, flags, outcome): (
        StatusCode,
        String,
        &'static str,
        ResponseFlags,
        Option<Outcome>,
    ) = match failure {
        Failure::Connect(pool::ConnectError::Overflow) => (
            StatusCode::SERVICE_UNAVAILABLE,
            bodies::OVERFLOW.into(),
            "upstream_reset_before_response_started{overflow}",
            ResponseFlags::UPSTREAM_OVERFLOW,
            None,
        ),
        // No pool for the host (`max_connection_pools`): Envoy answers as for no host.
        Failure::Connect(pool::ConnectError::PoolOverflow) => (
            StatusCode::SERVICE_UNAVAILABLE,
            bodies::NO_HEALTHY_UPSTREAM.into(),
            "no_healthy_upstream",
            ResponseFlags::NO_HEALTHY_UPSTREAM,
            None,
        ),
        Failure::Connect(e) => {
            let reason = e.to_string();
            transport = Some(reason.replace(' ', "_"));
            stream.info.upstream_transport_failure_reason = Some(reason);
            (
                StatusCode::SERVICE_UNAVAILABLE,
                bodies::CONNECT_FAILURE.into(),
                "upstream_reset_before_response_started{remote_connection_failure}",
                ResponseFlags::UPSTREAM_CONNECTION_FAILURE,
                Some(Outcome::ConnectFailed),
            )
        }
        Failure::Timeout | Failure::TimeoutBetweenAttempts => {
            // Between attempts (backing off) no upstream request is in flight.
            let between = matches!(failure, Failure::TimeoutBetweenAttempts);
            if between {
                s.upstream_rq_timeout.inc();
            } else {
                timed_out(&s.upstream_rq_timeout);
            }
            (
                StatusCode::GATEWAY_TIMEOUT,
                bodies::UPSTREAM_TIMEOUT.into(),
                "response_timeout",
                ResponseFlags::UPSTREAM_REQUEST_TIMEOUT,
                (connected && !between).then_some(Outcome::Timeout),
            )
        }
        Failure::PerTryTimeout | Failure::PerTryIdle => {
            let (counter, details) = match failure {
                Failure::PerTryTimeout => {
                    (&s.upstream_rq_per_try_timeout, "upstream_per_try_timeout")
                }
                _ => (
                    &s.upstream_rq_per_try_idle_timeout,
                    "upstream_per_try_idle_timeout",
                ),
            };
            timed_out(counter);
            (
                StatusCode::GATEWAY_TIMEOUT,
                bodies::UPSTREAM_TIMEOUT.into(),
                details,
                ResponseFlags::UPSTREAM_REQUEST_TIMEOUT,
                connected.then_some(Outcome::Timeout),
            )
        }
        Failure::Idle => {
            hcm.stats.downstream_rq_idle_timeout.inc();
            let status = if stream
                .progress
                .as_ref()
                .is_none_or(|p| p.done.load(Relaxed))
            {
                StatusCode::GATEWAY_TIMEOUT
            } else {
                StatusCode::REQUEST_TIMEOUT
            };
            (
                status,
                bodies::STREAM_TIMEOUT.into(),
                "stream_idle_timeout",
                ResponseFlags::STREAM_IDLE_TIMEOUT,
                None,
            )
        }
        Failure::RequestTimeout => {
            hcm.stats.downstream_rq_timeout.inc();
            (
                StatusCode::REQUEST_TIMEOUT,
                bodies::REQUEST_TIMEOUT.into(),
                "request_overall_timeout",
                ResponseFlags::empty(),
                None,
            )
        }
        Failure::DownstreamGone => {
            hcm.stats.downstream_rq_rx_reset.inc();
            (
                StatusCode::BAD_REQUEST,
                String::new(),
                "downstream_remote_disconnect",
                ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION,
                None,
            )
        }
        Failure::DownstreamProtocol(e) => {
            hcm.stats.downstream_cx_protocol_error.inc();
            (
                e.status,
                e.status.canonical_reason().unwrap_or("").into(),
                e.details,
                ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR,
                None,
            )
        }
        Failure::RemoteReset { .. } => (
            StatusCode::SERVICE_UNAVAILABLE,
            bodies::REMOTE_RESET.into(),
            "upstream_reset_before_response_started{remote_reset}",
            ResponseFlags::UPSTREAM_REMOTE_RESET,
            Some(Outcome::Reset),
        ),
        // Envoy 1.40 answers an upstream protocol error with 502 (checked against it).
        Failure::Protocol => (
            StatusCode::BAD_GATEWAY,
            bodies::PROTOCOL_ERROR.into(),
            "upstream_reset_before_response_started{protocol_error}",
            ResponseFlags::UPSTREAM_PROTOCOL_ERROR,
            Some(Outcome::Reset),
        ),
        Failure::Terminated => (
            StatusCode::SERVICE_UNAVAILABLE,
            bodies::CONNECTION_TERMINATION.into(),
            "upstream_reset_before_response_started{connection_termination}",
            ResponseFlags::UPSTREAM_CONNECTION_TERMINATION,
            Some(Outcome::Reset),
        ),
        Failure::NoHealthyUpstream => {
            s.upstream_cx_none_healthy.inc();
            (
                StatusCode::SERVICE_UNAVAILABLE,
                bodies::NO_HEALTHY_UPSTREAM.into(),
                "no_healthy_upstream",
                ResponseFlags::NO_HEALTHY_UPSTREAM,
                None,
            )
        }
    };
    let details = match transport {
        Some(t) => format!("{}|{t}}}", details.trim_end_matches('}')).into(),
        None => details.into(),
    };
    FailureReply {
        status,
        body,
        details,
        flags,
        outcome,
    }
}

/// A failed attempt's effect on the host and cluster stats. `last`: the failure is the
/// answer (its code is charged); a retried failure only counts against the host.
fn account_failure(
    stream: &ActiveStream,
    cluster: &Cluster,
    host: &Host,
    reply: &FailureReply,
    last: bool,
) {
    if let Some(o) = reply.outcome {
        cluster.report(host, o);
    }
    if stream.upstream.is_none()
        || reply.flags == ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION
        || reply.flags == ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR
    {
        return;
    }
    if last {
        charge_upstream(stream, reply.status.as_u16());
    }
    host.stats.rq_error.fetch_add(1, Relaxed);
    let s = cluster.stats.traffic();
    match reply.flags {
        ResponseFlags::UPSTREAM_REQUEST_TIMEOUT | ResponseFlags::STREAM_IDLE_TIMEOUT => {
            s.upstream_rq_tx_reset.inc()
        }
        ResponseFlags::UPSTREAM_CONNECTION_TERMINATION | ResponseFlags::UPSTREAM_REMOTE_RESET => {
            s.upstream_rq_rx_reset.inc()
        }
        _ => {}
    }
}

/// The upstream request (attempt) is over without a response that reaches the client; its
/// accounting ends here rather than at the end of the stream. No `upstream_rq_time`: Envoy
/// records it only for the upstream response that completes the stream.
fn end_attempt(stream: &mut ActiveStream, canceled: bool) {
    if let Some(mut up) = stream.upstream.take() {
        up.close(&mut stream.info, stream.progress.as_deref(), canceled, None);
        up.cluster.stats.traffic().upstream_rq_active.dec();
        up.cluster.circuit_breakers.default.requests.dec();
        up.host.stats.rq_active.fetch_sub(1, Relaxed);
    }
}

fn fail(
    hcm: &Arc<ConnectionManager>,
    stream: &mut ActiveStream,
    (cluster, host): (&Arc<Cluster>, &Arc<Host>),
    failure: Failure,
    levels: RouteCx<'_>,
) -> Response<Body> {
    let canceled = failure.canceled();
    let reply = describe(hcm, stream, cluster, host, failure);
    account_failure(stream, cluster, host, &reply, true);
    end_attempt(stream, canceled);
    let overloaded = reply.flags == ResponseFlags::UPSTREAM_OVERFLOW;
    let protocol_error = reply.flags == ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR;
    let body = retried_body(reply.body, stream.info.attempt_count);
    let answer = LocalReply::new(reply.status, body);
    let mut resp = hcm.local_response(stream, answer, reply.details, reply.flags, Some(levels));
    count_attempts(levels, stream, &mut resp);
    if protocol_error {
        // The connection cannot carry another request.
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if overloaded {
        mark_overloaded(hcm, resp)
    } else {
        resp
    }
}

/// After a retry Envoy's reset replies say so: "… before headers. retried and the latest reset
/// reason: …" (its router's `is_retry_`).
fn retried_body(body: String, attempts: u32) -> String {
    const RESET: &str = "upstream connect error or disconnect/reset before headers. ";
    match body.strip_prefix(RESET) {
        Some(rest) if attempts > 1 && rest.starts_with("reset reason: ") => {
            format!("{RESET}retried and the latest {rest}")
        }
        _ => body,
    }
}

/// `include_attempt_count_in_response` on the router's local replies once it has tried to
/// reach the upstream (a failed or refused attempt), as on upstream responses: Envoy's
/// `modify_headers` adds `x-envoy-attempt-count` to both.
fn count_attempts(levels: RouteCx<'_>, stream: &ActiveStream, resp: &mut Response<Body>) {
    if levels.vhost.attempt_count_downstream {
        let n = u64::from(stream.info.attempt_count.max(1));
        resp.headers_mut()
            .insert(names::X_ENVOY_ATTEMPT_COUNT, names::number(n));
    }
}

/// 503 `UO`: a circuit breaker refused the request before it reached the upstream.
fn overflow_reply(
    hcm: &Arc<ConnectionManager>,
    stream: &mut ActiveStream,
    levels: RouteCx<'_>,
) -> Response<Body> {
    let uo = (
        StatusCode::SERVICE_UNAVAILABLE,
        bodies::OVERFLOW,
        "upstream_reset_before_response_started{overflow}",
        ResponseFlags::UPSTREAM_OVERFLOW,
    );
    let resp = routed_reply(hcm, stream, levels, uo);
    mark_overloaded(hcm, resp)
}

/// Envoy's `x-envoy-overloaded: true` on an overflow reply (unless envoy headers are suppressed).
fn mark_overloaded(hcm: &ConnectionManager, mut resp: Response<Body>) -> Response<Body> {
    if !hcm.config.router.suppress_envoy_headers {
        resp.headers_mut()
            .insert(names::X_ENVOY_OVERLOADED, HeaderValue::from_static("true"));
    }
    resp
}

/// The reason the upstream gave when it reset the stream, if it did.
fn remote_reset(e: &hyper::Error) -> Option<h2::Reason> {
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            return (h2.is_reset() && h2.is_remote())
                .then(|| h2.reason())
                .flatten();
        }
        src = s.source();
    }
    None
}

/// Whether a send error came from the downstream request body (the client went away).
fn is_downstream_body_error(e: &hyper::Error) -> bool {
    if !e.is_user() && !e.is_body_write_aborted() {
        return false;
    }
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = src {
        if s.downcast_ref::<std::io::Error>().is_some() {
            return true;
        }
        src = s.source();
    }
    e.is_user()
}

async fn send_h1(
    cluster: &Arc<Cluster>,
    host: &Arc<Host>,
    alpn: pool::Alpn<'_>,
    parts: &mut http::request::Parts,
    body: Body,
    timers: Timers<'_>,
    stream: &mut ActiveStream,
) -> Result<Response<Body>, Failure> {
    parts.version = Version::HTTP_11;
    let pending_deadline = timers.route.map(|t| Instant::now() + t);
    let mut conn = pool::acquire_h1(cluster, host, pending_deadline, alpn)
        .await
        .map_err(|e| match e {
            pool::ConnectError::PendingTimeout => Failure::Timeout,
            e => Failure::Connect(e),
        })?;
    stream.info.upstream_local = conn.local_addr;
    stream.info.upstream_tls = conn.io.keep.tls.clone();
    sent_on_connection(cluster, host);
    first_tx(stream, Protocol::Http11);
    let head_request = parts.method == http::Method::HEAD;
    let mut out = crate::io::take_write_buffer();
    let result = wait(
        exchange_h1(&mut conn, parts, body, head_request, &mut out),
        timers,
    )
    .await;
    crate::io::give_write_buffer(out);
    stream.info.upstream_local = conn.local_addr;
    stream.info.upstream_tls = conn.io.keep.tls.clone();
    let head = match result {
        Ok(Ok(head)) => head,
        Ok(Err(f)) | Err(f) => {
            conn.discard();
            return Err(f);
        }
    };
    let h1_client::ResponseHead {
        parts: resp_parts,
        framing,
        keep_alive,
    } = head;
    if resp_parts.status == http::StatusCode::SWITCHING_PROTOCOLS {
        let (io, leftover) = conn.into_parts();
        let mut resp = Response::from_parts(resp_parts, Body::Empty);
        resp.extensions_mut()
            .insert(Arc::new(std::sync::Mutex::new(Some(UpgradeBridge {
                upstream: io,
                leftover,
                cluster: cluster.clone(),
            }))));
        return Ok(resp);
    }
    Ok(Response::from_parts(
        resp_parts,
        Body::H1Upstream(h1_client::ResponseBody::new(conn, framing, keep_alive)),
    ))
}

/// Write the request and read the response head. A pooled connection that turns out to be
/// closed before any response byte arrives is replaced once by a fresh connection, if the
/// whole request could be written again (the classic keep-alive race that gives 503 UC).
pub(super) async fn exchange_h1(
    conn: &mut pool::H1Conn,
    parts: &http::request::Parts,
    body: Body,
    head_request: bool,
    out: &mut Vec<u8>,
) -> Result<h1_client::ResponseHead, Failure> {
    use h1_client::{RecvError, SendError};
    let replayable = match h1_client::write_request(conn, parts, body, out).await {
        Ok(r) => r,
        Err(SendError::Body(e)) => return Err(downstream_body_failure(&*e)),
        Err(SendError::Io(_)) if conn.reused => true,
        // The upstream may have answered early and closed; read what it said.
        Err(SendError::Io(_)) => false,
    };
    match h1_client::read_response(conn, head_request).await {
        Ok(head) => Ok(head),
        Err(RecvError::Closed) if conn.reused && replayable => {
            let fresh = conn.reconnect().await.map_err(Failure::Connect)?;
            std::mem::replace(conn, fresh).discard();
            conn.io
                .write_all(out)
                .await
                .map_err(|_| Failure::Terminated)?;
            h1_client::read_response(conn, head_request)
                .await
                .map_err(recv_failure)
        }
        Err(e) => Err(recv_failure(e)),
    }
}

fn recv_failure(e: h1_client::RecvError) -> Failure {
    match e {
        h1_client::RecvError::Closed | h1_client::RecvError::Io(_) => Failure::Terminated,
        h1_client::RecvError::Protocol(_) => Failure::Protocol,
    }
}

async fn send_h2(
    cluster: &Arc<Cluster>,
    host: &Arc<Host>,
    alpn: pool::Alpn<'_>,
    mut parts: http::request::Parts,
    body: Body,
    timers: Timers<'_>,
    stream: &mut ActiveStream,
) -> Result<Response<Body>, Failure> {
    parts.version = Version::HTTP_2;
    let authority = parts
        .headers
        .remove(header::HOST)
        .and_then(|v| v.to_str().ok().map(str::to_string))
        .unwrap_or_else(|| host.address.to_string());
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    parts.uri = http::Uri::try_from(format!("http://{authority}{pq}"))
        .map_err(|_| Failure::DownstreamGone)?;
    let (mut sender, local, tls, slot) = pool::acquire_h2(cluster, host, alpn)
        .await
        .map_err(Failure::Connect)?;
    stream.info.upstream_local = local;
    stream.info.upstream_tls = tls;
    sent_on_connection(cluster, host);
    first_tx(stream, Protocol::Http2);
    let req = Request::from_parts(parts, body);
    let fut = async move {
        sender.ready().await?;
        sender.send_request(req).await
    };
    match wait(fut, timers).await {
        Ok(Ok(resp)) => Ok(resp.map(|b| Body::H2Upstream(b, slot))),
        Ok(Err(e)) => Err(classify(e)),
        Err(f) => Err(f),
    }
}

/// The attempt's request starts out on its connection, with this protocol.
fn first_tx(stream: &mut ActiveStream, protocol: Protocol) {
    if let Some(up) = &mut stream.upstream {
        up.first_tx = Some(Instant::now());
        up.protocol = Some(protocol);
    }
}

/// The request (attempt) got a connection: Envoy counts it in `upstream_rq_total` from here
/// (one refused by a breaker or timed out waiting for a connection is not counted).
pub(super) fn sent_on_connection(cluster: &Cluster, host: &Host) {
    cluster.stats.traffic().upstream_rq_total.inc();
    host.stats.rq_total.fetch_add(1, Relaxed);
}

/// A downstream request body that failed: its framing was broken (`DPE`), or the client went
/// away (`DC`).
fn downstream_body_failure(e: &(dyn std::error::Error + 'static)) -> Failure {
    match h1::body_codec_error(e) {
        Some(codec) => Failure::DownstreamProtocol(codec),
        None => Failure::DownstreamGone,
    }
}

pub(super) fn classify(e: hyper::Error) -> Failure {
    if is_downstream_body_error(&e) {
        downstream_body_failure(&e)
    } else if let Some(reason) = remote_reset(&e) {
        Failure::RemoteReset {
            refused: reason == h2::Reason::REFUSED_STREAM,
        }
    } else if e.is_parse() {
        Failure::Protocol
    } else {
        Failure::Terminated
    }
}

/// Wait for the upstream response under the route timeout (which starts when the request is
/// complete), the stream idle timeout, and the connection manager's request timeout.
async fn wait<F, T>(fut: F, timers: Timers<'_>) -> Result<T, Failure>
where
    F: Future<Output = T>,
{
    let Timers {
        progress,
        route: timeout,
        idle,
        request_deadline,
        origin,
        per_try,
        per_try_idle,
    } = timers;
    let start = Instant::now();
    let Some(progress) = progress else {
        // The request was complete before forwarding began (the usual GET): every timer has a
        // fixed deadline and nothing re-arms them, so one timer serves them all (the first
        // listed wins a tie). The request timeout only runs while a request body is arriving.
        let first = [
            timeout.map(|t| (origin + t, Failure::Timeout)),
            idle.map(|t| (start + t, Failure::Idle)),
            per_try.map(|t| (start + t, Failure::PerTryTimeout)),
            per_try_idle.map(|t| (start + t, Failure::PerTryIdle)),
        ]
        .into_iter()
        .flatten()
        .min_by_key(|(at, _)| *at);
        return match first {
            None => Ok(fut.await),
            Some((at, failure)) => tokio::time::timeout_at(at.into(), fut)
                .await
                .map_err(|_| failure),
        };
    };
    let progress = Some(progress);
    // The route timeout counts from the end of the request (across attempts); the per-try
    // timeout from the later of that and this attempt's start.
    let ended = |p: &RequestProgress| p.completed_at().unwrap_or(start);
    let route_timer = async {
        if let Some(p) = progress {
            p.wait_done().await;
        }
        match (timeout, progress) {
            (Some(t), Some(p)) => tokio::time::sleep_until((ended(p) + t).into()).await,
            _ => std::future::pending::<()>().await,
        }
    };
    let per_try_timer = async {
        match (per_try, progress) {
            (Some(t), Some(p)) => {
                p.wait_done().await;
                tokio::time::sleep_until((ended(p).max(start) + t).into()).await
            }
            _ => std::future::pending::<()>().await,
        }
    };
    let per_try_idle_timer = async {
        match per_try_idle {
            Some(t) => tokio::time::sleep_until((start + t).into()).await,
            None => std::future::pending::<()>().await,
        }
    };
    let request_timer = async {
        match (request_deadline, progress) {
            (Some(d), Some(p)) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(d.into()) => {}
                    _ = p.wait_done() => std::future::pending::<()>().await,
                }
            }
            _ => std::future::pending::<()>().await,
        }
    };
    let idle_timer = async {
        let Some(idle) = idle else {
            return std::future::pending::<()>().await;
        };
        let mut at = start + idle;
        loop {
            tokio::time::sleep_until(at.into()).await;
            let last = progress
                .map(|p| p.last_activity())
                .unwrap_or(start)
                .max(start);
            if last + idle <= Instant::now() {
                return;
            }
            at = last + idle;
        }
    };
    tokio::pin!(
        fut,
        route_timer,
        per_try_timer,
        per_try_idle_timer,
        request_timer,
        idle_timer
    );
    tokio::select! {
        r = &mut fut => Ok(r),
        _ = &mut route_timer => Err(Failure::Timeout),
        _ = &mut per_try_timer => Err(Failure::PerTryTimeout),
        _ = &mut per_try_idle_timer => Err(Failure::PerTryIdle),
        _ = &mut request_timer => Err(Failure::RequestTimeout),
        _ = &mut idle_timer => Err(Failure::Idle),
    }
}

/// The `location` of a redirect route.
pub fn redirect_location(
    r: &Redirect,
    scheme: &str,
    authority: &str,
    path_and_query: &str,
    matched_len: usize,
) -> String {
    let scheme = r.scheme.as_deref().unwrap_or(scheme);
    let (orig_host, orig_port) = match authority.rsplit_once(':') {
        Some((h, p))
            if p.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(']')
                || authority.starts_with('[') && authority.contains("]:") =>
        {
            (h, Some(p))
        }
        _ => (authority, None),
    };
    let host = r.host.as_deref().unwrap_or(orig_host);
    // Envoy drops the port when the scheme changes (unless a port is given), and when it is the scheme's default.
    let port = match r.port {
        Some(p) => Some(p.to_string()),
        None if r.scheme.is_some() || r.host.is_some() => None,
        None => orig_port.map(str::to_string),
    };
    let port =
        port.filter(|p| !((scheme == "http" && p == "80") || (scheme == "https" && p == "443")));
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    let new_path = match &r.path {
        RedirectPath::Keep => path.to_string(),
        RedirectPath::Path(p) => {
            // A path_redirect may carry its own query, which replaces the original.
            if p.contains('?') {
                return format!(
                    "{scheme}://{host}{}{p}",
                    port.map(|p| format!(":{p}")).unwrap_or_default()
                );
            }
            p.clone()
        }
        RedirectPath::PrefixRewrite(pre) => format!(
            "{pre}{}",
            path.get(matched_len.min(path.len())..).unwrap_or("")
        ),
        RedirectPath::RegexRewrite(re, sub) => re.replace_all(path, sub.as_str()).into_owned(),
    };
    let mut out = format!("{scheme}://{host}");
    if let Some(p) = port {
        out.push(':');
        out.push_str(&p);
    }
    out.push_str(&new_path);
    if let (Some(q), false) = (query, r.strip_query) {
        out.push('?');
        out.push_str(q);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redirect(
        scheme: Option<&str>,
        host: Option<&str>,
        port: Option<u16>,
        path: RedirectPath,
        strip: bool,
    ) -> Redirect {
        Redirect {
            scheme: scheme.map(str::to_string),
            host: host.map(str::to_string),
            port,
            path,
            code: StatusCode::MOVED_PERMANENTLY,
            strip_query: strip,
        }
    }

    #[test]
    fn redirect_locations() {
        let r = redirect(Some("https"), None, None, RedirectPath::Keep, false);
        assert_eq!(
            redirect_location(&r, "http", "example.com:8080", "/a?b=1", 0),
            "https://example.com/a?b=1"
        );
        let r = redirect(
            None,
            Some("new.host"),
            None,
            RedirectPath::Path("/x".into()),
            true,
        );
        assert_eq!(
            redirect_location(&r, "http", "example.com", "/a?b=1", 0),
            "http://new.host/x"
        );
        let r = redirect(
            None,
            None,
            Some(9000),
            RedirectPath::PrefixRewrite("/new/".into()),
            false,
        );
        assert_eq!(
            redirect_location(&r, "http", "h", "/old/rest", 5),
            "http://h:9000/new/rest"
        );
        let r = redirect(None, None, None, RedirectPath::Keep, false);
        assert_eq!(
            redirect_location(&r, "http", "h:81", "/p", 0),
            "http://h:81/p"
        );
    }

    #[test]
    fn host_rewrite_keeps_the_original_host() {
        let mut h = http::HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("orig.test"));
        update_authority(&mut h, HeaderValue::from_static("new.test"), true, true);
        assert_eq!(h[header::HOST], "new.test");
        assert_eq!(h[names::X_ENVOY_ORIGINAL_HOST], "orig.test");
        assert_eq!(h[names::X_FORWARDED_HOST], "orig.test");
        // suppress_envoy_headers: no x-envoy-original-host.
        let mut h = http::HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("orig.test"));
        update_authority(&mut h, HeaderValue::from_static("new.test"), false, false);
        assert!(!h.contains_key(names::X_ENVOY_ORIGINAL_HOST));
        assert!(!h.contains_key(names::X_FORWARDED_HOST));
    }

    #[test]
    fn connect_error_text_is_envoys() {
        let e = pool::ConnectError::Io(Arc::new(std::io::Error::from_raw_os_error(111)));
        assert_eq!(e.to_string(), "delayed connect error: Connection refused");
    }
}
