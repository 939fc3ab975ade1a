//! `/config_dump`: `envoy.admin.v3.ConfigDump` in proto3 JSON (field names as in the protos,
//! `@type` on every entry), with `?include_eds`, `?mask=`, `?resource=` and `?name_regex=`.

use crate::config::descriptors::envoy_pool;
use crate::server::ServerState;
use envoy_types::pb::envoy::admin::v3 as admin;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::google::protobuf::{Any, Timestamp};
use prost::{Message, Name};
use prost_reflect::{DynamicMessage, SerializeOptions};
use serde_json::Value;

fn any<M: Message + Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

fn timestamp(t: std::time::SystemTime) -> Timestamp {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

fn dynamic_cluster(r: &crate::xds::Record) -> admin::clusters_config_dump::DynamicCluster {
    admin::clusters_config_dump::DynamicCluster {
        version_info: r.version.clone(),
        cluster: Some(r.resource.clone()),
        last_updated: Some(timestamp(r.at)),
        ..Default::default()
    }
}

/// A cluster's endpoints as Envoy's config dump writes them from the priority set: one
/// `LocalityLbEndpoints` per run of hosts with the same priority and locality, each host with
/// its health status, weight and (empty unless configured) `health_check_config`.
fn live_load_assignment(
    name: &str,
    cluster: &crate::upstream::cluster::Cluster,
) -> envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment {
    use crate::model::cluster::Health;
    use envoy_types::pb::envoy::config::core::v3 as core;
    use envoy_types::pb::envoy::config::endpoint::v3 as ep;
    let mut groups: Vec<ep::LocalityLbEndpoints> = Vec::new();
    for h in cluster.hosts.load().all_hosts() {
        let locality = core::Locality {
            region: h.locality.region.clone(),
            zone: h.locality.zone.clone(),
            sub_zone: h.locality.sub_zone.clone(),
        };
        let same = groups
            .last()
            .is_some_and(|g| g.priority == h.priority && g.locality.as_ref() == Some(&locality));
        if !same {
            groups.push(ep::LocalityLbEndpoints {
                locality: Some(locality),
                priority: h.priority,
                load_balancing_weight: Some(envoy_types::pb::google::protobuf::UInt32Value {
                    value: h.locality_weight,
                }),
                ..Default::default()
            });
        }
        let hc = h.health_check.as_deref();
        let endpoint = ep::Endpoint {
            address: Some(crate::admin::socket_address(h.address)),
            health_check_config: Some(ep::endpoint::HealthCheckConfig {
                port_value: hc.and_then(|c| c.port).map_or(0, u32::from),
                hostname: hc.and_then(|c| c.hostname.clone()).unwrap_or_default(),
                ..Default::default()
            }),
            hostname: h.hostname.to_string(),
            ..Default::default()
        };
        let health = match h.health {
            Health::Healthy => core::HealthStatus::Healthy,
            Health::Unhealthy => core::HealthStatus::Unhealthy,
            Health::Degraded => core::HealthStatus::Degraded,
        };
        if let Some(g) = groups.last_mut() {
            g.lb_endpoints.push(ep::LbEndpoint {
                health_status: health as i32,
                load_balancing_weight: Some(envoy_types::pb::google::protobuf::UInt32Value {
                    value: h.weight,
                }),
                host_identifier: Some(ep::lb_endpoint::HostIdentifier::Endpoint(endpoint)),
                ..Default::default()
            });
        }
    }
    ep::ClusterLoadAssignment {
        cluster_name: name.to_string(),
        endpoints: groups,
        policy: Some(ep::cluster_load_assignment::Policy {
            overprovisioning_factor: Some(envoy_types::pb::google::protobuf::UInt32Value {
                value: cluster.config.overprovisioning_factor,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Envoy's `UpdateFailureState` (with the refused update's version, which Envoy leaves empty).
fn failure_state(f: &crate::xds::Failure, with_time: bool) -> admin::UpdateFailureState {
    admin::UpdateFailureState {
        failed_configuration: Some(f.resource.clone()),
        last_update_attempt: with_time.then(|| timestamp(f.at)),
        details: f.details.clone(),
        version_info: f.version.clone(),
    }
}

/// The dump as protos, in Envoy's order.
fn build(state: &ServerState, include_eds: bool) -> Vec<Any> {
    let dynamic = crate::xds::lock_dump(&state.context.xds_dump);
    let at = |r: &crate::xds::Record| Some(timestamp(r.at));
    let b = &state.bootstrap_proto;
    let updated = Some(timestamp(state.loaded_at));
    let sr = b.static_resources.clone().unwrap_or_default();
    let mut out = vec![any(&admin::BootstrapConfigDump {
        bootstrap: Some(b.clone()),
        last_updated: updated,
    })];
    out.push(any(&admin::ClustersConfigDump {
        version_info: String::new(),
        static_clusters: sr
            .clusters
            .iter()
            .map(|c| admin::clusters_config_dump::StaticCluster {
                cluster: Some(any(c)),
                last_updated: updated,
            })
            .collect(),
        // A cluster not in service yet is warming (on its endpoints or secrets).
        dynamic_active_clusters: dynamic
            .clusters
            .iter()
            .filter(|(n, _)| state.clusters.get(n).is_some())
            .map(|(_, r)| dynamic_cluster(r))
            .collect(),
        dynamic_warming_clusters: dynamic
            .clusters
            .iter()
            .filter(|(n, _)| state.clusters.get(n).is_none())
            .map(|(_, r)| dynamic_cluster(r))
            .collect(),
    }));
    if include_eds {
        out.push(any(&admin::EndpointsConfigDump {
            // Envoy dumps a static cluster's endpoints as its priority set holds them (health,
            // weights, the policy's overprovisioning factor), without an update time.
            static_endpoint_configs: sr
                .clusters
                .iter()
                .filter_map(|c| {
                    let live = state.clusters.get(&c.name)?;
                    c.load_assignment.as_ref()?;
                    Some(admin::endpoints_config_dump::StaticEndpointConfig {
                        endpoint_config: Some(any(&live_load_assignment(&c.name, &live))),
                        last_updated: None,
                    })
                })
                .collect(),
            dynamic_endpoint_configs: dynamic
                .endpoints
                .values()
                .map(|r| admin::endpoints_config_dump::DynamicEndpointConfig {
                    version_info: r.version.clone(),
                    endpoint_config: Some(r.resource.clone()),
                    last_updated: at(r),
                    ..Default::default()
                })
                .collect(),
        }));
    }
    out.push(any(&admin::ListenersConfigDump {
        version_info: String::new(),
        static_listeners: sr
            .listeners
            .iter()
            .map(|l| admin::listeners_config_dump::StaticListener {
                listener: Some(any(l)),
                last_updated: updated,
            })
            .collect(),
        dynamic_listeners: {
            let state =
                |r: &crate::xds::Record| admin::listeners_config_dump::DynamicListenerState {
                    version_info: r.version.clone(),
                    listener: Some(r.resource.clone()),
                    last_updated: at(r),
                };
            let names: std::collections::BTreeSet<&String> = dynamic
                .listeners
                .keys()
                .chain(dynamic.warming_listeners.keys())
                .chain(dynamic.listener_errors.keys())
                .collect();
            let named =
                names
                    .into_iter()
                    .map(|name| admin::listeners_config_dump::DynamicListener {
                        name: name.clone(),
                        active_state: dynamic.listeners.get(name).map(state),
                        warming_state: dynamic.warming_listeners.get(name).map(state),
                        error_state: dynamic
                            .listener_errors
                            .get(name)
                            .map(|f| failure_state(f, true)),
                        ..Default::default()
                    });
            // Envoy also lists the latest update's failures without a name or time.
            let nameless = dynamic.listener_update_failures.iter().map(|f| {
                admin::listeners_config_dump::DynamicListener {
                    error_state: Some(failure_state(f, false)),
                    ..Default::default()
                }
            });
            named.chain(nameless).collect()
        },
    }));
    let routes: Vec<RouteConfiguration> = sr
        .listeners
        .iter()
        .flat_map(|l| l.filter_chains.iter().chain(l.default_filter_chain.iter()))
        .flat_map(|fc| fc.filters.iter())
        .filter_map(|f| match &f.config_type {
            Some(
                envoy_types::pb::envoy::config::listener::v3::filter::ConfigType::TypedConfig(a),
            ) if a.type_url.ends_with("HttpConnectionManager") => {
                hcm::HttpConnectionManager::decode(a.value.as_slice()).ok()
            }
            _ => None,
        })
        .filter_map(|h| match h.route_specifier {
            Some(hcm::http_connection_manager::RouteSpecifier::RouteConfig(rc)) => Some(rc),
            _ => None,
        })
        .collect();
    out.push(any(&admin::RoutesConfigDump {
        static_route_configs: routes
            .iter()
            .map(|rc| admin::routes_config_dump::StaticRouteConfig {
                route_config: Some(any(rc)),
                last_updated: updated,
            })
            .collect(),
        dynamic_route_configs: dynamic
            .routes
            .values()
            .map(|r| admin::routes_config_dump::DynamicRouteConfig {
                version_info: r.version.clone(),
                route_config: Some(r.resource.clone()),
                last_updated: at(r),
                ..Default::default()
            })
            .collect(),
    }));
    out.push(any(&admin::SecretsConfigDump {
        static_secrets: sr
            .secrets
            .iter()
            .map(|s| admin::secrets_config_dump::StaticSecret {
                name: s.name.clone(),
                last_updated: updated,
                secret: Some(any(s)),
            })
            .collect(),
        dynamic_active_secrets: dynamic
            .secrets
            .iter()
            .map(|(name, r)| admin::secrets_config_dump::DynamicSecret {
                name: name.clone(),
                version_info: r.version.clone(),
                last_updated: at(r),
                secret: Some(r.resource.clone()),
                ..Default::default()
            })
            .collect(),
        dynamic_warming_secrets: vec![],
    }));
    let noop = noop_extensions(state);
    if !noop.extensions.is_empty() {
        out.push(any(&noop));
    }
    out
}

/// `remora.admin.v1.NoopExtensionsConfigDump`: the extensions remora accepted without acting on
/// them, where, and why (an extra entry Envoy's tools skip by its type).
#[derive(Clone, PartialEq, Message)]
pub struct NoopExtensionsConfigDump {
    #[prost(message, repeated, tag = "1")]
    pub extensions: Vec<NoopExtension>,
}

#[derive(Clone, PartialEq, Message)]
pub struct NoopExtension {
    #[prost(string, tag = "1")]
    pub listener: String,
    #[prost(string, tag = "2")]
    pub filter_chain: String,
    #[prost(string, tag = "3")]
    pub name: String,
    #[prost(string, tag = "4")]
    pub type_url: String,
    #[prost(string, tag = "5")]
    pub reason: String,
}

impl Name for NoopExtensionsConfigDump {
    const NAME: &'static str = "NoopExtensionsConfigDump";
    const PACKAGE: &'static str = "remora.admin.v1";
    fn full_name() -> String {
        "remora.admin.v1.NoopExtensionsConfigDump".into()
    }
    fn type_url() -> String {
        "type.googleapis.com/remora.admin.v1.NoopExtensionsConfigDump".into()
    }
}

fn noop_extensions(state: &ServerState) -> NoopExtensionsConfigDump {
    use crate::model::hcm::HttpFilter;
    use crate::model::listener::NetworkTerminal;
    let mut extensions = Vec::new();
    for l in state.listeners.all().iter() {
        let chains = l
            .config
            .filter_chains
            .iter()
            .chain(l.config.default_filter_chain.iter());
        for fc in chains {
            let mut push = |n: &crate::model::hcm::NoopFilter| {
                extensions.push(NoopExtension {
                    listener: l.config.name.clone(),
                    filter_chain: fc.name.clone(),
                    name: n.name.clone(),
                    type_url: format!("type.googleapis.com/{}", n.type_name),
                    reason: n.reason.into(),
                })
            };
            fc.noop_filters().for_each(&mut push);
            if let NetworkTerminal::Http(h) = &fc.terminal {
                for f in &h.http_filters {
                    if let HttpFilter::Noop(n) = &f.filter {
                        push(n);
                    }
                }
            }
        }
    }
    NoopExtensionsConfigDump { extensions }
}

/// Envoy's redaction: inline private keys and passwords (in TLS contexts, static secrets, the
/// bootstrap) print as `[redacted]`; file names stay.
fn redact_secrets(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, child) in m.iter_mut() {
                if (k == "private_key" || k == "password")
                    && let Value::Object(ds) = child
                {
                    for (kind, data) in ds.iter_mut() {
                        match kind.as_str() {
                            "inline_string" => *data = Value::String("[redacted]".into()),
                            // base64("[redacted]"), as Envoy prints redacted bytes.
                            "inline_bytes" => *data = Value::String("W3JlZGFjdGVkXQ==".into()),
                            _ => {}
                        }
                    }
                } else {
                    redact_secrets(child);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(redact_secrets),
        _ => {}
    }
}

/// Any → JSON through Envoy's descriptors.
pub fn to_json(pool: &prost_reflect::DescriptorPool, a: &Any) -> Result<Value, String> {
    let any_desc = pool
        .get_message_by_name("google.protobuf.Any")
        .ok_or("no Any descriptor")?;
    let msg = DynamicMessage::decode(any_desc, a.encode_to_vec().as_slice())
        .map_err(|e| e.to_string())?;
    let opts = SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(true)
        .stringify_64_bit_integers(true);
    msg.serialize_with_options(serde_json::value::Serializer, &opts)
        .map_err(|e| e.to_string())
}

/// A proto message → JSON through Envoy's descriptors. `with_defaults`: print fields at their
/// default value too (Envoy does for `/server_info`).
pub fn message_json<M: Message + Name>(
    pool: &prost_reflect::DescriptorPool,
    m: &M,
    with_defaults: bool,
) -> Result<Value, String> {
    let desc = pool
        .get_message_by_name(&M::full_name())
        .ok_or_else(|| format!("no descriptor for {}", M::full_name()))?;
    let msg =
        DynamicMessage::decode(desc, m.encode_to_vec().as_slice()).map_err(|e| e.to_string())?;
    let opts = SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(!with_defaults)
        .stringify_64_bit_integers(true);
    msg.serialize_with_options(serde_json::value::Serializer, &opts)
        .map_err(|e| e.to_string())
}

/// Query options.
#[derive(Default)]
pub struct Query {
    pub include_eds: bool,
    pub mask: Option<String>,
    pub resource: Option<String>,
    pub name_regex: Option<regex::Regex>,
}

/// The JSON body for `/config_dump`.
pub fn render(state: &ServerState, q: &Query) -> Result<Value, (u16, String)> {
    let pool = envoy_pool();
    let mut configs = Vec::new();
    for a in build(
        state,
        q.include_eds
            || q.resource
                .as_deref()
                .is_some_and(|r| r.contains("endpoint")),
    ) {
        let mut v = to_json(&pool, &a).map_err(|e| (500, e))?;
        redact_secrets(&mut v);
        configs.push(v);
    }
    let masks: Vec<Vec<String>> = q
        .mask
        .iter()
        .flat_map(|m| m.split(','))
        .filter(|p| !p.is_empty())
        .map(|p| p.split('.').map(str::to_string).collect())
        .collect();
    if let Some(resource) = &q.resource {
        // The elements of one repeated field, each with its own @type.
        let mut out = Vec::new();
        let mut found = false;
        for c in &configs {
            let Some(type_url) = c.get("@type").and_then(Value::as_str) else {
                continue;
            };
            let Some(list) = c.get(resource).and_then(Value::as_array) else {
                if field_exists(&pool, type_url, resource) {
                    found = true;
                }
                continue;
            };
            found = true;
            let elem_type = element_type(&pool, type_url, resource).unwrap_or_default();
            for item in list {
                if !matches_name(item, &q.name_regex) {
                    continue;
                }
                let mut item = item.clone();
                if !masks.is_empty() {
                    item = apply_mask(&item, &masks);
                }
                if let Value::Object(m) = &mut item {
                    let mut with_type = serde_json::Map::new();
                    with_type.insert(
                        "@type".into(),
                        Value::String(format!("type.googleapis.com/{elem_type}")),
                    );
                    with_type.extend(std::mem::take(m));
                    *m = with_type;
                }
                out.push(item);
            }
        }
        if !found {
            return Err((404, format!("{resource} not found in config dump")));
        }
        return Ok(configs_json(out));
    }
    if q.name_regex.is_some() {
        for c in &mut configs {
            filter_names(c, &q.name_regex);
        }
    }
    if !masks.is_empty() {
        // Envoy leaves out the dumps the mask's paths are not valid for.
        configs.retain(|c| {
            let t = c.get("@type").and_then(Value::as_str).unwrap_or("");
            masks.iter().all(|m| valid_path(&pool, t, m))
        });
        for c in &mut configs {
            let t = c.get("@type").cloned();
            *c = apply_mask(c, &masks);
            if let (Value::Object(m), Some(t)) = (&mut *c, t) {
                let mut with_type = serde_json::Map::new();
                with_type.insert("@type".into(), t);
                with_type.extend(std::mem::take(m));
                *m = with_type;
            }
        }
    }
    Ok(configs_json(configs))
}

/// `{"configs": [...]}`, or `{}` when there are none (proto3 JSON leaves out an empty list).
fn configs_json(configs: Vec<Value>) -> Value {
    if configs.is_empty() {
        serde_json::json!({})
    } else {
        serde_json::json!({ "configs": configs })
    }
}

/// protobuf's `FieldMaskUtil::IsValidPath`: every name a field, every one but the last a
/// singular message.
fn valid_path(pool: &prost_reflect::DescriptorPool, type_url: &str, path: &[String]) -> bool {
    let Some(mut m) =
        pool.get_message_by_name(crate::config::descriptors::type_name_of_url(type_url))
    else {
        return false;
    };
    for (i, name) in path.iter().enumerate() {
        let Some(f) = m.get_field_by_name(name) else {
            return false;
        };
        if i + 1 < path.len() {
            match f.kind().as_message() {
                Some(inner) if !f.is_list() && !f.is_map() => m = inner.clone(),
                _ => return false,
            }
        }
    }
    true
}

fn field_exists(pool: &prost_reflect::DescriptorPool, type_url: &str, field: &str) -> bool {
    pool.get_message_by_name(crate::config::descriptors::type_name_of_url(type_url))
        .and_then(|m| m.get_field_by_name(field))
        .is_some()
}

fn element_type(
    pool: &prost_reflect::DescriptorPool,
    type_url: &str,
    field: &str,
) -> Option<String> {
    let m = pool.get_message_by_name(crate::config::descriptors::type_name_of_url(type_url))?;
    let f = m.get_field_by_name(field)?;
    f.kind().as_message().map(|d| d.full_name().to_string())
}

/// Keep only the masked paths of a JSON object (FieldMask semantics on proto field names).
/// An `Any` keeps its `@type`: Envoy masks the message inside and packs it again.
fn apply_mask(v: &Value, masks: &[Vec<String>]) -> Value {
    let Value::Object(obj) = v else {
        return v.clone();
    };
    let mut out = serde_json::Map::new();
    if let Some(t) = obj.get("@type") {
        out.insert("@type".into(), t.clone());
    }
    for (k, val) in obj {
        let sub: Vec<Vec<String>> = masks
            .iter()
            .filter(|m| m.first() == Some(k))
            .map(|m| m[1..].to_vec())
            .collect();
        if sub.is_empty() {
            continue;
        }
        if sub.iter().any(|s| s.is_empty()) {
            out.insert(k.clone(), val.clone());
        } else {
            let inner = match val {
                Value::Array(items) => {
                    Value::Array(items.iter().map(|i| apply_mask(i, &sub)).collect())
                }
                other => apply_mask(other, &sub),
            };
            out.insert(k.clone(), inner);
        }
    }
    Value::Object(out)
}

/// The resource name inside a dump element (listener, cluster, route config, endpoint config).
fn resource_name(item: &Value) -> Option<&str> {
    for (field, key) in [
        ("listener", "name"),
        ("cluster", "name"),
        ("route_config", "name"),
        ("endpoint_config", "cluster_name"),
        ("active_state", ""),
    ] {
        if let Some(inner) = item.get(field) {
            if key.is_empty() {
                return inner
                    .get("listener")
                    .and_then(|l| l.get("name"))
                    .and_then(Value::as_str);
            }
            return inner.get(key).and_then(Value::as_str);
        }
    }
    item.get("name").and_then(Value::as_str)
}

fn matches_name(item: &Value, re: &Option<regex::Regex>) -> bool {
    match re {
        None => true,
        Some(re) => resource_name(item).is_some_and(|n| re.is_match(n)),
    }
}

fn filter_names(c: &mut Value, re: &Option<regex::Regex>) {
    let Value::Object(obj) = c else { return };
    for (_, v) in obj.iter_mut() {
        if let Value::Array(items) = v {
            items.retain(|i| matches_name(i, re));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn mask_paths_valid_for_a_dump_type() {
        let pool = envoy_pool();
        let clusters = "type.googleapis.com/envoy.admin.v3.ClustersConfigDump";
        let path = |p: &str| p.split('.').map(str::to_string).collect::<Vec<_>>();
        assert!(valid_path(&pool, clusters, &path("static_clusters")));
        assert!(!valid_path(&pool, clusters, &path("static_listeners")));
        assert!(
            !valid_path(&pool, clusters, &path("static_clusters.cluster")),
            "not through a repeated field"
        );
        let bootstrap = "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump";
        assert!(valid_path(&pool, bootstrap, &path("bootstrap.node.id")));
        assert_eq!(configs_json(vec![]), json!({}));
    }

    #[test]
    fn masks_keep_paths() {
        let v = json!({"bootstrap": {"node": {"id": "a", "cluster": "b"}, "admin": {}}, "last_updated": "x"});
        let m = apply_mask(&v, &[vec!["bootstrap".into(), "node".into(), "id".into()]]);
        assert_eq!(m, json!({"bootstrap": {"node": {"id": "a"}}}));
        let m = apply_mask(
            &json!({"static_clusters": [{"cluster": {"name": "a", "type": "STATIC"}}]}),
            &[vec![
                "static_clusters".into(),
                "cluster".into(),
                "name".into(),
            ]],
        );
        assert_eq!(m, json!({"static_clusters": [{"cluster": {"name": "a"}}]}));
    }

    #[test]
    fn masking_inside_an_any_keeps_its_type() {
        let any = json!({"cluster": {"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster", "name": "a", "type": "STATIC"}});
        let m = apply_mask(&any, &[vec!["cluster".into(), "name".into()]]);
        assert_eq!(
            m,
            json!({"cluster": {"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster", "name": "a"}})
        );
    }
}
