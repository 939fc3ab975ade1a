//! Request mirroring (`request_mirror_policies`): per case, the response, what the primary
//! upstream got and what the mirror upstream got (the copy's method, path, headers sorted with
//! generated values masked, body) from Envoy and from remora; then the mirror clusters' stats.
//! Both proxies send to the same recording upstreams, so each case runs on Envoy, waits until
//! the copies settle, then on remora.

use crate::CaseResult;
use crate::cases;
use crate::compare::{diff, observe};
use crate::oracle::{Pair, Side};
use crate::support::{Behaviour, Recorded, Recorder, bootstrap, cluster, raw_exchange, recorder};
use std::path::Path;
use std::time::Duration;

const ROUTES: &str = r#"              - match: {prefix: "/hdr"}
                route: {cluster: primary, request_mirror_policies: [{cluster_header: x-mirror}]}
              - match: {prefix: "/lit"}
                route: {cluster: primary, request_mirror_policies: [{cluster: mirror, host_rewrite_literal: lit.example}]}
              - match: {prefix: "/vh"}
                route: {cluster: primary}
              - match: {prefix: "/refused"}
                route: {cluster: primary, request_mirror_policies: [{cluster: refused}]}
              - match: {prefix: "/never"}
                route: {cluster: primary, request_mirror_policies: [{cluster: mirror, runtime_fraction: {default_value: {numerator: 0}}}]}
              - match: {prefix: "/pertry"}
                route: {cluster: primary, timeout: 3s, retry_policy: {retry_on: 5xx, per_try_timeout: 1s}, request_mirror_policies: [{cluster: mirror}]}
              - match: {prefix: "/two"}
                route: {cluster: primary, request_mirror_policies: [{cluster: mirror}, {cluster: mirror, disable_shadow_host_suffix_append: true}]}
              - match: {prefix: "/"}
                route: {cluster: primary, timeout: 3s, request_mirror_policies: [{cluster: mirror}]}
                request_headers_to_add: [{header: {key: x-added, value: "%UPSTREAM_CLUSTER%"}}]"#;

fn listener() -> String {
    let hcm = format!(
        r#"          route_config:
            name: routes
            virtual_hosts:
            - name: all
              domains: ["*"]
              request_mirror_policies: [{{cluster: mirror, disable_shadow_host_suffix_append: true}}]
              routes:
{ROUTES}
"#
    );
    cases::hcm_listener("web", &hcm, "")
}

struct Case {
    id: &'static str,
    request: Vec<u8>,
}

fn get(id: &'static str, host: &str, path: &str, headers: &[(&str, &str)]) -> Case {
    Case {
        id,
        request: cases::req(id, "GET", host, path, headers),
    }
}

fn post(id: &'static str, path: &str, extra: &str, body: &str) -> Case {
    let request = format!(
        "POST {path} HTTP/1.1\r\nhost: post.test\r\nx-case: {id}\r\n{extra}connection: close\r\n\r\n{body}"
    );
    Case {
        id,
        request: request.into_bytes(),
    }
}

fn all_cases() -> Vec<Case> {
    vec![
        get(
            "suffix_before_port",
            "example.com:8080",
            "/a?q=1",
            &[("x-forwarded-for", "1.2.3.4")],
        ),
        get("suffix_no_port", "example.com", "/b", &[]),
        get("suffix_ipv6", "[::1]:8080", "/c", &[]),
        post(
            "post_body",
            "/post",
            "content-type: text/plain\r\ncontent-length: 10\r\n",
            "hello body",
        ),
        post(
            "chunked_body",
            "/chunked",
            "transfer-encoding: chunked\r\n",
            "5\r\nhello\r\n6\r\n chunk\r\n0\r\n\r\n",
        ),
        get("vhost_policy_keeps_host", "vh.test:80", "/vh", &[]),
        get("host_rewrite_literal", "x.test", "/lit", &[]),
        get(
            "cluster_header",
            "x.test",
            "/hdr",
            &[("x-mirror", "mirror")],
        ),
        get("cluster_header_absent", "x.test", "/hdr", &[]),
        get(
            "cluster_header_unknown",
            "x.test",
            "/hdr",
            &[("x-mirror", "nosuch")],
        ),
        get("refused_mirror", "x.test", "/refused", &[]),
        get("fraction_zero", "x.test", "/never", &[]),
        get("two_policies", "x.test", "/two", &[]),
        get("per_try_timeout", "x.test", "/pertry", &[]),
    ]
}

/// The stats both proxies must agree on after the cases.
const STATS: &[&str] = &[
    "cluster.mirror.upstream_rq_total",
    "cluster.mirror.upstream_rq_completed",
    "cluster.mirror.upstream_rq_2xx",
    "cluster.mirror.internal.upstream_rq_200",
    "cluster.mirror.external.upstream_rq_200",
    "cluster.primary.upstream_rq_total",
    "cluster.primary.external.upstream_rq_200",
    "cluster.primary.internal.upstream_rq_200",
    "cluster.refused.upstream_rq_total",
    "cluster.refused.upstream_cx_connect_fail",
    "cluster.refused.internal.upstream_rq_503",
    "cluster.refused.upstream_rq_completed",
    "cluster.primary.retry_or_shadow_abandoned",
    "http.web.rq_total",
    "http.async-client.rq_total",
    "http.async-client.no_cluster",
];

pub async fn run(envoy: &Path, filter: Option<&str>) -> Vec<CaseResult> {
    let wanted = |id: &str| filter.is_none_or(|f| format!("mirror/{id}").contains(f));
    let cases = all_cases();
    // The stats count every case: all run when any is wanted.
    if !wanted("stats") && !cases.iter().any(|c| wanted(c.id)) {
        return Vec::new();
    }
    let primary = recorder("primary", Behaviour::Answer).await;
    let mirror = recorder("mirror", Behaviour::Answer).await;
    let clusters = [
        cluster("primary", &[primary.addr], ""),
        cluster("mirror", &[mirror.addr], ""),
        cluster("refused", &[cases::refused()], ""),
    ]
    .concat();
    let pair = Pair::start(envoy, &bootstrap(&listener(), &clusters)).await;
    let mut results = Vec::new();
    for c in &cases {
        let mut seen = Vec::new();
        for side in Side::BOTH {
            seen.push(play(&pair, side, c, &primary, &mirror).await);
        }

        results.push(CaseResult {
            group: "mirror",
            id: format!("mirror/{}", c.id),
            diff: diff(&seen[0], &seen[1]),
        });
    }
    results.push(CaseResult {
        group: "mirror",
        id: "mirror/stats".into(),
        diff: compare_stats(&pair).await,
    });
    results.retain(|r| filter.is_none_or(|f| r.id.contains(f)));
    results
}

/// One case on one side: the response, then what the primary and the mirror got.
async fn play(pair: &Pair, side: Side, c: &Case, primary: &Recorder, mirror: &Recorder) -> String {
    let (p0, m0) = (primary.seen().len(), mirror.seen().len());
    let addr = pair.get(side).addr("web");
    let bytes = raw_exchange(addr, &c.request, Duration::from_secs(3))
        .await
        .unwrap_or_default();
    mirror.settled(Duration::from_millis(400)).await;
    let mut out = observe(&bytes).text;
    out.push_str("\n--- primary got\n");
    primary.seen()[p0..]
        .iter()
        .for_each(|r| out.push_str(&render(r)));
    out.push_str("--- mirror got\n");
    let mut copies: Vec<String> = mirror.seen()[m0..].iter().map(render).collect();
    // Two copies of one request race each other.
    copies.sort();
    copies.iter().for_each(|c| out.push_str(c));
    out
}

/// A request as an upstream got it: generated values masked, headers sorted.
fn render(r: &Recorded) -> String {
    let mut headers: Vec<String> = r
        .headers
        .iter()
        .map(|(k, v)| match k.as_str() {
            "x-request-id" => format!("{k}: <set>"),
            _ => format!("{k}: {v}"),
        })
        .collect();
    headers.sort();
    format!(
        "{} {}\n{}\n{}\n",
        r.method,
        r.path,
        headers.join("\n"),
        String::from_utf8_lossy(&r.body)
    )
}

async fn compare_stats(pair: &Pair) -> Option<String> {
    let mut texts = Vec::new();
    for side in Side::BOTH {
        let stats = pair.get(side).stats().await;
        let text: Vec<String> = STATS
            .iter()
            .map(|n| format!("{n}: {}", stats.get(*n).copied().unwrap_or(0)))
            .collect();
        texts.push(text.join("\n"));
    }
    diff(&texts[0], &texts[1])
}
