//! `envoy.transport_sockets.tls` at runtime: the server handshake on a listener's filter chain,
//! the client handshake on a cluster's connections, Envoy's `ssl.*` stats, and what the
//! handshake established (version, cipher, ALPN, the peer's verified certificate and SPIFFE ID)
//! carried with the connection. A failed handshake is described as Envoy (BoringSSL) describes
//! it: `%*_TRANSPORT_FAILURE_REASON%` in BoringSSL's error-queue form, and the version and peer
//! certificate known so far.

use crate::io::{Counted, DownstreamTlsStream};
use crate::listener::tls_inspector;
use crate::model::tls::{CertificateNames, DownstreamTls, UpstreamTls};
use crate::telemetry::stats::{Counter, Store};
use bytes::{Bytes, BytesMut};
use remora_certs::SpiffeId;
use remora_certs::info::CertDetails;
use remora_certs::source::{CertificateSource, OnChange, TrustSource};
use remora_certs::verify::{Captured, PinMismatch, SanMismatch, VerifyFailure, classify};
use rustls::{CertificateError, CipherSuite, SignatureScheme};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};
use tokio::io::AsyncReadExt;
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
    ("sigalgs", "ecdsa_secp256r1_sha256"),
    ("sigalgs", "ecdsa_secp384r1_sha384"),
    ("sigalgs", "ecdsa_secp521r1_sha512"),
    ("sigalgs", "ecdsa_sha1"),
    ("sigalgs", "rsa_pss_rsae_sha256"),
    ("sigalgs", "rsa_pss_rsae_sha384"),
    ("sigalgs", "rsa_pss_rsae_sha512"),
    ("sigalgs", "rsa_pkcs1_sha256"),
    ("sigalgs", "rsa_pkcs1_sha384"),
    ("sigalgs", "rsa_pkcs1_sha512"),
    ("sigalgs", "rsa_pkcs1_sha1"),
    ("sigalgs", "ed25519"),
    ("sigalgs", "unknown"),
];

/// BoringSSL's name of a signature scheme (`SSL_get_signature_algorithm_name`, with the curve).
fn sigalg_name(s: SignatureScheme) -> &'static str {
    match s {
        SignatureScheme::ECDSA_NISTP256_SHA256 => "ecdsa_secp256r1_sha256",
        SignatureScheme::ECDSA_NISTP384_SHA384 => "ecdsa_secp384r1_sha384",
        SignatureScheme::ECDSA_NISTP521_SHA512 => "ecdsa_secp521r1_sha512",
        SignatureScheme::ECDSA_SHA1_Legacy => "ecdsa_sha1",
        SignatureScheme::RSA_PSS_SHA256 => "rsa_pss_rsae_sha256",
        SignatureScheme::RSA_PSS_SHA384 => "rsa_pss_rsae_sha384",
        SignatureScheme::RSA_PSS_SHA512 => "rsa_pss_rsae_sha512",
        SignatureScheme::RSA_PKCS1_SHA256 => "rsa_pkcs1_sha256",
        SignatureScheme::RSA_PKCS1_SHA384 => "rsa_pkcs1_sha384",
        SignatureScheme::RSA_PKCS1_SHA512 => "rsa_pkcs1_sha512",
        SignatureScheme::RSA_PKCS1_SHA1 => "rsa_pkcs1_sha1",
        SignatureScheme::ED25519 => "ed25519",
        _ => "unknown",
    }
}

fn unix_seconds(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

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
    /// remora staples no OCSP response: every client asking for one goes without
    /// (`requests` and `omitted`); `failed` and `responses` stay 0.
    pub ocsp_staple_failed: Arc<Counter>,
    pub ocsp_staple_omitted: Arc<Counter>,
    pub ocsp_staple_requests: Arc<Counter>,
    pub ocsp_staple_responses: Arc<Counter>,
    /// What keeps the certificate gauges following their sources ([`Self::certificates`]).
    following: Following,
}

/// The callbacks a [`TlsStats`] registered with its sources (they hold them weakly).
#[derive(Default)]
struct Following(std::sync::Mutex<Vec<OnChange>>);

impl std::fmt::Debug for Following {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Following").finish_non_exhaustive()
    }
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
            ocsp_staple_failed: c("ocsp_staple_failed"),
            ocsp_staple_omitted: c("ocsp_staple_omitted"),
            ocsp_staple_requests: c("ocsp_staple_requests"),
            ocsp_staple_responses: c("ocsp_staple_responses"),
            prefix,
            store: store.clone(),
            negotiated: NEGOTIATED.iter().map(|_| Default::default()).collect(),
            following: Default::default(),
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

    /// `ssl.certificate.<name>.expiration_unix_time_seconds` for a context's certificates and
    /// trusted CA (Envoy sets them when it builds the context; several contexts of a scope
    /// sharing a name share the gauge), set again whenever a source installs a new value (an
    /// SDS secret arriving or rotating, files re-loaded) for as long as these stats live.
    pub fn certificates(
        &self,
        names: &CertificateNames,
        certificates: &[Arc<dyn CertificateSource>],
        trust: Option<&Arc<dyn TrustSource>>,
    ) {
        let mut following = self.following.0.lock().unwrap_or_else(|e| e.into_inner());
        for (name, c) in names.certificates.iter().zip(certificates) {
            let gauge = self.expiration(name);
            let source = Arc::downgrade(c);
            let set: OnChange = Arc::new(move || {
                if let Some(id) = source.upgrade().and_then(|c| c.current()) {
                    gauge(unix_seconds(id.chain[0].not_after));
                }
            });
            set();
            c.follow(&set);
            following.push(set);
        }
        if let Some(name) = &names.ca {
            let gauge = self.expiration(name);
            let source = trust.map(Arc::downgrade);
            let set: OnChange = Arc::new(move || {
                let first = source
                    .as_ref()
                    .and_then(std::sync::Weak::upgrade)
                    .and_then(|t| t.current())
                    .and_then(|b| b.certs.first().map(|c| unix_seconds(c.not_after)));
                gauge(first.unwrap_or(0));
            });
            set();
            if let Some(t) = trust {
                t.follow(&set);
            }
            following.push(set);
        }
    }

    /// Sets `certificate.<name>.expiration_unix_time_seconds` (registered on first set).
    fn expiration(&self, name: &str) -> impl Fn(i64) + Send + Sync + 'static {
        let store = self.store.clone();
        let name = format!(
            "{}certificate.{name}.expiration_unix_time_seconds",
            self.prefix
        );
        move |value| store.gauge(&name).set(value)
    }

    /// A client asked for an OCSP staple (counted when the certificate is chosen, before the
    /// handshake can fail, as Envoy does).
    fn ocsp_requested(&self) {
        self.ocsp_staple_requests.inc();
        self.ocsp_staple_omitted.inc();
    }

    /// `ssl.versions.<v>`, `ssl.ciphers.<c>`, `ssl.curves.<c>`, `ssl.sigalgs.<s>` (registered
    /// on first use).
    fn negotiated(&self, info: &TlsInfo, sigalg: Option<SignatureScheme>) {
        self.handshake.inc();
        self.count("versions", info.version);
        self.count("ciphers", info.cipher);
        if let Some(c) = info.curve {
            self.count("curves", c);
        }
        if let Some(s) = sigalg {
            self.count("sigalgs", sigalg_name(s));
        }
        if info.session_reused {
            self.session_reused.inc();
        }
        if info.peer.is_none() {
            self.no_certificate.inc();
        }
    }

    /// Envoy counts a verification failure by its kind and any other TLS error as
    /// `connection_error`; a peer that went away (an I/O error) is counted elsewhere.
    fn failed(&self, e: &std::io::Error) {
        if e.get_ref().is_some_and(|i| i.is::<NotTls>()) {
            self.connection_error.inc();
            return;
        }
        let Some(rustls_error) = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        else {
            return;
        };
        match classify(rustls_error) {
            Some(VerifyFailure::San) => self.fail_verify_san.inc(),
            Some(VerifyFailure::Chain) => self.fail_verify_error.inc(),
            Some(VerifyFailure::CertHash) => self.fail_verify_cert_hash.inc(),
            Some(VerifyFailure::NoCertificate) => self.fail_verify_no_cert.inc(),
            None => self.connection_error.inc(),
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
            .and_then(|der| peer_cert(der));
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
/// `%UPSTREAM_TRANSPORT_FAILURE_REASON%` print it: for verification failures and a missing
/// client certificate, Envoy's text (BoringSSL's error-queue entry, then the validator's
/// details); anything else in rustls' words within the same `TLS_error:…` frame.
pub fn failure_reason(e: &std::io::Error) -> String {
    if let Some(NotTls(entry)) = e.get_ref().and_then(|i| i.downcast_ref::<NotTls>()) {
        return format!("TLS_error:{entry}:TLS_error_end");
    }
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(r) => boringssl_reason(r),
        None if e.kind() == std::io::ErrorKind::TimedOut => "TLS_error:handshake timeout".into(),
        None => format!("TLS_error:{e}"),
    }
}

const VERIFY_FAILED: &str = "|268435581:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED";

fn boringssl_reason(e: &rustls::Error) -> String {
    let verify = |detail: &str| {
        format!("TLS_error:{VERIFY_FAILED}:verify cert failed: {detail}:TLS_error_end")
    };
    // Envoy's X509_verify_cert details (the leaf's error: webpki does not say at which depth).
    let x509 = |what: &str| {
        verify(&format!(
            "X509_verify_cert: certificate verification error at depth 0: {what}"
        ))
    };
    match e {
        rustls::Error::NoCertificatesPresented => "TLS_error:|268435648:SSL routines:OPENSSL_internal:PEER_DID_NOT_RETURN_A_CERTIFICATE:peer did not provide required client certificate:TLS_error_end".into(),
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::Other(o) if o.0.downcast_ref::<SanMismatch>().is_some() => {
                let m = o.0.to_string();
                verify(m.strip_prefix("verify cert failed: ").unwrap_or(&m))
            }
            CertificateError::Other(o) if o.0.downcast_ref::<PinMismatch>().is_some() => {
                verify("cert hash and spki")
            }
            CertificateError::UnknownIssuer => x509("unable to get local issuer certificate"),
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                x509("certificate has expired")
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                x509("certificate is not yet valid")
            }
            CertificateError::BadSignature => x509("certificate signature failure"),
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                x509("unsupported certificate purpose")
            }
            CertificateError::Revoked => x509("certificate revoked"),
            other => format!("TLS_error:{VERIFY_FAILED}:{other:?}:TLS_error_end"),
        },
        other => format!("TLS_error:{other}"),
    }
}

/// A handshake future polled with the verifiers' [`Captured`] slot installed.
struct Capturing<F> {
    inner: Pin<Box<F>>,
    captured: Captured,
}

impl<F: Future> Future for Capturing<F> {
    type Output = (F::Output, Captured);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let inner = &mut this.inner;
        match remora_certs::verify::capturing(&mut this.captured, || inner.as_mut().poll(cx)) {
            Poll::Ready(out) => Poll::Ready((out, std::mem::take(&mut this.captured))),
            Poll::Pending => Poll::Pending,
        }
    }
}

fn capturing<F: Future>(f: F) -> Capturing<F> {
    Capturing {
        inner: Box::pin(f),
        captured: Captured::default(),
    }
}

fn peer_cert(der: &[u8]) -> Option<PeerCert> {
    let details = CertDetails::parse(der).ok()?;
    let spiffe_id = {
        let mut uris = details.uri_sans().filter(|u| u.starts_with("spiffe://"));
        match (uris.next(), uris.next()) {
            (Some(u), None) => SpiffeId::parse(u).ok(),
            _ => None,
        }
    };
    Some(PeerCert {
        spiffe_id,
        details,
        der: der.into(),
    })
}

/// A failed handshake: the error, and what Envoy's logs still show of the connection (the
/// version being negotiated, the peer's certificate if it sent one).
#[derive(Debug)]
pub struct HandshakeFailure {
    pub error: std::io::Error,
    pub info: Option<TlsInfo>,
}

/// The largest ClientHello read before the handshake (one TLS record and its header).
const MAX_HELLO: usize = 16 * 1024 + 5;

/// What the first bytes were.
enum Hello {
    Tls(tls_inspector::ClientHello),
    /// Not a TLS record: BoringSSL's error for it (an HTTP request, a proxy's CONNECT, or
    /// anything else).
    NotTls(&'static str),
    /// The client stopped before its ClientHello was complete (rustls reports how).
    Incomplete,
}

/// BoringSSL's refusal of bytes that are no TLS record at all. The connection is closed
/// without a TLS alert, as BoringSSL does (rustls would answer with one).
#[derive(Debug)]
struct NotTls(&'static str);

impl std::fmt::Display for NotTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for NotTls {}

const HTTP: [&[u8]; 4] = [b"GET ", b"POST ", b"HEAD ", b"PUT "];

/// `first` is the start of one of the markers `not_tls` looks for: read more before deciding.
fn could_be_marker(first: &[u8]) -> bool {
    HTTP.iter()
        .chain([&&b"CONNE"[..]])
        .any(|m| first.len() < m.len() && m.starts_with(first))
}

fn not_tls(first: &[u8]) -> &'static str {
    if HTTP.iter().any(|m| first.starts_with(m)) {
        "|268435612:SSL routines:OPENSSL_internal:HTTP_REQUEST"
    } else if first.starts_with(b"CONNE") {
        "|268435611:SSL routines:OPENSSL_internal:HTTPS_PROXY_REQUEST"
    } else {
        "|268435723:SSL routines:OPENSSL_internal:WRONG_VERSION_NUMBER"
    }
}

/// Read until the first record (the ClientHello) is complete (or is not TLS, or the client
/// stops sending): what the handshake will negotiate is decided from it.
async fn read_client_hello(tcp: &mut TcpStream, prefix: Bytes) -> (BytesMut, Hello) {
    let mut buf = BytesMut::from(&prefix[..]);
    loop {
        match tls_inspector::inspect(&buf) {
            tls_inspector::Inspect::Tls(h) => return (buf, Hello::Tls(h)),
            // Enough bytes to tell which error BoringSSL gives.
            tls_inspector::Inspect::NotTls if !could_be_marker(&buf) => {
                let reason = not_tls(&buf);
                return (buf, Hello::NotTls(reason));
            }
            tls_inspector::Inspect::NeedMore if buf.len() >= MAX_HELLO => {
                return (buf, Hello::Incomplete);
            }
            _ => {}
        }
        buf.reserve(4096);
        match tcp.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return (buf, Hello::Incomplete),
            Ok(_) => {}
        }
    }
}

/// Terminate TLS on an accepted connection. `prefix` holds the bytes listener filters read (the
/// ClientHello). `timeout` is the filter chain's `transport_socket_connect_timeout`.
pub async fn accept(
    tls: &DownstreamTls,
    stats: &TlsStats,
    mut tcp: TcpStream,
    prefix: Bytes,
    timeout: Option<Duration>,
) -> Result<(DownstreamTlsStream, TlsInfo), HandshakeFailure> {
    let handshake = async {
        let (read, hello) = read_client_hello(&mut tcp, prefix).await;
        let hello = match hello {
            Hello::Tls(h) => h,
            Hello::Incomplete => Default::default(),
            Hello::NotTls(reason) => {
                let e = std::io::Error::new(std::io::ErrorKind::InvalidData, NotTls(reason));
                return ((Err(e), Captured::default()), false);
            }
        };
        if hello.status_request {
            stats.ocsp_requested();
        }
        let config = tls.config_for(hello.tls13, &hello.alpn, &hello.groups);
        let tls13 = hello.tls13 && tls.allows_tls13;
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let io = Counted::new(tcp, None, None).with_prefix(read.freeze());
        (capturing(acceptor.accept(io)).await, tls13)
    };
    let result = match timeout {
        Some(t) => match tokio::time::timeout(t, handshake).await {
            Ok(r) => r,
            Err(_) => {
                let error =
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out");
                return Err(HandshakeFailure { error, info: None });
            }
        },
        None => handshake.await,
    };
    match result {
        ((Ok(stream), captured), _) => {
            let (_, conn) = stream.get_ref();
            let reused = conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
            let mut info = TlsInfo::from_connection(conn, reused, &tls.certificates);
            info.server_name = conn.server_name().map(Into::into);
            stats.negotiated(&info, captured.scheme);
            Ok((stream, info))
        }
        ((Err(error), captured), tls13) => {
            stats.failed(&error);
            let info = TlsInfo {
                server_name: None,
                version: if tls13 { "TLSv1.3" } else { "TLSv1.2" },
                cipher: "",
                curve: None,
                alpn: None,
                session_reused: false,
                peer: captured.peer.as_deref().and_then(peer_cert),
                local: None,
            };
            Err(HandshakeFailure {
                error,
                info: Some(info),
            })
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
    match capturing(connector.connect(tls.server_name.clone(), tcp)).await {
        (Ok(stream), captured) => {
            let (_, conn) = stream.get_ref();
            let reused = conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
            let info = TlsInfo::from_connection(conn, reused, &tls.certificates);
            stats.negotiated(&info, captured.scheme);
            Ok((stream, info))
        }
        (Err(e), _) => {
            stats.failed(&e);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(e: rustls::Error) -> String {
        failure_reason(&std::io::Error::other(e))
    }

    /// Handshake failures read as Envoy writes them (BoringSSL's error-queue entry, then the
    /// validator's details).
    #[test]
    fn failure_reasons_are_envoys() {
        let verify = "TLS_error:|268435581:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED:verify cert failed: ";
        let san = rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(
            Arc::new(SanMismatch {
                sans: vec!["spiffe://a/b".into(), "b.test".into()],
            }),
        )));
        assert_eq!(
            reason(san),
            format!(
                "{verify}SAN matcher, certificate SANs are [spiffe://a/b, b.test]:TLS_error_end"
            )
        );
        assert_eq!(
            reason(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer
            )),
            format!(
                "{verify}X509_verify_cert: certificate verification error at depth 0: unable to get local issuer certificate:TLS_error_end"
            )
        );
        assert_eq!(
            reason(rustls::Error::InvalidCertificate(CertificateError::Expired)),
            format!(
                "{verify}X509_verify_cert: certificate verification error at depth 0: certificate has expired:TLS_error_end"
            )
        );
        assert_eq!(
            reason(rustls::Error::NoCertificatesPresented),
            "TLS_error:|268435648:SSL routines:OPENSSL_internal:PEER_DID_NOT_RETURN_A_CERTIFICATE:peer did not provide required client certificate:TLS_error_end"
        );
        let not_tls = |b: &[u8]| {
            failure_reason(&std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                NotTls(super::not_tls(b)),
            ))
        };
        assert_eq!(
            not_tls(b"GET / HTTP/1.1"),
            "TLS_error:|268435612:SSL routines:OPENSSL_internal:HTTP_REQUEST:TLS_error_end"
        );
        assert!(not_tls(b"CONNECT x").contains("HTTPS_PROXY_REQUEST"));
        assert!(not_tls(b"\x00\x01").contains("WRONG_VERSION_NUMBER"));
        assert!(could_be_marker(b"PO") && !could_be_marker(b"POST ") && !could_be_marker(b"X"));
    }

    /// Envoy counts verification failures by kind, other TLS errors as `connection_error`, a
    /// peer that went away in neither.
    #[test]
    fn failures_are_counted_as_envoy_counts_them() {
        let store = Arc::new(Store::default());
        let stats = TlsStats::new(&store, "listener.x");
        stats.failed(&std::io::Error::other(
            rustls::Error::NoCertificatesPresented,
        ));
        stats.failed(&std::io::Error::other(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer,
        )));
        stats.failed(&std::io::Error::other(rustls::Error::DecryptError));
        stats.failed(&std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
        assert_eq!(stats.fail_verify_no_cert.value(), 1);
        assert_eq!(stats.no_certificate.value(), 0);
        assert_eq!(stats.fail_verify_error.value(), 1);
        assert_eq!(stats.connection_error.value(), 1);
    }

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
