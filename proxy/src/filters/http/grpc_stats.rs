//! `envoy.filters.http.grpc_stats` (Envoy 1.40's `source/extensions/filters/http/grpc_stats/`):
//! per gRPC call, under the route's cluster, `cluster.<cluster>.grpc[.<service>.<method>].`
//! `{<grpc-status>,success,failure,total}` from the response headers (trailers-only) and
//! trailers, `request_message_count` / `response_message_count` from the 5-byte message
//! headers in the bodies as they stream (a message counts at its first byte, whatever the data
//! frames' boundaries), and with `enable_upstream_stats` `upstream_rq_time` (the end of the
//! request body to the end of the response). With `emit_filter_state` the counts are the
//! stream's `envoy.filters.http.grpc_stats` filter state (its `FilterObject` JSON), which
//! Istio's stats read for `istio_{request,response}_messages_total`.
//!
//! Not done: the Connect protocol's unary and streaming forms (Envoy counts them too);
//! a Connect call is counted only when its content type is gRPC's.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::Instant;

use super::{Flow, HttpFilter, HttpFilterFactory, StreamCx};
use crate::http::body::{Body, BodyError};
use crate::model::grpc_stats::{GrpcStats, PerMethod};
use crate::stream_info::GrpcMessageCounts;
use crate::telemetry::stats::Store;
use crate::upstream::cluster::ClusterManager;

#[derive(Debug)]
pub struct GrpcStatsFactory {
    name: String,
    config: Arc<GrpcStats>,
    store: Arc<Store>,
    clusters: Arc<ClusterManager>,
}

impl GrpcStatsFactory {
    pub fn new(
        name: String,
        config: Arc<GrpcStats>,
        store: Arc<Store>,
        clusters: Arc<ClusterManager>,
    ) -> Self {
        Self {
            name,
            config,
            store,
            clusters,
        }
    }
}

impl HttpFilterFactory for GrpcStatsFactory {
    fn name(&self) -> &str {
        &self.name
    }

    fn create(
        &self,
        _per_route: Option<&crate::model::per_filter::PerFilterConfig>,
        cx: &StreamCx<'_>,
    ) -> Option<Box<dyn HttpFilter>> {
        // `clusterInfo()`: the route's cluster, if it exists.
        let cluster = cx
            .info
            .upstream_cluster
            .as_deref()
            .and_then(|c| self.clusters.get(c))
            .map(|c| Arc::<str>::from(c.config.stat_name.as_str()));
        Some(Box::new(GrpcStatsFilter {
            config: self.config.clone(),
            store: self.store.clone(),
            cluster,
            call: None,
            grpc_request: false,
            grpc_response: false,
        }))
    }
}

/// What a call's bodies share with the filter.
struct Call {
    /// `cluster.<cluster>.grpc.` or `cluster.<cluster>.grpc.<service>.<method>.`; `None`:
    /// no stat tracking (no cluster, not a `/<service>/<method>` path).
    prefix: Option<String>,
    store: Arc<Store>,
    counts: Arc<GrpcMessageCounts>,
    upstream_stats: bool,
    /// When the request body ended (Envoy's last upstream byte sent, as the router writes it).
    request_done: OnceLock<Instant>,
    /// The message counters, looked up once per call (data frames come often).
    message_counters: [OnceLock<Arc<crate::telemetry::stats::Counter>>; 2],
}

impl Call {
    fn counter(&self, suffix: &str, n: u64) {
        if let Some(p) = &self.prefix {
            self.store.counter(&format!("{p}{suffix}")).add(n);
        }
    }

    /// Envoy's `chargeStat` with a `grpc-status` value.
    fn charge_status(&self, status: Option<&http::HeaderValue>) {
        let Some(s) = status.and_then(|v| v.to_str().ok()) else {
            return;
        };
        self.counter(s, 1);
        self.counter(if s == "0" { "success" } else { "failure" }, 1);
        self.counter("total", 1);
    }

    fn messages(&self, request: bool, delta: u64) {
        if delta == 0 {
            return;
        }
        let c = match request {
            true => &self.counts.request,
            false => &self.counts.response,
        };
        c.fetch_add(delta, std::sync::atomic::Ordering::Relaxed);
        let Some(p) = &self.prefix else { return };
        let (i, name) = match request {
            true => (0, "request_message_count"),
            false => (1, "response_message_count"),
        };
        self.message_counters[i]
            .get_or_init(|| self.store.counter(&format!("{p}{name}")))
            .add(delta);
    }

    /// `upstream_rq_time`, once the response ended, when the request body had ended.
    fn upstream_time(&self) {
        let (Some(p), true) = (&self.prefix, self.upstream_stats) else {
            return;
        };
        if let Some(sent) = self.request_done.get() {
            let ms = sent.elapsed().as_millis() as u64;
            self.store
                .histogram(&format!("{p}upstream_rq_time"))
                .record(ms);
        }
    }
}

struct GrpcStatsFilter {
    config: Arc<GrpcStats>,
    store: Arc<Store>,
    cluster: Option<Arc<str>>,
    call: Option<Arc<Call>>,
    grpc_request: bool,
    grpc_response: bool,
}

/// Envoy's `hasGrpcContentType`: `application/grpc`, or `application/grpc+…`.
pub fn grpc_content_type(h: &http::HeaderMap) -> bool {
    let Some(ct) = h.get(http::header::CONTENT_TYPE).map(|v| v.as_bytes()) else {
        return false;
    };
    ct.strip_prefix(b"application/grpc")
        .is_some_and(|rest| rest.is_empty() || rest[0] == b'+')
}

/// Envoy's `resolveServiceAndMethod`: the path before `?` in exactly two non-empty `/` parts.
pub fn service_and_method(path: &str) -> Option<(&str, &str)> {
    let path = path.split('?').next().unwrap_or("");
    let mut parts = path.split('/').filter(|p| !p.is_empty());
    let (s, m) = (parts.next()?, parts.next()?);
    parts.next().is_none().then_some((s, m))
}

/// The stat prefix for a call, or `None` when it is not tracked.
pub fn stat_prefix(config: &GrpcStats, cluster: &str, path: &str) -> Option<String> {
    let (service, method) = service_and_method(path)?;
    let per_method = match &config.per_method {
        PerMethod::All if config.replace_dots_in_grpc_service_name => {
            Some((service.replace('.', "_"), method))
        }
        PerMethod::All => Some((service.to_string(), method)),
        PerMethod::Allowlist(l) => l
            .get(service)
            .filter(|ms| ms.iter().any(|m| m == method))
            .map(|_| (service.to_string(), method)),
        PerMethod::None => None,
    };
    Some(match per_method {
        Some((s, m)) => format!("cluster.{cluster}.grpc.{s}.{m}."),
        None => format!("cluster.{cluster}.grpc."),
    })
}

impl HttpFilter for GrpcStatsFilter {
    fn on_request_headers(
        &mut self,
        req: &mut http::request::Parts,
        _end_stream: bool,
        cx: &mut StreamCx<'_>,
    ) -> Flow {
        self.grpc_request = grpc_content_type(&req.headers);
        let prefix = match (&self.cluster, self.grpc_request) {
            (Some(c), true) => stat_prefix(&self.config, c, req.uri.path()),
            _ => None,
        };
        // Neither counted nor published: nothing to do on this stream.
        if !self.grpc_request && !self.config.emit_filter_state {
            return Flow::Continue;
        }
        let counts = Arc::new(GrpcMessageCounts::default());
        if self.config.emit_filter_state {
            cx.info.filter_state.set_grpc_stats(counts.clone());
        }
        self.call = Some(Arc::new(Call {
            prefix,
            store: self.store.clone(),
            counts,
            upstream_stats: self.config.enable_upstream_stats,
            request_done: OnceLock::new(),
            message_counters: Default::default(),
        }));
        Flow::Continue
    }

    fn on_request_body(&mut self, body: Body, _cx: &mut StreamCx<'_>) -> Body {
        let Some(call) = self.call.as_ref().filter(|_| self.grpc_request) else {
            return body;
        };
        if body.is_end_stream() {
            let _ = call.request_done.set(Instant::now());
            return body;
        }
        counting(body, call.clone(), Side::Request)
    }

    fn on_response_headers(
        &mut self,
        resp: &mut http::response::Parts,
        end_stream: bool,
        _cx: &mut StreamCx<'_>,
    ) -> Flow {
        // Envoy's `isGrpcResponseHeaders`: trailers-only with a status, or 200 and gRPC's
        // content type.
        self.grpc_response = match end_stream {
            true => resp.headers.contains_key("grpc-status"),
            false => resp.status == http::StatusCode::OK && grpc_content_type(&resp.headers),
        };
        let Some(call) = &self.call else {
            return Flow::Continue;
        };
        if call.prefix.is_some() {
            call.charge_status(resp.headers.get("grpc-status"));
            if end_stream {
                call.upstream_time();
            }
        }
        Flow::Continue
    }

    fn on_response_body(&mut self, body: Body, _cx: &mut StreamCx<'_>) -> Body {
        let Some(call) = &self.call else { return body };
        let trailers = self.grpc_request && call.prefix.is_some();
        if body.is_end_stream() || !(self.grpc_response || trailers) {
            return body;
        }
        let side = Side::Response {
            count: self.grpc_response,
            trailers,
        };
        counting(body, call.clone(), side)
    }
}

#[derive(Clone, Copy)]
enum Side {
    /// A gRPC request: its messages counted, its end noted.
    Request,
    /// Count messages (a gRPC response); charge the trailers' status (a tracked call).
    Response { count: bool, trailers: bool },
}

fn counting(inner: Body, call: Arc<Call>, side: Side) -> Body {
    Body::Boxed(Box::pin(Counting {
        inner,
        call,
        side,
        frames: FrameInspector::default(),
        done: false,
    }))
}

/// A body whose gRPC messages are counted as it streams.
struct Counting {
    inner: Body,
    call: Arc<Call>,
    side: Side,
    frames: FrameInspector,
    done: bool,
}

impl Counting {
    fn on_frame(&mut self, frame: &Frame<Bytes>) {
        let (count, request) = match self.side {
            Side::Request => (true, true),
            Side::Response { count, .. } => (count, false),
        };
        if let Some(data) = frame.data_ref() {
            if count {
                let delta = self.frames.inspect(data);
                self.call.messages(request, delta);
            }
        } else if let (Some(t), Side::Response { trailers: true, .. }) =
            (frame.trailers_ref(), self.side)
        {
            self.call.charge_status(t.get("grpc-status"));
            self.call.upstream_time();
        }
    }

    fn on_end(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        if let Side::Request = self.side {
            let _ = self.call.request_done.set(Instant::now());
        }
    }
}

impl HttpBody for Counting {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                this.on_frame(frame);
                if this.inner.is_end_stream() || frame.is_trailers() {
                    this.on_end();
                }
            }
            Poll::Ready(None) => this.on_end(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Envoy's `Grpc::FrameInspector`: walks the 5-byte message headers (flags, 4-byte big-endian
/// length) across data chunks, counting a message at its first byte.
#[derive(Debug, Default)]
pub struct FrameInspector {
    /// Header bytes still to read (0: at a message's start, when `remaining` is 0 too).
    header_left: u8,
    length: u32,
    /// Payload bytes still to skip.
    remaining: u64,
}

impl FrameInspector {
    /// The messages that start in `data`.
    pub fn inspect(&mut self, data: &[u8]) -> u64 {
        let mut delta = 0;
        let mut i = 0;
        while i < data.len() {
            if self.remaining > 0 {
                let skip = self.remaining.min((data.len() - i) as u64);
                self.remaining -= skip;
                i += skip as usize;
                continue;
            }
            if self.header_left == 0 {
                // The flags byte: a new message.
                delta += 1;
                self.header_left = 4;
                self.length = 0;
            } else {
                self.length = (self.length << 8) | u32::from(data[i]);
                self.header_left -= 1;
                if self.header_left == 0 {
                    self.remaining = u64::from(self.length);
                }
            }
            i += 1;
        }
        delta
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut v = vec![0u8];
        v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn messages_count_across_chunks_at_their_first_byte() {
        let mut all = frame(b"hello");
        all.extend(frame(b""));
        all.extend(frame(&[7u8; 300]));
        // Every split point gives the same total, each message counted once.
        for split in 0..=all.len() {
            let mut fi = FrameInspector::default();
            let n = fi.inspect(&all[..split]) + fi.inspect(&all[split..]);
            assert_eq!(n, 3, "split at {split}");
        }
        // Byte by byte.
        let mut fi = FrameInspector::default();
        let n: u64 = all.iter().map(|b| fi.inspect(&[*b])).sum();
        assert_eq!(n, 3);
        // A message counts when its first byte arrives, before its payload.
        let mut fi = FrameInspector::default();
        assert_eq!(fi.inspect(&all[..1]), 1);
        assert_eq!(fi.inspect(&all[1..8]), 0);
    }

    #[test]
    fn service_and_method_as_envoy_resolves_them() {
        assert_eq!(service_and_method("/a.B/M"), Some(("a.B", "M")));
        assert_eq!(service_and_method("/a.B/M?x=1"), Some(("a.B", "M")));
        assert_eq!(service_and_method("//a.B//M/"), Some(("a.B", "M")));
        assert_eq!(service_and_method("/a.B"), None);
        assert_eq!(service_and_method("/a/b/c"), None);
    }

    fn config(per_method: PerMethod, dots: bool) -> GrpcStats {
        GrpcStats {
            emit_filter_state: true,
            enable_upstream_stats: false,
            replace_dots_in_grpc_service_name: dots,
            per_method,
        }
    }

    #[test]
    fn stat_prefixes_per_method_allowlist_and_none() {
        let all = config(PerMethod::All, false);
        assert_eq!(
            stat_prefix(&all, "c", "/a.B/M").as_deref(),
            Some("cluster.c.grpc.a.B.M.")
        );
        let dots = config(PerMethod::All, true);
        assert_eq!(
            stat_prefix(&dots, "c", "/a.B/M").as_deref(),
            Some("cluster.c.grpc.a_B.M.")
        );
        let list = [("a.B".to_string(), vec!["M".to_string()])].into();
        let allow = config(PerMethod::Allowlist(list), true);
        assert_eq!(
            stat_prefix(&allow, "c", "/a.B/M").as_deref(),
            Some("cluster.c.grpc.a.B.M.")
        );
        assert_eq!(
            stat_prefix(&allow, "c", "/a.B/N").as_deref(),
            Some("cluster.c.grpc.")
        );
        let none = config(PerMethod::None, false);
        assert_eq!(
            stat_prefix(&none, "c", "/a.B/M").as_deref(),
            Some("cluster.c.grpc.")
        );
        assert_eq!(stat_prefix(&all, "c", "/not-grpc"), None);
    }

    fn call(prefix: Option<&str>, store: &Arc<Store>) -> Call {
        Call {
            prefix: prefix.map(String::from),
            store: store.clone(),
            counts: Arc::default(),
            upstream_stats: true,
            request_done: OnceLock::new(),
            message_counters: Default::default(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn statuses_messages_and_upstream_time_as_envoys_context_charges_them() {
        let store = Arc::new(Store::default());
        let c = call(Some("cluster.c.grpc.s.M."), &store);
        c.charge_status(Some(&http::HeaderValue::from_static("0")));
        c.charge_status(Some(&http::HeaderValue::from_static("14")));
        // No grpc-status: nothing charged.
        c.charge_status(None);
        c.messages(true, 2);
        c.messages(true, 1);
        c.messages(false, 0);
        // The upstream time needs the request's end.
        c.upstream_time();
        let _ = c.request_done.set(Instant::now());
        tokio::time::advance(std::time::Duration::from_millis(30)).await;
        c.upstream_time();
        let get = |n: &str| store.counter(&format!("cluster.c.grpc.s.M.{n}")).value();
        assert_eq!(
            [
                get("0"),
                get("14"),
                get("success"),
                get("failure"),
                get("total")
            ],
            [1, 1, 1, 1, 2]
        );
        assert_eq!(get("request_message_count"), 3);
        assert_eq!(c.counts.get(), Some((3, 0)));
        let h = store
            .histogram("cluster.c.grpc.s.M.upstream_rq_time")
            .snapshot();
        assert_eq!(h.count, 1);
        // Untracked (no cluster, or not /service/method): the filter state still counts.
        let store = Arc::new(Store::default());
        let c = call(None, &store);
        c.messages(false, 4);
        c.charge_status(Some(&http::HeaderValue::from_static("0")));
        assert_eq!(c.counts.get(), Some((0, 4)));
        assert!(!store.entries().iter().any(|e| e.name.contains("grpc")));
    }
}
