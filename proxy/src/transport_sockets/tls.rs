//! `envoy.transport_sockets.tls` at runtime: the server handshake on a listener's filter chain,
//! the client handshake on a cluster's connections, Envoy's `ssl.*` stats, and what the
//! handshake established (version, cipher, ALPN, the peer's verified certificate and SPIFFE ID)
//! carried with the connection.

use crate::io::{Counted, DownstreamTlsStream};
use crate::model::tls::{DownstreamTls, UpstreamTls};
use crate::telemetry::stats::{Counter, Store};
use bytes::Bytes;
use remora_certs::SpiffeId;
use remora_certs::info::CertDetails;
use remora_certs::source::CertificateSource;
use remora_certs::verify::{VerifyFailure, classify};
use rustls::CipherSuite;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

/// Every version, cipher and curve name a handshake can report (see [`TlsInfo`]).
const NEGOTIATED: &[(&str, &str)] = &[
    ("versions", "TLSv1.2"),
    ("versions", "TLSv1.3"),
    ("versions", "unknown"),
    ("ciphers", "TLS_AES_128_GCM_SHA256"),
    ("ciphers", "TLS_AES_256_GCM_SHA384"),
    ("ciphers", "TLS_CHACHA20_POLY1305_SHA256"),
    ("ciphers", "ECDHE-ECDSA-AES128-GCM-SHA256"),
    ("ciphers", "ECDHE-ECDSA-AES256-GCM-SHA384"),
    ("ciphers", "ECDHE-ECDSA-CHACHA20-POLY1305"),
    ("ciphers", "ECDHE-RSA-AES128-GCM-SHA256"),
    ("ciphers", "ECDHE-RSA-AES256-GCM-SHA384"),
    ("ciphers", "ECDHE-RSA-CHACHA20-POLY1305"),
    ("ciphers", "unknown"),
    ("curves", "X25519"),
    ("curves", "P-256"),
    ("curves", "P-384"),
    ("curves", "X25519MLKEM768"),
    ("curves", "unknown"),
];

/// `<scope>.ssl.*` (scope: `listener.<address>` or `cluster.<name>`).
#[derive(Debug)]
pub struct TlsStats {
    prefix: String,
    store: Arc<Store>,
    /// `versions.<v>`, `ciphers.<c>`, `curves.<c>`: one cell per [`NEGOTIATED`] entry, registered
    /// on first use, so a handshake formats no name and takes no registry lock.
    negotiated: Vec<std::sync::OnceLock<Arc<Counter>>>,
    pub handshake: Arc<Counter>,
    pub connection_error: Arc<Counter>,
    pub session_reused: Arc<Counter>,
    pub no_certificate: Arc<Counter>,
    pub fail_verify_no_cert: Arc<Counter>,
    pub fail_verify_error: Arc<Counter>,
    pub fail_verify_san: Arc<Counter>,
    pub fail_verify_cert_hash: Arc<Counter>,
}

impl TlsStats {
    pub fn new(store: &Arc<Store>, scope: &str) -> Self {
        let prefix = format!("{scope}.ssl.");
        let c = |n: &str| store.counter(&format!("{prefix}{n}"));
        Self {
            handshake: c("handshake"),
            connection_error: c("connection_error"),
            session_reused: c("session_reused"),
            no_certificate: c("no_certificate"),
            fail_verify_no_cert: c("fail_verify_no_cert"),
            fail_verify_error: c("fail_verify_error"),
            fail_verify_san: c("fail_verify_san"),
            fail_verify_cert_hash: c("fail_verify_cert_hash"),
            prefix,
            store: store.clone(),
            negotiated: NEGOTIATED.iter().map(|_| Default::default()).collect(),
        }
    }

    fn count(&self, kind: &str, value: &str) {
        let Some(i) = NEGOTIATED
            .iter()
            .position(|(k, v)| *k == kind && *v == value)
        else {
            return;
        };
        self.negotiated[i]
            .get_or_init(|| {
                self.store
                    .counter(&format!("{}{kind}.{value}", self.prefix))
            })
            .inc();
    }

    /// `ssl.versions.<v>`, `ssl.ciphers.<c>`, `ssl.curves.<c>` (registered on first use).
    fn negotiated(&self, info: &TlsInfo) {
        self.handshake.inc();
        self.count("versions", info.version);
        self.count("ciphers", info.cipher);
        if let Some(c) = info.curve {
            self.count("curves", c);
        }
        if info.session_reused {
            self.session_reused.inc();
        }
        if info.peer.is_none() {
            self.no_certificate.inc();
        }
    }

    fn failed(&self, e: &std::io::Error) {
        self.connection_error.inc();
        let rustls_error = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>());
        match rustls_error.and_then(classify) {
            Some(VerifyFailure::San) => self.fail_verify_san.inc(),
            Some(VerifyFailure::Chain) => self.fail_verify_error.inc(),
            Some(VerifyFailure::CertHash) => self.fail_verify_cert_hash.inc(),
            Some(VerifyFailure::NoCertificate) => {
                self.fail_verify_no_cert.inc();
                self.no_certificate.inc();
            }
            None => {}
        }
    }
}

/// The peer's certificate, verified (or presented, when no validation context is configured).
#[derive(Debug, Clone)]
pub struct PeerCert {
    /// The SPIFFE ID: the certificate's `spiffe://` URI SAN, if it has exactly one.
    pub spiffe_id: Option<SpiffeId>,
    pub details: CertDetails,
    pub der: Box<[u8]>,
}

impl PeerCert {
    /// The certificate in PEM (XFCC `Cert=`).
    pub fn pem(&self) -> String {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(&self.der);
        let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 60);
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
        out
    }
}

/// What a TLS handshake established.
#[derive(Debug, Clone)]
pub struct TlsInfo {
    /// The SNI the client sent (server side).
    pub server_name: Option<Box<str>>,
    /// `TLSv1.2` / `TLSv1.3`, as `%DOWNSTREAM_TLS_VERSION%` prints it.
    pub version: &'static str,
    /// OpenSSL name, as `%DOWNSTREAM_TLS_CIPHER%` prints it.
    pub cipher: &'static str,
    pub curve: Option<&'static str>,
    pub alpn: Option<Box<str>>,
    pub session_reused: bool,
    pub peer: Option<PeerCert>,
    /// Our own certificate's details (the first configured one).
    pub local: Option<Arc<remora_certs::source::Identity>>,
}

impl TlsInfo {
    fn from_connection(
        conn: &rustls::CommonState,
        session_reused: bool,
        local: &[Arc<dyn CertificateSource>],
    ) -> Self {
        let version = match conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "unknown",
        };
        let cipher = conn
            .negotiated_cipher_suite()
            .map(|s| openssl_cipher_name(s.suite()))
            .unwrap_or("unknown");
        let curve = conn
            .negotiated_key_exchange_group()
            .map(|g| match g.name() {
                rustls::NamedGroup::X25519 => "X25519",
                rustls::NamedGroup::secp256r1 => "P-256",
                rustls::NamedGroup::secp384r1 => "P-384",
                rustls::NamedGroup::X25519MLKEM768 => "X25519MLKEM768",
                _ => "unknown",
            });
        let peer = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|der| CertDetails::parse(der).ok().map(|d| (d, der)))
            .map(|(details, der)| {
                let spiffe_id = {
                    let mut uris = details.uri_sans().filter(|u| u.starts_with("spiffe://"));
                    match (uris.next(), uris.next()) {
                        (Some(u), None) => SpiffeId::parse(u).ok(),
                        _ => None,
                    }
                };
                PeerCert {
                    spiffe_id,
                    details,
                    der: der.as_ref().into(),
                }
            });
        Self {
            server_name: None,
            version,
            cipher,
            curve,
            alpn: conn
                .alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into()),
            session_reused,
            peer,
            local: local.first().and_then(|c| c.current()),
        }
    }
}

/// OpenSSL's names for the suites rustls negotiates.
pub fn openssl_cipher_name(s: CipherSuite) -> &'static str {
    match s {
        CipherSuite::TLS13_AES_128_GCM_SHA256 => "TLS_AES_128_GCM_SHA256",
        CipherSuite::TLS13_AES_256_GCM_SHA384 => "TLS_AES_256_GCM_SHA384",
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => "TLS_CHACHA20_POLY1305_SHA256",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 => "ECDHE-ECDSA-AES128-GCM-SHA256",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 => "ECDHE-ECDSA-AES256-GCM-SHA384",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 => {
            "ECDHE-ECDSA-CHACHA20-POLY1305"
        }
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => "ECDHE-RSA-AES128-GCM-SHA256",
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => "ECDHE-RSA-AES256-GCM-SHA384",
        CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => "ECDHE-RSA-CHACHA20-POLY1305",
        _ => "unknown",
    }
}

/// Why a handshake failed, as `%DOWNSTREAM_TRANSPORT_FAILURE_REASON%` /
/// `%UPSTREAM_TRANSPORT_FAILURE_REASON%` print it.
pub fn failure_reason(e: &std::io::Error) -> String {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(r) => format!("TLS_error:{r}"),
        None if e.kind() == std::io::ErrorKind::TimedOut => "TLS_error:handshake timeout".into(),
        None => format!("TLS_error:{e}"),
    }
}

/// Terminate TLS on an accepted connection. `prefix` holds the bytes listener filters read (the
/// ClientHello). `timeout` is the filter chain's `transport_socket_connect_timeout`.
pub async fn accept(
    tls: &DownstreamTls,
    stats: &TlsStats,
    tcp: TcpStream,
    prefix: Bytes,
    timeout: Option<Duration>,
) -> Result<(DownstreamTlsStream, TlsInfo), std::io::Error> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config.clone());
    let io = Counted::new(tcp, None, None).with_prefix(prefix);
    let handshake = acceptor.accept(io);
    let result = match timeout {
        Some(t) => match tokio::time::timeout(t, handshake).await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "TLS handshake timed out",
            )),
        },
        None => handshake.await,
    };
    match result {
        Ok(stream) => {
            let (_, conn) = stream.get_ref();
            let reused = conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
            let mut info = TlsInfo::from_connection(conn, reused, &tls.certificates);
            info.server_name = conn.server_name().map(Into::into);
            stats.negotiated(&info);
            Ok((stream, info))
        }
        Err(e) => {
            stats.failed(&e);
            Err(e)
        }
    }
}

/// Originate TLS on a new upstream connection.
/// `alpn`: what to offer instead of the cluster's `alpn_protocols` (`istio.alpn`).
pub async fn connect(
    tls: &UpstreamTls,
    stats: &TlsStats,
    tcp: TcpStream,
    alpn: Option<&crate::model::hcm::AlpnOverride>,
) -> Result<(tokio_rustls::client::TlsStream<TcpStream>, TlsInfo), std::io::Error> {
    let config = match alpn {
        Some(a) => tls.config_offering(a),
        None => tls.config.clone(),
    };
    let connector = tokio_rustls::TlsConnector::from(config);
    match connector.connect(tls.server_name.clone(), tcp).await {
        Ok(stream) => {
            let (_, conn) = stream.get_ref();
            let reused = conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
            let info = TlsInfo::from_connection(conn, reused, &tls.certificates);
            stats.negotiated(&info);
            Ok((stream, info))
        }
        Err(e) => {
            stats.failed(&e);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every cipher name a handshake can report has its counter cell (else it goes uncounted).
    #[test]
    fn every_negotiable_cipher_has_a_stat_cell() {
        for s in rustls::crypto::aws_lc_rs::default_provider().cipher_suites {
            let name = openssl_cipher_name(s.suite());
            assert!(
                NEGOTIATED.contains(&("ciphers", name)),
                "{name} is missing from NEGOTIATED"
            );
        }
    }
}
