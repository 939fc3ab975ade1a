//! Runtime clusters: the cluster manager (name → cluster, swapped atomically), each cluster's
//! stats handles and its published host set (kept current for STRICT_DNS and LOGICAL_DNS
//! clusters by `dns_refresh`).

use super::host::{Host, HostSet};
use crate::context::ServerContext;
use crate::model::cluster::{Cluster as ClusterConfig, Discovery};
use crate::telemetry::stats::{CodeStats, Counter, Gauge, Histogram, LazyHistogram, Store};
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

/// `cluster.<name>.*` stats, resolved when the cluster is built — except the traffic group,
/// which with `deferred_stat_options.enable_deferred_creation_stats` is created on first use
/// (Envoy's `ClusterTrafficStats`): thousands of clusters that see no traffic then hold no
/// traffic stats, and `cluster.<name>.ClusterTrafficStats.initialized` says which did.
#[derive(Debug)]
pub struct ClusterStats {
    traffic: DeferredTraffic,
    pub membership_total: Arc<Gauge>,
    pub membership_healthy: Arc<Gauge>,
    pub membership_degraded: Arc<Gauge>,
    pub membership_excluded: Arc<Gauge>,
    pub membership_change: Arc<Counter>,
    pub max_host_weight: Arc<Gauge>,
    pub lb_healthy_panic: Arc<Counter>,
    pub update_attempt: Arc<Counter>,
    pub update_success: Arc<Counter>,
    pub update_failure: Arc<Counter>,
    pub update_empty: Arc<Counter>,
    pub update_no_rebuild: Arc<Counter>,
}

/// The stats a cluster's traffic updates (`upstream_cx_*`, `upstream_rq_*`).
#[derive(Debug)]
pub struct ClusterTrafficStats {
    pub upstream_cx_total: Arc<Counter>,
    pub upstream_cx_active: Arc<Gauge>,
    pub upstream_cx_http1_total: Arc<Counter>,
    pub upstream_cx_http2_total: Arc<Counter>,
    pub upstream_cx_connect_fail: Arc<Counter>,
    pub upstream_cx_connect_timeout: Arc<Counter>,
    pub upstream_cx_connect_ms: Arc<Histogram>,
    pub upstream_cx_length_ms: Arc<Histogram>,
    pub upstream_cx_destroy: Arc<Counter>,
    pub upstream_cx_destroy_local: Arc<Counter>,
    pub upstream_cx_destroy_remote: Arc<Counter>,
    pub upstream_cx_idle_timeout: Arc<Counter>,
    pub upstream_cx_max_requests: Arc<Counter>,
    pub upstream_cx_none_healthy: Arc<Counter>,
    pub upstream_cx_overflow: Arc<Counter>,
    pub upstream_rq_pending_overflow: Arc<Counter>,
    pub upstream_cx_pool_overflow: Arc<Counter>,
    pub upstream_cx_rx_bytes_total: Arc<Counter>,
    pub upstream_cx_tx_bytes_total: Arc<Counter>,
    pub upstream_rq_total: Arc<Counter>,
    pub upstream_rq_active: Arc<Gauge>,
    pub upstream_rq_timeout: Arc<Counter>,
    pub upstream_rq_rx_reset: Arc<Counter>,
    pub upstream_rq_tx_reset: Arc<Counter>,
    /// Created on first use, as Envoy's router creates it: a cluster no response came from has
    /// no `upstream_rq_time`.
    pub upstream_rq_time: LazyHistogram,
    pub upstream_rq_codes: CodeStats,
    pub upstream_rq_retry: Arc<Counter>,
    pub upstream_rq_retry_success: Arc<Counter>,
    pub upstream_rq_retry_limit_exceeded: Arc<Counter>,
    pub upstream_rq_retry_overflow: Arc<Counter>,
    pub upstream_rq_retry_backoff_exponential: Arc<Counter>,
    pub upstream_rq_retry_backoff_ratelimited: Arc<Counter>,
    pub upstream_rq_per_try_timeout: Arc<Counter>,
    pub upstream_rq_per_try_idle_timeout: Arc<Counter>,
    pub retry_or_shadow_abandoned: Arc<Counter>,
    /// `retry.upstream_rq_<code>`: the answers that were retried.
    pub retry_codes: CodeStats,
    pub external_rq_time: LazyHistogram,
    pub external_rq_codes: CodeStats,
    pub internal_rq_time: LazyHistogram,
    pub internal_rq_codes: CodeStats,
}

/// The traffic group, built now or on first use.
struct DeferredTraffic {
    stats: OnceLock<Box<ClusterTrafficStats>>,
    /// What building it later needs (None once built eagerly).
    later: Option<(Arc<Store>, Box<str>, Arc<Gauge>)>,
}

impl std::fmt::Debug for DeferredTraffic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeferredTraffic")
            .field("initialized", &self.stats.get().is_some())
            .finish()
    }
}

// === impl ClusterStats ===

impl ClusterStats {
    pub fn new(store: &Arc<Store>, stat_name: &str) -> Self {
        use crate::telemetry::stats::Kind::{Counter as C, Gauge as G};
        // Every cluster has these from the start: one registry block, not 12 (13 with deferred
        // traffic stats, whose `initialized` gauge is the last name) entries.
        const WITH_INITIALIZED: &[(&str, crate::telemetry::stats::Kind)] = &[
            ("membership_total", G),
            ("membership_healthy", G),
            ("membership_degraded", G),
            ("membership_excluded", G),
            ("membership_change", C),
            ("max_host_weight", G),
            ("lb_healthy_panic", C),
            ("update_attempt", C),
            ("update_success", C),
            ("update_failure", C),
            ("update_empty", C),
            ("update_no_rebuild", C),
            ("ClusterTrafficStats.initialized", G),
        ];
        const EAGER: &[(&str, crate::telemetry::stats::Kind)] = WITH_INITIALIZED.split_at(12).0;
        let p = format!("cluster.{stat_name}.");
        let deferred = store.deferred_creation();
        let m = store.block(&p, if deferred { WITH_INITIALIZED } else { EAGER });
        let traffic = if deferred {
            let initialized = m[12].gauge();
            let stats = OnceLock::new();
            // A cluster replaced under the same name keeps the traffic stats its predecessor
            // created, as Envoy does.
            if initialized.value() > 0 {
                let _ = stats.set(Box::new(ClusterTrafficStats::new(store, &p)));
            }
            DeferredTraffic {
                stats,
                later: Some((store.clone(), p.clone().into_boxed_str(), initialized)),
            }
        } else {
            DeferredTraffic {
                stats: OnceLock::from(Box::new(ClusterTrafficStats::new(store, &p))),
                later: None,
            }
        };
        Self {
            traffic,
            membership_total: m[0].gauge(),
            membership_healthy: m[1].gauge(),
            membership_degraded: m[2].gauge(),
            membership_excluded: m[3].gauge(),
            membership_change: m[4].counter(),
            max_host_weight: m[5].gauge(),
            lb_healthy_panic: m[6].counter(),
            update_attempt: m[7].counter(),
            update_success: m[8].counter(),
            update_failure: m[9].counter(),
            update_empty: m[10].counter(),
            update_no_rebuild: m[11].counter(),
        }
    }

    /// Whether the cluster ever opened a connection for traffic (active health checks use
    /// `no_traffic_interval` until it has).
    pub fn has_traffic(&self) -> bool {
        self.traffic
            .stats
            .get()
            .is_some_and(|t| t.upstream_cx_total.value() > 0)
    }

    /// The traffic stats, created now if deferred and not yet used.
    #[inline]
    pub fn traffic(&self) -> &ClusterTrafficStats {
        self.traffic.stats.get_or_init(|| {
            let (store, prefix, initialized) = self
                .traffic
                .later
                .as_ref()
                .expect("eagerly built traffic stats are always set");
            initialized.set(1);
            Box::new(ClusterTrafficStats::new(store, prefix))
        })
    }
}

impl ClusterTrafficStats {
    fn new(store: &Arc<Store>, p: &str) -> Self {
        let c = |n: &str| store.counter(&format!("{p}{n}"));
        let g = |n: &str| store.gauge(&format!("{p}{n}"));
        let h = |n: &str| store.histogram(&format!("{p}{n}"));
        Self {
            upstream_cx_total: c("upstream_cx_total"),
            upstream_cx_active: g("upstream_cx_active"),
            upstream_cx_http1_total: c("upstream_cx_http1_total"),
            upstream_cx_http2_total: c("upstream_cx_http2_total"),
            upstream_cx_connect_fail: c("upstream_cx_connect_fail"),
            upstream_cx_connect_timeout: c("upstream_cx_connect_timeout"),
            upstream_cx_connect_ms: h("upstream_cx_connect_ms"),
            upstream_cx_length_ms: h("upstream_cx_length_ms"),
            upstream_cx_destroy: c("upstream_cx_destroy"),
            upstream_cx_destroy_local: c("upstream_cx_destroy_local"),
            upstream_cx_destroy_remote: c("upstream_cx_destroy_remote"),
            upstream_cx_idle_timeout: c("upstream_cx_idle_timeout"),
            upstream_cx_max_requests: c("upstream_cx_max_requests"),
            upstream_cx_none_healthy: c("upstream_cx_none_healthy"),
            upstream_cx_overflow: c("upstream_cx_overflow"),
            upstream_rq_pending_overflow: c("upstream_rq_pending_overflow"),
            upstream_cx_pool_overflow: c("upstream_cx_pool_overflow"),
            upstream_cx_rx_bytes_total: c("upstream_cx_rx_bytes_total"),
            upstream_cx_tx_bytes_total: c("upstream_cx_tx_bytes_total"),
            upstream_rq_total: c("upstream_rq_total"),
            upstream_rq_active: g("upstream_rq_active"),
            upstream_rq_timeout: c("upstream_rq_timeout"),
            upstream_rq_rx_reset: c("upstream_rq_rx_reset"),
            upstream_rq_tx_reset: c("upstream_rq_tx_reset"),
            upstream_rq_time: LazyHistogram::new(store, format!("{p}upstream_rq_time")),
            upstream_rq_codes: CodeStats::new(store, &format!("{p}upstream_rq"), true, false),
            upstream_rq_retry: c("upstream_rq_retry"),
            upstream_rq_retry_success: c("upstream_rq_retry_success"),
            upstream_rq_retry_limit_exceeded: c("upstream_rq_retry_limit_exceeded"),
            upstream_rq_retry_overflow: c("upstream_rq_retry_overflow"),
            upstream_rq_retry_backoff_exponential: c("upstream_rq_retry_backoff_exponential"),
            upstream_rq_retry_backoff_ratelimited: c("upstream_rq_retry_backoff_ratelimited"),
            upstream_rq_per_try_timeout: c("upstream_rq_per_try_timeout"),
            upstream_rq_per_try_idle_timeout: c("upstream_rq_per_try_idle_timeout"),
            retry_or_shadow_abandoned: c("retry_or_shadow_abandoned"),
            retry_codes: CodeStats::new(store, &format!("{p}retry.upstream_rq"), true, false),
            external_rq_time: LazyHistogram::new(store, format!("{p}external.upstream_rq_time")),
            external_rq_codes: CodeStats::new(
                store,
                &format!("{p}external.upstream_rq"),
                true,
                false,
            ),
            internal_rq_time: LazyHistogram::new(store, format!("{p}internal.upstream_rq_time")),
            internal_rq_codes: CodeStats::new(
                store,
                &format!("{p}internal.upstream_rq"),
                true,
                false,
            ),
        }
    }
}

static NEXT_CLUSTER_ID: AtomicU64 = AtomicU64::new(1);

/// Where a cluster came from (`added_via_api` in /clusters and /config_dump).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Bootstrap,
    Api,
}

/// A cluster at runtime.
#[derive(Debug)]
pub struct Cluster {
    pub id: u64,
    pub config: Arc<ClusterConfig>,
    pub stats: ClusterStats,
    pub circuit_breakers: super::circuit_breakers::CircuitBreakers,
    /// `metadata_exchange.*` and this workload's frame, when the cluster runs Istio's metadata
    /// exchange.
    pub mx: Option<Box<crate::filters::network::metadata_exchange::Upstream>>,
    /// `outlier_detection` (boxed: most clusters have none, and there may be 10 000 of them).
    pub outlier: Option<Box<super::outlier::OutlierDetector>>,
    /// `health_checks`: the active health checker.
    pub health: Option<Box<super::health_check::HealthChecker>>,
    /// `cluster.<name>.ssl.*`, when the cluster originates TLS.
    pub ssl: Option<crate::transport_sockets::tls::TlsStats>,
    pub hosts: ArcSwap<HostSet>,
    pub added_via_api: bool,
    pub last_updated: SystemTime,
}

impl Cluster {
    /// Build a cluster (static hosts published). Spawns nothing: its timers and health
    /// checker run once [`Cluster::start`] is called on the complete, shared cluster.
    pub fn new(config: Arc<ClusterConfig>, cx: &ServerContext, origin: Origin) -> Arc<Self> {
        let store = &cx.store;
        let stats = ClusterStats::new(store, &config.stat_name);
        let c = Arc::new(Self {
            id: NEXT_CLUSTER_ID.fetch_add(1, Relaxed),
            stats,
            circuit_breakers: super::circuit_breakers::CircuitBreakers::new(
                &config.circuit_breakers,
                store,
                &config.stat_name,
            ),
            mx: config.metadata_exchange.as_ref().map(|m| {
                Box::new(crate::filters::network::metadata_exchange::Upstream {
                    stats: crate::filters::network::metadata_exchange::MxStats::new(store),
                    frame: crate::filters::network::metadata_exchange::frame(
                        &cx.local.node,
                        &m.additional_labels,
                    ),
                })
            }),
            outlier: config.outlier.as_deref().map(|o| {
                Box::new(super::outlier::OutlierDetector::new(
                    o.clone(),
                    store,
                    &config.stat_name,
                    cx.outlier_events.clone(),
                ))
            }),
            health: config.health_checks.first().map(|h| {
                Box::new(super::health_check::HealthChecker::new(
                    h.clone(),
                    store,
                    &config.stat_name,
                ))
            }),
            ssl: config.tls.as_ref().map(|tls| {
                let ssl = crate::transport_sockets::tls::TlsStats::new(
                    store,
                    &format!("cluster.{}", config.stat_name),
                );
                ssl.certificates(&tls.names, &tls.certificates, tls.trust.as_ref());
                ssl
            }),
            hosts: ArcSwap::from_pointee(HostSet::default()),
            added_via_api: origin == Origin::Api,
            last_updated: SystemTime::now(),
            config,
        });
        if c.config.discovery == Discovery::Static {
            c.publish(hosts_of(&c.config.localities));
        }
        c
    }

    /// The start phase: the active health checker and the outlier detector's interval timer,
    /// on the main runtime, for as long as the cluster lives (they hold it weakly); and the
    /// watching of its certificate files.
    pub fn start(self: &Arc<Self>, cx: &ServerContext) {
        let rt = &cx.main;
        if let Some(tls) = &self.config.tls {
            for source in tls.file_sources() {
                cx.cert_watcher.watch(source);
            }
        }
        super::health_check::HealthChecker::start(self, rt);
        if let Some(od) = &self.outlier {
            let every = od.interval();
            let weak = Arc::downgrade(self);
            rt.spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let Some(c) = weak.upgrade() else { return };
                    if let Some(od) = &c.outlier {
                        od.tick(&*c);
                    }
                }
            });
        }
    }

    /// Report how a request to `host` ended (outlier detection).
    #[inline]
    pub fn report(&self, host: &Host, outcome: super::outlier::Outcome) {
        if let Some(od) = &self.outlier {
            od.report(self, host, outcome);
        }
    }

    /// Publish a new host list (keeps the `Arc<Host>` of unchanged hosts, so their pools and
    /// stats survive a re-resolution).
    pub fn publish(&self, hosts: Vec<Arc<Host>>) {
        let old = self.hosts.load();
        let old_by_key: HashMap<(SocketAddr, u32), &Arc<Host>> = old
            .all_hosts()
            .map(|h| ((h.address, h.priority), h))
            .collect();
        let mut changed = old.total() != hosts.len();
        let merged: Vec<Arc<Host>> = hosts
            .into_iter()
            .map(|h| match old_by_key.get(&(h.address, h.priority)) {
                Some(o)
                    if o.weight == h.weight
                        && o.health == h.health
                        && o.hostname == h.hostname
                        && o.health_check == h.health_check
                        && o.locality_weight == h.locality_weight =>
                {
                    (*o).clone()
                }
                _ => {
                    changed = true;
                    // A new host of a health-checked cluster waits for its first check.
                    if self.health.is_some() && !h.hc_disabled() {
                        h.active_hc.start_pending();
                    }
                    h
                }
            })
            .collect();
        if !changed {
            self.stats.update_no_rebuild.inc();
            return;
        }
        self.stats.membership_change.inc();
        self.install(merged);
    }

    /// Build and publish the host set (health as of now, outlier ejections included).
    fn install(&self, hosts: Vec<Arc<Host>>) {
        let set = HostSet::build(
            hosts,
            self.config.overprovisioning_factor,
            &self.config.lb_policy,
            self.config.locality_weighted,
        );
        self.stats.membership_total.set(set.total() as i64);
        self.stats.membership_healthy.set(set.healthy() as i64);
        self.stats.membership_degraded.set(
            set.all_hosts()
                .filter(|h| h.health == crate::model::cluster::Health::Degraded)
                .count() as i64,
        );
        self.stats.membership_excluded.set(0);
        if sets_max_host_weight(self.config.discovery) {
            self.stats
                .max_host_weight
                .set(set.all_hosts().map(|h| h.weight).max().unwrap_or(0) as i64);
        }
        self.hosts.store(Arc::new(set));
        if let Some(hc) = &self.health {
            hc.hosts_changed();
        }
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }
}

impl super::outlier::Hosts for Cluster {
    fn hosts(&self) -> Vec<Arc<Host>> {
        self.hosts.load().all_hosts().cloned().collect()
    }

    fn republish(&self) {
        let hosts = super::outlier::Hosts::hosts(self);
        self.install(hosts);
    }

    fn name(&self) -> &str {
        &self.config.name
    }
}

/// Envoy sets `max_host_weight` only where it updates a dynamic host list (STRICT_DNS, EDS);
/// for STATIC and LOGICAL_DNS clusters the gauge stays 0.
fn sets_max_host_weight(d: Discovery) -> bool {
    matches!(d, Discovery::StrictDns | Discovery::Eds)
}

/// Hosts for endpoints that are IP addresses (STATIC clusters, EDS assignments); a host's
/// hostname is the endpoint's `hostname` (empty unless set), as in Envoy.
pub fn hosts_of(localities: &[crate::model::cluster::LocalityEndpoints]) -> Vec<Arc<Host>> {
    localities
        .iter()
        .flat_map(|l| {
            l.endpoints.iter().filter_map(move |e| {
                let addr = e.address.socket_addr()?;
                Some(Host::for_endpoint(addr, e.hostname.as_str().into(), e, l))
            })
        })
        .collect()
}

/// All clusters by name. Lookups are lock-free; the map is replaced as a whole.
#[derive(Debug, Default)]
pub struct ClusterManager {
    clusters: ArcSwap<HashMap<Arc<str>, Arc<Cluster>>>,
    /// Removed clusters whose stats are still in the store: released once the cluster object
    /// is gone (in-flight requests and pools may hold it a while), as Envoy drops a removed
    /// cluster's stats scope.
    retired: std::sync::Mutex<Vec<(String, std::sync::Weak<Cluster>)>>,
}

impl ClusterManager {
    pub fn new(clusters: Vec<Arc<Cluster>>) -> Self {
        let map = clusters
            .into_iter()
            .map(|c| (c.config.name.clone(), c))
            .collect();
        Self {
            clusters: ArcSwap::from_pointee(map),
            retired: Default::default(),
        }
    }

    /// Release the stats of removed clusters that no longer exist (and whose stats nothing
    /// else holds — a cluster of the same name added again keeps them).
    pub fn release_retired_stats(&self, store: &Store) {
        let mut gone = Vec::new();
        self.retired
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(prefix, cluster)| {
                if cluster.strong_count() > 0 {
                    return true;
                }
                gone.push(prefix.clone());
                false
            });
        store.release_unreferenced(&gone);
    }

    pub fn get(&self, name: &str) -> Option<Arc<Cluster>> {
        self.clusters.load().get(name).cloned()
    }

    /// Add or replace a cluster (CDS).
    pub fn upsert(&self, c: Arc<Cluster>) {
        self.clusters.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.insert(c.config.name.clone(), c.clone());
            m
        });
    }

    /// Add or replace many clusters and remove others in one swap (a CDS update).
    pub fn apply(&self, upserts: Vec<Arc<Cluster>>, removes: &[String]) {
        if upserts.is_empty() && removes.is_empty() {
            return;
        }
        let old = self.clusters.load_full();
        self.clusters.rcu(|m| {
            let mut m = HashMap::clone(m);
            for c in &upserts {
                m.insert(c.config.name.clone(), c.clone());
            }
            for r in removes {
                m.remove(r.as_str());
            }
            m
        });
        if removes.is_empty() {
            return;
        }
        let mut retired = self.retired.lock().unwrap_or_else(|e| e.into_inner());
        for r in removes {
            if let Some(c) = old.get(r.as_str()) {
                retired.push((
                    format!("cluster.{}.", c.config.stat_name),
                    Arc::downgrade(c),
                ));
            }
        }
    }

    /// Every cluster, unsorted (cheaper than [`ClusterManager::all`]).
    pub fn snapshot(&self) -> Arc<HashMap<Arc<str>, Arc<Cluster>>> {
        self.clusters.load_full()
    }

    pub fn all(&self) -> Vec<Arc<Cluster>> {
        let mut v: Vec<_> = self.clusters.load().values().cloned().collect();
        v.sort_by(|a, b| a.config.name.cmp(&b.config.name));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_host_weight_only_for_dynamic_host_lists() {
        assert!(!sets_max_host_weight(Discovery::Static));
        assert!(!sets_max_host_weight(Discovery::LogicalDns));
        assert!(sets_max_host_weight(Discovery::StrictDns));
        assert!(sets_max_host_weight(Discovery::Eds));
    }

    #[test]
    fn static_hosts_take_the_endpoints_hostname() {
        use crate::model::cluster::{Endpoint, Health, Locality, LocalityEndpoints};
        let ep = |host: &str, hostname: &str| Endpoint {
            address: crate::model::core::HostPort {
                host: host.into(),
                port: 80,
            },
            weight: 1,
            health: Health::Healthy,
            hostname: hostname.into(),
            health_check: None,
        };
        let l = LocalityEndpoints {
            locality: Locality::default(),
            weight: None,
            priority: 0,
            endpoints: vec![ep("127.0.0.1", ""), ep("127.0.0.2", "named.example")],
        };
        let hosts = hosts_of(&[l]);
        assert_eq!(&*hosts[0].hostname, "");
        assert_eq!(&*hosts[1].hostname, "named.example");
    }
}
