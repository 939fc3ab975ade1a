//! Active health checks (cluster `health_checks`): HTTP, TCP and gRPC checkers against hosts
//! that pass, fail and recover on command; traffic follows the hosts' health.

use crate::sources::Source;
use crate::support::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// An HTTP/1.1 host answering 200 (or 503 while `up` is false), saying who it is; counts the
/// health-check requests it gets (those with `user-agent: Envoy/HC`).
struct Toggle {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    checks: Arc<AtomicUsize>,
    /// The host header of the last health check.
    hc_host: Arc<std::sync::Mutex<String>>,
    _task: tokio::task::JoinHandle<()>,
}

async fn toggle(name: &'static str, up: bool) -> Toggle {
    let up = Arc::new(AtomicBool::new(up));
    let checks = Arc::new(AtomicUsize::new(0));
    let hc_host = Arc::new(std::sync::Mutex::new(String::new()));
    let (up2, checks2, hc_host2) = (up.clone(), checks.clone(), hc_host.clone());
    let (addr, task) = serve_tcp(move |s| {
        let (up, checks, hc_host) = (up2.clone(), checks2.clone(), hc_host2.clone());
        async move {
            let svc =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let hc = req
                        .headers()
                        .get("user-agent")
                        .is_some_and(|v| v == "Envoy/HC");
                    if hc {
                        checks.fetch_add(1, Ordering::Relaxed);
                        *hc_host.lock().unwrap() = format!(
                            "{} {}",
                            req.headers()["host"].to_str().unwrap(),
                            req.uri().path()
                        );
                    }
                    let status = if up.load(Ordering::Relaxed) { 200 } else { 503 };
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            http::Response::builder()
                                .status(status)
                                .header("x-upstream", name)
                                .body(Full::new(Bytes::from_static(b"ok")))
                                .unwrap(),
                        )
                    }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                .await;
        }
    })
    .await;
    Toggle {
        addr,
        up,
        checks,
        hc_host,
        _task: task,
    }
}

fn proxy(hosts: &[SocketAddr], health_check: &str) -> String {
    let vhosts = "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {prefix: \"/\"}\n                route: {cluster: backend}\n";
    bootstrap(
        &http_listener("main", "", vhosts),
        &cluster(
            "backend",
            hosts,
            &format!("    health_checks:\n    - {health_check}\n"),
        ),
    )
}

async fn flags(r: &Remora, addr: SocketAddr) -> String {
    let (_, text) = r.admin_get("/clusters").await.unwrap();
    let key = format!("backend::{addr}::health_flags::");
    text.lines()
        .find_map(|l| l.strip_prefix(&key))
        .unwrap_or_else(|| panic!("{key} not in {text}"))
        .to_string()
}

async fn wait_flags(r: &Remora, addr: SocketAddr, want: &str) {
    for _ in 0..100 {
        if flags(r, addr).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{addr}: health_flags {} (wanted {want})",
        flags(r, addr).await
    );
}

async fn spread(r: &Remora, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        let resp = get(r.addr("main"), "x", "/").await;
        out.push(resp.header("x-upstream").unwrap_or("?").to_string());
    }
    out
}

async fn http_checks_steer_traffic_away_from_a_failing_host_and_back(source: Source) {
    let good = toggle("good", true).await;
    let bad = toggle("bad", false).await;
    let r = source.start(&proxy(
        &[good.addr, bad.addr],
        "{timeout: 1s, interval: 0.1s, no_traffic_interval: 0.1s, unhealthy_threshold: 2, healthy_threshold: 2, http_health_check: {path: /healthz}}",
    ))
    .await;
    // A 503 is a definite answer: the bad host fails on its first check.
    wait_flags(&r, bad.addr, "/failed_active_hc").await;
    wait_flags(&r, good.addr, "healthy").await;
    assert_eq!(r.stat("cluster.backend.health_check.healthy").await, 1);
    assert!(spread(&r, 10).await.iter().all(|u| u == "good"));
    // The bad host recovers: after two passing checks it takes traffic again.
    bad.up.store(true, Ordering::Relaxed);
    wait_flags(&r, bad.addr, "healthy").await;
    assert_eq!(r.stat("cluster.backend.health_check.healthy").await, 2);
    let hosts = spread(&r, 10).await;
    assert!(hosts.iter().any(|u| u == "bad") && hosts.iter().any(|u| u == "good"));
    // Both fail: panic routing still reaches them (no UH).
    good.up.store(false, Ordering::Relaxed);
    bad.up.store(false, Ordering::Relaxed);
    wait_flags(&r, good.addr, "/failed_active_hc").await;
    wait_flags(&r, bad.addr, "/failed_active_hc").await;
    assert_eq!(get(r.addr("main"), "x", "/").await.status, 503);
    let s = r.stats().await;
    assert!(s["cluster.backend.lb_healthy_panic"] >= 1);
    assert!(s["cluster.backend.health_check.attempt"] >= 6);
    assert!(s["cluster.backend.health_check.failure"] >= 3);
    assert!(s["cluster.backend.health_check.success"] >= 3);
    assert_eq!(s["cluster.backend.membership_healthy"], 0);
    assert!(good.checks.load(Ordering::Relaxed) >= 2);
    assert_eq!(*good.hc_host.lock().unwrap(), "backend /healthz");
}

/// An endpoint's `health_check_config`: checked on another port with its own host header, or
/// not checked at all.
#[tokio::test(flavor = "multi_thread")]
async fn endpoint_health_check_config_port_hostname_and_disable() {
    let serving = toggle("serving", true).await;
    let checked = toggle("checked", false).await;
    let unchecked = toggle("unchecked", true).await;
    let hc = "{timeout: 1s, interval: 0.1s, no_traffic_interval: 0.1s, unhealthy_threshold: 1, healthy_threshold: 1, http_health_check: {path: /healthz}}";
    let yaml = bootstrap(
        &http_listener(
            "main",
            "",
            "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {prefix: \"/\"}\n                route: {cluster: backend}\n",
        ),
        &format!(
            "  - name: backend\n    type: STATIC\n    connect_timeout: 1s\n    health_checks:\n    - {hc}\n    load_assignment:\n      cluster_name: backend\n      endpoints:\n      - lb_endpoints:\n        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}, health_check_config: {{port_value: {}, hostname: hc.example}}}}\n        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}, health_check_config: {{disable_active_health_check: true}}}}\n",
            serving.addr.port(),
            checked.addr.port(),
            unchecked.addr.port()
        ),
    );
    let r = Remora::start(&yaml).await;
    // The serving port answers 200, but the checked port says 503: the host fails.
    wait_flags(&r, serving.addr, "/failed_active_hc").await;
    assert_eq!(serving.checks.load(Ordering::Relaxed), 0);
    assert_eq!(*checked.hc_host.lock().unwrap(), "hc.example /healthz");
    // Never checked, never pending: healthy from the start.
    assert_eq!(flags(&r, unchecked.addr).await, "healthy");
    assert_eq!(unchecked.checks.load(Ordering::Relaxed), 0);
    assert!(spread(&r, 4).await.iter().all(|u| u == "unchecked"));
}

/// A host that stops accepting connections is failed after `unhealthy_threshold` network
/// failures in a row (not at the first), and `/clusters?format=json` says so.
#[tokio::test(flavor = "multi_thread")]
async fn a_host_that_dies_fails_after_the_unhealthy_threshold() {
    let good = toggle("good", true).await;
    let (dying, accept_loop) = tcp_echo().await;
    let r = Remora::start(&proxy(
        &[good.addr, dying],
        "{timeout: 0.5s, interval: 0.1s, no_traffic_interval: 0.1s, unhealthy_threshold: 3, healthy_threshold: 1, reuse_connection: false, tcp_health_check: {}}",
    ))
    .await;
    wait_flags(&r, dying, "healthy").await;
    accept_loop.abort();
    wait_flags(&r, dying, "/failed_active_hc").await;
    let s = r.stats().await;
    assert!(
        s["cluster.backend.health_check.network_failure"] >= 3,
        "failed only after three refused connections: {}",
        s["cluster.backend.health_check.network_failure"]
    );
    let (_, json) = r.admin_get("/clusters?format=json").await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let hosts = v["cluster_statuses"][0]["host_statuses"]
        .as_array()
        .unwrap();
    let status = hosts
        .iter()
        .find(|h| h["address"]["socket_address"]["port_value"] == dying.port())
        .unwrap();
    assert_eq!(status["health_status"]["failed_active_health_check"], true);
    assert!(spread(&r, 5).await.iter().all(|u| u == "good"));
}

async fn tcp_checks_send_and_match_payloads(source: Source) {
    let (echo, _t) = tcp_echo().await;
    // A server that answers anything with "NOPE".
    let (nope, _t2) = serve_tcp(|mut s| async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = [0u8; 64];
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 || s.write_all(b"NOPE").await.is_err() {
                break;
            }
        }
    })
    .await;
    // "PING" in hex; the echo answers it, the other host does not.
    let r = source.start(&proxy(
        &[echo, nope],
        "{timeout: 0.3s, interval: 0.1s, no_traffic_interval: 0.1s, unhealthy_threshold: 1, healthy_threshold: 1, tcp_health_check: {send: {text: '50494e47'}, receive: [{text: '50494e47'}]}}",
    ))
    .await;
    wait_flags(&r, echo, "healthy").await;
    wait_flags(&r, nope, "/failed_active_hc").await;
}

/// A gRPC health server: `grpc.health.v1.Health/Check` answers SERVING for service "ok",
/// NOT_SERVING for anything else.
async fn grpc_health_server() -> SocketAddr {
    let (addr, _) = serve_tcp(|s| async move {
        let svc =
            hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                assert_eq!(req.uri().path(), "/grpc.health.v1.Health/Check");
                let body = req.into_body().collect().await.unwrap().to_bytes();
                // HealthCheckRequest { service = 1 }: frame header, tag, length, name.
                let service = body.get(7..).unwrap_or_default();
                let status = if service == b"ok" { 1u8 } else { 2 };
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", "0".parse().unwrap());
                let frames = vec![
                    Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from(vec![
                        0, 0, 0, 0, 2, 0x08, status,
                    ]))),
                    Ok(http_body::Frame::trailers(trailers)),
                ];
                Ok::<_, std::convert::Infallible>(
                    http::Response::builder()
                        .header("content-type", "application/grpc")
                        .body(http_body_util::StreamBody::new(futures_util::stream::iter(
                            frames,
                        )))
                        .unwrap(),
                )
            });
        let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
            .await;
    })
    .await;
    addr
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_checks_follow_the_serving_status() {
    let server = grpc_health_server().await;
    let hc = |service: &str| {
        format!(
            "{{timeout: 1s, interval: 0.1s, no_traffic_interval: 0.1s, unhealthy_threshold: 1, healthy_threshold: 1, grpc_health_check: {{service_name: {service}}}}}"
        )
    };
    let r = Remora::start(&proxy(&[server], &hc("ok"))).await;
    wait_flags(&r, server, "healthy").await;
    let r = Remora::start(&proxy(&[server], &hc("other"))).await;
    wait_flags(&r, server, "/failed_active_hc").await;
}

/// Envoy checks a cluster that has carried no traffic at `no_traffic_interval` (60 s by
/// default), not at `interval`; once it carries traffic, `interval` applies.
#[tokio::test(flavor = "multi_thread")]
async fn no_traffic_interval_until_the_cluster_carries_traffic() {
    let good = toggle("good", true).await;
    let r = Remora::start(&proxy(
        &[good.addr],
        "{timeout: 1s, interval: 0.1s, no_traffic_interval: 1s, unhealthy_threshold: 1, healthy_threshold: 1, http_health_check: {path: /healthz}}",
    ))
    .await;
    wait_flags(&r, good.addr, "healthy").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        good.checks.load(Ordering::Relaxed),
        1,
        "one check, then the no-traffic interval"
    );
    // Health-check connections are not the cluster's traffic.
    assert_eq!(r.stat("cluster.backend.upstream_cx_total").await, 0);
    assert_eq!(get(r.addr("main"), "x", "/").await.status, 200);
    // The check already scheduled comes at 1 s; after it, one every 0.1 s.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let n = good.checks.load(Ordering::Relaxed);
    assert!(n >= 4, "{n} checks");
}

crate::across_sources!(
    http_checks_steer_traffic_away_from_a_failing_host_and_back,
    tcp_checks_send_and_match_payloads,
);
