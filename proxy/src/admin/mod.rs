//! The admin API (bootstrap `admin.address`), served on the main thread's runtime so that a
//! scrape never runs on a worker. Endpoints, layouts and status codes follow Envoy's admin.

pub mod certs;
pub mod config_dump;
pub mod stats;

use crate::server::{ServerState, State};
use bytes::Bytes;
use envoy_types::pb::envoy::admin::v3 as admin;
use envoy_types::pb::envoy::config::core::v3 as core;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

type Resp = Response<Full<Bytes>>;

/// Serve the admin listener until shutdown.
pub async fn serve(state: Arc<ServerState>, listener: tokio::net::TcpListener) {
    let mut shutdown = state.shutdown.subscribe();
    loop {
        tokio::select! {
            r = listener.accept() => {
                let Ok((stream, _)) = r else { continue };
                let state = state.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                        let state = state.clone();
                        async move { Ok::<_, std::convert::Infallible>(handle(&state, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
            _ = crate::listener::stopped(&mut shutdown) => return,
        }
    }
}

fn respond(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_str(content_type)
            .unwrap_or(http::HeaderValue::from_static("text/plain")),
    );
    r.headers_mut().insert(
        "cache-control",
        http::HeaderValue::from_static("no-cache, max-age=0"),
    );
    r.headers_mut().insert(
        "x-content-type-options",
        http::HeaderValue::from_static("nosniff"),
    );
    r
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Resp {
    respond(status, "text/plain; charset=UTF-8", body)
}

fn json(status: StatusCode, v: &serde_json::Value) -> Resp {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
    s.push('\n');
    respond(status, "application/json", s)
}

/// Percent-decode a query component (`+` is a space).
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() && i + 2 <= (b.len() - 1) => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
                {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query(uri: &http::Uri) -> BTreeMap<String, String> {
    uri.query()
        .map(|q| {
            q.split('&')
                .filter(|kv| !kv.is_empty())
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (decode(k), decode(v))
                })
                .collect()
        })
        .unwrap_or_default()
}

const ENDPOINTS: &[(&str, &str, bool)] = &[
    ("/", "Admin home page", false),
    ("/certs", "print certs on machine", false),
    ("/clusters", "upstream cluster status", false),
    ("/config_dump", "dump current Envoy configs", false),
    ("/drain_listeners", "drain listeners", true),
    (
        "/healthcheck/fail",
        "cause the server to fail health checks",
        true,
    ),
    (
        "/healthcheck/ok",
        "cause the server to pass health checks",
        true,
    ),
    ("/help", "print out list of admin commands", false),
    (
        "/hot_restart_version",
        "print the hot restart compatibility version",
        false,
    ),
    ("/listeners", "print listener info", false),
    ("/logging", "query/change logging levels", true),
    ("/quitquitquit", "exit the server", true),
    (
        "/ready",
        "print server state, return 200 if LIVE, otherwise return 503",
        false,
    ),
    ("/reopen_logs", "reopen access logs", true),
    ("/reset_counters", "reset all counters to zero", true),
    ("/runtime", "print runtime values", false),
    (
        "/server_info",
        "print server version/status information",
        false,
    ),
    ("/stats", "print server stats", false),
    (
        "/stats/prometheus",
        "print server stats in prometheus format",
        false,
    ),
];

async fn handle(state: &Arc<ServerState>, req: http::Request<Incoming>) -> Resp {
    let path = req.uri().path().to_string();
    let q = query(req.uri());
    let method = req.method().clone();
    let mutating = ENDPOINTS
        .iter()
        .find(|(p, _, _)| *p == path)
        .is_some_and(|(_, _, m)| *m);
    if mutating && method != Method::POST && !(path == "/logging" && q.is_empty()) {
        return text(StatusCode::BAD_REQUEST, "This endpoint requires POST.\n");
    }
    let resp = route(state, &path, &q).await;
    log_admin(state, &method, req.uri(), req.headers(), resp.status());
    resp
}

fn log_admin(
    state: &Arc<ServerState>,
    method: &Method,
    uri: &http::Uri,
    headers: &http::HeaderMap,
    status: StatusCode,
) {
    let Some(admin) = &state.bootstrap.admin else {
        return;
    };
    if admin.access_logs.is_empty() {
        return;
    }
    let loggers = &state.admin_access_logs;
    let local = state
        .admin_address
        .lock()
        .ok()
        .and_then(|a| *a)
        .unwrap_or_else(|| "0.0.0.0:0".parse().expect("literal"));
    let conn = Arc::new(crate::stream_info::ConnectionInfo {
        id: 0,
        local,
        remote: local,
        requested_server_name: None,
        application_protocols: vec![],
        transport_protocol: "raw_buffer",
        tls: None,
    });
    let mut info = crate::stream_info::StreamInfo::new(conn);
    info.protocol = Some(crate::stream_info::Protocol::Http11);
    info.response_code = Some(status.as_u16());
    info.last_downstream_tx = Some(std::time::Instant::now());
    let ctx = crate::telemetry::format::FormatContext {
        info: Some(&info),
        request: Some(crate::telemetry::format::RequestView {
            method,
            uri,
            headers,
        }),
        ..Default::default()
    };
    let input = crate::telemetry::access_log::filter_input(&info, None);
    for l in loggers {
        l.log(&ctx, &input);
    }
}

async fn route(state: &Arc<ServerState>, path: &str, q: &BTreeMap<String, String>) -> Resp {
    match path {
        "/" | "/help" => {
            let mut s = String::from("admin commands are:\n");
            for (p, d, _) in ENDPOINTS {
                let _ = writeln!(s, "  {p}: {d}");
            }
            text(StatusCode::OK, s)
        }
        "/ready" => {
            let st = state.state();
            let code = if st == State::Live {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            text(code, format!("{}\n", st.name()))
        }
        "/server_info" => server_info(state),
        "/certs" => {
            let pool = crate::config::descriptors::envoy_pool();
            match config_dump::message_json(&pool, &certs::certificates(state), true) {
                Ok(v) => json(StatusCode::OK, &v),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e),
            }
        }
        "/hot_restart_version" => text(StatusCode::OK, "disabled\n"),
        "/stats" | "/stats/prometheus" => {
            state.refresh_gauges();
            let filter = match q.get("filter").filter(|f| !f.is_empty()) {
                Some(f) => match regex::Regex::new(f) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        return text(StatusCode::BAD_REQUEST, format!("Invalid re2 regex: {e}\n"));
                    }
                },
                None => None,
            };
            if state.bootstrap.stats.flush_on_admin {
                state.flush_stats();
            }
            let sel = stats::Selection {
                filter,
                used_only: q.contains_key("usedonly"),
            };
            let format = q.get("format").map(String::as_str);
            if path == "/stats/prometheus" || format == Some("prometheus") {
                respond(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=UTF-8",
                    stats::prometheus(&state.context.store, &sel),
                )
            } else if format == Some("json") {
                json(StatusCode::OK, &stats::json(&state.context.store, &sel))
            } else {
                text(StatusCode::OK, stats::text(&state.context.store, &sel))
            }
        }
        "/clusters" => clusters(state, q.get("format").map(String::as_str) == Some("json")),
        "/listeners" => listeners(state, q.get("format").map(String::as_str) == Some("json")),
        "/config_dump" => {
            let name_regex = match q.get("name_regex") {
                // Envoy matches the whole name (`^back` does not select `backend`).
                Some(r) => match regex::Regex::new(&format!("^(?:{r})$")) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        return text(
                            StatusCode::BAD_REQUEST,
                            format!("Error while parsing name_regex: {e}\n"),
                        );
                    }
                },
                None => None,
            };
            let query = config_dump::Query {
                include_eds: q.contains_key("include_eds"),
                mask: q.get("mask").cloned(),
                resource: q.get("resource").cloned().filter(|r| !r.is_empty()),
                name_regex,
            };
            match config_dump::render(state, &query) {
                Ok(v) => json(StatusCode::OK, &v),
                // Envoy's error body has no newline after it.
                Err((code, msg)) => text(
                    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                    msg,
                ),
            }
        }
        "/logging" => logging(state, q),
        "/healthcheck/fail" => {
            state.healthcheck_failed.store(true, Relaxed);
            text(StatusCode::OK, "OK\n")
        }
        "/healthcheck/ok" => {
            state.healthcheck_failed.store(false, Relaxed);
            text(StatusCode::OK, "OK\n")
        }
        "/drain_listeners" => {
            state.drain_listeners(q.contains_key("inboundonly"), q.contains_key("graceful"));
            text(StatusCode::OK, "OK\n")
        }
        "/quitquitquit" => {
            let state = state.clone();
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                state.shutdown.send_replace(true);
            });
            text(StatusCode::OK, "OK\n")
        }
        "/reset_counters" => {
            state.context.store.reset_counters();
            text(StatusCode::OK, "OK\n")
        }
        "/reopen_logs" => {
            state.context.access_logs.reopen_all();
            text(StatusCode::OK, "OK\n")
        }
        "/runtime" => {
            // The current snapshot: disk layers as last read.
            let runtime = state.context.runtime.snapshot();
            let entries: serde_json::Map<String, serde_json::Value> = runtime
                .values
                .iter()
                .map(|(k, v)| {
                    let s = match v {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (
                        k.clone(),
                        serde_json::json!({"layer_values": [s.clone()], "final_value": s}),
                    )
                })
                .collect();
            let layers: Vec<_> = runtime
                .layers
                .iter()
                .map(|l| serde_json::Value::String(l.clone()))
                .collect();
            json(
                StatusCode::OK,
                &serde_json::json!({"layers": layers, "entries": entries}),
            )
        }
        _ => {
            let mut s = "invalid path. admin commands are:\n".to_string();
            for (p, d, _) in ENDPOINTS {
                let _ = writeln!(s, "  {p}: {d}");
            }
            text(StatusCode::NOT_FOUND, s)
        }
    }
}

fn logging(state: &Arc<ServerState>, q: &BTreeMap<String, String>) -> Resp {
    let logs = &state.logs;
    for (k, v) in q {
        match k.as_str() {
            "level" => match crate::logging::level(v) {
                Some(l) => logs.set_all(l),
                None => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        format!("error: unknown logger level\n{}", logs.listing()),
                    );
                }
            },
            "paths" => {
                for item in v.split(',').filter(|s| !s.is_empty()) {
                    let Some((name, lvl)) = item.split_once(':') else {
                        return text(
                            StatusCode::BAD_REQUEST,
                            format!("error: invalid format for paths: {item}\n"),
                        );
                    };
                    match crate::logging::level(lvl) {
                        Some(l) if logs.set(name, l) => {}
                        _ => {
                            return text(
                                StatusCode::BAD_REQUEST,
                                format!("error: unknown logger or level: {item}\n"),
                            );
                        }
                    }
                }
            }
            name => match crate::logging::level(v) {
                Some(l) if logs.set(name, l) => {}
                _ => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "error: unknown logger or level: {name}={v}\n{}",
                            logs.listing()
                        ),
                    );
                }
            },
        }
    }
    text(StatusCode::OK, logs.listing())
}

pub(crate) fn socket_address(a: std::net::SocketAddr) -> core::Address {
    core::Address {
        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
            address: a.ip().to_string(),
            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(
                a.port() as u32
            )),
            ..Default::default()
        })),
    }
}

fn listeners(state: &Arc<ServerState>, as_json: bool) -> Resp {
    if as_json {
        let l = admin::Listeners {
            listener_statuses: state
                .listeners
                .all()
                .iter()
                .map(|l| admin::ListenerStatus {
                    name: l.config.name.clone(),
                    local_address: Some(socket_address(l.local_address)),
                    additional_local_addresses: vec![],
                })
                .collect(),
        };
        let pool = crate::config::descriptors::envoy_pool();
        return match config_dump::message_json(&pool, &l, false) {
            Ok(v) => json(StatusCode::OK, &v),
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e),
        };
    }
    let mut s = String::new();
    for l in state.listeners.all().iter() {
        let _ = writeln!(s, "{}::{}", l.config.name, l.local_address);
    }
    text(StatusCode::OK, s)
}

/// Envoy's `health_flags` text: `healthy`, or each flag set, in Envoy's order.
fn health_flags(h: &crate::upstream::host::Host) -> String {
    use crate::model::cluster::Health;
    let mut out = String::new();
    for (set, name) in [
        (h.active_hc.is_failed(), "/failed_active_hc"),
        (h.outlier.is_ejected(), "/failed_outlier_check"),
        (h.health == Health::Unhealthy, "/failed_eds_health"),
        (h.health == Health::Degraded, "/degraded_eds_health"),
        (h.active_hc.is_pending(), "/pending_active_hc"),
    ] {
        if set {
            out.push_str(name);
        }
    }
    if out.is_empty() {
        out.push_str("healthy");
    }
    out
}

/// `/clusters`' circuit-breaker lines: each routing priority's thresholds, as Envoy prints them.
fn circuit_breaker_lines(s: &mut String, n: &str, cb: &crate::model::cluster::CircuitBreakers) {
    for (p, t) in [
        ("default_priority", &cb.default),
        ("high_priority", &cb.high),
    ] {
        for (k, v) in thresholds(t) {
            let _ = writeln!(s, "{n}::{p}::{k}::{v}");
        }
    }
}

fn thresholds(t: &crate::model::cluster::Thresholds) -> [(&'static str, u64); 4] {
    [
        ("max_connections", t.max_connections),
        ("max_pending_requests", t.max_pending_requests),
        ("max_requests", t.max_requests),
        ("max_retries", t.max_retries),
    ]
}

/// `/clusters?format=json`'s `circuit_breakers`: both priorities' thresholds.
fn circuit_breakers_json(
    cb: &crate::model::cluster::CircuitBreakers,
) -> envoy_types::pb::envoy::config::cluster::v3::CircuitBreakers {
    use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::Thresholds;
    let u32_of = |v: u64| {
        Some(envoy_types::pb::google::protobuf::UInt32Value {
            value: u32::try_from(v).unwrap_or(u32::MAX),
        })
    };
    let t = |priority: core::RoutingPriority, t: &crate::model::cluster::Thresholds| Thresholds {
        priority: priority as i32,
        max_connections: u32_of(t.max_connections),
        max_pending_requests: u32_of(t.max_pending_requests),
        max_requests: u32_of(t.max_requests),
        max_retries: u32_of(t.max_retries),
        ..Default::default()
    };
    envoy_types::pb::envoy::config::cluster::v3::CircuitBreakers {
        thresholds: vec![
            t(core::RoutingPriority::Default, &cb.default),
            t(core::RoutingPriority::High, &cb.high),
        ],
        ..Default::default()
    }
}

fn clusters(state: &Arc<ServerState>, as_json: bool) -> Resp {
    let all = state.clusters.all();
    if as_json {
        let statuses = all
            .iter()
            .map(|c| {
                let hosts = c.hosts.load();
                admin::ClusterStatus {
                    name: c.config.name.to_string(),
                    added_via_api: c.added_via_api,
                    observability_name: c.config.stat_name.clone(),
                    circuit_breakers: Some(circuit_breakers_json(&c.config.circuit_breakers)),
                    host_statuses: hosts
                        .all_hosts()
                        .map(|h| {
                            let s = &h.stats;
                            let metric = |name: &str, v: u64, gauge: bool| admin::SimpleMetric {
                                r#type: if gauge {
                                    admin::simple_metric::Type::Gauge as i32
                                } else {
                                    admin::simple_metric::Type::Counter as i32
                                },
                                value: v,
                                name: name.to_string(),
                            };
                            use crate::model::cluster::Health;
                            admin::HostStatus {
                                address: Some(socket_address(h.address)),
                                stats: vec![
                                    metric(
                                        "cx_connect_fail",
                                        s.cx_connect_fail.load(Relaxed),
                                        false,
                                    ),
                                    metric("cx_total", s.cx_total.load(Relaxed), false),
                                    metric("rq_error", s.rq_error.load(Relaxed), false),
                                    metric("rq_success", s.rq_success.load(Relaxed), false),
                                    metric("rq_timeout", s.rq_timeout.load(Relaxed), false),
                                    metric("rq_total", s.rq_total.load(Relaxed), false),
                                    metric("cx_active", s.cx_active.load(Relaxed), true),
                                    metric("rq_active", s.rq_active.load(Relaxed), true),
                                ],
                                health_status: Some(admin::HostHealthStatus {
                                    eds_health_status: match h.health {
                                        Health::Healthy => core::HealthStatus::Healthy as i32,
                                        Health::Unhealthy => core::HealthStatus::Unhealthy as i32,
                                        Health::Degraded => core::HealthStatus::Degraded as i32,
                                    },
                                    failed_active_health_check: h.active_hc.is_failed(),
                                    failed_outlier_check: h.outlier.is_ejected(),
                                    pending_active_hc: h.active_hc.is_pending(),
                                    ..Default::default()
                                }),
                                weight: h.weight,
                                hostname: h.hostname.to_string(),
                                priority: h.priority,
                                locality: Some(core::Locality {
                                    region: h.locality.region.clone(),
                                    zone: h.locality.zone.clone(),
                                    sub_zone: h.locality.sub_zone.clone(),
                                }),
                                success_rate: None,
                                local_origin_success_rate: None,
                            }
                        })
                        .collect(),
                    ..Default::default()
                }
            })
            .collect();
        let pool = crate::config::descriptors::envoy_pool();
        return match config_dump::message_json(
            &pool,
            &admin::Clusters {
                cluster_statuses: statuses,
            },
            false,
        ) {
            Ok(v) => json(StatusCode::OK, &v),
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e),
        };
    }
    let mut s = String::new();
    for c in &all {
        let n = &c.config.name;
        let _ = writeln!(s, "{n}::observability_name::{}", c.config.stat_name);
        if let Some(od) = &c.outlier {
            outlier_lines(&mut s, n, [od.success_rate(false), od.success_rate(true)]);
        }
        circuit_breaker_lines(&mut s, n, &c.config.circuit_breakers);
        let _ = writeln!(s, "{n}::added_via_api::{}", c.added_via_api);
        for h in c.hosts.load().all_hosts() {
            let a = h.address;
            let st = &h.stats;
            for (k, v) in [
                ("cx_active", st.cx_active.load(Relaxed)),
                ("cx_connect_fail", st.cx_connect_fail.load(Relaxed)),
                ("cx_total", st.cx_total.load(Relaxed)),
                ("rq_active", st.rq_active.load(Relaxed)),
                ("rq_error", st.rq_error.load(Relaxed)),
                ("rq_success", st.rq_success.load(Relaxed)),
                ("rq_timeout", st.rq_timeout.load(Relaxed)),
                ("rq_total", st.rq_total.load(Relaxed)),
            ] {
                let _ = writeln!(s, "{n}::{a}::{k}::{v}");
            }
            let _ = writeln!(s, "{n}::{a}::hostname::{}", h.hostname);
            let _ = writeln!(s, "{n}::{a}::health_flags::{}", health_flags(h));
            let _ = writeln!(s, "{n}::{a}::weight::{}", h.weight);
            let _ = writeln!(s, "{n}::{a}::region::{}", h.locality.region);
            let _ = writeln!(s, "{n}::{a}::zone::{}", h.locality.zone);
            let _ = writeln!(s, "{n}::{a}::sub_zone::{}", h.locality.sub_zone);
            let _ = writeln!(s, "{n}::{a}::canary::false");
            let _ = writeln!(s, "{n}::{a}::priority::{}", h.priority);
            let _ = writeln!(s, "{n}::{a}::success_rate::-1");
            let _ = writeln!(s, "{n}::{a}::local_origin_success_rate::-1");
        }
    }
    text(StatusCode::OK, s)
}

/// Envoy's `<cluster>::outlier::*` lines (`addOutlierInfo`), between the observability name
/// and the circuit breakers: the last interval's success-rate average and ejection threshold, external
/// then local origin, `-1` until computed; numbers as `{:g}` prints them.
fn outlier_lines(s: &mut String, n: &str, rates: [(f64, f64); 2]) {
    for ((avg, threshold), prefix) in rates.into_iter().zip(["", "local_origin_"]) {
        let _ = writeln!(s, "{n}::outlier::{prefix}success_rate_average::{avg}");
        let _ = writeln!(
            s,
            "{n}::outlier::{prefix}success_rate_ejection_threshold::{threshold}"
        );
    }
}

fn server_info(state: &Arc<ServerState>) -> Resp {
    let o = &state.options;
    let dur = |secs: u64| envoy_types::pb::google::protobuf::Duration {
        seconds: secs as i64,
        nanos: 0,
    };
    let uptime = state.started.elapsed().as_secs();
    let node = &state.bootstrap_proto.node;
    let mut node = node.clone().unwrap_or_default();
    if let Some(id) = &o.service_node {
        node.id = id.clone();
    }
    if let Some(c) = &o.service_cluster {
        node.cluster = c.clone();
    }
    if node.user_agent_name.is_empty() {
        node.user_agent_name = "remora".into();
    }
    let info = admin::ServerInfo {
        version: format!("remora/{}", crate::VERSION),
        state: match state.state() {
            State::Live => admin::server_info::State::Live as i32,
            State::Draining => admin::server_info::State::Draining as i32,
            State::PreInitializing => admin::server_info::State::PreInitializing as i32,
            State::Initializing => admin::server_info::State::Initializing as i32,
        },
        uptime_current_epoch: Some(dur(uptime)),
        uptime_all_epochs: Some(dur(uptime)),
        hot_restart_version: "disabled".into(),
        command_line_options: Some(admin::CommandLineOptions {
            base_id: o.base_id.unwrap_or(0),
            concurrency: state.concurrency as u32,
            config_path: o
                .config_path
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            config_yaml: o.config_yaml.clone().unwrap_or_default(),
            allow_unknown_static_fields: o.allow_unknown_static_fields,
            reject_unknown_dynamic_fields: o.reject_unknown_dynamic_fields,
            admin_address_path: o
                .admin_address_path
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            log_level: o.log_level.clone(),
            component_log_level: o.component_log_level.clone().unwrap_or_default(),
            log_format: o.log_format.clone().unwrap_or_default(),
            log_format_escaped: o.log_format_escaped,
            log_path: o
                .log_path
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            service_cluster: o.service_cluster.clone().unwrap_or_default(),
            service_node: o.service_node.clone().unwrap_or_default(),
            service_zone: o.service_zone.clone().unwrap_or_default(),
            file_flush_interval: Some(envoy_types::pb::google::protobuf::Duration {
                seconds: (o.file_flush_interval_msec / 1000) as i64,
                nanos: ((o.file_flush_interval_msec % 1000) * 1_000_000) as i32,
            }),
            drain_time: Some(dur(o.drain_time_s)),
            drain_strategy: match o.drain_strategy {
                crate::cli::DrainStrategy::Gradual => {
                    admin::command_line_options::DrainStrategy::Gradual as i32
                }
                crate::cli::DrainStrategy::Immediate => {
                    admin::command_line_options::DrainStrategy::Immediate as i32
                }
            },
            parent_shutdown_time: Some(dur(o.parent_shutdown_time_s)),
            mode: admin::command_line_options::Mode::Serve as i32,
            disable_hot_restart: true,
            restart_epoch: o.restart_epoch,
            ..Default::default()
        }),
        node: Some(node),
        hot_restart_initializing: false,
    };
    let pool = crate::config::descriptors::envoy_pool();
    match config_dump::message_json(&pool, &info, true) {
        Ok(v) => json(StatusCode::OK, &v),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decoding() {
        let u: http::Uri = "/stats?filter=cluster%5C.a&usedonly&x=a+b".parse().unwrap();
        let q = query(&u);
        assert_eq!(q["filter"], "cluster\\.a");
        assert_eq!(q["usedonly"], "");
        assert_eq!(q["x"], "a b");
    }

    #[test]
    fn outlier_lines_as_envoy_prints_them() {
        let mut s = String::new();
        outlier_lines(&mut s, "c", [(-1.0, -1.0), (93.5, 40.0)]);
        assert_eq!(
            s,
            "c::outlier::success_rate_average::-1\n\
             c::outlier::success_rate_ejection_threshold::-1\n\
             c::outlier::local_origin_success_rate_average::93.5\n\
             c::outlier::local_origin_success_rate_ejection_threshold::40\n"
        );
    }

    #[test]
    fn circuit_breaker_lines_per_priority() {
        let cb = crate::model::cluster::CircuitBreakers::default();
        let mut s = String::new();
        circuit_breaker_lines(&mut s, "c", &cb);
        assert!(s.starts_with("c::default_priority::max_connections::1024\n"));
        assert!(s.contains("c::high_priority::max_retries::3\n"));
        assert_eq!(s.lines().count(), 8);
        let json = circuit_breakers_json(&cb);
        assert_eq!(json.thresholds.len(), 2);
        assert_eq!(
            json.thresholds[1].priority,
            core::RoutingPriority::High as i32
        );
    }
}
