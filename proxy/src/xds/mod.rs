//! Dynamic configuration: the ADS client (crate `remora-xds`) feeding CDS and EDS into the
//! cluster manager, Envoy's way: every resource translated through the same model as the
//! bootstrap (a translation error NACKs with its field path and the previous cluster stays),
//! EDS clusters warm until their endpoints arrive (or `initial_fetch_timeout`), endpoint
//! updates keep the pools of unchanged hosts, and a lost control plane leaves the last good
//! configuration serving.

pub mod rds;
pub mod sds;

use crate::config::FieldPath;
use crate::config::typed_struct::decode_resource;
use crate::context::ServerContext;
use crate::listener::manager::ListenerManager;
use crate::listener::{ActiveListener, ListenerOrigin};
use crate::model::cluster::{Cluster as ClusterConfig, Discovery, LocalityEndpoints};
use crate::model::pb;
use crate::telemetry::stats::{Counter, Gauge, Store};
use crate::upstream::cluster::{self, Cluster, ClusterManager};
use prost::Message;
use remora_xds::Any;
use remora_xds::client::{Handler, Interest, Refused, Subscriptions};
use remora_xds::resource::{CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// A dynamic resource as last accepted, for `/config_dump`.
#[derive(Debug, Clone)]
pub struct Record {
    pub version: String,
    pub resource: Any,
    pub at: std::time::SystemTime,
}

/// Everything accepted over xDS, by type and name (what `/config_dump` shows as dynamic).
#[derive(Debug, Default)]
pub struct Dump {
    pub clusters: std::collections::BTreeMap<String, Record>,
    pub endpoints: std::collections::BTreeMap<String, Record>,
    pub listeners: std::collections::BTreeMap<String, Record>,
    /// Listeners waiting for their routes or secrets (Envoy's `warming_state`).
    pub warming_listeners: std::collections::BTreeMap<String, Record>,
    pub routes: std::collections::BTreeMap<String, Record>,
    pub secrets: std::collections::BTreeMap<String, Record>,
    /// The last failed update of each listener, until it is accepted or leaves the set
    /// (Envoy's `error_state` on the dynamic listener).
    pub listener_errors: std::collections::BTreeMap<String, Failure>,
    /// The failures of the latest LDS update (Envoy also dumps them as nameless entries).
    pub listener_update_failures: Vec<Failure>,
}

/// A resource refused, for `/config_dump`'s `error_state` (Envoy's `UpdateFailureState`).
#[derive(Debug, Clone)]
pub struct Failure {
    pub resource: Any,
    pub details: String,
    pub version: String,
    pub at: std::time::SystemTime,
}

/// The dump of dynamic resources (one per server, in its `ServerContext`).
pub type DumpCell = Mutex<Dump>;

/// Lock a server's dump.
pub fn lock_dump(cell: &DumpCell) -> std::sync::MutexGuard<'_, Dump> {
    cell.lock().unwrap_or_else(|e| e.into_inner())
}

fn record(version: &str, resource: &Any) -> Record {
    Record {
        version: version.to_string(),
        resource: resource.clone(),
        at: std::time::SystemTime::now(),
    }
}

/// Record an accepted resource; one that did not change keeps the version and time it was last
/// updated at (a delta update hands every held resource over, a SotW one every subscribed one).
fn update_record(
    records: &mut std::collections::BTreeMap<String, Record>,
    name: &str,
    version: &str,
    resource: &Any,
) {
    if records
        .get(name)
        .is_none_or(|r| r.resource.value != resource.value)
    {
        records.insert(name.to_string(), record(version, resource));
    }
}

/// The listeners one LDS update refused and accepted: logged as Envoy does, and recorded as
/// their `error_state` (cleared once a listener is accepted).
struct Failures {
    version: String,
    at: std::time::SystemTime,
    failed: Vec<(String, Failure)>,
    accepted: Vec<String>,
}

impl Failures {
    fn new(version: &str) -> Self {
        Self {
            version: version.to_string(),
            at: std::time::SystemTime::now(),
            failed: Vec::new(),
            accepted: Vec::new(),
        }
    }

    fn listener(&mut self, name: &str, resource: &Any, details: &str) {
        tracing::warn!("lds: listener '{name}' config rejected: {details}");
        self.failed.push((
            name.to_string(),
            Failure {
                resource: resource.clone(),
                details: details.to_string(),
                version: self.version.clone(),
                at: self.at,
            },
        ));
    }

    fn accepted(&mut self, name: &str) {
        self.accepted.push(name.to_string());
    }

    /// Into the dump; `current` are the listener names the update carried.
    fn record(self, current: &BTreeSet<String>, d: &mut Dump) {
        d.listener_errors.retain(|n, _| current.contains(n));
        for n in &self.accepted {
            d.listener_errors.remove(n);
        }
        d.listener_update_failures = self.failed.iter().map(|(_, f)| f.clone()).collect();
        d.listener_errors.extend(self.failed);
    }
}

/// `cluster_manager.cds.*`, `cluster_manager.*`, `control_plane.*`.
#[derive(Debug)]
struct Stats {
    cds_update_attempt: Arc<Counter>,
    cds_update_success: Arc<Counter>,
    cds_update_rejected: Arc<Counter>,
    cds_version: Arc<Gauge>,
    eds_update_attempt: Arc<Counter>,
    eds_update_success: Arc<Counter>,
    eds_update_rejected: Arc<Counter>,
    cluster_added: Arc<Counter>,
    cluster_modified: Arc<Counter>,
    cluster_removed: Arc<Counter>,
    active_clusters: Arc<Gauge>,
    warming_clusters: Arc<Gauge>,
    connected_state: Arc<Gauge>,
    lds_update_attempt: Arc<Counter>,
    lds_update_success: Arc<Counter>,
    lds_update_rejected: Arc<Counter>,
    lds_version: Arc<Gauge>,
}

impl Stats {
    fn new(store: &Store) -> Self {
        let c = |n: &str| store.counter(n);
        let g = |n: &str| store.gauge(n);
        // `rate_limit_enforced` exists (always 0): remora does not rate-limit its requests.
        let _ = store.counter("control_plane.rate_limit_enforced");
        Self {
            cds_update_attempt: c("cluster_manager.cds.update_attempt"),
            cds_update_success: c("cluster_manager.cds.update_success"),
            cds_update_rejected: c("cluster_manager.cds.update_rejected"),
            cds_version: g("cluster_manager.cds.version"),
            eds_update_attempt: c("cluster_manager.eds.update_attempt"),
            eds_update_success: c("cluster_manager.eds.update_success"),
            eds_update_rejected: c("cluster_manager.eds.update_rejected"),
            cluster_added: c("cluster_manager.cluster_added"),
            cluster_modified: c("cluster_manager.cluster_modified"),
            cluster_removed: c("cluster_manager.cluster_removed"),
            active_clusters: g("cluster_manager.active_clusters"),
            warming_clusters: g("cluster_manager.warming_clusters"),
            connected_state: g("control_plane.connected_state"),
            lds_update_attempt: c("listener_manager.lds.update_attempt"),
            lds_update_success: c("listener_manager.lds.update_success"),
            lds_update_rejected: c("listener_manager.lds.update_rejected"),
            lds_version: g("listener_manager.lds.version"),
        }
    }
}

/// Envoy's `version` gauges: the first 8 bytes of a hash of `version_info`.
fn version_hash(v: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in v.as_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h >> 1) as i64
}

#[derive(Default)]
struct State {
    /// Clusters waiting for their endpoints.
    warming: HashMap<String, Arc<Cluster>>,
    /// The latest endpoints per EDS service name.
    assignments: HashMap<String, Vec<LocalityEndpoints>>,
    /// DNS refresh tasks of CDS clusters, stopped when the cluster goes.
    dns: HashMap<String, tokio::task::AbortHandle>,
    /// LDS listeners by name: their resource bytes.
    listeners: HashMap<String, Vec<u8>>,
    /// LDS listeners waiting for their routes, by name (a newer version supersedes).
    warming_listeners: HashMap<String, u64>,
}

/// Applies what the ADS stream delivers.
pub struct XdsRuntime {
    clusters: Arc<ClusterManager>,
    /// Names of the bootstrap's static clusters (CDS may not touch them).
    static_names: BTreeSet<String>,
    /// EDS service names of static EDS clusters.
    static_eds: BTreeSet<String>,
    stats: Stats,
    state: Mutex<State>,
    subs: OnceLock<Subscriptions>,
    runtime: tokio::runtime::Handle,
    /// For timers that must not keep the runtime alive.
    me: std::sync::Weak<XdsRuntime>,
    /// Turns true after the first CDS update was handled (Envoy's initialisation waits for it).
    cds_initialized: tokio::sync::watch::Sender<bool>,
    /// The same for LDS.
    lds_initialized: tokio::sync::watch::Sender<bool>,
    listeners: Arc<ListenerManager>,
    /// The server context runtime objects are built with.
    server: Arc<ServerContext>,
    /// The SDS secrets wanted, and their sources.
    sds: Arc<sds::SdsRegistry>,
    /// What translation reads besides the resources (runtime, static secrets, reload hook).
    model: Arc<crate::model::context::TranslateContext>,
    concurrency: usize,
    lds_timeout: Option<Duration>,
    warming_seq: std::sync::atomic::AtomicU64,
    node: pb::core::Node,
    /// Separate SDS streams, by source (cluster and node setting).
    sds_streams: Mutex<HashMap<crate::model::xds::SdsSource, Subscriptions>>,
}

impl std::fmt::Debug for XdsRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdsRuntime").finish_non_exhaustive()
    }
}

/// What the dynamic configuration needs from the server.
pub struct Context {
    pub node: pb::core::Node,
    pub server: Arc<ServerContext>,
    /// The SDS secrets translation named (the same registry as the model context's `sds`).
    pub sds: Arc<sds::SdsRegistry>,
    pub clusters: Arc<ClusterManager>,
    pub listeners: Arc<ListenerManager>,
    pub model: Arc<crate::model::context::TranslateContext>,
    pub concurrency: usize,
}

/// Start dynamic configuration (on the current, main-thread runtime): ADS for the bootstrap's
/// `dynamic_resources`, and SDS streams for the secrets TLS contexts name.
pub fn start(
    dynamic: &crate::model::xds::DynamicResources,
    cx: Context,
) -> Result<Arc<XdsRuntime>, String> {
    let ads = dynamic.ads.as_ref();
    let Context {
        node,
        server,
        sds,
        clusters,
        listeners,
        model,
        concurrency,
    } = cx;
    let (store, clusters) = (&server.store, &clusters);
    let cds = dynamic.cds.is_some();
    let lds = dynamic.lds.is_some();
    let all = clusters.all();
    let runtime = Arc::new_cyclic(|me| XdsRuntime {
        clusters: clusters.clone(),
        static_names: all.iter().map(|c| c.config.name.to_string()).collect(),
        static_eds: all
            .iter()
            .filter_map(|c| c.config.eds.as_ref().map(|e| e.service_name.clone()))
            .collect(),
        stats: Stats::new(store),
        state: Mutex::default(),
        subs: OnceLock::new(),
        runtime: server.main.clone(),
        me: me.clone(),
        cds_initialized: tokio::sync::watch::channel(!cds).0,
        lds_initialized: tokio::sync::watch::channel(!lds).0,
        listeners,
        server: server.clone(),
        sds,
        model,
        concurrency,
        lds_timeout: dynamic.lds.as_ref().and_then(|l| l.initial_fetch_timeout),
        warming_seq: std::sync::atomic::AtomicU64::new(0),
        node,
        sds_streams: Mutex::default(),
    });
    runtime.stats.active_clusters.set(all.len() as i64);
    // File-based CDS/LDS (`path_config_source`).
    for (type_url, source) in [(CLUSTER, &dynamic.cds), (LISTENER, &dynamic.lds)] {
        if let Some(src) = source.as_ref().filter(|s| s.path.is_some()) {
            runtime.runtime.spawn(watch_file(
                Arc::downgrade(&runtime),
                type_url,
                src.path.clone().expect("filtered"),
                src.poll_interval,
            ));
        }
    }
    if let Some(ads) = ads {
        let mut initial = Vec::new();
        if dynamic.cds.as_ref().is_some_and(|s| s.path.is_none()) {
            initial.push((CLUSTER.to_string(), Interest::Wildcard));
        }
        if dynamic.lds.as_ref().is_some_and(|s| s.path.is_none()) {
            initial.push((LISTENER.to_string(), Interest::Wildcard));
        }
        if !runtime.static_eds.is_empty() {
            initial.push((
                ENDPOINT.to_string(),
                Interest::Names(runtime.static_eds.clone()),
            ));
        }
        let config = remora_xds::client::Config {
            target: runtime.target_of(&ads.cluster)?,
            node: runtime.node.clone(),
            delta: ads.delta,
            set_node_on_first_message_only: ads.set_node_on_first_message_only,
            backoff: (Duration::from_millis(500), Duration::from_secs(30)),
        };
        let subs = remora_xds::client::start(config, runtime.clone(), initial);
        let _ = runtime.subs.set(subs);
    }
    // RDS and SDS follow the listeners and clusters that use them (registered as they are
    // built, static ones already). The subscriptions change once the update that registered a
    // name is through: a listener or cluster it refuses has dropped its route tables and secret
    // sources by then, so nothing is asked for on its behalf.
    let weak = Arc::downgrade(&runtime);
    runtime.server.routes.on_change(move || {
        if let Some(rt) = weak.upgrade() {
            rt.runtime.clone().spawn(async move { rt.subscribe_rds() });
        }
    });
    let weak = Arc::downgrade(&runtime);
    runtime.sds.on_change(move || {
        if let Some(rt) = weak.upgrade() {
            rt.runtime.clone().spawn(async move {
                if let Err(e) = rt.subscribe_sds() {
                    tracing::error!("SDS: {e}");
                }
            });
        }
    });
    runtime.subscribe_rds();
    runtime.subscribe_sds()?;
    Ok(runtime)
}

/// File-based xDS: read `path` (YAML or JSON with `resources: [...]`, each with its `@type`)
/// whenever it changes and apply it like an xDS update. A file that does not parse or translate
/// is reported and the previous configuration stays.
async fn watch_file(
    rt: std::sync::Weak<XdsRuntime>,
    type_url: &'static str,
    path: std::path::PathBuf,
    every: Duration,
) {
    use std::os::unix::fs::MetadataExt;
    let mut seen = None;
    loop {
        let stamp = std::fs::metadata(&path)
            .ok()
            .map(|m| (m.modified().ok(), m.len(), m.ino()));
        if stamp.is_some() && stamp != seen {
            seen = stamp;
            let Some(rt) = rt.upgrade() else { return };
            let version = match seen {
                Some((Some(t), len, _)) => format!(
                    "{}.{len}",
                    t.duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_millis())
                        .unwrap_or(0)
                ),
                _ => "0".into(),
            };
            match read_resources(&path) {
                Ok(resources) => {
                    if let Err(refused) = rt.apply(type_url, &version, resources) {
                        let e = remora_xds::client::nack_text(&refused);
                        tracing::warn!(file = %path.display(), "Filesystem config update rejected: {e}");
                    } else {
                        tracing::info!(file = %path.display(), "applied");
                    }
                }
                Err(e) => {
                    tracing::warn!(file = %path.display(), "cannot use the file, keeping the previous configuration: {e}");
                }
            }
        }
        tokio::time::sleep(every).await;
    }
}

/// The `resources` of a file-based xDS document, as `Any`s.
fn read_resources(path: &std::path::Path) -> Result<Vec<Any>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let format = crate::config::load::format_of(path, text.as_bytes());
    let doc = crate::config::load::parse_document(&text, format, &path.display().to_string())
        .map_err(|e| e.to_string())?;
    let Some(items) = doc.get("resources").and_then(|r| r.as_array()) else {
        return Err("expected a document with `resources: [...]`".into());
    };
    let pool = crate::config::descriptors::envoy_pool();
    let mut decoder = crate::config::json::JsonDecoder::new(&pool, false);
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let msg = decoder
                .decode(
                    "google.protobuf.Any",
                    item,
                    &FieldPath::new(format!("resources[{i}]")),
                )
                .map_err(|e| e.to_string())?;
            Any::decode(prost::Message::encode_to_vec(&msg).as_slice()).map_err(|e| e.to_string())
        })
        .collect()
}

/// Applies what a separate SDS stream (to a cluster such as `sds-grpc`) delivers.
struct SdsStream {
    source: crate::model::xds::SdsSource,
    registry: Arc<sds::SdsRegistry>,
    dump: Arc<DumpCell>,
}

impl Handler for SdsStream {
    fn apply(
        &self,
        type_url: &str,
        version: &str,
        resources: Vec<Any>,
    ) -> Result<(), Vec<Refused>> {
        match type_url {
            SECRET => sds::apply(&self.registry, &self.dump, &self.source, version, resources),
            other => refuse_all(
                &resources,
                &format!("{other} is not subscribed on the SDS stream"),
            ),
        }
    }
    fn connected(&self, _up: bool) {}
}

impl Handler for XdsRuntime {
    fn apply(
        &self,
        type_url: &str,
        version: &str,
        resources: Vec<Any>,
    ) -> Result<(), Vec<Refused>> {
        match type_url {
            CLUSTER => self.apply_cds(version, resources),
            ENDPOINT => self.apply_eds(version, resources),
            ROUTE => self.apply_rds(version, resources),
            SECRET => sds::apply(
                &self.sds,
                &self.server.xds_dump,
                &crate::model::xds::SdsSource::Ads,
                version,
                resources,
            ),
            LISTENER => self.apply_lds(version, resources),
            other => refuse_all(&resources, &format!("{other} is not subscribed")),
        }
    }

    fn connected(&self, up: bool) {
        self.stats.connected_state.set(up as i64);
    }
}

/// Every resource of an update refused for the same reason.
fn refuse_all(resources: &[Any], why: &str) -> Result<(), Vec<Refused>> {
    let refused: Vec<Refused> = (0..resources.len().max(1))
        .map(|index| Refused {
            index,
            message: why.to_string(),
        })
        .collect();
    Err(refused)
}

/// `Ok` without refusals, else the refusals.
fn outcome(refused: Vec<Refused>) -> Result<(), Vec<Refused>> {
    if refused.is_empty() {
        Ok(())
    } else {
        Err(refused)
    }
}

// === impl XdsRuntime ===

impl XdsRuntime {
    /// Wait for the first CDS and LDS updates, at most `timeout` each (Envoy's
    /// `initial_fetch_timeout`).
    pub async fn initialized(&self, cds_timeout: Option<Duration>) {
        for (what, tx, timeout) in [
            ("CDS", &self.cds_initialized, cds_timeout),
            ("LDS", &self.lds_initialized, self.lds_timeout),
        ] {
            let mut rx = tx.subscribe();
            let wait = rx.wait_for(|done| *done);
            match timeout {
                Some(t) => {
                    if tokio::time::timeout(t, wait).await.is_err() {
                        tracing::warn!(
                            "no {what} response within initial_fetch_timeout; starting without it"
                        );
                    }
                }
                None => {
                    let _ = wait.await;
                }
            }
        }
    }

    /// An LDS update: the complete set of dynamic listeners.
    fn apply_lds(&self, version: &str, resources: Vec<Any>) -> Result<(), Vec<Refused>> {
        self.stats.lds_update_attempt.inc();
        let mut errors = Vec::new();
        let mut failures = Failures::new(version);
        let mut seen = BTreeSet::new();
        let mut state = self.lock();
        let static_names: BTreeSet<String> = self
            .listeners
            .all()
            .iter()
            .filter(|l| l.origin != ListenerOrigin::Lds)
            .map(|l| l.config.name.clone())
            .collect();
        let mut pool = None;
        for (i, any) in resources.iter().enumerate() {
            let refuse = |errors: &mut Vec<Refused>, message: String| {
                errors.push(Refused { index: i, message });
            };
            if any.type_url != LISTENER {
                refuse(
                    &mut errors,
                    format!("resources[{i}]: expected {LISTENER}, got {}", any.type_url),
                );
                continue;
            }
            let proto = match decode_resource::<pb::listener::Listener>(&mut pool, &any.value) {
                Ok(l) => l,
                Err(e) => {
                    // A listener whose TypedStruct fails keeps its previous version: it was
                    // sent, so it is not removed below.
                    match pb::listener::Listener::decode(any.value.as_slice()) {
                        Ok(l) => {
                            let e = format!("Listener '{}': {e}", l.name);
                            failures.listener(&l.name, any, &e);
                            refuse(&mut errors, e);
                            seen.insert(l.name);
                        }
                        Err(_) => refuse(
                            &mut errors,
                            format!("resources[{i}]: not a valid Listener: {e}"),
                        ),
                    }
                    continue;
                }
            };
            let name = proto.name.clone();
            if !seen.insert(name.clone()) {
                let e = format!("Listener '{name}': duplicate listener {name} found");
                failures.listener(&name, any, &e);
                refuse(&mut errors, e);
                continue;
            }
            if static_names.contains(&name) {
                let e = format!(
                    "Listener '{name}': a static listener of that name exists and cannot be changed by LDS"
                );
                failures.listener(&name, any, &e);
                refuse(&mut errors, e);
                continue;
            }
            if state.listeners.get(&name) == Some(&any.value) {
                failures.accepted(&name);
                continue;
            }
            match self.install_listener(&mut state, &name, &proto, any, version) {
                Ok(()) => failures.accepted(&name),
                Err((details, lines)) => {
                    failures.listener(&name, any, &details);
                    for line in lines {
                        refuse(&mut errors, line);
                    }
                }
            }
        }
        // Listeners no longer in the set go (one that failed translation stays as it was).
        let gone: Vec<String> = state
            .listeners
            .keys()
            .filter(|n| !seen.contains(*n))
            .cloned()
            .collect();
        for name in gone {
            state.listeners.remove(&name);
            state.warming_listeners.remove(&name);
            self.listeners.remove(&name);
            let mut d = self.dump();
            d.listeners.remove(&name);
            d.warming_listeners.remove(&name);
        }
        failures.record(&seen, &mut self.dump());
        self.listeners
            .stats
            .total_listeners_warming
            .set(state.warming_listeners.len() as i64);
        drop(state);
        self.lds_initialized.send_replace(true);
        if errors.is_empty() {
            self.stats.lds_update_success.inc();
            self.stats.lds_version.set(version_hash(version));
            self.server.config_version.set(&format!("lds {version}"));
        } else {
            self.stats.lds_update_rejected.inc();
        }
        outcome(errors)
    }

    /// Translate and build one listener of an LDS update and put it in place (or warming). A
    /// refusal gives the `error_state` details and the NACK lines.
    fn install_listener(
        &self,
        state: &mut State,
        name: &str,
        proto: &pb::listener::Listener,
        any: &Any,
        version: &str,
    ) -> Result<(), (String, Vec<String>)> {
        let path = FieldPath::new(format!("Listener '{name}'"));
        let config = crate::config::inputs::translate(|inputs| {
            let cx = self.model.with_inputs(inputs);
            crate::model::listener::Listener::from_proto(&path, proto, &cx)
        })
        .map_err(|e| (e.to_string(), e.iter().map(|one| one.alone()).collect()))?;
        let previous = self.listeners.get(name);
        let active = ActiveListener::new(
            Arc::new(config),
            ListenerOrigin::Lds,
            self.concurrency,
            &self.server,
            &self.clusters,
            previous.as_deref(),
        )
        .map_err(|e| {
            self.listeners.stats.listener_create_failure.inc();
            let e = format!("Listener '{name}': {e}");
            (e.clone(), vec![e])
        })?;
        self.listeners.stats.listener_create_success.inc();
        if state
            .listeners
            .insert(name.to_string(), any.value.clone())
            .is_some()
        {
            self.listeners.stats.listener_modified.inc();
        } else {
            self.listeners.stats.listener_added.inc();
        }
        let rec = record(version, any);
        if self.warm_listener(state, active) {
            let mut d = self.dump();
            d.warming_listeners.remove(name);
            d.listeners.insert(name.to_string(), rec);
        } else {
            self.dump().warming_listeners.insert(name.to_string(), rec);
        }
        Ok(())
    }

    /// Put a listener in service once its routes are in (Envoy's listener warming), or after
    /// the LDS `initial_fetch_timeout`. True when it went into service at once.
    fn warm_listener(&self, state: &mut State, l: Arc<ActiveListener>) -> bool {
        let tables = l.route_tables();
        if tables.iter().all(|t| t.is_ready()) && l.secrets_ready() {
            state.warming_listeners.remove(&l.config.name);
            self.listeners.activate(l);
            return true;
        }
        let seq = self
            .warming_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        state.warming_listeners.insert(l.config.name.clone(), seq);
        let weak = self.me.clone();
        let timeout = self.lds_timeout;
        self.runtime.spawn(async move {
            let routes = futures_util::future::join_all(tables.iter().map(|t| t.ready()));
            let secrets = async {
                while !l.secrets_ready() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            };
            let all = async {
                routes.await;
                secrets.await;
            };
            match timeout {
                Some(t) => {
                    if tokio::time::timeout(t, all).await.is_err() {
                        tracing::warn!(listener = %l.config.name, "routes or secrets did not arrive within initial_fetch_timeout; starting the listener without them");
                    }
                }
                None => {
                    all.await;
                }
            }
            let Some(rt) = weak.upgrade() else { return };
            let mut state = rt.lock();
            // Only the newest version of a listener goes into service.
            if state.warming_listeners.get(&l.config.name) == Some(&seq) {
                state.warming_listeners.remove(&l.config.name);
                {
                    let mut d = rt.dump();
                    if let Some(rec) = d.warming_listeners.remove(&l.config.name) {
                        d.listeners.insert(l.config.name.clone(), rec);
                    }
                }
                rt.listeners.activate(l);
                rt.listeners
                    .stats
                    .total_listeners_warming
                    .set(state.warming_listeners.len() as i64);
            }
        });
        false
    }

    /// Whether LDS listeners are still warming on their routes or secrets.
    pub fn listeners_warming(&self) -> bool {
        !self.lock().warming_listeners.is_empty()
    }

    /// This server's dump of dynamic resources.
    fn dump(&self) -> std::sync::MutexGuard<'_, Dump> {
        lock_dump(&self.server.xds_dump)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A CDS update: the complete set of dynamic clusters.
    fn apply_cds(&self, version: &str, resources: Vec<Any>) -> Result<(), Vec<Refused>> {
        self.stats.cds_update_attempt.inc();
        let mut errors = Vec::new();
        let mut seen = BTreeSet::new();
        let mut failed = BTreeSet::new();
        let mut activate = Vec::new();
        let mut state = self.lock();
        let mut pool = None;
        for (i, any) in resources.iter().enumerate() {
            let translated = translate_cluster(i, any, &self.static_names, &mut pool, &self.model);
            let translated = translated.and_then(|(name, config)| {
                if seen.insert(name.clone()) {
                    Ok((name, config))
                } else {
                    Err(vec![format!(
                        "Cluster '{name}': duplicate cluster {name} found"
                    )])
                }
            });
            let (name, config) = match translated {
                Ok(x) => x,
                Err(messages) => {
                    // A cluster that fails translation stays as it was (not removed below).
                    if let Ok(c) = ClusterProto::decode(any.value.as_slice()) {
                        let all = messages.join("\n");
                        tracing::warn!("cds: cluster '{}' config rejected: {all}", c.name);
                        failed.insert(c.name);
                    }
                    errors.extend(
                        messages
                            .into_iter()
                            .map(|message| Refused { index: i, message }),
                    );
                    continue;
                }
            };
            let existed = match self.dump().clusters.get(&name) {
                Some(r) if r.resource.value == any.value => continue, // unchanged
                Some(_) => true,
                None => false,
            };
            if existed {
                self.stats.cluster_modified.inc();
            } else {
                self.stats.cluster_added.inc();
            }
            if let Some(c) = self.add_cluster(&mut state, config) {
                activate.push(c);
            }
            self.dump()
                .clusters
                .insert(name.clone(), record(version, any));
        }
        // Clusters no longer in the set go.
        let gone: Vec<String> = self
            .dump()
            .clusters
            .keys()
            .filter(|n| !seen.contains(*n) && !failed.contains(*n))
            .cloned()
            .collect();
        for name in &gone {
            state.warming.remove(name);
            if let Some(task) = state.dns.remove(name) {
                task.abort();
            }
            if self.clusters.get(name).is_some() {
                self.stats.cluster_removed.inc();
            }
            self.dump().clusters.remove(name);
        }
        self.clusters.apply(activate, &gone);
        self.refresh_gauges(&state);
        self.subscribe_eds(&state);
        drop(state);
        self.cds_initialized.send_replace(true);
        if errors.is_empty() {
            self.stats.cds_update_success.inc();
            self.stats.cds_version.set(version_hash(version));
            self.server.config_version.set(&format!("cds {version}"));
        } else {
            self.stats.cds_update_rejected.inc();
        }
        outcome(errors)
    }

    /// Put a translated cluster in place: active now, or warming until its endpoints arrive.
    /// Returns the cluster to put in service now (`None`: it warms).
    fn add_cluster(&self, state: &mut State, config: ClusterConfig) -> Option<Arc<Cluster>> {
        let c = self.add_cluster_inner(state, config)?;
        self.gate_on_secrets(state, c)
    }

    /// A cluster that originates TLS with SDS certificates or trust goes into service once they
    /// have arrived (Envoy's cluster warming on its secrets), or after 15 s (Envoy's default
    /// initial fetch timeout), after which handshakes fail until they come.
    fn gate_on_secrets(&self, state: &mut State, c: Arc<Cluster>) -> Option<Arc<Cluster>> {
        if cluster_secrets_ready(&c) {
            return Some(c);
        }
        let name = c.config.name.to_string();
        state.warming.insert(name.clone(), c.clone());
        let weak = self.me.clone();
        self.runtime.spawn(async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
            while !cluster_secrets_ready(&c) && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let Some(rt) = weak.upgrade() else { return };
            let mut state = rt.lock();
            if state.warming.get(&name).is_some_and(|w| Arc::ptr_eq(w, &c)) {
                if !cluster_secrets_ready(&c) {
                    tracing::warn!(cluster = %name, "TLS secrets did not arrive within 15 s; using the cluster without them");
                }
                state.warming.remove(&name);
                rt.clusters.upsert(c);
                rt.refresh_gauges(&state);
            }
        });
        None
    }

    fn add_cluster_inner(&self, state: &mut State, config: ClusterConfig) -> Option<Arc<Cluster>> {
        let name = config.name.to_string();
        let c = Cluster::new(Arc::new(config), &self.server, cluster::Origin::Api);
        c.start(&self.server);
        if let Some(task) = state.dns.remove(&name) {
            task.abort();
        }
        match (c.config.discovery, c.config.eds.clone()) {
            (Discovery::Eds, Some(eds)) => {
                // Keep the previous cluster's hosts so their pooled connections survive.
                if let Some(old) = self.clusters.get(&name) {
                    c.hosts.store(old.hosts.load_full());
                }
                match state.assignments.get(&eds.service_name) {
                    Some(localities) => {
                        c.publish(cluster::hosts_of(localities));
                        state.warming.remove(&name);
                        Some(c)
                    }
                    None => {
                        state.warming.insert(name.clone(), c);
                        if let Some(t) = eds.initial_fetch_timeout {
                            self.warming_timeout(name, t);
                        }
                        None
                    }
                }
            }
            (Discovery::StrictDns | Discovery::LogicalDns, _) => {
                let task = self.runtime.spawn({
                    let c = c.clone();
                    async move {
                        let lookup = Arc::new(crate::upstream::dns_refresh::SystemLookup);
                        let mut dns = crate::upstream::dns_refresh::DnsCluster::new(c, lookup);
                        dns.resolve_all().await;
                        dns.run().await;
                    }
                });
                state.dns.insert(name, task.abort_handle());
                Some(c)
            }
            _ => Some(c),
        }
    }

    /// Envoy's `initial_fetch_timeout`: a warming cluster is used without endpoints after it.
    fn warming_timeout(&self, name: String, after: Duration) {
        let weak = self.me.clone();
        self.runtime.spawn(async move {
            tokio::time::sleep(after).await;
            let Some(rt) = weak.upgrade() else { return };
            let mut state = rt.lock();
            if let Some(c) = state.warming.remove(&name) {
                tracing::warn!(cluster = %name, "no endpoints within initial_fetch_timeout; using the cluster without them");
                rt.clusters.upsert(c);
                rt.refresh_gauges(&state);
            }
        });
    }

    /// An EDS update: endpoints for the named services.
    fn apply_eds(&self, version: &str, resources: Vec<Any>) -> Result<(), Vec<Refused>> {
        self.stats.eds_update_attempt.inc();
        let mut errors = Vec::new();
        let mut activate = Vec::new();
        let mut state = self.lock();
        // EDS clusters in service by the assignment name they follow.
        let active = self.clusters.snapshot();
        let mut by_service: HashMap<&str, Vec<&Arc<Cluster>>> = HashMap::new();
        for c in active.values() {
            if let Some(e) = &c.config.eds {
                by_service
                    .entry(e.service_name.as_str())
                    .or_default()
                    .push(c);
            }
        }
        let mut warming_by_service: HashMap<String, Vec<String>> = HashMap::new();
        for (n, c) in &state.warming {
            if let Some(e) = &c.config.eds {
                warming_by_service
                    .entry(e.service_name.clone())
                    .or_default()
                    .push(n.clone());
            }
        }
        let mut pool = None;
        for (i, any) in resources.iter().enumerate() {
            let refuse = |errors: &mut Vec<Refused>, message: String| {
                errors.push(Refused { index: i, message });
            };
            if any.type_url != ENDPOINT {
                refuse(
                    &mut errors,
                    format!("resources[{i}]: expected {ENDPOINT}, got {}", any.type_url),
                );
                continue;
            }
            let cla =
                match decode_resource::<pb::endpoint::ClusterLoadAssignment>(&mut pool, &any.value)
                {
                    Ok(c) => c,
                    Err(e) => {
                        refuse(&mut errors, format!("resources[{i}]: {e}"));
                        continue;
                    }
                };
            let service = cla.cluster_name.clone();
            let path = FieldPath::new(format!("ClusterLoadAssignment '{service}'"));
            let localities = match crate::model::cluster::endpoints_of(&path, &cla, Discovery::Eds)
            {
                Ok((l, _)) => l,
                Err(e) => {
                    for one in e.iter() {
                        refuse(&mut errors, one.alone());
                    }
                    continue;
                }
            };
            let hosts = cluster::hosts_of(&localities);
            state.assignments.insert(service.clone(), localities);
            update_record(&mut self.dump().endpoints, &service, version, any);
            // Active clusters get the new endpoints in place (unchanged hosts keep their pools);
            // warming ones become active.
            for c in by_service.get(service.as_str()).into_iter().flatten() {
                c.publish(hosts.clone());
            }
            for n in warming_by_service
                .remove(service.as_str())
                .unwrap_or_default()
            {
                if let Some(c) = state.warming.remove(&n) {
                    c.publish(hosts.clone());
                    if let Some(c) = self.gate_on_secrets(&mut state, c) {
                        activate.push(c);
                    }
                }
            }
        }
        self.clusters.apply(activate, &[]);
        self.refresh_gauges(&state);
        drop(state);
        if errors.is_empty() {
            self.stats.eds_update_success.inc();
        } else {
            self.stats.eds_update_rejected.inc();
        }
        outcome(errors)
    }

    /// An RDS update: route configurations by name, installed in place.
    fn apply_rds(&self, version: &str, resources: Vec<Any>) -> Result<(), Vec<Refused>> {
        let mut errors = Vec::new();
        let mut pool = None;
        for (i, any) in resources.iter().enumerate() {
            let refuse = |errors: &mut Vec<Refused>, message: String| {
                errors.push(Refused { index: i, message });
            };
            if any.type_url != ROUTE {
                refuse(
                    &mut errors,
                    format!("resources[{i}]: expected {ROUTE}, got {}", any.type_url),
                );
                continue;
            }
            let rc = match decode_resource::<pb::route::RouteConfiguration>(&mut pool, &any.value) {
                Ok(rc) => rc,
                Err(e) => {
                    match pb::route::RouteConfiguration::decode(any.value.as_slice()) {
                        Ok(rc) => {
                            self.server.routes.attempted(&rc.name);
                            self.server.routes.rejected(&rc.name);
                            refuse(
                                &mut errors,
                                format!("RouteConfiguration '{}': {e}", rc.name),
                            );
                        }
                        Err(_) => refuse(&mut errors, format!("resources[{i}]: {e}")),
                    }
                    continue;
                }
            };
            let name = rc.name.clone();
            self.server.routes.attempted(&name);
            let path = FieldPath::new(format!("RouteConfiguration '{name}'"));
            let translated = crate::config::inputs::translate(|inputs| {
                crate::model::route::RouteConfig::from_proto(&path, &rc, 4096, &inputs)
            });
            match translated {
                Ok(cfg) => {
                    self.server
                        .routes
                        .install(&name, Arc::new(cfg), version_hash(version));
                    update_record(&mut self.dump().routes, &name, version, any);
                }
                Err(e) => {
                    self.server.routes.rejected(&name);
                    for one in e.iter() {
                        refuse(&mut errors, one.alone());
                    }
                }
            }
        }
        outcome(errors)
    }

    /// Where a static cluster's first endpoint is (the xDS and SDS streams go there).
    fn target_of(&self, cluster: &str) -> Result<remora_xds::client::Target, String> {
        let c = self
            .clusters
            .get(cluster)
            .filter(|c| !c.added_via_api)
            .ok_or_else(|| format!("'{cluster}' is not a static cluster"))?;
        if let Some(path) = c.config.pipe.clone() {
            return Ok(remora_xds::client::Target::Unix(path));
        }
        let host = c
            .hosts
            .load()
            .all_hosts()
            .next()
            .cloned()
            .ok_or_else(|| format!("cluster '{cluster}' has no endpoint"))?;
        Ok(remora_xds::client::Target::Tcp(host.address))
    }

    /// Subscribe every secret some TLS context wants, on ADS or its own SDS stream.
    fn subscribe_sds(&self) -> Result<(), String> {
        use crate::model::xds::SdsSource;
        for (source, names) in self.sds.wanted() {
            match source {
                SdsSource::Ads => match self.subs.get() {
                    Some(subs) => subs.set(SECRET, Interest::Names(names)),
                    None => {
                        return Err("sds_config ads: {} needs dynamic_resources.ads_config".into());
                    }
                },
                SdsSource::Cluster {
                    cluster,
                    set_node_on_first_message_only,
                } => {
                    let source = SdsSource::Cluster {
                        cluster: cluster.clone(),
                        set_node_on_first_message_only,
                    };
                    let mut streams = self.sds_streams.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(subs) = streams.get(&source) {
                        subs.set(SECRET, Interest::Names(names));
                        continue;
                    }
                    let config = remora_xds::client::Config {
                        target: self
                            .target_of(&cluster)
                            .map_err(|e| format!("SDS cluster: {e}"))?,
                        node: self.node.clone(),
                        delta: false,
                        set_node_on_first_message_only,
                        backoff: (Duration::from_millis(500), Duration::from_secs(30)),
                    };
                    let subs = remora_xds::client::start(
                        config,
                        Arc::new(SdsStream {
                            source: source.clone(),
                            registry: self.sds.clone(),
                            dump: self.server.xds_dump.clone(),
                        }),
                        vec![(SECRET.to_string(), Interest::Names(names))],
                    );
                    streams.insert(source, subs);
                }
            }
        }
        Ok(())
    }

    fn subscribe_rds(&self) {
        let names = self.server.routes.names();
        if let Some(subs) = self.subs.get()
            && !names.is_empty()
        {
            subs.set(ROUTE, Interest::Names(names));
        }
    }

    fn refresh_gauges(&self, state: &State) {
        self.stats
            .active_clusters
            .set(self.clusters.snapshot().len() as i64);
        self.stats.warming_clusters.set(state.warming.len() as i64);
    }

    /// EDS follows the clusters: static EDS clusters plus every dynamic EDS cluster.
    fn subscribe_eds(&self, state: &State) {
        let mut names = self.static_eds.clone();
        let active = self.clusters.snapshot();
        for c in active.values().chain(state.warming.values()) {
            if let Some(e) = &c.config.eds {
                names.insert(e.service_name.clone());
            }
        }
        if let Some(subs) = self.subs.get() {
            subs.set(ENDPOINT, Interest::Names(names));
        }
    }
}

type ClusterProto = pb::cluster::Cluster;

/// A TLS cluster's certificates and trust are in (always true without TLS or with files).
fn cluster_secrets_ready(c: &Cluster) -> bool {
    c.config
        .tls
        .as_ref()
        .is_none_or(|t| crate::model::tls::sources_ready(&t.certificates, &t.trust))
}

/// Decode and translate one CDS resource; each error names the cluster and the field.
fn translate_cluster(
    i: usize,
    any: &Any,
    static_names: &BTreeSet<String>,
    pool: &mut Option<prost_reflect::DescriptorPool>,
    cx: &crate::model::context::TranslateContext,
) -> Result<(String, ClusterConfig), Vec<String>> {
    if any.type_url != CLUSTER {
        return Err(vec![format!(
            "resources[{i}]: expected {CLUSTER}, got {}",
            any.type_url
        )]);
    }
    let proto = decode_resource::<ClusterProto>(pool, &any.value)
        .map_err(|e| vec![format!("resources[{i}]: not a valid Cluster: {e}")])?;
    let name = proto.name.clone();
    if static_names.contains(&name) {
        return Err(vec![format!(
            "Cluster '{name}': a static cluster of that name exists and cannot be changed by CDS"
        )]);
    }
    let path = FieldPath::new(format!("Cluster '{name}'"));
    let config = crate::config::inputs::translate(|inputs| {
        ClusterConfig::from_proto(&path, &proto, &cx.with_inputs(inputs))
    })
    .map_err(|e| e.iter().map(|one| one.alone()).collect::<Vec<_>>())?;
    Ok((name, config))
}
