//! Active health checking (a cluster's `health_checks`), as Envoy's `HealthCheckerImplBase`:
//! one session per host on the main runtime, checking over its own connection (HTTP/1.1 or
//! HTTP/2, TCP, or gRPC's `grpc.health.v1.Health/Check`) — not the cluster's pools, and not
//! counted as the cluster's traffic. A host starts failed (`/failed_active_hc`,
//! `/pending_active_hc`) and the first passing check makes it healthy; after that
//! `healthy_threshold` passes or `unhealthy_threshold` failures are needed to change its state,
//! except that a definite answer (an unexpected HTTP status, a gRPC NOT_SERVING, a TCP answer
//! that does not match) fails it at once. Intervals follow Envoy: `no_traffic_interval` until
//! the cluster carries traffic, then `interval`, `unhealthy_interval` and the edge intervals,
//! with `interval_jitter(_percent)`.

use super::cluster::Cluster;
use super::host::Host;
use crate::io::Transport;
use crate::model::health_check::{Checker, GrpcCheck, HealthCheck, HttpCheck, TcpCheck};
use crate::telemetry::format::FormatContext;
use crate::telemetry::stats::{Counter, Gauge, Kind, Store};
use bytes::{Buf, Bytes};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A host's state as the active health checker sees it.
#[derive(Debug, Default)]
pub struct HostHealth {
    /// `FAILED_ACTIVE_HC`.
    failed: AtomicBool,
    /// `PENDING_ACTIVE_HC`: not checked yet.
    pending: AtomicBool,
}

impl HostHealth {
    /// A host new to a health-checked cluster: failed until its first check passes.
    pub fn start_pending(&self) {
        self.failed.store(true, Relaxed);
        self.pending.store(true, Relaxed);
    }

    #[inline]
    pub fn is_failed(&self) -> bool {
        self.failed.load(Relaxed)
    }

    pub fn is_pending(&self) -> bool {
        self.pending.load(Relaxed)
    }
}

/// `cluster.<name>.health_check.*`.
#[derive(Debug)]
pub struct HealthCheckStats {
    pub attempt: Arc<Counter>,
    pub success: Arc<Counter>,
    pub failure: Arc<Counter>,
    pub network_failure: Arc<Counter>,
    pub passive_failure: Arc<Counter>,
    pub verify_cluster: Arc<Counter>,
    pub healthy: Arc<Gauge>,
    pub degraded: Arc<Gauge>,
}

const STATS: &[(&str, Kind)] = &[
    ("attempt", Kind::Counter),
    ("success", Kind::Counter),
    ("failure", Kind::Counter),
    ("network_failure", Kind::Counter),
    ("passive_failure", Kind::Counter),
    ("verify_cluster", Kind::Counter),
    ("healthy", Kind::Gauge),
    ("degraded", Kind::Gauge),
];

/// A cluster's health checker: its configuration, stats, and the signal that its hosts
/// changed (sessions start and stop with them).
#[derive(Debug)]
pub struct HealthChecker {
    pub config: HealthCheck,
    pub stats: HealthCheckStats,
    hosts_changed: tokio::sync::watch::Sender<u64>,
}

impl HealthChecker {
    pub fn new(config: HealthCheck, store: &Store, stat_name: &str) -> Self {
        let m = store.block(&format!("cluster.{stat_name}.health_check."), STATS);
        Self {
            config,
            stats: HealthCheckStats {
                attempt: m[0].counter(),
                success: m[1].counter(),
                failure: m[2].counter(),
                network_failure: m[3].counter(),
                passive_failure: m[4].counter(),
                verify_cluster: m[5].counter(),
                healthy: m[6].gauge(),
                degraded: m[7].gauge(),
            },
            hosts_changed: tokio::sync::watch::Sender::new(0),
        }
    }

    /// The cluster published a new host set.
    pub fn hosts_changed(&self) {
        self.hosts_changed.send_modify(|g| *g += 1);
    }

    /// Start checking the cluster's hosts (for as long as the cluster lives).
    pub fn start(cluster: &Arc<Cluster>, rt: &tokio::runtime::Handle) {
        let Some(hc) = &cluster.health else {
            return;
        };
        let changes = hc.hosts_changed.subscribe();
        rt.spawn(manage(Arc::downgrade(cluster), changes));
    }
}

/// Keep one session per host: start sessions for new hosts, stop those of removed ones; stop
/// everything when the cluster goes away.
async fn manage(cluster: Weak<Cluster>, mut changes: tokio::sync::watch::Receiver<u64>) {
    let mut sessions: HashMap<u64, tokio::task::JoinHandle<()>> = HashMap::new();
    loop {
        {
            let Some(c) = cluster.upgrade() else { break };
            let hosts = c.hosts.load();
            let live: HashMap<u64, &Arc<Host>> = hosts.all_hosts().map(|h| (h.id, h)).collect();
            sessions.retain(|id, task| {
                let keep = live.contains_key(id);
                if !keep {
                    task.abort();
                }
                keep
            });
            for (id, h) in live {
                if h.hc_disabled() {
                    continue;
                }
                sessions
                    .entry(id)
                    .or_insert_with(|| tokio::spawn(session(cluster.clone(), h.clone())));
            }
            update_healthy_gauge(&c);
        }
        if changes.changed().await.is_err() {
            break;
        }
    }
    for (_, t) in sessions {
        t.abort();
    }
}

fn update_healthy_gauge(c: &Cluster) {
    if let Some(hc) = &c.health {
        let n = c
            .hosts
            .load()
            .all_hosts()
            .filter(|h| !h.active_hc.is_failed())
            .count();
        hc.stats.healthy.set(n as i64);
    }
}

/// What one check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Pass,
    /// A definite answer that the host is not serving: unhealthy at once.
    Active,
    /// No usable answer (connection failure, reset, a retriable status): counts toward
    /// `unhealthy_threshold`.
    Network,
    /// No answer within `timeout`: as `Network`.
    Timeout,
}

/// How a check changed the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transition {
    Unchanged,
    /// Toward a change that needs more checks (the edge intervals apply).
    Pending,
    Changed,
}

/// A host's counters between checks.
#[derive(Debug, Default)]
struct Counters {
    healthy_in_a_row: u32,
    unhealthy_in_a_row: u32,
}

impl Counters {
    /// Envoy's `handleSuccess` / `handleFailure`.
    fn apply(&mut self, cfg: &HealthCheck, health: &HostHealth, verdict: Verdict) -> Transition {
        // The host's first check ever (it was pending).
        let first = health.pending.swap(false, Relaxed);
        if verdict == Verdict::Pass {
            self.unhealthy_in_a_row = 0;
            if !health.is_failed() {
                return Transition::Unchanged;
            }
            self.healthy_in_a_row += 1;
            if first || self.healthy_in_a_row >= cfg.healthy_threshold {
                health.failed.store(false, Relaxed);
                self.healthy_in_a_row = 0;
                return Transition::Changed;
            }
            return Transition::Pending;
        }
        self.healthy_in_a_row = 0;
        if health.is_failed() {
            // A host that was pending and fails its first check stays failed: a change for the
            // healthy count only in that it is no longer pending.
            return Transition::Unchanged;
        }
        self.unhealthy_in_a_row += 1;
        if verdict == Verdict::Active || self.unhealthy_in_a_row >= cfg.unhealthy_threshold {
            health.failed.store(true, Relaxed);
            self.unhealthy_in_a_row = 0;
            return Transition::Changed;
        }
        Transition::Pending
    }
}

/// Envoy's `interval()`: the wait before the next check.
fn next_interval(
    cfg: &HealthCheck,
    has_traffic: bool,
    passed: bool,
    transition: Transition,
    random: u64,
) -> Duration {
    let base = if !has_traffic {
        match (passed, cfg.no_traffic_healthy_interval) {
            (true, Some(d)) => d,
            _ => cfg.no_traffic_interval,
        }
    } else {
        match (passed, transition == Transition::Pending) {
            (false, true) => cfg.unhealthy_edge_interval,
            (false, false) => cfg.unhealthy_interval,
            (true, true) => cfg.healthy_edge_interval,
            (true, false) => cfg.interval,
        }
    };
    with_jitter(cfg, base, random)
}

fn with_jitter(cfg: &HealthCheck, base: Duration, random: u64) -> Duration {
    let base_ms = base.as_millis() as u64;
    let mut ms = base_ms;
    let percent = u64::from(cfg.interval_jitter_percent) * base_ms / 100;
    if percent > 0 {
        ms += random % percent;
    }
    let jitter = cfg.interval_jitter.as_millis() as u64;
    if jitter > 0 {
        ms += random.rotate_left(17) % jitter;
    }
    Duration::from_millis(ms)
}

/// A connection kept between checks (`reuse_connection`).
enum Conn {
    Http1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    Http2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
    Tcp(Transport),
}

async fn session(cluster: Weak<Cluster>, host: Arc<Host>) {
    let Some(jitter) = cluster
        .upgrade()
        .and_then(|c| c.health.as_ref().map(|h| h.config.initial_jitter))
    else {
        return;
    };
    if !jitter.is_zero() {
        tokio::time::sleep(Duration::from_millis(fastrand::u64(
            ..jitter.as_millis().max(1) as u64,
        )))
        .await;
    }
    let mut counters = Counters::default();
    let mut conn: Option<Conn> = None;
    loop {
        let Some(c) = cluster.upgrade() else { return };
        let Some(hc) = c.health.as_ref() else { return };
        let cfg = &hc.config;
        hc.stats.attempt.inc();
        let verdict = match tokio::time::timeout(cfg.timeout, check(&c, hc, &host, &mut conn)).await
        {
            Ok(v) => v,
            Err(_) => Verdict::Timeout,
        };
        if verdict != Verdict::Pass || !cfg.reuse_connection {
            conn = None;
        }
        match verdict {
            Verdict::Pass => hc.stats.success.inc(),
            Verdict::Active => hc.stats.failure.inc(),
            Verdict::Network | Verdict::Timeout => {
                hc.stats.failure.inc();
                hc.stats.network_failure.inc();
            }
        }
        let was_pending = host.active_hc.is_pending();
        let transition = counters.apply(cfg, &host.active_hc, verdict);
        if transition == Transition::Changed {
            tracing::debug!(cluster = %c.config.name, host = %host.address,
                healthy = !host.active_hc.is_failed(), "active health check changed the host");
            super::outlier::Hosts::republish(&*c);
        }
        if transition == Transition::Changed || was_pending {
            update_healthy_gauge(&c);
        }
        if verdict == Verdict::Pass
            && !host.active_hc.is_failed()
            && let Some(detector) = &c.outlier
        {
            detector.active_check_passed(&*c, &host);
        }
        let wait = next_interval(
            cfg,
            c.stats.has_traffic(),
            verdict == Verdict::Pass,
            transition,
            fastrand::u64(..),
        );
        drop(c);
        tokio::time::sleep(wait).await;
    }
}

/// The address checked: the endpoint's `health_check_config.address`, else the host's IP
/// with the cluster's `alt_port`, the endpoint's `port_value` or the host's own port.
fn target(cfg: &HealthCheck, host: &Host) -> SocketAddr {
    let ep = host.health_check.as_deref();
    if let Some(a) = ep.and_then(|e| e.address) {
        return a;
    }
    let port = cfg
        .alt_port
        .or(ep.and_then(|e| e.port))
        .unwrap_or(host.address.port());
    SocketAddr::new(host.address.ip(), port)
}

/// A new connection for checking, with the cluster's transport socket (TLS when it has one).
pub(crate) async fn connect(cluster: &Cluster, addr: SocketAddr) -> std::io::Result<Transport> {
    let tcp = tokio::time::timeout(cluster.config.connect_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timeout"))??;
    let _ = tcp.set_nodelay(true);
    match (&cluster.config.tls, &cluster.ssl) {
        (Some(tls), Some(ssl)) => {
            let (s, _) = crate::transport_sockets::tls::connect(tls, ssl, tcp, None).await?;
            Ok(Transport::Tls(Box::new(s)))
        }
        _ => Ok(Transport::Plain(tcp)),
    }
}

async fn check(
    cluster: &Cluster,
    hc: &HealthChecker,
    host: &Host,
    conn: &mut Option<Conn>,
) -> Verdict {
    let addr = target(&hc.config, host);
    match &hc.config.checker {
        Checker::Http(h) => {
            let endpoint_host = host
                .health_check
                .as_deref()
                .and_then(|e| e.hostname.as_deref());
            check_http(cluster, hc, h, endpoint_host, addr, conn).await
        }
        Checker::Tcp(t) => check_tcp(cluster, t, addr, conn).await,
        Checker::Grpc(g) => check_grpc(cluster, g, addr, conn).await,
    }
}

/// An HTTP/1.1 or HTTP/2 sender on the kept connection, or a new one.
async fn http_sender(
    cluster: &Cluster,
    addr: SocketAddr,
    http2: bool,
    conn: &mut Option<Conn>,
) -> Option<Conn> {
    match conn.take() {
        Some(Conn::Http1(s)) if !http2 && !s.is_closed() => return Some(Conn::Http1(s)),
        Some(Conn::Http2(s)) if http2 && !s.is_closed() => return Some(Conn::Http2(s)),
        _ => {}
    }
    let io = TokioIo::new(connect(cluster, addr).await.ok()?);
    if http2 {
        let (s, c) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .ok()?;
        tokio::spawn(c);
        Some(Conn::Http2(s))
    } else {
        let (s, c) = hyper::client::conn::http1::handshake(io).await.ok()?;
        tokio::spawn(c);
        Some(Conn::Http1(s))
    }
}

async fn send(
    sender: &mut Conn,
    req: http::Request<Full<Bytes>>,
) -> Option<http::Response<hyper::body::Incoming>> {
    match sender {
        Conn::Http1(s) => {
            s.ready().await.ok()?;
            s.send_request(req).await.ok()
        }
        Conn::Http2(s) => {
            s.ready().await.ok()?;
            s.send_request(req).await.ok()
        }
        Conn::Tcp(_) => None,
    }
}

fn in_ranges(ranges: &[(i64, i64)], status: u16) -> bool {
    let s = i64::from(status);
    ranges.iter().any(|(a, b)| s >= *a && s < *b)
}

async fn check_http(
    cluster: &Cluster,
    hc: &HealthChecker,
    h: &HttpCheck,
    endpoint_host: Option<&str>,
    addr: SocketAddr,
    conn: &mut Option<Conn>,
) -> Verdict {
    let Some(mut sender) = http_sender(cluster, addr, h.http2, conn).await else {
        return Verdict::Network;
    };
    // The endpoint's `hostname` overrides the checker's `host`; else the cluster's name.
    let authority = endpoint_host
        .or(h.host.as_deref())
        .unwrap_or(&cluster.config.name);
    let uri = if h.http2 {
        format!("http://{authority}{}", h.path)
    } else {
        h.path.clone()
    };
    let Ok(mut req) = http::Request::builder()
        .method(h.method.clone())
        .uri(uri)
        .body(Full::new(Bytes::new()))
    else {
        return Verdict::Active;
    };
    let headers = req.headers_mut();
    if !h.http2
        && let Ok(v) = http::HeaderValue::from_str(authority)
    {
        headers.insert(http::header::HOST, v);
    }
    headers.insert(
        http::header::USER_AGENT,
        http::HeaderValue::from_static("Envoy/HC"),
    );
    h.headers.apply(headers, &FormatContext::default());
    let Some(resp) = send(&mut sender, req).await else {
        return Verdict::Network;
    };
    let status = resp.status().as_u16();
    let matches_service = match &h.service_name_matcher {
        None => true,
        Some(m) => {
            hc.stats.verify_cluster.inc();
            resp.headers()
                .get("x-envoy-upstream-healthchecked-cluster")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| m.matches(v))
        }
    };
    let immediate_fail = resp
        .headers()
        .contains_key("x-envoy-immediate-health-check-fail");
    // Read the body so that the connection can serve the next check.
    if resp.into_body().collect().await.is_err() {
        return Verdict::Network;
    }
    *conn = Some(sender);
    if immediate_fail {
        return Verdict::Active;
    }
    if in_ranges(&h.expected_statuses, status) {
        return if matches_service {
            Verdict::Pass
        } else {
            Verdict::Active
        };
    }
    if in_ranges(&h.retriable_statuses, status) {
        Verdict::Network
    } else {
        Verdict::Active
    }
}

async fn check_tcp(
    cluster: &Cluster,
    t: &TcpCheck,
    addr: SocketAddr,
    conn: &mut Option<Conn>,
) -> Verdict {
    let mut io = match conn.take() {
        Some(Conn::Tcp(io)) => io,
        _ => match connect(cluster, addr).await {
            Ok(io) => io,
            Err(_) => return Verdict::Network,
        },
    };
    if let Some(send) = &t.send
        && io.write_all(send).await.is_err()
    {
        return Verdict::Network;
    }
    // Each expected payload, in order, somewhere in what arrives.
    let mut got: Vec<u8> = Vec::new();
    let mut from = 0;
    for want in &t.receive {
        loop {
            if let Some(at) = got[from..].windows(want.len()).position(|w| w == &want[..]) {
                from += at + want.len();
                break;
            }
            let mut buf = [0u8; 1024];
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => return Verdict::Network,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    }
    *conn = Some(Conn::Tcp(io));
    Verdict::Pass
}

/// `grpc.health.v1.HealthCheckRequest { service }` in a gRPC frame.
fn grpc_request(service: &str) -> Bytes {
    let mut msg = Vec::with_capacity(service.len() + 2);
    if !service.is_empty() {
        msg.push(0x0a);
        let mut len = service.len();
        while len >= 0x80 {
            msg.push((len as u8) | 0x80);
            len >>= 7;
        }
        msg.push(len as u8);
        msg.extend_from_slice(service.as_bytes());
    }
    let mut frame = Vec::with_capacity(msg.len() + 5);
    frame.push(0);
    frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    frame.extend_from_slice(&msg);
    Bytes::from(frame)
}

/// A protobuf varint from the front of `m`.
fn varint(m: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = m.split_first()?;
        *m = rest;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// The `status` of a `grpc.health.v1.HealthCheckResponse` frame (1 = SERVING).
fn grpc_serving_status(mut body: Bytes) -> Option<u64> {
    if body.len() < 5 || body[0] != 0 {
        return None;
    }
    body.advance(1);
    let len = body.get_u32() as usize;
    let mut msg = body.get(..len)?;
    let mut status = 0;
    while let Some((&tag, rest)) = msg.split_first() {
        msg = rest;
        match tag & 7 {
            0 => {
                let v = varint(&mut msg)?;
                if tag >> 3 == 1 {
                    status = v;
                }
            }
            2 => {
                let n = varint(&mut msg)? as usize;
                msg = msg.get(n..)?;
            }
            _ => return None,
        }
    }
    Some(status)
}

async fn check_grpc(
    cluster: &Cluster,
    g: &GrpcCheck,
    addr: SocketAddr,
    conn: &mut Option<Conn>,
) -> Verdict {
    let Some(mut sender) = http_sender(cluster, addr, true, conn).await else {
        return Verdict::Network;
    };
    let authority = g.authority.as_deref().unwrap_or(&cluster.config.name);
    let Ok(mut req) =
        http::Request::post(format!("http://{authority}/grpc.health.v1.Health/Check"))
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(http::header::TE, "trailers")
            .header(http::header::USER_AGENT, "Envoy/HC")
            .body(Full::new(grpc_request(&g.service_name)))
    else {
        return Verdict::Active;
    };
    g.metadata
        .apply(req.headers_mut(), &FormatContext::default());
    let Some(resp) = send(&mut sender, req).await else {
        return Verdict::Network;
    };
    if resp.status() != http::StatusCode::OK {
        return Verdict::Active;
    }
    let grpc_status = |h: &http::HeaderMap| {
        h.get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u32>().ok())
    };
    let head_status = grpc_status(resp.headers());
    let Ok(collected) = resp.into_body().collect().await else {
        return Verdict::Network;
    };
    *conn = Some(sender);
    let status = collected.trailers().and_then(grpc_status).or(head_status);
    if status != Some(0) {
        return Verdict::Active;
    }
    match grpc_serving_status(collected.to_bytes()) {
        Some(1) => Verdict::Pass,
        _ => Verdict::Active,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::health_check::{Checker, TcpCheck};

    fn cfg(healthy: u32, unhealthy: u32) -> HealthCheck {
        HealthCheck {
            timeout: Duration::from_secs(1),
            interval: Duration::from_secs(10),
            initial_jitter: Duration::ZERO,
            interval_jitter: Duration::ZERO,
            interval_jitter_percent: 0,
            unhealthy_threshold: unhealthy,
            healthy_threshold: healthy,
            alt_port: None,
            reuse_connection: true,
            no_traffic_interval: Duration::from_secs(60),
            no_traffic_healthy_interval: None,
            unhealthy_interval: Duration::from_secs(3),
            unhealthy_edge_interval: Duration::from_secs(2),
            healthy_edge_interval: Duration::from_secs(1),
            checker: Checker::Tcp(TcpCheck::default()),
        }
    }

    #[test]
    fn thresholds_follow_envoy() {
        let c = cfg(2, 3);
        let h = HostHealth::default();
        h.start_pending();
        let mut n = Counters::default();
        // The first check passing makes a new host healthy at once.
        assert_eq!(n.apply(&c, &h, Verdict::Pass), Transition::Changed);
        assert!(!h.is_failed() && !h.is_pending());
        // Network failures count to the threshold of 3.
        assert_eq!(n.apply(&c, &h, Verdict::Timeout), Transition::Pending);
        assert_eq!(n.apply(&c, &h, Verdict::Network), Transition::Pending);
        assert_eq!(n.apply(&c, &h, Verdict::Pass), Transition::Unchanged);
        assert_eq!(n.apply(&c, &h, Verdict::Network), Transition::Pending);
        assert_eq!(n.apply(&c, &h, Verdict::Network), Transition::Pending);
        assert_eq!(n.apply(&c, &h, Verdict::Network), Transition::Changed);
        assert!(h.is_failed());
        // Two passes in a row to come back.
        assert_eq!(n.apply(&c, &h, Verdict::Pass), Transition::Pending);
        assert_eq!(n.apply(&c, &h, Verdict::Network), Transition::Unchanged);
        assert_eq!(n.apply(&c, &h, Verdict::Pass), Transition::Pending);
        assert_eq!(n.apply(&c, &h, Verdict::Pass), Transition::Changed);
        assert!(!h.is_failed());
        // A definite answer fails it at once.
        assert_eq!(n.apply(&c, &h, Verdict::Active), Transition::Changed);
        assert!(h.is_failed());
    }

    #[test]
    fn intervals_follow_envoy() {
        let c = cfg(2, 3);
        let i = |traffic, passed, t| next_interval(&c, traffic, passed, t, 0).as_secs();
        assert_eq!(i(false, true, Transition::Unchanged), 60);
        assert_eq!(i(true, true, Transition::Unchanged), 10);
        assert_eq!(i(true, true, Transition::Pending), 1);
        assert_eq!(i(true, false, Transition::Unchanged), 3);
        assert_eq!(i(true, false, Transition::Pending), 2);
        let mut j = cfg(1, 1);
        j.interval_jitter_percent = 10;
        j.interval_jitter = Duration::from_millis(500);
        for r in [0u64, 7, u64::MAX, 123_456_789] {
            let d = next_interval(&j, true, true, Transition::Unchanged, r).as_millis();
            assert!((10_000..11_500).contains(&d), "{d}");
        }
    }

    #[test]
    fn grpc_frames() {
        let req = grpc_request("svc");
        assert_eq!(&req[..], &[0, 0, 0, 0, 5, 0x0a, 3, b's', b'v', b'c']);
        let serving = Bytes::from_static(&[0, 0, 0, 0, 2, 0x08, 1]);
        assert_eq!(grpc_serving_status(serving), Some(1));
        let not_serving = Bytes::from_static(&[0, 0, 0, 0, 2, 0x08, 2]);
        assert_eq!(grpc_serving_status(not_serving), Some(2));
        assert_eq!(
            grpc_serving_status(Bytes::from_static(&[0, 0, 0, 0, 0])),
            Some(0)
        );
        assert_eq!(grpc_serving_status(Bytes::from_static(&[1])), None);
    }
}
