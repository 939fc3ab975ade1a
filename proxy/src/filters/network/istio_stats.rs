//! Istio's `istio.stats` network filter (`stats.PluginConfig` on a TCP filter chain):
//! `istio_tcp_connections_opened_total`, `istio_tcp_connections_closed_total`,
//! `istio_tcp_received_bytes_total` and `istio_tcp_sent_bytes_total`, with the labels of the
//! HTTP filter less `response_code` and `grpc_response_status` (`request_protocol="tcp"`).
//!
//! As Istio's filter: a connection counts as opened once the peer is known (the TCP
//! metadata exchange, before any application byte) or at its close; the byte counters are
//! reported every `tcp_reporting_duration` (a timer per connection, as Istio's) and at the
//! close. `response_flags` are the connection's (the tcp_proxy's `UF`, `UO`, `UH`, `URX`,
//! `DT`, …) as they are at the first report, as Istio computes the labels once. The peer is the one the
//! listener's metadata exchange read (server side); on the server side the principals come
//! from the downstream TLS connection; on the client side the terminal tcp_proxy hands over
//! the upstream connection's exchanged peer and certificates (`on_upstream`).

use crate::filters::http::istio_stats::{
    EvalCx, Labels, Recorder, TCP_CLOSED, TCP_OPENED, TCP_RECEIVED, TCP_SENT,
};
use crate::model::istio_stats::{HTTP_LABELS, IstioStats, Reporter};
use crate::stream_info::ResponseFlags;
use crate::telemetry::istio::{Facts, Peer, standard_labels};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::AbortHandle;

#[derive(Debug)]
pub struct IstioStatsNetFactory {
    recorder: Arc<Recorder>,
    /// The tcp_proxy's cluster (one, not weighted): what names `destination_service`.
    service: Option<(Arc<str>, Option<crate::model::cluster::IstioService>)>,
}

impl IstioStatsNetFactory {
    pub fn new(
        config: &IstioStats,
        direction: crate::model::listener::Direction,
        server: &crate::context::ServerContext,
        clusters: &Arc<crate::upstream::cluster::ClusterManager>,
        tcp_cluster: Option<&Arc<str>>,
    ) -> Self {
        let service = tcp_cluster.map(|name| {
            let svc = clusters
                .get(name)
                .and_then(|c| c.config.istio_service.clone());
            (name.clone(), svc)
        });
        Self {
            recorder: Arc::new(Recorder::new(
                config,
                direction,
                &server.local.node,
                &server.store,
            )),
            service,
        }
    }
}

impl super::NetworkFilterFactory for IstioStatsNetFactory {
    fn create(&self, cx: &super::ConnCx<'_>) -> Option<Box<dyn super::NetworkFilter>> {
        let (peer_san, local_san) = match self.recorder.reporter {
            Reporter::ClientSidecar => ("", ""),
            _ => crate::telemetry::istio::sans(cx.connection.tls.as_deref()),
        };
        let state = Arc::new(Mutex::new(NetState {
            recorder: self.recorder.clone(),
            service: self.service.clone(),
            peer_san: peer_san.into(),
            local_san: local_san.into(),
            peer: None,
            opened: false,
            closed: false,
            flags: *cx.response_flags,
            received: 0,
            sent: 0,
            reported: (0, 0),
        }));
        let timer = report_timer(&state, self.recorder.config.tcp_reporting_duration);
        Some(Box::new(IstioStatsNet { state, timer }))
    }
}

/// Istio's report timer: every `every`, a connection whose peer is known reports its bytes
/// (and, the first time, that it opened), whether or not bytes flow. None without a runtime
/// (unit tests) or with a zero duration (reports at the close only).
fn report_timer(state: &Arc<Mutex<NetState>>, every: Duration) -> Option<AbortHandle> {
    if every.is_zero() {
        return None;
    }
    let handle = tokio::runtime::Handle::try_current().ok()?;
    let weak = Arc::downgrade(state);
    let task = handle.spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(state) = weak.upgrade() else { return };
            let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
            if st.closed {
                return;
            }
            if st.opened {
                st.report(false);
            }
        }
    });
    Some(task.abort_handle())
}

struct IstioStatsNet {
    state: Arc<Mutex<NetState>>,
    timer: Option<AbortHandle>,
}

/// What the filter and its report timer share.
struct NetState {
    recorder: Arc<Recorder>,
    service: Option<(Arc<str>, Option<crate::model::cluster::IstioService>)>,
    peer_san: Box<str>,
    local_san: Box<str>,
    peer: Option<Arc<Peer>>,
    opened: bool,
    closed: bool,
    /// The connection's response flags as last seen; fixed at the first report (Istio
    /// computes the labels once).
    flags: ResponseFlags,
    received: u64,
    sent: u64,
    /// (received, sent) at the last report.
    reported: (u64, u64),
}

impl NetState {
    fn report(&mut self, closing: bool) {
        let r = &self.recorder;
        let (host, name) = crate::telemetry::istio::destination_service(
            None,
            true,
            None,
            self.service.as_ref().map(|(n, _)| &**n),
            self.service.as_ref().and_then(|(_, s)| s.as_ref()),
        );
        let flags = self.flags.short_string();
        let facts = Facts {
            peer: self.peer.as_deref(),
            peer_san: &self.peer_san,
            local_san: &self.local_san,
            service_host: host,
            service_name: name,
            protocol: "tcp",
            flags: &flags,
            ..Default::default()
        };
        let std: [&str; HTTP_LABELS.len()] = standard_labels(r.reporter, &r.local, &facts);
        let cx = EvalCx {
            cluster_name: self.service.as_ref().map(|(n, _)| &**n),
            upstream_peer: match r.reporter {
                Reporter::ClientSidecar => self.peer.as_deref(),
                _ => None,
            },
            downstream_peer: match r.reporter {
                Reporter::ClientSidecar => None,
                _ => self.peer.as_deref(),
            },
            ..Default::default()
        };
        if !self.opened {
            self.opened = true;
            r.record(TCP_OPENED, &std, Labels::Tcp, &cx, 1);
        }
        let (rx, tx) = self.reported;
        let bytes = [
            (TCP_RECEIVED, self.received - rx),
            (TCP_SENT, self.sent - tx),
        ];
        r.record_all(&bytes, &std, Labels::Tcp, &cx);
        self.reported = (self.received, self.sent);
        if closing {
            self.closed = true;
            r.record(TCP_CLOSED, &std, Labels::Tcp, &cx, 1);
        }
    }

    /// Until the first report, the labels follow the connection's flags.
    fn see_flags(&mut self, flags: ResponseFlags) {
        if !self.opened {
            self.flags = flags;
        }
    }
}

impl IstioStatsNet {
    fn state(&self) -> std::sync::MutexGuard<'_, NetState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl super::NetworkFilter for IstioStatsNet {
    fn on_peer(&mut self, peer: &Arc<Peer>) {
        let mut st = self.state();
        st.peer = Some(peer.clone());
        // Istio counts the connection as opened once the peer is read.
        st.report(false);
    }

    fn on_upstream(&mut self, up: &crate::filters::network::chain::UpstreamPeer) {
        let mut st = self.state();
        if st.recorder.reporter != Reporter::ClientSidecar {
            return;
        }
        let (peer_san, local_san) = crate::telemetry::istio::sans(up.tls.as_deref());
        st.peer_san = peer_san.into();
        st.local_san = local_san.into();
        if let Some(p) = &up.peer {
            st.peer = Some(p.clone());
            // Istio counts the connection as opened once the peer is read.
            st.report(false);
        }
    }

    fn on_data(
        &mut self,
        data: &[u8],
        _end_stream: bool,
        cx: &mut super::ConnCx<'_>,
    ) -> super::NetFlow {
        let mut st = self.state();
        st.received += data.len() as u64;
        st.see_flags(*cx.response_flags);
        super::NetFlow::Continue
    }

    fn on_write(
        &mut self,
        data: &[u8],
        _end_stream: bool,
        cx: &mut super::ConnCx<'_>,
    ) -> super::NetFlow {
        let mut st = self.state();
        st.sent += data.len() as u64;
        st.see_flags(*cx.response_flags);
        super::NetFlow::Continue
    }

    fn watches_writes(&self) -> bool {
        true
    }

    fn on_close(&mut self, cx: &mut super::ConnCx<'_>) {
        let mut st = self.state();
        if !st.closed {
            st.see_flags(*cx.response_flags);
            st.report(true);
        }
    }
}

impl Drop for IstioStatsNet {
    fn drop(&mut self) {
        if let Some(t) = &self.timer {
            t.abort();
        }
        let mut st = self.state();
        if !st.closed {
            st.report(true);
        }
    }
}

/// The connection's peer, for tests of the filter without a listener.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::filters::network::NetworkFilterFactory;
    use crate::stream_info::ConnectionInfo;
    use crate::telemetry::stats::Store;

    #[test]
    fn a_connection_reports_opened_bytes_and_closed() {
        let server = crate::context::ServerContext::for_tests();
        let cfg = IstioStats::from_proto(
            &crate::config::FieldPath::root(),
            &crate::model::istio_pb::PluginConfig::default(),
        )
        .unwrap();
        let clusters = Arc::new(crate::upstream::cluster::ClusterManager::default());
        let f = IstioStatsNetFactory::new(
            &cfg,
            crate::model::listener::Direction::Inbound,
            &server,
            &clusters,
            None,
        );
        let conn = Arc::new(ConnectionInfo {
            id: 1,
            local: "127.0.0.1:1".parse().unwrap(),
            remote: "127.0.0.1:2".parse().unwrap(),
            requested_server_name: None,
            application_protocols: vec![],
            transport_protocol: "raw_buffer",
            tls: None,
        });
        let mut md = Default::default();
        let mut flags = Default::default();
        let mut cx = crate::filters::network::ConnCx {
            connection: &conn,
            metadata: &mut md,
            response_flags: &mut flags,
            termination_details: &mut None,
        };
        let mut filter = f.create(&cx).unwrap();
        let _ = filter.on_data(b"hello", false, &mut cx);
        let _ = filter.on_write(b"abc", false, &mut cx);
        drop(filter);
        let text = prom(&server.store);
        assert!(
            text.contains("istio_tcp_connections_opened_total{reporter=\"destination\""),
            "{text}"
        );
        assert!(
            text.contains("connection_security_policy=\"none\"} 1"),
            "{text}"
        );
        let line = |fam: &str| {
            text.lines()
                .find(|l| l.starts_with(&format!("{fam}{{")))
                .unwrap_or_else(|| panic!("{fam}: {text}"))
                .to_string()
        };
        assert!(line("istio_tcp_received_bytes_total").ends_with(" 5"));
        assert!(line("istio_tcp_sent_bytes_total").ends_with(" 3"));
        assert!(line("istio_tcp_connections_closed_total").ends_with(" 1"));
        assert!(!line("istio_tcp_connections_closed_total").contains("response_code"));
    }

    fn factory(server: &crate::context::ServerContext) -> IstioStatsNetFactory {
        let cfg = IstioStats::from_proto(
            &crate::config::FieldPath::root(),
            &crate::model::istio_pb::PluginConfig::default(),
        )
        .unwrap();
        let clusters = Arc::new(crate::upstream::cluster::ClusterManager::default());
        IstioStatsNetFactory::new(
            &cfg,
            crate::model::listener::Direction::Inbound,
            server,
            &clusters,
            None,
        )
    }

    fn conn() -> Arc<ConnectionInfo> {
        Arc::new(ConnectionInfo {
            id: 1,
            local: "127.0.0.1:1".parse().unwrap(),
            remote: "127.0.0.1:2".parse().unwrap(),
            requested_server_name: None,
            application_protocols: vec![],
            transport_protocol: "raw_buffer",
            tls: None,
        })
    }

    fn value(text: &str, family: &str) -> Option<String> {
        text.lines()
            .find(|l| l.starts_with(&format!("{family}{{")))
            .map(|l| l.rsplit(' ').next().unwrap_or("").to_string())
    }

    /// An idle connection whose peer is known reports its bytes every
    /// `tcp_reporting_duration` (5 s by default), not only when more bytes flow.
    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_reports_on_the_timer() {
        let server = crate::context::ServerContext::for_tests();
        let f = factory(&server);
        let conn = conn();
        let (mut md, mut flags) = (Default::default(), Default::default());
        let mut cx = crate::filters::network::ConnCx {
            connection: &conn,
            metadata: &mut md,
            response_flags: &mut flags,
            termination_details: &mut None,
        };
        let mut filter = f.create(&cx).unwrap();
        filter.on_peer(&Arc::new(Peer {
            workload: "client".into(),
            ..Default::default()
        }));
        let _ = filter.on_data(b"hello", false, &mut cx);
        let text = prom(&server.store);
        assert_eq!(
            value(&text, "istio_tcp_received_bytes_total").as_deref(),
            Some("0"),
            "{text}"
        );
        tokio::time::sleep(Duration::from_millis(5001)).await;
        let text = prom(&server.store);
        assert_eq!(
            value(&text, "istio_tcp_received_bytes_total").as_deref(),
            Some("5"),
            "{text}"
        );
        assert_eq!(
            value(&text, "istio_tcp_connections_closed_total"),
            None,
            "{text}"
        );
        let _ = filter.on_write(b"abc", false, &mut cx);
        tokio::time::sleep(Duration::from_secs(5)).await;
        let text = prom(&server.store);
        assert_eq!(
            value(&text, "istio_tcp_sent_bytes_total").as_deref(),
            Some("3"),
            "{text}"
        );
        filter.on_close(&mut cx);
        drop(filter);
        let text = prom(&server.store);
        assert_eq!(
            value(&text, "istio_tcp_connections_closed_total").as_deref(),
            Some("1"),
            "{text}"
        );
        assert_eq!(
            value(&text, "istio_tcp_connections_opened_total").as_deref(),
            Some("1"),
            "{text}"
        );
    }

    /// Without a peer nothing is reported before the close, which labels the connection with
    /// its flags (the tcp_proxy's upstream connection failure).
    #[tokio::test(start_paused = true)]
    async fn a_failed_connection_carries_its_response_flags() {
        let server = crate::context::ServerContext::for_tests();
        let f = factory(&server);
        let conn = conn();
        let (mut md, mut flags) = (Default::default(), Default::default());
        let mut cx = crate::filters::network::ConnCx {
            connection: &conn,
            metadata: &mut md,
            response_flags: &mut flags,
            termination_details: &mut None,
        };
        let mut filter = f.create(&cx).unwrap();
        let _ = filter.on_data(b"hello", false, &mut cx);
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert_eq!(
            value(&prom(&server.store), "istio_tcp_connections_opened_total"),
            None
        );
        *cx.response_flags = crate::stream_info::ResponseFlags::UPSTREAM_CONNECTION_FAILURE
            | crate::stream_info::ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED;
        filter.on_close(&mut cx);
        drop(filter);
        let text = prom(&server.store);
        let closed = text
            .lines()
            .find(|l| l.starts_with("istio_tcp_connections_closed_total{"))
            .unwrap_or_else(|| panic!("{text}"));
        assert!(closed.contains("response_flags=\"UF,URX\""), "{closed}");
        assert!(closed.ends_with(" 1"), "{closed}");
    }

    fn prom(store: &Store) -> String {
        crate::admin::stats::prometheus(
            store,
            &crate::admin::stats::Selection {
                filter: None,
                used_only: false,
            },
        )
    }
}
