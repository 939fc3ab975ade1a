//! The admin API: every endpoint the data-plane core offers.

use crate::support::*;
use std::time::Duration;

async fn proxy() -> (Remora, Upstream) {
    let u = upstream("u").await;
    let vhosts = "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {prefix: \"/\"}\n                route: {cluster: backend}\n";
    let yaml = format!(
        "node: {{id: test-node, cluster: test-cluster}}\n{}",
        bootstrap(
            &http_listener("ingress", "", vhosts),
            &cluster("backend", &[u.addr], "")
        )
    );
    (Remora::start(&yaml).await, u)
}

#[tokio::test(flavor = "multi_thread")]
async fn ready_server_info_help() {
    let (r, _u) = proxy().await;
    assert_eq!(
        r.admin_get("/ready").await.unwrap(),
        (200, "LIVE\n".to_string())
    );
    let (code, body) = r.admin_get("/server_info").await.unwrap();
    assert_eq!(code, 200);
    let j: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(j["state"], "LIVE");
    assert!(j["version"].as_str().unwrap().starts_with("remora/"));
    assert_eq!(j["command_line_options"]["concurrency"], 2);
    assert_eq!(j["node"]["id"], "test-node");
    assert!(j["uptime_current_epoch"].as_str().unwrap().ends_with('s'));
    let (code, help) = r.admin_get("/help").await.unwrap();
    assert_eq!(code, 200);
    assert!(help.contains("/config_dump"));
    assert_eq!(r.admin_get("/nope").await.unwrap().0, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn stats_text_filter_json_and_prometheus() {
    let (r, _u) = proxy().await;
    for _ in 0..3 {
        assert_eq!(get(r.addr("ingress"), "x", "/").await.status, 200);
    }
    r.wait_stat("http.ingress.downstream_rq_2xx", 3).await;
    let s = r.stats().await;
    assert_eq!(s["http.ingress.downstream_rq_total"], 3);
    assert_eq!(s["cluster.backend.upstream_rq_total"], 3);
    assert_eq!(s["cluster.backend.upstream_rq_200"], 3);
    assert_eq!(s["cluster.backend.upstream_rq_2xx"], 3);
    let listener_cx = format!(
        "listener.127.0.0.1_{}.downstream_cx_total",
        r.addr("ingress").port()
    );
    assert_eq!(s[&listener_cx], 3);
    assert_eq!(s["server.live"], 1);
    assert_eq!(s["server.concurrency"], 2);
    assert!(s.contains_key("server.uptime"));
    assert_eq!(s["cluster_manager.active_clusters"], 1);
    assert_eq!(s["listener_manager.total_listeners_active"], 1);

    let (_, text) = r.admin_get("/stats?filter=upstream_rq_2").await.unwrap();
    assert!(text.lines().all(|l| l.contains("upstream_rq_2")), "{text}");
    assert!(text.contains("cluster.backend.upstream_rq_200: 3"));
    let (_, hist) = r
        .admin_get("/stats?filter=cluster.backend.upstream_rq_time$")
        .await
        .unwrap();
    assert!(
        hist.starts_with("cluster.backend.upstream_rq_time: P0("),
        "{hist}"
    );

    let (_, json) = r.admin_get("/stats?format=json").await.unwrap();
    let j: serde_json::Value = serde_json::from_str(&json).unwrap();
    let stats = j["stats"].as_array().unwrap();
    assert!(
        stats
            .iter()
            .any(|s| s["name"] == "http.ingress.downstream_rq_total" && s["value"] == 3)
    );
    let hist = stats
        .iter()
        .find_map(|s| s.get("histograms"))
        .expect("histograms");
    assert_eq!(hist["supported_quantiles"].as_array().unwrap().len(), 10);

    let (code, prom) = r.admin_get("/stats/prometheus").await.unwrap();
    assert_eq!(code, 200);
    assert!(prom.contains("# TYPE envoy_cluster_upstream_rq_total counter\nenvoy_cluster_upstream_rq_total{envoy_cluster_name=\"backend\"} 3\n"), "{prom}");
    assert!(prom.contains("envoy_cluster_upstream_rq{envoy_response_code=\"200\",envoy_cluster_name=\"backend\"} 3"), "{prom}");
    assert!(prom.contains("envoy_http_downstream_rq_xx{envoy_response_code_class=\"2\",envoy_http_conn_manager_prefix=\"ingress\"} 3"), "{prom}");
    assert!(
        prom.contains(
            "envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name=\"backend\",le=\"+Inf\"} 3"
        ),
        "{prom}"
    );
    // Parse it back with the Prometheus project's own client parser.
    let dir = TempDir::new("prom");
    let f = dir.path("metrics.txt");
    std::fs::write(&f, &prom).unwrap();
    let script = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families
fams = list(text_string_to_metric_families(open(sys.argv[1]).read()))
samples = {}
for f in fams:
    for x in f.samples:
        samples.setdefault(x.name, []).append((f.type, x))
rq = samples["envoy_cluster_upstream_rq_total"]
assert rq[0][0] == "counter", rq
s = [x for t, x in rq if x.labels.get("envoy_cluster_name") == "backend"]
assert s and s[0].value == 3, s
h = [f for f in fams if f.name == "envoy_cluster_upstream_rq_time"]
assert h and h[0].type == "histogram", h
count = [x for x in h[0].samples if x.name.endswith("_count")]
assert count[0].value == 3, count
print("families", len(fams))
"#;
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&f)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "prometheus_client could not parse /stats/prometheus: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn clusters_and_listeners() {
    let (r, u) = proxy().await;
    get(r.addr("ingress"), "x", "/").await;
    let (_, text) = r.admin_get("/clusters").await.unwrap();
    assert!(
        text.contains("backend::observability_name::backend"),
        "{text}"
    );
    assert!(
        text.contains(&format!("backend::{}::rq_total::1", u.addr)),
        "{text}"
    );
    assert!(
        text.contains(&format!("backend::{}::health_flags::healthy", u.addr)),
        "{text}"
    );
    let (_, json) = r.admin_get("/clusters?format=json").await.unwrap();
    let j: serde_json::Value = serde_json::from_str(&json).unwrap();
    let c = &j["cluster_statuses"][0];
    assert_eq!(c["name"], "backend");
    let host = &c["host_statuses"][0];
    assert_eq!(
        host["address"]["socket_address"]["port_value"],
        u.addr.port()
    );
    assert_eq!(host["health_status"]["eds_health_status"], "HEALTHY");
    assert!(
        host["stats"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "rq_total" && s["value"] == "1")
    );
    let (_, text) = r.admin_get("/listeners").await.unwrap();
    assert_eq!(text.trim(), format!("ingress::{}", r.addr("ingress")));
}

#[tokio::test(flavor = "multi_thread")]
async fn config_dump_sections_resource_and_mask() {
    let (r, _u) = proxy().await;
    let (_, body) = r.admin_get("/config_dump").await.unwrap();
    let j: serde_json::Value = serde_json::from_str(&body).unwrap();
    let types: Vec<&str> = j["configs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["@type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump",
            "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
            "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
            "type.googleapis.com/envoy.admin.v3.RoutesConfigDump",
            "type.googleapis.com/envoy.admin.v3.SecretsConfigDump",
        ]
    );
    assert_eq!(j["configs"][0]["bootstrap"]["node"]["id"], "test-node");
    let cl = &j["configs"][1]["static_clusters"][0]["cluster"];
    assert_eq!(
        cl["@type"],
        "type.googleapis.com/envoy.config.cluster.v3.Cluster"
    );
    assert_eq!(cl["name"], "backend");
    assert_eq!(cl["connect_timeout"], "1s");
    let l = &j["configs"][2]["static_listeners"][0]["listener"];
    assert_eq!(
        l["filter_chains"][0]["filters"][0]["typed_config"]["@type"],
        "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
    );
    assert_eq!(
        j["configs"][3]["static_route_configs"][0]["route_config"]["name"],
        "ingress_routes"
    );

    let (_, eds) = r.admin_get("/config_dump?include_eds").await.unwrap();
    assert!(eds.contains("envoy.admin.v3.EndpointsConfigDump"));
    // Static endpoints as the priority set holds them, as Envoy dumps them (differential
    // admin/config_dump/include_eds).
    let (_, eds) = r
        .admin_get("/config_dump?include_eds&resource=static_endpoint_configs")
        .await
        .unwrap();
    let j: serde_json::Value = serde_json::from_str(&eds).unwrap();
    let la = &j["configs"][0]["endpoint_config"];
    assert_eq!(la["cluster_name"], "backend");
    assert_eq!(la["policy"]["overprovisioning_factor"], 140);
    let ep = &la["endpoints"][0]["lb_endpoints"][0];
    assert_eq!(ep["health_status"], "HEALTHY");
    assert_eq!(ep["load_balancing_weight"], 1);
    assert!(j["configs"][0].get("last_updated").is_none());
    // name_regex matches whole names; nothing selected is `{}`.
    let (_, none) = r
        .admin_get("/config_dump?resource=static_clusters&name_regex=back")
        .await
        .unwrap();
    assert_eq!(none.trim(), "{}");
    let (_, some) = r
        .admin_get("/config_dump?resource=static_clusters&name_regex=back.*")
        .await
        .unwrap();
    assert!(some.contains("\"backend\""), "{some}");

    let (_, res) = r
        .admin_get("/config_dump?resource=static_clusters")
        .await
        .unwrap();
    let j: serde_json::Value = serde_json::from_str(&res).unwrap();
    assert_eq!(
        j["configs"][0]["@type"],
        "type.googleapis.com/envoy.admin.v3.ClustersConfigDump.StaticCluster"
    );
    assert_eq!(j["configs"][0]["cluster"]["name"], "backend");

    let (_, masked) = r
        .admin_get("/config_dump?resource=static_clusters&mask=cluster.name")
        .await
        .unwrap();
    let j: serde_json::Value = serde_json::from_str(&masked).unwrap();
    // The masked Any keeps its @type, as Envoy's does (differential admin/config_dump/mask).
    assert_eq!(
        j["configs"][0]["cluster"],
        serde_json::json!({"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster", "name": "backend"})
    );

    let (_, boot) = r
        .admin_get("/config_dump?mask=bootstrap.node")
        .await
        .unwrap();
    let j: serde_json::Value = serde_json::from_str(&boot).unwrap();
    assert_eq!(
        j["configs"][0]["bootstrap"],
        serde_json::json!({"node": {"id": "test-node", "cluster": "test-cluster"}})
    );
    assert_eq!(
        r.admin_get("/config_dump?resource=no_such_field")
            .await
            .unwrap(),
        (404, "no_such_field not found in config dump".to_string()),
        "Envoy's words, without a newline"
    );
    // A mask without resource keeps only the dumps its paths fit.
    let (_, masked) = r
        .admin_get("/config_dump?mask=static_clusters")
        .await
        .unwrap();
    let j: serde_json::Value = serde_json::from_str(&masked).unwrap();
    assert_eq!(j["configs"].as_array().unwrap().len(), 1, "{j}");
}

#[tokio::test(flavor = "multi_thread")]
async fn logging_levels_change_at_runtime() {
    let (r, _u) = proxy().await;
    let (code, body) = r.admin_get("/logging?level=debug").await.unwrap();
    assert_eq!(code, 400, "mutations need POST: {body}");
    let (code, body) = r.admin_post("/logging?level=debug").await;
    assert_eq!(code, 200);
    assert!(body.contains("  upstream: debug"), "{body}");
    let (code, body) = r
        .admin_post("/logging?paths=upstream:trace,http:warning")
        .await;
    assert_eq!(code, 200);
    assert!(
        body.contains("  upstream: trace") && body.contains("  http: warning"),
        "{body}"
    );
    let (code, _) = r.admin_post("/logging?router=info").await;
    assert_eq!(code, 200);
    assert_eq!(r.admin_post("/logging?level=nope").await.0, 400);
    let (code, body) = r.admin_get("/logging").await.unwrap();
    assert_eq!(code, 200);
    assert!(body.starts_with("active loggers:\n"));
    // Debug logs now reach stderr.
    get(r.addr("ingress"), "x", "/").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn healthcheck_reset_counters_and_reopen() {
    let (r, _u) = proxy().await;
    assert_eq!(
        r.admin_post("/healthcheck/fail").await,
        (200, "OK\n".to_string())
    );
    assert_eq!(
        r.admin_post("/healthcheck/ok").await,
        (200, "OK\n".to_string())
    );
    get(r.addr("ingress"), "x", "/").await;
    r.wait_stat("http.ingress.downstream_rq_total", 1).await;
    assert_eq!(r.admin_post("/reset_counters").await.0, 200);
    assert_eq!(r.stat("http.ingress.downstream_rq_total").await, 0);
    assert_eq!(r.admin_post("/reopen_logs").await.0, 200);
    assert_eq!(r.admin_get("/runtime").await.unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn drain_listeners_stops_accepting() {
    let (r, _u) = proxy().await;
    let addr = r.addr("ingress");
    assert_eq!(get(addr, "x", "/").await.status, 200);
    assert_eq!(r.admin_post("/drain_listeners").await.0, 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "listener still accepting after drain"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(r.stat("listener_manager.listener_stopped").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn graceful_drain_reports_draining() {
    let (r, _u) = proxy().await;
    // A keep-alive connection open before the drain gets `connection: close` on its next response.
    let mut s = tokio::net::TcpStream::connect(r.addr("ingress"))
        .await
        .unwrap();
    assert_eq!(r.admin_post("/drain_listeners?graceful").await.0, 200);
    assert_eq!(
        r.admin_get("/ready").await.unwrap(),
        (503, "DRAINING\n".to_string())
    );
    tokio::io::AsyncWriteExt::write_all(&mut s, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_end(&mut s, &mut out),
    )
    .await
    .unwrap()
    .unwrap();
    let text = String::from_utf8_lossy(&out).to_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(text.contains("connection: close"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn quitquitquit_exits() {
    let (mut r, _u) = proxy().await;
    assert_eq!(r.admin_post("/quitquitquit").await.0, 200);
    let status = r
        .wait_exit(Duration::from_secs(5))
        .await
        .expect("remora exits");
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn application_log_format_text_json_and_cli() {
    let u = upstream("u").await;
    let base = bootstrap("", &cluster("backend", &[u.addr], ""));
    // The pattern pilot-agent writes, with Envoy's flags.
    let yaml = format!(
        "application_log_config:\n  log_format:\n    text_format: \"%Y-%m-%dT%T.%fZ\\t%l\\tenvoy %n %g:%#\\t%v\\tthread=%t\"\n{base}"
    );
    let r = Remora::start(&yaml).await;
    let err = r.stderr();
    let line = err
        .lines()
        .find(|l| l.contains("admin address"))
        .unwrap_or_else(|| panic!("{err}"));
    let cols: Vec<&str> = line.split('\t').collect();
    assert_eq!(cols.len(), 5, "{line}");
    let tid = cols[4].strip_prefix("thread=").unwrap();
    assert!(tid.parse::<u32>().is_ok(), "{line}");
    assert!(cols[0].ends_with('Z') && cols[0].len() == "2026-11-29T01:32:07.123456Z".len());
    assert_eq!(cols[1], "info");
    assert!(
        cols[2].starts_with("envoy main proxy/src/server.rs:"),
        "{line}"
    );
    assert!(cols[3].starts_with("admin address: 127.0.0.1:"), "{line}");
    drop(r);

    let yaml = format!(
        "application_log_config:\n  log_format:\n    json_format: {{level: \"%l\", logger: \"%n\", msg: \"%j\", src: {{file: \"%s\", line: \"%#\"}}}}\n{base}"
    );
    let r = Remora::start(&yaml).await;
    let err = r.stderr();
    let mut seen = 0;
    for line in err.lines().filter(|l| l.starts_with('{')) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            v["level"].is_string() && v["src"]["file"].is_string(),
            "{line}"
        );
        if v["msg"].as_str().unwrap().starts_with("admin address: ") {
            assert_eq!(v["logger"], "main");
            seen += 1;
        }
    }
    assert_eq!(seen, 1, "{err}");
    drop(r);

    // Envoy: the bootstrap's format and --log-format exclude each other.
    let cfg = TempDir::new("logfmt");
    let path = cfg.path("b.yaml");
    std::fs::write(
        &path,
        format!(
            "application_log_config: {{log_format: {{text_format: \"%v\"}}}}\n{base}\nadmin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}}}\n"
        ),
    )
    .unwrap();
    let (code, _, err) = run(&["-c", path.to_str().unwrap(), "--log-format", "%l %v"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("Only one of ApplicationLogConfig.log_format or CLI option --log-format"),
        "{err}"
    );
    // An unknown flag is refused by path (bootstrap) or by option (CLI).
    std::fs::write(
        &path,
        format!("application_log_config: {{log_format: {{text_format: \"%q\"}}}}\n{base}"),
    )
    .unwrap();
    let (code, _, err) = run(&["--mode", "validate", "-c", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains(
            "application_log_config.log_format.text_format: '%q' is not a supported log format flag"
        ),
        "{err}"
    );
    let (code, _, err) = run(&[
        "--mode",
        "validate",
        "--log-format",
        "[%Z]",
        "-c",
        path.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("--log-format: '%Z' is not a supported"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn log_format_from_the_command_line_and_in_server_info() {
    let u = upstream("u").await;
    let vhosts = "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {prefix: \"/\"}\n                route: {cluster: backend}\n";
    let yaml = bootstrap(
        &http_listener("ingress", "", vhosts),
        &cluster("backend", &[u.addr], ""),
    );
    let r = Remora::start_with(
        &yaml,
        &["--log-format", "<%L|%n> %v", "--log-format-escaped"],
    )
    .await;
    let err = r.stderr();
    assert!(
        err.lines()
            .any(|l| l.starts_with("<I|main> admin address: ")),
        "{err}"
    );
    let (_, body) = r.admin_get("/server_info").await.unwrap();
    let j: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(j["command_line_options"]["log_format"], "<%L|%n> %v");
    assert_eq!(j["command_line_options"]["log_format_escaped"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn deferred_cluster_traffic_stats() {
    let u = upstream("u").await;
    let vhosts = "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {prefix: \"/\"}\n                route: {cluster: backend}\n";
    let yaml = format!(
        "deferred_stat_options: {{enable_deferred_creation_stats: true}}\n{}",
        bootstrap(
            &http_listener("ingress", "", vhosts),
            &format!(
                "{}{}",
                cluster("backend", &[u.addr], ""),
                cluster("idle", &[u.addr], "")
            )
        )
    );
    let r = Remora::start(&yaml).await;
    let stats = r.stats().await;
    assert_eq!(stats["cluster.backend.ClusterTrafficStats.initialized"], 0);
    assert!(!stats.contains_key("cluster.backend.upstream_cx_total"));
    assert_eq!(stats["cluster.backend.membership_total"], 1);
    assert_eq!(get(r.addr("ingress"), "x", "/").await.status, 200);
    r.wait_stat("cluster.backend.upstream_rq_total", 1).await;
    let stats = r.stats().await;
    assert_eq!(stats["cluster.backend.ClusterTrafficStats.initialized"], 1);
    assert_eq!(stats["cluster.backend.upstream_cx_total"], 1);
    assert_eq!(stats["cluster.backend.upstream_rq_200"], 1);
    // A cluster nobody used still has none.
    assert_eq!(stats["cluster.idle.ClusterTrafficStats.initialized"], 0);
    assert!(!stats.contains_key("cluster.idle.upstream_rq_total"));
}
