//! `envoy.stat_sinks.statsd`: Envoy's statsd lines with the full stat name (no tags) —
//! `<prefix>.<name>:<delta>|c` for each used counter (what it gained since the previous
//! flush), `<prefix>.<name>:<value>|g` for each used gauge, and `<prefix>.<name>:<value>|ms`
//! for every value a histogram recorded. Over UDP each line is one datagram (Envoy's plain
//! statsd sink buffers nothing); over TCP (`tcp_cluster_name`) each line ends with `\n` and a
//! flush is one write on a connection to the cluster.
//!
//! Envoy sends a histogram's value when it is recorded, from the worker; remora keeps the
//! values in the histogram and sends them with the next flush (the same lines, later).

use super::{Sink, Snapshot, StartContext};
use crate::model::stats_sinks::{Statsd, StatsdTarget};
use crate::telemetry::stats::Counter;
use std::fmt::Write as _;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

/// Flushes waiting for the TCP connection before newer ones are dropped.
const TCP_QUEUE: usize = 4;
/// A connection that takes no bytes for this long is closed (the flush is dropped).
const TCP_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Reconnection back-off after a failed connect: doubling from the first to the cap.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(30));

/// The lines of one flush, in Envoy's order: counters, gauges, then histogram values.
pub fn lines(prefix: &str, s: &Snapshot) -> Vec<String> {
    let mut out = Vec::with_capacity(s.counters.len() + s.gauges.len());
    for c in &s.counters {
        out.push(format!("{prefix}.{}:{}|c", c.name, c.delta));
    }
    for g in &s.gauges {
        out.push(format!("{prefix}.{}:{}|g", g.name, g.value));
    }
    for p in &s.values {
        for v in &p.values {
            out.push(format!("{prefix}.{}:{v}|ms", p.name));
        }
    }
    out
}

/// Start the sink: a UDP socket, or the TCP connection task.
pub fn start(c: &Statsd, cx: &StartContext<'_>) -> Result<Box<dyn Sink>, String> {
    match &c.target {
        StatsdTarget::Udp(to) => Ok(Box::new(
            UdpSink::new(*to, c.prefix.clone()).map_err(|e| e.to_string())?,
        )),
        StatsdTarget::Tcp(cluster) => {
            if cx.node.id.is_empty() || cx.node.cluster.is_empty() {
                return Err("tcp statsd: node 'id' and 'cluster' are required. Set it either in 'node' config or via --service-node and --service-cluster options.".into());
            }
            Ok(Box::new(TcpSink::start(
                cluster.clone(),
                c.prefix.clone(),
                cx.clusters.clone(),
                cx.store.counter("statsd.cx_overflow"),
            )))
        }
    }
}

/// A non-blocking UDP socket of `to`'s family (shared with `dog_statsd`).
pub fn udp_socket(to: SocketAddr) -> std::io::Result<UdpSocket> {
    let local: SocketAddr = if to.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// Datagrams to `address`, one per line, sent without waiting.
pub struct UdpSink {
    socket: UdpSocket,
    to: SocketAddr,
    prefix: String,
    /// Datagrams the socket refused (dropped).
    pub dropped: AtomicU64,
}

impl UdpSink {
    pub fn new(to: SocketAddr, prefix: String) -> std::io::Result<Self> {
        Ok(Self {
            socket: udp_socket(to)?,
            to,
            prefix,
            dropped: AtomicU64::new(0),
        })
    }
}

impl Sink for UdpSink {
    fn flush(&self, s: &Snapshot) {
        for line in lines(&self.prefix, s) {
            if let Err(e) = self.socket.send_to(line.as_bytes(), self.to) {
                let n = self.dropped.fetch_add(1, Relaxed);
                if n == 0 {
                    tracing::debug!("statsd: sending to {} failed: {e}", self.to);
                }
            }
        }
    }
}

/// Lines to a connection to a cluster, written by a task of its own.
pub struct TcpSink {
    prefix: String,
    tx: mpsc::Sender<Vec<u8>>,
    /// `statsd.cx_overflow`: flushes dropped because the connection was not keeping up.
    overflow: Arc<Counter>,
}

impl TcpSink {
    /// Start the connection task on the current runtime; it ends when the sink is dropped.
    pub fn start(
        cluster: String,
        prefix: String,
        clusters: Arc<crate::upstream::cluster::ClusterManager>,
        overflow: Arc<Counter>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(TCP_QUEUE);
        tokio::spawn(write_loop(cluster, clusters, rx));
        Self {
            prefix,
            tx,
            overflow,
        }
    }
}

impl Sink for TcpSink {
    fn flush(&self, s: &Snapshot) {
        let mut payload = String::new();
        for line in lines(&self.prefix, s) {
            let _ = writeln!(payload, "{line}");
        }
        if payload.is_empty() {
            return;
        }
        if self.tx.try_send(payload.into_bytes()).is_err() {
            self.overflow.inc();
        }
    }
}

/// Write each flush on the connection, connecting (again) when there is none; while a
/// connection cannot be made, flushes are dropped until the back-off has passed.
async fn write_loop(
    cluster: String,
    clusters: Arc<crate::upstream::cluster::ClusterManager>,
    mut rx: mpsc::Receiver<Vec<u8>>,
) {
    let mut conn: Option<tokio::net::TcpStream> = None;
    let mut backoff = BACKOFF.0;
    let mut retry_at = tokio::time::Instant::now();
    while let Some(payload) = rx.recv().await {
        if conn.is_none() {
            if tokio::time::Instant::now() < retry_at {
                continue;
            }
            match connect(&clusters, &cluster).await {
                Ok(s) => {
                    conn = Some(s);
                    backoff = BACKOFF.0;
                }
                Err(e) => {
                    tracing::debug!("tcp statsd: cannot connect to cluster '{cluster}': {e}");
                    retry_at = tokio::time::Instant::now() + backoff;
                    backoff = (backoff * 2).min(BACKOFF.1);
                    continue;
                }
            }
        }
        let Some(s) = conn.as_mut() else { continue };
        match tokio::time::timeout(TCP_WRITE_TIMEOUT, s.write_all(&payload)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!("tcp statsd: write to cluster '{cluster}' failed: {e}");
                conn = None;
            }
            Err(_) => conn = None,
        }
    }
}

async fn connect(
    clusters: &crate::upstream::cluster::ClusterManager,
    cluster: &str,
) -> Result<tokio::net::TcpStream, String> {
    let addr = match super::cluster_target(clusters, cluster)? {
        remora_xds::client::Target::Tcp(a) => a,
        remora_xds::client::Target::Unix(_) => {
            return Err("a pipe endpoint is not supported for tcp statsd".into());
        }
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("connect timeout".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::{CounterPoint, GaugePoint};
    use super::*;
    use crate::telemetry::tags::Tags;

    fn snapshot() -> Snapshot {
        Snapshot {
            counters: vec![CounterPoint {
                name: "cluster.backend.upstream_rq_total".into(),
                tags: Tags::default(),
                value: 9,
                delta: 4,
            }],
            gauges: vec![GaugePoint {
                name: "server.live".into(),
                tags: Tags::default(),
                value: 1,
            }],
            values: vec![super::super::ValuesPoint {
                name: "cluster.backend.upstream_rq_time".into(),
                tags: Tags::default(),
                values: vec![3, 250],
            }],
            ..Snapshot::default()
        }
    }

    #[test]
    fn envoy_line_format() {
        assert_eq!(
            lines("envoy", &snapshot()),
            [
                "envoy.cluster.backend.upstream_rq_total:4|c",
                "envoy.server.live:1|g",
                "envoy.cluster.backend.upstream_rq_time:3|ms",
                "envoy.cluster.backend.upstream_rq_time:250|ms",
            ]
        );
    }

    #[tokio::test]
    async fn udp_sends_one_datagram_per_line() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let sink = UdpSink::new(rx.local_addr().unwrap(), "p".into()).unwrap();
        sink.flush(&snapshot());
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        for _ in 0..4 {
            let n = rx.recv(&mut buf).unwrap();
            got.push(String::from_utf8_lossy(&buf[..n]).to_string());
        }
        assert_eq!(got[0], "p.cluster.backend.upstream_rq_total:4|c");
        assert_eq!(got[3], "p.cluster.backend.upstream_rq_time:250|ms");
    }
}
