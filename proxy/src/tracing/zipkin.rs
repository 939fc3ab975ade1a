//! `envoy.tracers.zipkin`: spans started from B3 (and, with `USE_B3_WITH_W3C_PROPAGATION`,
//! W3C) context as Envoy's zipkin `Tracer` starts them (a root span's trace id is its span id;
//! an ingress span shares its parent's id with `shared_span_context`), reported as Zipkin
//! API v2 JSON, POSTed to `collector_endpoint` on `collector_cluster`.
//!
//! Finished spans wait in a bounded queue; the tracer manager's task drains it every flush
//! interval, or sooner once `tracing.zipkin.min_flush_spans` (5) are pending. Stats:
//! `tracing.zipkin.{spans_sent, timer_flushed, reports_skipped_no_cluster, reports_sent,
//! reports_dropped, reports_failed}` as Envoy, and remora's `tracing.zipkin.spans_dropped`
//! (the queue was full: a slow or dead collector).

use super::queue::SpanQueue;
use super::{Kind, Record, SpanContext, b3, nonzero_random, w3c};
use crate::http::conn_manager::LocalInfo;
use crate::model::tracing::Zipkin;
use crate::telemetry::stats::{Counter, Store};
use crate::upstream::cluster::ClusterManager;
use bytes::Bytes;
use http::HeaderMap;
use http_body_util::Full;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// At most this many finished spans wait for the collector.
pub const QUEUE_CAPACITY: usize = 1024;

#[derive(Debug)]
struct Stats {
    reports_skipped_no_cluster: Arc<Counter>,
    reports_sent: Arc<Counter>,
    reports_dropped: Arc<Counter>,
    reports_failed: Arc<Counter>,
}

/// One zipkin provider's driver (shared by the connection managers that name it).
#[derive(Debug)]
pub struct Driver {
    config: Zipkin,
    clusters: Weak<ClusterManager>,
    /// The local endpoint of every span: the node's cluster and address.
    service_name: String,
    local_ip: Option<std::net::IpAddr>,
    queue: SpanQueue,
    stats: Arc<Stats>,
    runtime: Arc<crate::runtime::RuntimeLoader>,
}

impl Driver {
    pub fn new(
        config: Zipkin,
        clusters: &Arc<ClusterManager>,
        store: &Store,
        local: &LocalInfo,
        runtime: Arc<crate::runtime::RuntimeLoader>,
        wake: Arc<tokio::sync::Notify>,
    ) -> Self {
        let c = |n: &str| store.counter(&format!("tracing.zipkin.{n}"));
        Self {
            config,
            clusters: Arc::downgrade(clusters),
            service_name: local.service_cluster.clone(),
            local_ip: local.address,
            queue: SpanQueue::new(
                "tracing.zipkin",
                QUEUE_CAPACITY,
                store,
                runtime.clone(),
                wake,
            ),
            stats: Arc::new(Stats {
                reports_skipped_no_cluster: c("reports_skipped_no_cluster"),
                reports_sent: c("reports_sent"),
                reports_dropped: c("reports_dropped"),
                reports_failed: c("reports_failed"),
            }),
            runtime,
        }
    }

    /// The span's context (Envoy's `Driver::startSpan`), and whether it is marked shared (a
    /// server span with `shared_span_context`: it takes its parent's id, and a root is marked
    /// too, as Envoy's JSON shows). `None`: a malformed propagated context (Envoy's null span).
    pub fn start(&self, h: &HeaderMap, traced: bool, kind: Kind) -> Option<(SpanContext, bool)> {
        let has_b3 = h.contains_key(b3::B3)
            || h.contains_key(b3::X_B3_TRACE_ID)
            || h.contains_key(b3::X_B3_SAMPLED);
        let use_w3c = self.config.w3c && !has_b3;
        let sampled = match use_w3c {
            true => w3c::extract_sampled(h),
            false => b3::extract_sampled(h),
        };
        let decision = sampled.unwrap_or(traced);
        let parent = match use_w3c {
            true => w3c::extract(h, decision).ok()?,
            false => b3::extract(h, decision).ok()?,
        };
        let share = kind == Kind::Server && self.config.shared_span_context;
        let Some(p) = parent else {
            let id = nonzero_random();
            let trace_high = if self.config.trace_id_128bit {
                nonzero_random()
            } else {
                0
            };
            let cx = SpanContext {
                trace_high,
                trace_id: id,
                id,
                parent_id: 0,
                sampled: decision,
            };
            return Some((cx, share));
        };
        let (id, parent_id) = match share {
            true => (p.id, p.parent_id),
            false => (nonzero_random(), p.id),
        };
        let cx = SpanContext { id, parent_id, ..p };
        Some((cx, share))
    }

    /// The router's injection: B3 multi headers, and `traceparent` with W3C propagation.
    pub fn inject(&self, cx: &SpanContext, h: &mut HeaderMap) {
        b3::inject(cx, h);
        if self.config.w3c {
            w3c::inject(cx, h);
        }
    }

    /// A finished span into the queue (dropped and counted when it is full); wakes the flush
    /// task once `min_flush_spans` wait.
    pub fn report(&self, record: Record) {
        self.queue.report(record);
    }

    /// Send what waits: everything on the timer, else once `min_flush_spans` wait. Runs on the
    /// main runtime (the manager's task); the POST is a task of its own.
    pub fn flush(&self, timer: bool) {
        let Some(spans) = self.queue.take(timer) else {
            return;
        };
        let body = Bytes::from(self.serialize(&spans));
        let timeout = self
            .runtime
            .snapshot()
            .integer("tracing.zipkin.request_timeout", 5000);
        let post = Post {
            clusters: self.clusters.clone(),
            cluster: self.config.collector_cluster.clone(),
            host: self.config.collector_hostname.clone(),
            path: self.config.collector_endpoint.clone(),
            timeout: Duration::from_millis(timeout.max(1)),
            stats: self.stats.clone(),
        };
        tokio::spawn(post.send(body));
    }

    /// Zipkin API v2 JSON (Envoy's `JsonV2Serializer`).
    pub fn serialize(&self, spans: &[Record]) -> Vec<u8> {
        use serde_json::{Map, Value};
        let mut endpoint = Map::new();
        match self.local_ip {
            Some(std::net::IpAddr::V4(ip)) => {
                endpoint.insert("ipv4".into(), ip.to_string().into());
                endpoint.insert("port".into(), 0.into());
            }
            Some(std::net::IpAddr::V6(ip)) => {
                endpoint.insert("ipv6".into(), ip.to_string().into());
                endpoint.insert("port".into(), 0.into());
            }
            None => {}
        }
        if !self.service_name.is_empty() {
            endpoint.insert("serviceName".into(), self.service_name.clone().into());
        }
        let list = spans
            .iter()
            .map(|r| {
                let mut o = Map::new();
                let mut buf = [0u8; 32];
                let mut hex = [0u8; 16];
                o.insert("traceId".into(), r.cx.trace_id_hex(&mut buf).into());
                if r.cx.parent_id != 0 {
                    o.insert(
                        "parentId".into(),
                        b3::hex16(r.cx.parent_id, &mut hex).into(),
                    );
                }
                o.insert("id".into(), b3::hex16(r.cx.id, &mut hex).into());
                let kind = match r.kind {
                    Kind::Client => "CLIENT",
                    Kind::Server => "SERVER",
                };
                o.insert("kind".into(), kind.into());
                if !r.name.is_empty() {
                    o.insert("name".into(), r.name.clone().into());
                }
                o.insert("timestamp".into(), r.timestamp_us.into());
                o.insert("duration".into(), r.duration_us.into());
                o.insert("localEndpoint".into(), Value::Object(endpoint.clone()));
                // Envoy's zipkin span drops a tag with an empty value.
                let tags: Map<String, Value> = r
                    .tags
                    .iter()
                    .filter(|(_, v)| !v.is_empty())
                    .map(|(k, v)| (k.to_string(), Value::String(v.clone())))
                    .collect();
                if !tags.is_empty() {
                    o.insert("tags".into(), Value::Object(tags));
                }
                // The span logs, then the end: `cr` (client receive) or `ss` (server send).
                let end = match r.kind {
                    Kind::Client => "cr",
                    Kind::Server => "ss",
                };
                let list = r
                    .annotations
                    .iter()
                    .copied()
                    .chain([(r.timestamp_us + r.duration_us, end)])
                    .map(|(t, v)| serde_json::json!({"timestamp": t, "value": v}))
                    .collect();
                o.insert("annotations".into(), Value::Array(list));
                if r.shared {
                    o.insert("shared".into(), true.into());
                }
                Value::Object(o)
            })
            .collect();
        serde_json::to_vec(&Value::Array(list)).unwrap_or_default()
    }
}

#[cfg(test)]
impl Driver {
    /// The spans waiting for the collector, taken.
    pub(crate) fn pending(&self) -> Vec<Record> {
        self.queue.take(true).unwrap_or_default()
    }
}

/// One report to the collector.
struct Post {
    clusters: Weak<ClusterManager>,
    cluster: String,
    host: String,
    path: String,
    timeout: Duration,
    stats: Arc<Stats>,
}

impl Post {
    async fn send(self, body: Bytes) {
        let cluster = self.clusters.upgrade().and_then(|cm| cm.get(&self.cluster));
        let Some(cluster) = cluster else {
            self.stats.reports_skipped_no_cluster.inc();
            return;
        };
        let stats = self.stats.clone();
        let outcome = tokio::time::timeout(self.timeout, async move {
            let host = crate::upstream::lb::choose_with(&cluster, Default::default())?;
            let io = crate::upstream::health_check::connect(&cluster, host.address)
                .await
                .ok()?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
                    .await
                    .ok()?;
            tokio::spawn(conn);
            let req = http::Request::post(&self.path)
                .header(http::header::HOST, &self.host)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Full::new(body))
                .ok()?;
            let resp = sender.send_request(req).await.ok()?;
            Some(resp.status())
        })
        .await;
        match outcome {
            Ok(Some(s)) if s == http::StatusCode::ACCEPTED => stats.reports_sent.inc(),
            Ok(Some(_)) => stats.reports_dropped.inc(),
            Ok(None) | Err(_) => stats.reports_failed.inc(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn driver(shared: bool, w3c: bool) -> Driver {
        let config = Zipkin {
            collector_cluster: "zipkin".into(),
            collector_endpoint: "/api/v2/spans".into(),
            collector_hostname: "zipkin".into(),
            trace_id_128bit: false,
            shared_span_context: shared,
            w3c,
        };
        let cm = Arc::new(ClusterManager::new(Vec::new()));
        let local = LocalInfo {
            service_cluster: "front".into(),
            address: Some("10.0.0.1".parse().unwrap()),
            ..Default::default()
        };
        Driver::new(
            config,
            &cm,
            &Store::default(),
            &local,
            crate::runtime::RuntimeLoader::for_tests(Default::default()),
            Default::default(),
        )
    }

    fn b3(trace: &str, span: &str, sampled: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(b3::X_B3_TRACE_ID, trace.parse().unwrap());
        h.insert(b3::X_B3_SPAN_ID, span.parse().unwrap());
        h.insert(b3::X_B3_SAMPLED, sampled.parse().unwrap());
        h
    }

    #[test]
    fn ingress_shares_and_egress_children() {
        let h = b3("00000000000000aa", "00000000000000bb", "1");
        let (cx, shared) = driver(true, false).start(&h, false, Kind::Server).unwrap();
        assert!(shared && cx.sampled, "the header's decision wins");
        assert_eq!((cx.trace_id, cx.id, cx.parent_id), (0xaa, 0xbb, 0));
        let (cx, shared) = driver(false, false).start(&h, true, Kind::Server).unwrap();
        assert!(!shared);
        assert_eq!((cx.trace_id, cx.parent_id), (0xaa, 0xbb));
        assert_ne!(cx.id, 0xbb);
        let (cx, _) = driver(true, false).start(&h, true, Kind::Client).unwrap();
        assert_eq!(cx.parent_id, 0xbb);
        let (root, shared) = driver(true, false)
            .start(&HeaderMap::new(), false, Kind::Client)
            .unwrap();
        assert_eq!(
            (root.trace_id, root.parent_id, root.sampled),
            (root.id, 0, false)
        );
        assert!(!shared);
        // A root server span is marked shared too (Envoy's JSON does), unless configured off.
        let none = HeaderMap::new();
        assert!(
            driver(true, false)
                .start(&none, true, Kind::Server)
                .unwrap()
                .1
        );
        assert!(
            !driver(false, false)
                .start(&none, true, Kind::Server)
                .unwrap()
                .1
        );
        let bad = b3("zz", "00000000000000bb", "1");
        assert!(
            driver(true, false)
                .start(&bad, true, Kind::Server)
                .is_none()
        );
    }

    #[test]
    fn w3c_is_read_without_b3_and_injected_beside_it() {
        let d = driver(true, true);
        let mut h = HeaderMap::new();
        h.insert(
            w3c::TRACEPARENT,
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
                .parse()
                .unwrap(),
        );
        let (cx, _) = d.start(&h, false, Kind::Client).unwrap();
        assert_eq!(cx.trace_high, 0x0af7651916cd43dd);
        assert_eq!(cx.parent_id, 0xb7ad6b7169203331);
        assert!(cx.sampled);
        let mut out = HeaderMap::new();
        d.inject(&cx, &mut out);
        assert_eq!(out["x-b3-traceid"], "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(out["x-b3-parentspanid"], "b7ad6b7169203331");
        assert!(out["traceparent"].to_str().unwrap().ends_with("-01"));
    }

    #[test]
    fn json_v2_shape_and_a_full_queue_drops() {
        let d = driver(true, false);
        let record = || Record {
            cx: SpanContext {
                trace_high: 0,
                trace_id: 1,
                id: 2,
                parent_id: 3,
                sampled: true,
            },
            kind: Kind::Server,
            shared: true,
            name: "svc".into(),
            timestamp_us: 10,
            duration_us: 5,
            tags: vec![
                ("component".into(), "proxy".into()),
                ("zone".into(), String::new()),
            ],
            annotations: Vec::new(),
        };
        let json: serde_json::Value = serde_json::from_slice(&d.serialize(&[record()])).unwrap();
        assert_eq!(
            json,
            serde_json::json!([{
                "traceId": "0000000000000001", "parentId": "0000000000000003",
                "id": "0000000000000002", "kind": "SERVER", "name": "svc",
                "timestamp": 10, "duration": 5,
                "localEndpoint": {"ipv4": "10.0.0.1", "port": 0, "serviceName": "front"},
                "tags": {"component": "proxy"}, "shared": true,
                "annotations": [{"timestamp": 15, "value": "ss"}]
            }])
        );
        for _ in 0..QUEUE_CAPACITY + 3 {
            d.report(record());
        }
        assert_eq!(d.queue.spans_dropped.value(), 3);
    }
}
