//! Routing, rewrites, redirects, direct responses, header mutations, failures and their
//! response flags, local replies: one bootstrap, many requests.

use crate::CaseResult;
use crate::cases::{self, HttpCase, req};
use crate::oracle::Pair;
use crate::support::{bootstrap, cluster, upstream};
use std::path::Path;

/// The route configuration every listener serves (indented for `listener`).
const ROUTES: &str = r#"            request_headers_to_add:
            - header: {key: x-rc, value: rc}
            response_headers_to_add:
            - header: {key: x-rc-resp, value: rc}
            virtual_hosts:
            - name: match
              domains: ["match.test"]
              routes:
              - {name: exact, match: {path: "/exact"}, route: {cluster: backend}}
              - {name: prefix, match: {prefix: "/pre/"}, route: {cluster: backend}}
              - {name: regex, match: {safe_regex: {regex: "/re/[0-9]+"}}, route: {cluster: backend}}
              - {name: sep, match: {path_separated_prefix: "/sep"}, route: {cluster: backend}}
              - {name: nocase, match: {prefix: "/case", case_sensitive: false}, route: {cluster: backend}}
              - {name: hdr_exact, match: {prefix: "/h", headers: [{name: x-a, string_match: {exact: "1"}}]}, route: {cluster: other}}
              - {name: hdr_prefix, match: {prefix: "/h", headers: [{name: x-a, string_match: {prefix: "pre"}}]}, route: {cluster: other}}
              - {name: hdr_suffix, match: {prefix: "/h", headers: [{name: x-a, string_match: {suffix: "suf"}}]}, route: {cluster: other}}
              - {name: hdr_contains, match: {prefix: "/h", headers: [{name: x-a, string_match: {contains: "mid"}}]}, route: {cluster: other}}
              - {name: hdr_regex, match: {prefix: "/h", headers: [{name: x-a, string_match: {safe_regex: {regex: "^r[0-9]$"}}}]}, route: {cluster: other}}
              - {name: hdr_present, match: {prefix: "/h", headers: [{name: x-p, present_match: true}]}, route: {cluster: other}}
              - {name: hdr_invert, match: {prefix: "/inv", headers: [{name: x-i, string_match: {exact: "no"}, invert_match: true}]}, route: {cluster: other}}
              - {name: hdr_range, match: {prefix: "/range", headers: [{name: x-r, range_match: {start: 10, end: 20}}]}, route: {cluster: other}}
              - {name: query, match: {prefix: "/q", query_parameters: [{name: a, string_match: {exact: "1"}}]}, route: {cluster: other}}
              - {name: query_present, match: {prefix: "/q", query_parameters: [{name: p, present_match: true}]}, route: {cluster: other}}
              - {name: method, match: {prefix: "/m", headers: [{name: ":method", string_match: {exact: POST}}]}, route: {cluster: other}}
              - {name: fallthrough, match: {prefix: "/"}, direct_response: {status: 418, body: {inline_string: "fallthrough"}}}
            - name: rewrite
              domains: ["rewrite.test"]
              routes:
              - {name: prefix_rewrite, match: {prefix: "/p/"}, route: {cluster: backend, prefix_rewrite: "/new/"}}
              - {name: prefix_strip, match: {prefix: "/strip"}, route: {cluster: backend, prefix_rewrite: "/"}}
              - {name: regex_rewrite, match: {prefix: "/r/"}, route: {cluster: backend, regex_rewrite: {pattern: {regex: "^/r/([0-9]+)/(.*)$"}, substitution: "/\\2/\\1"}}}
              - {name: host_literal, match: {prefix: "/h/"}, route: {cluster: backend, host_rewrite_literal: rewritten.example}}
              - {name: host_header, match: {prefix: "/hh/"}, route: {cluster: backend, host_rewrite_header: x-host}}
              - {name: timeout, match: {prefix: "/t/"}, route: {cluster: backend, timeout: 3s}}
              - {name: no_timeout, match: {prefix: "/t0/"}, route: {cluster: backend, timeout: 0s}}
            - name: redirect
              domains: ["redirect.test"]
              routes:
              - {name: r301, match: {prefix: "/301"}, redirect: {path_redirect: "/moved", response_code: MOVED_PERMANENTLY}}
              - {name: r302, match: {prefix: "/302"}, redirect: {path_redirect: "/moved", response_code: FOUND}}
              - {name: r303, match: {prefix: "/303"}, redirect: {path_redirect: "/moved", response_code: SEE_OTHER}}
              - {name: r307, match: {prefix: "/307"}, redirect: {path_redirect: "/moved", response_code: TEMPORARY_REDIRECT}}
              - {name: r308, match: {prefix: "/308"}, redirect: {path_redirect: "/moved", response_code: PERMANENT_REDIRECT}}
              - {name: https, match: {prefix: "/https"}, redirect: {https_redirect: true}}
              - {name: port, match: {prefix: "/port"}, redirect: {port_redirect: 8443}}
              - {name: host, match: {prefix: "/host"}, redirect: {host_redirect: elsewhere.test}}
              - {name: prefix, match: {prefix: "/prefix/"}, redirect: {prefix_rewrite: "/other/"}}
              - {name: strip_query, match: {prefix: "/strip"}, redirect: {path_redirect: "/s", strip_query: true}}
              - {name: keep_query, match: {prefix: "/keep"}, redirect: {path_redirect: "/s"}}
              - {name: path_query, match: {prefix: "/pq"}, redirect: {path_redirect: "/s?b=2"}}
              - {name: scheme, match: {prefix: "/scheme"}, redirect: {scheme_redirect: ftp}}
              - {name: regex, match: {prefix: "/regex/"}, redirect: {regex_rewrite: {pattern: {regex: "^/regex/(.*)$"}, substitution: "/re/\\1"}}}
            - name: direct
              domains: ["direct.test"]
              routes:
              - {name: d200, match: {path: "/200"}, direct_response: {status: 200, body: {inline_string: "hello"}}}
              - {name: d503, match: {path: "/503"}, direct_response: {status: 503}}
              - {name: d404, match: {path: "/404"}, direct_response: {status: 404, body: {inline_string: "gone"}}}
              - name: dhdrs
                match: {path: "/hdrs"}
                direct_response: {status: 200, body: {inline_string: "h"}}
                response_headers_to_add: [{header: {key: x-r, value: r}}]
            - name: headers
              domains: ["headers.test"]
              request_headers_to_add:
              - header: {key: x-vh, value: vh}
              - header: {key: x-both, value: vh}
                append_action: APPEND_IF_EXISTS_OR_ADD
              response_headers_to_add:
              - header: {key: x-vh-resp, value: vh}
              routes:
              - name: add
                match: {prefix: "/add"}
                route: {cluster: backend}
                request_headers_to_add:
                - {header: {key: x-both, value: route}, append_action: APPEND_IF_EXISTS_OR_ADD}
                - {header: {key: x-absent, value: a}, append_action: ADD_IF_ABSENT}
                - {header: {key: x-over, value: o}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}
                - {header: {key: x-oie, value: oie}, append_action: OVERWRITE_IF_EXISTS}
              - name: remove
                match: {prefix: "/remove"}
                route: {cluster: backend}
                request_headers_to_remove: [x-drop]
                response_headers_to_remove: [x-upstream]
              - name: fmt
                match: {prefix: "/fmt"}
                route: {cluster: backend}
                request_headers_to_add:
                - header: {key: x-fmt, value: "%REQ(x-in)%"}
                - header: {key: x-proto, value: "%PROTOCOL%"}
                - header: {key: x-peer, value: "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"}
                - header: {key: x-lit, value: "100%%"}
              - name: resp
                match: {prefix: "/resp"}
                route: {cluster: backend}
                response_headers_to_add:
                - header: {key: x-resp, value: "%RESPONSE_CODE%"}
                - header: {key: x-cl, value: "%UPSTREAM_CLUSTER%"}
                - {header: {key: x-upstream, value: replaced}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}
              - name: resp_append
                match: {prefix: "/append"}
                route: {cluster: backend}
                response_headers_to_add:
                - {header: {key: x-upstream, value: added}, append_action: APPEND_IF_EXISTS_OR_ADD}
            - name: fail
              domains: ["fail.test"]
              routes:
              - {name: uf, match: {prefix: "/uf"}, route: {cluster: dead}}
              - {name: uh, match: {prefix: "/uh"}, route: {cluster: empty}}
              - {name: ut, match: {prefix: "/ut"}, route: {cluster: backend, timeout: 0.3s, prefix_rewrite: "/delay/2000"}}
              - {name: edge_timeout, match: {prefix: "/edge"}, route: {cluster: backend, timeout: 5s, prefix_rewrite: "/delay/1000"}}
              - {name: status, match: {prefix: "/status/"}, route: {cluster: backend}}
              - {name: retry, match: {prefix: "/retry"}, route: {cluster: backend, prefix_rewrite: "/status/503", retry_policy: {retry_on: 5xx, num_retries: 2}}}
              - {name: retry_ok, match: {prefix: "/rok"}, route: {cluster: backend, prefix_rewrite: "/", retry_policy: {retry_on: 5xx, num_retries: 2}}}
              - {name: header_cluster, match: {prefix: "/ch"}, route: {cluster_header: x-cluster}}
              - {name: large, match: {prefix: "/large/"}, route: {cluster: backend}}
              - {name: post, match: {prefix: "/post"}, route: {cluster: backend}}
"#;

const LOCAL_REPLY: &str = r#"          local_reply_config:
            mappers:
            - filter: {status_code_filter: {comparison: {op: EQ, value: {default_value: 503, runtime_key: lr_503}}}}
              status_code: 502
              body: {inline_string: "mapped 503"}
            - filter: {header_filter: {header: {name: x-lr, string_match: {exact: json}}}}
              body_format_override:
                json_format: {code: "%RESPONSE_CODE%", flags: "%RESPONSE_FLAGS%", body: "%LOCAL_REPLY_BODY%"}
            body_format:
              text_format: "lr: %LOCAL_REPLY_BODY% (%RESPONSE_CODE%)\n"
"#;

fn listener(name: &str, hcm_extra: &str) -> String {
    let hcm = format!("{hcm_extra}          route_config:\n            name: routes\n{ROUTES}\n");
    cases::hcm_listener(name, &hcm, "")
}

pub async fn run(envoy: &Path, filter: Option<&str>) -> Vec<CaseResult> {
    let cases = cases::filtered(all_cases(), filter);
    if cases.is_empty() {
        return Vec::new();
    }
    let backend = upstream("backend").await;
    let other = upstream("other").await;
    let log = cases::access_log();
    let listeners = [
        listener("in", &log),
        listener("lr", &format!("{log}{LOCAL_REPLY}")),
        listener(
            "edge",
            &format!("{log}          use_remote_address: true\n"),
        ),
    ]
    .concat();
    let clusters = [
        cluster("backend", &[backend.addr], ""),
        cluster("other", &[other.addr], ""),
        cluster("dead", &[cases::refused()], ""),
        "  - name: empty\n    type: STATIC\n    connect_timeout: 1s\n    load_assignment: {cluster_name: empty}\n".to_string(),
    ]
    .concat();
    let pair = Pair::start(envoy, &bootstrap(&listeners, &clusters)).await;
    cases::run("routing", &pair, cases).await
}

fn get(id: &str, host: &str, path: &str, headers: &[(&str, &str)]) -> HttpCase {
    HttpCase::new(
        format!("routing/{id}"),
        "in",
        req(id, "GET", host, path, headers),
    )
}

fn on(
    listener: &'static str,
    id: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> HttpCase {
    let id = format!("{listener}/{id}");
    HttpCase::new(
        format!("routing/{id}"),
        listener,
        req(&id, "GET", host, path, headers),
    )
}

fn all_cases() -> Vec<HttpCase> {
    let mut c = matching();
    c.extend(rewrites());
    c.extend(redirects());
    c.extend(direct_and_headers());
    c.extend(failures());
    c.extend(local_replies_and_edge());
    c
}

fn matching() -> Vec<HttpCase> {
    let m = "match.test";
    vec![
        get("path_exact", m, "/exact", &[]),
        get("path_exact_slash", m, "/exact/", &[]),
        get("path_exact_query", m, "/exact?x=1", &[]),
        get("path_exact_case", m, "/EXACT", &[]),
        get("prefix", m, "/pre/a", &[]),
        get("prefix_short", m, "/pre", &[]),
        get("regex", m, "/re/123", &[]),
        get("regex_partial", m, "/re/12a", &[]),
        get("regex_query", m, "/re/7?q=1", &[]),
        get("sep_exact", m, "/sep", &[]),
        get("sep_slash", m, "/sep/", &[]),
        get("sep_sub", m, "/sep/x", &[]),
        get("sep_longer", m, "/sepx", &[]),
        get("sep_query", m, "/sep?x=1", &[]),
        get("nocase_upper", m, "/CASE", &[]),
        get("nocase_mixed", m, "/Case/x", &[]),
        get("hdr_exact", m, "/h", &[("x-a", "1")]),
        get("hdr_exact_miss", m, "/h", &[("x-a", "2")]),
        get("hdr_prefix", m, "/h", &[("x-a", "prefix")]),
        get("hdr_suffix", m, "/h", &[("x-a", "asuf")]),
        get("hdr_contains", m, "/h", &[("x-a", "amidb")]),
        get("hdr_regex", m, "/h", &[("x-a", "r5")]),
        get("hdr_regex_miss", m, "/h", &[("x-a", "r55")]),
        get("hdr_present", m, "/h", &[("x-p", "")]),
        get("hdr_absent", m, "/h", &[]),
        get("hdr_invert_other", m, "/inv", &[("x-i", "yes")]),
        get("hdr_invert_same", m, "/inv", &[("x-i", "no")]),
        get("hdr_invert_absent", m, "/inv", &[]),
        get("hdr_range_in", m, "/range", &[("x-r", "15")]),
        get("hdr_range_end", m, "/range", &[("x-r", "20")]),
        get("hdr_range_out", m, "/range", &[("x-r", "25")]),
        get("hdr_range_nan", m, "/range", &[("x-r", "abc")]),
        get("query_exact", m, "/q?a=1", &[]),
        get("query_other", m, "/q?a=2", &[]),
        get("query_present", m, "/q?p", &[]),
        get("query_none", m, "/q", &[]),
        get("query_encoded", m, "/q?a=%31", &[]),
        get("method_get", m, "/m", &[]),
        HttpCase::new(
            "routing/method_post",
            "in",
            req("method_post", "POST", m, "/m", &[("content-length", "0")]),
        ),
        get("host_port", "match.test:80", "/exact", &[]),
        get("host_upper", "MATCH.test", "/exact", &[]),
        get("no_vhost", "nowhere.test", "/", &[]),
    ]
}

fn rewrites() -> Vec<HttpCase> {
    let r = "rewrite.test";
    vec![
        get("prefix_rewrite", r, "/p/a/b", &[]),
        get("prefix_rewrite_query", r, "/p/a?x=1", &[]),
        get("prefix_strip", r, "/strip/x", &[]),
        get("prefix_strip_all", r, "/strip", &[]),
        get("regex_rewrite", r, "/r/42/rest", &[]),
        get("regex_rewrite_miss", r, "/r/x/rest", &[]),
        get("host_literal", r, "/h/x", &[]),
        get("host_header", r, "/hh/x", &[("x-host", "from.header")]),
        get("host_header_absent", r, "/hh/x", &[]),
        get("timeout_header", r, "/t/x", &[]),
        get("timeout_zero", r, "/t0/x", &[]),
    ]
}

fn redirects() -> Vec<HttpCase> {
    let r = "redirect.test";
    vec![
        get("redirect_301", r, "/301", &[]),
        get("redirect_302", r, "/302", &[]),
        get("redirect_303", r, "/303", &[]),
        get("redirect_307", r, "/307", &[]),
        get("redirect_308", r, "/308", &[]),
        get("redirect_https", r, "/https/x?y=1", &[]),
        get("redirect_port", r, "/port/x", &[]),
        get(
            "redirect_port_host_port",
            "redirect.test:8080",
            "/port/x",
            &[],
        ),
        get("redirect_host", r, "/host/x", &[]),
        get("redirect_prefix", r, "/prefix/a/b", &[]),
        get("redirect_strip_query", r, "/strip?a=1", &[]),
        get("redirect_keep_query", r, "/keep?a=1", &[]),
        get("redirect_path_query", r, "/pq?a=1", &[]),
        get("redirect_scheme", r, "/scheme/x", &[]),
        get("redirect_regex", r, "/regex/a/b", &[]),
        get(
            "redirect_forwarded_proto",
            r,
            "/port/x",
            &[("x-forwarded-proto", "https")],
        ),
    ]
}

fn direct_and_headers() -> Vec<HttpCase> {
    let d = "direct.test";
    let h = "headers.test";
    vec![
        get("direct_200", d, "/200", &[]),
        get("direct_503", d, "/503", &[]),
        get("direct_404", d, "/404", &[]),
        get("direct_headers", d, "/hdrs", &[]),
        HttpCase::new(
            "routing/direct_head",
            "in",
            req("direct_head", "HEAD", d, "/200", &[]),
        ),
        get("headers_add_empty", h, "/add", &[]),
        get(
            "headers_add_existing",
            h,
            "/add",
            &[
                ("x-both", "client"),
                ("x-absent", "client"),
                ("x-over", "client"),
                ("x-oie", "client"),
            ],
        ),
        get(
            "headers_remove",
            h,
            "/remove",
            &[("x-drop", "1"), ("x-keep", "1")],
        ),
        get("headers_format", h, "/fmt", &[("x-in", "input")]),
        get("headers_format_absent", h, "/fmt", &[]),
        get("headers_response", h, "/resp", &[]),
        get("headers_response_append", h, "/append", &[]),
        get(
            "headers_xff_kept",
            h,
            "/add",
            &[("x-forwarded-for", "1.2.3.4")],
        ),
        get(
            "headers_x_envoy_internal",
            h,
            "/add",
            &[("x-envoy-internal", "true")],
        ),
        get(
            "headers_request_id_kept",
            h,
            "/add",
            &[("x-request-id", "abc")],
        ),
    ]
}

fn failures() -> Vec<HttpCase> {
    let f = "fail.test";
    vec![
        get("fail_uf", f, "/uf", &[]),
        get("fail_uh", f, "/uh", &[]),
        get("fail_ut", f, "/ut", &[]),
        get(
            "fail_edge_timeout_header",
            f,
            "/edge",
            &[("x-envoy-upstream-rq-timeout-ms", "100")],
        ),
        get("fail_status_500", f, "/status/500", &[]),
        get("fail_status_503", f, "/status/503", &[]),
        get("fail_status_404", f, "/status/404", &[]),
        get("fail_retry_exhausted", f, "/retry", &[]),
        get("fail_retry_not_needed", f, "/rok", &[]),
        get(
            "fail_retry_header_max",
            f,
            "/retry",
            &[("x-envoy-max-retries", "0")],
        ),
        get(
            "fail_cluster_header_unknown",
            f,
            "/ch",
            &[("x-cluster", "nope")],
        ),
        get(
            "fail_cluster_header_known",
            f,
            "/ch",
            &[("x-cluster", "backend")],
        ),
        get("fail_cluster_header_absent", f, "/ch", &[]),
        get("fail_no_route", f, "/zzz", &[]),
        get("fail_large_body", f, "/large/100000", &[]),
        HttpCase::new("routing/fail_post_body", "in", {
            let mut r = req(
                "fail_post_body",
                "POST",
                f,
                "/post",
                &[("content-length", "5")],
            );
            r.extend_from_slice(b"hello");
            r
        }),
    ]
}

fn local_replies_and_edge() -> Vec<HttpCase> {
    vec![
        on("lr", "uf_mapped", "fail.test", "/uf", &[]),
        on("lr", "no_route", "fail.test", "/zzz", &[]),
        on("lr", "no_vhost", "nowhere.test", "/", &[]),
        on("lr", "direct_404", "direct.test", "/404", &[]),
        on("lr", "direct_503", "direct.test", "/503", &[]),
        on("lr", "direct_200", "direct.test", "/200", &[]),
        on("lr", "json", "fail.test", "/zzz", &[("x-lr", "json")]),
        on("lr", "redirect", "redirect.test", "/301", &[]),
        on("lr", "upstream_503", "fail.test", "/status/503", &[]),
        on("lr", "ut", "fail.test", "/ut", &[]),
        on(
            "edge",
            "xff_appended",
            "headers.test",
            "/add",
            &[("x-forwarded-for", "1.2.3.4")],
        ),
        on("edge", "xff_none", "headers.test", "/add", &[]),
        on(
            "edge",
            "internal_stripped",
            "headers.test",
            "/add",
            &[("x-envoy-internal", "true")],
        ),
        on(
            "edge",
            "timeout_header_edge",
            "fail.test",
            "/edge",
            &[("x-envoy-upstream-rq-timeout-ms", "100")],
        ),
        on(
            "edge",
            "max_retries_edge",
            "fail.test",
            "/retry",
            &[("x-envoy-max-retries", "0")],
        ),
        on(
            "edge",
            "forwarded_proto",
            "headers.test",
            "/add",
            &[("x-forwarded-proto", "https")],
        ),
    ]
}
