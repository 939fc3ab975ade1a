//! PEM → DER for certificate chains, trust bundles and private keys (rustls-pki-types'
//! `PemObject`), with errors that say what was wrong with which input.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum PemError {
    #[error("no PEM certificate found")]
    NoCertificate,
    #[error("no PEM private key found (PKCS#8, PKCS#1 RSA or SEC1 EC)")]
    NoPrivateKey,
    #[error("malformed PEM: {0}")]
    Malformed(String),
    #[error("certificate {index} is not a valid X.509 certificate: {reason}")]
    BadCertificate { index: usize, reason: String },
}

/// Every certificate in a PEM document, in order (a chain: leaf first; or a trust bundle).
pub fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PemError::Malformed(e.to_string()))?;
    if certs.is_empty() {
        return Err(PemError::NoCertificate);
    }
    for (index, c) in certs.iter().enumerate() {
        if let Err(e) = x509_parser::parse_x509_certificate(c) {
            return Err(PemError::BadCertificate {
                index,
                reason: e.to_string(),
            });
        }
    }
    Ok(certs)
}

/// The first private key in a PEM document.
pub fn private_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, PemError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => PemError::NoPrivateKey,
        other => PemError::Malformed(other.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_problem() {
        assert!(matches!(certificates(b""), Err(PemError::NoCertificate)));
        assert!(matches!(
            certificates(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
            Err(PemError::BadCertificate { index: 0, .. })
        ));
        assert!(matches!(
            private_key(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
            Err(PemError::NoPrivateKey)
        ));
        // Half a PEM block (a file caught mid-write).
        assert!(certificates(b"-----BEGIN CERTIFICATE-----\nMIIB").is_err());
    }
}
