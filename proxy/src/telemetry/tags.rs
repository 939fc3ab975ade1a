//! Envoy's tag extraction: turns `cluster.foo.upstream_rq_503` into the tag-extracted name
//! `cluster.upstream_rq` with tags `envoy.cluster_name=foo`, `envoy.response_code=503`.
//! Runs when a stat is registered, never per request.
//!
//! Each extractor is a regex whose first capture group is removed from the name and whose
//! second group (or the first, if there is only one) is the tag value; every extractor runs
//! on the original name and the removals are applied together, as in Envoy. Patterns use
//! Envoy's std::regex (ECMAScript) syntax, lookaheads included, hence fancy-regex.

use fancy_regex::Regex;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tags {
    /// The name with every extracted part removed.
    pub extracted_name: String,
    pub tags: Vec<(String, String)>,
}

#[derive(Debug)]
struct Extractor {
    name: String,
    regex: Regex,
}

#[derive(Debug, Default)]
pub struct TagProducer {
    extractors: Vec<Extractor>,
    fixed: Vec<(String, String)>,
}

/// Envoy's default tag extractors (source/common/config/well_known_names.cc), in Envoy's order.
pub const DEFAULT_TAGS: &[(&str, &str)] = &[
    ("envoy.response_code", r"_rq(_(\d{3}))$"),
    ("envoy.response_code_class", r"_rq_(\d)xx$"),
    (
        "envoy.dynamo_partition_id",
        r"^http(?=\.).*?\.dynamodb\.table(?=\.).*?\.capacity(?=\.).*?(\.__partition_id=(\w{7}))$",
    ),
    (
        "envoy.dynamo_operation",
        r"^http(?=\.).*?\.dynamodb.(?:operation|table(?=\.).*?\.capacity)(\.(.*?))(?:\.|$)",
    ),
    (
        "envoy.mongo_callsite",
        r"^mongo(?=\.).*?\.collection(?=\.).*?\.callsite\.((.*?)\.).*?query.\w+?$",
    ),
    (
        "envoy.dynamo_table",
        r"^http(?=\.).*?\.dynamodb.(?:table|error)\.((.*?)\.)",
    ),
    (
        "envoy.mongo_collection",
        r"^mongo(?=\.).*?\.collection\.((.*?)\.).*?query.\w+?$",
    ),
    ("envoy.mongo_cmd", r"^mongo(?=\.).*?\.cmd\.((.*?)\.)\w+?$"),
    (
        "envoy.grpc_bridge_method",
        r"^cluster(?=\.).*?\.grpc(?=\.).*\.((.*?)\.)\w+?$",
    ),
    (
        "envoy.http_user_agent",
        r"^http(?=\.).*?\.user_agent\.((.*?)\.)\w+?$",
    ),
    (
        "envoy.virtual_cluster",
        r"^vhost(?=\.).*?\.vcluster\.((.*?)\.)\w+?$",
    ),
    (
        "envoy.fault_downstream_cluster",
        r"^http(?=\.).*?\.fault\.((.*?)\.)\w+?$",
    ),
    (
        "envoy.ssl_cipher",
        r"^listener(?=\.).*?\.ssl\.cipher(\.(.*?))$",
    ),
    (
        "envoy.ssl_cipher_suite",
        r"^cluster(?=\.).*?\.ssl\.ciphers(\.(.*?))$",
    ),
    (
        "envoy.grpc_bridge_service",
        r"^cluster(?=\.).*?\.grpc\.((.*?)\.)",
    ),
    ("envoy.tcp_prefix", r"^tcp\.((.*?)\.)\w+?$"),
    ("envoy.udp_prefix", r"^udp\.((.*?)\.)\w+?$"),
    (
        "envoy.clientssl_prefix",
        r"^auth\.clientssl\.((.*?)\.)\w+?$",
    ),
    ("envoy.ratelimit_prefix", r"^ratelimit\.((.*?)\.)\w+?$"),
    ("envoy.cluster_name", r"^cluster\.(([^\.]+)\.).*"),
    (
        "envoy.http_conn_manager_prefix",
        r"^listener(?=\.).*?\.http\.((.*?)\.)",
    ),
    ("envoy.http_conn_manager_prefix", r"^http\.((.*?)\.)"),
    (
        "envoy.listener_address",
        r"^listener\.(((?:[_.[:digit:]]*|[_\[\]aAbBcCdDeEfF[:digit:]]*))\.)",
    ),
    ("envoy.virtual_host", r"^vhost\.((.*?)\.)"),
    ("envoy.mongo_prefix", r"^mongo\.((.*?)\.)"),
    (
        "envoy.rds_route_config",
        r"^http(?=\.).*?\.rds\.((.*?)\.)\w+?$",
    ),
    ("envoy.worker_id", r"^listener_manager\.((worker_\d+)\.)"),
];

/// A custom tag from bootstrap `stats_config.stats_tags`.
#[derive(Debug, Clone)]
pub enum TagSpec {
    Regex {
        name: String,
        regex: String,
    },
    Fixed {
        name: String,
        value: String,
    },
    /// A default tag named without a regex: use Envoy's default pattern for it.
    Default {
        name: String,
    },
}

impl TagProducer {
    pub fn envoy_defaults() -> Self {
        Self::new(&[], true).expect("Envoy's default tag regexes compile")
    }

    /// Custom tags first, then (with `use_all_default_tags`) the defaults not overridden by name.
    pub fn new(specs: &[TagSpec], use_all_default_tags: bool) -> Result<Self, String> {
        let mut p = TagProducer::default();
        let compile = |name: &str, re: &str| {
            Regex::new(re)
                .map(|regex| Extractor {
                    name: name.to_string(),
                    regex,
                })
                .map_err(|e| format!("invalid regex for tag {name}: {e}"))
        };
        for spec in specs {
            match spec {
                TagSpec::Regex { name, regex } => p.extractors.push(compile(name, regex)?),
                TagSpec::Fixed { name, value } => p.fixed.push((name.clone(), value.clone())),
                TagSpec::Default { name } => {
                    let defaults: Vec<_> = DEFAULT_TAGS.iter().filter(|(n, _)| n == name).collect();
                    if defaults.is_empty() {
                        return Err(format!(
                            "no regex specified for tag specifier and no default regex for name: '{name}'"
                        ));
                    }
                    for (n, re) in defaults {
                        p.extractors.push(compile(n, re)?);
                    }
                }
            }
        }
        if use_all_default_tags {
            let named: Vec<String> = specs
                .iter()
                .map(|s| match s {
                    TagSpec::Regex { name, .. }
                    | TagSpec::Fixed { name, .. }
                    | TagSpec::Default { name } => name.clone(),
                })
                .collect();
            for (n, re) in DEFAULT_TAGS {
                if !named.iter().any(|x| x == n) {
                    p.extractors.push(compile(n, re)?);
                }
            }
        }
        Ok(p)
    }

    pub fn produce(&self, name: &str) -> Tags {
        let mut tags = Vec::new();
        let mut remove: Vec<(usize, usize)> = Vec::new();
        for ex in &self.extractors {
            let Ok(Some(caps)) = ex.regex.captures(name) else {
                continue;
            };
            let Some(removed) = caps.get(1) else { continue };
            let value = caps.get(2).unwrap_or(removed);
            tags.push((ex.name.clone(), value.as_str().to_string()));
            remove.push((removed.start(), removed.end()));
        }
        for (n, v) in &self.fixed {
            tags.push((n.clone(), v.clone()));
        }
        let extracted_name = if remove.is_empty() {
            name.to_string()
        } else {
            name.char_indices()
                .filter(|(i, _)| !remove.iter().any(|(s, e)| i >= s && i < e))
                .map(|(_, c)| c)
                .collect()
        };
        Tags {
            extracted_name,
            tags,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn produce(name: &str) -> (String, Vec<(String, String)>) {
        let t = TagProducer::envoy_defaults().produce(name);
        (t.extracted_name, t.tags)
    }

    #[test]
    fn envoy_default_extraction() {
        let (n, t) = produce("cluster.foo.upstream_rq_503");
        assert_eq!(n, "cluster.upstream_rq");
        assert!(t.contains(&("envoy.cluster_name".into(), "foo".into())));
        assert!(t.contains(&("envoy.response_code".into(), "503".into())));
        let (n, t) = produce("cluster.foo.upstream_rq_2xx");
        assert_eq!(n, "cluster.upstream_rq_xx");
        assert!(t.contains(&("envoy.response_code_class".into(), "2".into())));
        let (n, _) = produce("cluster.foo.circuit_breakers.default.cx_open");
        assert_eq!(n, "cluster.circuit_breakers.default.cx_open");
        let (n, t) = produce("http.ingress_http.downstream_rq_total");
        assert_eq!(
            (n.as_str(), t),
            (
                "http.downstream_rq_total",
                vec![(
                    "envoy.http_conn_manager_prefix".into(),
                    "ingress_http".into()
                )]
            )
        );
        let (n, t) = produce("listener.0.0.0.0_10000.downstream_cx_total");
        assert_eq!(n, "listener.downstream_cx_total");
        assert_eq!(
            t,
            vec![(
                "envoy.listener_address".to_string(),
                "0.0.0.0_10000".to_string()
            )]
        );
        let (n, t) = produce("listener.127.0.0.1_80.http.ingress.downstream_rq_2xx");
        assert_eq!(n, "listener.http.downstream_rq_xx");
        assert_eq!(t.len(), 3);
        let (n, t) = produce("tcp.mysql_tcp.downstream_cx_total");
        assert_eq!((n.as_str(), t.len()), ("tcp.downstream_cx_total", 1));
        // A dotted cluster name stays in the metric name.
        let (n, _) = produce("cluster.a.b.upstream_cx_total");
        assert_eq!(n, "cluster.b.upstream_cx_total");
    }

    #[test]
    fn istio_custom_tags() {
        let specs = vec![
            TagSpec::Regex {
                name: "cluster_name".into(),
                regex: r"^cluster(\.(.+);)".into(),
            },
            TagSpec::Regex {
                name: "response_code".into(),
                regex: r"_rq(_(\d{3}))$".into(),
            },
            TagSpec::Fixed {
                name: "mesh".into(),
                value: "m1".into(),
            },
        ];
        let p = TagProducer::new(&specs, false).unwrap();
        let t =
            p.produce("cluster.outbound|9080||reviews.default.svc.cluster.local;.upstream_rq_200");
        assert_eq!(t.extracted_name, "cluster.upstream_rq");
        assert_eq!(
            t.tags[0],
            (
                "cluster_name".into(),
                "outbound|9080||reviews.default.svc.cluster.local".into()
            )
        );
        assert_eq!(t.tags[2], ("mesh".into(), "m1".into()));
        assert!(
            TagProducer::new(
                &[TagSpec::Default {
                    name: "nope".into()
                }],
                false
            )
            .is_err()
        );
    }
}
