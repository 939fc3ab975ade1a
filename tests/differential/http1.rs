//! HTTP/1.1 framing and parsing: what both proxies answer to malformed, ambiguous or unusual
//! requests (status, headers, body, and whether the request reached the upstream).

use crate::CaseResult;
use crate::cases::{self, HttpCase};
use crate::oracle::Pair;
use crate::support::{bootstrap, cluster, http_listener, upstream};
use std::path::Path;

pub async fn run(envoy: &Path, filter: Option<&str>) -> Vec<CaseResult> {
    let cases = cases::filtered(all_cases(), filter);
    if cases.is_empty() {
        return Vec::new();
    }
    let backend = upstream("backend").await;
    let vhosts = "            - name: all\n              domains: [\"*\"]\n              routes:\n              - {name: all, match: {prefix: \"/\"}, route: {cluster: backend}}\n";
    let yaml = bootstrap(
        &http_listener("in", &cases::access_log(), vhosts),
        &cluster("backend", &[backend.addr], ""),
    );
    let pair = Pair::start(envoy, &yaml).await;
    cases::run("http1", &pair, cases).await
}

/// `request_line`, the host and case headers, `headers` (each ending in CRLF), then `body`.
fn raw(id: &str, request_line: &str, headers: &str, body: &str) -> HttpCase {
    HttpCase::new(
        format!("http1/{id}"),
        "in",
        format!("{request_line}\r\nhost: h1.test\r\nx-case: {id}\r\n{headers}\r\n{body}")
            .into_bytes(),
    )
}

/// A POST with these framing headers and body.
fn post(id: &str, headers: &str, body: &str) -> HttpCase {
    raw(
        id,
        "POST /p HTTP/1.1",
        &format!("{headers}connection: close\r\n"),
        body,
    )
}

fn get(id: &str, request_line: &str, headers: &str) -> HttpCase {
    raw(
        id,
        request_line,
        &format!("{headers}connection: close\r\n"),
        "",
    )
}

fn all_cases() -> Vec<HttpCase> {
    let mut c = framing();
    c.extend(request_lines());
    c.extend(headers());
    c
}

fn framing() -> Vec<HttpCase> {
    let te = "transfer-encoding: chunked\r\n";
    vec![
        post("chunked_valid", te, "5\r\nhello\r\n0\r\n\r\n"),
        post("chunked_extension", te, "5;ext=1\r\nhello\r\n0\r\n\r\n"),
        post("chunked_upper_hex", te, "A\r\n0123456789\r\n0\r\n\r\n"),
        post("chunked_trailers", te, "5\r\nhello\r\n0\r\nx-t: 1\r\n\r\n"),
        post("chunked_non_hex", te, "zz\r\nhello\r\n0\r\n\r\n"),
        post("chunked_plus_sign", te, "+5\r\nhello\r\n0\r\n\r\n"),
        post("chunked_0x_prefix", te, "0x5\r\nhello\r\n0\r\n\r\n"),
        post("chunked_negative", te, "-5\r\nhello\r\n0\r\n\r\n"),
        post(
            "chunked_overflow",
            te,
            "fffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
        ),
        post("chunked_space_before_size", te, " 5\r\nhello\r\n0\r\n\r\n"),
        post(
            "chunked_missing_crlf_after_data",
            te,
            "5\r\nhelloX0\r\n\r\n",
        ),
        post(
            "cl_and_te",
            &format!("content-length: 5\r\n{te}"),
            "5\r\nhello\r\n0\r\n\r\n",
        ),
        post(
            "te_gzip_chunked",
            "transfer-encoding: gzip, chunked\r\n",
            "5\r\nhello\r\n0\r\n\r\n",
        ),
        post("te_identity", "transfer-encoding: identity\r\n", ""),
        post(
            "te_chunked_upper",
            "transfer-encoding: Chunked\r\n",
            "5\r\nhello\r\n0\r\n\r\n",
        ),
        post("cl_valid", "content-length: 5\r\n", "hello"),
        post("cl_zero", "content-length: 0\r\n", ""),
        post(
            "cl_duplicate_same",
            "content-length: 5\r\ncontent-length: 5\r\n",
            "hello",
        ),
        post(
            "cl_duplicate_different",
            "content-length: 5\r\ncontent-length: 6\r\n",
            "hello!",
        ),
        post("cl_list_same", "content-length: 5, 5\r\n", "hello"),
        post("cl_non_numeric", "content-length: abc\r\n", ""),
        post("cl_plus_sign", "content-length: +5\r\n", "hello"),
        post("cl_negative", "content-length: -1\r\n", ""),
        post(
            "cl_overflow",
            "content-length: 99999999999999999999999\r\n",
            "",
        ),
        post("post_without_length", "", ""),
    ]
}

fn request_lines() -> Vec<HttpCase> {
    vec![
        get("method_unknown", "FOO /x HTTP/1.1", ""),
        get("method_lowercase", "get /x HTTP/1.1", ""),
        get("method_options_star", "OPTIONS * HTTP/1.1", ""),
        get("method_connect", "CONNECT h1.test:443 HTTP/1.1", ""),
        get("method_delete", "DELETE /x HTTP/1.1", ""),
        get("version_1_2", "GET /x HTTP/1.2", ""),
        get("version_2_0", "GET /x HTTP/2.0", ""),
        get("version_1_0", "GET /x HTTP/1.0", ""),
        get("version_lowercase", "GET /x http/1.1", ""),
        get("absolute_uri", "GET http://h1.test/abs?q=1 HTTP/1.1", ""),
        get(
            "absolute_uri_other_host",
            "GET http://other.test/abs HTTP/1.1",
            "",
        ),
        get("path_no_slash", "GET x HTTP/1.1", ""),
        get("path_dot_segments", "GET /a/../b HTTP/1.1", ""),
        get("path_encoded_slash", "GET /a%2Fb HTTP/1.1", ""),
        get("path_double_slash", "GET //a//b HTTP/1.1", ""),
        get("path_query_only", "GET /?a=1&b HTTP/1.1", ""),
        get("double_space", "GET  /x HTTP/1.1", ""),
        get(
            "long_path",
            &format!("GET /{} HTTP/1.1", "a".repeat(8000)),
            "",
        ),
    ]
}

fn headers() -> Vec<HttpCase> {
    let big = format!("x-big: {}\r\n", "b".repeat(61 * 1024));
    let many: String = (0..101).map(|i| format!("x-h{i}: v\r\n")).collect();
    vec![
        get("header_underscore", "GET /x HTTP/1.1", "x_under: 1\r\n"),
        get(
            "header_space_before_colon",
            "GET /x HTTP/1.1",
            "x-a : 1\r\n",
        ),
        get("header_bad_name_char", "GET /x HTTP/1.1", "x(a: 1\r\n"),
        get("header_nul_in_value", "GET /x HTTP/1.1", "x-a: a\0b\r\n"),
        get("header_empty_value", "GET /x HTTP/1.1", "x-empty:\r\n"),
        get("header_empty_name", "GET /x HTTP/1.1", ": v\r\n"),
        get("header_utf8_value", "GET /x HTTP/1.1", "x-u: caf\u{e9}\r\n"),
        get("header_too_large", "GET /x HTTP/1.1", &big),
        get("header_too_many", "GET /x HTTP/1.1", &many),
        get(
            "header_two_hosts",
            "GET /x HTTP/1.1",
            "host: other.test\r\n",
        ),
        get(
            "header_expect_continue",
            "GET /x HTTP/1.1",
            "expect: 100-continue\r\n",
        ),
        get("header_te_trailers", "GET /x HTTP/1.1", "te: trailers\r\n"),
        get(
            "header_upgrade_unknown",
            "GET /x HTTP/1.1",
            "upgrade: foo\r\nconnection: upgrade\r\n",
        ),
        get(
            "header_keep_alive",
            "GET /x HTTP/1.1",
            "keep-alive: timeout=5\r\nproxy-connection: keep-alive\r\n",
        ),
        HttpCase::new(
            "http1/missing_host",
            "in",
            b"GET /x HTTP/1.1\r\nx-case: missing_host\r\nconnection: close\r\n\r\n".to_vec(),
        ),
        HttpCase::new(
            "http1/bare_lf",
            "in",
            b"GET /x HTTP/1.1\nhost: h1.test\nx-case: bare_lf\nconnection: close\n\n".to_vec(),
        ),
    ]
}
