//! Serving a downstream connection with the HTTP connection manager: codec selection
//! (`codec_type` AUTO by the HTTP/2 connection preface, or fixed), remora's HTTP/1.1 loop with
//! keep-alive, timeouts, drain and upgrades, and hyper's HTTP/2 server.

use super::body::Body;
use super::codec::h1::{
    self, HeadError, Reader, ReaderSlot, RequestBody, ResponseFraming, WriteOutcome,
};
use super::conn_manager::{CLOSE_DRAINED, CLOSE_IDLE_TIMEOUT, ConnectionManager, DownstreamConn};
use super::h2_flood::FloodGuard;
use super::router::UpgradeBridge;
use crate::io::{Counted, Split};
use crate::logging::STREAM_SPAN;
use crate::model::hcm::Codec;
use crate::stream_info::Protocol;
use bytes::{Bytes, BytesMut};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tracing::Instrument;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A stream's span (its log lines carry the connection's and the stream's ids); stream ids are
/// random, as Envoy's. With debug logging off (the usual case) no span is made and no id drawn:
/// one level comparison per stream.
fn stream_span(end_stream: bool) -> tracing::Span {
    if !tracing::level_enabled!(tracing::Level::DEBUG) {
        return tracing::Span::none();
    }
    tracing::debug!("new stream");
    let span = tracing::debug_span!(STREAM_SPAN, id = fastrand::u64(..));
    span.in_scope(|| tracing::debug!("request headers complete (end_stream={end_stream})"));
    span
}

/// Serve one downstream connection until it closes. `drain` turns true when the listener drains.
/// Log lines about the connection carry its id: the listener runs this inside the connection's
/// span.
pub async fn serve<S: Split>(
    hcm: Arc<ConnectionManager>,
    conn: Arc<DownstreamConn>,
    mut stream: S,
    prefix: BytesMut,
    drain: watch::Receiver<bool>,
) {
    let stats = &hcm.stats;
    stats.downstream_cx_total.inc();
    stats.downstream_cx_active.inc();
    if conn.is_tls {
        stats.downstream_cx_ssl_total.inc();
        stats.downstream_cx_ssl_active.inc();
    }
    let opened = Instant::now();
    // Detect the protocol from the first bytes (AUTO), reading them into the connection's buffer.
    let mut buf = prefix;
    if buf.capacity() < 4096 {
        buf.reserve(4096 - buf.len());
    }
    let protocol = match hcm.config.codec {
        Codec::Http1 => Protocol::Http11,
        Codec::Http2 => Protocol::Http2,
        Codec::Auto => loop {
            if buf.len() >= H2_PREFACE.len() || !H2_PREFACE.starts_with(&buf[..]) {
                break if buf.starts_with(H2_PREFACE) {
                    Protocol::Http2
                } else {
                    Protocol::Http11
                };
            }
            let read = tokio::select! {
                r = tokio::io::AsyncReadExt::read_buf(&mut stream, &mut buf) => r,
                _ = idle_sleep(hcm.config.idle_timeout) => {
                    stats.downstream_cx_idle_timeout.inc();
                    conn.closing(CLOSE_IDLE_TIMEOUT);
                    Ok(0)
                }
            };
            match read {
                Ok(0) | Err(_) => {
                    if buf.is_empty() {
                        finish_connection(&hcm, &conn, opened, true);
                        return;
                    }
                    break Protocol::Http11;
                }
                Ok(_) => {}
            }
        },
    };
    match protocol {
        Protocol::Http2 => {
            stats.downstream_cx_http2_total.inc();
            stats.downstream_cx_http2_active.inc();
            // Boxed: hyper's connection state would otherwise size every connection's future.
            let remote = Box::pin(serve_h2(&hcm, &conn, stream, buf.freeze(), drain)).await;
            stats.downstream_cx_http2_active.dec();
            finish_connection(&hcm, &conn, opened, remote);
        }
        _ => {
            stats.downstream_cx_http1_total.inc();
            stats.downstream_cx_http1_active.inc();
            let remote = serve_h1(&hcm, &conn, stream, buf, drain).await;
            stats.downstream_cx_http1_active.dec();
            finish_connection(&hcm, &conn, opened, remote);
        }
    }
}

fn finish_connection(
    hcm: &ConnectionManager,
    conn: &DownstreamConn,
    opened: Instant,
    remote_closed: bool,
) {
    tracing::debug!(
        "{}",
        if remote_closed {
            "remote close"
        } else {
            "local close"
        }
    );
    let s = &hcm.stats;
    s.downstream_cx_active.dec();
    if conn.is_tls {
        s.downstream_cx_ssl_active.dec();
    }
    s.downstream_cx_destroy.inc();
    if remote_closed {
        s.downstream_cx_destroy_remote.inc();
    } else {
        s.downstream_cx_destroy_local.inc();
    }
    s.downstream_cx_length_ms
        .record(opened.elapsed().as_millis() as u64);
}

async fn idle_sleep(d: Option<std::time::Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

async fn wait_drain(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|d| *d).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The HTTP/1.1 loop. Returns whether the peer closed the connection (vs. remora closing it).
///
/// This future is what an idle keep-alive connection costs, so it holds only the connection's
/// halves and the wait for the next head; each request is served by a boxed future (routing
/// and the upstream exchange are ~10 KB of state) that exists only while it is in flight.
async fn serve_h1<S: Split>(
    hcm: &Arc<ConnectionManager>,
    conn: &Arc<DownstreamConn>,
    stream: S,
    buf: BytesMut,
    drain: watch::Receiver<bool>,
) -> bool {
    let cfg = &hcm.config;
    let (rd, wr) = stream.into_halves();
    let mut wr = Counted::new(
        wr,
        None,
        Some(hcm.stats.downstream_cx_tx_bytes_total.clone()),
    );
    let rd = Counted::new(
        rd,
        Some(hcm.stats.downstream_cx_rx_bytes_total.clone()),
        None,
    );
    hcm.stats.downstream_cx_rx_bytes_total.add(buf.len() as u64);
    let slot = Arc::new(ReaderSlot::default());
    let mut reader = Reader::new(Box::new(rd), buf);
    let max_duration_at = cfg.max_connection_duration.map(|d| conn.opened + d);
    loop {
        let head = match next_head(hcm, &mut reader, max_duration_at).await {
            Ok(h) => h,
            Err(NoHead::Closed) => return true,
            Err(NoHead::TimedOut) => return false,
            Err(NoHead::Idle) => {
                conn.closing(CLOSE_IDLE_TIMEOUT);
                return false;
            }
            Err(NoHead::Codec(e)) => {
                Box::pin(codec_error_reply(hcm, conn, &mut wr, e)).await;
                return false;
            }
        };
        let served = Box::pin(serve_request(
            hcm,
            conn,
            &mut wr,
            reader,
            &slot,
            head,
            &drain,
            max_duration_at,
        ))
        .await;
        reader = match served {
            Ok(r) => r,
            Err(remote_closed) => return remote_closed,
        };
    }
}

/// Why no request head came.
enum NoHead {
    /// The peer closed (or the connection failed) between requests.
    Closed,
    /// Idle, request-headers or max-duration timeout: remora closes.
    TimedOut,
    /// The connection idle timeout.
    Idle,
    Codec(h1::CodecError),
}

/// Read the next request head: the idle timeout while nothing arrives, the request-headers
/// timeout once it has started.
async fn next_head(
    hcm: &ConnectionManager,
    reader: &mut Reader,
    max_duration_at: Option<Instant>,
) -> Result<h1::Head, NoHead> {
    let cfg = &hcm.config;
    let idle_deadline = cfg.idle_timeout.map(|d| Instant::now() + d);
    let mut headers_deadline: Option<Instant> = None;
    reader.release();
    loop {
        if !reader.buf.is_empty() {
            match h1::parse_head(&mut reader.buf, &hcm.h1_limits) {
                Ok(Some(h)) => return Ok(h),
                Ok(None) => {
                    if reader.buf.len() > hcm.h1_limits.max_header_bytes {
                        return Err(NoHead::Codec(h1::CodecError::HEADERS_TOO_LARGE));
                    }
                    if headers_deadline.is_none() {
                        headers_deadline = cfg.request_headers_timeout.map(|d| Instant::now() + d);
                    }
                }
                Err(HeadError::Codec(e)) => return Err(NoHead::Codec(e)),
                Err(HeadError::Closed | HeadError::Io(_)) => return Err(NoHead::Closed),
            }
        }
        let deadline = if reader.buf.is_empty() {
            idle_deadline
        } else {
            headers_deadline.or(idle_deadline)
        };
        let deadline = match (deadline, max_duration_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let idle_wait = reader.buf.is_empty();
        tokio::select! {
            r = reader.fill() => match r {
                Ok(0) | Err(_) => return Err(NoHead::Closed),
                Ok(_) => {}
            },
            _ = sleep_until(deadline) => {
                if max_duration_at.is_some_and(|m| Instant::now() >= m) {
                    hcm.stats.downstream_cx_max_duration_reached.inc();
                } else if idle_wait {
                    hcm.stats.downstream_cx_idle_timeout.inc();
                    return Err(NoHead::Idle);
                } else if headers_deadline.is_some() {
                    hcm.stats.downstream_rq_header_timeout.inc();
                }
                return Err(NoHead::TimedOut);
            }
        }
    }
}

/// Envoy answers codec errors with the status's reason as the body, then closes.
async fn codec_error_reply<W: AsyncWrite + Unpin>(
    hcm: &Arc<ConnectionManager>,
    conn: &Arc<DownstreamConn>,
    wr: &mut W,
    e: h1::CodecError,
) {
    let reason = e.status.canonical_reason().unwrap_or("");
    let resp = http::Response::builder()
        .status(e.status)
        .header(http::header::CONTENT_TYPE, "text/plain")
        .header(http::header::DATE, super::conn_manager::http_date())
        .header(http::header::SERVER, hcm.config.server_name.clone())
        .body(())
        .expect("static parts");
    let (parts, ()) = resp.into_parts();
    let framing = ResponseFraming {
        no_body: false,
        version: http::Version::HTTP_11,
        keep_alive: false,
        upgrade: false,
    };
    tracing::debug!("dispatch error: {}", e.details);
    hcm.codec_error(conn, e.status, e.details);
    let mut out = crate::io::take_write_buffer();
    let _ = h1::write_response(
        wr,
        &mut out,
        &parts,
        Body::full(Bytes::from_static(reason.as_bytes())),
        framing,
    )
    .await;
    crate::io::give_write_buffer(out);
    let _ = wr.shutdown().await;
}

/// Serve one request and write its response. `Ok(reader)`: the connection carries on;
/// `Err(remote_closed)`: it ends.
#[allow(clippy::too_many_arguments)]
async fn serve_request<W: AsyncWrite + Unpin>(
    hcm: &Arc<ConnectionManager>,
    conn: &Arc<DownstreamConn>,
    wr: &mut W,
    reader: Reader,
    slot: &Arc<ReaderSlot>,
    head: h1::Head,
    drain: &watch::Receiver<bool>,
    max_duration_at: Option<Instant>,
) -> Result<Reader, bool> {
    let cfg = &hcm.config;
    let version = head.request.version();
    let is_head = head.request.method() == http::Method::HEAD;
    let has_body = head.framing != h1::Framing::Length(0);
    // Envoy answers `expect: 100-continue` itself, body or not (proxy_100_continue false).
    if head.expect_continue
        && !cfg.proxy_100_continue
        && wr
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .is_err()
    {
        return Err(true);
    }
    let body = RequestBody::new(
        reader,
        slot.clone(),
        head.framing,
        hcm.h1_limits.max_header_bytes,
    );
    let (mut parts, ()) = head.request.into_parts();
    if !cfg.proxy_100_continue {
        parts.headers.remove(http::header::EXPECT);
    }
    let req = http::Request::from_parts(parts, Body::H1(body));
    let protocol = if version == http::Version::HTTP_10 {
        Protocol::Http10
    } else {
        Protocol::Http11
    };
    let handled = hcm
        .handle(conn, req, protocol)
        .instrument(stream_span(!has_body));
    // With the request body already read (the usual GET), keep reading the connection while
    // the response is pending: a client that closes is noticed at once and its upstream
    // request is cancelled (Envoy's DC), instead of when the response is written.
    let resp = match slot.take() {
        Some(mut rd) => {
            tokio::pin!(handled);
            let mut watching = true;
            let outcome = loop {
                tokio::select! {
                    r = &mut handled => break Some(r),
                    read = rd.fill(), if watching => match read {
                        Ok(0) | Err(_) => break None,
                        // Pipelined bytes stay buffered for the next request.
                        Ok(_) => watching = rd.buf.len() < hcm.h1_limits.max_header_bytes,
                    },
                }
            };
            match outcome {
                Some(r) => {
                    slot.put(rd);
                    r
                }
                None => return Err(true),
            }
        }
        None => handled.await,
    };

    let served = conn.requests.load(std::sync::atomic::Ordering::Relaxed);
    let max_reached = cfg
        .max_requests_per_connection
        .is_some_and(|m| served >= m as u64);
    if max_reached {
        hcm.stats.downstream_cx_max_requests_reached.inc();
        conn.closing(CLOSE_DRAINED);
    }
    let expired = max_duration_at.is_some_and(|m| Instant::now() >= m);
    if expired {
        hcm.stats.downstream_cx_max_duration_reached.inc();
    }
    let draining = *drain.borrow();
    let upgrade = resp.status() == http::StatusCode::SWITCHING_PROTOCOLS;
    let keep_alive =
        head.keep_alive && !max_reached && !expired && !draining && !resp_wants_close(&resp);
    let status = resp.status().as_u16();
    let (mut parts, body) = resp.into_parts();
    let framing = ResponseFraming {
        no_body: is_head || (100..200).contains(&status) || status == 204 || status == 304,
        version,
        keep_alive,
        upgrade,
    };
    let mut out = crate::io::take_write_buffer();
    let outcome = h1::write_response(wr, &mut out, &parts, body, framing).await;
    crate::io::give_write_buffer(out);
    super::names::recycle_header_map(std::mem::take(&mut parts.headers));
    if draining {
        hcm.stats.downstream_cx_drain_close.inc();
    }
    match outcome {
        Ok(WriteOutcome::Complete) => {}
        Ok(WriteOutcome::BodyError) => return Err(false),
        Err(_) => return Err(true),
    }
    if upgrade {
        let bridge = parts
            .extensions
            .remove::<Arc<std::sync::Mutex<Option<UpgradeBridge>>>>()
            .and_then(|b| b.lock().ok()?.take());
        let Some(bridge) = bridge else {
            return Err(false);
        };
        let Some(reader) = slot.take() else {
            return Err(false);
        };
        tunnel(hcm, reader, wr, bridge).await;
        return Err(false);
    }
    if !framing.keep_alive {
        let _ = wr.shutdown().await;
        return Err(false);
    }
    // The request body must have ended for the connection to carry another request.
    match slot.take() {
        Some(r) => Ok(r),
        None => {
            let _ = wr.shutdown().await;
            Err(false)
        }
    }
}

fn resp_wants_close(resp: &http::Response<Body>) -> bool {
    resp.headers()
        .get_all(http::header::CONNECTION)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"close"))
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Join the downstream connection to the upgraded upstream connection (WebSocket).
async fn tunnel<W: AsyncWrite + Unpin>(
    hcm: &Arc<ConnectionManager>,
    mut reader: Reader,
    mut wr: W,
    bridge: UpgradeBridge,
) {
    hcm.stats.downstream_cx_upgrades_total.inc();
    hcm.stats.downstream_cx_upgrades_active.inc();
    let UpgradeBridge {
        upstream,
        leftover: upstream_early,
        cluster: _,
    } = bridge;
    let guard = upstream.keep.clone();
    let (mut up_rd, mut up_wr) = tokio::io::split(upstream);
    let downstream_early = std::mem::take(&mut reader.buf);
    let down_to_up = async {
        if !downstream_early.is_empty() {
            up_wr.write_all(&downstream_early).await?;
        }
        tokio::io::copy(&mut reader.io, &mut up_wr).await?;
        up_wr.shutdown().await
    };
    let up_to_down = async {
        if !upstream_early.is_empty() {
            wr.write_all(&upstream_early).await?;
        }
        tokio::io::copy(&mut up_rd, &mut wr).await?;
        wr.shutdown().await
    };
    let _ = tokio::join!(down_to_up, up_to_down);
    guard.close_locally();
    hcm.stats.downstream_cx_upgrades_active.dec();
}

/// HTTP/2 through hyper. Returns whether the peer closed the connection.
async fn serve_h2<S: Split>(
    hcm: &Arc<ConnectionManager>,
    conn: &Arc<DownstreamConn>,
    stream: S,
    prefix: Bytes,
    mut drain: watch::Receiver<bool>,
) -> bool {
    let cfg = &hcm.config;
    hcm.stats
        .downstream_cx_rx_bytes_total
        .add(prefix.len() as u64);
    let io = Counted::new(
        stream,
        Some(hcm.stats.downstream_cx_rx_bytes_total.clone()),
        Some(hcm.stats.downstream_cx_tx_bytes_total.clone()),
    )
    .with_prefix(prefix);
    let io = FloodGuard::new(
        io,
        cfg.http2_flood,
        hcm.stats.http2_flood.clone(),
        cfg.buffer_limit as usize,
    );
    let flood = io.outcome();
    let svc_hcm = hcm.clone();
    let svc_conn = conn.clone();
    let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let hcm = svc_hcm.clone();
        let conn = svc_conn.clone();
        let span = stream_span(http_body::Body::is_end_stream(req.body()));
        // Boxed once here (as HTTP/1.1 boxes its request future): hyper moves the stream's
        // future into its stream task and tokio into the task's cell, and the connection
        // manager's state (routing, filters, the upstream exchange) is many KiB.
        let handled = Box::pin(async move {
            hcm.handle(&conn, req.map(Body::Hyper), Protocol::Http2)
                .await
        });
        let stream =
            async move { Ok::<_, std::convert::Infallible>(handled.await) }.instrument(span);
        // What hyper and tokio move per stream: a pointer and the span, not the request's state.
        debug_assert!(
            std::mem::size_of_val(&stream) <= 128,
            "HTTP/2 stream future of {} bytes",
            std::mem::size_of_val(&stream)
        );
        stream
    });
    let h2 = &cfg.http2;
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(h2.max_concurrent_streams)
        .initial_stream_window_size(h2.initial_stream_window_size)
        .initial_connection_window_size(h2.initial_connection_window_size)
        .header_table_size(h2.hpack_table_size)
        .max_header_list_size(cfg.max_request_headers_bytes as u32);
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let max_duration_at = cfg.max_connection_duration.map(|d| conn.opened + d);
    let mut shutting_down = false;
    loop {
        let idle_check = cfg.idle_timeout.map(|d| match conn.idle_since() {
            Some(since) => since.max(conn.opened) + d,
            None => Instant::now() + d,
        });
        tokio::select! {
            r = connection.as_mut() => {
                if let Some(f) = flood.get() {
                    tracing::debug!("dispatch error: {f}");
                    return false;
                }
                return match r {
                    Ok(()) => !shutting_down,
                    Err(e) => {
                        if e.is_parse() || e.is_user() {
                            hcm.stats.downstream_cx_protocol_error.inc();
                        }
                        true
                    }
                };
            }
            _ = sleep_until(idle_check), if !shutting_down => {
                if conn.idle_since().is_some_and(|s| cfg.idle_timeout.is_some_and(|d| s.elapsed() >= d) ) {
                    hcm.stats.downstream_cx_idle_timeout.inc();
                    conn.closing(CLOSE_IDLE_TIMEOUT);
                    connection.as_mut().graceful_shutdown();
                    shutting_down = true;
                }
            }
            _ = sleep_until(max_duration_at), if !shutting_down => {
                hcm.stats.downstream_cx_max_duration_reached.inc();
                connection.as_mut().graceful_shutdown();
                shutting_down = true;
            }
            _ = wait_drain(&mut drain), if !shutting_down => {
                hcm.stats.downstream_cx_drain_close.inc();
                connection.as_mut().graceful_shutdown();
                shutting_down = true;
            }
            _ = conn.close_requested.notified(), if !shutting_down => {
                connection.as_mut().graceful_shutdown();
                shutting_down = true;
            }
        }
    }
}
