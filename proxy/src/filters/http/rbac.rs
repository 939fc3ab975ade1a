//! `envoy.filters.http.rbac`: on the request's headers, the shadow engine is evaluated and
//! counted (never enforced), then the enforced engine decides: allowed, the request goes on;
//! denied, a local `403` with the body `RBAC: access denied` and the details
//! `rbac_access_denied_matched_policy[<policy>|none]` (no response flag, as Envoy). The route's
//! most specific `RBACPerRoute` replaces both engines.
//!
//! Stats sit under the connection manager's scope: `http.<stat_prefix>.rbac.[<rules_stat_prefix>.]
//! allowed|denied`, `http.<stat_prefix>.rbac.[<shadow_rules_stat_prefix>.]shadow_allowed|shadow_denied`
//! (with `track_per_rule_stats`, also `….policy.<name>.<stat>`). Dynamic metadata in
//! `envoy.filters.http.rbac`: `<shadow prefix>shadow_effective_policy_id`,
//! `<shadow prefix>shadow_engine_result`, `<rules prefix>enforced_effective_policy_id`,
//! `<rules prefix>enforced_engine_result`; a LOG engine sets `envoy.common.access_log_hint`.

use std::borrow::Cow;
use std::sync::Arc;

use super::{Flow, HttpFilter, HttpFilterFactory, LocalReply, StreamCx};
use crate::filters::common::rbac::{
    self as engine, COMMON_NAMESPACE, Decision, ENFORCED_EFFECTIVE_POLICY_ID,
    ENFORCED_ENGINE_RESULT, ENGINE_RESULT_ALLOWED, ENGINE_RESULT_DENIED, Mode, RbacStats,
    SHADOW_EFFECTIVE_POLICY_ID, SHADOW_ENGINE_RESULT,
};
use crate::model::matcher::RequestHeaders;
use crate::model::per_filter::PerFilterConfig;
use crate::model::rbac::HttpRbac;
use crate::stream_info::{MetadataValue, ResponseFlags};
use crate::telemetry::stats::Store;

/// The dynamic metadata namespace (the filter's canonical name).
pub const NAMESPACE: &str = "envoy.filters.http.rbac";
pub const BODY: &str = "RBAC: access denied";

/// One RBAC filter of a connection manager's chain.
#[derive(Debug)]
pub struct RbacFilterFactory {
    name: String,
    config: Arc<HttpRbac>,
    stats: Arc<RbacStats>,
}

impl RbacFilterFactory {
    /// `hcm_stat_prefix`: the connection manager's `stat_prefix`.
    pub fn new(
        name: &str,
        config: Arc<HttpRbac>,
        store: &Arc<Store>,
        hcm_stat_prefix: &str,
    ) -> Self {
        let stats = RbacStats::new(
            store,
            &format!("http.{hcm_stat_prefix}."),
            &config.rules_stat_prefix,
            &config.shadow_rules_stat_prefix,
        );
        Self {
            name: name.to_string(),
            config,
            stats: Arc::new(stats),
        }
    }
}

impl HttpFilterFactory for RbacFilterFactory {
    fn name(&self) -> &str {
        &self.name
    }

    fn create(
        &self,
        per_route: Option<&PerFilterConfig>,
        _cx: &StreamCx<'_>,
    ) -> Option<Box<dyn HttpFilter>> {
        // A per-route config of another filter's type under this name is not this filter's
        // (Envoy's cast to RBACPerRoute fails and the filter's own config applies).
        let route = per_route.and_then(|p| match p {
            PerFilterConfig::Rbac(r) => Some(r.clone()),
            _ => None,
        });
        Some(Box::new(RbacFilter {
            config: self.config.clone(),
            route,
            stats: self.stats.clone(),
        }))
    }
}

/// The filter on one stream.
pub struct RbacFilter {
    config: Arc<HttpRbac>,
    /// The route's `RBACPerRoute`, which replaces the engines.
    route: Option<Arc<HttpRbac>>,
    stats: Arc<RbacStats>,
}

impl RbacFilter {
    /// A metadata key: the route's prefix when it has a non-empty one, else the filter's
    /// (static without a prefix: nothing allocated).
    fn key(&self, shadow: bool, suffix: &'static str) -> Cow<'static, str> {
        fn pick(c: &HttpRbac, shadow: bool) -> &str {
            if shadow {
                &c.shadow_rules_stat_prefix
            } else {
                &c.rules_stat_prefix
            }
        }
        let prefix = match self.route.as_deref().map(|r| pick(r, shadow)) {
            Some(p) if !p.is_empty() => p,
            _ => pick(&self.config, shadow),
        };
        if prefix.is_empty() {
            return Cow::Borrowed(suffix);
        }
        let mut key = String::with_capacity(prefix.len() + suffix.len());
        key.push_str(prefix);
        key.push_str(suffix);
        Cow::Owned(key)
    }

    /// Publish `key` in the filter's namespace (typed: JSON only if something reads it).
    fn publish(&self, cx: &mut StreamCx<'_>, shadow: bool, key: &'static str, v: MetadataValue) {
        let k = self.key(shadow, key);
        cx.info
            .dynamic_metadata
            .set_typed(Cow::Borrowed(NAMESPACE), k, v);
    }
}

impl HttpFilter for RbacFilter {
    fn on_request_headers(
        &mut self,
        req: &mut http::request::Parts,
        _end_stream: bool,
        cx: &mut StreamCx<'_>,
    ) -> Flow {
        let active = self.route.as_deref().unwrap_or(&self.config);
        if active.engine.is_none() && active.shadow.is_none() {
            return Flow::Continue;
        }
        let per_rule = active.track_per_rule_stats;
        let authority = req
            .headers
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| req.uri.authority().map(|a| a.as_str()))
            .unwrap_or("");
        let scheme = req
            .uri
            .scheme_str()
            .unwrap_or(if cx.connection.tls.is_some() {
                "https"
            } else {
                "http"
            });
        let headers = RequestHeaders {
            method: &req.method,
            path_and_query: req.uri.path_and_query().map_or("/", |p| p.as_str()),
            authority,
            scheme,
            headers: &req.headers,
        };
        let (shadow, enforced) = {
            let input = engine::Input {
                connection: cx.connection,
                downstream_remote: cx.info.downstream_remote,
                headers: Some(&headers),
                metadata: &cx.info.dynamic_metadata,
                filter_state: &cx.info.filter_state,
                protocol: cx.info.protocol,
            };
            (
                active
                    .shadow
                    .as_ref()
                    .map(|e| engine::evaluate(e, &input, Mode::Shadow)),
                active
                    .engine
                    .as_ref()
                    .map(|e| engine::evaluate(e, &input, Mode::Enforced)),
            )
        };
        let result = |allowed: bool| {
            MetadataValue::Str(if allowed {
                ENGINE_RESULT_ALLOWED
            } else {
                ENGINE_RESULT_DENIED
            })
        };
        if let Some(d) = &shadow {
            self.stats.count(Mode::Shadow, d, per_rule);
            if let Some(p) = &d.policy {
                let v = MetadataValue::Shared(p.clone());
                self.publish(cx, true, SHADOW_EFFECTIVE_POLICY_ID, v);
            }
            self.publish(cx, true, SHADOW_ENGINE_RESULT, result(d.allowed));
        }
        let Some(d) = enforced else {
            return Flow::Continue;
        };
        let Decision {
            allowed,
            policy,
            log_hint,
        } = &d;
        if let Some(hint) = log_hint {
            cx.info.dynamic_metadata.set_typed(
                Cow::Borrowed(COMMON_NAMESPACE),
                Cow::Borrowed(engine::ACCESS_LOG_HINT),
                MetadataValue::Bool(*hint),
            );
        }
        if let Some(p) = policy {
            let v = MetadataValue::Shared(p.clone());
            self.publish(cx, false, ENFORCED_EFFECTIVE_POLICY_ID, v);
        }
        self.publish(cx, false, ENFORCED_ENGINE_RESULT, result(*allowed));
        self.stats.count(Mode::Enforced, &d, per_rule);
        if *allowed {
            return Flow::Continue;
        }
        Flow::LocalReply(LocalReply {
            status: http::StatusCode::FORBIDDEN,
            body: BODY.into(),
            details: engine::response_detail(policy.as_deref()),
            flags: ResponseFlags::empty(),
            headers: http::HeaderMap::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filters::common::rbac::testing::{connection, http_rbac, store};
    use crate::stream_info::StreamInfo;

    const AUTOLYTIQ: &str = "spiffe://cluster.local/ns/autolytiq/sa/api-gateway";
    const MONITORING: &str = "spiffe://cluster.local/ns/monitoring/sa/prometheus";
    const OTHER: &str = "spiffe://cluster.local/ns/default/sa/sleep";

    /// istiod's DENY filter for `deny-admin` (paths under /admin, from anyone) and its
    /// ALLOW filter for the mesh's policy: ns/autolytiq may use port 8080 with
    /// GET/POST/PUT/DELETE, ns/monitoring may GET /metrics.
    const DENY: &str = r#"
rules:
  action: DENY
  policies:
    "ns[autolytiq]-policy[deny-admin]-rule[0]":
      permissions:
      - and_rules: {rules: [{or_rules: {rules: [{url_path: {path: {prefix: /admin}}}]}}]}
      principals:
      - and_ids: {ids: [{any: true}]}
shadow_rules_stat_prefix: istio_dry_run_allow_
"#;
    const ALLOW: &str = r#"
rules:
  policies:
    "ns[autolytiq]-policy[my-new-service-policy]-rule[0]":
      permissions:
      - and_rules:
          rules:
          - or_rules: {rules: [{destination_port: 8080}]}
          - or_rules:
              rules:
              - header: {name: ":method", string_match: {exact: GET}}
              - header: {name: ":method", string_match: {exact: POST}}
              - header: {name: ":method", string_match: {exact: PUT}}
              - header: {name: ":method", string_match: {exact: DELETE}}
      principals:
      - and_ids:
          ids:
          - or_ids: {ids: [{authenticated: {principal_name: {safe_regex: {regex: ".*/ns/autolytiq/.*"}}}}]}
    "ns[autolytiq]-policy[my-new-service-policy]-rule[1]":
      permissions:
      - and_rules: {rules: [{or_rules: {rules: [{url_path: {path: {exact: /metrics}}}]}}]}
      principals:
      - and_ids:
          ids:
          - or_ids: {ids: [{authenticated: {principal_name: {safe_regex: {regex: ".*/ns/monitoring/.*"}}}}]}
shadow_rules_stat_prefix: istio_dry_run_allow_
"#;

    struct Outcome {
        flow: Flow,
        info: StreamInfo,
    }

    fn run(
        chain: &[&RbacFilterFactory],
        spiffe: Option<&str>,
        method: &str,
        uri: &str,
        per_route: Option<&PerFilterConfig>,
    ) -> Outcome {
        let conn = connection(8080, spiffe);
        let mut info = StreamInfo::new(conn.clone());
        let (mut parts, ()) = http::Request::builder()
            .method(method)
            .uri(uri)
            .header("host", "svc:8080")
            .body(())
            .unwrap()
            .into_parts();
        let mut flow = Flow::Continue;
        for f in chain {
            let mut cx = StreamCx {
                connection: &conn,
                info: &mut info,
                route: None,
            };
            let mut filter = f.create(per_route, &cx).expect("a filter");
            flow = filter.on_request_headers(&mut parts, true, &mut cx);
            if !matches!(flow, Flow::Continue) {
                break;
            }
        }
        Outcome { flow, info }
    }

    fn denied(o: &Outcome) -> Option<String> {
        match &o.flow {
            Flow::Continue => None,
            Flow::LocalReply(r) => {
                assert_eq!(r.status, 403);
                assert_eq!(r.body, "RBAC: access denied");
                assert!(r.flags.is_empty(), "RBAC sets no response flag");
                Some(r.details.to_string())
            }
            Flow::Pause(_) => panic!("RBAC never pauses"),
        }
    }

    #[test]
    fn istio_policy_pair_every_caller_and_method() {
        let st = store();
        let deny = RbacFilterFactory::new("deny", http_rbac(DENY), &st, "inbound_0.0.0.0_8080");
        let allow = RbacFilterFactory::new("allow", http_rbac(ALLOW), &st, "inbound_0.0.0.0_8080");
        let chain = [&deny, &allow];
        let none = "rbac_access_denied_matched_policy[none]";
        let admin = "rbac_access_denied_matched_policy[ns[autolytiq]-policy[deny-admin]-rule[0]]";
        let cases: &[(Option<&str>, &str, &str, Option<&str>)] = &[
            (Some(AUTOLYTIQ), "GET", "/api/deals", None),
            (Some(AUTOLYTIQ), "POST", "/api/deals", None),
            (Some(AUTOLYTIQ), "PUT", "/api/deals/1", None),
            (Some(AUTOLYTIQ), "DELETE", "/api/deals/1", None),
            (Some(AUTOLYTIQ), "PATCH", "/api/deals/1", Some(none)),
            (Some(AUTOLYTIQ), "GET", "/metrics", None),
            // DENY before ALLOW: the allowed caller is refused by the DENY policy.
            (Some(AUTOLYTIQ), "GET", "/admin/users", Some(admin)),
            (Some(MONITORING), "GET", "/metrics", None),
            (Some(MONITORING), "GET", "/metrics?format=prometheus", None),
            (Some(MONITORING), "POST", "/metrics", None),
            (Some(MONITORING), "GET", "/api/deals", Some(none)),
            (Some(MONITORING), "GET", "/admin", Some(admin)),
            (Some(OTHER), "GET", "/api/deals", Some(none)),
            (Some(OTHER), "GET", "/metrics", Some(none)),
            (Some(OTHER), "GET", "/admin", Some(admin)),
            (None, "GET", "/api/deals", Some(none)),
        ];
        for (who, method, path, want) in cases {
            let o = run(&chain, *who, method, path, None);
            assert_eq!(denied(&o).as_deref(), *want, "{who:?} {method} {path}");
        }
        let c = |n: &str| {
            st.counter(&format!("http.inbound_0.0.0.0_8080.rbac.{n}"))
                .value()
        };
        // Both filters count in the one scope, as Envoy's do.
        let denied_by_allow = cases.iter().filter(|c| c.3 == Some(none)).count() as u64;
        let denied_by_deny = cases.iter().filter(|c| c.3 == Some(admin)).count() as u64;
        assert_eq!(c("denied"), denied_by_allow + denied_by_deny);
        assert_eq!(
            c("allowed"),
            // The DENY filter allows all but the admin requests; the ALLOW filter allows the rest.
            (cases.len() as u64 - denied_by_deny)
                + (cases.len() as u64 - denied_by_deny - denied_by_allow)
        );
        assert_eq!(c("istio_dry_run_allow_.shadow_allowed"), 0);
    }

    #[test]
    fn metadata_and_shadow_rules_are_counted_not_enforced() {
        let st = store();
        let cfg = http_rbac(
            r#"
rules_stat_prefix: myrules_
shadow_rules_stat_prefix: istio_dry_run_allow_
track_per_rule_stats: true
rules:
  action: DENY
  policies:
    "deny admin": {permissions: [{url_path: {path: {prefix: /admin}}}], principals: [{any: true}]}
shadow_rules:
  policies:
    shadowpol: {permissions: [{header: {name: ":method", string_match: {exact: GET}}}], principals: [{any: true}]}
"#,
        );
        let f = RbacFilterFactory::new("r", cfg, &st, "ing");
        // The shadow rules would deny a POST: counted, not enforced.
        let o = run(&[&f], None, "POST", "/x", None);
        assert!(denied(&o).is_none());
        let md = o.info.dynamic_metadata.namespace(NAMESPACE).unwrap();
        assert_eq!(
            md.get("istio_dry_run_allow_shadow_engine_result").unwrap(),
            "denied"
        );
        assert!(
            md.get("istio_dry_run_allow_shadow_effective_policy_id")
                .is_none()
        );
        assert_eq!(md.get("myrules_enforced_engine_result").unwrap(), "allowed");
        assert!(md.get("myrules_enforced_effective_policy_id").is_none());

        let o = run(&[&f], None, "GET", "/admin/x", None);
        assert_eq!(
            denied(&o).as_deref(),
            Some("rbac_access_denied_matched_policy[deny_admin]")
        );
        let md = o.info.dynamic_metadata.namespace(NAMESPACE).unwrap();
        assert_eq!(
            md.get("istio_dry_run_allow_shadow_effective_policy_id")
                .unwrap(),
            "shadowpol"
        );
        assert_eq!(
            md.get("istio_dry_run_allow_shadow_engine_result").unwrap(),
            "allowed"
        );
        assert_eq!(
            md.get("myrules_enforced_effective_policy_id").unwrap(),
            "deny admin"
        );
        assert_eq!(md.get("myrules_enforced_engine_result").unwrap(), "denied");

        let c = |n: &str| st.counter(&format!("http.ing.rbac.{n}")).value();
        assert_eq!(c("myrules_.allowed"), 1);
        assert_eq!(c("myrules_.denied"), 1);
        assert_eq!(c("istio_dry_run_allow_.shadow_allowed"), 1);
        assert_eq!(c("istio_dry_run_allow_.shadow_denied"), 1);
        assert_eq!(c("myrules_.policy.deny admin.denied"), 1);
        assert_eq!(c("istio_dry_run_allow_.policy.shadowpol.shadow_allowed"), 1);
    }

    #[test]
    fn log_action_sets_the_access_log_hint() {
        let st = store();
        let f = RbacFilterFactory::new(
            "l",
            http_rbac(
                "rules: {action: LOG, policies: {l: {permissions: [{header: {name: x-log, present_match: true}}], principals: [{any: true}]}}}",
            ),
            &st,
            "ing",
        );
        let o = run(&[&f], None, "GET", "/", None);
        assert!(denied(&o).is_none());
        let common = o.info.dynamic_metadata.namespace(COMMON_NAMESPACE).unwrap();
        assert_eq!(common.get("access_log_hint").unwrap(), false);
    }

    #[test]
    fn per_route_config_replaces_the_engines() {
        let st = store();
        let f = RbacFilterFactory::new(
            "r",
            http_rbac(
                "rules: {action: DENY, policies: {all: {permissions: [{any: true}], principals: [{any: true}]}}}",
            ),
            &st,
            "ing",
        );
        assert!(denied(&run(&[&f], None, "GET", "/", None)).is_some());
        // RBACPerRoute without rbac: no engine on this route.
        let open = PerFilterConfig::Rbac(Arc::new(HttpRbac::default()));
        assert!(denied(&run(&[&f], None, "GET", "/", Some(&open))).is_none());
        let only_get = PerFilterConfig::Rbac(http_rbac(
            "rules: {policies: {get: {permissions: [{header: {name: ':method', string_match: {exact: GET}}}], principals: [{any: true}]}}}",
        ));
        assert!(denied(&run(&[&f], None, "GET", "/", Some(&only_get))).is_none());
        assert_eq!(
            denied(&run(&[&f], None, "PUT", "/", Some(&only_get))).as_deref(),
            Some("rbac_access_denied_matched_policy[none]")
        );
    }

    #[test]
    fn matcher_form_and_cel_condition() {
        let st = store();
        let m = RbacFilterFactory::new(
            "m",
            http_rbac(
                r#"
matcher:
  matcher_list:
    matchers:
    - predicate:
        not_matcher:
          single_predicate:
            input: {name: h, typed_config: {"@type": type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput, header_name: referer}}
            value_match: {safe_regex: {google_re2: {}, regex: "https?://(www.)?envoyproxy.io/docs/envoy.*"}}
      on_match: {action: {name: a, typed_config: {"@type": type.googleapis.com/envoy.config.rbac.v3.Action, name: illegal-referer, action: DENY}}}
  on_no_match: {action: {name: a, typed_config: {"@type": type.googleapis.com/envoy.config.rbac.v3.Action, name: all-pass, action: ALLOW}}}
"#,
            ),
            &st,
            "ing",
        );
        assert_eq!(
            denied(&run(&[&m], None, "GET", "/", None)).as_deref(),
            Some("rbac_access_denied_matched_policy[illegal-referer]")
        );
        let cel = RbacFilterFactory::new(
            "c",
            http_rbac(
                r#"
rules:
  policies:
    admin:
      condition:
        call_expr:
          function: startsWith
          args:
          - select_expr: {operand: {ident_expr: {name: request}}, field: path}
          - const_expr: {string_value: /admin/}
      permissions: [{any: true}]
      principals: [{authenticated: {principal_name: {exact: spiffe://cluster.local/ns/autolytiq/sa/api-gateway}}}]
"#,
            ),
            &st,
            "ing",
        );
        assert!(denied(&run(&[&cel], Some(AUTOLYTIQ), "GET", "/admin/x", None)).is_none());
        assert!(denied(&run(&[&cel], Some(AUTOLYTIQ), "GET", "/x", None)).is_some());
        assert!(denied(&run(&[&cel], Some(OTHER), "GET", "/admin/x", None)).is_some());
    }

    /// The micro-benchmark of docs/performance.md (a figure printed, never asserted):
    /// `cargo test --release -p remora --lib filters::http::rbac::tests::bench_twenty_rules -- --ignored --nocapture`.
    /// Twenty istiod-shaped policies (port, methods, path prefix; as principal a SPIFFE-namespace
    /// regex, `.*/ns/NS/.*`, or every other policy an exact SPIFFE ID, as istiod writes
    /// `namespaces` and `principals`) on an mTLS request whose permissions match every policy:
    /// the worst case evaluates all 20 principals and denies; the best case matches the last
    /// policy.
    #[test]
    #[ignore = "a micro-benchmark: run in release with --ignored --nocapture"]
    fn bench_twenty_rules() {
        let mut yaml =
            String::from("shadow_rules_stat_prefix: istio_dry_run_allow_\nrules:\n  policies:\n");
        for i in 0..20 {
            let principal = if i % 2 == 0 {
                format!(r#"{{safe_regex: {{regex: ".*/ns/ns{i:02}/.*"}}}}"#)
            } else {
                format!(r#"{{exact: "spiffe://cluster.local/ns/ns{i:02}/sa/x"}}"#)
            };
            yaml += &format!(
                r#"    "ns[autolytiq]-policy[p{i:02}]-rule[0]":
      permissions:
      - and_rules:
          rules:
          - or_rules: {{rules: [{{destination_port: 8080}}]}}
          - or_rules: {{rules: [{{header: {{name: ":method", string_match: {{exact: GET}}}}}}, {{header: {{name: ":method", string_match: {{exact: POST}}}}}}]}}
          - or_rules: {{rules: [{{url_path: {{path: {{prefix: /api/}}}}}}]}}
      principals:
      - and_ids: {{ids: [{{or_ids: {{ids: [{{authenticated: {{principal_name: {principal}}}}}]}}}}]}}
"#
            );
        }
        let st = store();
        let f = RbacFilterFactory::new("r", http_rbac(&yaml), &st, "inbound");
        for (label, caller, want_denied) in [
            (
                "worst (no policy matches: 20 regexes, denied)",
                "spiffe://cluster.local/ns/caller/sa/x",
                true,
            ),
            (
                "best-of-last (the 20th policy matches, allowed)",
                "spiffe://cluster.local/ns/ns19/sa/x",
                false,
            ),
        ] {
            let conn = connection(8080, Some(caller));
            let (mut parts, ()) = http::Request::builder()
                .method("GET")
                .uri("/api/deals/42?x=1")
                .header("host", "deal:8080")
                .header("user-agent", "bench")
                .body(())
                .unwrap()
                .into_parts();
            let n = 200_000u32;
            let mut denied_count = 0u32;
            let start = std::time::Instant::now();
            for _ in 0..n {
                let mut info = StreamInfo::new(conn.clone());
                let mut cx = StreamCx {
                    connection: &conn,
                    info: &mut info,
                    route: None,
                };
                let mut filter = f.create(None, &cx).unwrap();
                if matches!(
                    filter.on_request_headers(&mut parts, true, &mut cx),
                    Flow::LocalReply(_)
                ) {
                    denied_count += 1;
                }
            }
            let per = start.elapsed() / n;
            assert_eq!(denied_count == n, want_denied);
            println!(
                "rbac 20 rules, {label}: {per:?} per request (StreamInfo, filter, decision, metadata, stats)"
            );
            let input_info = StreamInfo::new(conn.clone());
            let headers = RequestHeaders {
                method: &parts.method,
                path_and_query: "/api/deals/42?x=1",
                authority: "deal:8080",
                scheme: "https",
                headers: &parts.headers,
            };
            let input = engine::Input {
                connection: &conn,
                downstream_remote: conn.remote,
                headers: Some(&headers),
                metadata: &input_info.dynamic_metadata,
                filter_state: &input_info.filter_state,
                protocol: None,
            };
            let e = f.config.engine.as_ref().unwrap();
            let start = std::time::Instant::now();
            for _ in 0..n {
                std::hint::black_box(engine::evaluate(
                    std::hint::black_box(e),
                    &input,
                    Mode::Enforced,
                ));
            }
            println!(
                "rbac 20 rules, {label}: {:?} per evaluation (engine only)",
                start.elapsed() / n
            );
        }
    }
}
