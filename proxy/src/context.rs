//! The server context: the state runtime objects share, created once by `server::start` and
//! passed to everything it builds — never a process-global registry, so two servers can live in
//! one process. Translation has its own, smaller context (`model::context::TranslateContext`).

use crate::http::conn_manager::LocalInfo;
use crate::telemetry::access_log::Sinks;
use crate::telemetry::stats::Store;
use crate::xds::rds::RouteRegistry;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// What listeners, connection managers and clusters are built with.
#[derive(Debug)]
pub struct ServerContext {
    pub store: Arc<Store>,
    /// The node as configured (with `--service-node`/`--service-cluster`).
    pub local: Arc<LocalInfo>,
    /// Access-log files and streams, shared by path (`/reopen_logs`, the flusher).
    pub access_logs: Arc<Sinks>,
    /// The overload manager's `global_downstream_max_connections`.
    pub downstream: DownstreamConnections,
    /// `cluster_manager.outlier_detection.event_log_path`, opened at startup.
    pub outlier_events: Option<OutlierEventLog>,
    /// The main thread's runtime: timers, health checkers, DNS, xDS.
    pub main: tokio::runtime::Handle,
    /// Route tables by RDS name (connection managers register theirs; RDS updates them).
    pub routes: Arc<RouteRegistry>,
    /// The last configuration applied (`bootstrap`, then `lds <version>`/`cds <version>`): what
    /// a panic report names.
    pub config_version: crate::logging::ConfigVersion,
    /// What came over xDS, for `/config_dump`.
    pub xds_dump: Arc<crate::xds::DumpCell>,
    /// Checks the certificate files of started listeners and clusters for rotation (and the
    /// runtime's disk layers for a swapped root).
    pub cert_watcher: Arc<remora_certs::source::Watcher>,
    /// The runtime snapshot read at request time (disk layers re-read when swapped).
    pub runtime: Arc<crate::runtime::RuntimeLoader>,
    /// The tracing drivers (one per provider configuration) and the bootstrap's provider.
    pub tracers: Arc<crate::tracing::TracerManager>,
}

impl ServerContext {
    /// A context for unit tests: a fresh store, an empty node, a runtime of its own.
    #[cfg(test)]
    pub fn for_tests() -> Self {
        static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
        let rt = RT.get_or_init(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a test runtime")
        });
        Self {
            store: Arc::new(Store::default()),
            local: Arc::new(LocalInfo::default()),
            access_logs: Arc::new(Sinks::default()),
            downstream: DownstreamConnections::default(),
            outlier_events: None,
            main: rt.handle().clone(),
            routes: Arc::default(),
            config_version: Default::default(),
            xds_dump: Default::default(),
            cert_watcher: Default::default(),
            runtime: crate::runtime::RuntimeLoader::for_tests(Default::default()),
            tracers: Default::default(),
        }
    }
}

/// Where outlier ejection events are appended.
pub type OutlierEventLog = Arc<std::sync::Mutex<std::fs::File>>;

/// Downstream connections counted against the overload manager's global limit.
#[derive(Debug, Default)]
pub struct DownstreamConnections {
    limit: Option<u64>,
    active: AtomicU64,
}

impl DownstreamConnections {
    pub fn new(limit: Option<u64>) -> Self {
        Self {
            limit,
            active: AtomicU64::new(0),
        }
    }

    /// Whether a global limit is configured.
    pub fn limited(&self) -> bool {
        self.limit.is_some()
    }

    /// Take a slot; `false` (nothing taken) when the limit is reached.
    pub fn try_acquire(&self) -> bool {
        let Some(limit) = self.limit else {
            return true;
        };
        if self.active.fetch_add(1, Relaxed) >= limit {
            self.active.fetch_sub(1, Relaxed);
            return false;
        }
        true
    }

    pub fn release(&self) {
        if self.limit.is_some() {
            self.active.fetch_sub(1, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_global_limit_admits_up_to_its_value() {
        let d = DownstreamConnections::new(Some(2));
        assert!(d.try_acquire() && d.try_acquire());
        assert!(!d.try_acquire());
        d.release();
        assert!(d.try_acquire());
        let unlimited = DownstreamConnections::new(None);
        assert!((0..10).all(|_| unlimited.try_acquire()));
    }
}
