//! `envoy.filters.http.local_ratelimit`: the same requests in the same order to both proxies,
//! each with its own buckets (7 tokens an hour: none comes back during the run); the responses
//! (`x-ratelimit-reset` by presence: it moves with each proxy's timing), access-log lines and
//! the filter's stats are compared.

use crate::CaseResult;
use crate::cases::{self, HttpCase, req};
use crate::compare::diff;
use crate::oracle::{Pair, Side};
use crate::support::{bootstrap, cluster, raw_exchange, tcp_echo, upstream};
use std::path::Path;
use std::time::Duration;

/// The listener's routes (indented for the HCM).
const ROUTES: &str = r#"          route_config:
            name: routes
            virtual_hosts:
            - name: vh
              domains: ["*"]
              rate_limits:
              - actions: [{generic_key: {descriptor_value: from_vh}}]
              routes:
              - name: own
                match: {prefix: "/own"}
                route: {cluster: backend}
                typed_per_filter_config:
                  envoy.filters.http.local_ratelimit:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
                    stat_prefix: own_route
                    status: {code: ServiceUnavailable}
                    token_bucket: {max_tokens: 1, tokens_per_fill: 7, fill_interval: 3600s}
                    filter_enabled: {default_value: {numerator: 100}}
                    filter_enforced: {default_value: {numerator: 100}}
              - name: shadow
                match: {prefix: "/shadow"}
                route: {cluster: backend}
                typed_per_filter_config:
                  envoy.filters.http.local_ratelimit:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
                    stat_prefix: not_enforced
                    token_bucket: {max_tokens: 1, tokens_per_fill: 7, fill_interval: 3600s}
                    filter_enabled: {default_value: {numerator: 100}}
                    request_headers_to_add_when_not_enforced: [{header: {key: x-rl-would-limit, value: "yes"}}]
              - name: desc
                match: {prefix: "/desc"}
                route:
                  cluster: backend
                  rate_limits:
                  - actions: [{request_headers: {header_name: x-client, descriptor_key: client}}]
              - name: vh_desc
                match: {prefix: "/vh"}
                route: {cluster: backend}
              - name: direct
                match: {prefix: "/direct"}
                direct_response: {status: 200, body: {inline_string: "direct"}}
"#;

/// The HTTP filters before the router (indented for the HCM).
const FILTERS: &str = r#"          - name: envoy.filters.http.local_ratelimit
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
              stat_prefix: chain
              token_bucket: {max_tokens: 5, tokens_per_fill: 7, fill_interval: 3600s}
              filter_enabled: {runtime_key: rl_enabled, default_value: {numerator: 100, denominator: HUNDRED}}
              filter_enforced: {runtime_key: rl_enforced, default_value: {numerator: 100, denominator: HUNDRED}}
              enable_x_ratelimit_headers: DRAFT_VERSION_03
              response_headers_to_add:
              - append_action: OVERWRITE_IF_EXISTS_OR_ADD
                header: {key: x-local-rate-limit, value: "true"}
              descriptors:
              - entries: [{key: client, value: bad}]
                token_bucket: {max_tokens: 1, tokens_per_fill: 7, fill_interval: 3600s}
              - entries: [{key: generic_key, value: from_vh}]
                token_bucket: {max_tokens: 1, tokens_per_fill: 7, fill_interval: 3600s}
"#;

fn listener() -> String {
    cases::hcm_listener("rl", &format!("{}{ROUTES}", cases::access_log()), FILTERS)
}

fn get(id: &str, path: &str, headers: &[(&str, &str)]) -> HttpCase {
    HttpCase::new(
        format!("local_ratelimit/{id}"),
        "rl",
        req(id, "GET", "rl.test", path, headers),
    )
}

/// In order: each proxy's buckets see the same sequence.
fn all_cases() -> Vec<HttpCase> {
    let bad = [("x-client", "bad")];
    vec![
        get("own_first", "/own", &[]),
        get("own_limited_503", "/own", &[]),
        get("not_enforced_first", "/shadow", &[]),
        get("not_enforced_over", "/shadow", &[]),
        get("descriptor_first", "/desc", &bad),
        get("descriptor_limited", "/desc", &bad),
        get("descriptor_other_client", "/desc", &[("x-client", "good")]),
        get("vh_descriptor_first", "/vh", &[]),
        get("vh_descriptor_limited", "/vh", &[]),
        get("direct_counts", "/direct", &[]),
        get("default_bucket_last", "/desc", &[]),
        get("default_bucket_limited", "/desc", &[]),
        get("default_bucket_direct_limited", "/direct", &[]),
    ]
}

pub async fn run(envoy: &Path, filter: Option<&str>) -> Vec<CaseResult> {
    let mut results = http(envoy, filter).await;
    if filter.is_none_or(|f| "local_ratelimit/network".contains(f)) {
        results.push(network(envoy).await);
    }
    results
}

/// The HTTP filter's cases and its stats.
async fn http(envoy: &Path, filter: Option<&str>) -> Vec<CaseResult> {
    let all = all_cases();
    if !cases::any_wanted(&all, filter) {
        return Vec::new();
    }
    // The cases depend on the ones before them: a filtered run runs them all, reports its own.
    let backend = upstream("backend").await;
    let pair = Pair::start(
        envoy,
        &bootstrap(&listener(), &cluster("backend", &[backend.addr], "")),
    )
    .await;
    let mut results = cases::run_all_report("local_ratelimit", &pair, all, filter).await;
    if filter.is_none_or(|f| "local_ratelimit/stats".contains(f)) {
        results.push(
            stats(
                &pair,
                "local_ratelimit/stats",
                &["chain.", "own_route.", "not_enforced."],
            )
            .await,
        );
    }
    results
}

/// `envoy.filters.network.local_ratelimit` in front of tcp_proxy: one connection an hour; the
/// second is closed before a byte goes on. What each connection read, the filter's stat, and
/// tcp_proxy's access-log lines (the closed connection's flag is `URX`, as Envoy sets
/// `UpstreamRetryLimitExceeded` on the connection's stream info; its local close reason
/// `local_ratelimit_close_over_limit`, its termination details none).
async fn network(envoy: &Path) -> CaseResult {
    let (echo, _task) = tcp_echo().await;
    let listener = r#"  - name: tcp
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.local_ratelimit
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit
          stat_prefix: tcp_rl
          token_bucket: {max_tokens: 1, tokens_per_fill: 1, fill_interval: 3600s}
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: tcp
          cluster: echo
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: RUN_DIR/tcp.log
              log_format: {text_format_source: {inline_string: "%RESPONSE_FLAGS% %BYTES_RECEIVED% %UPSTREAM_CLUSTER% %DOWNSTREAM_LOCAL_CLOSE_REASON% %CONNECTION_TERMINATION_DETAILS%\n"}}
"#;
    let pair = Pair::start(envoy, &bootstrap(listener, &cluster("echo", &[echo], ""))).await;
    let mut seen = Vec::new();
    for side in Side::BOTH {
        let addr = pair.get(side).addr("tcp");
        let mut text = String::new();
        for i in 0..2 {
            let got = raw_exchange(addr, b"ping", Duration::from_millis(700))
                .await
                .unwrap_or_default();
            text.push_str(&format!(
                "connection {i}: {:?}\n",
                String::from_utf8_lossy(&got)
            ));
        }
        let r = pair.get(side);
        r.wait_stat("local_rate_limit.tcp_rl.rate_limited", 1).await;
        let n = r.stat("local_rate_limit.tcp_rl.rate_limited").await;
        text.push_str(&format!("rate_limited: {n}\n"));
        text.push_str(&log_lines(&r.dir.path("tcp.log"), 2).await);
        seen.push(text);
    }
    CaseResult {
        group: "local_ratelimit",
        id: "local_ratelimit/network".into(),
        diff: diff(&seen[0], &seen[1]).map(|d| format!("connections: {d}")),
    }
}

/// An access log's lines, sorted, once it has `want` of them (Envoy writes a closed
/// connection's line when its filters are destroyed, and flushes the file every second).
async fn log_lines(path: &Path, want: usize) -> String {
    let read = || {
        let mut lines: Vec<String> = std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect();
        lines.sort();
        lines
    };
    for _ in 0..100 {
        if read().len() >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    read().iter().map(|l| format!("log: {l}\n")).collect()
}

/// The stats under `prefixes`, names and values, on both sides.
pub async fn stats(pair: &Pair, id: &str, prefixes: &[&str]) -> CaseResult {
    let mut seen = Vec::new();
    for side in Side::BOTH {
        let all = pair.get(side).stats().await;
        let mut lines: Vec<String> = all
            .iter()
            .filter(|(k, _)| prefixes.iter().any(|p| k.starts_with(p)))
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        lines.sort();
        seen.push(lines.join("\n"));
    }
    CaseResult {
        group: "local_ratelimit",
        id: id.to_string(),
        diff: diff(&seen[0], &seen[1]).map(|d| format!("stats: {d}")),
    }
}
