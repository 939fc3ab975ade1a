//! `/stats` in Envoy's text and JSON layouts, and `/stats/prometheus` with Envoy's tag-extracted
//! names and labels.

use crate::telemetry::stats::{BUCKETS, Entry, HistogramSnapshot, Metric, QUANTILES, Store};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;

/// Which stats a request asks for.
pub struct Selection {
    pub filter: Option<regex::Regex>,
    pub used_only: bool,
}

impl Selection {
    fn keep(&self, e: &Entry) -> bool {
        if let Some(f) = &self.filter
            && !f.is_match(&e.name)
        {
            return false;
        }
        if self.used_only {
            return match &e.metric {
                Metric::Counter(c) => c.value() > 0,
                Metric::Gauge(g) => g.used(),
                Metric::Histogram(h) => h.snapshot().count > 0,
            };
        }
        true
    }
}

fn fmt_quantile(v: Option<f64>) -> String {
    match v {
        None => "nan".into(),
        Some(v) => {
            // Envoy prints up to 6 significant digits without trailing zeros.
            let s = format!("{v:.6}");
            let s = s.trim_end_matches('0').trim_end_matches('.');
            s.to_string()
        }
    }
}

fn quantile_name(q: f64) -> String {
    let p = q * 100.0;
    if p.fract() == 0.0 {
        format!("P{}", p as u32)
    } else {
        format!("P{p}")
    }
}

/// Plain text: counters and gauges (sorted), then histograms.
pub fn text(store: &Store, sel: &Selection) -> String {
    let entries = store.entries();
    let mut out = String::new();
    for e in entries.iter().filter(|e| sel.keep(e)) {
        match &e.metric {
            Metric::Counter(c) => {
                let _ = writeln!(out, "{}: {}", e.name, c.value());
            }
            Metric::Gauge(g) => {
                let _ = writeln!(out, "{}: {}", e.name, g.value());
            }
            Metric::Histogram(_) => {}
        }
    }
    for e in entries.iter().filter(|e| sel.keep(e)) {
        if let Metric::Histogram(h) = &e.metric {
            let cumulative = h.snapshot();
            if cumulative.count == 0 {
                let _ = writeln!(out, "{}: No recorded values", e.name);
                continue;
            }
            let interval = store.interval(&e.name, &cumulative);
            let parts: Vec<String> = QUANTILES
                .iter()
                .map(|q| {
                    format!(
                        "{}({},{})",
                        quantile_name(*q),
                        fmt_quantile(interval.quantile(*q)),
                        fmt_quantile(cumulative.quantile(*q))
                    )
                })
                .collect();
            let _ = writeln!(out, "{}: {}", e.name, parts.join(" "));
        }
    }
    out
}

/// `?format=json`.
pub fn json(store: &Store, sel: &Selection) -> serde_json::Value {
    use serde_json::json;
    let entries = store.entries();
    let mut stats: Vec<serde_json::Value> = Vec::new();
    for e in entries.iter().filter(|e| sel.keep(e)) {
        match &e.metric {
            Metric::Counter(c) => stats.push(json!({"name": &*e.name, "value": c.value()})),
            Metric::Gauge(g) => stats.push(json!({"name": &*e.name, "value": g.value()})),
            Metric::Histogram(_) => {}
        }
    }
    let mut computed = Vec::new();
    for e in entries.iter().filter(|e| sel.keep(e)) {
        if let Metric::Histogram(h) = &e.metric {
            let cumulative = h.snapshot();
            let interval = store.interval(&e.name, &cumulative);
            let values: Vec<serde_json::Value> = QUANTILES
                .iter()
                .map(|q| json!({"interval": interval.quantile(*q), "cumulative": cumulative.quantile(*q)}))
                .collect();
            computed.push(json!({"name": &*e.name, "values": values}));
        }
    }
    if !computed.is_empty() {
        let supported: Vec<f64> = QUANTILES.iter().map(|q| q * 100.0).collect();
        stats.push(json!({"histograms": {"supported_quantiles": supported, "computed_quantiles": computed}}));
    }
    json!({ "stats": stats })
}

/// Envoy's Prometheus sanitising: anything outside `[a-zA-Z0-9_]` becomes `_`.
pub fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn labels(tags: &[(Arc<str>, Arc<str>)], extra: Option<(&str, String)>) -> String {
    let mut parts: Vec<String> = tags
        .iter()
        .map(|(k, v)| format!("{}=\"{}\"", sanitize(k), escape_label(v)))
        .collect();
    if let Some((k, v)) = extra {
        parts.push(format!("{k}=\"{v}\""));
    }
    format!("{{{}}}", parts.join(","))
}

fn fmt_bound(b: f64) -> String {
    if b.fract() == 0.0 {
        format!("{}", b as u64)
    } else {
        format!("{b}")
    }
}

/// `/stats/prometheus` (text format 0.0.4).
pub fn prometheus(store: &Store, sel: &Selection) -> String {
    // Group by metric family, keeping per-family sample order by stat name.
    let mut families: BTreeMap<String, (&'static str, Vec<Entry>)> = BTreeMap::new();
    for e in store.entries().into_iter().filter(|e| sel.keep(e)) {
        let family = format!("envoy_{}", sanitize(&e.tags.extracted_name));
        let kind = match e.metric {
            Metric::Counter(_) => "counter",
            Metric::Gauge(_) => "gauge",
            Metric::Histogram(_) => "histogram",
        };
        families
            .entry(family)
            .or_insert((kind, Vec::new()))
            .1
            .push(e);
    }
    let mut out = String::new();
    for (family, (kind, entries)) in families {
        let _ = writeln!(out, "# TYPE {family} {kind}");
        for e in entries {
            match &e.metric {
                Metric::Counter(c) => {
                    let _ = writeln!(out, "{family}{} {}", labels(&e.tags.tags, None), c.value());
                }
                Metric::Gauge(g) => {
                    let _ = writeln!(out, "{family}{} {}", labels(&e.tags.tags, None), g.value());
                }
                Metric::Histogram(h) => {
                    let s: HistogramSnapshot = h.snapshot();
                    let cum = s.cumulative();
                    for (i, b) in BUCKETS.iter().enumerate() {
                        let _ = writeln!(
                            out,
                            "{family}_bucket{} {}",
                            labels(&e.tags.tags, Some(("le", fmt_bound(*b)))),
                            cum[i]
                        );
                    }
                    let _ = writeln!(
                        out,
                        "{family}_bucket{} {}",
                        labels(&e.tags.tags, Some(("le", "+Inf".into()))),
                        s.count
                    );
                    let _ = writeln!(out, "{family}_sum{} {}", labels(&e.tags.tags, None), s.sum);
                    let _ = writeln!(
                        out,
                        "{family}_count{} {}",
                        labels(&e.tags.tags, None),
                        s.count
                    );
                }
            }
        }
        out.push('\n');
    }
    labelled_prometheus(store, sel, &mut out);
    out
}

/// Labelled families (Istio's metrics): named as they are, no `envoy_` prefix.
fn labelled_prometheus(store: &Store, sel: &Selection, out: &mut String) {
    use crate::telemetry::labelled::Value;
    for f in store.labelled().all() {
        if let Some(re) = &sel.filter
            && !re.is_match(&f.name)
        {
            continue;
        }
        let series: Vec<_> = f
            .snapshot()
            .into_iter()
            .filter(|s| {
                !sel.used_only
                    || match &s.value {
                        Value::Counter(c) => c.value() > 0,
                        Value::Gauge(g) => g.used(),
                        Value::Histogram(h) => h.snapshot().count > 0,
                    }
            })
            .collect();
        if series.is_empty() {
            continue;
        }
        let family = &f.name;
        let _ = writeln!(out, "# TYPE {family} {}", f.kind.as_str());
        for s in series {
            let tags = &s.labels[..];
            match &s.value {
                Value::Counter(c) => {
                    let _ = writeln!(out, "{family}{} {}", labels(tags, None), c.value());
                }
                Value::Gauge(g) => {
                    let _ = writeln!(out, "{family}{} {}", labels(tags, None), g.value());
                }
                Value::Histogram(h) => histogram_lines(out, family, tags, &h.snapshot()),
            }
        }
        out.push('\n');
    }
}

fn histogram_lines(
    out: &mut String,
    family: &str,
    tags: &[(Arc<str>, Arc<str>)],
    s: &HistogramSnapshot,
) {
    let cum = s.cumulative();
    for (i, b) in BUCKETS.iter().enumerate() {
        let le = Some(("le", fmt_bound(*b)));
        let _ = writeln!(out, "{family}_bucket{} {}", labels(tags, le), cum[i]);
    }
    let inf = Some(("le", "+Inf".to_string()));
    let _ = writeln!(out, "{family}_bucket{} {}", labels(tags, inf), s.count);
    let _ = writeln!(out, "{family}_sum{} {}", labels(tags, None), s.sum);
    let _ = writeln!(out, "{family}_count{} {}", labels(tags, None), s.count);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_layout() {
        let s = Store::default();
        s.counter("cluster.foo.upstream_rq_503").add(2);
        s.counter("cluster.bar.upstream_rq_200").inc();
        s.gauge("server.live").set(1);
        s.histogram("cluster.foo.upstream_rq_time").record(3);
        let sel = Selection {
            filter: None,
            used_only: false,
        };
        let p = prometheus(&s, &sel);
        assert!(p.contains("# TYPE envoy_cluster_upstream_rq counter\nenvoy_cluster_upstream_rq{envoy_response_code=\"200\",envoy_cluster_name=\"bar\"} 1\nenvoy_cluster_upstream_rq{envoy_response_code=\"503\",envoy_cluster_name=\"foo\"} 2\n\n"), "{p}");
        assert!(
            p.contains("# TYPE envoy_server_live gauge\nenvoy_server_live{} 1\n"),
            "{p}"
        );
        assert!(
            p.contains(
                "envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name=\"foo\",le=\"0.5\"} 0\n"
            ),
            "{p}"
        );
        assert!(
            p.contains(
                "envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name=\"foo\",le=\"5\"} 1\n"
            ),
            "{p}"
        );
        assert!(
            p.contains(
                "envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name=\"foo\",le=\"+Inf\"} 1\n"
            ),
            "{p}"
        );
        assert!(
            p.contains("envoy_cluster_upstream_rq_time_sum{envoy_cluster_name=\"foo\"} 3\n"),
            "{p}"
        );
    }

    #[test]
    fn text_layout() {
        let s = Store::default();
        s.counter("b.c").inc();
        s.gauge("a.g").set(3);
        s.histogram("h.x");
        let t = text(
            &s,
            &Selection {
                filter: None,
                used_only: false,
            },
        );
        assert_eq!(t, "a.g: 3\nb.c: 1\nh.x: No recorded values\n");
        let t = text(
            &s,
            &Selection {
                filter: Some(regex::Regex::new("b\\.").unwrap()),
                used_only: false,
            },
        );
        assert_eq!(t, "b.c: 1\n");
        assert_eq!(
            sanitize("An.artist.plays-violin@019street"),
            "An_artist_plays_violin_019street"
        );
    }
}
