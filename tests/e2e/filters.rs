//! HTTP filters before the router: envoy.filters.http.compressor (gzip, brotli, zstd).

use crate::sources::Source;
use crate::support::*;

/// Istio's stats-listener filter chain (brotli, zstd, gzip compressors, then the router).
fn compressing_proxy_yaml(upstream: std::net::SocketAddr, extra_gzip: &str) -> String {
    // `/status/<code>` answers a short body; here it is labelled text.
    let vhosts = "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {prefix: \"/status/\"}\n                route: {cluster: backend}\n                response_headers_to_add: [{header: {key: content-type, value: text/plain}}]\n              - match: {prefix: \"/stream/\"}\n                route: {cluster: backend}\n                response_headers_to_add: [{header: {key: content-type, value: text/plain}}]\n              - match: {prefix: \"/\"}\n                route: {cluster: backend}\n";
    let mut filters = String::new();
    for (name, ty) in [
        (
            "brotli",
            "envoy.extensions.compression.brotli.compressor.v3.Brotli",
        ),
        (
            "zstd",
            "envoy.extensions.compression.zstd.compressor.v3.Zstd",
        ),
        (
            "gzip",
            "envoy.extensions.compression.gzip.compressor.v3.Gzip",
        ),
    ] {
        filters.push_str(&format!(
            r#"          - name: envoy.filters.http.compressor.{name}
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor
              compressor_library:
                name: stats_{name}
                typed_config: {{"@type": type.googleapis.com/{ty}}}
              response_direction_config:
                common_config:
                  content_type: [text/plain, application/json]
{}"#,
            if name == "gzip" { extra_gzip } else { "" }
        ));
    }
    let listener = http_listener("main", "", vhosts).replace(
        "          http_filters:\n",
        &format!("          http_filters:\n{filters}"),
    );
    bootstrap(&listener, &cluster("backend", &[upstream], ""))
}

fn curl(args: &[&str]) -> (String, Vec<u8>) {
    let out = std::process::Command::new("curl")
        .args(["-s", "-D", "-", "-o", "/dev/stderr"])
        .args(args)
        .output()
        .expect("curl is installed (.ci/run installs it)");
    (
        String::from_utf8_lossy(&out.stdout).to_lowercase(),
        out.stderr,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn compressor_filters_choose_by_accept_encoding_and_curl_decodes() {
    let u = upstream("u").await;
    let r = Remora::start(&compressing_proxy_yaml(
        u.addr,
        "                  min_content_length: 100\n                remove_accept_encoding_header: true\n",
    ))
    .await;
    let url = format!("http://{}/echo", r.addr("main"));
    // curl offers every encoding it decodes; equal q-values go to the first filter (brotli).
    for (accept, want) in [
        ("br, zstd, gzip", "br"),
        ("gzip;q=1, br;q=0.5", "gzip"),
        ("zstd", "zstd"),
        ("*", "br"),
    ] {
        let (head, body) = curl(&[
            "--compressed",
            "-H",
            &format!("accept-encoding: {accept}"),
            &url,
        ]);
        assert!(
            head.contains(&format!("content-encoding: {want}\r\n")),
            "{accept}: {head}"
        );
        assert!(head.contains("vary: accept-encoding\r\n"), "{head}");
        assert!(!head.contains("content-length"), "{head}");
        let echoed: serde_json::Value = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("{accept}: {e}: {}", String::from_utf8_lossy(&body)));
        assert_eq!(echoed["upstream"], "u");
        // The gzip filter's remove_accept_encoding_header applies whichever filter compresses.
        assert_eq!(
            echoed["headers"].get("accept-encoding"),
            None,
            "remove_accept_encoding_header: {echoed}"
        );
    }
    // identity / nothing offered: plain JSON, still Vary.
    let (head, body) = curl(&["-H", "accept-encoding: identity", &url]);
    assert!(!head.contains("content-encoding"), "{head}");
    assert!(head.contains("vary: accept-encoding"), "{head}");
    serde_json::from_slice::<serde_json::Value>(&body).unwrap();
    let (head, _) = curl(&[&url]);
    assert!(!head.contains("content-encoding"), "{head}");
    // A small body for gzip (min_content_length 100) is not compressed.
    let (head, _) = curl(&[
        "-H",
        "accept-encoding: gzip",
        &format!("http://{}/status/200", r.addr("main")),
    ]);
    assert!(!head.contains("content-encoding"), "{head}");
    // A streamed body (no content-length) is compressed chunk by chunk.
    let (head, body) = curl(&[
        "--compressed",
        "-H",
        "accept-encoding: gzip",
        &format!("http://{}/stream/64", r.addr("main")),
    ]);
    assert!(head.contains("content-encoding: gzip\r\n"), "{head}");
    assert!(!head.contains("content-length"), "{head}");
    assert_eq!(body.len(), 64 * 1024, "curl decoded the whole stream");
    assert!(body.iter().all(|b| *b == b'y'));

    let stats = r.stats().await;
    let s =
        |lib: &str, n: &str| stats[&format!("http.main.compressor.stats_{lib}.{lib}.response.{n}")];
    assert_eq!(s("brotli", "compressed"), 2);
    assert_eq!(s("gzip", "compressed"), 2);
    assert_eq!(s("zstd", "compressed"), 1);
    assert_eq!(s("brotli", "header_wildcard"), 1);
    assert_eq!(s("gzip", "header_compressor_used"), 3);
    assert_eq!(s("gzip", "content_length_too_small"), 1);
    assert_eq!(s("gzip", "no_accept_header"), 1);
    assert_eq!(s("gzip", "header_identity"), 1);
    assert!(s("brotli", "total_uncompressed_bytes") > s("brotli", "total_compressed_bytes"));
}

#[tokio::test(flavor = "multi_thread")]
async fn compressor_config_errors_name_the_field() {
    let u = upstream("u").await;
    let dir = TempDir::new("compressor");
    let path = dir.path("b.yaml");
    let base = compressing_proxy_yaml(u.addr, "");
    for (yaml, want) in [
        (
            compressing_proxy_yaml(u.addr, "                status_header_enabled: true\n"),
            "http_filters[2].typed_config.response_direction_config.status_header_enabled: is not supported",
        ),
        (
            base.replace(
                "envoy.extensions.compression.gzip.compressor.v3.Gzip}",
                "envoy.extensions.compression.gzip.compressor.v3.Gzip, memory_level: 9}",
            ),
            "http_filters[2].typed_config.compressor_library.typed_config.memory_level: only the default (5) is supported",
        ),
        (
            base.replacen(
                "              response_direction_config:",
                "              request_direction_config: {common_config: {}}\n              response_direction_config:",
                1,
            ),
            "http_filters[0].typed_config.request_direction_config: request compression is not supported",
        ),
    ] {
        std::fs::write(&path, yaml).unwrap();
        let (code, _, err) = run(&["--mode", "validate", "-c", path.to_str().unwrap()]);
        assert_eq!(code, 1, "{err}");
        assert!(err.contains(want), "{err}");
    }
}

/// Istio's HTTP metadata exchange on a sidecar's inbound side (istiod's config, wrapped in a
/// TypedStruct): the peer's `x-envoy-peer-metadata*` headers are taken off before the app, and
/// the response carries this workload's, each only where the request carried the peer's.
#[tokio::test(flavor = "multi_thread")]
async fn istio_peer_metadata_headers_inbound() {
    let u = upstream("app").await;
    let vhosts = "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {prefix: \"/\"}\n                route: {cluster: backend}\n";
    let mx = r#"          - name: istio.metadata_exchange
            typed_config:
              "@type": type.googleapis.com/udpa.type.v1.TypedStruct
              type_url: type.googleapis.com/io.istio.http.peer_metadata.Config
              value:
                downstream_discovery: [{istio_headers: {}}, {workload_discovery: {}}]
                downstream_propagation: [{istio_headers: {}}]
"#;
    let listener = http_listener("inbound", "", vhosts).replace(
        "          http_filters:\n",
        &format!("          http_filters:\n{mx}"),
    );
    let node = "node:\n  id: sidecar~10.0.0.7~deal-1.autolytiq~autolytiq.svc.cluster.local\n  metadata: {NAME: deal-1, NAMESPACE: autolytiq, WORKLOAD_NAME: deal, LABELS: {app: deal, version: v1}}\n";
    let r = Remora::start(&format!(
        "{node}{}",
        bootstrap(&listener, &cluster("backend", &[u.addr], ""))
    ))
    .await;
    let addr = r.addr("inbound");
    let resp = get_with(
        addr,
        "deal",
        "/",
        &[
            (
                "x-envoy-peer-metadata-id",
                "sidecar~10.0.0.9~gw.autolytiq~autolytiq.svc.cluster.local",
            ),
            ("x-envoy-peer-metadata", "CgwKBkxBQkVMUxICKgA="),
        ],
    )
    .await;
    let seen = &resp.json()["headers"];
    assert!(seen.get("x-envoy-peer-metadata-id").is_none(), "{seen}");
    assert!(seen.get("x-envoy-peer-metadata").is_none(), "{seen}");
    assert_eq!(
        resp.header("x-envoy-peer-metadata-id"),
        Some("sidecar~10.0.0.7~deal-1.autolytiq~autolytiq.svc.cluster.local")
    );
    let md = resp.header("x-envoy-peer-metadata").expect("our metadata");
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(md)
        .unwrap();
    let s: envoy_types::pb::google::protobuf::Struct =
        prost::Message::decode(raw.as_slice()).unwrap();
    let text = |k: &str| match &s.fields[k].kind {
        Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(v)) => v.clone(),
        other => panic!("{k}: {other:?}"),
    };
    assert_eq!(text("NAME"), "deal-1");
    assert_eq!(text("WORKLOAD_NAME"), "deal");
    // A request without the peer's headers gets none back.
    let plain = get(addr, "deal", "/").await;
    assert!(plain.header("x-envoy-peer-metadata-id").is_none());
    assert!(plain.header("x-envoy-peer-metadata").is_none());
}

/// A filter disabled in the chain runs only on the routes whose most specific
/// typed_per_filter_config entry enables it (a bare FilterConfig on the route wins over the
/// virtual host's `disabled: true`), whether the listener comes from the file or over LDS.
async fn a_disabled_filter_runs_where_the_route_enables_it(source: Source) {
    let u = upstream("u").await;
    let fc = r#"{"@type": type.googleapis.com/envoy.config.route.v3.FilterConfig"#;
    let text = "response_headers_to_add: [{header: {key: content-type, value: text/plain}}]";
    let vhosts = format!(
        r#"            - name: all
              domains: ["*"]
              typed_per_filter_config:
                gz: {fc}, disabled: true}}
              routes:
              - match: {{prefix: "/stream/", headers: [{{name: x-on, present_match: true}}]}}
                route: {{cluster: backend}}
                {text}
                typed_per_filter_config:
                  gz: {fc}}}
              - match: {{prefix: "/stream/"}}
                route: {{cluster: backend}}
                {text}
"#
    );
    let gzip = r#"          - name: gz
            disabled: true
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor
              compressor_library:
                name: g
                typed_config: {"@type": type.googleapis.com/envoy.extensions.compression.gzip.compressor.v3.Gzip}
              response_direction_config:
                common_config:
                  content_type: [text/plain]
"#;
    let listener = http_listener("main", "", &vhosts).replace(
        "          http_filters:\n",
        &format!("          http_filters:\n{gzip}"),
    );
    let r = source
        .start(&bootstrap(&listener, &cluster("backend", &[u.addr], "")))
        .await;
    let url = format!("http://{}/stream/4", r.addr("main"));
    let (head, body) = curl(&["--compressed", "-H", "x-on: 1", &url]);
    assert!(head.contains("content-encoding: gzip\r\n"), "{head}");
    assert_eq!(body.len(), 4 * 1024);
    let (head, _) = curl(&["--compressed", &url]);
    assert!(!head.contains("content-encoding"), "{head}");
    let stats = r.stats().await;
    assert_eq!(stats["http.main.compressor.g.gzip.response.compressed"], 1);
    assert_eq!(
        stats["http.main.compressor.g.gzip.response.header_compressor_used"],
        1
    );
}

crate::across_sources!(a_disabled_filter_runs_where_the_route_enables_it);
