//! Envoy-named stats: counters, gauges and histograms resolved at configuration time.
//!
//! The store is a registry used only when configuration is built and when stats are scraped.
//! Everything on the request path holds `Arc` handles to atomics and only increments them: no
//! lock, no allocation, no name lookup per request. Per-response-code counters are registered
//! the first time a code is seen and then cached (`CodeStats`).

use super::tags::{TagProducer, Tags};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};

// === Counter, Gauge, Histogram ===

#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub fn inc(&self) {
        self.0.fetch_add(1, Relaxed);
    }
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Relaxed);
    }
    pub fn value(&self) -> u64 {
        self.0.load(Relaxed)
    }
    pub fn reset(&self) {
        self.0.store(0, Relaxed);
    }
}

#[derive(Debug, Default)]
pub struct Gauge {
    value: AtomicI64,
    used: AtomicBool,
}

impl Gauge {
    #[inline]
    fn mark_used(&self) {
        if !self.used.load(Relaxed) {
            self.used.store(true, Relaxed);
        }
    }
    #[inline]
    pub fn inc(&self) {
        self.mark_used();
        self.value.fetch_add(1, Relaxed);
    }
    #[inline]
    pub fn dec(&self) {
        self.value.fetch_sub(1, Relaxed);
    }
    #[inline]
    pub fn add(&self, n: i64) {
        self.mark_used();
        self.value.fetch_add(n, Relaxed);
    }
    #[inline]
    pub fn sub(&self, n: i64) {
        self.value.fetch_sub(n, Relaxed);
    }
    #[inline]
    pub fn set(&self, v: i64) {
        self.mark_used();
        self.value.store(v, Relaxed);
    }
    pub fn value(&self) -> i64 {
        self.value.load(Relaxed)
    }
    pub fn used(&self) -> bool {
        self.used.load(Relaxed)
    }
}

/// Envoy's default histogram bucket bounds (milliseconds for the `*_ms`/`*_time` histograms).
pub const BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// Envoy's `/stats` quantiles.
pub const QUANTILES: [f64; 10] = [0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 1.0];

#[derive(Debug, Default)]
pub struct Histogram {
    /// Disjoint counts: `buckets[i]` counts values in (BUCKETS[i-1], BUCKETS[i]]; the last slot is +Inf.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    count: AtomicU64,
    sum: AtomicU64,
    /// Each value recorded since the last flush, kept only when a stats sink sends every value
    /// (statsd's timers, Envoy's `onHistogramComplete`); at most [`MAX_LOGGED_VALUES`].
    values: Option<Box<Mutex<Vec<u64>>>>,
}

/// The values a histogram keeps between two flushes for the sinks (later ones are not sent).
pub const MAX_LOGGED_VALUES: usize = 16 * 1024;

/// A point-in-time copy of a histogram.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistogramSnapshot {
    pub buckets: [u64; BUCKETS.len() + 1],
    pub count: u64,
    pub sum: u64,
}

impl Histogram {
    /// Record one value (an integer in the histogram's unit, as Envoy records milliseconds).
    #[inline]
    pub fn record(&self, value: u64) {
        let v = value as f64;
        let idx = BUCKETS
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(BUCKETS.len());
        self.buckets[idx].fetch_add(1, Relaxed);
        self.count.fetch_add(1, Relaxed);
        self.sum.fetch_add(value, Relaxed);
        if let Some(values) = &self.values {
            let mut v = values.lock().unwrap_or_else(|e| e.into_inner());
            if v.len() < MAX_LOGGED_VALUES {
                v.push(value);
            }
        }
    }

    /// A histogram that also keeps each recorded value for the sinks.
    pub fn logging_values() -> Self {
        Self {
            values: Some(Box::default()),
            ..Self::default()
        }
    }

    /// The values recorded since the last call (none unless built with `logging_values`).
    pub fn take_values(&self) -> Vec<u64> {
        match &self.values {
            Some(v) => std::mem::take(&mut *v.lock().unwrap_or_else(|e| e.into_inner())),
            None => Vec::new(),
        }
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut s = HistogramSnapshot::default();
        for (i, b) in self.buckets.iter().enumerate() {
            s.buckets[i] = b.load(Relaxed);
        }
        s.count = self.count.load(Relaxed);
        s.sum = self.sum.load(Relaxed);
        s
    }

    pub fn reset(&self) {
        for b in &self.buckets {
            b.store(0, Relaxed);
        }
        self.count.store(0, Relaxed);
        self.sum.store(0, Relaxed);
    }
}

impl HistogramSnapshot {
    pub fn since(&self, earlier: &HistogramSnapshot) -> HistogramSnapshot {
        let mut s = self.clone();
        for (i, b) in s.buckets.iter_mut().enumerate() {
            *b = b.saturating_sub(earlier.buckets[i]);
        }
        s.count = s.count.saturating_sub(earlier.count);
        s.sum = s.sum.saturating_sub(earlier.sum);
        s
    }

    /// Cumulative count of values ≤ BUCKETS[i].
    pub fn cumulative(&self) -> [u64; BUCKETS.len()] {
        let mut out = [0; BUCKETS.len()];
        let mut acc = 0;
        for (o, b) in out.iter_mut().zip(&self.buckets) {
            acc += b;
            *o = acc;
        }
        out
    }

    /// A quantile estimated by linear interpolation inside the bucket that holds it.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = q * self.count as f64;
        let mut acc = 0u64;
        for (i, &n) in self.buckets.iter().enumerate() {
            if n == 0 {
                continue;
            }
            let lo = if i == 0 { 0.0 } else { BUCKETS[i - 1] };
            let hi = if i < BUCKETS.len() {
                BUCKETS[i]
            } else {
                lo * 2.0
            };
            if (acc + n) as f64 >= rank {
                let within = (rank - acc as f64).max(0.0) / n as f64;
                return Some(lo + (hi - lo) * within);
            }
            acc += n;
        }
        Some(BUCKETS[BUCKETS.len() - 1])
    }
}

// === Per-code counters ===

/// Per-code counters of one status class (`x00`..`x99`), created on first use.
type CodeSlots = [OnceLock<Arc<Counter>>; 100];

/// `<prefix>upstream_rq_<code>`, `<prefix>upstream_rq_<N>xx` and `<prefix>upstream_rq_completed`.
/// The class counters exist from the start; a per-code counter is registered on first use.
/// A histogram registered on first use (Envoy's dynamically named timings, such as a
/// cluster's `external.upstream_rq_time`).
pub struct LazyHistogram {
    store: Arc<Store>,
    name: Box<str>,
    cell: OnceLock<Arc<Histogram>>,
}

impl std::fmt::Debug for LazyHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

impl LazyHistogram {
    pub fn new(store: &Arc<Store>, name: String) -> Self {
        Self {
            store: store.clone(),
            name: name.into_boxed_str(),
            cell: OnceLock::new(),
        }
    }

    #[inline]
    pub fn record(&self, value: u64) {
        self.cell
            .get_or_init(|| self.store.histogram(&self.name))
            .record(value);
    }
}

pub struct CodeStats {
    store: Arc<Store>,
    prefix: String,
    classes: [OnceLock<Arc<Counter>>; 5],
    completed: OnceLock<Arc<Counter>>,
    codes: [OnceLock<Box<CodeSlots>>; 5],
    per_code: bool,
}

impl std::fmt::Debug for CodeStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CodeStats")
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl CodeStats {
    /// `stem` is e.g. `cluster.foo.upstream_rq` or `http.ingress.downstream_rq`. `eager`:
    /// the class counters (`_2xx`…) and `_completed` exist from the start (Envoy's connection
    /// manager and listener stats); otherwise they appear with the first response, as Envoy's
    /// per-cluster response-code stats do (10 000 clusters do not carry 18 idle names each).
    pub fn new(store: &Arc<Store>, stem: &str, per_code: bool, eager: bool) -> Self {
        let c = Self {
            store: store.clone(),
            prefix: format!("{stem}_"),
            classes: Default::default(),
            completed: OnceLock::new(),
            codes: Default::default(),
            per_code,
        };
        if eager {
            for class in 0..5 {
                c.class(class);
            }
            c.completed();
        }
        c
    }

    fn class(&self, class: usize) -> &Arc<Counter> {
        self.classes[class].get_or_init(|| {
            self.store
                .counter(&format!("{}{}xx", self.prefix, class + 1))
        })
    }

    fn completed(&self) -> &Arc<Counter> {
        self.completed
            .get_or_init(|| self.store.counter(&format!("{}completed", self.prefix)))
    }

    #[inline]
    pub fn charge(&self, code: u16) {
        if !(100..600).contains(&code) {
            return;
        }
        let class = (code / 100 - 1) as usize;
        self.class(class).inc();
        self.completed().inc();
        if self.per_code {
            let slots = self.codes[class]
                .get_or_init(|| Box::new(std::array::from_fn(|_| OnceLock::new())));
            slots[(code % 100) as usize]
                .get_or_init(|| self.store.counter(&format!("{}{code}", self.prefix)))
                .inc();
        }
    }
}

// === Store ===

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

#[derive(Debug, Clone)]
pub enum Metric {
    Counter(Arc<Counter>),
    Gauge(Arc<Gauge>),
    Histogram(Arc<Histogram>),
}

impl Metric {
    /// The gauge of a block entry declared as a gauge.
    pub fn gauge(&self) -> Arc<Gauge> {
        match self {
            Metric::Gauge(g) => g.clone(),
            _ => unreachable!("declared as a gauge"),
        }
    }

    /// The counter of a block entry declared as a counter.
    pub fn counter(&self) -> Arc<Counter> {
        match self {
            Metric::Counter(c) => c.clone(),
            _ => unreachable!("declared as a counter"),
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            Metric::Counter(_) => Kind::Counter,
            Metric::Gauge(_) => Kind::Gauge,
            Metric::Histogram(_) => Kind::Histogram,
        }
    }
}

/// One registered stat: its full name, Envoy's tag-extracted name and tags, and the handle.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: Arc<str>,
    pub tags: Tags,
    pub metric: Metric,
}

/// Decides which stat names are instantiated (bootstrap `stats_config.stats_matcher`).
pub type NameFilter = Box<dyn Fn(&str) -> bool + Send + Sync>;

/// Stats registered together under one prefix (a cluster's membership and update stats, its
/// circuit-breaker gauges): one registry entry instead of one per name; the names are spelled
/// out when stats are read.
struct Block {
    spec: &'static [(&'static str, Kind)],
    metrics: Arc<[Metric]>,
    /// Bit i: spec[i] passed the stats matcher.
    accepted: u64,
}

/// The names in `map` that start with one of `prefixes` and whose value `pick` selects (a range
/// over the sorted names per prefix, not a scan).
fn names_under<V>(
    map: &BTreeMap<Arc<str>, V>,
    prefixes: &[String],
    pick: impl Fn(&V) -> bool,
) -> Vec<Arc<str>> {
    use std::ops::Bound;
    let mut out = Vec::new();
    for prefix in prefixes {
        let from = (Bound::Included(prefix.as_str()), Bound::Unbounded);
        out.extend(
            map.range::<str, _>(from)
                .take_while(|(n, _)| n.starts_with(prefix.as_str()))
                .filter(|(_, v)| pick(v))
                .map(|(n, _)| n.clone()),
        );
    }
    out
}

/// A server's stats registry.
pub struct Store {
    entries: Mutex<BTreeMap<Arc<str>, Entry>>,
    blocks: Mutex<BTreeMap<Arc<str>, Block>>,
    tags: TagProducer,
    accept: Option<NameFilter>,
    /// Histogram snapshots at the last flush, for `/stats` interval quantiles.
    last_flush: Mutex<BTreeMap<Arc<str>, HistogramSnapshot>>,
    /// `deferred_stat_options.enable_deferred_creation_stats`.
    deferred_creation: bool,
    /// Histograms keep each value for a sink that sends them all (statsd).
    log_values: bool,
    /// Labelled families (Istio's standard metrics).
    labelled: super::labelled::Families,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Default for Store {
    fn default() -> Self {
        Self::new(TagProducer::envoy_defaults(), None)
    }
}

impl Store {
    pub fn new(tags: TagProducer, accept: Option<NameFilter>) -> Self {
        Self {
            entries: Mutex::new(BTreeMap::new()),
            blocks: Mutex::new(BTreeMap::new()),
            tags,
            accept,
            last_flush: Mutex::new(BTreeMap::new()),
            deferred_creation: false,
            log_values: false,
            labelled: Default::default(),
        }
    }

    /// Histograms keep each recorded value until the next flush (a statsd sink sends them).
    pub fn with_value_log(mut self, on: bool) -> Self {
        self.log_values = on;
        self
    }

    fn new_histogram(&self) -> Arc<Histogram> {
        Arc::new(if self.log_values {
            Histogram::logging_values()
        } else {
            Histogram::default()
        })
    }

    /// Create groups of stats (a cluster's traffic stats) on first use.
    pub fn with_deferred_creation(mut self, on: bool) -> Self {
        self.deferred_creation = on;
        self
    }

    pub fn deferred_creation(&self) -> bool {
        self.deferred_creation
    }

    /// Whether the stats matcher keeps a stat of this (flat) name.
    pub fn accepts(&self, name: &str) -> bool {
        self.accept.as_ref().is_none_or(|a| a(name))
    }

    /// The labelled families (Istio's metrics).
    pub fn labelled(&self) -> &super::labelled::Families {
        &self.labelled
    }

    fn get_or_insert(&self, name: &str, make: impl FnOnce() -> Metric) -> Metric {
        if let Some(accept) = &self.accept
            && !accept(name)
        {
            // Rejected by the stats matcher: a working handle that nobody can read, as
            // Envoy's null stats (a histogram keeps no values for sinks that never see it).
            return match make() {
                Metric::Histogram(_) => Metric::Histogram(Arc::default()),
                m => m,
            };
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = entries.get(name) {
            return e.metric.clone();
        }
        let metric = make();
        let tags = self.tags.produce(name);
        let key: Arc<str> = Arc::from(name);
        entries.insert(
            key.clone(),
            Entry {
                name: key,
                tags,
                metric: metric.clone(),
            },
        );
        metric
    }

    pub fn counter(&self, name: &str) -> Arc<Counter> {
        match self.get_or_insert(name, || Metric::Counter(Arc::default())) {
            Metric::Counter(c) => c,
            // A name registered with another type: keep working with a detached handle.
            _ => Arc::default(),
        }
    }

    pub fn gauge(&self, name: &str) -> Arc<Gauge> {
        match self.get_or_insert(name, || Metric::Gauge(Arc::default())) {
            Metric::Gauge(g) => g,
            _ => Arc::default(),
        }
    }

    pub fn histogram(&self, name: &str) -> Arc<Histogram> {
        match self.get_or_insert(name, || Metric::Histogram(self.new_histogram())) {
            Metric::Histogram(h) => h,
            _ => Arc::default(),
        }
    }

    /// Stats `prefix` + each name of `spec` (of its kind), registered as one block (the same
    /// prefix and spec give the same handles back). Reading stats lists them like any other.
    pub fn block(&self, prefix: &str, spec: &'static [(&'static str, Kind)]) -> Arc<[Metric]> {
        assert!(spec.len() <= 64, "a stats block holds at most 64 names");
        let mut blocks = self.blocks.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = blocks.get(prefix)
            && std::ptr::eq(b.spec, spec)
        {
            return b.metrics.clone();
        }
        let mut accepted = 0u64;
        for (i, (n, _)) in spec.iter().enumerate() {
            if self
                .accept
                .as_ref()
                .is_none_or(|accept| accept(&format!("{prefix}{n}")))
            {
                accepted |= 1 << i;
            }
        }
        let metrics: Arc<[Metric]> = spec
            .iter()
            .map(|(_, k)| match k {
                Kind::Counter => Metric::Counter(Arc::default()),
                Kind::Gauge => Metric::Gauge(Arc::default()),
                Kind::Histogram => Metric::Histogram(self.new_histogram()),
            })
            .collect();
        blocks.insert(
            Arc::from(prefix),
            Block {
                spec,
                metrics: metrics.clone(),
                accepted,
            },
        );
        metrics
    }

    /// All entries, sorted by name (a snapshot of the registry, not of the values).
    pub fn entries(&self) -> Vec<Entry> {
        let mut out: Vec<Entry> = self
            .entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        let blocks = self.blocks.lock().unwrap_or_else(|e| e.into_inner());
        if blocks.is_empty() {
            return out;
        }
        for (prefix, b) in blocks.iter() {
            for (i, ((n, _), m)) in b.spec.iter().zip(b.metrics.iter()).enumerate() {
                if b.accepted & (1 << i) == 0 {
                    continue;
                }
                let name: Arc<str> = Arc::from(format!("{prefix}{n}"));
                out.push(Entry {
                    tags: self.tags.produce(&name),
                    name,
                    metric: m.clone(),
                });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Take a flush snapshot of every histogram; returns, per name, the interval since the
    /// previous flush.
    pub fn flush_histograms(&self) {
        // Histograms that never recorded a value need no snapshot (their interval is empty);
        // with thousands of clusters most are such, so only used ones are kept.
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let mut last = self.last_flush.lock().unwrap_or_else(|e| e.into_inner());
        for (name, e) in entries.iter() {
            if let Metric::Histogram(h) = &e.metric {
                let snap = h.snapshot();
                if snap.count > 0 {
                    last.insert(name.clone(), snap);
                }
            }
        }
    }

    /// One histogram's flush: the values recorded since the previous flush (its interval), the
    /// flush point moved to now. What a sink flush does for each histogram it reads, so that the
    /// sinks and `/stats` see the same interval.
    pub fn flush_histogram(&self, name: &Arc<str>, h: &Histogram) -> HistogramSnapshot {
        let snap = h.snapshot();
        let mut last = self.last_flush.lock().unwrap_or_else(|e| e.into_inner());
        let interval = match last.get(name) {
            Some(prev) => snap.since(prev),
            None => snap.clone(),
        };
        if snap.count > 0 {
            last.insert(name.clone(), snap);
        }
        interval
    }

    /// The values recorded since the last flush.
    pub fn interval(&self, name: &str, current: &HistogramSnapshot) -> HistogramSnapshot {
        let last = self.last_flush.lock().unwrap_or_else(|e| e.into_inner());
        match last.get(name) {
            Some(prev) => current.since(prev),
            None => current.clone(),
        }
    }

    /// Forget the stats named `prefix…` (for each prefix) that only the store still holds (a
    /// removed cluster's, once the cluster is gone): they leave `/stats`, their memory and their
    /// interned names and tags are freed.
    pub fn release_unreferenced(&self, prefixes: &[String]) {
        if prefixes.is_empty() {
            return;
        }
        let unreferenced = |m: &Metric| match m {
            Metric::Counter(c) => Arc::strong_count(c) == 1,
            Metric::Gauge(g) => Arc::strong_count(g) == 1,
            Metric::Histogram(h) => Arc::strong_count(h) == 1,
        };
        let mut released = Vec::new();
        {
            let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            for n in names_under(&entries, prefixes, |e| unreferenced(&e.metric)) {
                entries.remove(&n);
                released.push(n);
            }
        }
        {
            let mut blocks = self.blocks.lock().unwrap_or_else(|e| e.into_inner());
            for n in names_under(&blocks, prefixes, |b| Arc::strong_count(&b.metrics) == 1) {
                blocks.remove(&n);
            }
        }
        {
            let mut last = self.last_flush.lock().unwrap_or_else(|e| e.into_inner());
            for name in &released {
                last.remove(name);
            }
        }
        self.tags.prune();
    }

    /// `POST /reset_counters`.
    pub fn reset_counters(&self) {
        for e in self.entries() {
            match &e.metric {
                Metric::Counter(c) => c.reset(),
                Metric::Histogram(h) => h.reset(),
                Metric::Gauge(_) => {}
            }
        }
        self.labelled.reset_counters();
        self.last_flush
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    pub fn tag_producer(&self) -> &TagProducer {
        &self.tags
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_read_like_separate_stats() {
        const NAMES: &[(&str, Kind)] = &[("a_open", Kind::Gauge), ("b_open", Kind::Gauge)];
        let store = Store::new(
            TagProducer::envoy_defaults(),
            Some(Box::new(|n: &str| !n.ends_with("b_open"))),
        );
        let g = store.block("cluster.c.cb.", NAMES);
        g[0].gauge().set(1);
        g[1].gauge().set(7);
        store.gauge("cluster.c.z");
        let again = store.block("cluster.c.cb.", NAMES);
        assert_eq!(
            again[0].gauge().value(),
            1,
            "the same prefix shares the gauges"
        );
        let e = store.entries();
        let names: Vec<&str> = e.iter().map(|e| &*e.name).collect();
        assert_eq!(
            names,
            ["cluster.c.cb.a_open", "cluster.c.z"],
            "sorted; b rejected"
        );
        assert_eq!(&*e[0].tags.extracted_name, "cluster.cb.a_open");
    }

    #[test]
    fn same_name_shares_handle() {
        let s = Store::default();
        let a = s.counter("http.x.downstream_rq_total");
        let b = s.counter("http.x.downstream_rq_total");
        a.inc();
        assert_eq!(b.value(), 1);
        assert_eq!(s.entries().len(), 1);
    }

    #[test]
    fn code_stats_register_lazily() {
        let s = Arc::new(Store::default());
        let cs = CodeStats::new(&s, "cluster.a.upstream_rq", true, false);
        assert!(
            !s.entries()
                .iter()
                .any(|e| &*e.name == "cluster.a.upstream_rq_503")
        );
        cs.charge(503);
        cs.charge(503);
        cs.charge(200);
        assert_eq!(s.counter("cluster.a.upstream_rq_503").value(), 2);
        assert_eq!(s.counter("cluster.a.upstream_rq_5xx").value(), 2);
        assert_eq!(s.counter("cluster.a.upstream_rq_completed").value(), 3);
    }

    #[test]
    fn unreferenced_stats_under_a_prefix_are_released() {
        const SPEC: &[(&str, Kind)] = &[("a", Kind::Counter), ("b", Kind::Gauge)];
        let s = Store::default();
        let held = s.counter("cluster.gone.kept");
        s.counter("cluster.gone.dropped").inc();
        s.histogram("cluster.gone.rq_time").record(3);
        drop(s.block("cluster.gone.circuit_breakers.", SPEC));
        s.counter("cluster.gone_too.other").inc();
        s.flush_histograms();
        s.release_unreferenced(&["cluster.gone.".to_string()]);
        let names: Vec<String> = s.entries().iter().map(|e| e.name.to_string()).collect();
        assert_eq!(names, ["cluster.gone.kept", "cluster.gone_too.other"]);
        held.inc();
        assert_eq!(
            s.counter("cluster.gone.kept").value(),
            1,
            "a held stat stays"
        );
    }

    #[test]
    fn histogram_buckets_and_quantiles() {
        let h = Histogram::default();
        for v in [0, 1, 3, 7, 7, 100] {
            h.record(v);
        }
        let s = h.snapshot();
        assert_eq!(s.count, 6);
        assert_eq!(s.sum, 118);
        let c = s.cumulative();
        assert_eq!(&c[..4], &[1, 2, 3, 5]);
        assert_eq!(c[6], 6);
        let p100 = s.quantile(1.0).unwrap();
        assert!((50.0..=100.0).contains(&p100));
    }

    #[test]
    fn matcher_rejects_stats() {
        let s = Store::new(
            TagProducer::envoy_defaults(),
            Some(Box::new(|n: &str| n.starts_with("server"))),
        );
        s.counter("cluster.a.x").inc();
        s.counter("server.live").inc();
        let names: Vec<String> = s
            .entries()
            .into_iter()
            .map(|e| e.name.to_string())
            .collect();
        assert_eq!(names, ["server.live"]);
    }
}
