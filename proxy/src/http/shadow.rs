//! Request mirroring (the route's `request_mirror_policies`; Envoy's shadow writer): copies of
//! a routed request sent, fire and forget, to other clusters. A copy runs on its own task on
//! the worker's runtime (so on the worker's connection pools, under the mirror cluster's
//! circuit breakers), is counted on its cluster as an internal request, has the route timeout,
//! and its response is read and discarded. The primary never waits for it: the request body is
//! teed as the primary's upstream reads it, and a copy that falls behind by more than the
//! request buffer limit is abandoned rather than slowing the primary.

use super::body::{Body, BodyError};
use super::conn_manager::ConnectionManager;
use super::names;
use super::router::{self, Failure, Forward};
use super::stream::RequestProgress;
use crate::model::cluster::UpstreamProtocol;
use crate::model::mirror::{MirrorCluster, MirrorHost, MirrorPolicy, shadow_host};
use crate::telemetry::stats::Counter;
use crate::upstream::cluster::Cluster;
use crate::upstream::host::Host;
use crate::upstream::outlier::Outcome;
use crate::upstream::{lb, pool};
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Version};
use http_body::{Body as HttpBody, Frame, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// The route timeout and the downstream request's progress (the timeout counts from its end).
pub(super) type Timing<'a> = (Option<Duration>, Option<&'a Arc<RequestProgress>>);

/// Starts the copies the route's mirror policies draw for this request (its head as the
/// primary's upstream gets it) and returns the body for the primary: the same body, or a tee
/// that hands each chunk to the copies as the primary reads it.
pub(super) fn mirror(
    hcm: &Arc<ConnectionManager>,
    parts: &http::request::Parts,
    f: &Forward<'_>,
    primary: &Cluster,
    (timeout, progress): Timing<'_>,
    span: Option<&crate::tracing::ActiveSpan>,
    body: Body,
) -> Body {
    let policies = &f.action.mirrors;
    // Envoy does not shadow CONNECT (nor, here, upgrades: the copy could not follow them).
    if policies.is_empty() || f.upgrade || parts.method == Method::CONNECT {
        return body;
    }
    let targets: Vec<(&MirrorPolicy, Arc<Cluster>)> = policies
        .iter()
        .filter(|p| p.fraction.sample(|| hcm.runtime.snapshot()))
        .filter_map(|p| Some((p, target(hcm, p, parts)?)))
        .collect();
    if targets.is_empty() {
        return body;
    }
    let complete = HttpBody::is_end_stream(&body);
    let mut outs = Vec::new();
    for (policy, cluster) in targets {
        let mut head = head(hcm, parts, f, policy, timeout);
        if let (Some(span), Some(sampled)) = (span, policy.trace_sampled) {
            span.inject_sampled(&mut head.headers, sampled);
        }
        let copy_body = match complete {
            true => Body::Empty,
            false => {
                let (out, copy) = channel(body.size_hint());
                outs.push(out);
                Body::Boxed(Box::pin(copy))
            }
        };
        let copy = Shadow {
            hcm: hcm.clone(),
            cluster,
            timeout,
            progress: progress.cloned(),
            origin: Instant::now(),
        };
        hcm.async_client_rq_total.inc();
        tokio::spawn(copy.run(head, copy_body));
    }
    if outs.is_empty() {
        return body;
    }
    Body::Boxed(Box::pin(Tee {
        inner: body,
        outs,
        limit: buffer_limit(hcm, f),
        abandoned: primary.stats.traffic().retry_or_shadow_abandoned.clone(),
    }))
}

/// The policy's cluster, if it exists now (a cluster named by the header, or one removed by
/// CDS since the route was built, gives no copy, as in Envoy).
fn target(
    hcm: &ConnectionManager,
    policy: &MirrorPolicy,
    parts: &http::request::Parts,
) -> Option<Arc<Cluster>> {
    let name = match &policy.cluster {
        MirrorCluster::Name(n) => &**n,
        MirrorCluster::Header(h) => parts
            .headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())?,
    };
    let cluster = hcm.clusters.get(name);
    if cluster.is_none() {
        tracing::debug!("shadow cluster '{name}' does not exist");
    }
    cluster
}

/// The copy's head: the primary's request as it goes upstream, with the policy's host, and
/// what Envoy's async client adds (`x-envoy-internal`, this proxy's address appended to
/// `x-forwarded-for`, the route timeout as `x-envoy-expected-rq-timeout-ms`).
fn head(
    hcm: &ConnectionManager,
    parts: &http::request::Parts,
    f: &Forward<'_>,
    policy: &MirrorPolicy,
    timeout: Option<Duration>,
) -> http::request::Parts {
    let mut r = Request::new(());
    *r.method_mut() = parts.method.clone();
    *r.uri_mut() = parts.uri.clone();
    *r.version_mut() = Version::HTTP_11;
    let mut head = r.into_parts().0;
    head.headers = parts.headers.clone();
    let h = &mut head.headers;
    let host = match &policy.host {
        MirrorHost::Keep => None,
        MirrorHost::Literal(l) => Some(l.clone()),
        MirrorHost::Suffix => {
            let current = h.get(header::HOST).map_or(&[][..], |v| v.as_bytes());
            HeaderValue::from_bytes(&shadow_host(current)).ok()
        }
    };
    if let Some(v) = host {
        h.insert(header::HOST, v);
    }
    if f.vhost.attempt_count_upstream {
        h.insert(names::X_ENVOY_ATTEMPT_COUNT, names::number(1));
    }
    // The async client's own router announces its timeout (the route's; no per-try timeout),
    // and with none leaves what the primary's head had.
    if !hcm.config.router.suppress_envoy_headers
        && let Some(t) = timeout
    {
        let ms = names::number(t.as_millis() as u64);
        h.insert(names::X_ENVOY_EXPECTED_RQ_TIMEOUT_MS, ms);
    }
    h.insert(names::X_ENVOY_INTERNAL, HeaderValue::from_static("true"));
    let local = hcm
        .local
        .address
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
    let xff = match h.get(names::X_FORWARDED_FOR).map(|v| v.as_bytes()) {
        Some(prev) if !prev.is_empty() => {
            let mut v = prev.to_vec();
            v.push(b',');
            v.extend_from_slice(local.to_string().as_bytes());
            HeaderValue::from_bytes(&v).ok()
        }
        _ => HeaderValue::from_str(&local.to_string()).ok(),
    };
    if let Some(v) = xff {
        h.insert(names::X_FORWARDED_FOR, v);
    }
    head
}

/// The request buffer limit: the route's, else the virtual host's (within the listener's),
/// else the listener's.
fn buffer_limit(hcm: &ConnectionManager, f: &Forward<'_>) -> usize {
    let listener = hcm.config.buffer_limit;
    f.route
        .buffer_limit
        .or(f.vhost.buffer_limit.map(|v| v.min(listener)))
        .unwrap_or(listener) as usize
}

// === the copy on its own task ===

/// One copy in flight.
struct Shadow {
    hcm: Arc<ConnectionManager>,
    cluster: Arc<Cluster>,
    timeout: Option<Duration>,
    progress: Option<Arc<RequestProgress>>,
    origin: Instant,
}

/// What became of a copy, for its cluster's stats.
#[derive(Default)]
struct Seen {
    /// The response status, once the response head arrived.
    status: Option<u16>,
    /// The request got a connection.
    connected: bool,
}

impl Shadow {
    async fn run(self, head: http::request::Parts, body: Body) {
        let cluster = &self.cluster;
        let s = cluster.stats.traffic();
        let Some(host) = lb::choose(cluster) else {
            s.upstream_cx_none_healthy.inc();
            return;
        };
        if !cluster.circuit_breakers.default.requests.try_inc() {
            s.upstream_rq_pending_overflow.inc();
            return;
        }
        s.upstream_rq_active.inc();
        host.stats.rq_active.fetch_add(1, Relaxed);
        let started = Instant::now();
        let mut seen = Seen::default();
        let result = tokio::select! {
            r = self.exchange(&host, head, body, &mut seen) => r,
            () = self.deadline() => Err(Failure::Timeout),
        };
        self.account(&host, started, &seen, result);
        s.upstream_rq_active.dec();
        cluster.circuit_breakers.default.requests.dec();
        host.stats.rq_active.fetch_sub(1, Relaxed);
    }

    /// The route timeout, from the end of the downstream request (Envoy's async client starts
    /// it when the copy's request is complete).
    async fn deadline(&self) {
        let Some(t) = self.timeout else {
            return std::future::pending().await;
        };
        let from = match &self.progress {
            Some(p) => {
                p.wait_done().await;
                p.completed_at().unwrap_or(self.origin)
            }
            None => self.origin,
        };
        tokio::time::sleep_until((from + t).into()).await;
    }

    /// The request over the cluster's protocol; the response read to its end and dropped.
    async fn exchange(
        &self,
        host: &Arc<Host>,
        head: http::request::Parts,
        body: Body,
        seen: &mut Seen,
    ) -> Result<(), Failure> {
        let cluster = &self.cluster;
        let h2 = match cluster.config.protocol {
            UpstreamProtocol::Http2 => true,
            // An async client stream has no downstream protocol: HTTP/1.1.
            UpstreamProtocol::Http1 | UpstreamProtocol::UseDownstream { .. } => false,
            UpstreamProtocol::Auto => match host.alpn.load(Relaxed) {
                0 => pool::learn_protocol(cluster, host, self.alpn(true))
                    .await
                    .map_err(Failure::Connect)?,
                n => n == 2,
            },
        };
        let resp = match h2 {
            true => self.send_h2(host, head, body, seen).await?,
            false => self.send_h1(host, head, body, seen).await?,
        };
        seen.status = Some(resp.status().as_u16());
        let mut body = resp.into_body();
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        {
            frame.map_err(|_| Failure::Terminated)?;
        }
        Ok(())
    }

    async fn send_h1(
        &self,
        host: &Arc<Host>,
        mut head: http::request::Parts,
        body: Body,
        seen: &mut Seen,
    ) -> Result<http::Response<Body>, Failure> {
        let cluster = &self.cluster;
        let pending_deadline = self.timeout.map(|t| Instant::now() + t);
        let mut conn = pool::acquire_h1(cluster, host, pending_deadline, self.alpn(false))
            .await
            .map_err(|e| match e {
                pool::ConnectError::PendingTimeout => Failure::Timeout,
                e => Failure::Connect(e),
            })?;
        seen.connected = true;
        router::sent_on_connection(cluster, host);
        head.version = Version::HTTP_11;
        let head_request = head.method == Method::HEAD;
        let mut out = crate::io::take_write_buffer();
        let result = router::exchange_h1(&mut conn, &head, body, head_request, &mut out).await;
        crate::io::give_write_buffer(out);
        let resp = match result {
            Ok(r) => r,
            Err(f) => {
                conn.discard();
                return Err(f);
            }
        };
        let super::codec::h1_client::ResponseHead {
            parts,
            framing,
            keep_alive,
        } = resp;
        if parts.status == http::StatusCode::SWITCHING_PROTOCOLS {
            conn.discard();
            return Ok(http::Response::from_parts(parts, Body::Empty));
        }
        let body = super::codec::h1_client::ResponseBody::new(conn, framing, keep_alive);
        Ok(http::Response::from_parts(parts, Body::H1Upstream(body)))
    }

    async fn send_h2(
        &self,
        host: &Arc<Host>,
        mut head: http::request::Parts,
        body: Body,
        seen: &mut Seen,
    ) -> Result<http::Response<Body>, Failure> {
        let cluster = &self.cluster;
        head.version = Version::HTTP_2;
        let authority = head
            .headers
            .remove(header::HOST)
            .and_then(|v| v.to_str().ok().map(str::to_string))
            .unwrap_or_else(|| host.address.to_string());
        let pq = head.uri.path_and_query().map_or("/", |p| p.as_str());
        head.uri = http::Uri::try_from(format!("http://{authority}{pq}"))
            .map_err(|_| Failure::Protocol)?;
        let (mut sender, _, _, slot) = pool::acquire_h2(cluster, host, self.alpn(true))
            .await
            .map_err(Failure::Connect)?;
        seen.connected = true;
        router::sent_on_connection(cluster, host);
        let req = Request::from_parts(head, body);
        sender.ready().await.map_err(router::classify)?;
        let resp = sender.send_request(req).await.map_err(router::classify)?;
        Ok(resp.map(|b| Body::H2Upstream(b, slot)))
    }

    /// `istio.alpn`'s list for the protocol, for a TLS cluster that takes it.
    fn alpn(&self, h2: bool) -> pool::Alpn<'_> {
        let cluster = &self.cluster.config;
        let o = self
            .hcm
            .alpn
            .as_deref()
            .filter(|_| cluster.tls.is_some() && cluster.istio.alpn_override)?;
        match h2 {
            true => o.http2.as_ref(),
            false => o.http11.as_ref(),
        }
    }

    /// The copy's outcome on its cluster and host, as Envoy's async client's router counts it
    /// (an internal request: `x-envoy-internal` is set).
    fn account(&self, host: &Host, started: Instant, seen: &Seen, result: Result<(), Failure>) {
        let cluster = &self.cluster;
        let s = cluster.stats.traffic();
        let dynamic = self.hcm.config.router.dynamic_stats;
        let charge = |status: u16| {
            if dynamic {
                s.upstream_rq_codes.charge(status);
                s.internal_rq_codes.charge(status);
            }
        };
        if let Some(status) = seen.status {
            // The response started: its status is what counts.
            charge(status);
            cluster.report(host, Outcome::Status(status));
            match status >= 500 {
                true => host.stats.rq_error.fetch_add(1, Relaxed),
                false => host.stats.rq_success.fetch_add(1, Relaxed),
            };
            match result {
                Ok(()) => {
                    let elapsed = started.elapsed().as_millis() as u64;
                    if dynamic {
                        s.upstream_rq_time.record(elapsed);
                        s.internal_rq_time.record(elapsed);
                    }
                }
                Err(Failure::Timeout) => s.upstream_rq_timeout.inc(),
                Err(_) => s.upstream_rq_rx_reset.inc(),
            }
            return;
        }
        let Err(failure) = result else { return };
        let (status, outcome) = match failure {
            Failure::Timeout => {
                s.upstream_rq_timeout.inc();
                host.stats.rq_timeout.fetch_add(1, Relaxed);
                (504, seen.connected.then_some(Outcome::Timeout))
            }
            Failure::Connect(
                pool::ConnectError::Overflow
                | pool::ConnectError::PoolOverflow
                | pool::ConnectError::PendingTimeout,
            ) => (503, None),
            Failure::Connect(_) => (503, Some(Outcome::ConnectFailed)),
            Failure::Protocol => (502, Some(Outcome::Reset)),
            Failure::Terminated | Failure::RemoteReset { .. } => {
                s.upstream_rq_rx_reset.inc();
                (503, Some(Outcome::Reset))
            }
            // The downstream request body failed or was abandoned: the copy is cancelled.
            _ => {
                s.upstream_rq_tx_reset.inc();
                return;
            }
        };
        if let Some(o) = outcome {
            cluster.report(host, o);
        }
        host.stats.rq_error.fetch_add(1, Relaxed);
        charge(status);
    }
}

// === the request body, teed ===

/// What a tee and one copy's body share.
#[derive(Default)]
struct Shared {
    /// Bytes handed to the copy and not yet taken by it.
    queued: AtomicUsize,
    /// The downstream body ended cleanly (a copy whose channel closes without it fails).
    complete: AtomicBool,
}

/// The tee's end of one copy.
struct Out {
    tx: mpsc::UnboundedSender<Frame<Bytes>>,
    shared: Arc<Shared>,
}

fn channel(hint: SizeHint) -> (Out, CopyBody) {
    let (tx, rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared::default());
    let out = Out {
        tx,
        shared: shared.clone(),
    };
    (out, CopyBody { rx, shared, hint })
}

/// The primary's request body: each frame is handed to the copies as the primary reads it.
struct Tee {
    inner: Body,
    outs: Vec<Out>,
    /// How far a copy may fall behind before it is abandoned.
    limit: usize,
    /// The primary cluster's `retry_or_shadow_abandoned`.
    abandoned: Arc<Counter>,
}

impl Tee {
    fn hand_out(&mut self, frame: &Frame<Bytes>) {
        let len = frame.data_ref().map_or(0, |d| d.len());
        let (limit, abandoned) = (self.limit, &self.abandoned);
        self.outs.retain(|out| {
            if out.shared.queued.load(Relaxed) + len > limit {
                abandoned.inc();
                return false;
            }
            let copy = match (frame.data_ref(), frame.trailers_ref()) {
                (Some(d), _) => Frame::data(d.clone()),
                (None, Some(t)) => Frame::trailers(t.clone()),
                (None, None) => return true,
            };
            out.shared.queued.fetch_add(len, Relaxed);
            out.tx.send(copy).is_ok()
        });
    }
}

impl Tee {
    /// The body ended cleanly: the copies' bodies end too.
    fn finish(&mut self) {
        for out in self.outs.drain(..) {
            out.shared.complete.store(true, Relaxed);
        }
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        if self.inner.is_end_stream() {
            self.finish();
        }
    }
}

impl HttpBody for Tee {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                this.hand_out(frame);
                // The reader may stop at the last frame without asking for the end.
                if this.inner.is_end_stream() {
                    this.finish();
                }
            }
            Poll::Ready(None) => this.finish(),
            Poll::Ready(Some(Err(_))) => this.outs.clear(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A copy's request body: the frames the tee handed over; an error if the downstream body did
/// not end cleanly (the copy is then cut short, never sent as if complete).
struct CopyBody {
    rx: mpsc::UnboundedReceiver<Frame<Bytes>>,
    shared: Arc<Shared>,
    hint: SizeHint,
}

impl HttpBody for CopyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        match this.rx.poll_recv(cx) {
            Poll::Ready(Some(frame)) => {
                let len = frame.data_ref().map_or(0, |d| d.len());
                this.shared.queued.fetch_sub(len, Relaxed);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) if this.shared.complete.load(Relaxed) => Poll::Ready(None),
            Poll::Ready(None) => {
                Poll::Ready(Some(Err("the mirrored request was abandoned".into())))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn tee(body: Body, limit: usize, copies: usize) -> (Tee, Vec<CopyBody>) {
        let (outs, bodies) = (0..copies).map(|_| channel(SizeHint::default())).unzip();
        let tee = Tee {
            inner: body,
            outs,
            limit,
            abandoned: Arc::default(),
        };
        (tee, bodies)
    }

    fn chunks(parts: &[&'static str]) -> Body {
        let frames: Vec<Result<Frame<Bytes>, BodyError>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        Body::Boxed(Box::pin(http_body_util::StreamBody::new(
            futures_util::stream::iter(frames),
        )))
    }

    #[tokio::test]
    async fn every_copy_gets_the_whole_body_as_the_primary_reads_it() {
        let (tee, copies) = tee(chunks(&["hello ", "mirror"]), 1024, 2);
        let primary = tee.collect().await.unwrap().to_bytes();
        assert_eq!(&primary[..], b"hello mirror");
        for c in copies {
            let got = c.collect().await.unwrap().to_bytes();
            assert_eq!(&got[..], b"hello mirror");
        }
    }

    #[tokio::test]
    async fn a_copy_that_falls_behind_is_abandoned_not_waited_for() {
        let (tee, mut copies) = tee(chunks(&["aaaa", "bbbb", "cccc"]), 8, 1);
        let abandoned = tee.abandoned.clone();
        // Nobody reads the copy: the primary still gets its whole body.
        let primary = tee.collect().await.unwrap().to_bytes();
        assert_eq!(&primary[..], b"aaaabbbbcccc");
        assert_eq!(abandoned.value(), 1);
        // The copy had two chunks, then fails: it is never sent as if complete.
        let c = copies.remove(0);
        assert!(c.collect().await.is_err());
    }

    #[tokio::test]
    async fn a_reader_that_stops_at_the_last_frame_still_completes_the_copy() {
        let (mut tee, mut copies) = tee(Body::full("whole"), 1024, 1);
        // As the HTTP/1 client writes: one frame, then it asks whether the body has ended.
        let frame = tee.frame().await.unwrap().unwrap();
        assert_eq!(frame.data_ref().map(|d| &d[..]), Some(&b"whole"[..]));
        assert!(tee.is_end_stream());
        drop(tee);
        let got = copies.remove(0).collect().await.unwrap().to_bytes();
        assert_eq!(&got[..], b"whole");
    }

    #[tokio::test]
    async fn a_primary_body_that_fails_fails_the_copy() {
        let frames: Vec<Result<Frame<Bytes>, BodyError>> = vec![
            Ok(Frame::data(Bytes::from_static(b"part"))),
            Err("downstream reset".into()),
        ];
        let body = Body::Boxed(Box::pin(http_body_util::StreamBody::new(
            futures_util::stream::iter(frames),
        )));
        let (tee, mut copies) = tee(body, 1024, 1);
        assert!(tee.collect().await.is_err());
        assert!(copies.remove(0).collect().await.is_err());
    }
}
