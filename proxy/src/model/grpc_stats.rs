//! `envoy.filters.http.grpc_stats` (`envoy.extensions.filters.http.grpc_stats.v3.FilterConfig`):
//! what the filter counts and under which stat names, as Envoy 1.40's
//! `source/extensions/filters/http/grpc_stats/`. The runtime is `filters/http/grpc_stats.rs`.

use std::collections::HashMap;

use super::core::decode_any;
use super::pb;
use crate::config::{FieldPath, Result};

pub const GRPC_STATS_TYPE: &str = "envoy.extensions.filters.http.grpc_stats.v3.FilterConfig";

/// The filter state key Envoy publishes the message counts under (Istio's stats read it).
pub const FILTER_STATE_KEY: &str = "envoy.filters.http.grpc_stats";

/// Which calls get `grpc.<service>.<method>.` stats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PerMethod {
    /// `stats_for_all_methods: true`: every `/<service>/<method>` path.
    All,
    /// `individual_method_stats_allowlist`: the listed methods by name; other gRPC calls are
    /// counted under `grpc.` alone. Service → methods.
    Allowlist(HashMap<String, Vec<String>>),
    /// Neither set, or `stats_for_all_methods: false` (Envoy 1.40's default: the runtime
    /// guard that defaulted to all methods is gone): every call under `grpc.` alone.
    None,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcStats {
    /// Publish `envoy.filters.http.grpc_stats` (`<request messages>,<response messages>`).
    pub emit_filter_state: bool,
    /// `grpc[.<service>.<method>].upstream_rq_time`.
    pub enable_upstream_stats: bool,
    /// Dots in the service name become underscores (Envoy applies it with `PerMethod::All`
    /// only, and so does remora).
    pub replace_dots_in_grpc_service_name: bool,
    pub per_method: PerMethod,
}

impl GrpcStats {
    pub fn from_any(path: &FieldPath, any: &pb::protobuf::Any) -> Result<Self> {
        let cfg: pb::grpc_stats::FilterConfig = decode_any(path, any)?;
        Self::from_proto(path, &cfg)
    }

    pub fn from_proto(path: &FieldPath, cfg: &pb::grpc_stats::FilterConfig) -> Result<Self> {
        use pb::grpc_stats::filter_config::PerMethodStatSpecifier as S;
        let pb::grpc_stats::FilterConfig {
            emit_filter_state,
            enable_upstream_stats,
            replace_dots_in_grpc_service_name,
            per_method_stat_specifier,
        } = cfg;
        let per_method = match per_method_stat_specifier {
            None => PerMethod::None,
            Some(S::StatsForAllMethods(b)) if b.value => PerMethod::All,
            Some(S::StatsForAllMethods(_)) => PerMethod::None,
            Some(S::IndividualMethodStatsAllowlist(list)) => PerMethod::Allowlist(allowlist(
                &path.field("individual_method_stats_allowlist"),
                list,
            )?),
        };
        Ok(Self {
            emit_filter_state: *emit_filter_state,
            enable_upstream_stats: *enable_upstream_stats,
            replace_dots_in_grpc_service_name: *replace_dots_in_grpc_service_name,
            per_method,
        })
    }
}

/// `GrpcMethodList` with its validation (a service needs a name and at least one method).
fn allowlist(
    path: &FieldPath,
    list: &pb::core::GrpcMethodList,
) -> Result<HashMap<String, Vec<String>>> {
    let pb::core::GrpcMethodList { services } = list;
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for (i, s) in services.iter().enumerate() {
        let sp = path.field("services").index(i);
        let pb::core::grpc_method_list::Service { name, method_names } = s;
        if name.is_empty() {
            return Err(sp
                .field("name")
                .error("value length must be at least 1 characters"));
        }
        if method_names.is_empty() {
            return Err(sp
                .field("method_names")
                .error("value must contain at least 1 item(s)"));
        }
        out.entry(name.clone())
            .or_default()
            .extend(method_names.iter().cloned());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<GrpcStats> {
        let path = FieldPath::new("typed_config");
        let proto: pb::grpc_stats::FilterConfig = crate::config::decode_yaml(
            "envoy.extensions.filters.http.grpc_stats.v3.FilterConfig",
            yaml,
            &path,
        );
        let any = pb::protobuf::Any {
            type_url: format!("type.googleapis.com/{GRPC_STATS_TYPE}"),
            value: prost::Message::encode_to_vec(&proto),
        };
        GrpcStats::from_any(&path, &any)
    }

    #[test]
    fn every_field_is_read() {
        let g = parse(
            "{emit_filter_state: true, enable_upstream_stats: true, \
             replace_dots_in_grpc_service_name: true, stats_for_all_methods: true}",
        )
        .unwrap();
        assert!(g.emit_filter_state && g.enable_upstream_stats);
        assert!(g.replace_dots_in_grpc_service_name);
        assert_eq!(g.per_method, PerMethod::All);
        // Envoy 1.40: neither field set means no per-method stats.
        assert_eq!(parse("{}").unwrap().per_method, PerMethod::None);
        let off = parse("{stats_for_all_methods: false}").unwrap();
        assert_eq!(off.per_method, PerMethod::None);
        let g = parse(
            "individual_method_stats_allowlist: {services: [{name: a.B, method_names: [M, N]}]}",
        )
        .unwrap();
        let PerMethod::Allowlist(m) = g.per_method else {
            panic!("allowlist")
        };
        assert_eq!(m["a.B"], ["M", "N"]);
    }

    #[test]
    fn an_invalid_allowlist_is_refused_by_path() {
        let e = parse("individual_method_stats_allowlist: {services: [{name: a}]}")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("typed_config.individual_method_stats_allowlist.services[0].method_names"),
            "{e}"
        );
        let e = parse("individual_method_stats_allowlist: {services: [{method_names: [M]}]}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("services[0].name"), "{e}");
    }
}
