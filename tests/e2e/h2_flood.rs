//! HTTP/2 downstream protocol options: flood protection (Envoy's `http2_protocol_options` limits)
//! from raw clients that misbehave (the `http2.*` counter, the connection closed, another client
//! still served), and the SETTINGS remora announces.

use crate::sources::{Served, Source};
use crate::support::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f.extend(payload);
    f
}

/// GET / on stream 1 (HPACK: indexed :method GET, :scheme http, :path /, literal :authority).
fn get_headers(end_stream: bool) -> Vec<u8> {
    let block = [0x82, 0x86, 0x84, 0x41, 0x01, b'x'];
    frame(1, 0x4 | u8::from(end_stream), 1, &block)
}

async fn start(source: Source, h2_options: &str) -> Served {
    let vhosts = "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {prefix: /}\n                direct_response: {status: 200, body: {inline_string: ok}}\n";
    let extra = format!("          http2_protocol_options: {h2_options}\n");
    source
        .start(&bootstrap(&http_listener("in", &extra, vhosts), "    []\n"))
        .await
}

/// Send `bytes` after the preface, then read until remora closes the connection.
async fn send_and_wait_close(r: &Remora, bytes: &[u8]) {
    let mut s = TcpStream::connect(r.addr("in")).await.unwrap();
    let mut out = PREFACE.to_vec();
    out.extend(frame(4, 0, 0, &[]));
    out.extend(bytes);
    s.write_all(&out).await.unwrap();
    let mut buf = vec![0; 4096];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "remora did not close the connection");
}

async fn still_serves(r: &Remora) {
    let resp = request(r.addr("in"), true, h2_request(r.addr("in"), "x", "/")).await;
    assert_eq!(resp.status, 200);
}

#[tokio::test]
async fn empty_data_frames_close_the_connection() {
    let r = start(Source::Bootstrap, "{}").await;
    let mut bytes = get_headers(false);
    bytes.extend(frame(0, 0, 1, &[]));
    bytes.extend(frame(0, 0, 1, &[]));
    send_and_wait_close(&r, &bytes).await;
    r.wait_stat("http2.inbound_empty_frames_flood", 1).await;
    still_serves(&r).await;
}

/// A configured limit, from the bootstrap and over LDS.
async fn priority_frames_beyond_the_configured_limit(source: Source) {
    let r = start(source, "{max_inbound_priority_frames_per_stream: 2}").await;
    let priority = frame(2, 0, 3, &[0, 0, 0, 0, 16]);
    // 2 per opened stream (+1): 4 are fine after one request, the 5th is a flood.
    let mut bytes = get_headers(true);
    for _ in 0..5 {
        bytes.extend(&priority);
    }
    send_and_wait_close(&r, &bytes).await;
    r.wait_stat("http2.inbound_priority_frames_flood", 1).await;
    assert_eq!(r.stat("http2.inbound_window_update_frames_flood").await, 0);
    still_serves(&r).await;
}

#[tokio::test]
async fn window_updates_without_data_sent() {
    let r = start(Source::Bootstrap, "{}").await;
    let wu = frame(8, 0, 0, &1000u32.to_be_bytes());
    send_and_wait_close(&r, &[wu.clone(), wu].concat()).await;
    r.wait_stat("http2.inbound_window_update_frames_flood", 1)
        .await;
    still_serves(&r).await;
}

/// A client that sends PINGs and never reads: once the socket buffers are full, the
/// acknowledgements queue up in remora until `max_outbound_control_frames` closes the
/// connection (before, remora held such a connection open forever).
#[tokio::test]
async fn ping_flood_from_a_client_that_does_not_read() {
    let r = start(Source::Bootstrap, "{max_outbound_control_frames: 100}").await;
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut s = sock.connect(r.addr("in")).await.unwrap();
    let mut batch = PREFACE.to_vec();
    batch.extend(frame(4, 0, 0, &[]));
    s.write_all(&batch).await.unwrap();
    let pings: Vec<u8> = (0..1000u64)
        .flat_map(|i| frame(6, 0, 0, &i.to_be_bytes()))
        .collect();
    let failed = tokio::time::timeout(Duration::from_secs(60), async {
        // At most ~100 MB of acknowledgements: far more than any socket buffer.
        for _ in 0..6000 {
            if s.write_all(&pings).await.is_err() {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(failed, Ok(true), "remora kept the flooding connection open");
    r.wait_stat("http2.outbound_control_flood", 1).await;
    assert_eq!(r.stat("http2.outbound_flood").await, 0);
    still_serves(&r).await;
}

#[tokio::test]
async fn zero_limits_are_refused_by_path() {
    let vhosts =
        "            - name: all\n              domains: [\"*\"]\n              routes: []\n";
    let extra = "          http2_protocol_options: {max_outbound_frames: 0}\n";
    let yaml = bootstrap(&http_listener("in", extra, vhosts), "    []\n");
    let e = Remora::try_start(&yaml, &[]).await.err().expect("refused");
    assert!(
        e.contains("http2_protocol_options.max_outbound_frames"),
        "{e}"
    );
}

/// `hpack_table_size` is announced to the client (SETTINGS_HEADER_TABLE_SIZE), as Envoy does.
#[tokio::test]
async fn hpack_table_size_is_announced() {
    let r = start(Source::Bootstrap, "{hpack_table_size: 1234}").await;
    let mut s = TcpStream::connect(r.addr("in")).await.unwrap();
    let mut out = PREFACE.to_vec();
    out.extend(frame(4, 0, 0, &[]));
    s.write_all(&out).await.unwrap();
    let mut head = [0u8; 9];
    s.read_exact(&mut head).await.unwrap();
    assert_eq!((head[3], head[4]), (4, 0), "the server's SETTINGS first");
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0; len];
    s.read_exact(&mut payload).await.unwrap();
    let table_size = payload
        .chunks(6)
        .find(|p| p[..2] == [0, 1])
        .map(|p| u32::from_be_bytes([p[2], p[3], p[4], p[5]]));
    assert_eq!(table_size, Some(1234));
}

crate::across_sources!(priority_frames_beyond_the_configured_limit);

/// A client that reads a large response slowly (a small receive buffer, a pause after every
/// DATA frame) gets all of it in order: remora queues what the socket does not take, pushes
/// back on the stream past the buffer limit, writes straight through again once the client has
/// caught up, and no flood limit trips; the connection then serves another request.
#[tokio::test]
async fn slow_reader_gets_a_large_response_whole() {
    use http_body_util::BodyExt;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let u = upstream("u").await;
    let vhosts = "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {prefix: \"/\"}\n                route: {cluster: u}\n";
    let r = Remora::start(&bootstrap(
        &http_listener("in", "", vhosts),
        &cluster("u", &[u.addr], ""),
    ))
    .await;
    let addr = r.addr("in");
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let stream = sock.connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(8 << 20)
        .initial_connection_window_size(8 << 20)
        .handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    const N: usize = 4 << 20;
    let read = tokio::time::timeout(Duration::from_secs(60), async {
        let resp = sender
            .send_request(h2_request(addr, "x", &format!("/large/{N}")))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let (mut got, mut frames) = (0, 0);
        while let Some(f) = body.frame().await {
            if let Some(d) = f.unwrap().data_ref() {
                assert!(d.iter().all(|&b| b == b'x'), "bytes out of order");
                got += d.len();
                frames += 1;
                if frames % 4 == 0 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        }
        got
    })
    .await;
    assert_eq!(
        read,
        Ok(N),
        "the slow reader did not get the whole response"
    );
    let again = sender
        .send_request(h2_request(addr, "x", "/large/10"))
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
    for flood in [
        "outbound_flood",
        "outbound_control_flood",
        "inbound_empty_frames_flood",
        "inbound_priority_frames_flood",
        "inbound_window_update_frames_flood",
    ] {
        assert_eq!(r.stat(&format!("http2.{flood}")).await, 0, "{flood}");
    }
}
