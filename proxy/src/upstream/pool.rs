//! Upstream connections: TCP connect with Envoy's connect timeout and connection stats, and
//! per-worker HTTP/1.1 pools (keep-alive reuse; remora's own client codec, see
//! `http::codec::h1_client`) and HTTP/2 pools (multiplexed, hyper's client). Pools belong to the worker thread that uses them; nothing here is shared
//! between workers except the stats atomics.

use super::cluster::Cluster;
use super::host::Host;
use crate::http::body::Body;
use crate::io::{Counted, Transport};
use crate::model::cluster::Keepalive;
use bytes::BytesMut;
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::cell::RefCell;
use std::collections::HashMap;
use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// Why a connection could not be made (`UF`).
#[derive(Debug, Clone)]
pub enum ConnectError {
    Timeout,
    Io(Arc<io::Error>),
    Handshake(Arc<hyper::Error>),
    /// The TLS handshake failed (the reason as Envoy prints it: `TLS_error:…`).
    Tls(Arc<str>),
    /// A circuit breaker refused (`UO`): no connection could be made and no request may wait.
    Overflow,
    /// The route timeout passed while the request waited for a pooled connection (`UT`).
    PendingTimeout,
    /// The cluster's `max_connection_pools` refused a new pool for the host (`UH`).
    PoolOverflow,
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Timeout => f.write_str("connection timeout"),
            // Envoy's text is strerror's, without Rust's " (os error N)".
            ConnectError::Io(e) => {
                let text = e.to_string();
                let suffix = e.raw_os_error().map(|n| format!(" (os error {n})"));
                let text = suffix.and_then(|s| text.strip_suffix(&s)).unwrap_or(&text);
                write!(f, "delayed connect error: {text}")
            }
            ConnectError::Handshake(e) => write!(f, "protocol error: {e}"),
            ConnectError::Tls(reason) => f.write_str(reason),
            ConnectError::Overflow => f.write_str("overflow"),
            ConnectError::PendingTimeout => f.write_str("timeout while pending"),
            ConnectError::PoolOverflow => f.write_str("connection pool overflow"),
        }
    }
}

/// Tracks one upstream connection's stats from connect to close.
pub struct ConnectionStats {
    cluster: Arc<Cluster>,
    host: Arc<Host>,
    opened: Instant,
    /// Set when remora closes the connection (pool eviction, idle timeout, drop).
    closed_locally: AtomicBool,
    /// What the TLS handshake established (TLS clusters).
    pub tls: Option<Arc<crate::transport_sockets::tls::TlsInfo>>,
    /// The workload Istio's metadata exchange read from the peer (for `istio.stats`).
    pub peer: Option<Arc<crate::telemetry::istio::Peer>>,
    /// The worker's HTTP/1.1 pool slot this connection counts in.
    slot: OnceLock<Arc<PoolSlot>>,
}

/// One worker's HTTP/1.1 connections to one host: how many are open (busy or idle), and the
/// requests waiting for one of them because the cluster is at its connection limit.
#[derive(Default)]
struct PoolSlot {
    live: AtomicUsize,
    waiters: Mutex<VecDeque<oneshot::Sender<Option<H1Conn>>>>,
}

impl PoolSlot {
    /// Hand a connection to the oldest waiter; gives it back when nobody waits.
    fn hand_over(&self, mut conn: H1Conn) -> Option<H1Conn> {
        let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(tx) = waiters.pop_front() {
            match tx.send(Some(conn)) {
                Ok(()) => return None,
                Err(back) => conn = back.expect("sent Some"),
            }
        }
        Some(conn)
    }

    /// A connection closed: the oldest waiter may now open one.
    fn wake_one(&self) {
        let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(tx) = waiters.pop_front() {
            if tx.send(None).is_ok() {
                return;
            }
        }
    }
}

/// Counts one connection against the cluster's `max_connections` from the start of connecting;
/// released by the connection's stats when it closes, or here if connecting fails.
struct CxReservation<'a> {
    resource: &'a crate::upstream::circuit_breakers::Resource,
    armed: bool,
}

impl Drop for CxReservation<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.resource.dec();
        }
    }
}

/// A pending request's place in the cluster's `max_pending_requests`.
struct PendingGuard<'a>(&'a crate::upstream::circuit_breakers::Resource);

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl ConnectionStats {
    pub fn close_locally(&self) {
        self.closed_locally.store(true, Relaxed);
    }
}

impl Drop for ConnectionStats {
    fn drop(&mut self) {
        self.cluster.circuit_breakers.default.connections.dec();
        if let Some(slot) = self.slot.get() {
            slot.live.fetch_sub(1, Relaxed);
            slot.wake_one();
        }
        let s = self.cluster.stats.traffic();
        s.upstream_cx_active.dec();
        s.upstream_cx_destroy.inc();
        if self.closed_locally.load(Relaxed) {
            s.upstream_cx_destroy_local.inc();
        } else {
            s.upstream_cx_destroy_remote.inc();
        }
        s.upstream_cx_length_ms
            .record(self.opened.elapsed().as_millis() as u64);
        self.host.stats.cx_active.fetch_sub(1, Relaxed);
    }
}

/// An upstream TCP connection: bytes counted into the cluster's
/// `upstream_cx_{rx,tx}_bytes_total`, with its stats guard living as long as the connection.
pub type CountedStream = Counted<Transport, Arc<ConnectionStats>>;

pub fn set_keepalive(sock: &TcpStream, ka: &Option<Keepalive>) {
    let Some(ka) = ka else { return };
    let mut k = socket2::TcpKeepalive::new();
    if let Some(t) = ka.time {
        k = k.with_time(Duration::from_secs(t as u64));
    }
    if let Some(i) = ka.interval {
        k = k.with_interval(Duration::from_secs(i as u64));
    }
    if let Some(p) = ka.probes {
        k = k.with_retries(p);
    }
    if let Err(e) = socket2::SockRef::from(sock).set_tcp_keepalive(&k) {
        tracing::debug!("setting TCP keepalive failed: {e}");
    }
}

/// ALPN to offer instead of the cluster's (`istio.alpn`); connections offering another list
/// are pooled apart.
pub type Alpn<'a> = Option<&'a crate::model::hcm::AlpnOverride>;

/// Pools are per host and per ALPN list offered (0: the cluster's own).
type PoolKey = (u64, u64);

fn pool_key(host: &Host, alpn: Alpn<'_>) -> PoolKey {
    (host.id, alpn.map_or(0, |a| a.key))
}

/// Open a TCP connection to `host` with the cluster's connect timeout, counting Envoy's stats.
pub async fn connect(
    cluster: &Arc<Cluster>,
    host: &Arc<Host>,
    alpn: Alpn<'_>,
) -> Result<CountedStream, ConnectError> {
    let s = cluster.stats.traffic();
    let connections = &cluster.circuit_breakers.default.connections;
    connections.inc();
    let mut reservation = CxReservation {
        resource: connections,
        armed: true,
    };
    s.upstream_cx_total.inc();
    host.stats.cx_total.fetch_add(1, Relaxed);
    let started = Instant::now();
    let result = tokio::time::timeout(
        cluster.config.connect_timeout,
        TcpStream::connect(host.address),
    )
    .await;
    let stream = match result {
        Ok(Ok(stream)) => stream,
        // A connection that never opened is still destroyed in Envoy's counts: by the peer
        // when it was refused, locally when the connect timeout closed it.
        Ok(Err(e)) => {
            s.upstream_cx_connect_fail.inc();
            s.upstream_cx_destroy.inc();
            s.upstream_cx_destroy_remote.inc();
            host.stats.cx_connect_fail.fetch_add(1, Relaxed);
            return Err(ConnectError::Io(Arc::new(e)));
        }
        Err(_) => {
            s.upstream_cx_connect_fail.inc();
            s.upstream_cx_connect_timeout.inc();
            s.upstream_cx_destroy.inc();
            s.upstream_cx_destroy_local.inc();
            host.stats.cx_connect_fail.fetch_add(1, Relaxed);
            return Err(ConnectError::Timeout);
        }
    };
    let _ = stream.set_nodelay(true);
    set_keepalive(&stream, &cluster.config.tcp_keepalive);
    // Bytes the peer sent right after its metadata-exchange frame.
    let mut mx_leftover = bytes::Bytes::new();
    let mut peer = None;
    let (stream, tls) = match (&cluster.config.tls, &cluster.ssl) {
        (Some(tls), Some(ssl)) => {
            match crate::transport_sockets::tls::connect(tls, ssl, stream, alpn).await {
                Ok((mut tls_stream, info)) => {
                    // Istio's metadata exchange, when TLS negotiated its protocol.
                    if let (Some(mx), Some(ours)) = (&cluster.config.metadata_exchange, &cluster.mx)
                    {
                        if info.alpn.as_deref() == Some(mx.protocol.as_str()) {
                            match crate::filters::network::metadata_exchange::exchange_peer(
                                &mut tls_stream,
                                &ours.frame,
                                cluster.config.connect_timeout,
                                &ours.stats,
                            )
                            .await
                            {
                                Ok((left, p)) => {
                                    mx_leftover = left.freeze();
                                    peer = p;
                                }
                                Err(e) => {
                                    s.upstream_cx_connect_fail.inc();
                                    host.stats.cx_connect_fail.fetch_add(1, Relaxed);
                                    return Err(ConnectError::Io(Arc::new(e)));
                                }
                            }
                        } else {
                            ours.stats.alpn_protocol_not_found.inc();
                        }
                    }
                    (Transport::Tls(Box::new(tls_stream)), Some(Arc::new(info)))
                }
                Err(e) => {
                    let reason = crate::transport_sockets::tls::failure_reason(&e);
                    tracing::debug!(cluster = %cluster.config.name, host = %host.address, "upstream TLS handshake failed: {reason}");
                    s.upstream_cx_connect_fail.inc();
                    host.stats.cx_connect_fail.fetch_add(1, Relaxed);
                    return Err(ConnectError::Tls(reason.into()));
                }
            }
        }
        _ => (Transport::Plain(stream), None),
    };
    s.upstream_cx_connect_ms
        .record(started.elapsed().as_millis() as u64);
    s.upstream_cx_active.inc();
    host.stats.cx_active.fetch_add(1, Relaxed);
    let stats = Arc::new(ConnectionStats {
        cluster: cluster.clone(),
        host: host.clone(),
        opened: Instant::now(),
        closed_locally: AtomicBool::new(false),
        tls,
        peer,
        slot: OnceLock::new(),
    });
    // From here the connection's stats release the reservation when it closes.
    reservation.armed = false;
    Ok(Counted::new(
        stream,
        Some(s.upstream_cx_rx_bytes_total.clone()),
        Some(s.upstream_cx_tx_bytes_total.clone()),
    )
    .with_prefix(mx_leftover)
    .keeping(stats))
}

// === HTTP/1.1 pool ===

/// An HTTP/1.1 connection owned by one request at a time (no connection task): the request is
/// written and the response read by the request's own task.
pub struct H1Conn {
    pub io: CountedStream,
    /// Bytes read from the upstream and not consumed yet.
    pub buf: BytesMut,
    host: Arc<Host>,
    cluster: Arc<Cluster>,
    /// The ALPN list offered instead of the cluster's (`istio.alpn`), which also keys its pool.
    alpn: Option<crate::model::hcm::AlpnOverride>,
    created: Instant,
    served: u32,
    /// Taken from the pool (not freshly connected): a failure before any response byte may be
    /// retried once on a new connection.
    pub reused: bool,
    pub local_addr: Option<std::net::SocketAddr>,
}

impl H1Conn {
    /// A freshly connected HTTP/1.1 connection (`upstream_cx_http1_total`).
    fn new(io: CountedStream, cluster: &Arc<Cluster>, host: &Arc<Host>, alpn: Alpn<'_>) -> Self {
        cluster.stats.traffic().upstream_cx_http1_total.inc();
        let slot = host_slot(host, cluster, pool_key(host, alpn));
        slot.live.fetch_add(1, Relaxed);
        let _ = io.keep.slot.set(slot);
        Self {
            local_addr: io.inner.tcp().local_addr().ok(),
            io,
            buf: BytesMut::with_capacity(4096),
            host: host.clone(),
            cluster: cluster.clone(),
            alpn: alpn.cloned(),
            created: Instant::now(),
            served: 0,
            reused: false,
        }
    }

    fn stats(&self) -> &Arc<ConnectionStats> {
        &self.io.keep
    }

    /// Read more bytes into `buf`; `Ok(0)` on end of stream.
    pub fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(16 * 1024);
        }
        tokio_util::io::poll_read_buf(std::pin::Pin::new(&mut self.io), cx, &mut self.buf)
    }

    pub async fn fill(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }

    /// An idle connection is usable when nothing happened on it: readable would mean the
    /// upstream closed it (or sent something unasked). Reading the last response ended with a
    /// short read, which clears readiness, so this needs no system call.
    fn idle_and_open(&mut self) -> bool {
        self.buf.is_empty() && self.io.inner.idle_and_open()
    }

    /// Return the connection to this worker's pool (after a response ended cleanly).
    pub fn release(mut self) {
        self.served += 1;
        self.park();
    }

    /// Put the connection in this worker's idle list (unless a limit says close it).
    fn park(self) {
        let cfg = &self.cluster.config;
        if cfg
            .max_requests_per_connection
            .is_some_and(|max| self.served >= max)
        {
            self.cluster.stats.traffic().upstream_cx_max_requests.inc();
            self.stats().close_locally();
            return;
        }
        if cfg
            .max_connection_duration
            .is_some_and(|d| self.created.elapsed() >= d)
            || !self.buf.is_empty()
        {
            self.stats().close_locally();
            return;
        }
        // A request waiting for a connection (the cluster at its connection limit) gets it.
        let conn = match self.stats().slot.get().cloned() {
            Some(slot) => match slot.hand_over(self) {
                Some(conn) => conn,
                None => return,
            },
            None => self,
        };
        let key = pool_key(&conn.host, conn.alpn.as_ref());
        POOLS.with(|p| {
            let mut p = p.borrow_mut();
            let entry =
                pool_entry(&mut p, key, &conn.host, &conn.cluster, false).expect("not enforced");
            entry.h1.push(Idle {
                conn,
                since: Instant::now(),
            });
        });
    }

    /// A fresh connection like this one (same cluster, host and ALPN offer).
    pub async fn reconnect(&self) -> Result<H1Conn, ConnectError> {
        connect_h1(&self.cluster, &self.host, self.alpn.as_ref()).await
    }

    /// Close the connection (upgrade, error, incomplete response).
    pub fn discard(self) {
        self.stats().close_locally();
    }

    /// The raw stream and the bytes read past the response head (for an upgrade).
    pub fn into_parts(self) -> (CountedStream, BytesMut) {
        (self.io, self.buf)
    }
}

struct Idle {
    conn: H1Conn,
    since: Instant,
}

/// A connected HTTP/2 sender, its connection's stats and local address.
type H2Ready = (
    http2::SendRequest<Body>,
    Arc<ConnectionStats>,
    Option<std::net::SocketAddr>,
);
type H2Connect = Shared<BoxFuture<'static, Result<H2Ready, ConnectError>>>;

#[derive(Clone)]
enum H2State {
    Ready(
        http2::SendRequest<Body>,
        Arc<ConnectionStats>,
        Option<std::net::SocketAddr>,
        Instant,
    ),
    Connecting(H2Connect),
}

/// One HTTP/2 connection of a pool and the streams it carries (at most the cluster's
/// `max_concurrent_streams`; beyond that the pool opens another connection).
struct H2Entry {
    state: H2State,
    active: Arc<AtomicU32>,
    /// Streams started on it (for `max_requests_per_connection`).
    served: u32,
    created: Instant,
}

impl H2Entry {
    fn new(state: H2State, active: Arc<AtomicU32>) -> Self {
        Self {
            state,
            active,
            served: 0,
            created: Instant::now(),
        }
    }

    /// Whether the connection has served its `max_requests_per_connection` or lived its
    /// `max_connection_duration`: it takes no new stream (it closes once its streams end).
    fn spent(&self, cluster: &Cluster) -> bool {
        let cfg = &cluster.config;
        let by_count = cfg
            .max_requests_per_connection
            .is_some_and(|max| self.served >= max);
        if by_count {
            cluster.stats.traffic().upstream_cx_max_requests.inc();
        }
        by_count
            || cfg
                .max_connection_duration
                .is_some_and(|d| self.created.elapsed() >= d)
    }
}

/// A stream's place on an HTTP/2 connection, given back when the response body is done.
#[derive(Debug)]
pub struct StreamSlot(Arc<AtomicU32>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

struct HostPool {
    host: Weak<Host>,
    /// Holds one unit of the cluster's `max_connection_pools` while the pool exists.
    cluster: Weak<Cluster>,
    h1: Vec<Idle>,
    h2: Vec<H2Entry>,
    slot: Arc<PoolSlot>,
}

impl HostPool {
    fn new(host: Weak<Host>, cluster: Weak<Cluster>) -> Self {
        Self {
            host,
            cluster,
            h1: Vec::new(),
            h2: Vec::new(),
            slot: Arc::default(),
        }
    }
}

impl Drop for HostPool {
    fn drop(&mut self) {
        if let Some(c) = self.cluster.upgrade() {
            c.circuit_breakers.default.connection_pools.dec();
        }
    }
}

/// This worker's pool for `key`, created if needed. A new pool takes a unit of the cluster's
/// `max_connection_pools`: with `enforce`, `None` when the limit refuses it
/// (`upstream_cx_pool_overflow`); without (a connection already made must find its pool), it is
/// counted regardless.
fn pool_entry<'a>(
    pools: &'a mut HashMap<PoolKey, HostPool>,
    key: PoolKey,
    host: &Arc<Host>,
    cluster: &Arc<Cluster>,
    enforce: bool,
) -> Option<&'a mut HostPool> {
    use std::collections::hash_map::Entry;
    match pools.entry(key) {
        Entry::Occupied(e) => Some(e.into_mut()),
        Entry::Vacant(v) => {
            let limit = &cluster.circuit_breakers.default.connection_pools;
            if enforce {
                if !limit.try_inc() {
                    cluster.stats.traffic().upstream_cx_pool_overflow.inc();
                    return None;
                }
            } else {
                limit.inc();
            }
            Some(v.insert(HostPool::new(Arc::downgrade(host), Arc::downgrade(cluster))))
        }
    }
}

/// Whether this worker has (or may now create) a pool for `key`.
fn admit(key: PoolKey, host: &Arc<Host>, cluster: &Arc<Cluster>) -> Result<(), ConnectError> {
    POOLS.with(|p| {
        pool_entry(&mut p.borrow_mut(), key, host, cluster, true)
            .map(|_| ())
            .ok_or(ConnectError::PoolOverflow)
    })
}

/// This worker's HTTP/1.1 slot for `host` (and the ALPN list its connections offer).
fn host_slot(host: &Arc<Host>, cluster: &Arc<Cluster>, key: PoolKey) -> Arc<PoolSlot> {
    POOLS.with(|p| {
        pool_entry(&mut p.borrow_mut(), key, host, cluster, false)
            .expect("not enforced")
            .slot
            .clone()
    })
}

thread_local! {
    static POOLS: RefCell<HashMap<PoolKey, HostPool>> = RefCell::new(HashMap::new());
}

/// Take an idle HTTP/1.1 connection to `host`, or connect a new one, or (the cluster at its
/// connection limit) wait for one until `pending_deadline` (the route timeout).
pub async fn acquire_h1(
    cluster: &Arc<Cluster>,
    host: &Arc<Host>,
    pending_deadline: Option<Instant>,
    alpn: Alpn<'_>,
) -> Result<H1Conn, ConnectError> {
    let key = pool_key(host, alpn);
    let idle_timeout = cluster.config.idle_timeout;
    loop {
        // (Finding the pool also admits it under `max_connection_pools`.)
        let candidate = POOLS.with(|p| {
            pool_entry(&mut p.borrow_mut(), key, host, cluster, true).map(|e| e.h1.pop())
        });
        let Some(idle) = candidate.ok_or(ConnectError::PoolOverflow)? else {
            break;
        };
        let mut conn = idle.conn;
        if idle_timeout.is_some_and(|t| idle.since.elapsed() >= t) {
            cluster.stats.traffic().upstream_cx_idle_timeout.inc();
            conn.discard();
            continue;
        }
        if !conn.idle_and_open() {
            // Closed by the upstream while idle: not a local close.
            continue;
        }
        conn.reused = true;
        return Ok(conn);
    }
    let cb = &cluster.circuit_breakers.default;
    let slot = host_slot(host, cluster, key);
    loop {
        // Without an idle connection the request is pending, as in Envoy's
        // `ConnPoolImplBase::newStreamImpl`: while its new connection is established or while it
        // waits for a busy one. `max_pending_requests` is checked first (so 0 refuses every
        // request that finds no idle connection), and only then whether a connection may be
        // created (`upstream_cx_overflow` when not).
        if !cb.pending.try_inc() {
            cluster.stats.traffic().upstream_rq_pending_overflow.inc();
            return Err(ConnectError::Overflow);
        }
        let _pending = PendingGuard(&cb.pending);
        // At the connection limit a new connection is still opened when this worker has
        // none to the host (else its requests could never be served), as Envoy does.
        let can_create = cb.connections.can_create();
        if can_create || slot.live.load(Relaxed) == 0 {
            if !can_create {
                cluster.stats.traffic().upstream_cx_overflow.inc();
            }
            return connect_h1(cluster, host, alpn).await;
        }
        cluster.stats.traffic().upstream_cx_overflow.inc();
        let (tx, rx) = oneshot::channel();
        slot.waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(tx);
        let got = match pending_deadline {
            Some(at) => match tokio::time::timeout_at(at.into(), rx).await {
                Ok(r) => r,
                Err(_) => return Err(ConnectError::PendingTimeout),
            },
            None => rx.await,
        };
        match got {
            Ok(Some(mut conn)) => {
                conn.reused = true;
                return Ok(conn);
            }
            // A connection closed: try again (connect, or wait again).
            _ => continue,
        }
    }
}

/// A fresh HTTP/1.1 connection. One that fails to connect counts in
/// `upstream_cx_http1_total` too: Envoy creates the codec client before connecting.
pub async fn connect_h1(
    cluster: &Arc<Cluster>,
    host: &Arc<Host>,
    alpn: Alpn<'_>,
) -> Result<H1Conn, ConnectError> {
    match connect(cluster, host, alpn).await {
        Ok(io) => Ok(H1Conn::new(io, cluster, host, alpn)),
        Err(e) => {
            cluster.stats.traffic().upstream_cx_http1_total.inc();
            Err(e)
        }
    }
}

// === HTTP/2 pool ===

/// A multiplexed HTTP/2 connection to `host` (shared by this worker's requests).
/// A multiplexed HTTP/2 connection's sender, its local address, what its TLS handshake
/// established, and the stream's slot on the connection (hold it until the response ends).
pub type H2Sender = (
    http2::SendRequest<Body>,
    Option<std::net::SocketAddr>,
    Option<Arc<crate::transport_sockets::tls::TlsInfo>>,
    StreamSlot,
);

/// What a request found in the worker's HTTP/2 pool.
enum H2Pick {
    Ready(H2Ready, StreamSlot),
    Wait(H2Connect, StreamSlot),
}

pub async fn acquire_h2(
    cluster: &Arc<Cluster>,
    host: &Arc<Host>,
    alpn: Alpn<'_>,
) -> Result<H2Sender, ConnectError> {
    let key = pool_key(host, alpn);
    let limit = cluster.config.http2.max_concurrent_streams.max(1);
    // `Err`: no pool allowed (`max_connection_pools`); `Ok(None)`: no connection with room.
    let pick = POOLS.with(|p| {
        let mut p = p.borrow_mut();
        let entry =
            pool_entry(&mut p, key, host, cluster, true).ok_or(ConnectError::PoolOverflow)?;
        entry.h2.retain(|e| match &e.state {
            H2State::Ready(s, stats, ..) => {
                let keep = !s.is_closed() && !e.spent(cluster);
                if !keep {
                    stats.close_locally();
                }
                keep
            }
            H2State::Connecting(_) => true,
        });
        // The first connection with room; at the connection limit, the least busy one.
        let room = entry
            .h2
            .iter()
            .position(|e| e.active.load(Relaxed) < limit)
            .or_else(|| {
                (!cluster.circuit_breakers.default.connections.can_create())
                    .then(|| (0..entry.h2.len()).min_by_key(|i| entry.h2[*i].active.load(Relaxed)))
                    .flatten()
            });
        let Some(room) = room else {
            return Ok(None);
        };
        let e = &mut entry.h2[room];
        e.active.fetch_add(1, Relaxed);
        e.served += 1;
        let slot = StreamSlot(e.active.clone());
        Ok(Some(match &mut e.state {
            H2State::Ready(s, stats, local, last_used) => {
                *last_used = Instant::now();
                H2Pick::Ready((s.clone(), stats.clone(), *local), slot)
            }
            H2State::Connecting(fut) => H2Pick::Wait(fut.clone(), slot),
        }))
    })?;
    let (fut, slot) = match pick {
        Some(H2Pick::Ready((s, stats, local), slot)) => {
            return Ok((s, local, stats.tls.clone(), slot));
        }
        Some(H2Pick::Wait(fut, slot)) => (fut, slot),
        None => {
            let (c, h, a) = (cluster.clone(), host.clone(), alpn.cloned());
            // A pool's first connection is opened even at the connection limit (counted as an
            // overflow), as Envoy does for a pool with no connection.
            if !cluster.circuit_breakers.default.connections.can_create() {
                cluster.stats.traffic().upstream_cx_overflow.inc();
            }
            let fut = async move { connect_h2(&c, &h, a.as_ref()).await }
                .boxed()
                .shared();
            let active = Arc::new(AtomicU32::new(1));
            POOLS.with(|p| {
                let mut p = p.borrow_mut();
                let entry = pool_entry(&mut p, key, host, cluster, false).expect("not enforced");
                let mut e = H2Entry::new(H2State::Connecting(fut.clone()), active.clone());
                e.served = 1;
                entry.h2.push(e);
            });
            (fut, StreamSlot(active))
        }
    };
    let result = fut.await;
    POOLS.with(|p| {
        let mut p = p.borrow_mut();
        if let Some(entry) = p.get_mut(&key) {
            let at = entry.h2.iter().position(|e| {
                Arc::ptr_eq(&e.active, &slot.0) && matches!(e.state, H2State::Connecting(_))
            });
            if let Some(i) = at {
                match &result {
                    Ok((s, st, l)) => {
                        entry.h2[i].state =
                            H2State::Ready(s.clone(), st.clone(), *l, Instant::now())
                    }
                    Err(_) => {
                        entry.h2.remove(i);
                    }
                }
            }
        }
    });
    result.map(|(s, stats, l)| (s, l, stats.tls.clone(), slot))
}

async fn connect_h2(
    cluster: &Arc<Cluster>,
    host: &Arc<Host>,
    alpn: Alpn<'_>,
) -> Result<H2Ready, ConnectError> {
    let stream = connect(cluster, host, alpn).await?;
    handshake_h2(cluster, stream).await
}

/// `auto_config`: open a connection, record what ALPN chose for this host, and pool the
/// connection as HTTP/2 or HTTP/1.1 accordingly. Returns whether it is HTTP/2.
pub async fn learn_protocol(
    cluster: &Arc<Cluster>,
    host: &Arc<Host>,
    alpn: Alpn<'_>,
) -> Result<bool, ConnectError> {
    admit(pool_key(host, alpn), host, cluster)?;
    let io = connect(cluster, host, alpn).await?;
    let h2 = match &io.inner {
        Transport::Tls(t) => t.get_ref().1.alpn_protocol() == Some(b"h2"),
        Transport::Plain(_) => false,
    };
    host.alpn.store(if h2 { 2 } else { 1 }, Relaxed);
    if h2 {
        let ready = handshake_h2(cluster, io).await?;
        POOLS.with(|p| {
            let mut p = p.borrow_mut();
            let entry = pool_entry(&mut p, pool_key(host, alpn), host, cluster, false)
                .expect("not enforced");
            entry.h2.push(H2Entry::new(
                H2State::Ready(ready.0, ready.1, ready.2, Instant::now()),
                Arc::default(),
            ));
        });
    } else {
        H1Conn::new(io, cluster, host, alpn).park();
    }
    Ok(h2)
}

async fn handshake_h2(
    cluster: &Arc<Cluster>,
    stream: CountedStream,
) -> Result<H2Ready, ConnectError> {
    let stats = stream.keep.clone();
    let local = stream.inner.tcp().local_addr().ok();
    let h2 = &cluster.config.http2;
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(h2.initial_stream_window_size)
        .initial_connection_window_size(h2.initial_connection_window_size)
        .header_table_size(h2.hpack_table_size)
        .handshake::<_, Body>(TokioIo::new(stream))
        .await
        .map_err(|e| ConnectError::Handshake(Arc::new(e)))?;
    cluster.stats.traffic().upstream_cx_http2_total.inc();
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("upstream HTTP/2 connection ended: {e}");
        }
    });
    Ok((sender, stats, local))
}

/// Drop idle connections past the idle timeout and pools of hosts that are gone. Run
/// periodically on each worker.
pub fn sweep() {
    POOLS.with(|p| {
        let mut p = p.borrow_mut();
        p.retain(|_, entry| {
            if entry.host.upgrade().is_none() {
                for idle in entry.h1.drain(..) {
                    idle.conn.discard();
                }
                return false;
            }
            entry.h1.retain_mut(|idle| {
                let expired = idle
                    .conn
                    .cluster
                    .config
                    .idle_timeout
                    .is_some_and(|t| idle.since.elapsed() >= t);
                if expired {
                    idle.conn
                        .cluster
                        .stats
                        .traffic()
                        .upstream_cx_idle_timeout
                        .inc();
                    idle.conn.stats().close_locally();
                }
                !expired && idle.conn.idle_and_open()
            });
            entry.h2.retain(|e| {
                let H2State::Ready(s, stats, _, last_used) = &e.state else {
                    return true;
                };
                let cluster = &stats.cluster;
                if s.is_closed() {
                    return false;
                }
                if e.active.load(Relaxed) == 0
                    && cluster
                        .config
                        .idle_timeout
                        .is_some_and(|t| last_used.elapsed() >= t)
                {
                    // Dropping the last sender closes the connection.
                    cluster.stats.traffic().upstream_cx_idle_timeout.inc();
                    stats.close_locally();
                    return false;
                }
                true
            });
            !entry.h1.is_empty() || !entry.h2.is_empty() || entry.slot.live.load(Relaxed) > 0
        });
    });
}
