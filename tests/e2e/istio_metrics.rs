//! Istio's standard metrics (`istio.stats`) through two remoras, a client sidecar (outbound)
//! and a server sidecar (inbound), with the node metadata and the expected series of
//! istio/proxy's own e2e fixtures (tests/data/istio-metrics, copied from istio/proxy
//! `testdata/`). Every scrape is checked with `promtool check metrics`.

use crate::support::*;
use std::collections::HashMap;
use std::path::PathBuf;

fn data(rel: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/data/istio-metrics")
        .join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The subset of Go templates the fixtures use, line by line: `{{ .Vars.X }}`,
/// `{{- if .Vars.X }}`, `{{- if eq .Vars.X "v" }}`, `{{- else if .Vars.X }}`, `{{- else }}`,
/// `{{- end }}` (a variable is true when set and not empty).
fn render(tmpl: &str, vars: &HashMap<&str, &str>) -> String {
    let var = |s: &str| -> String {
        let name = s.trim().trim_start_matches(".Vars.").trim();
        vars.get(name).copied().unwrap_or("").to_string()
    };
    let cond = |c: &str| -> bool {
        let c = c.trim();
        if let Some(rest) = c.strip_prefix("eq ") {
            let (v, want) = rest.split_once(' ').unwrap();
            var(v) == want.trim().trim_matches('"')
        } else {
            !var(c).is_empty()
        }
    };
    // Stack of (this branch is taken, a branch was taken).
    let mut stack: Vec<(bool, bool)> = Vec::new();
    let mut out = String::new();
    for line in tmpl.lines() {
        let t = line.trim();
        let inner = t
            .strip_prefix("{{-")
            .or_else(|| t.strip_prefix("{{"))
            .and_then(|s| s.strip_suffix("}}"))
            .map(str::trim);
        match inner {
            Some(i) if i.starts_with("if ") => {
                let c = cond(&i[3..]);
                stack.push((c, c));
                continue;
            }
            Some(i) if i.starts_with("else if ") => {
                let top = stack.last_mut().unwrap();
                let c = !top.1 && cond(&i[8..]);
                *top = (c, top.1 || c);
                continue;
            }
            Some("else") => {
                let top = stack.last_mut().unwrap();
                *top = (!top.1, true);
                continue;
            }
            Some("end") => {
                stack.pop();
                continue;
            }
            _ => {}
        }
        if stack.iter().any(|(on, _)| !on) {
            continue;
        }
        let mut l = line.to_string();
        while let Some(a) = l.find("{{") {
            let b = l[a..].find("}}").unwrap() + a;
            let v = var(&l[a + 2..b]);
            l.replace_range(a..b + 2, &v);
        }
        out.push_str(&l);
        out.push('\n');
    }
    out
}

/// Samples: (labels in order, value).
type Samples = Vec<(Vec<(String, String)>, String)>;

/// An expected family from a rendered fixture: its name and (labels in order, value) per
/// sample.
fn expected(yaml: &str) -> (String, Samples) {
    let mut name = String::new();
    let mut samples: Samples = Vec::new();
    let mut label: Option<String> = None;
    let unquote = |s: &str| s.trim().trim_matches('"').to_string();
    for line in yaml.lines() {
        let t = line.trim();
        if let Some(n) = t.strip_prefix("name: ").filter(|_| !line.starts_with(' ')) {
            name = n.trim().into();
        } else if t.starts_with("- counter:") || t.starts_with("- gauge:") {
            samples.push((Vec::new(), String::new()));
        } else if let Some(v) = t.strip_prefix("value: ")
            && samples
                .last()
                .is_some_and(|s| s.1.is_empty() && s.0.is_empty() && label.is_none())
        {
            samples.last_mut().unwrap().1 = unquote(v);
        } else if let Some(n) = t.strip_prefix("- name: ") {
            label = Some(n.trim().into());
        } else if let Some(v) = t.strip_prefix("value:")
            && let Some(l) = label.take()
        {
            samples.last_mut().unwrap().0.push((l, unquote(v)));
        }
    }
    (name, samples)
}

/// The samples of a family in a scrape: labels in their order, and the value.
fn scraped(text: &str, family: &str) -> Samples {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(family) else {
            continue;
        };
        let Some(rest) = rest.strip_prefix('{') else {
            continue;
        };
        let (labels, value) = rest.rsplit_once("} ").unwrap();
        let mut ls = Vec::new();
        let mut s = labels;
        while !s.is_empty() {
            let (k, r) = s.split_once("=\"").unwrap();
            let end = r.find('"').unwrap();
            ls.push((k.to_string(), r[..end].to_string()));
            s = r[end + 1..].trim_start_matches(',');
        }
        out.push((ls, value.to_string()));
    }
    out
}

/// `promtool check metrics` on a scrape: skipped (loudly) without promtool, unless required.
fn promtool_check(text: &str) {
    use std::io::Write;
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            // The house rule for interop tools (tls.rs `have`): .ci/run installs promtool and
            // sets REMORA_REQUIRE_INTEROP (or CI), where a missing tool fails.
            assert!(
                std::env::var_os("REMORA_REQUIRE_INTEROP").is_none()
                    && std::env::var_os("CI").is_none(),
                "promtool is required (REMORA_REQUIRE_INTEROP or CI is set): {e}"
            );
            eprintln!("SKIPPED: promtool is not installed ({e}); .ci/run installs it");
            return;
        }
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let msg =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    // promtool also lints (exit 3 with "no help text", "use base unit", … lines, which
    // Envoy's own families get too and Istio's fixed names cannot avoid); a format error
    // exits 1.
    assert!(
        matches!(out.status.code(), Some(0 | 3)) && !msg.contains("parsing error"),
        "promtool check metrics: {msg}"
    );
    eprintln!("promtool check metrics: format ok");
}

fn node_metadata(tmpl: &str) -> String {
    let json = format!("{{{}}}", render(&data(tmpl), &HashMap::new()));
    let v: serde_json::Value = serde_json::from_str(&json).expect("node metadata is JSON");
    v.to_string()
}

const PEER_METADATA: &str = "type.googleapis.com/io.istio.http.peer_metadata.Config";

fn sidecar(
    node: &str,
    direction: &str,
    (mx, stats): (&str, &str),
    cluster_name: &str,
    cluster_extra: &str,
    to: std::net::SocketAddr,
    chain_extra: &str,
) -> String {
    format!(
        r#"node: {{id: "sidecar~10.0.0.1~{direction}.default~default.svc.cluster.local", cluster: c, metadata: {node}}}
static_resources:
  listeners:
  - name: l
    traffic_direction: {direction}
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: l
          route_config:
            name: r
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: /}}
                route: {{cluster: "{cluster_name}"}}
          http_filters:
          - name: istio.metadata_exchange
            typed_config:
              "@type": type.googleapis.com/udpa.type.v1.TypedStruct
              type_url: {PEER_METADATA}
              value: {mx}
          - name: istio.stats
            typed_config:
              "@type": type.googleapis.com/udpa.type.v1.TypedStruct
              type_url: type.googleapis.com/stats.PluginConfig
              value: {stats}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
{chain_extra}  clusters:
{}"#,
        cluster(&format!("\"{cluster_name}\""), &[to], cluster_extra)
    )
}

const ISTIO_SERVICE: &str = "    metadata:\n      filter_metadata:\n        istio:\n          services: [{host: server.default.svc.cluster.local, name: server, namespace: default}]\n";

/// Client and server sidecars in front of an app; `n` requests through both.
async fn two_sidecars(
    client_stats: &str,
    server_stats: &str,
    client_cluster_extra: &str,
    n: usize,
) -> (String, String) {
    two_sidecars_tls(client_stats, server_stats, client_cluster_extra, n, None).await
}

/// [`two_sidecars`], with the hop between them over mTLS when `tls` gives (server chain
/// transport socket, client cluster transport socket).
async fn two_sidecars_tls(
    client_stats: &str,
    server_stats: &str,
    client_cluster_extra: &str,
    n: usize,
    tls: Option<(String, String)>,
) -> (String, String) {
    let (server_tls, client_tls) = tls.unwrap_or_default();
    let client_cluster_extra = format!("{client_cluster_extra}{client_tls}");
    let client_cluster_extra = client_cluster_extra.as_str();
    let app = upstream("ratings").await;
    let server = Remora::start(&sidecar(
        &node_metadata("server_node_metadata.json.tmpl"),
        "INBOUND",
        ("{downstream_discovery: [{istio_headers: {}}], downstream_propagation: [{istio_headers: {}}]}", server_stats),
        "inbound|9080||",
        // istiod names the service on inbound clusters too.
        ISTIO_SERVICE,
        app.addr,
        &server_tls,
    ))
    .await;
    let client = Remora::start(&sidecar(
        &node_metadata("client_node_metadata.json.tmpl"),
        "OUTBOUND",
        ("{upstream_discovery: [{istio_headers: {}}], upstream_propagation: [{istio_headers: {}}]}", client_stats),
        "outbound|9080||server.default.svc.cluster.local",
        client_cluster_extra,
        server.addr("l"),
        "",
    ))
    .await;
    for _ in 0..n {
        let r = get(client.addr("l"), "server.default.svc.cluster.local", "/").await;
        assert_eq!(r.status, 200);
    }
    // Stream ends are recorded once the response body is done.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let c = client.admin_get("/stats/prometheus").await.unwrap().1;
    let s = server.admin_get("/stats/prometheus").await.unwrap().1;
    promtool_check(&c);
    promtool_check(&s);
    (c, s)
}

fn assert_fixture(scrape: &str, fixture: &str, vars: &HashMap<&str, &str>) {
    let (family, want) = expected(&render(&data(fixture), vars));
    let got = scraped(scrape, &family);
    assert_eq!(got, want, "{fixture} against the scrape:\n{scrape}");
}

#[tokio::test(flavor = "multi_thread")]
async fn request_metrics_match_istios_fixtures() {
    let (client, server) = two_sidecars("{}", "{}", ISTIO_SERVICE, 10).await;
    let vars: HashMap<&str, &str> = [("RequestCount", "10")].into();
    assert_fixture(&client, "metric/client_request_total.yaml.tmpl", &vars);
    assert_fixture(&server, "metric/server_request_total.yaml.tmpl", &vars);
    assert_fixture(&client, "metric/istio_build.yaml", &vars);
    assert_fixture(&server, "metric/istio_build.yaml", &vars);
    for fam in [
        "istio_request_duration_milliseconds",
        "istio_request_bytes",
        "istio_response_bytes",
    ] {
        assert!(client.contains(&format!("# TYPE {fam} histogram")), "{fam}");
        assert!(
            server.contains(&format!("{fam}_count{{reporter=\"destination\",")),
            "{fam}"
        );
    }
}

/// `disable_host_header_fallback`: without the cluster's Istio metadata the client names no
/// destination service (`unknown`); with the fallback it is the Host header.
#[tokio::test(flavor = "multi_thread")]
async fn destination_service_falls_back_to_the_host_header_unless_disabled() {
    let disabled = data("stats/client_config_disable_header_fallback.yaml");
    let disabled = disabled.trim().replace('\n', ", ");
    let (client, _) = two_sidecars(&format!("{{{disabled}}}"), "{}", "", 1).await;
    let series = scraped(&client, "istio_requests_total");
    let label = |k: &str| series[0].0.iter().find(|(n, _)| n == k).unwrap().1.clone();
    assert_eq!(label("destination_service"), "unknown");
    assert_eq!(label("destination_service_name"), "unknown");
    let (client, _) = two_sidecars("{}", "{}", "", 1).await;
    let series = scraped(&client, "istio_requests_total");
    let label = |k: &str| series[0].0.iter().find(|(n, _)| n == k).unwrap().1.clone();
    assert_eq!(
        label("destination_service"),
        "server.default.svc.cluster.local"
    );
}

/// `metrics[].dimensions` from istio/proxy's stats/client_additional_labels.yaml: the
/// upstream peer's exchanged label.
#[tokio::test(flavor = "multi_thread")]
async fn added_dimensions_read_the_peer() {
    let (client, _) = two_sidecars(
        "{metrics: [{name: requests_total, dimensions: {role: \"filter_state.upstream_peer.labels['role']\"}}]}",
        "{}",
        ISTIO_SERVICE,
        2,
    )
    .await;
    let series = scraped(&client, "istio_requests_total");
    let last = series[0].0.last().unwrap().clone();
    // The server's exchange carries only the labels it is configured with: `role` is not one,
    // so the expression evaluates to `unknown`, as Istio's does.
    assert_eq!(last, ("role".to_string(), "unknown".to_string()));
}

/// A dimension outside the supported expression subset is refused by path.
#[tokio::test(flavor = "multi_thread")]
async fn an_unsupported_expression_is_refused_by_path() {
    let app = upstream("x").await;
    let bad = sidecar(
        "{}",
        "OUTBOUND",
        (
            "{}",
            "{metrics: [{name: requests_total, dimensions: {response_code: \"filter_state['wasm.istio_responseClass']\"}}]}",
        ),
        "c",
        "",
        app.addr,
        "",
    );
    let err = Remora::try_start(&bad, &[]).await.err().expect("refused");
    assert!(
        err.contains("metrics[0].dimensions[\"response_code\"]"),
        "{err}"
    );
}

const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/client";
const SERVER_ID: &str = "spiffe://cluster.local/ns/default/sa/server";

fn tcp_mx(indent: &str) -> String {
    format!(
        "{indent}- name: istio.metadata_exchange\n{indent}  typed_config:\n{indent}    \"@type\": type.googleapis.com/udpa.type.v1.TypedStruct\n{indent}    type_url: type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange\n{indent}    value: {{protocol: istio-peer-exchange}}\n"
    )
}

fn tcp_stats() -> String {
    "      - name: istio.stats\n        typed_config:\n          \"@type\": type.googleapis.com/udpa.type.v1.TypedStruct\n          type_url: type.googleapis.com/stats.PluginConfig\n          value: {}\n".into()
}

fn tcp_proxy(cluster: &str) -> String {
    format!(
        "      - name: envoy.filters.network.tcp_proxy\n        typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy\n          stat_prefix: tcp\n          cluster: \"{cluster}\"\n"
    )
}

/// istio/proxy's TCP metadata-exchange scenario: 10 connections from a client sidecar
/// (outbound tcp_proxy, mTLS with `istio-peer-exchange`) to a server sidecar (inbound,
/// metadata exchange first), each sending 6 bytes and reading 12.
#[tokio::test(flavor = "multi_thread")]
async fn tcp_metrics_match_istios_fixtures() {
    use crate::tls::{Pki, downstream_tls, upstream_tls};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = Pki::new();
    let server_certs = pki.write("server", SERVER_ID);
    let client_certs = pki.write("client", CLIENT_ID);
    let (app, _t) = serve_tcp(|mut s| async move {
        let mut buf = [0u8; 6];
        if s.read_exact(&mut buf).await.is_ok() {
            let _ = s.write_all(b"hello world\n").await;
        }
    })
    .await;
    let inbound = format!(
        "  - name: inbound\n    traffic_direction: INBOUND\n    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}\n    listener_filters:\n    - name: envoy.filters.listener.tls_inspector\n      typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector}}\n    filter_chains:\n    - filter_chain_match: {{application_protocols: [istio-peer-exchange, istio]}}\n      filters:\n{}{}{}",
        tcp_mx("      "),
        tcp_stats(),
        tcp_proxy("inbound|9080||")
    ) + &downstream_tls(&server_certs, true, Some(CLIENT_ID)).replace(
        "alpn_protocols: [h2, http/1.1]",
        "alpn_protocols: [istio-peer-exchange, h2, http/1.1]",
    );
    let server = Remora::start(&format!(
        "node: {{id: server, metadata: {}}}\n{}",
        node_metadata("server_node_metadata.json.tmpl"),
        bootstrap(
            &inbound,
            &cluster("\"inbound|9080||\"", &[app], ISTIO_SERVICE)
        )
    ))
    .await;
    let outbound = format!(
        "  - name: outbound\n    traffic_direction: OUTBOUND\n    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}\n    filter_chains:\n    - filters:\n{}{}",
        tcp_stats(),
        tcp_proxy("outbound|9080||server.default.svc.cluster.local")
    );
    let mesh = format!(
        "{ISTIO_SERVICE}    filters:\n{}{}",
        tcp_mx("    "),
        upstream_tls(&client_certs, SERVER_ID, "istio-peer-exchange, istio")
    );
    let client = Remora::start(&format!(
        "node: {{id: client, metadata: {}}}\n{}",
        node_metadata("client_node_metadata.json.tmpl"),
        bootstrap(
            &outbound,
            &cluster(
                "\"outbound|9080||server.default.svc.cluster.local\"",
                &[server.addr("inbound")],
                &mesh
            )
        )
    ))
    .await;
    for _ in 0..10 {
        let mut s = tokio::net::TcpStream::connect(client.addr("outbound"))
            .await
            .unwrap();
        s.write_all(b"world\n").await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut got))
            .await
            .expect("answer within 5 s")
            .unwrap();
        assert_eq!(got, b"hello world\n");
    }
    let vars: HashMap<&str, &str> = [("AppVersionFallback", "false")].into();
    // The connections close on both sides shortly after the app closed.
    let scrape = scrape_when_closed(&server, 10).await;
    promtool_check(&scrape);
    for f in [
        "metric/tcp_server_connection_open.yaml.tmpl",
        "metric/tcp_server_connection_close.yaml.tmpl",
        "metric/tcp_server_received_bytes.yaml.tmpl",
        "metric/tcp_server_sent_bytes.yaml.tmpl",
    ] {
        assert_fixture(&scrape, f, &vars);
    }
    let client_scrape = scrape_when_closed(&client, 10).await;
    promtool_check(&client_scrape);
    for f in [
        "metric/tcp_client_connection_open.yaml.tmpl",
        "metric/tcp_client_connection_close.yaml.tmpl",
        "metric/tcp_client_received_bytes.yaml.tmpl",
        "metric/tcp_client_sent_bytes.yaml.tmpl",
    ] {
        assert_fixture(&client_scrape, f, &vars);
    }
}

/// `/stats/prometheus` once `n` TCP connections were counted closed (or after 5 s).
async fn scrape_when_closed(r: &Remora, n: u32) -> String {
    let mut scrape = String::new();
    for _ in 0..50 {
        scrape = r.admin_get("/stats/prometheus").await.unwrap().1;
        let closed = scraped(&scrape, "istio_tcp_connections_closed_total");
        if closed.first().is_some_and(|s| s.1 == n.to_string()) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    scrape
}

/// The hop between the sidecars over mTLS (HTTP/1.1): the server chain's and the client
/// cluster's transport sockets, with the client's and the server's SPIFFE IDs.
fn sidecar_mtls(pki: &crate::tls::Pki) -> (String, String) {
    use crate::tls::{downstream_tls, upstream_tls};
    let server_certs = pki.write("server", SERVER_ID);
    let client_certs = pki.write("client", CLIENT_ID);
    let server_tls = downstream_tls(&server_certs, true, Some(CLIENT_ID)).replace(
        "alpn_protocols: [h2, http/1.1]",
        "alpn_protocols: [http/1.1]",
    );
    (
        server_tls,
        upstream_tls(&client_certs, SERVER_ID, "http/1.1"),
    )
}

/// Plaintext into the client sidecar, mTLS between the sidecars: the principals come from the
/// certificates (SPIFFE IDs), the server reports `mutual_tls`, the client `unknown`.
#[tokio::test(flavor = "multi_thread")]
async fn mtls_between_sidecars_names_the_principals() {
    use crate::tls::Pki;
    let pki = Pki::new();
    let (server_tls, client_tls) = sidecar_mtls(&pki);
    let (client, server) =
        two_sidecars_tls("{}", "{}", ISTIO_SERVICE, 3, Some((server_tls, client_tls))).await;
    let label = |scrape: &str, k: &str| {
        let series = scraped(scrape, "istio_requests_total");
        assert_eq!(series.len(), 1, "{scrape}");
        assert_eq!(series[0].1, "3");
        series[0].0.iter().find(|(n, _)| n == k).unwrap().1.clone()
    };
    assert_eq!(label(&server, "source_principal"), CLIENT_ID);
    assert_eq!(label(&server, "destination_principal"), SERVER_ID);
    assert_eq!(label(&server, "connection_security_policy"), "mutual_tls");
    assert_eq!(label(&server, "source_workload"), "productpage-v1");
    assert_eq!(label(&client, "source_principal"), CLIENT_ID);
    assert_eq!(label(&client, "destination_principal"), SERVER_ID);
    assert_eq!(label(&client, "destination_workload_namespace"), "default");
    assert_eq!(label(&client, "connection_security_policy"), "unknown");
    assert_eq!(label(&client, "destination_workload"), "ratings-v1");
}

/// istio.stats on a TCP filter chain delivered by xDS: the listener's connections are counted
/// in `istio_tcp_*` (outbound: the client side reports).
#[tokio::test(flavor = "multi_thread")]
async fn tcp_metrics_through_xds() {
    use crate::xds::{NODE, bootstrap_with_ads, lds_listener, xds_server};
    use envoy_types::pb::envoy::config::listener::v3 as listener;
    use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp;
    use remora_xds::resource::{CLUSTER, LISTENER, any};
    use remora_xds::server::Snapshot;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (echo, _t) = tcp_echo().await;
    let (cache, xds, _task) = xds_server().await;
    let port = closed_port().port();
    let mut l = lds_listener("tcp_out", port, "unused", "tcp_out");
    l.traffic_direction =
        envoy_types::pb::envoy::config::core::v3::TrafficDirection::Outbound as i32;
    let stats = envoy_types::pb::google::protobuf::Any {
        type_url: "type.googleapis.com/stats.PluginConfig".into(),
        value: prost::Message::encode_to_vec(&remora::model::istio_pb::PluginConfig::default()),
    };
    let proxy = tcp::TcpProxy {
        stat_prefix: "tcp_out".into(),
        cluster_specifier: Some(tcp::tcp_proxy::ClusterSpecifier::Cluster("echo".into())),
        ..Default::default()
    };
    l.filter_chains[0].filters = vec![
        listener::Filter {
            name: "istio.stats".into(),
            config_type: Some(listener::filter::ConfigType::TypedConfig(stats)),
        },
        listener::Filter {
            name: "envoy.filters.network.tcp_proxy".into(),
            config_type: Some(listener::filter::ConfigType::TypedConfig(any(&proxy))),
        },
    ];
    cache.set_snapshot(
        NODE,
        Snapshot::default()
            .with(
                CLUSTER,
                "c1",
                vec![any(&remora_xds::build::static_cluster("echo", &[echo]))],
            )
            .with(LISTENER, "l1", vec![any(&l)]),
    );
    let yaml = bootstrap_with_ads(xds, "DELTA_GRPC").replace(
        "  cds_config: {ads: {}, resource_api_version: V3}\n",
        "  cds_config: {ads: {}, resource_api_version: V3}\n  lds_config: {ads: {}, resource_api_version: V3}\n",
    );
    let r = Remora::start(&yaml).await;
    cache
        .wait_until(NODE, LISTENER, |s| s.acked.as_deref() == Some("l1"))
        .await;
    r.wait_stat("listener_manager.total_listeners_active", 2)
        .await;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(b"ping!").await.unwrap();
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).await.unwrap();
    drop(s);
    let scrape = scrape_when_closed(&r, 1).await;
    promtool_check(&scrape);
    let opened = scraped(&scrape, "istio_tcp_connections_opened_total");
    assert_eq!(opened.len(), 1, "{scrape}");
    assert_eq!(opened[0].0[0], ("reporter".into(), "source".into()));
    assert_eq!(opened[0].1, "1");
    assert_eq!(scraped(&scrape, "istio_tcp_received_bytes_total")[0].1, "5");
    assert_eq!(scraped(&scrape, "istio_tcp_sent_bytes_total")[0].1, "5");
}

/// The mesh's `istio:mesh:mtls_traffic_percentage` (examples/prometheus/rules.yaml) on real
/// scrapes: two sidecar pairs, one hop over mTLS (6 requests), one plaintext (2); promtool
/// evaluates the recording rule over the four scrapes' `istio_requests_total` (each with the
/// `instance` label Prometheus adds) and gets 75 %: the client sides (`unknown`) do not count.
#[tokio::test(flavor = "multi_thread")]
async fn mtls_percentage_over_two_sidecars_scrapes() {
    use crate::tls::Pki;
    if !have_tool("promtool") {
        return;
    }
    let pki = Pki::new();
    let (server_tls, client_tls) = sidecar_mtls(&pki);
    let (mtls_client, mtls_server) =
        two_sidecars_tls("{}", "{}", ISTIO_SERVICE, 6, Some((server_tls, client_tls))).await;
    let (plain_client, plain_server) = two_sidecars("{}", "{}", ISTIO_SERVICE, 2).await;
    let mut input = String::new();
    for (instance, scrape) in [
        ("mtls-client", &mtls_client),
        ("mtls-server", &mtls_server),
        ("plain-client", &plain_client),
        ("plain-server", &plain_server),
    ] {
        let series = scraped(scrape, "istio_requests_total");
        assert!(!series.is_empty(), "{scrape}");
        for (labels, value) in series {
            let mut sel: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
            sel.push(format!("instance={instance:?}"));
            input += &format!(
                "  - series: 'istio_requests_total{{{}}}'\n    values: '0 {value}'\n",
                sel.join(", ")
            );
        }
    }
    let rules = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/prometheus/rules.yaml");
    let test = format!(
        "rule_files: [{}]\nevaluation_interval: 1m\ntests:\n- interval: 1m\n  input_series:\n{input}  promql_expr_test:\n  - expr: round(istio:mesh:mtls_traffic_percentage, 0.01)\n    eval_time: 1m\n    exp_samples:\n    - labels: '{{}}'\n      value: 75\n",
        rules.display()
    );
    let dir = TempDir::new("mtls-percentage");
    std::fs::write(dir.path("test.yaml"), &test).unwrap();
    let out = std::process::Command::new("promtool")
        .args(["test", "rules", "test.yaml"])
        .current_dir(&dir.0)
        .output()
        .expect("promtool runs");
    assert!(
        out.status.success(),
        "{}{}\n{test}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// === gRPC: grpc_stats' message counts in Istio's metrics ===

const H2_CLUSTER: &str = "    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        explicit_http_config: {http2_protocol_options: {}}\n";

/// Istio's sidecar chain has grpc_stats (emitting its filter state) before istio.stats.
fn with_grpc_stats(sidecar: String, stats_config: &str) -> String {
    let fields = stats_config.trim_start_matches('{').trim_end_matches('}');
    let filter = format!(
        "          - name: envoy.filters.http.grpc_stats\n            typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig, {fields}}}\n          - name: istio.stats\n"
    );
    sidecar.replacen("          - name: istio.stats\n", &filter, 1)
}

/// A stats config fixture as a YAML block under `value:`.
fn stats_block(fixture: &str) -> String {
    let yaml = render(&data(fixture), &HashMap::new());
    let lines: Vec<String> = yaml
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| format!("                {l}"))
        .collect();
    format!("\n{}", lines.join("\n"))
}

/// One gRPC call over h2c: `messages` request messages (their bytes sent in 7-byte data
/// frames, so messages and their headers straddle frames); the response's messages and
/// trailers.
async fn grpc_call(
    addr: std::net::SocketAddr,
    path: &str,
    messages: &[&[u8]],
) -> (u16, bytes::Bytes, Option<http::HeaderMap>) {
    use bytes::Bytes;
    use http_body_util::{BodyExt, StreamBody};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let mut wire = Vec::new();
    for m in messages {
        wire.push(0u8);
        wire.extend_from_slice(&(m.len() as u32).to_be_bytes());
        wire.extend_from_slice(m);
    }
    let frames: Vec<Result<http_body::Frame<Bytes>, std::convert::Infallible>> = wire
        .chunks(7)
        .map(|c| Ok(http_body::Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://server.default.svc.cluster.local{path}"))
        .version(http::Version::HTTP_2)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(StreamBody::new(futures_util::stream::iter(frames)))
        .unwrap();
    let io = TokioIo::new(tokio::net::TcpStream::connect(addr).await.unwrap());
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    (status, collected.to_bytes(), trailers)
}

/// istio/proxy's gRPC scenario: a client and a server sidecar, each with grpc_stats
/// (`emit_filter_state`) before istio.stats, two calls of five messages each way: Istio's
/// `istio_{request,response}_messages_total` series (peer labels only, as Istio reports them),
/// and grpc_stats' own per-method stats on the client.
#[tokio::test(flavor = "multi_thread")]
async fn grpc_message_counts_match_istios_fixtures() {
    let app = upstream("ratings").await;
    let cluster_extra = format!("{ISTIO_SERVICE}{H2_CLUSTER}");
    let server = Remora::start(&with_grpc_stats(
        sidecar(
            &node_metadata("server_node_metadata.json.tmpl"),
            "INBOUND",
            (
                "{downstream_discovery: [{istio_headers: {}}], downstream_propagation: [{istio_headers: {}}]}",
                &stats_block("stats/server_config_grpc.yaml.tmpl"),
            ),
            "inbound|9080||",
            &cluster_extra,
            app.addr,
            "",
        ),
        "{emit_filter_state: true, stats_for_all_methods: false}",
    ))
    .await;
    let client = Remora::start(&with_grpc_stats(
        sidecar(
            &node_metadata("client_node_metadata.json.tmpl"),
            "OUTBOUND",
            (
                "{upstream_discovery: [{istio_headers: {}}], upstream_propagation: [{istio_headers: {}}]}",
                &stats_block("stats/client_config_grpc.yaml.tmpl"),
            ),
            "outbound|9080||server.default.svc.cluster.local",
            &cluster_extra,
            server.addr("l"),
            "",
        ),
        "{emit_filter_state: true, stats_for_all_methods: true, enable_upstream_stats: true}",
    ))
    .await;
    // The app echoes the request's messages (paths under /grpc).
    let msgs: [&[u8]; 5] = [b"one", b"", b"three", &[7u8; 40], b"five"];
    for _ in 0..2 {
        let (status, body, trailers) =
            grpc_call(client.addr("l"), "/grpc.test.Echo/Stream", &msgs).await;
        assert_eq!(status, 200);
        assert_eq!(body.len(), 5 * 5 + 3 + 5 + 40 + 4);
        assert_eq!(trailers.expect("trailers")["grpc-status"], "0");
    }
    // Stream ends are recorded once the response body is done.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let c = client.admin_get("/stats/prometheus").await.unwrap().1;
    let s = server.admin_get("/stats/prometheus").await.unwrap().1;
    promtool_check(&c);
    promtool_check(&s);
    let vars: HashMap<&str, &str> = [("RequestMessages", "10"), ("ResponseMessages", "10")].into();
    assert_fixture(&c, "metric/client_request_messages.yaml.tmpl", &vars);
    assert_fixture(&c, "metric/client_response_messages.yaml.tmpl", &vars);
    assert_fixture(&s, "metric/server_request_messages.yaml.tmpl", &vars);
    assert_fixture(&s, "metric/server_response_messages.yaml.tmpl", &vars);
    // The calls themselves are gRPC in istio_requests_total.
    let calls = scraped(&s, "istio_requests_total");
    let label = |k: &str| calls[0].0.iter().find(|(n, _)| n == k).unwrap().1.clone();
    assert_eq!(label("request_protocol"), "grpc");
    assert_eq!(label("grpc_response_status"), "0");

    // grpc_stats' own stats: per method on the client, under `grpc.` alone on the server.
    let cs = client.stats().await;
    let p = "cluster.outbound|9080||server.default.svc.cluster.local.grpc.grpc.test.Echo.Stream.";
    for (suffix, want) in [
        ("0", 2),
        ("success", 2),
        ("total", 2),
        ("request_message_count", 10),
        ("response_message_count", 10),
    ] {
        assert_eq!(cs.get(&format!("{p}{suffix}")), Some(&want), "{p}{suffix}");
    }
    assert!(!cs.contains_key(&format!("{p}failure")));
    // enable_upstream_stats: one upstream time per call (histograms in /stats: `P0(…)`).
    let text = client.admin_get("/stats").await.unwrap().1;
    assert!(
        text.contains(&format!("{p}upstream_rq_time: P0(")),
        "{text}"
    );
    let ss = server.stats().await;
    let p = "cluster.inbound|9080||.grpc.";
    assert_eq!(ss.get(&format!("{p}success")), Some(&2));
    assert_eq!(ss.get(&format!("{p}request_message_count")), Some(&10));
}

// === istio.stats disabled per route ===

/// The sum of a family's samples in a scrape.
fn total(scrape: &str, family: &str) -> f64 {
    scraped(scrape, family)
        .iter()
        .map(|(_, v)| v.parse::<f64>().unwrap())
        .sum()
}

/// A route whose most specific `typed_per_filter_config` entry disables istio.stats records
/// nothing (Envoy does not create the filter, so its access-log handler never runs); a route
/// that enables it again under a virtual host that disables it records; the others record as
/// usual. From the file and over LDS (state of the world and delta).
async fn istio_stats_disabled_per_route(source: crate::sources::Source) {
    let app = upstream("app").await;
    let fc = r#"{"@type": type.googleapis.com/envoy.config.route.v3.FilterConfig"#;
    let vhosts = format!(
        r#"            - name: quiet
              domains: ["quiet.example"]
              typed_per_filter_config:
                istio.stats: {fc}, disabled: true}}
              routes:
              - match: {{prefix: /loud}}
                route: {{cluster: app}}
                typed_per_filter_config:
                  istio.stats: {fc}}}
              - match: {{prefix: /}}
                route: {{cluster: app}}
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: /off}}
                route: {{cluster: app}}
                typed_per_filter_config:
                  istio.stats: {fc}, disabled: true}}
              - match: {{prefix: /}}
                route: {{cluster: app}}
"#
    );
    let stats = "          - name: istio.stats\n            typed_config:\n              \"@type\": type.googleapis.com/udpa.type.v1.TypedStruct\n              type_url: type.googleapis.com/stats.PluginConfig\n              value: {}\n";
    let listener = http_listener("main", "", &vhosts).replace(
        "          http_filters:\n",
        &format!("          http_filters:\n{stats}"),
    );
    let r = source
        .start(&bootstrap(&listener, &cluster("app", &[app.addr], "")))
        .await;
    let addr = r.addr("main");
    for (host, path, n) in [
        ("x", "/on", 3),
        ("x", "/off", 2),
        ("quiet.example", "/", 4),
        ("quiet.example", "/loud", 1),
    ] {
        for _ in 0..n {
            assert_eq!(get(addr, host, path).await.status, 200);
        }
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let scrape = r.admin_get("/stats/prometheus").await.unwrap().1;
    promtool_check(&scrape);
    assert_eq!(total(&scrape, "istio_requests_total"), 4.0, "{scrape}");
    let r = r
        .admin_get("/stats?filter=http.main.downstream_rq_completed")
        .await
        .unwrap()
        .1;
    assert!(r.contains(": 10"), "every request completed: {r}");
}

crate::across_sources!(istio_stats_disabled_per_route);

/// The same over RDS (state of the world and delta): the listener from LDS has istio.stats;
/// the route configuration disables it on `/off`, then a new version enables it there.
async fn istio_stats_disabled_per_route_over_rds(api: &str) {
    use crate::xds::{NODE, bootstrap_with_ads, lds_listener, xds_server};
    use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
    use envoy_types::pb::envoy::config::route::v3 as route;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
    use remora_xds::build::{route_all_to, static_cluster};
    use remora_xds::resource::{CLUSTER, LISTENER, ROUTE, any};
    use remora_xds::server::Snapshot;
    let app = upstream("app").await;
    let (cache, xds, _task) = xds_server().await;
    let port = closed_port().port();
    let mut l = lds_listener("dyn", port, "r1", "dyn");
    let f = &mut l.filter_chains[0].filters[0];
    let Some(ConfigType::TypedConfig(a)) = &f.config_type else {
        unreachable!()
    };
    let mut m: hcm::HttpConnectionManager = prost::Message::decode(a.value.as_slice()).unwrap();
    m.http_filters.insert(
        0,
        hcm::HttpFilter {
            name: "istio.stats".into(),
            config_type: Some(hcm::http_filter::ConfigType::TypedConfig(
                envoy_types::pb::google::protobuf::Any {
                    type_url: "type.googleapis.com/stats.PluginConfig".into(),
                    value: Vec::new(),
                },
            )),
            ..Default::default()
        },
    );
    f.config_type = Some(ConfigType::TypedConfig(any(&m)));
    let routes = |disabled: bool| {
        let mut rc = route_all_to("r1", "app");
        let mut off = rc.virtual_hosts[0].routes[0].clone();
        off.r#match = Some(route::RouteMatch {
            path_specifier: Some(route::route_match::PathSpecifier::Prefix("/off".into())),
            ..Default::default()
        });
        let fc = route::FilterConfig {
            disabled,
            ..Default::default()
        };
        off.typed_per_filter_config
            .insert("istio.stats".into(), any(&fc));
        rc.virtual_hosts[0].routes.insert(0, off);
        rc
    };
    let snap = |rv: &str, disabled: bool| {
        Snapshot::default()
            .with(
                CLUSTER,
                "c1",
                vec![any(&static_cluster("app", &[app.addr]))],
            )
            .with(LISTENER, "l1", vec![any(&l)])
            .with(ROUTE, rv, vec![any(&routes(disabled))])
    };
    cache.set_snapshot(NODE, snap("r1", true));
    let yaml = bootstrap_with_ads(xds, api).replace(
        "  cds_config: {ads: {}, resource_api_version: V3}\n",
        "  cds_config: {ads: {}, resource_api_version: V3}\n  lds_config: {ads: {}, resource_api_version: V3}\n",
    );
    let r = Remora::start(&yaml).await;
    r.wait_stat("listener_manager.total_listeners_active", 2)
        .await;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let requests = |n: usize, path: &'static str| async move {
        for _ in 0..n {
            assert_eq!(get(addr, "x", path).await.status, 200);
        }
    };
    let scrape = || async {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let s = r.admin_get("/stats/prometheus").await.unwrap().1;
        promtool_check(&s);
        total(&s, "istio_requests_total")
    };
    requests(2, "/on").await;
    requests(3, "/off").await;
    assert_eq!(scrape().await, 2.0);
    // The next route version enables it on /off.
    cache.set_snapshot(NODE, snap("r2", false));
    r.wait_stat("http.dyn.rds.r1.config_reload", 2).await;
    requests(3, "/off").await;
    assert_eq!(scrape().await, 5.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn istio_stats_disabled_per_route_over_rds_sotw() {
    istio_stats_disabled_per_route_over_rds("GRPC").await
}

#[tokio::test(flavor = "multi_thread")]
async fn istio_stats_disabled_per_route_over_rds_delta() {
    istio_stats_disabled_per_route_over_rds("DELTA_GRPC").await
}

// === grpc_stats on its own, from the file and over LDS/CDS ===

/// `individual_method_stats_allowlist`: the listed method gets `grpc.<service>.<method>.`
/// stats, another method of the same service is counted under `grpc.` alone; the filter
/// state reaches the access log as Envoy prints it; a non-gRPC request is not counted.
async fn grpc_stats_allowlist_and_filter_state(source: crate::sources::Source) {
    let app = upstream("app").await;
    let log = "          access_log:\n          - name: envoy.access_loggers.file\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog\n              path: RUN_DIR/grpc.log\n              log_format: {text_format_source: {inline_string: \"%REQ(:PATH)% %FILTER_STATE(envoy.filters.http.grpc_stats)%\\n\"}}\n";
    let vhosts = "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {prefix: /}\n                route: {cluster: app}\n";
    let grpc_stats = "          - name: envoy.filters.http.grpc_stats\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig\n              emit_filter_state: true\n              individual_method_stats_allowlist:\n                services: [{name: grpc.test.Echo, method_names: [Stream]}]\n";
    let listener = http_listener("main", log, vhosts).replace(
        "          http_filters:\n",
        &format!("          http_filters:\n{grpc_stats}"),
    );
    let r = source
        .start(&bootstrap(
            &listener,
            &cluster("app", &[app.addr], H2_CLUSTER),
        ))
        .await;
    let addr = r.addr("main");
    let (status, _, t) = grpc_call(addr, "/grpc.test.Echo/Stream", &[b"a", b"bb"]).await;
    assert_eq!(status, 200);
    assert_eq!(t.expect("trailers")["grpc-status"], "0");
    let (status, _, _) = grpc_call(addr, "/grpc.test.Echo/Other", &[b"c", b"d", b"e"]).await;
    assert_eq!(status, 200);
    assert_eq!(get(addr, "x", "/plain").await.status, 200);
    let lines = r.log_lines("grpc.log", 3).await;
    assert_eq!(
        lines,
        [
            r#"/grpc.test.Echo/Stream {"requestMessageCount":"2","responseMessageCount":"2"}"#,
            r#"/grpc.test.Echo/Other {"requestMessageCount":"3","responseMessageCount":"3"}"#,
            "/plain -",
        ]
    );
    let stats = r.stats().await;
    let listed = "cluster.app.grpc.grpc.test.Echo.Stream.";
    for (name, want) in [
        (format!("{listed}success"), 1),
        (format!("{listed}total"), 1),
        (format!("{listed}request_message_count"), 2),
        (format!("{listed}response_message_count"), 2),
        ("cluster.app.grpc.0".into(), 1),
        ("cluster.app.grpc.success".into(), 1),
        ("cluster.app.grpc.total".into(), 1),
        ("cluster.app.grpc.request_message_count".into(), 3),
        ("cluster.app.grpc.response_message_count".into(), 3),
    ] {
        assert_eq!(stats.get(&name), Some(&want), "{name}");
    }
    assert!(!stats.keys().any(|k| k.contains("Echo.Other")));
}

crate::across_sources!(grpc_stats_allowlist_and_filter_state);

/// A client sidecar's TCP connection whose upstream refuses: Istio reads no peer, so the
/// connection is counted opened and closed at its close, labelled with the tcp_proxy's
/// response flags (`UF`); plain `/stats` shows the series by Envoy's flat tagged name and
/// `/reset_counters` zeroes them.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_tcp_upstream_is_labelled_uf() {
    use tokio::io::AsyncReadExt;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let outbound = format!(
        "  - name: outbound\n    traffic_direction: OUTBOUND\n    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}\n    filter_chains:\n    - filters:\n{}{}",
        tcp_stats(),
        tcp_proxy("outbound|9080||server.default.svc.cluster.local")
    );
    let client = Remora::start(&format!(
        "node: {{id: client, metadata: {}}}\n{}",
        node_metadata("client_node_metadata.json.tmpl"),
        bootstrap(
            &outbound,
            &cluster(
                "\"outbound|9080||server.default.svc.cluster.local\"",
                &[dead],
                ISTIO_SERVICE
            )
        )
    ))
    .await;
    let mut s = tokio::net::TcpStream::connect(client.addr("outbound"))
        .await
        .unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut got))
        .await
        .expect("closed within 5 s");
    let scrape = scrape_when_closed(&client, 1).await;
    promtool_check(&scrape);
    for family in [
        "istio_tcp_connections_opened_total",
        "istio_tcp_connections_closed_total",
    ] {
        let samples = scraped(&scrape, family);
        assert_eq!(samples.len(), 1, "{family}: {scrape}");
        let (labels, value) = &samples[0];
        assert_eq!(value, "1", "{family}: {scrape}");
        let label = |k: &str| labels.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(label("response_flags"), Some("UF"), "{labels:?}");
        assert_eq!(
            label("destination_service"),
            Some("server.default.svc.cluster.local"),
            "{labels:?}"
        );
    }
    let (_, text) = client.admin_get("/stats?filter=istiocustom").await.unwrap();
    let closed = text
        .lines()
        .find(|l| l.starts_with("istiocustom.istio_tcp_connections_closed_total.reporter.source."))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        closed.ends_with(
            ".request_protocol.tcp.response_flags.UF.connection_security_policy.unknown: 1"
        ),
        "{closed}"
    );
    client.admin_post("/reset_counters").await;
    let (_, text) = client.admin_get("/stats?filter=istiocustom").await.unwrap();
    assert!(
        text.lines()
            .filter(|l| l.contains("istio_tcp_connections_closed_total"))
            .all(|l| l.ends_with(": 0")),
        "{text}"
    );
}
