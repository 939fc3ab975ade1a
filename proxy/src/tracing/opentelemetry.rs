//! `envoy.tracers.opentelemetry`: spans started from W3C `traceparent` (Envoy's OpenTelemetry
//! driver reads and writes only W3C context), exported as OTLP
//! (`opentelemetry.proto.collector.trace.v1.TraceService/Export`) over gRPC to the
//! `grpc_service`'s cluster, with the resource attributes (`service.name`, `telemetry.sdk.*`)
//! and the instrumentation scope as configured; `verbose`'s span logs are span events.
//!
//! Finished spans wait in a bounded queue (`max_cache_size`, 1024); the tracer manager's task
//! drains it every `tracing.opentelemetry.flush_interval_ms` (5 s) or once
//! `tracing.opentelemetry.min_flush_spans` (5) wait. Stats: `tracing.opentelemetry.spans_sent`
//! and `timer_flushed` as Envoy, and remora's `tracing.opentelemetry.{reports_sent,
//! reports_failed, spans_dropped}`.

use super::queue::SpanQueue;
use super::{Kind, Record, SpanContext, nonzero_random, w3c};
use crate::model::tracing::OpenTelemetry;
use crate::telemetry::stats::{Counter, Store};
use crate::upstream::cluster::ClusterManager;
use bytes::{BufMut, Bytes, BytesMut};
use http::HeaderMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// The OTLP messages remora sends (the trace and resource protos are not in envoy-types; their
/// wire format is stable). Common types are envoy-types'.
pub mod pb {
    pub use envoy_types::pb::opentelemetry::proto::common::v1::{
        AnyValue, InstrumentationScope, KeyValue, any_value,
    };

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExportTraceServiceRequest {
        #[prost(message, repeated, tag = "1")]
        pub resource_spans: Vec<ResourceSpans>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ResourceSpans {
        #[prost(message, optional, tag = "1")]
        pub resource: Option<Resource>,
        #[prost(message, repeated, tag = "2")]
        pub scope_spans: Vec<ScopeSpans>,
        #[prost(string, tag = "3")]
        pub schema_url: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Resource {
        #[prost(message, repeated, tag = "1")]
        pub attributes: Vec<KeyValue>,
        #[prost(uint32, tag = "2")]
        pub dropped_attributes_count: u32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ScopeSpans {
        #[prost(message, optional, tag = "1")]
        pub scope: Option<InstrumentationScope>,
        #[prost(message, repeated, tag = "2")]
        pub spans: Vec<Span>,
        #[prost(string, tag = "3")]
        pub schema_url: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Span {
        #[prost(bytes = "vec", tag = "1")]
        pub trace_id: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub span_id: Vec<u8>,
        #[prost(string, tag = "3")]
        pub trace_state: String,
        #[prost(bytes = "vec", tag = "4")]
        pub parent_span_id: Vec<u8>,
        #[prost(string, tag = "5")]
        pub name: String,
        /// 2 SERVER, 3 CLIENT.
        #[prost(int32, tag = "6")]
        pub kind: i32,
        #[prost(fixed64, tag = "7")]
        pub start_time_unix_nano: u64,
        #[prost(fixed64, tag = "8")]
        pub end_time_unix_nano: u64,
        #[prost(message, repeated, tag = "9")]
        pub attributes: Vec<KeyValue>,
        /// `verbose`'s span logs.
        #[prost(message, repeated, tag = "11")]
        pub events: Vec<Event>,
        #[prost(message, optional, tag = "15")]
        pub status: Option<Status>,
        #[prost(fixed32, tag = "16")]
        pub flags: u32,
    }

    /// A span event (Envoy's `Span::log`: a name at a time).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Event {
        #[prost(fixed64, tag = "1")]
        pub time_unix_nano: u64,
        #[prost(string, tag = "2")]
        pub name: String,
        #[prost(message, repeated, tag = "3")]
        pub attributes: Vec<KeyValue>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Status {
        #[prost(string, tag = "2")]
        pub message: String,
        /// 0 UNSET, 1 OK, 2 ERROR.
        #[prost(int32, tag = "3")]
        pub code: i32,
    }

    /// A string attribute.
    pub fn kv(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.to_string(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(value.to_string())),
            }),
            ..Default::default()
        }
    }
}

pub const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

#[derive(Debug)]
struct Stats {
    reports_sent: Arc<Counter>,
    reports_failed: Arc<Counter>,
}

/// One OpenTelemetry provider's driver.
#[derive(Debug)]
pub struct Driver {
    config: OpenTelemetry,
    clusters: Weak<ClusterManager>,
    resource: pb::Resource,
    queue: SpanQueue,
    stats: Arc<Stats>,
}

impl Driver {
    pub fn new(
        config: OpenTelemetry,
        clusters: &Arc<ClusterManager>,
        store: &Store,
        runtime: Arc<crate::runtime::RuntimeLoader>,
        wake: Arc<tokio::sync::Notify>,
    ) -> Self {
        let c = |n: &str| store.counter(&format!("tracing.opentelemetry.{n}"));
        let capacity = config.max_cache_size as usize;
        let mut attributes = Vec::new();
        if config.service_name_attribute {
            attributes.push(pb::kv("service.name", &config.service_name));
        }
        if config.telemetry_sdk_attributes {
            attributes.push(pb::kv("telemetry.sdk.language", "rust"));
            attributes.push(pb::kv("telemetry.sdk.name", "remora"));
            attributes.push(pb::kv("telemetry.sdk.version", crate::VERSION));
        }
        for (k, v) in &config.resource_attributes {
            if !attributes.iter().any(|a| &a.key == k) {
                attributes.push(pb::kv(k, v));
            }
        }
        Self {
            config,
            clusters: Arc::downgrade(clusters),
            resource: pb::Resource {
                attributes,
                dropped_attributes_count: 0,
            },
            queue: SpanQueue::new("tracing.opentelemetry", capacity, store, runtime, wake),
            stats: Arc::new(Stats {
                reports_sent: c("reports_sent"),
                reports_failed: c("reports_failed"),
            }),
        }
    }

    /// The span's context: a child of the request's `traceparent` (whose sampled flag is kept),
    /// else a root with the connection manager's decision. `None`: a malformed `traceparent`.
    pub fn start(&self, h: &HeaderMap, traced: bool) -> Option<(SpanContext, bool)> {
        let parent_sampled = w3c::extract_sampled(h);
        let parent = w3c::extract(h, parent_sampled.unwrap_or(traced)).ok()?;
        let id = nonzero_random();
        let cx = match parent {
            Some(p) => SpanContext {
                id,
                parent_id: p.id,
                ..p
            },
            None => SpanContext {
                trace_high: nonzero_random(),
                trace_id: fastrand::u64(..),
                id,
                parent_id: 0,
                sampled: traced,
            },
        };
        Some((cx, false))
    }

    pub fn report(&self, record: Record) {
        self.queue.report(record);
    }

    /// Export what waits (everything on the timer, else once `min_flush_spans` wait), as a
    /// task of its own.
    pub fn flush(&self, timer: bool) {
        let Some(spans) = self.queue.take(timer) else {
            return;
        };
        let body = grpc_frame(&self.request(&spans));
        let export = Export {
            clusters: self.clusters.clone(),
            cluster: self.config.cluster.clone(),
            authority: self.config.authority.clone(),
            timeout: self.config.timeout.unwrap_or(Duration::from_secs(5)),
            stats: self.stats.clone(),
        };
        tokio::spawn(export.send(body));
    }

    /// The export request for these spans.
    pub fn request(&self, spans: &[Record]) -> pb::ExportTraceServiceRequest {
        let scope = self
            .config
            .instrumentation_scope
            .then(|| pb::InstrumentationScope {
                name: "envoy".into(),
                version: crate::VERSION.into(),
                ..Default::default()
            });
        pb::ExportTraceServiceRequest {
            resource_spans: vec![pb::ResourceSpans {
                resource: Some(self.resource.clone()),
                scope_spans: vec![pb::ScopeSpans {
                    scope,
                    spans: spans.iter().map(span).collect(),
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        }
    }
}

fn span(r: &Record) -> pb::Span {
    let mut trace_id = Vec::with_capacity(16);
    trace_id.extend_from_slice(&r.cx.trace_high.to_be_bytes());
    trace_id.extend_from_slice(&r.cx.trace_id.to_be_bytes());
    let error = r.tags.iter().any(|(k, v)| k == "error" && v == "true");
    pb::Span {
        trace_id,
        span_id: r.cx.id.to_be_bytes().to_vec(),
        trace_state: String::new(),
        parent_span_id: match r.cx.parent_id {
            0 => Vec::new(),
            p => p.to_be_bytes().to_vec(),
        },
        name: r.name.clone(),
        kind: match r.kind {
            Kind::Server => 2,
            Kind::Client => 3,
        },
        start_time_unix_nano: r.timestamp_us * 1000,
        end_time_unix_nano: (r.timestamp_us + r.duration_us) * 1000,
        attributes: r.tags.iter().map(|(k, v)| pb::kv(k, v)).collect(),
        events: r
            .annotations
            .iter()
            .map(|(t, name)| pb::Event {
                time_unix_nano: t * 1000,
                name: name.to_string(),
                attributes: Vec::new(),
            })
            .collect(),
        status: error.then(|| pb::Status {
            message: String::new(),
            code: 2,
        }),
        flags: 0,
    }
}

/// A gRPC length-prefixed message (uncompressed).
fn grpc_frame(m: &impl prost::Message) -> Bytes {
    let len = m.encoded_len();
    let mut b = BytesMut::with_capacity(5 + len);
    b.put_u8(0);
    b.put_u32(len as u32);
    // Encoding into a buffer with the capacity reserved cannot fail.
    let _ = m.encode(&mut b);
    b.freeze()
}

/// One export call.
struct Export {
    clusters: Weak<ClusterManager>,
    cluster: String,
    authority: String,
    timeout: Duration,
    stats: Arc<Stats>,
}

impl Export {
    async fn send(self, body: Bytes) {
        let cluster = self.clusters.upgrade().and_then(|cm| cm.get(&self.cluster));
        let ok = match cluster {
            None => false,
            Some(cluster) => {
                tokio::time::timeout(self.timeout, call(cluster, self.authority, body))
                    .await
                    .unwrap_or(false)
            }
        };
        match ok {
            true => self.stats.reports_sent.inc(),
            false => self.stats.reports_failed.inc(),
        }
    }
}

/// The unary call over HTTP/2: `true` when the collector answered grpc-status 0.
async fn call(
    cluster: Arc<crate::upstream::cluster::Cluster>,
    authority: String,
    body: Bytes,
) -> bool {
    use http_body_util::BodyExt;
    let Some(host) = crate::upstream::lb::choose_with(&cluster, Default::default()) else {
        return false;
    };
    let Ok(io) = crate::upstream::health_check::connect(&cluster, host.address).await else {
        return false;
    };
    let io = hyper_util::rt::TokioIo::new(io);
    let exec = hyper_util::rt::TokioExecutor::new();
    let Ok((mut sender, conn)) = hyper::client::conn::http2::handshake(exec, io).await else {
        return false;
    };
    tokio::spawn(conn);
    let uri = format!("http://{authority}{EXPORT_PATH}");
    let Ok(req) = http::Request::post(uri)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .body(http_body_util::Full::new(body))
    else {
        return false;
    };
    let Ok(resp) = sender.send_request(req).await else {
        return false;
    };
    if resp.status() != http::StatusCode::OK {
        return false;
    }
    let in_headers = resp.headers().get("grpc-status").cloned();
    let Ok(collected) = resp.into_body().collect().await else {
        return false;
    };
    let status = in_headers.or_else(|| {
        collected
            .trailers()
            .and_then(|t| t.get("grpc-status").cloned())
    });
    status.is_some_and(|s| s == "0")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    #[test]
    fn the_export_request_carries_resource_scope_and_spans() {
        let config = OpenTelemetry {
            cluster: "otel".into(),
            authority: "otel".into(),
            timeout: None,
            service_name: "front".into(),
            max_cache_size: 2,
            telemetry_sdk_attributes: false,
            service_name_attribute: true,
            instrumentation_scope: true,
            resource_attributes: vec![
                ("service.name".into(), "other".into()),
                ("k8s.pod.name".into(), "p".into()),
            ],
        };
        let cm = Arc::new(ClusterManager::new(Vec::new()));
        let d = Driver::new(
            config,
            &cm,
            &Store::default(),
            crate::runtime::RuntimeLoader::for_tests(Default::default()),
            Default::default(),
        );
        let mut h = HeaderMap::new();
        h.insert(
            w3c::TRACEPARENT,
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
                .parse()
                .unwrap(),
        );
        let (cx, _) = d.start(&h, false).unwrap();
        assert!(cx.sampled && cx.parent_id == 0xb7ad6b7169203331);
        let record = || Record {
            cx,
            kind: Kind::Client,
            shared: false,
            name: "egress x".into(),
            timestamp_us: 1,
            duration_us: 2,
            tags: vec![(Cow::Borrowed("error"), "true".into())],
            annotations: vec![(2, super::super::LAST_UPSTREAM_RX)],
        };
        let req = d.request(&[record()]);
        let rs = &req.resource_spans[0];
        assert_eq!(
            rs.resource.as_ref().unwrap().attributes,
            vec![pb::kv("service.name", "front"), pb::kv("k8s.pod.name", "p")],
            "the configured service.name wins over a detector's"
        );
        let s = &rs.scope_spans[0].spans[0];
        assert_eq!(s.kind, 3);
        assert_eq!(s.trace_id.len(), 16);
        assert_eq!(s.parent_span_id, 0xb7ad6b7169203331u64.to_be_bytes());
        assert_eq!((s.start_time_unix_nano, s.end_time_unix_nano), (1000, 3000));
        assert_eq!(s.status.as_ref().unwrap().code, 2);
        assert_eq!(
            s.events,
            vec![pb::Event {
                time_unix_nano: 2000,
                name: "last_upstream_rx_byte_received".into(),
                attributes: Vec::new(),
            }],
            "verbose's span logs are span events"
        );
        for _ in 0..3 {
            d.report(record());
        }
        assert_eq!(
            d.queue.spans_dropped.value(),
            1,
            "max_cache_size bounds the queue"
        );
    }
}
