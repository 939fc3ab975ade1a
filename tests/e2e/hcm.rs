//! HTTP connection manager settings: timeouts, connection limits, forwarding headers, server
//! header, local-reply mapping, header-name rules, TLS requirement, port stripping.

use crate::support::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn all_to(cluster: &str) -> String {
    format!(
        "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {{prefix: \"/\"}}\n                route: {{cluster: {cluster}}}\n"
    )
}

async fn proxy(hcm_extra: &str) -> (Remora, Upstream) {
    let u = upstream("u").await;
    let r = Remora::start(&bootstrap(
        &http_listener("main", hcm_extra, &all_to("u")),
        &cluster("u", &[u.addr], ""),
    ))
    .await;
    (r, u)
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_idle_timeout_answers_504_si() {
    let (r, _u) = proxy("          stream_idle_timeout: 0.3s\n").await;
    let resp = get(r.addr("main"), "x", "/delay/3000").await;
    assert_eq!((resp.status, resp.text().as_str()), (504, "stream timeout"));
    r.wait_stat("http.main.downstream_rq_idle_timeout", 1).await;
    // A body that stalls after the headers: the stream is reset and the client sees a short body.
    let bytes = raw_exchange(
        r.addr("main"),
        b"GET /slowbody/3000 HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let (status, head, body) = split_response(&bytes);
    assert_eq!(status, 200, "{head}");
    assert!(
        body.is_empty(),
        "the connection is closed before the body: {body:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn request_timeout_answers_408_for_a_slow_upload() {
    let (r, _u) = proxy("          request_timeout: 0.3s\n").await;
    let mut s = tokio::net::TcpStream::connect(r.addr("main"))
        .await
        .unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly a little")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let (status, _, body) = split_response(&out);
    assert_eq!((status, body.as_str()), (408, "request timeout"));
    r.wait_stat("http.main.downstream_rq_timeout", 1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn request_headers_timeout_closes_and_counts() {
    let (r, _u) = proxy("          request_headers_timeout: 0.3s\n").await;
    let mut s = tokio::net::TcpStream::connect(r.addr("main"))
        .await
        .unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let mut out = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    assert!(
        closed.is_ok(),
        "a connection with a partial head stayed open"
    );
    r.wait_stat("http.main.downstream_rq_header_timeout", 1)
        .await;
    assert_eq!(r.stat("http.main.downstream_cx_idle_timeout").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_connections_are_closed() {
    let (r, _u) = proxy("          common_http_protocol_options: {idle_timeout: 0.3s}\n").await;
    let mut s = tokio::net::TcpStream::connect(r.addr("main"))
        .await
        .unwrap();
    let mut out = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    assert!(closed.is_ok(), "idle connection stayed open");
    r.wait_stat("http.main.downstream_cx_idle_timeout", 1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn max_requests_per_connection_closes_after_n() {
    let (r, _u) =
        proxy("          common_http_protocol_options: {max_requests_per_connection: 2}\n").await;
    let mut s = tokio::net::TcpStream::connect(r.addr("main"))
        .await
        .unwrap();
    s.write_all(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out).to_lowercase();
    assert_eq!(text.matches("http/1.1 200").count(), 2, "{text}");
    assert!(text.contains("connection: close"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarding_headers_at_the_edge_and_behind_it() {
    // Envoy 1.40: no address is internal without internal_address_config.
    let (edge, _u) = proxy("          use_remote_address: true\n").await;
    let j = get_with(
        edge.addr("main"),
        "x",
        "/",
        &[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-envoy-retry-on", "5xx"),
            ("x-envoy-internal", "true"),
            ("x-request-id", "client-chosen"),
        ],
    )
    .await
    .json();
    // A loopback peer is recorded as the server's own (interface) address.
    let own = remora::http::conn_manager::LocalInfo::interface_address(false);
    assert_eq!(j["headers"]["x-forwarded-for"], format!("1.2.3.4,{own}"));
    assert!(
        j["headers"].get("x-envoy-retry-on").is_none(),
        "edge strips x-envoy-* from external requests"
    );
    assert!(j["headers"].get("x-envoy-internal").is_none());
    assert_eq!(j["headers"]["x-envoy-external-address"], "127.0.0.1");
    assert_ne!(
        j["headers"]["x-request-id"], "client-chosen",
        "an edge request gets a new request id"
    );

    let (trusting, _u3) = proxy(
        "          use_remote_address: true\n          internal_address_config: {cidr_ranges: [{address_prefix: 127.0.0.0, prefix_len: 8}]}\n",
    )
    .await;
    let j = get_with(
        trusting.addr("main"),
        "x",
        "/",
        &[("x-request-id", "client-chosen")],
    )
    .await
    .json();
    assert_eq!(j["headers"]["x-forwarded-for"], own.to_string());
    assert_eq!(
        j["headers"]["x-envoy-internal"], "true",
        "127.0.0.1 is internal by internal_address_config"
    );
    assert_eq!(
        j["headers"]["x-request-id"], "client-chosen",
        "internal requests keep their request id"
    );

    let (inner, _u2) =
        proxy("          xff_num_trusted_hops: 1\n          generate_request_id: false\n").await;
    let logged = get_with(
        inner.addr("main"),
        "x",
        "/",
        &[("x-forwarded-for", "9.9.9.9,10.0.0.1")],
    )
    .await
    .json();
    assert_eq!(
        logged["headers"]["x-forwarded-for"], "9.9.9.9,10.0.0.1",
        "not the edge: XFF is not appended"
    );
    assert!(
        logged["headers"].get("x-request-id").is_none(),
        "generate_request_id: false"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn server_header_and_request_id_in_response() {
    let (r, _u) = proxy(
        "          server_name: my-proxy\n          always_set_request_id_in_response: true\n",
    )
    .await;
    let resp = get(r.addr("main"), "x", "/").await;
    assert_eq!(resp.header("server"), Some("my-proxy"));
    let id = resp
        .header("x-request-id")
        .expect("x-request-id in response");
    assert_eq!(resp.json()["headers"]["x-request-id"], id);
    let (pass, _u2) = proxy("          server_header_transformation: PASS_THROUGH\n").await;
    assert_eq!(
        get(pass.addr("main"), "x", "/").await.header("server"),
        None
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn local_reply_json_body_format_and_status_mapping() {
    let extra = r#"          local_reply_config:
            mappers:
            - filter: {status_code_filter: {comparison: {op: EQ, value: {default_value: 404, runtime_key: k}}}}
              status_code: 410
              headers_to_add: [{header: {key: x-mapped, value: "yes"}}]
            body_format:
              json_format: {code: "%RESPONSE_CODE%", message: "%LOCAL_REPLY_BODY%", flags: "%RESPONSE_FLAGS%"}
"#;
    let u = upstream("u").await;
    let vh = "            - name: v\n              domains: [\"only\"]\n              routes: [{match: {prefix: \"/\"}, route: {cluster: u}}]\n";
    let r = Remora::start(&bootstrap(
        &http_listener("main", extra, vh),
        &cluster("u", &[u.addr], ""),
    ))
    .await;
    let resp = get(r.addr("main"), "elsewhere", "/").await;
    assert_eq!(resp.status, 410);
    assert_eq!(resp.header("x-mapped"), Some("yes"));
    assert_eq!(resp.header("content-type"), Some("application/json"));
    let j = resp.json();
    assert_eq!(j["flags"], "NR");
    assert_eq!(j["message"], "");
}

#[tokio::test(flavor = "multi_thread")]
async fn underscore_headers_can_be_rejected() {
    let (r, _u) = proxy("          common_http_protocol_options: {headers_with_underscores_action: REJECT_REQUEST}\n").await;
    let (status, _, _) = raw_http(
        r.addr("main"),
        "GET / HTTP/1.1\r\nHost: x\r\nx_bad: 1\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(status, 400);
    let (d, _u2) = proxy(
        "          common_http_protocol_options: {headers_with_underscores_action: DROP_HEADER}\n",
    )
    .await;
    let j = get_with(d.addr("main"), "x", "/", &[("x_bad", "1")])
        .await
        .json();
    assert!(j["headers"].get("x_bad").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn require_tls_redirects_plaintext() {
    let u = upstream("u").await;
    let vh = "            - name: v\n              domains: [\"*\"]\n              require_tls: ALL\n              routes: [{match: {prefix: \"/\"}, route: {cluster: u}}]\n";
    let r = Remora::start(&bootstrap(
        &http_listener("main", "", vh),
        &cluster("u", &[u.addr], ""),
    ))
    .await;
    let resp = get(r.addr("main"), "secure.example.com", "/a?b").await;
    assert_eq!(resp.status, 301);
    assert_eq!(
        resp.header("location"),
        Some("https://secure.example.com/a?b")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn strip_any_host_port_for_vhost_matching() {
    let u = upstream("u").await;
    let vh = "            - name: v\n              domains: [\"example.com\"]\n              routes: [{match: {prefix: \"/\"}, route: {cluster: u}}]\n";
    let r = Remora::start(&bootstrap(
        &http_listener("main", "          strip_any_host_port: true\n", vh),
        &cluster("u", &[u.addr], ""),
    ))
    .await;
    assert_eq!(
        get(r.addr("main"), "example.com:8443", "/").await.status,
        200
    );
    let plain = Remora::start(&bootstrap(
        &http_listener("main", "", vh),
        &cluster("u", &[u.addr], ""),
    ))
    .await;
    assert_eq!(
        get(plain.addr("main"), "example.com:8443", "/")
            .await
            .status,
        404
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn client_disconnect_is_logged_dc() {
    let log = "          access_log:\n          - name: l\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog\n              path: RUN_DIR/a.log\n              log_format: {text_format_source: {inline_string: \"%RESPONSE_FLAGS% %UPSTREAM_HOST%\\n\"}}\n";
    let (r, u) = proxy(log).await;
    let mut s = tokio::net::TcpStream::connect(r.addr("main"))
        .await
        .unwrap();
    s.write_all(b"GET /delay/500 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(s);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(r.dir.path("a.log")).unwrap_or_default();
        if !text.is_empty() {
            assert_eq!(text.trim(), format!("DC {}", u.addr));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no log line");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The overload manager's global downstream connection limit (Istio sets it): connections past
/// the limit are closed at once and counted; a listener with `bypass_overload_manager` is not
/// limited; a closed connection frees its place.
#[tokio::test(flavor = "multi_thread")]
async fn global_downstream_connection_limit() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let u = upstream("u").await;
    let routes = "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {prefix: /}\n                route: {cluster: up}\n";
    let limited = http_listener("limited", "", routes);
    let bypass = http_listener("bypass", "", routes).replacen(
        "    filter_chains:\n",
        "    bypass_overload_manager: true\n    filter_chains:\n",
        1,
    );
    let yaml = bootstrap(&(limited + &bypass), &cluster("up", &[u.addr], ""))
        + "overload_manager:\n  resource_monitors:\n  - name: envoy.resource_monitors.global_downstream_max_connections\n    typed_config:\n      \"@type\": type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig\n      max_active_downstream_connections: 2\n";
    let r = Remora::start(&yaml).await;
    let (l, b) = (r.addr("limited"), r.addr("bypass"));
    let request = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n";
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(l).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");
        open.push(s);
    }
    // The third is closed without an answer.
    let mut third = tokio::net::TcpStream::connect(l).await.unwrap();
    let _ = third.write_all(request).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), third.read_to_end(&mut buf))
        .await
        .expect("closed");
    assert!(buf.is_empty(), "{}", String::from_utf8_lossy(&buf));
    r.wait_stat(
        &format!(
            "listener.127.0.0.1_{}.downstream_global_cx_overflow",
            l.port()
        ),
        1,
    )
    .await;
    // The bypass listener is not limited.
    assert_eq!(get(b, "x", "/").await.status, 200);
    // A place frees up when a connection closes.
    drop(open.pop());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut s = tokio::net::TcpStream::connect(l).await.unwrap();
        let _ = s.write_all(request).await;
        let mut buf = [0u8; 12];
        if tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut buf))
            .await
            .is_ok_and(|r| r.is_ok())
        {
            assert_eq!(&buf, b"HTTP/1.1 200");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no place freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
