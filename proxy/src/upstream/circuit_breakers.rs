//! Envoy's circuit breakers (cluster `circuit_breakers.thresholds`): per routing priority,
//! cluster-wide limits on connections, pending requests, active requests and retries, shared
//! by every worker, with the `circuit_breakers.<priority>.*_open` gauges (1 while a limit is
//! reached) and, with `track_remaining`, the `remaining_*` gauges.

use crate::model::cluster::{CircuitBreakers as Config, Thresholds};
use crate::telemetry::stats::{Gauge, Kind, Store};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// One limited resource.
#[derive(Debug)]
pub struct Resource {
    current: AtomicU64,
    max: u64,
    open: Arc<Gauge>,
    remaining: Option<Arc<Gauge>>,
}

/// One priority's resources.
#[derive(Debug)]
pub struct Priority {
    pub connections: Resource,
    pub connection_pools: Resource,
    pub pending: Resource,
    pub requests: Resource,
    pub retries: Resource,
    retry_budget: Option<crate::model::cluster::RetryBudget>,
}

/// The cluster's resources, per routing priority.
#[derive(Debug)]
pub struct CircuitBreakers {
    pub default: Priority,
    pub high: Priority,
}

// === impl Resource ===

impl Resource {
    fn new(open: &Arc<Gauge>, remaining: Option<&Arc<Gauge>>, max: u64) -> Self {
        let r = Self {
            current: AtomicU64::new(0),
            max,
            open: open.clone(),
            remaining: remaining.cloned(),
        };
        r.publish(0);
        r
    }

    /// Below the limit now.
    #[inline]
    pub fn can_create(&self) -> bool {
        self.current.load(Relaxed) < self.max
    }

    /// Take one unit if the limit allows.
    #[inline]
    pub fn try_inc(&self) -> bool {
        let prev = self.current.fetch_add(1, Relaxed);
        if prev >= self.max {
            self.current.fetch_sub(1, Relaxed);
            return false;
        }
        self.publish(prev + 1);
        true
    }

    /// Take one unit regardless of the limit (Envoy opens a first connection to a host even
    /// when the cluster is at its connection limit).
    #[inline]
    pub fn inc(&self) {
        let n = self.current.fetch_add(1, Relaxed) + 1;
        self.publish(n);
    }

    #[inline]
    pub fn dec(&self) {
        let n = self.current.fetch_sub(1, Relaxed).saturating_sub(1);
        self.publish(n);
    }

    pub fn current(&self) -> u64 {
        self.current.load(Relaxed)
    }

    #[inline]
    fn publish(&self, n: u64) {
        self.publish_against(n, self.max);
    }

    #[inline]
    fn publish_against(&self, n: u64, max: u64) {
        let open = i64::from(n >= max);
        if self.open.value() != open {
            self.open.set(open);
        }
        if let Some(r) = &self.remaining {
            r.set(max.saturating_sub(n).min(i64::MAX as u64) as i64);
        }
    }
}

// === impl Priority ===

impl Priority {
    /// Whether one more retry may start: below `max_retries`, or with a `retry_budget`, below
    /// `budget_percent` of the active and pending requests (at least `min_retry_concurrency`).
    pub fn retry_allowed(&self) -> bool {
        let Some(b) = &self.retry_budget else {
            return self.retries.can_create();
        };
        let base = (self.requests.current() + self.pending.current()) as f64;
        let max = ((b.percent / 100.0) * base) as u64;
        let max = max.max(b.min_concurrency);
        let current = self.retries.current();
        self.retries.publish_against(current, max);
        current < max
    }
}

// === impl CircuitBreakers ===

/// One priority's gauges, registered as one block (10 000 clusters × 2 priorities would
/// otherwise be 100 000 registry entries).
const GAUGES: &[(&str, Kind)] = &[
    ("cx_open", Kind::Gauge),
    ("cx_pool_open", Kind::Gauge),
    ("rq_pending_open", Kind::Gauge),
    ("rq_open", Kind::Gauge),
    ("rq_retry_open", Kind::Gauge),
];
const GAUGES_TRACKED: &[(&str, Kind)] = &[
    ("cx_open", Kind::Gauge),
    ("cx_pool_open", Kind::Gauge),
    ("rq_pending_open", Kind::Gauge),
    ("rq_open", Kind::Gauge),
    ("rq_retry_open", Kind::Gauge),
    ("remaining_cx", Kind::Gauge),
    ("remaining_pending", Kind::Gauge),
    ("remaining_rq", Kind::Gauge),
    ("remaining_retries", Kind::Gauge),
    ("remaining_cx_pools", Kind::Gauge),
];

impl CircuitBreakers {
    /// `cluster.<stat_name>.circuit_breakers.{default,high}.*`.
    pub fn new(cfg: &Config, store: &Store, stat_name: &str) -> Self {
        let priority = |name: &str, t: &Thresholds| {
            let prefix = format!("cluster.{stat_name}.circuit_breakers.{name}.");
            let g: Vec<Arc<Gauge>> = store
                .block(
                    &prefix,
                    if t.track_remaining {
                        GAUGES_TRACKED
                    } else {
                        GAUGES
                    },
                )
                .iter()
                .map(|m| m.gauge())
                .collect();
            let remaining = |i: usize| t.track_remaining.then(|| &g[i]);
            Priority {
                connections: Resource::new(&g[0], remaining(5), t.max_connections),
                connection_pools: Resource::new(&g[1], remaining(9), t.max_connection_pools),
                pending: Resource::new(&g[2], remaining(6), t.max_pending_requests),
                requests: Resource::new(&g[3], remaining(7), t.max_requests),
                retries: Resource::new(&g[4], remaining(8), t.max_retries),
                retry_budget: t.retry_budget,
            }
        };
        Self {
            default: priority("default", &cfg.default),
            high: priority("high", &cfg.high),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_gauges() {
        let store = Store::default();
        let cfg = Config {
            default: Thresholds {
                max_requests: 2,
                track_remaining: true,
                ..Thresholds::default()
            },
            ..Config::default()
        };
        let cb = CircuitBreakers::new(&cfg, &store, "c");
        let g = |n: &str| {
            let name = format!("cluster.c.circuit_breakers.{n}");
            store
                .entries()
                .into_iter()
                .find(|e| *e.name == name)
                .map(|e| match e.metric {
                    crate::telemetry::stats::Metric::Gauge(g) => g.value(),
                    _ => unreachable!(),
                })
        };
        let rq = &cb.default.requests;
        assert_eq!(g("default.remaining_rq"), Some(2));
        assert!(rq.try_inc() && rq.try_inc());
        assert_eq!(g("default.rq_open"), Some(1));
        assert_eq!(g("default.remaining_rq"), Some(0));
        assert!(!rq.try_inc(), "the third is refused");
        assert_eq!(rq.current(), 2);
        rq.dec();
        assert_eq!(g("default.rq_open"), Some(0));
        assert_eq!(g("default.remaining_rq"), Some(1));
        assert!(cb.default.connections.can_create());
        assert_eq!(g("default.remaining_cx"), Some(1024));
        assert_eq!(g("high.rq_open"), Some(0));
        assert_eq!(g("high.remaining_rq"), None, "high: not tracked");
    }
}
