//! Certificate sources. A TLS context asks its source for the current key pair on every
//! handshake, so a rotated pair is used by the next handshake and open connections keep theirs.
//! Here: files (Istio's `/etc/certs` layout or any Envoy `filename` data source) and inline data.
//! SDS and the Istio CA implement the same traits.
//!
//! Building a source and watching its files are separate steps: a source is built from bytes
//! already read ([`FileCertificate::from_contents`]) or by reading now ([`FileCertificate::load`]),
//! and its owner hands it to a [`Watcher`] (one per server, no process-wide state) when it
//! starts using it.

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
    /// What a [`Watcher`] checks for changes, when the source reads files.
    fn refresh_handle(self: Arc<Self>) -> Option<Arc<dyn Refresh>> {
        None
    }
    /// Run `f` after each new pair is installed (a secret arriving or rotating, files
    /// re-loaded); held weakly, so it runs as long as its owner keeps it. Sources whose pair
    /// never changes need not implement it.
    fn follow(&self, _f: &OnChange) {}
}

/// Something that can hand out the current trusted roots.
pub trait TrustSource: Send + Sync + fmt::Debug {
    fn current(&self) -> Option<Arc<TrustBundle>>;
    fn origin(&self) -> String;
    /// What a [`Watcher`] checks for changes, when the source reads files.
    fn refresh_handle(self: Arc<Self>) -> Option<Arc<dyn Refresh>> {
        None
    }
    /// As [`CertificateSource::follow`], for new roots.
    fn follow(&self, _f: &OnChange) {}
}

/// What a source runs after installing a new value (e.g. the owner's expiry gauges).
pub type OnChange = Arc<dyn Fn() + Send + Sync>;

/// The [`OnChange`] callbacks following one source, held weakly.
#[derive(Default)]
pub struct Followers(Mutex<Vec<Weak<dyn Fn() + Send + Sync>>>);

impl fmt::Debug for Followers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Followers").finish_non_exhaustive()
    }
}

impl Followers {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Weak<dyn Fn() + Send + Sync>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Follow from now on (callbacks whose owner dropped them are forgotten here).
    pub fn add(&self, f: &OnChange) {
        let mut list = self.lock();
        list.retain(|w| w.strong_count() > 0);
        list.push(Arc::downgrade(f));
    }

    /// Run every live callback (outside the lock).
    pub fn notify(&self) {
        let live: Vec<OnChange> = self.lock().iter().filter_map(Weak::upgrade).collect();
        for f in live {
            f();
        }
    }
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
    followers: Followers,
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
    let digest = digest(&bytes);
    Ok((bytes, digest))
}

fn digest(bytes: &[Vec<u8>]) -> Vec<u8> {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for b in bytes {
        ctx.update(&(b.len() as u64).to_be_bytes());
        ctx.update(b);
    }
    ctx.finish().as_ref().to_vec()
}

impl<T> Watched<T> {
    /// Read the inputs now and load them.
    fn new(
        inputs: Vec<Data>,
        load: fn(&[Vec<u8>], &str) -> Result<T, SourceError>,
        on_reload: Option<OnReload>,
    ) -> Result<Self, SourceError> {
        let seen = stamps(&inputs);
        let (bytes, _) = read_all(&inputs)?;
        let mut this = Self::with_contents(inputs, bytes, load, on_reload)?;
        this.seen = Mutex::new(seen);
        Ok(this)
    }

    /// Load inputs whose bytes were read already (one entry per input). The files' state is
    /// not known yet: the first check reads them again and keeps this value when they are
    /// unchanged, so a rotation between the read and the first check is not missed.
    fn with_contents(
        inputs: Vec<Data>,
        bytes: Vec<Vec<u8>>,
        load: fn(&[Vec<u8>], &str) -> Result<T, SourceError>,
        on_reload: Option<OnReload>,
    ) -> Result<Self, SourceError> {
        let value = load(&bytes, &inputs[0].describe())?;
        let seen = vec![None; inputs.len()];
        Ok(Self {
            digest: Mutex::new(digest(&bytes)),
            inputs,
            load,
            value: ArcSwap::from_pointee(value),
            seen: Mutex::new(seen),
            on_reload,
            followers: Followers::default(),
        })
    }

    fn origin(&self) -> String {
        self.inputs[0].describe()
    }

    fn reads_files(&self) -> bool {
        self.inputs.iter().any(|d| matches!(d, Data::File(_)))
    }
}

/// A value re-loaded from its files when they change, checked by a [`Watcher`].
pub trait Refresh: Send + Sync {
    /// Check the files now and re-load them when they changed.
    fn refresh(&self);
}

impl<T: Send + Sync> Watched<T> {
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
                self.followers.notify();
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

/// One server's file watcher: a thread that checks every value handed to it each
/// [`POLL_INTERVAL`]. It holds values weakly (a value dropped by its owner is forgotten) and
/// stops when the watcher is dropped. Two servers in one process have two watchers.
#[derive(Default)]
pub struct Watcher {
    list: Arc<Mutex<Vec<Weak<dyn Refresh>>>>,
    thread: OnceLock<()>,
}

impl fmt::Debug for Watcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watcher")
            .field("watched", &self.watched())
            .finish()
    }
}

impl Watcher {
    pub fn new() -> Self {
        Self::default()
    }

    /// Check `value` from now on (once, however often it is handed over).
    pub fn watch(&self, value: Arc<dyn Refresh>) {
        let weak = Arc::downgrade(&value);
        {
            let mut list = self.list.lock().unwrap_or_else(|e| e.into_inner());
            list.retain(|w| w.strong_count() > 0);
            if list.iter().any(|w| Weak::ptr_eq(w, &weak)) {
                return;
            }
            list.push(weak);
        }
        self.thread.get_or_init(|| self.start());
    }

    /// The values checked now.
    pub fn watched(&self) -> usize {
        let list = self.list.lock().unwrap_or_else(|e| e.into_inner());
        list.iter().filter(|w| w.strong_count() > 0).count()
    }

    /// Check every value now (the thread does this each [`POLL_INTERVAL`]).
    pub fn refresh_all(&self) {
        refresh_live(&self.list);
    }

    fn start(&self) {
        let list = Arc::downgrade(&self.list);
        let spawned = std::thread::Builder::new()
            .name("cert-watcher".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(POLL_INTERVAL);
                    let Some(list) = list.upgrade() else {
                        return; // the watcher is gone
                    };
                    refresh_live(&list);
                }
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start the certificate watcher thread: {e}");
        }
    }
}

fn refresh_live(list: &Mutex<Vec<Weak<dyn Refresh>>>) {
    let live: Vec<Arc<dyn Refresh>> = {
        let mut l = list.lock().unwrap_or_else(|e| e.into_inner());
        l.retain(|w| w.strong_count() > 0);
        l.iter().filter_map(Weak::upgrade).collect()
    };
    for value in live {
        value.refresh();
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
    /// Read the chain and key now.
    pub fn load(
        chain: Data,
        key: Data,
        on_reload: Option<OnReload>,
    ) -> Result<Arc<Self>, SourceError> {
        let inner = Watched::new(
            vec![chain, key],
            |b, what| load_identity(&b[0], &b[1], what),
            on_reload,
        )?;
        Ok(Arc::new(Self { inner }))
    }

    /// A chain and key whose bytes were read already (`chain_bytes` from `chain`, …).
    pub fn from_contents(
        (chain, chain_bytes): (Data, Vec<u8>),
        (key, key_bytes): (Data, Vec<u8>),
        on_reload: Option<OnReload>,
    ) -> Result<Arc<Self>, SourceError> {
        let inner = Watched::with_contents(
            vec![chain, key],
            vec![chain_bytes, key_bytes],
            |b, what| load_identity(&b[0], &b[1], what),
            on_reload,
        )?;
        Ok(Arc::new(Self { inner }))
    }

    /// Check the files now (a [`Watcher`] does this every [`POLL_INTERVAL`]).
    pub fn poll_now(&self) {
        self.inner.poll();
    }
}

impl Refresh for FileCertificate {
    fn refresh(&self) {
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
    fn refresh_handle(self: Arc<Self>) -> Option<Arc<dyn Refresh>> {
        self.inner.reads_files().then_some(self as Arc<dyn Refresh>)
    }
    fn follow(&self, f: &OnChange) {
        self.inner.followers.add(f);
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
    /// Read the CA bundle now.
    pub fn load(ca: Data, on_reload: Option<OnReload>) -> Result<Arc<Self>, SourceError> {
        let inner = Watched::new(vec![ca], |b, what| load_trust(&b[0], what), on_reload)?;
        Ok(Arc::new(Self { inner }))
    }

    /// A CA bundle whose bytes were read already.
    pub fn from_contents(
        (ca, bytes): (Data, Vec<u8>),
        on_reload: Option<OnReload>,
    ) -> Result<Arc<Self>, SourceError> {
        let inner = Watched::with_contents(
            vec![ca],
            vec![bytes],
            |b, what| load_trust(&b[0], what),
            on_reload,
        )?;
        Ok(Arc::new(Self { inner }))
    }
}

impl Refresh for FileTrust {
    fn refresh(&self) {
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
    fn refresh_handle(self: Arc<Self>) -> Option<Arc<dyn Refresh>> {
        self.inner.reads_files().then_some(self as Arc<dyn Refresh>)
    }
    fn follow(&self, f: &OnChange) {
        self.inner.followers.add(f);
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
        let watcher = Watcher::new();
        watcher.watch(src.clone().refresh_handle().expect("reads files"));
        watcher.watch(src.clone().refresh_handle().expect("reads files"));
        assert_eq!(watcher.watched(), 1, "handed over twice, watched once");
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

    #[test]
    fn contents_read_earlier_are_checked_again_once_watched() {
        let dir = Scratch::new();
        let ca = DevCa::generate_root("ca", KeyAlgorithm::EcdsaP256).unwrap();
        let one = issue(&ca, "one");
        one.write_istio_layout(dir.path()).unwrap();
        let rotated = Arc::new(AtomicUsize::new(0));
        let r = rotated.clone();
        let on: OnReload = Arc::new(move |_| {
            r.fetch_add(1, Ordering::Relaxed);
        });
        let chain = Data::File(dir.path().join(crate::ca::CERT_CHAIN));
        let key = Data::File(dir.path().join(crate::ca::KEY));
        let src = FileCertificate::from_contents(
            (chain, one.cert_chain_pem.clone().into_bytes()),
            (key, one.key_pem.clone().into_bytes()),
            Some(on),
        )
        .unwrap();
        assert!(uri(&src).ends_with("/sa/one"));
        // The files are what was read: the first check keeps the value, no rotation reported.
        src.poll_now();
        assert_eq!(rotated.load(Ordering::Relaxed), 0);
        issue(&ca, "two").write_istio_layout(dir.path()).unwrap();
        src.poll_now();
        assert!(uri(&src).ends_with("/sa/two"));
        assert_eq!(rotated.load(Ordering::Relaxed), 1);

        // Inline data has nothing to watch; a dropped value leaves the watcher.
        let inline = FileTrust::from_contents(
            (Data::Inline(vec![]), ca.root_pem().as_bytes().to_vec()),
            None,
        )
        .unwrap();
        assert!(inline.refresh_handle().is_none());
        let watcher = Watcher::new();
        watcher.watch(src.clone().refresh_handle().expect("reads files"));
        assert_eq!(watcher.watched(), 1);
        drop(src);
        assert_eq!(watcher.watched(), 0);
    }
}
