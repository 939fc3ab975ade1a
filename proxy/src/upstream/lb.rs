//! Load balancing (`lb_policy` ROUND_ROBIN, LEAST_REQUEST, RANDOM, RING_HASH, MAGLEV) over a
//! cluster's host set, with Envoy's priority selection, panic mode and locality weighting.
//! Round-robin position is per worker.

use super::cluster::Cluster;
use super::host::{Edf, Host, HostSet, Priority};
use crate::model::cluster::LbPolicy;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};

thread_local! {
    /// Round-robin cursors of this worker, by cluster id (and locality in its top bits). A
    /// per-worker cache: `prune_cursors` drops those of clusters that are gone.
    static CURSORS: RefCell<HashMap<u64, usize>> = RefCell::new(HashMap::new());
    /// LEAST_REQUEST schedules of this worker (unequal weights), keyed as the cursors.
    static LR_SCHEDULES: RefCell<HashMap<u64, LrSchedule>> = RefCell::new(HashMap::new());
}

/// An EDF schedule over effective weights, and the host list it was built for.
struct LrSchedule {
    set: Weak<HostSet>,
    prio: usize,
    panic: bool,
    edf: Edf,
}

/// The cluster id a cursor key belongs to (the locality is in the top 16 bits).
const CLUSTER_ID_BITS: u64 = (1 << 48) - 1;

/// Drop this worker's round-robin cursors of clusters for which `live` says no (the worker's
/// periodic sweep, with the clusters in service): cluster churn must not grow the map forever.
pub fn prune_cursors(live: impl Fn(u64) -> bool) {
    CURSORS.with(|c| c.borrow_mut().retain(|key, _| live(key & CLUSTER_ID_BITS)));
    LR_SCHEDULES.with(|c| c.borrow_mut().retain(|key, _| live(key & CLUSTER_ID_BITS)));
}

#[cfg(test)]
fn cursor_count() -> usize {
    CURSORS.with(|c| c.borrow().len())
}

/// What a request tells the load balancer.
#[derive(Debug, Clone, Copy, Default)]
pub struct Context {
    /// The request's hash (route `hash_policy`), for RING_HASH and MAGLEV.
    pub hash: Option<u64>,
    /// Host selection attempt (> 0 when a retry predicate rejected the previous choice).
    pub attempt: u32,
}

/// Choose a host, or `None` when the cluster has no host at all (`UH`).
pub fn choose(cluster: &Cluster) -> Option<Arc<Host>> {
    choose_with(cluster, Context::default())
}

/// Choose a host for a request with a hash and/or a selection attempt.
pub fn choose_with(cluster: &Cluster, ctx: Context) -> Option<Arc<Host>> {
    let set = cluster.hosts.load();
    choose_from(cluster, &set, ctx)
}

fn choose_from(cluster: &Cluster, set: &Arc<HostSet>, ctx: Context) -> Option<Arc<Host>> {
    if set.priorities.is_empty() {
        return None;
    }
    let policy = &cluster.config.lb_policy;
    // Hashing balancers pick the priority with the hash too, as Envoy does.
    let hash = if policy.is_hashing() {
        Some(ctx.hash.unwrap_or_else(|| fastrand::u64(..)))
    } else {
        None
    };
    let prio = match hash {
        Some(h) => pick_priority_at(&set.priority_load, (h % 100) as u32),
        None => pick_priority(&set.priority_load),
    };
    let p: &Priority = &set.priorities[prio];
    let panic = p.healthy_percent < cluster.config.healthy_panic_threshold || p.healthy.is_empty();
    let (hosts, mut schedule, table) = if panic {
        if !p.hosts.is_empty() {
            cluster.stats.lb_healthy_panic.inc();
        }
        (&p.hosts, &p.all_schedule[..], &p.all_table)
    } else {
        (&p.healthy, &p.healthy_schedule[..], &p.healthy_table)
    };
    if hosts.is_empty() {
        return None;
    }
    if let (Some(h), Some(t)) = (hash, table) {
        return t.pick(h, ctx.attempt).map(|i| hosts[i].clone());
    }
    // Locality-weighted: first the locality (by effective weight), then a host in it.
    let mut cursor_key = cluster.id;
    if !panic
        && let Some(l) = &p.localities
        && !l.schedule.is_empty()
    {
        let which = l.schedule[fastrand::usize(..l.schedule.len())] as usize;
        schedule = &l.schedules[which];
        cursor_key ^= (which as u64 + 1) << 48;
    }
    if schedule.is_empty() {
        return None;
    }
    let idx = match *policy {
        LbPolicy::RoundRobin | LbPolicy::RingHash { .. } | LbPolicy::Maglev { .. } => {
            let n = CURSORS.with(|c| {
                let mut c = c.borrow_mut();
                let cur = c
                    .entry(cursor_key)
                    .or_insert_with(|| fastrand::usize(..schedule.len().max(1)));
                *cur = cur.wrapping_add(1);
                *cur
            });
            schedule[n % schedule.len()] as usize
        }
        LbPolicy::Random => schedule[fastrand::usize(..schedule.len())] as usize,
        LbPolicy::LeastRequest {
            choice_count,
            active_request_bias,
        } => {
            // Equal weights: power of n choices over the hosts, fewest active requests.
            // Unequal: Envoy's EDF schedule over weight / (active + 1)^bias.
            if !p.equal_weights {
                let which = Which {
                    set,
                    prio,
                    panic,
                    key: cursor_key,
                };
                return least_request_edf(which, schedule, hosts, active_request_bias);
            }
            let score = |j: usize| hosts[j].stats.rq_active.load(Relaxed);
            let mut best: Option<usize> = None;
            for _ in 0..choice_count {
                let i = schedule[fastrand::usize(..schedule.len())] as usize;
                best = match best {
                    Some(b) if score(b) <= score(i) => Some(b),
                    _ => Some(i),
                };
            }
            best.expect("choice_count >= 2")
        }
    };
    Some(hosts[idx].clone())
}

/// The host list a schedule is for: a priority's healthy (or, in panic, all) hosts of a host
/// set, and the worker-local key of its cluster and locality.
struct Which<'a> {
    set: &'a Arc<HostSet>,
    prio: usize,
    panic: bool,
    key: u64,
}

/// Envoy's effective LEAST_REQUEST weight: `weight / (active + 1)^bias`.
fn effective_weight(host: &Host, bias: f64) -> f64 {
    let active = (host.stats.rq_active.load(Relaxed) + 1) as f64;
    let weight = f64::from(host.weight.max(1));
    if bias == 0.0 {
        weight
    } else if bias == 1.0 {
        weight / active
    } else {
        weight / active.powf(bias)
    }
}

/// LEAST_REQUEST with unequal weights, as Envoy: an EDF schedule of this worker over the
/// hosts (those in `schedule`, in host order), each queued again after its pick with its
/// effective weight at that moment. Built when the host list changes, seeded with a random
/// number of picks as Envoy's is, so that workers do not start on the same host.
fn least_request_edf(
    which: Which,
    schedule: &[u32],
    hosts: &[Arc<Host>],
    bias: f64,
) -> Option<Arc<Host>> {
    let weight = |i: u32| effective_weight(&hosts[i as usize], bias);
    let picked = LR_SCHEDULES.with(|m| {
        let mut m = m.borrow_mut();
        let fresh = |s: &LrSchedule| {
            s.prio == which.prio
                && s.panic == which.panic
                && s.set.upgrade().is_some_and(|a| Arc::ptr_eq(&a, which.set))
        };
        match m.get_mut(&which.key) {
            Some(state) if fresh(state) => state.edf.pick(weight),
            _ => {
                let mut state = lr_schedule(&which, schedule, weight);
                let picked = state.edf.pick(weight);
                m.insert(which.key, state);
                picked
            }
        }
    })?;
    Some(hosts[picked as usize].clone())
}

/// A new schedule over the hosts in `schedule` (in host order) with their weights now.
fn lr_schedule(which: &Which, schedule: &[u32], weight: impl Fn(u32) -> f64) -> LrSchedule {
    let mut ids = schedule.to_vec();
    ids.sort_unstable();
    ids.dedup();
    let entries: Vec<(u32, f64)> = ids.iter().map(|i| (*i, weight(*i))).collect();
    LrSchedule {
        set: Arc::downgrade(which.set),
        prio: which.prio,
        panic: which.panic,
        edf: Edf::with_picks(&entries, fastrand::u32(..)),
    }
}

fn pick_priority(load: &[u32]) -> usize {
    if load.len() <= 1 || load[0] == 100 {
        return 0;
    }
    pick_priority_at(load, fastrand::u32(..100))
}

/// The priority whose share of the load covers `point` (0..100).
fn pick_priority_at(load: &[u32], mut point: u32) -> usize {
    if load.len() <= 1 || load[0] == 100 {
        return 0;
    }
    for (i, l) in load.iter().enumerate() {
        if point < *l {
            return i;
        }
        point -= l;
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::cluster::{
        Cluster as Cfg, Discovery, DnsFamily, Endpoint, Health, LocalityEndpoints, UpstreamProtocol,
    };
    use crate::model::core::HostPort;

    fn cluster(policy: LbPolicy, eps: Vec<(u16, u32, Health, u32)>) -> Arc<Cluster> {
        let mut locs: Vec<LocalityEndpoints> = Vec::new();
        for (port, weight, health, prio) in eps {
            let ep = Endpoint {
                address: HostPort {
                    host: "127.0.0.1".into(),
                    port,
                },
                weight,
                health,
                hostname: String::new(),
                health_check: None,
            };
            match locs.iter_mut().find(|l| l.priority == prio) {
                Some(l) => l.endpoints.push(ep),
                None => locs.push(LocalityEndpoints {
                    locality: Default::default(),
                    weight: None,
                    priority: prio,
                    endpoints: vec![ep],
                }),
            }
        }
        let cfg = Cfg {
            name: "c".into(),
            stat_name: "c".into(),
            discovery: Discovery::Static,
            connect_timeout: std::time::Duration::from_secs(1),
            lb_policy: policy,
            localities: locs,
            overprovisioning_factor: 140,
            dns_refresh_rate: std::time::Duration::from_secs(5),
            dns_family: DnsFamily::Auto,
            dns: Default::default(),
            protocol: UpstreamProtocol::Http1,
            http2: crate::model::hcm::http2_settings(
                &crate::config::FieldPath::root(),
                &None,
                1 << 20,
            )
            .unwrap(),
            idle_timeout: None,
            max_connection_duration: None,
            max_requests_per_connection: None,
            per_connection_buffer_limit_bytes: 1 << 20,
            healthy_panic_threshold: 50.0,
            tcp_keepalive: None,
            tls: None,
            eds: None,
            pipe: None,
            circuit_breakers: Default::default(),
            istio: Default::default(),
            istio_service: None,
            metadata_exchange: None,
            outlier: None,
            health_checks: Vec::new(),
            locality_weighted: false,
        };
        Cluster::new(
            Arc::new(cfg),
            &crate::context::ServerContext::for_tests(),
            crate::upstream::cluster::Origin::Bootstrap,
        )
    }

    #[test]
    fn cursors_of_removed_clusters_are_pruned() {
        let before = cursor_count();
        let c = cluster(
            LbPolicy::RoundRobin,
            vec![(1, 1, Health::Healthy, 0), (2, 1, Health::Healthy, 0)],
        );
        choose(&c);
        assert_eq!(cursor_count(), before + 1);
        prune_cursors(|id| id != c.id);
        assert_eq!(cursor_count(), before);
    }

    #[test]
    fn round_robin_cycles_healthy_hosts() {
        let c = cluster(
            LbPolicy::RoundRobin,
            vec![
                (1, 1, Health::Healthy, 0),
                (2, 1, Health::Healthy, 0),
                (3, 1, Health::Unhealthy, 0),
                (4, 1, Health::Healthy, 0),
            ],
        );
        let mut counts = HashMap::new();
        for _ in 0..300 {
            *counts
                .entry(choose(&c).unwrap().address.port())
                .or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 3, "{counts:?}");
        assert!(counts.values().all(|n| *n == 100), "{counts:?}");
    }

    #[test]
    fn panic_mode_uses_all_hosts() {
        let c = cluster(
            LbPolicy::RoundRobin,
            vec![
                (1, 1, Health::Healthy, 0),
                (2, 1, Health::Unhealthy, 0),
                (3, 1, Health::Unhealthy, 0),
            ],
        );
        let mut seen = std::collections::HashSet::new();
        for _ in 0..30 {
            seen.insert(choose(&c).unwrap().address.port());
        }
        assert_eq!(seen.len(), 3);
        assert!(c.stats.lb_healthy_panic.value() > 0);
    }

    #[test]
    fn failover_to_next_priority_and_empty_cluster() {
        let c = cluster(
            LbPolicy::Random,
            vec![(1, 1, Health::Unhealthy, 0), (2, 1, Health::Healthy, 1)],
        );
        for _ in 0..50 {
            assert_eq!(choose(&c).unwrap().address.port(), 2);
        }
        let empty = cluster(LbPolicy::RoundRobin, vec![]);
        assert!(choose(&empty).is_none());
    }

    #[test]
    fn least_request_prefers_idle_hosts() {
        let c = cluster(
            LbPolicy::LeastRequest {
                choice_count: 2,
                active_request_bias: 1.0,
            },
            vec![(1, 1, Health::Healthy, 0), (2, 1, Health::Healthy, 0)],
        );
        let busy = c.hosts.load().priorities[0]
            .hosts
            .iter()
            .find(|h| h.address.port() == 1)
            .unwrap()
            .clone();
        busy.stats.rq_active.store(100, Relaxed);
        fastrand::seed(7);
        // Two draws with replacement: the busy host wins only when drawn twice (1 in 4), as in
        // Envoy. Expected 150 of 200; 120 is five standard deviations away.
        let picks: usize = (0..200)
            .filter(|_| choose(&c).unwrap().address.port() == 2)
            .count();
        assert!((120..200).contains(&picks), "{picks}");
    }

    #[test]
    fn least_request_unequal_weights_follow_envoys_edf_order() {
        let c = cluster(
            LbPolicy::LeastRequest {
                choice_count: 2,
                active_request_bias: 1.0,
            },
            vec![
                (1, 1, Health::Healthy, 0),
                (2, 2, Health::Healthy, 0),
                (3, 3, Health::Healthy, 0),
            ],
        );
        let seq: Vec<u16> = (0..18)
            .map(|_| choose(&c).unwrap().address.port())
            .collect();
        // Envoy 1.40's order (no request in flight), from wherever the random start put it.
        let period = [3, 2, 3, 1, 2, 3];
        let start = (0..6)
            .find(|o| (0..18).all(|i| seq[i] == period[(o + i) % 6]))
            .unwrap_or_else(|| panic!("{seq:?}"));
        assert!(start < 6);
    }

    #[test]
    fn least_request_active_request_bias() {
        // Weights 1 and 4; the heavy host has 9 requests in flight.
        let pick = |bias: f64| {
            let c = cluster(
                LbPolicy::LeastRequest {
                    choice_count: 2,
                    active_request_bias: bias,
                },
                vec![(1, 1, Health::Healthy, 0), (2, 4, Health::Healthy, 0)],
            );
            let heavy = c.hosts.load().priorities[0]
                .hosts
                .iter()
                .find(|h| h.address.port() == 2)
                .unwrap()
                .clone();
            heavy.stats.rq_active.store(9, Relaxed);
            fastrand::seed(11);
            (0..1000)
                .filter(|_| choose(&c).unwrap().address.port() == 2)
                .count()
        };
        // Bias 0: active requests do not matter, weights do: four picks in five.
        assert_eq!(pick(0.0), 800);
        // Bias 1: effective weights 4/10 and 1/1: the heavy host gets 2 picks in 7.
        let biased = pick(1.0);
        assert!((280..=290).contains(&biased), "{biased}");
    }
}
