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

/// Plain text: counters and gauges (sorted), then histograms; Istio's labelled series by
/// their flat names among them.
pub fn text(store: &Store, sel: &Selection) -> String {
    let entries = store.entries();
    let (labelled, labelled_histograms) = labelled_text(store, sel);
    let mut values: Vec<(&str, String)> = Vec::new();
    let mut histograms: Vec<(&str, HistogramSnapshot)> = Vec::new();
    for e in entries.iter().filter(|e| sel.keep(e)) {
        match &e.metric {
            Metric::Counter(c) => values.push((&e.name, c.value().to_string())),
            Metric::Gauge(g) => values.push((&e.name, g.value().to_string())),
            Metric::Histogram(h) => histograms.push((&e.name, h.snapshot())),
        }
    }
    values.extend(labelled.iter().map(|(n, v)| (n.as_str(), v.clone())));
    histograms.extend(
        labelled_histograms
            .iter()
            .map(|(n, h)| (n.as_str(), h.clone())),
    );
    values.sort_by(|a, b| a.0.cmp(b.0));
    histograms.sort_by(|a, b| a.0.cmp(b.0));
    let mut out = String::new();
    for (name, v) in values {
        let _ = writeln!(out, "{name}: {v}");
    }
    for (name, cumulative) in histograms {
        if cumulative.count == 0 {
            let _ = writeln!(out, "{name}: No recorded values");
            continue;
        }
        let interval = store.interval(name, &cumulative);
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
        let _ = writeln!(out, "{name}: {}", parts.join(" "));
    }
    out
}

/// `?format=json`.
pub fn json(store: &Store, sel: &Selection) -> serde_json::Value {
    use serde_json::json;
    let entries = store.entries();
    let (labelled, labelled_histograms) = labelled_text(store, sel);
    let mut values: Vec<(&str, u64, i64, bool)> = Vec::new();
    let mut histograms: Vec<(&str, HistogramSnapshot)> = Vec::new();
    for e in entries.iter().filter(|e| sel.keep(e)) {
        match &e.metric {
            Metric::Counter(c) => values.push((&e.name, c.value(), 0, true)),
            Metric::Gauge(g) => values.push((&e.name, 0, g.value(), false)),
            Metric::Histogram(h) => histograms.push((&e.name, h.snapshot())),
        }
    }
    let mut stats: Vec<(&str, serde_json::Value)> = values
        .into_iter()
        .map(|(n, c, g, counter)| {
            let v = if counter { json!(c) } else { json!(g) };
            (n, json!({"name": n, "value": v}))
        })
        .collect();
    for (n, v) in &labelled {
        let v: serde_json::Value = v.parse::<i64>().map_or(json!(v), |i| json!(i));
        stats.push((n, json!({"name": n, "value": v})));
    }
    stats.sort_by(|a, b| a.0.cmp(b.0));
    let mut stats: Vec<serde_json::Value> = stats.into_iter().map(|(_, v)| v).collect();
    histograms.extend(
        labelled_histograms
            .iter()
            .map(|(n, h)| (n.as_str(), h.clone())),
    );
    histograms.sort_by(|a, b| a.0.cmp(b.0));
    let mut computed = Vec::new();
    for (name, cumulative) in histograms {
        let interval = store.interval(name, &cumulative);
        let values: Vec<serde_json::Value> = QUANTILES
            .iter()
            .map(|q| json!({"interval": interval.quantile(*q), "cumulative": cumulative.quantile(*q)}))
            .collect();
        computed.push(json!({"name": name, "values": values}));
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

/// The visible series of a labelled family that `sel` keeps (`filter` on the family's name
/// for Prometheus, on each series' joined name for `/stats`).
fn labelled_series(
    f: &crate::telemetry::labelled::Family,
    sel: &Selection,
    joined: bool,
) -> Vec<(Option<String>, Arc<crate::telemetry::labelled::Series>)> {
    use crate::telemetry::labelled::Value;
    if !joined
        && let Some(re) = &sel.filter
        && !re.is_match(&f.name)
    {
        return Vec::new();
    }
    f.snapshot()
        .into_iter()
        .filter(|s| {
            !sel.used_only
                || match &s.value {
                    Value::Counter(c) => c.value() > 0,
                    Value::Gauge(g) => g.used(),
                    Value::Histogram(h) => h.snapshot().count > 0,
                }
        })
        .filter_map(|s| {
            if !joined {
                return Some((None, s));
            }
            let pairs: Vec<(&str, &str)> = s.labels.iter().map(|(k, v)| (&**k, &**v)).collect();
            let name = f.joined_name(&pairs);
            match &sel.filter {
                Some(re) if !re.is_match(&name) => None,
                _ => Some((Some(name), s)),
            }
        })
        .collect()
}

/// Labelled families (Istio's metrics): named as they are, no `envoy_` prefix.
fn labelled_prometheus(store: &Store, sel: &Selection, out: &mut String) {
    use crate::telemetry::labelled::Value;
    for f in store.labelled().all() {
        let series = labelled_series(&f, sel, false);
        if series.is_empty() {
            continue;
        }
        let family = &f.name;
        let _ = writeln!(out, "# TYPE {family} {}", f.kind.as_str());
        let mut tags = String::new();
        for (_, s) in series {
            // The label text once per series (a histogram prints it on 22 lines).
            tags.clear();
            label_text(&s.labels, &mut tags);
            match &s.value {
                Value::Counter(c) => {
                    let _ = writeln!(out, "{family}{{{tags}}} {}", c.value());
                }
                Value::Gauge(g) => {
                    let _ = writeln!(out, "{family}{{{tags}}} {}", g.value());
                }
                Value::Histogram(h) => histogram_lines_with(out, family, &tags, &h.snapshot()),
            }
        }
        out.push('\n');
    }
}

/// `k1="v1",k2="v2"` (sanitised names, escaped values), without the braces.
fn label_text(tags: &[(Arc<str>, Arc<str>)], out: &mut String) {
    for (i, (k, v)) in tags.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        for c in k.chars() {
            out.push(if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            });
        }
        out.push_str("=\"");
        for c in v.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

/// A histogram's bucket, sum and count lines with the label text `tags` (no braces).
fn histogram_lines_with(out: &mut String, family: &str, tags: &str, s: &HistogramSnapshot) {
    let cum = s.cumulative();
    let sep = if tags.is_empty() { "" } else { "," };
    for (i, b) in BUCKETS.iter().enumerate() {
        let _ = writeln!(
            out,
            "{family}_bucket{{{tags}{sep}le=\"{}\"}} {}",
            fmt_bound(*b),
            cum[i]
        );
    }
    let _ = writeln!(out, "{family}_bucket{{{tags}{sep}le=\"+Inf\"}} {}", s.count);
    let _ = writeln!(out, "{family}_sum{{{tags}}} {}", s.sum);
    let _ = writeln!(out, "{family}_count{{{tags}}} {}", s.count);
}

/// Labelled series as plain `/stats` shows them: Envoy's flat name with the tags joined in
/// (`istiocustom.<family>.<label>.<value>…`), counters and gauges as `(name, value)` and
/// histograms as `(name, snapshot)`.
type TextLines = (Vec<(String, String)>, Vec<(String, HistogramSnapshot)>);

fn labelled_text(store: &Store, sel: &Selection) -> TextLines {
    use crate::telemetry::labelled::Value;
    let (mut values, mut histograms) = (Vec::new(), Vec::new());
    for f in store.labelled().all() {
        for (name, s) in labelled_series(&f, sel, true) {
            let name = name.unwrap_or_default();
            match &s.value {
                Value::Counter(c) => values.push((name, c.value().to_string())),
                Value::Gauge(g) => values.push((name, g.value().to_string())),
                Value::Histogram(h) => histograms.push((name, h.snapshot())),
            }
        }
    }
    (values, histograms)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Istio's series in plain `/stats` by Envoy's flat tagged name, in `?format=json`,
    /// through `filter`, and zeroed by `/reset_counters`.
    #[test]
    fn labelled_series_in_text_json_and_reset() {
        use crate::telemetry::labelled::Kind;
        let s = Store::default();
        s.counter("cluster.a.upstream_rq_total").inc();
        let all = |_: &str| true;
        let rq = s.labelled().family("istio_requests_total", Kind::Counter);
        rq.series(&[("reporter", "source"), ("response_code", "200")], &all)
            .add(3);
        let bytes = s.labelled().family("istio_request_bytes", Kind::Histogram);
        bytes.series(&[("reporter", "source")], &all).add(10);
        let sel = Selection {
            filter: None,
            used_only: false,
        };
        let t = text(&s, &sel);
        assert!(
            t.contains("cluster.a.upstream_rq_total: 1\nistiocustom.istio_requests_total.reporter.source.response_code.200: 3\n"),
            "{t}"
        );
        assert!(
            t.contains("istiocustom.istio_request_bytes.reporter.source: P0(5,5)"),
            "{t}"
        );
        let j = json(&s, &sel).to_string();
        assert!(
            j.contains(r#"{"name":"istiocustom.istio_requests_total.reporter.source.response_code.200","value":3}"#),
            "{j}"
        );
        assert!(
            j.contains(r#""name":"istiocustom.istio_request_bytes.reporter.source""#),
            "{j}"
        );
        let only = Selection {
            filter: Some(regex::Regex::new(r"response_code\.200").unwrap()),
            used_only: false,
        };
        assert_eq!(
            text(&s, &only),
            "istiocustom.istio_requests_total.reporter.source.response_code.200: 3\n"
        );
        s.reset_counters();
        let t = text(&s, &sel);
        assert!(t.contains("response_code.200: 0\n"), "{t}");
        assert!(
            t.contains("istiocustom.istio_request_bytes.reporter.source: No recorded values"),
            "{t}"
        );
        let used = Selection {
            filter: None,
            used_only: true,
        };
        assert!(!text(&s, &used).contains("istiocustom"));
    }

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
