//! `typed_per_filter_config` on route configurations, virtual hosts, routes and weighted
//! clusters: per-route configuration of the HTTP filters, keyed by the filter's name in the
//! chain (`HttpFilter.name`). The most specific level wins (weighted cluster, route, virtual
//! host, route configuration), as in Envoy's `mostSpecificPerFilterConfig`.
//!
//! A value is a filter's own per-route message, or `envoy.config.route.v3.FilterConfig`
//! wrapping one (with `disabled` and `is_optional`). Each filter that takes per-route
//! configuration adds its variant to [`PerFilterConfig`] and its arm to [`translate_config`].

use std::sync::Arc;

use super::core::{any_type, decode_any};
use super::pb;
use crate::config::error::{Errors, FieldPath, Result};

/// `envoy.config.route.v3.FilterConfig`.
pub const FILTER_CONFIG_TYPE: &str = "envoy.config.route.v3.FilterConfig";

/// One level's `typed_per_filter_config`, by filter name (few entries: a linear search).
#[derive(Debug, Default, Clone)]
pub struct PerFilterConfigs(Vec<(Box<str>, PerFilter)>);

/// One filter's entry at one level.
#[derive(Debug, Clone)]
pub struct PerFilter {
    /// `FilterConfig.disabled`: the filter does not run on this route (a filter disabled in
    /// the chain runs where an entry here has `disabled: false`).
    pub disabled: bool,
    /// The filter's per-route configuration; `None` for a bare `FilterConfig` (only
    /// `disabled`) or an optional entry of a type remora does not know.
    pub config: Option<PerFilterConfig>,
}

/// The per-route configurations remora understands, one variant per filter.
#[derive(Debug, Clone)]
pub enum PerFilterConfig {
    /// `envoy.extensions.filters.http.fault.v3.HTTPFault`: replaces the filter's settings.
    Fault(Arc<super::fault::FaultSettings>),
    /// `envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit` (its own bucket).
    LocalRateLimit(Arc<super::local_ratelimit::LocalRateLimit>),
    /// `envoy.extensions.filters.http.cors.v3.CorsPolicy`.
    Cors(Arc<super::cors::CorsPolicy>),
    /// `envoy.extensions.filters.http.rbac.v3.RBACPerRoute`.
    Rbac(Arc<super::rbac::HttpRbac>),
}

impl PerFilterConfigs {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn get(&self, filter_name: &str) -> Option<&PerFilter> {
        self.0
            .iter()
            .find(|(n, _)| &**n == filter_name)
            .map(|(_, f)| f)
    }

    /// Translate one level's map. `path` is the `typed_per_filter_config` field; every entry's
    /// error is reported.
    pub fn from_proto(
        path: &FieldPath,
        map: &std::collections::HashMap<String, pb::protobuf::Any>,
    ) -> Result<Self> {
        let mut errs = Errors::new();
        // Sorted so that the errors (and a dump) come in a stable order.
        let mut names: Vec<&String> = map.keys().collect();
        names.sort();
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let p = path.key(name);
            if let Some(f) = errs.take(per_filter(&p, &map[name])) {
                out.push((name.as_str().into(), f));
            }
        }
        errs.finish()?;
        Ok(Self(out))
    }
}

fn per_filter(path: &FieldPath, any: &pb::protobuf::Any) -> Result<PerFilter> {
    if any_type(any) != FILTER_CONFIG_TYPE {
        return Ok(PerFilter {
            disabled: false,
            config: Some(translate_config(path, any)?),
        });
    }
    let pb::route::FilterConfig {
        config,
        is_optional,
        disabled,
    } = decode_any::<pb::route::FilterConfig>(path, any)?;
    let config = match config {
        None => None,
        Some(inner) => {
            let p = path.field("config");
            match translate_config(&p, &inner) {
                Ok(c) => Some(c),
                // Envoy skips an optional per-route config whose type has no factory.
                Err(_) if is_optional && !known_type(any_type(&inner)) => None,
                Err(e) => return Err(e),
            }
        }
    };
    Ok(PerFilter { disabled, config })
}

/// Whether a per-route type has a translation here.
fn known_type(type_name: &str) -> bool {
    // Each filter's per-route type is added here with its arm in `translate_config`.
    let known: &[&str] = &[
        super::fault::FAULT_TYPE,
        super::local_ratelimit::HTTP_TYPE,
        super::cors::CORS_POLICY_TYPE,
        super::rbac::HTTP_RBAC_PER_ROUTE_TYPE,
    ];
    known.contains(&type_name)
}

/// A filter's own per-route message, by its type.
fn translate_config(path: &FieldPath, any: &pb::protobuf::Any) -> Result<PerFilterConfig> {
    match any_type(any) {
        super::fault::FAULT_TYPE => Ok(PerFilterConfig::Fault(Arc::new(
            super::fault::FaultSettings::from_any(path, any)?,
        ))),
        super::local_ratelimit::HTTP_TYPE => Ok(PerFilterConfig::LocalRateLimit(Arc::new(
            super::local_ratelimit::LocalRateLimit::from_any(
                path,
                any,
                true,
                &super::inputs::Inputs::none(),
            )?,
        ))),
        super::cors::CORS_POLICY_TYPE => Ok(PerFilterConfig::Cors(Arc::new(
            super::cors::CorsPolicy::from_any(path, any)?,
        ))),
        super::rbac::HTTP_RBAC_PER_ROUTE_TYPE => {
            super::rbac::per_route(path, any).map(PerFilterConfig::Rbac)
        }
        "" => Err(path.field("@type").error("is required")),
        other => Err(path
            .field("@type")
            .error(format!("per-route configuration {other} is not supported"))),
    }
}

/// The most specific entry for `filter_name` among the levels, innermost first.
pub fn most_specific<'a>(
    levels: impl IntoIterator<Item = &'a PerFilterConfigs>,
    filter_name: &str,
) -> Option<&'a PerFilter> {
    levels.into_iter().find_map(|l| l.get(filter_name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn any(type_name: &str, value: Vec<u8>) -> pb::protobuf::Any {
        pb::protobuf::Any {
            type_url: format!("type.googleapis.com/{type_name}"),
            value,
        }
    }

    fn wrapped(
        inner: Option<pb::protobuf::Any>,
        optional: bool,
        disabled: bool,
    ) -> pb::protobuf::Any {
        let fc = pb::route::FilterConfig {
            config: inner,
            is_optional: optional,
            disabled,
        };
        any(FILTER_CONFIG_TYPE, fc.encode_to_vec())
    }

    #[test]
    fn unknown_types_are_refused_by_path_unless_optional() {
        let path = FieldPath::new("route.typed_per_filter_config");
        let unknown = any("acme.Filter", vec![]);
        let map = [("acme".to_string(), unknown.clone())].into();
        let err = PerFilterConfigs::from_proto(&path, &map).unwrap_err();
        assert_eq!(
            err.paths(),
            vec!["route.typed_per_filter_config[\"acme\"].@type".to_string()],
            "{err}"
        );

        let map = [("acme".to_string(), wrapped(Some(unknown), true, false))].into();
        let ok = PerFilterConfigs::from_proto(&path, &map).unwrap();
        let f = ok.get("acme").expect("kept");
        assert!(!f.disabled && f.config.is_none());
    }

    #[test]
    fn bare_filter_config_disables() {
        let path = FieldPath::new("vh.typed_per_filter_config");
        let map = [(
            "envoy.filters.http.fault".to_string(),
            wrapped(None, false, true),
        )]
        .into();
        let c = PerFilterConfigs::from_proto(&path, &map).unwrap();
        let levels = [PerFilterConfigs::default(), c];
        let f = most_specific(levels.iter(), "envoy.filters.http.fault").unwrap();
        assert!(f.disabled);
        assert!(most_specific(levels.iter(), "other").is_none());
    }
}
