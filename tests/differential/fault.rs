//! `envoy.filters.http.fault`: header-controlled delays and aborts, fixed aborts restricted by
//! downstream node, request headers and upstream cluster, per-route overrides and a route
//! disabling the filter; responses and access-log lines (flags `DI`/`FI`, details
//! `fault_filter_abort`) compared.

use crate::CaseResult;
use crate::cases::{self, HttpCase, req};
use crate::oracle::Pair;
use crate::support::{bootstrap, cluster, upstream};
use std::path::Path;

const FILTER: &str = "envoy.filters.http.fault";

/// A listener whose chain is the fault filter (`fault`, YAML flow map) and the router.
fn listener(name: &str, fault: &str, routes: &str) -> String {
    let hcm = cases::access_log() + &cases::one_vhost(routes);
    let filter = format!(
        "          - name: {FILTER}\n            typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault, {fault}}}\n"
    );
    cases::hcm_listener(name, &hcm, &filter)
}

const HEADER_ROUTES: &str = r#"              - name: override
                match: {prefix: "/route"}
                route: {cluster: backend}
                typed_per_filter_config:
                  envoy.filters.http.fault: {"@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault, abort: {http_status: 401, percentage: {numerator: 100}}}
              - name: disabled_here
                match: {prefix: "/off"}
                route: {cluster: backend}
                typed_per_filter_config:
                  envoy.filters.http.fault: {"@type": type.googleapis.com/envoy.config.route.v3.FilterConfig, disabled: true}
              - {name: default, match: {prefix: "/"}, route: {cluster: backend}}"#;

const MATCH_ROUTES: &str = r#"              - {name: other, match: {prefix: "/other"}, route: {cluster: other}}
              - {name: default, match: {prefix: "/"}, route: {cluster: backend}}"#;

pub async fn run(envoy: &Path, filter: Option<&str>) -> Vec<CaseResult> {
    let cases = cases::filtered(all_cases(), filter);
    if cases.is_empty() {
        return Vec::new();
    }
    let backend = upstream("backend").await;
    let other = upstream("other").await;
    let listeners = [
        listener(
            "hdr",
            "delay: {header_delay: {}, percentage: {numerator: 100}}, abort: {header_abort: {}, percentage: {numerator: 100}}",
            HEADER_ROUTES,
        ),
        listener(
            "match",
            "abort: {http_status: 503, percentage: {numerator: 100}, response_body: custom}, downstream_nodes: [n1], headers: [{name: x-t, string_match: {exact: \"yes\"}}], upstream_cluster: backend",
            MATCH_ROUTES,
        ),
    ]
    .concat();
    let clusters = [
        cluster("backend", &[backend.addr], ""),
        cluster("other", &[other.addr], ""),
    ]
    .concat();
    let pair = Pair::start(envoy, &bootstrap(&listeners, &clusters)).await;
    cases::run("fault", &pair, cases).await
}

fn on(listener: &'static str, id: &str, path: &str, headers: &[(&str, &str)]) -> HttpCase {
    HttpCase::new(
        format!("fault/{id}"),
        listener,
        req(id, "GET", "fault.test", path, headers),
    )
}

fn all_cases() -> Vec<HttpCase> {
    let abort = "x-envoy-fault-abort-request";
    let delay = "x-envoy-fault-delay-request";
    let node = "x-envoy-downstream-service-node";
    vec![
        on("hdr", "none", "/", &[]),
        on("hdr", "abort_header", "/", &[(abort, "503")]),
        on("hdr", "abort_header_out_of_range", "/", &[(abort, "600")]),
        on("hdr", "abort_header_not_a_number", "/", &[(abort, "x")]),
        on(
            "hdr",
            "abort_percentage_zero",
            "/",
            &[
                (abort, "503"),
                ("x-envoy-fault-abort-request-percentage", "0"),
            ],
        ),
        on("hdr", "delay_header", "/", &[(delay, "200")]),
        on(
            "hdr",
            "delay_then_abort",
            "/",
            &[(delay, "200"), (abort, "429")],
        ),
        on(
            "hdr",
            "delay_percentage_zero",
            "/",
            &[
                (delay, "200"),
                ("x-envoy-fault-delay-request-percentage", "0"),
            ],
        ),
        on(
            "hdr",
            "grpc_abort_plain_request",
            "/",
            &[("x-envoy-fault-abort-grpc-request", "14")],
        ),
        on(
            "hdr",
            "grpc_abort_grpc_request",
            "/",
            &[
                ("x-envoy-fault-abort-grpc-request", "14"),
                ("content-type", "application/grpc"),
            ],
        ),
        on(
            "hdr",
            "http_abort_grpc_request",
            "/",
            &[(abort, "503"), ("content-type", "application/grpc")],
        ),
        on("hdr", "route_override", "/route", &[]),
        on("hdr", "route_disabled", "/off", &[(abort, "503")]),
        on("match", "match_all", "/", &[(node, "n1"), ("x-t", "yes")]),
        on(
            "match",
            "match_other_node",
            "/",
            &[(node, "n2"), ("x-t", "yes")],
        ),
        on("match", "match_no_node", "/", &[("x-t", "yes")]),
        on(
            "match",
            "match_header_differs",
            "/",
            &[(node, "n1"), ("x-t", "no")],
        ),
        on(
            "match",
            "match_other_cluster",
            "/other",
            &[(node, "n1"), ("x-t", "yes")],
        ),
    ]
}
