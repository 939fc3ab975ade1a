//! What translation reads besides the protos it translates, passed explicitly (no
//! process-global registry): the bootstrap's runtime layer, its static secrets (which LDS and CDS
//! resources may name as well as the bootstrap's own), the hook that reports certificate
//! rotations (set by the server once its stats exist), and the contents of the files and
//! variables the translated resources name (read beforehand by the loader, see `inputs`).

use super::inputs::Inputs;
use super::runtime::Runtime;
use super::tls::StaticSecrets;
use super::xds::SdsSource;
use remora_certs::source::{CertificateSource, OnReload, ReloadEvent, TrustSource};
use std::sync::{Arc, OnceLock};

/// The translation context: built with the bootstrap; each later xDS translation uses a copy
/// with its own [`Inputs`].
#[derive(Debug, Clone)]
pub struct TranslateContext {
    pub runtime: Arc<Runtime>,
    pub secrets: Arc<StaticSecrets>,
    pub reload: ReloadHook,
    /// Where secrets named with an `sds_config` come from.
    pub sds: Arc<dyn SecretSources>,
    /// The files and variables this translation may read.
    pub inputs: Arc<Inputs>,
    /// The bootstrap's DNS resolver: the one of DNS clusters that configure none.
    pub dns_resolver: Arc<super::dns_resolver::DnsResolver>,
}

impl TranslateContext {
    /// The same context with other inputs (one xDS translation's).
    pub fn with_inputs(&self, inputs: Arc<Inputs>) -> Self {
        Self {
            inputs,
            ..self.clone()
        }
    }
}

/// The certificate and trust sources of SDS secrets, one per (source, name), shared by every TLS
/// context naming it (the xDS runtime's registry, which subscribes to what is wanted).
pub trait SecretSources: Send + Sync + std::fmt::Debug {
    fn certificate(&self, source: &SdsSource, name: &str) -> Arc<dyn CertificateSource>;
    fn trust(&self, source: &SdsSource, name: &str) -> Arc<dyn TrustSource>;
}

/// A context for unit tests of translation: no runtime layer, static secret, SDS secret or
/// input.
#[cfg(test)]
impl TranslateContext {
    pub fn for_tests() -> Self {
        Self {
            runtime: Default::default(),
            secrets: Default::default(),
            reload: Default::default(),
            sds: Arc::new(NoSecretSources),
            inputs: Arc::new(Inputs::none()),
            dns_resolver: Default::default(),
        }
    }
}

/// Unit tests of translation that name no SDS secret (model/ cannot build the runtime's registry).
#[cfg(test)]
#[derive(Debug, Default)]
pub struct NoSecretSources;

#[cfg(test)]
impl SecretSources for NoSecretSources {
    fn certificate(&self, _: &SdsSource, name: &str) -> Arc<dyn CertificateSource> {
        panic!("this test names no SDS secret, but translation asked for '{name}'")
    }
    fn trust(&self, _: &SdsSource, name: &str) -> Arc<dyn TrustSource> {
        panic!("this test names no SDS secret, but translation asked for '{name}'")
    }
}

/// Where certificate-file reloads are reported. Watched certificates created before the server
/// set the hook report to it too (they hold the hook, not a copy of its value).
#[derive(Clone, Default)]
pub struct ReloadHook(Arc<OnceLock<OnReload>>);

impl std::fmt::Debug for ReloadHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ReloadHook")
            .field(&self.0.get().is_some())
            .finish()
    }
}

impl ReloadHook {
    /// Set where reloads go (the first call wins).
    pub fn set(&self, hook: OnReload) {
        let _ = self.0.set(hook);
    }

    /// The callback a certificate source is given.
    pub fn callback(&self) -> Option<OnReload> {
        let cell = self.0.clone();
        Some(Arc::new(move |e: &ReloadEvent| {
            if let Some(h) = cell.get() {
                h(e)
            }
        }))
    }
}
