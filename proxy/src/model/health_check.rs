//! `envoy.config.core.v3.HealthCheck` (a cluster's `health_checks`) → active health checking:
//! HTTP (expected and retriable statuses), TCP (send/receive payloads) and gRPC
//! (`grpc.health.v1.Health/Check`), with Envoy's intervals, jitter and thresholds.

use super::core::{deny, enum_value, opt_duration};
use super::headers::HeaderMutations;
use super::inputs::Inputs;
use super::matcher::StringMatcher;
use super::pb;
use crate::config::{FieldPath, Result};
use std::time::Duration;

/// Envoy's `no_traffic_interval` default.
pub const DEFAULT_NO_TRAFFIC_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct HealthCheck {
    pub timeout: Duration,
    pub interval: Duration,
    pub initial_jitter: Duration,
    pub interval_jitter: Duration,
    pub interval_jitter_percent: u32,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
    pub alt_port: Option<u16>,
    pub reuse_connection: bool,
    pub no_traffic_interval: Duration,
    pub no_traffic_healthy_interval: Option<Duration>,
    pub unhealthy_interval: Duration,
    pub unhealthy_edge_interval: Duration,
    pub healthy_edge_interval: Duration,
    pub checker: Checker,
}

#[derive(Debug, Clone)]
pub enum Checker {
    Http(HttpCheck),
    Tcp(TcpCheck),
    Grpc(GrpcCheck),
}

#[derive(Debug, Clone)]
pub struct HttpCheck {
    /// `host`: the `:authority` (default: the cluster's name).
    pub host: Option<String>,
    pub path: String,
    pub method: http::Method,
    pub headers: HeaderMutations,
    /// Half-open ranges `[start, end)`.
    pub expected_statuses: Vec<(i64, i64)>,
    pub retriable_statuses: Vec<(i64, i64)>,
    pub http2: bool,
    /// Matched against the answer's `x-envoy-upstream-healthchecked-cluster`.
    pub service_name_matcher: Option<StringMatcher>,
}

#[derive(Debug, Clone, Default)]
pub struct TcpCheck {
    pub send: Option<Vec<u8>>,
    /// Each must appear in the answer, in order.
    pub receive: Vec<Vec<u8>>,
}

#[derive(Debug, Clone)]
pub struct GrpcCheck {
    pub service_name: String,
    pub authority: Option<String>,
    pub metadata: HeaderMutations,
}

impl HealthCheck {
    pub fn from_proto(
        path: &FieldPath,
        hc: &pb::core::HealthCheck,
        inputs: &Inputs,
    ) -> Result<Self> {
        use pb::core::health_check::HealthChecker as H;
        let pb::core::HealthCheck {
            timeout,
            interval,
            initial_jitter,
            interval_jitter,
            interval_jitter_percent,
            unhealthy_threshold,
            healthy_threshold,
            alt_port,
            reuse_connection,
            no_traffic_interval,
            no_traffic_healthy_interval,
            unhealthy_interval,
            unhealthy_edge_interval,
            healthy_edge_interval,
            event_log_path,
            event_logger,
            event_service,
            always_log_health_check_failures: _,
            always_log_health_check_success: _,
            tls_options,
            transport_socket_match_criteria,
            health_checker,
        } = hc;
        // (The always_log_* switches only shape an event log, which is refused below.)
        deny(path, "event_log_path", event_log_path)?;
        if !event_logger.is_empty() {
            return Err(path.unsupported("event_logger"));
        }
        deny(path, "event_service", event_service)?;
        deny(path, "tls_options", tls_options)?;
        deny(
            path,
            "transport_socket_match_criteria",
            transport_socket_match_criteria,
        )?;
        let required = |field: &str, d: &Option<pb::protobuf::Duration>| -> Result<Duration> {
            let d = opt_duration(path, field, d)?
                .ok_or_else(|| path.field(field).error("is required"))?;
            if d.is_zero() {
                return Err(path.field(field).error("must be greater than 0"));
            }
            Ok(d)
        };
        let timeout = required("timeout", timeout)?;
        let interval = required("interval", interval)?;
        let threshold = |field: &str, v: &Option<pb::protobuf::UInt32Value>| -> Result<u32> {
            v.as_ref()
                .map(|v| v.value.max(1))
                .ok_or_else(|| path.field(field).error("is required"))
        };
        let positive =
            |field: &str, d: &Option<pb::protobuf::Duration>| -> Result<Option<Duration>> {
                Ok(opt_duration(path, field, d)?.filter(|d| !d.is_zero()))
            };
        let unhealthy_interval =
            positive("unhealthy_interval", unhealthy_interval)?.unwrap_or(interval);
        let checker = match health_checker {
            Some(H::HttpHealthCheck(h)) => {
                Checker::Http(http(&path.field("http_health_check"), h, inputs)?)
            }
            Some(H::TcpHealthCheck(t)) => Checker::Tcp(tcp(&path.field("tcp_health_check"), t)?),
            Some(H::GrpcHealthCheck(g)) => {
                Checker::Grpc(grpc(&path.field("grpc_health_check"), g, inputs)?)
            }
            Some(H::CustomHealthCheck(_)) => return Err(path.unsupported("custom_health_check")),
            None => {
                return Err(path.error(
                    "one of http_health_check, tcp_health_check or grpc_health_check is required",
                ));
            }
        };
        let alt_port = match alt_port {
            None => None,
            Some(p) => Some(
                u16::try_from(p.value)
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| path.field("alt_port").error("must be a port number"))?,
            ),
        };
        Ok(Self {
            timeout,
            interval,
            initial_jitter: opt_duration(path, "initial_jitter", initial_jitter)?
                .unwrap_or_default(),
            interval_jitter: opt_duration(path, "interval_jitter", interval_jitter)?
                .unwrap_or_default(),
            interval_jitter_percent: *interval_jitter_percent,
            unhealthy_threshold: threshold("unhealthy_threshold", unhealthy_threshold)?,
            healthy_threshold: threshold("healthy_threshold", healthy_threshold)?,
            alt_port,
            reuse_connection: reuse_connection.as_ref().is_none_or(|b| b.value),
            no_traffic_interval: positive("no_traffic_interval", no_traffic_interval)?
                .unwrap_or(DEFAULT_NO_TRAFFIC_INTERVAL),
            no_traffic_healthy_interval: positive(
                "no_traffic_healthy_interval",
                no_traffic_healthy_interval,
            )?,
            unhealthy_interval,
            unhealthy_edge_interval: positive("unhealthy_edge_interval", unhealthy_edge_interval)?
                .unwrap_or(unhealthy_interval),
            healthy_edge_interval: positive("healthy_edge_interval", healthy_edge_interval)?
                .unwrap_or(interval),
            checker,
        })
    }
}

fn ranges(path: &FieldPath, field: &str, v: &[pb::types::Int64Range]) -> Result<Vec<(i64, i64)>> {
    v.iter()
        .enumerate()
        .map(|(i, r)| {
            if !(100..=600).contains(&r.start) || !(100..=600).contains(&r.end) || r.start >= r.end
            {
                return Err(path
                    .field(field)
                    .index(i)
                    .error("must be a range of HTTP status codes [start, end)"));
            }
            Ok((r.start, r.end))
        })
        .collect()
}

fn http(
    path: &FieldPath,
    h: &pb::core::health_check::HttpHealthCheck,
    inputs: &Inputs,
) -> Result<HttpCheck> {
    use pb::core::RequestMethod as M;
    let pb::core::health_check::HttpHealthCheck {
        host,
        path: hc_path,
        send,
        receive,
        response_buffer_size,
        request_headers_to_add,
        request_headers_to_remove,
        expected_statuses,
        retriable_statuses,
        codec_client_type,
        service_name_matcher,
        method,
    } = h;
    deny(path, "send", send)?;
    if !receive.is_empty() {
        return Err(path.unsupported("receive"));
    }
    deny(path, "response_buffer_size", response_buffer_size)?;
    if hc_path.is_empty() || !hc_path.starts_with('/') {
        return Err(path.field("path").error("must be an absolute path"));
    }
    let method = match enum_value::<M>(path, "method", *method, |m| !matches!(m, M::Connect))? {
        M::MethodUnspecified | M::Get => http::Method::GET,
        M::Head => http::Method::HEAD,
        M::Post => http::Method::POST,
        M::Put => http::Method::PUT,
        M::Delete => http::Method::DELETE,
        M::Options => http::Method::OPTIONS,
        M::Trace => http::Method::TRACE,
        M::Patch => http::Method::PATCH,
        M::Connect => unreachable!("refused above"),
    };
    use pb::types::CodecClientType as C;
    let http2 = match enum_value::<C>(path, "codec_client_type", *codec_client_type, |c| {
        !matches!(c, C::Http3)
    })? {
        C::Http1 => false,
        C::Http2 => true,
        C::Http3 => unreachable!("refused above"),
    };
    let mut expected = ranges(path, "expected_statuses", expected_statuses)?;
    if expected.is_empty() {
        expected.push((200, 201));
    }
    Ok(HttpCheck {
        host: (!host.is_empty()).then(|| host.clone()),
        path: hc_path.clone(),
        method,
        headers: HeaderMutations::request(
            path,
            request_headers_to_add,
            request_headers_to_remove,
            inputs,
        )?,
        expected_statuses: expected,
        retriable_statuses: ranges(path, "retriable_statuses", retriable_statuses)?,
        http2,
        service_name_matcher: service_name_matcher
            .as_ref()
            .map(|m| StringMatcher::from_proto(&path.field("service_name_matcher"), m))
            .transpose()?,
    })
}

fn payload(path: &FieldPath, p: &pb::core::health_check::Payload) -> Result<Vec<u8>> {
    use pb::core::health_check::payload::Payload as P;
    match &p.payload {
        Some(P::Text(hex)) => {
            decode_hex(hex).ok_or_else(|| path.field("text").error("must be hex"))
        }
        Some(P::Binary(b)) => Ok(b.clone()),
        None => Err(path.error("text or binary is required")),
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.is_empty() || !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn tcp(path: &FieldPath, t: &pb::core::health_check::TcpHealthCheck) -> Result<TcpCheck> {
    let pb::core::health_check::TcpHealthCheck {
        send,
        receive,
        proxy_protocol_config,
    } = t;
    deny(path, "proxy_protocol_config", proxy_protocol_config)?;
    Ok(TcpCheck {
        send: send
            .as_ref()
            .map(|s| payload(&path.field("send"), s))
            .transpose()?,
        receive: receive
            .iter()
            .enumerate()
            .map(|(i, r)| payload(&path.field("receive").index(i), r))
            .collect::<Result<_>>()?,
    })
}

fn grpc(
    path: &FieldPath,
    g: &pb::core::health_check::GrpcHealthCheck,
    inputs: &Inputs,
) -> Result<GrpcCheck> {
    let pb::core::health_check::GrpcHealthCheck {
        service_name,
        authority,
        initial_metadata,
    } = g;
    Ok(GrpcCheck {
        service_name: service_name.clone(),
        authority: (!authority.is_empty()).then(|| authority.clone()),
        metadata: HeaderMutations::request(
            &path.field("initial_metadata"),
            initial_metadata,
            &[],
            inputs,
        )?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hc(yaml: &str) -> Result<HealthCheck> {
        let path = FieldPath::new("clusters[0].health_checks[0]");
        let p = crate::config::decode_yaml("envoy.config.core.v3.HealthCheck", yaml, &path);
        HealthCheck::from_proto(&path, &p, &Inputs::none())
    }

    #[test]
    fn defaults_and_refusals() {
        let h = hc("{timeout: 1s, interval: 5s, unhealthy_threshold: 2, healthy_threshold: 1, http_health_check: {path: /healthz}}").unwrap();
        assert_eq!(h.no_traffic_interval, Duration::from_secs(60));
        assert_eq!(h.unhealthy_edge_interval, Duration::from_secs(5));
        assert!(h.reuse_connection);
        let Checker::Http(http) = &h.checker else {
            panic!()
        };
        assert_eq!(http.expected_statuses, [(200, 201)]);
        let t = hc("{timeout: 1s, interval: 1s, unhealthy_threshold: 1, healthy_threshold: 1, tcp_health_check: {send: {text: '50494e47'}, receive: [{text: '504f4e47'}]}}").unwrap();
        let Checker::Tcp(tcp) = &t.checker else {
            panic!()
        };
        assert_eq!(tcp.send.as_deref(), Some(&b"PING"[..]));
        assert_eq!(tcp.receive, [b"PONG".to_vec()]);
        let e = hc(
            "{interval: 1s, unhealthy_threshold: 1, healthy_threshold: 1, tcp_health_check: {}}",
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "clusters[0].health_checks[0].timeout: is required"
        );
        let e = hc("{timeout: 1s, interval: 1s, unhealthy_threshold: 1, healthy_threshold: 1, event_log_path: /tmp/x, tcp_health_check: {}}").unwrap_err();
        assert_eq!(
            e.to_string(),
            "clusters[0].health_checks[0].event_log_path: is not supported"
        );
        let e = hc("{timeout: 1s, interval: 1s, unhealthy_threshold: 1, healthy_threshold: 1, http_health_check: {path: /h, codec_client_type: HTTP3}}").unwrap_err();
        assert!(
            e.to_string()
                .contains("codec_client_type: HTTP3 is not supported"),
            "{e}"
        );
    }
}
