//! remora's HTTP/1.1 client codec (upstream side). It runs inside the request's own task: the
//! request is written straight to the pooled connection and the response head read back, with no
//! connection task or channel in between; the response body reads from the connection and hands
//! it back to the worker's pool when it ends.

use super::chunked::{BodyState, ChunkState, Decoded};
use super::spans::{self, Span};
use crate::http::body::{Body, BodyError};
use crate::upstream::pool::H1Conn;
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::AsyncWriteExt;

const MAX_RESPONSE_HEAD: usize = 96 * 1024;
const MAX_RESPONSE_HEADERS: usize = 128;

/// Why sending a request failed.
#[derive(Debug)]
pub enum SendError {
    /// Writing to the upstream failed.
    Io(io::Error),
    /// The downstream request body failed (the client went away).
    Body(BodyError),
}

/// Why reading a response failed.
#[derive(Debug)]
pub enum RecvError {
    /// The upstream closed before sending any byte of a response.
    Closed,
    Io(io::Error),
    /// The upstream sent something that is not an HTTP/1 response.
    Protocol(&'static str),
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// Until the upstream closes (the connection is not reusable).
    Eof,
}

fn is_hop_or_framing(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "content-length" | "transfer-encoding" | "keep-alive" | "proxy-connection"
    )
}

/// Serialise a request head into `out`. Returns the framing of the body that follows.
pub fn encode_request_head(
    out: &mut Vec<u8>,
    parts: &http::request::Parts,
    body: &Body,
) -> Framing {
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(
        parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .as_bytes(),
    );
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in parts.headers.iter() {
        if is_hop_or_framing(name) {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let framing = if body.is_end_stream() {
        // Methods that usually carry a body announce an empty one.
        if matches!(parts.method, Method::POST | Method::PUT | Method::PATCH) {
            out.extend_from_slice(b"content-length: 0\r\n");
        }
        Framing::Empty
    } else if let Some(n) = body.size_hint().exact() {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        out.extend_from_slice(b"\r\n");
        Framing::Length(n)
    } else {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Framing::Chunked
    };
    out.extend_from_slice(b"\r\n");
    framing
}

/// Write a request. Returns true when the whole request is in `out` (so it can be written
/// again on another connection if this one turns out to be dead).
pub async fn write_request(
    conn: &mut H1Conn,
    parts: &http::request::Parts,
    mut body: Body,
    out: &mut Vec<u8>,
) -> Result<bool, SendError> {
    out.clear();
    let framing = encode_request_head(out, parts, &body);
    if framing == Framing::Empty {
        conn.io.write_all(out).await.map_err(SendError::Io)?;
        return Ok(true);
    }
    // A body that is already here (a small upload) goes out with the head in one write.
    let mut trailers: Option<HeaderMap> = None;
    match futures_util::FutureExt::now_or_never(body.frame()) {
        // A body that failed at once (a bad chunk already read) sends nothing.
        Some(Some(Err(e))) => return Err(SendError::Body(e)),
        Some(Some(Ok(frame))) => match frame.into_data() {
            Ok(data) => append_data(out, &data, framing),
            Err(frame) => trailers = frame.into_trailers().ok(),
        },
        Some(None) | None => {}
    }
    if body.is_end_stream() && trailers.is_none() {
        if framing == Framing::Chunked {
            out.extend_from_slice(b"0\r\n\r\n");
        }
        conn.io.write_all(out).await.map_err(SendError::Io)?;
        return Ok(true);
    }
    conn.io.write_all(out).await.map_err(SendError::Io)?;
    loop {
        match body.frame().await {
            None => break,
            Some(Err(e)) => return Err(SendError::Body(e)),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    out.clear();
                    append_data(out, &data, framing);
                    conn.io.write_all(out).await.map_err(SendError::Io)?;
                }
                Err(frame) => trailers = frame.into_trailers().ok(),
            },
        }
    }
    if framing == Framing::Chunked {
        out.clear();
        out.extend_from_slice(b"0\r\n");
        if let Some(t) = &trailers {
            for (name, value) in t {
                out.extend_from_slice(name.as_str().as_bytes());
                out.extend_from_slice(b": ");
                out.extend_from_slice(value.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        }
        out.extend_from_slice(b"\r\n");
        conn.io.write_all(out).await.map_err(SendError::Io)?;
    }
    Ok(false)
}

fn append_data(out: &mut Vec<u8>, data: &Bytes, framing: Framing) {
    if data.is_empty() {
        return;
    }
    if framing == Framing::Chunked {
        out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    } else {
        out.extend_from_slice(data);
    }
}

/// A response head.
pub struct ResponseHead {
    pub parts: http::response::Parts,
    pub framing: Framing,
    pub keep_alive: bool,
}

/// Read a response head (skipping 100 Continue and other 1xx except 101).
pub async fn read_response(
    conn: &mut H1Conn,
    head_request: bool,
) -> Result<ResponseHead, RecvError> {
    loop {
        if let Some(head) = parse_response(&mut conn.buf, head_request)? {
            if head.parts.status.is_informational()
                && head.parts.status != StatusCode::SWITCHING_PROTOCOLS
            {
                continue;
            }
            return Ok(head);
        }
        if conn.buf.len() > MAX_RESPONSE_HEAD {
            return Err(RecvError::Protocol("response headers too large"));
        }
        let empty = conn.buf.is_empty();
        match conn.fill().await {
            Ok(0) if empty => return Err(RecvError::Closed),
            Ok(0) => return Err(RecvError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(_) => {}
            Err(e)
                if empty
                    && matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                    ) =>
            {
                return Err(RecvError::Closed);
            }
            Err(e) => return Err(RecvError::Io(e)),
        }
    }
}

pub fn parse_response(
    buf: &mut BytesMut,
    head_request: bool,
) -> Result<Option<ResponseHead>, RecvError> {
    if buf.is_empty() {
        return Ok(None);
    }
    let mut storage = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut resp = httparse::Response::new(&mut storage);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(RecvError::Protocol("invalid response head")),
    };
    let version = match resp.version {
        Some(1) => Version::HTTP_11,
        Some(0) => Version::HTTP_10,
        _ => return Err(RecvError::Protocol("unsupported response version")),
    };
    let status = StatusCode::from_u16(resp.code.unwrap_or(0))
        .map_err(|_| RecvError::Protocol("invalid status code"))?;
    let base = buf.as_ptr();
    let mut inline = [Span::default(); spans::INLINE];
    let mut spill = Vec::new();
    let spans = spans::storage(&mut inline, &mut spill, resp.headers.len());
    for (span, h) in spans.iter_mut().zip(resp.headers.iter()) {
        *span = Span::of(base, h);
    }
    let head = buf.split_to(len).freeze();
    let mut headers = crate::http::names::take_header_map(spans.len());
    let mut content_length: Option<u64> = None;
    let mut te = false;
    let mut close = version == Version::HTTP_10;
    for span in spans.iter() {
        let name = HeaderName::from_bytes(span.name(&head))
            .map_err(|_| RecvError::Protocol("invalid header name"))?;
        let raw = span.value(&head);
        match name {
            // Envoy refuses (502 UPE) a repeated Content-Length, even with the same value.
            http::header::CONTENT_LENGTH if content_length.is_some() => {
                return Err(RecvError::Protocol("repeated content-length"));
            }
            http::header::CONTENT_LENGTH => {
                let v = super::chunked::parse_content_length(&raw)
                    .ok_or(RecvError::Protocol("invalid content-length"))?;
                content_length = Some(v);
            }
            // Only `chunked` is a transfer coding Envoy reads (anything else: 502 UPE).
            http::header::TRANSFER_ENCODING => {
                if te || !raw.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                    return Err(RecvError::Protocol("unsupported transfer-encoding"));
                }
                te = true;
            }
            http::header::CONNECTION => {
                for token in raw.split(|b| *b == b',') {
                    let t = token.trim_ascii();
                    if t.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if t.eq_ignore_ascii_case(b"keep-alive") && version == Version::HTTP_10 {
                        close = false;
                    }
                }
            }
            _ => {}
        }
        headers.append(
            name,
            HeaderValue::from_maybe_shared(raw)
                .map_err(|_| RecvError::Protocol("invalid header value"))?,
        );
    }
    if te && content_length.is_some() {
        return Err(RecvError::Protocol("content-length with transfer-encoding"));
    }
    let code = status.as_u16();
    let framing = if head_request || (100..200).contains(&code) || code == 204 || code == 304 {
        Framing::Empty
    } else if te {
        Framing::Chunked
    } else {
        match content_length {
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => Framing::Eof,
        }
    };
    let mut parts = http::Response::new(()).into_parts().0;
    parts.status = status;
    parts.version = version;
    parts.headers = headers;
    Ok(Some(ResponseHead {
        parts,
        framing,
        keep_alive: !close && framing != Framing::Eof,
    }))
}

/// An upstream HTTP/1.1 response body. At its end the connection goes back to the pool (when
/// reusable); dropped earlier, the connection is closed.
pub struct ResponseBody {
    conn: Option<H1Conn>,
    state: BodyState,
    keep_alive: bool,
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody")
            .field("state", &self.state)
            .finish()
    }
}

impl ResponseBody {
    pub fn new(conn: H1Conn, framing: Framing, keep_alive: bool) -> Self {
        let state = match framing {
            Framing::Empty => BodyState::Done,
            Framing::Length(n) => BodyState::Length(n),
            Framing::Chunked => BodyState::Chunked(ChunkState::Size),
            Framing::Eof => BodyState::Eof,
        };
        let mut b = Self {
            conn: Some(conn),
            state,
            keep_alive,
        };
        if matches!(b.state, BodyState::Done) {
            b.finish();
        }
        b
    }

    fn finish(&mut self) {
        self.state = BodyState::Done;
        if let Some(c) = self.conn.take() {
            if self.keep_alive && c.buf.is_empty() {
                c.release()
            } else {
                c.discard()
            }
        }
    }

    fn fail(&mut self, e: io::Error) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.state = BodyState::Done;
        if let Some(c) = self.conn.take() {
            c.discard();
        }
        Poll::Ready(Some(Err(Box::new(e))))
    }

    pub fn is_end_stream(&self) -> bool {
        matches!(self.state, BodyState::Done)
    }

    pub fn size_hint(&self) -> SizeHint {
        self.state.size_hint()
    }

    pub fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match this.state.decode(&mut conn.buf, 64 * 1024) {
                Ok(Decoded::Data(data)) => {
                    if this.is_end_stream() {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Decoded::End(trailers)) => {
                    this.finish();
                    return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
                }
                Ok(Decoded::NeedMore) => match conn.poll_fill(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(0)) if matches!(this.state, BodyState::Eof) => {
                        this.keep_alive = false;
                        this.finish();
                        return Poll::Ready(None);
                    }
                    Poll::Ready(Ok(0)) => {
                        return this.fail(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "upstream closed the connection before the response body was complete",
                        ));
                    }
                    Poll::Ready(Ok(_)) => {}
                    Poll::Ready(Err(e)) => return this.fail(e),
                },
                Err(e) => return this.fail(e),
            }
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take() {
            c.discard();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str, head: bool) -> Result<Option<ResponseHead>, RecvError> {
        let mut b = BytesMut::from(s);
        parse_response(&mut b, head)
    }

    #[test]
    fn response_framing() {
        let h = parse(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.framing, Framing::Length(5));
        assert!(h.keep_alive);
        assert_eq!(h.parts.headers["x-a"], "b");
        let h = parse(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.framing, Framing::Chunked);
        let h = parse(
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert!(!h.keep_alive);
        let h = parse("HTTP/1.0 200 OK\r\n\r\n", false).unwrap().unwrap();
        assert_eq!(h.framing, Framing::Eof);
        assert!(!h.keep_alive);
        let h = parse("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", true)
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::Empty);
        let h = parse("HTTP/1.1 204 No Content\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::Empty);
        assert!(
            parse("HTTP/1.1 200 OK\r\nContent-Len", false)
                .unwrap()
                .is_none()
        );
        assert!(matches!(
            parse("garbage\r\n\r\n", false),
            Err(RecvError::Protocol(_))
        ));
        assert!(matches!(
            parse(
                "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                false
            ),
            Err(RecvError::Protocol(_))
        ));
    }

    #[test]
    fn request_head_encoding() {
        let (parts, ()) = http::Request::builder()
            .method("POST")
            .uri("/p?q=1")
            .header("host", "h")
            .header("content-length", "3")
            .body(())
            .unwrap()
            .into_parts();
        let mut out = Vec::new();
        let f = encode_request_head(&mut out, &parts, &Body::full("abc"));
        assert_eq!(f, Framing::Length(3));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /p?q=1 HTTP/1.1\r\nhost: h\r\ncontent-length: 3\r\n\r\n"
        );
        let (parts, ()) = http::Request::builder()
            .uri("/")
            .header("host", "h")
            .body(())
            .unwrap()
            .into_parts();
        let mut out = Vec::new();
        assert_eq!(
            encode_request_head(&mut out, &parts, &Body::Empty),
            Framing::Empty
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET / HTTP/1.1\r\nhost: h\r\n\r\n"
        );
    }

    /// Framing an upstream must not send: Envoy 1.40 answers 502 UPE to each.
    #[test]
    fn bad_response_framing_is_a_protocol_error() {
        for head in [
            "Content-Length: +5",
            "Content-Length: -5",
            "Content-Length: 0x5",
            "Content-Length: 5,5",
            "Content-Length: 99999999999999999999999",
            "Content-Length: 5\r\nContent-Length: 5",
            "Content-Length: 5\r\nContent-Length: 6",
            "Transfer-Encoding: xchunked",
            "Transfer-Encoding: gzip",
            "Transfer-Encoding: gzip, chunked",
            "Transfer-Encoding: chunked\r\nContent-Length: 3",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
        ] {
            let wire = format!("HTTP/1.1 200 OK\r\n{head}\r\n\r\n");
            assert!(
                matches!(parse(&wire, false), Err(RecvError::Protocol(_))),
                "{head:?}"
            );
        }
        let h = parse("HTTP/1.1 200 OK\r\nContent-Length:  5 \r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::Length(5));
        let h = parse(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.framing, Framing::Chunked);
    }
}
