//! `envoy.filters.network.tcp_proxy`: connect to a host of the (weighted) cluster with up to
//! `max_connect_attempts` tries, then copy bytes both ways with half-close, the idle timeout and
//! `max_downstream_connection_duration`; Envoy's `tcp.<stat_prefix>.*` stats and access log.

use crate::model::tcp_proxy::TcpProxy;
use crate::stream_info::{ConnectionInfo, ResponseFlags, StreamInfo};
use crate::telemetry::access_log::{AccessLogger, filter_input};
use crate::telemetry::format::FormatContext;
use crate::telemetry::stats::Counter;
use crate::upstream::cluster::ClusterManager;
use crate::upstream::{lb, pool};
use bytes::Bytes;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

#[derive(Debug)]
pub struct TcpStats {
    pub downstream_cx_total: Arc<Counter>,
    pub downstream_cx_no_route: Arc<Counter>,
    pub downstream_cx_rx_bytes_total: Arc<Counter>,
    pub downstream_cx_tx_bytes_total: Arc<Counter>,
    pub idle_timeout: Arc<Counter>,
    pub max_downstream_connection_duration: Arc<Counter>,
}

/// A built tcp_proxy filter.
pub struct TcpProxyFilter {
    pub config: Arc<TcpProxy>,
    pub stats: TcpStats,
    clusters: Arc<ClusterManager>,
    access_logs: Vec<AccessLogger>,
    /// Bytes read per direction at a time: the listener's per_connection_buffer_limit_bytes,
    /// capped at 16 KiB (what is read is written before more is read).
    chunk: usize,
}

impl TcpProxyFilter {
    pub fn new(
        config: Arc<TcpProxy>,
        cx: &crate::context::ServerContext,
        clusters: Arc<ClusterManager>,
        buffer_limit: u32,
    ) -> io::Result<Self> {
        let store = &cx.store;
        let p = format!("tcp.{}.", config.stat_prefix);
        let c = |n: &str| store.counter(&format!("{p}{n}"));
        let stats = TcpStats {
            downstream_cx_total: c("downstream_cx_total"),
            downstream_cx_no_route: c("downstream_cx_no_route"),
            downstream_cx_rx_bytes_total: c("downstream_cx_rx_bytes_total"),
            downstream_cx_tx_bytes_total: c("downstream_cx_tx_bytes_total"),
            idle_timeout: c("idle_timeout"),
            max_downstream_connection_duration: c("max_downstream_connection_duration"),
        };
        let access_logs = config
            .access_logs
            .iter()
            .map(|l| AccessLogger::new(l.clone(), &cx.access_logs))
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Self {
            config,
            stats,
            clusters,
            access_logs,
            chunk: (buffer_limit as usize).clamp(1024, 16 * 1024),
        })
    }

    /// A connection a network filter in front closed before this filter took it.
    pub fn log_refused(
        &self,
        conn: Arc<ConnectionInfo>,
        net: &crate::filters::network::chain::SharedState,
    ) {
        let mut info = StreamInfo::new(conn);
        info.last_downstream_tx = Some(Instant::now());
        take_net_state(&mut info, Some(net));
        self.log(&info);
    }

    fn log(&self, info: &StreamInfo) {
        if self.access_logs.is_empty() {
            return;
        }
        let ctx = FormatContext {
            info: Some(info),
            ..Default::default()
        };
        let input = filter_input(info, None);
        for l in &self.access_logs {
            l.log(&ctx, &input);
        }
    }

    /// Proxy one downstream connection. `prefix` holds bytes already read by listener filters.
    /// A listener drain does not cut established TCP connections; they end with their peers or
    /// at shutdown, as in Envoy.
    pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        conn: Arc<ConnectionInfo>,
        mut downstream: S,
        prefix: Bytes,
        net: Option<&crate::filters::network::chain::SharedState>,
    ) {
        self.stats.downstream_cx_total.inc();
        let mut info = StreamInfo::new(conn);
        let cluster_name = self.config.pick_cluster(fastrand::u64(..)).clone();
        let Some(cluster) = self.clusters.get(&cluster_name) else {
            self.stats.downstream_cx_no_route.inc();
            info.set_flag(ResponseFlags::NO_CLUSTER_FOUND);
            info.last_downstream_tx = Some(Instant::now());
            take_net_state(&mut info, net);
            self.log(&info);
            return;
        };
        info.upstream_cluster = Some(cluster.config.name.clone());

        // Connect, with up to max_connect_attempts hosts.
        let mut upstream = None;
        for attempt in 1..=self.config.max_connect_attempts {
            let Some(host) = lb::choose(&cluster) else {
                cluster.stats.traffic().upstream_cx_none_healthy.inc();
                info.set_flag(ResponseFlags::NO_HEALTHY_UPSTREAM);
                break;
            };
            info.upstream_host = Some(host.address);
            info.attempt_count = attempt;
            if !cluster.circuit_breakers.default.connections.can_create() {
                cluster.stats.traffic().upstream_cx_overflow.inc();
                info.set_flag(ResponseFlags::UPSTREAM_OVERFLOW);
                break;
            }
            match pool::connect(&cluster, &host, None).await {
                Ok(s) => {
                    upstream = Some(s);
                    break;
                }
                Err(e) => {
                    info.upstream_transport_failure_reason = Some(e.to_string());
                    if attempt == self.config.max_connect_attempts {
                        info.set_flag(ResponseFlags::UPSTREAM_CONNECTION_FAILURE);
                        if self.config.max_connect_attempts > 1 {
                            info.set_flag(ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED);
                        }
                    }
                }
            }
        }
        let Some(mut upstream) = upstream else {
            info.last_downstream_tx = Some(Instant::now());
            take_net_state(&mut info, net);
            self.log(&info);
            return;
        };
        info.upstream_local = upstream.inner.tcp().local_addr().ok();
        info.upstream_tls = upstream.keep.tls.clone();
        if let Some(net) = net {
            // For the network filters (Istio's stats read the upstream peer).
            let mut st = net.lock().unwrap_or_else(|e| e.into_inner());
            st.upstream = Some(crate::filters::network::chain::UpstreamPeer {
                peer: upstream.keep.peer.clone(),
                tls: upstream.keep.tls.clone(),
            });
        }

        // Copy both ways; activity resets the idle timer.
        let started = Instant::now();
        let last_activity = AtomicU64::new(0);
        let touch = || last_activity.store(started.elapsed().as_millis() as u64, Relaxed);
        let (mut d_rd, mut d_wr) = tokio::io::split(&mut downstream);
        let (mut u_rd, mut u_wr) = tokio::io::split(&mut upstream);
        let rx = AtomicU64::new(prefix.len() as u64);
        let tx = AtomicU64::new(0);
        let down_to_up = async {
            if !prefix.is_empty() {
                u_wr.write_all(&prefix).await?;
                self.stats
                    .downstream_cx_rx_bytes_total
                    .add(prefix.len() as u64);
            }
            let mut buf = vec![0u8; self.chunk];
            loop {
                let n = d_rd.read(&mut buf).await?;
                if n == 0 {
                    u_wr.shutdown().await?;
                    return Ok::<_, io::Error>(());
                }
                touch();
                rx.fetch_add(n as u64, Relaxed);
                self.stats.downstream_cx_rx_bytes_total.add(n as u64);
                u_wr.write_all(&buf[..n]).await?;
            }
        };
        let up_to_down = async {
            let mut buf = vec![0u8; self.chunk];
            loop {
                let n = u_rd.read(&mut buf).await?;
                if n == 0 {
                    d_wr.shutdown().await?;
                    return Ok::<_, io::Error>(());
                }
                touch();
                tx.fetch_add(n as u64, Relaxed);
                self.stats.downstream_cx_tx_bytes_total.add(n as u64);
                d_wr.write_all(&buf[..n]).await?;
            }
        };
        let both = async { tokio::try_join!(down_to_up, up_to_down).map(|_| ()) };
        let idle = self.config.idle_timeout;
        let idle_watch = async {
            let Some(idle) = idle else {
                return std::future::pending::<()>().await;
            };
            loop {
                let last = started + std::time::Duration::from_millis(last_activity.load(Relaxed));
                let at = last + idle;
                if Instant::now() >= at {
                    return;
                }
                tokio::time::sleep_until(at.into()).await;
            }
        };
        let max_duration = async {
            match self.config.max_downstream_connection_duration {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        let closed_locally = tokio::select! {
            r = both => {
                if r.is_err() {
                    info.connection_termination_details = Some("connection reset".into());
                }
                false
            }
            _ = idle_watch => {
                self.stats.idle_timeout.inc();
                info.downstream_local_close_reason = Some(IDLE_TIMEOUT_CLOSE.into());
                true
            }
            _ = max_duration => {
                self.stats.max_downstream_connection_duration.inc();
                info.set_flag(ResponseFlags::DURATION_TIMEOUT);
                info.downstream_local_close_reason = Some(MAX_DURATION_CLOSE.into());
                true
            }
        };
        if closed_locally {
            upstream.keep.close_locally();
        }
        info.bytes_received = rx.load(Relaxed);
        info.bytes_sent = tx.load(Relaxed);
        info.last_downstream_tx = Some(Instant::now());
        take_net_state(&mut info, net);
        self.log(&info);
    }
}

/// What the network filters in front left for the log: their dynamic metadata and, when one
/// closed the connection, its detail; and what they see at the close: the flags set here.
fn take_net_state(
    info: &mut StreamInfo,
    net: Option<&crate::filters::network::chain::SharedState>,
) {
    let Some(net) = net else {
        return;
    };
    let mut st = net.lock().unwrap_or_else(|e| e.into_inner());
    info.dynamic_metadata = st.metadata.clone();
    info.set_flag(st.response_flags);
    // The connection's flags, for the filters' close (Istio's stats label them).
    st.response_flags = info.response_flags;
    if let Some(d) = &st.closed {
        info.downstream_local_close_reason = Some(d.clone());
    }
    if let Some(d) = &st.termination_details {
        info.connection_termination_details = Some(d.clone());
    }
}

/// Envoy's local close reasons (`StreamInfo::LocalCloseReasons`) of the connections tcp_proxy
/// closes (`%DOWNSTREAM_LOCAL_CLOSE_REASON%`).
pub const IDLE_TIMEOUT_CLOSE: &str = "tcp_session_idle_timeout";
pub const MAX_DURATION_CLOSE: &str = "max_connection_duration_reached";
