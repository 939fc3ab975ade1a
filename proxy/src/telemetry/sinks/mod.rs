//! Stats sinks (`stats_sinks`): every `stats_flush_interval` (or on an admin stats read with
//! `stats_flush_on_admin`) the main thread takes one [`Snapshot`] of the store — used counters
//! with their delta since the last flush, used gauges, used histograms with their interval, and
//! the values histograms recorded since — and hands it to each sink. One module per Envoy
//! extension: [`statsd`] (`envoy.stat_sinks.statsd`), [`dog_statsd`]
//! (`envoy.stat_sinks.dog_statsd`), [`metrics_service`] (`envoy.stat_sinks.metrics_service`).
//!
//! A sink never blocks the flush: UDP datagrams are sent without waiting (a failed send is
//! dropped and counted), the TCP and gRPC sinks hand their payload to a connection task of their
//! own over a short queue and drop it when the queue is full.

pub mod dog_statsd;
pub mod metrics_service;
pub mod statsd;

use super::stats::{HistogramSnapshot, Metric, Store};
use super::tags::Tags;
use crate::model::stats_sinks::StatsSink;
use crate::upstream::cluster::ClusterManager;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// A used counter: its value and what it gained since the previous flush.
#[derive(Debug, Clone)]
pub struct CounterPoint {
    pub name: Arc<str>,
    pub tags: Tags,
    pub value: u64,
    pub delta: u64,
}

/// A used gauge.
#[derive(Debug, Clone)]
pub struct GaugePoint {
    pub name: Arc<str>,
    pub tags: Tags,
    pub value: i64,
}

/// A used histogram: what was recorded since the previous flush.
#[derive(Debug, Clone)]
pub struct HistogramPoint {
    pub name: Arc<str>,
    pub tags: Tags,
    pub interval: HistogramSnapshot,
}

/// What one flush hands every sink.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// When it was taken (milliseconds since the Unix epoch).
    pub time_ms: i64,
    pub counters: Vec<CounterPoint>,
    pub gauges: Vec<GaugePoint>,
    pub histograms: Vec<HistogramPoint>,
    /// Each value a histogram recorded since the previous flush.
    pub values: Vec<ValuesPoint>,
}

/// The values one histogram recorded since the previous flush (statsd's timers).
#[derive(Debug, Clone, PartialEq)]
pub struct ValuesPoint {
    pub name: Arc<str>,
    pub tags: Tags,
    pub values: Vec<u64>,
}

/// A stats sink.
pub trait Sink: Send + Sync {
    /// Send (or queue) this flush; never waits on the network.
    fn flush(&self, snapshot: &Snapshot);
}

/// The server's sinks and the state flushes share (counters' last flushed values).
pub struct Flusher {
    store: Arc<Store>,
    sinks: Vec<Box<dyn Sink>>,
    /// Each used counter's value at the previous flush.
    last: Mutex<HashMap<Arc<str>, u64>>,
}

impl std::fmt::Debug for Flusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flusher")
            .field("sinks", &self.sinks.len())
            .finish()
    }
}

/// What starting the sinks needs from the server.
pub struct StartContext<'a> {
    pub store: &'a Arc<Store>,
    pub clusters: &'a Arc<ClusterManager>,
    /// The node as the metrics service's first message identifies it.
    pub node: envoy_types::pb::envoy::config::core::v3::Node,
}

impl Flusher {
    /// The start phase: the sinks' sockets and connection tasks (on the current runtime, the
    /// main thread's). Their clusters were checked at translation; one gone now is an error.
    pub fn start(sinks: &[StatsSink], cx: StartContext<'_>) -> Result<Self, String> {
        let mut out: Vec<Box<dyn Sink>> = Vec::new();
        for (i, s) in sinks.iter().enumerate() {
            if let Some((name, _)) = s.cluster(&crate::config::FieldPath::root())
                && cx.clusters.get(name).is_none()
            {
                return Err(format!("stats_sinks[{i}]: unknown cluster '{name}'"));
            }
            out.push(match s {
                StatsSink::Statsd(c) => {
                    statsd::start(c, &cx).map_err(|e| format!("stats_sinks[{i}]: statsd: {e}"))?
                }
                StatsSink::MetricsService(c) => Box::new(metrics_service::start(c, &cx)),
                StatsSink::DogStatsd(c) => Box::new(
                    dog_statsd::DogStatsdSink::new(c)
                        .map_err(|e| format!("stats_sinks[{i}]: dog_statsd: {e}"))?,
                ),
            });
        }
        Ok(Self::with_sinks(cx.store.clone(), out))
    }

    pub fn with_sinks(store: Arc<Store>, sinks: Vec<Box<dyn Sink>>) -> Self {
        Self {
            store,
            sinks,
            last: Mutex::default(),
        }
    }

    /// Flush: with sinks, take a snapshot and hand it to each; the histograms' flush point
    /// (the `/stats` interval) moves either way.
    pub fn flush(&self) {
        if self.sinks.is_empty() {
            self.store.flush_histograms();
            return;
        }
        let snapshot = self.snapshot();
        for s in &self.sinks {
            s.flush(&snapshot);
        }
    }

    /// The store's used stats now, counters' deltas against the previous flush.
    pub fn snapshot(&self) -> Snapshot {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = HashMap::with_capacity(last.len());
        let mut out = Snapshot {
            time_ms: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or_default(),
            ..Snapshot::default()
        };
        for e in self.store.entries() {
            match &e.metric {
                Metric::Counter(c) => {
                    let value = c.value();
                    let prev = last.get(&e.name).copied();
                    if value == 0 && prev.is_none() {
                        continue; // never used
                    }
                    next.insert(e.name.clone(), value);
                    out.counters.push(CounterPoint {
                        delta: delta(value, prev.unwrap_or(0)),
                        value,
                        name: e.name,
                        tags: e.tags,
                    });
                }
                Metric::Gauge(g) if g.used() => out.gauges.push(GaugePoint {
                    value: g.value(),
                    name: e.name,
                    tags: e.tags,
                }),
                Metric::Gauge(_) => {}
                Metric::Histogram(h) => {
                    let values = h.take_values();
                    let interval = self.store.flush_histogram(&e.name, h);
                    if !values.is_empty() {
                        out.values.push(ValuesPoint {
                            name: e.name.clone(),
                            tags: e.tags.clone(),
                            values,
                        });
                    }
                    if h.snapshot().count > 0 {
                        out.histograms.push(HistogramPoint {
                            interval,
                            name: e.name,
                            tags: e.tags,
                        });
                    }
                }
            }
        }
        *last = next;
        out
    }
}

/// The flush timer: `flush` every `every` (`stats_flush_interval`), the first one interval
/// after the start; a late tick does not bring a burst of flushes after it (Envoy re-arms its
/// timer after each flush).
pub async fn flush_every(every: std::time::Duration, mut flush: impl FnMut()) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        flush();
    }
}

/// What a counter gained: a counter reset since (`/reset_counters`) counts from zero.
fn delta(value: u64, prev: u64) -> u64 {
    if value >= prev { value - prev } else { value }
}

/// The first endpoint of a cluster, where a sink connects (a pipe cluster: its socket path).
pub(crate) fn cluster_target(
    clusters: &ClusterManager,
    name: &str,
) -> Result<remora_xds::client::Target, String> {
    let c = clusters
        .get(name)
        .ok_or_else(|| format!("unknown cluster '{name}'"))?;
    if let Some(path) = c.config.pipe.clone() {
        return Ok(remora_xds::client::Target::Unix(path));
    }
    let host = c
        .hosts
        .load()
        .all_hosts()
        .next()
        .cloned()
        .ok_or_else(|| format!("cluster '{name}' has no endpoint"))?;
    Ok(remora_xds::client::Target::Tcp(host.address))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Recorder(Arc<Mutex<Vec<Snapshot>>>);
    impl Sink for Recorder {
        fn flush(&self, s: &Snapshot) {
            self.0.lock().unwrap().push(s.clone());
        }
    }

    fn flusher(store: &Arc<Store>) -> (Flusher, Arc<Mutex<Vec<Snapshot>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let f = Flusher::with_sinks(store.clone(), vec![Box::new(Recorder(seen.clone()))]);
        (f, seen)
    }

    #[test]
    fn counters_flush_as_deltas_of_used_stats() {
        let store = Arc::new(Store::default().with_value_log(true));
        let c = store.counter("cluster.a.upstream_rq_total");
        let _unused = store.counter("cluster.a.upstream_rq_timeout");
        let g = store.gauge("cluster.a.upstream_cx_active");
        let _idle = store.gauge("cluster.a.idle");
        let h = store.histogram("cluster.a.upstream_rq_time");
        let (f, seen) = flusher(&store);
        c.add(3);
        g.set(2);
        h.record(7);
        h.record(12);
        f.flush();
        c.add(2);
        f.flush();
        f.flush();
        store.reset_counters();
        c.inc();
        f.flush();
        let seen = seen.lock().unwrap();
        let deltas: Vec<Vec<(String, u64, u64)>> = seen
            .iter()
            .map(|s| {
                s.counters
                    .iter()
                    .map(|c| (c.name.to_string(), c.value, c.delta))
                    .collect()
            })
            .collect();
        let n = "cluster.a.upstream_rq_total".to_string();
        assert_eq!(
            deltas,
            [
                vec![(n.clone(), 3, 3)],
                vec![(n.clone(), 5, 2)],
                vec![(n.clone(), 5, 0)],
                vec![(n, 1, 1)],
            ],
            "a used counter is sent every flush, with what it gained"
        );
        let gauges: Vec<_> = seen[0].gauges.iter().map(|g| (&*g.name, g.value)).collect();
        assert_eq!(gauges, [("cluster.a.upstream_cx_active", 2)]);
        assert_eq!(seen[0].values.len(), 1);
        assert_eq!(&*seen[0].values[0].name, "cluster.a.upstream_rq_time");
        assert_eq!(seen[0].values[0].values, [7, 12]);
        assert!(seen[1].values.is_empty(), "values go once");
        assert_eq!(seen[0].histograms[0].interval.count, 2);
        assert_eq!(
            seen[1].histograms[0].interval.count, 0,
            "a used histogram stays, with an empty interval"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_timer_flushes_every_interval() {
        use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
        use std::time::Duration;
        let store = Arc::new(Store::default());
        let (f, seen) = flusher(&store);
        let flushes = Arc::new(AtomicUsize::new(0));
        let n = flushes.clone();
        let timer = tokio::spawn(flush_every(Duration::from_secs(5), move || {
            n.fetch_add(1, Relaxed);
            f.flush();
        }));
        tokio::time::sleep(Duration::from_millis(4999)).await;
        assert_eq!(flushes.load(Relaxed), 0, "none before the first interval");
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert_eq!(flushes.load(Relaxed), 1);
        store.counter("c").add(2);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(flushes.load(Relaxed), 3);
        assert_eq!(seen.lock().unwrap()[1].counters[0].delta, 2);
        timer.abort();
    }

    #[test]
    fn without_sinks_histograms_still_move_their_flush_point() {
        let store = Arc::new(Store::default());
        let h = store.histogram("x_ms");
        h.record(1);
        Flusher::with_sinks(store.clone(), Vec::new()).flush();
        assert_eq!(store.interval("x_ms", &h.snapshot()).count, 0);
        assert!(h.take_values().is_empty(), "no sink, no values kept");
    }

    /// Translate Istio's `all_golden.json` (every optional ProxyConfig setting), edited by `edit`.
    fn all_golden(
        edit: impl Fn(&mut serde_json::Value),
    ) -> Result<crate::model::bootstrap::Bootstrap, crate::config::ConfigError> {
        let text = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../tests/data/istio-bootstrap/all_golden.json"),
        )
        .unwrap();
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        edit(&mut v);
        use clap::Parser;
        let options =
            crate::cli::Options::try_parse_from(["remora", "--config-yaml", &v.to_string()])
                .unwrap();
        crate::server::load(&options, Arc::default()).map(|(_, model, _)| model)
    }

    /// Istio's `all_golden.json` needs the metrics service and statsd sinks: it translates,
    /// sinks included, with or without its `tracing`.
    #[test]
    fn istio_all_golden_loads_its_sinks() {
        let b = all_golden(|v| {
            v.as_object_mut().unwrap().remove("tracing");
        })
        .unwrap();
        assert_eq!(
            b.stats.sinks,
            [
                StatsSink::MetricsService(crate::model::stats_sinks::MetricsService {
                    cluster: "envoy_metrics_service".into(),
                    counters_as_deltas: false,
                    tags_as_labels: false,
                    emit_summary: true,
                    emit_histogram: true,
                    batch_size: 0,
                }),
                StatsSink::Statsd(crate::model::stats_sinks::Statsd {
                    target: crate::model::stats_sinks::StatsdTarget::Udp(
                        "10.1.1.1:9125".parse().unwrap()
                    ),
                    prefix: "envoy".into(),
                }),
            ]
        );
        // With its bootstrap `tracing.http` (Zipkin) too.
        let with_tracing = all_golden(|_| {}).unwrap();
        assert!(with_tracing.tracing.is_some());
    }

    #[test]
    fn a_sink_cluster_is_a_static_one() {
        let e = all_golden(|v| {
            v.as_object_mut().unwrap().remove("tracing");
            v["stats_sinks"][0]["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"] =
                "nope".into();
        })
        .unwrap_err();
        assert_eq!(
            e.paths(),
            ["stats_sinks[0].typed_config.grpc_service.envoy_grpc.cluster_name"],
            "{e}"
        );
    }

    #[test]
    fn flush_interval_bounds_and_flush_on_admin() {
        let no_tracing = |v: &mut serde_json::Value| {
            v.as_object_mut().unwrap().remove("tracing");
        };
        let b = all_golden(no_tracing).unwrap();
        assert_eq!(b.stats.flush_interval, std::time::Duration::from_secs(5));
        assert!(!b.stats.flush_on_admin);
        for (bad, path) in [
            (
                serde_json::json!({"stats_flush_interval": "0.0005s"}),
                "stats_flush_interval",
            ),
            (
                serde_json::json!({"stats_flush_interval": "300s"}),
                "stats_flush_interval",
            ),
            (
                serde_json::json!({"stats_flush_interval": "1s", "stats_flush_on_admin": true}),
                "stats_flush_on_admin",
            ),
        ] {
            let e = all_golden(|v| {
                no_tracing(v);
                for (k, x) in bad.as_object().unwrap() {
                    v[k] = x.clone();
                }
            })
            .unwrap_err();
            assert_eq!(e.paths(), [path], "{e}");
        }
        let b = all_golden(|v| {
            no_tracing(v);
            v["stats_flush_on_admin"] = true.into();
        })
        .unwrap();
        assert!(b.stats.flush_on_admin);
        let b = all_golden(|v| {
            no_tracing(v);
            v["stats_flush_interval"] = "0.001s".into();
        })
        .unwrap();
        assert_eq!(b.stats.flush_interval, std::time::Duration::from_millis(1));
    }
}
