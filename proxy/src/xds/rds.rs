//! RDS: route tables that HTTP connection managers look up per request (an atomic swap), by
//! `route_config_name`. Connection managers register their table; an RDS update replaces the
//! table of every manager using that name, in place — connections and in-flight requests are
//! untouched (beyond Envoy, which drains listeners on some changes).

use crate::model::route::RouteConfig;
use crate::telemetry::stats::{Counter, Gauge, Store};
use arc_swap::ArcSwap;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock, Weak};

/// `http.<stat_prefix>.rds.<route_config_name>.*`
#[derive(Debug)]
pub struct RdsStats {
    pub update_attempt: Arc<Counter>,
    pub update_success: Arc<Counter>,
    pub update_rejected: Arc<Counter>,
    pub config_reload: Arc<Counter>,
    pub version: Arc<Gauge>,
}

/// One connection manager's route table.
#[derive(Debug)]
pub struct RouteTable {
    pub current: ArcSwap<RouteConfig>,
    rds: Option<RdsStats>,
    /// True once the table has real routes (inline, or RDS delivered): listener warming.
    ready: tokio::sync::watch::Sender<bool>,
}

impl RouteTable {
    /// Wait until the table has its routes.
    pub async fn ready(&self) {
        let mut rx = self.ready.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }

    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// An inline table (never updated).
    pub fn fixed(config: Arc<RouteConfig>) -> Arc<Self> {
        Arc::new(Self {
            current: ArcSwap::new(config),
            rds: None,
            ready: tokio::sync::watch::channel(true).0,
        })
    }

    /// A table RDS keeps current, registered under `name` in `registry`.
    pub fn rds(
        registry: &RouteRegistry,
        name: &str,
        initial: Arc<RouteConfig>,
        store: &Store,
        stat_prefix: &str,
    ) -> Arc<Self> {
        let p = format!("http.{stat_prefix}.rds.{name}.");
        let c = |n: &str| store.counter(&format!("{p}{n}"));
        let t = Arc::new(Self {
            current: ArcSwap::new(initial),
            rds: Some(RdsStats {
                update_attempt: c("update_attempt"),
                update_success: c("update_success"),
                update_rejected: c("update_rejected"),
                config_reload: c("config_reload"),
                version: store.gauge(&format!("{p}version")),
            }),
            ready: tokio::sync::watch::channel(false).0,
        });
        // Another connection manager already has this route configuration (a modified listener
        // replacing its predecessor, or a second listener): share what RDS delivered, as Envoy
        // shares one RDS subscription per name, instead of waiting for a push that may never
        // come because nothing changed.
        if let Some(live) = registry.tables(name).into_iter().find(|t| t.is_ready()) {
            t.current.store(live.current.load_full());
            t.ready.send_replace(true);
        }
        registry.register(name, &t);
        t
    }
}

/// The route tables connection managers use, by `route_config_name`, and the RDS subscription
/// that follows them. Held by the server context.
#[derive(Default)]
pub struct RouteRegistry {
    tables: Mutex<HashMap<String, Vec<Weak<RouteTable>>>>,
    /// Called when the set of names changes (the ADS client resubscribes).
    on_change: OnceLock<Box<dyn Fn() + Send + Sync>>,
}

impl std::fmt::Debug for RouteRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteRegistry").finish_non_exhaustive()
    }
}

impl RouteRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Weak<RouteTable>>>> {
        self.tables.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where to report a new name (set once, by the xDS runtime).
    pub fn on_change(&self, f: impl Fn() + Send + Sync + 'static) {
        let _ = self.on_change.set(Box::new(f));
    }

    fn register(&self, name: &str, t: &Arc<RouteTable>) {
        let mut r = self.lock();
        let new = !r.contains_key(name);
        r.entry(name.to_string())
            .or_default()
            .push(Arc::downgrade(t));
        drop(r);
        if new && let Some(f) = self.on_change.get() {
            f();
        }
    }

    /// Route configuration names some live connection manager uses.
    pub fn names(&self) -> BTreeSet<String> {
        let mut r = self.lock();
        r.retain(|_, v| {
            v.retain(|w| w.strong_count() > 0);
            !v.is_empty()
        });
        r.keys().cloned().collect()
    }

    fn tables(&self, name: &str) -> Vec<Arc<RouteTable>> {
        self.lock()
            .get(name)
            .map(|v| v.iter().filter_map(Weak::upgrade).collect())
            .unwrap_or_default()
    }

    /// Count an attempt on every table named `name`.
    pub fn attempted(&self, name: &str) {
        for t in self.tables(name) {
            if let Some(s) = &t.rds {
                s.update_attempt.inc();
            }
        }
    }

    /// Count a rejection on every table named `name`.
    pub fn rejected(&self, name: &str) {
        for t in self.tables(name) {
            if let Some(s) = &t.rds {
                s.update_rejected.inc();
            }
        }
    }

    /// Install a new configuration for `name`; returns how many tables took it.
    pub fn install(&self, name: &str, config: Arc<RouteConfig>, version: i64) -> usize {
        let ts = self.tables(name);
        for t in &ts {
            t.current.store(config.clone());
            t.ready.send_replace(true);
            if let Some(s) = &t.rds {
                s.update_success.inc();
                s.config_reload.inc();
                s.version.set(version);
            }
        }
        ts.len()
    }
}
