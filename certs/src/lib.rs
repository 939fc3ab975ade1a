//! Certificates for remora: SPIFFE identities, a development CA (rcgen), certificate sources
//! (files with rotation now; SDS and the Istio CA plug into [`source::CertificateSource`]), and
//! rustls verifiers that check the chain and then Envoy's subject-alt-name matchers.
//!
//! aws-lc-rs is the only crypto provider: every rustls config is built from [`provider()`]
//! through `builder_with_provider`, never from a process-wide default.

#![forbid(unsafe_code)]

pub mod ca;
pub mod info;
pub mod pem;
pub mod source;
pub mod spiffe;
pub mod verify;

pub use spiffe::SpiffeId;

use std::sync::{Arc, OnceLock};

/// The one crypto provider (aws-lc-rs) shared by every TLS context in the process.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static P: OnceLock<Arc<rustls::crypto::CryptoProvider>> = OnceLock::new();
    P.get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}

#[cfg(test)]
pub(crate) mod testutil {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicUsize, Ordering};

    static N: AtomicUsize = AtomicUsize::new(0);

    /// A scratch directory removed on drop.
    pub struct Scratch(pub PathBuf);

    impl Scratch {
        pub fn new() -> Self {
            let p = std::env::temp_dir().join(format!(
                "remora-certs-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&p).unwrap();
            Self(p)
        }
        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
