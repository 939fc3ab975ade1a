//! Retries and per-try timeouts (route `retry_policy`) against upstreams that fail on command:
//! 503, reset, hang, refuse, rate-limit.

use crate::sources::{Served, Source};
use crate::support::*;
use bytes::Bytes;
use http_body_util::Full;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the scripted upstream does with one request.
#[derive(Clone, Debug)]
enum Act {
    /// Answer with this status (and these extra header lines).
    Status(u16, &'static str),
    /// Close the connection without answering.
    Reset,
    /// Never answer (until the proxy gives up).
    Hang,
    /// Answer with this status after this many milliseconds.
    Late(u64, u16),
}

/// An HTTP/1.1 upstream that plays a script, one act per request (any connection), then
/// answers 200 with `<attempt count header>/<request body>`. Returns the requests it saw.
struct Scripted {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
    _task: tokio::task::JoinHandle<()>,
}

impl Scripted {
    async fn start(script: &[Act], then: Option<Act>) -> Self {
        let script = Arc::new(Mutex::new(script.iter().cloned().collect::<VecDeque<_>>()));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (script2, seen2) = (script.clone(), seen.clone());
        let (addr, task) =
            serve_tcp(move |s| serve(s, script2.clone(), seen2.clone(), then.clone())).await;
        Self {
            addr,
            seen,
            _task: task,
        }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

async fn serve(
    mut s: tokio::net::TcpStream,
    script: Arc<Mutex<VecDeque<Act>>>,
    seen: Arc<Mutex<Vec<String>>>,
    then: Option<Act>,
) {
    let mut buf = Vec::new();
    loop {
        // One request: the head, then a content-length body.
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
        let header = |name: &str| {
            head.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_string))
        };
        let len: usize = header("content-length")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + len {
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = String::from_utf8_lossy(&buf[head_end..head_end + len]).into_owned();
        buf.drain(..head_end + len);
        let attempt = header("x-envoy-attempt-count").unwrap_or_default();
        seen.lock().unwrap().push(format!("{attempt}/{body}"));
        let act = script.lock().unwrap().pop_front().or(then.clone());
        match act {
            Some(Act::Reset) => return,
            Some(Act::Hang) => {
                let _ = s.read(&mut [0u8; 1]).await;
                return;
            }
            Some(Act::Late(ms, code)) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                let reply = format!("HTTP/1.1 {code} X\r\ncontent-length: 4\r\n\r\nfail");
                if s.write_all(reply.as_bytes()).await.is_err() {
                    return;
                }
            }
            Some(Act::Status(code, extra)) => {
                let reply = format!("HTTP/1.1 {code} X\r\ncontent-length: 4\r\n{extra}\r\nfail");
                if s.write_all(reply.as_bytes()).await.is_err() {
                    return;
                }
            }
            None => {
                let text = format!("{attempt}/{body}");
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{text}",
                    text.len()
                );
                if s.write_all(reply.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    }
}

const LOG: &str = r#"          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: RUN_DIR/access.log
              log_format: {text_format_source: {inline_string: "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %UPSTREAM_REQUEST_ATTEMPT_COUNT%\n"}}
"#;

/// The access log, and the client (on 127.0.0.1, at the edge) trusted as internal: Envoy 1.40
/// honours x-envoy-retry-on and the like only from internal clients, and no address is
/// internal without `internal_address_config`.
const TRUSTED: &str = r#"          use_remote_address: true
          internal_address_config: {cidr_ranges: [{address_prefix: 127.0.0.1, prefix_len: 32}]}
"#;

/// A proxy routing everything to `backend` (the given hosts) with this route `retry_policy`
/// (YAML flow mapping) and virtual-host extras.
fn proxy(hosts: &[SocketAddr], policy: &str, vhost_extra: &str, cluster_extra: &str) -> String {
    let vhosts = format!(
        "            - name: all\n              domains: [\"*\"]\n{vhost_extra}              routes:\n              - match: {{prefix: \"/\"}}\n                route: {{cluster: backend, retry_policy: {policy}}}\n"
    );
    bootstrap(
        &http_listener("main", &format!("{LOG}{TRUSTED}"), &vhosts),
        &cluster("backend", hosts, cluster_extra),
    )
}

/// A proxy (route `retry_policy` as given) in front of one scripted upstream.
async fn behind(script: &[Act], then: Option<Act>, policy: &str) -> (Scripted, Served) {
    behind_vhost(Source::Bootstrap, script, then, policy, "").await
}

/// The same, with virtual-host extras (YAML lines).
async fn behind_vhost(
    source: Source,
    script: &[Act],
    then: Option<Act>,
    policy: &str,
    vhost_extra: &str,
) -> (Scripted, Served) {
    let u = Scripted::start(script, then).await;
    let r = source
        .start(&proxy(&[u.addr], policy, vhost_extra, ""))
        .await;
    (u, r)
}

/// What a client gets from a proxy (with this retry policy) whose one upstream never answers:
/// the status, the access-log line, and the proxy (for its stats).
async fn against_a_hanging_upstream(policy: &str) -> (u16, String, Served) {
    let (_hanging, r) = behind(&[], Some(Act::Hang), policy).await;
    let status = get(r.addr("main"), "x", "/").await.status;
    let line = r.log_lines("access.log", 1).await.remove(0);
    (status, line, r)
}

fn post(addr: SocketAddr, body: &'static str) -> impl std::future::Future<Output = Resp> {
    let req = http::Request::post(format!("http://{addr}/upload"))
        .header("host", "x")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    request(addr, false, req)
}

async fn transient_503s_are_retried_with_the_body_replayed(source: Source) {
    let (u, r) = behind_vhost(source, &[Act::Status(503, ""), Act::Status(503, "")], None, "{retry_on: 5xx, num_retries: 3}", "              include_request_attempt_count: true\n              include_attempt_count_in_response: true\n").await;
    let resp = post(r.addr("main"), "payload").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        resp.text(),
        "3/payload",
        "the third attempt got the whole body"
    );
    assert_eq!(resp.header("x-envoy-attempt-count"), Some("3"));
    assert_eq!(u.seen(), ["1/payload", "2/payload", "3/payload"]);
    let s = r.stats().await;
    assert_eq!(s["cluster.backend.upstream_rq_retry"], 2);
    assert_eq!(s["cluster.backend.upstream_rq_retry_success"], 1);
    assert_eq!(
        s["cluster.backend.upstream_rq_retry_backoff_exponential"],
        2
    );
    assert_eq!(s["cluster.backend.retry.upstream_rq_503"], 2);
    assert_eq!(s["cluster.backend.upstream_rq_200"], 1);
    assert_eq!(s["cluster.backend.upstream_rq_total"], 3);
    assert_eq!(s.get("cluster.backend.upstream_rq_503"), None);
    assert_eq!(s["cluster.backend.upstream_rq_active"], 0);
    assert_eq!(
        s["cluster.backend.circuit_breakers.default.rq_retry_open"],
        0
    );
    let log = r.log_lines("access.log", 1).await;
    assert_eq!(log, ["200 - via_upstream 3"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn resets_are_retried_and_exhausted_retries_report_urx() {
    let (u, r) = behind(
        &[Act::Reset],
        Some(Act::Reset),
        "{retry_on: reset, num_retries: 2}",
    )
    .await;
    let resp = get(r.addr("main"), "x", "/").await;
    assert_eq!(resp.status, 503);
    assert_eq!(u.seen().len(), 3, "one try and two retries");
    let log = r.log_lines("access.log", 1).await;
    assert_eq!(
        log,
        ["503 UC,URX upstream_reset_before_response_started{connection_termination} 3"]
    );
    let s = r.stats().await;
    assert_eq!(s["cluster.backend.upstream_rq_retry"], 2);
    assert_eq!(s["cluster.backend.upstream_rq_retry_limit_exceeded"], 1);
    assert_eq!(s["cluster.backend.upstream_rq_503"], 1);

    // A reset followed by an answer: the client never sees the reset.
    let (_u, r) = behind(&[Act::Reset], None, "{retry_on: reset}").await;
    let resp = post(r.addr("main"), "again").await;
    assert_eq!((resp.status, resp.text()), (200, "/again".to_string()));
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_outside_retry_on_are_not_retried() {
    let (u, r) = behind(
        &[Act::Status(500, ""), Act::Status(409, "")],
        None,
        "{retry_on: \"gateway-error,connect-failure,refused-stream\", num_retries: 3}",
    )
    .await;
    assert_eq!(get(r.addr("main"), "x", "/").await.status, 500);
    assert_eq!(get(r.addr("main"), "x", "/").await.status, 409);
    assert_eq!(u.seen().len(), 2);
    assert_eq!(r.stat("cluster.backend.upstream_rq_retry").await, 0);
}

/// Istio's VirtualService `retries: {attempts: 3, perTryTimeout: 10s, retryOn:
/// gateway-error,connect-failure,refused-stream}` as istiod writes it: a refused connection and
/// a 503 are retried on other hosts.
async fn istio_retry_policy_moves_past_refused_and_failing_hosts(source: Source) {
    let good = upstream("good").await;
    let bad = Scripted::start(&[], Some(Act::Status(503, ""))).await;
    let refused = closed_port();
    let istio = "{retry_on: \"gateway-error,connect-failure,refused-stream\", num_retries: 3, per_try_timeout: 10s, retry_host_predicate: [{name: envoy.retry_host_predicates.previous_hosts, typed_config: {\"@type\": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate}}], host_selection_retry_max_attempts: 5, retriable_status_codes: [503]}";
    let r = source
        .start(&proxy(&[good.addr, bad.addr, refused], istio, "", ""))
        .await;
    for _ in 0..12 {
        let resp = get(r.addr("main"), "x", "/").await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(resp.header("x-upstream"), Some("good"));
    }
    let s = r.stats().await;
    assert!(s["cluster.backend.upstream_rq_retry"] >= 1, "{s:?}");
    assert_eq!(s["cluster.backend.upstream_rq_200"], 12);
    assert_eq!(s["cluster.backend.upstream_rq_retry_limit_exceeded"], 0);
    assert_eq!(
        s["cluster.backend.upstream_rq_retry"],
        s["cluster.backend.retry.upstream_rq_503"] + s["cluster.backend.upstream_cx_connect_fail"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn per_try_timeout_then_retry_to_another_host() {
    let good = upstream("good").await;
    let hanging = Scripted::start(&[], Some(Act::Hang)).await;
    let policy = "{retry_on: gateway-error, num_retries: 2, per_try_timeout: 0.2s, retry_host_predicate: [{name: envoy.retry_host_predicates.previous_hosts}]}";
    let r = Remora::start(&proxy(&[good.addr, hanging.addr], policy, "", "")).await;
    for _ in 0..6 {
        let started = Instant::now();
        let resp = get(r.addr("main"), "x", "/").await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    let s = r.stats().await;
    let timeouts = s["cluster.backend.upstream_rq_per_try_timeout"];
    assert!(
        timeouts >= 1,
        "round robin sends some first tries to the hanging host"
    );
    assert_eq!(s["cluster.backend.upstream_rq_retry"], timeouts);
    assert_eq!(s["cluster.backend.upstream_rq_retry_success"], timeouts);
    assert_eq!(s["cluster.backend.upstream_rq_timeout"], 0);

    // Every host hangs: each try times out, then the answer is 504 UT with URX.
    let (status, line, _) =
        against_a_hanging_upstream("{retry_on: 5xx, num_retries: 1, per_try_timeout: 0.2s}").await;
    assert_eq!(status, 504);
    assert_eq!(line, "504 UT,URX upstream_per_try_timeout 2");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_route_timeout_bounds_all_tries() {
    let u = Scripted::start(&[], Some(Act::Hang)).await;
    let vhosts = "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {prefix: \"/\"}\n                route: {cluster: backend, timeout: 0.5s, retry_policy: {retry_on: 5xx, num_retries: 10, per_try_timeout: 0.2s}}\n";
    let r = Remora::start(&bootstrap(
        &http_listener("main", LOG, vhosts),
        &cluster("backend", &[u.addr], ""),
    ))
    .await;
    let started = Instant::now();
    let resp = get(r.addr("main"), "x", "/").await;
    let took = started.elapsed();
    assert_eq!(resp.status, 504);
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_millis(1500),
        "{took:?}"
    );
    let log = r.log_lines("access.log", 1).await;
    assert!(log[0].starts_with("504 UT response_timeout"), "{log:?}");
    assert_eq!(r.stat("cluster.backend.upstream_rq_timeout").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limited_back_off_honours_retry_after() {
    let (_u, r) = behind(&[Act::Status(503, "retry-after: 1\r\n")], None, "{retry_on: 5xx, rate_limited_retry_back_off: {reset_headers: [{name: retry-after}], max_interval: 5s}}").await;
    let started = Instant::now();
    let resp = get(r.addr("main"), "x", "/").await;
    let took = started.elapsed();
    assert_eq!(resp.status, 200);
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_millis(2500),
        "{took:?}"
    );
    let s = r.stats().await;
    assert_eq!(
        s["cluster.backend.upstream_rq_retry_backoff_ratelimited"],
        1
    );
    assert_eq!(
        s["cluster.backend.upstream_rq_retry_backoff_exponential"],
        0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_over_the_buffer_limit_is_not_retried() {
    let (u, r) = behind_vhost(
        Source::Bootstrap,
        &[Act::Status(503, "")],
        None,
        "{retry_on: 5xx}",
        "              per_request_buffer_limit_bytes: 4\n",
    )
    .await;
    let resp = post(r.addr("main"), "0123456789").await;
    assert_eq!(resp.status, 503, "the upstream's answer, not retried");
    assert_eq!(u.seen(), ["/0123456789"]);
    let s = r.stats().await;
    assert_eq!(s["cluster.backend.retry_or_shadow_abandoned"], 1);
    assert_eq!(s["cluster.backend.upstream_rq_retry"], 0);
    // A small body is still retried.
    let (_u, r) = behind_vhost(
        Source::Bootstrap,
        &[Act::Status(503, "")],
        None,
        "{retry_on: 5xx}",
        "              per_request_buffer_limit_bytes: 4\n",
    )
    .await;
    assert_eq!(post(r.addr("main"), "abc").await.text(), "/abc");
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_status_and_request_headers_select_retries() {
    // `unavailable` retries a trailers-only gRPC answer with grpc-status 14.
    let u = Scripted::start(
        &[Act::Status(
            200,
            "content-type: application/grpc\r\ngrpc-status: 14\r\n",
        )],
        None,
    )
    .await;
    let r = Remora::start(&proxy(&[u.addr], "{retry_on: unavailable}", "", "")).await;
    let resp = get(r.addr("main"), "x", "/").await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("grpc-status"), None);
    assert_eq!(u.seen().len(), 2);

    // No policy on the route: `x-envoy-retry-on` and `x-envoy-max-retries` from a trusted
    // (internal) client ask for retries, and are not forwarded.
    let u = Scripted::start(&[Act::Status(502, ""), Act::Status(502, "")], None).await;
    let vhosts = "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {prefix: \"/\"}\n                route: {cluster: backend}\n";
    let r = Remora::start(&bootstrap(
        &http_listener("main", &format!("{LOG}{TRUSTED}"), vhosts),
        &cluster("backend", &[u.addr], ""),
    ))
    .await;
    let resp = get_with(
        r.addr("main"),
        "x",
        "/",
        &[
            ("x-envoy-retry-on", "gateway-error"),
            ("x-envoy-max-retries", "2"),
        ],
    )
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(u.seen().len(), 3);
    // A retriable status code given by header.
    let (_u, r) = behind(
        &[Act::Status(418, "")],
        None,
        "{retry_on: retriable-status-codes}",
    )
    .await;
    let resp = get_with(
        r.addr("main"),
        "x",
        "/",
        &[("x-envoy-retriable-status-codes", "418")],
    )
    .await;
    assert_eq!(resp.status, 200);
}

/// A retry storm against a failing cluster: the retry budget (20 % of active requests, at
/// least 2) caps the retries in flight; the rest overflow (`upstream_rq_retry_overflow`) and
/// the client gets the upstream's answer with `UO`.
#[tokio::test(flavor = "multi_thread")]
async fn retry_budget_caps_a_retry_storm() {
    let u = Scripted::start(&[], Some(Act::Late(300, 503))).await;
    let budget = "    circuit_breakers:\n      thresholds:\n      - retry_budget: {budget_percent: {value: 20}, min_retry_concurrency: 2}\n";
    let r = Remora::start(&proxy(
        &[u.addr],
        "{retry_on: 5xx, num_retries: 4, retry_back_off: {base_interval: 0.001s, max_interval: 0.002s}}",
        "",
        budget,
    ))
    .await;
    let addr = r.addr("main");
    let tasks: Vec<_> = (0..10)
        .map(|_| tokio::spawn(async move { get(addr, "x", "/").await }))
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().status, 503);
    }
    let s = r.stats().await;
    let retried = s["cluster.backend.upstream_rq_retry"];
    let overflow = s["cluster.backend.upstream_rq_retry_overflow"];
    let exceeded = s["cluster.backend.upstream_rq_retry_limit_exceeded"];
    // Every request that failed asked for a retry each time until it was refused or spent.
    assert!(
        overflow >= 1,
        "retries offered beyond the budget overflow: {s:?}"
    );
    assert!(
        retried < 10 * 4,
        "without the budget 40 retries would have been sent; sent {retried}"
    );
    assert_eq!(
        overflow + exceeded,
        10,
        "each request ends by overflow or by its limit"
    );
    let log = r.log_lines("access.log", 10).await;
    assert_eq!(
        log.iter().filter(|l| l.starts_with("503 UO")).count() as i64,
        overflow,
        "{log:?}"
    );
}

/// The keep-alive race: the upstream closes a pooled connection just as the next request is
/// written on it. The request goes out again on a new connection; the client never sees 503.
#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_closing_a_reused_connection_is_never_a_503() {
    let addr = one_answer_per_connection(None).await;
    let r = Remora::start_with(
        &bootstrap(
            &http_listener(
                "main",
                LOG,
                "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {prefix: \"/\"}\n                route: {cluster: backend}\n",
            ),
            &cluster("backend", &[addr], ""),
        ),
        &["--concurrency", "1"],
    )
    .await;
    for _ in 0..20 {
        let resp = get(r.addr("main"), "x", "/").await;
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
}

/// `per_try_idle_timeout`: an attempt with no answer for that long is abandoned (504 `UT`);
/// once the last attempt's response streams, a pause that long in its body ends it.
#[tokio::test(flavor = "multi_thread")]
async fn per_try_idle_timeout_bounds_silence_before_and_during_the_response() {
    let (status, line, r) =
        against_a_hanging_upstream("{retry_on: connect-failure, per_try_idle_timeout: 0.2s}").await;
    assert_eq!(status, 504);
    assert_eq!(line, "504 UT upstream_per_try_idle_timeout 1");
    assert_eq!(
        r.stat("cluster.backend.upstream_rq_per_try_idle_timeout")
            .await,
        1
    );

    // Headers at once, the body a second later: the body is cut after 0.2 s of silence.
    let u = upstream("slow").await;
    let r = Remora::start(&proxy(
        &[u.addr],
        "{retry_on: connect-failure, per_try_idle_timeout: 0.2s}",
        "",
        "",
    ))
    .await;
    let started = Instant::now();
    let out = raw_exchange(
        r.addr("main"),
        b"GET /slowbody/1000 HTTP/1.1\r\nhost: x\r\n\r\n",
        Duration::from_secs(3),
    )
    .await
    .unwrap();
    assert!(started.elapsed() < Duration::from_millis(900));
    let (status, _, body) = split_response(&out);
    assert_eq!(status, 200);
    assert!(!body.contains("late body"), "{body}");
    let log = r.log_lines("access.log", 1).await;
    assert!(log[0].starts_with("200 UT"), "{log:?}");
    assert_eq!(
        r.stat("cluster.backend.upstream_rq_per_try_idle_timeout")
            .await,
        1
    );
}

/// `retriable_request_headers`: only requests that match are retried; a matcher may name a
/// pseudo-header such as `:path`.
#[tokio::test(flavor = "multi_thread")]
async fn retriable_request_headers_select_the_requests() {
    let policy = "{retry_on: 5xx, retriable_request_headers: [{name: ':path', string_match: {prefix: /retry}}]}";
    let (u, r) = behind(&[Act::Status(503, "")], None, policy).await;
    assert_eq!(get(r.addr("main"), "x", "/retry/a").await.status, 200);
    assert_eq!(u.seen().len(), 2, "the matching request was retried");
    let (u, r) = behind(&[Act::Status(503, "")], None, policy).await;
    assert_eq!(get(r.addr("main"), "x", "/other").await.status, 503);
    assert_eq!(u.seen().len(), 1, "the other was not");
}

crate::across_sources!(
    transient_503s_are_retried_with_the_body_replayed,
    istio_retry_policy_moves_past_refused_and_failing_hosts,
);
