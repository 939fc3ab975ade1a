//! A development certificate authority on rcgen: a root (optionally an intermediate under it)
//! that issues Istio-shaped workload certificates — exactly one URI SAN (the SPIFFE ID), usable
//! for both server and client auth — and writes Istio's file-mounted layout
//! (`cert-chain.pem`, `key.pem`, `root-cert.pem`).

use crate::SpiffeId;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use std::path::Path;
use std::time::Duration;
use time::OffsetDateTime;

pub const ROOT_CERT: &str = "root-cert.pem";
pub const ROOT_KEY: &str = "root-key.pem";
/// An intermediate CA directory also holds its chain up to (not including) the root.
pub const CA_CHAIN: &str = "ca-chain.pem";
pub const CERT_CHAIN: &str = "cert-chain.pem";
pub const KEY: &str = "key.pem";

/// Clock-skew allowance: leaf certificates become valid this long before they are issued.
const BACKDATE: Duration = Duration::from_secs(5 * 60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyAlgorithm {
    #[default]
    EcdsaP256,
    Rsa2048,
}

impl std::str::FromStr for KeyAlgorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "ecdsa" | "ecdsa-p256" | "p256" | "p-256" => Ok(Self::EcdsaP256),
            "rsa" | "rsa2048" | "rsa-2048" => Ok(Self::Rsa2048),
            _ => Err(format!(
                "unknown key algorithm '{s}' (ecdsa-p256 or rsa-2048)"
            )),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("a leaf certificate needs a SPIFFE ID or at least one DNS name")]
    NoIdentity,
}

/// A CA that can issue certificates: its signing key and certificate, plus the chain from it up
/// to the root (empty for a root) and the root certificate.
pub struct DevCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    /// Intermediates between this CA and the root, this CA's parent first.
    parents_pem: Vec<String>,
    root_pem: String,
}

/// What a leaf certificate is for.
#[derive(Debug, Clone)]
pub struct LeafRequest {
    pub spiffe_id: Option<SpiffeId>,
    pub dns_names: Vec<String>,
    pub algorithm: KeyAlgorithm,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl LeafRequest {
    /// Valid from a few minutes ago for `ttl`.
    pub fn new(ttl: Duration) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            spiffe_id: None,
            dns_names: Vec::new(),
            algorithm: KeyAlgorithm::EcdsaP256,
            not_before: now - BACKDATE,
            not_after: now + ttl,
        }
    }

    pub fn spiffe(id: SpiffeId, ttl: Duration) -> Self {
        Self {
            spiffe_id: Some(id),
            ..Self::new(ttl)
        }
    }
}

/// An issued certificate: chain (leaf first, then intermediates), key, and the root.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_chain_pem: String,
    pub key_pem: String,
    pub root_pem: String,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CaError + '_ {
    move |source| CaError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn new_key(alg: KeyAlgorithm) -> Result<KeyPair, rcgen::Error> {
    match alg {
        KeyAlgorithm::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
        KeyAlgorithm::Rsa2048 => {
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        }
    }
}

fn random_serial() -> SerialNumber {
    let mut b = [0u8; 16];
    aws_lc_rs::rand::fill(&mut b).expect("system randomness");
    b[0] &= 0x7f; // positive
    b[0] |= 0x01; // and 16 bytes long
    SerialNumber::from_slice(&b)
}

fn ca_params(name: &str, ttl: Duration, path_len: Option<u8>) -> CertificateParams {
    let now = OffsetDateTime::now_utc();
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "remora dev CA");
    dn.push(DnType::CommonName, name);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.serial_number = Some(random_serial());
    p.not_before = now - BACKDATE;
    p.not_after = now + ttl;
    p
}

/// Write a file atomically (temporary file + rename), so a watcher never sees half of it.
pub fn write_atomic(path: &Path, contents: &[u8], private: bool) -> Result<(), CaError> {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, contents).map_err(io_err(&tmp))?;
    if private {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
            .map_err(io_err(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

// === impl DevCa ===

impl DevCa {
    /// A new self-signed root, valid ten years.
    pub fn generate_root(name: &str, alg: KeyAlgorithm) -> Result<Self, CaError> {
        let key = new_key(alg)?;
        let params = ca_params(name, Duration::from_secs(10 * 365 * 86400), None);
        let cert = params.self_signed(&key)?;
        let pem = cert.pem();
        Ok(Self {
            issuer: Issuer::new(params, key),
            cert_pem: pem.clone(),
            parents_pem: Vec::new(),
            root_pem: pem,
        })
    }

    /// An intermediate CA signed by this one (Istio's plugged-in CA shape), valid five years.
    pub fn intermediate(&self, name: &str, alg: KeyAlgorithm) -> Result<Self, CaError> {
        let key = new_key(alg)?;
        let params = ca_params(name, Duration::from_secs(5 * 365 * 86400), Some(0));
        let cert = params.signed_by(&key, &self.issuer)?;
        let mut parents = Vec::new();
        if !self.is_root() {
            parents.push(self.cert_pem.clone());
            parents.extend(self.parents_pem.iter().cloned());
        }
        Ok(Self {
            issuer: Issuer::new(params, key),
            cert_pem: cert.pem(),
            parents_pem: parents,
            root_pem: self.root_pem.clone(),
        })
    }

    fn is_root(&self) -> bool {
        self.cert_pem == self.root_pem
    }

    /// Load a CA written by [`DevCa::write`].
    pub fn load(dir: &Path) -> Result<Self, CaError> {
        let read = |name: &str| {
            let p = dir.join(name);
            std::fs::read_to_string(&p).map_err(io_err(&p))
        };
        let root_pem = read(ROOT_CERT)?;
        let key_path = dir.join(ROOT_KEY);
        let key_pem = read(ROOT_KEY)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| CaError::Invalid {
            path: key_path.display().to_string(),
            reason: e.to_string(),
        })?;
        // An intermediate directory: ca-chain.pem holds this CA's certificate then its parents.
        let chain_path = dir.join(CA_CHAIN);
        let (cert_pem, parents_pem) = if chain_path.exists() {
            let chain = std::fs::read(&chain_path).map_err(io_err(&chain_path))?;
            let ders = crate::pem::certificates(&chain).map_err(|e| CaError::Invalid {
                path: chain_path.display().to_string(),
                reason: e.to_string(),
            })?;
            let pems: Vec<String> = ders.iter().map(|d| der_to_pem(d)).collect();
            (pems[0].clone(), pems[1..].to_vec())
        } else {
            (root_pem.clone(), Vec::new())
        };
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| CaError::Invalid {
            path: dir.join(ROOT_CERT).display().to_string(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            issuer,
            cert_pem,
            parents_pem,
            root_pem,
        })
    }

    /// Write `root-cert.pem` and `root-key.pem` (0600); an intermediate also writes `ca-chain.pem`.
    pub fn write(&self, dir: &Path) -> Result<(), CaError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        write_atomic(&dir.join(ROOT_CERT), self.root_pem.as_bytes(), false)?;
        write_atomic(
            &dir.join(ROOT_KEY),
            self.issuer.key().serialize_pem().as_bytes(),
            true,
        )?;
        if !self.is_root() {
            let mut chain = self.cert_pem.clone();
            for p in &self.parents_pem {
                chain.push_str(p);
            }
            write_atomic(&dir.join(CA_CHAIN), chain.as_bytes(), false)?;
        }
        Ok(())
    }

    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// This CA's own certificate.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issue a leaf: one URI SAN (the SPIFFE ID) and any DNS names, server and client auth.
    pub fn issue(&self, req: &LeafRequest) -> Result<Issued, CaError> {
        if req.spiffe_id.is_none() && req.dns_names.is_empty() {
            return Err(CaError::NoIdentity);
        }
        let key = new_key(req.algorithm)?;
        let mut p = CertificateParams::default();
        // Istio's workload certificates have an empty subject; DNS-named ones carry a CN.
        let mut dn = DistinguishedName::new();
        if let Some(name) = req.dns_names.first() {
            dn.push(DnType::CommonName, name.as_str());
        }
        p.distinguished_name = dn;
        if let Some(id) = &req.spiffe_id {
            p.subject_alt_names
                .push(SanType::URI(id.as_str().try_into()?));
        }
        for d in &req.dns_names {
            p.subject_alt_names
                .push(SanType::DnsName(d.as_str().try_into()?));
        }
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.serial_number = Some(random_serial());
        p.not_before = req.not_before;
        p.not_after = req.not_after;
        p.use_authority_key_identifier_extension = true;
        let cert = p.signed_by(&key, &self.issuer)?;
        let mut chain = cert.pem();
        if !self.is_root() {
            chain.push_str(&self.cert_pem);
            for c in &self.parents_pem {
                chain.push_str(c);
            }
        }
        Ok(Issued {
            cert_chain_pem: chain,
            key_pem: key.serialize_pem(),
            root_pem: self.root_pem.clone(),
        })
    }
}

fn der_to_pem(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

// === impl Issued ===

impl Issued {
    /// Istio's file-mounted layout: `cert-chain.pem`, `key.pem` (0600), `root-cert.pem`. The
    /// key is written first and the chain last, each atomically, so a watcher sees the new pair
    /// complete when the chain changes.
    pub fn write_istio_layout(&self, dir: &Path) -> Result<(), CaError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        write_atomic(&dir.join(ROOT_CERT), self.root_pem.as_bytes(), false)?;
        write_atomic(&dir.join(KEY), self.key_pem.as_bytes(), true)?;
        write_atomic(&dir.join(CERT_CHAIN), self.cert_chain_pem.as_bytes(), false)
    }
}

/// `30s`, `15m`, `24h`, `90d` (a bare number is seconds).
pub fn parse_ttl(s: &str) -> Result<Duration, String> {
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration like 30m, 24h or 90d"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("'{s}': unit must be s, m, h or d")),
    };
    if n == 0 {
        return Err(format!("'{s}': must be positive"));
    }
    Ok(Duration::from_secs(n * mult))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Scratch;
    use x509_parser::prelude::*;

    fn parse_leaf(chain_pem: &str) -> Vec<u8> {
        crate::pem::certificates(chain_pem.as_bytes()).unwrap()[0].to_vec()
    }

    #[test]
    fn leaf_is_istio_shaped() {
        let ca = DevCa::generate_root("test", KeyAlgorithm::EcdsaP256).unwrap();
        let id = SpiffeId::parse("spiffe://cluster.local/ns/autolytiq/sa/api-gateway").unwrap();
        let issued = ca
            .issue(&LeafRequest::spiffe(id, Duration::from_secs(86400)))
            .unwrap();
        let der = parse_leaf(&issued.cert_chain_pem);
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let sans = cert.subject_alternative_name().unwrap().unwrap();
        let names: Vec<_> = sans.value.general_names.iter().collect();
        assert_eq!(names.len(), 1);
        assert!(matches!(
            names[0],
            GeneralName::URI("spiffe://cluster.local/ns/autolytiq/sa/api-gateway")
        ));
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        assert!(!cert.is_ca());
        let validity = cert.validity().time_to_expiration().unwrap();
        assert!(validity.whole_hours() >= 23 && validity.whole_hours() <= 24);
        assert_eq!(issued.root_pem, ca.root_pem());
    }

    #[test]
    fn ca_round_trips_through_its_directory_and_rsa_works() {
        let dir = Scratch::new();
        let ca = DevCa::generate_root("test", KeyAlgorithm::Rsa2048).unwrap();
        ca.write(dir.path()).unwrap();
        let loaded = DevCa::load(dir.path()).unwrap();
        assert_eq!(loaded.root_pem(), ca.root_pem());
        let mut req = LeafRequest::new(Duration::from_secs(3600));
        req.dns_names = vec!["backend.example.com".into()];
        req.algorithm = KeyAlgorithm::Rsa2048;
        let issued = loaded.issue(&req).unwrap();
        issued.write_istio_layout(&dir.path().join("leaf")).unwrap();
        for f in [CERT_CHAIN, KEY, ROOT_CERT] {
            assert!(dir.path().join("leaf").join(f).exists(), "{f}");
        }
        assert!(issued.key_pem.contains("PRIVATE KEY"));
    }

    #[test]
    fn intermediate_chain_is_leaf_then_intermediate() {
        let dir = Scratch::new();
        let root = DevCa::generate_root("root", KeyAlgorithm::EcdsaP256).unwrap();
        let mid = root.intermediate("mid", KeyAlgorithm::EcdsaP256).unwrap();
        mid.write(dir.path()).unwrap();
        let mid = DevCa::load(dir.path()).unwrap();
        let issued = mid
            .issue(&LeafRequest::spiffe(
                SpiffeId::parse("spiffe://td/ns/a/sa/b").unwrap(),
                Duration::from_secs(60),
            ))
            .unwrap();
        let chain = crate::pem::certificates(issued.cert_chain_pem.as_bytes()).unwrap();
        assert_eq!(chain.len(), 2);
        assert_eq!(issued.root_pem, root.root_pem());
    }

    #[test]
    fn ttl_parsing() {
        assert_eq!(parse_ttl("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_ttl("90d"), Ok(Duration::from_secs(90 * 86400)));
        assert_eq!(parse_ttl("45"), Ok(Duration::from_secs(45)));
        assert!(parse_ttl("1w").is_err());
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("h").is_err());
        assert!(matches!(
            DevCa::generate_root("x", KeyAlgorithm::EcdsaP256)
                .unwrap()
                .issue(&LeafRequest::new(Duration::from_secs(1))),
            Err(CaError::NoIdentity)
        ));
    }
}
