//! Distributed tracing (`envoy.tracers.zipkin`): what an upstream receives from Envoy and from
//! remora for B3 (multi and single header), W3C (`USE_B3_WITH_W3C_PROPAGATION`) and no incoming
//! context, on an OUTBOUND listener (client spans) and an INBOUND one (shared span context), and
//! with `spawn_upstream_span` on both (the upstream gets the child of the stream's server span).
//! Generated span and trace ids are compared by shape (`compare::normalise_body`); the ids the
//! requests carry, the sampling flags and which headers are present are compared exactly.

use crate::CaseResult;
use crate::cases::{self, HttpCase, req};
use crate::oracle::Pair;
use crate::support::{bootstrap, cluster, upstream};
use std::path::Path;

fn listener(name: &str, direction: &str, w3c: bool) -> String {
    listener_with(name, direction, w3c, "")
}

/// A listener whose connection manager's `tracing` has `extra` (indented fields) too.
fn listener_with(name: &str, direction: &str, w3c: bool, extra: &str) -> String {
    let option = if w3c {
        "\n                trace_context_option: USE_B3_WITH_W3C_PROPAGATION"
    } else {
        ""
    };
    let tracing = format!(
        r#"          tracing:
{extra}            provider:
              name: envoy.tracers.zipkin
              typed_config:
                "@type": type.googleapis.com/envoy.config.trace.v3.ZipkinConfig
                collector_cluster: zipkin
                collector_endpoint: /api/v2/spans
                collector_endpoint_version: HTTP_JSON{option}
"#
    );
    let routes = "              - match: {prefix: /}\n                route: {cluster: backend}\n";
    cases::hcm_listener(
        name,
        &format!(
            "{}{tracing}{}",
            cases::access_log(),
            cases::one_vhost(routes)
        ),
        "",
    )
    .replacen(
        "    filter_chains:",
        &format!("    traffic_direction: {direction}\n    filter_chains:"),
        1,
    )
}

const SPAWN: &str = "            spawn_upstream_span: true\n            verbose: true\n";

const TRACE: &str = "463ac35c9f6413ad48485a3953bb6124";
const SPAN: &str = "a2fb4a1d1a96d312";
const PARENT: &str = "0020000000000001";

fn all_cases() -> Vec<HttpCase> {
    let case = |id: &str, listener: &'static str, headers: &[(&str, &str)]| {
        HttpCase::new(
            format!("tracing/{id}"),
            listener,
            req(id, "GET", "svc.test", "/t", headers),
        )
    };
    let b3 = [
        ("x-b3-traceid", TRACE),
        ("x-b3-spanid", SPAN),
        ("x-b3-parentspanid", PARENT),
    ];
    let sampled = [b3.as_slice(), &[("x-b3-sampled", "1")]].concat();
    let unsampled = [b3.as_slice(), &[("x-b3-sampled", "0")]].concat();
    let single = format!("{TRACE}-{SPAN}-1-{PARENT}");
    let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    vec![
        case("egress_no_context", "egress", &[]),
        case("egress_b3_sampled", "egress", &sampled),
        case("egress_b3_unsampled", "egress", &unsampled),
        case("egress_b3_no_decision", "egress", &b3),
        case("egress_b3_single", "egress", &[("b3", &single)]),
        case("egress_sampled_only", "egress", &[("x-b3-sampled", "0")]),
        case(
            "egress_malformed",
            "egress",
            &[("x-b3-traceid", "xyz"), ("x-b3-spanid", SPAN)],
        ),
        case("ingress_b3_shared", "ingress", &sampled),
        case("ingress_no_context", "ingress", &[]),
        case("w3c_parent", "w3c", &[("traceparent", parent)]),
        case(
            "w3c_b3_wins",
            "w3c",
            &[
                ("traceparent", parent),
                ("x-b3-traceid", TRACE),
                ("x-b3-spanid", SPAN),
            ],
        ),
        case("w3c_no_context", "w3c", &[]),
        // spawn_upstream_span: the upstream gets the child span of the (shared) server span.
        case("spawn_ingress_b3", "spawn_in", &sampled),
        case("spawn_egress_b3", "spawn_out", &sampled),
        case("spawn_egress_unsampled", "spawn_out", &unsampled),
        case("spawn_no_context", "spawn_out", &[]),
    ]
}

pub async fn run(envoy: &Path, filter: Option<&str>) -> Vec<CaseResult> {
    let all = all_cases();
    if !cases::any_wanted(&all, filter) {
        return Vec::new();
    }
    let backend = upstream("backend").await;
    let zipkin = upstream("zipkin").await;
    let listeners = [
        listener("egress", "OUTBOUND", false),
        listener("ingress", "INBOUND", false),
        listener("w3c", "OUTBOUND", true),
        listener_with("spawn_in", "INBOUND", false, SPAWN),
        listener_with("spawn_out", "OUTBOUND", false, SPAWN),
    ]
    .concat();
    let clusters = cluster("backend", &[backend.addr], "") + &cluster("zipkin", &[zipkin.addr], "");
    let pair = Pair::start(envoy, &bootstrap(&listeners, &clusters)).await;
    cases::run_all_report("tracing", &pair, all, filter).await
}
