//! Application log lines about a connection or a stream carry Envoy's tags:
//! `[Tags: "ConnectionId":"N"]` and `[Tags: "ConnectionId":"N","StreamId":"M"]`.

use crate::support::*;
use std::time::Duration;

/// The id in `"Key":"<id>"` within a line.
fn tag(line: &str, key: &str) -> Option<u64> {
    let rest = line.split(&format!("\"{key}\":\"")).nth(1)?;
    rest.split('"').next()?.parse().ok()
}

async fn lines_with(r: &Remora, needle: &str, want: usize) -> Vec<String> {
    for _ in 0..50 {
        let found: Vec<String> = r
            .stderr()
            .lines()
            .filter(|l| l.contains(needle))
            .map(String::from)
            .collect();
        if found.len() >= want {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("fewer than {want} lines with {needle:?}:\n{}", r.stderr());
}

#[tokio::test]
async fn connection_and_stream_ids_in_debug_lines() {
    let vhosts = "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {prefix: /}\n                direct_response: {status: 200, body: {inline_string: ok}}\n";
    let yaml = bootstrap(&http_listener("in", "", vhosts), "    []\n");
    let r = Remora::start_with(&yaml, &["-l", "debug"]).await;
    let addr = r.addr("in");
    assert_eq!(get(addr, "x", "/").await.status, 200);
    assert_eq!(
        request(addr, true, h2_request(addr, "x", "/")).await.status,
        200
    );

    let opened = lines_with(&r, "] new connection from 127.0.0.1:", 2).await;
    let conns: Vec<u64> = opened
        .iter()
        .map(|l| {
            assert!(l.contains("[Tags: \"ConnectionId\":\""), "{l}");
            assert!(!l.contains("StreamId"), "{l}");
            tag(l, "ConnectionId").expect("a connection id")
        })
        .collect();
    assert_ne!(conns[0], conns[1]);

    let streams = lines_with(&r, "] request headers complete (end_stream=true)", 2).await;
    let mut stream_ids = Vec::new();
    for l in &streams {
        let c = tag(l, "ConnectionId").expect("a connection id");
        assert!(conns.contains(&c), "{l}");
        stream_ids.push(tag(l, "StreamId").expect("a stream id"));
    }
    assert_ne!(stream_ids[0], stream_ids[1]);
    // Lines about no connection carry no tags.
    assert!(
        r.stderr()
            .lines()
            .any(|l| l.contains("] admin address: ") && !l.contains("[Tags:")),
        "{}",
        r.stderr()
    );
}

/// What the listener logs about a connection carries its id from the accept on: the new
/// connection, a missing filter chain, a failed TLS handshake, and the close.
#[tokio::test]
async fn listener_lines_carry_the_connection_id() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = crate::tls::Pki::new();
    let certs = pki.write("in", crate::tls::DEAL);
    let vhosts = "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {prefix: /}\n                direct_response: {status: 200, body: {inline_string: ok}}\n";
    let tls = http_listener("tls", "", vhosts) + &crate::tls::downstream_tls(&certs, false, None);
    let picky = http_listener("picky", "", vhosts).replacen(
        "    - filters:\n",
        "    - filter_chain_match: {destination_port: 1}\n      filters:\n",
        1,
    );
    let r = Remora::start_with(&bootstrap(&(tls + &picky), "    []\n"), &["-l", "debug"]).await;
    for name in ["tls", "picky"] {
        let mut s = tokio::net::TcpStream::connect(r.addr(name)).await.unwrap();
        let _ = s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    }
    let failed_tls = lines_with(&r, "] TLS handshake failed: ", 1).await;
    let no_chain = lines_with(&r, "] closing connection: no matching filter chain", 1).await;
    for l in failed_tls.iter().chain(&no_chain) {
        let id = tag(l, "ConnectionId").unwrap_or_else(|| panic!("no connection id: {l}"));
        for needle in ["] new connection from 127.0.0.1:", "] closing socket"] {
            let same: Vec<String> = lines_with(&r, needle, 2)
                .await
                .into_iter()
                .filter(|o| tag(o, "ConnectionId") == Some(id))
                .collect();
            assert_eq!(
                same.len(),
                1,
                "{needle:?} for connection {id}:\n{}",
                r.stderr()
            );
        }
    }
}
