//! `envoy.filters.http.fault`: Envoy's fault-injection example run as its README runs it (the
//! runtime's disk layer toggled by swapping the symlink root), and delays and aborts from
//! request headers over one HTTP/2 connection, from a file and over xDS.

use crate::sources::{Source, start_from};
use crate::support::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::path::Path;
use std::time::{Duration, Instant};

const EXAMPLE: &str = "/work/shared/testdata/envoy-configs/examples/fault-injection_envoy.yaml";

/// The example's scripts: write a tree under `root/<version>/envoy`, link it and move the link
/// over `root/current`.
fn publish(root: &Path, version: &str, files: &[(&str, &str)]) {
    let tree = root.join(version).join("envoy");
    std::fs::create_dir_all(&tree).unwrap();
    for (key, value) in files {
        let p = tree.join(key.replace('.', "/"));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, format!("{value}\n")).unwrap();
    }
    let new = root.join("new");
    let _ = std::fs::remove_file(&new);
    std::os::unix::fs::symlink(root.join(version), &new).unwrap();
    std::fs::rename(&new, root.join("current")).unwrap();
}

/// Requests until `done` holds (the watcher polls every 500 ms), or panics after 5 s.
async fn until(addr: std::net::SocketAddr, what: &str, done: impl Fn(&Resp, Duration) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let t = Instant::now();
        let r = get(addr, "example.com", "/").await;
        if done(&r, t.elapsed()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: still {} {}",
            r.status,
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_fault_injection_example_follows_its_runtime_directory() {
    let backend = upstream("backend").await;
    let dir = TempDir::new("fault-example");
    let root = dir.path("runtime");
    std::fs::create_dir_all(&root).unwrap();
    let yaml = std::fs::read_to_string(EXAMPLE)
        .unwrap()
        .replace(
            "  - address:\n      socket_address:\n        address: 0.0.0.0\n        port_value: 9211",
            "  - name: fault\n    address:\n      socket_address:\n        address: 127.0.0.1\n        port_value: 0",
        )
        .replace("address: backend", "address: 127.0.0.1")
        .replace("port_value: 80\n", &format!("port_value: {}\n", backend.addr.port()))
        .replace("/srv/runtime", root.to_str().unwrap());
    assert!(
        yaml.contains("name: fault") && !yaml.contains("/srv/"),
        "{yaml}"
    );
    let r = Remora::start(&yaml).await;
    let addr = r.addr("fault");

    // No runtime directory yet: the filter's 0% abort and delay inject nothing.
    assert_eq!(get(addr, "example.com", "/").await.status, 200);

    // enable_abort_fault_injection.sh
    publish(
        &root,
        "v1",
        &[
            ("fault.http.abort.abort_percent", "100"),
            ("fault.http.abort.http_status", "503"),
        ],
    );
    until(addr, "abort", |r, _| r.status == 503).await;
    let r503 = get(addr, "example.com", "/").await;
    assert_eq!(
        (r503.status, r503.text()),
        (503, "fault filter abort".into())
    );
    assert!(r.stat("http.ingress_http.fault.aborts_injected").await >= 2);

    // disable_abort_fault_injection.sh + enable_delay_fault_injection.sh (a shorter delay).
    publish(
        &root,
        "v2",
        &[
            ("fault.http.delay.fixed_delay_percent", "100"),
            ("fault.http.delay.fixed_duration_ms", "700"),
        ],
    );
    until(addr, "delay", |r, took| {
        r.status == 200 && took >= Duration::from_millis(700)
    })
    .await;
    assert!(r.stat("http.ingress_http.fault.delays_injected").await >= 1);

    // disable_delay_fault_injection.sh
    publish(&root, "v3", &[]);
    until(addr, "no fault", |r, took| {
        r.status == 200 && took < Duration::from_millis(300)
    })
    .await;
    assert_eq!(r.stat("http.ingress_http.fault.active_faults").await, 0);
    assert!(r.stat("runtime.load_success").await >= 4);
    assert_eq!(r.stat("runtime.load_error").await, 0);
    let (_, runtime) = r.admin_get("/runtime").await.unwrap();
    assert!(!runtime.contains("fault.http"), "{runtime}");
}

fn header_fault_proxy(backend: std::net::SocketAddr) -> String {
    let vhosts = "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {prefix: \"/\"}\n                route: {cluster: backend}\n";
    bootstrap(
        &http_listener("in", "", vhosts).replace(
            "          http_filters:\n",
            "          http_filters:\n          - name: envoy.filters.http.fault\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault\n              delay: {header_delay: {}, percentage: {numerator: 100}}\n              abort: {header_abort: {}, percentage: {numerator: 100}}\n",
        ),
        &cluster("backend", &[backend], ""),
    )
}

/// On one HTTP/2 connection, a request delayed by its header does not hold up the next one;
/// aborts follow the abort headers (HTTP status, gRPC status).
async fn header_faults_on_one_h2_connection(source: Source) {
    let backend = upstream("backend").await;
    let r = start_from(source, &header_fault_proxy(backend.addr), &[]).await;
    let addr = r.addr("in");
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let send = |headers: &'static [(&'static str, &'static str)]| {
        let mut sender = sender.clone();
        async move {
            let mut b = http::Request::builder().uri("http://example.com/");
            for (k, v) in headers {
                b = b.header(*k, *v);
            }
            let t = Instant::now();
            let resp = sender
                .send_request(b.body(Full::new(Bytes::new())).unwrap())
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let _ = resp.into_body().collect().await;
            (status, headers, t.elapsed())
        }
    };
    let slow = tokio::spawn(send(&[("x-envoy-fault-delay-request", "1500")]));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (status, _, took) = send(&[]).await;
    assert_eq!(status, 200);
    assert!(took < Duration::from_millis(700), "{took:?}");
    assert!(!slow.is_finished(), "the delayed request is still waiting");
    let (status, _, took) = slow.await.unwrap();
    assert_eq!(status, 200);
    assert!(took >= Duration::from_millis(1500), "{took:?}");

    let (status, _, _) = send(&[("x-envoy-fault-abort-request", "429")]).await;
    assert_eq!(status, 429);
    let (status, headers, _) = send(&[
        ("x-envoy-fault-abort-grpc-request", "14"),
        ("content-type", "application/grpc"),
    ])
    .await;
    assert_eq!(
        (status, headers["grpc-status"].to_str().unwrap()),
        (200, "14")
    );
    assert_eq!(r.stat("http.in.fault.delays_injected").await, 1);
    assert_eq!(r.stat("http.in.fault.aborts_injected").await, 2);
}

crate::across_sources!(header_faults_on_one_h2_connection);

/// `response_rate_limit`: a 3 KiB body at 1 KiB/s takes two seconds after its first KiB
/// (Envoy's token bucket: a second's worth at once, then a sixteenth of the rate each 1/16 s).
#[tokio::test(flavor = "multi_thread")]
async fn a_response_rate_limit_throttles_the_body() {
    let backend = upstream("backend").await;
    let yaml = header_fault_proxy(backend.addr).replace(
        "              delay: {header_delay: {}, percentage: {numerator: 100}}\n              abort: {header_abort: {}, percentage: {numerator: 100}}\n",
        "              response_rate_limit: {fixed_limit: {limit_kbps: 1}, percentage: {numerator: 100}}\n",
    );
    assert!(yaml.contains("limit_kbps"), "{yaml}");
    let r = Remora::start(&yaml).await;
    let t = Instant::now();
    let resp = get(r.addr("in"), "example.com", "/large/3072").await;
    let took = t.elapsed();
    assert_eq!((resp.status, resp.body.len()), (200, 3072));
    assert!(
        took >= Duration::from_millis(1800) && took < Duration::from_millis(3500),
        "{took:?}"
    );
    assert_eq!(r.stat("http.in.fault.response_rl_injected").await, 1);
    r.wait_stat("http.in.fault.active_faults", 0).await;
}
