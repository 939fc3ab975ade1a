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
