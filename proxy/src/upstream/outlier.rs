//! Envoy's outlier detection (cluster `outlier_detection`): passive health from real traffic.
//!
//! Each response (or local-origin failure: connect failure, timeout, reset) is charged to its
//! host. Consecutive 5xx, consecutive gateway failures (502/503/504) and, with
//! `split_external_local_origin_errors`, consecutive local-origin failures eject a host when
//! they reach their threshold; every `interval` the success-rate and failure-percentage
//! detectors look at the interval's traffic, and ejected hosts whose time is up return. An
//! ejection lasts `base_ejection_time` × the number of times the host was ejected (capped at
//! `max_ejection_time`, plus up to `max_ejection_time_jitter`); `max_ejection_percent` bounds
//! how many hosts are out at once (with `always_eject_one_host`, one host always may be).
//! An ejected host leaves the healthy set (so the panic threshold applies) and shows
//! `/failed_outlier_check` in `/clusters`. Stats: `cluster.<n>.outlier_detection.*`.

use crate::model::cluster::OutlierConfig;
use crate::telemetry::stats::{Counter, Gauge, Kind, Store};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;
use tokio::time::Instant;

/// A host's outlier state.
#[derive(Debug, Default)]
pub struct HostOutlier {
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    consecutive_local: AtomicU32,
    /// This interval's external-origin (`ext_`) and local-origin (`local_`) outcomes.
    ext_success: AtomicU64,
    ext_failure: AtomicU64,
    local_success: AtomicU64,
    local_failure: AtomicU64,
    ejected: AtomicBool,
    /// Milliseconds (since the detector started) at which an ejected host may return.
    until_ms: AtomicU64,
    /// When it last returned (for the decay of `num_ejections`).
    returned_ms: AtomicU64,
    num_ejections: AtomicU32,
}

impl HostOutlier {
    #[inline]
    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Relaxed)
    }
}

/// What ended a request, for outlier detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream answered with this status.
    Status(u16),
    /// No connection could be made.
    ConnectFailed,
    /// The upstream did not answer in time.
    Timeout,
    /// The upstream reset or closed the connection before answering.
    Reset,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Detector {
    Consecutive5xx,
    ConsecutiveGateway,
    ConsecutiveLocal,
    SuccessRate,
    LocalSuccessRate,
    FailurePercentage,
    LocalFailurePercentage,
}

impl Detector {
    /// (detected stat index, enforced stat index) in `STATS`.
    fn stat_indexes(self) -> (usize, usize) {
        match self {
            Detector::Consecutive5xx => (4, 5),
            Detector::ConsecutiveGateway => (6, 7),
            Detector::ConsecutiveLocal => (8, 9),
            Detector::SuccessRate => (10, 11),
            Detector::LocalSuccessRate => (12, 13),
            Detector::FailurePercentage => (14, 15),
            Detector::LocalFailurePercentage => (16, 17),
        }
    }

    fn event_type(self) -> &'static str {
        match self {
            Detector::Consecutive5xx => "CONSECUTIVE_5XX",
            Detector::ConsecutiveGateway => "CONSECUTIVE_GATEWAY_FAILURE",
            Detector::ConsecutiveLocal => "CONSECUTIVE_LOCAL_ORIGIN_FAILURE",
            Detector::SuccessRate => "SUCCESS_RATE",
            Detector::LocalSuccessRate => "SUCCESS_RATE_LOCAL_ORIGIN",
            Detector::FailurePercentage => "FAILURE_PERCENTAGE",
            Detector::LocalFailurePercentage => "FAILURE_PERCENTAGE_LOCAL_ORIGIN",
        }
    }
}

/// `cluster.<n>.outlier_detection.*`, one registry block per cluster.
const STATS: &[(&str, Kind)] = &[
    ("ejections_active", Kind::Gauge),
    ("ejections_enforced_total", Kind::Counter),
    ("ejections_overflow", Kind::Counter),
    ("ejections_total", Kind::Counter),
    ("ejections_detected_consecutive_5xx", Kind::Counter),
    ("ejections_enforced_consecutive_5xx", Kind::Counter),
    (
        "ejections_detected_consecutive_gateway_failure",
        Kind::Counter,
    ),
    (
        "ejections_enforced_consecutive_gateway_failure",
        Kind::Counter,
    ),
    (
        "ejections_detected_consecutive_local_origin_failure",
        Kind::Counter,
    ),
    (
        "ejections_enforced_consecutive_local_origin_failure",
        Kind::Counter,
    ),
    ("ejections_detected_success_rate", Kind::Counter),
    ("ejections_enforced_success_rate", Kind::Counter),
    (
        "ejections_detected_local_origin_success_rate",
        Kind::Counter,
    ),
    (
        "ejections_enforced_local_origin_success_rate",
        Kind::Counter,
    ),
    ("ejections_detected_failure_percentage", Kind::Counter),
    ("ejections_enforced_failure_percentage", Kind::Counter),
    (
        "ejections_detected_local_origin_failure_percentage",
        Kind::Counter,
    ),
    (
        "ejections_enforced_local_origin_failure_percentage",
        Kind::Counter,
    ),
    ("ejections_consecutive_5xx", Kind::Counter),
];

/// A cluster's outlier detector.
pub struct OutlierDetector {
    cfg: OutlierConfig,
    started: Instant,
    active: Arc<Gauge>,
    counters: Vec<Arc<Counter>>,
    /// `cluster_manager.outlier_detection.event_log_path`, when set.
    event_log: Option<crate::context::OutlierEventLog>,
    /// The last interval's success-rate average and ejection threshold, external then local
    /// origin (`-1` when too few hosts had enough requests), as `/clusters` shows them.
    rates: std::sync::Mutex<[f64; 4]>,
}

impl std::fmt::Debug for OutlierDetector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutlierDetector")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

/// The hosts a detector acts on and how to publish a changed health view.
pub trait Hosts {
    fn hosts(&self) -> Vec<Arc<super::host::Host>>;
    /// Rebuild the healthy set after an ejection or a return.
    fn republish(&self);
    fn name(&self) -> &str;
}

// === impl OutlierDetector ===

impl OutlierDetector {
    /// `event_log`: where ejection events go (`cluster_manager.outlier_detection.event_log_path`).
    pub fn new(
        cfg: OutlierConfig,
        store: &Store,
        stat_name: &str,
        event_log: Option<crate::context::OutlierEventLog>,
    ) -> Self {
        let m = store.block(&format!("cluster.{stat_name}.outlier_detection."), STATS);
        Self {
            cfg,
            started: Instant::now(),
            active: m[0].gauge(),
            counters: m.iter().skip(1).map(|x| x.counter()).collect(),
            event_log,
            rates: std::sync::Mutex::new([-1.0; 4]),
        }
    }

    pub fn interval(&self) -> Duration {
        self.cfg.interval
    }

    /// `(success_rate_average, success_rate_ejection_threshold)` of the last interval, for
    /// external (`local == false`) or local-origin results; `-1` when not computed.
    pub fn success_rate(&self, local: bool) -> (f64, f64) {
        let r = self.rates.lock().unwrap_or_else(|e| e.into_inner());
        let i = if local { 2 } else { 0 };
        (r[i], r[i + 1])
    }

    fn counter(&self, index: usize) -> &Counter {
        &self.counters[index - 1]
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Charge a request's outcome to its host.
    pub fn report(&self, cluster: &dyn Hosts, host: &super::host::Host, outcome: Outcome) {
        let o = &host.outlier;
        let local = !matches!(outcome, Outcome::Status(_));
        if local && self.cfg.split_external_local_origin_errors {
            o.local_failure.fetch_add(1, Relaxed);
            let n = o.consecutive_local.fetch_add(1, Relaxed) + 1;
            if n == self.cfg.consecutive_local_origin_failure {
                self.detected(cluster, host, Detector::ConsecutiveLocal);
            }
            return;
        }
        // Without the split, a local-origin failure counts as the status Envoy would answer.
        let status = match outcome {
            Outcome::Status(s) => s,
            Outcome::ConnectFailed | Outcome::Reset => 503,
            Outcome::Timeout => 504,
        };
        if status < 500 {
            o.ext_success.fetch_add(1, Relaxed);
            o.consecutive_5xx.store(0, Relaxed);
            o.consecutive_gateway.store(0, Relaxed);
            if self.cfg.split_external_local_origin_errors {
                o.local_success.fetch_add(1, Relaxed);
                o.consecutive_local.store(0, Relaxed);
            }
            return;
        }
        o.ext_failure.fetch_add(1, Relaxed);
        if matches!(status, 502..=504) {
            let n = o.consecutive_gateway.fetch_add(1, Relaxed) + 1;
            if n == self.cfg.consecutive_gateway_failure {
                self.detected(cluster, host, Detector::ConsecutiveGateway);
            }
        } else {
            o.consecutive_gateway.store(0, Relaxed);
        }
        let n = o.consecutive_5xx.fetch_add(1, Relaxed) + 1;
        if n == self.cfg.consecutive_5xx {
            self.detected(cluster, host, Detector::Consecutive5xx);
        }
    }

    fn enforcing(&self, d: Detector) -> u32 {
        match d {
            Detector::Consecutive5xx => self.cfg.enforcing_consecutive_5xx,
            Detector::ConsecutiveGateway => self.cfg.enforcing_consecutive_gateway_failure,
            Detector::ConsecutiveLocal => self.cfg.enforcing_consecutive_local_origin_failure,
            Detector::SuccessRate => self.cfg.enforcing_success_rate,
            Detector::LocalSuccessRate => self.cfg.enforcing_local_origin_success_rate,
            Detector::FailurePercentage => self.cfg.enforcing_failure_percentage,
            Detector::LocalFailurePercentage => self.cfg.enforcing_failure_percentage_local_origin,
        }
    }

    /// A detector fired for `host`: count it, and eject if the ejection cap and enforcement
    /// allow, in Envoy's order (`DetectorImpl::ejectHost`): the cap first (`ejections_overflow`
    /// even when enforcement would have said no), then the deprecated `ejections_total`
    /// (consecutive 5xx and success rate only, enforced or not), then enforcement. A consecutive
    /// detector's count starts again after it fired, so N more failures fire it again, and the
    /// deprecated `ejections_consecutive_5xx` counts every consecutive-5xx detection.
    fn detected(&self, cluster: &dyn Hosts, host: &super::host::Host, d: Detector) {
        if host.outlier.is_ejected() {
            return;
        }
        let (detected, enforced) = d.stat_indexes();
        self.counter(detected).inc();
        self.eject(cluster, host, d, enforced);
        let o = &host.outlier;
        match d {
            Detector::Consecutive5xx => {
                self.counter(18).inc();
                o.consecutive_5xx.store(0, Relaxed);
            }
            Detector::ConsecutiveGateway => o.consecutive_gateway.store(0, Relaxed),
            Detector::ConsecutiveLocal => o.consecutive_local.store(0, Relaxed),
            _ => {}
        }
    }

    fn eject(&self, cluster: &dyn Hosts, host: &super::host::Host, d: Detector, enforced: usize) {
        let total = cluster.hosts().len().max(1) as f64;
        let active = self.active.value().max(0) as f64;
        if 100.0 * (active + 1.0) / total > f64::from(self.cfg.max_ejection_percent)
            && !(self.cfg.always_eject_one_host && active == 0.0)
        {
            self.counter(2).inc();
            return;
        }
        if matches!(d, Detector::Consecutive5xx | Detector::SuccessRate) {
            self.counter(3).inc();
        }
        let pct = self.enforcing(d);
        if pct == 0 || fastrand::u32(0..100) >= pct {
            self.event(cluster, host, d, "EJECT", false);
            return;
        }
        let o = &host.outlier;
        let n = o.num_ejections.fetch_add(1, Relaxed) + 1;
        let base = self.cfg.base_ejection_time.saturating_mul(n);
        let mut time = base.min(self.cfg.max_ejection_time);
        if !self.cfg.max_ejection_time_jitter.is_zero() {
            let j = self.cfg.max_ejection_time_jitter.as_millis() as u64;
            time += Duration::from_millis(fastrand::u64(0..=j));
        }
        o.until_ms
            .store(self.now_ms() + time.as_millis() as u64, Relaxed);
        o.ejected.store(true, Relaxed);
        self.active.inc();
        self.counter(1).inc();
        self.counter(enforced).inc();
        self.event(cluster, host, d, "EJECT", true);
        cluster.republish();
    }

    /// An ejected host returns: its consecutive counts start again.
    fn uneject(&self, cluster: &dyn Hosts, h: &super::host::Host, now: u64) {
        let o = &h.outlier;
        o.ejected.store(false, Relaxed);
        o.returned_ms.store(now, Relaxed);
        o.consecutive_5xx.store(0, Relaxed);
        o.consecutive_gateway.store(0, Relaxed);
        o.consecutive_local.store(0, Relaxed);
        self.active.dec();
        self.event(cluster, h, Detector::Consecutive5xx, "UNEJECT", true);
    }

    /// An active health check passed on a healthy host: with
    /// `successful_active_health_check_uneject_host` (Envoy's default) an ejected host returns
    /// at once, as Envoy's detector does on its health-check callback.
    pub fn active_check_passed(&self, cluster: &dyn Hosts, h: &super::host::Host) {
        if self.cfg.uneject_on_active_check && h.outlier.is_ejected() {
            self.uneject(cluster, h, self.now_ms());
            cluster.republish();
        }
    }

    /// The `interval` timer: return hosts whose ejection is over, decay ejection counts, run
    /// the success-rate and failure-percentage detectors on the interval's traffic.
    pub fn tick(&self, cluster: &dyn Hosts) {
        let now = self.now_ms();
        let hosts = cluster.hosts();
        let mut changed = false;
        for h in &hosts {
            let o = &h.outlier;
            if o.is_ejected() && now >= o.until_ms.load(Relaxed) {
                self.uneject(cluster, h, now);
                changed = true;
            } else if !o.is_ejected()
                && o.num_ejections.load(Relaxed) > 0
                && now.saturating_sub(o.returned_ms.load(Relaxed))
                    >= self.cfg.base_ejection_time.as_millis() as u64
            {
                o.num_ejections.fetch_sub(1, Relaxed);
                o.returned_ms.store(now, Relaxed);
            }
        }
        if changed {
            cluster.republish();
        }
        let ext: Vec<(usize, u64, u64)> = hosts
            .iter()
            .enumerate()
            .map(|(i, h)| {
                (
                    i,
                    h.outlier.ext_success.swap(0, Relaxed),
                    h.outlier.ext_failure.swap(0, Relaxed),
                )
            })
            .collect();
        let local: Vec<(usize, u64, u64)> = hosts
            .iter()
            .enumerate()
            .map(|(i, h)| {
                (
                    i,
                    h.outlier.local_success.swap(0, Relaxed),
                    h.outlier.local_failure.swap(0, Relaxed),
                )
            })
            .collect();
        self.statistical(
            cluster,
            &hosts,
            &ext,
            Detector::SuccessRate,
            Detector::FailurePercentage,
        );
        if self.cfg.split_external_local_origin_errors {
            self.statistical(
                cluster,
                &hosts,
                &local,
                Detector::LocalSuccessRate,
                Detector::LocalFailurePercentage,
            );
        }
    }

    /// Envoy's success-rate (mean − factor × stdev of hosts with enough requests) and
    /// failure-percentage detectors over one interval's (index, successes, failures).
    fn statistical(
        &self,
        cluster: &dyn Hosts,
        hosts: &[Arc<super::host::Host>],
        counts: &[(usize, u64, u64)],
        rate: Detector,
        percentage: Detector,
    ) {
        let rated = |volume: u32| -> Vec<(usize, f64)> {
            counts
                .iter()
                .filter(|(i, s, f)| !hosts[*i].outlier.is_ejected() && s + f >= u64::from(volume))
                .map(|(i, s, f)| (*i, 100.0 * *s as f64 / (s + f) as f64))
                .collect()
        };
        let sr = rated(self.cfg.success_rate_request_volume);
        let slot = if rate == Detector::LocalSuccessRate {
            2
        } else {
            0
        };
        self.set_rates(slot, -1.0, -1.0);
        if sr.len() >= self.cfg.success_rate_minimum_hosts as usize && !sr.is_empty() {
            let mean = sr.iter().map(|(_, r)| r).sum::<f64>() / sr.len() as f64;
            let var = sr.iter().map(|(_, r)| (r - mean).powi(2)).sum::<f64>() / sr.len() as f64;
            let threshold =
                mean - f64::from(self.cfg.success_rate_stdev_factor) / 1000.0 * var.sqrt();
            self.set_rates(slot, mean, threshold);
            for (i, r) in &sr {
                if *r < threshold {
                    self.detected(cluster, &hosts[*i], rate);
                }
            }
        }
        let fp = rated(self.cfg.failure_percentage_request_volume);
        if fp.len() >= self.cfg.failure_percentage_minimum_hosts as usize {
            for (i, r) in &fp {
                if 100.0 - r >= f64::from(self.cfg.failure_percentage_threshold) {
                    self.detected(cluster, &hosts[*i], percentage);
                }
            }
        }
    }

    fn set_rates(&self, slot: usize, average: f64, threshold: f64) {
        let mut r = self.rates.lock().unwrap_or_else(|e| e.into_inner());
        r[slot] = average;
        r[slot + 1] = threshold;
    }

    /// A line in the event log (Envoy's `OutlierDetectionEvent` as JSON).
    fn event(
        &self,
        cluster: &dyn Hosts,
        host: &super::host::Host,
        d: Detector,
        action: &str,
        enforced: bool,
    ) {
        let Some(log) = &self.event_log else { return };
        let mut ts = String::new();
        crate::telemetry::format::format_time(std::time::SystemTime::now(), None, &mut ts);
        let line = serde_json::json!({
            "type": d.event_type(),
            "timestamp": ts,
            "cluster_name": cluster.name(),
            "upstream_url": host.address.to_string(),
            "action": action,
            "num_ejections": host.outlier.num_ejections.load(Relaxed),
            "enforced": enforced,
        });
        use std::io::Write;
        if let Ok(mut f) = log.lock() {
            let _ = writeln!(f, "{line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::cluster::{Health, Locality};
    use crate::upstream::host::Host;
    use std::sync::Mutex;

    struct TestCluster {
        hosts: Vec<Arc<Host>>,
        republished: Mutex<u32>,
    }

    impl Hosts for TestCluster {
        fn hosts(&self) -> Vec<Arc<Host>> {
            self.hosts.clone()
        }
        fn republish(&self) {
            *self.republished.lock().unwrap() += 1;
        }
        fn name(&self) -> &str {
            "c"
        }
    }

    fn cluster(n: usize) -> TestCluster {
        TestCluster {
            hosts: (0..n)
                .map(|i| {
                    Host::new(
                        format!("10.0.0.{i}:80").parse().unwrap(),
                        "h".into(),
                        1,
                        Health::Healthy,
                        Locality::default(),
                        0,
                    )
                })
                .collect(),
            republished: Mutex::new(0),
        }
    }

    fn cfg() -> OutlierConfig {
        OutlierConfig {
            consecutive_5xx: 3,
            consecutive_gateway_failure: 5,
            consecutive_local_origin_failure: 5,
            split_external_local_origin_errors: false,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_time_jitter: Duration::ZERO,
            max_ejection_percent: 50,
            always_eject_one_host: false,
            enforcing_consecutive_5xx: 100,
            enforcing_consecutive_gateway_failure: 0,
            enforcing_consecutive_local_origin_failure: 100,
            enforcing_success_rate: 0,
            enforcing_local_origin_success_rate: 0,
            success_rate_minimum_hosts: 5,
            success_rate_request_volume: 100,
            success_rate_stdev_factor: 1900,
            failure_percentage_threshold: 85,
            enforcing_failure_percentage: 0,
            enforcing_failure_percentage_local_origin: 0,
            failure_percentage_minimum_hosts: 5,
            failure_percentage_request_volume: 50,
            uneject_on_active_check: true,
        }
    }

    fn stat(store: &Store, n: &str) -> i64 {
        store
            .entries()
            .into_iter()
            .find(|e| *e.name == format!("cluster.c.outlier_detection.{n}"))
            .map(|e| match e.metric {
                crate::telemetry::stats::Metric::Counter(c) => c.value() as i64,
                crate::telemetry::stats::Metric::Gauge(g) => g.value(),
                _ => unreachable!(),
            })
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_5xx_ejects_and_backs_off() {
        let store = Store::default();
        let od = OutlierDetector::new(cfg(), &store, "c", None);
        let c = cluster(3);
        let bad = &c.hosts[0];
        od.report(&c, bad, Outcome::Status(503));
        od.report(&c, bad, Outcome::Status(200));
        for _ in 0..2 {
            od.report(&c, bad, Outcome::Status(500));
        }
        assert!(
            !bad.outlier.is_ejected(),
            "a success in between resets the count"
        );
        od.report(&c, bad, Outcome::Status(500));
        assert!(bad.outlier.is_ejected());
        assert!(!bad.is_healthy());
        assert_eq!(stat(&store, "ejections_active"), 1);
        assert_eq!(stat(&store, "ejections_enforced_consecutive_5xx"), 1);
        // Back after base_ejection_time (at the interval tick), not before.
        tokio::time::advance(Duration::from_secs(20)).await;
        od.tick(&c);
        assert!(bad.outlier.is_ejected());
        tokio::time::advance(Duration::from_secs(10)).await;
        od.tick(&c);
        assert!(!bad.outlier.is_ejected());
        assert_eq!(stat(&store, "ejections_active"), 0);
        // The second ejection lasts twice as long.
        for _ in 0..3 {
            od.report(&c, bad, Outcome::Timeout);
        }
        assert!(
            bad.outlier.is_ejected(),
            "a timeout counts as a 504 without the split"
        );
        tokio::time::advance(Duration::from_secs(31)).await;
        od.tick(&c);
        assert!(bad.outlier.is_ejected());
        tokio::time::advance(Duration::from_secs(30)).await;
        od.tick(&c);
        assert!(!bad.outlier.is_ejected());
    }

    /// A passing active health check returns an ejected host at once (Envoy's default
    /// `successful_active_health_check_uneject_host`), and does nothing when it is off.
    #[tokio::test(start_paused = true)]
    async fn a_passing_active_check_unejects_unless_disabled() {
        for uneject in [true, false] {
            let store = Store::default();
            let mut config = cfg();
            config.uneject_on_active_check = uneject;
            let od = OutlierDetector::new(config, &store, "c", None);
            let c = cluster(3);
            let bad = &c.hosts[0];
            for _ in 0..3 {
                od.report(&c, bad, Outcome::Status(503));
            }
            assert!(bad.outlier.is_ejected());
            od.active_check_passed(&c, &c.hosts[1]);
            assert!(
                bad.outlier.is_ejected(),
                "another host's check changes nothing"
            );
            od.active_check_passed(&c, bad);
            assert_eq!(!bad.outlier.is_ejected(), uneject);
            assert_eq!(stat(&store, "ejections_active"), i64::from(!uneject));
        }
    }

    /// Envoy's counting: a consecutive detector starts again after it fired (not enforced, it
    /// fires again N failures later); the deprecated `ejections_total` counts a consecutive-5xx
    /// detection the cap allows, enforced or not; the cap is checked before enforcement.
    #[tokio::test(start_paused = true)]
    async fn detections_count_as_envoy_counts_them() {
        let store = Store::default();
        let mut config = cfg();
        config.enforcing_consecutive_5xx = 0;
        let od = OutlierDetector::new(config.clone(), &store, "c", None);
        let c = cluster(3);
        for _ in 0..7 {
            od.report(&c, &c.hosts[0], Outcome::Status(503));
        }
        assert!(!c.hosts[0].outlier.is_ejected());
        assert_eq!(stat(&store, "ejections_detected_consecutive_5xx"), 2);
        assert_eq!(stat(&store, "ejections_consecutive_5xx"), 2);
        assert_eq!(stat(&store, "ejections_total"), 2);
        assert_eq!(stat(&store, "ejections_enforced_total"), 0);
        // Gateway failures are not counted in ejections_total; over the cap, overflow.
        config.max_ejection_percent = 10;
        config.consecutive_5xx = 100;
        config.consecutive_gateway_failure = 2;
        let store = Store::default();
        let od = OutlierDetector::new(config, &store, "c", None);
        for _ in 0..2 {
            od.report(&c, &c.hosts[1], Outcome::Status(502));
        }
        assert_eq!(
            stat(&store, "ejections_detected_consecutive_gateway_failure"),
            1
        );
        assert_eq!(stat(&store, "ejections_overflow"), 1);
        assert_eq!(stat(&store, "ejections_total"), 0);
    }

    /// `/clusters` shows the last interval's success-rate average and threshold: -1 until an
    /// interval had enough hosts with enough requests, and again after one that had not.
    #[tokio::test(start_paused = true)]
    async fn success_rate_average_is_kept_per_interval() {
        let store = Store::default();
        let mut config = cfg();
        config.success_rate_minimum_hosts = 2;
        config.success_rate_request_volume = 2;
        let od = OutlierDetector::new(config, &store, "c", None);
        let c = cluster(2);
        assert_eq!(od.success_rate(false), (-1.0, -1.0));
        for h in &c.hosts {
            od.report(&c, h, Outcome::Status(200));
            od.report(&c, h, Outcome::Status(200));
        }
        od.tick(&c);
        assert_eq!(od.success_rate(false), (100.0, 100.0));
        assert_eq!(
            od.success_rate(true),
            (-1.0, -1.0),
            "no split: not computed"
        );
        od.tick(&c);
        assert_eq!(
            od.success_rate(false),
            (-1.0, -1.0),
            "no traffic this interval"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn max_ejection_percent_and_always_eject_one_host() {
        let store = Store::default();
        let mut config = cfg();
        config.max_ejection_percent = 10;
        let od = OutlierDetector::new(config.clone(), &store, "c", None);
        let c = cluster(3);
        for _ in 0..3 {
            od.report(&c, &c.hosts[0], Outcome::Status(503));
        }
        assert!(!c.hosts[0].outlier.is_ejected(), "10 % of 3 hosts is none");
        assert_eq!(stat(&store, "ejections_overflow"), 1);
        assert_eq!(stat(&store, "ejections_detected_consecutive_5xx"), 1);
        config.always_eject_one_host = true;
        let store = Store::default();
        let od = OutlierDetector::new(config, &store, "c", None);
        let c = cluster(3);
        for h in &c.hosts[..2] {
            for _ in 0..3 {
                od.report(&c, h, Outcome::Status(503));
            }
        }
        assert!(c.hosts[0].outlier.is_ejected(), "one host may always go");
        assert!(!c.hosts[1].outlier.is_ejected(), "but only one");
        assert_eq!(stat(&store, "ejections_overflow"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn max_ejection_time_caps_the_backoff_and_jitter_adds() {
        let store = Store::default();
        let mut config = cfg();
        config.max_ejection_time = Duration::from_secs(40);
        config.max_ejection_time_jitter = Duration::from_secs(5);
        let od = OutlierDetector::new(config, &store, "c", None);
        let c = cluster(2);
        let h = &c.hosts[0];
        h.outlier.num_ejections.store(4, Relaxed);
        for _ in 0..3 {
            od.report(&c, h, Outcome::Status(500));
        }
        let until = h.outlier.until_ms.load(Relaxed);
        assert!((40_000..=45_000).contains(&until), "{until}");
    }

    #[tokio::test(start_paused = true)]
    async fn success_rate_ejects_the_outlier() {
        let store = Store::default();
        let mut config = cfg();
        config.enforcing_success_rate = 100;
        config.max_ejection_percent = 100;
        let od = OutlierDetector::new(config, &store, "c", None);
        let c = cluster(5);
        for (i, h) in c.hosts.iter().enumerate() {
            for n in 0..100 {
                let status = if i == 4 && n % 2 == 0 { 500 } else { 200 };
                // Keep under the consecutive threshold: successes interleave.
                od.report(&c, h, Outcome::Status(status));
            }
        }
        od.tick(&c);
        assert!(c.hosts[4].outlier.is_ejected());
        assert!(c.hosts[..4].iter().all(|h| !h.outlier.is_ejected()));
        assert_eq!(stat(&store, "ejections_enforced_success_rate"), 1);
    }
}
