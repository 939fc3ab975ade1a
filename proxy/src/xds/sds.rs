//! SDS: certificates and trusted CAs delivered as `Secret` resources (over ADS, or a separate
//! stream to a cluster such as Istio's `sds-grpc`). They are certificate and trust sources for
//! the TLS contexts (crate `remora-certs`): a rotated secret is used by the next handshake; a
//! secret that does not parse, or whose key does not match its certificate, is NACKed and the
//! previous one stays.

use crate::model::context::SecretSources;
use crate::model::xds::SdsSource;
use arc_swap::ArcSwapOption;
use prost::Message;
use remora_certs::source::{
    CertificateSource, Followers, Identity, OnChange, TrustBundle, TrustSource,
};
use remora_xds::Any;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock, Weak};

/// A certificate and key from SDS (`None` until the secret arrives).
#[derive(Debug)]
pub struct SdsCertificate {
    name: String,
    current: ArcSwapOption<Identity>,
    followers: Followers,
}

impl CertificateSource for SdsCertificate {
    fn current(&self) -> Option<Arc<Identity>> {
        self.current.load_full()
    }
    fn origin(&self) -> String {
        format!("sds:{}", self.name)
    }
    fn follow(&self, f: &OnChange) {
        self.followers.add(f);
    }
}

/// Trusted CAs from SDS (a `validation_context` secret's `trusted_ca`).
#[derive(Debug)]
pub struct SdsTrust {
    name: String,
    current: ArcSwapOption<TrustBundle>,
    followers: Followers,
}

impl TrustSource for SdsTrust {
    fn current(&self) -> Option<Arc<TrustBundle>> {
        self.current.load_full()
    }
    fn origin(&self) -> String {
        format!("sds:{}", self.name)
    }
    fn follow(&self, f: &OnChange) {
        self.followers.add(f);
    }
}

#[derive(Default)]
struct Entry {
    certs: Vec<Weak<SdsCertificate>>,
    trusts: Vec<Weak<SdsTrust>>,
}

/// The SDS secrets TLS contexts name, by source and name: one certificate or trust source per
/// secret, shared by every context naming it, and the subscription the xDS runtime keeps for
/// them. Held by the translation context (`model::context::TranslateContext::sds`).
#[derive(Default)]
pub struct SdsRegistry {
    entries: Mutex<HashMap<(SdsSource, String), Entry>>,
    /// Called when a new secret name is wanted (the xDS runtime subscribes to it).
    on_change: OnceLock<Box<dyn Fn() + Send + Sync>>,
}

impl std::fmt::Debug for SdsRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SdsRegistry").finish_non_exhaustive()
    }
}

impl SecretSources for SdsRegistry {
    fn certificate(&self, source: &SdsSource, name: &str) -> Arc<dyn CertificateSource> {
        let mut r = self.lock();
        let e = r.entry((source.clone(), name.to_string())).or_default();
        if let Some(c) = e.certs.iter().find_map(Weak::upgrade) {
            return c;
        }
        let c = Arc::new(SdsCertificate {
            name: name.to_string(),
            current: ArcSwapOption::empty(),
            followers: Followers::default(),
        });
        e.certs.push(Arc::downgrade(&c));
        drop(r);
        self.notify();
        c
    }

    fn trust(&self, source: &SdsSource, name: &str) -> Arc<dyn TrustSource> {
        let mut r = self.lock();
        let e = r.entry((source.clone(), name.to_string())).or_default();
        if let Some(t) = e.trusts.iter().find_map(Weak::upgrade) {
            return t;
        }
        let t = Arc::new(SdsTrust {
            name: name.to_string(),
            current: ArcSwapOption::empty(),
            followers: Followers::default(),
        });
        e.trusts.push(Arc::downgrade(&t));
        drop(r);
        self.notify();
        t
    }
}

impl SdsRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(SdsSource, String), Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where to report newly wanted names (set once, by the xDS runtime).
    pub fn on_change(&self, f: impl Fn() + Send + Sync + 'static) {
        let _ = self.on_change.set(Box::new(f));
    }

    fn notify(&self) {
        if let Some(f) = self.on_change.get() {
            f();
        }
    }

    /// Secret names wanted from each source.
    pub fn wanted(&self) -> HashMap<SdsSource, BTreeSet<String>> {
        let mut r = self.lock();
        r.retain(|_, e| {
            e.certs.retain(|w| w.strong_count() > 0);
            e.trusts.retain(|w| w.strong_count() > 0);
            !(e.certs.is_empty() && e.trusts.is_empty())
        });
        let mut out: HashMap<SdsSource, BTreeSet<String>> = HashMap::new();
        for (source, name) in r.keys() {
            out.entry(source.clone()).or_default().insert(name.clone());
        }
        out
    }
}

/// A secret's DataSource (inline as istio-agent sends them, or a file), read now.
fn data(ds: &Option<crate::model::pb::core::DataSource>) -> Result<Vec<u8>, String> {
    let root = crate::config::FieldPath::root();
    crate::config::inputs::translate(|inputs| crate::model::tls::tls_data(&root, ds, &inputs))
        .map_err(|e| e.to_string().trim_start_matches(": ").to_string())?
        .read()
        .map_err(|e| e.to_string())
}

/// An SDS update from `source`: each secret is installed once it checks out; one that does not
/// is reported (NACK) and its previous version stays.
pub fn apply(
    registry: &SdsRegistry,
    dump: &super::DumpCell,
    source: &SdsSource,
    version: &str,
    resources: Vec<Any>,
) -> Result<(), Vec<remora_xds::client::Refused>> {
    let mut refused = Vec::new();
    for (i, any) in resources.iter().enumerate() {
        let mut errors = Vec::new();
        apply_one(registry, dump, source, version, i, any, &mut errors);
        refused.extend(
            errors
                .into_iter()
                .map(|message| remora_xds::client::Refused { index: i, message }),
        );
    }
    super::outcome(refused)
}

/// One secret of an SDS update; its errors go to `errors`. A secret nobody asked for (no
/// listener or cluster names it any more) is skipped.
fn apply_one(
    registry: &SdsRegistry,
    dump: &super::DumpCell,
    source: &SdsSource,
    version: &str,
    i: usize,
    any: &Any,
    errors: &mut Vec<String>,
) {
    use crate::model::pb::tls::secret::Type;
    let secret = match decode_secret(i, any) {
        Ok(s) => s,
        Err(e) => return errors.push(e),
    };
    let name = secret.name.clone();
    let Some((certs, trusts)) = wanted_by(registry, source, &name) else {
        return;
    };
    // A secret of the other kind than its users want is refused (Envoy reads it as the kind
    // it wants, finds it incomplete, and NACKs).
    match &secret.r#type {
        Some(Type::ValidationContext(_)) if !certs.is_empty() => {
            return errors.push(format!(
                "Secret '{name}': is a validation_context, but a TLS context wants it as its certificate (tls_certificate_sds_secret_configs)"
            ));
        }
        Some(Type::TlsCertificate(_)) if !trusts.is_empty() => {
            return errors.push(format!(
                "Secret '{name}': is a tls_certificate, but a TLS context wants it as its validation context (validation_context_sds_secret_config)"
            ));
        }
        _ => {}
    }
    let installed = match secret.r#type {
        Some(Type::TlsCertificate(t)) => load_certificate(&name, t).map(|id| {
            let id = Arc::new(id);
            for c in &certs {
                c.current.store(Some(id.clone()));
                c.followers.notify();
            }
            tracing::info!(secret = %name, "SDS certificate installed; new handshakes use it");
        }),
        Some(Type::ValidationContext(v)) => load_validation(&name, v).map(|bundle| {
            let bundle = Arc::new(bundle);
            for t in &trusts {
                t.current.store(Some(bundle.clone()));
                t.followers.notify();
            }
        }),
        Some(Type::SessionTicketKeys(_)) => {
            Err(at(&name, "session_ticket_keys", "is not supported"))
        }
        Some(Type::GenericSecret(_)) => Err(at(&name, "generic_secret", "is not supported")),
        None => Err(format!("Secret '{name}': has no type")),
    };
    match installed {
        Ok(()) => super::update_record(&mut super::lock_dump(dump).secrets, &name, version, any),
        Err(e) => errors.push(e),
    }
}

/// An error on one field of secret `name`.
fn at(name: &str, field: &str, e: impl std::fmt::Display) -> String {
    format!("Secret '{name}'.{field}: {e}")
}

/// The update's `i`th resource as a `Secret`.
fn decode_secret(i: usize, any: &Any) -> Result<crate::model::pb::tls::Secret, String> {
    match crate::model::pb::tls::Secret::decode(any.value.as_slice()) {
        Ok(s) if any.type_url == remora_xds::resource::SECRET => Ok(s),
        Ok(_) => Err(format!(
            "resources[{i}]: expected {}, got {}",
            remora_xds::resource::SECRET,
            any.type_url
        )),
        Err(e) => Err(format!("resources[{i}]: not a valid Secret: {e}")),
    }
}

/// The live certificate and trust sources waiting for secret `name` from `source`.
#[allow(clippy::type_complexity)]
fn wanted_by(
    registry: &SdsRegistry,
    source: &SdsSource,
    name: &str,
) -> Option<(Vec<Arc<SdsCertificate>>, Vec<Arc<SdsTrust>>)> {
    let r = registry.lock();
    let e = r.get(&(source.clone(), name.to_string()))?;
    let certs = e.certs.iter().filter_map(Weak::upgrade).collect();
    let trusts = e.trusts.iter().filter_map(Weak::upgrade).collect();
    Some((certs, trusts))
}

/// A `tls_certificate` secret's chain and key, checked.
fn load_certificate(
    name: &str,
    t: crate::model::pb::tls::TlsCertificate,
) -> Result<remora_certs::source::Identity, String> {
    let crate::model::pb::tls::TlsCertificate {
        certificate_chain,
        private_key,
        pkcs12,
        watched_directory: _,
        private_key_provider,
        password,
        ocsp_staple,
        signed_certificate_timestamp,
        tls_params,
    } = t;
    if pkcs12.is_some()
        || private_key_provider.is_some()
        || password.is_some()
        || ocsp_staple.is_some()
        || !signed_certificate_timestamp.is_empty()
        || tls_params.is_some()
    {
        return Err(at(
            name,
            "tls_certificate",
            "only certificate_chain and private_key are supported",
        ));
    }
    let chain =
        data(&certificate_chain).map_err(|e| at(name, "tls_certificate.certificate_chain", e))?;
    let key = data(&private_key).map_err(|e| at(name, "tls_certificate.private_key", e))?;
    remora_certs::source::load_identity(&chain, &key, &format!("sds:{name}"))
        .map_err(|e| at(name, "tls_certificate", e))
}

/// A `validation_context` secret's trusted CA (the only field an SDS context may carry).
fn load_validation(
    name: &str,
    v: crate::model::pb::tls::CertificateValidationContext,
) -> Result<remora_certs::source::TrustBundle, String> {
    let rest = crate::model::pb::tls::CertificateValidationContext {
        trusted_ca: None,
        ..v.clone()
    };
    if rest != crate::model::pb::tls::CertificateValidationContext::default() {
        return Err(at(
            name,
            "validation_context",
            "only trusted_ca is supported in an SDS validation context (put SAN matchers in the listener's or cluster's default_validation_context)",
        ));
    }
    let pem = data(&v.trusted_ca).map_err(|e| at(name, "validation_context.trusted_ca", e))?;
    remora_certs::source::load_trust(&pem, &format!("sds:{name}"))
        .map_err(|e| at(name, "validation_context.trusted_ca", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::pb::tls;

    fn secret(name: &str, t: tls::secret::Type) -> Any {
        remora_xds::resource::any(&tls::Secret {
            name: name.into(),
            r#type: Some(t),
        })
    }

    /// A secret of the other kind than its users want is NACKed (Envoy refuses it too), and
    /// the kind they want is still installed.
    #[test]
    fn a_secret_of_the_wrong_kind_is_refused() {
        let registry = SdsRegistry::default();
        let dump = super::super::DumpCell::default();
        let source = SdsSource::Ads;
        let cert = registry.certificate(&source, "cert");
        let trust = registry.trust(&source, "root");
        let validation = tls::secret::Type::ValidationContext(Default::default());
        let tls_cert = tls::secret::Type::TlsCertificate(Default::default());
        let refused = apply(
            &registry,
            &dump,
            &source,
            "v1",
            vec![secret("cert", validation), secret("root", tls_cert)],
        )
        .unwrap_err();
        assert_eq!(refused.len(), 2, "{refused:?}");
        assert!(
            refused[0].message.contains("is a validation_context"),
            "{refused:?}"
        );
        assert!(
            refused[1].message.contains("is a tls_certificate"),
            "{refused:?}"
        );
        assert!(cert.current().is_none() && trust.current().is_none());
    }

    /// The certificate-expiry gauges of a TLS context whose secrets come over SDS follow the
    /// secrets: set when they arrive and again when they rotate.
    #[test]
    fn expiry_gauges_follow_sds_secrets() {
        use crate::model::tls::CertificateNames;
        use crate::telemetry::stats::Store;
        use crate::transport_sockets::tls::TlsStats;
        use remora_certs::ca::{DevCa, KeyAlgorithm, LeafRequest};
        use std::time::{Duration, SystemTime};
        let ca = DevCa::generate_root("t", KeyAlgorithm::EcdsaP256).unwrap();
        let issue = |secs: u64| {
            let id = remora_certs::SpiffeId::parse("spiffe://t/ns/a/sa/b").unwrap();
            let issued = ca
                .issue(&LeafRequest::spiffe(id, Duration::from_secs(secs)))
                .unwrap();
            let inline = |p: &str| {
                Some(crate::model::pb::core::DataSource {
                    specifier: Some(crate::model::pb::core::data_source::Specifier::InlineBytes(
                        p.as_bytes().to_vec(),
                    )),
                    ..Default::default()
                })
            };
            let t = tls::TlsCertificate {
                certificate_chain: inline(&issued.cert_chain_pem),
                private_key: inline(&issued.key_pem),
                ..Default::default()
            };
            secret("default", tls::secret::Type::TlsCertificate(t))
        };
        let registry = SdsRegistry::default();
        let dump = super::super::DumpCell::default();
        let source = SdsSource::Ads;
        let cert = registry.certificate(&source, "default");
        let store = Arc::new(Store::default());
        let ssl = TlsStats::new(&store, "listener.l");
        let names = CertificateNames {
            certificates: vec!["default".into()],
            ca: None,
        };
        ssl.certificates(&names, std::slice::from_ref(&cert), None);
        let gauge = "listener.l.ssl.certificate.default.expiration_unix_time_seconds";
        let expires = |v: &str, secs: u64| {
            apply(&registry, &dump, &source, v, vec![issue(secs)]).unwrap();
            let leaf = cert.current().unwrap().chain[0].not_after;
            let unix = leaf
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            (store.gauge(gauge).value(), unix as i64)
        };
        let (value, leaf) = expires("v1", 3600);
        assert_eq!(value, leaf);
        let (value, rotated) = expires("v2", 7200);
        assert!(rotated > leaf);
        assert_eq!(value, rotated);
    }
}
