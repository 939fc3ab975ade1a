//! `envoy.config.route.v3.RetryPolicy` (on a route or a virtual host) → the router's retry
//! policy: the conditions (`retry_on`, also what `x-envoy-retry-on` and `x-envoy-retry-grpc-on`
//! may add), the budget of retries, per-try timeouts and the back-off.

use super::core::{decode_any, deny, opt_duration};
use super::matcher::{HeaderMatcher, deny_list};
use super::pb;
use crate::config::{FieldPath, Result};
use http::HeaderName;
use std::time::Duration;

/// Envoy's `upstream.base_retry_backoff_ms` default.
pub const DEFAULT_BASE_INTERVAL: Duration = Duration::from_millis(25);
/// `rate_limited_retry_back_off.max_interval`'s default.
pub const DEFAULT_MAX_RATE_LIMITED_INTERVAL: Duration = Duration::from_secs(300);

/// The `retry_on` conditions, as bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetryOn(pub u32);

impl RetryOn {
    pub const FIVE_XX: u32 = 1 << 0;
    pub const GATEWAY_ERROR: u32 = 1 << 1;
    pub const CONNECT_FAILURE: u32 = 1 << 2;
    pub const RETRIABLE_4XX: u32 = 1 << 3;
    pub const REFUSED_STREAM: u32 = 1 << 4;
    pub const RETRIABLE_STATUS_CODES: u32 = 1 << 5;
    pub const RETRIABLE_HEADERS: u32 = 1 << 6;
    pub const RESET: u32 = 1 << 7;
    pub const RESET_BEFORE_REQUEST: u32 = 1 << 8;
    pub const ENVOY_RATELIMITED: u32 = 1 << 9;
    pub const GRPC_CANCELLED: u32 = 1 << 10;
    pub const GRPC_DEADLINE_EXCEEDED: u32 = 1 << 11;
    pub const GRPC_INTERNAL: u32 = 1 << 12;
    pub const GRPC_RESOURCE_EXHAUSTED: u32 = 1 << 13;
    pub const GRPC_UNAVAILABLE: u32 = 1 << 14;
    pub const GRPC: u32 = Self::GRPC_CANCELLED
        | Self::GRPC_DEADLINE_EXCEEDED
        | Self::GRPC_INTERNAL
        | Self::GRPC_RESOURCE_EXHAUSTED
        | Self::GRPC_UNAVAILABLE;

    const HTTP_NAMES: [(&'static str, u32); 10] = [
        ("5xx", Self::FIVE_XX),
        ("gateway-error", Self::GATEWAY_ERROR),
        ("connect-failure", Self::CONNECT_FAILURE),
        ("retriable-4xx", Self::RETRIABLE_4XX),
        ("refused-stream", Self::REFUSED_STREAM),
        ("retriable-status-codes", Self::RETRIABLE_STATUS_CODES),
        ("retriable-headers", Self::RETRIABLE_HEADERS),
        ("reset", Self::RESET),
        ("reset-before-request", Self::RESET_BEFORE_REQUEST),
        ("envoy-ratelimited", Self::ENVOY_RATELIMITED),
    ];
    const GRPC_NAMES: [(&'static str, u32); 5] = [
        ("cancelled", Self::GRPC_CANCELLED),
        ("deadline-exceeded", Self::GRPC_DEADLINE_EXCEEDED),
        ("internal", Self::GRPC_INTERNAL),
        ("resource-exhausted", Self::GRPC_RESOURCE_EXHAUSTED),
        ("unavailable", Self::GRPC_UNAVAILABLE),
    ];

    #[inline]
    pub fn has(self, bits: u32) -> bool {
        self.0 & bits != 0
    }

    /// `x-envoy-retry-on`'s value: unknown names are skipped, as Envoy does for the header.
    pub fn parse_http_header(v: &str) -> u32 {
        parse(v, &Self::HTTP_NAMES).0
    }

    /// `x-envoy-retry-grpc-on`'s value.
    pub fn parse_grpc_header(v: &str) -> u32 {
        parse(v, &Self::GRPC_NAMES).0
    }

    /// The `retry_on` field: HTTP and gRPC names together; an unknown name is an error.
    fn from_config(path: &FieldPath, v: &str) -> Result<Self> {
        let mut bits = 0;
        for name in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (b, ok) = parse(name, &Self::HTTP_NAMES);
            let (g, gok) = parse(name, &Self::GRPC_NAMES);
            if !ok && !gok {
                return Err(path
                    .field("retry_on")
                    .error(format!("unknown retry condition '{name}'")));
            }
            bits |= b | g;
        }
        Ok(Self(bits))
    }
}

fn parse(v: &str, names: &[(&str, u32)]) -> (u32, bool) {
    let mut bits = 0;
    let mut all = true;
    for name in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match names.iter().find(|(n, _)| *n == name) {
            Some((_, b)) => bits |= b,
            None => all = false,
        }
    }
    (bits, all)
}

/// `rate_limited_retry_back_off.reset_headers[].format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetFormat {
    Seconds,
    UnixTimestamp,
}

#[derive(Debug, Clone)]
pub struct RateLimitedBackOff {
    pub reset_headers: Vec<(HeaderName, ResetFormat)>,
    pub max_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub retry_on: RetryOn,
    pub num_retries: u32,
    pub per_try_timeout: Option<Duration>,
    pub per_try_idle_timeout: Option<Duration>,
    /// `envoy.retry_host_predicates.previous_hosts`: avoid hosts already tried.
    pub previous_hosts: bool,
    pub host_selection_max_attempts: u32,
    pub retriable_status_codes: Vec<u16>,
    pub retriable_headers: Vec<HeaderMatcher>,
    pub retriable_request_headers: Vec<HeaderMatcher>,
    pub base_interval: Duration,
    pub max_interval: Duration,
    pub rate_limited: Option<RateLimitedBackOff>,
}

impl Default for RetryPolicy {
    /// What a route without a policy retries: nothing, unless `x-envoy-retry-on` asks.
    fn default() -> Self {
        Self {
            retry_on: RetryOn::default(),
            num_retries: 1,
            per_try_timeout: None,
            per_try_idle_timeout: None,
            previous_hosts: false,
            host_selection_max_attempts: 1,
            retriable_status_codes: Vec::new(),
            retriable_headers: Vec::new(),
            retriable_request_headers: Vec::new(),
            base_interval: DEFAULT_BASE_INTERVAL,
            max_interval: DEFAULT_BASE_INTERVAL * 10,
            rate_limited: None,
        }
    }
}

impl RetryPolicy {
    pub fn from_proto(path: &FieldPath, p: &pb::route::RetryPolicy) -> Result<Self> {
        use pb::route::retry_policy::retry_host_predicate::ConfigType;
        let pb::route::RetryPolicy {
            retry_on,
            num_retries,
            per_try_timeout,
            per_try_idle_timeout,
            retry_priority,
            retry_host_predicate,
            retry_options_predicates,
            host_selection_retry_max_attempts,
            retriable_status_codes,
            retry_back_off,
            rate_limited_retry_back_off,
            retriable_headers,
            retriable_request_headers,
            refresh_cluster_on_retry,
        } = p;
        deny(path, "retry_priority", retry_priority)?;
        deny_list(path, "retry_options_predicates", retry_options_predicates)?;
        deny(path, "refresh_cluster_on_retry", refresh_cluster_on_retry)?;
        let mut previous_hosts = false;
        for (i, pred) in retry_host_predicate.iter().enumerate() {
            let pp = path.field("retry_host_predicate").index(i);
            let pb::route::retry_policy::RetryHostPredicate { name, config_type } = pred;
            match config_type {
                Some(ConfigType::TypedConfig(any)) => {
                    let _: envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate =
                        decode_any(&pp.field("typed_config"), any).map_err(|_| {
                            pp.error(format!(
                                "{} is not supported (only envoy.retry_host_predicates.previous_hosts)",
                                super::core::any_type(any)
                            ))
                        })?;
                }
                None if name == "envoy.retry_host_predicates.previous_hosts" => {}
                None => {
                    return Err(pp.field("name").error(format!("{name} is not supported")));
                }
            }
            previous_hosts = true;
        }
        let mut codes = Vec::with_capacity(retriable_status_codes.len());
        for (i, c) in retriable_status_codes.iter().enumerate() {
            if !(100..=599).contains(c) {
                return Err(path
                    .field("retriable_status_codes")
                    .index(i)
                    .error("must be an HTTP status code"));
            }
            codes.push(*c as u16);
        }
        let matchers =
            |field: &str, v: &[pb::route::HeaderMatcher]| -> Result<Vec<HeaderMatcher>> {
                v.iter()
                    .enumerate()
                    .map(|(i, m)| HeaderMatcher::from_proto(&path.field(field).index(i), m))
                    .collect()
            };
        let (base_interval, max_interval) = match retry_back_off {
            None => (DEFAULT_BASE_INTERVAL, DEFAULT_BASE_INTERVAL * 10),
            Some(b) => {
                let bp = path.field("retry_back_off");
                let pb::route::retry_policy::RetryBackOff {
                    base_interval,
                    max_interval,
                } = b;
                let base = opt_duration(&bp, "base_interval", base_interval)?
                    .ok_or_else(|| bp.field("base_interval").error("is required"))?;
                if base < Duration::from_millis(1) {
                    return Err(bp.field("base_interval").error("must be at least 1ms"));
                }
                let max = opt_duration(&bp, "max_interval", max_interval)?.unwrap_or(base * 10);
                if max < base {
                    return Err(bp
                        .field("max_interval")
                        .error("must not be less than base_interval"));
                }
                (base, max)
            }
        };
        let rate_limited = match rate_limited_retry_back_off {
            None => None,
            Some(r) => {
                let rp = path.field("rate_limited_retry_back_off");
                let pb::route::retry_policy::RateLimitedRetryBackOff {
                    reset_headers,
                    max_interval,
                } = r;
                if reset_headers.is_empty() {
                    return Err(rp.field("reset_headers").error("must not be empty"));
                }
                let mut hs = Vec::with_capacity(reset_headers.len());
                for (i, h) in reset_headers.iter().enumerate() {
                    let hp = rp.field("reset_headers").index(i);
                    let pb::route::retry_policy::ResetHeader { name, format } = h;
                    let name = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
                        .map_err(|_| hp.field("name").error("invalid header name"))?;
                    use pb::route::retry_policy::ResetHeaderFormat as F;
                    let format =
                        match super::core::enum_value::<F>(&hp, "format", *format, |_| true)? {
                            F::Seconds => ResetFormat::Seconds,
                            F::UnixTimestamp => ResetFormat::UnixTimestamp,
                        };
                    hs.push((name, format));
                }
                let max = opt_duration(&rp, "max_interval", max_interval)?
                    .unwrap_or(DEFAULT_MAX_RATE_LIMITED_INTERVAL);
                if max < Duration::from_millis(1) {
                    return Err(rp.field("max_interval").error("must be at least 1ms"));
                }
                Some(RateLimitedBackOff {
                    reset_headers: hs,
                    max_interval: max,
                })
            }
        };
        Ok(Self {
            retry_on: RetryOn::from_config(path, retry_on)?,
            num_retries: num_retries.as_ref().map_or(1, |n| n.value),
            per_try_timeout: opt_duration(path, "per_try_timeout", per_try_timeout)?
                .filter(|d| !d.is_zero()),
            per_try_idle_timeout: opt_duration(path, "per_try_idle_timeout", per_try_idle_timeout)?
                .filter(|d| !d.is_zero()),
            previous_hosts,
            host_selection_max_attempts: u32::try_from(*host_selection_retry_max_attempts)
                .unwrap_or(if *host_selection_retry_max_attempts < 0 {
                    0
                } else {
                    u32::MAX
                })
                .max(1),
            retriable_status_codes: codes,
            retriable_headers: {
                // They match response headers: a request pseudo-header (or `host`) would compare
                // against nothing.
                let m = matchers("retriable_headers", retriable_headers)?;
                if let Some(i) = m
                    .iter()
                    .position(|m| !matches!(m.key, super::matcher::HeaderKey::Named(_)))
                {
                    return Err(path
                        .field("retriable_headers")
                        .index(i)
                        .field("name")
                        .error("must name a response header"));
                }
                m
            },
            retriable_request_headers: matchers(
                "retriable_request_headers",
                retriable_request_headers,
            )?,
            base_interval,
            max_interval,
            rate_limited,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> Result<RetryPolicy> {
        let path = FieldPath::new("route.retry_policy");
        let p = crate::config::decode_yaml("envoy.config.route.v3.RetryPolicy", yaml, &path);
        RetryPolicy::from_proto(&path, &p)
    }

    #[test]
    fn istio_policy() {
        let p = policy(
            "retry_on: gateway-error,connect-failure,refused-stream\nnum_retries: 3\nper_try_timeout: 10s\nretry_host_predicate: [{name: envoy.retry_host_predicates.previous_hosts, typed_config: {'@type': type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate}}]\nhost_selection_retry_max_attempts: 5",
        )
        .unwrap();
        assert!(p.retry_on.has(RetryOn::GATEWAY_ERROR));
        assert!(p.retry_on.has(RetryOn::CONNECT_FAILURE));
        assert!(p.retry_on.has(RetryOn::REFUSED_STREAM));
        assert!(!p.retry_on.has(RetryOn::FIVE_XX));
        assert_eq!(p.num_retries, 3);
        assert_eq!(p.per_try_timeout, Some(Duration::from_secs(10)));
        assert!(p.previous_hosts);
        assert_eq!(p.host_selection_max_attempts, 5);
        assert_eq!(p.max_interval, Duration::from_millis(250));
    }

    #[test]
    fn refusals_name_the_field() {
        let e = policy("retry_on: 5xx,bogus").unwrap_err();
        assert_eq!(
            e.to_string(),
            "route.retry_policy.retry_on: unknown retry condition 'bogus'"
        );
        let e = policy(
            "retry_on: 5xx\nretry_priority: {name: envoy.retry_priorities.previous_priorities}",
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "route.retry_policy.retry_priority: is not supported"
        );
        let e = policy("retry_on: 5xx\nretry_back_off: {base_interval: 1s, max_interval: 0.5s}")
            .unwrap_err();
        assert!(e.to_string().contains("retry_back_off.max_interval"), "{e}");
        let e = policy(
            "retry_on: retriable-headers\nretriable_headers: [{name: ':path', exact_match: /x}]",
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "route.retry_policy.retriable_headers[0].name: must name a response header"
        );
        let e = policy("retry_on: 5xx\nretry_host_predicate: [{name: envoy.retry_host_predicates.omit_canary_hosts}]")
            .unwrap_err();
        assert!(
            e.to_string().contains("retry_host_predicate[0].name"),
            "{e}"
        );
    }

    #[test]
    fn header_values() {
        assert_eq!(
            RetryOn::parse_http_header("5xx, reset,unknown"),
            RetryOn::FIVE_XX | RetryOn::RESET
        );
        assert_eq!(
            RetryOn::parse_grpc_header("unavailable,cancelled"),
            RetryOn::GRPC_UNAVAILABLE | RetryOn::GRPC_CANCELLED
        );
        let p = policy("retry_on: 5xx,unavailable").unwrap();
        assert!(p.retry_on.has(RetryOn::GRPC_UNAVAILABLE));
    }
}
