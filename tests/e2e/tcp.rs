//! `envoy.filters.network.tcp_proxy`.

use crate::support::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn tcp_listener(name: &str, proxy: &str) -> String {
    format!(
        r#"  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: {name}
{proxy}"#
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn proxies_bytes_both_ways_with_half_close() {
    let (echo, _t) = tcp_echo().await;
    let log = "          access_log:\n          - name: l\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog\n              path: RUN_DIR/tcp.log\n              log_format: {text_format_source: {inline_string: \"%BYTES_RECEIVED% %BYTES_SENT% %UPSTREAM_HOST% %RESPONSE_FLAGS% %PROTOCOL%\\n\"}}\n";
    let r = Remora::start(&bootstrap(
        &tcp_listener("tcp", &format!("          cluster: echo\n{log}")),
        &cluster("echo", &[echo], ""),
    ))
    .await;
    let mut s = tokio::net::TcpStream::connect(r.addr("tcp")).await.unwrap();
    s.write_all(b"hello over tcp").await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], b"hello over tcp");
    // Half-close: our FIN reaches the echo server, which closes; we then read EOF.
    s.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert!(rest.is_empty());
    drop(s);
    r.wait_stat("tcp.tcp.downstream_cx_total", 1).await;
    r.wait_stat("tcp.tcp.downstream_cx_rx_bytes_total", 14)
        .await;
    r.wait_stat("tcp.tcp.downstream_cx_tx_bytes_total", 14)
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(r.dir.path("tcp.log")).unwrap_or_default();
        if !text.is_empty() {
            assert_eq!(text.trim(), format!("14 14 {echo} - -"));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no tcp access log");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn weighted_clusters_and_idle_timeout() {
    let (e1, _t1) = tcp_echo().await;
    let (e2, _t2) = tcp_echo().await;
    let proxy = "          idle_timeout: 0.3s\n          weighted_clusters:\n            clusters:\n            - {name: one, weight: 1}\n            - {name: two, weight: 1}\n";
    let clusters = format!("{}{}", cluster("one", &[e1], ""), cluster("two", &[e2], ""));
    let r = Remora::start(&bootstrap(&tcp_listener("tcp", proxy), &clusters)).await;
    for _ in 0..20 {
        let mut s = tokio::net::TcpStream::connect(r.addr("tcp")).await.unwrap();
        s.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
    }
    let stats = r.stats().await;
    assert!(
        stats["cluster.one.upstream_cx_total"] > 0 && stats["cluster.two.upstream_cx_total"] > 0,
        "{stats:?}"
    );
    // An idle connection is closed by the idle timeout.
    let mut s = tokio::net::TcpStream::connect(r.addr("tcp")).await.unwrap();
    s.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "idle connection was not closed");
    r.wait_stat("tcp.tcp.idle_timeout", 1).await;
}

/// `%DOWNSTREAM_LOCAL_CLOSE_REASON%`: a connection tcp_proxy closed for its idle timeout logs
/// Envoy's `tcp_session_idle_timeout` (and no termination details); one the client closed, `-`.
#[tokio::test(flavor = "multi_thread")]
async fn the_local_close_reason_is_logged() {
    let (echo, _t) = tcp_echo().await;
    let log = "          access_log:\n          - name: l\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog\n              path: RUN_DIR/tcp.log\n              log_format: {text_format_source: {inline_string: \"%DOWNSTREAM_LOCAL_CLOSE_REASON% %CONNECTION_TERMINATION_DETAILS%\\n\"}}\n";
    let proxy = format!("          cluster: echo\n          idle_timeout: 0.3s\n{log}");
    let r = Remora::start(&bootstrap(
        &tcp_listener("tcp", &proxy),
        &cluster("echo", &[echo], ""),
    ))
    .await;
    // The client closes this one.
    let mut s = tokio::net::TcpStream::connect(r.addr("tcp")).await.unwrap();
    s.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.unwrap();
    drop(s);
    let path = r.dir.path("tcp.log");
    let lines = |n: usize| {
        let path = path.clone();
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            loop {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                if text.lines().count() >= n {
                    return text;
                }
                assert!(std::time::Instant::now() < deadline, "{text:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(lines(1).await, "- -\n");
    // remora closes this one when it idles.
    let mut s = tokio::net::TcpStream::connect(r.addr("tcp")).await.unwrap();
    s.write_all(b"x").await.unwrap();
    s.read_exact(&mut b).await.unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "idle connection was not closed");
    assert_eq!(lines(2).await, "- -\ntcp_session_idle_timeout -\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_upstream_closes_with_uf() {
    let dead = closed_port();
    let log = "          access_log:\n          - name: l\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog\n              path: RUN_DIR/tcp.log\n              log_format: {text_format_source: {inline_string: \"%RESPONSE_FLAGS%\\n\"}}\n";
    let r = Remora::start(&bootstrap(
        &tcp_listener(
            "tcp",
            &format!("          cluster: dead\n          max_connect_attempts: 2\n{log}"),
        ),
        &cluster("dead", &[dead], ""),
    ))
    .await;
    let mut s = tokio::net::TcpStream::connect(r.addr("tcp")).await.unwrap();
    let mut rest = Vec::new();
    let r2 = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(r2.is_ok());
    r.wait_stat("cluster.dead.upstream_cx_connect_fail", 2)
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(r.dir.path("tcp.log")).unwrap_or_default();
        if !text.is_empty() {
            assert_eq!(text.trim(), "UF,URX");
            break;
        }
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sni_passthrough_filter_chain_match() {
    // tls_inspector + server_names: a TLS ClientHello for a.example.com goes to chain A,
    // anything else (including plaintext) to the default chain; bytes pass through untouched.
    let (e1, _t1) = tcp_echo().await;
    let (e2, _t2) = tcp_echo().await;
    let listener = r#"  - name: sni
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    listener_filters:
    - name: envoy.filters.listener.tls_inspector
      typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector}
    filter_chains:
    - filter_chain_match: {server_names: [a.example.com]}
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: a, cluster: one}
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: other, cluster: two}
"#;
    let clusters = format!("{}{}", cluster("one", &[e1], ""), cluster("two", &[e2], ""));
    let r = Remora::start(&bootstrap(listener, &clusters)).await;
    let hello = client_hello("a.example.com");
    let mut s = tokio::net::TcpStream::connect(r.addr("sni")).await.unwrap();
    s.write_all(&hello).await.unwrap();
    let mut back = vec![0u8; hello.len()];
    s.read_exact(&mut back).await.unwrap();
    assert_eq!(back, hello);
    let mut p = tokio::net::TcpStream::connect(r.addr("sni")).await.unwrap();
    p.write_all(b"plain").await.unwrap();
    let mut b = [0u8; 5];
    p.read_exact(&mut b).await.unwrap();
    let stats = r.stats().await;
    assert_eq!(stats["tcp.a.downstream_cx_total"], 1);
    assert_eq!(stats["tcp.other.downstream_cx_total"], 1);
    assert_eq!(stats["cluster.one.upstream_cx_total"], 1);
}

/// A minimal TLS 1.2/1.3 ClientHello record with SNI.
pub fn client_hello(sni: &str) -> Vec<u8> {
    let mut sn = vec![0u8];
    sn.extend_from_slice(&(sni.len() as u16).to_be_bytes());
    sn.extend_from_slice(sni.as_bytes());
    let mut ext_data = (sn.len() as u16).to_be_bytes().to_vec();
    ext_data.extend_from_slice(&sn);
    let mut ext = 0u16.to_be_bytes().to_vec();
    ext.extend_from_slice(&(ext_data.len() as u16).to_be_bytes());
    ext.extend_from_slice(&ext_data);
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[1u8; 32]);
    body.push(0);
    body.extend_from_slice(&[0, 2, 0x13, 0x01, 1, 0]);
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut hs = vec![1u8, 0, (body.len() >> 8) as u8, body.len() as u8];
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}
