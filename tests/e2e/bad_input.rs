//! Bad input: configuration errors name where they are and exit non-zero; malformed requests
//! get Envoy's status codes, the connection is closed, and other connections keep working.

use crate::support::*;
use std::time::Duration;

fn validate(yaml: &str) -> (i32, String, String) {
    let dir = TempDir::new("bad");
    let p = dir.path("bad.yaml");
    std::fs::write(&p, yaml).unwrap();
    run(&["--mode", "validate", "-c", p.to_str().unwrap()])
}

const HCM_HEAD: &str = r#"static_resources:
  listeners:
  - name: l
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: l
          http_filters: [{name: envoy.filters.http.router, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}]
          route_config:
            virtual_hosts: [{name: v, domains: ["*"], routes: [{match: {prefix: /}, route: {cluster: CLUSTER}}]}]
"#;

#[test]
fn malformed_yaml_reports_line_and_column() {
    let (code, _, err) = validate("static_resources:\n  clusters:\n  - name: [a, b\n");
    assert_ne!(code, 0);
    assert!(err.contains("YAML syntax error at line"), "{err}");
    assert!(err.contains("column"), "{err}");
}

#[test]
fn unknown_type_and_unknown_field_name_their_path() {
    let (code, _, err) = validate(
        &HCM_HEAD
            .replace("HttpConnectionManager\n", "NoSuchThing\n")
            .replace("CLUSTER", "c"),
    );
    assert_ne!(code, 0);
    assert!(err.contains("static_resources.listeners[0].filter_chains[0].filters[0].typed_config.@type: unknown type 'type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.NoSuchThing'"), "{err}");
    let (code, _, err) =
        validate("static_resources:\n  clusters:\n  - name: c\n    bogus_field: 1\n");
    assert_ne!(code, 0);
    assert!(err.contains("static_resources.clusters[0].bogus_field: unknown field in envoy.config.cluster.v3.Cluster"), "{err}");
    // --allow-unknown-static-fields turns it into a warning.
    let dir = TempDir::new("unknown");
    let p = dir.path("c.yaml");
    std::fs::write(
        &p,
        "static_resources:\n  clusters:\n  - name: c\n    bogus_field: 1\n",
    )
    .unwrap();
    let (code, out, _) = run(&[
        "--mode",
        "validate",
        "--allow-unknown-static-fields",
        "-c",
        p.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn unsupported_values_are_refused_by_path() {
    let (code, _, err) = validate(
        "static_resources:\n  clusters:\n  - {name: a}\n  - {name: b}\n  - {name: c, lb_policy: CLUSTER_PROVIDED}\n",
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("static_resources.clusters[2].lb_policy: CLUSTER_PROVIDED is not supported"),
        "{err}"
    );
}

#[test]
fn undefined_cluster_is_an_error() {
    let (code, _, err) = validate(&HCM_HEAD.replace("CLUSTER", "missing"));
    assert_ne!(code, 0);
    assert!(
        err.contains("references cluster 'missing', which is not defined"),
        "{err}"
    );
    assert!(
        err.contains("static_resources.listeners[0].filter_chains[0]"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn port_in_use_names_the_listener() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let yaml = format!(
        "{}  clusters:\n{}",
        HCM_HEAD
            .replace("CLUSTER", "c")
            .replace("port_value: 0", &format!("port_value: {port}"))
            .replace("- name: l\n", "- name: busy_listener\n"),
        cluster("c", &[closed_port()], "")
    );
    let err = match Remora::try_start(&yaml, &[]).await {
        Ok(_) => panic!("started on a port in use"),
        Err(e) => e,
    };
    assert!(err.contains("listener 'busy_listener'"), "{err}");
    assert!(
        err.contains(&format!("cannot bind '127.0.0.1:{port}'")),
        "{err}"
    );
    drop(taken);
}

async fn proxy() -> (Remora, Upstream) {
    let u = upstream("u").await;
    let yaml = format!(
        "{}  clusters:\n{}",
        HCM_HEAD.replace("CLUSTER", "c"),
        cluster("c", &[u.addr], "")
    );
    (Remora::start(&yaml).await, u)
}

async fn still_serving(r: &Remora) {
    let resp = get(r.addr("l"), "x", "/ok").await;
    assert_eq!(resp.status, 200);
}

/// Send raw bytes; returns (status, the connection was closed by the proxy).
async fn bad(r: &Remora, raw: &[u8]) -> (u16, String) {
    let bytes = raw_exchange(r.addr("l"), raw, Duration::from_secs(5))
        .await
        .unwrap();
    let (status, head, _) = split_response(&bytes);
    (status, head)
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_requests_get_envoy_codes_and_close() {
    let (r, u) = proxy().await;
    // raw_exchange reads to EOF: each of these returning at all means the proxy closed.
    let (s, head) = bad(&r, b"GARBAGE\r\n\r\n").await;
    assert_eq!(s, 400, "{head}");
    assert!(head.to_lowercase().contains("connection: close"), "{head}");
    let (s, _) = bad(&r, b"GET /\x01bad HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(s, 400);
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let (s, _) = bad(&r, big.as_bytes()).await;
    assert_eq!(s, 431);
    let mut many = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
    for i in 0..120 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let (s, _) = bad(&r, many.as_bytes()).await;
    assert_eq!(s, 431);
    // Smuggling shapes.
    let (s, _) = bad(&r, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n").await;
    assert_eq!(s, 400);
    let (s, _) = bad(
        &r,
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    assert_eq!(s, 400);
    let (s, _) = bad(
        &r,
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    )
    .await;
    assert_eq!(s, 400);
    let (s, _) = bad(
        &r,
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
    )
    .await;
    assert_eq!(s, 501);
    let (s, _) = bad(&r, b"GET / HTTP/1.1\r\n\r\n").await;
    assert_eq!(s, 400, "missing Host");
    assert_eq!(
        u.requests.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "nothing reached the upstream"
    );
    still_serving(&r).await;
    let stats = r.stats().await;
    // A missing Host is the connection manager's 400 (missing_host_header), not a codec error.
    assert_eq!(stats["http.l.downstream_cx_protocol_error"], 8);
}

/// Chunk sizes, Content-Length values and request lines as Envoy 1.40 answers them: 400 (or
/// 426) with its response-code details, and the connection closed; or proxied.
#[tokio::test(flavor = "multi_thread")]
async fn bad_framing_and_request_lines_as_envoy_answers_them() {
    let u = upstream("u").await;
    let log = "          access_log:\n          - name: l\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog\n              path: RUN_DIR/a.log\n              log_format: {text_format_source: {inline_string: \"%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%\\n\"}}\n";
    let yaml = format!(
        "{}  clusters:\n{}",
        HCM_HEAD.replace("CLUSTER", "c").replace(
            "          http_filters:",
            &format!("{log}          http_filters:")
        ),
        cluster("c", &[u.addr], "")
    );
    let r = Remora::start(&yaml).await;
    let chunked = |size: &str| {
        format!(
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{size}\r\nhello\r\n0\r\n\r\n"
        )
    };
    let refused = [
        "5g",
        "+5",
        "-5",
        "0x5",
        " 5",
        "",
        ";ext",
        "10000000000000005",
        "5\x00",
    ];
    for size in refused {
        let (s, head) = bad(&r, chunked(size).as_bytes()).await;
        assert_eq!(s, 400, "chunk size {size:?}: {head}");
        assert!(head.contains("connection: close"), "{size:?}: {head}");
    }
    let (s, _) = bad(
        &r,
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(s, 400, "a chunk size line ends with CRLF");
    let lines = r.log_lines("a.log", refused.len() + 1).await;
    assert_eq!(lines.len(), refused.len() + 1, "{lines:?}");
    for l in &lines {
        assert_eq!(l, "400 DPE http1.codec_error");
    }
    for cl in ["+5", "-5", "0x5", "5,5", "5 5", ""] {
        let raw = format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {cl}\r\n\r\nhello");
        let (s, _) = bad(&r, raw.as_bytes()).await;
        assert_eq!(s, 400, "content-length {cl:?}");
    }
    for line in ["FOO / HTTP/1.1", "get / HTTP/1.1", "M-SEARCH / HTTP/1.1"] {
        let (s, _) = bad(&r, format!("{line}\r\nHost: x\r\n\r\n").as_bytes()).await;
        assert_eq!(s, 400, "{line}");
    }
    for line in ["GET / HTTP/1.2", "GET / HTTP/2.0", "GET /"] {
        let (s, _) = bad(&r, format!("{line}\r\nHost: x\r\n\r\n").as_bytes()).await;
        assert_eq!(s, 426, "{line}");
    }
    // Accepted as by Envoy: extensions, whitespace after the size, leading zeros, several
    // spaces in the request line, a known WebDAV method.
    for size in ["5;ext=1", "5 ;a", "5 ", "000000000000000000005"] {
        let (s, _, body) = raw_http(
            r.addr("l"),
            &chunked(size).replace("HTTP/1.1\r\n", "HTTP/1.1\r\nConnection: close\r\n"),
        )
        .await
        .unwrap();
        assert_eq!(s, 200, "chunk size {size:?}: {body}");
    }
    for line in ["GET  /two-spaces HTTP/1.1", "PROPFIND / HTTP/1.1"] {
        let (s, _, _) = raw_http(
            r.addr("l"),
            &format!("{line}\r\nHost: x\r\nConnection: close\r\n\r\n"),
        )
        .await
        .unwrap();
        assert_eq!(s, 200, "{line}");
    }
    still_serving(&r).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hung_client_does_not_block_others() {
    let (r, _u) = proxy().await;
    // A client that sends half a request head and stalls.
    let mut stuck = tokio::net::TcpStream::connect(r.addr("l")).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stuck, b"GET / HTTP/1.1\r\nHo")
        .await
        .unwrap();
    for _ in 0..5 {
        still_serving(&r).await;
    }
    drop(stuck);
}

/// Istio's bootstrap extension (internal listeners, wrapped in a TypedStruct) is accepted; other
/// bootstrap extensions and overload-manager monitors are refused by path.
#[test]
fn bootstrap_extensions_and_overload_monitors() {
    let ok = "bootstrap_extensions:\n- name: envoy.bootstrap.internal_listener\n  typed_config:\n    \"@type\": type.googleapis.com/udpa.type.v1.TypedStruct\n    type_url: type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener\n    value: {buffer_size_kb: 64}\n";
    let (code, _, err) = validate(ok);
    assert_eq!(code, 0, "{err}");
    let bad = "overload_manager:\n  resource_monitors:\n  - name: heap\n    typed_config:\n      \"@type\": type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig\n      max_active_downstream_connections: 0\n";
    let (code, _, err) = validate(bad);
    assert_ne!(code, 0);
    assert!(
        err.contains("overload_manager.resource_monitors[0].typed_config.max_active_downstream_connections: must be greater than 0"),
        "{err}"
    );
}
