//! `envoy.filters.http.cors` (Envoy's `source/extensions/filters/http/cors/cors_filter.cc`):
//! with a request's `Origin`, the route's CORS policies decide. A preflight (`OPTIONS` with
//! `Access-Control-Request-Method`) is answered here with `200` and the allow headers
//! (details `cors_response`), unless its origin is not allowed and
//! `forward_not_matching_preflights` (the default) sends it on; a response to an allowed origin
//! gets `access-control-allow-origin`, `-allow-credentials` and `-expose-headers`.
//! Stats: `http.<stat_prefix>.cors.{origin_valid,origin_invalid}`.
//!
//! The policies are every level's per-filter `CorsPolicy` for this filter's name, most specific
//! first (weighted cluster, route, virtual host, route configuration); without any, the route's
//! and then the virtual host's deprecated `cors`. A field is taken from the first policy that
//! sets it; `filter_enabled` and `shadow_enabled` from the first policy only.

use crate::runtime::RuntimeLoader;
use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Method, header};

use super::{Flow, HttpFilter, HttpFilterFactory, LocalReply, StreamCx};
use crate::model::cors::CorsPolicy;
use crate::model::per_filter::{PerFilterConfig, PerFilterConfigs};
use crate::model::route::RouteAction;
use crate::stream_info::ResponseFlags;
use crate::telemetry::stats::{Counter, Store};

/// `%RESPONSE_CODE_DETAILS%` of an answered preflight.
pub const CORS_RESPONSE: &str = "cors_response";

static REQUEST_PRIVATE_NETWORK: header::HeaderName =
    header::HeaderName::from_static("access-control-request-private-network");
static ALLOW_PRIVATE_NETWORK: header::HeaderName =
    header::HeaderName::from_static("access-control-allow-private-network");

/// The filter in a connection manager's chain.
#[derive(Debug)]
pub struct CorsFactory {
    name: String,
    /// `filter_enabled` / `shadow_enabled` runtime keys are read from its snapshot.
    runtime: Arc<RuntimeLoader>,
    origin_valid: Arc<Counter>,
    origin_invalid: Arc<Counter>,
}

impl CorsFactory {
    /// `hcm_stat_prefix`: the connection manager's `stat_prefix`.
    pub fn new(
        name: &str,
        hcm_stat_prefix: &str,
        store: &Store,
        runtime: Arc<RuntimeLoader>,
    ) -> Self {
        let stat = |s: &str| store.counter(&format!("http.{hcm_stat_prefix}.cors.{s}"));
        Self {
            name: name.to_string(),
            runtime,
            origin_valid: stat("origin_valid"),
            origin_invalid: stat("origin_invalid"),
        }
    }
}

impl HttpFilterFactory for CorsFactory {
    fn name(&self) -> &str {
        &self.name
    }

    fn create(
        &self,
        _per_route: Option<&PerFilterConfig>,
        cx: &StreamCx<'_>,
    ) -> Option<Box<dyn HttpFilter>> {
        // Envoy's CORS acts on routes with a route entry: not on direct responses or redirects.
        let route = cx.route?;
        let RouteAction::Forward(fa) = &route.route.action else {
            return None;
        };
        let levels: [Option<&PerFilterConfigs>; 4] = [
            route.weighted.map(|w| &w.per_filter),
            Some(&route.route.per_filter),
            Some(&route.vhost.per_filter),
            Some(&route.route_config.per_filter),
        ];
        let mut policies: Vec<Arc<CorsPolicy>> = levels
            .into_iter()
            .flatten()
            .filter_map(|l| match l.get(&self.name)?.config.as_ref()? {
                PerFilterConfig::Cors(p) => Some(Arc::clone(p)),
                _ => None,
            })
            .collect();
        if policies.is_empty() {
            policies.extend(fa.cors.iter().chain(&route.vhost.cors).cloned());
        }
        if policies.is_empty() {
            return None;
        }
        Some(Box::new(CorsFilter {
            policies,
            runtime: Arc::clone(&self.runtime),
            origin_valid: Arc::clone(&self.origin_valid),
            origin_invalid: Arc::clone(&self.origin_invalid),
            latched_origin: None,
            is_cors_request: false,
        }))
    }
}

struct CorsFilter {
    policies: Vec<Arc<CorsPolicy>>,
    runtime: Arc<RuntimeLoader>,
    origin_valid: Arc<Counter>,
    origin_invalid: Arc<Counter>,
    /// The request's allowed origin, echoed on the response.
    latched_origin: Option<HeaderValue>,
    is_cors_request: bool,
}

impl CorsFilter {
    /// The first policy's value of a field that is set.
    fn first<'a, T>(&'a self, f: impl Fn(&'a CorsPolicy) -> Option<T>) -> Option<T> {
        self.policies.iter().find_map(|p| f(p))
    }

    fn text(&self, f: impl Fn(&CorsPolicy) -> &str) -> &str {
        self.first(|p| Some(f(p)).filter(|s| !s.is_empty()))
            .unwrap_or("")
    }

    fn origin_allowed(&self, origin: &str) -> bool {
        let origins = self.first(|p| (!p.allow_origins.is_empty()).then_some(&p.allow_origins));
        origins
            .into_iter()
            .flatten()
            .any(|m| m.matches("*") || m.matches(origin))
    }

    fn allow_credentials(&self) -> bool {
        self.first(|p| p.allow_credentials).unwrap_or(false)
    }

    /// The preflight's answer.
    fn preflight(&self, origin: &HeaderValue, allowed: bool, req: &HeaderMap) -> LocalReply {
        let mut h = HeaderMap::new();
        if allowed {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        }
        if self.allow_credentials() {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        let mut set =
            |name: header::HeaderName, configured: &str, requested: Option<&HeaderValue>| {
                // `*` echoes the request's header (empty without one, as Envoy's).
                let value = if configured == "*" {
                    Some(requested.cloned().unwrap_or(HeaderValue::from_static("")))
                } else {
                    HeaderValue::from_str(configured).ok()
                };
                if let Some(v) = value.filter(|_| !configured.is_empty()) {
                    h.insert(name, v);
                }
            };
        set(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            self.text(|p| &p.allow_methods),
            req.get(header::ACCESS_CONTROL_REQUEST_METHOD),
        );
        set(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            self.text(|p| &p.allow_headers),
            req.get(header::ACCESS_CONTROL_REQUEST_HEADERS),
        );
        set(
            header::ACCESS_CONTROL_MAX_AGE,
            self.text(|p| &p.max_age),
            None,
        );
        if self.first(|p| p.allow_private_network_access) == Some(true)
            && req
                .get(&REQUEST_PRIVATE_NETWORK)
                .is_some_and(|v| v.as_bytes() == b"true")
        {
            h.insert(
                ALLOW_PRIVATE_NETWORK.clone(),
                HeaderValue::from_static("true"),
            );
        }
        // Envoy's own response side runs on its preflight answer too.
        self.add_response_headers(&mut h);
        LocalReply {
            status: http::StatusCode::OK,
            body: "".into(),
            details: CORS_RESPONSE.into(),
            flags: ResponseFlags::empty(),
            headers: h,
        }
    }

    fn add_response_headers(&self, h: &mut HeaderMap) {
        if !self.is_cors_request {
            return;
        }
        let Some(origin) = &self.latched_origin else {
            return;
        };
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        if self.allow_credentials() {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        // The first policy that sets `expose_headers` decides (its value built at config time).
        let expose = self
            .first(|p| (!p.expose_headers.is_empty()).then_some(p.expose_headers_value.as_ref()));
        if let Some(v) = expose.flatten() {
            h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v.clone());
        }
    }
}

impl HttpFilter for CorsFilter {
    fn on_request_headers(
        &mut self,
        req: &mut http::request::Parts,
        _end_stream: bool,
        _cx: &mut StreamCx<'_>,
    ) -> Flow {
        let snapshot = || self.runtime.snapshot();
        let enabled = self.policies[0].enabled(snapshot);
        let shadow = self.policies[0].shadow_enabled(snapshot);
        if !enabled && !shadow {
            return Flow::Continue;
        }
        let Some(origin) = req.headers.get(header::ORIGIN).filter(|o| !o.is_empty()) else {
            return Flow::Continue;
        };
        let allowed = self.origin_allowed(&String::from_utf8_lossy(origin.as_bytes()));
        if allowed {
            self.origin_valid.inc();
            self.latched_origin = Some(origin.clone());
        } else {
            self.origin_invalid.inc();
        }
        if !enabled {
            return Flow::Continue;
        }
        self.is_cors_request = true;
        if req.method != Method::OPTIONS
            || req
                .headers
                .get(header::ACCESS_CONTROL_REQUEST_METHOD)
                .is_none_or(|m| m.is_empty())
        {
            return Flow::Continue;
        }
        if !allowed
            && self
                .first(|p| p.forward_not_matching_preflights)
                .unwrap_or(true)
        {
            return Flow::Continue;
        }
        let origin = origin.clone();
        let reply = self.preflight(&origin, allowed, &req.headers);
        // The answer carries the response side's headers already.
        self.is_cors_request = false;
        Flow::LocalReply(reply)
    }

    fn on_response_headers(
        &mut self,
        resp: &mut http::response::Parts,
        _end_stream: bool,
        _cx: &mut StreamCx<'_>,
    ) -> Flow {
        self.add_response_headers(&mut resp.headers);
        Flow::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filters::http::local_ratelimit::tests::{request, route_config, run};

    const ORIGIN: (&str, &str) = ("origin", "https://a.example");
    const PREFLIGHT: (&str, &str) = ("access-control-request-method", "PUT");

    fn policy_routes(extra: &str) -> crate::model::route::RouteConfig {
        route_config(&format!(
            "virtual_hosts: [{{name: vh, domains: ['*'],
  typed_per_filter_config: {{cors: {{'@type': type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy,
    allow_origin_string_match: [{{exact: 'https://a.example'}}], allow_methods: 'GET, POST', allow_headers: x-a,
    expose_headers: x-exp, max_age: '600', allow_credentials: true {extra}}}}},
  routes: [{{match: {{prefix: /}}, route: {{cluster: backend}}}}]}}]"
        ))
    }

    #[test]
    fn a_preflight_from_an_allowed_origin_is_answered_with_envoys_headers() {
        let store = Store::default();
        let f = CorsFactory::new(
            "cors",
            "ing",
            &store,
            RuntimeLoader::for_tests(Default::default()),
        );
        let rc = policy_routes("");
        let (flow, _, _) = run(&f, &rc, &mut request("OPTIONS", "/", &[ORIGIN, PREFLIGHT]));
        let Flow::LocalReply(r) = flow else {
            panic!("answered: {flow:?}")
        };
        assert_eq!(r.status, 200);
        assert_eq!(r.details, "cors_response");
        assert_eq!(r.body, "");
        let h = |n: &str| r.headers.get(n).map(|v| v.to_str().unwrap().to_string());
        assert_eq!(
            h("access-control-allow-origin").as_deref(),
            Some("https://a.example")
        );
        assert_eq!(
            h("access-control-allow-credentials").as_deref(),
            Some("true")
        );
        assert_eq!(
            h("access-control-allow-methods").as_deref(),
            Some("GET, POST")
        );
        assert_eq!(h("access-control-allow-headers").as_deref(), Some("x-a"));
        assert_eq!(h("access-control-max-age").as_deref(), Some("600"));
        assert_eq!(h("access-control-expose-headers").as_deref(), Some("x-exp"));
        assert_eq!(store.counter("http.ing.cors.origin_valid").value(), 1);
    }

    #[test]
    fn other_origins_are_forwarded_or_answered_and_simple_requests_get_the_origin() {
        let store = Store::default();
        let f = CorsFactory::new(
            "cors",
            "ing",
            &store,
            RuntimeLoader::for_tests(Default::default()),
        );
        let rc = policy_routes("");
        let other = ("origin", "https://b.example");
        let (flow, _, _) = run(&f, &rc, &mut request("OPTIONS", "/", &[other, PREFLIGHT]));
        assert!(matches!(flow, Flow::Continue));
        assert_eq!(store.counter("http.ing.cors.origin_invalid").value(), 1);

        let rc = policy_routes(", forward_not_matching_preflights: false");
        let (flow, _, _) = run(&f, &rc, &mut request("OPTIONS", "/", &[other, PREFLIGHT]));
        let Flow::LocalReply(r) = flow else {
            panic!("answered: {flow:?}")
        };
        assert!(r.headers.get("access-control-allow-origin").is_none());
        assert_eq!(r.headers["access-control-allow-methods"], "GET, POST");

        let (flow, resp, _) = run(&f, &rc, &mut request("GET", "/", &[ORIGIN]));
        assert!(matches!(flow, Flow::Continue));
        assert_eq!(resp["access-control-allow-origin"], "https://a.example");
        assert_eq!(resp["access-control-expose-headers"], "x-exp");
        assert!(resp.get("access-control-allow-methods").is_none());
        let (_, resp, _) = run(&f, &rc, &mut request("GET", "/", &[other]));
        assert!(resp.get("access-control-allow-origin").is_none());
    }

    #[test]
    fn disabled_and_shadow_policies_only_count() {
        let store = Store::default();
        let f = CorsFactory::new(
            "cors",
            "s",
            &store,
            RuntimeLoader::for_tests(Default::default()),
        );
        let off = ", filter_enabled: {default_value: {numerator: 0}}";
        let rc = policy_routes(off);
        let (flow, resp, _) = run(&f, &rc, &mut request("OPTIONS", "/", &[ORIGIN, PREFLIGHT]));
        assert!(matches!(flow, Flow::Continue) && resp.is_empty());
        assert_eq!(store.counter("http.s.cors.origin_valid").value(), 0);
        let rc = policy_routes(&format!(
            "{off}, shadow_enabled: {{default_value: {{numerator: 100}}}}"
        ));
        let (flow, resp, _) = run(&f, &rc, &mut request("OPTIONS", "/", &[ORIGIN, PREFLIGHT]));
        assert!(matches!(flow, Flow::Continue) && resp.is_empty());
        assert_eq!(store.counter("http.s.cors.origin_valid").value(), 1);
    }

    #[test]
    fn the_deprecated_route_policy_applies_without_per_filter_ones_and_star_echoes() {
        let store = Store::default();
        let f = CorsFactory::new(
            "cors",
            "s",
            &store,
            RuntimeLoader::for_tests(Default::default()),
        );
        let rc = route_config(
            "virtual_hosts: [{name: vh, domains: ['*'], cors: {allow_origin_string_match: [{prefix: 'https://'}], allow_methods: '*', allow_headers: '*', allow_private_network_access: true},
  routes: [{match: {prefix: /}, route: {cluster: backend}}]}]",
        );
        let mut req = request(
            "OPTIONS",
            "/",
            &[
                ORIGIN,
                PREFLIGHT,
                ("access-control-request-headers", "x-b"),
                ("access-control-request-private-network", "true"),
            ],
        );
        let (flow, _, _) = run(&f, &rc, &mut req);
        let Flow::LocalReply(r) = flow else {
            panic!("answered: {flow:?}")
        };
        assert_eq!(r.headers["access-control-allow-methods"], "PUT");
        assert_eq!(r.headers["access-control-allow-headers"], "x-b");
        assert_eq!(r.headers["access-control-allow-private-network"], "true");
        assert!(r.headers.get("access-control-allow-credentials").is_none());
    }
}
