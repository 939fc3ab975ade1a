//! Certificate sources. A TLS context asks its source for the current key pair on every
//! handshake, so a rotated pair is used by the next handshake and open connections keep theirs.
//! Here: files (watched; Istio's `/etc/certs` layout or any Envoy `filename` data source) and
//! inline data. SDS and the Istio CA implement the same traits.

use crate::info::CertDetails;
use arc_swap::ArcSwap;
use rustls::RootCertStore;
use rustls::sign::CertifiedKey;
use rustls_pki_types::CertificateDer;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, SystemTime};

/// How often watched files are checked (a rotated pair is in use within twice this).
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// A certificate chain with its private key, ready for rustls.
#[derive(Debug)]
pub struct Identity {
    pub key: Arc<CertifiedKey>,
    /// The chain's certificates, leaf first.
    pub chain: Vec<CertDetails>,
}

/// Trusted roots.
#[derive(Debug)]
pub struct TrustBundle {
    pub roots: Arc<RootCertStore>,
    pub certs: Vec<CertDetails>,
}

/// Where a source's bytes come from.
#[derive(Clone, PartialEq, Eq)]
pub enum Data {
    File(PathBuf),
    Inline(Vec<u8>),
}

impl fmt::Debug for Data {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Data::File(p) => write!(f, "File({})", p.display()),
            Data::Inline(b) => write!(f, "Inline({} bytes)", b.len()),
        }
    }
}

impl Data {
    /// Envoy's `/certs` path: the file name, or `<inline>`.
    pub fn describe(&self) -> String {
        match self {
            Data::File(p) => p.display().to_string(),
            Data::Inline(_) => "<inline>".to_string(),
        }
    }

    /// The bytes (a file is read now).
    pub fn read(&self) -> Result<Vec<u8>, SourceError> {
        match self {
            Data::File(p) => std::fs::read(p).map_err(|e| SourceError::Read {
                path: p.display().to_string(),
                reason: e.to_string(),
            }),
            Data::Inline(b) => Ok(b.clone()),
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{what}: {reason}")]
    Invalid { what: String, reason: String },
    #[error("the private key does not match the certificate ({what})")]
    KeyMismatch { what: String },
}

/// Something that can hand out the current certificate and key.
pub trait CertificateSource: Send + Sync + fmt::Debug {
    /// The pair to use for a handshake starting now (`None`: not available yet).
    fn current(&self) -> Option<Arc<Identity>>;
    /// Where the certificate comes from (a path, `<inline>`, or a secret name).
    fn origin(&self) -> String;
}

/// Something that can hand out the current trusted roots.
pub trait TrustSource: Send + Sync + fmt::Debug {
    fn current(&self) -> Option<Arc<TrustBundle>>;
    fn origin(&self) -> String;
}

/// A reload attempt's outcome, reported to the owner (stats and logs).
#[derive(Debug, Clone)]
pub enum ReloadEvent {
    Rotated { origin: String },
    Rejected { origin: String, error: SourceError },
}

pub type OnReload = Arc<dyn Fn(&ReloadEvent) + Send + Sync>;

// === loading ===

/// Parse a chain and key into an [`Identity`], checking that the key matches the leaf.
pub fn load_identity(
    chain_pem: &[u8],
    key_pem: &[u8],
    what: &str,
) -> Result<Identity, SourceError> {
    let invalid = |reason: String| SourceError::Invalid {
        what: what.to_string(),
        reason,
    };
    let chain = crate::pem::certificates(chain_pem).map_err(|e| invalid(e.to_string()))?;
    let key = crate::pem::private_key(key_pem).map_err(|e| invalid(e.to_string()))?;
    let details = chain
        .iter()
        .map(|c| CertDetails::parse(c))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(e.to_string()))?;
    // Match the key against the leaf's SubjectPublicKeyInfo with x509-parser rather than webpki,
    // which refuses X.509 v1 certificates that BoringSSL (and so Envoy) serves.
    let signing = crate::provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| invalid(e.to_string()))?;
    if let Some(spki) = signing.public_key() {
        let (_, leaf) =
            x509_parser::parse_x509_certificate(&chain[0]).map_err(|e| invalid(e.to_string()))?;
        if leaf.public_key().raw != spki.as_ref() {
            return Err(SourceError::KeyMismatch {
                what: what.to_string(),
            });
        }
    }
    let certified = CertifiedKey::new(chain, signing);
    Ok(Identity {
        key: Arc::new(certified),
        chain: details,
    })
}

/// Parse a PEM bundle of trusted CA certificates.
pub fn load_trust(pem: &[u8], what: &str) -> Result<TrustBundle, SourceError> {
    let invalid = |reason: String| SourceError::Invalid {
        what: what.to_string(),
        reason,
    };
    let certs = crate::pem::certificates(pem).map_err(|e| invalid(e.to_string()))?;
    let mut roots = RootCertStore::empty();
    let mut details = Vec::new();
    for (i, c) in certs.into_iter().enumerate() {
        details.push(CertDetails::parse(&c).map_err(|e| invalid(e.to_string()))?);
        roots
            .add(CertificateDer::clone(&c))
            .map_err(|e| invalid(format!("certificate {i}: {e}")))?;
    }
    Ok(TrustBundle {
        roots: Arc::new(roots),
        certs: details,
    })
}

// === watched values ===

/// What a file looked like when last read: a change of any part means "read again".
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    ino: u64,
    dev: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: m.modified().ok(),
        len: m.len(),
        ino: m.ino(),
        dev: m.dev(),
    })
}

/// A value loaded from one or more data sources, re-loaded when a watched file changes.
struct Watched<T> {
    inputs: Vec<Data>,
    load: fn(&[Vec<u8>], &str) -> Result<T, SourceError>,
    value: ArcSwap<T>,
    seen: Mutex<Vec<Option<Stamp>>>,
    /// A digest of the bytes last loaded: a rewrite with the same contents is not a rotation.
    digest: Mutex<Vec<u8>>,
    on_reload: Option<OnReload>,
}

fn stamps(inputs: &[Data]) -> Vec<Option<Stamp>> {
    inputs
        .iter()
        .map(|d| match d {
            Data::File(p) => stamp(p),
            Data::Inline(_) => None,
        })
        .collect()
}

fn read_all(inputs: &[Data]) -> Result<(Vec<Vec<u8>>, Vec<u8>), SourceError> {
    let bytes = inputs
        .iter()
        .map(Data::read)
        .collect::<Result<Vec<_>, _>>()?;
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for b in &bytes {
        ctx.update(&(b.len() as u64).to_be_bytes());
        ctx.update(b);
    }
    Ok((bytes, ctx.finish().as_ref().to_vec()))
}

impl<T> Watched<T> {
    fn new(
        inputs: Vec<Data>,
        load: fn(&[Vec<u8>], &str) -> Result<T, SourceError>,
        on_reload: Option<OnReload>,
    ) -> Result<Self, SourceError> {
        let seen = stamps(&inputs);
        let (bytes, digest) = read_all(&inputs)?;
        let value = load(&bytes, &inputs[0].describe())?;
        Ok(Self {
            inputs,
            load,
            value: ArcSwap::from_pointee(value),
            seen: Mutex::new(seen),
            digest: Mutex::new(digest),
            on_reload,
        })
    }

    fn origin(&self) -> String {
        self.inputs[0].describe()
    }
}

/// Checked by the watcher thread.
trait Poll: Send + Sync {
    fn poll(&self);
}

impl<T: Send + Sync> Poll for Watched<T> {
    fn poll(&self) {
        let now = stamps(&self.inputs);
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if *seen == now {
            return;
        }
        // A file mid-rotation (one of the pair rewritten) fails to load; remember what was seen
        // so the failure is reported once, and try again when the other file changes.
        *seen = now;
        drop(seen);
        let origin = self.origin();
        let loaded = read_all(&self.inputs).and_then(|(bytes, digest)| {
            let mut last = self.digest.lock().unwrap_or_else(|e| e.into_inner());
            if *last == digest {
                return Ok(None); // rewritten with the same contents
            }
            let v = (self.load)(&bytes, &origin)?;
            *last = digest;
            Ok(Some(v))
        });
        match loaded {
            Ok(None) => {}
            Ok(Some(v)) => {
                self.value.store(Arc::new(v));
                tracing::info!(%origin, "certificate files changed: new handshakes use the new contents");
                if let Some(f) = &self.on_reload {
                    f(&ReloadEvent::Rotated { origin });
                }
            }
            Err(error) => {
                tracing::warn!(%origin, "rotated certificate files rejected, keeping the previous ones: {error}");
                if let Some(f) = &self.on_reload {
                    f(&ReloadEvent::Rejected { origin, error });
                }
            }
        }
    }
}

/// The process-wide file watcher: one thread polling every registered value.
fn watch(w: Weak<dyn Poll>) {
    static LIST: OnceLock<Mutex<Vec<Weak<dyn Poll>>>> = OnceLock::new();
    let mut started = false;
    let list = LIST.get_or_init(|| {
        started = true;
        Mutex::new(Vec::new())
    });
    list.lock().unwrap_or_else(|e| e.into_inner()).push(w);
    if started {
        let spawned = std::thread::Builder::new()
            .name("cert-watcher".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(POLL_INTERVAL);
                    let live: Vec<Arc<dyn Poll>> = {
                        let mut l = list.lock().unwrap_or_else(|e| e.into_inner());
                        l.retain(|w| w.strong_count() > 0);
                        l.iter().filter_map(Weak::upgrade).collect()
                    };
                    for p in live {
                        p.poll();
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start the certificate watcher thread: {e}");
        }
    }
}

// === impl FileCertificate ===

/// A certificate chain and key from Envoy data sources (`filename`, `inline_string`, …);
/// watched when either is a file.
pub struct FileCertificate {
    inner: Watched<Identity>,
}

impl fmt::Debug for FileCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileCertificate")
            .field("chain", &self.inner.inputs[0])
            .field("key", &self.inner.inputs[1])
            .finish()
    }
}

impl FileCertificate {
    pub fn load(
        chain: Data,
        key: Data,
        on_reload: Option<OnReload>,
    ) -> Result<Arc<Self>, SourceError> {
        let watched = matches!(chain, Data::File(_)) || matches!(key, Data::File(_));
        let inner = Watched::new(
            vec![chain, key],
            |b, what| load_identity(&b[0], &b[1], what),
            on_reload,
        )?;
        let this = Arc::new(Self { inner });
        if watched {
            let weak: Weak<dyn Poll> = Arc::downgrade(&this) as Weak<dyn Poll>;
            watch(weak);
        }
        Ok(this)
    }

    /// Check the files now (the watcher does this every [`POLL_INTERVAL`]).
    pub fn poll_now(&self) {
        self.inner.poll();
    }
}

impl Poll for FileCertificate {
    fn poll(&self) {
        self.inner.poll();
    }
}

impl CertificateSource for FileCertificate {
    fn current(&self) -> Option<Arc<Identity>> {
        Some(self.inner.value.load_full())
    }
    fn origin(&self) -> String {
        self.inner.origin()
    }
}

// === impl FileTrust ===

/// Trusted CA certificates from an Envoy data source; watched when it is a file.
pub struct FileTrust {
    inner: Watched<TrustBundle>,
}

impl fmt::Debug for FileTrust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileTrust")
            .field("ca", &self.inner.inputs[0])
            .finish()
    }
}

impl FileTrust {
    pub fn load(ca: Data, on_reload: Option<OnReload>) -> Result<Arc<Self>, SourceError> {
        let watched = matches!(ca, Data::File(_));
        let inner = Watched::new(vec![ca], |b, what| load_trust(&b[0], what), on_reload)?;
        let this = Arc::new(Self { inner });
        if watched {
            let weak: Weak<dyn Poll> = Arc::downgrade(&this) as Weak<dyn Poll>;
            watch(weak);
        }
        Ok(this)
    }
}

impl Poll for FileTrust {
    fn poll(&self) {
        self.inner.poll();
    }
}

impl TrustSource for FileTrust {
    fn current(&self) -> Option<Arc<TrustBundle>> {
        Some(self.inner.value.load_full())
    }
    fn origin(&self) -> String {
        self.inner.origin()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SpiffeId;
    use crate::ca::{DevCa, KeyAlgorithm, LeafRequest};
    use crate::testutil::Scratch;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn issue(ca: &DevCa, sa: &str) -> crate::ca::Issued {
        ca.issue(&LeafRequest::spiffe(
            SpiffeId::istio("cluster.local", "ns", sa).unwrap(),
            Duration::from_secs(3600),
        ))
        .unwrap()
    }

    fn uri(src: &FileCertificate) -> String {
        src.current().unwrap().chain[0]
            .uri_sans()
            .next()
            .unwrap()
            .to_string()
    }

    #[test]
    fn rotation_and_rejected_pairs() {
        let dir = Scratch::new();
        let ca = DevCa::generate_root("ca", KeyAlgorithm::EcdsaP256).unwrap();
        issue(&ca, "one").write_istio_layout(dir.path()).unwrap();
        let rotated = Arc::new(AtomicUsize::new(0));
        let rejected = Arc::new(AtomicUsize::new(0));
        let (r1, r2) = (rotated.clone(), rejected.clone());
        let on: OnReload = Arc::new(move |e| {
            match e {
                ReloadEvent::Rotated { .. } => r1.fetch_add(1, Ordering::Relaxed),
                ReloadEvent::Rejected { .. } => r2.fetch_add(1, Ordering::Relaxed),
            };
        });
        let chain = Data::File(dir.path().join(crate::ca::CERT_CHAIN));
        let key = Data::File(dir.path().join(crate::ca::KEY));
        let src = FileCertificate::load(chain, key, Some(on)).unwrap();
        assert!(uri(&src).ends_with("/sa/one"));
        let held = src.current().unwrap();

        // Nothing changed: nothing happens.
        src.poll_now();
        assert_eq!(rotated.load(Ordering::Relaxed), 0);

        // A new pair: picked up; what an open connection holds is untouched.
        issue(&ca, "two").write_istio_layout(dir.path()).unwrap();
        src.poll_now();
        assert!(uri(&src).ends_with("/sa/two"));
        assert_eq!(rotated.load(Ordering::Relaxed), 1);
        assert_eq!(
            held.chain[0].uri_sans().next().unwrap(),
            "spiffe://cluster.local/ns/ns/sa/one"
        );

        // Half a rotation: the key of a third pair with the chain of the second: rejected, and
        // the second pair stays in use.
        let three = issue(&ca, "three");
        std::fs::write(dir.path().join(crate::ca::KEY), &three.key_pem).unwrap();
        src.poll_now();
        assert_eq!(rejected.load(Ordering::Relaxed), 1);
        assert!(uri(&src).ends_with("/sa/two"));
        // A truncated chain file: also rejected.
        std::fs::write(
            dir.path().join(crate::ca::CERT_CHAIN),
            &three.cert_chain_pem[..100],
        )
        .unwrap();
        src.poll_now();
        assert_eq!(rejected.load(Ordering::Relaxed), 2);
        assert!(uri(&src).ends_with("/sa/two"));
        // The rest of the rotation arrives.
        std::fs::write(
            dir.path().join(crate::ca::CERT_CHAIN),
            &three.cert_chain_pem,
        )
        .unwrap();
        src.poll_now();
        assert!(uri(&src).ends_with("/sa/three"));
    }

    #[test]
    fn initial_load_errors_are_precise() {
        let dir = Scratch::new();
        let ca = DevCa::generate_root("ca", KeyAlgorithm::EcdsaP256).unwrap();
        let a = issue(&ca, "a");
        let b = issue(&ca, "b");
        let e = FileCertificate::load(
            Data::Inline(a.cert_chain_pem.clone().into_bytes()),
            Data::Inline(b.key_pem.clone().into_bytes()),
            None,
        )
        .unwrap_err();
        assert!(matches!(e, SourceError::KeyMismatch { .. }), "{e}");
        let missing = dir.path().join("nope.pem");
        let e = FileCertificate::load(Data::File(missing.clone()), Data::Inline(vec![]), None)
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("cannot read {}", missing.display())),
            "{e}"
        );
        let e = FileTrust::load(Data::Inline(b"not pem".to_vec()), None).unwrap_err();
        assert_eq!(e.to_string(), "<inline>: no PEM certificate found");
    }

    #[test]
    fn the_watcher_thread_picks_up_rotation() {
        let dir = Scratch::new();
        let ca = DevCa::generate_root("ca", KeyAlgorithm::EcdsaP256).unwrap();
        issue(&ca, "one").write_istio_layout(dir.path()).unwrap();
        let src = FileCertificate::load(
            Data::File(dir.path().join(crate::ca::CERT_CHAIN)),
            Data::File(dir.path().join(crate::ca::KEY)),
            None,
        )
        .unwrap();
        issue(&ca, "two").write_istio_layout(dir.path()).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while !uri(&src).ends_with("/sa/two") {
            assert!(
                std::time::Instant::now() < deadline,
                "not rotated within 2 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
