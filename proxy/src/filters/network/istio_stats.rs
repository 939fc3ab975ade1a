//! Istio's `istio.stats` network filter (`stats.PluginConfig` on a TCP filter chain):
//! `istio_tcp_connections_opened_total`, `istio_tcp_connections_closed_total`,
//! `istio_tcp_received_bytes_total` and `istio_tcp_sent_bytes_total`, with the labels of the
//! HTTP filter less `response_code` and `grpc_response_status` (`request_protocol="tcp"`).
//!
//! As Istio's filter: a connection counts as opened once the peer is known (the TCP
//! metadata exchange, before any application byte) or at its close; the byte counters are
//! reported when `tcp_reporting_duration` has passed since the last report (checked as bytes
//! flow: remora runs no timer per connection) and at the close. The peer is the one the
//! listener's metadata exchange read (server side); on the server side the principals come
//! from the downstream TLS connection; on the client side the terminal tcp_proxy hands over
//! the upstream connection's exchanged peer and certificates (`on_upstream`).

use crate::filters::http::istio_stats::{
    EvalCx, Recorder, TCP_CLOSED, TCP_OPENED, TCP_RECEIVED, TCP_SENT,
};
use crate::model::istio_stats::{HTTP_LABELS, IstioStats, Reporter};
use crate::telemetry::istio::{Facts, Peer, standard_labels};
use std::sync::Arc;
use std::time::Instant;

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
        Some(Box::new(IstioStatsNet {
            recorder: self.recorder.clone(),
            service: self.service.clone(),
            peer_san: peer_san.into(),
            local_san: local_san.into(),
            peer: None,
            opened: false,
            received: 0,
            sent: 0,
            reported: (0, 0),
            last_report: Instant::now(),
        }))
    }
}

struct IstioStatsNet {
    recorder: Arc<Recorder>,
    service: Option<(Arc<str>, Option<crate::model::cluster::IstioService>)>,
    peer_san: Box<str>,
    local_san: Box<str>,
    peer: Option<Arc<Peer>>,
    opened: bool,
    received: u64,
    sent: u64,
    /// (received, sent) at the last report.
    reported: (u64, u64),
    last_report: Instant,
}

impl IstioStatsNet {
    fn report(&mut self, closing: bool) {
        let r = &self.recorder;
        let (host, name) = crate::telemetry::istio::destination_service(
            None,
            true,
            None,
            self.service.as_ref().map(|(n, _)| &**n),
            self.service.as_ref().and_then(|(_, s)| s.as_ref()),
        );
        let facts = Facts {
            peer: self.peer.as_deref(),
            peer_san: &self.peer_san,
            local_san: &self.local_san,
            service_host: host,
            service_name: name,
            protocol: "tcp",
            flags: "-",
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
            r.record(
                TCP_OPENED,
                &std,
                crate::filters::http::istio_stats::Labels::Tcp,
                &cx,
                1,
            );
        }
        let (rx, tx) = self.reported;
        r.record(
            TCP_RECEIVED,
            &std,
            crate::filters::http::istio_stats::Labels::Tcp,
            &cx,
            self.received - rx,
        );
        r.record(
            TCP_SENT,
            &std,
            crate::filters::http::istio_stats::Labels::Tcp,
            &cx,
            self.sent - tx,
        );
        self.reported = (self.received, self.sent);
        self.last_report = Instant::now();
        if closing {
            r.record(
                TCP_CLOSED,
                &std,
                crate::filters::http::istio_stats::Labels::Tcp,
                &cx,
                1,
            );
        }
    }

    fn maybe_report(&mut self) {
        let every = self.recorder.config.tcp_reporting_duration;
        if self.opened && !every.is_zero() && self.last_report.elapsed() >= every {
            self.report(false);
        }
    }
}

impl super::NetworkFilter for IstioStatsNet {
    fn on_peer(&mut self, peer: &Arc<Peer>) {
        self.peer = Some(peer.clone());
        // Istio counts the connection as opened once the peer is read.
        self.report(false);
    }

    fn on_upstream(&mut self, up: &crate::filters::network::chain::UpstreamPeer) {
        if self.recorder.reporter != Reporter::ClientSidecar {
            return;
        }
        let (peer_san, local_san) = crate::telemetry::istio::sans(up.tls.as_deref());
        self.peer_san = peer_san.into();
        self.local_san = local_san.into();
        if let Some(p) = &up.peer {
            self.peer = Some(p.clone());
            // Istio counts the connection as opened once the peer is read.
            self.report(false);
        }
    }

    fn on_data(
        &mut self,
        data: &[u8],
        _end_stream: bool,
        _cx: &mut super::ConnCx<'_>,
    ) -> super::NetFlow {
        self.received += data.len() as u64;
        self.maybe_report();
        super::NetFlow::Continue
    }

    fn on_write(
        &mut self,
        data: &[u8],
        _end_stream: bool,
        _cx: &mut super::ConnCx<'_>,
    ) -> super::NetFlow {
        self.sent += data.len() as u64;
        self.maybe_report();
        super::NetFlow::Continue
    }

    fn watches_writes(&self) -> bool {
        true
    }
}

impl Drop for IstioStatsNet {
    fn drop(&mut self) {
        self.report(true);
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
