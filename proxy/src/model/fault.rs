//! `envoy.filters.http.fault` (`envoy.extensions.filters.http.fault.v3.HTTPFault`): the
//! filter's settings, the same message being a route's per-filter override (Envoy's
//! `FaultSettings`). What it does per request is `filters/http/fault.rs`.

use super::core::{decode_any, duration};
use super::matcher::HeaderMatcher;
use super::pb;
use super::runtime::{Percent, struct_to_json};
use crate::config::error::{self, Errors};
use crate::config::{FieldPath, Result};
use std::time::Duration;

pub const FAULT_TYPE: &str = "envoy.extensions.filters.http.fault.v3.HTTPFault";

/// Envoy's default runtime keys (`FaultSettings::RuntimeKeyValues`).
pub const DELAY_PERCENT_KEY: &str = "fault.http.delay.fixed_delay_percent";
pub const ABORT_PERCENT_KEY: &str = "fault.http.abort.abort_percent";
pub const DELAY_DURATION_KEY: &str = "fault.http.delay.fixed_duration_ms";
pub const ABORT_HTTP_STATUS_KEY: &str = "fault.http.abort.http_status";
pub const ABORT_GRPC_STATUS_KEY: &str = "fault.http.abort.grpc_status";
pub const MAX_ACTIVE_FAULTS_KEY: &str = "fault.http.max_active_faults";
pub const RESPONSE_RATE_LIMIT_PERCENT_KEY: &str = "fault.http.rate_limit.response_percent";

/// One `HTTPFault`: the filter's, or a route's replacing it.
#[derive(Debug, Clone)]
pub struct FaultSettings {
    pub delay: Option<Delay>,
    pub abort: Option<Abort>,
    /// Faults only on requests routed to this cluster.
    pub upstream_cluster: Option<Box<str>>,
    /// Faults only on requests matching every one of these.
    pub headers: Vec<HeaderMatcher>,
    /// Faults only on requests whose `x-envoy-downstream-service-node` is one of these.
    pub downstream_nodes: Vec<Box<str>>,
    /// `None`: unlimited (unless the runtime key sets a limit).
    pub max_active_faults: Option<u64>,
    pub response_rate_limit: Option<RateLimit>,
    pub keys: RuntimeKeys,
    /// No `<downstream cluster>.delays_injected`/`aborts_injected` counters.
    pub disable_downstream_cluster_stats: bool,
    /// Set as the stream's dynamic metadata (namespace: the filter's name) when a delay or an
    /// abort is injected.
    pub filter_metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

/// The runtime keys a fault reads (the `*_runtime` fields, or Envoy's defaults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeKeys {
    pub delay_percent: Box<str>,
    pub abort_percent: Box<str>,
    pub delay_duration: Box<str>,
    pub abort_http_status: Box<str>,
    pub abort_grpc_status: Box<str>,
    pub max_active_faults: Box<str>,
    pub response_rate_limit_percent: Box<str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DelayKind {
    Fixed(Duration),
    /// `header_delay`: the duration in `x-envoy-fault-delay-request` (milliseconds).
    Header,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delay {
    pub kind: DelayKind,
    /// With `header_delay`, `x-envoy-fault-delay-request-percentage` may lower it.
    pub percentage: Percent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortKind {
    Http(u16),
    /// A gRPC status, sent as a 200 with `grpc-status`.
    Grpc(u32),
    /// `header_abort`: `x-envoy-fault-abort-request` (HTTP) or
    /// `x-envoy-fault-abort-grpc-request` (gRPC).
    Header,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Abort {
    pub kind: AbortKind,
    /// With `header_abort`, `x-envoy-fault-abort-request-percentage` may lower it.
    pub percentage: Percent,
    /// The reply's body (Envoy's default: `fault filter abort`).
    pub body: Box<str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateKind {
    /// KiB per second.
    Fixed(u64),
    /// `header_limit`: the rate in `x-envoy-fault-throughput-response`.
    Header,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub kind: RateKind,
    /// With `header_limit`, `x-envoy-fault-throughput-response-percentage` may lower it.
    pub percentage: Percent,
}

/// The abort reply's body unless `response_body` is set.
pub const DEFAULT_ABORT_BODY: &str = "fault filter abort";

impl FaultSettings {
    /// An `HTTPFault` inside an `Any` (a route's `typed_per_filter_config` entry).
    pub fn from_any(path: &FieldPath, any: &pb::protobuf::Any) -> Result<Self> {
        Self::from_proto(path, &decode_any(path, any)?)
    }

    pub fn from_proto(path: &FieldPath, f: &pb::fault::HttpFault) -> Result<Self> {
        let pb::fault::HttpFault {
            delay,
            abort,
            upstream_cluster,
            headers,
            downstream_nodes,
            max_active_faults,
            response_rate_limit,
            delay_percent_runtime,
            abort_percent_runtime,
            delay_duration_runtime,
            abort_http_status_runtime,
            max_active_faults_runtime,
            response_rate_limit_percent_runtime,
            abort_grpc_status_runtime,
            disable_downstream_cluster_stats,
            filter_metadata,
        } = f;
        let mut errs = Errors::new();
        let delay = errs.take(
            delay
                .as_ref()
                .map(|d| delay_from(&path.field("delay"), d))
                .transpose(),
        );
        let abort = errs.take(
            abort
                .as_ref()
                .map(|a| abort_from(&path.field("abort"), a))
                .transpose(),
        );
        let headers =
            errs.take(error::all(headers.iter().enumerate().map(|(i, h)| {
                HeaderMatcher::from_proto(&path.field("headers").index(i), h)
            })));
        let response_rate_limit = errs.take(
            response_rate_limit
                .as_ref()
                .map(|r| rate_limit_from(&path.field("response_rate_limit"), r))
                .transpose(),
        );
        errs.finish()?;
        let key =
            |v: &str, default: &str| -> Box<str> { if v.is_empty() { default } else { v }.into() };
        Ok(Self {
            delay: delay.flatten(),
            abort: abort.flatten(),
            upstream_cluster: (!upstream_cluster.is_empty())
                .then(|| upstream_cluster.as_str().into()),
            headers: headers.unwrap_or_default(),
            downstream_nodes: downstream_nodes.iter().map(|n| n.as_str().into()).collect(),
            max_active_faults: max_active_faults.map(|m| u64::from(m.value)),
            response_rate_limit: response_rate_limit.flatten(),
            keys: RuntimeKeys {
                delay_percent: key(delay_percent_runtime, DELAY_PERCENT_KEY),
                abort_percent: key(abort_percent_runtime, ABORT_PERCENT_KEY),
                delay_duration: key(delay_duration_runtime, DELAY_DURATION_KEY),
                abort_http_status: key(abort_http_status_runtime, ABORT_HTTP_STATUS_KEY),
                abort_grpc_status: key(abort_grpc_status_runtime, ABORT_GRPC_STATUS_KEY),
                max_active_faults: key(max_active_faults_runtime, MAX_ACTIVE_FAULTS_KEY),
                response_rate_limit_percent: key(
                    response_rate_limit_percent_runtime,
                    RESPONSE_RATE_LIMIT_PERCENT_KEY,
                ),
            },
            disable_downstream_cluster_stats: *disable_downstream_cluster_stats,
            filter_metadata: filter_metadata.as_ref().map(|m| match struct_to_json(m) {
                serde_json::Value::Object(o) => o,
                _ => serde_json::Map::new(),
            }),
        })
    }
}

fn delay_from(path: &FieldPath, d: &pb::common_fault::FaultDelay) -> Result<Delay> {
    use pb::common_fault::fault_delay::FaultDelaySecifier as S;
    let pb::common_fault::FaultDelay {
        percentage,
        fault_delay_secifier,
    } = d;
    let kind = match fault_delay_secifier {
        Some(S::FixedDelay(d)) => DelayKind::Fixed(
            duration(d)
                .filter(|d| !d.is_zero())
                .ok_or_else(|| path.field("fixed_delay").error("must be greater than 0s"))?,
        ),
        Some(S::HeaderDelay(pb::common_fault::fault_delay::HeaderDelay {})) => DelayKind::Header,
        None => {
            return Err(path.error("a fault delay needs fixed_delay or header_delay"));
        }
    };
    Ok(Delay {
        kind,
        percentage: Percent::from_proto(&path.field("percentage"), percentage)?,
    })
}

fn abort_from(path: &FieldPath, a: &pb::fault::FaultAbort) -> Result<Abort> {
    use pb::fault::fault_abort::ErrorType as E;
    let pb::fault::FaultAbort {
        percentage,
        response_body,
        error_type,
    } = a;
    let kind = match error_type {
        Some(E::HttpStatus(s)) => AbortKind::Http(
            u16::try_from(*s)
                .ok()
                .filter(|s| (200..600).contains(s))
                .ok_or_else(|| {
                    path.field("http_status")
                        .error("must be at least 200 and less than 600")
                })?,
        ),
        Some(E::GrpcStatus(s)) => AbortKind::Grpc(*s),
        Some(E::HeaderAbort(pb::fault::fault_abort::HeaderAbort {})) => AbortKind::Header,
        None => {
            return Err(path.error("a fault abort needs http_status, grpc_status or header_abort"));
        }
    };
    Ok(Abort {
        kind,
        percentage: Percent::from_proto(&path.field("percentage"), percentage)?,
        body: if response_body.is_empty() {
            DEFAULT_ABORT_BODY.into()
        } else {
            response_body.as_str().into()
        },
    })
}

fn rate_limit_from(path: &FieldPath, r: &pb::common_fault::FaultRateLimit) -> Result<RateLimit> {
    use pb::common_fault::fault_rate_limit::{FixedLimit, HeaderLimit, LimitType as L};
    let pb::common_fault::FaultRateLimit {
        percentage,
        limit_type,
    } = r;
    let kind = match limit_type {
        Some(L::FixedLimit(FixedLimit { limit_kbps })) => {
            if *limit_kbps == 0 {
                return Err(path
                    .field("fixed_limit")
                    .field("limit_kbps")
                    .error("must be at least 1"));
            }
            RateKind::Fixed(*limit_kbps)
        }
        Some(L::HeaderLimit(HeaderLimit {})) => RateKind::Header,
        None => return Err(path.error("a rate limit needs fixed_limit or header_limit")),
    };
    Ok(RateLimit {
        kind,
        percentage: Percent::from_proto(&path.field("percentage"), percentage)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn translate(yaml: &str) -> Result<FaultSettings> {
        let path = FieldPath::new("fault");
        let pb: pb::fault::HttpFault = crate::config::decode_yaml(FAULT_TYPE, yaml, &path);
        FaultSettings::from_proto(&path, &pb)
    }

    #[test]
    fn every_field_is_honoured() {
        let s = translate(
            r#"
delay: {fixed_delay: 1.5s, percentage: {numerator: 25, denominator: TEN_THOUSAND}}
abort: {grpc_status: 14, response_body: nope}
upstream_cluster: c
headers: [{name: x, present_match: true}]
downstream_nodes: [a, b]
max_active_faults: 3
response_rate_limit: {header_limit: {}, percentage: {numerator: 10}}
delay_percent_runtime: k.delay
abort_grpc_status_runtime: k.grpc
disable_downstream_cluster_stats: true
filter_metadata: {m: 1}
"#,
        )
        .unwrap();
        let d = s.delay.unwrap();
        assert_eq!(d.kind, DelayKind::Fixed(Duration::from_millis(1500)));
        assert_eq!(
            (d.percentage.numerator, d.percentage.denominator),
            (25, 10_000)
        );
        let a = s.abort.unwrap();
        assert_eq!((a.kind, &*a.body), (AbortKind::Grpc(14), "nope"));
        assert_eq!(
            a.percentage,
            Percent::hundred(0),
            "unset: never, unless the runtime says"
        );
        assert_eq!(s.upstream_cluster.as_deref(), Some("c"));
        assert_eq!((s.headers.len(), s.downstream_nodes.len()), (1, 2));
        assert_eq!(s.max_active_faults, Some(3));
        assert_eq!(s.response_rate_limit.unwrap().kind, RateKind::Header);
        assert_eq!(&*s.keys.delay_percent, "k.delay");
        assert_eq!(&*s.keys.abort_grpc_status, "k.grpc");
        assert_eq!(&*s.keys.abort_percent, ABORT_PERCENT_KEY);
        assert!(s.disable_downstream_cluster_stats);
        assert_eq!(s.filter_metadata.unwrap()["m"], 1.0);
    }

    #[test]
    fn invalid_values_are_refused_by_path() {
        let e = translate(
            r#"
delay: {fixed_delay: 0s}
abort: {http_status: 600}
response_rate_limit: {fixed_limit: {limit_kbps: 0}}
"#,
        )
        .unwrap_err();
        assert_eq!(
            e.paths(),
            [
                "fault.delay.fixed_delay",
                "fault.abort.http_status",
                "fault.response_rate_limit.fixed_limit.limit_kbps",
            ],
            "{e}"
        );
        let e = translate("abort: {percentage: {numerator: 1}}").unwrap_err();
        assert_eq!(e.paths(), ["fault.abort"], "{e}");
    }
}
