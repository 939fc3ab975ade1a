//! Upstream behaviour: failure flags (UF, UH, UT, UC, NC), load balancing, priority failover,
//! DNS clusters, and pooled connections closed by the upstream.

use crate::support::*;
use std::collections::HashMap;
use std::time::Duration;

fn vhost_to(cluster: &str, extra: &str) -> String {
    format!(
        "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {{prefix: \"/\"}}\n                route: {{cluster: {cluster}{extra}}}\n"
    )
}

const LOG: &str = r#"          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: ACCESS_LOG
              log_format: {text_format_source: {inline_string: "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %UPSTREAM_HOST%\n"}}
"#;

async fn start_logged(listeners: String, clusters: String) -> Remora {
    Remora::start(&bootstrap(
        &listeners.replace("ACCESS_LOG", "RUN_DIR/access.log"),
        &clusters,
    ))
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_refused_is_503_uf() {
    let dead = closed_port();
    let r = start_logged(
        http_listener("main", LOG, &vhost_to("dead", "")),
        cluster("dead", &[dead], ""),
    )
    .await;
    let resp = get(r.addr("main"), "x", "/").await;
    assert_eq!(resp.status, 503);
    assert_eq!(
        resp.text(),
        "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure"
    );
    let log = r.log_lines("access.log", 1).await;
    assert_eq!(
        log[0],
        format!(
            "503 UF upstream_reset_before_response_started{{remote_connection_failure|delayed_connect_error:_Connection_refused}} {dead}"
        )
    );
    let s = r.stats().await;
    assert_eq!(s["cluster.dead.upstream_cx_connect_fail"], 1);
    assert_eq!(s["cluster.dead.upstream_rq_503"], 1);
    assert_eq!(s["http.main.downstream_rq_5xx"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn no_hosts_is_503_uh() {
    let empty = "  - name: empty\n    type: STATIC\n    load_assignment: {cluster_name: empty, endpoints: []}\n";
    let r = start_logged(
        http_listener("main", LOG, &vhost_to("empty", "")),
        empty.to_string(),
    )
    .await;
    let resp = get(r.addr("main"), "x", "/").await;
    assert_eq!(
        (resp.status, resp.text().as_str()),
        (503, "no healthy upstream")
    );
    assert_eq!(
        r.log_lines("access.log", 1).await[0],
        "503 UH no_healthy_upstream -"
    );
    assert_eq!(r.stat("cluster.empty.upstream_cx_none_healthy").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_upstream_is_504_ut() {
    let u = upstream("slow").await;
    // The client is trusted (internal) so that its x-envoy-upstream-rq-timeout-ms counts: in
    // Envoy 1.40 that takes internal_address_config.
    let trusted = format!(
        "{LOG}          use_remote_address: true\n          internal_address_config: {{cidr_ranges: [{{address_prefix: 127.0.0.1, prefix_len: 32}}]}}\n"
    );
    let r = start_logged(
        http_listener("main", &trusted, &vhost_to("slow", ", timeout: 0.3s")),
        cluster("slow", &[u.addr], ""),
    )
    .await;
    let started = std::time::Instant::now();
    let resp = get(r.addr("main"), "x", "/delay/3000").await;
    assert_eq!(
        (resp.status, resp.text().as_str()),
        (504, "upstream request timeout")
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(
        r.log_lines("access.log", 1).await[0],
        format!("504 UT response_timeout {}", u.addr)
    );
    assert_eq!(r.stat("cluster.slow.upstream_rq_timeout").await, 1);
    // x-envoy-upstream-rq-timeout-ms overrides the route timeout.
    let resp = get_with(
        r.addr("main"),
        "x",
        "/delay/400",
        &[("x-envoy-upstream-rq-timeout-ms", "3000")],
    )
    .await;
    assert_eq!(resp.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_closing_without_response_is_503_uc() {
    let (addr, _t) = closing_upstream().await;
    let r = start_logged(
        http_listener("main", LOG, &vhost_to("closer", "")),
        cluster("closer", &[addr], ""),
    )
    .await;
    let resp = get(r.addr("main"), "x", "/").await;
    assert_eq!(resp.status, 503);
    assert!(
        resp.text().contains("reset reason: connection termination"),
        "{}",
        resp.text()
    );
    assert_eq!(
        r.log_lines("access.log", 1).await[0],
        format!("503 UC upstream_reset_before_response_started{{connection_termination}} {addr}")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_cluster_header_is_nc() {
    let u = upstream("a").await;
    let vh = "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {prefix: \"/\"}\n                route: {cluster_header: x-cluster, cluster_not_found_response_code: NOT_FOUND}\n";
    let r = start_logged(http_listener("main", LOG, vh), cluster("a", &[u.addr], "")).await;
    assert_eq!(
        get_with(r.addr("main"), "x", "/", &[("x-cluster", "a")])
            .await
            .status,
        200
    );
    assert_eq!(
        get_with(r.addr("main"), "x", "/", &[("x-cluster", "zzz")])
            .await
            .status,
        404
    );
    assert_eq!(
        r.log_lines("access.log", 2).await[1],
        "404 NC cluster_not_found -"
    );
    assert_eq!(r.stat("http.main.no_cluster").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn round_robin_spreads_evenly() {
    let ups = [
        upstream("u0").await,
        upstream("u1").await,
        upstream("u2").await,
    ];
    let addrs: Vec<_> = ups.iter().map(|u| u.addr).collect();
    let r = Remora::start_with(
        &bootstrap(
            &http_listener("main", "", &vhost_to("rr", "")),
            &cluster("rr", &addrs, "    lb_policy: ROUND_ROBIN\n"),
        ),
        &["--concurrency", "1"],
    )
    .await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..30 {
        let resp = get(r.addr("main"), "x", "/").await;
        *counts
            .entry(resp.header("x-upstream").unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(counts.values().all(|c| *c == 10), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn priority_failover_and_random_lb() {
    let p0 = upstream("p0").await;
    let p1 = upstream("p1").await;
    // P0's only host is marked unhealthy by EDS health status: all traffic goes to P1.
    let c = format!(
        "  - name: prio\n    type: STATIC\n    lb_policy: RANDOM\n    common_lb_config: {{healthy_panic_threshold: {{value: 0}}}}\n    load_assignment:\n      cluster_name: prio\n      endpoints:\n      - priority: 0\n        lb_endpoints:\n        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}}}\n          health_status: UNHEALTHY\n      - priority: 1\n        lb_endpoints:\n        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}}}\n",
        p0.addr.port(),
        p1.addr.port()
    );
    let r = Remora::start(&bootstrap(
        &http_listener("main", "", &vhost_to("prio", "")),
        &c,
    ))
    .await;
    for _ in 0..20 {
        assert_eq!(
            get(r.addr("main"), "x", "/").await.header("x-upstream"),
            Some("p1")
        );
    }
    let (_, clusters) = r.admin_get("/clusters").await.unwrap();
    assert!(
        clusters.contains(&format!(
            "prio::{}::health_flags::/failed_eds_health",
            p0.addr
        )),
        "{clusters}"
    );
    assert!(
        clusters.contains(&format!("prio::{}::priority::1", p1.addr)),
        "{clusters}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn strict_dns_cluster_resolves_localhost() {
    let u = upstream("dns").await;
    let c = format!(
        "  - name: dns\n    type: STRICT_DNS\n    dns_lookup_family: V4_ONLY\n    load_assignment:\n      cluster_name: dns\n      endpoints:\n      - lb_endpoints:\n        - endpoint: {{address: {{socket_address: {{address: localhost, port_value: {}}}}}}}\n",
        u.addr.port()
    );
    let r = Remora::start(&bootstrap(
        &http_listener("main", "", &vhost_to("dns", ", auto_host_rewrite: true")),
        &c,
    ))
    .await;
    let resp = get(r.addr("main"), "x", "/").await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()["headers"]["host"], "localhost");
    let s = r.stats().await;
    assert!(s["cluster.dns.update_success"] >= 1);
    assert_eq!(s["cluster.dns.membership_total"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn pooled_connection_closed_by_upstream_is_not_reused() {
    // A raw upstream that answers one request per connection, advertising keep-alive, then
    // closes: the classic 503 UC race if a proxy reuses the dead connection.
    let addr = one_answer_per_connection(Some(Duration::from_millis(20))).await;
    let r = Remora::start_with(
        &bootstrap(
            &http_listener("main", "", &vhost_to("flaky", "")),
            &cluster("flaky", &[addr], ""),
        ),
        &["--concurrency", "1"],
    )
    .await;
    for _ in 0..20 {
        let resp = get(r.addr("main"), "x", "/").await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
}

/// A STRICT_DNS cluster with `respect_dns_ttl` and its resolver at a DNS server of the test
/// (`typed_dns_resolver_config`): the name's address changes after the first answer, whose
/// TTL is 1s; with a refresh rate of an hour, remora still follows the change, at the TTL.
#[tokio::test(flavor = "multi_thread")]
async fn strict_dns_follows_the_answer_ttl() {
    let (dns, asked) = dns_server(|name, nth| match name {
        "svc.remora.test" if nth == 1 => Some(([127, 0, 0, 1], 1)),
        "svc.remora.test" => Some(([127, 0, 0, 2], 3600)),
        _ => None,
    })
    .await;
    let c = format!(
        "  - name: dns
    type: STRICT_DNS
    dns_lookup_family: V4_ONLY
    dns_refresh_rate: 3600s
    respect_dns_ttl: true
    typed_dns_resolver_config:
      name: envoy.network.dns_resolver.cares
      typed_config:
        '@type': type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig
        resolvers: [{{socket_address: {{address: 127.0.0.1, port_value: {}}}}}]
        dns_resolver_options: {{no_default_search_domain: true}}
    load_assignment:
      cluster_name: dns
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: svc.remora.test, port_value: 8080}}}}}}
",
        dns.port()
    );
    let r = Remora::start(&bootstrap(
        &http_listener("main", "", &vhost_to("dns", "")),
        &c,
    ))
    .await;
    r.wait_stat("cluster.dns.update_success", 2).await;
    let (_, clusters) = r.admin_get("/clusters").await.unwrap();
    assert!(
        clusters.contains("dns::127.0.0.2:8080::cx_active"),
        "{clusters}"
    );
    assert!(!clusters.contains("dns::127.0.0.1:8080"), "{clusters}");
    let s = r.stats().await;
    assert_eq!(s["cluster.dns.membership_total"], 1);
    assert_eq!(s["cluster.dns.update_failure"], 0);
    assert_eq!(
        *asked.lock().unwrap(),
        ["svc.remora.test", "svc.remora.test"]
    );
}
