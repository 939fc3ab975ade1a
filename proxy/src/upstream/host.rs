//! Hosts and host sets: the endpoints of a cluster with their health, weight, locality and
//! priority, and Envoy's per-priority load and panic thresholds.

use crate::model::cluster::{EndpointHealthCheck, Health, Locality};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

static NEXT_HOST_ID: AtomicU64 = AtomicU64::new(1);

/// Per-host counters shown by `/clusters` (Envoy keeps these outside the stats store).
#[derive(Debug, Default)]
pub struct HostStats {
    pub cx_total: AtomicU64,
    pub cx_active: AtomicU64,
    pub cx_connect_fail: AtomicU64,
    pub rq_total: AtomicU64,
    pub rq_active: AtomicU64,
    pub rq_success: AtomicU64,
    pub rq_error: AtomicU64,
    pub rq_timeout: AtomicU64,
}

#[derive(Debug)]
pub struct Host {
    /// Unique for the life of the process; keys per-worker connection pools.
    pub id: u64,
    pub address: SocketAddr,
    /// The DNS name the host came from (or its address), for `auto_host_rewrite`.
    pub hostname: Arc<str>,
    pub weight: u32,
    pub health: Health,
    pub locality: Locality,
    pub priority: u32,
    pub stats: HostStats,
    /// With `auto_config`: what ALPN chose on the first connection (0 not yet known,
    /// 1 HTTP/1.1, 2 HTTP/2).
    pub alpn: std::sync::atomic::AtomicU8,
    /// Outlier detection's view of the host (used when the cluster has `outlier_detection`).
    pub outlier: super::outlier::HostOutlier,
    /// Active health checking's view (used when the cluster has `health_checks`).
    pub active_hc: super::health_check::HostHealth,
    /// The endpoint's `health_check_config`.
    pub health_check: Option<Arc<EndpointHealthCheck>>,
    /// Its locality's `load_balancing_weight` (0 when unset).
    pub locality_weight: u32,
}

impl Host {
    /// A host without an endpoint (tests).
    #[cfg(test)]
    pub fn new(
        address: SocketAddr,
        hostname: Arc<str>,
        weight: u32,
        health: Health,
        locality: Locality,
        priority: u32,
    ) -> Arc<Self> {
        Arc::new(Self::build(
            address, hostname, weight, health, locality, priority,
        ))
    }

    /// The host for an endpoint (at `address`, one of its resolved addresses) of a locality.
    pub fn for_endpoint(
        address: SocketAddr,
        hostname: Arc<str>,
        e: &crate::model::cluster::Endpoint,
        l: &crate::model::cluster::LocalityEndpoints,
    ) -> Arc<Self> {
        let mut h = Self::build(
            address,
            hostname,
            e.weight,
            e.health,
            l.locality.clone(),
            l.priority,
        );
        h.health_check = e.health_check.clone();
        h.locality_weight = l.weight.unwrap_or(0);
        Arc::new(h)
    }

    fn build(
        address: SocketAddr,
        hostname: Arc<str>,
        weight: u32,
        health: Health,
        locality: Locality,
        priority: u32,
    ) -> Self {
        Self {
            id: NEXT_HOST_ID.fetch_add(1, Relaxed),
            address,
            hostname,
            weight,
            health,
            locality,
            priority,
            stats: HostStats::default(),
            alpn: std::sync::atomic::AtomicU8::new(0),
            outlier: Default::default(),
            active_hc: Default::default(),
            health_check: None,
            locality_weight: 0,
        }
    }

    /// Whether active health checks leave this host alone (`disable_active_health_check`).
    pub fn hc_disabled(&self) -> bool {
        self.health_check.as_ref().is_some_and(|h| h.disabled)
    }

    /// Healthy by EDS, not ejected by outlier detection, not failed by active health checks.
    pub fn is_healthy(&self) -> bool {
        self.health == Health::Healthy && !self.outlier.is_ejected() && !self.active_hc.is_failed()
    }
}

/// One priority level.
#[derive(Debug, Default)]
pub struct Priority {
    pub hosts: Vec<Arc<Host>>,
    pub healthy: Vec<Arc<Host>>,
    /// Load-balancing schedules (host indexes into `healthy` / `hosts`), weights expanded.
    pub healthy_schedule: Vec<u32>,
    pub all_schedule: Vec<u32>,
    /// Percent of this priority's hosts that are healthy.
    pub healthy_percent: f64,
    /// Every host of the priority has the same weight (LEAST_REQUEST then compares active
    /// requests alone).
    pub equal_weights: bool,
    /// RING_HASH / MAGLEV: the consistent-hash tables over `healthy` and `hosts`.
    pub healthy_table: Option<super::hash::HashTable>,
    pub all_table: Option<super::hash::HashTable>,
    /// `locality_weighted_lb_config`: the healthy hosts by locality, and which locality to
    /// use, weighted by Envoy's effective locality weight.
    pub localities: Option<Localities>,
}

/// Healthy hosts grouped by locality, with a schedule of locality indexes.
#[derive(Debug, Default)]
pub struct Localities {
    /// Per locality: its hosts' schedule (indexes into the priority's `healthy`).
    pub schedules: Vec<Vec<u32>>,
    /// Locality indexes, each repeated by its effective weight (scaled).
    pub schedule: Vec<u32>,
}

/// A cluster's hosts by priority, published atomically; rebuilt on every membership change.
#[derive(Debug, Default)]
pub struct HostSet {
    pub priorities: Vec<Priority>,
    /// Percent of traffic each priority receives (sums to 100 when any host exists).
    pub priority_load: Vec<u32>,
}

/// Longest expanded schedule kept; larger weights are scaled down.
const MAX_SCHEDULE: u64 = 4096;

impl HostSet {
    /// A round-robin host set (tests).
    #[cfg(test)]
    pub fn new(hosts: Vec<Arc<Host>>, overprovisioning_factor: u32) -> Self {
        Self::build(
            hosts,
            overprovisioning_factor,
            &crate::model::cluster::LbPolicy::RoundRobin,
            false,
        )
    }

    /// The host set with what the cluster's load balancer needs precomputed.
    pub fn build(
        mut hosts: Vec<Arc<Host>>,
        overprovisioning_factor: u32,
        lb: &crate::model::cluster::LbPolicy,
        locality_weighted: bool,
    ) -> Self {
        hosts.sort_by_key(|h| h.priority);
        let max_prio = hosts
            .iter()
            .map(|h| h.priority)
            .max()
            .map(|p| p as usize + 1)
            .unwrap_or(0);
        let mut priorities: Vec<Priority> = (0..max_prio).map(|_| Priority::default()).collect();
        for h in hosts {
            let p = &mut priorities[h.priority as usize];
            if h.is_healthy() {
                p.healthy.push(h.clone());
            }
            p.hosts.push(h);
        }
        for p in &mut priorities {
            p.healthy_percent = if p.hosts.is_empty() {
                0.0
            } else {
                100.0 * p.healthy.len() as f64 / p.hosts.len() as f64
            };
            p.healthy_schedule = schedule(&p.healthy);
            p.all_schedule = schedule(&p.hosts);
            p.equal_weights = p.hosts.iter().all(|h| h.weight == p.hosts[0].weight);
            if lb.is_hashing() {
                p.healthy_table = Some(super::hash::HashTable::build(lb, &p.healthy));
                p.all_table = Some(super::hash::HashTable::build(lb, &p.hosts));
            }
            if locality_weighted {
                p.localities = Some(localities(p, overprovisioning_factor));
            }
        }
        let priority_load = priority_load(&priorities, overprovisioning_factor);
        Self {
            priorities,
            priority_load,
        }
    }

    pub fn all_hosts(&self) -> impl Iterator<Item = &Arc<Host>> {
        self.priorities.iter().flat_map(|p| p.hosts.iter())
    }

    pub fn total(&self) -> usize {
        self.priorities.iter().map(|p| p.hosts.len()).sum()
    }

    pub fn healthy(&self) -> usize {
        self.priorities.iter().map(|p| p.healthy.len()).sum()
    }
}

/// Envoy's priority load: each priority's health is `min(100, overprovisioning × healthy%)`;
/// priorities take load in order up to their health, normalised when the total health is
/// under 100. With no healthy host anywhere, all load goes to priority 0 (in panic).
pub fn priority_load(priorities: &[Priority], overprovisioning_factor: u32) -> Vec<u32> {
    if priorities.is_empty() {
        return vec![];
    }
    let health: Vec<u32> = priorities
        .iter()
        .map(|p| {
            if p.hosts.is_empty() {
                0
            } else {
                ((overprovisioning_factor as u64 * p.healthy.len() as u64) / p.hosts.len() as u64)
                    .min(100) as u32
            }
        })
        .collect();
    let total: u32 = health.iter().sum::<u32>().min(100);
    let mut load = vec![0u32; priorities.len()];
    if total == 0 {
        load[0] = 100;
        return load;
    }
    let mut remaining = 100u32;
    for (i, h) in health.iter().enumerate() {
        let share = (h * 100 / total).min(remaining);
        load[i] = share;
        remaining -= share;
    }
    // Rounding leftovers go to the first priority with health.
    if remaining > 0
        && let Some(i) = health.iter().position(|h| *h > 0)
    {
        load[i] += remaining;
    }
    load
}

/// Envoy's effective locality weight: `load_balancing_weight` × min(1, overprovisioning ×
/// healthy / total) for each locality of the priority; the schedule repeats each locality
/// index in proportion (100 slots per unit of availability-scaled weight, at most 4096 slots).
fn localities(p: &Priority, overprovisioning_factor: u32) -> Localities {
    let mut keys: Vec<&Locality> = Vec::new();
    for h in &p.hosts {
        if !keys.contains(&&h.locality) {
            keys.push(&h.locality);
        }
    }
    let position: std::collections::HashMap<*const Host, u32> = p
        .healthy
        .iter()
        .enumerate()
        .map(|(i, h)| (Arc::as_ptr(h), i as u32))
        .collect();
    let mut schedules = Vec::with_capacity(keys.len());
    let mut weights = Vec::with_capacity(keys.len());
    for k in &keys {
        let total = p.hosts.iter().filter(|h| &h.locality == *k).count();
        let healthy: Vec<Arc<Host>> = p
            .healthy
            .iter()
            .filter(|h| &h.locality == *k)
            .cloned()
            .collect();
        let weight = p
            .hosts
            .iter()
            .find(|h| &h.locality == *k)
            .map_or(0, |h| h.locality_weight);
        let availability = (f64::from(overprovisioning_factor) / 100.0 * healthy.len() as f64
            / total as f64)
            .min(1.0);
        weights.push(f64::from(weight) * availability);
        // Indexes into `healthy` for this locality's hosts, weight-scheduled.
        let local = schedule(&healthy);
        let index_of: Vec<u32> = healthy.iter().map(|h| position[&Arc::as_ptr(h)]).collect();
        schedules.push(local.iter().map(|i| index_of[*i as usize]).collect());
    }
    let sum: f64 = weights.iter().sum();
    let mut schedule = Vec::new();
    if sum > 0.0 {
        for (i, w) in weights.iter().enumerate() {
            let slots = ((w / sum) * MAX_SCHEDULE as f64).round() as usize;
            schedule.extend(std::iter::repeat_n(i as u32, slots));
        }
    }
    Localities {
        schedules,
        schedule,
    }
}

/// Weighted round-robin order of host indexes (equal weights: 0..n): one period of Envoy's
/// earliest-deadline-first schedule. Each host is due `1 / weight` after it was last picked;
/// the earliest deadline goes first, ties in the order the hosts were (re)queued.
fn schedule(hosts: &[Arc<Host>]) -> Vec<u32> {
    if hosts.is_empty() {
        return vec![];
    }
    let min = hosts.iter().map(|h| h.weight).min().unwrap_or(1).max(1);
    if hosts.iter().all(|h| h.weight == min) {
        return (0..hosts.len() as u32).collect();
    }
    let total: u64 = hosts.iter().map(|h| h.weight as u64).sum();
    let scale = if total > MAX_SCHEDULE {
        total.div_ceil(MAX_SCHEDULE)
    } else {
        1
    };
    let weights: Vec<f64> = hosts
        .iter()
        .map(|h| (h.weight as u64 / scale).max(1) as f64)
        .collect();
    edf(&weights)
}

/// A queued host: (deadline, queue order, host index), earliest first.
#[derive(PartialEq)]
struct Due(f64, u64, u32);

impl Eq for Due {}

impl Ord for Due {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        // Reversed: BinaryHeap is a max-heap.
        o.0.total_cmp(&self.0).then(o.1.cmp(&self.1))
    }
}

impl PartialOrd for Due {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

/// Envoy's earliest-deadline-first scheduler over host indexes: a host is due `1 / weight`
/// after it was queued; the earliest deadline goes first, ties in the order they were queued.
#[derive(Default)]
pub struct Edf {
    queue: std::collections::BinaryHeap<Due>,
    order: u64,
}

impl Edf {
    /// The hosts queued at time 0 in the order given, with their weights.
    pub fn new(entries: impl IntoIterator<Item = (u32, f64)>) -> Self {
        let mut edf = Edf::default();
        for (i, w) in entries {
            edf.push(0.0, i, w);
        }
        edf
    }

    /// The state after `picks` picks (reduced modulo 429 496 729) with constant weights, as
    /// Envoy seeds a schedule: each host first gets the whole picks its share guarantees
    /// (`floor(picks × w / W)`, weights nudged up by 1e-13 so that multiples stay apart), due
    /// at its next multiple of `1 / w`; the few picks left are made one by one.
    pub fn with_picks(entries: &[(u32, f64)], picks: u32) -> Self {
        let picks = picks % 429_496_729;
        let nudged: Vec<f64> = entries.iter().map(|(_, w)| w + 1e-13).collect();
        let total: f64 = nudged.iter().sum();
        let share = f64::from(picks) / total;
        let mut edf = Edf::default();
        let mut made = 0u32;
        for ((i, _), w) in entries.iter().zip(&nudged) {
            let mut floor = (w * f64::from(picks) / total) as u32;
            if floor > 0 && f64::from(floor) / w >= share {
                floor -= 1;
            }
            edf.queue.push(Due(f64::from(floor + 1) / w, edf.order, *i));
            edf.order += 1;
            made += floor;
        }
        let weight_of = |i: u32| entries.iter().find(|e| e.0 == i).map_or(1.0, |e| e.1);
        for _ in made..picks {
            edf.pick(weight_of);
        }
        edf
    }

    fn push(&mut self, now: f64, i: u32, weight: f64) {
        self.queue.push(Due(now + 1.0 / weight, self.order, i));
        self.order += 1;
    }

    /// The next host, queued again with its weight now.
    pub fn pick(&mut self, weight: impl Fn(u32) -> f64) -> Option<u32> {
        let Due(now, _, i) = self.queue.pop()?;
        self.push(now, i, weight(i));
        Some(i)
    }
}

/// As many EDF picks as the weights sum to (each host then picked `weight` times).
fn edf(weights: &[f64]) -> Vec<u32> {
    let picks = weights.iter().sum::<f64>() as usize;
    let mut edf = Edf::new(weights.iter().enumerate().map(|(i, w)| (i as u32, *w)));
    (0..picks)
        .filter_map(|_| edf.pick(|i| weights[i as usize]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(prio: u32, healthy: bool, weight: u32) -> Arc<Host> {
        Host::new(
            "127.0.0.1:1".parse().unwrap(),
            "h".into(),
            weight,
            if healthy {
                Health::Healthy
            } else {
                Health::Unhealthy
            },
            Locality::default(),
            prio,
        )
    }

    #[test]
    fn priority_failover_follows_envoy() {
        // P0 fully healthy: all load to P0.
        let s = HostSet::new(
            vec![host(0, true, 1), host(0, true, 1), host(1, true, 1)],
            140,
        );
        assert_eq!(s.priority_load, vec![100, 0]);
        // P0 half healthy: 70% (0.5 × 140), P1 takes the rest.
        let s = HostSet::new(
            vec![host(0, true, 1), host(0, false, 1), host(1, true, 1)],
            140,
        );
        assert_eq!(s.priority_load, vec![70, 30]);
        // Nothing healthy: everything to P0 (panic).
        let s = HostSet::new(vec![host(0, false, 1), host(1, false, 1)], 140);
        assert_eq!(s.priority_load, vec![100, 0]);
        // P0 down, P1 partly healthy: normalised to 100% on P1.
        let s = HostSet::new(
            vec![
                host(0, false, 1),
                host(1, true, 1),
                host(1, false, 1),
                host(1, false, 1),
            ],
            140,
        );
        assert_eq!(s.priority_load, vec![0, 100]);
    }

    #[test]
    fn edf_seeded_with_picks_continues_the_order() {
        // Weights 1, 2, 3 from any seed: still Envoy's order (ties at whole times intact).
        let period = [2, 1, 2, 0, 1, 2];
        for picks in [0u32, 1, 5, 23, 1_000_003, u32::MAX] {
            let w = [1.0, 2.0, 3.0];
            let mut edf = Edf::with_picks(&[(0, 1.0), (1, 2.0), (2, 3.0)], picks);
            let seq: Vec<u32> = (0..30)
                .map(|_| edf.pick(|i| w[i as usize]).unwrap())
                .collect();
            let at = (0..6).find(|o| (0..30).all(|k| seq[k] == period[(o + k) % 6]));
            assert!(at.is_some(), "{picks}: {seq:?}");
        }
    }

    #[test]
    fn weighted_schedule_is_envoys_edf() {
        // Envoy 1.40's sequence for weights 1, 2, 3 (measured by the differential suite).
        let hosts = vec![host(0, true, 1), host(0, true, 2), host(0, true, 3)];
        assert_eq!(schedule(&hosts), vec![2, 1, 2, 0, 1, 2]);
        // The heavy host's fifth deadline (1/5 added up five times) ties the light hosts' at
        // 1.0 but was queued after them, so they go first.
        let hosts = vec![host(0, true, 5), host(0, true, 1), host(0, true, 1)];
        let s = schedule(&hosts);
        assert_eq!(s.iter().filter(|i| **i == 0).count(), 5);
        assert_eq!(s, vec![0, 0, 0, 0, 1, 2, 0]);
    }
}
