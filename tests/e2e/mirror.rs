//! Request mirroring (`request_mirror_policies`): the copy reaches the mirror cluster with
//! Envoy's `-shadow` host and the request's body, the levels (route, virtual host, route
//! configuration) and `cluster_header`, `runtime_fraction` within statistical bounds, and a
//! mirror that stalls, refuses connections or never reads does not hold the primary back. Each
//! case runs from the bootstrap file and over ADS (state of the world and delta).

use crate::sources::Source;
use crate::support::*;
use std::time::Duration;

/// A listener `web` whose virtual host mirrors to `mirror` without the suffix (inherited by
/// the routes without their own policies), with routes that override it.
fn listener(extra_routes: &str) -> String {
    let vhosts = format!(
        r#"            - name: all
              domains: ["*"]
              request_mirror_policies: [{{cluster: mirror, disable_shadow_host_suffix_append: true}}]
              routes:
{extra_routes}              - match: {{prefix: "/hdr"}}
                route: {{cluster: primary, request_mirror_policies: [{{cluster_header: x-mirror-to}}]}}
              - match: {{prefix: "/lit"}}
                route: {{cluster: primary, request_mirror_policies: [{{cluster: mirror, host_rewrite_literal: lit.test}}]}}
              - match: {{prefix: "/vh"}}
                route: {{cluster: primary}}
              - match: {{prefix: "/"}}
                route: {{cluster: primary, timeout: 7s, request_mirror_policies: [{{cluster: mirror}}]}}
"#
    );
    http_listener("web", "", &vhosts)
}

async fn copies_reach_the_mirror_with_the_shadow_host_and_the_body(source: Source) {
    let primary = recorder("primary", Behaviour::Answer).await;
    let mirror = recorder("mirror", Behaviour::Answer).await;
    let clusters = [
        cluster("primary", &[primary.addr], ""),
        cluster("mirror", &[mirror.addr], ""),
    ]
    .concat();
    let r = source.start(&bootstrap(&listener(""), &clusters)).await;
    let web = r.addr("web");

    let resp = get_with(
        web,
        "example.com:8080",
        "/a?q=1",
        &[("x-forwarded-for", "1.2.3.4")],
    )
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "ok primary");
    let copy = &mirror.wait_for(1).await[0];
    let orig = &primary.seen()[0];
    assert_eq!(orig.header("host"), Some("example.com:8080"));
    assert_eq!(copy.header("host"), Some("example.com-shadow:8080"));
    assert_eq!(copy.path, "/a?q=1");
    assert_eq!(copy.header("x-envoy-internal"), Some("true"));
    assert_eq!(copy.header("x-request-id"), orig.header("x-request-id"));
    assert_eq!(copy.header("x-envoy-expected-rq-timeout-ms"), Some("7000"));
    // Envoy's async client appends this proxy's own address.
    let xff = copy.header("x-forwarded-for").unwrap();
    assert!(xff.starts_with("1.2.3.4,") && xff.len() > 8, "{xff}");
    assert_eq!(orig.header("x-envoy-internal"), None);

    // A body is copied whole.
    let post = http::Request::post("/upload")
        .header("host", "h")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"hello mirror",
        )))
        .unwrap();
    assert_eq!(request(web, false, post).await.status, 200);
    let copy = &mirror.wait_for(2).await[1];
    assert_eq!(
        (copy.method.as_str(), &copy.body[..]),
        ("POST", &b"hello mirror"[..])
    );
    assert_eq!(copy.header("host"), Some("h-shadow"));

    // The virtual host's policy (no suffix), the literal host, the cluster header.
    get(web, "vh.test", "/vh").await;
    assert_eq!(mirror.wait_for(3).await[2].header("host"), Some("vh.test"));
    get(web, "x.test", "/lit").await;
    assert_eq!(mirror.wait_for(4).await[3].header("host"), Some("lit.test"));
    get_with(web, "x.test", "/hdr", &[("x-mirror-to", "mirror")]).await;
    assert_eq!(mirror.wait_for(5).await[4].path, "/hdr");
    // No header, or a header naming no cluster: no copy, the primary answers.
    assert_eq!(get(web, "x.test", "/hdr").await.status, 200);
    let missing = get_with(web, "x.test", "/hdr", &[("x-mirror-to", "nosuch")]).await;
    assert_eq!(missing.status, 200);
    assert_eq!(primary.seen().len(), 7);
    assert_eq!(mirror.settled(Duration::from_millis(300)).await, 5);

    // Counted on the mirror cluster as internal requests.
    r.wait_stat("cluster.mirror.upstream_rq_total", 5).await;
    r.wait_stat("cluster.mirror.internal.upstream_rq_200", 5)
        .await;
    assert_eq!(r.stat("cluster.primary.external.upstream_rq_200").await, 7);
}

/// A mirror that never answers, one that refuses connections and one that never reads: the
/// primary answers at once every time (its route timeout is far longer than the client's
/// patience), the copies fail on their own clusters.
async fn a_slow_or_dead_mirror_never_holds_the_primary(source: Source) {
    let primary = recorder("primary", Behaviour::Answer).await;
    let stall = recorder("stall", Behaviour::Stall).await;
    let hole = recorder("hole", Behaviour::BlackHole).await;
    let routes = r#"              - match: {prefix: "/stall-short"}
                route: {cluster: primary, timeout: 1s, request_mirror_policies: [{cluster: stall}]}
              - match: {prefix: "/stall"}
                route: {cluster: primary, timeout: 60s, request_mirror_policies: [{cluster: stall}]}
              - match: {prefix: "/refused"}
                route: {cluster: primary, timeout: 60s, request_mirror_policies: [{cluster: refused}]}
              - match: {prefix: "/hole"}
                route: {cluster: primary, timeout: 60s, request_mirror_policies: [{cluster: hole}]}
"#;
    let clusters = [
        cluster("primary", &[primary.addr], ""),
        cluster("mirror", &[primary.addr], ""),
        cluster("stall", &[stall.addr], ""),
        cluster("refused", &[closed_port()], ""),
        cluster("hole", &[hole.addr], ""),
    ]
    .concat();
    let r = source.start(&bootstrap(&listener(routes), &clusters)).await;
    let web = r.addr("web");
    let patient = |req| async move {
        tokio::time::timeout(Duration::from_secs(10), request(web, false, req))
            .await
            .expect("the primary waited for its mirror")
    };
    let post = |path: &str, body: Vec<u8>| {
        http::Request::post(path)
            .header("host", "h")
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .unwrap()
    };
    for i in 0..3 {
        let resp = patient(post("/stall", format!("body {i}").into_bytes())).await;
        assert_eq!((resp.status, resp.text()), (200, "ok primary".to_string()));
        let resp = patient(post("/refused", b"x".to_vec())).await;
        assert_eq!(resp.status, 200);
    }
    stall.wait_for(3).await;
    // The copies' failures, on their clusters.
    r.wait_stat("cluster.refused.upstream_cx_connect_fail", 3)
        .await;
    r.wait_stat("cluster.refused.internal.upstream_rq_503", 3)
        .await;
    assert_eq!(r.stat("cluster.refused.upstream_rq_total").await, 0);
    assert_eq!(r.stat("cluster.stall.upstream_rq_active").await, 3);
    // A copy has the route timeout.
    assert_eq!(
        patient(post("/stall-short", b"y".to_vec())).await.status,
        200
    );
    r.wait_stat("cluster.stall.upstream_rq_timeout", 1).await;
    r.wait_stat("cluster.stall.internal.upstream_rq_504", 1)
        .await;

    // A mirror that never reads: the primary still gets all of a body far larger than the
    // socket buffers; the copy, left behind by more than the buffer limit, is abandoned.
    let big = vec![b'b'; 24 << 20];
    let resp = patient(post("/hole", big)).await;
    assert_eq!(resp.status, 200);
    let last = primary.seen().pop().unwrap();
    assert_eq!((last.path.as_str(), last.body.len()), ("/hole", 24 << 20));
    r.wait_stat("cluster.primary.retry_or_shadow_abandoned", 1)
        .await;
}

/// `runtime_fraction`: 10 % of 1 000 requests copied (a 5-sigma binomial bound: 100 ± 47);
/// a `runtime_key` the runtime sets to 0 turns a 100 % default off.
async fn runtime_fraction_mirrors_its_share(source: Source) {
    let primary = recorder("primary", Behaviour::Answer).await;
    let mirror = recorder("mirror", Behaviour::Answer).await;
    let off = recorder("off", Behaviour::Answer).await;
    let routes = r#"              - match: {prefix: "/ten"}
                route: {cluster: primary, request_mirror_policies: [{cluster: mirror, runtime_fraction: {default_value: {numerator: 10}}}]}
              - match: {prefix: "/off"}
                route: {cluster: primary, request_mirror_policies: [{cluster: off, runtime_fraction: {default_value: {numerator: 100}, runtime_key: mirror.off}}]}
"#;
    let clusters = [
        cluster("primary", &[primary.addr], ""),
        cluster("mirror", &[mirror.addr], ""),
        cluster("off", &[off.addr], ""),
    ]
    .concat();
    let runtime =
        "layered_runtime:\n  layers:\n  - name: static\n    static_layer:\n      mirror.off: 0\n";
    let r = source
        .start(&(bootstrap(&listener(routes), &clusters) + runtime))
        .await;
    let web = r.addr("web");
    let mut conn = None;
    for _ in 0..1000 {
        let (status, c) = keep_alive_get(web, conn.take(), "/ten").await;
        assert_eq!(status, 200);
        conn = Some(c);
    }
    for _ in 0..20 {
        assert_eq!(get(web, "h", "/off").await.status, 200);
    }
    let copies = mirror.settled(Duration::from_millis(500)).await;
    assert!(
        (53..=147).contains(&copies),
        "{copies} of 1000 mirrored at 10 %"
    );
    assert_eq!(off.settled(Duration::from_millis(300)).await, 0);
}

/// One GET over a kept-alive HTTP/1.1 connection (opened when `conn` is `None`).
async fn keep_alive_get(
    addr: std::net::SocketAddr,
    conn: Option<tokio::net::TcpStream>,
    path: &str,
) -> (u16, tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = match conn {
        Some(c) => c,
        None => tokio::net::TcpStream::connect(addr).await.unwrap(),
    };
    c.write_all(format!("GET {path} HTTP/1.1\r\nhost: h\r\n\r\n").as_bytes())
        .await
        .unwrap();
    // The answer is small and its length is announced: read until the whole body is here.
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 1024];
        let n = c.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the connection closed");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_string)
                })
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if body.len() >= len {
                let status = head[9..12].parse().unwrap();
                return (status, c);
            }
        }
    }
}

crate::across_sources!(
    copies_reach_the_mirror_with_the_shadow_host_and_the_body,
    a_slow_or_dead_mirror_never_holds_the_primary,
    runtime_fraction_mirrors_its_share,
);

/// A policy naming a cluster the bootstrap does not define is refused (Envoy: `unknown shadow
/// cluster`), as is one with both `cluster` and `cluster_header`.
#[test]
fn invalid_policies_are_refused() {
    let clusters = cluster("primary", &[closed_port()], "");
    let dir = TempDir::new("mirror");
    let write = |routes: &str| {
        let path = dir.path("bad.yaml");
        let vhosts = format!(
            "            - name: all\n              domains: [\"*\"]\n              routes:\n{routes}"
        );
        std::fs::write(
            &path,
            bootstrap(&http_listener("web", "", &vhosts), &clusters),
        )
        .unwrap();
        let (code, _, err) = run(&["--mode", "validate", "-c", path.to_str().unwrap()]);
        assert_ne!(code, 0);
        err
    };
    let err = write(
        "              - match: {prefix: \"/\"}\n                route: {cluster: primary, request_mirror_policies: [{cluster: nosuch}]}\n",
    );
    assert!(err.contains("'nosuch'"), "{err}");
    let err = write(
        "              - match: {prefix: \"/\"}\n                route: {cluster: primary, request_mirror_policies: [{cluster: primary, cluster_header: x}]}\n",
    );
    assert!(
        err.contains("routes[0].route.request_mirror_policies[0]: Only one of cluster"),
        "{err}"
    );
}

/// Envoy's route-mirror example, run for real: `/service/1` is copied to `service1-mirror`,
/// `/service/2` to the cluster its `x-mirror-cluster` header names.
#[tokio::test(flavor = "multi_thread")]
async fn the_route_mirror_example_runs() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/data/envoy-configs/examples/route-mirror_envoy.yaml"
    );
    let names = ["service1", "service1-mirror", "service2", "service2-mirror"];
    let mut recorders = Vec::new();
    for n in names {
        recorders.push(recorder(n, Behaviour::Answer).await);
    }
    let port = closed_port().port();
    // The example's hosts are the compose services' names: here, the recorders on 127.0.0.1.
    let mut yaml = String::new();
    let mut pending_port = None;
    for line in std::fs::read_to_string(path).unwrap().lines() {
        let t = line.trim();
        let indent = &line[..line.len() - line.trim_start().len()];
        if let Some(i) = t
            .strip_prefix("address: ")
            .and_then(|a| names.iter().position(|n| *n == a))
        {
            yaml.push_str(&format!("{indent}address: 127.0.0.1\n"));
            pending_port = Some(recorders[i].addr.port());
        } else if t == "port_value: 8080"
            && let Some(p) = pending_port.take()
        {
            yaml.push_str(&format!("{indent}port_value: {p}\n"));
        } else if t == "port_value: 10000" {
            yaml.push_str(&format!("{indent}port_value: {port}\n"));
        } else {
            yaml.push_str(&line.replace("address: 0.0.0.0", "address: 127.0.0.1"));
            yaml.push('\n');
        }
    }
    let _r = Remora::start(&yaml).await;
    let web = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    assert_eq!(get(web, "x", "/service/1").await.text(), "ok service1");
    let copy = &recorders[1].wait_for(1).await[0];
    assert_eq!(
        (copy.path.as_str(), copy.header("host")),
        ("/service/1", Some("x-shadow"))
    );
    let to = [("x-mirror-cluster", "service2-mirror")];
    assert_eq!(
        get_with(web, "x", "/service/2", &to).await.text(),
        "ok service2"
    );
    assert_eq!(recorders[3].wait_for(1).await[0].path, "/service/2");
    // Without the header, no copy.
    assert_eq!(get(web, "x", "/service/2").await.status, 200);
    assert_eq!(recorders[3].settled(Duration::from_millis(300)).await, 1);
    assert_eq!(recorders[1].seen().len(), 1);
}

/// An HTTP/2 client, and a mirror cluster that speaks HTTP/2: the primary gets the body, the
/// copy goes out on an HTTP/2 connection and is answered.
#[tokio::test(flavor = "multi_thread")]
async fn copies_over_http2() {
    let primary = recorder("primary", Behaviour::Answer).await;
    let h2 = upstream("h2").await;
    let h2_options = "    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        explicit_http_config: {http2_protocol_options: {}}\n";
    let routes = r#"              - match: {prefix: "/h2"}
                route: {cluster: primary, request_mirror_policies: [{cluster: m2}]}
"#;
    let clusters = [
        cluster("primary", &[primary.addr], ""),
        cluster("mirror", &[primary.addr], ""),
        cluster("m2", &[h2.addr], h2_options),
    ]
    .concat();
    let r = Remora::start(&bootstrap(&listener(routes), &clusters)).await;
    let web = r.addr("web");
    let mut req = h2_request(web, "h2.test", "/h2/x");
    *req.method_mut() = http::Method::POST;
    *req.body_mut() = http_body_util::Full::new(bytes::Bytes::from_static(b"over h2"));
    let resp = request(web, true, req).await;
    assert_eq!((resp.status, resp.text()), (200, "ok primary".to_string()));
    assert_eq!(primary.wait_for(1).await[0].body.as_ref(), b"over h2");
    r.wait_stat("cluster.m2.internal.upstream_rq_200", 1).await;
    assert_eq!(r.stat("cluster.m2.upstream_cx_http2_total").await, 1);
    assert_eq!(h2.requests.load(std::sync::atomic::Ordering::Relaxed), 1);
}
