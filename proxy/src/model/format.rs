//! Envoy's substitution format strings (`%REQ(:PATH)%`, `%RESPONSE_FLAGS%`, ...), used by
//! access logs, local-reply bodies and header values: the parsed form. Parsed once at config
//! time into parts; `telemetry::format` evaluates them against a request's `StreamInfo`.

use super::inputs::Inputs;
use http::HeaderName;

/// A parsed format string.
#[derive(Debug, Clone)]
pub struct Formatter {
    pub(crate) parts: Vec<Part>,
}

#[derive(Debug, Clone)]
pub(crate) enum Part {
    Literal(String),
    Op { op: Op, max_len: Option<usize> },
}

/// A header reference: a pseudo-header or a regular header name.
#[derive(Debug, Clone)]
pub(crate) enum HeaderRef {
    Method,
    Path,
    Authority,
    Scheme,
    Named(HeaderName),
}

#[derive(Debug, Clone)]
pub(crate) enum Op {
    StartTime(Option<String>),
    Req(HeaderRef, Option<HeaderRef>),
    Resp(HeaderName, Option<HeaderName>),
    Trailer(HeaderName, Option<HeaderName>),
    Protocol,
    ResponseCode,
    ResponseFlags,
    ResponseFlagsLong,
    ResponseCodeDetails,
    ConnectionTerminationDetails,
    /// Why remora closed the downstream connection (Envoy's local close reason).
    DownstreamLocalCloseReason,
    BytesReceived,
    BytesSent,
    Duration,
    RequestDuration,
    ResponseDuration,
    ResponseTxDuration,
    UpstreamHost,
    UpstreamCluster,
    UpstreamLocalAddress,
    UpstreamRemoteAddress {
        port: bool,
    },
    UpstreamTransportFailureReason,
    DownstreamTransportFailureReason,
    UpstreamRequestAttemptCount,
    DownstreamLocalAddress {
        port: bool,
    },
    DownstreamLocalPort,
    DownstreamRemoteAddress {
        port: bool,
    },
    DownstreamRemotePort,
    DownstreamDirectRemoteAddress {
        port: bool,
    },
    RequestedServerName,
    RouteName,
    Hostname,
    ConnectionId,
    LocalReplyBody,
    Environment(Option<String>),
    /// A detail of the downstream or upstream TLS handshake (`-` on plaintext connections).
    Tls {
        upstream: bool,
        field: TlsField,
    },
    /// `%DYNAMIC_METADATA(NAMESPACE:KEY*)%`: the namespace's object, or the value at the path
    /// of keys inside it.
    DynamicMetadata {
        namespace: String,
        path: Vec<String>,
    },
    /// `%FILTER_STATE(KEY:F)%`: the value as its string (`PLAIN`) or as the JSON of its typed
    /// form (`TYPED`, the default); `FIELD` of a value without fields is absent.
    FilterState {
        key: String,
        format: FilterStateFormat,
    },
    /// Operators Envoy defines whose data never exists in remora's current feature set (TLS
    /// session ids, cluster and upstream metadata, upstream filter state): they print `-`,
    /// exactly as Envoy does when the data is absent.
    Absent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FilterStateFormat {
    Plain,
    Typed,
    /// A field of a structured value (remora's filter-state values are strings: none).
    Field,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TlsField {
    PeerUriSan,
    PeerDnsSan,
    PeerIpSan,
    LocalUriSan,
    LocalDnsSan,
    LocalSubject,
    PeerSubject,
    PeerIssuer,
    Cipher,
    Version,
    PeerFingerprint256,
    PeerFingerprint1,
    PeerSerial,
    /// URL-encoded PEM of the peer certificate.
    PeerCert,
    PeerCertValidFrom(Option<String>),
    PeerCertValidUntil(Option<String>),
}

/// Envoy's default access-log format.
pub const DEFAULT_ACCESS_LOG_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"\n";

// === impl Formatter ===

impl Formatter {
    /// Parse a format string that names no environment variable (a constant, or a test's).
    pub fn parse(s: &str) -> Result<Self, String> {
        Self::parse_in(s, &Inputs::none())
    }

    /// Parse a format string. Errors name the operator, as Envoy's do. `%ENVIRONMENT(X)%` is
    /// resolved now, as Envoy does, from the translation's inputs (never read here).
    pub fn parse_in(s: &str, inputs: &Inputs) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = s;
        while let Some(pos) = rest.find('%') {
            literal.push_str(&rest[..pos]);
            rest = &rest[pos + 1..];
            if let Some(r) = rest.strip_prefix('%') {
                literal.push('%');
                rest = r;
                continue;
            }
            let (token, after) = split_operator(rest)
                .ok_or_else(|| format!("unterminated operator in format string '{s}'"))?;
            if token.is_empty() {
                return Err(format!("empty operator in format string '{s}'"));
            }
            rest = after;
            if !literal.is_empty() {
                parts.push(Part::Literal(std::mem::take(&mut literal)));
            }
            let (op, max_len) = parse_op(token, inputs)?;
            parts.push(Part::Op { op, max_len });
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Self { parts })
    }

    /// A format string with no operators.
    pub fn literal(s: &str) -> Self {
        Self {
            parts: if s.is_empty() {
                vec![]
            } else {
                vec![Part::Literal(s.to_string())]
            },
        }
    }

    pub fn is_literal(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Literal(_)))
    }

    /// The literal text when there are no operators.
    pub fn as_literal(&self) -> Option<String> {
        self.is_literal().then(|| {
            self.parts
                .iter()
                .map(|p| {
                    if let Part::Literal(l) = p {
                        l.as_str()
                    } else {
                        ""
                    }
                })
                .collect()
        })
    }

    /// Request headers this format reads (so a request path can keep just those).
    pub fn request_headers(&self) -> Vec<HeaderName> {
        let mut out = Vec::new();
        for p in &self.parts {
            if let Part::Op {
                op: Op::Req(a, b), ..
            } = p
            {
                for h in std::iter::once(a).chain(b.iter()) {
                    if let HeaderRef::Named(n) = h {
                        out.push(n.clone());
                    }
                }
            }
        }
        out
    }

    /// Response headers this format reads.
    pub fn response_headers(&self) -> Vec<HeaderName> {
        let mut out = Vec::new();
        for p in &self.parts {
            if let Part::Op {
                op: Op::Resp(a, b), ..
            } = p
            {
                out.push(a.clone());
                out.extend(b.iter().cloned());
            }
        }
        out
    }
}

/// `OP(args):N%rest` → (`OP(args):N`, rest). Parentheses may contain `%` in START_TIME formats.
fn split_operator(s: &str) -> Option<(&str, &str)> {
    let bytes = s.as_bytes();
    let mut depth = 0usize;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'(' => depth += 1,
            b')' => depth = depth.saturating_sub(1),
            b'%' if depth == 0 => return Some((&s[..i], &s[i + 1..])),
            _ => {}
        }
    }
    None
}

fn parse_op(token: &str, inputs: &Inputs) -> Result<(Op, Option<usize>), String> {
    let (name, arg, tail) = match token.find('(') {
        Some(open) => {
            let close = token
                .rfind(')')
                .ok_or_else(|| format!("missing ')' in operator '{token}'"))?;
            (
                &token[..open],
                Some(&token[open + 1..close]),
                &token[close + 1..],
            )
        }
        None => match token.split_once(':') {
            Some((n, t)) => (n, None, &token[n.len()..][..t.len() + 1]),
            None => (token, None, ""),
        },
    };
    let max_len = match tail.strip_prefix(':') {
        Some(n) => Some(
            n.parse::<usize>()
                .map_err(|_| format!("invalid length in operator '{token}'"))?,
        ),
        None if tail.is_empty() => None,
        None => return Err(format!("invalid operator '{token}'")),
    };
    syntax(name, arg, max_len)?;
    let need_arg = || arg.ok_or_else(|| format!("operator {name} needs an argument"));
    let op = match name {
        "START_TIME" => Op::StartTime(arg.filter(|a| !a.is_empty()).map(str::to_string)),
        "REQ" => {
            let (a, b) = header_pair(need_arg()?)?;
            Op::Req(header_ref(a)?, b.map(header_ref).transpose()?)
        }
        "RESP" => {
            let (a, b) = header_pair(need_arg()?)?;
            Op::Resp(header_name(a)?, b.map(header_name).transpose()?)
        }
        "TRAILER" => {
            let (a, b) = header_pair(need_arg()?)?;
            Op::Trailer(header_name(a)?, b.map(header_name).transpose()?)
        }
        "PROTOCOL" => Op::Protocol,
        "RESPONSE_CODE" => Op::ResponseCode,
        "RESPONSE_FLAGS" => Op::ResponseFlags,
        "RESPONSE_FLAGS_LONG" => Op::ResponseFlagsLong,
        "RESPONSE_CODE_DETAILS" => Op::ResponseCodeDetails,
        "CONNECTION_TERMINATION_DETAILS" => Op::ConnectionTerminationDetails,
        "DOWNSTREAM_LOCAL_CLOSE_REASON" => Op::DownstreamLocalCloseReason,
        "BYTES_RECEIVED" => Op::BytesReceived,
        "BYTES_SENT" => Op::BytesSent,
        "DURATION" => Op::Duration,
        "REQUEST_DURATION" => Op::RequestDuration,
        "RESPONSE_DURATION" => Op::ResponseDuration,
        "RESPONSE_TX_DURATION" => Op::ResponseTxDuration,
        "UPSTREAM_HOST" => Op::UpstreamHost,
        "UPSTREAM_CLUSTER" | "UPSTREAM_CLUSTER_RAW" => Op::UpstreamCluster,
        "UPSTREAM_LOCAL_ADDRESS" => Op::UpstreamLocalAddress,
        "UPSTREAM_REMOTE_ADDRESS" => Op::UpstreamRemoteAddress { port: true },
        "UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => Op::UpstreamRemoteAddress { port: false },
        "UPSTREAM_TRANSPORT_FAILURE_REASON" => Op::UpstreamTransportFailureReason,
        "DOWNSTREAM_TRANSPORT_FAILURE_REASON" => Op::DownstreamTransportFailureReason,
        "UPSTREAM_REQUEST_ATTEMPT_COUNT" => Op::UpstreamRequestAttemptCount,
        "DOWNSTREAM_LOCAL_ADDRESS" => Op::DownstreamLocalAddress { port: true },
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => Op::DownstreamLocalAddress { port: false },
        "DOWNSTREAM_LOCAL_PORT" => Op::DownstreamLocalPort,
        "DOWNSTREAM_REMOTE_ADDRESS" => Op::DownstreamRemoteAddress { port: true },
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => Op::DownstreamRemoteAddress { port: false },
        "DOWNSTREAM_REMOTE_PORT" => Op::DownstreamRemotePort,
        "DOWNSTREAM_DIRECT_REMOTE_ADDRESS" => Op::DownstreamDirectRemoteAddress { port: true },
        "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT" => {
            Op::DownstreamDirectRemoteAddress { port: false }
        }
        "REQUESTED_SERVER_NAME" => Op::RequestedServerName,
        "ROUTE_NAME" => Op::RouteName,
        "HOSTNAME" => Op::Hostname,
        "CONNECTION_ID" => Op::ConnectionId,
        "LOCAL_REPLY_BODY" => Op::LocalReplyBody,
        "ENVIRONMENT" => {
            let a = need_arg()?;
            // Not read yet: the loader reads it and translates again.
            Op::Environment(inputs.env(a).ok().flatten().map(str::to_string))
        }
        "DYNAMIC_METADATA" => dynamic_metadata(need_arg()?)?,
        "FILTER_STATE" => filter_state(need_arg()?)?,
        "CLUSTER_METADATA" | "UPSTREAM_METADATA" | "UPSTREAM_FILTER_STATE" => {
            need_arg()?;
            Op::Absent
        }
        other => match tls_operator(other, arg) {
            Some(op) => op,
            None => return Err(format!("Not supported field in StreamInfo: {other}")),
        },
    };
    Ok((op, max_len))
}

/// `NAMESPACE:KEY:KEY…` (Envoy's `parseSubcommand` with `:` as the separator).
fn dynamic_metadata(arg: &str) -> Result<Op, String> {
    let mut parts = arg.split(':');
    let namespace = parts.next().unwrap_or("");
    if namespace.is_empty() {
        return Err(format!(
            "Invalid header configuration. Format string contains empty filter namespace in DYNAMIC_METADATA({arg})"
        ));
    }
    let path: Vec<String> = parts.map(str::to_string).collect();
    if path.iter().any(String::is_empty) {
        return Err(format!(
            "Invalid header configuration. Format string contains empty key in DYNAMIC_METADATA({arg})"
        ));
    }
    Ok(Op::DynamicMetadata {
        namespace: namespace.to_string(),
        path,
    })
}

/// `KEY[:PLAIN|:TYPED|:FIELD:NAME]` (Envoy's filter-state formatter).
fn filter_state(arg: &str) -> Result<Op, String> {
    let mut parts = arg.split(':');
    let key = parts.next().unwrap_or("");
    if key.is_empty() {
        return Err("Invalid filter state configuration, key cannot be empty.".to_string());
    }
    let format = match (parts.next(), parts.next(), parts.next()) {
        (None, ..) | (Some("TYPED"), None, _) => FilterStateFormat::Typed,
        (Some("PLAIN"), None, _) => FilterStateFormat::Plain,
        (Some("FIELD"), Some(f), None) if !f.is_empty() => FilterStateFormat::Field,
        (Some("FIELD"), ..) => {
            return Err(
                "Invalid filter state serialize type, FIELD requires a field name.".to_string(),
            );
        }
        _ => {
            return Err(format!(
                "Invalid filter state serialize type, only support PLAIN/TYPED/FIELD: {arg}"
            ));
        }
    };
    Ok(Op::FilterState {
        key: key.to_string(),
        format,
    })
}

/// Operators that take neither an argument nor a `:N` length (Envoy's
/// `CommandSyntaxChecker::COMMAND_ONLY`); the TLS ones are listed by `tls_command_only`.
const COMMAND_ONLY: &[&str] = &[
    "PROTOCOL",
    "RESPONSE_CODE",
    "RESPONSE_FLAGS",
    "RESPONSE_FLAGS_LONG",
    "CONNECTION_TERMINATION_DETAILS",
    "DOWNSTREAM_LOCAL_CLOSE_REASON",
    "BYTES_RECEIVED",
    "BYTES_SENT",
    "DURATION",
    "REQUEST_DURATION",
    "RESPONSE_DURATION",
    "RESPONSE_TX_DURATION",
    "UPSTREAM_HOST",
    "UPSTREAM_CLUSTER",
    "UPSTREAM_CLUSTER_RAW",
    "UPSTREAM_LOCAL_ADDRESS",
    "UPSTREAM_REMOTE_ADDRESS",
    "UPSTREAM_TRANSPORT_FAILURE_REASON",
    "DOWNSTREAM_TRANSPORT_FAILURE_REASON",
    "UPSTREAM_REQUEST_ATTEMPT_COUNT",
    "DOWNSTREAM_LOCAL_ADDRESS",
    "DOWNSTREAM_LOCAL_PORT",
    "DOWNSTREAM_REMOTE_ADDRESS",
    "DOWNSTREAM_REMOTE_PORT",
    "DOWNSTREAM_DIRECT_REMOTE_ADDRESS",
    "ROUTE_NAME",
    "HOSTNAME",
    "CONNECTION_ID",
    "LOCAL_REPLY_BODY",
];

/// Operators whose value a `:N` length may truncate (Envoy's `LENGTH_ALLOWED`).
const LENGTH_ALLOWED: &[&str] = &[
    "REQ",
    "RESP",
    "TRAILER",
    "ENVIRONMENT",
    "DYNAMIC_METADATA",
    "FILTER_STATE",
    "UPSTREAM_FILTER_STATE",
];

/// A TLS operator other than the certificate validity times (which take a time format).
fn tls_command_only(name: &str) -> bool {
    (name.starts_with("DOWNSTREAM_") || name.starts_with("UPSTREAM_"))
        && !name.ends_with("_PEER_CERT_V_START")
        && !name.ends_with("_PEER_CERT_V_END")
        && tls_operator(name, None).is_some()
}

/// Envoy's `CommandSyntaxChecker::checkSyntax`: an argument or length where the operator takes
/// none, and a length where it takes none, are errors (with Envoy's words).
fn syntax(name: &str, arg: Option<&str>, max_len: Option<usize>) -> Result<(), String> {
    let has_arg = arg.is_some_and(|a| !a.is_empty());
    if (COMMAND_ONLY.contains(&name) || tls_command_only(name)) && (has_arg || max_len.is_some()) {
        return Err(format!("{name} does not take any parameters or length"));
    }
    if max_len.is_some() && !LENGTH_ALLOWED.contains(&name) {
        return Err(format!("{name} does not allow length to be specified."));
    }
    Ok(())
}

/// `DOWNSTREAM_*` / `UPSTREAM_*` TLS operators.
fn tls_operator(name: &str, arg: Option<&str>) -> Option<Op> {
    let (upstream, rest) = match name.strip_prefix("DOWNSTREAM_") {
        Some(r) => (false, r),
        None => (true, name.strip_prefix("UPSTREAM_")?),
    };
    let time_fmt = || arg.filter(|a| !a.is_empty()).map(str::to_string);
    let field = match rest {
        "PEER_URI_SAN" => TlsField::PeerUriSan,
        "PEER_DNS_SAN" => TlsField::PeerDnsSan,
        "PEER_IP_SAN" => TlsField::PeerIpSan,
        "LOCAL_URI_SAN" => TlsField::LocalUriSan,
        "LOCAL_DNS_SAN" => TlsField::LocalDnsSan,
        "LOCAL_SUBJECT" => TlsField::LocalSubject,
        "PEER_SUBJECT" => TlsField::PeerSubject,
        "PEER_ISSUER" => TlsField::PeerIssuer,
        "TLS_CIPHER" => TlsField::Cipher,
        "TLS_VERSION" => TlsField::Version,
        "PEER_FINGERPRINT_256" => TlsField::PeerFingerprint256,
        "PEER_FINGERPRINT_1" => TlsField::PeerFingerprint1,
        "PEER_SERIAL" => TlsField::PeerSerial,
        "PEER_CERT" => TlsField::PeerCert,
        "PEER_CERT_V_START" => TlsField::PeerCertValidFrom(time_fmt()),
        "PEER_CERT_V_END" => TlsField::PeerCertValidUntil(time_fmt()),
        // rustls does not expose TLS session IDs: this prints `-`.
        "TLS_SESSION_ID" => return Some(Op::Absent),
        _ => return None,
    };
    Some(Op::Tls { upstream, field })
}

fn header_pair(arg: &str) -> Result<(&str, Option<&str>), String> {
    match arg.split_once('?') {
        Some((a, b)) if !a.is_empty() && !b.is_empty() => Ok((a, Some(b))),
        Some(_) => Err(format!("invalid header alternative '{arg}'")),
        None => Ok((arg, None)),
    }
}

fn header_ref(name: &str) -> Result<HeaderRef, String> {
    Ok(match name.to_ascii_lowercase().as_str() {
        ":method" => HeaderRef::Method,
        ":path" => HeaderRef::Path,
        ":authority" | "host" => HeaderRef::Authority,
        ":scheme" => HeaderRef::Scheme,
        _ => HeaderRef::Named(header_name(name)?),
    })
}

fn header_name(name: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
        .map_err(|_| format!("invalid header name '{name}'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `%ENVIRONMENT(X)%` is resolved from the translation's inputs: asked for, not read here.
    #[test]
    fn environment_comes_from_the_inputs() {
        let none = Inputs::none();
        let f = Formatter::parse_in("%ENVIRONMENT(REMORA_TEST_X)%", &none).unwrap();
        assert!(matches!(
            f.parts.as_slice(),
            [Part::Op {
                op: Op::Environment(None),
                ..
            }]
        ));
        let wanted = none.take_wanted();
        assert_eq!(
            wanted.env.into_iter().collect::<Vec<_>>(),
            ["REMORA_TEST_X"]
        );
        let read = none.with([], [("REMORA_TEST_X".to_string(), Some("v".to_string()))]);
        let f = Formatter::parse_in("%ENVIRONMENT(REMORA_TEST_X)%", &read).unwrap();
        assert!(
            matches!(f.parts.as_slice(), [Part::Op { op: Op::Environment(Some(v)), .. }] if v == "v")
        );
        assert!(read.take_wanted().is_empty());
    }

    /// Envoy refuses a length on most operators, and an argument on those that take none.
    #[test]
    fn lengths_and_arguments_only_where_envoy_allows_them() {
        for ok in [
            "%REQ(X):3%",
            "%RESP(X):1%",
            "%TRAILER(X):2%",
            "%ENVIRONMENT(HOME):2%",
            "%DYNAMIC_METADATA(a:b):4%",
            "%FILTER_STATE(x):4%",
            "%START_TIME(%Y)%",
            "%DOWNSTREAM_PEER_CERT_V_START(%Y)%",
            "%PROTOCOL%",
        ] {
            assert!(Formatter::parse(ok).is_ok(), "{ok}");
        }
        for (bad, err) in [
            (
                "%START_TIME(%Y):2%",
                "START_TIME does not allow length to be specified.",
            ),
            (
                "%CLUSTER_METADATA(a:b):2%",
                "CLUSTER_METADATA does not allow length to be specified.",
            ),
            (
                "%RESPONSE_CODE_DETAILS:3%",
                "RESPONSE_CODE_DETAILS does not allow length to be specified.",
            ),
            (
                "%UPSTREAM_HOST:4%",
                "UPSTREAM_HOST does not take any parameters or length",
            ),
            (
                "%PROTOCOL(x)%",
                "PROTOCOL does not take any parameters or length",
            ),
            (
                "%DOWNSTREAM_TLS_VERSION:2%",
                "DOWNSTREAM_TLS_VERSION does not take any parameters or length",
            ),
        ] {
            assert_eq!(Formatter::parse(bad).unwrap_err(), err, "{bad}");
        }
    }

    #[test]
    fn metadata_and_filter_state_arguments() {
        let op = |s: &str| match Formatter::parse(s).unwrap().parts.as_slice() {
            [Part::Op { op, max_len }] => (format!("{op:?}"), *max_len),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            op("%DYNAMIC_METADATA(envoy.filters.http.rbac:shadow_engine_result):5%"),
            (
                r#"DynamicMetadata { namespace: "envoy.filters.http.rbac", path: ["shadow_engine_result"] }"#
                    .to_string(),
                Some(5)
            )
        );
        assert_eq!(
            op("%DYNAMIC_METADATA(ns)%").0,
            r#"DynamicMetadata { namespace: "ns", path: [] }"#
        );
        assert_eq!(
            op("%FILTER_STATE(a.b)%").0,
            r#"FilterState { key: "a.b", format: Typed }"#
        );
        assert_eq!(
            op("%FILTER_STATE(a.b:PLAIN)%").0,
            r#"FilterState { key: "a.b", format: Plain }"#
        );
        assert_eq!(
            op("%FILTER_STATE(a:FIELD:f)%").0,
            r#"FilterState { key: "a", format: Field }"#
        );
        assert!(Formatter::parse("%DYNAMIC_METADATA(:k)%").is_err());
        assert!(Formatter::parse("%DYNAMIC_METADATA(ns::k)%").is_err());
        assert!(Formatter::parse("%FILTER_STATE(a:BOGUS)%").is_err());
        assert!(Formatter::parse("%FILTER_STATE(a:FIELD)%").is_err());
        assert!(Formatter::parse("%FILTER_STATE()%").is_err());
    }

    #[test]
    fn parse_errors_name_the_operator() {
        assert_eq!(
            Formatter::parse("%BOGUS%").unwrap_err(),
            "Not supported field in StreamInfo: BOGUS"
        );
        assert!(Formatter::parse("%REQ(x").is_err());
        assert!(Formatter::parse("%REQ(X-A)").is_err());
        assert!(Formatter::parse("%%").unwrap().is_literal());
        assert_eq!(
            Formatter::parse("%UPSTREAM_HOST:x%").unwrap_err(),
            "invalid length in operator 'UPSTREAM_HOST:x'"
        );
        assert_eq!(
            Formatter::parse("%REQ%").unwrap_err(),
            "operator REQ needs an argument"
        );
    }

    #[test]
    fn literals_and_headers_read() {
        let f = Formatter::parse("100%% sure").unwrap();
        assert_eq!(f.as_literal().as_deref(), Some("100% sure"));
        assert!(Formatter::literal("").as_literal().unwrap().is_empty());
        let f = Formatter::parse(DEFAULT_ACCESS_LOG_FORMAT).unwrap();
        assert!(!f.is_literal());
        assert_eq!(
            f.request_headers(),
            [
                "x-envoy-original-path",
                "x-forwarded-for",
                "user-agent",
                "x-request-id"
            ]
        );
        assert_eq!(f.response_headers(), ["x-envoy-upstream-service-time"]);
    }
}
