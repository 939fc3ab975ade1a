//! RBAC as istiod composes it for AuthorizationPolicies, over mTLS identities from the dev CA:
//! a DENY filter before an ALLOW filter on the inbound HTTP chain (policy names
//! `ns[autolytiq]-policy[NAME]-rule[N]`, SPIFFE regex principals), Istio's dry-run shadow rules,
//! and a network RBAC filter closing a TCP connection before any byte reaches the upstream.

use crate::sources::Source;
use crate::support::*;
use crate::tls::{Pki, client_config, downstream_tls, tls_connect};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const AUTOLYTIQ: &str = "spiffe://cluster.local/ns/autolytiq/sa/api-gateway";
const MONITORING: &str = "spiffe://cluster.local/ns/monitoring/sa/prometheus";
const OTHER: &str = "spiffe://cluster.local/ns/default/sa/sleep";
const SERVER: &str = "spiffe://cluster.local/ns/autolytiq/sa/deal";

/// istiod's two filters for the mesh's policies on a port: the DENY policy `deny-admin`
/// (paths under /admin, from anyone) first, then the ALLOW policy (ns/autolytiq may use the
/// port with GET/POST/PUT/DELETE, ns/monitoring may scrape /metrics) with a dry-run DENY of
/// DELETE in its shadow rules.
fn rbac_filters(port: u16) -> String {
    format!(
        r#"          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                action: DENY
                policies:
                  "ns[autolytiq]-policy[deny-admin]-rule[0]":
                    permissions:
                    - and_rules: {{rules: [{{or_rules: {{rules: [{{url_path: {{path: {{prefix: /admin}}}}}}]}}}}]}}
                    principals:
                    - and_ids: {{ids: [{{any: true}}]}}
              shadow_rules_stat_prefix: istio_dry_run_allow_
          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                policies:
                  "ns[autolytiq]-policy[my-new-service-policy]-rule[0]":
                    permissions:
                    - and_rules:
                        rules:
                        - or_rules: {{rules: [{{destination_port: {port}}}]}}
                        - or_rules:
                            rules:
                            - header: {{name: ":method", string_match: {{exact: GET}}}}
                            - header: {{name: ":method", string_match: {{exact: POST}}}}
                            - header: {{name: ":method", string_match: {{exact: PUT}}}}
                            - header: {{name: ":method", string_match: {{exact: DELETE}}}}
                    principals:
                    - and_ids:
                        ids:
                        - or_ids: {{ids: [{{authenticated: {{principal_name: {{safe_regex: {{regex: ".*/ns/autolytiq/.*"}}}}}}}}]}}
                  "ns[autolytiq]-policy[my-new-service-policy]-rule[1]":
                    permissions:
                    - and_rules: {{rules: [{{or_rules: {{rules: [{{url_path: {{path: {{exact: /metrics}}}}}}]}}}}]}}
                    principals:
                    - and_ids:
                        ids:
                        - or_ids: {{ids: [{{authenticated: {{principal_name: {{safe_regex: {{regex: ".*/ns/monitoring/.*"}}}}}}}}]}}
              shadow_rules:
                action: DENY
                policies:
                  "ns[autolytiq]-policy[dry-run-no-delete]-rule[0]":
                    permissions: [{{header: {{name: ":method", string_match: {{exact: DELETE}}}}}}]
                    principals: [{{any: true}}]
              shadow_rules_stat_prefix: istio_dry_run_deny_
"#
    )
}

fn inbound(certs: &std::path::Path, port: u16) -> String {
    let log = "          access_log:\n          - name: envoy.access_loggers.file\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog\n              path: RUN_DIR/rbac.log\n              log_format: {text_format_source: {inline_string: \"%REQ(:METHOD)% %REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %DYNAMIC_METADATA(envoy.filters.http.rbac:istio_dry_run_deny_shadow_engine_result)%\\n\"}}\n";
    let routes = "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {prefix: /}\n                route: {cluster: app}\n";
    http_listener("inbound", log, routes)
        .replace("port_value: 0", &format!("port_value: {port}"))
        .replace(
            "          http_filters:\n",
            &format!("          http_filters:\n{}", rbac_filters(port)),
        )
        + &downstream_tls(certs, true, None)
}

/// One request over a fresh mTLS connection: status, body, whether the upstream answered.
async fn call(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    method: &str,
    path: &str,
) -> (u16, String, bool) {
    let tls = tokio::time::timeout(Duration::from_secs(10), tls_connect(addr, cfg))
        .await
        .expect("handshake in time")
        .expect("handshake");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "deal.autolytiq.svc.cluster.local")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let upstream = resp.headers().contains_key("x-upstream");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        String::from_utf8_lossy(&body).into_owned(),
        upstream,
    )
}

async fn authorization_policies_over_mtls(source: Source) {
    let pki = Pki::new();
    let certs = pki.write("deal", SERVER);
    let app = upstream("deal-app").await;
    let port = closed_port().port();
    let remora = source
        .start(&bootstrap(
            &inbound(&certs, port),
            &cluster("app", &[app.addr], ""),
        ))
        .await;
    let addr = remora.addr("inbound");
    let client = |id: &str| {
        client_config(
            pki.ca.root_pem(),
            Some(&pki.issue(id, |_| {})),
            &["http/1.1"],
        )
    };
    let (autolytiq, monitoring, other) = (client(AUTOLYTIQ), client(MONITORING), client(OTHER));
    let none = "rbac_access_denied_matched_policy[none]";
    let admin = "rbac_access_denied_matched_policy[ns[autolytiq]-policy[deny-admin]-rule[0]]";
    let cases: Vec<(&Arc<rustls::ClientConfig>, &str, &str, Option<&str>)> = vec![
        (&autolytiq, "GET", "/api/deals", None),
        (&autolytiq, "POST", "/api/deals", None),
        (&autolytiq, "PUT", "/api/deals/7", None),
        (&autolytiq, "DELETE", "/api/deals/7", None),
        (&autolytiq, "PATCH", "/api/deals/7", Some(none)),
        (&autolytiq, "GET", "/metrics", None),
        // The DENY filter runs first: DENY wins over the ALLOW policy.
        (&autolytiq, "GET", "/admin/users", Some(admin)),
        (&monitoring, "GET", "/metrics", None),
        (&monitoring, "GET", "/metrics?x=1", None),
        (&monitoring, "GET", "/api/deals", Some(none)),
        (&monitoring, "DELETE", "/api/deals/7", Some(none)),
        (&monitoring, "GET", "/admin", Some(admin)),
        (&other, "GET", "/api/deals", Some(none)),
        (&other, "GET", "/metrics", Some(none)),
        (&other, "POST", "/api/deals", Some(none)),
        (&other, "GET", "/admin", Some(admin)),
    ];
    for (cfg, method, path, denied) in &cases {
        let (status, body, reached) = call(addr, (*cfg).clone(), method, path).await;
        match denied {
            None => {
                assert_eq!(status, 200, "{method} {path}: {body}");
                assert!(reached, "{method} {path} reached the upstream");
            }
            Some(_) => {
                assert_eq!(
                    (status, body.as_str()),
                    (403, "RBAC: access denied"),
                    "{method} {path}"
                );
                assert!(!reached);
            }
        }
    }
    let allowed = cases.iter().filter(|c| c.3.is_none()).count();
    assert_eq!(
        app.requests.load(std::sync::atomic::Ordering::Relaxed),
        allowed
    );

    let by_deny = cases.iter().filter(|c| c.3 == Some(admin)).count() as i64;
    let by_allow = cases.iter().filter(|c| c.3 == Some(none)).count() as i64;
    let n = cases.len() as i64;
    let stats = remora.stats().await;
    assert_eq!(stats["http.inbound.rbac.denied"], by_deny + by_allow);
    assert_eq!(
        stats["http.inbound.rbac.allowed"],
        (n - by_deny) + (n - by_deny - by_allow)
    );
    // The dry-run DENY of DELETE: counted on every request the ALLOW filter saw, never enforced.
    let deletes = cases
        .iter()
        .filter(|c| c.1 == "DELETE" && c.3 != Some(admin))
        .count() as i64;
    assert_eq!(
        stats["http.inbound.rbac.istio_dry_run_deny_.shadow_denied"],
        deletes
    );
    assert_eq!(
        stats["http.inbound.rbac.istio_dry_run_deny_.shadow_allowed"],
        n - by_deny - deletes
    );

    let lines = remora.log_lines("rbac.log", cases.len()).await;
    let line = |m: &str, p: &str| {
        lines
            .iter()
            .find(|l| l.starts_with(&format!("{m} {p} ")))
            .unwrap_or_else(|| panic!("no line for {m} {p}: {lines:?}"))
            .clone()
    };
    assert_eq!(
        line("GET", "/admin/users"),
        format!("GET /admin/users 403 - {admin} -")
    );
    assert_eq!(
        line("PATCH", "/api/deals/7"),
        format!("PATCH /api/deals/7 403 - {none} allowed")
    );
    assert!(
        line("DELETE", "/api/deals/7").contains(" denied"),
        "{lines:?}"
    );
}

/// A network RBAC filter in front of tcp_proxy: a caller outside ns/autolytiq is cut off on
/// its first bytes, none of which reach the upstream.
async fn network_rbac_closes_tcp(source: Source) {
    let pki = Pki::new();
    let certs = pki.write("db", SERVER);
    let seen = Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let (up, _task) = {
        let seen = seen.clone();
        serve_tcp(move |mut s| {
            let seen = seen.clone();
            async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    seen.lock().unwrap().extend_from_slice(&buf[..n]);
                    let _ = s.write_all(&buf[..n]).await;
                }
            }
        })
        .await
    };
    let log = "          access_log:\n          - name: l\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog\n              path: RUN_DIR/tcp.log\n              log_format: {text_format_source: {inline_string: \"%RESPONSE_FLAGS% %CONNECTION_TERMINATION_DETAILS% %DYNAMIC_METADATA(envoy.filters.network.rbac)%\\n\"}}\n";
    let listener = format!(
        r#"  - name: tcp
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.rbac
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC
          stat_prefix: tcp.
          shadow_rules_stat_prefix: istio_dry_run_allow_
          rules:
            policies:
              "ns[autolytiq]-policy[db]-rule[0]":
                permissions: [{{and_rules: {{rules: [{{any: true}}]}}}}]
                principals:
                - and_ids: {{ids: [{{or_ids: {{ids: [{{authenticated: {{principal_name: {{safe_regex: {{regex: ".*/ns/autolytiq/.*"}}}}}}}}]}}}}]}}
          shadow_rules:
            policies:
              nobody: {{permissions: [{{any: true}}], principals: [{{not_id: {{any: true}}}}]}}
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: db
          cluster: db
{log}"#
    ) + &downstream_tls(&certs, true, None);
    let remora = source
        .start(&bootstrap(&listener, &cluster("db", &[up], "")))
        .await;
    let addr = remora.addr("tcp");
    let cfg = |id: &str| client_config(pki.ca.root_pem(), Some(&pki.issue(id, |_| {})), &[]);

    let mut ok = tls_connect(addr, cfg(AUTOLYTIQ)).await.unwrap();
    ok.write_all(b"SELECT 1").await.unwrap();
    let mut back = [0u8; 8];
    ok.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"SELECT 1");
    drop(ok);

    let mut denied = tls_connect(addr, cfg(OTHER)).await.unwrap();
    denied.write_all(b"DROP TABLE deals").await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), denied.read(&mut buf))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!(n, 0, "the connection is closed");
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        b"SELECT 1",
        "no denied byte reached the upstream"
    );

    remora.wait_stat("tcp.rbac.denied", 1).await;
    let stats = remora.stats().await;
    assert_eq!(stats["tcp.rbac.allowed"], 1);
    assert_eq!(stats["tcp.rbac.istio_dry_run_allow_.shadow_denied"], 2);
    let lines = remora.log_lines("tcp.log", 2).await;
    assert!(
        lines.iter().any(
            |l| l.starts_with("- rbac_access_denied_matched_policy[none] ")
                && l.contains("\"istio_dry_run_allow_shadow_engine_result\":\"denied\"")
        ),
        "{lines:?}"
    );
}

crate::across_sources!(authorization_policies_over_mtls, network_rbac_closes_tcp);
