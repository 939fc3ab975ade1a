//! The admin API after the same traffic: `/stats` names and values per prefix,
//! `/stats/prometheus` families and labels, `/clusters`, `/server_info`, `/ready`,
//! `/listeners`, `/config_dump`. Normalised only where two runs legitimately differ (times,
//! ephemeral listener ports, versions, bytes of responses with a timing header).

use crate::CaseResult;
use crate::cases::{self, req};
use crate::compare::diff;
use crate::oracle::{Pair, Side};
use crate::support::{bootstrap, cluster, http_listener, raw_exchange, upstream};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

/// The `/stats` prefixes compared, each its own case (`admin/stats/<prefix>`).
const STAT_PREFIXES: &[&str] = &[
    "prometheus",
    "http.in",
    "listener",
    "cluster.backend",
    "cluster.dead",
    "cluster_manager",
    "listener_manager",
    "server",
];

/// One comparison: the case id, the admin path, and how its body is normalised.
type Probe = (&'static str, &'static str, fn(&str) -> String);

/// Each `/stats` prefix is two cases: its names (`admin/stats/<prefix>`, which Envoy names
/// remora lacks and which remora has that Envoy does not) and the values of the names both have
/// (`admin/stats/<prefix>/values`), so that a missing name never hides a differing value.
fn ids() -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    for p in STAT_PREFIXES {
        ids.push(format!("admin/stats/{p}"));
        if *p != "prometheus" {
            ids.push(format!("admin/stats/{p}/values"));
        }
    }
    ids.extend(PROBES.iter().map(|(id, _, _)| id.to_string()));
    ids
}

pub async fn run(envoy: &Path, filter: Option<&str>) -> Vec<CaseResult> {
    let wanted: Vec<String> = ids()
        .into_iter()
        .filter(|id| filter.is_none_or(|f| id.contains(f)))
        .collect();
    if wanted.is_empty() {
        return Vec::new();
    }
    let backend = upstream("backend").await;
    let vhosts = "            - name: all\n              domains: [\"*\"]\n              routes:\n              - {name: ok, match: {prefix: \"/ok\"}, route: {cluster: backend}}\n              - {name: status, match: {prefix: \"/status/\"}, route: {cluster: backend}}\n              - {name: dead, match: {prefix: \"/dead\"}, route: {cluster: dead}}\n";
    let clusters = [
        cluster("backend", &[backend.addr], ""),
        cluster("dead", &[cases::refused()], ""),
    ]
    .concat();
    let yaml = bootstrap(
        &http_listener("in", &cases::access_log(), vhosts),
        &clusters,
    );
    let pair = Pair::start(envoy, &yaml).await;
    traffic(&pair).await;
    let mut results = Vec::new();
    for id in &wanted {
        let [e, r] = observe(&pair, id).await;
        let d = if id.starts_with("admin/stats/") {
            let (names, values) = line_sets(&e, &r);
            if id.ends_with("/values") {
                values
            } else {
                names
            }
        } else {
            diff(&e, &r)
        };
        results.push(CaseResult {
            group: "admin",
            id: id.clone(),
            diff: d,
        });
    }
    results
}

/// 3 × 200, a 404 without a route, a 503 UF (connection refused), an upstream 500; each on its
/// own connection.
async fn traffic(pair: &Pair) {
    let requests = [
        ("ok1", "/ok"),
        ("ok2", "/ok"),
        ("ok3", "/ok"),
        ("nr", "/none"),
        ("uf", "/dead"),
        ("s500", "/status/500"),
    ];
    for (id, path) in requests {
        for side in Side::BOTH {
            let r = req(id, "GET", "admin.test", path, &[]);
            let addr = pair.get(side).addr("in");
            let _ = raw_exchange(addr, &r, Duration::from_secs(3)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
}

/// remora's own stats, under the compared prefixes but not Envoy names at all (checked against
/// Envoy's sources): the certificate file watcher's reloads. Any other name only remora has is
/// a difference.
fn remora_own(line: &str) -> bool {
    [
        "server.certificate_rotation_",
        "envoy_server_certificate_rotation_",
        "# TYPE envoy_server_certificate_rotation_",
    ]
    .iter()
    .any(|p| line.starts_with(p))
}

/// Line-set texts (`name: value` or `name`) compared as sets: the names only Envoy has and
/// the names only remora has, each listed; then the values that differ.
fn line_sets(envoy: &str, remora: &str) -> (Option<String>, Option<String>) {
    let map = |t: &str| -> BTreeMap<String, String> {
        t.lines()
            .map(|l| match l.split_once(": ") {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (l.to_string(), String::new()),
            })
            .collect()
    };
    let (e, r) = (map(envoy), map(remora));
    let (mut names, mut values) = (String::new(), String::new());
    for (k, v) in &e {
        match r.get(k) {
            None => names.push_str(&format!("\n  missing in remora: {k}")),
            Some(w) if w != v => values.push_str(&format!("\n  {k}: envoy {v} / remora {w}")),
            Some(_) => {}
        }
    }
    for k in r.keys().filter(|k| !e.contains_key(*k) && !remora_own(k)) {
        names.push_str(&format!("\n  only in remora: {k}"));
    }
    let listed = |out: String| (!out.is_empty()).then(|| format!("differs:{out}"));
    (listed(names), listed(values))
}

async fn observe(pair: &Pair, id: &str) -> [String; 2] {
    if let Some(prefix) = id.strip_prefix("admin/stats/")
        && let prefix = prefix.strip_suffix("/values").unwrap_or(prefix)
        && STAT_PREFIXES.contains(&prefix)
    {
        return match prefix {
            "prometheus" => both(pair, "/stats/prometheus", prometheus).await,
            _ => both(pair, "/stats", |b| stats(b, prefix)).await,
        };
    }
    let (_, path, f) = PROBES.iter().find(|(p, _, _)| *p == id).expect("a probe");
    both(pair, path, f).await
}

/// `path` fetched from both admins, each body normalised by `f`.
async fn both(pair: &Pair, path: &str, f: impl Fn(&str) -> String) -> [String; 2] {
    let mut out = [String::new(), String::new()];
    for (i, side) in Side::BOTH.into_iter().enumerate() {
        out[i] = match pair.get(side).admin_get(path).await {
            Ok((status, body)) => format!("status {status}\n{}", f(&body)),
            Err(e) => format!("<admin error {e}>"),
        };
    }
    out
}

/// The other cases: the admin path fetched and how its body is normalised.
const PROBES: &[Probe] = &[
    ("admin/clusters", "/clusters", clusters),
    (
        "admin/clusters/json",
        "/clusters?format=json",
        clusters_json,
    ),
    ("admin/server_info", "/server_info", json_shape),
    ("admin/ready", "/ready", str::to_string),
    ("admin/listeners", "/listeners", ports),
    (
        "admin/listeners/json",
        "/listeners?format=json",
        listeners_json,
    ),
    (
        "admin/config_dump/static_clusters",
        "/config_dump?resource=static_clusters",
        static_clusters,
    ),
    (
        "admin/config_dump/mask",
        "/config_dump?resource=static_clusters&mask=cluster.name,cluster.type",
        pretty,
    ),
    (
        "admin/config_dump/static_clusters/json",
        "/config_dump?resource=static_clusters",
        dump,
    ),
    (
        "admin/config_dump/static_listeners",
        "/config_dump?resource=static_listeners",
        dump,
    ),
    (
        "admin/config_dump/static_listeners/mask",
        "/config_dump?resource=static_listeners&mask=listener.name,listener.address",
        dump,
    ),
    (
        "admin/config_dump/static_route_configs",
        "/config_dump?resource=static_route_configs",
        dump,
    ),
    (
        "admin/config_dump/dynamic_active_clusters",
        "/config_dump?resource=dynamic_active_clusters",
        dump,
    ),
    (
        "admin/config_dump/name_regex",
        "/config_dump?resource=static_clusters&name_regex=^back",
        dump,
    ),
    (
        "admin/config_dump/name_regex_whole_name",
        "/config_dump?resource=static_clusters&name_regex=back.*",
        dump,
    ),
    (
        "admin/config_dump/name_regex_no_match",
        "/config_dump?resource=static_clusters&name_regex=^nothing",
        dump,
    ),
    (
        "admin/config_dump/include_eds",
        "/config_dump?include_eds&resource=static_endpoint_configs",
        dump,
    ),
    (
        "admin/config_dump/mask_without_resource",
        "/config_dump?mask=static_clusters",
        dump,
    ),
    (
        "admin/config_dump/unknown_resource",
        "/config_dump?resource=nope",
        str::to_string,
    ),
];

/// A `/config_dump` body with what differs between two runs masked: `last_updated` times and
/// listener ports.
fn dump(body: &str) -> String {
    fn mask(v: &mut Value) {
        match v {
            Value::Object(m) => {
                for (k, x) in m.iter_mut() {
                    if k == "last_updated" {
                        *x = "<time>".into();
                    } else {
                        mask(x);
                    }
                }
            }
            Value::Array(a) => a.iter_mut().for_each(mask),
            _ => {}
        }
    }
    match serde_json::from_str::<Value>(body) {
        Ok(mut v) => {
            mask(&mut v);
            run_dirs(&ports(
                &serde_json::to_string_pretty(&v).unwrap_or_default(),
            ))
        }
        Err(_) => format!("<not JSON> {body}"),
    }
}

fn listeners_json(body: &str) -> String {
    ports(&pretty(body))
}

/// Server stats whose values depend on the process, not on the configuration or the traffic.
const SERVER_TIMED: &[&str] = &[
    "server.uptime",
    "server.memory_",
    "server.version",
    "server.stats_recent_lookups",
];

/// A stat whose value is compared: not one of [`SERVER_TIMED`], not the bytes sent downstream
/// (responses carry `x-envoy-upstream-service-time`, whose length varies).
fn value_compared(name: &str) -> bool {
    !SERVER_TIMED.iter().any(|p| name.starts_with(p)) && !name.contains("downstream_cx_tx_bytes")
}

/// The `/stats` lines under `prefix.`: counters and gauges with their values (where
/// compared), histograms by name; then the names only one side has are listed by the diff.
fn stats(body: &str, prefix: &str) -> String {
    let mut out = BTreeMap::new();
    for line in body.lines() {
        let Some((name, value)) = line.split_once(": ") else {
            continue;
        };
        if !name.starts_with(&format!("{prefix}.")) {
            continue;
        }
        let name = ports(name);
        let value = match value.parse::<i64>() {
            Ok(v) if value_compared(&name) => v.to_string(),
            Ok(_) => "<value>".into(),
            Err(_) => "<histogram>".into(),
        };
        out.insert(name, value);
    }
    out.iter().map(|(k, v)| format!("{k}: {v}\n")).collect()
}

/// Prometheus families (`# TYPE` lines) and samples by name and labels, for the compared
/// prefixes; values dropped.
fn prometheus(body: &str) -> String {
    let mut out = BTreeSet::new();
    for line in body.lines() {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            if prometheus_wanted(t) {
                out.insert(format!("# TYPE {t}"));
            }
            continue;
        }
        let sample = line.rsplit_once(' ').map_or(line, |(s, _)| s);
        if !line.starts_with('#') && prometheus_wanted(sample) {
            out.insert(ports(sample));
        }
    }
    out.into_iter().map(|l| l + "\n").collect()
}

fn prometheus_wanted(s: &str) -> bool {
    [
        "envoy_http_",
        "envoy_listener_",
        "envoy_cluster_",
        "envoy_cluster_manager_",
        "envoy_listener_manager_",
        "envoy_server_",
    ]
    .iter()
    .any(|p| s.starts_with(p))
        && !s.contains("=\"admin\"")
}

/// `/clusters` text: the lines of `backend` and `dead`.
fn clusters(body: &str) -> String {
    let mut lines: Vec<&str> = body
        .lines()
        .filter(|l| l.starts_with("backend::") || l.starts_with("dead::"))
        .collect();
    lines.sort();
    lines.iter().map(|l| format!("{l}\n")).collect()
}

/// `/clusters?format=json`: the shape (keys and value types) of `backend` and `dead`.
fn clusters_json(body: &str) -> String {
    let Ok(mut v) = serde_json::from_str::<Value>(body) else {
        return format!("<not JSON> {body}");
    };
    if let Some(list) = v.get_mut("cluster_statuses").and_then(Value::as_array_mut) {
        list.retain(|c| matches!(c["name"].as_str(), Some("backend" | "dead")));
        list.sort_by_key(|c| c["name"].as_str().unwrap_or("").to_string());
    }
    serde_json::to_string_pretty(&shape(&v)).unwrap_or_default()
}

/// Keys and the types of their values, recursively (arrays: their distinct element shapes).
fn shape(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), shape(v))).collect()),
        Value::Array(a) => {
            let mut seen: Vec<Value> = Vec::new();
            for s in a.iter().map(shape) {
                if !seen.contains(&s) {
                    seen.push(s);
                }
            }
            Value::Array(seen)
        }
        Value::String(_) => "<string>".into(),
        Value::Number(_) => "<number>".into(),
        Value::Bool(_) => "<bool>".into(),
        Value::Null => Value::Null,
    }
}

fn json_shape(body: &str) -> String {
    match serde_json::from_str::<Value>(body) {
        Ok(v) => serde_json::to_string_pretty(&shape(&v)).unwrap_or_default(),
        Err(_) => format!("<not JSON> {body}"),
    }
}

fn pretty(body: &str) -> String {
    match serde_json::from_str::<Value>(body) {
        Ok(v) => serde_json::to_string_pretty(&v).unwrap_or_default(),
        Err(_) => format!("<not JSON> {body}"),
    }
}

/// The static clusters' names, and the keys of each entry.
fn static_clusters(body: &str) -> String {
    let Ok(v) = serde_json::from_str::<Value>(body) else {
        return format!("<not JSON> {body}");
    };
    let mut out = BTreeSet::new();
    for c in v["configs"].as_array().into_iter().flatten() {
        let keys: Vec<&String> = c
            .as_object()
            .map(|o| o.keys().collect())
            .unwrap_or_default();
        out.insert(format!(
            "{} {} {keys:?}",
            c["@type"].as_str().unwrap_or("?"),
            c["cluster"]["name"].as_str().unwrap_or("?")
        ));
    }
    out.into_iter().map(|l| l + "\n").collect()
}

/// Each proxy's scratch directory (`RUN_DIR` in the bootstrap, access-log paths) is its own.
fn run_dirs(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("remora-e2e-") {
        out.push_str(&rest[..i]);
        out.push_str("<run_dir>");
        rest = &rest[i..];
        rest = &rest[rest.find('/').unwrap_or(rest.len())..];
    }
    out.push_str(rest);
    out
}

/// Listener ports are ephemeral (`port_value: 0`) and so differ between the two proxies:
/// `127.0.0.1:NNNN`, `127.0.0.1_NNNN` and `"port_value": NNNN` become `<port>`.
fn ports(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = find_port(rest) {
        out.push_str(&rest[..i]);
        out.push_str("<port>");
        rest = rest[i..].trim_start_matches(|c: char| c.is_ascii_digit());
    }
    out.push_str(rest);
    out
}

/// Where the next port number starts (after `127.0.0.1:`, `127.0.0.1_` or `"port_value": `).
fn find_port(s: &str) -> Option<usize> {
    ["127.0.0.1:", "127.0.0.1_", "\"port_value\": "]
        .iter()
        .filter_map(|m| {
            let i = s.find(m)? + m.len();
            s[i..]
                .starts_with(|c: char| c.is_ascii_digit())
                .then_some(i)
        })
        .min()
}
