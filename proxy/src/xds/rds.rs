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

    /// A table RDS keeps current, registered under `name`.
    pub fn rds(
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
        if let Some(live) = tables(name).into_iter().find(|t| t.is_ready()) {
            t.current.store(live.current.load_full());
            t.ready.send_replace(true);
        }
        register(name, &t);
        t
    }
}

#[derive(Default)]
struct Registry {
    tables: HashMap<String, Vec<Weak<RouteTable>>>,
}

fn registry() -> &'static Mutex<Registry> {
    static R: OnceLock<Mutex<Registry>> = OnceLock::new();
    R.get_or_init(Mutex::default)
}

/// Called when the set of names changes (the ADS client resubscribes).
static ON_CHANGE: OnceLock<Box<dyn Fn() + Send + Sync>> = OnceLock::new();

pub fn on_change(f: impl Fn() + Send + Sync + 'static) {
    let _ = ON_CHANGE.set(Box::new(f));
}

fn register(name: &str, t: &Arc<RouteTable>) {
    let mut r = registry().lock().unwrap_or_else(|e| e.into_inner());
    let new = !r.tables.contains_key(name);
    r.tables
        .entry(name.to_string())
        .or_default()
        .push(Arc::downgrade(t));
    drop(r);
    if new && let Some(f) = ON_CHANGE.get() {
        f();
    }
}

/// Route configuration names some live connection manager uses.
pub fn names() -> BTreeSet<String> {
    let mut r = registry().lock().unwrap_or_else(|e| e.into_inner());
    r.tables.retain(|_, v| {
        v.retain(|w| w.strong_count() > 0);
        !v.is_empty()
    });
    r.tables.keys().cloned().collect()
}

fn tables(name: &str) -> Vec<Arc<RouteTable>> {
    let r = registry().lock().unwrap_or_else(|e| e.into_inner());
    r.tables
        .get(name)
        .map(|v| v.iter().filter_map(Weak::upgrade).collect())
        .unwrap_or_default()
}

/// Count an attempt on every table named `name`.
pub fn attempted(name: &str) {
    for t in tables(name) {
        if let Some(s) = &t.rds {
            s.update_attempt.inc();
        }
    }
}

/// Count a rejection on every table named `name`.
pub fn rejected(name: &str) {
    for t in tables(name) {
        if let Some(s) = &t.rds {
            s.update_rejected.inc();
        }
    }
}

/// Install a new configuration for `name`; returns how many tables took it.
pub fn install(name: &str, config: Arc<RouteConfig>, version: i64) -> usize {
    let ts = tables(name);
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
