//! The server: loads and translates the bootstrap, builds clusters and listeners, resolves DNS
//! clusters before listeners open, runs the workers (one current-thread runtime per worker,
//! each with its own listener sockets and upstream pools) and, on the main thread, the admin
//! API, DNS refresh, stats flushing and signal handling.

use crate::cli::{Mode, Options};
use crate::config::load::load_bootstrap;
use crate::context::ServerContext;
use crate::http::conn_manager::LocalInfo;
use crate::listener::manager::{ListenerManager, WorkerCommand};
use crate::listener::{ActiveListener, ListenerManagerStats};
use crate::logging::LogControl;
use crate::model::bootstrap::Bootstrap;
use crate::model::listener::Direction;
use crate::telemetry::stats::{Counter, Gauge, Store};
use crate::telemetry::tags::TagProducer;
use crate::upstream::cluster::{self, Cluster, ClusterManager};
use crate::upstream::dns_refresh::{self, DnsCluster, Lookup, SystemLookup};
use crate::xds::sds::SdsRegistry;
use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap as BootstrapProto;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};
use tokio::sync::watch;

/// Envoy's server states (`server.state` gauge values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    Live = 0,
    Draining = 1,
    PreInitializing = 2,
    Initializing = 3,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Live => "LIVE",
            State::Draining => "DRAINING",
            State::PreInitializing => "PRE_INITIALIZING",
            State::Initializing => "INITIALIZING",
        }
    }
    fn from_u8(v: u8) -> Self {
        match v {
            0 => State::Live,
            1 => State::Draining,
            2 => State::PreInitializing,
            _ => State::Initializing,
        }
    }
}

/// `server.*` and `cluster_manager.*` stats.
#[derive(Debug)]
pub struct ServerStats {
    pub live: Arc<Gauge>,
    pub state: Arc<Gauge>,
    pub uptime: Arc<Gauge>,
    pub concurrency: Arc<Gauge>,
    pub total_connections: Arc<Gauge>,
    pub memory_physical_size: Arc<Gauge>,
    pub hot_restart_epoch: Arc<Gauge>,
    pub static_unknown_fields: Arc<Counter>,
    pub active_clusters: Arc<Gauge>,
    pub warming_clusters: Arc<Gauge>,
    pub cluster_added: Arc<Counter>,
}

impl ServerStats {
    fn new(store: &Store) -> Self {
        // Counted by CDS (`xds::Stats`, the same names); without it they exist at 0, as in Envoy.
        for name in [
            "cluster_manager.cluster_modified",
            "cluster_manager.cluster_removed",
        ] {
            let _ = store.counter(name);
        }
        // Envoy's async client's router stats (every Envoy has them): request mirroring counts
        // its copies in `rq_total` (`http::shadow`).
        for name in [
            "no_cluster",
            "no_route",
            "rq_direct_response",
            "rq_redirect",
            "rq_total",
        ] {
            let _ = store.counter(&format!("http.async-client.{name}"));
        }
        Self {
            live: store.gauge("server.live"),
            state: store.gauge("server.state"),
            uptime: store.gauge("server.uptime"),
            concurrency: store.gauge("server.concurrency"),
            total_connections: store.gauge("server.total_connections"),
            memory_physical_size: store.gauge("server.memory_physical_size"),
            hot_restart_epoch: store.gauge("server.hot_restart_epoch"),
            static_unknown_fields: store.counter("server.static_unknown_fields"),
            active_clusters: store.gauge("cluster_manager.active_clusters"),
            warming_clusters: store.gauge("cluster_manager.warming_clusters"),
            cluster_added: store.counter("cluster_manager.cluster_added"),
        }
    }
}

/// Everything the admin API and the main thread share.
pub struct ServerState {
    pub options: Options,
    pub bootstrap_proto: BootstrapProto,
    pub bootstrap: Bootstrap,
    pub loaded_at: SystemTime,
    pub started: Instant,
    pub clusters: Arc<ClusterManager>,
    pub listeners: Arc<ListenerManager>,
    pub stats: ServerStats,
    pub concurrency: usize,
    pub logs: LogControl,
    state: AtomicU8,
    pub healthcheck_failed: AtomicBool,
    pub shutdown: watch::Sender<bool>,
    pub admin_address: Mutex<Option<SocketAddr>>,
    /// The ADS runtime, when `dynamic_resources` has one.
    pub xds: Option<Arc<crate::xds::XdsRuntime>>,
    /// What the runtime objects were built with.
    pub context: Arc<ServerContext>,
    /// The admin listener's own access logs.
    pub admin_access_logs: Vec<crate::telemetry::access_log::AccessLogger>,
    /// The stats sinks and what their flushes share (flushed every `stats_flush_interval`, or
    /// on an admin stats read with `stats_flush_on_admin`).
    pub stats_flusher: crate::telemetry::sinks::Flusher,
}

impl std::fmt::Debug for ServerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerState").finish_non_exhaustive()
    }
}

impl ServerState {
    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Relaxed))
    }

    pub fn set_state(&self, s: State) {
        self.state.store(s as u8, Relaxed);
        self.stats.state.set(s as i64);
        self.stats.live.set(if s == State::Live { 1 } else { 0 });
    }

    /// Flush stats to the sinks (the timer's tick; an admin stats read's with
    /// `stats_flush_on_admin`).
    pub fn flush_stats(&self) {
        self.refresh_gauges();
        self.stats_flusher.flush();
    }

    /// Refresh the gauges computed on demand (before a stats scrape).
    pub fn refresh_gauges(&self) {
        self.stats
            .uptime
            .set(self.started.elapsed().as_secs() as i64);
        let total: i64 = self
            .listeners
            .all()
            .iter()
            .map(|l| l.stats.downstream_cx_active.value())
            .sum();
        self.stats.total_connections.set(total);
        if let Some(rss) = resident_bytes() {
            self.stats.memory_physical_size.set(rss as i64);
        }
    }

    /// `POST /drain_listeners`: stop (or, with `graceful`, first drain) the listeners.
    pub fn drain_listeners(self: &Arc<Self>, inbound_only: bool, graceful: bool) {
        let selected: Vec<_> = self
            .listeners
            .all()
            .iter()
            .filter(|l| !inbound_only || l.config.direction == Direction::Inbound)
            .cloned()
            .collect();
        if graceful {
            self.set_state(State::Draining);
        }
        for l in &selected {
            l.drain_all();
            self.listeners.stats.total_listeners_draining.inc();
        }
        let drain_time = std::time::Duration::from_secs(self.options.drain_time_s);
        let state = self.clone();
        let stop = move || {
            for l in &selected {
                if !*l.stop.borrow() {
                    l.shut();
                    state.listeners.stats.listener_stopped.inc();
                    state.listeners.stats.total_listeners_active.dec();
                    state.listeners.stats.total_listeners_draining.dec();
                }
            }
        };
        if graceful {
            tokio::spawn(async move {
                tokio::time::sleep(drain_time).await;
                stop();
            });
        } else {
            stop();
        }
    }
}

/// Resident set size of this process, from /proc.
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = status.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Why the server did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    Bind(#[from] crate::listener::BindError),
    #[error("admin: cannot bind '{0}': {1}")]
    AdminBind(SocketAddr, std::io::Error),
    #[error("{0}")]
    Other(String),
}

/// Load and translate the configuration named by the options.
pub fn load(
    options: &Options,
    sds: Arc<SdsRegistry>,
) -> Result<(BootstrapProto, Bootstrap, usize), crate::config::ConfigError> {
    let loaded = load_bootstrap(
        options.config_path.as_deref(),
        options.config_yaml.as_deref(),
        options.allow_unknown_static_fields,
    )?;
    for w in &loaded.unknown_field_warnings {
        tracing::warn!("unknown field (ignored because of --allow-unknown-static-fields): {w}");
    }
    // Translation is pure: the files and variables it names are read between its rounds.
    let model = crate::config::inputs::translate(|inputs| {
        Bootstrap::from_proto(&loaded.bootstrap, sds.clone(), inputs)
    })?;
    Ok((loaded.bootstrap, model, loaded.unknown_field_warnings.len()))
}

/// Build the stats store from the bootstrap's stats_config.
fn build_store(b: &Bootstrap) -> Result<Arc<Store>, String> {
    let tags = TagProducer::new(&b.stats.tags, b.stats.use_all_default_tags)?;
    // Stat names are checked once, when a stat is registered.
    let accept: Option<crate::telemetry::stats::NameFilter> = b.stats.matcher.clone().map(|m| {
        Box::new(move |name: &str| m.accepts(name)) as crate::telemetry::stats::NameFilter
    });
    // A statsd sink sends every value histograms record: they keep them until the flush.
    let log_values = b.stats.sinks.iter().any(|s| {
        use crate::model::stats_sinks::StatsSink as S;
        matches!(s, S::Statsd(_) | S::DogStatsd(_))
    });
    Ok(Arc::new(
        Store::new(tags, accept)
            .with_deferred_creation(b.deferred_creation_stats)
            .with_value_log(log_values),
    ))
}

/// Run remora with the given options (after logging is set up). Returns the exit code.
pub fn run(options: Options, logs: LogControl) -> i32 {
    let sds = Arc::new(SdsRegistry::default());
    let (proto, model, unknown) = match load(&options, sds.clone()) {
        Ok(x) => x,
        Err(e) => {
            eprintln!(
                "error initializing configuration '{}': {e}",
                config_name(&options)
            );
            return 1;
        }
    };
    if options.mode == Mode::Validate {
        for w in model.context.runtime.unused_keys() {
            eprintln!("warning: runtime key '{w}' is not used by remora");
        }
        println!("configuration '{}' OK", config_name(&options));
        return 0;
    }
    let main_rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("remora-main")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the main runtime: {e}");
            return 1;
        }
    };
    main_rt.block_on(async move {
        match start(options, proto, model, sds, unknown, logs).await {
            Ok(state) => {
                serve_until_shutdown(state).await;
                0
            }
            Err(e) => {
                eprintln!("error: {e}");
                1
            }
        }
    })
}

fn config_name(o: &Options) -> String {
    o.config_path
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "--config-yaml".into())
}

/// Build everything and start workers and the admin listener.
pub async fn start(
    options: Options,
    proto: BootstrapProto,
    model: Bootstrap,
    sds: Arc<SdsRegistry>,
    unknown_fields: usize,
    logs: LogControl,
) -> Result<Arc<ServerState>, StartError> {
    for k in model.context.runtime.unused_keys() {
        tracing::warn!("runtime key '{k}' is not used by remora");
    }
    let concurrency = options.concurrency.filter(|c| *c > 0).unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    if let Some(f) = &model.app_log_format {
        logs.set_format(f.clone()).map_err(StartError::Other)?;
    }
    let store = build_store(&model).map_err(StartError::Other)?;
    let stats = ServerStats::new(&store);
    {
        use remora_certs::source::ReloadEvent;
        let rotated = store.counter("server.certificate_rotation_success");
        let rejected = store.counter("server.certificate_rotation_rejected");
        model
            .context
            .reload
            .set(Arc::new(move |e: &ReloadEvent| match e {
                ReloadEvent::Rotated { .. } => rotated.inc(),
                ReloadEvent::Rejected { .. } => rejected.inc(),
            }));
    }
    stats.static_unknown_fields.add(unknown_fields as u64);
    stats.concurrency.set(concurrency as i64);
    stats.hot_restart_epoch.set(0);
    let cx = server_context(&options, &model, &store, &logs)?;
    if cx.runtime.watches_disk() {
        // Started now, on the complete context: a swapped disk-layer root is read again.
        cx.cert_watcher.watch(cx.runtime.clone());
    }

    let cluster_manager = start_clusters(&model, &cx, &stats).await;
    let stats_flusher = start_stats_sinks(&options, &proto, &model, &store, &cluster_manager)?;

    // Listeners: bind now so a port in use is an error naming the listener.
    let listeners = Arc::new(ListenerManager::new(
        ListenerManagerStats::new(&store),
        std::time::Duration::from_secs(options.drain_time_s),
    ));
    for (i, l) in model.listeners.iter().enumerate() {
        let active = ActiveListener::new(
            l.clone(),
            crate::listener::ListenerOrigin::Static(i),
            concurrency,
            &cx,
            &cluster_manager,
            None,
        )?;
        listeners.stats.listener_added.inc();
        listeners.stats.listener_create_success.inc();
        listeners.activate(active);
    }
    listeners.stats.total_listeners_warming.set(0);
    listeners.stats.total_listeners_draining.set(0);

    // ADS: clusters, endpoints, listeners and routes from the management server; SDS streams
    // for the secrets TLS contexts name.
    let files = [&model.dynamic.cds, &model.dynamic.lds]
        .iter()
        .any(|s| s.as_ref().is_some_and(|s| s.path.is_some()));
    let xds = if model.dynamic.ads.is_some() || files || !sds.wanted().is_empty() {
        let node = node_proto(&options, &proto);
        Some(
            crate::xds::start(
                &model.dynamic,
                crate::xds::Context {
                    node,
                    server: cx.clone(),
                    sds,
                    clusters: cluster_manager.clone(),
                    listeners: listeners.clone(),
                    model: model.context.clone(),
                    concurrency,
                },
            )
            .map_err(StartError::Other)?,
        )
    } else {
        None
    };

    let admin_access_logs = match &model.admin {
        Some(a) => a
            .access_logs
            .iter()
            .map(|c| crate::telemetry::access_log::AccessLogger::new(c.clone(), &cx.access_logs))
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(|e| StartError::Other(format!("admin.access_log: {e}")))?,
        None => Vec::new(),
    };
    let (shutdown, _) = watch::channel(false);
    let state = Arc::new(ServerState {
        context: cx,
        admin_access_logs,
        stats_flusher,
        options,
        bootstrap_proto: proto,
        bootstrap: model,
        loaded_at: SystemTime::now(),
        started: Instant::now(),
        clusters: cluster_manager,
        listeners,
        stats,
        concurrency,
        logs,
        state: AtomicU8::new(State::Initializing as u8),
        healthcheck_failed: AtomicBool::new(false),
        shutdown,
        admin_address: Mutex::new(None),
        xds,
    });
    state.set_state(State::Initializing);

    bind_admin(&state)?;

    wait_for_initial_config(&state).await;
    if state.options.mode == Mode::InitOnly {
        return Ok(state);
    }
    start_workers(&state);
    state.set_state(State::Live);
    for l in state.listeners.all().iter() {
        tracing::info!(listener = %l.config.name, "listening on {}", l.local_address);
    }
    Ok(state)
}

/// The bootstrap's node as remora presents it on its gRPC streams (xDS, the metrics service):
/// with the command line's identity, `remora` as the user agent.
fn node_proto(
    options: &Options,
    proto: &BootstrapProto,
) -> envoy_types::pb::envoy::config::core::v3::Node {
    let mut node = proto.node.clone().unwrap_or_default();
    with_cli_identity(options, &mut node.id, &mut node.cluster);
    if node.user_agent_name.is_empty() {
        node.user_agent_name = "remora".into();
    }
    node
}

/// The stats sinks, started on the main runtime (their clusters are the bootstrap's).
fn start_stats_sinks(
    options: &Options,
    proto: &BootstrapProto,
    model: &Bootstrap,
    store: &Arc<Store>,
    clusters: &Arc<ClusterManager>,
) -> Result<crate::telemetry::sinks::Flusher, StartError> {
    crate::telemetry::sinks::Flusher::start(
        &model.stats.sinks,
        crate::telemetry::sinks::StartContext {
            store,
            clusters,
            node: node_proto(options, proto),
        },
    )
    .map_err(StartError::Other)
}

/// `--service-node` / `--service-cluster` over the bootstrap's node.
fn with_cli_identity(options: &Options, id: &mut String, cluster: &mut String) {
    if let Some(n) = &options.service_node {
        *id = n.clone();
    }
    if let Some(c) = &options.service_cluster {
        *cluster = c.clone();
    }
}

/// The context runtime objects are built with (the outlier event log opened and the
/// access-log flusher started here: a bad path fails at startup, as in Envoy).
fn server_context(
    options: &Options,
    model: &Bootstrap,
    store: &Arc<Store>,
    logs: &LogControl,
) -> Result<Arc<ServerContext>, StartError> {
    let outlier_events = match &model.outlier_event_log {
        // Opened (created) now, as Envoy does, so a bad path fails at startup; ejection events
        // are appended by the outlier detectors.
        Some(p) => Some(Arc::new(Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| {
                    StartError::Other(format!(
                        "cluster_manager.outlier_detection.event_log_path: cannot open {}: {e}",
                        p.display()
                    ))
                })?,
        ))),
        None => None,
    };
    // The node as configured, with the command line's --service-node/--service-cluster.
    let mut node = model.node.clone();
    with_cli_identity(options, &mut node.id, &mut node.cluster);
    let local = Arc::new(LocalInfo {
        service_cluster: node.cluster.clone(),
        service_node: node.id.clone(),
        node,
        address: Some(LocalInfo::interface_address(matches!(
            options.local_address_ip_version,
            crate::cli::IpVersion::V6
        ))),
    });
    let access_logs = Arc::new(crate::telemetry::access_log::Sinks::default());
    access_logs
        .start_flusher(std::time::Duration::from_millis(
            options.file_flush_interval_msec.max(1),
        ))
        .map_err(|e| StartError::Other(format!("cannot start the access-log flusher: {e}")))?;
    let cx = Arc::new(ServerContext {
        store: store.clone(),
        local,
        access_logs,
        downstream: crate::context::DownstreamConnections::new(
            model.global_downstream_max_connections,
        ),
        outlier_events,
        main: tokio::runtime::Handle::current(),
        routes: Arc::default(),
        config_version: logs.config_version(),
        xds_dump: Default::default(),
        cert_watcher: Default::default(),
        runtime: crate::runtime::RuntimeLoader::new(model.context.runtime.clone(), store),
        tracers: Arc::new(crate::tracing::TracerManager::new(model.tracing.clone())),
    });
    cx.tracers.start(&cx.main, cx.runtime.clone());
    cx.config_version.set("bootstrap");
    Ok(cx)
}

/// The bootstrap's clusters, started, with DNS clusters resolved before any listener accepts
/// (Envoy's initialisation).
async fn start_clusters(
    model: &Bootstrap,
    cx: &Arc<ServerContext>,
    stats: &ServerStats,
) -> Arc<ClusterManager> {
    let clusters: Vec<Arc<Cluster>> = model
        .clusters
        .iter()
        .map(|c| Cluster::new(c.clone(), cx, cluster::Origin::Bootstrap))
        .collect();
    for c in &clusters {
        c.start(cx);
    }
    stats.cluster_added.add(clusters.len() as u64);
    stats.active_clusters.set(clusters.len() as i64);
    stats.warming_clusters.set(0);
    let lookup: Arc<dyn Lookup> = Arc::new(SystemLookup);
    let mut dns: Vec<DnsCluster> = clusters
        .iter()
        .filter(|c| dns_refresh::is_dns(c.config.discovery))
        .map(|c| DnsCluster::new(c.clone(), lookup.clone()))
        .collect();
    futures_util::future::join_all(dns.iter_mut().map(DnsCluster::resolve_all)).await;
    for d in dns {
        tokio::spawn(d.run());
    }
    Arc::new(ClusterManager::new(clusters))
}

/// The admin listener (its address written to `--admin-address-path`).
fn bind_admin(state: &Arc<ServerState>) -> Result<(), StartError> {
    if let Some(admin) = &state.bootstrap.admin {
        let std_listener = std::net::TcpListener::bind(admin.address)
            .map_err(|e| StartError::AdminBind(admin.address, e))?;
        std_listener
            .set_nonblocking(true)
            .map_err(|e| StartError::AdminBind(admin.address, e))?;
        let bound = std_listener
            .local_addr()
            .map_err(|e| StartError::AdminBind(admin.address, e))?;
        *state
            .admin_address
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(bound);
        if let Some(path) = &state.options.admin_address_path {
            std::fs::write(path, bound.to_string()).map_err(|e| {
                StartError::Other(format!(
                    "cannot write --admin-address-path {}: {e}",
                    path.display()
                ))
            })?;
        }
        let listener = tokio::net::TcpListener::from_std(std_listener)
            .map_err(|e| StartError::AdminBind(admin.address, e))?;
        tokio::spawn(crate::admin::serve(state.clone(), listener));
        tracing::info!("admin address: {bound}");
    }

    Ok(())
}

/// Envoy's initialisation: listeners start once the first CDS update (with its EDS warming)
/// is in, or initial_fetch_timeout has passed.
async fn wait_for_initial_config(state: &ServerState) {
    if let Some(xds) = &state.xds {
        let timeout = state
            .bootstrap
            .dynamic
            .cds
            .as_ref()
            .and_then(|c| c.initial_fetch_timeout);
        xds.initialized(timeout).await;
        // Listeners whose routes come from RDS, or whose certificates from SDS: Envoy's
        // init waits for those too (up to its default initial_fetch_timeout, 15 s), so the
        // first requests are not answered from an empty route table.
        // LDS listeners of the first update warm on theirs before the server is live, too.
        let ready = || {
            !xds.listeners_warming()
                && state
                    .listeners
                    .all()
                    .iter()
                    .filter(|l| l.origin != crate::listener::ListenerOrigin::Lds)
                    .all(|l| l.route_tables().iter().all(|t| t.is_ready()) && l.secrets_ready())
        };
        let wait = async {
            while !ready() {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        };
        if tokio::time::timeout(std::time::Duration::from_secs(15), wait)
            .await
            .is_err()
        {
            tracing::warn!(
                "static listeners' routes or secrets did not arrive within 15 s; starting without them"
            );
        }
    }
}

/// One thread per worker, each with a current-thread runtime, its listener sockets and its pools.
fn start_workers(state: &Arc<ServerState>) {
    for i in 0..state.concurrency {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<WorkerCommand>();
        let mut shutdown = state.shutdown.subscribe();
        let clusters = state.clusters.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("remora-worker-{i}"))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!("worker {i}: cannot start runtime: {e}");
                        return;
                    }
                };
                rt.block_on(async move {
                    // Listeners arrive over the channel: the static ones now, LDS ones later.
                    tokio::spawn(async move {
                        while let Some(WorkerCommand::Accept(l, s)) = rx.recv().await {
                            tokio::spawn(l.accept_loop(s));
                        }
                    });
                    tokio::spawn(async move {
                        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
                        loop {
                            tick.tick().await;
                            crate::upstream::pool::sweep();
                            let live: std::collections::HashSet<u64> =
                                clusters.snapshot().values().map(|c| c.id).collect();
                            crate::upstream::lb::prune_cursors(|id| live.contains(&id));
                        }
                    });
                    crate::listener::stopped(&mut shutdown).await;
                });
            });
        match spawned {
            Ok(_) => state.listeners.add_worker(tx),
            Err(e) => tracing::error!("cannot start worker {i}: {e}"),
        }
    }
}

/// Run the main thread's duties until shutdown (signal or `/quitquitquit`).
pub async fn serve_until_shutdown(state: Arc<ServerState>) {
    let flush_every = state.bootstrap.stats.flush_interval;
    let on_timer = !state.bootstrap.stats.flush_on_admin;
    let flusher = {
        let state = state.clone();
        tokio::spawn(async move {
            if !on_timer {
                return; // stats_flush_on_admin: admin stats reads flush
            }
            crate::telemetry::sinks::flush_every(flush_every, || state.flush_stats()).await;
        })
    };
    // Removed clusters' stats go once the clusters are gone (checked every second).
    let retire = {
        let state = state.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tick.tick().await;
                state.clusters.release_retired_stats(&state.context.store);
            }
        })
    };
    let mut shutdown = state.shutdown.subscribe();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let term_fut = async {
        match term.as_mut() {
            Some(t) => {
                t.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("caught SIGINT"),
        _ = term_fut => tracing::info!("caught SIGTERM"),
        _ = crate::listener::stopped(&mut shutdown) => tracing::info!("shutting down (admin /quitquitquit)"),
    }
    flusher.abort();
    retire.abort();
    for l in state.listeners.all().iter() {
        l.stop.send_replace(true);
    }
    state.shutdown.send_replace(true);
    state.context.access_logs.flush_all();
    tracing::info!("exiting");
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A bootstrap whose listener answers `body` directly and whose cluster (never used) has
    /// outlier detection and a health check: tasks, stats and a node of its own.
    fn bootstrap(node: &str, body: &str) -> String {
        format!(
            r#"node: {{id: {node}, cluster: c}}
static_resources:
  listeners:
  - name: l
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: l
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: /}}
                direct_response: {{status: 200, body: {{inline_string: {body}}}}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
  - name: backend
    connect_timeout: 1s
    outlier_detection: {{consecutive_5xx: 5}}
    health_checks: [{{timeout: 1s, interval: 60s, unhealthy_threshold: 1, healthy_threshold: 1, tcp_health_check: {{}}}}]
    load_assignment:
      cluster_name: backend
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 9}}}}}}}}]}}]
"#
        )
    }

    async fn serve(node: &str, body: &str) -> Arc<ServerState> {
        let yaml = bootstrap(node, body);
        let options =
            Options::try_parse_from(["remora", "--config-yaml", &yaml, "--concurrency", "1"])
                .expect("options");
        let sds = Arc::new(SdsRegistry::default());
        let (proto, model, unknown) = load(&options, sds.clone()).expect("loads");
        start(options, proto, model, sds, unknown, LogControl::disabled())
            .await
            .expect("starts")
    }

    async fn body_from(state: &ServerState) -> String {
        let addr = state.listeners.all()[0].local_address;
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out.rsplit("\r\n\r\n")
            .next()
            .unwrap_or_default()
            .to_string()
    }

    /// No process-global registry: two servers in one process keep their own configuration,
    /// node, stats and clusters.
    #[tokio::test]
    async fn two_servers_live_in_one_process() {
        let a = serve("node-a", "from-a").await;
        let b = serve("node-b", "from-b").await;
        assert_eq!(body_from(&a).await, "from-a");
        assert_eq!(body_from(&b).await, "from-b");
        assert_eq!(body_from(&a).await, "from-a");
        assert_eq!(a.context.local.node.id, "node-a");
        assert_eq!(b.context.local.node.id, "node-b");
        let requests = |s: &ServerState| {
            s.context
                .store
                .counter("http.l.downstream_rq_total")
                .value()
        };
        assert_eq!((requests(&a), requests(&b)), (2, 1));
        assert!(!Arc::ptr_eq(&a.context.routes, &b.context.routes));
        for s in [&a, &b] {
            s.shutdown.send_replace(true);
            for l in s.listeners.all().iter() {
                l.stop.send_replace(true);
            }
        }
    }
}

#[cfg(test)]
mod server_stats_tests {
    use super::*;

    #[test]
    fn cluster_manager_counters_exist_without_cds() {
        let store = Store::default();
        let _ = ServerStats::new(&store);
        let names: Vec<String> = store.entries().iter().map(|e| e.name.to_string()).collect();
        for n in [
            "cluster_manager.cluster_added",
            "cluster_manager.cluster_modified",
            "cluster_manager.cluster_removed",
        ] {
            assert!(names.iter().any(|x| x == n), "{n}");
        }
    }
}
