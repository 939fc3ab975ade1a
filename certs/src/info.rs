//! What a certificate says, parsed once: serial, subject/issuer, subject alt names, validity and
//! fingerprint — for SAN matching, access-log commands, `/certs` and connection metadata.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use x509_parser::prelude::*;

/// A subject alternative name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum San {
    Uri(String),
    Dns(String),
    Email(String),
    Ip(IpAddr),
    /// otherName: its type OID (dotted) and, when it is a string, its value.
    Other {
        oid: String,
        value: Option<String>,
    },
}

impl San {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            San::Uri(s) | San::Dns(s) | San::Email(s) => Some(s),
            San::Other { value, .. } => value.as_deref(),
            San::Ip(_) => None,
        }
    }
}

/// A parsed certificate.
#[derive(Debug, Clone)]
pub struct CertDetails {
    /// Lowercase hex without separators (Envoy's `serial_number`).
    pub serial: String,
    /// RFC 2253 form, as Envoy's `%DOWNSTREAM_PEER_SUBJECT%`.
    pub subject: String,
    pub issuer: String,
    pub sans: Vec<San>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// SHA-256 of the DER, lowercase hex.
    pub sha256: String,
    /// SHA-1 of the DER, lowercase hex (`%DOWNSTREAM_PEER_FINGERPRINT_1%`).
    pub sha1: String,
    pub is_ca: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("not a valid X.509 certificate: {0}")]
pub struct ParseError(String);

fn to_system(t: ASN1Time) -> SystemTime {
    let secs = t.timestamp();
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

/// SHA-256 of `data`, in lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data).as_ref())
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

// === impl CertDetails ===

impl CertDetails {
    pub fn parse(der: &[u8]) -> Result<Self, ParseError> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| ParseError(e.to_string()))?;
        let mut sans = Vec::new();
        if let Ok(Some(ext)) = cert.subject_alternative_name() {
            for n in &ext.value.general_names {
                sans.push(match n {
                    GeneralName::URI(u) => San::Uri(u.to_string()),
                    GeneralName::DNSName(d) => San::Dns(d.to_string()),
                    GeneralName::RFC822Name(e) => San::Email(e.to_string()),
                    GeneralName::IPAddress(b) => match b.len() {
                        4 => San::Ip(IpAddr::from(<[u8; 4]>::try_from(*b).expect("4 bytes"))),
                        16 => San::Ip(IpAddr::from(<[u8; 16]>::try_from(*b).expect("16 bytes"))),
                        _ => continue,
                    },
                    GeneralName::OtherName(oid, value) => San::Other {
                        oid: oid.to_id_string(),
                        value: other_name_value(value),
                    },
                    _ => continue,
                });
            }
        }
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
        Ok(Self {
            serial: cert.raw_serial_as_string().replace(':', ""),
            subject: rfc2253(cert.subject()),
            issuer: rfc2253(cert.issuer()),
            sans,
            not_before: to_system(cert.validity().not_before),
            not_after: to_system(cert.validity().not_after),
            sha256: hex(digest.as_ref()),
            sha1: hex(
                aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, der)
                    .as_ref(),
            ),
            is_ca: cert.is_ca(),
        })
    }

    pub fn uri_sans(&self) -> impl Iterator<Item = &str> {
        self.sans.iter().filter_map(|s| match s {
            San::Uri(u) => Some(u.as_str()),
            _ => None,
        })
    }

    pub fn dns_sans(&self) -> impl Iterator<Item = &str> {
        self.sans.iter().filter_map(|s| match s {
            San::Dns(u) => Some(u.as_str()),
            _ => None,
        })
    }

    /// Whole days until expiry (0 once expired), as Envoy's `days_until_expiration`.
    pub fn days_until_expiration(&self, now: SystemTime) -> u64 {
        self.not_after
            .duration_since(now)
            .map(|d| d.as_secs() / 86400)
            .unwrap_or(0)
    }
}

/// An otherName value that is a (UTF8/IA5/printable) string.
pub fn other_name_value(value: &[u8]) -> Option<String> {
    // value is the [0] EXPLICIT wrapper's content: a DER string TLV.
    let (_, any) = x509_parser::der_parser::parse_der(value).ok()?;
    let inner = match any.content {
        x509_parser::der_parser::ber::BerObjectContent::Unknown(_) => {
            x509_parser::der_parser::parse_der(any.as_slice().ok()?)
                .ok()?
                .1
        }
        _ => any,
    };
    inner.as_str().ok().map(str::to_string)
}

/// RFC 2253 order (most specific first), as OpenSSL's `XN_FLAG_RFC2253` prints it.
fn rfc2253(name: &X509Name<'_>) -> String {
    let mut parts: Vec<String> = Vec::new();
    for rdn in name.iter_rdn() {
        let mut attrs = Vec::new();
        for a in rdn.iter() {
            let key = match a.attr_type().to_id_string().as_str() {
                "2.5.4.3" => "CN".to_string(),
                "2.5.4.6" => "C".to_string(),
                "2.5.4.7" => "L".to_string(),
                "2.5.4.8" => "ST".to_string(),
                "2.5.4.10" => "O".to_string(),
                "2.5.4.11" => "OU".to_string(),
                "1.2.840.113549.1.9.1" => "emailAddress".to_string(),
                other => other.to_string(),
            };
            let value = a.as_str().unwrap_or("").replace(',', "\\,");
            attrs.push(format!("{key}={value}"));
        }
        parts.push(attrs.join("+"));
    }
    parts.reverse();
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::{DevCa, KeyAlgorithm, LeafRequest};

    #[test]
    fn details_of_an_issued_leaf() {
        let ca = DevCa::generate_root("unit", KeyAlgorithm::EcdsaP256).unwrap();
        let mut req = LeafRequest::spiffe(
            crate::SpiffeId::parse("spiffe://cluster.local/ns/a/sa/b").unwrap(),
            Duration::from_secs(3 * 86400 + 60),
        );
        req.dns_names = vec!["b.a.svc".into()];
        let issued = ca.issue(&req).unwrap();
        let der = crate::pem::certificates(issued.cert_chain_pem.as_bytes()).unwrap();
        let d = CertDetails::parse(&der[0]).unwrap();
        assert_eq!(
            d.uri_sans().collect::<Vec<_>>(),
            ["spiffe://cluster.local/ns/a/sa/b"]
        );
        assert_eq!(d.dns_sans().collect::<Vec<_>>(), ["b.a.svc"]);
        assert_eq!(d.days_until_expiration(SystemTime::now()), 3);
        assert_eq!(d.serial.len(), 32);
        assert_eq!(d.sha256.len(), 64);
        assert_eq!(d.subject, "CN=b.a.svc");
        assert_eq!(d.issuer, "CN=unit,O=remora dev CA");
        assert!(!d.is_ca);
        let root = crate::pem::certificates(ca.root_pem().as_bytes()).unwrap();
        assert!(CertDetails::parse(&root[0]).unwrap().is_ca);
    }
}
