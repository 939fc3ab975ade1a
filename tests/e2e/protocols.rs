//! Protocols: HTTP/1.1 and h2c downstream × HTTP/1.1 and HTTP/2 upstream, gRPC trailers,
//! WebSocket upgrade, streaming and large bodies, keep-alive reuse, curl interop.

use crate::support::*;
use bytes::Bytes;
use http_body_util::Full;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const H2_UPSTREAM: &str = "    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        explicit_http_config: {http2_protocol_options: {}}\n";

async fn proxy(upstream_h2: bool, hcm_extra: &str, route_extra: &str) -> (Remora, Upstream) {
    let u = upstream("u").await;
    let vhosts = format!(
        "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {{prefix: \"/\"}}\n                route: {{cluster: u{route_extra}}}\n"
    );
    let c = cluster("u", &[u.addr], if upstream_h2 { H2_UPSTREAM } else { "" });
    (
        Remora::start(&bootstrap(&http_listener("main", hcm_extra, &vhosts), &c)).await,
        u,
    )
}

fn post(h2: bool, path: &str, body: &str) -> http::Request<Full<Bytes>> {
    let b = http::Request::builder().method("POST");
    let b = if h2 {
        b.uri(format!("http://example.com{path}"))
            .version(http::Version::HTTP_2)
    } else {
        b.uri(path).header("host", "example.com")
    };
    b.body(Full::new(Bytes::from(body.to_string()))).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn downstream_by_upstream_protocol_matrix() {
    for upstream_h2 in [false, true] {
        let (r, _u) = proxy(upstream_h2, "", "").await;
        for downstream_h2 in [false, true] {
            let resp = request(
                r.addr("main"),
                downstream_h2,
                post(downstream_h2, "/echo?x=1", "hello body"),
            )
            .await;
            assert_eq!(
                resp.status, 200,
                "down h2={downstream_h2} up h2={upstream_h2}"
            );
            assert_eq!(
                resp.version,
                if downstream_h2 {
                    http::Version::HTTP_2
                } else {
                    http::Version::HTTP_11
                }
            );
            let j = resp.json();
            assert_eq!(
                j["version"],
                if upstream_h2 { "HTTP/2.0" } else { "HTTP/1.1" }
            );
            assert!(j["path"].as_str().unwrap().ends_with("/echo?x=1"), "{j}");
            assert_eq!(j["body"], "hello body");
            assert_eq!(j["method"], "POST");
        }
        let stats = r.stats().await;
        assert_eq!(stats["http.main.downstream_rq_http1_total"], 1);
        assert_eq!(stats["http.main.downstream_rq_http2_total"], 1);
        let cx = if upstream_h2 {
            "cluster.u.upstream_cx_http2_total"
        } else {
            "cluster.u.upstream_cx_http1_total"
        };
        assert!(stats[cx] >= 1);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_trailers_pass_through() {
    let (r, _u) = proxy(true, "", ", timeout: 0s").await;
    let req = http::Request::builder()
        .method("POST")
        .uri("http://example.com/grpc/svc.Echo/Call")
        .version(http::Version::HTTP_2)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\x05hello")))
        .unwrap();
    let resp = request(r.addr("main"), true, req).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), Some("application/grpc"));
    assert_eq!(&resp.body[..], b"\0\0\0\0\x05hello");
    let t = resp.trailers.expect("trailers");
    assert_eq!(t["grpc-status"], "0");
    assert_eq!(t["grpc-message"], "ok");
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_upgrade_tunnels_bytes() {
    let (r, _u) = proxy(
        false,
        "          upgrade_configs: [{upgrade_type: websocket}]\n",
        "",
    )
    .await;
    let mut s = tokio::net::TcpStream::connect(r.addr("main"))
        .await
        .unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 1024];
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(
            n > 0,
            "closed before 101: {}",
            String::from_utf8_lossy(&head)
        );
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head).to_lowercase();
    assert!(text.starts_with("http/1.1 101"), "{text}");
    assert!(text.contains("upgrade: websocket"), "{text}");
    s.write_all(b"ping-1").await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], b"echo:ping-1");
    s.write_all(b"ping-2").await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], b"echo:ping-2");
    drop(s);
    r.wait_stat("http.main.downstream_cx_upgrades_total", 1)
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn upgrade_without_config_is_403() {
    let (r, u) = proxy(false, "", "").await;
    let (status, _, _) = raw_http(r.addr("main"), "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nConnection: close\r\n\r\n").await.unwrap();
    assert_eq!(status, 403);
    assert_eq!(u.requests.load(std::sync::atomic::Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn large_streamed_and_chunked_bodies() {
    let (r, _u) = proxy(false, "", "").await;
    let addr = r.addr("main");
    let big = get(addr, "x", "/large/1048576").await;
    assert_eq!(big.body.len(), 1 << 20);
    let streamed = get(addr, "x", "/stream/300").await;
    assert_eq!(streamed.body.len(), 300 * 1024);
    // A chunked request body is forwarded intact.
    let (status, _, body) = raw_http(addr, "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n").await.unwrap();
    assert_eq!(status, 200);
    let j: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(j["body"], "hello world");
    // 1 MiB upload over h2.
    let payload = "z".repeat(1 << 20);
    let resp = request(addr, true, post(true, "/echo", &payload)).await;
    assert_eq!(resp.json()["body_len"], 1 << 20);
}

#[tokio::test(flavor = "multi_thread")]
async fn keepalive_connections_are_reused_both_sides() {
    let (r, _u) = proxy(false, "", "").await;
    let mut s = tokio::net::TcpStream::connect(r.addr("main"))
        .await
        .unwrap();
    for i in 0..5 {
        s.write_all(format!("GET /n{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = s.read(&mut buf).await.unwrap();
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_lowercase()
                            .strip_prefix("content-length: ")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap();
                if body.len() >= len {
                    assert!(head.starts_with("HTTP/1.1 200"));
                    break;
                }
            }
        }
    }
    let stats = r.stats().await;
    assert_eq!(stats["http.main.downstream_cx_total"], 1);
    assert_eq!(
        stats["cluster.u.upstream_cx_total"], 1,
        "the upstream connection is pooled"
    );
    assert_eq!(stats["cluster.u.upstream_rq_total"], 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_http11_and_h2c_prior_knowledge() {
    let (r, _u) = proxy(false, "", "").await;
    let url = format!("http://{}/curl", r.addr("main"));
    for args in [
        vec!["-s", "-i", url.as_str()],
        vec!["-s", "-i", "--http2-prior-knowledge", url.as_str()],
    ] {
        let out = std::process::Command::new("curl")
            .args(&args)
            .output()
            .expect("curl is installed (.ci/run installs it)");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.starts_with("HTTP/1.1 200") || text.starts_with("HTTP/2 200"),
            "{text}"
        );
        assert!(text.contains("x-upstream: u"), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ipv6_listener() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("SKIPPED ipv6_listener: no IPv6 loopback on this machine");
        return;
    }
    let u = upstream("u").await;
    let vhosts = "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {prefix: \"/\"}\n                route: {cluster: u}\n";
    let listener = http_listener("v6", "", vhosts).replace(
        "address: 127.0.0.1, port_value: 0",
        "address: \"::1\", port_value: 0",
    );
    let r = Remora::start(&bootstrap(&listener, &cluster("u", &[u.addr], ""))).await;
    let addr = r.addr("v6");
    assert!(addr.is_ipv6());
    let resp = get(addr, "x", "/").await;
    assert_eq!(resp.status, 200);
    let stats = r.stats().await;
    assert_eq!(
        stats[&format!("listener.[::1]_{}.downstream_cx_total", addr.port())],
        1
    );
}
