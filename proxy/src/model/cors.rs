//! `envoy.filters.http.cors`: the filter (`Cors`, no fields) and the policies it applies,
//! `envoy.extensions.filters.http.cors.v3.CorsPolicy` in `typed_per_filter_config` at any route
//! level, or the deprecated `cors` field of a route action or virtual host (read only when no
//! level has a per-filter policy), as Envoy's `source/extensions/filters/http/cors/`.

use super::core::{bool_or, decode_any};
use super::matcher::StringMatcher;
use super::pb;
use super::runtime::RuntimeFraction;
use crate::config::error::Errors;
use crate::config::{FieldPath, Result};

pub const CORS_TYPE: &str = "envoy.extensions.filters.http.cors.v3.Cors";
pub const CORS_POLICY_TYPE: &str = "envoy.extensions.filters.http.cors.v3.CorsPolicy";

/// The filter's own configuration: only the stats prefix it inherits from the connection manager.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cors;

impl Cors {
    pub fn from_any(path: &FieldPath, any: &pb::protobuf::Any) -> Result<Self> {
        let pb::cors::Cors {} = decode_any(path, any)?;
        Ok(Cors)
    }
}

/// A CORS policy. Each field is optional: the filter takes the first set one from the most
/// specific policy on.
#[derive(Debug, Clone, Default)]
pub struct CorsPolicy {
    pub allow_origins: Vec<StringMatcher>,
    pub allow_methods: String,
    pub allow_headers: String,
    pub expose_headers: String,
    /// `expose_headers` as the response header's value, built once (`None`: empty, or not a
    /// valid header value).
    pub expose_headers_value: Option<http::HeaderValue>,
    pub max_age: String,
    pub allow_credentials: Option<bool>,
    /// `None`: enabled (Envoy's default when `filter_enabled` is unset).
    pub filter_enabled: Option<RuntimeFraction>,
    /// `None`: no shadow mode.
    pub shadow_enabled: Option<RuntimeFraction>,
    pub allow_private_network_access: Option<bool>,
    pub forward_not_matching_preflights: Option<bool>,
}

impl CorsPolicy {
    /// Whether the policy applies to this request (a draw when `filter_enabled` is a fraction).
    pub fn enabled(
        &self,
        runtime: impl FnOnce() -> std::sync::Arc<super::runtime::Runtime>,
    ) -> bool {
        self.filter_enabled
            .as_ref()
            .is_none_or(|f| f.sample(runtime))
    }

    pub fn shadow_enabled(
        &self,
        runtime: impl FnOnce() -> std::sync::Arc<super::runtime::Runtime>,
    ) -> bool {
        self.shadow_enabled
            .as_ref()
            .is_some_and(|f| f.sample(runtime))
    }

    /// `envoy.extensions.filters.http.cors.v3.CorsPolicy` (per-route configuration).
    pub fn from_any(path: &FieldPath, any: &pb::protobuf::Any) -> Result<Self> {
        let pb::cors::CorsPolicy {
            allow_origin_string_match,
            allow_methods,
            allow_headers,
            expose_headers,
            max_age,
            allow_credentials,
            filter_enabled,
            shadow_enabled,
            allow_private_network_access,
            forward_not_matching_preflights,
        } = decode_any(path, any)?;
        Fields {
            allow_origin_string_match: &allow_origin_string_match,
            origins_field: "allow_origin_string_match",
            allow_methods,
            allow_headers,
            expose_headers,
            max_age,
            allow_credentials,
            filter_enabled,
            shadow_enabled,
            allow_private_network_access,
            forward_not_matching_preflights,
        }
        .translate(path)
    }

    /// The deprecated `config.route.v3.CorsPolicy` of a route action or virtual host.
    pub fn from_route_proto(path: &FieldPath, c: &pb::route::CorsPolicy) -> Result<Self> {
        use pb::route::cors_policy::EnabledSpecifier;
        let pb::route::CorsPolicy {
            allow_origin_string_match,
            allow_methods,
            allow_headers,
            expose_headers,
            max_age,
            allow_credentials,
            shadow_enabled,
            allow_private_network_access,
            forward_not_matching_preflights,
            enabled_specifier,
        } = c;
        let filter_enabled = enabled_specifier
            .as_ref()
            .map(|EnabledSpecifier::FilterEnabled(f)| f.clone());
        Fields {
            allow_origin_string_match,
            origins_field: "allow_origin_string_match",
            allow_methods: allow_methods.clone(),
            allow_headers: allow_headers.clone(),
            expose_headers: expose_headers.clone(),
            max_age: max_age.clone(),
            allow_credentials: *allow_credentials,
            filter_enabled,
            shadow_enabled: shadow_enabled.clone(),
            allow_private_network_access: *allow_private_network_access,
            forward_not_matching_preflights: *forward_not_matching_preflights,
        }
        .translate(path)
    }
}

/// The fields both protos share.
struct Fields<'a> {
    allow_origin_string_match: &'a [pb::matcher::StringMatcher],
    origins_field: &'static str,
    allow_methods: String,
    allow_headers: String,
    expose_headers: String,
    max_age: String,
    allow_credentials: Option<pb::protobuf::BoolValue>,
    filter_enabled: Option<pb::core::RuntimeFractionalPercent>,
    shadow_enabled: Option<pb::core::RuntimeFractionalPercent>,
    allow_private_network_access: Option<pb::protobuf::BoolValue>,
    forward_not_matching_preflights: Option<pb::protobuf::BoolValue>,
}

impl Fields<'_> {
    fn translate(self, path: &FieldPath) -> Result<CorsPolicy> {
        let mut errs = Errors::new();
        let allow_origins = self
            .allow_origin_string_match
            .iter()
            .enumerate()
            .filter_map(|(i, m)| {
                errs.take(StringMatcher::from_proto(
                    &path.field(self.origins_field).index(i),
                    m,
                ))
            })
            .collect();
        let fraction = |field: &str, f: &Option<pb::core::RuntimeFractionalPercent>| {
            f.as_ref()
                .map(|f| RuntimeFraction::from_proto(&path.field(field), f))
                .transpose()
        };
        let filter_enabled = errs.or_default(fraction("filter_enabled", &self.filter_enabled));
        let shadow_enabled = errs.or_default(fraction("shadow_enabled", &self.shadow_enabled));
        let opt = |b: &Option<pb::protobuf::BoolValue>| b.as_ref().map(|_| bool_or(b, false));
        let expose_headers_value = http::HeaderValue::from_str(&self.expose_headers)
            .ok()
            .filter(|_| !self.expose_headers.is_empty());
        errs.finish_with(CorsPolicy {
            allow_origins,
            allow_methods: self.allow_methods,
            allow_headers: self.allow_headers,
            expose_headers: self.expose_headers,
            expose_headers_value,
            max_age: self.max_age,
            allow_credentials: opt(&self.allow_credentials),
            filter_enabled,
            shadow_enabled,
            allow_private_network_access: opt(&self.allow_private_network_access),
            forward_not_matching_preflights: opt(&self.forward_not_matching_preflights),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn a_per_route_policy_translates_and_bad_matchers_are_refused_by_path() {
        let path = FieldPath::new("p");
        let c: pb::cors::CorsPolicy = crate::config::decode_yaml(
            CORS_POLICY_TYPE,
            "allow_origin_string_match: [{exact: 'https://a.example'}, {suffix: '.b.example'}]
allow_methods: GET, POST
allow_headers: x-a
expose_headers: x-b
max_age: '600'
allow_credentials: true
filter_enabled: {default_value: {numerator: 0, denominator: HUNDRED}}",
            &path,
        );
        let any = pb::protobuf::Any {
            type_url: format!("type.googleapis.com/{CORS_POLICY_TYPE}"),
            value: c.encode_to_vec(),
        };
        let p = CorsPolicy::from_any(&path, &any).unwrap();
        assert_eq!(p.allow_origins.len(), 2);
        assert!(p.allow_origins[1].matches("x.b.example"));
        assert_eq!(p.allow_credentials, Some(true));
        assert_eq!(p.forward_not_matching_preflights, None);
        let none = || -> std::sync::Arc<super::super::runtime::Runtime> {
            unreachable!("no runtime key to read")
        };
        assert!(!p.enabled(none) && !p.shadow_enabled(none));

        let bad = pb::route::CorsPolicy {
            allow_origin_string_match: vec![pb::matcher::StringMatcher::default()],
            ..Default::default()
        };
        let err = CorsPolicy::from_route_proto(&path, &bad).unwrap_err();
        assert_eq!(err.paths(), vec!["p.allow_origin_string_match[0]"], "{err}");
        assert!(
            CorsPolicy::from_route_proto(&path, &pb::route::CorsPolicy::default())
                .unwrap()
                .enabled(none)
        );
    }
}
