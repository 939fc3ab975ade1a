//! The `mtls` and `mtls-handshake` scenarios: the two-sidecar mTLS chain (outbound proxy:
//! plaintext in, mTLS out; inbound proxy: mTLS in, STRICT, plaintext to the upstream) for remora,
//! nginx and HAProxy, and the inbound side alone for handshake rates. Certificates come from
//! remora's development CA: ECDSA P-256, SPIFFE URI SANs as in Istio, plus a DNS name for peers
//! that can only check DNS names (nginx `proxy_ssl_name`, HAProxy `verifyhost`).

use crate::systems::{
    Kind, Running, Setup, free_port, remora_config, spawn, wait_accepting, which,
};
use remora_certs::SpiffeId;
use remora_certs::ca::{DevCa, KeyAlgorithm, LeafRequest};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub const INBOUND_ID: &str = "spiffe://cluster.local/ns/bench/sa/inbound";
pub const OUTBOUND_ID: &str = "spiffe://cluster.local/ns/bench/sa/outbound";
const INBOUND_DNS: &str = "inbound.bench";

/// The CA and the two sidecars' certificates, in Istio's layout under `dir/{inbound,outbound}`.
pub struct Pki {
    pub dir: PathBuf,
    pub outbound: remora_certs::ca::Issued,
}

impl Pki {
    pub fn create(dir: &Path) -> std::io::Result<Self> {
        let err = |e: remora_certs::ca::CaError| std::io::Error::other(e.to_string());
        let ca = DevCa::generate_root("bench", KeyAlgorithm::EcdsaP256).map_err(err)?;
        let leaf = |id: &str, dns: &str| {
            let mut r = LeafRequest::spiffe(
                SpiffeId::parse(id).expect("valid id"),
                Duration::from_secs(86400),
            );
            r.dns_names = vec![dns.to_string()];
            ca.issue(&r)
        };
        let inbound = leaf(INBOUND_ID, INBOUND_DNS).map_err(err)?;
        let outbound = leaf(OUTBOUND_ID, "outbound.bench").map_err(err)?;
        for (name, issued) in [("inbound", &inbound), ("outbound", &outbound)] {
            let d = dir.join(name);
            issued.write_istio_layout(&d).map_err(err)?;
            // HAProxy wants the chain and the key in one file.
            std::fs::write(
                d.join("combined.pem"),
                format!("{}{}", issued.cert_chain_pem, issued.key_pem),
            )?;
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            outbound,
        })
    }

    fn file(&self, side: &str, f: &str) -> String {
        self.dir.join(side).join(f).display().to_string()
    }

    /// A load-generator TLS client presenting the outbound identity; resumption off, so every
    /// connection is a full handshake.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        use remora_certs::source::{Data, FileTrust};
        use remora_certs::verify::{ServerVerifier, Validation};
        let trust = FileTrust::load(
            Data::Inline(self.outbound.root_pem.clone().into_bytes()),
            None,
        )
        .expect("the bench root loads");
        let mut cfg = rustls::ClientConfig::builder_with_provider(remora_certs::provider())
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ServerVerifier {
                validation: Validation {
                    trust: Some(trust),
                    san_matchers: vec![],
                    pins: vec![],
                },
            }))
            .with_client_auth_cert(
                remora_certs::pem::certificates(self.outbound.cert_chain_pem.as_bytes())
                    .expect("chain"),
                remora_certs::pem::private_key(self.outbound.key_pem.as_bytes()).expect("key"),
            )
            .expect("client certificate");
        cfg.resumption = rustls::client::Resumption::disabled();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(cfg)
    }
}

/// The inbound sidecar: the harness's plain remora configuration with a STRICT
/// `DownstreamTlsContext` on its filter chain (inserted before `clusters:`).
fn remora_inbound(port: u16, upstream: SocketAddr, pki: &Pki) -> String {
    let tls = format!(
        r#"      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
{}"#,
        common_tls_context(pki, "inbound", OUTBOUND_ID, 10),
    );
    remora_config(port, upstream, false, false).replacen(
        "  clusters:\n",
        &(tls + "  clusters:\n"),
        1,
    )
}

/// The outbound sidecar: the plain configuration whose (only, last) cluster originates mTLS.
fn remora_outbound(port: u16, inbound: SocketAddr, pki: &Pki) -> String {
    remora_config(port, inbound, false, false)
        + &format!(
            r#"    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: {INBOUND_DNS}
{}"#,
            common_tls_context(pki, "outbound", INBOUND_ID, 8),
        )
}

/// A sidecar's `common_tls_context` (its workload certificate, the mesh root, the peer's SPIFFE
/// ID as the only accepted SAN), indented by `indent` spaces.
fn common_tls_context(pki: &Pki, who: &str, peer_id: &str, indent: usize) -> String {
    let yaml = format!(
        r#"common_tls_context:
  alpn_protocols: [http/1.1]
  tls_certificates:
  - certificate_chain: {{filename: {chain}}}
    private_key: {{filename: {key}}}
  validation_context:
    trusted_ca: {{filename: {root}}}
    match_typed_subject_alt_names:
    - san_type: URI
      matcher: {{exact: "{peer_id}"}}
"#,
        chain = pki.file(who, "cert-chain.pem"),
        key = pki.file(who, "key.pem"),
        root = pki.file(who, "root-cert.pem"),
    );
    let pad = " ".repeat(indent);
    yaml.lines().map(|l| format!("{pad}{l}\n")).collect()
}

fn nginx_common(dir: &Path, workers: usize) -> String {
    let d = dir.display();
    format!(
        "worker_processes {workers};\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\nworker_rlimit_nofile 65536;\nevents {{ worker_connections 32768; }}\n"
    )
}

fn nginx_http_common(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  keepalive_requests 1000000;\n  keepalive_timeout 3600s;\n"
    )
}

fn nginx_inbound(port: u16, upstream: SocketAddr, workers: usize, dir: &Path, pki: &Pki) -> String {
    format!(
        "{}http {{\n{}  upstream app {{ server {upstream}; keepalive 256; keepalive_requests 1000000; keepalive_timeout 3600s; }}\n  server {{\n    listen 127.0.0.1:{port} ssl;\n    ssl_certificate {};\n    ssl_certificate_key {};\n    ssl_client_certificate {};\n    ssl_verify_client on;\n    ssl_protocols TLSv1.2 TLSv1.3;\n    ssl_session_cache shared:SSL:10m;\n    location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_buffering off; }}\n  }}\n}}\n",
        nginx_common(dir, workers),
        nginx_http_common(dir),
        pki.file("inbound", "cert-chain.pem"),
        pki.file("inbound", "key.pem"),
        pki.file("inbound", "root-cert.pem"),
    )
}

fn nginx_outbound(port: u16, inbound: SocketAddr, workers: usize, dir: &Path, pki: &Pki) -> String {
    format!(
        "{}http {{\n{}  upstream inbound {{ server {inbound}; keepalive 256; keepalive_requests 1000000; keepalive_timeout 3600s; }}\n  server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      proxy_pass https://inbound;\n      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n      proxy_buffering off;\n      proxy_ssl_certificate {};\n      proxy_ssl_certificate_key {};\n      proxy_ssl_trusted_certificate {};\n      proxy_ssl_verify on;\n      proxy_ssl_name {INBOUND_DNS};\n      proxy_ssl_server_name on;\n      proxy_ssl_session_reuse on;\n    }}\n  }}\n}}\n",
        nginx_common(dir, workers),
        nginx_http_common(dir),
        pki.file("outbound", "cert-chain.pem"),
        pki.file("outbound", "key.pem"),
        pki.file("outbound", "root-cert.pem"),
    )
}

fn haproxy_global(workers: usize) -> String {
    let maxconn = crate::systems::fd_limit().saturating_sub(200) / 2;
    format!(
        "global\n  nbthread {workers}\n  maxconn {maxconn}\n  tune.ssl.default-dh-param 2048\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 3600s\n  timeout server 3600s\n  timeout http-keep-alive 3600s\n  option http-keep-alive\n  http-reuse always\n"
    )
}

fn haproxy_inbound(port: u16, upstream: SocketAddr, workers: usize, pki: &Pki) -> String {
    format!(
        "{}frontend inbound\n  bind 127.0.0.1:{port} ssl crt {} ca-file {} verify required alpn http/1.1\n  default_backend app\nbackend app\n  server s1 {upstream}\n",
        haproxy_global(workers),
        pki.file("inbound", "combined.pem"),
        pki.file("inbound", "root-cert.pem"),
    )
}

fn haproxy_outbound(port: u16, inbound: SocketAddr, workers: usize, pki: &Pki) -> String {
    format!(
        "{}frontend outbound\n  bind 127.0.0.1:{port}\n  default_backend inbound\nbackend inbound\n  server s1 {inbound} ssl crt {} ca-file {} verify required verifyhost {INBOUND_DNS} sni str({INBOUND_DNS}) alpn http/1.1\n",
        haproxy_global(workers),
        pki.file("outbound", "combined.pem"),
        pki.file("outbound", "root-cert.pem"),
    )
}

/// Start one proxy process of `kind` as the inbound (`upstream` is the app) or the outbound
/// (`upstream` is the inbound proxy) sidecar.
fn start_side(
    kind: Kind,
    s: &Setup,
    pki: &Pki,
    inbound: bool,
    upstream: SocketAddr,
) -> std::io::Result<(SocketAddr, crate::children::Guard)> {
    let port = free_port()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("literal");
    let side = if inbound { "inbound" } else { "outbound" };
    let dir = s.work_dir.join(kind.name()).join(side);
    std::fs::create_dir_all(&dir)?;
    let log = dir.join("output.log");
    let (program, args): (PathBuf, Vec<String>) = match kind {
        Kind::Remora | Kind::RemoraResilient | Kind::RemoraPolicy | Kind::RemoraTelemetry => {
            let cfg = dir.join("bootstrap.yaml");
            let yaml = if inbound {
                remora_inbound(port, upstream, pki)
            } else {
                remora_outbound(port, upstream, pki)
            };
            std::fs::write(&cfg, yaml)?;
            (
                s.remora_bin.clone(),
                vec![
                    "-c".into(),
                    cfg.display().to_string(),
                    "--concurrency".into(),
                    s.workers.to_string(),
                    "-l".into(),
                    "warning".into(),
                ],
            )
        }
        Kind::Nginx => {
            let cfg = dir.join("nginx.conf");
            let conf = if inbound {
                nginx_inbound(port, upstream, s.workers, &dir, pki)
            } else {
                nginx_outbound(port, upstream, s.workers, &dir, pki)
            };
            std::fs::write(&cfg, conf)?;
            (
                which("nginx").ok_or_else(|| std::io::Error::other("nginx not installed"))?,
                vec![
                    "-c".into(),
                    cfg.display().to_string(),
                    "-p".into(),
                    dir.display().to_string(),
                ],
            )
        }
        Kind::Haproxy => {
            let cfg = dir.join("haproxy.cfg");
            let conf = if inbound {
                haproxy_inbound(port, upstream, s.workers, pki)
            } else {
                haproxy_outbound(port, upstream, s.workers, pki)
            };
            std::fs::write(&cfg, conf)?;
            (
                which("haproxy").ok_or_else(|| std::io::Error::other("haproxy not installed"))?,
                vec!["-f".into(), cfg.display().to_string(), "-db".into()],
            )
        }
        Kind::Direct => unreachable!("direct has no sidecars"),
    };
    let mut child = spawn(&program, &args, &s.cpus, &log)?;
    wait_accepting(addr, &mut child, &log)?;
    Ok((addr, child))
}

/// The two-sidecar chain; the load goes to the outbound proxy's plaintext port.
pub fn start_chain(kind: Kind, s: &Setup, pki: &Pki) -> std::io::Result<Running> {
    if kind == Kind::Direct {
        return Ok(Running::direct(s.upstream));
    }
    let (inbound, in_child) = start_side(kind, s, pki, true, s.upstream)?;
    let (outbound, out_child) = start_side(kind, s, pki, false, inbound)?;
    Ok(Running::processes(outbound, vec![out_child, in_child]))
}

/// The inbound sidecar alone; the load is mTLS (a full handshake per request).
pub fn start_inbound(kind: Kind, s: &Setup, pki: &Pki) -> std::io::Result<Running> {
    let (inbound, child) = start_side(kind, s, pki, true, s.upstream)?;
    Ok(Running::processes(inbound, vec![child]))
}
