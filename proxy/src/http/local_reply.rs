//! Local replies: responses remora generates itself (no route, no healthy upstream, timeouts,
//! codec errors, direct responses), with Envoy's bodies and the connection manager's
//! `local_reply_config` mappers and body format applied.

use super::body::Body;
use crate::model::access_log::{FilterInput, LogFormat};
use crate::model::hcm::LocalReplyConfig;
use crate::model::headers::HeaderMutations;
use crate::telemetry::format::FormatContext;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode};

/// The parts of a local reply before mapping.
#[derive(Debug, Clone)]
pub struct LocalReply {
    pub status: StatusCode,
    pub body: Bytes,
    /// Set before the mappers run: a redirect's `location`, the route's response header
    /// mutations.
    pub headers: HeaderMap,
}

impl LocalReply {
    pub fn new(status: StatusCode, body: impl Into<Bytes>) -> Self {
        Self {
            status,
            body: body.into(),
            headers: HeaderMap::new(),
        }
    }
}

/// What the first matching mapper chose beyond status and body.
pub struct Mapped<'c> {
    format: Option<&'c (LogFormat, Option<String>)>,
    headers: Option<&'c HeaderMutations>,
}

/// The first `local_reply_config` mapper whose filter matches rewrites the status and body in
/// place; the body format and headers it (or the config) names are for `render`.
pub fn map<'c>(
    config: &'c LocalReplyConfig,
    reply: &mut LocalReply,
    input: &FilterInput<'_>,
) -> Mapped<'c> {
    let mut mapped = Mapped {
        format: config.body_format.as_ref(),
        headers: None,
    };
    if let Some(m) = config.mappers.iter().find(|m| m.filter.evaluate(input)) {
        if let Some(s) = m.status {
            reply.status = s;
        }
        if let Some(b) = &m.body {
            reply.body = b.clone();
        }
        if m.body_format.is_some() {
            mapped.format = m.body_format.as_ref();
        }
        mapped.headers = Some(&m.headers);
    }
    mapped
}

/// The response: the body through the body format (`ctx` already sees the mapped status; a
/// JSON body ends with a newline, as Envoy's JSON formatter writes it), content type and
/// length, the mapper's headers.
pub fn render(reply: LocalReply, mapped: Mapped<'_>, ctx: &FormatContext<'_>) -> Response<Body> {
    let mut body = reply.body;
    let mut content_type = HeaderValue::from_static("text/plain");
    if let Some((fmt, ct)) = mapped.format {
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
                out.push('\n');
            }
        }
        if let Some(ct) = ct.as_deref().and_then(|c| HeaderValue::from_str(c).ok()) {
            content_type = ct;
        }
        body = Bytes::from(out);
    }
    let mut resp = Response::new(Body::full(body.clone()));
    *resp.status_mut() = reply.status;
    *resp.headers_mut() = reply.headers;
    if !body.is_empty() {
        resp.headers_mut()
            .insert(http::header::CONTENT_TYPE, content_type);
    }
    resp.headers_mut()
        .insert(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    if let Some(h) = mapped.headers {
        h.apply_response(resp.headers_mut(), ctx);
    }
    resp
}

/// Envoy's local-reply bodies.
pub mod bodies {
    pub const NO_HEALTHY_UPSTREAM: &str = "no healthy upstream";
    pub const UPSTREAM_TIMEOUT: &str = "upstream request timeout";
    pub const STREAM_TIMEOUT: &str = "stream timeout";
    pub const REQUEST_TIMEOUT: &str = "request timeout";
    pub const CONNECT_FAILURE: &str = "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure";
    pub const CONNECTION_TERMINATION: &str = "upstream connect error or disconnect/reset before headers. reset reason: connection termination";
    pub const REMOTE_RESET: &str =
        "upstream connect error or disconnect/reset before headers. reset reason: remote reset";
    pub const OVERFLOW: &str =
        "upstream connect error or disconnect/reset before headers. reset reason: overflow";
    pub const PROTOCOL_ERROR: &str =
        "upstream connect error or disconnect/reset before headers. reset reason: protocol error";
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::format::Formatter;

    #[test]
    fn redirect_body_formatted_with_an_empty_local_reply_body() {
        let text = LogFormat::Text(Formatter::parse("lr: %LOCAL_REPLY_BODY%.").unwrap());
        let config = LocalReplyConfig {
            body_format: Some((text, None)),
            ..Default::default()
        };
        let mut reply = LocalReply::new(StatusCode::MOVED_PERMANENTLY, Bytes::new());
        reply.headers.insert(
            http::header::LOCATION,
            HeaderValue::from_static("http://x/"),
        );
        let input = FilterInput {
            response_code: 301,
            duration_ms: 0,
            response_flags: crate::stream_info::ResponseFlags::empty(),
            health_check: false,
            request: None,
        };
        let mapped = map(&config, &mut reply, &input);
        let resp = render(reply, mapped, &FormatContext::default());
        assert_eq!(resp.headers()[http::header::LOCATION], "http://x/");
        assert_eq!(resp.headers()[http::header::CONTENT_LENGTH], "5");
        assert_eq!(resp.headers()[http::header::CONTENT_TYPE], "text/plain");
    }
}
