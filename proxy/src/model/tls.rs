//! `envoy.transport_sockets.tls`: `DownstreamTlsContext` and `UpstreamTlsContext` → rustls
//! server/client configurations (aws-lc-rs only), with certificates from watched files, Envoy's
//! validation context (trusted CA, SAN matchers) and TLS parameters (versions, TLS 1.2 cipher
//! suites by their OpenSSL names, curves). Everything not honoured is refused by path.

use super::context::{ReloadHook, TranslateContext};
use super::core::{bool_or, decode_any, deny, enum_value, u32_or};
use super::inputs::{Inputs, NotRead};
use super::matcher::StringMatcher;
use super::pb;
use crate::config::{FieldPath, Result};
use remora_certs::source::{
    CertificateSource, Data, FileCertificate, FileTrust, Refresh, TrustSource,
};
use remora_certs::verify::{ClientVerifier, Pin, SanMatcher, SanType, ServerVerifier, Validation};
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls::{SupportedCipherSuite, SupportedProtocolVersion};
use rustls_pki_types::ServerName;
use std::collections::HashMap;
use std::sync::Arc;

pub const DOWNSTREAM_TLS_TYPE: &str =
    "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";
pub const UPSTREAM_TLS_TYPE: &str = "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";

// === static secrets ===

/// `static_resources.secrets`, by name: what `tls_certificate_sds_secret_configs` and
/// `validation_context_sds_secret_config` without an `sds_config` refer to.
#[derive(Debug, Default)]
pub struct StaticSecrets {
    by_name: HashMap<String, pb::tls::Secret>,
}

impl StaticSecrets {
    /// Validate every secret (its files are loaded and checked now, by path): the secrets that
    /// translated, and every secret's errors (one report names them all).
    pub fn each(
        path: &FieldPath,
        secrets: &[pb::tls::Secret],
        material: Material<'_>,
    ) -> (Self, crate::config::error::Errors) {
        let mut errs = crate::config::error::Errors::new();
        let mut by_name = HashMap::new();
        for (i, s) in secrets.iter().enumerate() {
            let sp = path.index(i);
            if errs.take(secret(&sp, s, material)).is_none() {
                continue;
            }
            if by_name.insert(s.name.clone(), s.clone()).is_some() {
                errs.push(
                    sp.field("name")
                        .error(format!("duplicate secret '{}'", s.name)),
                );
            }
        }
        (Self { by_name }, errs)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }
}

/// One static secret, checked.
fn secret(sp: &FieldPath, s: &pb::tls::Secret, material: Material<'_>) -> Result<()> {
    use pb::tls::secret::Type;
    let pb::tls::Secret { name, r#type } = s;
    if name.is_empty() {
        return Err(sp.field("name").error("must not be empty"));
    }
    match r#type {
        Some(Type::TlsCertificate(t)) => {
            tls_certificate(&sp.field("tls_certificate"), t, material)?;
        }
        Some(Type::ValidationContext(v)) => {
            validation_context(&sp.field("validation_context"), v, None, material)?;
        }
        Some(Type::SessionTicketKeys(_)) => return Err(sp.unsupported("session_ticket_keys")),
        Some(Type::GenericSecret(_)) => return Err(sp.unsupported("generic_secret")),
        None => return Err(sp.error("a secret needs tls_certificate or validation_context")),
    }
    Ok(())
}

/// A secret named by an `SdsSecretConfig` without `sds_config`: a static secret.
fn static_secret(
    path: &FieldPath,
    c: &pb::tls::SdsSecretConfig,
    cx: &TranslateContext,
) -> Result<pb::tls::Secret> {
    let pb::tls::SdsSecretConfig { name, sds_config } = c;
    if sds_config.is_some() {
        return Err(path
            .field("sds_config")
            .error("is not supported yet (SDS arrives with xDS); static secrets are"));
    }
    cx.secrets.by_name.get(name).cloned().ok_or_else(|| {
        path.field("name").error(format!(
            "unknown static secret '{name}' (static_resources.secrets)"
        ))
    })
}

/// A listener filter chain's TLS termination.
pub struct DownstreamTls {
    pub config: Arc<rustls::ServerConfig>,
    /// `config` as BoringSSL would negotiate with a given ClientHello, made on first use (see
    /// [`DownstreamTls::config_for`]): BoringSSL honours the client's cipher order in TLS 1.3
    /// whatever `prefer_client_ciphers` says; it answers a client offering none of
    /// `alpn_protocols` without ALPN (rustls would send `no_application_protocol`); and with
    /// server preference it picks the first of its curves the client supports (rustls takes
    /// the client's order).
    variants: Vec<std::sync::OnceLock<Arc<rustls::ServerConfig>>>,
    /// `config` with one curve only, for each of its curves (in its order).
    by_group: Vec<Arc<rustls::ServerConfig>>,
    /// The context allows TLS 1.3 (its maximum version).
    pub allows_tls13: bool,
    pub certificates: Vec<Arc<dyn CertificateSource>>,
    pub trust: Option<Arc<dyn TrustSource>>,
    /// Whether a client must present a certificate: `require_client_certificate`, or SAN
    /// matchers or pins to check (as Envoy's validator sets `SSL_VERIFY_FAIL_IF_NO_PEER_CERT`).
    pub require_client_certificate: bool,
    pub names: CertificateNames,
}

/// The names Envoy gives a context's certificates in
/// `ssl.certificate.<name>.expiration_unix_time_seconds`: a secret's name, else
/// `unnamed_cert_<8 hex digits of the SHA-256 of the inline chain>` (of nothing for a file),
/// and `unnamed_ca_cert_…` likewise for the trusted CA of a validation context.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertificateNames {
    /// One per certificate, in order.
    pub certificates: Vec<String>,
    /// `None` without a validation context.
    pub ca: Option<String>,
}

fn unnamed(prefix: &str, ds: &Option<pb::core::DataSource>) -> String {
    use pb::core::data_source::Specifier;
    let inline: &[u8] = match ds.as_ref().and_then(|d| d.specifier.as_ref()) {
        Some(Specifier::InlineBytes(b)) => b,
        Some(Specifier::InlineString(s)) => s.as_bytes(),
        _ => b"",
    };
    format!("{prefix}{}", &remora_certs::info::sha256_hex(inline)[..8])
}

/// A cluster's TLS origination.
pub struct UpstreamTls {
    pub config: Arc<rustls::ClientConfig>,
    /// What the ClientHello carries (`sni`); rustls needs a name even when SNI is off.
    pub server_name: ServerName<'static>,
    pub certificates: Vec<Arc<dyn CertificateSource>>,
    pub trust: Option<Arc<dyn TrustSource>>,
    pub names: CertificateNames,
    /// ALPN offered (e.g. `istio-peer-exchange`, `istio`, `h2`, `http/1.1`).
    pub alpn: Vec<String>,
    /// The same client configuration offering other ALPN lists (`istio.alpn`), by their key.
    alpn_variants: std::sync::Mutex<Vec<(u64, Arc<rustls::ClientConfig>)>>,
}

/// Whether every certificate and the trust bundle have arrived (SDS sources start empty):
/// listeners and clusters warm until they have.
pub fn sources_ready(
    certificates: &[Arc<dyn CertificateSource>],
    trust: &Option<Arc<dyn TrustSource>>,
) -> bool {
    certificates.iter().all(|c| c.current().is_some())
        && trust.as_ref().is_none_or(|t| t.current().is_some())
}

/// The sources among `certificates` and `trust` that read files: what the start phase hands to
/// the server's certificate watcher.
fn file_sources(
    certificates: &[Arc<dyn CertificateSource>],
    trust: &Option<Arc<dyn TrustSource>>,
) -> Vec<Arc<dyn Refresh>> {
    let certs = certificates
        .iter()
        .filter_map(|c| c.clone().refresh_handle());
    let trust = trust.iter().filter_map(|t| t.clone().refresh_handle());
    certs.chain(trust).collect()
}

impl DownstreamTls {
    /// What reads files (see [`file_sources`]).
    pub fn file_sources(&self) -> Vec<Arc<dyn Refresh>> {
        file_sources(&self.certificates, &self.trust)
    }
}

impl UpstreamTls {
    /// What reads files (see [`file_sources`]).
    pub fn file_sources(&self) -> Vec<Arc<dyn Refresh>> {
        file_sources(&self.certificates, &self.trust)
    }
}

impl std::fmt::Debug for DownstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DownstreamTls")
            .field("certificates", &self.certificates)
            .field("trust", &self.trust)
            .field(
                "require_client_certificate",
                &self.require_client_certificate,
            )
            .field("alpn", &self.config.alpn_protocols)
            .finish()
    }
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("server_name", &self.server_name)
            .field("certificates", &self.certificates)
            .field("trust", &self.trust)
            .field("alpn", &self.alpn)
            .finish()
    }
}

const RAW_BUFFER: &str = "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer";

/// `transport_socket` of a filter chain or cluster: raw_buffer, or TLS of the expected side.
fn transport_socket<'a>(
    path: &FieldPath,
    ts: &'a Option<pb::core::TransportSocket>,
    tls_type: &str,
) -> Result<Option<&'a pb::protobuf::Any>> {
    use pb::core::transport_socket::ConfigType;
    let Some(pb::core::TransportSocket { name, config_type }) = ts else {
        return Ok(None);
    };
    let any = match config_type {
        Some(ConfigType::TypedConfig(any)) => any,
        None if name == "envoy.transport_sockets.raw_buffer" => return Ok(None),
        None => {
            return Err(path.error(format!("transport socket '{name}' needs a typed_config")));
        }
    };
    let tp = path.field("typed_config");
    match super::core::any_type(any) {
        RAW_BUFFER => Ok(None),
        t if t == tls_type => Ok(Some(any)),
        other => Err(tp
            .field("@type")
            .error(format!("transport socket {other} is not supported here"))),
    }
}

/// A filter chain's `transport_socket`.
pub fn downstream_socket(
    path: &FieldPath,
    ts: &Option<pb::core::TransportSocket>,
    cx: &TranslateContext,
) -> Result<Option<Arc<DownstreamTls>>> {
    let Some(any) = transport_socket(path, ts, DOWNSTREAM_TLS_TYPE)? else {
        return Ok(None);
    };
    let tp = path.field("typed_config");
    Ok(Some(Arc::new(DownstreamTls::from_proto(
        &tp,
        &decode_any(&tp, any)?,
        cx,
    )?)))
}

/// A cluster's `transport_socket`.
pub fn upstream_socket(
    path: &FieldPath,
    ts: &Option<pb::core::TransportSocket>,
    cx: &TranslateContext,
) -> Result<Option<Arc<UpstreamTls>>> {
    let Some(any) = transport_socket(path, ts, UPSTREAM_TLS_TYPE)? else {
        return Ok(None);
    };
    let tp = path.field("typed_config");
    Ok(Some(Arc::new(UpstreamTls::from_proto(
        &tp,
        &decode_any(&tp, any)?,
        cx,
    )?)))
}

// === common_tls_context ===

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Server,
    Client,
}

/// A translated validation context: how peers are verified, the trust bundle (also when the
/// chain is not verified), `suppress_client_ca_list`, and whether the context alone makes a
/// client certificate mandatory (SAN matchers or pins, unless `ACCEPT_UNTRUSTED`: Envoy's
/// `verify_mode_validation_context`).
type CheckedValidation = (Validation, Option<Arc<dyn TrustSource>>, bool, bool);

struct Common {
    versions: Vec<&'static SupportedProtocolVersion>,
    provider: Arc<CryptoProvider>,
    certificates: Vec<Arc<dyn CertificateSource>>,
    validation: Option<CheckedValidation>,
    names: CertificateNames,
    alpn: Vec<String>,
}

fn common(
    path: &FieldPath,
    c: &pb::tls::CommonTlsContext,
    side: Side,
    cx: &TranslateContext,
) -> Result<Common> {
    use pb::tls::common_tls_context::ValidationContextType as V;
    #[allow(deprecated)]
    let pb::tls::CommonTlsContext {
        tls_params,
        tls_certificates,
        tls_certificate_sds_secret_configs,
        tls_certificate_provider_instance,
        custom_tls_certificate_selector,
        tls_certificate_certificate_provider,
        tls_certificate_certificate_provider_instance,
        alpn_protocols,
        custom_handshaker,
        key_log,
        validation_context_type,
    } = c;
    deny(
        path,
        "tls_certificate_provider_instance",
        tls_certificate_provider_instance,
    )?;
    deny(
        path,
        "custom_tls_certificate_selector",
        custom_tls_certificate_selector,
    )?;
    deny(
        path,
        "tls_certificate_certificate_provider",
        tls_certificate_certificate_provider,
    )?;
    deny(
        path,
        "tls_certificate_certificate_provider_instance",
        tls_certificate_certificate_provider_instance,
    )?;
    deny(path, "custom_handshaker", custom_handshaker)?;
    deny(path, "key_log", key_log)?;
    let (versions, provider) = tls_parameters(&path.field("tls_params"), tls_params, side)?;
    let mut certificates = tls_certificates
        .iter()
        .enumerate()
        .map(|(i, t)| tls_certificate(&path.field("tls_certificates").index(i), t, cx.material()))
        .collect::<Result<Vec<_>>>()?;
    let mut names = CertificateNames {
        certificates: tls_certificates
            .iter()
            .map(|t| unnamed("unnamed_cert_", &t.certificate_chain))
            .collect(),
        ca: match validation_context_type {
            None => None,
            Some(V::ValidationContext(v)) => Some(unnamed("unnamed_ca_cert_", &v.trusted_ca)),
            Some(V::ValidationContextSdsSecretConfig(c)) => Some(c.name.clone()),
            Some(V::CombinedValidationContext(c)) => c
                .validation_context_sds_secret_config
                .as_ref()
                .map(|s| s.name.clone()),
            #[allow(deprecated)]
            Some(_) => None,
        },
    };
    for (i, c) in tls_certificate_sds_secret_configs.iter().enumerate() {
        let sp = path.field("tls_certificate_sds_secret_configs").index(i);
        names.certificates.push(c.name.clone());
        if let Some(cs) = &c.sds_config {
            let source = super::xds::sds_source(&sp.field("sds_config"), cs)?;
            certificates.push(cx.sds.certificate(&source, &c.name));
            continue;
        }
        match static_secret(&sp, c, cx)?.r#type {
            Some(pb::tls::secret::Type::TlsCertificate(t)) => {
                certificates.push(tls_certificate(&sp, &t, cx.material())?);
            }
            _ => {
                return Err(sp
                    .field("name")
                    .error(format!("secret '{}' is not a tls_certificate", c.name)));
            }
        }
    }
    let validation = match validation_context_type {
        None => None,
        Some(V::ValidationContext(v)) => Some(validation_context(
            &path.field("validation_context"),
            v,
            None,
            cx.material(),
        )?),
        Some(V::ValidationContextSdsSecretConfig(c)) => {
            let sp = path.field("validation_context_sds_secret_config");
            match &c.sds_config {
                Some(cs) => {
                    let source = super::xds::sds_source(&sp.field("sds_config"), cs)?;
                    let trust = cx.sds.trust(&source, &c.name);
                    Some(validation_context(
                        &sp,
                        &pb::tls::CertificateValidationContext::default(),
                        Some(trust),
                        cx.material(),
                    )?)
                }
                None => Some(validation_context(
                    &sp,
                    &secret_validation(&sp, c, cx)?,
                    None,
                    cx.material(),
                )?),
            }
        }
        Some(V::CombinedValidationContext(c)) => {
            let cp = path.field("combined_validation_context");
            #[allow(deprecated)]
            let pb::tls::common_tls_context::CombinedCertificateValidationContext {
                default_validation_context,
                validation_context_sds_secret_config,
                validation_context_certificate_provider,
                validation_context_certificate_provider_instance,
            } = c;
            deny(
                &cp,
                "validation_context_certificate_provider",
                validation_context_certificate_provider,
            )?;
            deny(
                &cp,
                "validation_context_certificate_provider_instance",
                validation_context_certificate_provider_instance,
            )?;
            let Some(sds) = validation_context_sds_secret_config else {
                return Err(cp
                    .field("validation_context_sds_secret_config")
                    .error("is required"));
            };
            let sp = cp.field("validation_context_sds_secret_config");
            let default = default_validation_context.clone().unwrap_or_default();
            if let Some(cs) = &sds.sds_config {
                // The CA from SDS, everything else (SAN matchers…) from the default context.
                let source = super::xds::sds_source(&sp.field("sds_config"), cs)?;
                let trust = cx.sds.trust(&source, &sds.name);
                return Ok(Common {
                    versions,
                    provider,
                    certificates,
                    names,
                    validation: Some(validation_context(
                        &cp.field("default_validation_context"),
                        &default,
                        Some(trust),
                        cx.material(),
                    )?),
                    alpn: checked_alpn(path, alpn_protocols)?,
                });
            }
            // Envoy: the secret's context merged over the default one.
            let mut merged = default;
            prost::Message::merge(
                &mut merged,
                prost::Message::encode_to_vec(&secret_validation(&sp, sds, cx)?).as_slice(),
            )
            .map_err(|e| cp.error(format!("cannot merge validation contexts: {e}")))?;
            Some(validation_context(&cp, &merged, None, cx.material())?)
        }
        #[allow(deprecated)]
        Some(V::ValidationContextCertificateProvider(_)) => {
            return Err(path.unsupported("validation_context_certificate_provider"));
        }
        #[allow(deprecated)]
        Some(V::ValidationContextCertificateProviderInstance(_)) => {
            return Err(path.unsupported("validation_context_certificate_provider_instance"));
        }
    };
    Ok(Common {
        versions,
        provider,
        certificates,
        names,
        validation,
        alpn: checked_alpn(path, alpn_protocols)?,
    })
}

fn checked_alpn(path: &FieldPath, alpn_protocols: &[String]) -> Result<Vec<String>> {
    for (i, p) in alpn_protocols.iter().enumerate() {
        if p.is_empty() || p.len() > 255 {
            return Err(path
                .field("alpn_protocols")
                .index(i)
                .error("an ALPN protocol name is 1 to 255 bytes"));
        }
    }
    Ok(alpn_protocols.to_vec())
}

fn secret_validation(
    path: &FieldPath,
    c: &pb::tls::SdsSecretConfig,
    cx: &TranslateContext,
) -> Result<pb::tls::CertificateValidationContext> {
    match static_secret(path, c, cx)?.r#type {
        Some(pb::tls::secret::Type::ValidationContext(v)) => Ok(v),
        _ => Err(path
            .field("name")
            .error(format!("secret '{}' is not a validation_context", c.name))),
    }
}

/// What building a certificate source reads: the translation's file contents, and where the
/// source reports reloads once it is watched.
#[derive(Clone, Copy)]
pub struct Material<'a> {
    pub inputs: &'a Inputs,
    pub reload: &'a ReloadHook,
}

impl TranslateContext {
    fn material(&self) -> Material<'_> {
        Material {
            inputs: &self.inputs,
            reload: &self.reload,
        }
    }
}

/// Envoy's DataSource for TLS material: a file stays a file (its owner may watch it), the rest
/// is inline. `Data::Inline` for a variable holds its value.
pub(crate) fn tls_data(
    path: &FieldPath,
    ds: &Option<pb::core::DataSource>,
    inputs: &Inputs,
) -> Result<Data> {
    use pb::core::data_source::Specifier;
    let Some(pb::core::DataSource {
        watched_directory: _, // files are watched regardless (see FileCertificate)
        specifier,
    }) = ds
    else {
        return Err(path.error("is required"));
    };
    Ok(match specifier {
        Some(Specifier::Filename(f)) => Data::File(f.into()),
        Some(Specifier::InlineBytes(b)) => Data::Inline(b.clone()),
        Some(Specifier::InlineString(s)) => Data::Inline(s.clone().into_bytes()),
        Some(Specifier::EnvironmentVariable(v)) => Data::Inline(
            super::core::env(&path.field("environment_variable"), v, inputs)?.into_bytes(),
        ),
        None => {
            return Err(path.error(
                "a data source needs filename, inline_bytes, inline_string or environment_variable",
            ));
        }
    })
}

/// TLS material with its bytes (a file's from the translation's inputs); `at` names the
/// certificate or context an unreadable file is reported on.
fn tls_material(
    at: &FieldPath,
    path: &FieldPath,
    ds: &Option<pb::core::DataSource>,
    inputs: &Inputs,
) -> Result<(Data, Vec<u8>)> {
    let data = tls_data(path, ds, inputs)?;
    let bytes = match &data {
        Data::Inline(b) => b.clone(),
        Data::File(f) => {
            let name = f.to_string_lossy();
            match inputs.file(&name) {
                Ok(Ok(b)) => b.to_vec(),
                Ok(Err(reason)) => return Err(at.error(format!("cannot read {name}: {reason}"))),
                Err(NotRead) => return Err(at.error(format!("{name} has not been read"))),
            }
        }
    };
    Ok((data, bytes))
}

fn tls_certificate(
    path: &FieldPath,
    t: &pb::tls::TlsCertificate,
    material: Material<'_>,
) -> Result<Arc<dyn CertificateSource>> {
    let pb::tls::TlsCertificate {
        certificate_chain,
        private_key,
        pkcs12,
        watched_directory: _, // honoured: the files are polled, so a directory swap is seen
        private_key_provider,
        password,
        ocsp_staple,
        signed_certificate_timestamp,
        tls_params,
    } = t;
    deny(path, "pkcs12", pkcs12)?;
    deny(path, "private_key_provider", private_key_provider)?;
    deny(path, "password", password)?;
    deny(path, "ocsp_staple", ocsp_staple)?;
    deny(
        path,
        "signed_certificate_timestamp",
        signed_certificate_timestamp,
    )?;
    deny(path, "tls_params", tls_params)?;
    let inputs = material.inputs;
    let chain = tls_material(
        path,
        &path.field("certificate_chain"),
        certificate_chain,
        inputs,
    )?;
    let key = tls_material(path, &path.field("private_key"), private_key, inputs)?;
    FileCertificate::from_contents(chain, key, material.reload.callback())
        .map(|c| c as Arc<dyn CertificateSource>)
        .map_err(|e| path.error(e.to_string()))
}

/// `dynamic_trust`: the trusted CA from SDS, when the context's CA comes from a secret.
fn validation_context(
    path: &FieldPath,
    v: &pb::tls::CertificateValidationContext,
    dynamic_trust: Option<Arc<dyn TrustSource>>,
    material: Material<'_>,
) -> Result<CheckedValidation> {
    use pb::tls::certificate_validation_context::TrustChainVerification as T;
    use pb::tls::subject_alt_name_matcher::SanType as S;
    let pb::tls::CertificateValidationContext {
        trusted_ca,
        ca_certificate_provider_instance,
        system_root_certs,
        watched_directory: _, // honoured: trusted_ca files are polled
        verify_certificate_spki,
        verify_certificate_hash,
        match_typed_subject_alt_names,
        match_subject_alt_names,
        require_signed_certificate_timestamp,
        crl,
        allow_expired_certificate,
        trust_chain_verification,
        custom_validator_config,
        only_verify_leaf_cert_crl,
        max_verify_depth,
        suppress_client_ca_list,
    } = v;
    deny(
        path,
        "ca_certificate_provider_instance",
        ca_certificate_provider_instance,
    )?;
    deny(path, "system_root_certs", system_root_certs)?;
    let mut pins = Vec::new();
    for (i, h) in verify_certificate_hash.iter().enumerate() {
        pins.push(Pin::cert_hash(h).ok_or_else(|| {
            path.field("verify_certificate_hash")
                .index(i)
                .error(format!("'{h}' is not a hex SHA-256 digest"))
        })?);
    }
    for (i, h) in verify_certificate_spki.iter().enumerate() {
        pins.push(Pin::spki_hash(h).ok_or_else(|| {
            path.field("verify_certificate_spki")
                .index(i)
                .error(format!("'{h}' is not a base64 SHA-256 digest"))
        })?);
    }
    if bool_or(require_signed_certificate_timestamp, false) {
        return Err(path.unsupported("require_signed_certificate_timestamp"));
    }
    deny(path, "crl", crl)?;
    deny(path, "allow_expired_certificate", allow_expired_certificate)?;
    deny(path, "custom_validator_config", custom_validator_config)?;
    deny(path, "only_verify_leaf_cert_crl", only_verify_leaf_cert_crl)?;
    deny(path, "max_verify_depth", max_verify_depth)?;
    let verify_chain = enum_value::<T>(
        path,
        "trust_chain_verification",
        *trust_chain_verification,
        |_| true,
    )? == T::VerifyTrustChain;
    let trust: Option<Arc<dyn TrustSource>> = match trusted_ca {
        Some(_) => Some(
            FileTrust::from_contents(
                tls_material(
                    &path.field("trusted_ca"),
                    &path.field("trusted_ca"),
                    trusted_ca,
                    material.inputs,
                )?,
                material.reload.callback(),
            )
            .map_err(|e| path.field("trusted_ca").error(e.to_string()))?,
        ),
        None => dynamic_trust,
    };
    let mut san_matchers = Vec::new();
    for (i, m) in match_typed_subject_alt_names.iter().enumerate() {
        let mp = path.field("match_typed_subject_alt_names").index(i);
        let pb::tls::SubjectAltNameMatcher {
            san_type,
            matcher,
            oid,
        } = m;
        let t = enum_value::<S>(&mp, "san_type", *san_type, |t| *t != S::Unspecified).map_err(
            |_| {
                mp.field("san_type")
                    .error("must be EMAIL, DNS, URI, IP_ADDRESS or OTHER_NAME")
            },
        )?;
        let san_type = match t {
            S::Email => SanType::Email,
            S::Dns => SanType::Dns,
            S::Uri => SanType::Uri,
            S::IpAddress => SanType::IpAddress,
            S::OtherName => {
                if oid.is_empty() {
                    return Err(mp.field("oid").error("is required for OTHER_NAME"));
                }
                SanType::OtherName(oid.clone())
            }
            S::Unspecified => unreachable!("refused above"),
        };
        if t != S::OtherName && !oid.is_empty() {
            return Err(mp.field("oid").error("is only meaningful for OTHER_NAME"));
        }
        let Some(matcher) = matcher else {
            return Err(mp.field("matcher").error("is required"));
        };
        san_matchers.push(SanMatcher {
            san_type: Some(san_type),
            matcher: Arc::new(StringMatcher::from_proto(&mp.field("matcher"), matcher)?),
        });
    }
    for (i, m) in match_subject_alt_names.iter().enumerate() {
        let mp = path.field("match_subject_alt_names").index(i);
        san_matchers.push(SanMatcher {
            san_type: None,
            matcher: Arc::new(StringMatcher::from_proto(&mp, m)?),
        });
    }
    if verify_chain && trust.is_none() && !san_matchers.is_empty() {
        // Envoy: SAN matching without a CA would trust any self-made certificate.
        return Err(path
            .field("trusted_ca")
            .error("is required when subject alt names are matched"));
    }
    let validation = Validation {
        trust: match (&trust, verify_chain) {
            (Some(t), true) => Some(t.clone()),
            _ => None,
        },
        san_matchers,
        pins,
    };
    let mandatory =
        verify_chain && (!validation.san_matchers.is_empty() || !validation.pins.is_empty());
    Ok((validation, trust, *suppress_client_ca_list, mandatory))
}

// === tls_params ===

/// OpenSSL/BoringSSL names of the TLS 1.2 suites rustls implements.
fn tls12_suite(name: &str) -> Option<SupportedCipherSuite> {
    use rustls::crypto::aws_lc_rs::cipher_suite as cs;
    Some(match name {
        "ECDHE-ECDSA-AES128-GCM-SHA256" => cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        "ECDHE-ECDSA-AES256-GCM-SHA384" => cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        "ECDHE-ECDSA-CHACHA20-POLY1305" => cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        "ECDHE-RSA-AES128-GCM-SHA256" => cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        "ECDHE-RSA-AES256-GCM-SHA384" => cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        "ECDHE-RSA-CHACHA20-POLY1305" => cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        _ => return None,
    })
}

fn curve(name: &str) -> Option<&'static dyn rustls::crypto::SupportedKxGroup> {
    use rustls::crypto::aws_lc_rs::kx_group as kx;
    Some(match name {
        "X25519" => kx::X25519,
        "P-256" => kx::SECP256R1,
        "P-384" => kx::SECP384R1,
        "X25519MLKEM768" => kx::X25519MLKEM768,
        _ => return None,
    })
}

fn tls_parameters(
    path: &FieldPath,
    p: &Option<pb::tls::TlsParameters>,
    side: Side,
) -> Result<(Vec<&'static SupportedProtocolVersion>, Arc<CryptoProvider>)> {
    use pb::tls::tls_parameters::TlsProtocol as V;
    let default = pb::tls::TlsParameters::default();
    let pb::tls::TlsParameters {
        tls_minimum_protocol_version,
        tls_maximum_protocol_version,
        cipher_suites,
        ecdh_curves,
        signature_algorithms,
        compliance_policies,
    } = p.as_ref().unwrap_or(&default);
    deny(path, "signature_algorithms", signature_algorithms)?;
    deny(path, "compliance_policies", compliance_policies)?;
    let version = |field: &str, v: i32| -> Result<V> {
        let v = enum_value::<V>(path, field, v, |_| true)?;
        if matches!(v, V::TlSv10 | V::TlSv11) {
            return Err(path.field(field).error(format!(
                "{} is not supported (rustls implements TLS 1.2 and 1.3)",
                v.as_str_name()
            )));
        }
        Ok(v)
    };
    // Envoy's defaults: TLS 1.2 minimum; maximum TLS 1.3 for servers and TLS 1.2 for clients.
    let min = match version(
        "tls_minimum_protocol_version",
        *tls_minimum_protocol_version,
    )? {
        V::TlsAuto => V::TlSv12,
        v => v,
    };
    let max = match version(
        "tls_maximum_protocol_version",
        *tls_maximum_protocol_version,
    )? {
        V::TlsAuto if side == Side::Server => V::TlSv13,
        V::TlsAuto => V::TlSv12,
        v => v,
    };
    if (max as i32) < (min as i32) {
        return Err(path
            .field("tls_maximum_protocol_version")
            .error("is below tls_minimum_protocol_version"));
    }
    let mut versions = Vec::new();
    if min == V::TlSv12 {
        versions.push(&rustls::version::TLS12);
    }
    if max == V::TlSv13 {
        versions.push(&rustls::version::TLS13);
    }
    let base = rustls::crypto::aws_lc_rs::default_provider();
    // BoringSSL's TLS 1.3 order (not configurable in Envoy), then Envoy's default TLS 1.2 list.
    let mut suites: Vec<SupportedCipherSuite> = {
        use rustls::crypto::aws_lc_rs::cipher_suite as cs;
        vec![
            cs::TLS13_AES_128_GCM_SHA256,
            cs::TLS13_AES_256_GCM_SHA384,
            cs::TLS13_CHACHA20_POLY1305_SHA256,
        ]
    };
    if cipher_suites.is_empty() {
        suites.extend(
            [
                "ECDHE-ECDSA-AES128-GCM-SHA256",
                "ECDHE-ECDSA-CHACHA20-POLY1305",
                "ECDHE-RSA-AES128-GCM-SHA256",
                "ECDHE-RSA-CHACHA20-POLY1305",
                "ECDHE-ECDSA-AES256-GCM-SHA384",
                "ECDHE-RSA-AES256-GCM-SHA384",
            ]
            .into_iter()
            .filter_map(tls12_suite),
        );
    } else {
        for (i, entry) in cipher_suites.iter().enumerate() {
            // `[A|B]` is an equal-preference group in BoringSSL; rustls keeps the order given.
            for name in entry.trim_matches(|c| c == '[' || c == ']').split('|') {
                let Some(s) = tls12_suite(name) else {
                    return Err(path.field("cipher_suites").index(i).error(format!(
                        "cipher suite '{name}' is not supported (rustls offers ECDHE with AES-GCM or CHACHA20-POLY1305 for TLS 1.2; TLS 1.3 suites are not configurable, as in Envoy)"
                    )));
                };
                if !suites.contains(&s) {
                    suites.push(s);
                }
            }
        }
    }
    let kx_groups = if ecdh_curves.is_empty() {
        // Envoy's default curves: a server (1.40) prefers the hybrid post-quantum group.
        use rustls::crypto::aws_lc_rs::kx_group as kx;
        match side {
            Side::Server => vec![kx::X25519MLKEM768, kx::X25519, kx::SECP256R1],
            Side::Client => vec![kx::X25519, kx::SECP256R1],
        }
    } else {
        ecdh_curves
            .iter()
            .enumerate()
            .map(|(i, c)| {
                curve(c).ok_or_else(|| {
                    path.field("ecdh_curves").index(i).error(format!(
                        "curve '{c}' is not supported (X25519, P-256, P-384, X25519MLKEM768)"
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()?
    };
    Ok((
        versions,
        Arc::new(CryptoProvider {
            cipher_suites: suites,
            kx_groups,
            ..base
        }),
    ))
}

// === certificate selection ===

/// Picks the certificate for a ClientHello: one whose key can sign with a scheme the client
/// offers, preferring one whose DNS names match the SNI (Envoy's multi-certificate selection).
#[derive(Debug)]
struct ServerResolver {
    certificates: Vec<Arc<dyn CertificateSource>>,
    require_sni: bool,
}

impl rustls::server::ResolvesServerCert for ServerResolver {
    fn resolve(&self, hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = hello.server_name();
        if self.require_sni && sni.is_none() {
            return None;
        }
        let schemes = hello.signature_schemes();
        let mut fallback = None;
        for c in &self.certificates {
            let Some(id) = c.current() else { continue };
            if id.key.key.choose_scheme(schemes).is_none() {
                continue;
            }
            let name_matches = sni.is_some_and(|s| {
                id.chain[0]
                    .dns_sans()
                    .any(|d| remora_certs::verify::dns_name_match(s, d))
            });
            if name_matches || self.certificates.len() == 1 {
                return Some(id.key.clone());
            }
            fallback.get_or_insert(id.key.clone());
        }
        fallback
    }
}

#[derive(Debug)]
struct ClientResolver {
    certificates: Vec<Arc<dyn CertificateSource>>,
}

impl rustls::client::ResolvesClientCert for ClientResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.certificates.iter().find_map(|c| {
            let id = c.current()?;
            id.key.key.choose_scheme(schemes).map(|_| id.key.clone())
        })
    }

    fn has_certs(&self) -> bool {
        !self.certificates.is_empty()
    }
}

fn rustls_error(path: &FieldPath, e: rustls::Error) -> crate::config::ConfigError {
    path.error(format!("cannot build the TLS context: {e}"))
}

// === impl DownstreamTls ===

impl DownstreamTls {
    pub fn from_proto(
        path: &FieldPath,
        d: &pb::tls::DownstreamTlsContext,
        cx: &TranslateContext,
    ) -> Result<Self> {
        use pb::tls::downstream_tls_context::OcspStaplePolicy as O;
        use pb::tls::downstream_tls_context::SessionTicketKeysType as K;
        let pb::tls::DownstreamTlsContext {
            common_tls_context,
            require_client_certificate,
            require_sni,
            disable_stateful_session_resumption,
            session_timeout,
            ocsp_staple_policy,
            full_scan_certs_on_sni_mismatch,
            prefer_client_ciphers,
            session_ticket_keys_type,
        } = d;
        deny(path, "session_timeout", session_timeout)?;
        enum_value::<O>(path, "ocsp_staple_policy", *ocsp_staple_policy, |p| {
            *p == O::LenientStapling
        })?;
        if bool_or(full_scan_certs_on_sni_mismatch, false) {
            return Err(path.unsupported("full_scan_certs_on_sni_mismatch"));
        }
        let stateless = match session_ticket_keys_type {
            None => true,
            Some(K::DisableStatelessSessionResumption(d)) => !d,
            Some(K::SessionTicketKeys(_)) => {
                return Err(path.unsupported("session_ticket_keys"));
            }
            Some(K::SessionTicketKeysSdsSecretConfig(_)) => {
                return Err(path.unsupported("session_ticket_keys_sds_secret_config"));
            }
        };
        let cp = path.field("common_tls_context");
        let default = pb::tls::CommonTlsContext::default();
        let c = common(
            &cp,
            common_tls_context.as_ref().unwrap_or(&default),
            Side::Server,
            cx,
        )?;
        if c.certificates.is_empty() {
            return Err(cp
                .field("tls_certificates")
                .error("a server TLS context needs a certificate"));
        }
        let require = bool_or(require_client_certificate, false);
        let mut mandatory = require;
        let (verifier, trust) = match c.validation {
            Some((validation, trust, suppress, required_by_context)) => {
                mandatory |= required_by_context;
                let v: Arc<dyn rustls::server::danger::ClientCertVerifier> =
                    Arc::new(ClientVerifier::new(validation, mandatory, suppress));
                (Some(v), trust)
            }
            None if require => {
                return Err(path.field("require_client_certificate").error(
                    "needs common_tls_context.validation_context to verify client certificates against",
                ));
            }
            None => (None, None),
        };
        let resolver = Arc::new(ServerResolver {
            certificates: c.certificates.clone(),
            require_sni: bool_or(require_sni, false),
        });
        let session_storage: Arc<dyn rustls::server::StoresServerSessions> =
            if *disable_stateful_session_resumption {
                Arc::new(rustls::server::NoServerSessionStorage {})
            } else {
                rustls::server::ServerSessionMemoryCache::new(4096)
            };
        let ticketer = if stateless {
            Some(rustls::crypto::aws_lc_rs::Ticketer::new().map_err(|e| rustls_error(path, e))?)
        } else {
            None
        };
        // One configuration per provider (the context's, and each restricted to one curve, for
        // `config_for`): the same verifier, certificates, sessions and ticket keys.
        let build = |provider: Arc<CryptoProvider>| -> Result<rustls::ServerConfig> {
            let builder = rustls::ServerConfig::builder_with_provider(provider)
                .with_protocol_versions(&c.versions)
                .map_err(|e| rustls_error(&cp.field("tls_params"), e))?;
            let builder = match &verifier {
                Some(v) => builder.with_client_cert_verifier(v.clone()),
                None => builder.with_no_client_auth(),
            };
            let mut config = builder.with_cert_resolver(resolver.clone());
            config.alpn_protocols = c.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
            config.ignore_client_order = !prefer_client_ciphers;
            config.session_storage = session_storage.clone();
            if let Some(t) = &ticketer {
                config.ticketer = t.clone();
            }
            if !stateless && *disable_stateful_session_resumption {
                config.send_tls13_tickets = 0;
            }
            Ok(config)
        };
        let config = build(c.provider.clone())?;
        let by_group = c
            .provider
            .kx_groups
            .iter()
            .map(|g| {
                build(Arc::new(CryptoProvider {
                    kx_groups: vec![*g],
                    ..(*c.provider).clone()
                }))
                .map(Arc::new)
            })
            .collect::<Result<Vec<_>>>()?;
        let variants = (0..4 * (by_group.len() + 1))
            .map(|_| std::sync::OnceLock::new())
            .collect();
        Ok(Self {
            config: Arc::new(config),
            by_group,
            variants,
            allows_tls13: c.versions.contains(&&rustls::version::TLS13),
            certificates: c.certificates,
            trust,
            require_client_certificate: mandatory,
            names: c.names,
        })
    }

    /// The configuration for a ClientHello (its `supported_versions` offering TLS 1.3, its ALPN
    /// list, its `supported_groups`): the handshake then negotiates what BoringSSL would.
    pub fn config_for(
        &self,
        client_tls13: bool,
        client_alpn: &[String],
        client_groups: &[u16],
    ) -> Arc<rustls::ServerConfig> {
        let base = &self.config;
        let tls13 = client_tls13 && self.allows_tls13;
        let client_order = tls13 && base.ignore_client_order;
        let ours = &base.alpn_protocols;
        let no_alpn = !client_alpn.is_empty()
            && !ours.is_empty()
            && !client_alpn
                .iter()
                .any(|c| ours.iter().any(|o| o == c.as_bytes()));
        let version = if tls13 {
            rustls::ProtocolVersion::TLSv1_3
        } else {
            rustls::ProtocolVersion::TLSv1_2
        };
        let groups = &base.crypto_provider().kx_groups;
        let group = base
            .ignore_client_order
            .then(|| {
                groups.iter().position(|g| {
                    g.usable_for_version(version) && client_groups.contains(&u16::from(g.name()))
                })
            })
            .flatten();
        let start = group.map_or(base, |g| &self.by_group[g]);
        if !client_order && !no_alpn {
            return start.clone();
        }
        let i = (client_order as usize * 2 + no_alpn as usize) * (groups.len() + 1)
            + group.map_or(0, |g| g + 1);
        self.variants[i]
            .get_or_init(|| {
                let mut v = (**start).clone();
                v.ignore_client_order &= !client_order;
                if no_alpn {
                    v.alpn_protocols.clear();
                }
                Arc::new(v)
            })
            .clone()
    }
}

// === impl UpstreamTls ===

impl UpstreamTls {
    /// The same context offering these ALPN protocols.
    pub fn with_alpn(&self, alpn: &[&str]) -> Self {
        let mut config = (*self.config).clone();
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Self {
            config: Arc::new(config),
            server_name: self.server_name.clone(),
            certificates: self.certificates.clone(),
            trust: self.trust.clone(),
            names: self.names.clone(),
            alpn: alpn.iter().map(|p| p.to_string()).collect(),
            alpn_variants: Default::default(),
        }
    }

    /// The client configuration offering `alpn` instead (made once per list, then shared).
    pub fn config_offering(
        &self,
        alpn: &crate::model::hcm::AlpnOverride,
    ) -> Arc<rustls::ClientConfig> {
        let mut variants = self.alpn_variants.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, c)) = variants.iter().find(|(k, _)| *k == alpn.key) {
            return c.clone();
        }
        let mut config = (*self.config).clone();
        config.alpn_protocols = alpn
            .protocols
            .iter()
            .map(|p| p.as_bytes().to_vec())
            .collect();
        let config = Arc::new(config);
        variants.push((alpn.key, config.clone()));
        config
    }

    pub fn from_proto(
        path: &FieldPath,
        u: &pb::tls::UpstreamTlsContext,
        cx: &TranslateContext,
    ) -> Result<Self> {
        let pb::tls::UpstreamTlsContext {
            common_tls_context,
            sni,
            auto_host_sni,
            auto_sni_san_validation,
            allow_renegotiation,
            max_session_keys,
            enforce_rsa_key_usage,
        } = u;
        deny(path, "auto_host_sni", auto_host_sni)?;
        deny(path, "auto_sni_san_validation", auto_sni_san_validation)?;
        deny(path, "allow_renegotiation", allow_renegotiation)?;
        if bool_or(enforce_rsa_key_usage, false) {
            return Err(path.unsupported("enforce_rsa_key_usage"));
        }
        let cp = path.field("common_tls_context");
        let default = pb::tls::CommonTlsContext::default();
        let c = common(
            &cp,
            common_tls_context.as_ref().unwrap_or(&default),
            Side::Client,
            cx,
        )?;
        let (validation, trust) = match c.validation {
            Some((v, trust, _, _)) => (v, trust),
            // No validation context: Envoy does not verify the server's certificate.
            None => (Validation::default(), None),
        };
        let builder = rustls::ClientConfig::builder_with_provider(c.provider.clone())
            .with_protocol_versions(&c.versions)
            .map_err(|e| rustls_error(&cp.field("tls_params"), e))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ServerVerifier { validation }));
        let mut config = if c.certificates.is_empty() {
            builder.with_no_client_auth()
        } else {
            builder.with_client_cert_resolver(Arc::new(ClientResolver {
                certificates: c.certificates.clone(),
            }))
        };
        config.alpn_protocols = c.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        let server_name = if sni.is_empty() {
            config.enable_sni = false;
            ServerName::try_from("remora.invalid").expect("a valid DNS name")
        } else {
            ServerName::try_from(sni.clone()).map_err(|_| {
                path.field("sni")
                    .error(format!("'{sni}' is not a valid server name"))
            })?
        };
        let keys = u32_or(max_session_keys, 1);
        config.resumption = if keys == 0 {
            rustls::client::Resumption::disabled()
        } else {
            rustls::client::Resumption::in_memory_sessions(keys as usize)
        };
        Ok(Self {
            config: Arc::new(config),
            server_name,
            certificates: c.certificates,
            trust,
            names: c.names,
            alpn: c.alpn,
            alpn_variants: Default::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::NamedGroup;

    /// A server context over an inline development certificate, with `extra` (YAML mapping
    /// entries) and `common_extra` (entries of `common_tls_context`).
    fn downstream(extra: &str, common_extra: &str) -> Result<DownstreamTls> {
        use remora_certs::ca::{DevCa, KeyAlgorithm, LeafRequest};
        let ca = DevCa::generate_root("t", KeyAlgorithm::EcdsaP256).unwrap();
        let mut req = LeafRequest::new(std::time::Duration::from_secs(3600));
        req.dns_names = vec!["localhost".into()];
        let leaf = ca.issue(&req).unwrap();
        let q = |s: &str| serde_json::to_string(s).unwrap();
        let yaml = format!(
            "{{common_tls_context: {{tls_certificates: [{{certificate_chain: {{inline_string: {}}}, private_key: {{inline_string: {}}}}}], validation_context: {{trusted_ca: {{inline_string: {}}}{common_extra}}}}}{extra}}}",
            q(&leaf.cert_chain_pem),
            q(&leaf.key_pem),
            q(ca.root_pem()),
        );
        let path = FieldPath::new("tls");
        let d: pb::tls::DownstreamTlsContext =
            crate::config::decode_yaml(DOWNSTREAM_TLS_TYPE, &yaml, &path);
        DownstreamTls::from_proto(&path, &d, &TranslateContext::for_tests())
    }

    /// SAN matchers (or pins) make a client certificate mandatory, as Envoy's validator sets
    /// `SSL_VERIFY_FAIL_IF_NO_PEER_CERT` for them, unless the chain is not verified.
    #[test]
    fn san_matchers_make_a_client_certificate_mandatory() {
        let san =
            ", match_typed_subject_alt_names: [{san_type: URI, matcher: {prefix: 'spiffe://'}}]";
        assert!(!downstream("", "").unwrap().require_client_certificate);
        assert!(downstream("", san).unwrap().require_client_certificate);
        let untrusted = format!("{san}, trust_chain_verification: ACCEPT_UNTRUSTED");
        assert!(
            !downstream("", &untrusted)
                .unwrap()
                .require_client_certificate
        );
        assert!(
            downstream(", require_client_certificate: true", "")
                .unwrap()
                .require_client_certificate
        );
    }

    fn groups(c: &rustls::ServerConfig) -> Vec<NamedGroup> {
        c.crypto_provider()
            .kx_groups
            .iter()
            .map(|g| g.name())
            .collect()
    }

    /// What a ClientHello gets: the client's cipher order in TLS 1.3 (BoringSSL's), the server's
    /// curve preference (Envoy's server default puts X25519MLKEM768 first; it is no TLS 1.2
    /// curve), and no ALPN rather than a refusal when the client offers none of ours.
    #[test]
    fn config_for_negotiates_as_boringssl() {
        let d = downstream("", ", match_typed_subject_alt_names: []").unwrap();
        assert_eq!(
            groups(&d.config),
            [
                NamedGroup::X25519MLKEM768,
                NamedGroup::X25519,
                NamedGroup::secp256r1
            ]
        );
        assert!(d.config.ignore_client_order);
        let x25519 = u16::from(NamedGroup::X25519);
        let mlkem = u16::from(NamedGroup::X25519MLKEM768);
        let c = d.config_for(true, &[], &[x25519, mlkem]);
        assert!(!c.ignore_client_order);
        assert_eq!(groups(&c), [NamedGroup::X25519MLKEM768]);
        assert!(Arc::ptr_eq(&c, &d.config_for(true, &[], &[x25519, mlkem])));
        let c = d.config_for(false, &[], &[mlkem, x25519]);
        assert!(c.ignore_client_order);
        assert_eq!(groups(&c), [NamedGroup::X25519]);
        // No curve in common: the context's own list (the handshake fails as it would).
        assert_eq!(groups(&d.config_for(true, &[], &[1])), groups(&d.config));

        let alpn = downstream("", "").unwrap();
        assert!(alpn.config.alpn_protocols.is_empty());
        let d = DownstreamTls {
            config: Arc::new({
                let mut c = (*alpn.config).clone();
                c.alpn_protocols = vec![b"h2".to_vec()];
                c
            }),
            ..alpn
        };
        let h3 = ["h3".to_string()];
        assert!(d.config_for(true, &h3, &[]).alpn_protocols.is_empty());
        let h2 = ["h3".to_string(), "h2".to_string()];
        assert_eq!(
            d.config_for(true, &h2, &[]).alpn_protocols,
            [b"h2".to_vec()]
        );
    }

    /// `ssl.certificate.<name>.*`: inline material is named by its digest, a file by the
    /// digest of nothing (`e3b0c442`), as Envoy names them.
    #[test]
    fn certificate_names() {
        let d = downstream("", "").unwrap();
        assert_eq!(d.names.certificates.len(), 1);
        assert!(d.names.certificates[0].starts_with("unnamed_cert_"));
        assert_ne!(d.names.certificates[0], "unnamed_cert_e3b0c442");
        assert!(
            d.names
                .ca
                .as_deref()
                .unwrap()
                .starts_with("unnamed_ca_cert_")
        );
        let file = pb::core::DataSource {
            specifier: Some(pb::core::data_source::Specifier::Filename("/x".into())),
            ..Default::default()
        };
        assert_eq!(
            unnamed("unnamed_cert_", &Some(file)),
            "unnamed_cert_e3b0c442"
        );
    }
}
