//! `envoy.filters.http.rbac` side by side: istiod's DENY-then-ALLOW composition (with dry-run
//! shadow rules and a `rules_stat_prefix`), a LOG filter, principals and permissions on
//! headers, paths, addresses and ports, a CEL condition, and the unified matcher form. Each
//! case's response (403 `RBAC: access denied` or the upstream's) and access-log line (details,
//! flags, the filters' dynamic metadata) are compared.

use crate::CaseResult;
use crate::cases::{self, ACCESS_LOG_FORMAT, HttpCase, req};
use crate::oracle::Pair;
use crate::support::{bootstrap, cluster, upstream};
use std::path::Path;

const FILTERS: &str = r#"          - name: deny
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules_stat_prefix: deny_
              shadow_rules_stat_prefix: istio_dry_run_allow_
              rules:
                action: DENY
                policies:
                  "ns[x]-policy[deny admin]-rule[0]":
                    permissions: [{and_rules: {rules: [{or_rules: {rules: [{url_path: {path: {prefix: /admin}}}]}}]}}]
                    principals: [{and_ids: {ids: [{any: true}]}}]
                  "ns[x]-policy[blocked]-rule[0]":
                    permissions: [{any: true}]
                    principals: [{header: {name: x-block, present_match: true}}]
              shadow_rules:
                policies:
                  shadow-get:
                    permissions: [{header: {name: ":method", string_match: {exact: GET}}}]
                    principals: [{any: true}]
          - name: allow
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                policies:
                  "ns[x]-policy[api]-rule[0]":
                    permissions:
                    - and_rules:
                        rules:
                        - or_rules: {rules: [{header: {name: ":method", string_match: {exact: GET}}}, {header: {name: ":method", string_match: {exact: PUT}}}]}
                        - url_path: {path: {prefix: /api/, ignore_case: true}}
                    principals: [{remote_ip: {address_prefix: 127.0.0.0, prefix_len: 8}}]
                  "ns[x]-policy[token]-rule[0]":
                    permissions: [{header: {name: ":method", string_match: {exact: POST}}}]
                    principals: [{header: {name: x-token, string_match: {exact: secret}}}]
                  "ns[x]-policy[cel]-rule[0]":
                    permissions: [{any: true}]
                    principals: [{direct_remote_ip: {address_prefix: 127.0.0.1, prefix_len: 32}}]
                    condition:
                      call_expr:
                        function: _&&_
                        args:
                        - call_expr: {function: startsWith, args: [{select_expr: {operand: {ident_expr: {name: request}}, field: path}}, {const_expr: {string_value: /cel/}}]}
                        - call_expr: {function: _==_, args: [{select_expr: {operand: {ident_expr: {name: request}}, field: method}}, {const_expr: {string_value: GET}}]}
                  "ns[x]-policy[open]-rule[0]":
                    permissions: [{and_rules: {rules: [{url_path: {path: {exact: /open}}}, {destination_port_range: {start: 1, end: 65536}}, {not_rule: {destination_ip: {address_prefix: 10.0.0.0, prefix_len: 8}}}]}}]
                    principals: [{not_id: {source_ip: {address_prefix: 10.0.0.0, prefix_len: 8}}}]
          - name: log
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                action: LOG
                policies:
                  l: {permissions: [{header: {name: x-log, present_match: true}}], principals: [{any: true}]}
"#;

const MATCHER: &str = r#"          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
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
"#;

fn listener(name: &str, filters: &str) -> String {
    let log = ACCESS_LOG_FORMAT.to_string()
        + " %DYNAMIC_METADATA(envoy.filters.http.rbac:deny_enforced_engine_result)%"
        + " %DYNAMIC_METADATA(envoy.filters.http.rbac:deny_enforced_effective_policy_id)%"
        + " %DYNAMIC_METADATA(envoy.filters.http.rbac:istio_dry_run_allow_shadow_engine_result)%"
        + " %DYNAMIC_METADATA(envoy.filters.http.rbac:istio_dry_run_allow_shadow_effective_policy_id)%"
        + " %DYNAMIC_METADATA(envoy.filters.http.rbac:enforced_engine_result)%"
        + " %DYNAMIC_METADATA(envoy.filters.http.rbac:enforced_effective_policy_id)%"
        + " %DYNAMIC_METADATA(envoy.common:access_log_hint)%";
    let hcm = format!(
        r#"          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: RUN_DIR/access.log
              log_format: {{text_format_source: {{inline_string: "{log}\n"}}}}
{}"#,
        cases::one_vhost(
            "              - {name: r, match: {prefix: /}, route: {cluster: backend}}"
        )
    );
    cases::hcm_listener(name, &hcm, filters)
}

fn case(
    listener: &'static str,
    id: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> HttpCase {
    let id = format!("{listener}/{id}");
    HttpCase::new(
        format!("rbac/{id}"),
        listener,
        req(&id, method, "svc.test", path, headers),
    )
}

fn all_cases() -> Vec<HttpCase> {
    vec![
        case("pair", "api_get", "GET", "/api/deals", &[]),
        case("pair", "api_put_case", "PUT", "/API/deals/1?x=1", &[]),
        case("pair", "api_delete", "DELETE", "/api/deals/1", &[]),
        case("pair", "admin_denied", "GET", "/admin/users", &[]),
        case(
            "pair",
            "blocked_header",
            "GET",
            "/api/deals",
            &[("x-block", "1")],
        ),
        case(
            "pair",
            "post_token",
            "POST",
            "/anything",
            &[("x-token", "secret")],
        ),
        case(
            "pair",
            "post_bad_token",
            "POST",
            "/anything",
            &[("x-token", "nope")],
        ),
        case("pair", "cel_get", "GET", "/cel/x", &[]),
        case("pair", "cel_post", "POST", "/cel/x", &[]),
        case("pair", "open", "PATCH", "/open", &[]),
        case("pair", "open_query", "PATCH", "/open?a=b", &[]),
        case("pair", "nothing", "PATCH", "/closed", &[]),
        case("pair", "log_hint", "GET", "/api/x", &[("x-log", "1")]),
        case("matcher", "no_referer", "GET", "/", &[]),
        case(
            "matcher",
            "docs_referer",
            "GET",
            "/",
            &[("referer", "https://www.envoyproxy.io/docs/envoy/latest")],
        ),
        case(
            "matcher",
            "other_referer",
            "GET",
            "/",
            &[("referer", "https://example.com/")],
        ),
    ]
}

pub async fn run(envoy: &Path, filter: Option<&str>) -> Vec<CaseResult> {
    let cases = cases::filtered(all_cases(), filter);
    if cases.is_empty() {
        return Vec::new();
    }
    let backend = upstream("backend").await;
    let listeners = [listener("pair", FILTERS), listener("matcher", MATCHER)].concat();
    let pair = Pair::start(
        envoy,
        &bootstrap(&listeners, &cluster("backend", &[backend.addr], "")),
    )
    .await;
    cases::run("rbac", &pair, cases).await
}
