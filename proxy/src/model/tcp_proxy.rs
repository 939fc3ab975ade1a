//! `envoy.filters.network.tcp_proxy`.

use super::access_log::AccessLogConfig;
use super::core::{deny, timeout_or, u32_or};
use super::inputs::Inputs;
use super::pb;
use super::runtime::Runtime;
use crate::config::error::{self, Errors};
use crate::config::{FieldPath, Result};
use std::sync::Arc;
use std::time::Duration;

pub const TCP_PROXY_TYPE: &str = "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
/// Envoy's default tcp_proxy idle timeout.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

#[derive(Debug)]
pub enum TcpCluster {
    Name(Arc<str>),
    Weighted {
        clusters: Vec<(Arc<str>, u32)>,
        total: u64,
    },
}

#[derive(Debug)]
pub struct TcpProxy {
    pub stat_prefix: String,
    pub cluster: TcpCluster,
    pub idle_timeout: Option<Duration>,
    pub max_connect_attempts: u32,
    pub max_downstream_connection_duration: Option<Duration>,
    pub access_logs: Vec<AccessLogConfig>,
}

impl TcpProxy {
    pub fn from_proto(
        path: &FieldPath,
        t: &pb::tcp_proxy::TcpProxy,
        rt: &Runtime,
        inputs: &Inputs,
    ) -> Result<Self> {
        let pb::tcp_proxy::TcpProxy {
            stat_prefix,
            on_demand,
            metadata_match,
            idle_timeout,
            downstream_idle_timeout,
            upstream_idle_timeout,
            access_log,
            max_connect_attempts,
            backoff_options,
            hash_policy,
            tunneling_config,
            max_downstream_connection_duration,
            max_downstream_connection_duration_jitter_percentage,
            access_log_flush_interval,
            flush_access_log_on_connected,
            access_log_options,
            proxy_protocol_tlvs,
            proxy_protocol_tlv_merge_policy,
            upstream_connect_mode,
            max_early_data_bytes,
            check_drain_close,
            cluster_specifier,
        } = t;
        let mut errs = Errors::new();
        if stat_prefix.is_empty() {
            errs.push(path.field("stat_prefix").error("must not be empty"));
        }
        errs.check([
            deny(path, "on_demand", on_demand),
            deny(path, "metadata_match", metadata_match),
            deny(path, "downstream_idle_timeout", downstream_idle_timeout),
            deny(path, "upstream_idle_timeout", upstream_idle_timeout),
            deny(path, "backoff_options", backoff_options),
            deny(path, "hash_policy", hash_policy),
            deny(path, "tunneling_config", tunneling_config),
            deny(
                path,
                "max_downstream_connection_duration_jitter_percentage",
                max_downstream_connection_duration_jitter_percentage,
            ),
            deny(path, "access_log_flush_interval", access_log_flush_interval),
            deny(
                path,
                "flush_access_log_on_connected",
                flush_access_log_on_connected,
            ),
            deny(path, "access_log_options", access_log_options),
            deny(path, "proxy_protocol_tlvs", proxy_protocol_tlvs),
            deny(
                path,
                "proxy_protocol_tlv_merge_policy",
                proxy_protocol_tlv_merge_policy,
            ),
            deny(path, "upstream_connect_mode", upstream_connect_mode),
            deny(path, "max_early_data_bytes", max_early_data_bytes),
            deny(path, "check_drain_close", check_drain_close),
        ]);
        let cluster = errs.take(tcp_cluster(path, cluster_specifier));
        let attempts = u32_or(max_connect_attempts, 1);
        if attempts == 0 {
            errs.push(
                path.field("max_connect_attempts")
                    .error("must be at least 1"),
            );
        }
        let access_logs =
            errs.or_default(error::all(access_log.iter().enumerate().map(|(i, al)| {
                AccessLogConfig::from_proto(&path.field("access_log").index(i), al, rt, inputs)
            })));
        let idle_timeout = errs.or_default(timeout_or(
            path,
            "idle_timeout",
            idle_timeout,
            Some(DEFAULT_IDLE_TIMEOUT),
        ));
        let max_downstream_connection_duration = errs.or_default(timeout_or(
            path,
            "max_downstream_connection_duration",
            max_downstream_connection_duration,
            None,
        ));
        Ok(Self {
            stat_prefix: stat_prefix.clone(),
            cluster: errs.finish_some(cluster)?,
            idle_timeout,
            max_connect_attempts: attempts,
            max_downstream_connection_duration,
            access_logs,
        })
    }

    /// Pick the cluster for a new connection (`random` in `[0, u64::MAX]`).
    /// Every cluster it may connect to.
    pub fn clusters(&self) -> impl Iterator<Item = &str> {
        let v: Vec<&str> = match &self.cluster {
            TcpCluster::Name(n) => vec![&**n],
            TcpCluster::Weighted { clusters, .. } => clusters.iter().map(|(n, _)| &**n).collect(),
        };
        v.into_iter()
    }

    pub fn pick_cluster(&self, random: u64) -> &Arc<str> {
        match &self.cluster {
            TcpCluster::Name(n) => n,
            TcpCluster::Weighted { clusters, total } => {
                let mut point = random % total;
                for (name, w) in clusters {
                    if point < *w as u64 {
                        return name;
                    }
                    point -= *w as u64;
                }
                &clusters[clusters.len() - 1].0
            }
        }
    }
}

/// `cluster` or `weighted_clusters`.
fn tcp_cluster(
    path: &FieldPath,
    spec: &Option<pb::tcp_proxy::tcp_proxy::ClusterSpecifier>,
) -> Result<TcpCluster> {
    use pb::tcp_proxy::tcp_proxy::ClusterSpecifier as C;
    match spec {
        Some(C::Cluster(c)) if !c.is_empty() => Ok(TcpCluster::Name(c.as_str().into())),
        Some(C::Cluster(_)) => Err(path.field("cluster").error("must not be empty")),
        Some(C::WeightedClusters(w)) => {
            let wp = path.field("weighted_clusters");
            if w.clusters.is_empty() {
                return Err(wp
                    .field("clusters")
                    .error("at least one cluster is required"));
            }
            let clusters = error::all(w.clusters.iter().enumerate().map(|(i, c)| {
                let cp = wp.field("clusters").index(i);
                let pb::tcp_proxy::tcp_proxy::weighted_cluster::ClusterWeight {
                    name,
                    weight,
                    metadata_match,
                } = c;
                deny(&cp, "metadata_match", metadata_match)?;
                if name.is_empty() {
                    return Err(cp.field("name").error("must not be empty"));
                }
                if *weight == 0 {
                    return Err(cp.field("weight").error("must be at least 1"));
                }
                Ok((Arc::<str>::from(name.as_str()), *weight))
            }))?;
            let total = clusters.iter().map(|(_, w)| *w as u64).sum();
            Ok(TcpCluster::Weighted { clusters, total })
        }
        None => Err(path.error("one of cluster or weighted_clusters is required")),
    }
}
