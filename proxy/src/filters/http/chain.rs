//! The HTTP filter chain runner (Envoy's `FilterManager`).
//!
//! - [`build`]: at listener start, the connection manager's `http_filters` (translated once, in
//!   `model::hcm`) become factories, one match arm per model variant. Filters that do nothing
//!   per stream (the no-ops, `istio.alpn`, the router) create no entry, so a chain of only
//!   those is empty.
//! - [`create`]: per stream, after the route is chosen, each entry creates its filter unless
//!   it is disabled for the route (the route's most specific `typed_per_filter_config` entry
//!   decides; without one, the chain's `disabled` does). An empty chain allocates nothing.
//! - [`decode_headers`] runs the decoder side in chain order, [`encode_headers`] the encoder
//!   side in reverse order; a `Pause` is awaited and its outcome acted on. A local reply from
//!   decoder filter `i` leaves filters `..i` to run their encoder side on the reply (the
//!   connection manager renders the reply and calls `encode_headers` on them).
//! - [`decode_body`] and [`encode_body`] hand the body to each filter, which may wrap it, in
//!   the same orders (the request body reaches the router through every filter's wrapper).

use std::sync::Arc;

use super::{Flow, HttpFilter, HttpFilterFactory, LocalReply, StreamCx};
use crate::http::body::Body;
use crate::model::hcm::{HttpFilter as Model, HttpFilterEntry};

/// One filter of a listener's chain.
#[derive(Debug, Clone)]
pub struct ChainEntry {
    pub factory: Arc<dyn HttpFilterFactory>,
    /// `HttpFilter.disabled`: runs only where a route's per-filter config enables it.
    pub disabled: bool,
}

/// What factories are built with.
pub struct BuildCx<'a> {
    pub server: &'a crate::context::ServerContext,
    /// The connection manager's `stat_prefix` (`http.<prefix>.<filter stats>`).
    pub stat_prefix: &'a str,
    pub clusters: &'a Arc<crate::upstream::cluster::ClusterManager>,
    /// The listener's `traffic_direction` (Istio's stats pick their reporter from it).
    pub direction: crate::model::listener::Direction,
}

/// A stream's filter instances, in chain order.
pub type StreamFilters = Vec<Box<dyn HttpFilter>>;

/// The chain's factories, from the translated filters.
pub fn build(filters: &[HttpFilterEntry], cx: &BuildCx<'_>) -> Vec<ChainEntry> {
    let mut out: Vec<ChainEntry> = Vec::new();
    // The compressors choose an encoding together: one filter at the first one's place.
    let mut compressors: Option<(
        usize,
        &str,
        Vec<&crate::model::compressor::CompressorConfig>,
    )> = None;
    for f in filters {
        let factory: Arc<dyn HttpFilterFactory> = match &f.filter {
            Model::Router(_) => continue,
            // The router reads the overrides (`alpn::router_overrides`).
            Model::Alpn(_) => continue,
            Model::Noop(n) => {
                super::noop::register(&cx.server.store, n);
                continue;
            }
            Model::PeerMetadata(p) => Arc::new(super::peer_metadata::PeerMetadataFactory::new(
                f.name.clone(),
                p,
                &cx.server.local.node,
                cx.clusters.clone(),
            )),
            Model::Fault(settings) => Arc::new(super::fault::FaultFactory::new(
                f.name.clone(),
                settings,
                cx.stat_prefix,
                &cx.server.store,
                &cx.server.runtime,
            )),
            Model::LocalRateLimit(c) => {
                Arc::new(super::local_ratelimit::LocalRateLimitFactory::new(
                    &f.name,
                    Arc::clone(c),
                    Arc::clone(&cx.server.store),
                    cx.server.local.service_cluster.as_str().into(),
                    Arc::clone(&cx.server.runtime),
                ))
            }
            Model::IstioStats(c) => Arc::new(super::istio_stats::IstioStatsFactory::new(
                f.name.clone(),
                c,
                cx.direction,
                cx.server,
                cx.clusters.clone(),
            )),
            Model::GrpcStats(c) => Arc::new(super::grpc_stats::GrpcStatsFactory::new(
                f.name.clone(),
                c.clone(),
                cx.server.store.clone(),
                cx.clusters.clone(),
            )),
            Model::Cors => Arc::new(super::cors::CorsFactory::new(
                &f.name,
                cx.stat_prefix,
                &cx.server.store,
                Arc::clone(&cx.server.runtime),
            )),
            Model::Rbac(r) => Arc::new(super::rbac::RbacFilterFactory::new(
                &f.name,
                r.clone(),
                &cx.server.store,
                cx.stat_prefix,
            )),
            Model::Compressor(c) => {
                match &mut compressors {
                    Some((_, _, all)) => all.push(c),
                    None => compressors = Some((out.len(), &f.name, vec![c])),
                }
                continue;
            }
        };
        out.push(ChainEntry {
            factory,
            disabled: f.disabled,
        });
    }
    if let Some((at, name, configs)) = compressors {
        let chain = super::compressor::CompressorChain::new(
            configs.into_iter(),
            &cx.server.store,
            cx.stat_prefix,
        );
        let disabled = filters.iter().any(|f| f.name == name && f.disabled);
        let factory = Arc::new(super::compressor::CompressorFactory::new(
            name.to_string(),
            chain,
        ));
        out.insert(at, ChainEntry { factory, disabled });
    }
    out
}

/// The stream's filters: each entry's, unless disabled for the route. The most specific
/// per-route entry's configuration is handed to `create`.
pub fn create(chain: &[ChainEntry], cx: &StreamCx<'_>) -> StreamFilters {
    if chain.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::with_capacity(chain.len());
    for e in chain {
        let per_route = cx.route.and_then(|r| r.per_filter(e.factory.name()));
        if !enabled(e, per_route) {
            continue;
        }
        let config = per_route.and_then(|p| p.config.as_ref());
        if let Some(f) = e.factory.create(config, cx) {
            out.push(f);
        }
    }
    out
}

/// Whether an entry runs on a stream: the route's most specific per-filter entry decides,
/// else the chain's `disabled`.
fn enabled(e: &ChainEntry, per_route: Option<&crate::model::per_filter::PerFilter>) -> bool {
    !per_route.map_or(e.disabled, |p| p.disabled)
}

/// The chain's completion observers (`HttpFilterFactory::observes_completion`), with their
/// places in the chain: `on_stream_complete` runs for those enabled on the stream's route,
/// as Envoy calls the access-log handlers of the filters its stream instantiated.
#[derive(Debug, Clone, Default)]
pub struct Completions {
    observers: Vec<(usize, Arc<dyn HttpFilterFactory>)>,
}

/// Which of the observers run on a stream: bit `i` for observer `i` (the first 64; more
/// observers than that on one chain run when the chain does not disable them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompletionSet(u64);

impl Completions {
    pub fn new(chain: &[ChainEntry]) -> Self {
        let observers = chain
            .iter()
            .enumerate()
            .filter(|(_, e)| e.factory.observes_completion())
            .map(|(i, e)| (i, e.factory.clone()))
            .collect();
        Self { observers }
    }

    pub fn is_empty(&self) -> bool {
        self.observers.is_empty()
    }

    pub fn factories(&self) -> impl Iterator<Item = &Arc<dyn HttpFilterFactory>> {
        self.observers.iter().map(|(_, f)| f)
    }

    /// The observers enabled for the stream's route (`None`: no route, or the stream ended
    /// before one was chosen: the chain's `disabled` decides).
    pub fn for_route(
        &self,
        chain: &[ChainEntry],
        route: Option<super::RouteCx<'_>>,
    ) -> CompletionSet {
        let mut set = 0u64;
        for (bit, (i, f)) in self.observers.iter().enumerate().take(64) {
            let per_route = route.and_then(|r| r.per_filter(f.name()));
            if enabled(&chain[*i], per_route) {
                set |= 1 << bit;
            }
        }
        CompletionSet(set)
    }

    /// Call `on_stream_complete` on the observers in `set`.
    pub fn complete(
        &self,
        chain: &[ChainEntry],
        set: CompletionSet,
        s: &super::CompletedStream<'_>,
    ) {
        for (bit, (i, f)) in self.observers.iter().enumerate() {
            let on = match bit {
                0..64 => set.0 & (1 << bit) != 0,
                _ => !chain[*i].disabled,
            };
            if on {
                f.on_stream_complete(s);
            }
        }
    }
}

/// The decoder side of the request headers, in chain order. `Err((i, reply))`: filter `i`
/// answered locally (filters `..i` are those whose encoder side runs on the reply).
/// `before_pause` runs before the stream waits on a filter (the connection manager keeps what
/// the access log needs, in case the stream ends there).
pub async fn decode_headers(
    filters: &mut [Box<dyn HttpFilter>],
    req: &mut http::request::Parts,
    end_stream: bool,
    cx: &mut StreamCx<'_>,
    before_pause: &mut (dyn FnMut(&http::request::Parts) + Send),
) -> Result<(), (usize, LocalReply)> {
    for (i, f) in filters.iter_mut().enumerate() {
        let mut flow = f.on_request_headers(req, end_stream, cx);
        loop {
            match flow {
                Flow::Continue => break,
                Flow::LocalReply(r) => return Err((i, r)),
                Flow::Pause(fut) => {
                    before_pause(req);
                    flow = fut.await;
                }
            }
        }
    }
    Ok(())
}

/// The request body through each filter, in chain order.
pub fn decode_body(filters: &mut [Box<dyn HttpFilter>], body: Body, cx: &mut StreamCx<'_>) -> Body {
    filters
        .iter_mut()
        .fold(body, |body, f| f.on_request_body(body, cx))
}

/// The encoder side of the response headers, in reverse chain order. `Some((i, reply))`:
/// filter `i` answered locally instead (the reply goes on through filters `..i`).
pub async fn encode_headers(
    filters: &mut [Box<dyn HttpFilter>],
    resp: &mut http::response::Parts,
    end_stream: bool,
    cx: &mut StreamCx<'_>,
) -> Option<(usize, LocalReply)> {
    for (i, f) in filters.iter_mut().enumerate().rev() {
        let mut flow = f.on_response_headers(resp, end_stream, cx);
        loop {
            match flow {
                Flow::Continue => break,
                Flow::LocalReply(r) => return Some((i, r)),
                Flow::Pause(fut) => flow = fut.await,
            }
        }
    }
    None
}

/// The response body through each filter, in reverse chain order.
pub fn encode_body(filters: &mut [Box<dyn HttpFilter>], body: Body, cx: &mut StreamCx<'_>) -> Body {
    filters
        .iter_mut()
        .rev()
        .fold(body, |body, f| f.on_response_body(body, cx))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FieldPath;
    use crate::filters::http::RouteCx;
    use crate::model::inputs::Inputs;
    use crate::model::per_filter::PerFilterConfig;
    use crate::model::route::{RouteConfig, RouteMatch, RouteRequest};
    use crate::stream_info::{ConnectionInfo, ResponseFlags, StreamInfo};
    use std::sync::Mutex;
    use std::time::Duration;

    type Log = Arc<Mutex<Vec<String>>>;

    #[derive(Clone, Copy, Debug)]
    enum Act {
        Continue,
        Reply,
        /// Pause this long, then continue.
        Delay(u64),
    }

    #[derive(Debug)]
    struct TestFactory {
        name: &'static str,
        act: Act,
        log: Log,
    }

    struct TestFilter {
        name: &'static str,
        act: Act,
        log: Log,
    }

    impl HttpFilterFactory for TestFactory {
        fn name(&self) -> &str {
            self.name
        }

        fn create(
            &self,
            per_route: Option<&PerFilterConfig>,
            cx: &StreamCx<'_>,
        ) -> Option<Box<dyn HttpFilter>> {
            assert!(per_route.is_none(), "no per-route config type exists yet");
            // What the route's most specific entry says, as the filter would read it.
            let seen = cx.route.and_then(|r| r.per_filter(self.name));
            self.log.lock().unwrap().push(format!(
                "create {} {:?}",
                self.name,
                seen.map(|p| p.disabled)
            ));
            Some(Box::new(TestFilter {
                name: self.name,
                act: self.act,
                log: self.log.clone(),
            }))
        }
    }

    impl HttpFilter for TestFilter {
        fn on_request_headers(
            &mut self,
            _req: &mut http::request::Parts,
            _end_stream: bool,
            cx: &mut StreamCx<'_>,
        ) -> Flow {
            self.log
                .lock()
                .unwrap()
                .push(format!("decode {}", self.name));
            cx.info.filter_state.set(self.name, "seen".into());
            match self.act {
                Act::Continue => Flow::Continue,
                Act::Reply => Flow::LocalReply(LocalReply {
                    status: http::StatusCode::FORBIDDEN,
                    body: "denied".into(),
                    details: "test_denied".into(),
                    flags: ResponseFlags::empty(),
                    headers: http::HeaderMap::new(),
                }),
                Act::Delay(ms) => {
                    let log = self.log.clone();
                    let name = self.name;
                    Flow::Pause(Box::pin(async move {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        log.lock().unwrap().push(format!("resume {name}"));
                        Flow::Continue
                    }))
                }
            }
        }

        fn on_response_headers(
            &mut self,
            _resp: &mut http::response::Parts,
            _end_stream: bool,
            _cx: &mut StreamCx<'_>,
        ) -> Flow {
            self.log
                .lock()
                .unwrap()
                .push(format!("encode {}", self.name));
            Flow::Continue
        }
    }

    fn entry(name: &'static str, act: Act, disabled: bool, log: &Log) -> ChainEntry {
        ChainEntry {
            factory: Arc::new(TestFactory {
                name,
                act,
                log: log.clone(),
            }),
            disabled,
        }
    }

    fn conn() -> Arc<ConnectionInfo> {
        Arc::new(ConnectionInfo {
            id: 1,
            local: "127.0.0.1:80".parse().unwrap(),
            remote: "127.0.0.1:5000".parse().unwrap(),
            requested_server_name: None,
            application_protocols: Vec::new(),
            transport_protocol: "raw_buffer",
            tls: None,
        })
    }

    fn request() -> http::request::Parts {
        http::Request::new(()).into_parts().0
    }

    fn response() -> http::response::Parts {
        http::Response::new(()).into_parts().0
    }

    fn log_of(log: &Log) -> Vec<String> {
        std::mem::take(&mut *log.lock().unwrap())
    }

    /// One stream through the chain as the connection manager runs it: decoder side, and the
    /// encoder side of the filters before a local reply (or all of them).
    async fn run(chain: &[ChainEntry], route: Option<RouteCx<'_>>) -> (StreamInfo, bool) {
        let conn = conn();
        let mut info = StreamInfo::new(conn.clone());
        let mut cx = StreamCx {
            connection: &conn,
            info: &mut info,
            route,
        };
        let mut filters = create(chain, &cx);
        let mut req = request();
        let decoded = decode_headers(&mut filters, &mut req, true, &mut cx, &mut |_| {}).await;
        let replied = decoded.is_err();
        if let Err((i, _)) = decoded {
            filters.truncate(i);
        }
        let mut resp = response();
        assert!(
            encode_headers(&mut filters, &mut resp, true, &mut cx)
                .await
                .is_none()
        );
        (info, replied)
    }

    #[tokio::test]
    async fn decoders_in_order_encoders_in_reverse_state_shared() {
        let log = Log::default();
        let chain = [
            entry("a", Act::Continue, false, &log),
            entry("b", Act::Continue, false, &log),
            entry("c", Act::Continue, false, &log),
        ];
        let (info, replied) = run(&chain, None).await;
        assert!(!replied);
        let got = log_of(&log);
        let got: Vec<&str> = got.iter().map(String::as_str).collect();
        assert_eq!(
            got,
            [
                "create a None",
                "create b None",
                "create c None",
                "decode a",
                "decode b",
                "decode c",
                "encode c",
                "encode b",
                "encode a"
            ]
        );
        // What one filter left in the stream's filter state, the others (and the log) see.
        assert_eq!(info.filter_state.get("b").as_deref(), Some("seen"));
    }

    #[tokio::test]
    async fn a_local_reply_from_the_second_decoder_runs_only_the_first_encoder() {
        let log = Log::default();
        let chain = [
            entry("a", Act::Continue, false, &log),
            entry("b", Act::Reply, false, &log),
            entry("c", Act::Continue, false, &log),
        ];
        let (_, replied) = run(&chain, None).await;
        assert!(replied);
        let got = log_of(&log);
        assert_eq!(&got[3..], ["decode a", "decode b", "encode a"]);
    }

    #[tokio::test]
    async fn an_empty_chain_allocates_no_filters() {
        let conn = conn();
        let mut info = StreamInfo::new(conn.clone());
        let cx = StreamCx {
            connection: &conn,
            info: &mut info,
            route: None,
        };
        let filters = create(&[], &cx);
        assert_eq!(filters.capacity(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_resumes_and_does_not_block_other_streams() {
        let log = Log::default();
        let slow: Arc<[ChainEntry]> = Arc::new([
            entry("slow", Act::Delay(10_000), false, &log),
            entry("after", Act::Continue, false, &log),
        ]);
        let fast: Arc<[ChainEntry]> = Arc::new([entry("fast", Act::Continue, false, &log)]);
        let started = tokio::time::Instant::now();
        let a = tokio::spawn({
            let (slow, log) = (slow.clone(), log.clone());
            async move {
                run(&slow, None).await;
                log.lock().unwrap().push("stream a done".into());
            }
        });
        let b = tokio::spawn({
            let (fast, log) = (fast.clone(), log.clone());
            async move {
                run(&fast, None).await;
                log.lock().unwrap().push("stream b done".into());
            }
        });
        b.await.unwrap();
        assert!(log.lock().unwrap().contains(&"stream b done".to_string()));
        assert!(!log.lock().unwrap().contains(&"stream a done".to_string()));
        a.await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(10_000));
        let got = log_of(&log);
        let pos = |s: &str| got.iter().position(|l| l == s).unwrap();
        assert!(pos("stream b done") < pos("resume slow"));
        assert!(pos("resume slow") < pos("decode after"));
        assert!(pos("decode after") < pos("stream a done"));
    }

    fn route_config() -> RouteConfig {
        let fc = "type.googleapis.com/envoy.config.route.v3.FilterConfig";
        let yaml = format!(
            r#"
typed_per_filter_config:
  off_everywhere: {{"@type": {fc}, disabled: true}}
  on_for_route: {{"@type": {fc}, disabled: true}}
virtual_hosts:
- name: a
  domains: ["*"]
  typed_per_filter_config:
    off_on_vhost: {{"@type": {fc}, disabled: true}}
    on_for_route: {{"@type": {fc}, disabled: true}}
  routes:
  - match: {{prefix: /}}
    direct_response: {{status: 200}}
    typed_per_filter_config:
      on_for_route: {{"@type": {fc}, disabled: false}}
      chain_disabled: {{"@type": {fc}}}
"#
        );
        let path = FieldPath::new("route_config");
        let proto =
            crate::config::decode_yaml("envoy.config.route.v3.RouteConfiguration", &yaml, &path);
        RouteConfig::from_proto(&path, &proto, 4096, &Inputs::none()).unwrap()
    }

    /// The route a `GET /` for host `x` takes in `rc`.
    fn routed(rc: &RouteConfig) -> RouteCx<'_> {
        let headers = http::HeaderMap::new();
        let rr = RouteRequest {
            headers: crate::model::matcher::RequestHeaders {
                method: &http::Method::GET,
                path_and_query: "/",
                authority: "x",
                scheme: "http",
                headers: &headers,
            },
            host: "x",
            is_tls: false,
            is_internal: false,
        };
        let RouteMatch::Route { vhost, route, .. } = rc.route(&rr) else {
            panic!("routed");
        };
        RouteCx {
            route_config: rc,
            vhost,
            route,
            weighted: None,
        }
    }

    #[tokio::test]
    async fn per_route_disabled_and_enabled_most_specific_wins() {
        let rc = route_config();
        let cx = routed(&rc);
        let log = Log::default();
        let chain = [
            entry("plain", Act::Continue, false, &log),
            entry("off_everywhere", Act::Continue, false, &log),
            entry("off_on_vhost", Act::Continue, false, &log),
            entry("on_for_route", Act::Continue, false, &log),
            entry("chain_disabled", Act::Continue, true, &log),
            entry("chain_disabled_no_entry", Act::Continue, true, &log),
        ];
        run(&chain, Some(cx)).await;
        let got = log_of(&log);
        let created: Vec<&str> = got
            .iter()
            .filter(|l| l.starts_with("create"))
            .map(String::as_str)
            .collect();
        // The route's entry (disabled: false) wins over the virtual host's and the route
        // configuration's; a bare FilterConfig on the route enables a filter the chain
        // disables.
        assert_eq!(
            created,
            [
                "create plain None",
                "create on_for_route Some(false)",
                "create chain_disabled Some(false)",
            ]
        );
        // Without a route, a filter disabled in the chain does not run.
        run(&chain, None).await;
        let got = log_of(&log);
        assert!(!got.iter().any(|l| l.starts_with("create chain_disabled")));
    }

    /// Observes completion only (as istio.stats: no per-stream instance).
    #[derive(Debug)]
    struct Observer {
        name: &'static str,
        log: Log,
    }

    impl HttpFilterFactory for Observer {
        fn name(&self) -> &str {
            self.name
        }

        fn create(
            &self,
            _: Option<&PerFilterConfig>,
            _: &StreamCx<'_>,
        ) -> Option<Box<dyn HttpFilter>> {
            None
        }

        fn on_stream_complete(&self, _s: &crate::filters::http::CompletedStream<'_>) {
            self.log
                .lock()
                .unwrap()
                .push(format!("complete {}", self.name));
        }

        fn observes_completion(&self) -> bool {
            true
        }
    }

    #[tokio::test]
    async fn completion_observers_run_only_where_the_route_enables_them() {
        let rc = route_config();
        let cx = routed(&rc);
        let log = Log::default();
        let observer = |name: &'static str, disabled: bool| ChainEntry {
            factory: Arc::new(Observer {
                name,
                log: log.clone(),
            }),
            disabled,
        };
        let chain = [
            entry("plain", Act::Continue, false, &log),
            observer("off_everywhere", false),
            observer("on_for_route", false),
            observer("chain_disabled", true),
            observer("chain_disabled_no_entry", true),
            observer("observer_plain", false),
        ];
        let completions = Completions::new(&chain);
        let conn = conn();
        let info = StreamInfo::new(conn);
        let done = crate::filters::http::CompletedStream {
            info: &info,
            request: None,
            response_headers: None,
        };
        let routed = completions.for_route(&chain, Some(cx));
        completions.complete(&chain, routed, &done);
        assert_eq!(
            log_of(&log),
            [
                "complete on_for_route",
                "complete chain_disabled",
                "complete observer_plain"
            ]
        );
        // A stream without a route: the chain's `disabled` decides.
        let none = completions.for_route(&chain, None);
        completions.complete(&chain, none, &done);
        assert_eq!(
            log_of(&log),
            [
                "complete off_everywhere",
                "complete on_for_route",
                "complete observer_plain"
            ]
        );
    }
}
