//! Labelled metric families: Prometheus series named once and told apart by their label
//! values, as Istio's standard metrics are (`istio_requests_total{reporter="source",…}`).
//! Envoy keeps them as stats in a custom namespace (`istiocustom`, no `envoy_` prefix in
//! `/stats/prometheus`) whose tags are given by the filter rather than extracted from the name.
//!
//! A family holds its series by label set. Looking a series up hashes the label values in
//! place and takes a read lock (no allocation); only a new label set allocates, once. The
//! stats matcher sees a series by Envoy's joined name (`istiocustom.<family>.<label>.<value>…`)
//! when the series is created; a rejected one works but is never shown, as Envoy's null stats.

use crate::telemetry::stats::{Counter, Gauge, Histogram};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};

/// Envoy's namespace for Istio's metrics.
pub const NAMESPACE: &str = "istiocustom";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One series' value.
#[derive(Debug)]
pub enum Value {
    Counter(Counter),
    Gauge(Gauge),
    Histogram(Histogram),
}

/// One series: its labels (name, value), in the order they were given, and its value.
#[derive(Debug)]
pub struct Series {
    pub labels: Box<[(Arc<str>, Arc<str>)]>,
    pub value: Value,
    /// False when the stats matcher rejected it.
    pub visible: bool,
}

impl Series {
    pub fn add(&self, n: u64) {
        match &self.value {
            Value::Counter(c) => c.add(n),
            Value::Gauge(g) => g.add(n as i64),
            Value::Histogram(h) => h.record(n),
        }
    }

    pub fn set(&self, n: i64) {
        if let Value::Gauge(g) = &self.value {
            g.set(n)
        }
    }

    pub fn record(&self, v: u64) {
        self.add(v)
    }
}

/// A family: one name, one kind, its series.
#[derive(Debug)]
pub struct Family {
    pub name: Arc<str>,
    pub kind: Kind,
    series: RwLock<HashMap<u64, Vec<Arc<Series>>>>,
}

/// The key of a label set in every family (computed once when several families record the
/// same labels). A word-at-a-time multiply-rotate hash: Istio's label sets are ~25 short
/// strings, for which a streaming hasher's per-write bookkeeping costs more than the hashing.
/// Only a map key: series are told apart by comparing their labels.
pub fn hash(labels: &[(&str, &str)]) -> u64 {
    let mut h = Mix(0x2d35_8dcc_aa6c_78a5);
    for (k, v) in labels {
        h.bytes(k.as_bytes());
        h.bytes(v.as_bytes());
    }
    h.0
}

struct Mix(u64);

impl Mix {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;

    fn word(&mut self, w: u64) {
        self.0 = (self.0 ^ w).wrapping_mul(Self::K).rotate_left(29);
    }

    /// The bytes and their length (so `("ab", "c")` and `("a", "bc")` differ).
    fn bytes(&mut self, b: &[u8]) {
        let mut chunks = b.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.word(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        self.word(u64::from_le_bytes(w) ^ ((b.len() as u64) << 56));
    }
}

fn same(s: &Series, labels: &[(&str, &str)]) -> bool {
    s.labels.len() == labels.len()
        && s.labels
            .iter()
            .zip(labels)
            .all(|((k, v), (k2, v2))| &**k == *k2 && &**v == *v2)
}

impl Family {
    /// Add `amount` to the series with these labels (`key`: their [`hash`]), created on first
    /// use: no allocation and no reference count once it exists.
    pub fn add(
        &self,
        key: u64,
        labels: &[(&str, &str)],
        accept: &dyn Fn(&str) -> bool,
        amount: u64,
    ) {
        {
            let map = self.series.read().unwrap_or_else(|e| e.into_inner());
            if let Some(s) = map
                .get(&key)
                .and_then(|v| v.iter().find(|s| same(s, labels)))
            {
                s.add(amount);
                return;
            }
        }
        self.series_keyed(key, labels, accept).add(amount);
    }

    /// The series with these labels, created on first use (`accept`: the stats matcher).
    pub fn series(&self, labels: &[(&str, &str)], accept: &dyn Fn(&str) -> bool) -> Arc<Series> {
        self.series_keyed(hash(labels), labels, accept)
    }

    fn series_keyed(
        &self,
        key: u64,
        labels: &[(&str, &str)],
        accept: &dyn Fn(&str) -> bool,
    ) -> Arc<Series> {
        {
            let map = self.series.read().unwrap_or_else(|e| e.into_inner());
            if let Some(s) = map
                .get(&key)
                .and_then(|v| v.iter().find(|s| same(s, labels)))
            {
                return s.clone();
            }
        }
        let mut map = self.series.write().unwrap_or_else(|e| e.into_inner());
        let slot = map.entry(key).or_default();
        if let Some(s) = slot.iter().find(|s| same(s, labels)) {
            return s.clone();
        }
        let s = Arc::new(Series {
            labels: labels
                .iter()
                .map(|(k, v)| (Arc::from(*k), Arc::from(*v)))
                .collect(),
            value: match self.kind {
                Kind::Counter => Value::Counter(Counter::default()),
                Kind::Gauge => Value::Gauge(Gauge::default()),
                Kind::Histogram => Value::Histogram(Histogram::default()),
            },
            visible: accept(&self.joined_name(labels)),
        });
        slot.push(s.clone());
        s
    }

    /// Envoy's flat name of a series: `istiocustom.<family>.<label>.<value>…`.
    pub fn joined_name(&self, labels: &[(&str, &str)]) -> String {
        let mut out = format!("{NAMESPACE}.{}", self.name);
        for (k, v) in labels {
            out.push('.');
            out.push_str(k);
            out.push('.');
            out.push_str(v);
        }
        out
    }

    /// The visible series, in a stable order (by labels).
    pub fn snapshot(&self) -> Vec<Arc<Series>> {
        let map = self.series.read().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<_> = map
            .values()
            .flatten()
            .filter(|s| s.visible)
            .cloned()
            .collect();
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        out
    }
}

/// A store's labelled families, by name.
#[derive(Debug, Default)]
pub struct Families(Mutex<BTreeMap<Arc<str>, Arc<Family>>>);

impl Families {
    /// The family of this name (a second kind for the same name keeps the first).
    pub fn family(&self, name: &str, kind: Kind) -> Arc<Family> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = map.get(name) {
            return f.clone();
        }
        let f = Arc::new(Family {
            name: name.into(),
            kind,
            series: RwLock::default(),
        });
        map.insert(name.into(), f.clone());
        f
    }

    /// `/reset_counters`: every counter and histogram series back to zero (gauges stay).
    pub fn reset_counters(&self) {
        for f in self.all() {
            let map = f.series.read().unwrap_or_else(|e| e.into_inner());
            for s in map.values().flatten() {
                match &s.value {
                    Value::Counter(c) => c.reset(),
                    Value::Histogram(h) => h.reset(),
                    Value::Gauge(_) => {}
                }
            }
        }
    }

    /// Every family, by name.
    pub fn all(&self) -> Vec<Arc<Family>> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_boundaries_change_the_key() {
        assert_ne!(hash(&[("ab", "c")]), hash(&[("a", "bc")]));
        assert_ne!(hash(&[("a", "")]), hash(&[("a", "\0")]));
        assert_ne!(
            hash(&[("reporter", "source"), ("code", "200")]),
            hash(&[("reporter", "source"), ("code", "201")])
        );
        assert_eq!(hash(&[("k", "v")]), hash(&[("k", "v")]));
    }

    #[test]
    fn a_label_set_is_one_series() {
        let fams = Families::default();
        let f = fams.family("istio_requests_total", Kind::Counter);
        let all = |_: &str| true;
        let a = f.series(&[("reporter", "source"), ("code", "200")], &all);
        let b = f.series(&[("reporter", "source"), ("code", "200")], &all);
        let c = f.series(&[("reporter", "source"), ("code", "503")], &all);
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
        a.add(2);
        b.add(1);
        let snap = f.snapshot();
        assert_eq!(snap.len(), 2);
        match &snap[0].value {
            Value::Counter(c) => assert_eq!(c.value(), 3),
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn the_matcher_sees_the_joined_name() {
        let fams = Families::default();
        let f = fams.family("istio_build", Kind::Gauge);
        let seen = Mutex::new(Vec::new());
        let accept = |n: &str| {
            seen.lock().unwrap().push(n.to_string());
            false
        };
        f.series(&[("component", "proxy"), ("tag", "1.5")], &accept);
        assert_eq!(
            seen.lock().unwrap()[0],
            "istiocustom.istio_build.component.proxy.tag.1.5"
        );
        assert!(f.snapshot().is_empty());
    }
}
