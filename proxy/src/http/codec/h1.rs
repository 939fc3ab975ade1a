//! remora's HTTP/1.1 server codec (downstream side).
//!
//! Parsing with httparse, framing by Content-Length / chunked, and Envoy's strictness: a
//! request with both Content-Length and Transfer-Encoding, a repeated Content-Length, a
//! Transfer-Encoding other than `chunked`, oversized or too many headers are refused with
//! Envoy's status codes and response-code details, and the connection is closed.
//!
//! The request body owns the connection's read side while it is being read and hands it back
//! (with any bytes read past the body) through a per-connection slot when it ends, so a
//! keep-alive connection needs no per-request channel.

use super::chunked::{BodyState, ChunkState, Decoded};
use super::spans::{self, Span};
use crate::http::body::BodyError;
use crate::model::hcm::UnderscoreHeaders;
use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Method, Request, StatusCode, Uri, Version};
use http_body::{Frame, SizeHint};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// How much to read at a time.
const READ_CHUNK: usize = 16 * 1024;
/// Responses up to this size are written with their head in one write.
const COALESCE_LIMIT: usize = 64 * 1024;

/// Limits and options from the connection manager.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub allow_absolute_url: bool,
    pub accept_http_10: bool,
    pub default_host_for_http_10: Option<String>,
    pub allow_chunked_length: bool,
    pub underscores: UnderscoreHeaders,
}

/// A request head the codec refused: the status to answer with and Envoy's details string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodecError {
    pub status: StatusCode,
    pub details: &'static str,
}

impl CodecError {
    const fn new(status: StatusCode, details: &'static str) -> Self {
        Self { status, details }
    }
    pub const BAD_REQUEST: CodecError =
        CodecError::new(StatusCode::BAD_REQUEST, "http1.codec_error");
    pub const HEADERS_TOO_LARGE: CodecError = CodecError::new(
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "http1.headers_too_large",
    );
    pub const TOO_MANY_HEADERS: CodecError = CodecError::new(
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "http1.too_many_headers",
    );
    pub const INVALID_URL: CodecError =
        CodecError::new(StatusCode::BAD_REQUEST, "http1.invalid_url");
    pub const INVALID_CHARACTERS: CodecError =
        CodecError::new(StatusCode::BAD_REQUEST, "http1.invalid_characters");
    pub const CHUNKED_CONTENT_LENGTH: CodecError = CodecError::new(
        StatusCode::BAD_REQUEST,
        "http1.content_length_and_chunked_not_allowed",
    );
    pub const INVALID_TRANSFER_ENCODING: CodecError = CodecError::new(
        StatusCode::NOT_IMPLEMENTED,
        "http1.invalid_transfer_encoding",
    );
    pub const UNEXPECTED_UNDERSCORE: CodecError =
        CodecError::new(StatusCode::BAD_REQUEST, "http1.unexpected_underscore");
    pub const UPGRADE_REQUIRED: CodecError =
        CodecError::new(StatusCode::UPGRADE_REQUIRED, "low_version");
    pub const MISSING_HOST: CodecError =
        CodecError::new(StatusCode::BAD_REQUEST, "missing_host_header");
}

/// A request body that broke its framing (a bad chunk size, a malformed trailer): Envoy answers
/// 400 `http1.codec_error` when no response has started yet, and closes the connection.
#[derive(Debug)]
pub struct BodyCodecError(pub io::Error);

impl std::fmt::Display for BodyCodecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "downstream protocol error: {}", self.0)
    }
}

impl std::error::Error for BodyCodecError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// The codec error behind a request-body error (anywhere in its source chain), if it is one.
pub fn body_codec_error(e: &(dyn std::error::Error + 'static)) -> Option<CodecError> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<BodyCodecError>() {
            return Some(CodecError::BAD_REQUEST);
        }
        cur = err.source();
    }
    None
}

/// Why reading a request head stopped.
#[derive(Debug)]
pub enum HeadError {
    /// The peer closed (or the read failed) before a request began: not an error to report.
    Closed,
    /// The peer closed or failed in the middle of a head.
    Io(io::Error),
    /// A protocol error to answer.
    Codec(CodecError),
}

/// How the request body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Length(u64),
    Chunked,
}

/// A parsed request head.
#[derive(Debug)]
pub struct Head {
    pub request: Request<()>,
    pub framing: Framing,
    /// The client asked to keep the connection open (HTTP/1.1 default, or `keep-alive` on 1.0).
    pub keep_alive: bool,
    pub expect_continue: bool,
    /// An `Upgrade:` request (the header value), e.g. websocket.
    pub upgrade: Option<HeaderValue>,
    /// Bytes of the head on the wire.
    pub wire_len: usize,
}

/// The read side of a connection and the bytes read ahead.
pub struct Reader {
    pub io: Box<dyn AsyncRead + Send + Unpin>,
    pub buf: BytesMut,
}

impl Reader {
    pub fn new(io: Box<dyn AsyncRead + Send + Unpin>, buf: BytesMut) -> Self {
        Self { io, buf }
    }

    /// Read more bytes; `Ok(0)` on end of stream. A released reader borrows a buffer from the
    /// worker's pool for the read and gives it back if nothing arrived.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() == 0 {
            let mut buf = crate::io::take_read_buffer(READ_CHUNK);
            let read = tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut buf);
            if read.is_pending() {
                crate::io::give_read_buffer(buf);
            } else {
                self.buf = buf;
            }
            return read;
        }
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(READ_CHUNK);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }

    /// Between requests: hand an empty buffer back to the worker's pool, so that an idle
    /// connection holds no buffer.
    pub fn release(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 0 {
            crate::io::give_read_buffer(std::mem::take(&mut self.buf));
        }
    }

    pub async fn fill(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }
}

/// Where a finished request body returns the reader. One per connection, reused per request.
#[derive(Default)]
pub struct ReaderSlot {
    reader: Mutex<Option<Reader>>,
}

impl ReaderSlot {
    pub fn put(&self, r: Reader) {
        *self.reader.lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
    }
    pub fn take(&self) -> Option<Reader> {
        self.reader.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

// === reading heads ===

/// Read and parse one request head. `first_byte` is signalled (for the request-headers timer)
/// once any byte of the head has arrived.
pub async fn read_head(
    r: &mut Reader,
    limits: &Limits,
    first_byte: &mut bool,
) -> Result<Head, HeadError> {
    loop {
        if !r.buf.is_empty() {
            *first_byte = true;
            match parse_head(&mut r.buf, limits)? {
                Some(head) => return Ok(head),
                None => {
                    if r.buf.len() > limits.max_header_bytes {
                        return Err(HeadError::Codec(CodecError::HEADERS_TOO_LARGE));
                    }
                }
            }
        }
        match r.fill().await {
            Ok(0) if r.buf.is_empty() => return Err(HeadError::Closed),
            Ok(0) => return Err(HeadError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(_) => {}
            Err(_) if r.buf.is_empty() => return Err(HeadError::Closed),
            Err(e) => return Err(HeadError::Io(e)),
        }
    }
}

fn has_token(v: &[u8], token: &str) -> bool {
    v.split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// The request methods Envoy's HTTP/1 parser accepts; any other is a codec error (400).
const KNOWN_METHODS: &[&str] = &[
    "ACL",
    "BIND",
    "CHECKOUT",
    "CONNECT",
    "COPY",
    "DELETE",
    "GET",
    "HEAD",
    "LINK",
    "LOCK",
    "MERGE",
    "MKACTIVITY",
    "MKCALENDAR",
    "MKCOL",
    "MOVE",
    "MSEARCH",
    "NOTIFY",
    "OPTIONS",
    "PATCH",
    "POST",
    "PROPFIND",
    "PROPPATCH",
    "PURGE",
    "PUT",
    "REBIND",
    "REPORT",
    "SEARCH",
    "SOURCE",
    "SUBSCRIBE",
    "TRACE",
    "UNBIND",
    "UNLINK",
    "UNLOCK",
    "UNSUBSCRIBE",
];

/// httparse's settings: request lines separated by several spaces are accepted, as by Envoy.
fn parser() -> httparse::ParserConfig {
    let mut c = httparse::ParserConfig::default();
    c.allow_multiple_spaces_in_request_line_delimiters(true);
    c
}

/// A request line that httparse refused but Envoy answers 426 (`low_version`) to: a version
/// `HTTP/<digit>.<digit>` other than 1.0 and 1.1, or no version at all (HTTP/0.9's form).
fn low_version(buf: &[u8]) -> bool {
    let Some(eol) = buf.iter().position(|b| *b == b'\n') else {
        return false;
    };
    let line = buf[..eol].strip_suffix(b"\r").unwrap_or(&buf[..eol]);
    let mut tokens = line
        .split(|b| matches!(b, b' ' | b'\t'))
        .filter(|t| !t.is_empty());
    let (Some(_method), Some(_target)) = (tokens.next(), tokens.next()) else {
        return false;
    };
    match (tokens.next(), tokens.next()) {
        (None, _) => true,
        (Some(v), None) => matches!(
            v,
            [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
                if major.is_ascii_digit() && minor.is_ascii_digit()
                    && !(*major == b'1' && matches!(minor, b'0' | b'1'))
        ),
        _ => false,
    }
}

/// Parse a head from the front of `buf`. `Ok(None)`: incomplete.
pub fn parse_head(buf: &mut BytesMut, limits: &Limits) -> Result<Option<Head>, HeadError> {
    // Skip empty lines before a request line (RFC 9112 §2.2).
    while buf.starts_with(b"\r\n") || buf.starts_with(b"\n") {
        let n = if buf.starts_with(b"\r\n") { 2 } else { 1 };
        buf.advance(n);
    }
    if buf.is_empty() {
        return Ok(None);
    }
    let mut storage = [httparse::EMPTY_HEADER; 128];
    let mut heap;
    let headers: &mut [httparse::Header<'_>] = if limits.max_headers < storage.len() {
        &mut storage[..limits.max_headers + 1]
    } else {
        heap = vec![httparse::EMPTY_HEADER; limits.max_headers + 1];
        &mut heap
    };
    let mut req = httparse::Request::new(headers);
    let status = match parser().parse_request(&mut req, buf) {
        Ok(s) => s,
        Err(_) if low_version(buf) => {
            return Err(HeadError::Codec(CodecError::UPGRADE_REQUIRED));
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HeadError::Codec(CodecError::TOO_MANY_HEADERS));
        }
        Err(
            httparse::Error::Token | httparse::Error::HeaderName | httparse::Error::HeaderValue,
        ) => {
            return Err(HeadError::Codec(CodecError::INVALID_CHARACTERS));
        }
        Err(_) => return Err(HeadError::Codec(CodecError::BAD_REQUEST)),
    };
    let httparse::Status::Complete(len) = status else {
        return Ok(None);
    };
    if len > limits.max_header_bytes {
        return Err(HeadError::Codec(CodecError::HEADERS_TOO_LARGE));
    }
    if req.headers.len() > limits.max_headers {
        return Err(HeadError::Codec(CodecError::TOO_MANY_HEADERS));
    }
    let version = match req.version {
        Some(1) => Version::HTTP_11,
        Some(0) => {
            if !limits.accept_http_10 {
                return Err(HeadError::Codec(CodecError::UPGRADE_REQUIRED));
            }
            Version::HTTP_10
        }
        _ => return Err(HeadError::Codec(CodecError::BAD_REQUEST)),
    };
    let method = req.method.unwrap_or("");
    // GET and POST first: the rest of the list is only scanned for the rarer methods.
    if !matches!(method, "GET" | "POST") && !KNOWN_METHODS.contains(&method) {
        return Err(HeadError::Codec(CodecError::BAD_REQUEST));
    }
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|_| HeadError::Codec(CodecError::BAD_REQUEST))?;
    let target = req.path.unwrap_or("");

    // Spans first: the head bytes become a shared `Bytes` for zero-copy values.
    let base = buf.as_ptr();
    let target_range = (target.as_ptr() as usize - base as usize, target.len());
    let mut inline = [Span::default(); spans::INLINE];
    let mut spill = Vec::new();
    let spans = spans::storage(&mut inline, &mut spill, req.headers.len());
    let mut kept = 0;
    for h in req.headers.iter() {
        if h.name.contains('_') {
            match limits.underscores {
                UnderscoreHeaders::Allow => {}
                UnderscoreHeaders::DropHeader => continue,
                UnderscoreHeaders::RejectRequest => {
                    return Err(HeadError::Codec(CodecError::UNEXPECTED_UNDERSCORE));
                }
            }
        }
        spans[kept] = Span::of(base, h);
        kept += 1;
    }
    let head_bytes = buf.split_to(len).freeze();
    let value = |start: usize, n: usize| head_bytes.slice(start..start + n);

    let mut headers = crate::http::names::take_header_map(kept);
    let mut content_length: Option<u64> = None;
    let mut transfer_encoding = false;
    let mut keep_alive = version == Version::HTTP_11;
    let mut close = false;
    let mut expect_continue = false;
    let mut upgrade = None;
    let mut hosts = 0;
    for span in &spans[..kept] {
        let name = HeaderName::from_bytes(span.name(&head_bytes))
            .map_err(|_| HeadError::Codec(CodecError::INVALID_CHARACTERS))?;
        let raw = span.value(&head_bytes);
        match name {
            http::header::CONTENT_LENGTH => {
                if content_length.is_some() {
                    return Err(HeadError::Codec(CodecError::BAD_REQUEST));
                }
                content_length = Some(
                    super::chunked::parse_content_length(&raw)
                        .ok_or(HeadError::Codec(CodecError::BAD_REQUEST))?,
                );
            }
            http::header::TRANSFER_ENCODING => {
                if version == Version::HTTP_10
                    || transfer_encoding
                    || !raw.trim_ascii().eq_ignore_ascii_case(b"chunked")
                {
                    return Err(HeadError::Codec(CodecError::INVALID_TRANSFER_ENCODING));
                }
                transfer_encoding = true;
            }
            http::header::CONNECTION => {
                if has_token(&raw, "close") {
                    close = true;
                }
                if has_token(&raw, "keep-alive") {
                    keep_alive = true;
                }
            }
            http::header::EXPECT if raw.eq_ignore_ascii_case(b"100-continue") => {
                expect_continue = version == Version::HTTP_11;
            }
            http::header::UPGRADE => {
                upgrade = Some(
                    HeaderValue::from_maybe_shared(raw.clone())
                        .map_err(|_| HeadError::Codec(CodecError::INVALID_CHARACTERS))?,
                )
            }
            http::header::HOST => {
                hosts += 1;
                if let Some(first) = headers.get(&http::header::HOST) {
                    // Envoy's header map joins a repeated Host (:authority) with ','.
                    let joined = [first.as_bytes(), b",", &raw].concat();
                    let v = HeaderValue::from_bytes(&joined)
                        .map_err(|_| HeadError::Codec(CodecError::INVALID_CHARACTERS))?;
                    headers.insert(name, v);
                    continue;
                }
            }
            _ => {}
        }
        let v = HeaderValue::from_maybe_shared(raw)
            .map_err(|_| HeadError::Codec(CodecError::INVALID_CHARACTERS))?;
        headers.append(name, v);
    }
    let framing = match (transfer_encoding, content_length) {
        (true, Some(_)) if !limits.allow_chunked_length => {
            return Err(HeadError::Codec(CodecError::CHUNKED_CONTENT_LENGTH));
        }
        (true, _) => {
            headers.remove(http::header::CONTENT_LENGTH);
            Framing::Chunked
        }
        (false, Some(n)) => Framing::Length(n),
        (false, None) => Framing::Length(0),
    };

    // The request target: origin-form, absolute-form (allow_absolute_url), `*` for OPTIONS.
    let target_bytes = value(target_range.0, target_range.1);
    let uri = if target_bytes.first() == Some(&b'/') {
        Uri::from_maybe_shared(target_bytes)
            .map_err(|_| HeadError::Codec(CodecError::INVALID_URL))?
    } else if &target_bytes[..] == b"*" && method == Method::OPTIONS {
        Uri::from_static("*")
    } else if limits.allow_absolute_url && method != Method::CONNECT {
        let abs = Uri::from_maybe_shared(target_bytes)
            .map_err(|_| HeadError::Codec(CodecError::INVALID_URL))?;
        let authority = abs
            .authority()
            .ok_or(HeadError::Codec(CodecError::INVALID_URL))?
            .clone();
        if !matches!(abs.scheme_str(), Some("http") | Some("https")) {
            return Err(HeadError::Codec(CodecError::INVALID_URL));
        }
        // The absolute URL's authority replaces Host (RFC 9112 §3.2.2).
        headers.insert(
            http::header::HOST,
            HeaderValue::from_str(authority.as_str())
                .map_err(|_| HeadError::Codec(CodecError::INVALID_URL))?,
        );
        hosts = 1;
        let pq = abs.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        Uri::try_from(if pq.is_empty() { "/" } else { pq })
            .map_err(|_| HeadError::Codec(CodecError::INVALID_URL))?
    } else if method == Method::CONNECT {
        Uri::from_maybe_shared(target_bytes)
            .map_err(|_| HeadError::Codec(CodecError::INVALID_URL))?
    } else {
        return Err(HeadError::Codec(CodecError::INVALID_URL));
    };
    // Otherwise, without Host, the connection manager answers 400 missing_host_header.
    if hosts == 0
        && version == Version::HTTP_10
        && let Some(h) = &limits.default_host_for_http_10
    {
        headers.insert(
            http::header::HOST,
            HeaderValue::from_str(h).map_err(|_| HeadError::Codec(CodecError::MISSING_HOST))?,
        );
    }
    if close {
        keep_alive = false;
    }
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    Ok(Some(Head {
        request,
        framing,
        keep_alive,
        expect_continue,
        upgrade,
        wire_len: len,
    }))
}

// === request bodies ===

/// A downstream HTTP/1 request body, read straight from the connection.
pub struct RequestBody {
    reader: Option<Reader>,
    slot: Arc<ReaderSlot>,
    state: BodyState,
    max_trailer_bytes: usize,
}

impl RequestBody {
    pub fn new(
        reader: Reader,
        slot: Arc<ReaderSlot>,
        framing: Framing,
        max_trailer_bytes: usize,
    ) -> Self {
        let state = match framing {
            Framing::Length(0) => BodyState::Done,
            Framing::Length(n) => BodyState::Length(n),
            Framing::Chunked => BodyState::Chunked(ChunkState::Size),
        };
        let mut b = Self {
            reader: Some(reader),
            slot,
            state,
            max_trailer_bytes,
        };
        if matches!(b.state, BodyState::Done) {
            b.finish();
        }
        b
    }

    fn finish(&mut self) {
        self.state = BodyState::Done;
        if let Some(r) = self.reader.take() {
            self.slot.put(r);
        }
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
            let Some(reader) = this.reader.as_mut() else {
                return Poll::Ready(None);
            };
            let failed = match this.state.decode(&mut reader.buf, this.max_trailer_bytes) {
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
                Ok(Decoded::NeedMore) => match reader.poll_fill(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(0)) => io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "downstream closed the connection before the request body was complete",
                    ),
                    Poll::Ready(Ok(_)) => continue,
                    Poll::Ready(Err(e)) => e,
                },
                Err(e) => {
                    this.state = BodyState::Done;
                    this.reader = None;
                    return Poll::Ready(Some(Err(Box::new(BodyCodecError(e)))));
                }
            };
            // The connection cannot carry another request: the reader is not returned.
            this.state = BodyState::Done;
            this.reader = None;
            return Poll::Ready(Some(Err(Box::new(failed))));
        }
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        // An unread body: the reader is not returned, and the connection cannot be reused.
        if matches!(self.state, BodyState::Done) {
            self.finish();
        }
    }
}

// === writing responses ===

/// Hop-by-hop headers that never cross the proxy on HTTP/1 (plus the framing headers the codec
/// sets itself).
fn skip_response_header(name: &HeaderName, upgrade: bool) -> bool {
    match name.as_str() {
        "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "te"
        | "trailer" | "http2-settings" => true,
        "upgrade" => !upgrade,
        _ => false,
    }
}

/// What the response needs on the wire.
#[derive(Debug, Clone, Copy)]
pub struct ResponseFraming {
    /// HEAD request, or 1xx/204/304: no body on the wire.
    pub no_body: bool,
    pub version: Version,
    pub keep_alive: bool,
    /// A 101 Switching Protocols response: write `connection: upgrade`.
    pub upgrade: bool,
}

/// The reason phrase Envoy writes for a status (its `CodeUtility::toString`): the codes of its
/// `Http::Code` table, "Unknown" for any other (418, 101, 103, …).
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200..=299 => reason_2xx(status),
        300..=399 => reason_3xx(status),
        400..=499 => reason_4xx(status),
        500..=599 => reason_5xx(status),
        _ => "Unknown",
    }
}

fn reason_2xx(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        207 => "Multi-Status",
        208 => "Already Reported",
        226 => "IM Used",
        _ => "Unknown",
    }
}

fn reason_3xx(status: u16) -> &'static str {
    match status {
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        305 => "Use Proxy",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        _ => "Unknown",
    }
}

fn reason_4xx(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Payload Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        422 => "Unprocessable Entity",
        423 => "Locked",
        424 => "Failed Dependency",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        _ => "Unknown",
    }
}

fn reason_5xx(status: u16) -> &'static str {
    match status {
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        506 => "Variant Also Negotiates",
        507 => "Insufficient Storage",
        508 => "Loop Detected",
        510 => "Not Extended",
        511 => "Network Authentication Required",
        _ => "Unknown",
    }
}

/// Serialize a response head into `out`. Returns whether the body is chunked.
pub fn encode_head(
    out: &mut Vec<u8>,
    parts: &http::response::Parts,
    framing: &ResponseFraming,
    content_length: Option<u64>,
) -> bool {
    out.extend_from_slice(if framing.version == Version::HTTP_10 {
        b"HTTP/1.0 "
    } else {
        b"HTTP/1.1 "
    });
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason_phrase(parts.status.as_u16()).as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in parts.headers.iter() {
        if skip_response_header(name, framing.upgrade) || name == http::header::CONTENT_LENGTH {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let status = parts.status.as_u16();
    let bodyless_status = (100..200).contains(&status) || status == 204 || status == 304;
    let mut chunked = false;
    if framing.upgrade {
        out.extend_from_slice(b"connection: upgrade\r\n");
    } else {
        if !bodyless_status {
            match content_length {
                Some(n) => {
                    out.extend_from_slice(b"content-length: ");
                    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
                    out.extend_from_slice(b"\r\n");
                }
                None if framing.no_body => {}
                None if framing.version == Version::HTTP_11 => {
                    out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                    chunked = true;
                }
                None => {}
            }
        } else if status == 304
            && let Some(n) = content_length
        {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if !framing.keep_alive {
            out.extend_from_slice(b"connection: close\r\n");
        } else if framing.version == Version::HTTP_10 {
            out.extend_from_slice(b"connection: keep-alive\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
    chunked && !framing.no_body
}

/// The outcome of writing a response.
#[derive(Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The whole response was written; the connection may be reused if framing allows.
    Complete,
    /// The body ended with an error (upstream reset): the connection must be closed.
    BodyError,
}

/// Write a response head and stream its body. `out` is a reusable buffer.
pub async fn write_response<W: AsyncWrite + Unpin, B>(
    w: &mut W,
    out: &mut Vec<u8>,
    parts: &http::response::Parts,
    mut body: B,
    framing: ResponseFraming,
) -> io::Result<WriteOutcome>
where
    B: http_body::Body<Data = Bytes, Error = BodyError> + Unpin,
{
    use http_body_util::BodyExt;
    out.clear();
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| super::chunked::parse_content_length(v.as_bytes()));
    let content_length = declared
        .or_else(|| body.size_hint().exact())
        .filter(|_| !framing.upgrade);
    // A close-delimited body on HTTP/1.0 without a length.
    let mut framing = framing;
    if content_length.is_none()
        && framing.version == Version::HTTP_10
        && !framing.no_body
        && !framing.upgrade
    {
        framing.keep_alive = false;
    }
    let chunked = encode_head(out, parts, &framing, content_length);
    if framing.no_body || framing.upgrade {
        w.write_all(out).await?;
        w.flush().await?;
        // A bodyless response still ends its stream (HEAD, 1xx, 204, 304).
        while let Some(frame) = body.frame().await {
            if frame.is_err() {
                break;
            }
        }
        return Ok(WriteOutcome::Complete);
    }
    let mut remaining = content_length;
    loop {
        // Coalesce frames that are ready now with what is buffered; wait only with an empty buffer.
        let frame = if out.is_empty() {
            body.frame().await
        } else {
            match futures_util::FutureExt::now_or_never(body.frame()) {
                Some(f) => f,
                None => {
                    w.write_all(out).await?;
                    out.clear();
                    body.frame().await
                }
            }
        };
        match frame {
            None => break,
            Some(Err(_)) => {
                if !out.is_empty() {
                    w.write_all(out).await?;
                    out.clear();
                }
                return Ok(WriteOutcome::BodyError);
            }
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                }; // trailers are not sent on HTTP/1
                if data.is_empty() {
                    continue;
                }
                if let Some(rem) = remaining.as_mut() {
                    if data.len() as u64 > *rem {
                        // More body than declared: never send past the length.
                        return Ok(WriteOutcome::BodyError);
                    }
                    *rem -= data.len() as u64;
                }
                if chunked {
                    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                }
                if out.len() + data.len() <= COALESCE_LIMIT {
                    out.extend_from_slice(&data);
                } else {
                    w.write_all(out).await?;
                    out.clear();
                    w.write_all(&data).await?;
                }
                if chunked {
                    out.extend_from_slice(b"\r\n");
                }
                if out.len() >= COALESCE_LIMIT {
                    w.write_all(out).await?;
                    out.clear();
                }
            }
        }
    }
    if remaining.is_some_and(|r| r > 0) {
        if !out.is_empty() {
            w.write_all(out).await?;
            out.clear();
        }
        return Ok(WriteOutcome::BodyError);
    }
    if chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    if !out.is_empty() {
        w.write_all(out).await?;
        out.clear();
    }
    w.flush().await?;
    Ok(WriteOutcome::Complete)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn limits() -> Limits {
        Limits {
            max_header_bytes: 60 * 1024,
            max_headers: 100,
            allow_absolute_url: true,
            accept_http_10: false,
            default_host_for_http_10: None,
            allow_chunked_length: false,
            underscores: UnderscoreHeaders::Allow,
        }
    }

    fn parse(s: &str) -> Result<Option<Head>, HeadError> {
        let mut b = BytesMut::from(s);
        parse_head(&mut b, &limits())
    }

    #[test]
    fn reason_phrases_are_envoys() {
        assert_eq!(reason_phrase(200), "OK");
        assert_eq!(reason_phrase(100), "Continue");
        assert_eq!(reason_phrase(431), "Request Header Fields Too Large");
        assert_eq!(reason_phrase(511), "Network Authentication Required");
        // Not in Envoy's Http::Code table.
        for unknown in [101, 103, 306, 418, 425, 509, 600, 999] {
            assert_eq!(reason_phrase(unknown), "Unknown", "{unknown}");
        }
    }

    fn codec_err(s: &str) -> CodecError {
        match parse(s) {
            Err(HeadError::Codec(e)) => e,
            other => panic!("expected a codec error for {s:?}, got {other:?}"),
        }
    }

    #[test]
    fn parses_a_request() {
        let h = parse("GET /a?b=1 HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nX-A: 2\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.request.uri().path_and_query().unwrap().as_str(), "/a?b=1");
        assert_eq!(h.request.headers().get_all("x-a").iter().count(), 2);
        assert_eq!(h.framing, Framing::Length(0));
        assert!(h.keep_alive);
        assert!(parse("GET / HTTP/1.1\r\nHost: x\r\n").unwrap().is_none());
        let h = parse("GET http://example.com:8080/p HTTP/1.1\r\nHost: other\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.request.headers()["host"], "example.com:8080");
        assert_eq!(h.request.uri(), "/p");
    }

    #[test]
    fn host_repeated_or_missing() {
        // Envoy joins a repeated Host with ','; a missing one is the connection manager's 400.
        let h = parse("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.request.headers().get_all("host").iter().count(), 1);
        assert_eq!(h.request.headers()["host"], "a,b");
        let h = parse("GET / HTTP/1.1\r\n\r\n").unwrap().unwrap();
        assert!(h.request.headers().get("host").is_none());
    }

    #[test]
    fn refuses_smuggling_shapes() {
        assert_eq!(
            codec_err(
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
            ),
            CodecError::CHUNKED_CONTENT_LENGTH
        );
        assert_eq!(
            codec_err(
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n"
            ),
            CodecError::BAD_REQUEST
        );
        assert_eq!(
            codec_err(
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"
            ),
            CodecError::BAD_REQUEST
        );
        assert_eq!(
            codec_err("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            CodecError::INVALID_TRANSFER_ENCODING
        );
        assert_eq!(
            codec_err("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n"),
            CodecError::BAD_REQUEST
        );
        assert_eq!(
            codec_err("GET / HTTP/1.0\r\nHost: x\r\n\r\n"),
            CodecError::UPGRADE_REQUIRED
        );
        assert_eq!(
            codec_err("GET\x01 / HTTP/1.1\r\n\r\n"),
            CodecError::INVALID_CHARACTERS
        );
        assert_eq!(
            codec_err("GET / HTTP/3.0\r\nHost: x\r\n\r\n"),
            CodecError::UPGRADE_REQUIRED,
            "Envoy answers 426 to a version other than 1.x"
        );
    }

    #[test]
    fn too_many_headers() {
        let mut s = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
        for i in 0..100 {
            s.push_str(&format!("x-{i}: v\r\n"));
        }
        s.push_str("\r\n");
        assert_eq!(codec_err(&s), CodecError::TOO_MANY_HEADERS);
        // Above the inline span storage, when the limit allows it.
        let mut b = BytesMut::from(s.as_str());
        let many = Limits {
            max_headers: 500,
            ..limits()
        };
        let head = parse_head(&mut b, &many).unwrap().unwrap();
        assert_eq!(head.request.headers().len(), 101);
        assert_eq!(head.request.headers()["x-99"], "v");
    }

    async fn read_body(
        wire: &str,
        framing: Framing,
    ) -> (Vec<u8>, Option<http::HeaderMap>, Option<Reader>) {
        let slot = Arc::new(ReaderSlot::default());
        let reader = Reader::new(Box::new(tokio::io::empty()), BytesMut::from(wire));
        let body = RequestBody::new(reader, slot.clone(), framing, 8192);
        let collected = crate::http::body::Body::H1(body).collect().await.unwrap();
        let trailers = collected.trailers().cloned();
        (collected.to_bytes().to_vec(), trailers, slot.take())
    }

    #[tokio::test]
    async fn idle_reader_holds_no_buffer() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut r = Reader::new(Box::new(server), BytesMut::new());
        tokio::io::AsyncWriteExt::write_all(&mut client, b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
            .await
            .unwrap();
        assert!(r.fill().await.unwrap() > 0);
        assert!(parse_head(&mut r.buf, &limits()).unwrap().is_some());
        r.release();
        assert_eq!(r.buf.capacity(), 0, "an idle reader gives its buffer back");
        // Waiting with nothing to read borrows a pooled buffer and returns it.
        let pending = std::future::poll_fn(|cx| Poll::Ready(r.poll_fill(cx).is_pending())).await;
        assert!(pending);
        assert_eq!(r.buf.capacity(), 0);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"GET /b HTTP/1.1\r\nhost: a\r\n\r\n")
            .await
            .unwrap();
        assert!(r.fill().await.unwrap() > 0);
        let head = parse_head(&mut r.buf, &limits()).unwrap().unwrap();
        assert_eq!(head.request.uri().path(), "/b");
    }

    #[tokio::test]
    async fn chunked_bodies_and_reader_return() {
        let (b, t, r) = read_body(
            "5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-t: 1\r\n\r\nNEXT",
            Framing::Chunked,
        )
        .await;
        assert_eq!(b, b"hello world");
        assert_eq!(t.unwrap()["x-t"], "1");
        assert_eq!(&r.unwrap().buf[..], b"NEXT");
        let (b, _, r) = read_body("abcdefNEXT", Framing::Length(6)).await;
        assert_eq!(b, b"abcdef");
        assert_eq!(&r.unwrap().buf[..], b"NEXT");
        let (b, t, _) = read_body("0\r\n\r\n", Framing::Chunked).await;
        assert!(b.is_empty() && t.is_none());
    }

    #[tokio::test]
    async fn truncated_body_is_an_error() {
        let slot = Arc::new(ReaderSlot::default());
        let reader = Reader::new(Box::new(tokio::io::empty()), BytesMut::from("abc"));
        let body = RequestBody::new(reader, slot.clone(), Framing::Length(10), 8192);
        assert!(crate::http::body::Body::H1(body).collect().await.is_err());
        assert!(slot.take().is_none());
    }

    #[tokio::test]
    async fn writes_framed_responses() {
        let parts = http::Response::builder()
            .status(200)
            .header("x-a", "1")
            .header("connection", "keep-alive")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let mut out = Vec::new();
        let mut w = Vec::new();
        let f = ResponseFraming {
            no_body: false,
            version: Version::HTTP_11,
            keep_alive: true,
            upgrade: false,
        };
        write_response(
            &mut w,
            &mut out,
            &parts,
            crate::http::body::Body::full("hi"),
            f,
        )
        .await
        .unwrap();
        assert_eq!(
            String::from_utf8(w).unwrap(),
            "HTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-length: 2\r\n\r\nhi"
        );
        let stream = http_body_util::StreamBody::new(futures_util::stream::iter(vec![
            Ok::<_, BodyError>(Frame::data(Bytes::from("ab"))),
            Ok(Frame::data(Bytes::from("c"))),
        ]));
        let mut w = Vec::new();
        write_response(
            &mut w,
            &mut out,
            &parts,
            stream,
            ResponseFraming {
                keep_alive: false,
                ..f
            },
        )
        .await
        .unwrap();
        assert_eq!(
            String::from_utf8(w).unwrap(),
            "HTTP/1.1 200 OK\r\nx-a: 1\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n2\r\nab\r\n1\r\nc\r\n0\r\n\r\n"
        );
    }

    /// Each case checked against Envoy 1.40.
    #[test]
    fn request_lines_and_lengths_as_envoy_reads_them() {
        for line in [
            "FOO / HTTP/1.1",
            "get / HTTP/1.1",
            "M-SEARCH / HTTP/1.1",
            "PRI / HTTP/1.1",
        ] {
            let req = format!("{line}\r\nHost: x\r\n\r\n");
            assert_eq!(codec_err(&req), CodecError::BAD_REQUEST, "{line}");
        }
        for line in [
            "GET / HTTP/1.2",
            "GET / HTTP/2.0",
            "GET / HTTP/0.9",
            "GET /",
        ] {
            let req = format!("{line}\r\nHost: x\r\n\r\n");
            assert_eq!(codec_err(&req), CodecError::UPGRADE_REQUIRED, "{line}");
        }
        for line in ["GET / HTTP/1.10", "GET / HTTPS/1.1", "GET / HTTP/1.1x"] {
            let req = format!("{line}\r\nHost: x\r\n\r\n");
            assert_ne!(codec_err(&req), CodecError::UPGRADE_REQUIRED, "{line}");
        }
        for line in [
            "PROPFIND / HTTP/1.1",
            "MSEARCH / HTTP/1.1",
            "GET  /  HTTP/1.1",
        ] {
            let req = format!("{line}\r\nHost: x\r\n\r\n");
            assert!(parse(&req).unwrap().is_some(), "{line}");
        }
        for cl in [
            "+5",
            "-5",
            "0x5",
            "5,5",
            "5, 5",
            "5 5",
            "",
            "99999999999999999999999",
        ] {
            let req = format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {cl}\r\n\r\n");
            assert_eq!(codec_err(&req), CodecError::BAD_REQUEST, "{cl:?}");
        }
        for (cl, n) in [("005", 5), (" 5 ", 5), ("18446744073709551615", u64::MAX)] {
            let req = format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {cl}\r\n\r\n");
            assert_eq!(parse(&req).unwrap().unwrap().framing, Framing::Length(n));
        }
    }

    #[tokio::test]
    async fn a_broken_chunked_body_is_a_codec_error() {
        let slot = Arc::new(ReaderSlot::default());
        let reader = Reader::new(Box::new(tokio::io::empty()), BytesMut::from("5g\r\nhello"));
        let body = RequestBody::new(reader, slot.clone(), Framing::Chunked, 8192);
        let err = crate::http::body::Body::H1(body)
            .collect()
            .await
            .unwrap_err();
        assert_eq!(body_codec_error(&*err), Some(CodecError::BAD_REQUEST));
        assert!(slot.take().is_none(), "the connection is not reused");
        // A client that goes away is not a codec error.
        let reader = Reader::new(Box::new(tokio::io::empty()), BytesMut::from("5\r\nhel"));
        let body = RequestBody::new(reader, slot.clone(), Framing::Chunked, 8192);
        let err = crate::http::body::Body::H1(body)
            .collect()
            .await
            .unwrap_err();
        assert_eq!(body_codec_error(&*err), None);
    }
}
