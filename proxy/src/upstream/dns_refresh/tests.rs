//! The refresh schedule, with paused time and a scripted lookup.

use super::*;
use crate::context::ServerContext;
use crate::upstream::cluster::Origin;
use std::collections::VecDeque;
use std::sync::Mutex;

fn config(yaml: &str) -> Arc<ClusterConfig> {
    let c: crate::model::pb::cluster::Cluster = crate::config::decode_yaml(
        "envoy.config.cluster.v3.Cluster",
        yaml,
        &crate::config::FieldPath::root(),
    );
    let cx = crate::model::context::TranslateContext::for_tests();
    Arc::new(ClusterConfig::from_proto(&crate::config::FieldPath::new("c"), &c, &cx).unwrap())
}

fn dns_cluster(extra: &str) -> Arc<ClusterConfig> {
    config(&format!(
        "{{name: c, type: STRICT_DNS, dns_refresh_rate: 10s, {extra} load_assignment: {{endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: svc.test, port_value: 80}}}}}}}}]}}]}}}}"
    ))
}

/// Answers from a script (one per lookup, the last repeated), noting when each lookup ran.
struct Script {
    answers: Mutex<VecDeque<Result<dns::Answer, ()>>>,
    calls: Mutex<Vec<Instant>>,
}

impl Script {
    fn new(answers: Vec<Result<dns::Answer, ()>>) -> Arc<Self> {
        Arc::new(Self {
            answers: Mutex::new(answers.into()),
            calls: Mutex::new(Vec::new()),
        })
    }

    /// Seconds between consecutive lookups.
    fn gaps(&self) -> Vec<u64> {
        let calls = self.calls.lock().unwrap();
        calls.windows(2).map(|w| (w[1] - w[0]).as_secs()).collect()
    }
}

impl Lookup for Script {
    fn lookup<'a>(
        &'a self,
        _name: &'a str,
        _family: DnsFamily,
        _resolver: &'a DnsResolver,
    ) -> BoxFuture<'a, Result<dns::Answer, DnsError>> {
        self.calls.lock().unwrap().push(Instant::now());
        let mut answers = self.answers.lock().unwrap();
        let next = if answers.len() > 1 {
            answers.pop_front().unwrap()
        } else {
            answers[0].clone()
        };
        Box::pin(async move { next.map_err(|()| DnsError::Timeout) })
    }
}

fn ip(s: &str) -> std::net::IpAddr {
    s.parse().unwrap()
}

fn addresses(c: &Cluster) -> Vec<String> {
    c.hosts
        .load()
        .all_hosts()
        .map(|h| h.address.to_string())
        .collect()
}

/// Run the cluster's refresh loop for `secs` of paused time.
async fn run_for(cfg: Arc<ClusterConfig>, script: Arc<Script>, secs: u64) -> Arc<Cluster> {
    let cx = ServerContext::for_tests();
    let cluster = Cluster::new(cfg, &cx, Origin::Bootstrap);
    let mut d = DnsCluster::new(cluster.clone(), script);
    d.resolve_all().await;
    let task = tokio::spawn(d.run());
    tokio::time::sleep(Duration::from_secs(secs)).await;
    task.abort();
    cluster
}

#[tokio::test(start_paused = true)]
async fn respect_dns_ttl_refreshes_at_the_smallest_ttl() {
    let script = Script::new(vec![Ok(vec![(ip("10.0.0.1"), 3), (ip("10.0.0.2"), 2)])]);
    let c = run_for(dns_cluster("respect_dns_ttl: true,"), script.clone(), 7).await;
    assert_eq!(script.gaps(), [2, 2, 2]);
    assert_eq!(addresses(&c), ["10.0.0.1:80", "10.0.0.2:80"]);
    assert_eq!(c.stats.update_attempt.value(), 4);
    assert_eq!(c.stats.update_success.value(), 4);
}

#[tokio::test(start_paused = true)]
async fn without_respect_dns_ttl_or_with_ttl_0_the_refresh_rate_applies() {
    let script = Script::new(vec![Ok(vec![(ip("10.0.0.1"), 3)])]);
    run_for(dns_cluster(""), script.clone(), 25).await;
    assert_eq!(script.gaps(), [10, 10]);
    let script = Script::new(vec![Ok(vec![(ip("10.0.0.1"), 0)])]);
    run_for(dns_cluster("respect_dns_ttl: true,"), script.clone(), 25).await;
    assert_eq!(script.gaps(), [10, 10]);
}

#[tokio::test(start_paused = true)]
async fn a_failure_keeps_the_hosts_and_backs_off_at_the_refresh_rate() {
    let script = Script::new(vec![Ok(vec![(ip("10.0.0.1"), 1)]), Err(())]);
    let c = run_for(dns_cluster(""), script.clone(), 25).await;
    assert_eq!(script.gaps(), [10, 10]);
    assert_eq!(addresses(&c), ["10.0.0.1:80"]);
    assert_eq!(c.stats.update_failure.value(), 2);
}

#[tokio::test(start_paused = true)]
async fn address_change_is_published_and_logical_dns_takes_the_first() {
    let script = Script::new(vec![
        Ok(vec![(ip("10.0.0.1"), 1)]),
        Ok(vec![(ip("10.0.0.2"), 1), (ip("10.0.0.3"), 1)]),
    ]);
    let c = run_for(dns_cluster("respect_dns_ttl: true,"), script.clone(), 2).await;
    assert_eq!(addresses(&c), ["10.0.0.2:80", "10.0.0.3:80"]);
    let logical = config(
        "{name: c, type: LOGICAL_DNS, load_assignment: {endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: svc.test, port_value: 80}}}}]}]}}",
    );
    let script = Script::new(vec![
        Ok(vec![(ip("10.0.0.2"), 1), (ip("10.0.0.3"), 1)]),
        Ok(vec![]),
    ]);
    let c = run_for(logical, script.clone(), 6).await;
    assert_eq!(addresses(&c), ["10.0.0.2:80"], "an empty answer keeps it");
    assert_eq!(c.stats.update_failure.value(), 1);
}

#[test]
fn backoff_is_jittered_exponential_up_to_max() {
    let cfg = dns_cluster("dns_failure_refresh_rate: {base_interval: 1s, max_interval: 5s},");
    let mut b = Backoff::new(&cfg);
    let top = 999_999_999_999;
    // This random value gives each interval's top: 1s, 2s, 4s, then capped at 5s.
    let delays: Vec<u128> = (0..5)
        .map(|_| next_refresh(&cfg, Outcome::Failure, &mut b, top).as_millis())
        .collect();
    assert_eq!(delays, [999, 1999, 3999, 4999, 4999]);
    assert!(next_refresh(&cfg, Outcome::Failure, &mut b, 0).is_zero());
    next_refresh(&cfg, Outcome::Success { ttl: None }, &mut b, 0);
    assert_eq!(b, Backoff::new(&cfg), "a success resets the backoff");
}

#[test]
fn jitter_is_added_after_success_only() {
    let cfg = dns_cluster("dns_jitter: 2s, respect_dns_ttl: true,");
    let mut b = Backoff::new(&cfg);
    let ok = |ttl| Outcome::Success { ttl };
    assert_eq!(
        next_refresh(&cfg, ok(Some(30)), &mut b, 1500),
        Duration::from_millis(31_500)
    );
    assert_eq!(
        next_refresh(&cfg, ok(None), &mut b, 2001),
        Duration::from_millis(10_001)
    );
    assert_eq!(
        next_refresh(&cfg, Outcome::Failure, &mut b, 1500),
        Duration::from_secs(10)
    );
}

/// Answers by name (`a.test` TTL 2, `b.test` TTL 5), counting lookups per name.
struct ByName(Mutex<Vec<String>>);

impl Lookup for ByName {
    fn lookup<'a>(
        &'a self,
        name: &'a str,
        _family: DnsFamily,
        _resolver: &'a DnsResolver,
    ) -> BoxFuture<'a, Result<dns::Answer, DnsError>> {
        self.0.lock().unwrap().push(name.to_string());
        let answer = match name {
            "a.test" => vec![(ip("10.0.0.1"), 2)],
            _ => vec![(ip("10.0.0.2"), 5)],
        };
        Box::pin(async move { Ok(answer) })
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn each_name_has_its_own_timer() {
    let cfg = config(
        "{name: c, type: STRICT_DNS, respect_dns_ttl: true, load_assignment: {endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: a.test, port_value: 80}}}}, {endpoint: {address: {socket_address: {address: b.test, port_value: 80}}}}]}]}}",
    );
    let cx = ServerContext::for_tests();
    let cluster = Cluster::new(cfg, &cx, Origin::Bootstrap);
    let lookup = Arc::new(ByName(Mutex::new(Vec::new())));
    let mut d = DnsCluster::new(cluster.clone(), lookup.clone());
    d.resolve_all().await;
    let task = tokio::spawn(d.run());
    tokio::time::sleep(Duration::from_secs(9)).await;
    task.abort();
    let asked = lookup.0.lock().unwrap().clone();
    let count = |n: &str| asked.iter().filter(|a| *a == n).count();
    // a.test at 0, 2, 4, 6, 8 s; b.test at 0 and 5 s.
    assert_eq!((count("a.test"), count("b.test")), (5, 2), "{asked:?}");
    assert_eq!(addresses(&cluster), ["10.0.0.1:80", "10.0.0.2:80"]);
    assert_eq!(cluster.stats.update_attempt.value(), 7);
}
