//! Envoy's substitution format strings at runtime: a `model::format::Formatter` (parsed at
//! config time) evaluated against a request's `StreamInfo` and headers; formatting appends to a
//! caller's buffer.

use crate::model::format::{FilterStateFormat, Formatter, HeaderRef, Op, Part, TlsField};
use crate::stream_info::StreamInfo;
use http::{HeaderMap, HeaderName, Method, Uri};
use std::borrow::Cow;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The request as a formatter sees it.
#[derive(Clone, Copy)]
pub struct RequestView<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
}

/// What a format string can read.
#[derive(Clone, Copy, Default)]
pub struct FormatContext<'a> {
    pub info: Option<&'a StreamInfo>,
    pub request: Option<RequestView<'a>>,
    pub response_headers: Option<&'a HeaderMap>,
    pub response_trailers: Option<&'a HeaderMap>,
    pub local_reply_body: Option<&'a str>,
}

/// The kind of value an operator produced, for typed JSON output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    Text,
    Number,
    Missing,
}

// === impl Formatter (evaluation) ===

impl Formatter {
    pub fn format(&self, ctx: &FormatContext<'_>, out: &mut String) {
        self.format_missing_as(ctx, out, "-");
    }

    /// Envoy's `omit_empty_values`: an operator with no value renders as nothing (header
    /// mutations format this way).
    pub fn to_string_omit_empty(&self, ctx: &FormatContext<'_>) -> String {
        let mut s = String::new();
        self.format_missing_as(ctx, &mut s, "");
        s
    }

    fn format_missing_as(&self, ctx: &FormatContext<'_>, out: &mut String, missing: &str) {
        for part in &self.parts {
            match part {
                Part::Literal(l) => out.push_str(l),
                Part::Op { op, max_len } => {
                    let start = out.len();
                    if eval(op, ctx, out) == ValueKind::Missing {
                        out.truncate(start);
                        out.push_str(missing);
                    } else if let Some(max) = max_len {
                        truncate_at(out, start + max);
                    }
                }
            }
        }
    }

    pub fn to_string(&self, ctx: &FormatContext<'_>) -> String {
        let mut s = String::new();
        self.format(ctx, &mut s);
        s
    }

    /// For typed JSON: a format that is a single operator yields a typed value; any other is
    /// text, its operators without a value written `-` (nothing with `omit_empty_values`).
    pub fn format_typed(&self, ctx: &FormatContext<'_>, out: &mut String) -> ValueKind {
        self.format_json(ctx, false, out)
    }

    pub fn format_json(
        &self,
        ctx: &FormatContext<'_>,
        omit_empty: bool,
        out: &mut String,
    ) -> ValueKind {
        match self.parts.as_slice() {
            [Part::Op { op, max_len }] => {
                let start = out.len();
                let mut kind = eval(op, ctx, out);
                if kind == ValueKind::Missing {
                    out.truncate(start);
                } else if let Some(max) = max_len
                    && out.len() > start + max
                {
                    truncate_at(out, start + max);
                    // A truncated JSON value is a string, as Envoy makes it.
                    kind = ValueKind::Text;
                }
                kind
            }
            _ => {
                self.format_missing_as(ctx, out, if omit_empty { "" } else { "-" });
                ValueKind::Text
            }
        }
    }
}

fn truncate_at(s: &mut String, mut at: usize) {
    if at < s.len() {
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        s.truncate(at);
    }
}

/// A header's value as Envoy writes it: its bytes (UTF-8, lossily), tabs and non-ASCII included.
fn value_str(v: &http::HeaderValue) -> Cow<'_, str> {
    String::from_utf8_lossy(v.as_bytes())
}

fn header_value<'a>(
    map: &'a HeaderMap,
    a: &HeaderName,
    b: &Option<HeaderName>,
) -> Option<Cow<'a, str>> {
    map.get(a)
        .or_else(|| b.as_ref().and_then(|b| map.get(b)))
        .map(value_str)
}

/// `tls`: the downstream connection is TLS (`:scheme` of an origin-form request, which the
/// connection manager sets to `https` or `http` in Envoy).
fn request_header<'a>(req: &RequestView<'a>, h: &HeaderRef, tls: bool) -> Option<Cow<'a, str>> {
    match h {
        HeaderRef::Method => Some(Cow::Borrowed(req.method.as_str())),
        // A CONNECT request has no :path (its target is an authority).
        HeaderRef::Path if req.method == http::Method::CONNECT => None,
        HeaderRef::Path => req.uri.path_and_query().map(|p| Cow::Borrowed(p.as_str())),
        HeaderRef::Authority => req
            .uri
            .authority()
            .map(|a| Cow::Borrowed(a.as_str()))
            .or_else(|| req.headers.get(http::header::HOST).map(value_str)),
        HeaderRef::Scheme => Some(Cow::Borrowed(req.uri.scheme_str().unwrap_or(if tls {
            "https"
        } else {
            "http"
        }))),
        HeaderRef::Named(n) => req.headers.get(n).map(value_str),
    }
}

fn header_text(out: &mut String, v: Option<Cow<'_, str>>) -> ValueKind {
    match v {
        Some(v) => {
            out.push_str(&v);
            ValueKind::Text
        }
        None => ValueKind::Missing,
    }
}

fn millis(d: Duration) -> u128 {
    d.as_millis()
}

fn eval(op: &Op, ctx: &FormatContext<'_>, out: &mut String) -> ValueKind {
    use ValueKind::*;
    let info = ctx.info;
    let text = |out: &mut String, s: Option<&str>| match s {
        Some(s) if !s.is_empty() => {
            out.push_str(s);
            Text
        }
        _ => Missing,
    };
    let num = |out: &mut String, n: Option<u128>| match n {
        Some(n) => {
            let _ = write!(out, "{n}");
            Number
        }
        None => Missing,
    };
    match op {
        Op::StartTime(fmt) => match info {
            Some(i) => {
                format_time(i.start_time, fmt.as_deref(), out);
                Text
            }
            None => Missing,
        },
        // A header present with an empty value is a value: Envoy writes it as nothing, not `-`.
        Op::Req(a, b) => {
            let tls = info.is_some_and(|i| i.connection.tls.is_some());
            let v = ctx.request.and_then(|r| {
                request_header(&r, a, tls)
                    .or_else(|| b.as_ref().and_then(|b| request_header(&r, b, tls)))
            });
            header_text(out, v)
        }
        Op::Resp(a, b) => header_text(
            out,
            ctx.response_headers.and_then(|h| header_value(h, a, b)),
        ),
        Op::Trailer(a, b) => header_text(
            out,
            ctx.response_trailers.and_then(|h| header_value(h, a, b)),
        ),
        Op::Protocol => text(out, info.and_then(|i| i.protocol).map(|p| p.as_str())),
        Op::ResponseCode => num(
            out,
            Some(info.and_then(|i| i.response_code).unwrap_or(0) as u128),
        ),
        Op::ResponseFlags => match info {
            Some(i) => {
                i.response_flags.write_short(out);
                Text
            }
            None => Missing,
        },
        Op::ResponseFlagsLong => match info {
            Some(i) => {
                i.response_flags.write_long(out);
                Text
            }
            None => Missing,
        },
        Op::ResponseCodeDetails => text(out, info.map(|i| &*i.response_code_details)),
        Op::ConnectionTerminationDetails => text(
            out,
            info.and_then(|i| i.connection_termination_details.as_deref()),
        ),
        Op::DownstreamLocalCloseReason => text(
            out,
            info.and_then(|i| i.downstream_local_close_reason.as_deref()),
        ),
        Op::BytesReceived => num(out, info.map(|i| i.bytes_received as u128)),
        Op::BytesSent => num(out, info.map(|i| i.bytes_sent as u128)),
        Op::Duration => num(
            out,
            info.map(|i| {
                millis(i.last_downstream_tx.unwrap_or_else(std::time::Instant::now) - i.start)
            }),
        ),
        Op::RequestDuration => num(
            out,
            info.and_then(|i| i.last_downstream_rx.map(|t| millis(t - i.start))),
        ),
        Op::ResponseDuration => num(
            out,
            info.and_then(|i| i.first_upstream_rx.map(|t| millis(t - i.start))),
        ),
        Op::ResponseTxDuration => num(
            out,
            info.and_then(|i| Some(millis(i.last_downstream_tx? - i.first_upstream_rx?))),
        ),
        Op::UpstreamHost | Op::UpstreamRemoteAddress { port: true } => {
            addr(out, info.and_then(|i| i.upstream_host), true)
        }
        Op::UpstreamRemoteAddress { port: false } => {
            addr(out, info.and_then(|i| i.upstream_host), false)
        }
        Op::UpstreamCluster => text(out, info.and_then(|i| i.upstream_cluster.as_deref())),
        Op::UpstreamLocalAddress => addr(out, info.and_then(|i| i.upstream_local), true),
        // Envoy writes both with their spaces as underscores.
        Op::DownstreamTransportFailureReason | Op::UpstreamTransportFailureReason => {
            let reason = info.and_then(|i| match op {
                Op::DownstreamTransportFailureReason => {
                    i.downstream_transport_failure_reason.as_deref()
                }
                _ => i.upstream_transport_failure_reason.as_deref(),
            });
            let start = out.len();
            let kind = text(out, reason);
            if out[start..].contains(' ') {
                let underscored = out[start..].replace(' ', "_");
                out.truncate(start);
                out.push_str(&underscored);
            }
            kind
        }
        Op::UpstreamRequestAttemptCount => num(out, info.map(|i| i.attempt_count as u128)),
        Op::DownstreamLocalAddress { port } => addr(out, info.map(|i| i.connection.local), *port),
        Op::DownstreamLocalPort => num(out, info.map(|i| i.connection.local.port() as u128)),
        Op::DownstreamRemoteAddress { port } => addr(out, info.map(|i| i.downstream_remote), *port),
        Op::DownstreamRemotePort => num(out, info.map(|i| i.downstream_remote.port() as u128)),
        Op::DownstreamDirectRemoteAddress { port } => {
            addr(out, info.map(|i| i.connection.remote), *port)
        }
        Op::RequestedServerName => text(
            out,
            info.and_then(|i| i.connection.requested_server_name.as_deref()),
        ),
        Op::RouteName => text(out, info.and_then(|i| i.route_name.as_deref())),
        Op::Hostname => text(out, Some(hostname())),
        Op::ConnectionId => num(out, info.map(|i| i.connection.id as u128)),
        // Always a value, empty outside a local reply's body format (Envoy renders "", not "-").
        Op::LocalReplyBody => {
            out.push_str(ctx.local_reply_body.unwrap_or(""));
            Text
        }
        Op::Environment(v) => text(out, v.as_deref()),
        Op::Tls { upstream, field } => {
            let tls = info.and_then(|i| match upstream {
                false => i.connection.tls.as_deref(),
                true => i.upstream_tls.as_deref(),
            });
            match tls {
                Some(tls) => tls_field(out, tls, field),
                None => Missing,
            }
        }
        Op::DynamicMetadata { namespace, path } => {
            let ns = info.and_then(|i| i.dynamic_metadata.namespace(namespace));
            let value = ns.and_then(|ns| match path.split_first() {
                None => None,
                Some((first, rest)) => rest.iter().try_fold(ns.get(first)?, |v, k| v.get(k)),
            });
            match (ns, path.is_empty()) {
                (Some(ns), true) => {
                    let _ = serde_json::to_writer(StringWriter(out), ns);
                    Number
                }
                _ => json_value(out, value),
            }
        }
        Op::FilterState { key, format } => {
            let Some(v) = info.and_then(|i| i.filter_state.get(key)) else {
                return Missing;
            };
            match format {
                FilterStateFormat::Plain => {
                    out.push_str(&v);
                    Text
                }
                // The typed form of a string is a google.protobuf.StringValue, whose JSON is
                // the quoted string; typed JSON logs get the string itself. An object (the
                // gRPC counts) is its message's JSON.
                FilterStateFormat::Typed => {
                    match info.and_then(|i| i.filter_state.typed_json(key)) {
                        Some(json) => out.push_str(&json),
                        None => {
                            let _ = serde_json::to_writer(StringWriter(out), &*v);
                        }
                    }
                    Number
                }
                FilterStateFormat::Field => Missing,
            }
        }
        Op::Absent => Missing,
    }
}

/// A metadata value as Envoy prints it: a string as itself, null as absent, anything else as
/// its JSON (raw in typed JSON logs).
fn json_value(out: &mut String, v: Option<&serde_json::Value>) -> ValueKind {
    match v {
        None | Some(serde_json::Value::Null) => ValueKind::Missing,
        Some(serde_json::Value::String(s)) => {
            out.push_str(s);
            ValueKind::Text
        }
        Some(v) => {
            let _ = serde_json::to_writer(StringWriter(out), v);
            ValueKind::Number
        }
    }
}

/// `io::Write` into a `String` (serde_json writes valid UTF-8).
struct StringWriter<'a>(&'a mut String);

impl std::io::Write for StringWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .push_str(std::str::from_utf8(buf).map_err(std::io::Error::other)?);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn tls_field(
    out: &mut String,
    tls: &crate::transport_sockets::tls::TlsInfo,
    field: &TlsField,
) -> ValueKind {
    use remora_certs::info::{CertDetails, San};
    let peer = tls.peer.as_ref().map(|p| &p.details);
    let local = tls.local.as_ref().map(|id| &id.chain[0]);
    let join = |out: &mut String, c: Option<&CertDetails>, pick: fn(&San) -> Option<String>| {
        let before = out.len();
        for v in c.into_iter().flat_map(|c| c.sans.iter().filter_map(pick)) {
            if out.len() > before {
                out.push(',');
            }
            out.push_str(&v);
        }
        if out.len() > before {
            ValueKind::Text
        } else {
            ValueKind::Missing
        }
    };
    let uri = |s: &San| match s {
        San::Uri(u) => Some(u.clone()),
        _ => None,
    };
    let dns = |s: &San| match s {
        San::Dns(u) => Some(u.clone()),
        _ => None,
    };
    let ip = |s: &San| match s {
        San::Ip(a) => Some(a.to_string()),
        _ => None,
    };
    let text = |out: &mut String, s: Option<&str>| match s {
        Some(s) if !s.is_empty() => {
            out.push_str(s);
            ValueKind::Text
        }
        _ => ValueKind::Missing,
    };
    match field {
        TlsField::PeerUriSan => join(out, peer, uri),
        TlsField::PeerDnsSan => join(out, peer, dns),
        TlsField::PeerIpSan => join(out, peer, ip),
        TlsField::LocalUriSan => join(out, local, uri),
        TlsField::LocalDnsSan => join(out, local, dns),
        TlsField::LocalSubject => text(out, local.map(|c| c.subject.as_str())),
        TlsField::PeerSubject => text(out, peer.map(|c| c.subject.as_str())),
        TlsField::PeerIssuer => text(out, peer.map(|c| c.issuer.as_str())),
        TlsField::Cipher => text(out, Some(tls.cipher)),
        TlsField::Version => text(out, Some(tls.version)),
        TlsField::PeerFingerprint256 => text(out, peer.map(|c| c.sha256.as_str())),
        TlsField::PeerSerial => text(out, peer.map(|c| c.serial.as_str())),
        TlsField::PeerFingerprint1 => text(out, peer.map(|c| c.sha1.as_str())),
        TlsField::PeerCert => match &tls.peer {
            Some(p) => {
                crate::http::conn_manager::url_encode_into(&p.pem(), out);
                ValueKind::Text
            }
            None => ValueKind::Missing,
        },
        TlsField::PeerCertValidFrom(fmt) | TlsField::PeerCertValidUntil(fmt) => match peer {
            Some(c) => {
                let t = match field {
                    TlsField::PeerCertValidFrom(_) => c.not_before,
                    _ => c.not_after,
                };
                format_time(t, fmt.as_deref(), out);
                ValueKind::Text
            }
            None => ValueKind::Missing,
        },
    }
}

fn addr(out: &mut String, a: Option<std::net::SocketAddr>, port: bool) -> ValueKind {
    match a {
        Some(a) => {
            if port {
                let _ = write!(out, "{a}");
            } else {
                let _ = write!(out, "{}", a.ip());
            }
            ValueKind::Text
        }
        None => ValueKind::Missing,
    }
}

fn hostname() -> &'static str {
    static HOST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HOST.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .or_else(|_| std::env::var("HOSTNAME"))
            .unwrap_or_default()
    })
}

/// UTC civil time from a unix timestamp (Howard Hinnant's algorithm).
pub fn civil(secs: i64) -> (i64, u32, u32, u32, u32, u32) {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    (
        y,
        m,
        d,
        (rem / 3600) as u32,
        ((rem % 3600) / 60) as u32,
        (rem % 60) as u32,
    )
}

/// Day names, from Sunday (indexed by [`weekday`]); also the log pattern's.
pub const WEEKDAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];
/// Month names, from January; also the log pattern's.
pub const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// Index into `WEEKDAYS` of a unix timestamp's day (1970-01-01 was a Thursday).
pub fn weekday(secs: i64) -> usize {
    (secs.div_euclid(86_400) + 4).rem_euclid(7) as usize
}

/// `%START_TIME%` formatting: Envoy's default `2016-04-15T20:17:00.310Z`, or a strftime
/// format with Envoy's sub-second extensions (`%3f`, `%E3S`, `%f`, `%s`).
pub fn format_time(t: SystemTime, fmt: Option<&str>, out: &mut String) {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() as i64;
    let nanos = since.subsec_nanos();
    let (y, mo, d, h, mi, s) = civil(secs);
    let Some(fmt) = fmt else {
        let _ = write!(
            out,
            "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{:03}Z",
            nanos / 1_000_000
        );
        return;
    };
    let mut chars = fmt.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut digits: Option<u32> = None;
        let mut ext = false;
        if chars.peek() == Some(&'E') {
            ext = true;
            chars.next();
        }
        if let Some(dg) = chars.peek().and_then(|c| c.to_digit(10)) {
            digits = Some(dg.clamp(1, 9));
            chars.next();
        }
        let frac = |n: u32, out: &mut String| {
            let v = nanos / 10u32.pow(9 - n);
            let _ = write!(out, "{v:0width$}", width = n as usize);
        };
        match chars.next() {
            Some('Y') => {
                let _ = write!(out, "{y:04}");
            }
            Some('y') => {
                let _ = write!(out, "{:02}", y % 100);
            }
            Some('m') => {
                let _ = write!(out, "{mo:02}");
            }
            Some('d') => {
                let _ = write!(out, "{d:02}");
            }
            Some('e') => {
                let _ = write!(out, "{d:2}");
            }
            Some('H') => {
                let _ = write!(out, "{h:02}");
            }
            Some('M') => {
                let _ = write!(out, "{mi:02}");
            }
            Some('S') => {
                let _ = write!(out, "{s:02}");
                if ext && let Some(n) = digits {
                    out.push('.');
                    frac(n, out);
                }
            }
            Some('f') => frac(digits.unwrap_or(9), out),
            Some('s') => {
                let _ = write!(out, "{secs}");
            }
            Some('z') => out.push_str("+0000"),
            Some('Z') => out.push_str("UTC"),
            Some('T') => {
                let _ = write!(out, "{h:02}:{mi:02}:{s:02}");
            }
            Some('F') => {
                let _ = write!(out, "{y:04}-{mo:02}-{d:02}");
            }
            Some('a') => out.push_str(&WEEKDAYS[weekday(secs)][..3]),
            Some('A') => out.push_str(WEEKDAYS[weekday(secs)]),
            Some('b' | 'h') => out.push_str(&MONTHS[mo as usize - 1][..3]),
            Some('B') => out.push_str(MONTHS[mo as usize - 1]),
            Some('j') => {
                let start = days_from_civil(y, 1, 1);
                let _ = write!(out, "{:03}", secs.div_euclid(86_400) - start + 1);
            }
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 } as i64;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::format::DEFAULT_ACCESS_LOG_FORMAT;
    use crate::stream_info::{ConnectionInfo, Protocol, ResponseFlags};
    use std::sync::Arc;

    fn info() -> StreamInfo {
        let conn = Arc::new(ConnectionInfo {
            id: 7,
            local: "127.0.0.1:10000".parse().unwrap(),
            remote: "10.0.0.2:5555".parse().unwrap(),
            requested_server_name: None,
            application_protocols: vec![],
            transport_protocol: "raw_buffer",
            tls: None,
        });
        let mut i = StreamInfo::new(conn);
        i.start_time = UNIX_EPOCH + Duration::from_millis(1_460_751_420_310);
        i.protocol = Some(Protocol::Http2);
        i.response_code = Some(204);
        i.bytes_received = 154;
        i.upstream_host = Some("10.0.2.1:80".parse().unwrap());
        i.last_downstream_tx = Some(i.start + Duration::from_millis(226));
        i
    }

    #[test]
    fn default_format_matches_envoy_layout() {
        let f = Formatter::parse(DEFAULT_ACCESS_LOG_FORMAT).unwrap();
        let info = info();
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "10.0.35.28".parse().unwrap());
        headers.insert("user-agent", "nsq2http".parse().unwrap());
        headers.insert(
            "x-request-id",
            "cc21d9b0-cf5c-432b-8c7e-98aeb7988cd2".parse().unwrap(),
        );
        headers.insert("host", "locations".parse().unwrap());
        let uri: Uri = "/api/v1/locations".parse().unwrap();
        let mut resp = HeaderMap::new();
        resp.insert("x-envoy-upstream-service-time", "100".parse().unwrap());
        let ctx = FormatContext {
            info: Some(&info),
            request: Some(RequestView {
                method: &Method::POST,
                uri: &uri,
                headers: &headers,
            }),
            response_headers: Some(&resp),
            ..Default::default()
        };
        assert_eq!(
            f.to_string(&ctx),
            "[2016-04-15T20:17:00.310Z] \"POST /api/v1/locations HTTP/2\" 204 - 154 0 226 100 \"10.0.35.28\" \"nsq2http\" \"cc21d9b0-cf5c-432b-8c7e-98aeb7988cd2\" \"locations\" \"10.0.2.1:80\"\n"
        );
    }

    #[test]
    fn downstream_tls_operators() {
        use crate::transport_sockets::tls::{PeerCert, TlsInfo};
        use remora_certs::ca::{DevCa, KeyAlgorithm, LeafRequest};
        use remora_certs::info::CertDetails;
        let ca = DevCa::generate_root("fmt", KeyAlgorithm::EcdsaP256).unwrap();
        let mut req = LeafRequest::spiffe(
            remora_certs::SpiffeId::parse("spiffe://td/ns/a/sa/b").unwrap(),
            Duration::from_secs(3600),
        );
        req.dns_names = vec!["b.a".into(), "b2.a".into()];
        let issued = ca.issue(&req).unwrap();
        let der =
            remora_certs::pem::certificates(issued.cert_chain_pem.as_bytes()).unwrap()[0].to_vec();
        let details = CertDetails::parse(&der).unwrap();
        let tls = TlsInfo {
            server_name: None,
            version: "TLSv1.3",
            cipher: "TLS_AES_128_GCM_SHA256",
            curve: Some("X25519"),
            alpn: None,
            session_reused: false,
            peer: Some(PeerCert {
                spiffe_id: None,
                details: details.clone(),
                der: der.into(),
            }),
            local: None,
        };
        let mut info = info();
        let c = &info.connection;
        info.connection = Arc::new(ConnectionInfo {
            id: c.id,
            local: c.local,
            remote: c.remote,
            requested_server_name: None,
            application_protocols: vec![],
            transport_protocol: "tls",
            tls: Some(Box::new(tls)),
        });
        let ctx = FormatContext {
            info: Some(&info),
            ..Default::default()
        };
        let f = Formatter::parse(
            "%DOWNSTREAM_PEER_URI_SAN%|%DOWNSTREAM_PEER_DNS_SAN%|%DOWNSTREAM_LOCAL_URI_SAN%|%DOWNSTREAM_TLS_VERSION%|%DOWNSTREAM_TLS_CIPHER%|%DOWNSTREAM_PEER_SUBJECT%|%DOWNSTREAM_PEER_ISSUER%|%DOWNSTREAM_PEER_CERT_V_END(%Y)%",
        )
        .unwrap();
        let year = {
            let mut y = String::new();
            format_time(details.not_after, Some("%Y"), &mut y);
            y
        };
        assert_eq!(
            f.to_string(&ctx),
            format!(
                "spiffe://td/ns/a/sa/b|b.a,b2.a|-|TLSv1.3|TLS_AES_128_GCM_SHA256|CN=b.a|CN=fmt,O=remora dev CA|{year}"
            )
        );
        let f = Formatter::parse(
            "%DOWNSTREAM_PEER_FINGERPRINT_256% %DOWNSTREAM_PEER_FINGERPRINT_1% %DOWNSTREAM_PEER_SERIAL% %DOWNSTREAM_PEER_CERT%",
        )
        .unwrap();
        let out = f.to_string(&ctx);
        let parts: Vec<&str> = out.split(' ').collect();
        assert_eq!(parts[0], details.sha256);
        assert_eq!(parts[1].len(), 40);
        assert_eq!(parts[2], details.serial);
        assert!(
            parts[3].starts_with("-----BEGIN%20CERTIFICATE-----%0A"),
            "{}",
            parts[3]
        );
    }

    #[test]
    fn missing_values_and_truncation() {
        let mut info = info();
        info.response_flags = ResponseFlags::UPSTREAM_CONNECTION_FAILURE;
        let (method, uri, headers) = (Method::GET, Uri::from_static("/x"), HeaderMap::new());
        let ctx = FormatContext {
            info: Some(&info),
            request: Some(RequestView {
                method: &method,
                uri: &uri,
                headers: &headers,
            }),
            ..Default::default()
        };
        let f = Formatter::parse(
            "%REQ(X-NOPE)% %RESPONSE_FLAGS% %REQ(:METHOD):2% 100%% %DOWNSTREAM_PEER_URI_SAN%",
        )
        .unwrap();
        assert_eq!(f.to_string(&ctx), "- UF GE 100% -");
        let t = Formatter::parse("%START_TIME(%Y/%m/%d %H:%M:%S.%3f %s)%").unwrap();
        assert_eq!(t.to_string(&ctx), "2016/04/15 20:17:00.310 1460751420");
    }

    #[test]
    fn typed_values() {
        let info = info();
        let ctx = FormatContext {
            info: Some(&info),
            ..Default::default()
        };
        let mut s = String::new();
        assert_eq!(
            Formatter::parse("%RESPONSE_CODE%")
                .unwrap()
                .format_typed(&ctx, &mut s),
            ValueKind::Number
        );
        assert_eq!(s, "204");
        s.clear();
        assert_eq!(
            Formatter::parse("%ROUTE_NAME%")
                .unwrap()
                .format_typed(&ctx, &mut s),
            ValueKind::Missing
        );
    }

    #[test]
    fn dynamic_metadata_and_filter_state() {
        let mut info = info();
        let ns = "envoy.filters.http.rbac";
        info.dynamic_metadata
            .set(ns, "shadow_engine_result", "denied".into());
        info.dynamic_metadata
            .set(ns, "n", serde_json::json!({"a": {"b": 5}, "t": true}));
        info.filter_state.set("io.istio.peer", "spiffe://x".into());
        let ctx = FormatContext {
            info: Some(&info),
            ..Default::default()
        };
        let f = |s: &str| Formatter::parse(s).unwrap().to_string(&ctx);
        assert_eq!(
            f(&format!("%DYNAMIC_METADATA({ns}:shadow_engine_result)%")),
            "denied"
        );
        assert_eq!(
            f(&format!("%DYNAMIC_METADATA({ns}:shadow_engine_result):3%")),
            "den"
        );
        assert_eq!(f(&format!("%DYNAMIC_METADATA({ns}:n:a:b)%")), "5");
        assert_eq!(f(&format!("%DYNAMIC_METADATA({ns}:n:a)%")), r#"{"b":5}"#);
        assert_eq!(f(&format!("%DYNAMIC_METADATA({ns}:n:t)%")), "true");
        assert_eq!(
            f(&format!("%DYNAMIC_METADATA({ns})%")),
            r#"{"shadow_engine_result":"denied","n":{"a":{"b":5},"t":true}}"#
        );
        assert_eq!(f(&format!("%DYNAMIC_METADATA({ns}:missing)%")), "-");
        assert_eq!(f("%DYNAMIC_METADATA(other:k)%"), "-");
        assert_eq!(f("%FILTER_STATE(io.istio.peer:PLAIN)%"), "spiffe://x");
        assert_eq!(f("%FILTER_STATE(io.istio.peer)%"), r#""spiffe://x""#);
        assert_eq!(f("%FILTER_STATE(io.istio.peer:TYPED)%"), r#""spiffe://x""#);
        assert_eq!(f("%FILTER_STATE(io.istio.peer:FIELD:x)%"), "-");
        assert_eq!(f("%FILTER_STATE(nope:PLAIN)%"), "-");

        // Typed JSON: objects, numbers and booleans raw, strings as strings; a truncated
        // object becomes a string.
        let typed = |s: &str| {
            let mut out = String::new();
            let k = Formatter::parse(s).unwrap().format_typed(&ctx, &mut out);
            (k, out)
        };
        assert_eq!(
            typed(&format!("%DYNAMIC_METADATA({ns}:n:a)%")),
            (ValueKind::Number, r#"{"b":5}"#.to_string())
        );
        assert_eq!(
            typed(&format!("%DYNAMIC_METADATA({ns}:shadow_engine_result)%")),
            (ValueKind::Text, "denied".to_string())
        );
        assert_eq!(
            typed(&format!("%DYNAMIC_METADATA({ns}:n:a):3%")),
            (ValueKind::Text, r#"{"b"#.to_string())
        );
        assert_eq!(
            typed("%FILTER_STATE(io.istio.peer)%"),
            (ValueKind::Number, r#""spiffe://x""#.to_string())
        );
    }

    #[test]
    fn envoy_empty_value_rules() {
        let mut info = info();
        info.upstream_transport_failure_reason =
            Some("delayed connect error: Connection refused".into());
        let ctx = FormatContext {
            info: Some(&info),
            local_reply_body: Some(""),
            ..Default::default()
        };
        // A local reply's empty body is a value; an absent header is not.
        let f = Formatter::parse("[%LOCAL_REPLY_BODY%][%REQ(x-in)%]").unwrap();
        assert_eq!(f.to_string(&ctx), "[][-]");
        // Header mutations omit what has no value.
        assert_eq!(f.to_string_omit_empty(&ctx), "[][]");
        // Envoy writes the upstream transport failure reason with underscores.
        let f = Formatter::parse("%UPSTREAM_TRANSPORT_FAILURE_REASON%").unwrap();
        assert_eq!(
            f.to_string(&ctx),
            "delayed_connect_error:_Connection_refused"
        );
        // And the downstream one.
        info.downstream_transport_failure_reason = Some("TLS_error:|1:SSL routines:X".into());
        let ctx = FormatContext {
            info: Some(&info),
            ..Default::default()
        };
        let f = Formatter::parse("%DOWNSTREAM_TRANSPORT_FAILURE_REASON%").unwrap();
        assert_eq!(f.to_string(&ctx), "TLS_error:|1:SSL_routines:X");
    }

    /// Header values as Envoy writes them: present but empty is empty (not `-`), bytes
    /// beyond visible ASCII (a tab, UTF-8) kept; `:scheme` of an origin-form request is the
    /// connection's; `%LOCAL_REPLY_BODY%` outside a local reply is empty.
    #[test]
    fn header_values_as_envoy_writes_them() {
        let info = info();
        let (method, uri) = (Method::GET, Uri::from_static("/p"));
        let mut headers = HeaderMap::new();
        headers.insert("x-empty", http::HeaderValue::from_static(""));
        headers.insert(
            "x-odd",
            http::HeaderValue::from_bytes("a\tb \u{e9}".as_bytes()).unwrap(),
        );
        let ctx = FormatContext {
            info: Some(&info),
            request: Some(RequestView {
                method: &method,
                uri: &uri,
                headers: &headers,
            }),
            ..Default::default()
        };
        let f =
            Formatter::parse("[%REQ(X-EMPTY)%][%REQ(X-ODD)%][%REQ(:SCHEME)%][%LOCAL_REPLY_BODY%]")
                .unwrap();
        assert_eq!(f.to_string(&ctx), "[][a\tb \u{e9}][http][]");
    }

    #[test]
    fn weekday_and_month_names() {
        let t = Formatter::parse("%START_TIME(%a %A %b %h %B %e)%").unwrap();
        let info = info();
        let ctx = FormatContext {
            info: Some(&info),
            ..Default::default()
        };
        assert_eq!(t.to_string(&ctx), "Fri Friday Apr Apr April 15");
    }
}
