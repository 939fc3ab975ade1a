//! Routing: virtual hosts, every route match kind, actions, rewrites and header mutations.

use crate::support::*;

async fn routing_proxy() -> (Remora, Upstream, Upstream) {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let vhosts = r#"            - name: api
              domains: ["api.example.com", "api.example.com:8080", "*.api.example.com"]
              request_headers_to_add:
              - header: {key: x-vhost, value: api}
              routes:
              - name: exact
                match: {path: "/exact"}
                route: {cluster: b}
              - name: separated
                match: {path_separated_prefix: "/sep"}
                route: {cluster: b}
              - name: regex
                match: {safe_regex: {regex: "/items/[0-9]+"}}
                route: {cluster: b}
              - name: nocase
                match: {prefix: "/NoCase", case_sensitive: false}
                route: {cluster: b}
              - name: header-exact
                match:
                  prefix: "/h"
                  headers:
                  - name: x-version
                    string_match: {exact: v2}
                route: {cluster: b}
              - name: header-present-inverted
                match:
                  prefix: "/h"
                  headers:
                  - {name: x-canary, present_match: true, invert_match: true}
                route: {cluster: a}
              - name: header-prefix
                match:
                  prefix: "/hp"
                  headers:
                  - {name: x-canary, string_match: {prefix: "yes"}}
                route: {cluster: b}
              - name: header-regex
                match:
                  prefix: "/hr"
                  headers:
                  - {name: x-id, safe_regex_match: {regex: "[a-f]+"}}
                route: {cluster: b}
              - name: query
                match:
                  prefix: "/q"
                  query_parameters:
                  - {name: debug, string_match: {exact: "1"}}
                route: {cluster: b}
              - name: grpc
                match: {prefix: "/svc.Echo/", grpc: {}}
                route: {cluster: b}
              - name: rewrite
                match: {prefix: "/old/"}
                route: {cluster: a, prefix_rewrite: "/new/"}
              - name: regex-rewrite
                match: {prefix: "/users/"}
                route:
                  cluster: a
                  regex_rewrite: {pattern: {regex: "^/users/([0-9]+)/profile$"}, substitution: "/profiles/\\1"}
              - name: host-rewrite
                match: {prefix: "/host"}
                route: {cluster: a, host_rewrite_literal: upstream.internal}
              - name: cluster-header
                match: {prefix: "/by-header"}
                route: {cluster_header: x-target-cluster}
              - name: direct
                match: {prefix: "/direct"}
                direct_response: {status: 418, body: {inline_string: "teapot"}}
              - name: redirect
                match: {prefix: "/go"}
                redirect: {host_redirect: new.example.com, path_redirect: "/gone", response_code: FOUND}
              - name: https
                match: {prefix: "/secure"}
                redirect: {https_redirect: true}
              - name: headers
                match: {prefix: "/headers"}
                request_headers_to_add:
                - header: {key: x-added, value: "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"}
                - header: {key: x-overwrite, value: new}
                  append_action: OVERWRITE_IF_EXISTS_OR_ADD
                request_headers_to_remove: [x-remove-me]
                response_headers_to_add:
                - header: {key: x-route-response, value: added}
                response_headers_to_remove: [x-upstream]
                route: {cluster: a}
              - name: default
                match: {prefix: "/"}
                route: {cluster: a}
            - name: fallback
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                route: {cluster: b}
"#;
    let listeners = http_listener("main", "", vhosts);
    let clusters = format!(
        "{}{}",
        cluster("a", &[a.addr], ""),
        cluster("b", &[b.addr], "")
    );
    let r = Remora::start(&bootstrap(&listeners, &clusters)).await;
    (r, a, b)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_route_match_kind() {
    let (r, _a, _b) = routing_proxy().await;
    let addr = r.addr("main");
    let up = |resp: &Resp| resp.header("x-upstream").unwrap_or("").to_string();
    let host = "api.example.com";

    // Virtual hosts: exact, suffix wildcard, default.
    assert_eq!(up(&get(addr, host, "/x").await), "a");
    assert_eq!(up(&get(addr, "v2.api.example.com", "/x").await), "a");
    assert_eq!(up(&get(addr, "other.org", "/x").await), "b");
    // path / path_separated_prefix / safe_regex / case-insensitive prefix.
    assert_eq!(up(&get(addr, host, "/exact").await), "b");
    assert_eq!(up(&get(addr, host, "/exact/more").await), "a");
    assert_eq!(up(&get(addr, host, "/sep").await), "b");
    assert_eq!(up(&get(addr, host, "/sep/x").await), "b");
    assert_eq!(up(&get(addr, host, "/separate").await), "a");
    assert_eq!(up(&get(addr, host, "/items/42").await), "b");
    assert_eq!(up(&get(addr, host, "/items/4x").await), "a");
    assert_eq!(up(&get(addr, host, "/nocase/x").await), "b");
    // Headers: exact, present+invert, prefix, regex.
    assert_eq!(
        up(&get_with(addr, host, "/h", &[("x-version", "v2")]).await),
        "b"
    );
    assert_eq!(up(&get(addr, host, "/h").await), "a");
    assert_eq!(
        up(&get_with(addr, host, "/hp", &[("x-canary", "yes-please")]).await),
        "b"
    );
    assert_eq!(
        up(&get_with(addr, host, "/hr", &[("x-id", "abc")]).await),
        "b"
    );
    assert_eq!(
        up(&get_with(addr, host, "/hr", &[("x-id", "xyz")]).await),
        "a"
    );
    // Query parameters.
    assert_eq!(up(&get(addr, host, "/q?debug=1").await), "b");
    assert_eq!(up(&get(addr, host, "/q?debug=0").await), "a");
    // gRPC match by content-type.
    assert_eq!(
        up(&get_with(
            addr,
            host,
            "/svc.Echo/Call",
            &[("content-type", "application/grpc")]
        )
        .await),
        "b"
    );
    assert_eq!(up(&get(addr, host, "/svc.Echo/Call").await), "a");
}

#[tokio::test(flavor = "multi_thread")]
async fn actions_rewrites_and_headers() {
    let (r, _a, _b) = routing_proxy().await;
    let addr = r.addr("main");
    let host = "api.example.com";

    let j = get(addr, host, "/old/thing?x=1").await.json();
    assert_eq!(j["path"], "/new/thing?x=1");
    assert_eq!(j["headers"]["x-envoy-original-path"], "/old/thing?x=1");
    let j = get(addr, host, "/users/7/profile").await.json();
    assert_eq!(j["path"], "/profiles/7");
    let j = get(addr, host, "/host").await.json();
    assert_eq!(j["headers"]["host"], "upstream.internal");
    assert_eq!(
        get_with(addr, host, "/by-header", &[("x-target-cluster", "b")])
            .await
            .header("x-upstream"),
        Some("b")
    );
    let missing = get_with(addr, host, "/by-header", &[("x-target-cluster", "nope")]).await;
    assert_eq!(missing.status, 503);

    let d = get(addr, host, "/direct").await;
    assert_eq!((d.status, d.text().as_str()), (418, "teapot"));
    let g = get(addr, host, "/go?q=1").await;
    assert_eq!(g.status, 302);
    assert_eq!(
        g.header("location"),
        Some("http://new.example.com/gone?q=1")
    );
    let s = get(addr, "api.example.com:8080", "/secure/x").await;
    assert_eq!(s.status, 301);
    assert_eq!(
        s.header("location"),
        Some("https://api.example.com/secure/x")
    );

    let resp = get_with(
        addr,
        host,
        "/headers",
        &[("x-remove-me", "1"), ("x-overwrite", "old")],
    )
    .await;
    let j = resp.json();
    assert_eq!(j["headers"]["x-added"], "127.0.0.1");
    assert_eq!(j["headers"]["x-overwrite"], "new");
    assert_eq!(j["headers"]["x-vhost"], "api");
    assert!(j["headers"].get("x-remove-me").is_none());
    assert_eq!(resp.header("x-route-response"), Some("added"));
    assert_eq!(resp.header("x-upstream"), None);
    // Envoy's request headers: x-request-id, x-forwarded-proto, expected timeout (route default 15s).
    let j = get(addr, host, "/x").await.json();
    assert_eq!(j["headers"]["x-forwarded-proto"], "http");
    assert_eq!(j["headers"]["x-request-id"].as_str().unwrap().len(), 36);
    assert_eq!(j["headers"]["x-envoy-expected-rq-timeout-ms"], "15000");
    let resp = get(addr, host, "/x").await;
    assert_eq!(resp.header("server"), Some("envoy"));
    assert!(resp.header("x-envoy-upstream-service-time").is_some());
    assert!(resp.header("date").is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn no_route_is_404_nr() {
    let a = upstream("a").await;
    let vhosts = "            - name: only\n              domains: [\"only.example.com\"]\n              routes:\n              - match: {prefix: \"/api\"}\n                route: {cluster: a}\n";
    let r = Remora::start(&bootstrap(
        &http_listener("main", "", vhosts),
        &cluster("a", &[a.addr], ""),
    ))
    .await;
    let resp = get(r.addr("main"), "only.example.com", "/other").await;
    assert_eq!(resp.status, 404);
    assert_eq!(get(r.addr("main"), "elsewhere", "/api").await.status, 404);
    r.wait_stat("http.main.no_route", 2).await;
    assert_eq!(r.stat("http.main.downstream_rq_4xx").await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn weighted_clusters_split_within_bounds() {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let vhosts = r#"            - name: w
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                route:
                  weighted_clusters:
                    clusters:
                    - name: a
                      weight: 20
                      request_headers_to_add: [{header: {key: x-picked, value: a}}]
                    - name: b
                      weight: 80
                      response_headers_to_add: [{header: {key: x-picked-response, value: b}}]
"#;
    let clusters = format!(
        "{}{}",
        cluster("a", &[a.addr], ""),
        cluster("b", &[b.addr], "")
    );
    let r = Remora::start(&bootstrap(&http_listener("main", "", vhosts), &clusters)).await;
    let n = 1000;
    let mut to_a = 0;
    for _ in 0..n {
        let resp = get(r.addr("main"), "x", "/").await;
        match resp.header("x-upstream") {
            Some("a") => {
                to_a += 1;
                assert_eq!(resp.json()["headers"]["x-picked"], "a");
            }
            Some("b") => assert_eq!(resp.header("x-picked-response"), Some("b")),
            other => panic!("unexpected upstream {other:?}"),
        }
    }
    // 20% of 1000: mean 200, sd ≈ 12.6; ±5 sd.
    assert!((137..=263).contains(&to_a), "{to_a} of {n} went to a");
}

/// Data sources that name files (a direct response's body, an access-log format) are read by
/// the loader, from the bootstrap and over LDS alike.
async fn bodies_and_formats_from_files(source: crate::sources::Source) {
    let files = TempDir::new("data-sources");
    std::fs::write(files.path("body.txt"), "from a file\n").unwrap();
    std::fs::write(
        files.path("format.txt"),
        "%RESPONSE_CODE% format-from-file\n",
    )
    .unwrap();
    let log = format!(
        "          access_log:\n          - name: envoy.access_loggers.file\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog\n              path: RUN_DIR/access.log\n              log_format: {{text_format_source: {{filename: {}}}}}\n",
        files.path("format.txt").display()
    );
    let vhosts = format!(
        "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {{prefix: /}}\n                direct_response: {{status: 200, body: {{filename: {}}}}}\n",
        files.path("body.txt").display()
    );
    let r = source
        .start(&bootstrap(&http_listener("main", &log, &vhosts), ""))
        .await;
    let resp = get(r.addr("main"), "any", "/").await;
    assert_eq!((resp.status, resp.text().as_str()), (200, "from a file\n"));
    assert_eq!(r.log_lines("access.log", 1).await, ["200 format-from-file"]);
}

crate::across_sources!(bodies_and_formats_from_files);
