//! `envoy.filters.http.cors`: preflights answered or forwarded, simple requests from allowed
//! and other origins, per-route `CorsPolicy` at several levels and the deprecated route `cors`;
//! the responses, access-log lines and `http.cors.cors.*` stats are compared.

use crate::CaseResult;
use crate::cases::{self, HttpCase, req};
use crate::oracle::Pair;
use crate::support::{bootstrap, cluster, upstream};
use std::path::Path;

const POLICY: &str =
    "\"@type\": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy";

fn hcm() -> String {
    format!(
        r#"          route_config:
            name: routes
            virtual_hosts:
            - name: vh
              domains: ["*"]
              response_headers_to_add: [{{header: {{key: x-vh, value: vh}}}}]
              typed_per_filter_config:
                envoy.filters.http.cors:
                  {POLICY}
                  allow_origin_string_match: [{{exact: "https://a.example"}}, {{suffix: ".b.example"}}]
                  allow_methods: "GET, POST"
                  allow_headers: "x-a, x-b"
                  expose_headers: "x-exp"
                  max_age: "600"
                  allow_credentials: true
              routes:
              - name: answer_others
                match: {{prefix: "/strict"}}
                route: {{cluster: backend}}
                typed_per_filter_config:
                  envoy.filters.http.cors:
                    {POLICY}
                    forward_not_matching_preflights: false
                    allow_methods: "*"
                    allow_headers: "*"
                    allow_private_network_access: true
              - name: disabled
                match: {{prefix: "/off"}}
                route: {{cluster: backend}}
                typed_per_filter_config:
                  envoy.filters.http.cors:
                    {POLICY}
                    allow_origin_string_match: [{{exact: "https://a.example"}}]
                    filter_enabled: {{default_value: {{numerator: 0}}}}
                    shadow_enabled: {{default_value: {{numerator: 100}}}}
              - name: direct
                match: {{prefix: "/direct"}}
                direct_response: {{status: 200, body: {{inline_string: "direct"}}}}
              - name: any
                match: {{prefix: "/"}}
                route: {{cluster: backend}}
            - name: legacy
              domains: ["legacy.test"]
              cors:
                allow_origin_string_match: [{{safe_regex: {{regex: "https://.*[.]legacy[.]test"}}}}]
                allow_methods: PUT
                expose_headers: x-legacy
              routes:
              - name: legacy
                match: {{prefix: "/"}}
                route: {{cluster: backend}}
"#
    )
}

fn listener() -> String {
    cases::hcm_listener(
        "cors",
        &format!("{}{}", cases::access_log(), hcm()),
        r#"          - name: envoy.filters.http.cors
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors
"#,
    )
}

fn case(id: &str, method: &str, host: &str, path: &str, headers: &[(&str, &str)]) -> HttpCase {
    HttpCase::new(
        format!("cors/{id}"),
        "cors",
        req(id, method, host, path, headers),
    )
}

fn all_cases() -> Vec<HttpCase> {
    let a = ("origin", "https://a.example");
    let sub = ("origin", "https://x.b.example");
    let other = ("origin", "https://evil.example");
    let put = ("access-control-request-method", "PUT");
    let h = "cors.test";
    vec![
        case("preflight_allowed", "OPTIONS", h, "/", &[a, put]),
        case("preflight_suffix_match", "OPTIONS", h, "/", &[sub, put]),
        case(
            "preflight_other_forwarded",
            "OPTIONS",
            h,
            "/",
            &[other, put],
        ),
        case("options_without_method", "OPTIONS", h, "/", &[a]),
        case("simple_allowed", "GET", h, "/", &[a]),
        case("simple_other", "GET", h, "/", &[other]),
        case("no_origin", "GET", h, "/", &[]),
        case("empty_origin", "GET", h, "/", &[("origin", "")]),
        case(
            "strict_other_answered",
            "OPTIONS",
            h,
            "/strict",
            &[other, put],
        ),
        case(
            "strict_star_echoes",
            "OPTIONS",
            h,
            "/strict",
            &[
                a,
                put,
                ("access-control-request-headers", "x-c"),
                ("access-control-request-private-network", "true"),
            ],
        ),
        case("disabled_shadow", "OPTIONS", h, "/off", &[a, put]),
        case("direct_route", "OPTIONS", h, "/direct", &[a, put]),
        case(
            "legacy_preflight",
            "OPTIONS",
            "legacy.test",
            "/",
            &[("origin", "https://w.legacy.test"), put],
        ),
        case(
            "legacy_simple",
            "GET",
            "legacy.test",
            "/",
            &[("origin", "https://w.legacy.test")],
        ),
    ]
}

pub async fn run(envoy: &Path, filter: Option<&str>) -> Vec<CaseResult> {
    let all = all_cases();
    if !cases::any_wanted(&all, filter) {
        return Vec::new();
    }
    let backend = upstream("backend").await;
    let pair = Pair::start(
        envoy,
        &bootstrap(&listener(), &cluster("backend", &[backend.addr], "")),
    )
    .await;
    // Every case runs, so that the stats compare whatever the filter.
    let mut results = cases::run_all_report("cors", &pair, all, filter).await;
    let mut stats = crate::local_ratelimit::stats(&pair, "cors/stats", &["http.cors.cors."]).await;
    stats.group = "cors";
    results.push(stats);
    results
}
