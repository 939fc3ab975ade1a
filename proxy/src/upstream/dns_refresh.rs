//! Keeping STRICT_DNS and LOGICAL_DNS clusters resolved, as Envoy's strict_dns and
//! logical_dns clusters do: every endpoint's name is a target resolved on its own timer —
//! after a success at `dns_refresh_rate` (or the answer's smallest TTL with
//! `respect_dns_ttl`, when not 0) plus up to `dns_jitter`; after a failure at the cluster's
//! `dns_failure_refresh_rate` backoff (or `dns_refresh_rate`). A failed target keeps its hosts.

use super::cluster::Cluster;
use super::dns::{self, DnsError};
use super::host::Host;
use crate::model::cluster::{Cluster as ClusterConfig, Discovery, DnsFamily};
use crate::model::dns_resolver::DnsResolver;
use futures_util::future::BoxFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How names are resolved (the resolver, or a test's stand-in).
pub trait Lookup: Send + Sync {
    fn lookup<'a>(
        &'a self,
        name: &'a str,
        family: DnsFamily,
        resolver: &'a DnsResolver,
    ) -> BoxFuture<'a, Result<dns::Answer, DnsError>>;
}

/// The stub resolver with the system's files, read at each resolution.
pub struct SystemLookup;

impl Lookup for SystemLookup {
    fn lookup<'a>(
        &'a self,
        name: &'a str,
        family: DnsFamily,
        resolver: &'a DnsResolver,
    ) -> BoxFuture<'a, Result<dns::Answer, DnsError>> {
        Box::pin(async move {
            let sys = dns::System::read().await;
            dns::resolve(name, family, resolver, &sys).await
        })
    }
}

/// Envoy's failure backoff: jittered exponential between `dns_failure_refresh_rate`'s base and
/// max intervals, or fixed at `dns_refresh_rate` without it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    fixed: Duration,
    range: Option<(Duration, Duration)>,
    next: Duration,
}

impl Backoff {
    pub fn new(cfg: &ClusterConfig) -> Self {
        let range = cfg.dns.failure_refresh;
        Self {
            fixed: cfg.dns_refresh_rate,
            range,
            next: range.map_or(cfg.dns_refresh_rate, |(base, _)| base),
        }
    }

    /// The next failure's delay: a random part of the current interval, which then doubles
    /// up to the max.
    pub fn next_delay(&mut self, random: u64) -> Duration {
        let Some((_, max)) = self.range else {
            return self.fixed;
        };
        let current = self.next;
        self.next = if current > max / 2 { max } else { current * 2 };
        let ms = current.as_millis().max(1) as u64;
        Duration::from_millis(random % ms).min(max)
    }

    pub fn reset(&mut self) {
        self.next = self.range.map_or(self.fixed, |(base, _)| base);
    }
}

/// What one resolution of a target gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Addresses resolved; `ttl` is the smallest of their TTLs (None: no addresses).
    Success {
        ttl: Option<u32>,
    },
    Failure,
}

/// The delay before a target is resolved again.
pub fn next_refresh(
    cfg: &ClusterConfig,
    outcome: Outcome,
    backoff: &mut Backoff,
    random: u64,
) -> Duration {
    match outcome {
        Outcome::Failure => backoff.next_delay(random),
        Outcome::Success { ttl } => {
            backoff.reset();
            let base = match ttl {
                Some(ttl) if cfg.dns.respect_ttl && ttl != 0 => Duration::from_secs(ttl.into()),
                _ => cfg.dns_refresh_rate,
            };
            let jitter_ms = cfg.dns.jitter.as_millis() as u64;
            if jitter_ms == 0 {
                base
            } else {
                base + Duration::from_millis(random % jitter_ms)
            }
        }
    }
}

/// One endpoint's name and the hosts it last resolved to.
struct Target {
    locality: usize,
    endpoint: usize,
    hosts: Vec<Arc<Host>>,
    due: Instant,
}

/// A DNS cluster's targets and their timers.
pub struct DnsCluster {
    cluster: Arc<Cluster>,
    lookup: Arc<dyn Lookup>,
    targets: Vec<Target>,
    backoff: Backoff,
    rng: fastrand::Rng,
}

impl DnsCluster {
    pub fn new(cluster: Arc<Cluster>, lookup: Arc<dyn Lookup>) -> Self {
        let now = Instant::now();
        let targets = cluster
            .config
            .localities
            .iter()
            .enumerate()
            .flat_map(|(l, loc)| {
                (0..loc.endpoints.len()).map(move |e| Target {
                    locality: l,
                    endpoint: e,
                    hosts: Vec::new(),
                    due: now,
                })
            })
            .collect();
        Self {
            backoff: Backoff::new(&cluster.config),
            cluster,
            lookup,
            targets,
            rng: fastrand::Rng::new(),
        }
    }

    /// Resolve every target once, concurrently (the cluster's initialization).
    pub async fn resolve_all(&mut self) {
        let all: Vec<usize> = (0..self.targets.len()).collect();
        self.resolve(&all).await;
    }

    /// Resolve each target when it is due, for as long as the task runs.
    pub async fn run(mut self) {
        loop {
            let Some(due) = self.targets.iter().map(|t| t.due).min() else {
                return;
            };
            tokio::time::sleep_until(due).await;
            let now = Instant::now();
            let ready: Vec<usize> = (0..self.targets.len())
                .filter(|&i| self.targets[i].due <= now)
                .collect();
            self.resolve(&ready).await;
        }
    }

    async fn resolve(&mut self, which: &[usize]) {
        let cfg = self.cluster.config.clone();
        let lookups = which.iter().map(|&i| {
            let t = &self.targets[i];
            let name = &cfg.localities[t.locality].endpoints[t.endpoint]
                .address
                .host;
            self.cluster.stats.update_attempt.inc();
            self.lookup.lookup(name, cfg.dns_family, &cfg.dns.resolver)
        });
        let results = futures_util::future::join_all(lookups).await;
        for (&i, result) in which.iter().zip(results) {
            self.apply(i, result);
        }
        let hosts = self
            .targets
            .iter()
            .flat_map(|t| t.hosts.iter().cloned())
            .collect();
        self.cluster.publish(hosts);
    }

    /// Take one target's resolution: its hosts (on success) and its next due time.
    fn apply(&mut self, i: usize, result: Result<dns::Answer, DnsError>) {
        let cfg = &self.cluster.config;
        let stats = &self.cluster.stats;
        let t = &mut self.targets[i];
        let (loc, ep) = (
            &cfg.localities[t.locality],
            &cfg.localities[t.locality].endpoints[t.endpoint],
        );
        let logical = cfg.discovery == Discovery::LogicalDns;
        let outcome = match result {
            // A LOGICAL_DNS cluster keeps its address when an answer has none (as Envoy).
            Ok(answer) if !(logical && answer.is_empty()) => {
                stats.update_success.inc();
                let answer = distinct(answer, if logical { 1 } else { usize::MAX });
                let hostname: Arc<str> = ep.address.host.as_str().into();
                t.hosts = answer
                    .iter()
                    .map(|(ip, _)| {
                        let addr = SocketAddr::new(*ip, ep.address.port);
                        Host::for_endpoint(addr, hostname.clone(), ep, loc)
                    })
                    .collect();
                Outcome::Success {
                    ttl: answer.iter().map(|(_, ttl)| *ttl).min(),
                }
            }
            Ok(_) => {
                stats.update_failure.inc();
                Outcome::Failure
            }
            Err(e) => {
                tracing::debug!(cluster = %cfg.name, host = %ep.address.host, "DNS resolution failed: {e}");
                stats.update_failure.inc();
                Outcome::Failure
            }
        };
        let delay = next_refresh(cfg, outcome, &mut self.backoff, self.rng.u64(..));
        t.due = Instant::now() + delay;
    }
}

/// The answer's distinct addresses, at most `limit`.
fn distinct(answer: dns::Answer, limit: usize) -> dns::Answer {
    let mut out: dns::Answer = Vec::new();
    for (ip, ttl) in answer {
        if out.len() < limit && !out.iter().any(|(seen, _)| *seen == ip) {
            out.push((ip, ttl));
        }
    }
    out
}

/// Whether a cluster is kept resolved here.
pub fn is_dns(d: Discovery) -> bool {
    matches!(d, Discovery::StrictDns | Discovery::LogicalDns)
}

#[cfg(test)]
mod tests;
