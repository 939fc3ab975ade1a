//! Stats sinks (`stats_sinks`, bootstrap-only: they are not xDS resources): statsd over UDP and
//! over a TCP cluster, the gRPC metrics service, `stats_flush_interval` and
//! `stats_flush_on_admin`, and a dead collector that costs traffic nothing.

use crate::support::*;
use envoy_types::pb::envoy::service::metrics::v3::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use envoy_types::pb::envoy::service::metrics::v3::{StreamMetricsMessage, StreamMetricsResponse};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;

const VHOSTS: &str = "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {prefix: \"/\"}\n                route: {cluster: backend}\n";

/// A proxy to `backend` with these top-level bootstrap lines and extra clusters.
fn config(top: &str, backend: SocketAddr, clusters: &str) -> String {
    format!(
        "node: {{id: sink-node, cluster: sink-cluster}}\n{top}\n{}{clusters}",
        bootstrap(
            &http_listener("ingress", "", VHOSTS),
            &cluster("backend", &[backend], "")
        )
    )
}

fn statsd_udp(addr: SocketAddr, prefix: &str) -> String {
    format!(
        "stats_sinks:\n- name: envoy.stat_sinks.statsd\n  typed_config:\n    \"@type\": type.googleapis.com/envoy.config.metrics.v3.StatsdSink\n    address: {{socket_address: {{address: {}, port_value: {}}}}}\n{prefix}",
        addr.ip(),
        addr.port()
    )
}

async fn traffic(r: &Remora, n: usize) {
    for _ in 0..n {
        assert_eq!(get(r.addr("ingress"), "x", "/").await.status, 200);
    }
}

/// Datagrams received within `d`.
async fn datagrams(sock: &tokio::net::UdpSocket, d: Duration) -> Vec<String> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    let deadline = tokio::time::Instant::now() + d;
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
        out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    out
}

/// The sum of a counter's deltas over these lines.
fn counted(lines: &[String], name: &str) -> u64 {
    let head = format!("{name}:");
    lines
        .iter()
        .filter_map(|l| {
            l.strip_prefix(&head)?
                .strip_suffix("|c")?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// Receive until `done` holds for what came (or 20 s).
async fn datagrams_until(
    sock: &tokio::net::UdpSocket,
    done: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut all = Vec::new();
    while !done(&all) {
        assert!(Instant::now() < deadline, "not there: {all:?}");
        all.extend(datagrams(sock, Duration::from_millis(100)).await);
    }
    all
}

/// UDP statsd: counters as deltas (`|c`), used gauges (`|g`) and each recorded histogram value
/// (`|ms`), every line one datagram under the configured prefix and the full stat name.
#[tokio::test(flavor = "multi_thread")]
async fn statsd_udp_sends_counters_gauges_and_timers() {
    let u = upstream("u").await;
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let top = format!(
        "stats_flush_interval: 0.1s\n{}",
        statsd_udp(sock.local_addr().unwrap(), "    prefix: remora-test\n")
    );
    let r = Remora::start(&config(&top, u.addr, "")).await;
    traffic(&r, 3).await;
    let rq = "remora-test.cluster.backend.upstream_rq_total";
    let live = "remora-test.server.live:1|g";
    // A flush's lines come in name order: the gauge follows the cluster's lines.
    let lines = datagrams_until(&sock, |l| {
        counted(l, rq) == 3 && l.iter().any(|x| x == live)
    })
    .await;
    for l in &lines {
        assert!(l.starts_with("remora-test."), "{l}");
        assert!(!l.contains('\n'), "one line per datagram: {l:?}");
    }
    assert!(lines.iter().any(|l| l == "remora-test.server.live:1|g"));
    let timers = |l: &[String]| {
        l.iter()
            .filter(|l| {
                l.starts_with("remora-test.cluster.backend.upstream_rq_time:") && l.ends_with("|ms")
            })
            .count()
    };
    let more = datagrams_until(&sock, |l| {
        counted(l, rq) == 0 && l.iter().any(|x| x.starts_with(rq))
    })
    .await;
    assert_eq!(
        timers(&lines) + timers(&more),
        3,
        "one timer per request: {lines:?} {more:?}"
    );
    // Without traffic the used counter keeps coming, with a zero delta.
    assert!(more.iter().any(|l| l == &format!("{rq}:0|c")), "{more:?}");
    // Never-used counters are not sent.
    assert!(
        !lines
            .iter()
            .chain(&more)
            .any(|l| l.contains("upstream_rq_timeout"))
    );
}

/// `stats_flush_interval` sets the pace; a long one sends nothing, not even at exit (Envoy 1.40
/// does not flush on SIGTERM).
#[tokio::test(flavor = "multi_thread")]
async fn flush_interval_is_honoured() {
    let u = upstream("u").await;
    let fast = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let top = format!(
        "stats_flush_interval: 0.05s\n{}",
        statsd_udp(fast.local_addr().unwrap(), "")
    );
    let r = Remora::start(&config(&top, u.addr, "")).await;
    let got = datagrams(&fast, Duration::from_millis(1500)).await;
    let flushes = got.iter().filter(|l| *l == "envoy.server.live:1|g").count();
    assert!(flushes >= 5, "{flushes} flushes in 1.5 s at 50 ms");
    drop(r);

    let slow = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let top = format!(
        "stats_flush_interval: 60s\n{}",
        statsd_udp(slow.local_addr().unwrap(), "")
    );
    let mut r = Remora::start(&config(&top, u.addr, "")).await;
    traffic(&r, 2).await;
    assert!(
        datagrams(&slow, Duration::from_millis(700))
            .await
            .is_empty()
    );
    r.signal("TERM");
    r.wait_exit(Duration::from_secs(10)).await.expect("exits");
    let last = datagrams(&slow, Duration::from_millis(300)).await;
    assert!(last.is_empty(), "{last:?}");
}

/// `stats_flush_on_admin`: no timer; reading `/stats` flushes.
#[tokio::test(flavor = "multi_thread")]
async fn flush_on_admin_flushes_when_stats_are_read() {
    let u = upstream("u").await;
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let top = format!(
        "stats_flush_on_admin: true\n{}",
        statsd_udp(sock.local_addr().unwrap(), "")
    );
    let r = Remora::start(&config(&top, u.addr, "")).await;
    traffic(&r, 1).await;
    assert!(
        datagrams(&sock, Duration::from_millis(500))
            .await
            .is_empty()
    );
    r.admin_get("/stats").await.unwrap();
    let got = datagrams(&sock, Duration::from_millis(500)).await;
    assert_eq!(
        counted(&got, "envoy.cluster.backend.upstream_rq_total"),
        1,
        "{got:?}"
    );
}

/// TCP statsd to a cluster: newline-terminated lines, default prefix `envoy`.
#[tokio::test(flavor = "multi_thread")]
async fn statsd_tcp_cluster_receives_lines() {
    let u = upstream("u").await;
    let collector = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let caddr = collector.local_addr().unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let reader = tokio::spawn(async move {
        while let Ok((s, _)) = collector.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut lines = tokio::io::BufReader::new(s).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    let _ = tx.send(l);
                }
            });
        }
    });
    let top = "stats_flush_interval: 0.1s\nstats_sinks:\n- name: envoy.stat_sinks.statsd\n  typed_config:\n    \"@type\": type.googleapis.com/envoy.config.metrics.v3.StatsdSink\n    tcp_cluster_name: statsd\n";
    let r = Remora::start(&config(top, u.addr, &cluster("statsd", &[caddr], ""))).await;
    traffic(&r, 4).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut lines = Vec::new();
    let rq = "envoy.cluster.backend.upstream_rq_total";
    let live = |lines: &[String]| lines.iter().any(|l| l == "envoy.server.live:1|g");
    // A flush's lines arrive in name order: wait for the gauge that follows the cluster's lines.
    while counted(&lines, rq) < 4 || !live(&lines) {
        assert!(Instant::now() < deadline, "{lines:?}");
        if let Ok(Some(l)) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
            lines.push(l);
        }
    }
    assert_eq!(counted(&lines, rq), 4);
    assert!(lines.iter().all(|l| l.starts_with("envoy.")), "{lines:?}");
    reader.abort();
}

#[derive(Clone)]
struct Collector(mpsc::UnboundedSender<StreamMetricsMessage>);

#[tonic::async_trait]
impl MetricsService for Collector {
    async fn stream_metrics(
        &self,
        request: tonic::Request<tonic::Streaming<StreamMetricsMessage>>,
    ) -> Result<tonic::Response<StreamMetricsResponse>, tonic::Status> {
        let mut s = request.into_inner();
        while let Some(m) = s.message().await? {
            let _ = self.0.send(m);
        }
        Ok(tonic::Response::new(StreamMetricsResponse {}))
    }
}

async fn metrics_server() -> (SocketAddr, mpsc::UnboundedReceiver<StreamMetricsMessage>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(MetricsServiceServer::new(Collector(tx)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
    );
    (addr, rx)
}

const H2: &str = "    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        explicit_http_config: {http2_protocol_options: {}}\n";

/// The metrics service: the node on the stream's first message only, one metric family per
/// used stat, counters as deltas when asked.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_service_streams_identifier_and_families() {
    let u = upstream("u").await;
    let (maddr, mut rx) = metrics_server().await;
    let top = "stats_flush_interval: 0.1s\nstats_sinks:\n- name: envoy.stat_sinks.metrics_service\n  typed_config:\n    \"@type\": type.googleapis.com/envoy.config.metrics.v3.MetricsServiceConfig\n    transport_api_version: V3\n    report_counters_as_deltas: true\n    grpc_service: {envoy_grpc: {cluster_name: metrics}}\n";
    let r = Remora::start(&config(top, u.addr, &cluster("metrics", &[maddr], H2))).await;
    traffic(&r, 5).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut msgs = Vec::new();
    let rq = "cluster.backend.upstream_rq_total";
    let sum = |msgs: &[StreamMetricsMessage]| -> f64 {
        msgs.iter()
            .flat_map(|m| &m.envoy_metrics)
            .filter(|f| f.name() == rq)
            .map(|f| f.metric[0].counter.as_ref().unwrap().value())
            .sum()
    };
    while sum(&msgs) < 5.0 {
        assert!(Instant::now() < deadline, "{} messages", msgs.len());
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
            msgs.push(m);
        }
    }
    assert_eq!(sum(&msgs), 5.0, "deltas add up to the requests");
    let node = msgs[0].identifier.as_ref().unwrap().node.as_ref().unwrap();
    assert_eq!(
        (node.id.as_str(), node.cluster.as_str()),
        ("sink-node", "sink-cluster")
    );
    assert!(msgs[1..].iter().all(|m| m.identifier.is_none()));
    let families: Vec<_> = msgs.iter().flat_map(|m| &m.envoy_metrics).collect();
    assert!(families.iter().all(|f| f.metric.len() == 1));
    let types = |name: &str| -> Vec<i32> {
        let mut t: Vec<i32> = families
            .iter()
            .filter(|f| f.name() == name)
            .map(|f| f.r#type.unwrap())
            .collect();
        t.dedup();
        t
    };
    use envoy_types::pb::io::prometheus::client::MetricType;
    assert_eq!(types("server.live"), [MetricType::Gauge as i32]);
    let h = types("cluster.backend.upstream_rq_time");
    assert!(
        h.contains(&(MetricType::Summary as i32)) && h.contains(&(MetricType::Histogram as i32)),
        "{h:?}"
    );
}

/// Collectors that are not there (UDP to a closed port, a TCP cluster and a metrics service
/// with nothing listening) cost the traffic nothing, however often stats flush.
#[tokio::test(flavor = "multi_thread")]
async fn dead_collectors_do_not_affect_traffic() {
    let u = upstream("u").await;
    let dead = closed_port();
    let top = format!(
        "stats_flush_interval: 0.01s\nstats_sinks:\n- name: envoy.stat_sinks.statsd\n  typed_config:\n    \"@type\": type.googleapis.com/envoy.config.metrics.v3.StatsdSink\n    address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}\n- name: envoy.stat_sinks.statsd\n  typed_config:\n    \"@type\": type.googleapis.com/envoy.config.metrics.v3.StatsdSink\n    tcp_cluster_name: statsd\n- name: envoy.stat_sinks.metrics_service\n  typed_config:\n    \"@type\": type.googleapis.com/envoy.config.metrics.v3.MetricsServiceConfig\n    grpc_service: {{envoy_grpc: {{cluster_name: metrics}}}}\n",
        dead.port()
    );
    let clusters = format!(
        "{}{}",
        cluster("statsd", &[dead], ""),
        cluster("metrics", &[dead], H2)
    );
    let r = Remora::start(&config(&top, u.addr, &clusters)).await;
    traffic(&r, 50).await;
    assert_eq!(r.stat("cluster.backend.upstream_rq_total").await, 50);
    assert_eq!(r.admin_get("/ready").await.unwrap().0, 200);
}

/// A sink's cluster must be one of the bootstrap's static clusters: the error names the field.
#[tokio::test(flavor = "multi_thread")]
async fn a_missing_sink_cluster_is_a_startup_error() {
    let u = upstream("u").await;
    let top = "stats_sinks:\n- name: envoy.stat_sinks.statsd\n  typed_config:\n    \"@type\": type.googleapis.com/envoy.config.metrics.v3.StatsdSink\n    tcp_cluster_name: nope\n";
    let e = Remora::try_start(&config(top, u.addr, ""), &[])
        .await
        .err()
        .expect("refused");
    assert!(
        e.contains("stats_sinks[0].typed_config.tcp_cluster_name") && e.contains("'nope'"),
        "{e}"
    );
}

/// DogStatsD: tag-extracted names with the tags after the value, counter and gauge lines packed
/// into datagrams of `max_bytes_per_datagram`, timers one per datagram.
#[tokio::test(flavor = "multi_thread")]
async fn dog_statsd_sends_tagged_lines_in_packed_datagrams() {
    let u = upstream("u").await;
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    let top = format!(
        "stats_flush_interval: 0.1s\nstats_sinks:\n- name: envoy.stat_sinks.dog_statsd\n  typed_config:\n    \"@type\": type.googleapis.com/envoy.config.metrics.v3.DogStatsdSink\n    address: {{socket_address: {{address: {}, port_value: {}}}}}\n    max_bytes_per_datagram: 1000\n",
        addr.ip(),
        addr.port()
    );
    let r = Remora::start(&config(&top, u.addr, "")).await;
    traffic(&r, 3).await;
    let rq = "envoy.cluster.upstream_rq_total";
    let tagged = |d: &[String]| -> u64 {
        d.iter()
            .flat_map(|d| d.lines())
            .filter_map(|l| {
                l.strip_prefix(&format!("{rq}:"))?
                    .strip_suffix("|c|#envoy.cluster_name:backend")?
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    };
    let live = |d: &[String]| {
        d.iter()
            .flat_map(|d| d.lines())
            .any(|l| l == "envoy.server.live:1|g")
    };
    // The gauge may come in a later datagram of the same flush than the counter.
    let got = datagrams_until(&sock, |d| tagged(d) == 3 && live(d)).await;
    assert!(got.iter().all(|d| d.len() <= 1000), "packed up to the size");
    assert!(
        got.iter().any(|d| d.lines().count() > 1),
        "several lines a datagram"
    );
    assert!(
        got.iter()
            .flat_map(|d| d.lines())
            .any(|l| l == "envoy.server.live:1|g")
    );
    assert!(
        got.iter()
            .any(|d| d.starts_with("envoy.cluster.upstream_rq_time:")
                && d.ends_with("|ms|#envoy.cluster_name:backend")),
        "{got:?}"
    );
}

/// A collector that ends each stream after its first message: the sink opens a new stream on a
/// later flush (after its back-off), and each new stream names the node again.
#[derive(Clone)]
struct OneMessageCollector(mpsc::UnboundedSender<StreamMetricsMessage>);

#[tonic::async_trait]
impl MetricsService for OneMessageCollector {
    async fn stream_metrics(
        &self,
        request: tonic::Request<tonic::Streaming<StreamMetricsMessage>>,
    ) -> Result<tonic::Response<StreamMetricsResponse>, tonic::Status> {
        if let Some(m) = request.into_inner().message().await? {
            let _ = self.0.send(m);
        }
        Ok(tonic::Response::new(StreamMetricsResponse {}))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_service_reopens_a_closed_stream() {
    let u = upstream("u").await;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let maddr = l.local_addr().unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(MetricsServiceServer::new(OneMessageCollector(tx)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
    );
    let top = "stats_flush_interval: 0.05s\nstats_sinks:\n- name: envoy.stat_sinks.metrics_service\n  typed_config:\n    \"@type\": type.googleapis.com/envoy.config.metrics.v3.MetricsServiceConfig\n    grpc_service: {envoy_grpc: {cluster_name: metrics}}\n";
    let _r = Remora::start(&config(top, u.addr, &cluster("metrics", &[maddr], H2))).await;
    for i in 0..3 {
        let m = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("stream {i} did not come"))
            .unwrap();
        assert!(m.identifier.is_some(), "stream {i} starts with the node");
    }
}

/// The TCP statsd sink reconnects when its collector closes the connection.
#[tokio::test(flavor = "multi_thread")]
async fn statsd_tcp_reconnects() {
    let u = upstream("u").await;
    let collector = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let caddr = collector.local_addr().unwrap();
    let top = "stats_flush_interval: 0.05s\nstats_sinks:\n- name: envoy.stat_sinks.statsd\n  typed_config:\n    \"@type\": type.googleapis.com/envoy.config.metrics.v3.StatsdSink\n    tcp_cluster_name: statsd\n";
    let _r = Remora::start(&config(top, u.addr, &cluster("statsd", &[caddr], ""))).await;
    for i in 0..3 {
        let (s, _) = tokio::time::timeout(Duration::from_secs(20), collector.accept())
            .await
            .unwrap_or_else(|_| panic!("connection {i} did not come"))
            .unwrap();
        let mut lines = tokio::io::BufReader::new(s).lines();
        let l = lines.next_line().await.unwrap().unwrap();
        assert!(l.starts_with("envoy."), "{l}");
        // Dropped: the collector goes away; the next flushes find the connection closed.
    }
}
