//! Resilience: circuit breakers (cluster `circuit_breakers.thresholds`) against slow upstreams.

use crate::sources::Source;
use crate::support::*;
use std::time::Duration;

const LOG: &str = r#"          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: RUN_DIR/access.log
              log_format: {text_format_source: {inline_string: "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%\n"}}
"#;

fn proxy_yaml(upstream: std::net::SocketAddr, thresholds: &str) -> String {
    let vhosts = "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {prefix: \"/\"}\n                route: {cluster: backend}\n";
    bootstrap(
        &http_listener("main", LOG, vhosts),
        &cluster(
            "backend",
            &[upstream],
            &format!("    circuit_breakers:\n      thresholds:\n      - {thresholds}\n"),
        ),
    )
}

async fn max_requests_overflows_with_uo_exactly_at_the_threshold(source: Source) {
    let u = upstream("u").await;
    let r = source
        .start(&proxy_yaml(
            u.addr,
            "{priority: DEFAULT, max_requests: 3, track_remaining: true}",
        ))
        .await;
    let addr = r.addr("main");
    assert_eq!(
        r.stat("cluster.backend.circuit_breakers.default.remaining_rq")
            .await,
        3
    );
    // Eight concurrent slow requests: three are admitted, five are refused at once.
    let tasks: Vec<_> = (0..8)
        .map(|_| tokio::spawn(async move { get(addr, "x", "/delay/600").await }))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        r.stat("cluster.backend.circuit_breakers.default.rq_open")
            .await,
        1
    );
    assert_eq!(
        r.stat("cluster.backend.circuit_breakers.default.remaining_rq")
            .await,
        0
    );
    let mut ok = 0;
    let mut overflow = 0;
    for t in tasks {
        let resp = t.await.unwrap();
        match resp.status {
            200 => ok += 1,
            503 => {
                assert_eq!(resp.header("x-envoy-overloaded"), Some("true"));
                assert_eq!(
                    resp.text(),
                    "upstream connect error or disconnect/reset before headers. reset reason: overflow"
                );
                overflow += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!((ok, overflow), (3, 5));
    let log = r.log_lines("access.log", 8).await;
    assert_eq!(
        log.iter()
            .filter(|l| *l == "503 UO upstream_reset_before_response_started{overflow}")
            .count(),
        5,
        "{log:?}"
    );
    let stats = r.stats().await;
    assert_eq!(stats["cluster.backend.upstream_rq_pending_overflow"], 5);
    assert_eq!(stats["cluster.backend.circuit_breakers.default.rq_open"], 0);
    assert_eq!(
        stats["cluster.backend.circuit_breakers.default.remaining_rq"],
        3
    );
    assert_eq!(stats["cluster.backend.upstream_rq_total"], 3);
    // The breaker closed again: the next request goes through.
    assert_eq!(get(addr, "x", "/").await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn max_connections_queues_pending_requests_then_overflows() {
    let u = upstream("u").await;
    let yaml = proxy_yaml(
        u.addr,
        "{max_connections: 1, max_pending_requests: 1, track_remaining: true}",
    );
    // One worker: one HTTP/1.1 pool, so the order of events is deterministic.
    let r = Remora::start_with(&yaml, &["--concurrency", "1"]).await;
    let addr = r.addr("main");
    let first = tokio::spawn(async move { get(addr, "x", "/delay/500").await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        r.stat("cluster.backend.circuit_breakers.default.cx_open")
            .await,
        1
    );
    // The second waits for the first's connection; the third finds the pending queue full.
    let second = tokio::spawn(async move { get(addr, "x", "/").await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        r.stat("cluster.backend.circuit_breakers.default.rq_pending_open")
            .await,
        1
    );
    let third = get(addr, "x", "/").await;
    assert_eq!(third.status, 503);
    assert_eq!(third.header("x-envoy-overloaded"), Some("true"));
    assert_eq!(first.await.unwrap().status, 200);
    let second = second.await.unwrap();
    assert_eq!(
        second.status, 200,
        "the pending request got the pooled connection"
    );
    let stats = r.stats().await;
    assert_eq!(
        stats["cluster.backend.upstream_cx_total"], 1,
        "one connection, reused"
    );
    assert_eq!(stats["cluster.backend.upstream_rq_pending_overflow"], 1);
    assert_eq!(
        stats["cluster.backend.upstream_cx_overflow"], 1,
        "the third found the pending queue full before asking for a connection, as in Envoy"
    );
    assert_eq!(
        stats["cluster.backend.circuit_breakers.default.rq_pending_open"],
        0
    );
    assert_eq!(
        stats["cluster.backend.circuit_breakers.default.remaining_pending"],
        1
    );
    assert_eq!(
        stats["cluster.backend.circuit_breakers.default.cx_open"], 1,
        "the pooled connection stays open"
    );
}

/// `max_pending_requests: 0`: a request that finds no idle connection is pending while its
/// connection is established, so Envoy refuses it (503 UO) without connecting.
#[tokio::test(flavor = "multi_thread")]
async fn max_pending_zero_refuses_a_request_without_an_idle_connection() {
    let u = upstream("u").await;
    let r = Remora::start_with(
        &proxy_yaml(u.addr, "{max_pending_requests: 0}"),
        &["--concurrency", "1"],
    )
    .await;
    let resp = get(r.addr("main"), "x", "/").await;
    assert_eq!(resp.status, 503);
    assert_eq!(resp.header("x-envoy-overloaded"), Some("true"));
    let stats = r.stats().await;
    assert_eq!(stats["cluster.backend.upstream_rq_pending_overflow"], 1);
    assert_eq!(stats["cluster.backend.upstream_cx_total"], 0);
    assert_eq!(u.requests.load(std::sync::atomic::Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn pending_request_connects_when_the_busy_connection_closes() {
    // The first response closes its connection: the waiting request must not wait forever but
    // open a connection of its own.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (upstream, server) = serve_tcp(|mut s| async move {
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
            .await;
    })
    .await;
    let yaml = proxy_yaml(upstream, "{max_connections: 1, max_pending_requests: 5}");
    let r = Remora::start_with(&yaml, &["--concurrency", "1"]).await;
    let addr = r.addr("main");
    let a = tokio::spawn(async move { get(addr, "x", "/").await });
    let b = tokio::spawn(async move { get(addr, "x", "/").await });
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    assert_eq!((a.status, b.status), (200, 200));
    assert_eq!(r.stat("cluster.backend.upstream_cx_total").await, 2);
    server.abort();
}

async fn istio_style_thresholds_and_defaults_in_stats(source: Source) {
    let u = upstream("u").await;
    let r = source.start(&proxy_yaml(
        u.addr,
        "{max_connections: 4294967295, max_pending_requests: 4294967295, max_requests: 4294967295, max_retries: 4294967295, track_remaining: true}",
    ))
    .await;
    assert_eq!(get(r.addr("main"), "x", "/").await.status, 200);
    let stats = r.stats().await;
    for g in [
        "cx_open",
        "cx_pool_open",
        "rq_pending_open",
        "rq_open",
        "rq_retry_open",
    ] {
        assert_eq!(
            stats[&format!("cluster.backend.circuit_breakers.default.{g}")],
            0
        );
        assert_eq!(
            stats[&format!("cluster.backend.circuit_breakers.high.{g}")],
            0
        );
    }
    assert_eq!(
        stats["cluster.backend.circuit_breakers.default.remaining_rq"],
        4294967295
    );
    // Refused by path: what remora does not enforce yet.
    let dir = TempDir::new("cb");
    let path = dir.path("b.yaml");
    std::fs::write(
        &path,
        proxy_yaml(u.addr, "{retry_budget: {budget_interval: 1s}}"),
    )
    .unwrap();
    let (code, _, err) = run(&["--mode", "validate", "-c", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("static_resources.clusters[0].circuit_breakers.thresholds[0].retry_budget.budget_interval: is not supported"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pending_request_times_out_with_the_route_timeout() {
    let u = upstream("u").await;
    let vhosts = "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {prefix: \"/delay/\"}\n                route: {cluster: backend, timeout: 5s}\n              - match: {prefix: \"/\"}\n                route: {cluster: backend, timeout: 0.3s}\n";
    let yaml = bootstrap(
        &http_listener("main", LOG, vhosts),
        &cluster(
            "backend",
            &[u.addr],
            "    circuit_breakers:\n      thresholds:\n      - {max_connections: 1, max_pending_requests: 5}\n",
        ),
    );
    let r = Remora::start_with(&yaml, &["--concurrency", "1"]).await;
    let addr = r.addr("main");
    // The only connection is busy for 800 ms; a request with a 300 ms route timeout waits for
    // it and times out while pending: 504 UT, and the pending slot is given back.
    let first = tokio::spawn(async move { get(addr, "x", "/delay/800").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    let second = get(addr, "x", "/").await;
    assert_eq!(second.status, 504, "{}", second.text());
    assert!(
        started.elapsed() < Duration::from_millis(700),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(first.await.unwrap().status, 200);
    let log = r.log_lines("access.log", 2).await;
    assert!(log.iter().any(|l| l.starts_with("504 UT")), "{log:?}");
    assert_eq!(r.stat("cluster.backend.upstream_rq_timeout").await, 1);
    // After it, the pooled connection serves again.
    assert_eq!(get(addr, "x", "/").await.status, 200);
}

/// An upstream that answers every request 503 (keep-alive), saying who it is.
async fn failing_upstream() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    serve_tcp(|s| async move {
        let svc = hyper::service::service_fn(|_req: http::Request<hyper::body::Incoming>| async {
            Ok::<_, std::convert::Infallible>(
                http::Response::builder()
                    .status(503)
                    .header("x-upstream", "bad")
                    .body(http_body_util::Full::new(bytes::Bytes::from_static(
                        b"down",
                    )))
                    .unwrap(),
            )
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
            .await;
    })
    .await
}

/// Outlier detection: of three hosts, the one answering 503 is ejected after 3 consecutive 5xx
/// (traffic then avoids it, `/clusters` flags it), and returns after its ejection time.
async fn consecutive_5xx_ejects_a_bad_host_until_its_time_is_up(source: Source) {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let (bad, _task) = failing_upstream().await;
    let vhosts = "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {prefix: \"/\"}\n                route: {cluster: backend}\n";
    let yaml = bootstrap(
        &http_listener("main", "", vhosts),
        &cluster(
            "backend",
            &[a.addr, b.addr, bad],
            "    outlier_detection: {consecutive_5xx: 3, interval: 0.2s, base_ejection_time: 1s, max_ejection_percent: 50}\n",
        ),
    );
    let r = source.start_with(&yaml, &["--concurrency", "1"]).await;
    let addr = r.addr("main");
    let mut bad_answers = 0;
    for _ in 0..12 {
        if get(addr, "x", "/").await.status == 503 {
            bad_answers += 1;
        }
    }
    assert_eq!(bad_answers, 3, "ejected after its third 5xx");
    for _ in 0..10 {
        assert_eq!(
            get(addr, "x", "/").await.status,
            200,
            "traffic avoids the ejected host"
        );
    }
    let stats = r.stats().await;
    assert_eq!(
        stats["cluster.backend.outlier_detection.ejections_active"],
        1
    );
    assert_eq!(
        stats["cluster.backend.outlier_detection.ejections_enforced_consecutive_5xx"],
        1
    );
    assert_eq!(
        stats["cluster.backend.outlier_detection.ejections_enforced_total"],
        1
    );
    assert_eq!(stats["cluster.backend.membership_healthy"], 2);
    let (_, clusters) = r.admin_get("/clusters").await.unwrap();
    assert!(
        clusters.contains(&format!(
            "backend::{bad}::health_flags::/failed_outlier_check"
        )),
        "{clusters}"
    );
    // Back after base_ejection_time (checked every interval).
    r.wait_stat("cluster.backend.outlier_detection.ejections_active", 0)
        .await;
    let mut seen_bad = false;
    for _ in 0..6 {
        if get(addr, "x", "/").await.header("x-upstream") == Some("bad") {
            seen_bad = true;
        }
    }
    assert!(seen_bad, "the host is back in rotation");
}

/// When outlier detection has ejected every host, Envoy's panic threshold sends traffic to
/// all of them anyway (the upstream's own answer, not "no healthy upstream").
#[tokio::test(flavor = "multi_thread")]
async fn all_hosts_ejected_means_panic_routing() {
    let (bad1, _t1) = failing_upstream().await;
    let (bad2, _t2) = failing_upstream().await;
    let vhosts = "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {prefix: \"/\"}\n                route: {cluster: backend}\n";
    let yaml = bootstrap(
        &http_listener("main", LOG, vhosts),
        &cluster(
            "backend",
            &[bad1, bad2],
            "    outlier_detection: {consecutive_5xx: 1, interval: 10s, base_ejection_time: 30s, max_ejection_percent: 100}\n",
        ),
    );
    let r = Remora::start_with(&yaml, &["--concurrency", "1"]).await;
    let addr = r.addr("main");
    for _ in 0..2 {
        assert_eq!(get(addr, "x", "/").await.status, 503);
    }
    r.wait_stat("cluster.backend.outlier_detection.ejections_active", 2)
        .await;
    let resp = get(addr, "x", "/").await;
    assert_eq!(resp.status, 503);
    assert_eq!(
        resp.header("x-upstream"),
        Some("bad"),
        "answered by a host, in panic"
    );
    let stats = r.stats().await;
    assert!(stats["cluster.backend.lb_healthy_panic"] >= 1);
    assert_eq!(stats["cluster.backend.membership_healthy"], 0);
    let log = r.log_lines("access.log", 3).await;
    assert!(!log.iter().any(|l| l.contains("UH")), "{log:?}");
}

/// HTTP/2 upstream pools: streams share one connection up to the cluster's
/// `max_concurrent_streams`; beyond it the pool opens another connection.
#[tokio::test(flavor = "multi_thread")]
async fn http2_pools_open_connections_at_max_concurrent_streams() {
    let u = upstream("u").await;
    let vhosts = "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {prefix: \"/\"}\n                route: {cluster: backend}\n";
    // One worker (one pool), HTTP/2 to the upstream with these protocol options.
    let start = |options: String| {
        let yaml = bootstrap(
            &http_listener("main", "", vhosts),
            &cluster(
                "backend",
                &[u.addr],
                &format!(
                    "    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n{options}"
                ),
            ),
        );
        async move { Remora::start_with(&yaml, &["--concurrency", "1"]).await }
    };
    for (streams, want) in [("", 1), ("max_concurrent_streams: 2", 3)] {
        let r = start(format!(
            "        explicit_http_config: {{http2_protocol_options: {{{streams}}}}}\n"
        ))
        .await;
        let addr = r.addr("main");
        let tasks: Vec<_> = (0..6)
            .map(|_| tokio::spawn(async move { get(addr, "x", "/delay/300").await }))
            .collect();
        for t in tasks {
            let resp = t.await.unwrap();
            assert_eq!(resp.status, 200);
            assert_eq!(resp.json()["version"], "HTTP/2.0");
        }
        assert_eq!(
            r.stat("cluster.backend.upstream_cx_http2_total").await,
            want,
            "six concurrent streams, {streams:?}"
        );
    }
    // `max_requests_per_connection` applies to HTTP/2 connections too: 5 requests, 2 per
    // connection, 3 connections.
    let r = start(
        "        common_http_protocol_options: {max_requests_per_connection: 2}\n        explicit_http_config: {http2_protocol_options: {}}\n".into(),
    )
    .await;
    for _ in 0..5 {
        assert_eq!(get(r.addr("main"), "x", "/").await.status, 200);
    }
    let s = r.stats().await;
    assert_eq!(s["cluster.backend.upstream_cx_http2_total"], 3);
    assert_eq!(s["cluster.backend.upstream_cx_max_requests"], 2);
}

/// `max_connection_pools`: a host that would need a new pool beyond the limit gets no request
/// (503 `UH`, `upstream_cx_pool_overflow`), as in Envoy; the host with a pool keeps serving.
#[tokio::test(flavor = "multi_thread")]
async fn max_connection_pools_refuses_a_new_pool() {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let yaml = bootstrap(
        &http_listener(
            "main",
            LOG,
            "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {prefix: \"/\"}\n                route: {cluster: backend}\n",
        ),
        &cluster(
            "backend",
            &[a.addr, b.addr],
            "    circuit_breakers:\n      thresholds:\n      - {max_connection_pools: 1, track_remaining: true}\n",
        ),
    );
    let r = Remora::start_with(&yaml, &["--concurrency", "1"]).await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(get(r.addr("main"), "x", "/").await.status);
    }
    statuses.sort();
    assert_eq!(
        statuses,
        [200, 200, 503, 503],
        "round robin: one host has the only pool"
    );
    let log = r.log_lines("access.log", 4).await;
    assert_eq!(
        log.iter()
            .filter(|l| *l == "503 UH no_healthy_upstream")
            .count(),
        2,
        "{log:?}"
    );
    let s = r.stats().await;
    assert_eq!(s["cluster.backend.upstream_cx_pool_overflow"], 2);
    assert_eq!(
        s["cluster.backend.circuit_breakers.default.cx_pool_open"],
        1
    );
    assert_eq!(
        s["cluster.backend.circuit_breakers.default.remaining_cx_pools"],
        0
    );
}

/// The cluster istiod writes for the mesh's DestinationRule (connectionPool, outlierDetection
/// with consecutive5xxErrors 5 and minHealthPercent 30) plus a TCP health check: from the
/// bootstrap and pushed over CDS (it once crashed the process there), it serves, ejects the
/// failing host on its fifth 5xx and keeps serving from the healthy one.
async fn destination_rule_cluster_serves_and_ejects(source: Source) {
    let good = upstream("good").await;
    let (bad, _task) = failing_upstream().await;
    let vhosts = "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {prefix: \"/\"}\n                route: {cluster: \"outbound|8082||deal-service.autolytiq.svc.cluster.local\"}\n";
    let dr = concat!(
        "    circuit_breakers:\n      thresholds:\n      - {max_connections: 100, max_pending_requests: 100, max_requests: 1000, max_retries: 3, track_remaining: true}\n",
        "    outlier_detection: {consecutive_5xx: 5, consecutive_gateway_failure: 5, interval: 10s, base_ejection_time: 30s, max_ejection_percent: 50, enforcing_consecutive_5xx: 100, enforcing_consecutive_gateway_failure: 100, enforcing_success_rate: 0}\n",
        "    common_lb_config: {healthy_panic_threshold: {value: 30}}\n",
        "    health_checks:\n    - {timeout: 1s, interval: 1s, unhealthy_threshold: 3, healthy_threshold: 1, tcp_health_check: {}}\n",
        "    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        common_http_protocol_options: {max_requests_per_connection: 100}\n        explicit_http_config: {http_protocol_options: {}}\n",
    );
    let name = "outbound|8082||deal-service.autolytiq.svc.cluster.local";
    let yaml = bootstrap(
        &http_listener("main", "", vhosts),
        &cluster(&format!("\"{name}\""), &[good.addr, bad], dr),
    );
    let r = source.start_with(&yaml, &["--concurrency", "1"]).await;
    let stat = |s: &str| format!("cluster.{name}.{s}");
    r.wait_stat(&stat("health_check.healthy"), 2).await;
    let addr = r.addr("main");
    let mut bad_answers = 0;
    for _ in 0..30 {
        if get(addr, "x", "/").await.status == 503 {
            bad_answers += 1;
        }
    }
    assert_eq!(bad_answers, 5, "ejected after its fifth 5xx");
    let s = r.stats().await;
    assert_eq!(s[&stat("outlier_detection.ejections_active")], 1);
    assert_eq!(s[&stat("membership_healthy")], 1);
    assert_eq!(s[&stat("circuit_breakers.default.remaining_rq")], 1000);
    assert_eq!(s[&stat("upstream_rq_200")], 25);
}

crate::across_sources!(
    destination_rule_cluster_serves_and_ejects,
    max_requests_overflows_with_uo_exactly_at_the_threshold,
    istio_style_thresholds_and_defaults_in_stats,
    consecutive_5xx_ejects_a_bad_host_until_its_time_is_up,
);
