//! Peer-certificate verification as Envoy's `CertificateValidationContext` does it: the chain
//! against the trusted roots (webpki: signatures, validity period, key usage), then the
//! subject-alt-name matchers (`match_typed_subject_alt_names`, or the older
//! `match_subject_alt_names` that tries every SAN type). rustls itself only checks DNS names
//! against the SNI, which is not what a mesh needs: the SPIFFE URI SAN is the identity.
//!
//! Failures map onto distinct rustls errors so the proxy can count Envoy's stats:
//! chain problems → `InvalidCertificate(..)` (`ssl.fail_verify_error`), no SAN matched →
//! `InvalidCertificate(Other(SanMismatch))` (`ssl.fail_verify_san`, alert
//! `certificate_unknown`, as Envoy's validator sends).

use crate::source::TrustSource;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::fmt;
use std::sync::Arc;
use x509_parser::prelude::*;

/// A string matcher (Envoy's `StringMatcher`, implemented by the proxy's matcher module).
pub trait StrMatch: Send + Sync + fmt::Debug {
    fn matches(&self, s: &str) -> bool;
    /// The `exact` value, if this is an exact matcher (DNS SANs then honour wildcards).
    fn exact(&self) -> Option<&str> {
        None
    }
}

/// Which SAN type a matcher looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SanType {
    Email,
    Dns,
    Uri,
    IpAddress,
    /// otherName with this OID (dotted form).
    OtherName(String),
}

#[derive(Debug, Clone)]
pub struct SanMatcher {
    /// `None`: the legacy `match_subject_alt_names`, which tries DNS, URI, email and IP SANs.
    pub san_type: Option<SanType>,
    pub matcher: Arc<dyn StrMatch>,
}

/// How a peer's certificate is checked.
#[derive(Debug, Clone, Default)]
pub struct Validation {
    /// `None`: the chain is not checked (no `trusted_ca`, or `ACCEPT_UNTRUSTED`).
    pub trust: Option<Arc<dyn TrustSource>>,
    /// Empty: any SAN is accepted.
    pub san_matchers: Vec<SanMatcher>,
    /// `verify_certificate_hash` / `verify_certificate_spki`: when any is given, the certificate
    /// must match one of them.
    pub pins: Vec<Pin>,
}

/// A pinned certificate: SHA-256 of the whole certificate, or of its SubjectPublicKeyInfo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pin {
    CertSha256([u8; 32]),
    SpkiSha256([u8; 32]),
}

impl Pin {
    /// `verify_certificate_hash`: hex, optionally with colons (`DF:6F:…`), any case.
    pub fn cert_hash(s: &str) -> Option<Self> {
        let hex: String = s.chars().filter(|c| *c != ':').collect();
        if hex.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Pin::CertSha256(out))
    }

    /// `verify_certificate_spki`: base64 of the SHA-256 of the SubjectPublicKeyInfo.
    pub fn spki_hash(s: &str) -> Option<Self> {
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD.decode(s).ok()?;
        Some(Pin::SpkiSha256(bytes.try_into().ok()?))
    }
}

/// No SAN matcher matched: Envoy's `verify cert failed: SAN matcher, certificate SANs are
/// [...]` (every SAN of the certificate, in its order). As a rustls `Other` certificate error
/// it makes the alert `certificate_unknown`, as Envoy's validator sends.
#[derive(Debug)]
pub struct SanMismatch {
    pub sans: Vec<String>,
}

impl fmt::Display for SanMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "verify cert failed: SAN matcher, certificate SANs are [{}]",
            self.sans.join(", ")
        )
    }
}

impl std::error::Error for SanMismatch {}

/// A SAN as Envoy logs it (`Utility::generalNameAsString`).
fn general_name_string(n: &GeneralName<'_>) -> String {
    match n {
        GeneralName::DNSName(s) | GeneralName::URI(s) | GeneralName::RFC822Name(s) => s.to_string(),
        GeneralName::IPAddress(b) => match b.len() {
            4 => std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*b).expect("4")).to_string(),
            16 => std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*b).expect("16")).to_string(),
            _ => String::new(),
        },
        GeneralName::OtherName(_, value) => {
            crate::info::other_name_value(value).unwrap_or_default()
        }
        _ => String::new(),
    }
}

// === the handshake's peer, for the proxy ===

/// What the verifiers saw during one handshake: the peer's end-entity certificate (also when
/// it is refused: Envoy's logs still name it) and the signature scheme of its handshake
/// signature (`ssl.sigalgs.*`). Filled only while [`capturing`] runs the handshake's step.
#[derive(Debug, Clone, Default)]
pub struct Captured {
    pub peer: Option<CertificateDer<'static>>,
    pub scheme: Option<SignatureScheme>,
}

thread_local! {
    static CAPTURE: std::cell::RefCell<Option<Captured>> = const { std::cell::RefCell::new(None) };
}

/// Run `f` (one poll of a handshake) with `slot` receiving what the verifiers see.
pub fn capturing<R>(slot: &mut Captured, f: impl FnOnce() -> R) -> R {
    let outer = CAPTURE.with(|c| c.replace(Some(std::mem::take(slot))));
    let r = f();
    *slot = CAPTURE.with(|c| c.replace(outer)).unwrap_or_default();
    r
}

fn note(f: impl FnOnce(&mut Captured)) {
    CAPTURE.with(|c| {
        if let Some(c) = c.borrow_mut().as_mut() {
            f(c);
        }
    });
}

fn note_peer(end_entity: &CertificateDer<'_>) {
    note(|c| c.peer = Some(end_entity.clone().into_owned()));
}

fn note_scheme(scheme: SignatureScheme) {
    note(|c| c.scheme = Some(scheme));
}

/// The certificate matched no `verify_certificate_hash`/`verify_certificate_spki` entry.
#[derive(Debug)]
pub struct PinMismatch;

impl fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("certificate hash or SPKI does not match")
    }
}

impl std::error::Error for PinMismatch {}

/// Envoy's DNS SAN match: a `*.` wildcard SAN covers exactly one label.
pub fn dns_name_match(name: &str, san: &str) -> bool {
    if san.eq_ignore_ascii_case(name) {
        return true;
    }
    match san.strip_prefix("*.") {
        Some(rest) => match name.split_once('.') {
            Some((first, tail)) => !first.is_empty() && tail.eq_ignore_ascii_case(rest),
            None => false,
        },
        None => false,
    }
}

impl SanMatcher {
    fn matches_general(&self, n: &GeneralName<'_>) -> bool {
        let m = &self.matcher;
        let dns = |d: &str| match m.exact() {
            Some(e) => dns_name_match(e, d),
            None => m.matches(d),
        };
        let ip = |b: &[u8]| match b.len() {
            4 => {
                m.matches(&std::net::Ipv4Addr::from(<[u8; 4]>::try_from(b).expect("4")).to_string())
            }
            16 => m.matches(
                &std::net::Ipv6Addr::from(<[u8; 16]>::try_from(b).expect("16")).to_string(),
            ),
            _ => false,
        };
        match (&self.san_type, n) {
            (None | Some(SanType::Dns), GeneralName::DNSName(d)) => dns(d),
            (None | Some(SanType::Uri), GeneralName::URI(u)) => m.matches(u),
            (None | Some(SanType::Email), GeneralName::RFC822Name(e)) => m.matches(e),
            (None | Some(SanType::IpAddress), GeneralName::IPAddress(b)) => ip(b),
            (Some(SanType::OtherName(oid)), GeneralName::OtherName(o, value)) => {
                o.to_id_string() == *oid
                    && crate::info::other_name_value(value).is_some_and(|v| m.matches(&v))
            }
            _ => false,
        }
    }
}

// === impl Validation ===

impl Validation {
    /// Check `end_entity` (+ `intermediates`) for `usage`.
    pub fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: webpki::KeyUsage,
    ) -> Result<(), Error> {
        if let Some(trust) = &self.trust {
            let bundle = trust
                .current()
                .ok_or(Error::InvalidCertificate(CertificateError::UnknownIssuer))?;
            let ee = webpki::EndEntityCert::try_from(end_entity).map_err(pki_error)?;
            ee.verify_for_usage(
                crate::provider().signature_verification_algorithms.all,
                &bundle.roots.roots,
                intermediates,
                now,
                usage,
                None,
                None,
            )
            .map_err(pki_error)?;
        }
        if !self.san_matchers.is_empty() {
            let (_, cert) = X509Certificate::from_der(end_entity)
                .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
            let names = match cert.subject_alternative_name() {
                Ok(Some(ext)) => ext.value.general_names.clone(),
                _ => Vec::new(),
            };
            let ok = self
                .san_matchers
                .iter()
                .any(|m| names.iter().any(|n| m.matches_general(n)));
            if !ok {
                let sans = names.iter().map(general_name_string).collect();
                return Err(Error::InvalidCertificate(CertificateError::Other(
                    rustls::OtherError(Arc::new(SanMismatch { sans })),
                )));
            }
        }
        if !self.pins.is_empty() {
            use aws_lc_rs::digest::{SHA256, digest};
            let cert_hash = digest(&SHA256, end_entity);
            let spki_hash = X509Certificate::from_der(end_entity)
                .ok()
                .map(|(_, c)| digest(&SHA256, c.public_key().raw));
            let matched = self.pins.iter().any(|p| match p {
                Pin::CertSha256(h) => cert_hash.as_ref() == h,
                Pin::SpkiSha256(h) => spki_hash.as_ref().is_some_and(|d| d.as_ref() == h),
            });
            if !matched {
                return Err(Error::InvalidCertificate(CertificateError::Other(
                    rustls::OtherError(Arc::new(PinMismatch)),
                )));
            }
        }
        Ok(())
    }
}

fn pki_error(e: webpki::Error) -> Error {
    use webpki::Error as W;
    let c = match e {
        W::CertExpired { .. } => CertificateError::Expired,
        W::CertNotValidYet { .. } => CertificateError::NotValidYet,
        W::UnknownIssuer => CertificateError::UnknownIssuer,
        W::CertRevoked => CertificateError::Revoked,
        W::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        W::BadDer | W::BadDerTime => CertificateError::BadEncoding,
        #[allow(deprecated)]
        W::RequiredEkuNotFound | W::RequiredEkuNotFoundContext(_) => {
            CertificateError::InvalidPurpose
        }
        other => CertificateError::Other(rustls::OtherError(Arc::new(PkiError(other)))),
    };
    Error::InvalidCertificate(c)
}

#[derive(Debug)]
struct PkiError(webpki::Error);

impl fmt::Display for PkiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl std::error::Error for PkiError {}

/// Verify a handshake signature with the public key of `cert`, read with x509-parser: unlike
/// rustls' helpers (webpki), this accepts X.509 v1 certificates, which BoringSSL does.
fn verify_signature(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
    tls13: bool,
) -> Result<HandshakeSignatureValid, Error> {
    use rustls::PeerMisbehaved;
    // RFC 8446 4.2.3: no SHA-1 and no RSASSA-PKCS1-v1_5 in TLS 1.3 handshakes.
    let legacy = matches!(
        dss.scheme,
        SignatureScheme::RSA_PKCS1_SHA1
            | SignatureScheme::ECDSA_SHA1_Legacy
            | SignatureScheme::RSA_PKCS1_SHA256
            | SignatureScheme::RSA_PKCS1_SHA384
            | SignatureScheme::RSA_PKCS1_SHA512
    );
    if tls13 && legacy {
        return Err(PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme.into());
    }
    let provider = crate::provider();
    let candidates = provider
        .signature_verification_algorithms
        .mapping
        .iter()
        .find(|(s, _)| *s == dss.scheme)
        .map(|(_, algs)| *algs)
        .ok_or(Error::PeerMisbehaved(
            PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme,
        ))?;
    let (_, parsed) = X509Certificate::from_der(cert)
        .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
    let spki = rustls_pki_types::SubjectPublicKeyInfoDer::from(parsed.public_key().raw);
    let key = webpki::RawPublicKeyEntity::try_from(&spki).map_err(pki_error)?;
    let algs = if tls13 { &candidates[..1] } else { candidates };
    let mut last = None;
    for alg in algs {
        match key.verify_signature(*alg, message, dss.signature()) {
            Ok(()) => return Ok(HandshakeSignatureValid::assertion()),
            Err(e) => last = Some(e),
        }
    }
    Err(pki_error(
        last.unwrap_or(webpki::Error::InvalidSignatureForPublicKey),
    ))
}

fn verify_sig12(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, Error> {
    note_scheme(dss.scheme);
    verify_signature(message, cert, dss, false)
}

fn verify_sig13(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, Error> {
    note_scheme(dss.scheme);
    verify_signature(message, cert, dss, true)
}

fn schemes() -> Vec<SignatureScheme> {
    crate::provider()
        .signature_verification_algorithms
        .supported_schemes()
}

// === impl ServerVerifier ===

/// Verifies the upstream's certificate (client side of a TLS connection). The SNI is not
/// checked against the certificate: the SAN matchers are the name check, as in Envoy.
#[derive(Debug)]
pub struct ServerVerifier {
    pub validation: Validation,
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        note_peer(end_entity);
        self.validation.verify(
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_sig12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_sig13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        schemes()
    }
}

// === impl ClientVerifier ===

/// Verifies a downstream client's certificate (server side).
#[derive(Debug)]
pub struct ClientVerifier {
    pub validation: Validation,
    /// `require_client_certificate`.
    pub mandatory: bool,
    /// CA names sent in the CertificateRequest (empty with `suppress_client_ca_list`).
    hints: Vec<DistinguishedName>,
}

impl ClientVerifier {
    pub fn new(validation: Validation, mandatory: bool, suppress_ca_list: bool) -> Self {
        let hints = match (&validation.trust, suppress_ca_list) {
            (Some(t), false) => t.current().map(|b| b.roots.subjects()).unwrap_or_default(),
            _ => Vec::new(),
        };
        Self {
            validation,
            mandatory,
            hints,
        }
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        note_peer(end_entity);
        self.validation.verify(
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::client_auth(),
        )?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_sig12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_sig13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        schemes()
    }
}

/// What kind of verification failure a handshake error is, for Envoy's stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyFailure {
    /// `ssl.fail_verify_san`
    San,
    /// `ssl.fail_verify_error`
    Chain,
    /// `ssl.fail_verify_no_cert` / `ssl.no_certificate`
    NoCertificate,
    /// `ssl.fail_verify_cert_hash`
    CertHash,
}

pub fn classify(e: &Error) -> Option<VerifyFailure> {
    match e {
        Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure) => {
            Some(VerifyFailure::San)
        }
        Error::InvalidCertificate(CertificateError::Other(o))
            if o.0.downcast_ref::<SanMismatch>().is_some() =>
        {
            Some(VerifyFailure::San)
        }
        Error::InvalidCertificate(CertificateError::Other(o))
            if o.0.downcast_ref::<PinMismatch>().is_some() =>
        {
            Some(VerifyFailure::CertHash)
        }
        Error::InvalidCertificate(_) => Some(VerifyFailure::Chain),
        Error::NoCertificatesPresented => Some(VerifyFailure::NoCertificate),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SpiffeId;
    use crate::ca::{DevCa, Issued, KeyAlgorithm, LeafRequest};
    use crate::source::{Data, FileTrust};
    use std::time::Duration;

    #[derive(Debug)]
    struct Exact(String);
    impl StrMatch for Exact {
        fn matches(&self, s: &str) -> bool {
            s == self.0
        }
        fn exact(&self) -> Option<&str> {
            Some(&self.0)
        }
    }
    #[derive(Debug)]
    struct Prefix(String);
    impl StrMatch for Prefix {
        fn matches(&self, s: &str) -> bool {
            s.starts_with(&self.0)
        }
    }

    fn leaf(ca: &DevCa, id: &str, f: impl FnOnce(&mut LeafRequest)) -> Issued {
        let mut req = LeafRequest::spiffe(SpiffeId::parse(id).unwrap(), Duration::from_secs(3600));
        f(&mut req);
        ca.issue(&req).unwrap()
    }

    fn der(pem: &str) -> Vec<CertificateDer<'static>> {
        crate::pem::certificates(pem.as_bytes()).unwrap()
    }

    fn validation(ca: &DevCa, sans: Vec<SanMatcher>) -> Validation {
        Validation {
            trust: Some(
                FileTrust::load(Data::Inline(ca.root_pem().as_bytes().to_vec()), None).unwrap(),
            ),
            san_matchers: sans,
            pins: vec![],
        }
    }

    fn uri(s: &str) -> SanMatcher {
        SanMatcher {
            san_type: Some(SanType::Uri),
            matcher: Arc::new(Exact(s.into())),
        }
    }

    fn check(v: &Validation, issued: &Issued) -> Result<(), Error> {
        let chain = der(&issued.cert_chain_pem);
        v.verify(
            &chain[0],
            &chain[1..],
            UnixTime::now(),
            webpki::KeyUsage::client_auth(),
        )
    }

    const GW: &str = "spiffe://cluster.local/ns/autolytiq/sa/api-gateway";

    #[test]
    fn chain_then_san() {
        let ca = DevCa::generate_root("ca", KeyAlgorithm::EcdsaP256).unwrap();
        let other = DevCa::generate_root("other", KeyAlgorithm::EcdsaP256).unwrap();
        let good = leaf(&ca, GW, |_| {});
        assert_eq!(check(&validation(&ca, vec![uri(GW)]), &good), Ok(()));
        // Any SAN when no matcher is configured.
        assert_eq!(check(&validation(&ca, vec![]), &good), Ok(()));
        // Wrong SAN.
        let v = validation(
            &ca,
            vec![uri("spiffe://cluster.local/ns/autolytiq/sa/deal")],
        );
        let e = check(&v, &good).unwrap_err();
        assert_eq!(classify(&e), Some(VerifyFailure::San));
        // Prefix on the SPIFFE ID (e.g. a whole namespace).
        let ns = SanMatcher {
            san_type: Some(SanType::Uri),
            matcher: Arc::new(Prefix("spiffe://cluster.local/ns/autolytiq/".into())),
        };
        assert_eq!(check(&validation(&ca, vec![ns]), &good), Ok(()));
        // A URI matcher does not look at DNS SANs.
        let dns_only = SanMatcher {
            san_type: Some(SanType::Dns),
            matcher: Arc::new(Exact(GW.into())),
        };
        assert!(check(&validation(&ca, vec![dns_only]), &good).is_err());
        // Legacy matchers try every type.
        let legacy = SanMatcher {
            san_type: None,
            matcher: Arc::new(Exact(GW.into())),
        };
        assert_eq!(check(&validation(&ca, vec![legacy]), &good), Ok(()));
        // Wrong CA.
        let e = check(&validation(&other, vec![uri(GW)]), &good).unwrap_err();
        assert_eq!(
            e,
            Error::InvalidCertificate(CertificateError::UnknownIssuer)
        );
        assert_eq!(classify(&e), Some(VerifyFailure::Chain));
        // No trust configured: only the SAN is checked.
        let no_trust = Validation {
            trust: None,
            san_matchers: vec![uri(GW)],
            pins: vec![],
        };
        assert_eq!(check(&no_trust, &leaf(&other, GW, |_| {})), Ok(()));
    }

    /// A SAN refusal names the certificate's SANs as Envoy's validator does, and is sent as
    /// `certificate_unknown` (Envoy's alert), not rustls' `access_denied`.
    #[test]
    fn san_mismatch_names_the_sans() {
        let ca = DevCa::generate_root("ca", KeyAlgorithm::EcdsaP256).unwrap();
        let good = leaf(&ca, GW, |r| r.dns_names = vec!["gw.example".into()]);
        let v = validation(&ca, vec![uri("spiffe://cluster.local/ns/x/sa/y")]);
        let e = check(&v, &good).unwrap_err();
        assert_eq!(classify(&e), Some(VerifyFailure::San));
        let Error::InvalidCertificate(c) = &e else {
            panic!("{e:?}")
        };
        assert_eq!(
            rustls::AlertDescription::from(c.clone()),
            rustls::AlertDescription::CertificateUnknown
        );
        let CertificateError::Other(o) = c else {
            panic!("{c:?}")
        };
        assert_eq!(
            o.0.to_string(),
            format!("verify cert failed: SAN matcher, certificate SANs are [{GW}, gw.example]")
        );
    }

    /// The verifiers report the peer's certificate (refused or not) to a capturing caller, and
    /// to nobody otherwise.
    #[test]
    fn capturing_sees_the_peer() {
        let ca = DevCa::generate_root("ca", KeyAlgorithm::EcdsaP256).unwrap();
        let other = DevCa::generate_root("other", KeyAlgorithm::EcdsaP256).unwrap();
        let issued = leaf(&other, GW, |_| {});
        let chain = der(&issued.cert_chain_pem);
        let verifier = ClientVerifier::new(validation(&ca, vec![]), true, false);
        let mut slot = Captured::default();
        let r = capturing(&mut slot, || {
            verifier.verify_client_cert(&chain[0], &[], UnixTime::now())
        });
        assert!(r.is_err());
        assert_eq!(slot.peer.as_ref(), Some(&chain[0]));
        // Outside `capturing` nothing is recorded (and nothing fails).
        let _ = verifier.verify_client_cert(&chain[0], &[], UnixTime::now());
        CAPTURE.with(|c| assert!(c.borrow().is_none()));
    }

    #[test]
    fn certificate_and_spki_pins() {
        use aws_lc_rs::digest::{SHA256, digest};
        use base64::Engine;
        let ca = DevCa::generate_root("ca", KeyAlgorithm::EcdsaP256).unwrap();
        let good = leaf(&ca, GW, |_| {});
        let other = leaf(&ca, GW, |_| {});
        let der = der(&good.cert_chain_pem)[0].clone();
        let hex = crate::info::hex(digest(&SHA256, &der).as_ref()).to_uppercase();
        let colons: Vec<String> = hex
            .as_bytes()
            .chunks(2)
            .map(|c| String::from_utf8(c.to_vec()).unwrap())
            .collect();
        let (_, parsed) = X509Certificate::from_der(&der).unwrap();
        let spki = base64::engine::general_purpose::STANDARD
            .encode(digest(&SHA256, parsed.public_key().raw).as_ref());
        for pin in [
            Pin::cert_hash(&colons.join(":")).unwrap(),
            Pin::spki_hash(&spki).unwrap(),
        ] {
            let mut v = validation(&ca, vec![]);
            v.pins = vec![pin];
            assert_eq!(check(&v, &good), Ok(()));
            let e = check(&v, &other).unwrap_err();
            assert_eq!(classify(&e), Some(VerifyFailure::CertHash));
        }
        assert!(Pin::cert_hash("abc").is_none());
        assert!(Pin::spki_hash("not base64!").is_none());
    }

    #[test]
    fn validity_period_is_checked() {
        let ca = DevCa::generate_root("ca", KeyAlgorithm::EcdsaP256).unwrap();
        let v = validation(&ca, vec![]);
        let now = ::time::OffsetDateTime::now_utc();
        let expired = leaf(&ca, GW, |r| {
            r.not_before = now - Duration::from_secs(7200);
            r.not_after = now - Duration::from_secs(3600);
        });
        assert_eq!(
            check(&v, &expired),
            Err(Error::InvalidCertificate(CertificateError::Expired))
        );
        let future = leaf(&ca, GW, |r| {
            r.not_before = now + Duration::from_secs(3600);
            r.not_after = now + Duration::from_secs(7200);
        });
        assert_eq!(
            check(&v, &future),
            Err(Error::InvalidCertificate(CertificateError::NotValidYet))
        );
    }

    #[test]
    fn intermediates_are_followed() {
        let root = DevCa::generate_root("root", KeyAlgorithm::EcdsaP256).unwrap();
        let mid = root.intermediate("mid", KeyAlgorithm::EcdsaP256).unwrap();
        let issued = leaf(&mid, GW, |_| {});
        assert_eq!(check(&validation(&root, vec![uri(GW)]), &issued), Ok(()));
    }

    #[test]
    fn dns_wildcards() {
        assert!(dns_name_match("api.example.com", "*.example.com"));
        assert!(dns_name_match("API.example.com", "api.EXAMPLE.com"));
        assert!(!dns_name_match("a.b.example.com", "*.example.com"));
        assert!(!dns_name_match("example.com", "*.example.com"));
        let ca = DevCa::generate_root("ca", KeyAlgorithm::EcdsaP256).unwrap();
        let mut req = LeafRequest::new(Duration::from_secs(60));
        req.dns_names = vec!["*.example.com".into()];
        let issued = ca.issue(&req).unwrap();
        let m = SanMatcher {
            san_type: Some(SanType::Dns),
            matcher: Arc::new(Exact("api.example.com".into())),
        };
        assert_eq!(check(&validation(&ca, vec![m]), &issued), Ok(()));
    }

    /// A full in-memory rustls handshake with both verifiers: mTLS with SPIFFE SANs.
    #[test]
    fn mutual_tls_handshake_in_memory() {
        use crate::source::load_identity;
        use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection};
        let ca = DevCa::generate_root("ca", KeyAlgorithm::EcdsaP256).unwrap();
        let server_id = "spiffe://cluster.local/ns/autolytiq/sa/deal";
        let s = leaf(&ca, server_id, |_| {});
        let c = leaf(&ca, GW, |_| {});
        let si = load_identity(s.cert_chain_pem.as_bytes(), s.key_pem.as_bytes(), "s").unwrap();
        let ci = load_identity(c.cert_chain_pem.as_bytes(), c.key_pem.as_bytes(), "c").unwrap();
        let run = |client_expects: &str| -> Result<(), Error> {
            let scfg = ServerConfig::builder_with_provider(crate::provider())
                .with_safe_default_protocol_versions()?
                .with_client_cert_verifier(Arc::new(ClientVerifier::new(
                    validation(&ca, vec![uri(GW)]),
                    true,
                    false,
                )))
                .with_single_cert(
                    si.key.cert.clone(),
                    crate::pem::private_key(s.key_pem.as_bytes()).unwrap(),
                )?;
            let ccfg = ClientConfig::builder_with_provider(crate::provider())
                .with_safe_default_protocol_versions()?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ServerVerifier {
                    validation: validation(&ca, vec![uri(client_expects)]),
                }))
                .with_client_auth_cert(
                    ci.key.cert.clone(),
                    crate::pem::private_key(c.key_pem.as_bytes()).unwrap(),
                )?;
            let mut server = ServerConnection::new(Arc::new(scfg))?;
            let mut client =
                ClientConnection::new(Arc::new(ccfg), "deal.autolytiq".try_into().unwrap())?;
            for _ in 0..10 {
                let mut buf = Vec::new();
                client.write_tls(&mut buf).unwrap();
                server.read_tls(&mut buf.as_slice()).unwrap();
                server.process_new_packets()?;
                let mut buf = Vec::new();
                server.write_tls(&mut buf).unwrap();
                client.read_tls(&mut buf.as_slice()).unwrap();
                client.process_new_packets()?;
                if !client.is_handshaking() && !server.is_handshaking() {
                    let peer = server.peer_certificates().unwrap();
                    let d = crate::info::CertDetails::parse(&peer[0]).unwrap();
                    assert_eq!(d.uri_sans().next(), Some(GW));
                    return Ok(());
                }
            }
            panic!("handshake did not finish");
        };
        assert_eq!(run(server_id), Ok(()));
        // The client expected another service account: the client refuses the server.
        let e = run("spiffe://cluster.local/ns/autolytiq/sa/auth").unwrap_err();
        assert_eq!(classify(&e), Some(VerifyFailure::San));
    }
}
