//! `remora demo`: a built-in echo upstream and a proxy in front of it, with a bootstrap
//! embedded in the binary, for trying remora without writing any configuration.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;

/// The demo bootstrap. `{listener_port}`, `{admin_port}` and `{upstream_port}` are filled in.
pub const DEMO_BOOTSTRAP: &str = r#"
node: {id: remora-demo, cluster: demo}
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: {admin_port}}}
static_resources:
  listeners:
  - name: demo_listener
    address: {socket_address: {address: 127.0.0.1, port_value: {listener_port}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: demo
          codec_type: AUTO
          access_log:
          - name: envoy.access_loggers.stdout
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog
          route_config:
            name: demo_routes
            virtual_hosts:
            - name: demo
              domains: ["*"]
              routes:
              - match: {prefix: "/hello"}
                direct_response: {status: 200, body: {inline_string: "hello from remora\n"}}
              - match: {prefix: "/"}
                route: {cluster: echo, timeout: 5s}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: echo
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: echo
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: {upstream_port}}}}
"#;

pub fn demo_bootstrap(listener_port: u16, admin_port: u16, upstream_port: u16) -> String {
    DEMO_BOOTSTRAP
        .replace("{listener_port}", &listener_port.to_string())
        .replace("{admin_port}", &admin_port.to_string())
        .replace("{upstream_port}", &upstream_port.to_string())
}

/// An HTTP/1.1 + HTTP/2 echo server: answers with the request line, headers and body.
pub async fn echo_server(listener: tokio::net::TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(
                |req: http::Request<hyper::body::Incoming>| async move {
                    let (parts, body) = req.into_parts();
                    let body = body
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let mut text = format!("{} {} {:?}\n", parts.method, parts.uri, parts.version);
                    for (k, v) in &parts.headers {
                        text.push_str(&format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())));
                    }
                    text.push('\n');
                    let mut out = text.into_bytes();
                    out.extend_from_slice(&body);
                    Ok::<_, std::convert::Infallible>(
                        http::Response::builder()
                            .header("content-type", "text/plain")
                            .body(Full::new(Bytes::from(out)))
                            .expect("static"),
                    )
                },
            );
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Start the echo upstream on its own thread; returns its address.
pub fn spawn_echo() -> std::io::Result<SocketAddr> {
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    std_listener.set_nonblocking(true)?;
    let addr = std_listener.local_addr()?;
    std::thread::Builder::new()
        .name("demo-echo".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let l = tokio::net::TcpListener::from_std(std_listener).expect("listener");
                echo_server(l).await;
            });
        })?;
    Ok(addr)
}

pub fn instructions(listener_port: u16, admin_port: u16) -> String {
    format!(
        "\nremora demo: a proxy on 127.0.0.1:{listener_port} in front of a built-in echo server.\n\
         Try:\n\
         \x20 curl -s http://127.0.0.1:{listener_port}/hello                      # a direct response\n\
         \x20 curl -s http://127.0.0.1:{listener_port}/echo -d 'some body'        # proxied to the echo upstream\n\
         \x20 curl -s --http2-prior-knowledge http://127.0.0.1:{listener_port}/h2 # HTTP/2 (h2c) downstream\n\
         \x20 curl -s http://127.0.0.1:{admin_port}/stats?filter=demo            # Envoy stats\n\
         \x20 curl -s http://127.0.0.1:{admin_port}/stats/prometheus | head      # Prometheus\n\
         \x20 curl -s http://127.0.0.1:{admin_port}/clusters                     # cluster and host status\n\
         \x20 curl -s http://127.0.0.1:{admin_port}/config_dump | head -40       # the running configuration\n\
         Press Ctrl-C to stop.\n"
    )
}
