//! Local replies: responses remora generates itself (no route, no healthy upstream, timeouts,
//! codec errors, direct responses), with Envoy's bodies and the connection manager's
//! `local_reply_config` mappers and body format applied.

use super::body::Body;
use crate::model::access_log::{FilterInput, LogFormat};
use crate::model::hcm::LocalReplyConfig;
use crate::telemetry::format::FormatContext;
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};

/// The parts of a local reply before mapping.
#[derive(Debug, Clone)]
pub struct LocalReply {
    pub status: StatusCode,
    pub body: Bytes,
}

impl LocalReply {
    pub fn new(status: StatusCode, body: impl Into<Bytes>) -> Self {
        Self {
            status,
            body: body.into(),
        }
    }
}

/// Apply `local_reply_config` and build the response.
pub fn build(
    config: &LocalReplyConfig,
    reply: LocalReply,
    ctx: &FormatContext<'_>,
    input: &FilterInput<'_>,
) -> Response<Body> {
    let mut status = reply.status;
    let mut body = reply.body;
    let mut format: Option<&(LogFormat, Option<String>)> = config.body_format.as_ref();
    let mut extra = None;
    if let Some(m) = config.mappers.iter().find(|m| m.filter.evaluate(input)) {
        if let Some(s) = m.status {
            status = s;
        }
        if let Some(b) = &m.body {
            body = b.clone();
        }
        if m.body_format.is_some() {
            format = m.body_format.as_ref();
        }
        extra = Some(&m.headers);
    }
    let mut content_type = HeaderValue::from_static("text/plain");
    if let Some((fmt, ct)) = format {
        let text = String::from_utf8_lossy(&body).into_owned();
        let ctx = FormatContext {
            local_reply_body: Some(&text),
            ..*ctx
        };
        let mut out = String::new();
        match fmt {
            LogFormat::Text(f) => f.format(&ctx, &mut out),
            LogFormat::Json { .. } => {
                content_type = HeaderValue::from_static("application/json");
                crate::telemetry::access_log::render(fmt, &ctx, &mut out);
            }
        }
        if let Some(ct) = ct.as_deref().and_then(|c| HeaderValue::from_str(c).ok()) {
            content_type = ct;
        }
        body = Bytes::from(out);
    }
    let mut resp = Response::new(Body::full(body.clone()));
    *resp.status_mut() = status;
    if !body.is_empty() {
        resp.headers_mut()
            .insert(http::header::CONTENT_TYPE, content_type);
    }
    resp.headers_mut()
        .insert(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    if let Some(h) = extra {
        h.apply(resp.headers_mut(), ctx);
    }
    resp
}

/// Envoy's local-reply bodies.
pub mod bodies {
    pub const NO_HEALTHY_UPSTREAM: &str = "no healthy upstream";
    pub const UPSTREAM_TIMEOUT: &str = "upstream request timeout";
    pub const STREAM_TIMEOUT: &str = "stream timeout";
    pub const REQUEST_TIMEOUT: &str = "request timeout";
    pub const CONNECT_FAILURE: &str = "upstream connect error or disconnect/reset before headers. reset reason: connection failure";
    pub const CONNECTION_TERMINATION: &str = "upstream connect error or disconnect/reset before headers. reset reason: connection termination";
    pub const REMOTE_RESET: &str =
        "upstream connect error or disconnect/reset before headers. reset reason: remote reset";
    pub const OVERFLOW: &str =
        "upstream connect error or disconnect/reset before headers. reset reason: overflow";
    pub const PROTOCOL_ERROR: &str =
        "upstream connect error or disconnect/reset before headers. reset reason: protocol error";
}
