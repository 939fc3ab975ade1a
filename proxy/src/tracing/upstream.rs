//! The router's upstream spans: with the connection manager's `tracing.spawn_upstream_span` (or
//! the router's `start_child_span`) each upstream request, every retry included, gets a client
//! span under the stream's span (Envoy's `UpstreamRequest` span), whose context goes upstream
//! in place of the stream span's. It ends with its request, tagged as Envoy's
//! `HttpTracerUtility::finalizeUpstreamSpan` tags it.

use super::{
    Driver, FIRST_UPSTREAM_RX, FIRST_UPSTREAM_TX, Kind, LAST_UPSTREAM_RX, LAST_UPSTREAM_TX, Record,
    SpanContext, header_custom_tags, micros, stream_custom_tags,
};
use crate::model::tracing::HcmTracing;
use crate::stream_info::{Protocol, StreamInfo};
use http::HeaderMap;
use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

/// One upstream request's span, from its creation to the end of its response (or its reset).
#[derive(Debug)]
pub struct UpstreamSpan {
    driver: Driver,
    cx: SpanContext,
    name: String,
    start_time: SystemTime,
    start: Instant,
    config: Arc<HcmTracing>,
    /// The attempt's retry number (`retry.count`), for a retry.
    retry: Option<u32>,
    /// The custom tags from the request's headers.
    header_tags: Vec<(Cow<'static, str>, String)>,
}

/// How an upstream request ended, as its span reports it.
#[derive(Debug)]
pub struct UpstreamEnd<'a> {
    /// The protocol the request went upstream with (`None`: it never had a connection).
    pub protocol: Option<Protocol>,
    pub cluster: &'a str,
    pub host: Option<SocketAddr>,
    /// The upstream's response status (`None`: no response).
    pub status: Option<u16>,
    /// remora reset the request (a retry replaced it, a timeout, the client went away).
    pub canceled: bool,
    pub first_tx: Option<Instant>,
    pub last_tx: Option<Instant>,
    pub first_rx: Option<Instant>,
    pub last_rx: Option<Instant>,
    /// The stream's (for the metadata custom tags).
    pub info: &'a StreamInfo,
}

impl UpstreamSpan {
    pub(super) fn new(
        driver: Driver,
        cx: SpanContext,
        name: String,
        config: Arc<HcmTracing>,
    ) -> Self {
        Self {
            driver,
            cx,
            name,
            start_time: SystemTime::now(),
            start: Instant::now(),
            config,
            retry: None,
            header_tags: Vec::new(),
        }
    }

    pub fn context(&self) -> &SpanContext {
        &self.cx
    }

    pub(super) fn retry(&mut self, n: u32) {
        self.retry = Some(n);
    }

    /// The custom tags read from the request's headers (kept for the end).
    pub(super) fn request_headers(&mut self, h: &HeaderMap) {
        if self.cx.sampled {
            header_custom_tags(&self.config, h, &mut self.header_tags);
        }
    }

    /// This span's context into the upstream request's headers.
    pub fn inject(&self, headers: &mut HeaderMap) {
        self.driver.inject(&self.cx, headers);
    }

    /// The request is over: the span's tags, then the span to the driver (sampled only).
    pub fn finish(mut self, end: &UpstreamEnd<'_>) {
        if !self.cx.sampled {
            return;
        }
        let duration = SystemTime::now()
            .duration_since(self.start_time)
            .unwrap_or_default();
        let mut tags = Vec::new();
        if let Some(n) = self.retry {
            tags.push(("retry.count".into(), n.to_string()));
        }
        end_tags(end, &mut tags);
        tags.append(&mut self.header_tags);
        stream_custom_tags(&self.config, end.info, &mut tags);
        let annotations = match self.config.verbose {
            true => self.timings(end),
            false => Vec::new(),
        };
        self.driver.report(Record {
            cx: self.cx,
            kind: Kind::Client,
            shared: false,
            name: self.name,
            timestamp_us: micros(self.start_time),
            duration_us: duration.as_micros() as u64,
            tags,
            annotations,
        });
    }

    /// `verbose`: the upstream request's timings (Envoy's `annotateVerbose` over the upstream
    /// request's own stream info, which knows only these).
    fn timings(&self, end: &UpstreamEnd<'_>) -> Vec<(u64, &'static str)> {
        let base = micros(self.start_time);
        let at = |t: Option<Instant>| {
            t.map(|t| base + t.saturating_duration_since(self.start).as_micros() as u64)
        };
        [
            (end.first_tx, FIRST_UPSTREAM_TX),
            (end.last_tx, LAST_UPSTREAM_TX),
            (end.first_rx, FIRST_UPSTREAM_RX),
            (end.last_rx, LAST_UPSTREAM_RX),
        ]
        .into_iter()
        .filter_map(|(t, name)| Some((at(t)?, name)))
        .collect()
    }
}

/// Envoy's tags of an upstream span, in its order.
fn end_tags(end: &UpstreamEnd<'_>, t: &mut Vec<(Cow<'static, str>, String)>) {
    if end.canceled {
        t.push(("canceled".into(), "true".into()));
    }
    let protocol = end.protocol.map_or("-", |p| p.as_str());
    t.push(("http.protocol".into(), protocol.to_string()));
    if let Some(a) = end.host {
        t.push(("upstream_address".into(), a.to_string()));
        t.push(("peer.address".into(), a.to_string()));
    }
    t.push(("component".into(), "proxy".into()));
    t.push(("upstream_cluster".into(), end.cluster.to_string()));
    t.push(("upstream_cluster.name".into(), end.cluster.to_string()));
    let code = end.status.unwrap_or(0);
    t.push(("http.status_code".into(), code.to_string()));
    // The upstream request's own stream info carries no response flags.
    t.push(("response_flags".into(), "-".into()));
    if code == 0 || code >= 500 {
        t.push(("error".into(), "true".into()));
    }
}

#[cfg(test)]
mod tests {
    use super::super::{HttpTracer, TracingStats, b3, zipkin};
    use super::*;
    use crate::model::tracing::{CustomTag, CustomTagValue, Zipkin};
    use crate::stream_info::ConnectionInfo;
    use std::time::Duration;

    fn zipkin_driver() -> Arc<zipkin::Driver> {
        let config = Zipkin {
            collector_cluster: "zipkin".into(),
            collector_endpoint: "/api/v2/spans".into(),
            collector_hostname: "zipkin".into(),
            trace_id_128bit: false,
            shared_span_context: true,
            w3c: false,
        };
        let cm = Arc::new(crate::upstream::cluster::ClusterManager::new(Vec::new()));
        Arc::new(zipkin::Driver::new(
            config,
            &cm,
            &Default::default(),
            &Default::default(),
            crate::runtime::RuntimeLoader::for_tests(Default::default()),
            Default::default(),
        ))
    }

    /// An OUTBOUND connection manager's tracer, spawning upstream spans or not.
    fn tracer(d: &Arc<zipkin::Driver>, spawn: bool) -> Arc<HttpTracer> {
        let p = |n| crate::model::runtime::Percent {
            numerator: n,
            denominator: 10_000,
        };
        let cx = crate::context::ServerContext::for_tests();
        let counter = |n: &str| cx.store.counter(n);
        Arc::new(HttpTracer {
            config: Arc::new(HcmTracing {
                client_sampling: p(10_000),
                random_sampling: p(10_000),
                overall_sampling: p(10_000),
                verbose: true,
                max_path_tag_length: 256,
                custom_tags: vec![CustomTag {
                    tag: "tenant".into(),
                    value: CustomTagValue::RequestHeader {
                        name: http::HeaderName::from_static("x-tenant"),
                        default: String::new(),
                    },
                }],
                provider: None,
                spawn_upstream_span: spawn,
            }),
            kind: Kind::Client,
            span_kind: if spawn { Kind::Server } else { Kind::Client },
            spawn_upstream: spawn,
            driver: Some(Driver::Zipkin(d.clone())),
            stats: TracingStats {
                random_sampling: counter("r"),
                service_forced: counter("s"),
                client_enabled: counter("c"),
                not_traceable: counter("n"),
            },
            pack_trace_reason: true,
            request_id_sampling: false,
            runtime: cx.runtime.clone(),
            node_id: "n".into(),
            zone: "z".into(),
        })
    }

    fn info() -> StreamInfo {
        StreamInfo::new(Arc::new(ConnectionInfo {
            id: 1,
            local: "127.0.0.1:10000".parse().unwrap(),
            remote: "10.0.0.2:5555".parse().unwrap(),
            requested_server_name: None,
            application_protocols: vec![],
            transport_protocol: "raw_buffer",
            tls: None,
        }))
    }

    /// A propagated, sampled B3 context.
    fn request() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(b3::X_B3_TRACE_ID, "00000000000000aa".parse().unwrap());
        h.insert(b3::X_B3_SPAN_ID, "00000000000000bb".parse().unwrap());
        h.insert(b3::X_B3_SAMPLED, "1".parse().unwrap());
        h.insert("x-tenant", "blue".parse().unwrap());
        h
    }

    #[test]
    fn a_child_per_upstream_request_under_the_stream_span() {
        let d = zipkin_driver();
        let t = tracer(&d, true);
        let mut h = request();
        let uri: http::Uri = "/x".parse().unwrap();
        let stream = t.start(&mut h, &http::Method::GET, &uri, &info()).unwrap();
        // A server span with spawn_upstream_span: it shares the propagated span's id.
        assert_eq!((stream.cx.id, stream.shared), (0xbb, true));
        assert!(stream.spawns_upstream());
        let child = stream.spawn_upstream("app", 2, &h).unwrap();
        let cx = *child.context();
        assert_eq!((cx.trace_id, cx.parent_id), (0xaa, 0xbb));
        assert!(cx.id != 0xbb && cx.sampled);
        // The child's context goes upstream.
        let mut out = h.clone();
        child.inject(&mut out);
        let mut hex = [0u8; 16];
        assert_eq!(out[b3::X_B3_SPAN_ID], b3::hex16(cx.id, &mut hex));
        assert_eq!(out[b3::X_B3_PARENT_SPAN_ID], "00000000000000bb");
        let info = info();
        let t0 = Instant::now();
        child.finish(&UpstreamEnd {
            protocol: Some(Protocol::Http2),
            cluster: "app",
            host: Some("10.0.0.9:8080".parse().unwrap()),
            status: Some(503),
            canceled: true,
            first_tx: Some(t0),
            last_tx: Some(t0 + Duration::from_millis(1)),
            first_rx: Some(t0 + Duration::from_millis(2)),
            last_rx: None,
            info: &info,
        });
        let spans = d.pending();
        let [r] = spans.as_slice() else {
            panic!("one span: {spans:?}")
        };
        assert_eq!((r.kind, r.shared), (Kind::Client, false));
        assert_eq!(r.name, "router app egress");
        let tag = |k: &str| r.tags.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(tag("retry.count"), Some("1"));
        assert_eq!(tag("canceled"), Some("true"));
        assert_eq!(tag("http.protocol"), Some("HTTP/2"));
        assert_eq!(tag("upstream_address"), Some("10.0.0.9:8080"));
        assert_eq!(tag("peer.address"), Some("10.0.0.9:8080"));
        assert_eq!(tag("upstream_cluster.name"), Some("app"));
        assert_eq!(tag("http.status_code"), Some("503"));
        assert_eq!(tag("response_flags"), Some("-"));
        assert_eq!(tag("error"), Some("true"));
        assert_eq!(tag("tenant"), Some("blue"), "custom tags apply too");
        let logs: Vec<&str> = r.annotations.iter().map(|(_, n)| *n).collect();
        assert_eq!(
            logs,
            [FIRST_UPSTREAM_TX, LAST_UPSTREAM_TX, FIRST_UPSTREAM_RX]
        );
        assert!(r.annotations.windows(2).all(|w| w[0].0 <= w[1].0));
    }

    #[test]
    fn without_spawning_the_stream_span_is_the_egress_client_span() {
        let d = zipkin_driver();
        let t = tracer(&d, false);
        let mut h = request();
        let uri: http::Uri = "/x".parse().unwrap();
        let stream = t.start(&mut h, &http::Method::GET, &uri, &info()).unwrap();
        assert!(!stream.spawns_upstream());
        assert!(stream.spawn_upstream("app", 1, &h).is_none());
        assert_eq!((stream.cx.parent_id, stream.shared), (0xbb, false));
    }
}
