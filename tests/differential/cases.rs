//! HTTP cases: a request sent as raw bytes to the same listener of both proxies; the responses
//! and the access-log lines the requests left are compared.

use crate::CaseResult;
use crate::compare::{diff, log_line, observe};
use crate::oracle::{Pair, Side};
use crate::support::raw_exchange;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

/// The access log every case group's HTTP listeners write: the first field is the case id (the
/// `x-case` request header), the rest what both proxies decide about the request.
pub const ACCESS_LOG_FORMAT: &str = "[%REQ(X-CASE)%] %RESPONSE_CODE% %RESPONSE_FLAGS% \
%RESPONSE_CODE_DETAILS% %REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL% \
%BYTES_RECEIVED% %BYTES_SENT% %UPSTREAM_CLUSTER% %ROUTE_NAME% %REQ(:AUTHORITY)% \
%UPSTREAM_TRANSPORT_FAILURE_REASON% %CONNECTION_TERMINATION_DETAILS%";

/// The HCM's `access_log` entry (YAML, indented for `support::http_listener`'s `hcm_extra`).
pub fn access_log() -> String {
    format!(
        r#"          access_log:
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

/// An address that refuses connections: port 1, never an ephemeral port, so no listener of the
/// run can take it (a port freed by `support::closed_port` may be handed to one of the proxies'
/// listeners).
pub fn refused() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 1))
}

/// A listener on an ephemeral port with one HTTP connection manager (`stat_prefix: name`): `hcm`
/// is its other fields (access log, `route_config`, …) indented for the HCM, `filters` the HTTP
/// filter entries before the router.
pub fn hcm_listener(name: &str, hcm: &str, filters: &str) -> String {
    format!(
        r#"  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
{hcm}          http_filters:
{filters}          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#
    )
}

/// A `route_config` (indented for the HCM) whose one virtual host `all` takes every domain to
/// `routes`.
pub fn one_vhost(routes: &str) -> String {
    format!(
        r#"          route_config:
            name: routes
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
{routes}
"#
    )
}

pub struct HttpCase {
    pub id: String,
    pub listener: &'static str,
    pub request: Vec<u8>,
}

/// A request with `x-case: id` and `connection: close` (the proxy closes after answering, so
/// the client reads to the end).
pub fn req(id: &str, method: &str, host: &str, path: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nhost: {host}\r\nx-case: {id}\r\n");
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    r.push_str("connection: close\r\n\r\n");
    r.into_bytes()
}

impl HttpCase {
    pub fn new(id: impl Into<String>, listener: &'static str, request: Vec<u8>) -> Self {
        Self {
            id: id.into(),
            listener,
            request,
        }
    }
}

/// Runs the cases one after the other on both proxies; then compares each case's access-log
/// line (matched by case id).
pub async fn run(group: &'static str, pair: &Pair, cases: Vec<HttpCase>) -> Vec<CaseResult> {
    let mut results = Vec::new();
    for c in &cases {
        let mut seen = Vec::new();
        for side in Side::BOTH {
            let addr = pair.get(side).addr(c.listener);
            let bytes = raw_exchange(addr, &c.request, Duration::from_secs(3))
                .await
                .unwrap_or_else(|e| format!("<connect error {e}>").into_bytes());
            seen.push(observe(&bytes).text);
        }
        results.push(CaseResult {
            group,
            id: c.id.clone(),
            diff: diff(&seen[0], &seen[1]).map(|d| format!("response: {d}")),
        });
    }
    compare_logs(pair, group, &mut results).await;
    results
}

/// Each case's access-log line on both sides; a case whose responses matched but whose lines
/// differ is a difference too.
/// A line names its case by the `x-case` header: the case id without the group's prefix.
pub async fn compare_logs(pair: &Pair, group: &str, results: &mut [CaseResult]) {
    tokio::time::sleep(Duration::from_millis(600)).await;
    let lines = |side: Side| -> HashMap<String, String> {
        let path = pair.get(side).dir.path("access.log");
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let id = l.strip_prefix('[')?.split_once(']')?.0.to_string();
                Some((id, log_line(l)))
            })
            .collect()
    };
    let (envoy, remora) = (lines(Side::Envoy), lines(Side::Remora));
    for r in results.iter_mut() {
        let none = String::from("<no access-log line>");
        let key = r.id.strip_prefix(group).and_then(|k| k.strip_prefix('/'));
        let key = key.unwrap_or(&r.id);
        let e = envoy.get(key).unwrap_or(&none);
        let m = remora.get(key).unwrap_or(&none);
        if let Some(d) = diff(e, m) {
            let d = format!("access log: {d}");
            r.diff = Some(match r.diff.take() {
                Some(prev) => format!("{prev}\n{d}"),
                None => d,
            });
        }
    }
}

/// Runs every case of `all` (each may depend on the ones before it, and stats count them all)
/// and reports the ones whose id contains the filter; none at all when no case is wanted.
pub async fn run_all_report(
    group: &'static str,
    pair: &Pair,
    all: Vec<HttpCase>,
    filter: Option<&str>,
) -> Vec<CaseResult> {
    let mut results = run(group, pair, all).await;
    results.retain(|r| filter.is_none_or(|f| r.id.contains(f)));
    results
}

/// Whether some case's id contains the filter.
pub fn any_wanted(cases: &[HttpCase], filter: Option<&str>) -> bool {
    cases
        .iter()
        .any(|c| filter.is_none_or(|f| c.id.contains(f)))
}

/// Only the cases whose id contains the filter.
pub fn filtered(cases: Vec<HttpCase>, filter: Option<&str>) -> Vec<HttpCase> {
    cases
        .into_iter()
        .filter(|c| filter.is_none_or(|f| c.id.contains(f)))
        .collect()
}
