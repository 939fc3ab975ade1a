//! `envoy.filters.http.local_ratelimit` (Envoy's
//! `source/extensions/filters/http/local_ratelimit/local_ratelimit.cc`): a request takes a token
//! from the configuration's buckets (the route's own `LocalRateLimit` if it has one); without
//! one it is answered `429 local_rate_limited` (flag `RL`) when enforced, or passes with
//! `request_headers_to_add_when_not_enforced` when not. Descriptors come from the route's and
//! virtual host's `rate_limits` of the filter's `stage`. Stats:
//! `<stat_prefix>.http_local_rate_limit.{enabled,enforced,rate_limited,ok,shadow_mode}`.

use crate::runtime::RuntimeLoader;
use std::any::Any;
use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderName, HeaderValue};

use super::{Flow, HttpFilter, HttpFilterFactory, LocalReply, RouteCx, StreamCx};
use crate::filters::common::local_ratelimit::{Decision, Entry, LocalRateLimiter, TokenBucket};
use crate::model::local_ratelimit::{
    LocalRateLimit, RateLimitAction, RateLimitPolicy, VhRateLimits,
};
use crate::model::matcher::RequestHeaders;
use crate::model::per_filter::PerFilterConfig;
use crate::model::route::{ClusterTarget, RouteAction};
use crate::stream_info::ResponseFlags;
use crate::telemetry::format::{FormatContext, RequestView};
use crate::telemetry::stats::{Counter, Store};

/// `local_rate_limited`: the body and the response code details of the local reply.
pub const RATE_LIMITED: &str = "local_rate_limited";

static X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// One configuration's buckets and stats (the filter's, or a route's).
#[derive(Debug)]
struct State {
    limiter: LocalRateLimiter,
    enabled: Arc<Counter>,
    enforced: Arc<Counter>,
    rate_limited: Arc<Counter>,
    ok: Arc<Counter>,
    /// Envoy's `shadow_mode` counter (descriptors in shadow mode are refused, so it stays 0).
    _shadow_mode: Arc<Counter>,
}

impl State {
    fn of(config: &LocalRateLimit, store: &Store) -> Arc<State> {
        let slot = config.state.get_or_init(|| {
            let stat = |s: &str| {
                store.counter(&format!("{}.http_local_rate_limit.{s}", config.stat_prefix))
            };
            Arc::new(State {
                limiter: LocalRateLimiter::new(
                    config.token_bucket.as_ref(),
                    &config.descriptors,
                    config.always_consume_default_token_bucket,
                ),
                enabled: stat("enabled"),
                enforced: stat("enforced"),
                rate_limited: stat("rate_limited"),
                ok: stat("ok"),
                _shadow_mode: stat("shadow_mode"),
            }) as Arc<dyn Any + Send + Sync>
        });
        Arc::clone(slot)
            .downcast::<State>()
            .expect("a local rate limit slot holds its State")
    }
}

/// The filter in a listener's chain.
#[derive(Debug)]
pub struct LocalRateLimitFactory {
    name: String,
    config: Arc<LocalRateLimit>,
    state: Arc<State>,
    store: Arc<Store>,
    /// The node's cluster (`source_cluster` descriptors).
    local_cluster: Arc<str>,
    /// `filter_enabled` / `filter_enforced` runtime keys are read from its snapshot.
    runtime: Arc<RuntimeLoader>,
}

impl LocalRateLimitFactory {
    /// Creates the configuration's bucket and stats (kept by the configuration, so that every
    /// factory built from it shares them).
    pub fn new(
        name: &str,
        config: Arc<LocalRateLimit>,
        store: Arc<Store>,
        local_cluster: Arc<str>,
        runtime: Arc<RuntimeLoader>,
    ) -> Self {
        let state = State::of(&config, &store);
        Self {
            name: name.to_string(),
            config,
            state,
            store,
            local_cluster,
            runtime,
        }
    }
}

impl HttpFilterFactory for LocalRateLimitFactory {
    fn name(&self) -> &str {
        &self.name
    }

    fn create(
        &self,
        per_route: Option<&PerFilterConfig>,
        _cx: &StreamCx<'_>,
    ) -> Option<Box<dyn HttpFilter>> {
        let (config, state) = match per_route {
            Some(PerFilterConfig::LocalRateLimit(c)) => (Arc::clone(c), State::of(c, &self.store)),
            _ => (Arc::clone(&self.config), Arc::clone(&self.state)),
        };
        Some(Box::new(LocalRateLimitFilter {
            config,
            state,
            local_cluster: Arc::clone(&self.local_cluster),
            runtime: Arc::clone(&self.runtime),
            bucket: None,
            replied: false,
        }))
    }
}

struct LocalRateLimitFilter {
    config: Arc<LocalRateLimit>,
    state: Arc<State>,
    local_cluster: Arc<str>,
    runtime: Arc<RuntimeLoader>,
    /// The bucket the `x-ratelimit-*` headers report (set by the request's decision).
    bucket: Option<Arc<TokenBucket>>,
    /// This filter answered the request (its reply carries the headers already).
    replied: bool,
}

impl HttpFilter for LocalRateLimitFilter {
    fn on_request_headers(
        &mut self,
        req: &mut http::request::Parts,
        _end_stream: bool,
        cx: &mut StreamCx<'_>,
    ) -> Flow {
        let c = &*self.config;
        let snapshot = || self.runtime.snapshot();
        if !c
            .filter_enabled
            .as_ref()
            .is_some_and(|f| f.sample(snapshot))
        {
            return Flow::Continue;
        }
        self.state.enabled.inc();
        let limiter = &self.state.limiter;
        let mut matched = if limiter.has_descriptors() {
            self.matched_buckets(limiter, req, cx)
        } else {
            Vec::new()
        };
        let Decision { allowed, bucket } = limiter.request_allowed(&mut matched);
        self.bucket = bucket;
        if allowed {
            self.state.ok.inc();
            return Flow::Continue;
        }
        self.state.rate_limited.inc();
        if !c
            .filter_enforced
            .as_ref()
            .is_some_and(|f| f.sample(snapshot))
        {
            let ctx = FormatContext {
                info: Some(cx.info),
                ..Default::default()
            };
            c.request_headers_when_not_enforced.apply_request(req, &ctx);
            return Flow::Continue;
        }
        self.state.enforced.inc();
        let mut headers = http::HeaderMap::new();
        let ctx = FormatContext {
            info: Some(cx.info),
            request: Some(RequestView {
                method: &req.method,
                uri: &req.uri,
                headers: &req.headers,
            }),
            ..Default::default()
        };
        c.response_headers.apply_response(&mut headers, &ctx);
        self.add_x_ratelimit(&mut headers);
        if c.enable_retry_after_header
            && c.status == http::StatusCode::TOO_MANY_REQUESTS
            && !headers.contains_key(http::header::RETRY_AFTER)
        {
            let secs = self.bucket.as_ref().map_or(1, |b| b.retry_after_seconds());
            headers.insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
        self.replied = true;
        Flow::LocalReply(LocalReply {
            status: c.status,
            body: RATE_LIMITED.into(),
            details: RATE_LIMITED.into(),
            flags: ResponseFlags::RATE_LIMITED,
            headers,
        })
    }

    fn on_response_headers(
        &mut self,
        resp: &mut http::response::Parts,
        _end_stream: bool,
        _cx: &mut StreamCx<'_>,
    ) -> Flow {
        if !self.replied {
            self.add_x_ratelimit(&mut resp.headers);
        }
        Flow::Continue
    }
}

impl LocalRateLimitFilter {
    /// `x-ratelimit-limit/remaining/reset` of the deciding bucket, when enabled (appended, as
    /// Envoy's `addReferenceKey`).
    fn add_x_ratelimit(&self, headers: &mut http::HeaderMap) {
        let Some(b) = self
            .bucket
            .as_ref()
            .filter(|_| self.config.x_ratelimit_headers)
        else {
            return;
        };
        headers.append(&X_RATELIMIT_LIMIT, HeaderValue::from(b.max_tokens()));
        headers.append(
            &X_RATELIMIT_REMAINING,
            HeaderValue::from(b.remaining_tokens()),
        );
        headers.append(&X_RATELIMIT_RESET, HeaderValue::from(b.reset_seconds()));
    }

    /// The configured buckets of the request's descriptors, built from the route's and the
    /// virtual host's `rate_limits` (Envoy's `Filter::populateDescriptors`). Each descriptor is
    /// built in one buffer of borrowed entries and looked up at once: nothing is kept of a
    /// descriptor no bucket is configured for.
    fn matched_buckets<'l>(
        &self,
        limiter: &'l LocalRateLimiter,
        req: &http::request::Parts,
        cx: &StreamCx<'_>,
    ) -> Vec<&'l Arc<TokenBucket>> {
        let mut matched = Vec::new();
        let Some(route) = cx.route else {
            return matched;
        };
        let RouteAction::Forward(fa) = &route.route.action else {
            return matched;
        };
        let vh = if fa.include_vh_rate_limits {
            VhRateLimits::Include
        } else {
            self.config.vh_rate_limits
        };
        let vh_policies: &[RateLimitPolicy] = match vh {
            VhRateLimits::Include => &route.vhost.rate_limits,
            VhRateLimits::Override if fa.rate_limits.is_empty() => &route.vhost.rate_limits,
            VhRateLimits::Ignore | VhRateLimits::Override => &[],
        };
        let src = Source {
            req,
            headers: request_headers(req),
            cx,
            route,
            local_cluster: &self.local_cluster,
        };
        let mut entries: Vec<Entry<'_>> = Vec::new();
        for p in fa.rate_limits.iter().chain(vh_policies) {
            if p.stage != self.config.stage || p.has_disable_key {
                continue;
            }
            entries.clear();
            if src.descriptor(p, &mut entries)
                && let Some(b) = limiter.bucket_of(&entries)
            {
                matched.push(b);
            }
        }
        matched
    }
}

/// What descriptor actions read.
struct Source<'a, 'b> {
    req: &'a http::request::Parts,
    /// The request's headers as matchers read them.
    headers: RequestHeaders<'a>,
    cx: &'a StreamCx<'b>,
    route: RouteCx<'b>,
    local_cluster: &'a str,
}

impl Source<'_, '_> {
    /// One entry of `rate_limits` into `d`: every action must produce its entry (or be
    /// skipped with `skip_if_absent`), else there is no descriptor (`false`); an empty one is
    /// none.
    fn descriptor<'s>(&'s self, p: &'s RateLimitPolicy, d: &mut Vec<Entry<'s>>) -> bool {
        for a in &p.actions {
            if !self.entry(a, d) {
                return false;
            }
        }
        !d.is_empty()
    }

    fn entry<'s>(&'s self, a: &'s RateLimitAction, d: &mut Vec<Entry<'s>>) -> bool {
        let (k, v): (&str, Cow<'s, str>) = match a {
            RateLimitAction::SourceCluster => ("source_cluster", Cow::Borrowed(self.local_cluster)),
            RateLimitAction::DestinationCluster => match self.destination_cluster() {
                Some(c) => ("destination_cluster", Cow::Borrowed(c)),
                None => return false,
            },
            RateLimitAction::RequestHeader {
                header,
                key,
                skip_if_absent,
            } => match self.headers.get(header) {
                Some(v) if !v.is_empty() => (key, v),
                _ => return *skip_if_absent,
            },
            RateLimitAction::RemoteAddress => (
                "remote_address",
                Cow::Owned(self.cx.info.downstream_remote.ip().to_string()),
            ),
            RateLimitAction::MaskedRemoteAddress { v4, v6 } => (
                "masked_remote_address",
                Cow::Owned(masked(self.cx.info.downstream_remote.ip(), *v4, *v6)),
            ),
            RateLimitAction::GenericKey { key, value } => (key, Cow::Borrowed(value)),
            RateLimitAction::HeaderValueMatch {
                key,
                value,
                default_value,
                expect_match,
                headers,
            } => {
                if headers.iter().all(|m| m.matches(&self.headers)) == *expect_match {
                    (key, Cow::Borrowed(value))
                } else if let Some(dv) = default_value {
                    (key, Cow::Borrowed(dv))
                } else {
                    return false;
                }
            }
        };
        d.push((k, v));
        true
    }

    /// The route's cluster: the weighted cluster chosen, or the one a header names.
    fn destination_cluster(&self) -> Option<&str> {
        if let Some(w) = self.route.weighted {
            return Some(&w.name);
        }
        let RouteAction::Forward(fa) = &self.route.route.action else {
            return None;
        };
        match &fa.cluster {
            ClusterTarget::Name(n) => Some(n),
            ClusterTarget::Header(h) => self
                .req
                .headers
                .get(h)
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty()),
            ClusterTarget::Weighted(_) => None,
        }
    }
}

/// The request's headers as matchers read them (`:authority` from the URI, else `Host`).
fn request_headers(r: &http::request::Parts) -> RequestHeaders<'_> {
    RequestHeaders {
        method: &r.method,
        path_and_query: r.uri.path_and_query().map_or("/", |p| p.as_str()),
        authority: r.uri.authority().map(|a| a.as_str()).unwrap_or_else(|| {
            r.headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("")
        }),
        scheme: r.uri.scheme_str().unwrap_or("http"),
        headers: &r.headers,
    }
}

/// Envoy's `CidrRange::create(address, len).asString()`: the network address and its length.
fn masked(ip: IpAddr, v4: u8, v6: u8) -> String {
    match ip {
        IpAddr::V4(a) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(v4)).unwrap_or(0);
            let net = std::net::Ipv4Addr::from(u32::from(a) & mask);
            format!("{net}/{v4}")
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(v6)).unwrap_or(0);
            let net = std::net::Ipv6Addr::from(u128::from(a) & mask);
            format!("{net}/{v6}")
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::FieldPath;
    use crate::model::inputs::Inputs;
    use crate::model::pb;
    use crate::model::route::RouteConfig;
    use crate::stream_info::{ConnectionInfo, StreamInfo};
    use std::time::Duration;

    /// A route table from YAML (`RouteConfiguration`), for filter tests.
    pub(crate) fn route_config(yaml: &str) -> RouteConfig {
        let path = FieldPath::new("rc");
        let rc: pb::route::RouteConfiguration =
            crate::config::decode_yaml("envoy.config.route.v3.RouteConfiguration", yaml, &path);
        RouteConfig::from_proto(&path, &rc, 4096, &Inputs::none()).unwrap()
    }

    pub(crate) fn connection() -> Arc<ConnectionInfo> {
        Arc::new(ConnectionInfo {
            id: 1,
            local: "127.0.0.1:10000".parse().unwrap(),
            remote: "10.1.2.3:5555".parse().unwrap(),
            requested_server_name: None,
            application_protocols: vec![],
            transport_protocol: "raw_buffer",
            tls: None,
        })
    }

    pub(crate) fn request(
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
    ) -> http::request::Parts {
        let mut b = http::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    /// Run a factory's filter on one request on the first route of the first virtual host;
    /// returns the request-side outcome and, when it continued, the response headers after the
    /// filter's response side.
    pub(crate) fn run(
        f: &dyn HttpFilterFactory,
        rc: &RouteConfig,
        req: &mut http::request::Parts,
    ) -> (Flow, http::HeaderMap, StreamInfo) {
        let conn = connection();
        let mut info = StreamInfo::new(Arc::clone(&conn));
        let vhost = &rc.virtual_hosts[0];
        let route_cx = RouteCx {
            route_config: rc,
            vhost,
            route: &vhost.routes[0],
            weighted: None,
        };
        let per_route = route_cx.per_filter(f.name()).and_then(|p| p.config.clone());
        let mut cx = StreamCx {
            connection: &conn,
            info: &mut info,
            route: Some(route_cx),
        };
        let mut filter = f.create(per_route.as_ref(), &cx).expect("a filter");
        let flow = filter.on_request_headers(req, true, &mut cx);
        let mut resp = http::Response::new(()).into_parts().0;
        if matches!(flow, Flow::Continue) {
            filter.on_response_headers(&mut resp, true, &mut cx);
        }
        (flow, resp.headers, info)
    }

    fn filter(yaml: &str, store: &Arc<Store>) -> LocalRateLimitFactory {
        let path = FieldPath::new("f");
        let c: pb::local_ratelimit::LocalRateLimit =
            crate::config::decode_yaml(crate::model::local_ratelimit::HTTP_TYPE, yaml, &path);
        let c = LocalRateLimit::from_proto(&path, &c, false, &Inputs::none()).unwrap();
        LocalRateLimitFactory::new(
            "lrl",
            Arc::new(c),
            Arc::clone(store),
            "node-cluster".into(),
            RuntimeLoader::for_tests(Default::default()),
        )
    }

    const ROUTES: &str = "virtual_hosts: [{name: vh, domains: ['*'], routes: [{match: {prefix: /}, route: {cluster: backend}}]}]";

    #[tokio::test(start_paused = true)]
    async fn the_example_limits_to_two_requests_per_five_seconds() {
        let store = Arc::new(Store::default());
        let f = filter(
            "stat_prefix: http_local_rate_limiter
token_bucket: {max_tokens: 2, tokens_per_fill: 2, fill_interval: 5s}
filter_enabled: {runtime_key: e, default_value: {numerator: 100, denominator: HUNDRED}}
filter_enforced: {runtime_key: f, default_value: {numerator: 100, denominator: HUNDRED}}
response_headers_to_add: [{append_action: OVERWRITE_IF_EXISTS_OR_ADD, header: {key: x-local-rate-limit, value: 'true'}}]",
            &store,
        );
        let rc = route_config(ROUTES);
        for _ in 0..2 {
            let (flow, headers, _) = run(&f, &rc, &mut request("GET", "/", &[]));
            assert!(matches!(flow, Flow::Continue));
            assert!(headers.get("x-ratelimit-limit").is_none());
        }
        let (flow, _, _) = run(&f, &rc, &mut request("GET", "/", &[]));
        let Flow::LocalReply(r) = flow else {
            panic!("limited: {flow:?}")
        };
        assert_eq!(r.status, 429);
        assert_eq!(r.body, "local_rate_limited");
        assert_eq!(r.details, "local_rate_limited");
        assert_eq!(r.flags, ResponseFlags::RATE_LIMITED);
        assert_eq!(r.headers["x-local-rate-limit"], "true");
        let c = |s: &str| {
            store
                .counter(&format!(
                    "http_local_rate_limiter.http_local_rate_limit.{s}"
                ))
                .value()
        };
        assert_eq!(
            (c("enabled"), c("ok"), c("rate_limited"), c("enforced")),
            (3, 2, 1, 1)
        );
        tokio::time::advance(Duration::from_millis(2500)).await;
        assert!(matches!(
            run(&f, &rc, &mut request("GET", "/", &[])).0,
            Flow::Continue
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn not_enforced_adds_request_headers_and_x_ratelimit_headers_report_the_bucket() {
        let store = Arc::new(Store::default());
        let f = filter(
            "stat_prefix: s
token_bucket: {max_tokens: 1, tokens_per_fill: 1, fill_interval: 10s}
filter_enabled: {default_value: {numerator: 100}}
request_headers_to_add_when_not_enforced: [{header: {key: x-limited, value: 'yes'}}]
enable_x_ratelimit_headers: DRAFT_VERSION_03",
            &store,
        );
        let rc = route_config(ROUTES);
        let (flow, headers, _) = run(&f, &rc, &mut request("GET", "/", &[]));
        assert!(matches!(flow, Flow::Continue));
        assert_eq!(headers["x-ratelimit-limit"], "1");
        assert_eq!(headers["x-ratelimit-remaining"], "0");
        assert_eq!(headers["x-ratelimit-reset"], "10");
        let mut req = request("GET", "/", &[]);
        let (flow, _, _) = run(&f, &rc, &mut req);
        assert!(matches!(flow, Flow::Continue));
        assert_eq!(req.headers["x-limited"], "yes");
        assert_eq!(store.counter("s.http_local_rate_limit.enforced").value(), 0);
        assert_eq!(
            store
                .counter("s.http_local_rate_limit.rate_limited")
                .value(),
            1
        );
    }

    #[tokio::test(start_paused = true)]
    async fn disabled_by_default_and_per_route_configs_have_their_own_bucket() {
        let store = Arc::new(Store::default());
        let f = filter("stat_prefix: off", &store);
        let rc = route_config(
            "virtual_hosts: [{name: vh, domains: ['*'], routes: [{match: {prefix: /}, route: {cluster: backend},
  typed_per_filter_config: {lrl: {'@type': type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit,
    stat_prefix: route, token_bucket: {max_tokens: 1, fill_interval: 60s},
    filter_enabled: {default_value: {numerator: 100}}, filter_enforced: {default_value: {numerator: 100}},
    status: {code: ServiceUnavailable}}}}]}]",
        );
        assert!(matches!(
            run(&f, &rc, &mut request("GET", "/", &[])).0,
            Flow::Continue
        ));
        let (flow, _, _) = run(&f, &rc, &mut request("GET", "/", &[]));
        let Flow::LocalReply(r) = flow else {
            panic!("limited: {flow:?}")
        };
        assert_eq!(r.status, 503);
        assert_eq!(
            store
                .counter("route.http_local_rate_limit.rate_limited")
                .value(),
            1
        );
        assert_eq!(
            store.counter("off.http_local_rate_limit.enabled").value(),
            0
        );
        // The filter's own configuration (disabled) still applies elsewhere.
        let plain = route_config(ROUTES);
        assert!(matches!(
            run(&f, &plain, &mut request("GET", "/", &[])).0,
            Flow::Continue
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn route_and_virtual_host_actions_pick_the_descriptor() {
        let store = Arc::new(Store::default());
        let f = filter(
            "stat_prefix: d
token_bucket: {max_tokens: 100, fill_interval: 1s}
filter_enabled: {default_value: {numerator: 100}}
filter_enforced: {default_value: {numerator: 100}}
enable_x_ratelimit_headers: DRAFT_VERSION_03
vh_rate_limits: INCLUDE
descriptors:
- entries: [{key: client, value: bad}, {key: destination_cluster, value: backend}]
  token_bucket: {max_tokens: 1, fill_interval: 60s}
- entries: [{key: remote_address, value: 10.1.2.3}]
  token_bucket: {max_tokens: 2, fill_interval: 60s}
- entries: [{key: masked_remote_address, value: 10.1.0.0/16}]
  token_bucket: {max_tokens: 50, fill_interval: 60s}",
            &store,
        );
        let rc = route_config(
            "virtual_hosts: [{name: vh, domains: ['*'],
  rate_limits: [{actions: [{masked_remote_address: {v4_prefix_mask_len: 16}}]}],
  routes: [{match: {prefix: /}, route: {cluster: backend, rate_limits: [
    {actions: [{request_headers: {header_name: x-client, descriptor_key: client}}, {destination_cluster: {}}]},
    {actions: [{remote_address: {}}]},
    {actions: [{generic_key: {descriptor_value: x}}], disable_key: off},
    {stage: 1, actions: [{generic_key: {descriptor_value: y}}]}]}}]}]",
        );
        let bad = || request("GET", "/", &[("x-client", "bad")]);
        let (flow, headers, _) = run(&f, &rc, &mut bad());
        assert!(matches!(flow, Flow::Continue));
        // The slowest matched descriptor is reported.
        assert_eq!(headers["x-ratelimit-limit"], "1");
        let (flow, _, _) = run(&f, &rc, &mut bad());
        assert!(matches!(flow, Flow::LocalReply(_)), "{flow:?}");
        // Without the header, the remote address descriptor (2 tokens, 1 taken) limits.
        let (flow, headers, _) = run(&f, &rc, &mut request("GET", "/", &[]));
        assert!(matches!(flow, Flow::Continue));
        assert_eq!(headers["x-ratelimit-limit"], "2");
        assert_eq!(headers["x-ratelimit-remaining"], "0");
        let (flow, _, _) = run(&f, &rc, &mut request("GET", "/", &[]));
        let Flow::LocalReply(r) = flow else {
            panic!("limited: {flow:?}")
        };
        assert_eq!(r.headers["x-ratelimit-limit"], "2");
        assert_eq!(r.headers["x-ratelimit-reset"], "60");
    }

    #[test]
    fn masks_give_the_network_address() {
        assert_eq!(masked("10.1.2.3".parse().unwrap(), 16, 128), "10.1.0.0/16");
        assert_eq!(masked("10.1.2.3".parse().unwrap(), 0, 128), "0.0.0.0/0");
        assert_eq!(
            masked("2001:db8::1".parse().unwrap(), 32, 64),
            "2001:db8::/64"
        );
    }
}
