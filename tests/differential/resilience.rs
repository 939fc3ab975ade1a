//! Retries, circuit breakers and outlier detection against scripted upstreams (a status, a
//! reset, a late answer, a refused connection, per request). One bootstrap: a cluster and a
//! virtual host per case (domain = the case's name with `/` → `.`). Each case plays its
//! requests on Envoy, then (the script loaded again) on remora, and compares the responses,
//! what the upstreams saw (in order, with the `x-envoy-*` headers), the cluster's retry,
//! overflow and outlier stats, for outlier cases the `/clusters` host lines, and each
//! request's access-log line.
//!
//! What would race is made sequential: a request that must find another one in flight starts
//! once the upstreams have seen that one; requests that cannot reach an upstream (queued in a
//! pool) start after a pause.

use crate::CaseResult;
use crate::compare::{diff, observe};
use crate::oracle::{Pair, Side};
use crate::scripted::{Act, Board, server};
use crate::support::{bootstrap, http_listener, raw_exchange};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// Where a cluster's endpoint points: one of the scripted servers `a`, `b`, `c`, or a port
/// nothing listens on.
#[derive(Clone, Copy)]
enum Host {
    A,
    B,
    C,
    Closed,
}

/// When a request starts.
#[derive(Clone, Copy)]
enum Start {
    /// After every earlier request was answered.
    Sequential,
    /// Once the upstreams saw this many requests of the case (earlier ones still in flight).
    AfterSeen(usize),
    /// This many milliseconds after the previous request started.
    AfterMs(u64),
}

#[derive(Clone, Copy)]
struct Req {
    headers: &'static [(&'static str, &'static str)],
    body: &'static str,
    start: Start,
}

const GET: Req = Req {
    headers: &[],
    body: "",
    start: Start::Sequential,
};

const fn with(headers: &'static [(&'static str, &'static str)]) -> Req {
    Req {
        headers,
        body: "",
        start: Start::Sequential,
    }
}

const fn at(start: Start) -> Req {
    Req {
        headers: &[],
        body: "",
        start,
    }
}

struct RCase {
    /// The id without the group.
    name: &'static str,
    /// RouteAction entries after `cluster` (YAML flow mapping entries).
    route: &'static str,
    /// Route entries after `route` (YAML flow mapping entries).
    route_extra: &'static str,
    /// Cluster lines (indented 4) before `load_assignment`.
    cluster: &'static str,
    /// Endpoints per priority.
    hosts: &'static [&'static [Host]],
    acts: &'static [Act],
    then: Act,
    requests: Vec<Req>,
    /// Which host gets which attempt is random (RANDOM balancer): hosts are compared as a
    /// sorted list, apart from the rest of what the upstreams saw.
    unordered_hosts: bool,
    /// The virtual host's `include_attempt_count_in_response` (few cases: remora does not put
    /// the header on local replies, a difference of its own case).
    attempt_in_response: bool,
}

fn rc(
    name: &'static str,
    route: &'static str,
    acts: &'static [Act],
    then: Act,
    requests: Vec<Req>,
) -> RCase {
    RCase {
        name,
        route,
        route_extra: "",
        cluster: "",
        hosts: &[&[Host::A]],
        acts,
        then,
        requests,
        unordered_hosts: false,
        attempt_in_response: false,
    }
}

const S503: Act = Act::Status(503, "");

fn cases() -> Vec<RCase> {
    let mut c = retries();
    c.extend(circuit_breakers());
    c.extend(outlier());
    c
}

fn retries() -> Vec<RCase> {
    vec![
        rc(
            "retry/5xx_then_ok",
            "retry_policy: {retry_on: 5xx, num_retries: 2}",
            &[S503],
            Act::Ok,
            vec![GET],
        ),
        RCase {
            attempt_in_response: true,
            ..rc(
                "retry/attempt_count_in_response",
                "retry_policy: {retry_on: 5xx, num_retries: 2}",
                &[S503],
                Act::Ok,
                vec![GET],
            )
        },
        RCase {
            attempt_in_response: true,
            hosts: &[&[Host::Closed]],
            ..rc(
                "retry/attempt_count_in_local_reply",
                "retry_policy: {retry_on: connect-failure, num_retries: 1}",
                &[],
                Act::Ok,
                vec![GET],
            )
        },
        rc(
            EXPECTED_TIMEOUT_CASE,
            "retry_policy: {retry_on: 5xx, num_retries: 1}",
            // The first attempt takes 30 ms, so what remains of the route timeout at the retry
            // is less than the first attempt's value in both proxies.
            &[Act::Late(30, 503)],
            Act::Ok,
            vec![GET],
        ),
        rc(
            "retry/5xx_exhausted",
            "retry_policy: {retry_on: 5xx, num_retries: 2}",
            &[],
            S503,
            vec![GET],
        ),
        rc(
            "retry/5xx_not_on_4xx",
            "retry_policy: {retry_on: 5xx, num_retries: 2}",
            &[Act::Status(404, "")],
            Act::Ok,
            vec![GET],
        ),
        rc(
            "retry/gateway_error_502",
            "retry_policy: {retry_on: gateway-error, num_retries: 2}",
            &[Act::Status(502, ""), Act::Status(504, "")],
            Act::Ok,
            vec![GET],
        ),
        rc(
            "retry/gateway_error_not_500",
            "retry_policy: {retry_on: gateway-error, num_retries: 2}",
            &[Act::Status(500, "")],
            Act::Ok,
            vec![GET],
        ),
        rc(
            "retry/reset",
            "retry_policy: {retry_on: reset, num_retries: 2}",
            &[Act::Reset],
            Act::Ok,
            vec![GET],
        ),
        rc(
            "retry/reset_exhausted",
            "retry_policy: {retry_on: reset, num_retries: 1}",
            &[],
            Act::Reset,
            vec![GET],
        ),
        rc(
            "retry/5xx_on_reset",
            "retry_policy: {retry_on: 5xx, num_retries: 2}",
            &[Act::Reset],
            Act::Ok,
            vec![GET],
        ),
        RCase {
            hosts: &[&[Host::Closed]],
            ..rc(
                "retry/connect_failure",
                "retry_policy: {retry_on: connect-failure, num_retries: 2}",
                &[],
                Act::Ok,
                vec![GET],
            )
        },
        RCase {
            hosts: &[&[Host::Closed]],
            ..rc(
                "retry/connect_failure_not_retried",
                "retry_policy: {retry_on: retriable-4xx, num_retries: 2}",
                &[],
                Act::Ok,
                vec![GET],
            )
        },
        rc(
            "retry/retriable_4xx_409",
            "retry_policy: {retry_on: retriable-4xx, num_retries: 2}",
            &[Act::Status(409, "")],
            Act::Ok,
            vec![GET],
        ),
        rc(
            "retry/retriable_4xx_not_404",
            "retry_policy: {retry_on: retriable-4xx, num_retries: 2}",
            &[Act::Status(404, "")],
            Act::Ok,
            vec![GET],
        ),
        rc(
            "retry/retriable_status_codes",
            "retry_policy: {retry_on: retriable-status-codes, retriable_status_codes: [418], num_retries: 2}",
            &[Act::Status(418, ""), Act::Status(418, "")],
            Act::Ok,
            vec![GET],
        ),
        rc(
            "retry/retriable_headers",
            "retry_policy: {retry_on: retriable-headers, retriable_headers: [{name: x-retry-me, string_match: {exact: \"yes\"}}], num_retries: 2}",
            &[Act::Status(200, "x-retry-me: yes\r\n")],
            Act::Ok,
            vec![GET],
        ),
        rc(
            "retry/header_retry_on",
            "timeout: 5s",
            &[S503],
            Act::Ok,
            vec![with(&[("x-envoy-retry-on", "5xx")])],
        ),
        rc(
            "retry/header_retry_on_unknown",
            "timeout: 5s",
            &[S503],
            Act::Ok,
            vec![with(&[("x-envoy-retry-on", "nonsense")])],
        ),
        rc(
            "retry/header_retry_grpc_on",
            "timeout: 5s",
            &[Act::Status(
                200,
                "content-type: application/grpc\r\ngrpc-status: 14\r\n",
            )],
            Act::Ok,
            vec![with(&[
                ("x-envoy-retry-grpc-on", "unavailable"),
                ("content-type", "application/grpc"),
            ])],
        ),
        rc(
            "retry/header_max_retries",
            "retry_policy: {retry_on: 5xx, num_retries: 5}",
            &[],
            S503,
            vec![with(&[("x-envoy-max-retries", "1")])],
        ),
        rc(
            "retry/header_max_retries_without_policy",
            "timeout: 5s",
            &[],
            S503,
            vec![with(&[
                ("x-envoy-retry-on", "5xx"),
                ("x-envoy-max-retries", "2"),
            ])],
        ),
        rc(
            "retry/header_per_try_timeout",
            "retry_policy: {retry_on: 5xx, num_retries: 1}",
            &[Act::Late(1500, 200)],
            Act::Ok,
            vec![with(&[("x-envoy-upstream-rq-per-try-timeout-ms", "200")])],
        ),
        rc(
            "retry/per_try_timeout",
            "retry_policy: {retry_on: 5xx, num_retries: 2, per_try_timeout: 0.2s}",
            &[Act::Late(1500, 200)],
            Act::Ok,
            vec![GET],
        ),
        rc(
            "retry/per_try_timeout_exhausted",
            "retry_policy: {retry_on: 5xx, num_retries: 1, per_try_timeout: 0.2s}",
            &[],
            Act::Late(1500, 200),
            vec![GET],
        ),
        rc(
            "retry/per_try_timeout_not_retriable",
            "retry_policy: {retry_on: retriable-4xx, num_retries: 1, per_try_timeout: 0.2s}",
            &[],
            Act::Late(1500, 200),
            vec![GET],
        ),
        RCase {
            hosts: &[&[Host::A, Host::B, Host::C]],
            cluster: "    lb_policy: RANDOM\n",
            unordered_hosts: true,
            ..rc(
                "retry/previous_hosts_3",
                const_format_previous_hosts_3(),
                &[],
                S503,
                vec![GET],
            )
        },
        RCase {
            hosts: &[&[Host::A, Host::B]],
            cluster: "    lb_policy: RANDOM\n",
            unordered_hosts: true,
            ..rc(
                "retry/previous_hosts_2_then_ok",
                const_format_previous_hosts_2(),
                &[S503],
                Act::Ok,
                vec![GET],
            )
        },
        rc(
            "retry/retriable_request_headers_match",
            "retry_policy: {retry_on: 5xx, num_retries: 1, retriable_request_headers: [{name: x-retryable, string_match: {exact: \"yes\"}}]}",
            &[S503],
            Act::Ok,
            vec![with(&[("x-retryable", "yes")])],
        ),
        rc(
            "retry/retriable_request_headers_no_match",
            "retry_policy: {retry_on: 5xx, num_retries: 1, retriable_request_headers: [{name: x-retryable, string_match: {exact: \"yes\"}}]}",
            &[S503],
            Act::Ok,
            vec![GET],
        ),
        rc(
            "retry/envoy_ratelimited",
            "retry_policy: {retry_on: envoy-ratelimited, num_retries: 1}",
            &[Act::Status(429, "x-envoy-ratelimited: true\r\n")],
            Act::Ok,
            vec![GET],
        ),
        rc(
            "retry/envoy_ratelimited_without_header",
            "retry_policy: {retry_on: envoy-ratelimited, num_retries: 1}",
            &[Act::Status(429, "")],
            Act::Ok,
            vec![GET],
        ),
        rc(
            "retry/header_retriable_status_codes",
            "timeout: 5s",
            &[Act::Status(418, "")],
            Act::Ok,
            vec![with(&[
                ("x-envoy-retry-on", "retriable-status-codes"),
                ("x-envoy-retriable-status-codes", "418,419"),
            ])],
        ),
        rc(
            "retry/header_retriable_header_names",
            "timeout: 5s",
            &[Act::Status(500, "x-please-retry: 1\r\n")],
            Act::Ok,
            vec![with(&[
                ("x-envoy-retry-on", "retriable-headers"),
                ("x-envoy-retriable-header-names", "x-please-retry"),
            ])],
        ),
        rc(
            "retry/header_retry_on_list",
            "timeout: 5s",
            &[Act::Status(409, ""), Act::Status(502, "")],
            Act::Ok,
            vec![with(&[
                ("x-envoy-retry-on", "retriable-4xx,gateway-error"),
                ("x-envoy-max-retries", "3"),
            ])],
        ),
        RCase {
            cluster: "    circuit_breakers: {thresholds: [{retry_budget: {budget_percent: {value: 0}, min_retry_concurrency: 0}}]}\n",
            ..rc(
                "retry/retry_budget_empty",
                "retry_policy: {retry_on: 5xx, num_retries: 2}",
                &[S503],
                Act::Ok,
                vec![GET],
            )
        },
        RCase {
            cluster: "    circuit_breakers: {thresholds: [{retry_budget: {budget_percent: {value: 0}, min_retry_concurrency: 1}}]}\n",
            ..rc(
                "retry/retry_budget_min_concurrency",
                "retry_policy: {retry_on: 5xx, num_retries: 2}",
                &[S503],
                Act::Ok,
                vec![GET],
            )
        },
        RCase {
            route_extra: "per_request_buffer_limit_bytes: 4",
            ..rc(
                "retry/buffer_limit_abandoned",
                "retry_policy: {retry_on: 5xx, num_retries: 2}",
                &[S503],
                Act::Ok,
                vec![Req {
                    headers: &[],
                    body: "0123456789abcdef",
                    start: Start::Sequential,
                }],
            )
        },
        rc(
            "retry/post_body_replayed",
            "retry_policy: {retry_on: 5xx, num_retries: 2}",
            &[S503],
            Act::Ok,
            vec![Req {
                headers: &[],
                body: "0123456789abcdef",
                start: Start::Sequential,
            }],
        ),
    ]
}

const fn const_format_previous_hosts_3() -> &'static str {
    "retry_policy: {retry_on: 5xx, num_retries: 2, retry_host_predicate: [{name: envoy.retry_host_predicates.previous_hosts, typed_config: {\"@type\": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate}}], host_selection_retry_max_attempts: 100}"
}

const fn const_format_previous_hosts_2() -> &'static str {
    "retry_policy: {retry_on: 5xx, num_retries: 1, retry_host_predicate: [{name: envoy.retry_host_predicates.previous_hosts, typed_config: {\"@type\": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate}}], host_selection_retry_max_attempts: 100}"
}

fn circuit_breakers() -> Vec<RCase> {
    const HOLD: Act = Act::Late(1000, 200);
    vec![
        RCase {
            cluster: "    circuit_breakers: {thresholds: [{max_retries: 0}]}\n",
            ..rc(
                "circuit_breaker/max_retries_0",
                "retry_policy: {retry_on: 5xx, num_retries: 2}",
                &[],
                S503,
                vec![GET],
            )
        },
        RCase {
            cluster: "    circuit_breakers: {thresholds: [{max_retries: 1}]}\n",
            ..rc(
                "circuit_breaker/max_retries_1_concurrent",
                "retry_policy: {retry_on: 5xx, num_retries: 1}",
                &[S503, HOLD, S503],
                Act::Ok,
                vec![GET, at(Start::AfterSeen(2))],
            )
        },
        RCase {
            cluster: "    circuit_breakers: {thresholds: [{max_requests: 1}]}\n",
            ..rc(
                "circuit_breaker/max_requests_1",
                "timeout: 5s",
                &[HOLD],
                Act::Ok,
                vec![GET, at(Start::AfterSeen(1))],
            )
        },
        RCase {
            cluster: "    circuit_breakers: {thresholds: [{max_requests: 1}]}\n",
            ..rc(
                "circuit_breaker/max_requests_1_retry",
                "retry_policy: {retry_on: 5xx, num_retries: 1}",
                &[HOLD],
                Act::Ok,
                vec![GET, at(Start::AfterSeen(1))],
            )
        },
        RCase {
            cluster: "    circuit_breakers: {thresholds: [{max_connections: 1}]}\n",
            ..rc(
                "circuit_breaker/max_connections_1",
                "timeout: 5s",
                &[HOLD],
                Act::Ok,
                vec![GET, at(Start::AfterSeen(1))],
            )
        },
        RCase {
            cluster: "    circuit_breakers: {thresholds: [{max_connections: 1, max_pending_requests: 1}]}\n",
            ..rc(
                "circuit_breaker/max_pending_1",
                "timeout: 5s",
                &[HOLD],
                Act::Ok,
                vec![GET, at(Start::AfterSeen(1)), at(Start::AfterMs(300))],
            )
        },
        RCase {
            cluster: "    circuit_breakers: {thresholds: [{max_pending_requests: 0}]}\n",
            ..rc(
                "circuit_breaker/max_pending_0",
                "timeout: 5s",
                &[],
                Act::Ok,
                vec![GET],
            )
        },
    ]
}

/// Outlier cases: the host `a` alone at priority 0 (gets every request while healthy), `b` at
/// priority 1 (gets them once `a` is ejected).
fn outlier() -> Vec<RCase> {
    const P0_P1: &[&[Host]] = &[&[Host::A], &[Host::B]];
    // Five seconds' timeout, the hosts above, `cluster` the cluster's `outlier_detection`, `n`
    // GETs; each answered `acts`, then 200s.
    let outlier_case =
        |name: &'static str, cluster: &'static str, acts: &'static [Act], n: usize| RCase {
            hosts: P0_P1,
            cluster,
            ..rc(name, "timeout: 5s", acts, Act::Ok, vec![GET; n])
        };
    vec![
        outlier_case(
            "outlier/consecutive_5xx",
            "    outlier_detection: {consecutive_5xx: 3, interval: 60s, base_ejection_time: 60s, max_ejection_percent: 100}\n",
            &[S503, S503, S503],
            5,
        ),
        outlier_case(
            "outlier/consecutive_5xx_interrupted",
            "    outlier_detection: {consecutive_5xx: 3, interval: 60s, base_ejection_time: 60s, max_ejection_percent: 100}\n",
            &[S503, S503, Act::Ok, S503, S503],
            5,
        ),
        outlier_case(
            "outlier/consecutive_gateway_failure",
            "    outlier_detection: {consecutive_5xx: 50, consecutive_gateway_failure: 2, enforcing_consecutive_gateway_failure: 100, interval: 60s, base_ejection_time: 60s, max_ejection_percent: 100}\n",
            &[Act::Status(502, ""), Act::Status(504, "")],
            5,
        ),
        outlier_case(
            "outlier/gateway_failure_not_enforced",
            "    outlier_detection: {consecutive_5xx: 50, consecutive_gateway_failure: 2, interval: 60s, base_ejection_time: 60s, max_ejection_percent: 100}\n",
            &[Act::Status(502, ""), Act::Status(504, "")],
            5,
        ),
        outlier_case(
            "outlier/consecutive_5xx_not_enforced",
            "    outlier_detection: {consecutive_5xx: 2, enforcing_consecutive_5xx: 0, interval: 60s, base_ejection_time: 60s, max_ejection_percent: 100}\n",
            &[S503, S503, S503],
            5,
        ),
        outlier_case(
            "outlier/not_enforced_detects_again",
            "    outlier_detection: {consecutive_5xx: 2, enforcing_consecutive_5xx: 0, interval: 60s, base_ejection_time: 60s, max_ejection_percent: 100}\n",
            &[S503, S503, S503, S503],
            5,
        ),
        outlier_case(
            "outlier/max_ejection_percent_overflow",
            "    outlier_detection: {consecutive_5xx: 2, interval: 60s, base_ejection_time: 60s, max_ejection_percent: 10}\n",
            &[S503, S503, S503],
            4,
        ),
        outlier_case(
            "outlier/always_eject_one_host",
            "    outlier_detection: {consecutive_5xx: 2, interval: 60s, base_ejection_time: 60s, max_ejection_percent: 10, always_eject_one_host: true}\n",
            &[S503, S503],
            4,
        ),
        outlier_case(
            "outlier/reset_counts_as_5xx",
            "    outlier_detection: {consecutive_5xx: 2, interval: 60s, base_ejection_time: 60s, max_ejection_percent: 100}\n",
            &[Act::Reset, Act::Reset],
            5,
        ),
        RCase {
            hosts: &[&[Host::Closed], &[Host::B]],
            cluster: "    outlier_detection: {consecutive_5xx: 2, interval: 60s, base_ejection_time: 60s, max_ejection_percent: 100}\n",
            ..rc(
                "outlier/connect_refused_counts_as_5xx",
                "timeout: 5s",
                &[],
                Act::Ok,
                vec![GET; 5],
            )
        },
        RCase {
            hosts: &[&[Host::Closed], &[Host::B]],
            cluster: "    outlier_detection: {split_external_local_origin_errors: true, consecutive_local_origin_failure: 2, consecutive_5xx: 50, interval: 60s, base_ejection_time: 60s, max_ejection_percent: 100}\n",
            ..rc(
                "outlier/local_origin_split",
                "timeout: 5s",
                &[],
                Act::Ok,
                vec![GET; 5],
            )
        },
        outlier_case(
            "outlier/split_5xx_still_ejects",
            "    outlier_detection: {split_external_local_origin_errors: true, consecutive_5xx: 2, interval: 60s, base_ejection_time: 60s, max_ejection_percent: 100}\n",
            &[S503, S503],
            5,
        ),
        RCase {
            hosts: P0_P1,
            cluster: "    outlier_detection: {consecutive_5xx: 2, interval: 60s, base_ejection_time: 60s, max_ejection_percent: 100}\n",
            ..rc(
                "outlier/retry_after_ejection",
                "retry_policy: {retry_on: 5xx, num_retries: 2}",
                &[S503, S503],
                Act::Ok,
                vec![GET, GET],
            )
        },
    ]
}

const OUTLIER_STATS: &[&str] = &[
    "outlier_detection.ejections_active",
    "outlier_detection.ejections_enforced_total",
    "outlier_detection.ejections_overflow",
    "outlier_detection.ejections_total",
    "outlier_detection.ejections_consecutive_5xx",
    "outlier_detection.ejections_detected_consecutive_5xx",
    "outlier_detection.ejections_enforced_consecutive_5xx",
    "outlier_detection.ejections_detected_consecutive_gateway_failure",
    "outlier_detection.ejections_enforced_consecutive_gateway_failure",
    "outlier_detection.ejections_detected_consecutive_local_origin_failure",
    "outlier_detection.ejections_enforced_consecutive_local_origin_failure",
];

const STATS: &[&str] = &[
    "upstream_rq_total",
    "upstream_rq_2xx",
    "upstream_rq_5xx",
    "upstream_rq_retry",
    "upstream_rq_retry_success",
    "upstream_rq_retry_overflow",
    "upstream_rq_retry_limit_exceeded",
    "retry_or_shadow_abandoned",
    "upstream_rq_per_try_timeout",
    "upstream_rq_timeout",
    "upstream_rq_rx_reset",
    "upstream_cx_overflow",
    "upstream_rq_pending_overflow",
    "upstream_cx_connect_fail",
];

/// `/clusters` host lines compared for outlier cases.
const HOST_LINES: &[&str] = &[
    "::health_flags::",
    "::priority::",
    "::rq_total::",
    "::rq_error::",
    "::rq_success::",
    "::cx_connect_fail::",
];

const ACCESS_LOG_FORMAT: &str = "[%REQ(X-CASE)%] %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %UPSTREAM_REQUEST_ATTEMPT_COUNT% %UPSTREAM_HOST% %UPSTREAM_CLUSTER% %BYTES_SENT% %UPSTREAM_TRANSPORT_FAILURE_REASON%";

/// The access log, and the client (on 127.0.0.1) trusted as internal: Envoy honours
/// `x-envoy-retry-on` and the like only on internal requests.
fn hcm_extra() -> String {
    format!(
        r#"          use_remote_address: true
          internal_address_config: {{cidr_ranges: [{{address_prefix: 127.0.0.1, prefix_len: 32}}]}}
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: RUN_DIR/access.log
              log_format:
                text_format_source:
                  inline_string: "{ACCESS_LOG_FORMAT}\n"
"#
    )
}

fn domain(name: &str) -> String {
    name.replace('/', ".")
}

fn virtual_host(c: &RCase) -> String {
    let d = domain(c.name);
    let extra = if c.route_extra.is_empty() {
        String::new()
    } else {
        format!(", {}", c.route_extra)
    };
    format!(
        "            - name: {d}\n              domains: [\"{d}\"]\n              include_request_attempt_count: true\n              include_attempt_count_in_response: {}\n              routes:\n              - {{match: {{prefix: \"/\"}}, route: {{cluster: {d}, {}}}{extra}}}\n",
        c.attempt_in_response, c.route
    )
}

fn cluster_yaml(c: &RCase, addr: &impl Fn(Host) -> SocketAddr) -> String {
    let d = domain(c.name);
    let mut eps = String::new();
    for (p, hosts) in c.hosts.iter().enumerate() {
        eps.push_str(&format!("      - priority: {p}\n        lb_endpoints:\n"));
        for h in *hosts {
            let a = addr(*h);
            eps.push_str(&format!(
                "        - endpoint: {{address: {{socket_address: {{address: {}, port_value: {}}}}}}}\n",
                a.ip(),
                a.port()
            ));
        }
    }
    format!(
        "  - name: {d}\n    type: STATIC\n    connect_timeout: 1s\n{}    load_assignment:\n      cluster_name: {d}\n      endpoints:\n{eps}",
        c.cluster
    )
}

pub async fn run(envoy: &Path, filter: Option<&str>) -> Vec<CaseResult> {
    let cases: Vec<RCase> = cases()
        .into_iter()
        .filter(|c| filter.is_none_or(|f| format!("resilience/{}", c.name).contains(f)))
        .collect();
    if cases.is_empty() {
        return Vec::new();
    }
    let board = Board::default();
    let (a, _ta) = server("a", board.clone()).await;
    let (b, _tb) = server("b", board.clone()).await;
    let (cc, _tc) = server("c", board.clone()).await;
    let closed = crate::cases::refused();
    let names: HashMap<SocketAddr, &str> =
        [(a, "a"), (b, "b"), (cc, "c"), (closed, "closed")].into();
    let addr = |h: Host| match h {
        Host::A => a,
        Host::B => b,
        Host::C => cc,
        Host::Closed => closed,
    };
    let vhosts: String = cases.iter().map(virtual_host).collect();
    let clusters: String = cases.iter().map(|c| cluster_yaml(c, &addr)).collect();
    let listeners = http_listener("in", &hcm_extra(), &vhosts);
    let pair = Pair::start(envoy, &bootstrap(&listeners, &clusters)).await;
    let mut results = Vec::new();
    for c in &cases {
        let mut seen = Vec::new();
        for side in Side::BOTH {
            seen.push(play(&pair, side, &board, c, &names).await);
        }
        results.push(CaseResult {
            group: "resilience",
            id: format!("resilience/{}", c.name),
            diff: diff(&seen[0], &seen[1]),
        });
    }
    compare_logs(&pair, &cases, &names, &mut results).await;
    results
}

/// One case on one proxy: everything compared, as text.
async fn play(
    pair: &Pair,
    side: Side,
    board: &Board,
    c: &RCase,
    names: &HashMap<SocketAddr, &str>,
) -> String {
    board.load(c.name, c.acts, c.then.clone());
    let addr = pair.get(side).addr("in");
    let mut pending: Vec<Option<tokio::task::JoinHandle<Vec<u8>>>> = Vec::new();
    let mut answers: Vec<Vec<u8>> = vec![Vec::new(); c.requests.len()];
    for (i, r) in c.requests.iter().enumerate() {
        match r.start {
            Start::Sequential => {
                for (j, p) in pending.iter_mut().enumerate() {
                    if let Some(h) = p.take() {
                        answers[j] = h.await.unwrap_or_default();
                    }
                }
                // Envoy hands a consecutive-error detection to its main thread, which resets the
                // host's counter there: a request sent before that counts on, so the number of
                // detections depended on timing (1 or 2 in outlier/not_enforced_detects_again).
                if i > 0 && c.name.starts_with("outlier/") {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            Start::AfterSeen(n) => board.wait_seen(c.name, n).await,
            Start::AfterMs(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
        }
        let bytes = request(c, i, r);
        pending.push(Some(tokio::spawn(async move {
            raw_exchange(addr, &bytes, Duration::from_secs(4))
                .await
                .unwrap_or_else(|e| format!("<connect error {e}>").into_bytes())
        })));
    }
    for (j, p) in pending.iter_mut().enumerate() {
        if let Some(h) = p.take() {
            answers[j] = h.await.unwrap_or_default();
        }
    }
    // Stats are written when a stream ends; an abandoned attempt may end just after.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut out = String::new();
    for (i, a) in answers.iter().enumerate() {
        out.push_str(&format!("--- response {i}\n{}\n", observe(a).text));
    }
    out.push_str("--- upstreams saw\n");
    let seen = expected_timeouts(c.name, board.seen(c.name));
    if c.unordered_hosts {
        let mut hosts: Vec<&str> = seen
            .iter()
            .map(|s| s.split(':').next().unwrap_or(""))
            .collect();
        hosts.sort();
        out.push_str(&format!("hosts {hosts:?}\n"));
        for s in &seen {
            out.push_str(&format!("{}\n", s.split_once(": ").map_or("", |x| x.1)));
        }
    } else {
        for s in &seen {
            out.push_str(&format!("{s}\n"));
        }
    }
    out.push_str("--- stats\n");
    let proxy = pair.get(side);
    let stats = proxy.stats().await;
    let d = domain(c.name);
    let outlier = c.name.starts_with("outlier/");
    for s in STATS.iter().chain(OUTLIER_STATS.iter().filter(|_| outlier)) {
        let v = stats
            .get(&format!("cluster.{d}.{s}"))
            .map_or("<absent>".to_string(), |v| v.to_string());
        out.push_str(&format!("{s}: {v}\n"));
    }
    if outlier {
        out.push_str("--- /clusters\n");
        let body = proxy
            .admin_get("/clusters")
            .await
            .map(|x| x.1)
            .unwrap_or_default();
        let mut lines: Vec<String> = body
            .lines()
            .filter(|l| l.starts_with(&format!("{d}::")))
            .filter(|l| HOST_LINES.iter().any(|h| l.contains(h)) || l.contains("::outlier::"))
            .map(|l| hosts_named(l, names))
            .collect();
        lines.sort();
        for l in lines {
            out.push_str(&format!("{l}\n"));
        }
    }
    out
}

/// The case where `x-envoy-expected-rq-timeout-ms` on retries is compared (as the first
/// attempt's value, or less); elsewhere a retry's value is masked: Envoy sends what remains of
/// the route timeout, which depends on how long the earlier attempts took.
const EXPECTED_TIMEOUT_CASE: &str = "retry/expected_timeout_on_retry";

fn expected_timeouts(case: &str, seen: Vec<String>) -> Vec<String> {
    const KEY: &str = " x-envoy-expected-rq-timeout-ms=";
    let value = |s: &str| -> Option<u64> {
        let i = s.find(KEY)? + KEY.len();
        s[i..].split(' ').next()?.parse().ok()
    };
    let first = seen.first().and_then(|s| value(s));
    seen.into_iter()
        .map(|s| {
            let Some(v) = value(&s) else { return s };
            if s.contains(" x-envoy-attempt-count=1 ") {
                return s;
            }
            let shown = match first {
                _ if case != EXPECTED_TIMEOUT_CASE => "<remaining>".to_string(),
                Some(f) if v == f => "<the first attempt's>".to_string(),
                Some(f) if v < f => "<less than the first attempt's>".to_string(),
                _ => v.to_string(),
            };
            s.replace(&format!("{KEY}{v}"), &format!("{KEY}{shown}"))
        })
        .collect()
}

/// The request bytes: `x-case: <name>#<i>`, `connection: close`.
fn request(c: &RCase, i: usize, r: &Req) -> Vec<u8> {
    let method = if r.body.is_empty() { "GET" } else { "POST" };
    let mut s = format!(
        "{method} /r{i} HTTP/1.1\r\nhost: {}\r\nx-case: {}#{i}\r\n",
        domain(c.name),
        c.name
    );
    for (k, v) in r.headers {
        s.push_str(&format!("{k}: {v}\r\n"));
    }
    if !r.body.is_empty() {
        s.push_str(&format!("content-length: {}\r\n", r.body.len()));
    }
    s.push_str("connection: close\r\n\r\n");
    s.push_str(r.body);
    s.into_bytes()
}

/// Upstream addresses written as the scripted servers' names.
fn hosts_named(line: &str, names: &HashMap<SocketAddr, &str>) -> String {
    let mut l = line.to_string();
    for (a, n) in names {
        l = l.replace(&a.to_string(), n);
    }
    l
}

/// Each request's access-log line on both sides (by its `x-case`), appended to its case's
/// difference.
async fn compare_logs(
    pair: &Pair,
    cases: &[RCase],
    names: &HashMap<SocketAddr, &str>,
    results: &mut [CaseResult],
) {
    tokio::time::sleep(Duration::from_millis(600)).await;
    let lines = |side: Side| -> HashMap<String, String> {
        std::fs::read_to_string(pair.get(side).dir.path("access.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let id = l.strip_prefix('[')?.split_once(']')?.0.to_string();
                Some((id, hosts_named(l.trim_end(), names)))
            })
            .collect()
    };
    let (envoy, remora) = (lines(Side::Envoy), lines(Side::Remora));
    for (c, r) in cases.iter().zip(results.iter_mut()) {
        let none = String::from("<no access-log line>");
        let mut e = String::new();
        let mut m = String::new();
        for i in 0..c.requests.len() {
            let key = format!("{}#{i}", c.name);
            let mask = |l: &String| {
                if c.unordered_hosts {
                    ["a", "b", "c"]
                        .iter()
                        .fold(l.clone(), |l, h| l.replace(&format!(" {h} "), " <host> "))
                } else {
                    l.clone()
                }
            };
            e.push_str(&mask(envoy.get(&key).unwrap_or(&none)));
            e.push('\n');
            m.push_str(&mask(remora.get(&key).unwrap_or(&none)));
            m.push('\n');
        }
        if let Some(d) = diff(&e, &m) {
            let d = format!("access log: {d}");
            r.diff = Some(match r.diff.take() {
                Some(prev) => format!("{prev}\n{d}"),
                None => d,
            });
        }
    }
}
