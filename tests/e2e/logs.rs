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
