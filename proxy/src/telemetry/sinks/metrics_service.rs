//! `envoy.stat_sinks.metrics_service`: each flush is a `StreamMetricsMessage` on one
//! long-lived `envoy.service.metrics.v3.MetricsService/StreamMetrics` stream to the cluster,
//! carrying a Prometheus `MetricFamily` per used stat (one metric each, as Envoy sends them):
//! counters (cumulative, or deltas with `report_counters_as_deltas`), gauges, and for each used
//! histogram a summary and/or a histogram of its interval (`histogram_emit_mode`). Names are
//! the full stat names, or the tag-extracted names with the tags as labels
//! (`emit_tags_as_labels`). The stream's first message carries the node as its identifier; a
//! failed stream is opened again (with back-off) on a later flush, and flushes that find the
//! queue full are dropped.

use super::{HistogramPoint, Sink, Snapshot, StartContext};
use crate::model::stats_sinks::MetricsService;
use crate::telemetry::stats::{BUCKETS, QUANTILES};
use crate::telemetry::tags::Tags;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::metrics::v3::metrics_service_client::MetricsServiceClient;
use envoy_types::pb::envoy::service::metrics::v3::{StreamMetricsMessage, stream_metrics_message};
use envoy_types::pb::io::prometheus::client as prom;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Flushes waiting for the stream before newer ones are dropped.
const QUEUE: usize = 4;
/// Back-off between attempts to open the stream: doubling from the first to the cap.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(30));

/// Start the stream task on the current runtime; it ends when the sink is dropped.
pub fn start(c: &MetricsService, cx: &StartContext<'_>) -> MetricsServiceSink {
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::spawn(stream_loop(
        c.cluster.clone(),
        cx.clusters.clone(),
        cx.node.clone(),
        rx,
        c.batch_size,
    ));
    MetricsServiceSink {
        config: c.clone(),
        tx,
    }
}

pub struct MetricsServiceSink {
    config: MetricsService,
    tx: mpsc::Sender<Vec<prom::MetricFamily>>,
}

impl Sink for MetricsServiceSink {
    fn flush(&self, s: &Snapshot) {
        let families = families(&self.config, s);
        if self.tx.try_send(families).is_err() {
            tracing::debug!(
                "metrics service: the stream to '{}' is not keeping up; flush dropped",
                self.config.cluster
            );
        }
    }
}

/// One flush as metric families, in Envoy's order (counters, gauges, histograms).
pub fn families(c: &MetricsService, s: &Snapshot) -> Vec<prom::MetricFamily> {
    let mut out = Vec::new();
    for p in &s.counters {
        let value = if c.counters_as_deltas {
            p.delta
        } else {
            p.value
        };
        let metric = prom::Metric {
            counter: Some(prom::Counter {
                value: Some(value as f64),
                ..Default::default()
            }),
            ..Default::default()
        };
        out.push(family(
            c,
            s,
            &p.name,
            &p.tags,
            prom::MetricType::Counter,
            metric,
        ));
    }
    for p in &s.gauges {
        let metric = prom::Metric {
            gauge: Some(prom::Gauge {
                value: Some(p.value as f64),
            }),
            ..Default::default()
        };
        out.push(family(
            c,
            s,
            &p.name,
            &p.tags,
            prom::MetricType::Gauge,
            metric,
        ));
    }
    for p in &s.histograms {
        if c.emit_summary {
            let metric = prom::Metric {
                summary: Some(summary(p)),
                ..Default::default()
            };
            out.push(family(
                c,
                s,
                &p.name,
                &p.tags,
                prom::MetricType::Summary,
                metric,
            ));
        }
        if c.emit_histogram {
            let metric = prom::Metric {
                histogram: Some(histogram(p)),
                ..Default::default()
            };
            out.push(family(
                c,
                s,
                &p.name,
                &p.tags,
                prom::MetricType::Histogram,
                metric,
            ));
        }
    }
    out
}

fn family(
    c: &MetricsService,
    s: &Snapshot,
    name: &str,
    tags: &Tags,
    kind: prom::MetricType,
    mut metric: prom::Metric,
) -> prom::MetricFamily {
    metric.timestamp_ms = Some(s.time_ms);
    let name = if c.tags_as_labels {
        metric.label = tags
            .tags
            .iter()
            .map(|(k, v)| prom::LabelPair {
                name: Some(k.to_string()),
                value: Some(v.to_string()),
            })
            .collect();
        tags.extracted_name.to_string()
    } else {
        name.to_string()
    };
    prom::MetricFamily {
        name: Some(name),
        r#type: Some(kind as i32),
        metric: vec![metric],
        ..Default::default()
    }
}

/// Envoy's interval quantiles (`nan` for an empty interval), count and sum.
fn summary(p: &HistogramPoint) -> prom::Summary {
    prom::Summary {
        sample_count: Some(p.interval.count),
        sample_sum: Some(p.interval.sum as f64),
        quantile: QUANTILES
            .iter()
            .map(|q| prom::Quantile {
                quantile: Some(*q),
                value: Some(p.interval.quantile(*q).unwrap_or(f64::NAN)),
            })
            .collect(),
        ..Default::default()
    }
}

/// The interval's cumulative counts at Envoy's default bucket bounds.
fn histogram(p: &HistogramPoint) -> prom::Histogram {
    let cumulative = p.interval.cumulative();
    prom::Histogram {
        sample_count: Some(p.interval.count),
        sample_sum: Some(p.interval.sum as f64),
        bucket: BUCKETS
            .iter()
            .zip(cumulative)
            .map(|(b, n)| prom::Bucket {
                upper_bound: Some(*b),
                cumulative_count: Some(n),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// Keep a stream open while flushes come: each flush is one message (or `batch_size` pieces
/// are sent by the caller's split); the first message of each stream names the node.
async fn stream_loop(
    cluster: String,
    clusters: Arc<crate::upstream::cluster::ClusterManager>,
    node: Node,
    mut rx: mpsc::Receiver<Vec<prom::MetricFamily>>,
    batch: usize,
) {
    let mut backoff = BACKOFF.0;
    let mut retry_at = tokio::time::Instant::now();
    while let Some(first) = rx.recv().await {
        if tokio::time::Instant::now() < retry_at {
            continue;
        }
        let channel = match super::cluster_target(&clusters, &cluster) {
            Ok(t) => remora_xds::client::connect(&t)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        let channel = match channel {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!("metrics service: cannot connect to cluster '{cluster}': {e}");
                retry_at = tokio::time::Instant::now() + backoff;
                backoff = (backoff * 2).min(BACKOFF.1);
                continue;
            }
        };
        backoff = BACKOFF.0;
        let (msgs, msg_rx) = mpsc::channel::<StreamMetricsMessage>(QUEUE);
        let requests = futures_util::stream::unfold(msg_rx, |mut rx| async move {
            rx.recv().await.map(|m| (m, rx))
        });
        let mut client = MetricsServiceClient::new(channel);
        let call = client.stream_metrics(requests);
        tokio::pin!(call);
        let mut identify = Some(node.clone());
        let mut pending = Some(first);
        loop {
            if let Some(families) = pending.take() {
                for m in messages(families, batch, &mut identify) {
                    if msgs.try_send(m).is_err() {
                        break; // the stream is not keeping up: this flush is dropped
                    }
                }
            }
            tokio::select! {
                r = &mut call => {
                    if let Err(e) = r {
                        tracing::debug!("metrics service stream to '{cluster}' closed: {e}");
                    }
                    retry_at = tokio::time::Instant::now() + backoff;
                    break;
                }
                next = rx.recv() => match next {
                    Some(f) => pending = Some(f),
                    None => return,
                },
            }
        }
    }
}

/// One flush as messages of at most `batch` families (all in one when 0); the node goes on
/// the stream's first message.
fn messages(
    families: Vec<prom::MetricFamily>,
    batch: usize,
    identify: &mut Option<Node>,
) -> Vec<StreamMetricsMessage> {
    let size = if batch == 0 {
        families.len().max(1)
    } else {
        batch
    };
    let mut out = Vec::new();
    let mut it = families.into_iter().peekable();
    loop {
        let envoy_metrics: Vec<_> = it.by_ref().take(size).collect();
        out.push(StreamMetricsMessage {
            identifier: identify
                .take()
                .map(|node| stream_metrics_message::Identifier { node: Some(node) }),
            envoy_metrics,
        });
        if it.peek().is_none() {
            return out;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{CounterPoint, GaugePoint};
    use super::*;
    use crate::telemetry::stats::HistogramSnapshot;

    fn config() -> MetricsService {
        MetricsService {
            cluster: "ms".into(),
            counters_as_deltas: false,
            tags_as_labels: false,
            emit_summary: true,
            emit_histogram: true,
            batch_size: 0,
        }
    }

    fn snapshot() -> Snapshot {
        let tags = Tags {
            extracted_name: "cluster.upstream_rq_total".into(),
            tags: Arc::from(vec![(Arc::from("envoy.cluster_name"), Arc::from("a"))]),
        };
        let mut interval = HistogramSnapshot::default();
        interval.buckets[3] = 2; // two values in (5, 10]
        interval.count = 2;
        interval.sum = 15;
        Snapshot {
            time_ms: 1234,
            counters: vec![CounterPoint {
                name: "cluster.a.upstream_rq_total".into(),
                tags,
                value: 7,
                delta: 2,
            }],
            gauges: vec![GaugePoint {
                name: "server.live".into(),
                tags: Tags::default(),
                value: 1,
            }],
            histograms: vec![HistogramPoint {
                name: "cluster.a.upstream_rq_time".into(),
                tags: Tags::default(),
                interval,
            }],
            values: vec![],
        }
    }

    #[test]
    fn one_family_per_stat_in_envoy_order() {
        let f = families(&config(), &snapshot());
        let kinds: Vec<_> = f.iter().map(|f| (f.name(), f.r#type())).collect();
        assert_eq!(
            kinds,
            [
                ("cluster.a.upstream_rq_total", prom::MetricType::Counter),
                ("server.live", prom::MetricType::Gauge),
                ("cluster.a.upstream_rq_time", prom::MetricType::Summary),
                ("cluster.a.upstream_rq_time", prom::MetricType::Histogram),
            ]
        );
        assert_eq!(f[0].metric[0].counter.as_ref().unwrap().value, Some(7.0));
        assert_eq!(f[0].metric[0].timestamp_ms, Some(1234));
        let h = f[3].metric[0].histogram.as_ref().unwrap();
        assert_eq!((h.sample_count, h.sample_sum), (Some(2), Some(15.0)));
        assert_eq!(h.bucket[2].cumulative_count, Some(0));
        assert_eq!(h.bucket[3].cumulative_count, Some(2));
        assert_eq!(h.bucket.len(), BUCKETS.len());
        let s = f[2].metric[0].summary.as_ref().unwrap();
        assert_eq!(s.quantile.len(), QUANTILES.len());
    }

    #[test]
    fn deltas_labels_and_emit_mode() {
        let c = MetricsService {
            counters_as_deltas: true,
            tags_as_labels: true,
            emit_summary: false,
            ..config()
        };
        let f = families(&c, &snapshot());
        assert_eq!(f.len(), 3, "no summary");
        assert_eq!(f[0].name(), "cluster.upstream_rq_total");
        assert_eq!(f[0].metric[0].counter.as_ref().unwrap().value, Some(2.0));
        assert_eq!(f[0].metric[0].label[0].name(), "envoy.cluster_name");
        assert_eq!(f[0].metric[0].label[0].value(), "a");
        assert_eq!(f[2].r#type(), prom::MetricType::Histogram);
    }

    #[test]
    fn batches_and_the_identifier_on_the_first_message_only() {
        let f = families(&config(), &snapshot());
        let mut node = Some(Node {
            id: "n".into(),
            ..Default::default()
        });
        let m = messages(f.clone(), 3, &mut node);
        assert_eq!(
            m.iter().map(|m| m.envoy_metrics.len()).collect::<Vec<_>>(),
            [3, 1]
        );
        assert!(m[0].identifier.is_some() && m[1].identifier.is_none());
        let again = messages(f, 0, &mut node);
        assert_eq!(again.len(), 1);
        assert!(again[0].identifier.is_none(), "only the stream's first");
    }
}
