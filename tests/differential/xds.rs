//! xDS: one ADS server (remora's own, `remora-xds`) serves Envoy and remora the same resources
//! (each proxy its own node, the same snapshot), and each resource of a corpus of valid and
//! invalid listeners, clusters, route configurations, endpoint assignments and secrets gets
//! its verdict from both: ACK or NACK. Each case is one update of its type (state of the world:
//! the type's baseline resources and the case's), so the verdict is the case's resource's.
//!
//! remora may NACK what it does not implement (a known difference, with its reason); it must
//! never ACK what Envoy NACKs. Where both NACK, whether both messages name the case's field is
//! printed (informational, not compared).

use crate::CaseResult;
use crate::oracle::{Pair, Side};
use crate::support::{bootstrap, cluster};
use crate::validate::NEVER;
use envoy_types::pb::google::protobuf::Any;
use remora_certs::ca::{DevCa, KeyAlgorithm, LeafRequest};
use remora_xds::resource::{CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET};
use remora_xds::server::{Resources, Snapshot, SnapshotCache};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A node per proxy.
fn node(side: Side) -> &'static str {
    match side {
        Side::Envoy => "diff-envoy",
        Side::Remora => "diff-remora",
    }
}

const LISTENER_T: &str = "envoy.config.listener.v3.Listener";
const CLUSTER_T: &str = "envoy.config.cluster.v3.Cluster";
const ROUTE_T: &str = "envoy.config.route.v3.RouteConfiguration";
const ENDPOINT_T: &str = "envoy.config.endpoint.v3.ClusterLoadAssignment";
const SECRET_T: &str = "envoy.extensions.transport_sockets.tls.v3.Secret";

/// The route configuration, endpoint assignment and secret the static resources subscribe to
/// (their names are what the non-wildcard types are asked for).
const RDS_NAME: &str = "r";
const EDS_NAME: &str = "e";
const SDS_NAME: &str = "s_cert";

/// A resource written in YAML (as a file would hold it), encoded as the message `type_name`.
fn res(type_name: &str, yaml: &str) -> Any {
    use remora::config::{FieldPath, descriptors, json, load};
    let pool = descriptors::envoy_pool();
    let doc = load::parse_document(yaml, load::Format::Yaml, "corpus")
        .unwrap_or_else(|e| panic!("corpus YAML: {e:?}\n{yaml}"));
    let mut d = json::JsonDecoder::new(&pool, false);
    let m = d
        .decode(type_name, &doc, &FieldPath::root())
        .unwrap_or_else(|e| panic!("corpus resource: {e:?}\n{yaml}"));
    Any {
        type_url: format!("type.googleapis.com/{type_name}"),
        value: prost::Message::encode_to_vec(&m),
    }
}

const ROUTER: &str = r#"[{name: envoy.filters.http.router, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}]"#;
const HCM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

/// A listener on an ephemeral port with an HCM whose route configuration is `routes` (YAML
/// flow) and whose other settings are `hcm_extra` (flow mapping entries).
fn listener(name: &str, extra: &str, hcm_extra: &str) -> String {
    format!(
        r#"{{name: {name}, address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}{extra},
 filter_chains: [{{filters: [{{name: envoy.filters.network.http_connection_manager,
   typed_config: {{"@type": {HCM_TYPE}, stat_prefix: {name},
     route_config: {{name: {name}_routes, virtual_hosts: [{{name: all, domains: ["*"],
       routes: [{{match: {{prefix: /}}, direct_response: {{status: 200}}}}]}}]}},
     http_filters: {ROUTER}{hcm_extra}}}}}]}}]}}"#
    )
}

fn static_cluster(name: &str, extra: &str, port: u32) -> String {
    format!(
        r#"{{name: {name}, type: STATIC, connect_timeout: 1s{extra},
 load_assignment: {{cluster_name: {name}, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}}}]}}]}}}}"#
    )
}

fn route_config(vhosts: &str) -> String {
    format!("{{name: {RDS_NAME}, virtual_hosts: [{vhosts}]}}")
}

fn vhost(name: &str, domain: &str, route: &str) -> String {
    format!("{{name: {name}, domains: [\"{domain}\"], routes: [{route}]}}")
}

fn assignment(endpoints: &str) -> String {
    format!("{{cluster_name: {EDS_NAME}, endpoints: [{endpoints}]}}")
}

fn lb_endpoint(port: u32, extra: &str) -> String {
    format!(
        "{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}{extra}}}"
    )
}

/// A PEM as a YAML double-quoted string.
fn quoted(pem: &str) -> String {
    format!("\"{}\"", pem.replace('\n', "\\n"))
}

/// One corpus entry: an update of `type_url` carrying `resources` (with the type's baseline for
/// LDS and CDS), and the field a refusal should name (informational).
struct XdsCase {
    id: String,
    type_url: &'static str,
    resources: Vec<Any>,
    field: &'static str,
}

fn case(
    kind: &str,
    name: &str,
    type_url: &'static str,
    field: &'static str,
    resources: Vec<Any>,
) -> XdsCase {
    XdsCase {
        id: format!("xds/{kind}/{name}"),
        type_url,
        resources,
        field,
    }
}

fn lds(name: &str, field: &'static str, yaml: &[String]) -> XdsCase {
    let r = yaml.iter().map(|y| res(LISTENER_T, y)).collect();
    case("lds", name, LISTENER, field, r)
}

fn cds(name: &str, field: &'static str, yaml: &[String]) -> XdsCase {
    let r = yaml.iter().map(|y| res(CLUSTER_T, y)).collect();
    case("cds", name, CLUSTER, field, r)
}

fn rds(name: &str, field: &'static str, yaml: String) -> XdsCase {
    case("rds", name, ROUTE, field, vec![res(ROUTE_T, &yaml)])
}

fn eds(name: &str, field: &'static str, yaml: String) -> XdsCase {
    case("eds", name, ENDPOINT, field, vec![res(ENDPOINT_T, &yaml)])
}

fn sds(name: &str, field: &'static str, yaml: String) -> XdsCase {
    case("sds", name, SECRET, field, vec![res(SECRET_T, &yaml)])
}

/// The proxies' TLS material for the secrets.
struct Material {
    cert: String,
    key: String,
    other_key: String,
    root: String,
}

fn material() -> Material {
    let ca = DevCa::generate_root("xds", KeyAlgorithm::EcdsaP256).unwrap();
    let mut req = LeafRequest::new(Duration::from_secs(86400));
    req.dns_names = vec!["localhost".into()];
    let a = ca.issue(&req).unwrap();
    let b = ca.issue(&req).unwrap();
    Material {
        cert: a.cert_chain_pem,
        key: a.key_pem,
        other_key: b.key_pem,
        root: ca.root_pem().to_string(),
    }
}

fn corpus(m: &Material) -> Vec<XdsCase> {
    let l = listener;
    let tls_secret = |cert: &str, key: &str| {
        format!(
            "{{name: {SDS_NAME}, tls_certificate: {{certificate_chain: {{inline_string: {}}}, private_key: {{inline_string: {}}}}}}}",
            quoted(cert),
            quoted(key)
        )
    };
    let route = |action: &str| format!("{{match: {{prefix: /}}, {action}}}");
    vec![
        // LDS
        lds("valid", "", &[l("l_valid", "", "")]),
        lds(
            "valid_tcp_proxy",
            "",
            &[r#"{name: l_tcp, address: {socket_address: {address: 127.0.0.1, port_value: 0}},
              filter_chains: [{filters: [{name: envoy.filters.network.tcp_proxy, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: t, cluster: e}}]}]}"#
                .to_string()],
        ),
        lds(
            "no_address",
            "address",
            &[r#"{name: l_no_address, filter_chains: [{filters: [{name: envoy.filters.network.tcp_proxy, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: t, cluster: e}}]}]}"#.to_string()],
        ),
        lds(
            "port_too_large",
            "port_value",
            &[l("l_port", "", "").replace("port_value: 0", "port_value: 70000")],
        ),
        lds(
            "no_filter_chains",
            "filter_chains",
            &["{name: l_no_chains, address: {socket_address: {address: 127.0.0.1, port_value: 0}}}".to_string()],
        ),
        lds(
            "unknown_network_filter",
            "typed_config",
            &[r#"{name: l_unknown, address: {socket_address: {address: 127.0.0.1, port_value: 0}},
              filter_chains: [{filters: [{name: envoy.filters.network.nope, typed_config: {"@type": type.googleapis.com/google.protobuf.Empty}}]}]}"#
                .to_string()],
        ),
        lds("duplicate_name", "name", &[l("l_dup", "", ""), l("l_dup", "", "")]),
        lds(
            "hcm_no_stat_prefix",
            "stat_prefix",
            &[l("l_nsp", "", "").replace("stat_prefix: l_nsp, ", "")],
        ),
        lds(
            "hcm_bad_regex",
            "regex",
            &[l("l_regex", "", "").replace(
                "match: {prefix: /}",
                "match: {safe_regex: {regex: \"(\"}}",
            )],
        ),
        lds(
            "hcm_unknown_http_filter",
            "http_filters",
            &[l("l_hf", "", "").replace(
                ROUTER,
                r#"[{name: envoy.filters.http.nope, typed_config: {"@type": type.googleapis.com/google.protobuf.Empty}}, {name: envoy.filters.http.router, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}]"#,
            )],
        ),
        lds(
            "bad_drain_type",
            "drain_type",
            &[l("l_drain", ", drain_type: 7", "")],
        ),
        lds(
            "negative_idle_timeout",
            "idle_timeout",
            &[l("l_idle", "", ", common_http_protocol_options: {idle_timeout: -1s}")],
        ),
        // CDS
        cds("valid_static", "", &[static_cluster("c_valid", "", 9)]),
        cds(
            "valid_eds",
            "",
            &["{name: c_eds, type: EDS, connect_timeout: 1s, eds_cluster_config: {eds_config: {ads: {}, resource_api_version: V3}}}".to_string()],
        ),
        cds("no_name", "name", &[static_cluster("\"\"", "", 9)]),
        cds(
            "negative_connect_timeout",
            "connect_timeout",
            &[static_cluster("c_timeout", "", 9).replace("connect_timeout: 1s", "connect_timeout: -1s")],
        ),
        cds("bad_lb_policy", "lb_policy", &[static_cluster("c_lb", ", lb_policy: 99", 9)]),
        cds(
            "duplicate_name",
            "name",
            &[static_cluster("c_dup", "", 9), static_cluster("c_dup", "", 10)],
        ),
        cds("endpoint_port_0", "port_value", &[static_cluster("c_port0", "", 0)]),
        cds(
            "unknown_transport_socket",
            "transport_socket",
            &[static_cluster(
                "c_ts",
                r#", transport_socket: {name: envoy.transport_sockets.nope, typed_config: {"@type": type.googleapis.com/google.protobuf.Empty}}"#,
                9,
            )],
        ),
        cds(
            "health_check_no_timeout",
            "timeout",
            &[static_cluster(
                "c_hc",
                ", health_checks: [{interval: 1s, unhealthy_threshold: 1, healthy_threshold: 1, tcp_health_check: {}}]",
                9,
            )],
        ),
        cds(
            "eds_without_config",
            "eds_cluster_config",
            &["{name: c_eds_bare, type: EDS, connect_timeout: 1s}".to_string()],
        ),
        cds(
            "ring_hash_bad_ring_sizes",
            "ring_hash_lb_config",
            &[static_cluster(
                "c_ring",
                ", lb_policy: RING_HASH, ring_hash_lb_config: {minimum_ring_size: 100, maximum_ring_size: 10}",
                9,
            )],
        ),
        cds(
            "priority_gap",
            "priority",
            &[static_cluster("c_gap", "", 9).replace(
                "endpoints: [{lb_endpoints",
                "endpoints: [{priority: 1, lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 9}}}}]}, {priority: 3, lb_endpoints",
            )],
        ),
        cds(
            "lb_subset_config",
            "lb_subset_config",
            &[static_cluster(
                "c_subset",
                ", lb_subset_config: {fallback_policy: ANY_ENDPOINT, subset_selectors: [{keys: [version]}]}",
                9,
            )],
        ),
        // RDS
        rds(
            "valid",
            "",
            route_config(&vhost("all", "*", &route("route: {cluster: e}"))),
        ),
        rds(
            "unknown_cluster",
            "cluster",
            route_config(&vhost("all", "*", &route("route: {cluster: nowhere}"))),
        ),
        rds(
            "bad_regex",
            "regex",
            route_config(&vhost(
                "all",
                "*",
                "{match: {safe_regex: {regex: \"a(\"}}, route: {cluster: e}}",
            )),
        ),
        rds(
            "duplicate_domain",
            "domains",
            route_config(&format!(
                "{}, {}",
                vhost("a", "x.test", &route("route: {cluster: e}")),
                vhost("b", "x.test", &route("route: {cluster: e}"))
            )),
        ),
        rds(
            "route_without_action",
            "action",
            route_config(&vhost("all", "*", "{match: {prefix: /}}")),
        ),
        rds(
            "prefix_and_regex_rewrite",
            "regex_rewrite",
            route_config(&vhost(
                "all",
                "*",
                &route("route: {cluster: e, prefix_rewrite: /a, regex_rewrite: {pattern: {regex: \"^/b\"}, substitution: /c}}"),
            )),
        ),
        rds(
            "bad_header_name",
            "key",
            route_config(&format!(
                "{{name: all, domains: [\"*\"], request_headers_to_add: [{{header: {{key: \"bad header\", value: v}}}}], routes: [{}]}}",
                route("route: {cluster: e}")
            )),
        ),
        rds(
            "negative_timeout",
            "timeout",
            route_config(&vhost("all", "*", &route("route: {cluster: e, timeout: -1s}"))),
        ),
        rds(
            "bad_redirect_code",
            "response_code",
            route_config(&vhost(
                "all",
                "*",
                &route("redirect: {path_redirect: /x, response_code: 9}"),
            )),
        ),
        rds(
            "direct_response_bad_status",
            "status",
            route_config(&vhost("all", "*", &route("direct_response: {status: 99}"))),
        ),
        rds(
            "mirror_policies",
            "",
            route_config(&vhost(
                "all",
                "*",
                &route("route: {cluster: e, request_mirror_policies: [{cluster: e, runtime_fraction: {default_value: {numerator: 10}, runtime_key: m.pct}, trace_sampled: false}, {cluster_header: x-m, disable_shadow_host_suffix_append: true}, {cluster: e, host_rewrite_literal: m.test}]}"),
            )),
        ),
        rds(
            "mirror_cluster_and_header",
            "request_mirror_policies",
            route_config(&vhost(
                "all",
                "*",
                &route("route: {cluster: e, request_mirror_policies: [{cluster: e, cluster_header: x-m}]}"),
            )),
        ),
        rds(
            "mirror_without_cluster",
            "request_mirror_policies",
            route_config(&format!(
                "{{name: all, domains: [\"*\"], request_mirror_policies: [{{runtime_fraction: {{default_value: {{numerator: 5}}}}}}], routes: [{}]}}",
                route("route: {cluster: e}")
            )),
        ),
        // EDS
        eds(
            "valid",
            "",
            assignment(&format!("{{lb_endpoints: [{}]}}", lb_endpoint(9, ""))),
        ),
        eds(
            "zero_weight",
            "load_balancing_weight",
            assignment(&format!(
                "{{lb_endpoints: [{}]}}",
                lb_endpoint(9, ", load_balancing_weight: 0")
            )),
        ),
        eds(
            "endpoint_port_0",
            "port_value",
            assignment(&format!("{{lb_endpoints: [{}]}}", lb_endpoint(0, ""))),
        ),
        eds(
            "priority_gap",
            "priority",
            assignment(&format!(
                "{{lb_endpoints: [{}]}}, {{priority: 2, lb_endpoints: [{}]}}",
                lb_endpoint(9, ""),
                lb_endpoint(10, "")
            )),
        ),
        eds(
            "no_address",
            "address",
            assignment("{lb_endpoints: [{endpoint: {}}]}"),
        ),
        eds(
            "bad_health_status",
            "health_status",
            assignment(&format!(
                "{{lb_endpoints: [{}]}}",
                lb_endpoint(9, ", health_status: 42")
            )),
        ),
        // SDS
        sds("valid", "", tls_secret(&m.cert, &m.key)),
        sds(
            "bad_pem",
            "certificate_chain",
            tls_secret("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n", &m.key),
        ),
        sds("key_mismatch", "private_key", tls_secret(&m.cert, &m.other_key)),
        sds(
            "validation_context_instead",
            "tls_certificate",
            format!(
                "{{name: {SDS_NAME}, validation_context: {{trusted_ca: {{inline_string: {}}}}}}}",
                quoted(&m.root)
            ),
        ),
        sds("no_type", "type", format!("{{name: {SDS_NAME}}}")),
    ]
}

/// What every update of a type carries besides a case's resources: LDS and CDS start empty
/// (the static resources subscribe to the other types), the others hold a valid resource.
fn baseline(m: &Material) -> Snapshot {
    let mut s = Snapshot::default();
    let mut put = |type_url: &str, items: Vec<Any>| {
        s.types
            .insert(type_url.to_string(), resources("base", type_url, &items));
    };
    put(LISTENER, vec![]);
    put(CLUSTER, vec![]);
    put(
        ROUTE,
        vec![res(
            ROUTE_T,
            &route_config(&vhost(
                "all",
                "*",
                "{match: {prefix: /}, route: {cluster: e}}",
            )),
        )],
    );
    put(
        ENDPOINT,
        vec![res(
            ENDPOINT_T,
            &assignment(&format!("{{lb_endpoints: [{}]}}", lb_endpoint(9, ""))),
        )],
    );
    put(
        SECRET,
        vec![res(
            SECRET_T,
            &format!(
                "{{name: {SDS_NAME}, tls_certificate: {{certificate_chain: {{inline_string: {}}}, private_key: {{inline_string: {}}}}}}}",
                quoted(&m.cert),
                quoted(&m.key)
            ),
        )],
    );
    s
}

/// A type's resources at `version`. The wildcard types (LDS, CDS) are keyed by position, so
/// that one update can carry two resources of the same name; the others by name (what a
/// subscription asks for).
fn resources(version: &str, type_url: &str, items: &[Any]) -> Resources {
    let wildcard = matches!(type_url, LISTENER | CLUSTER);
    Resources {
        version: version.to_string(),
        items: items
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let key = if wildcard {
                    format!("{i:04}")
                } else {
                    remora_xds::resource::name_of(a).unwrap_or_default()
                };
                (key, a.clone())
            })
            .collect(),
    }
}

/// Both proxies' bootstraps: ADS to `xds`; LDS and CDS over it; a static listener taking its
/// routes from RDS (`r`), one terminating TLS with a certificate from SDS (`s_cert`), and a
/// static EDS cluster (`e`).
fn xds_bootstrap(side: Side, xds: std::net::SocketAddr) -> String {
    let http2 = "    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        explicit_http_config: {http2_protocol_options: {}}\n";
    let ads = "{ads: {}, resource_api_version: V3}";
    let listeners = format!(
        r#"  - name: rds_in
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {HCM_TYPE}
          stat_prefix: rds_in
          rds: {{route_config_name: {RDS_NAME}, config_source: {ads}}}
          http_filters: {ROUTER}
  - name: sds_in
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {HCM_TYPE}
          stat_prefix: sds_in
          route_config: {{name: sds_routes, virtual_hosts: [{{name: all, domains: ["*"], routes: [{{match: {{prefix: /}}, direct_response: {{status: 200}}}}]}}]}}
          http_filters: {ROUTER}
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            tls_certificate_sds_secret_configs: [{{name: {SDS_NAME}, sds_config: {ads}}}]
"#
    );
    let clusters = format!(
        "{}  - name: {EDS_NAME}\n    type: EDS\n    connect_timeout: 1s\n    eds_cluster_config: {{eds_config: {ads}}}\n",
        cluster("xds-grpc", &[xds], http2)
    );
    format!(
        "node: {{id: {}, cluster: diff}}\ndynamic_resources:\n  ads_config:\n    api_type: GRPC\n    transport_api_version: V3\n    set_node_on_first_message_only: true\n    grpc_services:\n    - envoy_grpc: {{cluster_name: xds-grpc}}\n  cds_config: {ads}\n  lds_config: {ads}\n{}",
        node(side),
        bootstrap(&listeners, &clusters)
    )
}

/// A proxy's answer to one update.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    Ack,
    Nack(String),
    NoAnswer,
}

impl Verdict {
    fn name(&self) -> &'static str {
        match self {
            Verdict::Ack => "ACK",
            Verdict::Nack(_) => "NACK",
            Verdict::NoAnswer => "no answer",
        }
    }
}

pub async fn run(envoy: &Path, filter: Option<&str>) -> Vec<CaseResult> {
    let m = material();
    let cases: Vec<XdsCase> = corpus(&m)
        .into_iter()
        .filter(|c| filter.is_none_or(|f| c.id.contains(f)))
        .collect();
    if cases.is_empty() {
        return Vec::new();
    }
    let cache = SnapshotCache::new();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let xds = l.local_addr().unwrap();
    let server = crate::support::serve_ads(cache.clone(), l);
    let base = baseline(&m);
    for side in Side::BOTH {
        cache.set_snapshot(node(side), base.clone());
    }
    let pair = Pair::start_each(
        envoy,
        &xds_bootstrap(Side::Envoy, xds),
        &xds_bootstrap(Side::Remora, xds),
    )
    .await;
    let mut results = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let version = format!("v{i}");
        let mut snap = base.clone();
        let mut items = snap
            .types
            .get(c.type_url)
            .map(|r| r.items.values().cloned().collect::<Vec<_>>())
            .unwrap_or_default();
        if !matches!(c.type_url, LISTENER | CLUSTER) {
            items.clear();
        }
        items.extend(c.resources.iter().cloned());
        snap.types.insert(
            c.type_url.to_string(),
            resources(&version, c.type_url, &items),
        );
        let [e, r] = verdicts(&cache, c.type_url, snap).await;
        let diff = match (&e, &r) {
            (a, b) if a.name() == b.name() => {
                if let (Verdict::Nack(em), Verdict::Nack(rm)) = (&e, &r) {
                    let names = |msg: &str| !c.field.is_empty() && msg.contains(c.field);
                    println!(
                        "{}: both NACK; the field `{}` named by envoy: {}, by remora: {}\n  envoy: {}\n  remora: {}",
                        c.id,
                        c.field,
                        names(em),
                        names(rm),
                        first_line(em),
                        first_line(rm)
                    );
                }
                None
            }
            (Verdict::Nack(em), Verdict::Ack) => Some(format!(
                "{NEVER}: remora ACKs what Envoy NACKs: {}",
                first_line(em)
            )),
            (Verdict::Ack, Verdict::Nack(rm)) => {
                Some(format!("Envoy ACKs, remora NACKs: {}", first_line(rm)))
            }
            _ => Some(format!("envoy {:?} / remora {:?}", e, r)),
        };
        results.push(CaseResult {
            group: "xds",
            id: c.id.clone(),
            diff,
        });
        // Back to the baseline, so that the next case of another type starts from it.
        restore(&cache, c.type_url, &base, &format!("{version}-base")).await;
    }
    drop(pair);
    server.abort();
    results
}

fn first_line(m: &str) -> String {
    let l = m.lines().next().unwrap_or("");
    if l.chars().count() > 300 {
        format!("{}…", l.chars().take(300).collect::<String>())
    } else {
        l.to_string()
    }
}

/// Set `snap` for both nodes and wait for each one's ACK or NACK of `type_url`.
async fn verdicts(cache: &Arc<SnapshotCache>, type_url: &str, snap: Snapshot) -> [Verdict; 2] {
    let before = Side::BOTH.map(|s| cache.applied(node(s), type_url));
    for side in Side::BOTH {
        cache.set_snapshot(node(side), snap.clone());
    }
    let version = snap.types[type_url].version.clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut out = [Verdict::NoAnswer, Verdict::NoAnswer];
    for (i, side) in Side::BOTH.into_iter().enumerate() {
        loop {
            let now = cache.applied(node(side), type_url);
            if now.nacks > before[i].nacks {
                out[i] = Verdict::Nack(now.nacked.map(|(_, m)| m).unwrap_or_default());
                break;
            }
            if now.acks > before[i].acks && now.acked.as_deref() == Some(version.as_str()) {
                out[i] = Verdict::Ack;
                break;
            }
            if Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    out
}

/// Put `type_url` back to its baseline resources (at a new version) and wait for the ACKs.
async fn restore(cache: &Arc<SnapshotCache>, type_url: &str, base: &Snapshot, version: &str) {
    let mut snap = base.clone();
    let items: Vec<Any> = base.types[type_url].items.values().cloned().collect();
    snap.types
        .insert(type_url.to_string(), resources(version, type_url, &items));
    let _ = verdicts(cache, type_url, snap).await;
}
