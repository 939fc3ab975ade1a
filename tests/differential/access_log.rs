//! Access-log lines under the same format strings: a case per command operator remora
//! supports (`proxy/src/model/format.rs`), with arguments and `:N` truncation where they apply,
//! and the text and JSON formats (`log_format.text_format[_source]`, `log_format.json_format`
//! with and without `omit_empty_values`, the file logger's own `format`, `json_format` and
//! `typed_json_format`). One listener carries one file logger per case, each filtered to its
//! case's request (`header_filter` on `x-case`), so every file holds one line. Lines are
//! compared after masking only what differs by construction: times and durations (digits),
//! ephemeral ports of the client and of the two proxies' listeners and upstream connections,
//! connection ids.

use crate::CaseResult;
use crate::cases::req;
use crate::compare::diff;
use crate::oracle::{Pair, Side};
use crate::support::{bootstrap, cluster, raw_exchange, upstream};
use std::path::Path;
use std::time::Duration;

/// How a case's logger formats.
#[derive(Clone, Copy)]
enum Fmt {
    /// `log_format.text_format_source.inline_string` (a newline is added).
    Text(&'static str),
    /// `log_format.text_format`.
    TextFormat(&'static str),
    /// `log_format.json_format` (a JSON object), `omit_empty_values`.
    Json(&'static str, bool),
    /// The file logger's deprecated `json_format`.
    FileJson(&'static str),
    /// The file logger's deprecated `typed_json_format`.
    FileTypedJson(&'static str),
    /// No format: Envoy's default.
    Default,
}

/// What a case's line is compared as.
#[derive(Clone, Copy)]
enum Norm {
    Exact,
    /// Every run of digits is `N` (times, durations, ports, ids).
    Digits,
    /// `127.0.0.1:<port>` (the client's, the listener's, an upstream connection's port).
    Ports,
}

struct AlCase {
    name: &'static str,
    fmt: Fmt,
    method: &'static str,
    host: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    norm: Norm,
    /// An access-log filter (YAML flow mapping) ANDed with the case's own header filter: the
    /// case's file then holds its line or nothing.
    filter: Option<&'static str>,
}

const H: &str = "al.test";

const fn c(name: &'static str, fmt: Fmt, path: &'static str, norm: Norm) -> AlCase {
    AlCase {
        name,
        fmt,
        method: "GET",
        host: H,
        path,
        headers: &[],
        norm,
        filter: None,
    }
}

const fn ch(
    name: &'static str,
    fmt: Fmt,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    norm: Norm,
) -> AlCase {
    AlCase {
        name,
        fmt,
        method: "GET",
        host: H,
        path,
        headers,
        norm,
        filter: None,
    }
}

use Fmt::{Default as DefaultFmt, FileJson, FileTypedJson, Json, Text, TextFormat};
use Norm::{Digits, Exact, Ports};

fn cases() -> Vec<AlCase> {
    vec![
        c("start_time", Text("%START_TIME%"), "/status/200", Digits),
        c(
            "start_time_format",
            Text("%START_TIME(%Y/%m/%dT%H:%M:%S%z)% %START_TIME(%a %b %e %j)%"),
            "/status/200",
            Digits,
        ),
        c(
            "start_time_fractions",
            Text("%START_TIME(%s.%3f)% %START_TIME(%6f|%9f|%f)% %START_TIME(%E3S)%"),
            "/status/200",
            Digits,
        ),
        ch(
            "req",
            Text(
                "%REQ(X-A)% %REQ(:METHOD)% %REQ(:PATH)% %REQ(:AUTHORITY)% %REQ(:SCHEME)% %REQ(USER-AGENT)%",
            ),
            "/status/200?q=1",
            &[("x-a", "a value"), ("user-agent", "ua/1")],
            Exact,
        ),
        ch(
            "req_alternative_and_missing",
            Text("%REQ(X-MISSING?X-B)% %REQ(X-MISSING)% %REQ(X-B?X-A)% [%REQ(X-EMPTY)%]"),
            "/status/200",
            &[("x-b", "bee"), ("x-a", "a"), ("x-empty", "")],
            Exact,
        ),
        ch(
            "req_truncated",
            Text("%REQ(X-LONG):5% %REQ(:PATH):3% %REQ(X-MISSING):2% %REQ(X-LONG):0%"),
            "/status/200",
            &[("x-long", "0123456789")],
            Exact,
        ),
        ch(
            "req_repeated_header",
            Text("%REQ(X-R)%"),
            "/status/200",
            &[("x-r", "one"), ("x-r", "two")],
            Exact,
        ),
        c(
            "req_original_path",
            Text("%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %REQ(:PATH)% %REQ(X-ENVOY-ORIGINAL-PATH)%"),
            "/rewrite/x?y=1",
            Exact,
        ),
        c(
            "resp",
            Text(
                "%RESP(X-UPSTREAM)% %RESP(CONTENT-TYPE)% %RESP(X-NONE)% %RESP(X-NONE?X-UPSTREAM):3% %RESP(CONTENT-LENGTH)%",
            ),
            "/status/201",
            Exact,
        ),
        c(
            "resp_direct",
            Text("%RESP(CONTENT-TYPE)% %RESP(CONTENT-LENGTH)% %RESP(X-DIRECT)%"),
            "/direct",
            Exact,
        ),
        ch(
            "trailer",
            Text(
                "%TRAILER(GRPC-STATUS)% %TRAILER(GRPC-MESSAGE):1% %TRAILER(X-NONE)% %TRAILER(X-NONE?GRPC-STATUS)%",
            ),
            "/grpc",
            &[("te", "trailers")],
            Exact,
        ),
        c("protocol", Text("%PROTOCOL%"), "/status/200", Exact),
        c(
            "response_code_upstream",
            Text("%RESPONSE_CODE%"),
            "/status/418",
            Exact,
        ),
        c(
            "response_code_direct",
            Text("%RESPONSE_CODE%"),
            "/direct",
            Exact,
        ),
        AlCase {
            host: "nowhere.test",
            ..c(
                "flags_no_route",
                Text(
                    "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_FLAGS_LONG% %RESPONSE_CODE_DETAILS%",
                ),
                "/",
                Exact,
            )
        },
        c(
            "flags_upstream_failure",
            Text(
                "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_FLAGS_LONG% %RESPONSE_CODE_DETAILS% %UPSTREAM_TRANSPORT_FAILURE_REASON%",
            ),
            "/dead",
            Exact,
        ),
        c(
            "flags_timeout",
            Text("%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_FLAGS_LONG% %RESPONSE_CODE_DETAILS%"),
            "/slow",
            Exact,
        ),
        c(
            "flags_none",
            Text("%RESPONSE_FLAGS% %RESPONSE_FLAGS_LONG% %RESPONSE_CODE_DETAILS%"),
            "/status/200",
            Exact,
        ),
        c(
            "connection_termination_details",
            Text("%CONNECTION_TERMINATION_DETAILS% %DOWNSTREAM_TRANSPORT_FAILURE_REASON%"),
            "/status/200",
            Exact,
        ),
        // A request's line is written while its connection is open: no local close reason.
        c(
            "downstream_local_close_reason",
            Text("%DOWNSTREAM_LOCAL_CLOSE_REASON%"),
            "/status/200",
            Exact,
        ),
        AlCase {
            method: "POST",
            headers: &[("content-length", "11")],
            ..c(
                "bytes",
                Text("%BYTES_RECEIVED% %BYTES_SENT%"),
                "/status/200",
                Exact,
            )
        },
        c(
            "durations",
            Text("%DURATION% %REQUEST_DURATION% %RESPONSE_DURATION% %RESPONSE_TX_DURATION%"),
            "/status/200",
            Digits,
        ),
        c(
            "durations_direct",
            Text("%DURATION% %REQUEST_DURATION% %RESPONSE_DURATION% %RESPONSE_TX_DURATION%"),
            "/direct",
            Digits,
        ),
        c(
            "upstream",
            Text(
                "%UPSTREAM_HOST% %UPSTREAM_CLUSTER% %UPSTREAM_CLUSTER_RAW% %UPSTREAM_REMOTE_ADDRESS% %UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
            ),
            "/status/200",
            Exact,
        ),
        c(
            "upstream_direct",
            Text(
                "%UPSTREAM_HOST% %UPSTREAM_CLUSTER% %UPSTREAM_LOCAL_ADDRESS% %UPSTREAM_REMOTE_ADDRESS% %UPSTREAM_REQUEST_ATTEMPT_COUNT%",
            ),
            "/direct",
            Exact,
        ),
        c(
            "upstream_local_address",
            Text("%UPSTREAM_LOCAL_ADDRESS%"),
            "/status/200",
            Ports,
        ),
        c(
            "attempt_count",
            Text("%UPSTREAM_REQUEST_ATTEMPT_COUNT% %RESPONSE_CODE% %RESPONSE_FLAGS%"),
            "/retry",
            Exact,
        ),
        c(
            "downstream_local",
            Text(
                "%DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT% %DOWNSTREAM_LOCAL_PORT%",
            ),
            "/status/200",
            Digits,
        ),
        c(
            "downstream_remote",
            Text(
                "%DOWNSTREAM_REMOTE_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %DOWNSTREAM_REMOTE_PORT% %DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT%",
            ),
            "/status/200",
            Digits,
        ),
        ch(
            "downstream_remote_from_xff",
            Text(
                "%DOWNSTREAM_REMOTE_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT%",
            ),
            "/status/200",
            &[("x-forwarded-for", "10.1.2.3, 192.0.2.7")],
            Exact,
        ),
        c(
            "requested_server_name",
            Text(
                "%REQUESTED_SERVER_NAME% %DOWNSTREAM_PEER_URI_SAN% %DOWNSTREAM_TLS_VERSION% %UPSTREAM_TLS_VERSION% %DOWNSTREAM_PEER_CERT_V_START% %DOWNSTREAM_TLS_SESSION_ID% %UPSTREAM_PEER_SUBJECT%",
            ),
            "/status/200",
            Exact,
        ),
        c("route_name", Text("%ROUTE_NAME%"), "/status/200", Exact),
        AlCase {
            host: "nowhere.test",
            ..c(
                "route_name_none",
                Text("%ROUTE_NAME% %UPSTREAM_CLUSTER%"),
                "/",
                Exact,
            )
        },
        c("hostname", Text("%HOSTNAME%"), "/status/200", Exact),
        c(
            "connection_id",
            Text("%CONNECTION_ID%"),
            "/status/200",
            Digits,
        ),
        c(
            "local_reply_body",
            Text("[%LOCAL_REPLY_BODY%]"),
            "/dead",
            Exact,
        ),
        c(
            "local_reply_body_upstream",
            Text("[%LOCAL_REPLY_BODY%]"),
            "/status/200",
            Exact,
        ),
        c(
            "environment",
            Text(
                "%ENVIRONMENT(HOME)% %ENVIRONMENT(REMORA_DIFF_NO_SUCH_VAR)% %ENVIRONMENT(HOME):2%",
            ),
            "/status/200",
            Exact,
        ),
        c(
            "metadata_and_filter_state",
            Text(
                "%DYNAMIC_METADATA(ns:k)% %FILTER_STATE(some.key)% %UPSTREAM_METADATA(ns:k)% %UPSTREAM_FILTER_STATE(some.key)% %DYNAMIC_METADATA(ns:k):1% %FILTER_STATE(some.key):1%",
            ),
            "/status/200",
            Exact,
        ),
        c(
            "cluster_metadata",
            Text("%CLUSTER_METADATA(ns:k)% %CLUSTER_METADATA(ns:missing)%"),
            "/status/200",
            Exact,
        ),
        c(
            "literal_percent",
            Text("100%% of %PROTOCOL% %%REQ%%"),
            "/status/200",
            Exact,
        ),
        c(
            "text_format",
            TextFormat("%RESPONSE_CODE% %REQ(:PATH)%\n"),
            "/status/204",
            Exact,
        ),
        ch(
            "default_format",
            DefaultFmt,
            "/status/200",
            &[("x-request-id", "fixed-id"), ("user-agent", "ua/1")],
            Digits,
        ),
        ch(
            "json",
            Json(
                r#"{"code": "%RESPONSE_CODE%", "flags": "%RESPONSE_FLAGS%", "path": "%REQ(:PATH)%", "missing": "%REQ(X-NONE)%", "nested": {"m": "%REQ(:METHOD)%", "z": "%REQ(X-A):2%"}, "lit": 5, "flag": true, "mixed": "c=%RESPONSE_CODE% p=%PROTOCOL%", "bytes": "%BYTES_SENT%", "plain": "text"}"#,
                false,
            ),
            "/status/200",
            &[("x-a", "abcdef")],
            Exact,
        ),
        ch(
            "json_omit_empty_values",
            Json(
                r#"{"code": "%RESPONSE_CODE%", "missing": "%REQ(X-NONE)%", "empty": "%REQ(X-EMPTY)%", "nested": {"gone": "%RESP(X-NONE)%"}, "mixed": "x=%REQ(X-NONE)%"}"#,
                true,
            ),
            "/status/200",
            &[("x-empty", "")],
            Exact,
        ),
        c(
            "json_durations",
            Json(
                r#"{"d": "%DURATION%", "t": "%START_TIME%", "rd": "%RESPONSE_DURATION%"}"#,
                false,
            ),
            "/status/200",
            Digits,
        ),
        c(
            "json_no_route",
            Json(
                r#"{"code": "%RESPONSE_CODE%", "route": "%ROUTE_NAME%", "cluster": "%UPSTREAM_CLUSTER%", "host": "%UPSTREAM_HOST%", "attempts": "%UPSTREAM_REQUEST_ATTEMPT_COUNT%", "details": "%RESPONSE_CODE_DETAILS%"}"#,
                false,
            ),
            "/nope",
            Exact,
        ),
        ch(
            "file_json_format",
            FileJson(
                r#"{"code": "%RESPONSE_CODE%", "missing": "%REQ(X-NONE)%", "bytes": "%BYTES_RECEIVED%", "a": "%REQ(X-A)%"}"#,
            ),
            "/status/200",
            &[("x-a", "1")],
            Exact,
        ),
        ch(
            "file_typed_json_format",
            FileTypedJson(
                r#"{"code": "%RESPONSE_CODE%", "missing": "%REQ(X-NONE)%", "bytes": "%BYTES_RECEIVED%", "a": "%REQ(X-A)%", "port": "%UPSTREAM_REQUEST_ATTEMPT_COUNT%"}"#,
            ),
            "/status/200",
            &[("x-a", "1")],
            Exact,
        ),
        ch(
            "json_escaping",
            Json(
                r#"{"v": "%REQ(X-ESC)%", "q": "say \"%REQ(X-ESC)%\""}"#,
                false,
            ),
            "/status/200",
            &[("x-esc", "a\"b\\c\tTAB é")],
            Exact,
        ),
    ]
}

/// Cases of access-log filters: the line is written, or not, on both sides.
fn filters() -> Vec<AlCase> {
    const F: Fmt = Fmt::Text("%RESPONSE_CODE% %RESPONSE_FLAGS%");
    let f = |name, path, filter| AlCase {
        filter: Some(filter),
        ..c(name, F, path, Exact)
    };
    vec![
        f(
            "filter/status_ge_400_kept",
            "/status/404",
            "{status_code_filter: {comparison: {op: GE, value: {default_value: 400, runtime_key: al.k}}}}",
        ),
        f(
            "filter/status_ge_400_dropped",
            "/status/200",
            "{status_code_filter: {comparison: {op: GE, value: {default_value: 400, runtime_key: al.k}}}}",
        ),
        f(
            "filter/status_eq_local_reply",
            "/dead",
            "{status_code_filter: {comparison: {op: EQ, value: {default_value: 503, runtime_key: al.k}}}}",
        ),
        f(
            "filter/response_flag_uf",
            "/dead",
            "{response_flag_filter: {flags: [UF]}}",
        ),
        f(
            "filter/response_flag_uf_dropped",
            "/status/200",
            "{response_flag_filter: {flags: [UF]}}",
        ),
        f(
            "filter/response_flag_any",
            "/nope",
            "{response_flag_filter: {}}",
        ),
        f(
            "filter/or",
            "/status/418",
            "{or_filter: {filters: [{status_code_filter: {comparison: {op: EQ, value: {default_value: 404, runtime_key: al.k}}}}, {status_code_filter: {comparison: {op: EQ, value: {default_value: 418, runtime_key: al.k}}}}]}}",
        ),
        f(
            "filter/not_health_check",
            "/status/200",
            "{not_health_check_filter: {}}",
        ),
        f(
            "filter/duration_le",
            "/status/200",
            "{duration_filter: {comparison: {op: LE, value: {default_value: 100000, runtime_key: al.d}}}}",
        ),
        f(
            "filter/duration_ge_dropped",
            "/status/200",
            "{duration_filter: {comparison: {op: GE, value: {default_value: 100000, runtime_key: al.d}}}}",
        ),
        AlCase {
            headers: &[("x-flag", "")],
            ..f(
                "filter/header_present",
                "/status/200",
                "{header_filter: {header: {name: x-flag, present_match: true}}}",
            )
        },
        f(
            "filter/header_absent_dropped",
            "/status/200",
            "{header_filter: {header: {name: x-flag, present_match: true}}}",
        ),
    ]
}

/// The logger of case `i` (YAML, indented for the HCM).
fn logger(i: usize, c: &AlCase) -> String {
    let q = |s: &str| serde_json::to_string(s).unwrap();
    let format = match c.fmt {
        Fmt::Text(f) => format!(
            "              log_format: {{text_format_source: {{inline_string: {}}}}}\n",
            q(&format!("{f}\n"))
        ),
        Fmt::TextFormat(f) => format!("              log_format: {{text_format: {}}}\n", q(f)),
        Fmt::Json(j, omit) => {
            format!("              log_format: {{json_format: {j}, omit_empty_values: {omit}}}\n")
        }
        Fmt::FileJson(j) => format!("              json_format: {j}\n"),
        Fmt::FileTypedJson(j) => format!("              typed_json_format: {j}\n"),
        Fmt::Default => String::new(),
    };
    let own = format!(
        "{{header_filter: {{header: {{name: x-case, string_match: {{exact: \"{}\"}}}}}}}}",
        c.name
    );
    let filter = match c.filter {
        Some(f) => format!("{{and_filter: {{filters: [{own}, {f}]}}}}"),
        None => own,
    };
    format!(
        r#"          - name: envoy.access_loggers.file
            filter: {filter}
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: RUN_DIR/al_{i}.log
{format}"#
    )
}

const ROUTES: &str = r#"            virtual_hosts:
            - name: al
              domains: ["al.test"]
              routes:
              - {name: rewrite, match: {prefix: "/rewrite/"}, route: {cluster: backend, prefix_rewrite: "/status/200/"}}
              - name: direct
                match: {path: "/direct"}
                direct_response: {status: 200, body: {inline_string: "hello"}}
                response_headers_to_add: [{header: {key: x-direct, value: d}}]
              - {name: dead, match: {path: "/dead"}, route: {cluster: dead}}
              - {name: slow, match: {path: "/slow"}, route: {cluster: backend, timeout: 0.2s, prefix_rewrite: "/delay/1500"}}
              - {name: retry, match: {path: "/retry"}, route: {cluster: backend, prefix_rewrite: "/status/503", retry_policy: {retry_on: 5xx, num_retries: 1}}}
              - {name: status_route, match: {prefix: "/status/"}, route: {cluster: backend}}
              - {name: grpc, match: {prefix: "/grpc"}, route: {cluster: backend}}
"#;

pub async fn run(envoy: &Path, filter: Option<&str>) -> Vec<CaseResult> {
    let cases: Vec<AlCase> = cases()
        .into_iter()
        .chain(filters())
        .filter(|c| filter.is_none_or(|f| format!("access_log/{}", c.name).contains(f)))
        .collect();
    if cases.is_empty() {
        return Vec::new();
    }
    let backend = upstream("backend").await;
    let loggers: String = cases
        .iter()
        .enumerate()
        .map(|(i, c)| logger(i, c))
        .collect();
    let listener = format!(
        r#"  - name: al
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: al
          access_log:
{loggers}          route_config:
            name: al_routes
{ROUTES}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#
    );
    let clusters = [
        cluster(
            "backend",
            &[backend.addr],
            "    metadata: {filter_metadata: {ns: {k: v}}}\n",
        ),
        cluster("dead", &["127.0.0.1:1".parse().unwrap()], ""),
    ]
    .concat();
    let pair = Pair::start(envoy, &bootstrap(&listener, &clusters)).await;
    for c in &cases {
        let mut r = req(c.name, c.method, c.host, c.path, c.headers);
        if c.method == "POST" {
            r.extend_from_slice(b"hello world");
        }
        for side in Side::BOTH {
            let _ = raw_exchange(pair.get(side).addr("al"), &r, Duration::from_secs(4)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut results = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let lines: Vec<String> = Side::BOTH
            .iter()
            .map(|s| {
                // A logger whose filter dropped every line may leave no file at all.
                let text = std::fs::read_to_string(pair.get(*s).dir.path(&format!("al_{i}.log")))
                    .unwrap_or_default();
                normalise(&text, c.norm)
            })
            .collect();
        results.push(CaseResult {
            group: "access_log",
            id: format!("access_log/{}", c.name),
            diff: diff(&lines[0], &lines[1]),
        });
    }
    results
}

fn normalise(text: &str, norm: Norm) -> String {
    match norm {
        Norm::Exact => text.to_string(),
        Norm::Digits => {
            let mut out = String::new();
            let mut in_digits = false;
            for ch in text.chars() {
                if ch.is_ascii_digit() {
                    if !in_digits {
                        out.push('N');
                    }
                    in_digits = true;
                } else {
                    out.push(ch);
                    in_digits = false;
                }
            }
            out
        }
        Norm::Ports => {
            let mut out = String::new();
            let mut rest = text;
            while let Some(i) = rest.find("127.0.0.1:") {
                out.push_str(&rest[..i + 10]);
                out.push_str("<port>");
                rest = rest[i + 10..].trim_start_matches(|c: char| c.is_ascii_digit());
            }
            out.push_str(rest);
            out
        }
    }
}
