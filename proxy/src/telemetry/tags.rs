//! Envoy's tag extraction: turns `cluster.foo.upstream_rq_503` into the tag-extracted name
//! `cluster.upstream_rq` with tags `envoy.cluster_name=foo`, `envoy.response_code=503`.
//! Runs when a stat is registered, never per request.
//!
//! Each extractor is a regex whose first capture group is removed from the name and whose
//! second group (or the first, if there is only one) is the tag value; every extractor runs
//! on the original name and the removals are applied together, as in Envoy. Patterns use
//! Envoy's std::regex (ECMAScript) syntax, lookaheads included, hence fancy-regex.

use crate::model::stats_tags::{DEFAULT_TAGS, DefaultTag, TagSpec};
use fancy_regex::Regex;
use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};

/// A stat's tag-extracted name and tags. Interned: the extracted name is shared by every
/// cluster's copy of a stat, and a cluster's tag list by all its stats, so 10 000 clusters do
/// not each carry their own copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tags {
    /// The name with every extracted part removed.
    pub extracted_name: Arc<str>,
    pub tags: Arc<[(Arc<str>, Arc<str>)]>,
}

impl Default for Tags {
    fn default() -> Self {
        Self {
            extracted_name: Arc::from(""),
            tags: Arc::from(Vec::new()),
        }
    }
}

type TagList = Arc<[(Arc<str>, Arc<str>)]>;

/// The producer's interned strings and tag lists: shared by the stats that use them, and
/// pruned (`TagProducer::prune`) when stats are released, as Envoy's symbol table frees a
/// removed cluster's names.
#[derive(Debug, Default)]
struct Interner {
    strings: Mutex<HashSet<Arc<str>>>,
    lists: Mutex<HashSet<TagList>>,
}

impl Interner {
    fn string(&self, s: &str) -> Arc<str> {
        let mut set = self.strings.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(a) = set.get(s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        set.insert(a.clone());
        a
    }

    fn tags(&self, v: Vec<(Arc<str>, Arc<str>)>) -> TagList {
        let mut set = self.lists.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(a) = set.get(v.as_slice()) {
            return a.clone();
        }
        let a: TagList = Arc::from(v);
        set.insert(a.clone());
        a
    }

    /// Forget what only the interner holds (lists first: they hold strings).
    fn prune(&self) {
        self.lists
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|l| Arc::strong_count(l) > 1);
        self.strings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|s| Arc::strong_count(s) > 1);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.strings.lock().map(|s| s.len()).unwrap_or(0)
    }
}

/// One extractor. Envoy's defaults compile on first use: most (mongo, dynamo, gRPC bridge…)
/// never meet a name that passes their pre-filters, and each compiled regex costs tens to
/// hundreds of KB.
#[derive(Debug)]
struct Extractor {
    name: String,
    pattern: &'static str,
    /// Names must start with this (the literal at the regex's start, up to `\.`), as in Envoy.
    prefix: Option<String>,
    substr: Option<&'static str>,
    regex: OnceLock<Regex>,
}

// === impl Extractor ===

impl Extractor {
    fn custom(name: &str, pattern: &str) -> Result<Self, String> {
        let regex =
            Regex::new(pattern).map_err(|e| format!("invalid regex for tag {name}: {e}"))?;
        Ok(Extractor {
            name: name.to_string(),
            pattern: "",
            // A user's pattern may alternate at the top level; no pre-filter is derived from it.
            prefix: None,
            substr: None,
            regex: OnceLock::from(regex),
        })
    }

    fn default(d: &DefaultTag) -> Self {
        Extractor {
            name: d.name.to_string(),
            pattern: d.regex,
            prefix: regex_prefix(d.regex),
            substr: d.substr,
            regex: OnceLock::new(),
        }
    }

    fn may_match(&self, name: &str) -> bool {
        self.prefix.as_deref().is_none_or(|p| {
            name.strip_prefix(p)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
        }) && self.substr.is_none_or(|s| name.contains(s))
    }

    fn regex(&self) -> &Regex {
        self.regex.get_or_init(|| {
            Regex::new(self.pattern).expect("Envoy's default tag regexes compile (unit-tested)")
        })
    }
}

/// Envoy's regex prefix: `^name\.…` or `^name(?=\.)…` (or `^name$`) means only names equal to
/// `name` or starting with `name.` can match.
fn regex_prefix(pattern: &str) -> Option<String> {
    let body = pattern.strip_prefix('^')?;
    let end = body
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(body.len());
    if end == 0 {
        return None;
    }
    let rest = &body[end..];
    (rest.starts_with(r"\.") || rest.starts_with(r"(?=\.)") || rest == "$")
        .then(|| body[..end].to_string())
}

#[derive(Debug, Default)]
pub struct TagProducer {
    extractors: Vec<Extractor>,
    fixed: Vec<(String, String)>,
    interner: Interner,
}

impl TagProducer {
    pub fn envoy_defaults() -> Self {
        Self::new(&[], true).expect("Envoy's default tag regexes compile")
    }

    /// Custom tags first, then (with `use_all_default_tags`) the defaults not overridden by name.
    pub fn new(specs: &[TagSpec], use_all_default_tags: bool) -> Result<Self, String> {
        let mut p = TagProducer::default();
        for spec in specs {
            match spec {
                TagSpec::Regex { name, regex } => {
                    p.extractors.push(Extractor::custom(name, regex)?)
                }
                TagSpec::Fixed { name, value } => p.fixed.push((name.clone(), value.clone())),
                TagSpec::Default { name } => {
                    let before = p.extractors.len();
                    p.extractors.extend(
                        DEFAULT_TAGS
                            .iter()
                            .filter(|d| d.name == name)
                            .map(Extractor::default),
                    );
                    if p.extractors.len() == before {
                        return Err(format!(
                            "no regex specified for tag specifier and no default regex for name: '{name}'"
                        ));
                    }
                }
            }
        }
        if use_all_default_tags {
            let named = |n: &str| {
                specs.iter().any(|s| match s {
                    TagSpec::Regex { name, .. }
                    | TagSpec::Fixed { name, .. }
                    | TagSpec::Default { name } => name == n,
                })
            };
            p.extractors.extend(
                DEFAULT_TAGS
                    .iter()
                    .filter(|d| !named(d.name))
                    .map(Extractor::default),
            );
        }
        Ok(p)
    }

    /// Forget interned names and tags no stat uses any more (after stats were released).
    pub fn prune(&self) {
        self.interner.prune();
    }

    pub fn produce(&self, name: &str) -> Tags {
        let mut tags = Vec::new();
        let mut remove: Vec<(usize, usize)> = Vec::new();
        for ex in self.extractors.iter().filter(|ex| ex.may_match(name)) {
            let Ok(Some(caps)) = ex.regex().captures(name) else {
                continue;
            };
            let Some(removed) = caps.get(1) else { continue };
            let value = caps.get(2).unwrap_or(removed);
            tags.push((
                self.interner.string(&ex.name),
                self.interner.string(value.as_str()),
            ));
            remove.push((removed.start(), removed.end()));
        }
        for (n, v) in &self.fixed {
            tags.push((self.interner.string(n), self.interner.string(v)));
        }
        let extracted_name = if remove.is_empty() {
            self.interner.string(name)
        } else {
            let s: String = name
                .char_indices()
                .filter(|(i, _)| !remove.iter().any(|(s, e)| i >= s && i < e))
                .map(|(_, c)| c)
                .collect();
            self.interner.string(&s)
        };
        Tags {
            extracted_name,
            tags: self.interner.tags(tags),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interned_names_go_when_no_stat_uses_them() {
        let p = TagProducer::envoy_defaults();
        let kept = p.produce("cluster.kept.upstream_rq_503");
        let before = p.interner.len();
        drop(p.produce("cluster.gone.upstream_rq_503"));
        assert!(
            p.interner.len() > before,
            "the removed cluster's name was interned"
        );
        p.prune();
        assert_eq!(p.interner.len(), before);
        assert_eq!(p.produce("cluster.kept.upstream_rq_503"), kept);
    }

    #[test]
    fn default_regexes_compile_and_prefixes_are_envoys() {
        for d in DEFAULT_TAGS {
            Extractor::default(d).regex();
        }
        assert_eq!(
            regex_prefix(r"^cluster\.(([^\.]+)\.).*").as_deref(),
            Some("cluster")
        );
        assert_eq!(
            regex_prefix(r"^http(?=\.).*?\.rds\.").as_deref(),
            Some("http")
        );
        assert_eq!(
            regex_prefix(r"^listener_manager\.((worker_\d+)\.)").as_deref(),
            Some("listener_manager")
        );
        assert_eq!(regex_prefix(r"_rq(_(\d{3}))$"), None);
        assert_eq!(regex_prefix(r"^http(s)?\."), None);
        // Only the extractors whose pre-filters pass are compiled.
        let p = TagProducer::envoy_defaults();
        p.produce("cluster.a.upstream_rq_200");
        let compiled: Vec<&str> = p
            .extractors
            .iter()
            .filter(|e| e.regex.get().is_some())
            .map(|e| e.name.as_str())
            .collect();
        assert_eq!(
            compiled,
            [
                "envoy.response_code",
                "envoy.response_code_class",
                "envoy.cluster_name"
            ]
        );
    }

    fn produce(name: &str) -> (String, Vec<(String, String)>) {
        let t = TagProducer::envoy_defaults().produce(name);
        (
            t.extracted_name.to_string(),
            t.tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
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
        assert_eq!(&*t.extracted_name, "cluster.upstream_rq");
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
