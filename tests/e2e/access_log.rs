//! Access logs: Envoy's default format, custom text formats, json_format, stdout, filters.

use crate::support::*;
use std::time::Duration;

async fn read_lines(path: &std::path::Path, n: usize) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        if lines.len() >= n {
            return lines;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {} of {n} log lines: {text}",
            lines.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn file_log(path: &str, format: &str) -> String {
    format!(
        "          - name: envoy.access_loggers.file\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog\n              path: {path}\n{format}"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn default_custom_and_json_formats() {
    let u = upstream("u").await;
    let logs = format!(
        "          access_log:\n{}{}{}",
        file_log("RUN_DIR/default.log", ""),
        file_log(
            "RUN_DIR/text.log",
            "              log_format: {text_format_source: {inline_string: \"%REQ(:METHOD)% %REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %ROUTE_NAME% %UPSTREAM_CLUSTER% %REQ(X-CUSTOM):3%\\n\"}}\n"
        ),
        file_log(
            "RUN_DIR/json.log",
            "              log_format:\n                json_format: {code: \"%RESPONSE_CODE%\", flags: \"%RESPONSE_FLAGS%\", path: \"%REQ(:PATH)%\", bytes: \"%BYTES_SENT%\", missing: \"%REQ(X-NOPE)%\", nested: {method: \"%REQ(:METHOD)%\"}}\n"
        ),
    );
    let vhosts = "            - name: all\n              domains: [\"*\"]\n              routes:\n              - name: to_u\n                match: {prefix: \"/\"}\n                route: {cluster: u}\n";
    let r = Remora::start(&bootstrap(
        &http_listener("main", &logs, vhosts),
        &cluster("u", &[u.addr], ""),
    ))
    .await;
    let resp = get_with(
        r.addr("main"),
        "example.com",
        "/path?q=1",
        &[
            ("user-agent", "test-agent"),
            ("x-custom", "abcdef"),
            ("x-forwarded-for", "10.0.0.9"),
        ],
    )
    .await;
    assert_eq!(resp.status, 200);
    let len = resp.body.len();

    let d = read_lines(&r.dir.path("default.log"), 1).await;
    // [time] "GET /path?q=1 HTTP/1.1" 200 - 0 <len> <ms> <ms> "10.0.0.9" "test-agent" "<id>" "example.com" "<upstream>"
    let line = &d[0];
    assert!(
        line.starts_with('[') && line.as_bytes()[25] == b']',
        "{line}"
    );
    let rest = &line[27..];
    let expected_prefix = format!("\"GET /path?q=1 HTTP/1.1\" 200 - 0 {len} ");
    assert!(rest.starts_with(&expected_prefix), "{rest}");
    assert!(rest.contains("\"10.0.0.9\" \"test-agent\" \""), "{rest}");
    assert!(
        rest.ends_with(&format!("\"example.com\" \"{}\"", u.addr)),
        "{rest}"
    );

    let t = read_lines(&r.dir.path("text.log"), 1).await;
    assert_eq!(t[0], "GET /path?q=1 200 - to_u u abc");

    let j = read_lines(&r.dir.path("json.log"), 1).await;
    let v: serde_json::Value = serde_json::from_str(&j[0]).unwrap();
    assert_eq!(v["code"], 200);
    assert_eq!(v["flags"], "-");
    assert_eq!(v["path"], "/path?q=1");
    assert_eq!(v["bytes"], len as u64);
    // A missing value is null in JSON, as Envoy writes it (differential access_log/json).
    assert_eq!(v["missing"], serde_json::Value::Null);
    assert_eq!(v["nested"]["method"], "GET");
    // Keys are sorted, as Envoy writes them.
    assert!(j[0].starts_with("{\"bytes\":"), "{}", j[0]);
}

#[tokio::test(flavor = "multi_thread")]
async fn filters_select_lines_and_stdout_logger_works() {
    let u = upstream("u").await;
    let logs = format!(
        "          access_log:\n{}          - name: envoy.access_loggers.stdout\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog\n              log_format: {{text_format_source: {{inline_string: \"STDOUT %RESPONSE_CODE%\\n\"}}}}\n",
        file_log("RUN_DIR/errors.log", "              log_format: {text_format_source: {inline_string: \"%RESPONSE_CODE% %RESPONSE_FLAGS%\\n\"}}\n")
            .replace("          - name: envoy.access_loggers.file\n", "          - name: envoy.access_loggers.file\n            filter: {status_code_filter: {comparison: {op: GE, value: {default_value: 400, runtime_key: unset_key}}}}\n"),
    );
    let vhosts = "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {prefix: \"/\"}\n                route: {cluster: u}\n";
    let r = Remora::start(&bootstrap(
        &http_listener("main", &logs, vhosts),
        &cluster("u", &[u.addr], ""),
    ))
    .await;
    assert_eq!(get(r.addr("main"), "x", "/ok").await.status, 200);
    assert_eq!(get(r.addr("main"), "x", "/status/503").await.status, 503);
    assert_eq!(get(r.addr("main"), "x", "/status/404").await.status, 404);
    let lines = read_lines(&r.dir.path("errors.log"), 2).await;
    assert_eq!(lines, ["503 -", "404 -"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while r.stdout().matches("STDOUT").count() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "stdout: {}",
            r.stdout()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        r.stdout().contains("STDOUT 200\nSTDOUT 503\nSTDOUT 404\n"),
        "{}",
        r.stdout()
    );
}

/// `%DOWNSTREAM_LOCAL_CLOSE_REASON%` in a listener's access log (one line per connection), as
/// Envoy 1.40 writes it: a connection the connection manager closed after
/// `max_requests_per_connection` is `deferred_close_on_drained_connection`, one it closed for the
/// idle timeout `on_idle_timeout`; the request's own line (written while the connection is open)
/// has `-`.
#[tokio::test(flavor = "multi_thread")]
async fn the_connection_managers_local_close_reason() {
    let app = upstream("app").await;
    let vh = "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {prefix: /}\n                route: {cluster: app}\n";
    let hcm = format!(
        "          common_http_protocol_options: {{idle_timeout: 0.3s, max_requests_per_connection: 1}}\n          access_log:\n{}",
        file_log(
            "RUN_DIR/http.log",
            "              log_format: {text_format_source: {inline_string: \"request [%DOWNSTREAM_LOCAL_CLOSE_REASON%]\\n\"}}\n"
        )
    );
    let listener_log = "    - name: envoy.access_loggers.file\n      typed_config:\n        \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog\n        path: RUN_DIR/conn.log\n        log_format: {text_format_source: {inline_string: \"connection [%DOWNSTREAM_LOCAL_CLOSE_REASON%]\\n\"}}\n";
    let l = http_listener("h", &hcm, vh).replacen(
        "    filter_chains:",
        &format!("    access_log:\n{listener_log}    filter_chains:"),
        1,
    );
    let r = Remora::start(&bootstrap(&l, &cluster("app", &[app.addr], ""))).await;
    // Drained after its one request.
    let resp = get(r.addr("h"), "a", "/").await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        read_lines(&r.dir.path("http.log"), 1).await,
        ["request [-]"]
    );
    assert_eq!(
        read_lines(&r.dir.path("conn.log"), 1).await,
        ["connection [deferred_close_on_drained_connection]"]
    );
    // Idle until the connection manager closes it.
    let mut s = tokio::net::TcpStream::connect(r.addr("h")).await.unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(
        Duration::from_secs(3),
        tokio::io::AsyncReadExt::read_to_end(&mut s, &mut rest),
    )
    .await;
    assert!(closed.is_ok(), "the idle connection was not closed");
    assert_eq!(
        read_lines(&r.dir.path("conn.log"), 2).await[1],
        "connection [on_idle_timeout]"
    );
}
