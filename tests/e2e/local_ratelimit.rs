//! `envoy.filters.http.local_ratelimit` and `envoy.filters.network.local_ratelimit`: Envoy's
//! local_ratelimit example run for real, and the filters from a file and through xDS.

use crate::sources::Source;
use crate::support::*;
use std::path::PathBuf;

fn example() -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("tests/data/envoy-configs/examples/local_ratelimit_envoy.yaml");
    std::fs::read_to_string(p).unwrap()
}

/// The example: both listeners allow two requests per five seconds (one bucket each), then
/// answer 429 `local_rate_limited` with `x-local-rate-limit: true`; the stats listener proxies
/// the admin's `/stats/prometheus`.
#[tokio::test(flavor = "multi_thread")]
async fn the_local_ratelimit_example_runs() {
    let service = upstream("service").await;
    let (stats_port, front, admin) = (closed_port(), closed_port(), closed_port());
    let yaml = example()
        .replace("address: 0.0.0.0", "address: 127.0.0.1")
        .replace(
            "port_value: 9902",
            &format!("port_value: {}", stats_port.port()),
        )
        .replace(
            "port_value: 10000",
            &format!("port_value: {}", front.port()),
        )
        .replace("port_value: 9901", &format!("port_value: {}", admin.port()))
        .replace("address: service", "address: 127.0.0.1")
        .replace(
            "port_value: 80",
            &format!("port_value: {}", service.addr.port()),
        );
    let r = Remora::start(&yaml).await;
    for _ in 0..2 {
        let ok = get(front, "example.com", "/").await;
        assert_eq!(ok.status, 200);
        assert_eq!(ok.header("x-upstream"), Some("service"));
        assert_eq!(ok.header("x-local-rate-limit"), None);
    }
    let limited = get(front, "example.com", "/").await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.text(), "local_rate_limited");
    assert_eq!(limited.header("x-local-rate-limit"), Some("true"));
    assert_eq!(
        service.requests.load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    // The stats listener has a bucket of its own.
    let stats = get(stats_port, "example.com", "/stats/prometheus").await;
    assert_eq!(stats.status, 200);
    assert!(
        stats
            .text()
            .contains("envoy_http_local_rate_limiter_http_local_rate_limit_rate_limited")
    );
    let s = r.stats().await;
    let c = |n: &str| s[&format!("http_local_rate_limiter.http_local_rate_limit.{n}")];
    assert_eq!(
        (c("enabled"), c("ok"), c("rate_limited"), c("enforced")),
        (4, 3, 1, 1)
    );
}

async fn http_and_network_limits(source: Source) {
    let app = upstream("app").await;
    let (echo, _task) = tcp_echo().await;
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
            - name: vh
              domains: ["*"]
              routes:
              - match: {prefix: "/own"}
                route: {cluster: app}
                typed_per_filter_config:
                  rl:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
                    stat_prefix: own
                    status: {code: ServiceUnavailable}
                    token_bucket: {max_tokens: 1, fill_interval: 3600s}
                    filter_enabled: {default_value: {numerator: 100}}
                    filter_enforced: {default_value: {numerator: 100}}
              - match: {prefix: "/"}
                route:
                  cluster: app
                  rate_limits: [{actions: [{request_headers: {header_name: x-user, descriptor_key: user}}]}]
          http_filters:
          - name: rl
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
              stat_prefix: web_rl
              token_bucket: {max_tokens: 100, fill_interval: 1s}
              filter_enabled: {default_value: {numerator: 100}}
              filter_enforced: {default_value: {numerator: 100}}
              enable_x_ratelimit_headers: DRAFT_VERSION_03
              enable_retry_after_header: true
              descriptors:
              - entries: [{key: user, value: greedy}]
                token_bucket: {max_tokens: 2, tokens_per_fill: 1, fill_interval: 3600s}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  - name: tcp
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.local_ratelimit
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit
          stat_prefix: tcp_rl
          token_bucket: {max_tokens: 1, fill_interval: 3600s}
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: tcp
          cluster: echo
"#;
    let clusters = [
        cluster("app", &[app.addr], ""),
        cluster("echo", &[echo], ""),
    ]
    .concat();
    let r = source.start(&bootstrap(listeners, &clusters)).await;
    let web = r.addr("web");
    let greedy = [("x-user", "greedy")];
    let first = get_with(web, "a", "/", &greedy).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("x-ratelimit-limit"), Some("2"));
    assert_eq!(first.header("x-ratelimit-remaining"), Some("1"));
    assert_eq!(first.header("x-ratelimit-reset"), Some("0"));
    assert_eq!(get_with(web, "a", "/", &greedy).await.status, 200);
    let limited = get_with(web, "a", "/", &greedy).await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(limited.header("retry-after"), Some("3600"));
    // Another user only takes from the default bucket.
    assert_eq!(
        get_with(web, "a", "/", &[("x-user", "calm")]).await.status,
        200
    );
    // The route's own configuration: its bucket and status.
    assert_eq!(get(web, "a", "/own").await.status, 200);
    assert_eq!(get(web, "a", "/own").await.status, 503);
    assert_eq!(r.stat("web_rl.http_local_rate_limit.rate_limited").await, 1);
    assert_eq!(r.stat("web_rl.http_local_rate_limit.ok").await, 3);
    assert_eq!(r.stat("own.http_local_rate_limit.enforced").await, 1);

    // One connection per hour on the TCP chain: the second is closed at once.
    let tcp = r.addr("tcp");
    let mut c = tokio::net::TcpStream::connect(tcp).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    c.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    c.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    let mut second = tokio::net::TcpStream::connect(tcp).await.unwrap();
    let _ = second.write_all(b"ping").await;
    let mut rest = Vec::new();
    let n = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        second.read_to_end(&mut rest),
    )
    .await
    .expect("closed")
    .unwrap_or(0);
    assert_eq!(n, 0);
    r.wait_stat("local_rate_limit.tcp_rl.rate_limited", 1).await;
}

crate::across_sources!(http_and_network_limits);

/// `filter_enabled` / `filter_enforced` (RuntimeFractionalPercent) and the network filter's
/// `runtime_enabled` (RuntimeFeatureFlag) read their `runtime_key` from the runtime: here its
/// values turn off what the defaults turn on.
async fn runtime_keys_override_the_defaults(source: Source) {
    let app = upstream("app").await;
    let (echo, _task) = tcp_echo().await;
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
            - name: vh
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                route: {cluster: app}
          http_filters:
          - name: rl
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
              stat_prefix: web_rl
              token_bucket: {max_tokens: 1, fill_interval: 3600s}
              filter_enabled: {runtime_key: rl.enabled, default_value: {numerator: 100}}
              filter_enforced: {runtime_key: rl.enforced, default_value: {numerator: 100}}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  - name: tcp
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.local_ratelimit
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit
          stat_prefix: tcp_rl
          token_bucket: {max_tokens: 1, fill_interval: 3600s}
          runtime_enabled: {runtime_key: tcp_rl.enabled, default_value: true}
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: tcp
          cluster: echo
"#;
    let clusters = [
        cluster("app", &[app.addr], ""),
        cluster("echo", &[echo], ""),
    ]
    .concat();
    let runtime = "layered_runtime:
  layers:
  - name: static
    static_layer:
      rl.enforced: 0
      tcp_rl.enabled: false
";
    let r = source
        .start(&(bootstrap(listeners, &clusters) + runtime))
        .await;
    let web = r.addr("web");
    // Enabled (default) but not enforced (runtime 0%): limited requests are counted and pass.
    for _ in 0..3 {
        assert_eq!(get(web, "a", "/").await.status, 200);
    }
    assert_eq!(r.stat("web_rl.http_local_rate_limit.enabled").await, 3);
    assert_eq!(r.stat("web_rl.http_local_rate_limit.rate_limited").await, 2);
    assert_eq!(r.stat("web_rl.http_local_rate_limit.enforced").await, 0);
    // The network filter is off by its runtime key: every connection goes through.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for _ in 0..3 {
        let mut c = tokio::net::TcpStream::connect(r.addr("tcp")).await.unwrap();
        c.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
    }
    assert_eq!(r.stat("local_rate_limit.tcp_rl.rate_limited").await, 0);
}

crate::across_sources!(runtime_keys_override_the_defaults);
