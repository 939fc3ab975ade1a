//! mTLS with SPIFFE identities: the two-sidecar chain (outbound originates, inbound terminates
//! STRICT), PERMISSIVE ports, certificate rotation, every bad-input case with its stat, and
//! interop with curl and openssl.

use crate::sources::Source;
use crate::support::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use remora_certs::SpiffeId;
use remora_certs::ca::{DevCa, Issued, KeyAlgorithm, LeafRequest};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const GATEWAY: &str = "spiffe://cluster.local/ns/autolytiq/sa/api-gateway";
pub const DEAL: &str = "spiffe://cluster.local/ns/autolytiq/sa/deal";

/// A CA and certificates for a test, written in Istio's layout under `dir/<name>/`.
pub struct Pki {
    pub ca: DevCa,
    pub dir: TempDir,
}

impl Pki {
    pub fn new() -> Self {
        Self {
            ca: DevCa::generate_root("e2e", KeyAlgorithm::EcdsaP256).unwrap(),
            dir: TempDir::new("pki"),
        }
    }

    pub fn issue(&self, id: &str, tweak: impl FnOnce(&mut LeafRequest)) -> Issued {
        let mut req = LeafRequest::spiffe(SpiffeId::parse(id).unwrap(), Duration::from_secs(3600));
        req.dns_names = vec!["localhost".into()];
        tweak(&mut req);
        self.ca.issue(&req).unwrap()
    }

    /// Issue and write `dir/<name>/{cert-chain,key,root-cert}.pem`; returns the directory.
    pub fn write(&self, name: &str, id: &str) -> std::path::PathBuf {
        let d = self.dir.path(name);
        self.issue(id, |_| {}).write_istio_layout(&d).unwrap();
        d
    }
}

fn p(dir: &Path, f: &str) -> String {
    dir.join(f).display().to_string()
}

/// A `DownstreamTlsContext` transport socket for a filter chain (indented for `http_listener`).
pub fn downstream_tls(certs: &Path, require_client: bool, peer_san: Option<&str>) -> String {
    let sans = peer_san
        .map(|s| {
            format!(
                "              match_typed_subject_alt_names:\n              - san_type: URI\n                matcher: {{exact: \"{s}\"}}\n"
            )
        })
        .unwrap_or_default();
    format!(
        r#"      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: {require_client}
          common_tls_context:
            alpn_protocols: [h2, http/1.1]
            tls_certificates:
            - certificate_chain: {{filename: {chain}}}
              private_key: {{filename: {key}}}
            validation_context:
              trusted_ca: {{filename: {root}}}
{sans}"#,
        chain = p(certs, "cert-chain.pem"),
        key = p(certs, "key.pem"),
        root = p(certs, "root-cert.pem"),
    )
}

/// A cluster `transport_socket` originating mTLS that expects `peer_san`.
pub fn upstream_tls(certs: &Path, peer_san: &str, alpn: &str) -> String {
    format!(
        r#"    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: outbound_.8082_._.deal.autolytiq.svc.cluster.local
        common_tls_context:
          alpn_protocols: [{alpn}]
          tls_certificates:
          - certificate_chain: {{filename: {chain}}}
            private_key: {{filename: {key}}}
          validation_context:
            trusted_ca: {{filename: {root}}}
            match_typed_subject_alt_names:
            - san_type: URI
              matcher: {{exact: "{peer_san}"}}
"#,
        chain = p(certs, "cert-chain.pem"),
        key = p(certs, "key.pem"),
        root = p(certs, "root-cert.pem"),
    )
}

const ROUTE_ALL: &str = "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {prefix: /}\n                route: {cluster: app}\n";

fn access_log(file: &str) -> String {
    format!(
        "          access_log:\n          - name: envoy.access_loggers.file\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog\n              path: RUN_DIR/{file}\n              log_format: {{text_format_source: {{inline_string: \"%RESPONSE_CODE% peer=%DOWNSTREAM_PEER_URI_SAN% local=%DOWNSTREAM_LOCAL_URI_SAN% %DOWNSTREAM_TLS_VERSION% %DOWNSTREAM_TLS_CIPHER% sni=%REQUESTED_SERVER_NAME% proto=%PROTOCOL%\\n\"}}}}\n"
    )
}

/// The inbound sidecar: STRICT mTLS on `inbound`, accepting only `peer` (if given).
async fn inbound_sidecar(certs: &Path, app: SocketAddr, peer: Option<&str>) -> Remora {
    let listener = http_listener("inbound", &access_log("inbound.log"), ROUTE_ALL).replacen(
        "    filter_chains:\n",
        "    access_log:\n    - name: envoy.access_loggers.file\n      typed_config:\n        \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog\n        path: RUN_DIR/listener.log\n        log_format: {text_format_source: {inline_string: \"%RESPONSE_FLAGS% %DOWNSTREAM_TRANSPORT_FAILURE_REASON%\\n\"}}\n    filter_chains:\n",
        1,
    ) + &downstream_tls(certs, true, peer);
    Remora::start(&bootstrap(&listener, &cluster("app", &[app], ""))).await
}

// === test clients ===

/// A rustls client config trusting `root_pem`, presenting `client` if given.
pub fn client_config(
    root_pem: &str,
    client: Option<&Issued>,
    alpn: &[&str],
) -> Arc<rustls::ClientConfig> {
    use remora_certs::source::{Data, FileTrust};
    use remora_certs::verify::{ServerVerifier, Validation};
    let trust = FileTrust::load(Data::Inline(root_pem.as_bytes().to_vec()), None).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(remora_certs::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ServerVerifier {
            validation: Validation {
                trust: Some(trust),
                san_matchers: vec![],
                pins: vec![],
            },
        }));
    let mut cfg = match client {
        Some(c) => builder
            .with_client_auth_cert(
                remora_certs::pem::certificates(c.cert_chain_pem.as_bytes()).unwrap(),
                remora_certs::pem::private_key(c.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    Arc::new(cfg)
}

pub async fn tls_connect(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    tls_connect_sni(addr, cfg, "localhost").await
}

pub async fn tls_connect_sni(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    sni: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(cfg)
        .connect(sni.to_string().try_into().unwrap(), tcp)
        .await
}

/// GET over mTLS (HTTP/1.1). `Err` when the handshake or the exchange fails.
pub async fn tls_get(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    path: &str,
) -> Result<Resp, String> {
    tls_request(addr, cfg, path, &[]).await
}

pub async fn tls_get_with(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    headers: &[(&str, &str)],
) -> Result<Resp, String> {
    tls_request(addr, cfg, "/", headers).await
}

/// One request over a fresh TLS connection, bounded so that a stuck handshake fails the test
/// instead of hanging it.
async fn tls_request(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Resp, String> {
    tokio::time::timeout(
        Duration::from_secs(10),
        tls_request_unbounded(addr, cfg, path, headers),
    )
    .await
    .map_err(|_| "no answer within 10 s".to_string())?
}

async fn tls_request_unbounded(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Resp, String> {
    let tls = tls_connect(addr, cfg).await.map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut req = http::Request::builder().uri(path).header("host", "deal");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::new())).unwrap();
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Resp {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
        trailers: None,
        version: parts.version,
    })
}

async fn wait_log(r: &Remora, file: &str, lines: usize) -> Vec<String> {
    let path = r.dir.path(file);
    for _ in 0..100 {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let l: Vec<String> = text.lines().map(str::to_string).collect();
        if l.len() >= lines {
            return l;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{file} did not get {lines} lines: {:?}",
        std::fs::read_to_string(&path)
    );
}

// === tests ===

/// client app → remora (outbound: plaintext in, mTLS out) → remora (inbound: STRICT mTLS) → app,
/// over HTTP/1.1 and HTTP/2, with the peer identity in the inbound access log.
#[tokio::test(flavor = "multi_thread")]
async fn two_sidecar_mtls_chain() {
    let pki = Pki::new();
    let gw = pki.write("gw", GATEWAY);
    let deal = pki.write("deal", DEAL);
    let app = upstream("deal-app").await;
    let inbound = inbound_sidecar(&deal, app.addr, Some(GATEWAY)).await;
    let b = inbound.addr("inbound");

    let upstream_log = "          access_log:\n          - name: envoy.access_loggers.file\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog\n              path: RUN_DIR/outbound.log\n              log_format: {text_format_source: {inline_string: \"%UPSTREAM_PEER_URI_SAN% %UPSTREAM_LOCAL_URI_SAN% %UPSTREAM_TLS_VERSION% %DOWNSTREAM_TLS_VERSION%\\n\"}}\n";
    let outbound_listener = http_listener(
        "outbound",
        upstream_log,
        ROUTE_ALL.replace("app", "deal").as_str(),
    ) + &http_listener(
        "outbound_h2",
        "",
        ROUTE_ALL.replace("app", "deal_h2").as_str(),
    );
    let clusters = cluster("deal", &[b], &upstream_tls(&gw, DEAL, "istio, http/1.1"))
        + &cluster(
            "deal_h2",
            &[b],
            &(upstream_tls(&gw, DEAL, "h2")
                + "    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        explicit_http_config: {http2_protocol_options: {}}\n"),
        );
    let outbound = Remora::start(&bootstrap(&outbound_listener, &clusters)).await;

    for listener in ["outbound", "outbound_h2"] {
        let r = get(outbound.addr(listener), "deal", "/hello").await;
        assert_eq!(r.status, 200, "{listener}: {}", r.text());
        assert_eq!(r.header("x-upstream"), Some("deal-app"));
    }
    let lines = wait_log(&inbound, "inbound.log", 2).await;
    for (line, proto) in lines.iter().zip(["HTTP/1.1", "HTTP/2"]) {
        assert!(
            line.starts_with(&format!(
                "200 peer={GATEWAY} local={DEAL} TLSv1.2 ECDHE-ECDSA-"
            )),
            "{line}"
        );
        // The inbound listener has no TLS inspector: like Envoy, %REQUESTED_SERVER_NAME% stays
        // empty (the handshake's SNI is not the inspector's).
        assert!(line.ends_with(&format!("sni=- proto={proto}")), "{line}");
    }
    // Envoy's stats on both sides.
    // The outbound side logs who it reached: the upstream's verified identity.
    let lines = wait_log(&outbound, "outbound.log", 1).await;
    assert_eq!(lines[0], format!("{DEAL} {GATEWAY} TLSv1.2 -"));
    assert_eq!(outbound.stat("cluster.deal.ssl.handshake").await, 1);
    assert_eq!(outbound.stat("cluster.deal_h2.ssl.handshake").await, 1);
    assert_eq!(outbound.stat("cluster.deal.ssl.versions.TLSv1.2").await, 1);
    let stat = format!("listener.{}.ssl.handshake", stat_address(b));
    assert_eq!(inbound.stat(&stat).await, 2);
    assert_eq!(
        inbound.stat("http.inbound.downstream_cx_ssl_total").await,
        2
    );
    assert_eq!(
        inbound.stat("http.inbound.downstream_cx_ssl_active").await,
        inbound.stat("http.inbound.downstream_cx_active").await
    );
    assert_eq!(
        outbound.stat("http.outbound.downstream_cx_ssl_total").await,
        0
    );

    // The outbound side refuses an upstream with the wrong identity: 503 UF, fail_verify_san.
    let wrong = Remora::start(&bootstrap(
        &http_listener("outbound", "", ROUTE_ALL.replace("app", "auth").as_str()),
        &cluster(
            "auth",
            &[b],
            &upstream_tls(
                &gw,
                "spiffe://cluster.local/ns/autolytiq/sa/auth",
                "http/1.1",
            ),
        ),
    ))
    .await;
    let r = get(wrong.addr("outbound"), "auth", "/").await;
    assert_eq!(r.status, 503);
    assert!(
        r.text()
            == "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure",
        "{}",
        r.text()
    );
    assert_eq!(wrong.stat("cluster.auth.ssl.fail_verify_san").await, 1);
    assert_eq!(wrong.stat("cluster.auth.upstream_cx_connect_fail").await, 1);
}

pub fn stat_address(a: SocketAddr) -> String {
    format!("{}_{}", a.ip(), a.port())
}

/// A STRICT port: every kind of bad client is refused with its stat, and a good client on
/// another connection is unaffected throughout.
#[tokio::test(flavor = "multi_thread")]
async fn strict_port_refuses_bad_clients() {
    let pki = Pki::new();
    let deal = pki.write("deal", DEAL);
    let app = upstream("deal-app").await;
    let inbound = inbound_sidecar(&deal, app.addr, Some(GATEWAY)).await;
    let addr = inbound.addr("inbound");
    let root = pki.ca.root_pem().to_string();
    let scope = format!("listener.{}.ssl", stat_address(addr));

    // A good client keeps one connection open through all of it.
    let good = pki.issue(GATEWAY, |_| {});
    let tls = tls_connect(addr, client_config(&root, Some(&good), &["http/1.1"]))
        .await
        .unwrap();
    let (mut keep, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let ask = |s: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>| {
        s.send_request(
            http::Request::builder()
                .uri("/")
                .header("host", "deal")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
    };
    assert_eq!(ask(&mut keep).await.unwrap().status(), 200);

    // No client certificate.
    let e = tls_get(addr, client_config(&root, None, &[]), "/").await;
    assert!(e.is_err(), "{:?}", e.map(|r| r.status));
    inbound
        .wait_stat(&format!("{scope}.fail_verify_no_cert"), 1)
        .await;

    // A certificate from another CA.
    let other = Pki::new();
    let foreign = other.issue(GATEWAY, |_| {});
    assert!(
        tls_get(addr, client_config(&root, Some(&foreign), &[]), "/")
            .await
            .is_err()
    );
    inbound
        .wait_stat(&format!("{scope}.fail_verify_error"), 1)
        .await;

    // The right CA, the wrong identity.
    let wrong = pki.issue("spiffe://cluster.local/ns/autolytiq/sa/email", |_| {});
    assert!(
        tls_get(addr, client_config(&root, Some(&wrong), &[]), "/")
            .await
            .is_err()
    );
    inbound
        .wait_stat(&format!("{scope}.fail_verify_san"), 1)
        .await;

    // Expired and not yet valid.
    let now = time_now();
    let expired = pki.issue(GATEWAY, |r| {
        r.not_before = now - Duration::from_secs(7200);
        r.not_after = now - Duration::from_secs(60);
    });
    assert!(
        tls_get(addr, client_config(&root, Some(&expired), &[]), "/")
            .await
            .is_err()
    );
    let future = pki.issue(GATEWAY, |r| {
        r.not_before = now + Duration::from_secs(3600);
        r.not_after = now + Duration::from_secs(7200);
    });
    assert!(
        tls_get(addr, client_config(&root, Some(&future), &[]), "/")
            .await
            .is_err()
    );
    inbound
        .wait_stat(&format!("{scope}.fail_verify_error"), 3)
        .await;

    // Plaintext HTTP to the STRICT port: no HTTP answer, the connection is closed.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: deal\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .expect("the connection is closed");
    assert!(
        !String::from_utf8_lossy(&buf).contains("HTTP/1.1"),
        "{buf:?}"
    );

    // A truncated ClientHello, then the client goes away.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&[
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ])
    .await
    .unwrap();
    drop(s);

    // As in Envoy, a verification failure is counted by its kind only; `connection_error`
    // counts the other TLS errors (the plaintext request), not a client that went away.
    inbound
        .wait_stat(&format!("{scope}.connection_error"), 1)
        .await;
    // Each refusal has its listener access-log line with the reason, in Envoy's (BoringSSL's)
    // words, spaces written as underscores.
    let refusals = 7; // no cert, foreign, wrong SAN, expired, future, plaintext, truncated
    let lines = wait_log(&inbound, "listener.log", refusals).await;
    let verify = "- TLS_error:|268435581:SSL_routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED:verify_cert_failed:_";
    let x509 = format!("{verify}X509_verify_cert:_certificate_verification_error_at_depth_0:_");
    let want = [
        "- TLS_error:|268435648:SSL_routines:OPENSSL_internal:PEER_DID_NOT_RETURN_A_CERTIFICATE:peer_did_not_provide_required_client_certificate:TLS_error_end".to_string(),
        // Both test CAs have the same name: the issuer is found by name, its signature fails.
        format!("{x509}certificate_signature_failure:TLS_error_end"),
        format!("{verify}SAN_matcher,_certificate_SANs_are_[spiffe://cluster.local/ns/autolytiq/sa/email,_localhost]:TLS_error_end"),
        format!("{x509}certificate_has_expired:TLS_error_end"),
        format!("{x509}certificate_is_not_yet_valid:TLS_error_end"),
    ];
    for (line, want) in lines.iter().zip(&want) {
        assert_eq!(line, want);
    }
    assert!(lines[5].starts_with("- TLS_error:"), "{}", lines[5]);
    assert!(lines[6].starts_with("- "), "{}", lines[6]);
    assert_eq!(inbound.stat(&format!("{scope}.handshake")).await, 1);
    assert_eq!(
        inbound.stat(&format!("{scope}.fail_verify_no_cert")).await,
        1
    );
    // `no_certificate` counts handshakes that succeeded without one: none on a STRICT port.
    assert_eq!(inbound.stat(&format!("{scope}.no_certificate")).await, 0);
    // The good connection was never disturbed, and new good clients still get through.
    assert_eq!(ask(&mut keep).await.unwrap().status(), 200);
    let r = tls_get(addr, client_config(&root, Some(&good), &[]), "/")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    // Nothing leaked: only the kept connection and nothing else is active after the last one.
    drop(keep);
    inbound
        .wait_stat(
            &format!("listener.{}.downstream_cx_active", stat_address(addr)),
            0,
        )
        .await;
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

/// PERMISSIVE: one port, mTLS and plaintext side by side (tls_inspector + transport_protocol).
#[tokio::test(flavor = "multi_thread")]
async fn permissive_port_serves_both() {
    let pki = Pki::new();
    let deal = pki.write("deal", DEAL);
    let app = upstream("deal-app").await;
    let xfcc = "          forward_client_cert_details: APPEND_FORWARD\n          set_current_client_cert_details: {subject: true, uri: true, dns: true}\n";
    let base = http_listener("inbound", &(access_log("inbound.log") + xfcc), ROUTE_ALL);
    // Chain 1: TLS (matched on transport_protocol), chain 2: plaintext.
    let tls_chain = base.replacen(
        "    filter_chains:\n    - filters:",
        "    listener_filters:\n    - name: envoy.filters.listener.tls_inspector\n      typed_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector}\n    filter_chains:\n    - filter_chain_match: {transport_protocol: tls}\n      filters:",
        1,
    ) + &downstream_tls(&deal, true, Some(GATEWAY));
    let plain_chain = {
        let start = base.find("    - filters:").unwrap();
        base[start..].replacen(
            "    - filters:",
            "    - filter_chain_match: {transport_protocol: raw_buffer}\n      filters:",
            1,
        )
    };
    let remora = Remora::start(&bootstrap(
        &(tls_chain + &plain_chain),
        &cluster("app", &[app.addr], ""),
    ))
    .await;
    let addr = remora.addr("inbound");
    let gw = pki.issue(GATEWAY, |_| {});
    let cfg = client_config(pki.ca.root_pem(), Some(&gw), &["http/1.1"]);
    let r = tls_get(addr, cfg.clone(), "/").await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["headers"]["x-forwarded-proto"], "https");
    // APPEND_FORWARD on an mTLS connection: this hop's element is appended.
    let hash = remora_certs::info::CertDetails::parse(
        &remora_certs::pem::certificates(gw.cert_chain_pem.as_bytes()).unwrap()[0],
    )
    .unwrap()
    .sha256;
    let r = tls_get_with(
        addr,
        cfg.clone(),
        &[("x-forwarded-client-cert", "By=spiffe://a/b;Hash=00")],
    )
    .await
    .unwrap();
    assert_eq!(
        r.json()["headers"]["x-forwarded-client-cert"],
        format!(
            "By=spiffe://a/b;Hash=00,By={DEAL};Hash={hash};Subject=\"CN=localhost\";URI={GATEWAY};DNS=localhost"
        )
    );
    // Plaintext: a client's XFCC is removed.
    let r = get_with(
        addr,
        "deal",
        "/",
        &[("x-forwarded-client-cert", "By=spiffe://forged")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["headers"]["x-forwarded-proto"], "http");
    assert!(
        r.json()["headers"].get("x-forwarded-client-cert").is_none(),
        "{}",
        r.text()
    );
    let lines = wait_log(&remora, "inbound.log", 3).await;
    assert!(
        lines[0].starts_with(&format!("200 peer={GATEWAY} local={DEAL} TLSv1.3 TLS_")),
        "{}",
        lines[0]
    );
    assert_eq!(lines[2], "200 peer=- local=- - - sni=- proto=HTTP/1.1");

    // Session resumption (TLS 1.3 tickets, the same client config): resumed connections still
    // know their peer.
    for _ in 0..3 {
        assert_eq!(tls_get(addr, cfg.clone(), "/").await.unwrap().status, 200);
    }
    let scope = format!("listener.{}.ssl", stat_address(addr));
    assert!(remora.stat(&format!("{scope}.session_reused")).await >= 1);
    let lines = wait_log(&remora, "inbound.log", 6).await;
    assert!(
        lines[5].starts_with(&format!("200 peer={GATEWAY} ")),
        "{}",
        lines[5]
    );
    // The TLS inspector's stats: 5 TLS connections (SNI and ALPN sent), 1 plaintext.
    for (stat, want) in [
        ("tls_inspector.tls_found", 5),
        ("tls_inspector.sni_found", 5),
        ("tls_inspector.alpn_found", 5),
        ("tls_inspector.tls_not_found", 1),
    ] {
        assert_eq!(remora.stat(stat).await, want, "{stat}");
    }
}

/// A rotated key/cert pair is used by new handshakes within 2 s; open connections keep working;
/// a mismatched pair is rejected and the previous one stays. The listener's files are watched
/// once it starts, whether it came from the bootstrap or from LDS.
async fn certificate_files_rotate_without_restart(source: Source) {
    let pki = Pki::new();
    let deal = pki.write("deal", DEAL);
    let app = upstream("deal-app").await;
    let listener = http_listener("inbound", "", ROUTE_ALL) + &downstream_tls(&deal, false, None);
    let remora = source
        .start(&bootstrap(&listener, &cluster("app", &[app.addr], "")))
        .await;
    let addr = remora.addr("inbound");
    let cfg = client_config(pki.ca.root_pem(), None, &["http/1.1"]);
    let server_id = |s: &tokio_rustls::client::TlsStream<TcpStream>| {
        let der = s.get_ref().1.peer_certificates().unwrap()[0].clone();
        remora_certs::info::CertDetails::parse(&der)
            .unwrap()
            .uri_sans()
            .next()
            .unwrap()
            .to_string()
    };
    let open = tls_connect(addr, cfg.clone()).await.unwrap();
    assert_eq!(server_id(&open), DEAL);
    let (mut keep, conn) = hyper::client::conn::http1::handshake(TokioIo::new(open))
        .await
        .unwrap();
    tokio::spawn(conn);

    let rotated = "spiffe://cluster.local/ns/autolytiq/sa/deal-v2";
    pki.issue(rotated, |_| {})
        .write_istio_layout(&deal)
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        let s = tls_connect(addr, cfg.clone()).await.unwrap();
        if server_id(&s) == rotated {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rotation not picked up within 2 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    remora
        .wait_stat("server.certificate_rotation_success", 1)
        .await;
    let req = http::Request::builder()
        .uri("/")
        .header("host", "deal")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(keep.send_request(req).await.unwrap().status(), 200);

    // Half a rotation: a new key without its certificate. Rejected, the v2 pair stays.
    let v3 = pki.issue("spiffe://cluster.local/ns/autolytiq/sa/deal-v3", |_| {});
    std::fs::write(deal.join("key.pem"), &v3.key_pem).unwrap();
    remora
        .wait_stat("server.certificate_rotation_rejected", 1)
        .await;
    let s = tls_connect(addr, cfg.clone()).await.unwrap();
    assert_eq!(server_id(&s), rotated);
    assert!(
        remora
            .stderr()
            .contains("rotated certificate files rejected, keeping the previous ones")
    );
}

/// A cluster's client certificate files are watched once the cluster starts (from the
/// bootstrap or from CDS): a rotation is picked up and requests keep flowing.
async fn cluster_certificate_files_rotate(source: Source) {
    let pki = Pki::new();
    let gw = pki.write("gw", GATEWAY);
    let deal = pki.write("deal", DEAL);
    let app = upstream("deal-app").await;
    let inbound = inbound_sidecar(&deal, app.addr, None).await;
    let outbound = source
        .start(&bootstrap(
            &http_listener("outbound", "", ROUTE_ALL.replace("app", "deal").as_str()),
            &cluster(
                "deal",
                &[inbound.addr("inbound")],
                &upstream_tls(&gw, DEAL, "http/1.1"),
            ),
        ))
        .await;
    let r = get(outbound.addr("outbound"), "deal", "/").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        outbound.stat("server.certificate_rotation_success").await,
        0
    );

    pki.issue(
        "spiffe://cluster.local/ns/autolytiq/sa/api-gateway-v2",
        |_| {},
    )
    .write_istio_layout(&gw)
    .unwrap();
    outbound
        .wait_stat("server.certificate_rotation_success", 1)
        .await;
    let r = get(outbound.addr("outbound"), "deal", "/").await;
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Configuration errors name the field: a key that does not match its certificate, a missing
/// file, an unsupported cipher suite.
#[tokio::test]
async fn bad_tls_configuration_is_refused_by_path() {
    let pki = Pki::new();
    let deal = pki.write("deal", DEAL);
    let other = pki.write("other", GATEWAY);
    std::fs::copy(other.join("key.pem"), deal.join("key.pem")).unwrap();
    let listener = http_listener("inbound", "", ROUTE_ALL) + &downstream_tls(&deal, false, None);
    let cfg = bootstrap(
        &listener,
        &cluster("app", &["127.0.0.1:1".parse().unwrap()], ""),
    );
    let err = Remora::try_start(&cfg, &[]).await.err().expect("refused");
    assert!(
        err.contains("static_resources.listeners[0].filter_chains[0].transport_socket.typed_config.common_tls_context.tls_certificates[0]: the private key does not match the certificate"),
        "{err}"
    );
    let ciphers = http_listener("inbound", "", ROUTE_ALL)
        + &downstream_tls(&other, false, None).replace(
            "            alpn_protocols: [h2, http/1.1]\n",
            "            alpn_protocols: [h2, http/1.1]\n            tls_params: {cipher_suites: [ECDHE-ECDSA-AES128-GCM-SHA256, AES128-SHA]}\n",
        );
    let err = Remora::try_start(
        &bootstrap(
            &ciphers,
            &cluster("app", &["127.0.0.1:1".parse().unwrap()], ""),
        ),
        &[],
    )
    .await
    .err()
    .expect("refused");
    assert!(
        err.contains("common_tls_context.tls_params.cipher_suites[1]: cipher suite 'AES128-SHA' is not supported"),
        "{err}"
    );
    let missing = http_listener("inbound", "", ROUTE_ALL)
        + &downstream_tls(Path::new("/nonexistent"), false, None);
    let err = Remora::try_start(
        &bootstrap(
            &missing,
            &cluster("app", &["127.0.0.1:1".parse().unwrap()], ""),
        ),
        &[],
    )
    .await
    .err()
    .expect("refused");
    assert!(
        err.contains("tls_certificates[0]: cannot read /nonexistent/cert-chain.pem"),
        "{err}"
    );
}

/// TLS to a plaintext-only HTTP port fails cleanly (a codec error, no crash).
#[tokio::test(flavor = "multi_thread")]
async fn tls_to_a_plaintext_port_is_a_codec_error() {
    let pki = Pki::new();
    let app = upstream("app").await;
    let remora = Remora::start(&bootstrap(
        &http_listener("plain", "", ROUTE_ALL),
        &cluster("app", &[app.addr], ""),
    ))
    .await;
    let addr = remora.addr("plain");
    let e = tls_get(addr, client_config(pki.ca.root_pem(), None, &[]), "/").await;
    assert!(e.is_err());
    assert_eq!(get(addr, "x", "/").await.status, 200);
}

/// Real clients against the inbound side: curl with a client certificate, openssl s_client.
#[tokio::test(flavor = "multi_thread")]
async fn curl_and_openssl_interop() {
    if !have_tool("curl") || !have_tool("openssl") {
        return;
    }
    let pki = Pki::new();
    let deal = pki.write("deal", DEAL);
    let gw = pki.write("gw", GATEWAY);
    let app = upstream("deal-app").await;
    let inbound = inbound_sidecar(&deal, app.addr, Some(GATEWAY)).await;
    let addr = inbound.addr("inbound");
    let url = format!("https://localhost:{}/curl", addr.port());
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--http1.1",
            "--cert",
            &p(&gw, "cert-chain.pem"),
            "--key",
            &p(&gw, "key.pem"),
        ])
        .args([
            "--cacert",
            &p(&gw, "root-cert.pem"),
            "--resolve",
            &format!("localhost:{}:127.0.0.1", addr.port()),
        ])
        .args([
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{ssl_verify_result}",
            &url,
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200 0",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Without a client certificate curl is refused.
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--cacert",
            &p(&gw, "root-cert.pem"),
            "--resolve",
            &format!("localhost:{}:127.0.0.1", addr.port()),
            &url,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());

    let mut child = std::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            "localhost",
            "-quiet",
        ])
        .args([
            "-cert",
            &p(&gw, "cert-chain.pem"),
            "-key",
            &p(&gw, "key.pem"),
            "-CAfile",
            &p(&gw, "root-cert.pem"),
        ])
        .args(["-verify_return_error", "-alpn", "http/1.1"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(b"GET /openssl HTTP/1.1\r\nhost: deal\r\nconnection: close\r\n\r\n")
            .unwrap();
        // Keep stdin open until the response is read (s_client exits on EOF otherwise).
        let out = tokio::task::spawn_blocking(move || {
            let o = child.wait_with_output().unwrap();
            drop(stdin);
            o
        });
        let out = tokio::time::timeout(Duration::from_secs(10), out)
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.starts_with("HTTP/1.1 200 OK"),
            "{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn example(name: &str, dir: &Path) -> String {
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("tests/data/envoy-configs/examples")
        .join(name);
    std::fs::read_to_string(file)
        .unwrap()
        .replace(
            "filename: certs/",
            &format!("filename: {}/certs/", dir.display()),
        )
        .replace("address: 0.0.0.0", "address: 127.0.0.1")
}

/// Envoy's double-proxy example for real: a client's plaintext TCP enters the frontend, which
/// originates mTLS (client certificate, DNS SAN check) to the backend, which requires and checks
/// the client certificate and forwards to the "database" (an echo server).
#[tokio::test(flavor = "multi_thread")]
async fn double_proxy_example_runs() {
    let dir = TempDir::new("double-proxy");
    crate::support::write_example_certs(&dir.0);
    let (db, _task) = tcp_echo().await;
    let yaml = example("double-proxy_envoy-backend.yaml", &dir.0);
    let (listener_part, cluster_part) = yaml.split_at(yaml.find("  clusters:").unwrap());
    let backend_yaml = listener_part.replace("port_value: 5432", "port_value: 0")
        + &cluster_part
            .replace("address: postgres", &format!("address: {}", db.ip()))
            .replace("port_value: 5432", &format!("port_value: {}", db.port()));
    let backend = Remora::start(&backend_yaml).await;
    let b = backend.addr("postgres_listener");
    let yaml = example("double-proxy_envoy-frontend.yaml", &dir.0);
    let (listener_part, cluster_part) = yaml.split_at(yaml.find("  clusters:").unwrap());
    let frontend_yaml = listener_part.replace("port_value: 5432", "port_value: 0")
        + &cluster_part
            .replace(
                "address: proxy-postgres-backend.example.com",
                &format!("address: {}", b.ip()),
            )
            .replace("port_value: 5432", &format!("port_value: {}", b.port()));
    let frontend = Remora::start(&frontend_yaml).await;
    let mut s = TcpStream::connect(frontend.addr("postgres_listener"))
        .await
        .unwrap();
    s.write_all(b"SELECT 1;").await.unwrap();
    let mut buf = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"SELECT 1;");
    assert_eq!(
        frontend
            .stat("cluster.postgres_cluster.ssl.handshake")
            .await,
        1
    );
    let scope = format!("listener.{}.ssl", stat_address(b));
    assert_eq!(backend.stat(&format!("{scope}.handshake")).await, 1);
    assert_eq!(backend.stat(&format!("{scope}.no_certificate")).await, 0);
}

/// Envoy's TLS SNI example for real: each server name gets its own certificate and route.
#[tokio::test(flavor = "multi_thread")]
async fn tls_sni_example_runs() {
    let dir = TempDir::new("tls-sni");
    crate::support::write_example_certs(&dir.0);
    let one = upstream("service-http0").await;
    let two = upstream("service-http1").await;
    let (three, _task) = tcp_echo().await;
    let yaml = example("tls-sni_envoy.yaml", &dir.0)
        .replacen("  - address:", "  - name: sni\n    address:", 1)
        .replace("port_value: 10000", "port_value: 0")
        .replace(
            "address: service-http0\n                port_value: 80",
            &format!(
                "address: 127.0.0.1\n                port_value: {}",
                one.addr.port()
            ),
        )
        .replace(
            "address: service-http1\n                port_value: 80",
            &format!(
                "address: 127.0.0.1\n                port_value: {}",
                two.addr.port()
            ),
        )
        .replace(
            "address: service-https\n                port_value: 443",
            &format!(
                "address: 127.0.0.1\n                port_value: {}",
                three.port()
            ),
        );
    let r = Remora::start(&yaml).await;
    let addr = r.addr("sni");
    let root = std::fs::read_to_string(dir.0.join("certs/cacert.pem")).unwrap();
    let cfg = client_config(&root, None, &["http/1.1"]);
    for (sni, app) in [
        ("domain1.example.com", "service-http0"),
        ("domain2.example.com", "service-http1"),
    ] {
        let tls = tls_connect_sni(addr, cfg.clone(), sni).await.unwrap();
        let der = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
        let served = remora_certs::info::CertDetails::parse(&der).unwrap();
        assert_eq!(served.dns_sans().collect::<Vec<_>>(), [sni]);
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        let resp = send
            .send_request(
                http::Request::builder()
                    .uri("/")
                    .header("host", sni)
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-upstream"], app);
    }
    // domain3 is passed through untouched (tcp_proxy on the raw ClientHello): the echo server
    // returns our own ClientHello, which is not a ServerHello, so the handshake fails — but the
    // bytes prove the passthrough.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let hello = crate::tcp::client_hello("domain3.example.com");
    s.write_all(&hello).await.unwrap();
    let mut back = vec![0u8; hello.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, hello);
}

/// An HTTPS service (remora terminating TLS with the examples' `certs/servercert.pem`, whose DNS
/// SAN is proxy-postgres-backend.example.com) in front of `app`.
async fn https_service(dir: &Path, app: SocketAddr) -> Remora {
    let listener = http_listener("https", "", ROUTE_ALL)
        + &format!(
            "      transport_socket:\n        name: envoy.transport_sockets.tls\n        typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext\n          common_tls_context:\n            tls_certificates:\n            - certificate_chain: {{filename: {d}/certs/servercert.pem}}\n              private_key: {{filename: {d}/certs/serverkey.pem}}\n",
            d = dir.display()
        );
    Remora::start(&bootstrap(&listener, &cluster("app", &[app], ""))).await
}

fn no_verify_client() -> Arc<rustls::ClientConfig> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(remora_certs::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(remora_certs::verify::ServerVerifier {
            validation: Default::default(),
        }))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

/// Envoy's https → https example: the inline (X.509 v1, RSA) certificate is served, and the
/// upstream leg is pinned to TLS 1.3.
#[tokio::test(flavor = "multi_thread")]
async fn https_to_https_example_runs() {
    let dir = TempDir::new("https-https");
    crate::support::write_example_certs(&dir.0);
    let app = upstream("https-app").await;
    let service = https_service(&dir.0, app.addr).await;
    let s = service.addr("https");
    let yaml = example("tls_envoy-https-https.yaml", &dir.0)
        .replacen("  - address:", "  - name: front\n    address:", 1)
        .replace("port_value: 10000", "port_value: 0")
        .replace(
            "address: service-https\n                port_value: 443",
            &format!(
                "address: 127.0.0.1\n                port_value: {}",
                s.port()
            ),
        );
    let r = Remora::start(&yaml).await;
    let resp = tls_get(r.addr("front"), no_verify_client(), "/")
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-upstream"), Some("https-app"));
    assert_eq!(
        r.stat("cluster.service-https.ssl.versions.TLSv1.3").await,
        1
    );
}

/// Envoy's TLS client-auth quick-start: the listener demands a client certificate whose SAN
/// matches (`match_subject_alt_names`), and the upstream leg presents one and checks the
/// server's SAN.
#[tokio::test(flavor = "multi_thread")]
async fn tls_client_auth_example_runs() {
    let dir = TempDir::new("client-auth");
    crate::support::write_example_certs(&dir.0);
    let app = upstream("envoyproxy-io").await;
    let service = https_service(&dir.0, app.addr).await;
    let s = service.addr("https");
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join(
            "tests/data/envoy-configs/envoy-repo/docs_quick-start_envoy-demo-tls-client-auth.yaml",
        );
    let yaml = crate::support::with_typed_router(&std::fs::read_to_string(file).unwrap())
        .replace(
            "filename: certs/",
            &format!("filename: {}/certs/", dir.0.display()),
        )
        .replace("address: 0.0.0.0", "address: 127.0.0.1")
        .replace("port_value: 10000", "port_value: 0")
        .replace("type: LOGICAL_DNS", "type: STATIC")
        .replace(
            "address: www.envoyproxy.io\n                port_value: 443",
            &format!(
                "address: 127.0.0.1\n                port_value: {}",
                s.port()
            ),
        );
    let r = Remora::start(&yaml).await;
    let addr = r.addr("listener_0");
    let read = |f: &str| std::fs::read_to_string(dir.0.join("certs").join(f)).unwrap();
    let client = Issued {
        cert_chain_pem: read("clientcert.pem"),
        key_pem: read("clientkey.pem"),
        root_pem: read("cacert.pem"),
    };
    let resp = tls_get(
        addr,
        client_config(&client.root_pem, Some(&client), &["http/1.1"]),
        "/",
    )
    .await
    .unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-upstream"), Some("envoyproxy-io"));
    assert_eq!(resp.json()["headers"]["host"], "www.envoyproxy.io");
    // The server's certificate (SAN proxy-postgres-backend) is not a valid client identity.
    let server = Issued {
        cert_chain_pem: read("servercert.pem"),
        key_pem: read("serverkey.pem"),
        root_pem: read("cacert.pem"),
    };
    assert!(
        tls_get(
            addr,
            client_config(&server.root_pem, Some(&server), &[]),
            "/"
        )
        .await
        .is_err()
    );
    assert!(
        tls_get(addr, client_config(&client.root_pem, None, &[]), "/")
            .await
            .is_err()
    );
}

/// Static secrets (`static_resources.secrets` named by `*_sds_secret_config` without an
/// `sds_config`), `/certs` in Envoy's shape, and the secrets in `/config_dump` with inline
/// private keys redacted.
async fn static_secrets_certs_endpoint_and_redacted_dump(source: Source) {
    let pki = Pki::new();
    let deal = pki.write("deal", DEAL);
    let app = upstream("deal-app").await;
    let issued = pki.issue(DEAL, |_| {});
    let indent = |pem: &str| {
        pem.lines()
            .map(|l| format!("            {l}\n"))
            .collect::<String>()
    };
    let listener = http_listener("inbound", "", ROUTE_ALL)
        + "      transport_socket:\n        name: envoy.transport_sockets.tls\n        typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext\n          require_client_certificate: true\n          common_tls_context:\n            tls_certificate_sds_secret_configs: [{name: default}]\n            combined_validation_context:\n              default_validation_context:\n                match_typed_subject_alt_names: [{san_type: URI, matcher: {prefix: \"spiffe://cluster.local/ns/autolytiq/\"}}]\n              validation_context_sds_secret_config: {name: ROOTCA}\n";
    let secrets = format!(
        "  secrets:\n  - name: default\n    tls_certificate:\n      certificate_chain:\n        inline_string: |\n{}      private_key:\n        inline_string: |\n{}  - name: ROOTCA\n    validation_context:\n      trusted_ca: {{filename: {}}}\n",
        indent(&issued.cert_chain_pem).replace("            ", "          "),
        indent(&issued.key_pem).replace("            ", "          "),
        p(&deal, "root-cert.pem")
    );
    let yaml = bootstrap(&listener, &cluster("app", &[app.addr], "")) + &secrets;
    let r = source.start(&yaml).await;
    let addr = r.addr("inbound");
    let root = pki.ca.root_pem().to_string();
    let gw = pki.issue(GATEWAY, |_| {});
    assert_eq!(
        tls_get(addr, client_config(&root, Some(&gw), &[]), "/")
            .await
            .unwrap()
            .status,
        200
    );
    // The merged validation context: the default's SAN prefix applies.
    let outsider = pki.issue("spiffe://cluster.local/ns/other/sa/x", |_| {});
    assert!(
        tls_get(addr, client_config(&root, Some(&outsider), &[]), "/")
            .await
            .is_err()
    );

    let (code, body) = r.admin_get("/certs").await.unwrap();
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let c = &v["certificates"][0];
    assert_eq!(c["cert_chain"][0]["path"], "<inline>");
    // Envoy lists DNS SANs first, then URIs.
    assert_eq!(
        c["cert_chain"][0]["subject_alt_names"][0]["dns"],
        "localhost"
    );
    assert_eq!(c["cert_chain"][0]["subject_alt_names"][1]["uri"], DEAL);
    assert_eq!(c["cert_chain"][0]["days_until_expiration"], "0");
    assert!(
        c["cert_chain"][0]["expiration_time"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    assert_eq!(c["ca_cert"][0]["path"], p(&deal, "root-cert.pem"));
    assert_eq!(c["ca_cert"][0]["serial_number"].as_str().unwrap().len(), 32);

    let (_, dump) = r
        .admin_get("/config_dump?resource=static_secrets")
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&dump).unwrap();
    let names: Vec<&str> = v["configs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["default", "ROOTCA"]);
    assert_eq!(
        v["configs"][0]["secret"]["tls_certificate"]["private_key"]["inline_string"],
        "[redacted]"
    );
    let (_, full) = r.admin_get("/config_dump").await.unwrap();
    assert!(
        !full.contains("PRIVATE KEY"),
        "a private key leaked into /config_dump"
    );
    assert!(full.contains("BEGIN CERTIFICATE"));
}

/// `auto_config`: the upstream protocol is what ALPN negotiates — HTTP/2 with a server offering
/// h2, HTTP/1.1 with one offering only http/1.1 — and plaintext auto_config is refused.
#[tokio::test(flavor = "multi_thread")]
async fn auto_config_follows_alpn() {
    let pki = Pki::new();
    let gw = pki.write("gw", GATEWAY);
    let deal = pki.write("deal", DEAL);
    let app = upstream("deal-app").await;
    let h2_server = inbound_sidecar(&deal, app.addr, Some(GATEWAY)).await;
    let h1_listener = http_listener("inbound", &access_log("inbound.log"), ROUTE_ALL)
        + &downstream_tls(&deal, true, Some(GATEWAY)).replace(
            "alpn_protocols: [h2, http/1.1]",
            "alpn_protocols: [http/1.1]",
        );
    let h1_server = Remora::start(&bootstrap(&h1_listener, &cluster("app", &[app.addr], ""))).await;
    let auto = "    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        auto_config: {}\n";
    // No ALPN in the contexts: auto_config offers h2 and http/1.1 itself.
    let tls = |certs: &Path| {
        upstream_tls(certs, DEAL, "x").replace("          alpn_protocols: [x]\n", "")
    };
    let clusters = cluster("to_h2", &[h2_server.addr("inbound")], &(tls(&gw) + auto))
        + &cluster("to_h1", &[h1_server.addr("inbound")], &(tls(&gw) + auto));
    let listeners = http_listener("a", "", ROUTE_ALL.replace("app", "to_h2").as_str())
        + &http_listener("b", "", ROUTE_ALL.replace("app", "to_h1").as_str());
    // One worker: one pool, so the reuse below is deterministic.
    let client =
        Remora::start_with(&bootstrap(&listeners, &clusters), &["--concurrency", "1"]).await;
    for _ in 0..2 {
        assert_eq!(get(client.addr("a"), "deal", "/").await.status, 200);
        assert_eq!(get(client.addr("b"), "deal", "/").await.status, 200);
    }
    for (server, proto) in [(&h2_server, "HTTP/2"), (&h1_server, "HTTP/1.1")] {
        let lines = wait_log(server, "inbound.log", 2).await;
        for l in &lines {
            assert!(l.ends_with(&format!("proto={proto}")), "{l}");
        }
    }
    // One connection each: the one that learnt the protocol was pooled and reused.
    assert_eq!(client.stat("cluster.to_h2.upstream_cx_total").await, 1);
    assert_eq!(
        client.stat("cluster.to_h2.upstream_cx_http2_total").await,
        1
    );
    assert_eq!(client.stat("cluster.to_h1.upstream_cx_total").await, 1);
    assert_eq!(
        client.stat("cluster.to_h1.upstream_cx_http1_total").await,
        1
    );

    let plain = bootstrap(
        &http_listener("a", "", ROUTE_ALL),
        &cluster("app", &[app.addr], auto),
    );
    let err = Remora::try_start(&plain, &[]).await.err().expect("refused");
    assert!(
        err.contains("static_resources.clusters[0].typed_extension_protocol_options[\"envoy.extensions.upstreams.http.v3.HttpProtocolOptions\"].auto_config: needs a TLS transport socket"),
        "{err}"
    );
}

/// `verify_certificate_hash`: only the pinned client certificate gets in; another one from the
/// same CA with the same identity is refused with `ssl.fail_verify_cert_hash`.
#[tokio::test(flavor = "multi_thread")]
async fn pinned_client_certificate() {
    let pki = Pki::new();
    let deal = pki.write("deal", DEAL);
    let app = upstream("deal-app").await;
    let pinned = pki.issue(GATEWAY, |_| {});
    let der = remora_certs::pem::certificates(pinned.cert_chain_pem.as_bytes()).unwrap();
    let hash = remora_certs::info::CertDetails::parse(&der[0])
        .unwrap()
        .sha256;
    let listener = http_listener("inbound", "", ROUTE_ALL)
        + &downstream_tls(&deal, true, None)
        + &format!("              verify_certificate_hash: [\"{hash}\"]\n");
    let r = Remora::start(&bootstrap(&listener, &cluster("app", &[app.addr], ""))).await;
    let addr = r.addr("inbound");
    let root = pki.ca.root_pem().to_string();
    let ok = tls_get(addr, client_config(&root, Some(&pinned), &[]), "/").await;
    assert_eq!(ok.unwrap().status, 200);
    let other = pki.issue(GATEWAY, |_| {});
    assert!(
        tls_get(addr, client_config(&root, Some(&other), &[]), "/")
            .await
            .is_err()
    );
    r.wait_stat(
        &format!("listener.{}.ssl.fail_verify_cert_hash", stat_address(addr)),
        1,
    )
    .await;
}

/// istiod's `istio.alpn` filter: a sidecar's outbound HCM offers `istio-http/1.1` (etc.) on the
/// mTLS connection, which is what the peer sidecar's inbound filter chain matches on
/// (`application_protocols`). Without the filter (or for a cluster istiod marks
/// `alpn_override: "false"`) the cluster's own ALPN is offered, no chain matches and the
/// request fails.
#[tokio::test(flavor = "multi_thread")]
async fn istio_alpn_filter_selects_the_peers_http_chain() {
    let pki = Pki::new();
    let app = upstream("deal-app").await;
    let server = pki.write("deal", DEAL);
    let client = pki.write("gw", GATEWAY);
    let inbound_port = closed_port().port();
    // The peer's inbound listener: TLS inspector, and an mTLS chain only for Istio's HTTP ALPNs.
    let inbound = http_listener("inbound", "", ROUTE_ALL)
        .replace(
            "address: 127.0.0.1, port_value: 0",
            &format!("address: 127.0.0.1, port_value: {inbound_port}"),
        )
        .replacen(
            "    filter_chains:\n    - filters:",
            "    listener_filters:\n    - name: envoy.filters.listener.tls_inspector\n      typed_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector}\n    filter_chains:\n    - filter_chain_match: {application_protocols: [istio-http/1.0, istio-http/1.1, istio-h2]}\n      filters:",
            1,
        )
        + &downstream_tls(&server, true, Some(GATEWAY));
    let alpn_filter = r#"          http_filters:
          - name: istio.alpn
            typed_config:
              "@type": type.googleapis.com/istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig
              alpn_override:
              - {upstream_protocol: HTTP10, alpn_override: [istio-http/1.0, istio, http/1.0]}
              - {upstream_protocol: HTTP11, alpn_override: [istio-http/1.1, istio, http/1.1]}
              - {upstream_protocol: HTTP2, alpn_override: [istio-h2, istio, h2]}
"#;
    let to = |cluster: &str| {
        format!(
            "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {{prefix: /}}\n                route: {{cluster: {cluster}}}\n"
        )
    };
    let outbound = http_listener("outbound", "", &to("mesh"))
        .replace("          http_filters:\n", alpn_filter);
    let outbound_plain = http_listener("outbound_plain", "", &to("mesh"));
    let outbound_marked = http_listener("outbound_marked", "", &to("mesh_simple"))
        .replace("          http_filters:\n", alpn_filter);
    let target = [SocketAddr::from(([127, 0, 0, 1], inbound_port))];
    let mesh_tls = upstream_tls(&client, DEAL, "istio-peer-exchange, istio");
    let clusters = cluster("app", &[app.addr], "")
        + &cluster("mesh", &target, &mesh_tls)
        + &cluster(
            "mesh_simple",
            &target,
            &format!(
                "    metadata: {{filter_metadata: {{istio: {{alpn_override: \"false\"}}}}}}\n{mesh_tls}"
            ),
        );
    // One worker: one pool, so the reuse below is deterministic.
    let r = Remora::start_with(
        &bootstrap(
            &(inbound + &outbound + &outbound_plain + &outbound_marked),
            &clusters,
        ),
        &["--concurrency", "1"],
    )
    .await;
    let resp = get(r.addr("outbound"), "deal", "/").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("x-upstream"), Some("deal-app"));
    // The cluster's own ALPN (`istio-peer-exchange, istio`) matches no inbound chain.
    assert_eq!(get(r.addr("outbound_plain"), "deal", "/").await.status, 503);
    assert_eq!(
        get(r.addr("outbound_marked"), "deal", "/").await.status,
        503
    );
    let stats = r.stats().await;
    let inbound_stat = format!("listener.127.0.0.1_{inbound_port}.no_filter_chain_match");
    assert_eq!(stats[&inbound_stat], 2, "{stats:?}");
    // The overridden connection is pooled under its own ALPN and reused.
    assert_eq!(get(r.addr("outbound"), "deal", "/").await.status, 200);
    let stats = r.stats().await;
    assert_eq!(stats["cluster.mesh.ssl.handshake"], 1);
    assert_eq!(stats["cluster.mesh.upstream_rq_200"], 2);
}

/// Istio's TCP metadata exchange between two sidecars over mTLS (`istio-peer-exchange` ALPN):
/// the outbound cluster's upstream filter and the inbound chain's network filter each send their
/// frame and take the peer's off the stream, so the bytes between client and server are exactly
/// the application's.
#[tokio::test(flavor = "multi_thread")]
async fn istio_tcp_metadata_exchange_between_sidecars() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = Pki::new();
    let server = pki.write("deal", DEAL);
    let client = pki.write("gw", GATEWAY);
    let (echo, _t) = tcp_echo().await;
    let inbound_port = closed_port().port();
    let mx = |indent: &str| {
        format!(
            "{indent}- name: istio.metadata_exchange\n{indent}  typed_config:\n{indent}    \"@type\": type.googleapis.com/udpa.type.v1.TypedStruct\n{indent}    type_url: type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange\n{indent}    value: {{protocol: istio-peer-exchange, enable_discovery: true}}\n"
        )
    };
    let tcp = |name: &str, cluster: &str| {
        format!(
            "      - name: envoy.filters.network.tcp_proxy\n        typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy\n          stat_prefix: {name}\n          cluster: {cluster}\n"
        )
    };
    // The peer's inbound: TCP over mTLS, chosen by Istio's ALPN, metadata exchange first.
    let inbound = format!(
        "  - name: inbound\n    address: {{socket_address: {{address: 127.0.0.1, port_value: {inbound_port}}}}}\n    listener_filters:\n    - name: envoy.filters.listener.tls_inspector\n      typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector}}\n    filter_chains:\n    - filter_chain_match: {{application_protocols: [istio-peer-exchange, istio]}}\n      filters:\n{}{}",
        mx("      "),
        tcp("inbound", "app")
    ) + &downstream_tls(&server, true, Some(GATEWAY)).replace(
        "alpn_protocols: [h2, http/1.1]",
        "alpn_protocols: [istio-peer-exchange, h2, http/1.1]",
    );
    let outbound = format!(
        "  - name: outbound\n    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}\n    filter_chains:\n    - filters:\n{}",
        tcp("outbound", "mesh")
    );
    let clusters = cluster("app", &[echo], "")
        + &cluster(
            "mesh",
            &[SocketAddr::from(([127, 0, 0, 1], inbound_port))],
            &format!(
                "    filters:\n{}{}",
                mx("    "),
                upstream_tls(&client, DEAL, "istio-peer-exchange, istio")
            ),
        );
    let r = Remora::start(&format!(
        "node: {{id: \"sidecar~10.0.0.9~gw.autolytiq~autolytiq.svc.cluster.local\", metadata: {{NAMESPACE: autolytiq, WORKLOAD_NAME: gw}}}}\n{}",
        bootstrap(&(inbound + &outbound), &clusters)
    ))
    .await;
    let mut s = tokio::net::TcpStream::connect(r.addr("outbound"))
        .await
        .unwrap();
    s.write_all(b"hello through the mesh").await.unwrap();
    let mut buf = vec![0u8; 64];
    let mut got = Vec::new();
    while got.len() < 22 {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("echo within 5 s")
            .unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(
        got, b"hello through the mesh",
        "no frame leaks into the application"
    );
    drop(s);
    let stats = r.stats().await;
    // One exchange on each side of the hop (both count into the same process's stats).
    assert_eq!(
        stats["metadata_exchange.alpn_protocol_found"], 2,
        "{stats:?}"
    );
    assert_eq!(stats["metadata_exchange.metadata_added"], 2);
    assert_eq!(stats["metadata_exchange.initial_header_not_found"], 0);
    // What the peer's frame says is for telemetry (later): listed as such.
    assert_eq!(
        stats["server.noop_extension.metadata_exchange_discovery"],
        1
    );
}

crate::across_sources!(
    static_secrets_certs_endpoint_and_redacted_dump,
    certificate_files_rotate_without_restart,
    cluster_certificate_files_rotate,
);
