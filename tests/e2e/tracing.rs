//! Distributed tracing: two remora sidecars (client: an OUTBOUND listener whose provider is the
//! bootstrap's `tracing.http`; server: an INBOUND listener with the HCM's `tracing.provider`)
//! in front of an app, reporting Zipkin v2 JSON to an in-test collector.

use crate::support::*;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::sync::{Arc, Mutex};
use std::time::Duration;

type Spans = Arc<Mutex<Vec<serde_json::Value>>>;

/// A Zipkin collector: every POSTed span kept; answers 202 as Zipkin does.
async fn collector() -> (std::net::SocketAddr, Spans, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let spans: Spans = Arc::default();
    let kept = spans.clone();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let kept = kept.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let kept = kept.clone();
                        async move {
                            let ok = req.uri().path() == "/api/v2/spans"
                                && req.headers()["content-type"] == "application/json";
                            let body = req.into_body().collect().await.map(|b| b.to_bytes());
                            if let (true, Ok(body)) = (ok, body)
                                && let Ok(serde_json::Value::Array(list)) =
                                    serde_json::from_slice(&body)
                            {
                                kept.lock().unwrap().extend(list);
                            }
                            let status = if ok { 202 } else { 400 };
                            Ok::<_, std::convert::Infallible>(
                                http::Response::builder()
                                    .status(status)
                                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                                    .unwrap(),
                            )
                        }
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, spans, task)
}

async fn wait_spans(spans: &Spans, n: usize) -> Vec<serde_json::Value> {
    for _ in 0..100 {
        let got = spans.lock().unwrap().clone();
        if got.len() >= n {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the collector got {:?}", spans.lock().unwrap());
}

const ZIPKIN: &str = r#"name: envoy.tracers.zipkin
              typed_config:
                "@type": type.googleapis.com/envoy.config.trace.v3.ZipkinConfig
                collector_cluster: zipkin
                collector_endpoint: /api/v2/spans
                collector_endpoint_version: HTTP_JSON"#;

/// Flush each span at once (Envoy's runtime key).
const FLUSH_EACH: &str = "layered_runtime:\n  layers:\n  - name: static\n    static_layer:\n      tracing.zipkin.min_flush_spans: 1\n";

fn listener(name: &str, direction: &str, tracing: &str, cluster: &str) -> String {
    let vh = format!(
        "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {{prefix: /}}\n                route: {{cluster: {cluster}}}\n"
    );
    http_listener(name, tracing, &vh).replacen(
        "    filter_chains:",
        &format!("    traffic_direction: {direction}\n    filter_chains:"),
        1,
    )
}

#[tokio::test]
async fn spans_join_across_two_sidecars() {
    let (zipkin, spans, _c) = collector().await;
    let app = upstream("app").await;
    let server_tracing =
        format!("          tracing:\n            provider:\n              {ZIPKIN}\n");
    let server = Remora::start(&format!(
        "node: {{id: server-node, cluster: server-svc}}\n{}{FLUSH_EACH}",
        bootstrap(
            &listener("inbound", "INBOUND", &server_tracing, "app"),
            &(cluster("app", &[app.addr], "") + &cluster("zipkin", &[zipkin], ""))
        )
    ))
    .await;
    // The client names no provider: the bootstrap's (deprecated) tracing.http is its.
    let client = Remora::start(&format!(
        "node: {{id: client-node, cluster: client-svc}}\ntracing:\n  http:\n    {}\n{}{FLUSH_EACH}",
        ZIPKIN.replace("\n              ", "\n    "),
        bootstrap(
            &listener("outbound", "OUTBOUND", "          tracing: {}\n", "server"),
            &(cluster("server", &[server.addr("inbound")], "") + &cluster("zipkin", &[zipkin], ""))
        )
    ))
    .await;
    let resp = get(client.addr("outbound"), "svc.example", "/hello").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let seen = resp.json()["headers"].clone();
    let spans = wait_spans(&spans, 2).await;
    let kind = |k: &str| {
        spans
            .iter()
            .find(|s| s["kind"] == k)
            .unwrap_or_else(|| panic!("no {k} span in {spans:?}"))
            .clone()
    };
    let (c, s) = (kind("CLIENT"), kind("SERVER"));
    // The client's root span: its id is the trace id; the server shares it (shared_span_context).
    assert_eq!(c["id"], c["traceId"], "{c}");
    assert!(c.get("parentId").is_none(), "{c}");
    assert_eq!(s["traceId"], c["traceId"]);
    assert_eq!(s["id"], c["id"]);
    assert_eq!(s["shared"], true, "{s}");
    // What the app received: the server span's context, sampled.
    assert_eq!(seen["x-b3-traceid"], c["traceId"], "{seen}");
    assert_eq!(seen["x-b3-spanid"], s["id"]);
    assert_eq!(seen["x-b3-sampled"], "1");
    // Envoy's tags; the sampling decision in x-request-id's version digit.
    for (span, cluster, name) in [(&c, "server", "client-svc"), (&s, "app", "server-svc")] {
        let tags = &span["tags"];
        assert_eq!(tags["http.status_code"], "200", "{span}");
        assert_eq!(tags["component"], "proxy");
        assert_eq!(tags["upstream_cluster"], cluster);
        assert_eq!(tags["http.method"], "GET");
        assert_eq!(tags["http.url"], "http://svc.example/hello");
        assert_eq!(tags["response_flags"], "-");
        assert_eq!(span["localEndpoint"]["serviceName"], name);
        assert_eq!(span["name"], "svc.example");
        assert!(tags.get("error").is_none());
    }
    let rid = c["tags"]["guid:x-request-id"].as_str().unwrap().to_string();
    assert_eq!(rid.as_bytes()[14], b'9', "{rid}");
    assert_eq!(s["tags"]["guid:x-request-id"], rid.as_str());
    assert_eq!(seen["x-request-id"], rid.as_str());
    assert_eq!(c["tags"]["node_id"], "client-node");
    client.wait_stat("tracing.zipkin.reports_sent", 1).await;
    server.wait_stat("tracing.zipkin.reports_sent", 1).await;
    assert_eq!(client.stat("tracing.zipkin.spans_sent").await, 1);
    assert_eq!(
        client.stat("http.outbound.tracing.random_sampling").await,
        1
    );
}

/// The value of each of a span's annotations, in order.
fn annotations(span: &serde_json::Value) -> Vec<String> {
    span["annotations"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| x["value"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

const VERBOSE_STREAM: [&str; 8] = [
    "last_downstream_rx_byte_received",
    "first_upstream_tx_byte_sent",
    "last_upstream_tx_byte_sent",
    "first_upstream_rx_byte_received",
    "last_upstream_rx_byte_received",
    "first_downstream_tx_byte_sent",
    "last_downstream_tx_byte_sent",
    "ss",
];

const VERBOSE_UPSTREAM: [&str; 5] = [
    "first_upstream_tx_byte_sent",
    "last_upstream_tx_byte_sent",
    "first_upstream_rx_byte_received",
    "last_upstream_rx_byte_received",
    "cr",
];

/// `spawn_upstream_span` on both sidecars: each stream span is a server span with a client
/// child per upstream request, whose context is what the next hop continues. The chain:
/// client's stream span → client's upstream span = server's (shared) stream span → server's
/// upstream span → the app's headers. `verbose` logs the timings on every span.
#[tokio::test]
async fn upstream_spans_chain_downstream_upstream_and_the_next_hop() {
    let (zipkin, spans, _c) = collector().await;
    let app = upstream("app").await;
    let tracing = format!(
        "          tracing:\n            spawn_upstream_span: true\n            verbose: true\n            provider:\n              {ZIPKIN}\n"
    );
    let server = Remora::start(&format!(
        "node: {{id: server-node, cluster: server-svc}}\n{}{FLUSH_EACH}",
        bootstrap(
            &listener("inbound", "INBOUND", &tracing, "app"),
            &(cluster("app", &[app.addr], "") + &cluster("zipkin", &[zipkin], ""))
        )
    ))
    .await;
    let client = Remora::start(&format!(
        "node: {{id: client-node, cluster: client-svc}}\n{}{FLUSH_EACH}",
        bootstrap(
            &listener("outbound", "OUTBOUND", &tracing, "server"),
            &(cluster("server", &[server.addr("inbound")], "") + &cluster("zipkin", &[zipkin], ""))
        )
    ))
    .await;
    let resp = get(client.addr("outbound"), "svc.example", "/hello").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let seen = resp.json()["headers"].clone();
    let spans = wait_spans(&spans, 4).await;
    let find = |service: &str, kind: &str| {
        spans
            .iter()
            .find(|s| s["localEndpoint"]["serviceName"] == service && s["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} span of {service} in {spans:?}"))
            .clone()
    };
    let (d1, u1) = (find("client-svc", "SERVER"), find("client-svc", "CLIENT"));
    let (d2, u2) = (find("server-svc", "SERVER"), find("server-svc", "CLIENT"));
    // The client's stream span is a root server span, even on an OUTBOUND listener.
    assert_eq!(d1["id"], d1["traceId"], "{d1}");
    assert!(d1.get("parentId").is_none(), "{d1}");
    assert_eq!(d1["shared"], true);
    assert_eq!(d1["name"], "svc.example");
    // Its child for the request to the server.
    assert_eq!(u1["name"], "router server egress", "{u1}");
    assert_eq!(u1["parentId"], d1["id"]);
    assert_eq!(u1["traceId"], d1["traceId"]);
    assert_ne!(u1["id"], d1["id"]);
    assert!(u1.get("shared").is_none(), "{u1}");
    let t = &u1["tags"];
    assert_eq!(t["upstream_cluster"], "server");
    assert_eq!(t["upstream_cluster.name"], "server");
    assert_eq!(t["http.status_code"], "200");
    assert_eq!(t["http.protocol"], "HTTP/1.1");
    assert_eq!(t["component"], "proxy");
    assert_eq!(t["response_flags"], "-");
    let server_addr = server.addr("inbound").to_string();
    assert_eq!(t["upstream_address"], server_addr.as_str());
    assert_eq!(t["peer.address"], server_addr.as_str());
    assert!(
        t.get("error").is_none() && t.get("retry.count").is_none(),
        "{u1}"
    );
    // The server continues the upstream span's context: its stream span shares that id.
    assert_eq!(d2["id"], u1["id"], "{d2}");
    assert_eq!(d2["parentId"], d1["id"]);
    assert_eq!(d2["shared"], true);
    assert_eq!(u2["parentId"], d2["id"], "{u2}");
    assert_eq!(u2["name"], "router app egress");
    assert_eq!(u2["tags"]["upstream_cluster"], "app");
    // What the app received: the server's upstream span.
    assert_eq!(seen["x-b3-traceid"], d1["traceId"], "{seen}");
    assert_eq!(seen["x-b3-spanid"], u2["id"]);
    assert_eq!(seen["x-b3-parentspanid"], u1["id"]);
    assert_eq!(seen["x-b3-sampled"], "1");
    // The stream spans carry Envoy's downstream tags, without the upstream's address.
    assert_eq!(d1["tags"]["peer.address"], "127.0.0.1");
    assert!(d1["tags"].get("upstream_address").is_none(), "{d1}");
    assert!(
        d1["tags"].get("zone").is_none(),
        "empty tags are dropped: {d1}"
    );
    // verbose: the stream's seven timings then the end, the upstream request's four.
    for d in [&d1, &d2] {
        assert_eq!(annotations(d), VERBOSE_STREAM, "{d}");
    }
    for u in [&u1, &u2] {
        assert_eq!(annotations(u), VERBOSE_UPSTREAM, "{u}");
    }
    let ts = |s: &serde_json::Value| -> Vec<u64> {
        s["annotations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["timestamp"].as_u64().unwrap())
            .collect()
    };
    let d = ts(&d1);
    let start = d1["timestamp"].as_u64().unwrap();
    let end = start + d1["duration"].as_u64().unwrap();
    assert!(d.iter().all(|t| (start..=end + 1000).contains(t)), "{d1}");
    assert!(d[0] <= d[1] && d[1] <= d[3] && d[3] <= d[6], "{d1}");
}

/// Each attempt of a retried request is a span of its own under the stream's: the first one
/// reset to retry (`canceled`), the retry tagged `retry.count`.
#[tokio::test]
async fn each_retry_attempt_has_its_span() {
    let (zipkin, spans, _c) = collector().await;
    let app = upstream("app").await;
    let tracing = format!(
        "          tracing:\n            spawn_upstream_span: true\n            provider:\n              {ZIPKIN}\n"
    );
    let vh = "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {prefix: /}\n                route: {cluster: app, retry_policy: {retry_on: 5xx, num_retries: 1}}\n";
    let egress = http_listener("egress", &tracing, vh).replacen(
        "    filter_chains:",
        "    traffic_direction: OUTBOUND\n    filter_chains:",
        1,
    );
    let r = Remora::start(&format!(
        "{}{FLUSH_EACH}",
        bootstrap(
            &egress,
            &(cluster("app", &[app.addr], "") + &cluster("zipkin", &[zipkin], ""))
        )
    ))
    .await;
    let resp = get(r.addr("egress"), "a", "/status/503").await;
    assert_eq!(resp.status, 503);
    let spans = wait_spans(&spans, 3).await;
    let stream = spans.iter().find(|s| s["kind"] == "SERVER").unwrap();
    assert_eq!(stream["tags"]["response_flags"], "URX", "{stream}");
    let mut attempts: Vec<&serde_json::Value> =
        spans.iter().filter(|s| s["kind"] == "CLIENT").collect();
    attempts.sort_by_key(|s| s["timestamp"].as_u64());
    assert_eq!(attempts.len(), 2, "{spans:?}");
    let (first, retry) = (attempts[0], attempts[1]);
    for a in [first, retry] {
        assert_eq!(a["parentId"], stream["id"], "{a}");
        assert_eq!(a["tags"]["http.status_code"], "503");
        assert_eq!(a["tags"]["error"], "true");
        // Not verbose: only the end.
        assert_eq!(annotations(a), ["cr"], "{a}");
    }
    assert_eq!(first["tags"]["canceled"], "true", "{first}");
    assert!(first["tags"].get("retry.count").is_none());
    assert_eq!(retry["tags"]["retry.count"], "1", "{retry}");
    assert!(retry["tags"].get("canceled").is_none());
    assert_ne!(first["id"], retry["id"]);
}

#[tokio::test]
async fn an_unsampled_request_propagates_its_decision_and_reports_nothing() {
    let (zipkin, spans, _c) = collector().await;
    let app = upstream("app").await;
    let tracing = format!(
        "          tracing:\n            random_sampling: {{value: 0}}\n            provider:\n              {}\n",
        ZIPKIN.replace(
            "HTTP_JSON",
            "HTTP_JSON\n                trace_context_option: USE_B3_WITH_W3C_PROPAGATION"
        )
    );
    let r = Remora::start(&format!(
        "{}{FLUSH_EACH}",
        bootstrap(
            &listener("egress", "OUTBOUND", &tracing, "app"),
            &(cluster("app", &[app.addr], "") + &cluster("zipkin", &[zipkin], ""))
        )
    ))
    .await;
    let resp = get(r.addr("egress"), "a", "/").await;
    let seen = resp.json()["headers"].clone();
    assert_eq!(seen["x-b3-sampled"], "0", "{seen}");
    assert!(
        seen["traceparent"].as_str().unwrap().ends_with("-00"),
        "{seen}"
    );
    assert_eq!(seen["x-request-id"].as_str().unwrap().as_bytes()[14], b'4');
    // A W3C parent, sampled: the trace goes on with a child span; both headers go upstream.
    let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let resp = get_with(r.addr("egress"), "a", "/", &[("traceparent", parent)]).await;
    let seen = resp.json()["headers"].clone();
    assert_eq!(
        seen["x-b3-traceid"], "0af7651916cd43dd8448eb211c80319c",
        "{seen}"
    );
    assert_eq!(seen["x-b3-parentspanid"], "b7ad6b7169203331");
    let got = wait_spans(&spans, 1).await;
    assert_eq!(
        got.len(),
        1,
        "only the sampled request is reported: {got:?}"
    );
    assert_eq!(got[0]["parentId"], "b7ad6b7169203331");
    assert_eq!(r.stat("http.egress.tracing.not_traceable").await, 2);
}

#[tokio::test]
async fn a_dead_collector_never_slows_requests() {
    let app = upstream("app").await;
    let tracing = format!("          tracing:\n            provider:\n              {ZIPKIN}\n");
    let r = Remora::start(&format!(
        "{}{FLUSH_EACH}",
        bootstrap(
            &listener("egress", "OUTBOUND", &tracing, "app"),
            &(cluster("app", &[app.addr], "") + &cluster("zipkin", &[closed_port()], ""))
        )
    ))
    .await;
    for _ in 0..5 {
        assert_eq!(get(r.addr("egress"), "a", "/").await.status, 200);
    }
    for _ in 0..100 {
        if r.stat("tracing.zipkin.reports_failed").await >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(r.stat("tracing.zipkin.reports_failed").await >= 1);
    assert_eq!(r.stat("tracing.zipkin.reports_sent").await, 0);
}

/// Envoy's zipkin front-proxy example, run for real (hosts rewritten to local servers): the
/// span is named by the route's decorator, which also goes upstream in
/// `x-envoy-decorator-operation`.
#[tokio::test]
async fn the_zipkin_example_runs() {
    let (zipkin, spans, _c) = collector().await;
    let (one, two) = (upstream("envoy-1").await, upstream("envoy-1b").await);
    let front = closed_port();
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/data/envoy-configs/examples/zipkin_envoy-front-proxy.yaml"
    );
    let yaml = std::fs::read_to_string(path)
        .unwrap()
        .replace("address: 0.0.0.0", "address: 127.0.0.1")
        .replacen(
            "port_value: 10000",
            &format!("port_value: {}", front.port()),
            1,
        )
        .replace("address: envoy-1", "address: 127.0.0.1")
        .replace(
            "port_value: 10000",
            &format!("port_value: {}", one.addr.port()),
        )
        .replace(
            "port_value: 10001",
            &format!("port_value: {}", two.addr.port()),
        )
        .replace("address: zipkin", "address: 127.0.0.1")
        .replace(
            "port_value: 9411",
            &format!("port_value: {}", zipkin.port()),
        );
    let _r = Remora::start(&yaml).await;
    let resp = get(front, "front.example", "/trace/1").await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-upstream"), Some("envoy-1"));
    let seen = resp.json()["headers"].clone();
    assert_eq!(
        seen["x-envoy-decorator-operation"], "routeToEnvoy1",
        "{seen}"
    );
    let got = wait_spans(&spans, 1).await;
    assert_eq!(got[0]["name"], "routeToEnvoy1");
    assert_eq!(got[0]["kind"], "CLIENT");
    assert_eq!(got[0]["traceId"], seen["x-b3-traceid"]);
    assert_eq!(got[0]["localEndpoint"]["serviceName"], "envoy-proxy-front");
}

/// The same through xDS: the listener (with its connection manager's `tracing`, spawning upstream
/// spans) and the collector's cluster come from the control plane; a tracing setting remora does
/// not build is NACKed with its path while the listener in service keeps tracing.
#[tokio::test(flavor = "multi_thread")]
async fn tracing_delivered_over_lds() {
    use crate::xds::{NODE, bootstrap_with_ads, lds_listener, xds_server};
    use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
    use envoy_types::pb::envoy::config::trace::v3 as trace;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
    use remora_xds::build::{route_all_to, static_cluster};
    use remora_xds::resource::{CLUSTER, LISTENER, ROUTE, any};
    use remora_xds::server::Snapshot;
    let (zipkin, spans, _c) = collector().await;
    let app = upstream("app").await;
    let (cache, xds, _task) = xds_server().await;
    let port = closed_port().port();
    let traced = |refused: bool| {
        let mut l = lds_listener("dyn", port, "r1", "dyn");
        l.traffic_direction = TrafficDirection::Outbound as i32;
        let listener_filter = &mut l.filter_chains[0].filters[0];
        let Some(envoy_types::pb::envoy::config::listener::v3::filter::ConfigType::TypedConfig(a)) =
            &listener_filter.config_type
        else {
            unreachable!()
        };
        let mut m: hcm::HttpConnectionManager = prost::Message::decode(a.value.as_slice()).unwrap();
        let zipkin_config = trace::ZipkinConfig {
            collector_cluster: "zipkin".into(),
            collector_endpoint: "/api/v2/spans".into(),
            collector_endpoint_version: trace::zipkin_config::CollectorEndpointVersion::HttpJson
                as i32,
            ..Default::default()
        };
        m.tracing = Some(hcm::http_connection_manager::Tracing {
            provider: Some(trace::tracing::Http {
                name: "envoy.tracers.zipkin".into(),
                config_type: Some(trace::tracing::http::ConfigType::TypedConfig(any(
                    &zipkin_config,
                ))),
            }),
            spawn_upstream_span: Some(envoy_types::pb::google::protobuf::BoolValue { value: true }),
            no_context_propagation: refused,
            ..Default::default()
        });
        listener_filter.config_type = Some(
            envoy_types::pb::envoy::config::listener::v3::filter::ConfigType::TypedConfig(any(&m)),
        );
        l
    };
    let clusters = [
        static_cluster("app", &[app.addr]),
        static_cluster("zipkin", &[zipkin]),
    ];
    let snap = |v: &str, refused: bool| {
        Snapshot::default()
            .with(CLUSTER, "c1", clusters.iter().map(any).collect())
            .with(LISTENER, v, vec![any(&traced(refused))])
            .with(ROUTE, "r1", vec![any(&route_all_to("r1", "app"))])
    };
    cache.set_snapshot(NODE, snap("l1", false));
    let yaml = bootstrap_with_ads(xds, "GRPC").replace(
        "  cds_config: {ads: {}, resource_api_version: V3}\n",
        "  cds_config: {ads: {}, resource_api_version: V3}\n  lds_config: {ads: {}, resource_api_version: V3}\n",
    ) + FLUSH_EACH;
    let r = Remora::start(&yaml).await;
    r.wait_stat("listener_manager.total_listeners_active", 2)
        .await;
    let l = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let resp = get(l, "traced.example", "/x").await;
    assert_eq!(resp.status, 200);
    let got = wait_spans(&spans, 2).await;
    let kind = |k: &str| got.iter().find(|s| s["kind"] == k).unwrap().clone();
    let (stream, up) = (kind("SERVER"), kind("CLIENT"));
    assert_eq!(up["name"], "router app egress");
    assert_eq!(up["tags"]["upstream_cluster"], "app");
    assert_eq!(up["parentId"], stream["id"]);
    assert_eq!(resp.json()["headers"]["x-b3-spanid"], up["id"]);

    cache.set_snapshot(NODE, snap("l2", true));
    r.wait_stat("listener_manager.lds.update_rejected", 1).await;
    let (_, dump) = r.admin_get("/config_dump").await.unwrap();
    assert!(
        dump.contains("tracing.no_context_propagation"),
        "the NACK names the field"
    );
    assert_eq!(get(l, "traced.example", "/y").await.status, 200);
    wait_spans(&spans, 4).await;
}

type Exports = Arc<Mutex<Vec<remora::tracing::opentelemetry::pb::ExportTraceServiceRequest>>>;

/// An OTLP TraceService over HTTP/2: every Export request decoded and kept; answers
/// grpc-status 0 in the trailers.
async fn otlp_collector() -> (std::net::SocketAddr, Exports, tokio::task::JoinHandle<()>) {
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let kept: Exports = Arc::default();
    let k = kept.clone();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let k = k.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: http::Request<hyper::body::Incoming>| {
                        let k = k.clone();
                        async move {
                            assert_eq!(
                                req.uri().path(),
                                remora::tracing::opentelemetry::EXPORT_PATH
                            );
                            assert_eq!(req.headers()["content-type"], "application/grpc");
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let m: remora::tracing::opentelemetry::pb::ExportTraceServiceRequest =
                                prost::Message::decode(&body[5..]).unwrap();
                            k.lock().unwrap().push(m);
                            let mut trailers = http::HeaderMap::new();
                            trailers.insert("grpc-status", "0".parse().unwrap());
                            let frames: Vec<Result<Frame<bytes::Bytes>, std::convert::Infallible>> = vec![
                                Ok(Frame::data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]))),
                                Ok(Frame::trailers(trailers)),
                            ];
                            Ok::<_, std::convert::Infallible>(
                                http::Response::builder()
                                    .header("content-type", "application/grpc")
                                    .body(StreamBody::new(futures_util::stream::iter(frames)))
                                    .unwrap(),
                            )
                        }
                    },
                );
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, kept, task)
}

/// OpenTelemetry: the span continues the request's W3C trace, goes upstream as `traceparent`,
/// and reaches the OTLP collector with the configured resource.
#[tokio::test]
async fn opentelemetry_spans_reach_an_otlp_collector() {
    let (otel, exports, _c) = otlp_collector().await;
    let app = upstream("app").await;
    let tracing = r#"          tracing:
            verbose: true
            provider:
              name: envoy.tracers.opentelemetry
              typed_config:
                "@type": type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig
                service_name: front-proxy
                grpc_service: {envoy_grpc: {cluster_name: otel}, timeout: 1s}
                resource_detectors:
                - name: envoy.tracers.opentelemetry.resource_detectors.static_config
                  typed_config:
                    "@type": type.googleapis.com/envoy.extensions.tracers.opentelemetry.resource_detectors.v3.StaticConfigResourceDetectorConfig
                    attributes: {k8s.pod.name: front-0}
"#;
    let h2 = "    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        explicit_http_config: {http2_protocol_options: {}}\n";
    let runtime = FLUSH_EACH.replace("tracing.zipkin.", "tracing.opentelemetry.");
    let r = Remora::start(&format!(
        "{}{runtime}",
        bootstrap(
            &listener("ingress", "INBOUND", tracing, "app"),
            &(cluster("app", &[app.addr], "") + &cluster("otel", &[otel], h2))
        )
    ))
    .await;
    let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let resp = get_with(
        r.addr("ingress"),
        "svc",
        "/otel",
        &[("traceparent", parent)],
    )
    .await;
    assert_eq!(resp.status, 200);
    let sent = resp.json()["headers"]["traceparent"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        sent.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
        "{sent}"
    );
    assert!(sent.ends_with("-01"));
    let mut got = Vec::new();
    for _ in 0..100 {
        got = exports.lock().unwrap().clone();
        if !got.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rs = &got.first().expect("an export").resource_spans[0];
    let attrs = &rs.resource.as_ref().unwrap().attributes;
    assert!(attrs.iter().any(|kv| kv.key == "service.name"
        && kv.value.as_ref().and_then(|v| v.value.clone())
            == Some(
                remora::tracing::opentelemetry::pb::any_value::Value::StringValue(
                    "front-proxy".into()
                )
            )));
    assert!(attrs.iter().any(|kv| kv.key == "k8s.pod.name"), "{attrs:?}");
    let span = &rs.scope_spans[0].spans[0];
    assert_eq!(span.name, "ingress");
    assert_eq!(span.kind, 2);
    assert_eq!(span.parent_span_id, 0xb7ad6b7169203331u64.to_be_bytes());
    let hex: String = span.span_id.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(sent[36..52], hex, "the upstream's parent is the span");
    // verbose: the stream's timings as span events, in Envoy's order, within the span.
    let names: Vec<&str> = span.events.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, &VERBOSE_STREAM[..7], "{span:?}");
    assert!(span.events.iter().all(|e| {
        (span.start_time_unix_nano..=span.end_time_unix_nano + 1_000_000)
            .contains(&e.time_unix_nano)
    }));
    r.wait_stat("tracing.opentelemetry.reports_sent", 1).await;
}

/// A mirror policy's `trace_sampled` is the copy's propagated decision: the primary goes
/// upstream sampled, the copy (`trace_sampled: false`) unsampled, in the same trace.
#[tokio::test]
async fn a_mirror_copy_carries_its_policys_trace_sampled() {
    let (zipkin, _spans, _c) = collector().await;
    let primary = recorder("primary", Behaviour::Answer).await;
    let mirror = recorder("mirror", Behaviour::Answer).await;
    let tracing = format!("          tracing:\n            provider:\n              {ZIPKIN}\n");
    let vh = "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {prefix: /}\n                route: {cluster: primary, request_mirror_policies: [{cluster: mirror, trace_sampled: false}]}\n";
    let egress = http_listener("egress", &tracing, vh).replacen(
        "    filter_chains:",
        "    traffic_direction: OUTBOUND\n    filter_chains:",
        1,
    );
    let clusters = [
        cluster("primary", &[primary.addr], ""),
        cluster("mirror", &[mirror.addr], ""),
        cluster("zipkin", &[zipkin], ""),
    ]
    .concat();
    let r = Remora::start(&bootstrap(&egress, &clusters)).await;
    assert_eq!(get(r.addr("egress"), "a", "/").await.status, 200);
    let copy = &mirror.wait_for(1).await[0];
    let orig = &primary.seen()[0];
    assert_eq!(orig.header("x-b3-sampled"), Some("1"));
    assert_eq!(copy.header("x-b3-sampled"), Some("0"));
    assert!(orig.header("x-b3-traceid").is_some());
    assert_eq!(copy.header("x-b3-traceid"), orig.header("x-b3-traceid"));
    assert_eq!(copy.header("x-b3-spanid"), orig.header("x-b3-spanid"));
}
