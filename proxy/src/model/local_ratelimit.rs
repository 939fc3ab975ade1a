//! `envoy.filters.http.local_ratelimit` (filter and per-route `LocalRateLimit`),
//! `envoy.filters.network.local_ratelimit`, and the route / virtual-host `rate_limits` actions
//! whose descriptors the HTTP filter matches against its own `descriptors`
//! (Envoy's `source/extensions/filters/http/local_ratelimit/`,
//! `source/common/router/router_ratelimit.cc`).

use std::any::Any;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::StatusCode;

use super::core::{bool_or, decode_any, deny, u32_or};
use super::headers::HeaderMutations;
use super::inputs::Inputs;
use super::matcher::{HeaderKey, HeaderMatcher};
use super::pb;
use super::runtime::{RuntimeFlag, RuntimeFraction};
use crate::config::error::Errors;
use crate::config::{FieldPath, Result};

pub const HTTP_TYPE: &str = "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit";
pub const NETWORK_TYPE: &str = "envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit";

/// `envoy.type.v3.TokenBucket`: `max_tokens` to start with and at most, `tokens_per_fill` added
/// every `fill_interval` (continuously, as Envoy's atomic token bucket does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBucket {
    pub max_tokens: u32,
    pub tokens_per_fill: u32,
    pub fill_interval: Duration,
}

impl TokenBucket {
    /// `what` names the bucket in Envoy's error ("token bucket", "descriptor token bucket").
    fn from_proto(path: &FieldPath, tb: &pb::types::TokenBucket, what: &str) -> Result<Self> {
        let pb::types::TokenBucket {
            max_tokens,
            tokens_per_fill,
            fill_interval,
        } = tb;
        if tokens_per_fill.as_ref().is_some_and(|t| t.value == 0) {
            return Err(path
                .field("tokens_per_fill")
                .error("must be greater than 0"));
        }
        let fill_interval = match fill_interval.as_ref().and_then(super::core::duration) {
            Some(d) if !d.is_zero() => d,
            Some(_) => return Err(path.field("fill_interval").error("must be greater than 0")),
            None => return Err(path.field("fill_interval").error("is required")),
        };
        // Envoy skips the check for an always-denying bucket (max_tokens 0).
        if *max_tokens != 0 && fill_interval < Duration::from_millis(50) {
            return Err(path.field("fill_interval").error(format!(
                "local rate limit {what} fill timer must be >= 50ms"
            )));
        }
        Ok(Self {
            max_tokens: *max_tokens,
            tokens_per_fill: u32_or(tokens_per_fill, 1),
            fill_interval,
        })
    }

    /// Tokens added per second.
    pub fn fill_rate(&self) -> f64 {
        f64::from(self.tokens_per_fill) / self.fill_interval.as_secs_f64()
    }
}

/// One of the filter's `descriptors`: the entries a request descriptor must equal, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalDescriptor {
    pub entries: Vec<(String, String)>,
    pub token_bucket: TokenBucket,
}

/// `vh_rate_limits`: whether the virtual host's `rate_limits` add to the route's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VhRateLimits {
    /// The virtual host's only when the route has none.
    Override,
    Include,
    Ignore,
}

/// Runtime state a per-route configuration owns (its token buckets and stats), made by the
/// filter the first time the configuration is used and kept as long as the route table. Opaque
/// here: the model does not know the runtime's types.
#[derive(Clone, Default)]
pub struct RuntimeSlot(Arc<OnceLock<Arc<dyn Any + Send + Sync>>>);

impl RuntimeSlot {
    pub fn get_or_init(
        &self,
        init: impl FnOnce() -> Arc<dyn Any + Send + Sync>,
    ) -> &Arc<dyn Any + Send + Sync> {
        self.0.get_or_init(init)
    }
}

impl std::fmt::Debug for RuntimeSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "RuntimeSlot(set)"
        } else {
            "RuntimeSlot(unset)"
        })
    }
}

/// `envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit`, in the chain or per route.
#[derive(Debug, Clone)]
pub struct LocalRateLimit {
    pub stat_prefix: String,
    /// The local reply's status (429 unless `status` is at least 400).
    pub status: StatusCode,
    /// `None`: no default bucket (only descriptors limit).
    pub token_bucket: Option<TokenBucket>,
    /// `None`: the filter is off (Envoy's default of 0%).
    pub filter_enabled: Option<RuntimeFraction>,
    pub filter_enforced: Option<RuntimeFraction>,
    pub request_headers_when_not_enforced: HeaderMutations,
    pub response_headers: HeaderMutations,
    pub descriptors: Vec<LocalDescriptor>,
    pub stage: u32,
    /// `enable_x_ratelimit_headers: DRAFT_VERSION_03`.
    pub x_ratelimit_headers: bool,
    pub vh_rate_limits: VhRateLimits,
    pub always_consume_default_token_bucket: bool,
    pub enable_retry_after_header: bool,
    /// The buckets and stats of this configuration (one set per filter or per route entry).
    pub state: RuntimeSlot,
}

impl LocalRateLimit {
    /// `per_route`: Envoy requires a token bucket in a route's configuration.
    pub fn from_proto(
        path: &FieldPath,
        c: &pb::local_ratelimit::LocalRateLimit,
        per_route: bool,
        inputs: &Inputs,
    ) -> Result<Self> {
        let pb::local_ratelimit::LocalRateLimit {
            stat_prefix,
            status,
            token_bucket,
            filter_enabled,
            filter_enforced,
            request_headers_to_add_when_not_enforced,
            response_headers_to_add,
            descriptors,
            stage,
            local_rate_limit_per_downstream_connection,
            local_cluster_rate_limit,
            enable_x_ratelimit_headers,
            vh_rate_limits,
            always_consume_default_token_bucket,
            rate_limited_as_resource_exhausted,
            rate_limits,
            max_dynamic_descriptors,
            enable_retry_after_header,
        } = c;
        let mut errs = Errors::new();
        if stat_prefix.is_empty() {
            errs.push(path.field("stat_prefix").error("must not be empty"));
        }
        let status = status_code(path, status);
        let token_bucket = match token_bucket {
            Some(tb) => errs.take(TokenBucket::from_proto(
                &path.field("token_bucket"),
                tb,
                "token bucket",
            )),
            None if per_route => {
                errs.push(
                    path.field("token_bucket")
                        .error("local rate limit token bucket must be set for per filter configs"),
                );
                None
            }
            None => None,
        };
        let fraction = |field: &str, f: &Option<pb::core::RuntimeFractionalPercent>| {
            f.as_ref()
                .map(|f| RuntimeFraction::from_proto(&path.field(field), f))
                .transpose()
        };
        let filter_enabled = errs.or_default(fraction("filter_enabled", filter_enabled));
        let filter_enforced = errs.or_default(fraction("filter_enforced", filter_enforced));
        if request_headers_to_add_when_not_enforced.len() > 10 {
            errs.push(
                path.field("request_headers_to_add_when_not_enforced")
                    .error("at most 10 headers"),
            );
        }
        if response_headers_to_add.len() > 10 {
            errs.push(
                path.field("response_headers_to_add")
                    .error("at most 10 headers"),
            );
        }
        let request_headers_when_not_enforced = errs.or_default(HeaderMutations::from_proto_in(
            path,
            (
                "request_headers_to_add_when_not_enforced",
                request_headers_to_add_when_not_enforced,
            ),
            ("", &[]),
            inputs,
        ));
        let response_headers = errs.or_default(HeaderMutations::response(
            path,
            response_headers_to_add,
            &[],
            inputs,
        ));
        let descriptors = errs.or_default(local_descriptors(path, descriptors));
        if *stage > 10 {
            errs.push(path.field("stage").error("must be at most 10"));
        }
        // A per-connection bucket needs state that lives with the connection, which remora's
        // streams do not share yet.
        errs.check([
            deny(
                path,
                "local_rate_limit_per_downstream_connection",
                local_rate_limit_per_downstream_connection,
            ),
            deny(path, "local_cluster_rate_limit", local_cluster_rate_limit),
            deny(path, "rate_limits", rate_limits),
            // remora's local replies have no gRPC form (grpc-status) to carry it.
            deny(
                path,
                "rate_limited_as_resource_exhausted",
                rate_limited_as_resource_exhausted,
            ),
        ]);
        if max_dynamic_descriptors
            .as_ref()
            .is_some_and(|m| m.value == 0)
        {
            errs.push(
                path.field("max_dynamic_descriptors")
                    .error("must be at least 1"),
            );
        }
        let x_ratelimit_headers = match enable_x_ratelimit_headers {
            0 => false,
            1 => true,
            v => {
                errs.push(
                    path.field("enable_x_ratelimit_headers")
                        .error(format!("unknown enum value {v}")),
                );
                false
            }
        };
        let vh_rate_limits = match vh_rate_limits {
            0 => VhRateLimits::Override,
            1 => VhRateLimits::Include,
            2 => VhRateLimits::Ignore,
            v => {
                errs.push(
                    path.field("vh_rate_limits")
                        .error(format!("unknown enum value {v}")),
                );
                VhRateLimits::Override
            }
        };
        errs.finish()?;
        Ok(Self {
            stat_prefix: stat_prefix.clone(),
            status,
            token_bucket,
            filter_enabled,
            filter_enforced,
            request_headers_when_not_enforced,
            response_headers,
            descriptors,
            stage: *stage,
            x_ratelimit_headers,
            vh_rate_limits,
            always_consume_default_token_bucket: bool_or(always_consume_default_token_bucket, true),
            enable_retry_after_header: *enable_retry_after_header,
            state: RuntimeSlot::default(),
        })
    }

    /// Translate the filter's `typed_config`.
    pub fn from_any(
        path: &FieldPath,
        any: &pb::protobuf::Any,
        per_route: bool,
        inputs: &Inputs,
    ) -> Result<Self> {
        Self::from_proto(path, &decode_any(path, any)?, per_route, inputs)
    }
}

/// Envoy's `toErrorCode`: a status below 400 (or none) is 429.
fn status_code(_path: &FieldPath, s: &Option<pb::types::HttpStatus>) -> StatusCode {
    s.as_ref()
        .and_then(|s| u16::try_from(s.code).ok())
        .filter(|c| *c >= 400)
        .and_then(|c| StatusCode::from_u16(c).ok())
        .unwrap_or(StatusCode::TOO_MANY_REQUESTS)
}

fn local_descriptors(
    path: &FieldPath,
    ds: &[pb::common_ratelimit::LocalRateLimitDescriptor],
) -> Result<Vec<LocalDescriptor>> {
    let mut out: Vec<LocalDescriptor> = Vec::with_capacity(ds.len());
    for (i, d) in ds.iter().enumerate() {
        let dp = path.field("descriptors").index(i);
        let pb::common_ratelimit::LocalRateLimitDescriptor {
            entries,
            token_bucket,
            shadow_mode,
        } = d;
        deny(&dp, "shadow_mode", shadow_mode)?;
        if entries.is_empty() {
            return Err(dp.field("entries").error("at least one entry is required"));
        }
        let mut es = Vec::with_capacity(entries.len());
        for (j, e) in entries.iter().enumerate() {
            let ep = dp.field("entries").index(j);
            let pb::common_ratelimit::rate_limit_descriptor::Entry { key, value } = e;
            if key.is_empty() {
                return Err(ep.field("key").error("must not be empty"));
            }
            // An empty value is a wildcard: Envoy keeps a bucket per value seen (an LRU of
            // `max_dynamic_descriptors`), which remora does not build.
            if value.is_empty() {
                return Err(ep
                    .field("value")
                    .error("wildcard descriptor entries (an empty value) are not supported"));
            }
            es.push((key.clone(), value.clone()));
        }
        let Some(tb) = token_bucket else {
            return Err(dp.field("token_bucket").error("is required"));
        };
        let token_bucket =
            TokenBucket::from_proto(&dp.field("token_bucket"), tb, "descriptor token bucket")?;
        if out.iter().any(|o| o.entries == es) {
            let text = es
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(dp.error(format!(
                "duplicate descriptor in the local rate descriptor: {text}"
            )));
        }
        out.push(LocalDescriptor {
            entries: es,
            token_bucket,
        });
    }
    Ok(out)
}

/// `envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit`: a token bucket per
/// filter chain; a connection that finds it empty is closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkLocalRateLimit {
    pub stat_prefix: String,
    pub token_bucket: TokenBucket,
    /// `runtime_enabled`: the runtime's boolean for its key, else its default.
    pub enabled: RuntimeFlag,
}

impl NetworkLocalRateLimit {
    pub fn from_any(path: &FieldPath, any: &pb::protobuf::Any) -> Result<Self> {
        let pb::network_local_ratelimit::LocalRateLimit {
            stat_prefix,
            token_bucket,
            runtime_enabled,
            share_key,
        } = decode_any(path, any)?;
        if stat_prefix.is_empty() {
            return Err(path.field("stat_prefix").error("must not be empty"));
        }
        let Some(tb) = token_bucket else {
            return Err(path.field("token_bucket").error("is required"));
        };
        let token_bucket =
            TokenBucket::from_proto(&path.field("token_bucket"), &tb, "token bucket")?;
        // Buckets shared between chains by key need a registry across listeners.
        deny(path, "share_key", &share_key)?;
        let enabled = RuntimeFlag::from_proto(&runtime_enabled);
        Ok(Self {
            stat_prefix,
            token_bucket,
            enabled,
        })
    }
}

/// One entry of a route's or virtual host's `rate_limits`: the actions that together make one
/// request descriptor (all of them must produce their entry, or there is no descriptor).
#[derive(Debug, Clone)]
pub struct RateLimitPolicy {
    pub stage: u32,
    /// `disable_key` is set: the local rate limiter skips the entry.
    pub has_disable_key: bool,
    pub actions: Vec<RateLimitAction>,
}

#[derive(Debug, Clone)]
pub enum RateLimitAction {
    /// `("source_cluster", <the node's cluster>)`.
    SourceCluster,
    /// `("destination_cluster", <the route's cluster>)`.
    DestinationCluster,
    /// `(descriptor_key, <the header's value>)`.
    RequestHeader {
        header: HeaderKey,
        key: String,
        skip_if_absent: bool,
    },
    /// `("remote_address", <the downstream address after XFF>)`.
    RemoteAddress,
    /// `("masked_remote_address", <address/len>)`.
    MaskedRemoteAddress {
        v4: u8,
        v6: u8,
    },
    GenericKey {
        key: String,
        value: String,
    },
    HeaderValueMatch {
        key: String,
        value: String,
        default_value: Option<String>,
        expect_match: bool,
        headers: Vec<HeaderMatcher>,
    },
}

impl RateLimitPolicy {
    /// A `rate_limits` list (`field` of `path`).
    pub fn list(path: &FieldPath, field: &str, rls: &[pb::route::RateLimit]) -> Result<Vec<Self>> {
        crate::config::error::all(
            rls.iter()
                .enumerate()
                .map(|(i, r)| Self::from_proto(&path.field(field).index(i), r)),
        )
    }

    fn from_proto(path: &FieldPath, r: &pb::route::RateLimit) -> Result<Self> {
        let pb::route::RateLimit {
            stage,
            disable_key,
            actions,
            limit,
            hits_addend,
            apply_on_stream_done,
            x_ratelimit_option,
        } = r;
        deny(path, "limit", limit)?;
        deny(path, "hits_addend", hits_addend)?;
        deny(path, "apply_on_stream_done", apply_on_stream_done)?;
        deny(path, "x_ratelimit_option", x_ratelimit_option)?;
        let stage = u32_or(stage, 0);
        if stage > 10 {
            return Err(path.field("stage").error("must be at most 10"));
        }
        if actions.is_empty() {
            return Err(path
                .field("actions")
                .error("at least one action is required"));
        }
        let actions = crate::config::error::all(
            actions
                .iter()
                .enumerate()
                .map(|(i, a)| action(&path.field("actions").index(i), a)),
        )?;
        Ok(Self {
            stage,
            has_disable_key: !disable_key.is_empty(),
            actions,
        })
    }
}

fn action(path: &FieldPath, a: &pb::route::rate_limit::Action) -> Result<RateLimitAction> {
    use pb::route::rate_limit::action::ActionSpecifier as A;
    let non_empty = |field: &str, v: &str| {
        if v.is_empty() {
            Err(path.field(field).error("must not be empty"))
        } else {
            Ok(())
        }
    };
    Ok(match &a.action_specifier {
        Some(A::SourceCluster(_)) => RateLimitAction::SourceCluster,
        Some(A::DestinationCluster(_)) => RateLimitAction::DestinationCluster,
        Some(A::RequestHeaders(h)) => {
            let p = path.field("request_headers");
            let pb::route::rate_limit::action::RequestHeaders {
                header_name,
                descriptor_key,
                skip_if_absent,
            } = h;
            non_empty("request_headers.header_name", header_name)?;
            non_empty("request_headers.descriptor_key", descriptor_key)?;
            RateLimitAction::RequestHeader {
                header: HeaderKey::parse(&p.field("header_name"), header_name)?,
                key: descriptor_key.clone(),
                skip_if_absent: *skip_if_absent,
            }
        }
        Some(A::RemoteAddress(_)) => RateLimitAction::RemoteAddress,
        Some(A::MaskedRemoteAddress(m)) => {
            let pb::route::rate_limit::action::MaskedRemoteAddress {
                v4_prefix_mask_len,
                v6_prefix_mask_len,
            } = m;
            let p = path.field("masked_remote_address");
            let v4 = u32_or(v4_prefix_mask_len, 32);
            let v6 = u32_or(v6_prefix_mask_len, 128);
            if v4 > 32 {
                return Err(p.field("v4_prefix_mask_len").error("must be at most 32"));
            }
            if v6 > 128 {
                return Err(p.field("v6_prefix_mask_len").error("must be at most 128"));
            }
            RateLimitAction::MaskedRemoteAddress {
                v4: v4 as u8,
                v6: v6 as u8,
            }
        }
        Some(A::GenericKey(g)) => {
            let pb::route::rate_limit::action::GenericKey {
                descriptor_value,
                default_value: _,
                descriptor_key,
            } = g;
            // `default_value` stands in for an empty `descriptor_value`, which is invalid.
            non_empty("generic_key.descriptor_value", descriptor_value)?;
            RateLimitAction::GenericKey {
                key: or_default_key(descriptor_key, "generic_key"),
                value: descriptor_value.clone(),
            }
        }
        Some(A::HeaderValueMatch(h)) => {
            let p = path.field("header_value_match");
            let pb::route::rate_limit::action::HeaderValueMatch {
                descriptor_value,
                default_value,
                descriptor_key,
                expect_match,
                headers,
            } = h;
            non_empty("header_value_match.descriptor_value", descriptor_value)?;
            if headers.is_empty() {
                return Err(p.field("headers").error("at least one header is required"));
            }
            let headers = crate::config::error::all(
                headers
                    .iter()
                    .enumerate()
                    .map(|(i, m)| HeaderMatcher::from_proto(&p.field("headers").index(i), m)),
            )?;
            RateLimitAction::HeaderValueMatch {
                key: or_default_key(descriptor_key, "header_match"),
                value: descriptor_value.clone(),
                default_value: (!default_value.is_empty()).then(|| default_value.clone()),
                expect_match: bool_or(expect_match, true),
                headers,
            }
        }
        Some(A::QueryParameters(_)) => return Err(path.unsupported("query_parameters")),
        Some(A::DynamicMetadata(_)) => return Err(path.unsupported("dynamic_metadata")),
        Some(A::Metadata(_)) => return Err(path.unsupported("metadata")),
        Some(A::Extension(_)) => return Err(path.unsupported("extension")),
        Some(A::QueryParameterValueMatch(_)) => {
            return Err(path.unsupported("query_parameter_value_match"));
        }
        Some(A::RemoteAddressMatch(_)) => return Err(path.unsupported("remote_address_match")),
        None => return Err(path.error("a rate limit action is required")),
    })
}

fn or_default_key(key: &str, default: &str) -> String {
    if key.is_empty() { default } else { key }.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn translate(yaml: &str, per_route: bool) -> Result<LocalRateLimit> {
        let path = FieldPath::new("f");
        let c: pb::local_ratelimit::LocalRateLimit =
            crate::config::decode_yaml(HTTP_TYPE, yaml, &path);
        LocalRateLimit::from_proto(&path, &c, per_route, &Inputs::none())
    }

    #[test]
    fn the_example_filter_translates() {
        let c = translate(
            "stat_prefix: http_local_rate_limiter
token_bucket: {max_tokens: 2, tokens_per_fill: 2, fill_interval: 5s}
filter_enabled: {runtime_key: e, default_value: {numerator: 100, denominator: HUNDRED}}
filter_enforced: {runtime_key: f, default_value: {numerator: 50, denominator: HUNDRED}}
response_headers_to_add: [{append_action: OVERWRITE_IF_EXISTS_OR_ADD, header: {key: x-local-rate-limit, value: 'true'}}]
local_rate_limit_per_downstream_connection: false",
            false,
        )
        .unwrap();
        assert_eq!(c.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            c.token_bucket,
            Some(TokenBucket {
                max_tokens: 2,
                tokens_per_fill: 2,
                fill_interval: Duration::from_secs(5)
            })
        );
        assert_eq!(
            c.filter_enabled,
            Some(RuntimeFraction {
                runtime_key: Some("e".into()),
                ..RuntimeFraction::ALWAYS
            })
        );
        assert_eq!(
            c.filter_enforced.unwrap().default,
            super::super::runtime::Percent {
                numerator: 50,
                denominator: 100
            }
        );
        assert_eq!(c.response_headers.add.len(), 1);
        assert!(c.always_consume_default_token_bucket);
    }

    #[test]
    fn unsupported_and_invalid_fields_are_refused_by_path() {
        let err = translate(
            "stat_prefix: s
token_bucket: {max_tokens: 2, fill_interval: 0.01s}
local_rate_limit_per_downstream_connection: true
local_cluster_rate_limit: {}
descriptors: [{entries: [{key: k}], token_bucket: {max_tokens: 1, fill_interval: 1s}}]",
            false,
        )
        .unwrap_err();
        assert_eq!(
            err.paths(),
            vec![
                "f.token_bucket.fill_interval",
                "f.descriptors[0].entries[0].value",
                "f.local_rate_limit_per_downstream_connection",
                "f.local_cluster_rate_limit",
            ],
            "{err}"
        );
        let err = translate("stat_prefix: s", true).unwrap_err();
        assert_eq!(err.paths(), vec!["f.token_bucket"], "{err}");
    }

    #[test]
    fn route_actions_translate_and_the_others_are_refused_by_path() {
        let path = FieldPath::new("r");
        let rl: pb::route::RateLimit = crate::config::decode_yaml(
            "envoy.config.route.v3.RateLimit",
            "{stage: 2, disable_key: k, actions: [{generic_key: {descriptor_value: v}}, {masked_remote_address: {v4_prefix_mask_len: 24}}, {header_value_match: {descriptor_value: m, headers: [{name: x-a, present_match: true}]}}]}",
            &path,
        );
        let p = RateLimitPolicy::list(&path, "rate_limits", &[rl]).unwrap();
        assert_eq!((p[0].stage, p[0].has_disable_key), (2, true));
        assert!(
            matches!(&p[0].actions[0], RateLimitAction::GenericKey { key, value } if key == "generic_key" && value == "v")
        );
        assert!(matches!(
            p[0].actions[1],
            RateLimitAction::MaskedRemoteAddress { v4: 24, v6: 128 }
        ));
        assert!(
            matches!(&p[0].actions[2], RateLimitAction::HeaderValueMatch { key, expect_match: true, .. } if key == "header_match")
        );
        let bad: pb::route::RateLimit = crate::config::decode_yaml(
            "envoy.config.route.v3.RateLimit",
            "{actions: [{remote_address: {}}, {query_parameters: {query_parameter_name: q, descriptor_key: k}}], hits_addend: {number: 2}}",
            &path,
        );
        let err = RateLimitPolicy::list(&path, "rate_limits", &[bad]).unwrap_err();
        assert_eq!(err.paths(), vec!["r.rate_limits[0].hits_addend"], "{err}");
        let bad: pb::route::RateLimit = crate::config::decode_yaml(
            "envoy.config.route.v3.RateLimit",
            "{actions: [{remote_address: {}}, {query_parameters: {query_parameter_name: q, descriptor_key: k}}]}",
            &path,
        );
        let err = RateLimitPolicy::list(&path, "rate_limits", &[bad]).unwrap_err();
        assert_eq!(
            err.paths(),
            vec!["r.rate_limits[0].actions[1].query_parameters"],
            "{err}"
        );
    }

    #[test]
    fn status_below_400_is_429() {
        let c = translate(
            "{stat_prefix: s, status: {code: OK}, token_bucket: {max_tokens: 1, fill_interval: 1s}}",
            false,
        )
        .unwrap();
        assert_eq!(c.status, StatusCode::TOO_MANY_REQUESTS);
        let c = translate(
            "{stat_prefix: s, status: {code: ServiceUnavailable}, token_bucket: {max_tokens: 1, fill_interval: 1s}}",
            false,
        )
        .unwrap();
        assert_eq!(c.status, StatusCode::SERVICE_UNAVAILABLE);
    }
}
