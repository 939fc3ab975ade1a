//! `envoy.filters.http.cors`: policies per route (`typed_per_filter_config`) and the deprecated
//! virtual-host `cors`, from a file and through xDS.

use crate::sources::Source;
use crate::support::*;

async fn preflights_and_simple_requests(source: Source) {
    let app = upstream("app").await;
    let listeners = r#"  - name: web
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: web
          route_config:
            name: web
            virtual_hosts:
            - name: api
              domains: ["api.test"]
              typed_per_filter_config:
                envoy.filters.http.cors:
                  "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy
                  allow_origin_string_match: [{exact: "https://app.example"}]
                  allow_methods: "GET, PUT"
                  allow_headers: "authorization"
                  expose_headers: "x-total"
                  max_age: "86400"
                  allow_credentials: true
              routes:
              - match: {prefix: "/strict"}
                route: {cluster: app}
                typed_per_filter_config:
                  envoy.filters.http.cors:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy
                    forward_not_matching_preflights: false
              - match: {prefix: "/"}
                route: {cluster: app}
            - name: legacy
              domains: ["legacy.test"]
              cors: {allow_origin_string_match: [{suffix: ".legacy.test"}], allow_methods: POST}
              routes:
              - match: {prefix: "/"}
                route: {cluster: app}
          http_filters:
          - name: envoy.filters.http.cors
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#;
    let r = source
        .start(&bootstrap(listeners, &cluster("app", &[app.addr], "")))
        .await;
    let web = r.addr("web");
    let origin = ("origin", "https://app.example");
    let preflight = |host: &'static str, path: &'static str, o: &'static str| {
        request(
            web,
            false,
            http::Request::builder()
                .method("OPTIONS")
                .uri(path)
                .header("host", host)
                .header("origin", o)
                .header("access-control-request-method", "PUT")
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap(),
        )
    };
    let p = preflight("api.test", "/", "https://app.example").await;
    assert_eq!(p.status, 200);
    assert!(p.body.is_empty());
    assert_eq!(p.header("x-upstream"), None, "answered by the proxy");
    assert_eq!(
        p.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert_eq!(p.header("access-control-allow-methods"), Some("GET, PUT"));
    assert_eq!(
        p.header("access-control-allow-headers"),
        Some("authorization")
    );
    assert_eq!(p.header("access-control-max-age"), Some("86400"));
    assert_eq!(p.header("access-control-allow-credentials"), Some("true"));
    // Another origin's preflight goes on to the application, or is answered without the origin.
    let other = preflight("api.test", "/", "https://evil.example").await;
    assert_eq!(other.header("x-upstream"), Some("app"));
    assert_eq!(other.header("access-control-allow-origin"), None);
    let strict = preflight("api.test", "/strict", "https://evil.example").await;
    assert_eq!(strict.status, 200);
    assert_eq!(strict.header("x-upstream"), None);
    assert_eq!(strict.header("access-control-allow-origin"), None);
    // A simple request gets the origin and the exposed headers on the application's answer.
    let simple = get_with(web, "api.test", "/", &[origin]).await;
    assert_eq!(simple.header("x-upstream"), Some("app"));
    assert_eq!(
        simple.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert_eq!(
        simple.header("access-control-expose-headers"),
        Some("x-total")
    );
    // The deprecated virtual-host policy.
    let legacy = preflight("legacy.test", "/", "https://w.legacy.test").await;
    assert_eq!(legacy.status, 200);
    assert_eq!(legacy.header("access-control-allow-methods"), Some("POST"));
    assert_eq!(r.stat("http.web.cors.origin_valid").await, 3);
    assert_eq!(r.stat("http.web.cors.origin_invalid").await, 2);
}

crate::across_sources!(preflights_and_simple_requests);
