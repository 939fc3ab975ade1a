//! `envoy.config.cluster.v3.Cluster` → the cluster model: discovery type, endpoints (with
//! priorities, localities and weights), load balancing, timeouts and upstream protocol.

use super::core::{
    HostPort, any_type, decode_any, deny, enum_value, opt_duration, timeout_or, u32_or,
};
use super::hcm::{Http2Settings, http2_settings};
use super::pb;
use crate::config::error::{self, Errors};
use crate::config::{FieldPath, Result};
use std::sync::Arc;
use std::time::Duration;

pub const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_DNS_REFRESH: Duration = Duration::from_secs(5);
pub const DEFAULT_UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
pub const DEFAULT_BUFFER_LIMIT: u32 = 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discovery {
    Static,
    StrictDns,
    LogicalDns,
    /// Endpoints from EDS (over ADS).
    Eds,
}

/// An EDS cluster's subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Eds {
    /// The ClusterLoadAssignment name: `service_name`, or the cluster's name.
    pub service_name: String,
    pub initial_fetch_timeout: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LbPolicy {
    RoundRobin,
    /// `active_request_bias`: how strongly active requests weigh against a host's weight.
    LeastRequest {
        choice_count: u32,
        active_request_bias: f64,
    },
    Random,
    /// Consistent hashing on a ring of `ring_size` entries between the configured bounds.
    RingHash {
        min_ring_size: u64,
        max_ring_size: u64,
        murmur: bool,
        use_hostname: bool,
    },
    /// Maglev consistent hashing with a prime `table_size`.
    Maglev {
        table_size: u64,
        use_hostname: bool,
    },
}

impl LbPolicy {
    /// Whether the policy picks hosts by the request's hash (route `hash_policy`).
    pub fn is_hashing(&self) -> bool {
        matches!(self, LbPolicy::RingHash { .. } | LbPolicy::Maglev { .. })
    }
}

fn is_prime(n: u64) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsFamily {
    Auto,
    V4Only,
    V6Only,
    V4Preferred,
    All,
}

/// A DNS cluster's refresh schedule and resolver.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DnsOptions {
    /// `respect_dns_ttl`: refresh at the answer's TTL (when not 0) instead of `dns_refresh_rate`.
    pub respect_ttl: bool,
    /// `dns_jitter`: up to this much is added to each refresh after a success.
    pub jitter: Duration,
    /// `dns_failure_refresh_rate`: the (base, max) intervals of the jittered exponential
    /// backoff after failures; `None`: `dns_refresh_rate`.
    pub failure_refresh: Option<(Duration, Duration)>,
    pub resolver: Arc<super::dns_resolver::DnsResolver>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    Http1,
    Http2,
    /// The downstream request's protocol.
    UseDownstream {
        http2_allowed: bool,
        http1_allowed: bool,
    },
    /// `auto_config`: HTTP/2 or HTTP/1.1 as ALPN negotiates on the upstream TLS connection.
    Auto,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Healthy,
    Unhealthy,
    Degraded,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub sub_zone: String,
}

#[derive(Debug, Clone)]
pub struct Endpoint {
    pub address: HostPort,
    pub weight: u32,
    pub health: Health,
    pub hostname: String,
    /// `health_check_config`: how active health checks reach this endpoint.
    pub health_check: Option<Arc<EndpointHealthCheck>>,
}

/// An endpoint's `health_check_config`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EndpointHealthCheck {
    /// `port_value`: check this port on the endpoint's address.
    pub port: Option<u16>,
    /// `hostname`: the health check's host header for this endpoint.
    pub hostname: Option<String>,
    /// `address`: check this address instead.
    pub address: Option<std::net::SocketAddr>,
    /// `disable_active_health_check`.
    pub disabled: bool,
}

#[derive(Debug, Clone)]
pub struct LocalityEndpoints {
    pub locality: Locality,
    pub weight: Option<u32>,
    pub priority: u32,
    pub endpoints: Vec<Endpoint>,
}

#[derive(Debug)]
pub struct Cluster {
    pub name: Arc<str>,
    /// Name under `cluster.<name>.` in stats (`alt_stat_name`, else `name`).
    pub stat_name: String,
    pub discovery: Discovery,
    pub connect_timeout: Duration,
    pub lb_policy: LbPolicy,
    pub localities: Vec<LocalityEndpoints>,
    pub overprovisioning_factor: u32,
    pub dns_refresh_rate: Duration,
    pub dns_family: DnsFamily,
    /// How STRICT_DNS and LOGICAL_DNS clusters refresh, and their resolver.
    pub dns: DnsOptions,
    pub protocol: UpstreamProtocol,
    pub http2: Http2Settings,
    pub idle_timeout: Option<Duration>,
    pub max_connection_duration: Option<Duration>,
    pub max_requests_per_connection: Option<u32>,
    pub per_connection_buffer_limit_bytes: u32,
    /// Percent of healthy hosts under which the load balancer ignores health (Envoy: 50).
    pub healthy_panic_threshold: f64,
    pub tcp_keepalive: Option<Keepalive>,
    /// `envoy.transport_sockets.tls`: originate TLS to every host.
    pub tls: Option<Arc<super::tls::UpstreamTls>>,
    /// Set for `type: EDS`.
    pub eds: Option<Eds>,
    /// A single `pipe` endpoint (a Unix socket): usable as an xDS/SDS gRPC service (Istio's
    /// `xds-grpc` and `sds-grpc`); routes and tcp_proxy cannot target it.
    pub pipe: Option<std::path::PathBuf>,
    /// `circuit_breakers.thresholds`, per routing priority.
    pub circuit_breakers: CircuitBreakers,
    /// What istiod says about the cluster in `metadata.filter_metadata.istio`.
    pub istio: IstioMetadata,
    /// `metadata.filter_metadata.istio.services[0]`: the service Istio's metrics name.
    pub istio_service: Option<IstioService>,
    /// `filters`: Istio's upstream metadata exchange (the only upstream network filter built).
    pub metadata_exchange: Option<Arc<super::listener::MetadataExchange>>,
    /// `outlier_detection` (boxed: most clusters have none).
    pub outlier: Option<Box<OutlierConfig>>,
    /// `health_checks`: active health checking.
    pub health_checks: Vec<super::health_check::HealthCheck>,
    /// `common_lb_config.locality_weighted_lb_config`.
    pub locality_weighted: bool,
}

/// `outlier_detection`, with Envoy's defaults. Percentages are 0–100.
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierConfig {
    pub consecutive_5xx: u32,
    pub consecutive_gateway_failure: u32,
    pub consecutive_local_origin_failure: u32,
    pub split_external_local_origin_errors: bool,
    pub interval: Duration,
    pub base_ejection_time: Duration,
    pub max_ejection_time: Duration,
    pub max_ejection_time_jitter: Duration,
    pub max_ejection_percent: u32,
    pub always_eject_one_host: bool,
    pub enforcing_consecutive_5xx: u32,
    pub enforcing_consecutive_gateway_failure: u32,
    pub enforcing_consecutive_local_origin_failure: u32,
    pub enforcing_success_rate: u32,
    pub enforcing_local_origin_success_rate: u32,
    pub success_rate_minimum_hosts: u32,
    pub success_rate_request_volume: u32,
    /// Divided by 1000 (Envoy's 1900 = 1.9 standard deviations).
    pub success_rate_stdev_factor: u32,
    pub failure_percentage_threshold: u32,
    pub enforcing_failure_percentage: u32,
    pub enforcing_failure_percentage_local_origin: u32,
    pub failure_percentage_minimum_hosts: u32,
    pub failure_percentage_request_volume: u32,
    /// `successful_active_health_check_uneject_host` (default true): an active health check
    /// that passes returns an ejected host at once.
    pub uneject_on_active_check: bool,
}

fn outlier(path: &FieldPath, o: &pb::cluster::OutlierDetection) -> Result<OutlierConfig> {
    let pb::cluster::OutlierDetection {
        consecutive_5xx,
        interval,
        base_ejection_time,
        max_ejection_percent,
        enforcing_consecutive_5xx,
        enforcing_success_rate,
        success_rate_minimum_hosts,
        success_rate_request_volume,
        success_rate_stdev_factor,
        consecutive_gateway_failure,
        enforcing_consecutive_gateway_failure,
        split_external_local_origin_errors,
        consecutive_local_origin_failure,
        enforcing_consecutive_local_origin_failure,
        enforcing_local_origin_success_rate,
        failure_percentage_threshold,
        enforcing_failure_percentage,
        enforcing_failure_percentage_local_origin,
        failure_percentage_minimum_hosts,
        failure_percentage_request_volume,
        max_ejection_time,
        max_ejection_time_jitter,
        successful_active_health_check_uneject_host,
        monitors,
        always_eject_one_host,
        detect_degraded_hosts,
    } = o;
    deny(path, "monitors", monitors)?;
    if super::core::bool_or(detect_degraded_hosts, false) {
        return Err(path.unsupported("detect_degraded_hosts"));
    }
    let pct = |name: &str, v: &Option<pb::protobuf::UInt32Value>, default: u32| -> Result<u32> {
        let x = u32_or(v, default);
        if x > 100 {
            return Err(path.field(name).error("must be at most 100"));
        }
        Ok(x)
    };
    let dur = |name: &str,
               v: &Option<pb::protobuf::Duration>,
               default: Duration|
     -> Result<Duration> { Ok(opt_duration(path, name, v)?.unwrap_or(default)) };
    let interval = dur("interval", interval, Duration::from_secs(10))?;
    if interval.is_zero() {
        return Err(path.field("interval").error("must be greater than 0"));
    }
    let base_ejection_time = dur(
        "base_ejection_time",
        base_ejection_time,
        Duration::from_secs(30),
    )?;
    Ok(OutlierConfig {
        consecutive_5xx: u32_or(consecutive_5xx, 5),
        consecutive_gateway_failure: u32_or(consecutive_gateway_failure, 5),
        consecutive_local_origin_failure: u32_or(consecutive_local_origin_failure, 5),
        split_external_local_origin_errors: *split_external_local_origin_errors,
        uneject_on_active_check: super::core::bool_or(
            successful_active_health_check_uneject_host,
            true,
        ),
        interval,
        base_ejection_time,
        // Envoy: a max_ejection_time below base_ejection_time means base_ejection_time.
        max_ejection_time: dur(
            "max_ejection_time",
            max_ejection_time,
            Duration::from_secs(300),
        )?
        .max(base_ejection_time),
        max_ejection_time_jitter: dur(
            "max_ejection_time_jitter",
            max_ejection_time_jitter,
            Duration::ZERO,
        )?,
        max_ejection_percent: pct("max_ejection_percent", max_ejection_percent, 10)?,
        always_eject_one_host: super::core::bool_or(always_eject_one_host, false),
        enforcing_consecutive_5xx: pct(
            "enforcing_consecutive_5xx",
            enforcing_consecutive_5xx,
            100,
        )?,
        enforcing_consecutive_gateway_failure: pct(
            "enforcing_consecutive_gateway_failure",
            enforcing_consecutive_gateway_failure,
            0,
        )?,
        enforcing_consecutive_local_origin_failure: pct(
            "enforcing_consecutive_local_origin_failure",
            enforcing_consecutive_local_origin_failure,
            100,
        )?,
        enforcing_success_rate: pct("enforcing_success_rate", enforcing_success_rate, 100)?,
        enforcing_local_origin_success_rate: pct(
            "enforcing_local_origin_success_rate",
            enforcing_local_origin_success_rate,
            100,
        )?,
        success_rate_minimum_hosts: u32_or(success_rate_minimum_hosts, 5),
        success_rate_request_volume: u32_or(success_rate_request_volume, 100),
        success_rate_stdev_factor: u32_or(success_rate_stdev_factor, 1900),
        failure_percentage_threshold: pct(
            "failure_percentage_threshold",
            failure_percentage_threshold,
            85,
        )?,
        enforcing_failure_percentage: pct(
            "enforcing_failure_percentage",
            enforcing_failure_percentage,
            0,
        )?,
        enforcing_failure_percentage_local_origin: pct(
            "enforcing_failure_percentage_local_origin",
            enforcing_failure_percentage_local_origin,
            0,
        )?,
        failure_percentage_minimum_hosts: u32_or(failure_percentage_minimum_hosts, 5),
        failure_percentage_request_volume: u32_or(failure_percentage_request_volume, 50),
    })
}

/// `metadata.filter_metadata.istio` keys that Istio's filters read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IstioMetadata {
    /// False when `alpn_override` is `"false"` (istiod's mark for DestinationRule TLS
    /// SIMPLE/MUTUAL): `istio.alpn` leaves this cluster's ALPN alone.
    pub alpn_override: bool,
    /// `external: true` (a MESH_EXTERNAL ServiceEntry).
    pub external: bool,
    /// `disable_mx: true`: no metadata-exchange headers to this cluster.
    pub disable_mx: bool,
}

impl Default for IstioMetadata {
    fn default() -> Self {
        Self {
            alpn_override: true,
            external: false,
            disable_mx: false,
        }
    }
}

/// The first of `filter_metadata.istio.services` (`host`, `name`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IstioService {
    pub host: Option<Arc<str>>,
    pub name: Option<Arc<str>>,
}

fn istio_service(metadata: &Option<pb::core::Metadata>) -> Option<IstioService> {
    use pb::protobuf::value::Kind;
    let fields = &metadata.as_ref()?.filter_metadata.get("istio")?.fields;
    let Some(Kind::ListValue(list)) = fields.get("services")?.kind.as_ref() else {
        return None;
    };
    let Some(Kind::StructValue(svc)) = list.values.first()?.kind.as_ref() else {
        return None;
    };
    let text = |k: &str| match svc.fields.get(k).and_then(|v| v.kind.as_ref()) {
        Some(Kind::StringValue(s)) => Some(Arc::from(s.as_str())),
        _ => None,
    };
    Some(IstioService {
        host: text("host"),
        name: text("name"),
    })
}

fn istio_metadata(metadata: &Option<pb::core::Metadata>) -> IstioMetadata {
    use pb::protobuf::value::Kind;
    let Some(fields) = metadata
        .as_ref()
        .and_then(|m| m.filter_metadata.get("istio"))
        .map(|s| &s.fields)
    else {
        return IstioMetadata::default();
    };
    let kind = |k: &str| fields.get(k).and_then(|v| v.kind.as_ref());
    IstioMetadata {
        alpn_override: !matches!(kind("alpn_override"), Some(Kind::StringValue(s)) if s == "false"),
        external: matches!(kind("external"), Some(Kind::BoolValue(true))),
        disable_mx: matches!(kind("disable_mx"), Some(Kind::BoolValue(true))),
    }
}

/// One priority's circuit-breaker thresholds (Envoy's defaults: 1024 connections, pending and
/// active requests, 3 retries).
/// `retry_budget`: retries allowed as a share of the active and pending requests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudget {
    pub percent: f64,
    pub min_concurrency: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    pub max_connections: u64,
    pub max_pending_requests: u64,
    pub max_requests: u64,
    pub max_retries: u64,
    /// Publish `remaining_*` gauges.
    pub track_remaining: bool,
    /// Replaces `max_retries` when set.
    pub retry_budget: Option<RetryBudget>,
    /// Connection pools (per host and ALPN offer, per worker) the cluster may have at once.
    pub max_connection_pools: u64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
            max_retries: 3,
            track_remaining: false,
            retry_budget: None,
            max_connection_pools: u64::MAX,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct CircuitBreakers {
    pub default: Thresholds,
    pub high: Thresholds,
}

fn circuit_breakers(
    path: &FieldPath,
    cb: &pb::cluster::CircuitBreakers,
) -> Result<CircuitBreakers> {
    use pb::core::RoutingPriority;
    let pb::cluster::CircuitBreakers {
        thresholds,
        per_host_thresholds,
    } = cb;
    deny(path, "per_host_thresholds", per_host_thresholds)?;
    let mut out = CircuitBreakers::default();
    let mut seen = [false; 2];
    for (i, t) in thresholds.iter().enumerate() {
        let tp = path.field("thresholds").index(i);
        let pb::cluster::circuit_breakers::Thresholds {
            priority,
            max_connections,
            max_pending_requests,
            max_requests,
            max_retries,
            retry_budget,
            track_remaining,
            max_connection_pools,
        } = t;
        let p = enum_value::<RoutingPriority>(&tp, "priority", *priority, |_| true)?;
        let retry_budget = match retry_budget {
            None => None,
            Some(b) => {
                let bp = tp.field("retry_budget");
                let pb::cluster::circuit_breakers::thresholds::RetryBudget {
                    budget_percent,
                    min_retry_concurrency,
                    budget_interval,
                } = b;
                deny(&bp, "budget_interval", budget_interval)?;
                let percent = budget_percent.as_ref().map_or(20.0, |p| p.value);
                if !(0.0..=100.0).contains(&percent) {
                    return Err(bp
                        .field("budget_percent")
                        .error("must be between 0 and 100"));
                }
                Some(RetryBudget {
                    percent,
                    min_concurrency: min_retry_concurrency
                        .as_ref()
                        .map_or(3, |v| u64::from(v.value)),
                })
            }
        };
        let idx = p as usize;
        if seen[idx] {
            return Err(tp
                .field("priority")
                .error(format!("{} is configured twice", p.as_str_name())));
        }
        seen[idx] = true;
        let d = Thresholds::default();
        let v = |x: &Option<pb::protobuf::UInt32Value>, def: u64| {
            x.as_ref().map_or(def, |v| u64::from(v.value))
        };
        let th = Thresholds {
            max_connections: v(max_connections, d.max_connections),
            max_pending_requests: v(max_pending_requests, d.max_pending_requests),
            max_requests: v(max_requests, d.max_requests),
            max_retries: v(max_retries, d.max_retries),
            track_remaining: *track_remaining,
            retry_budget,
            max_connection_pools: v(max_connection_pools, d.max_connection_pools),
        };
        match p {
            RoutingPriority::Default => out.default = th,
            RoutingPriority::High => out.high = th,
        }
    }
    Ok(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Keepalive {
    pub probes: Option<u32>,
    pub time: Option<u32>,
    pub interval: Option<u32>,
}

pub fn keepalive(ka: &pb::core::TcpKeepalive) -> Keepalive {
    let pb::core::TcpKeepalive {
        keepalive_probes,
        keepalive_time,
        keepalive_interval,
    } = ka;
    Keepalive {
        probes: keepalive_probes.as_ref().map(|v| v.value),
        time: keepalive_time.as_ref().map(|v| v.value),
        interval: keepalive_interval.as_ref().map(|v| v.value),
    }
}

// === impl Cluster ===

impl Cluster {
    /// Every independent field group is translated, so that one report names every problem;
    /// a group that needs another's value (EDS and endpoints need the discovery type, the
    /// upstream protocol needs the TLS context, common_lb_config the lb policy) waits for it.
    pub fn from_proto(
        path: &FieldPath,
        c: &pb::cluster::Cluster,
        cx: &super::context::TranslateContext,
    ) -> Result<Self> {
        let pb::cluster::Cluster {
            transport_socket_matches,
            transport_socket_matcher,
            name,
            alt_stat_name,
            stats_matcher,
            eds_cluster_config,
            connect_timeout,
            per_connection_buffer_limit_bytes,
            per_connection_buffer_high_watermark_timeout,
            lb_policy,
            load_assignment,
            health_checks,
            max_requests_per_connection,
            circuit_breakers,
            upstream_http_protocol_options,
            common_http_protocol_options,
            http_protocol_options,
            http2_protocol_options,
            typed_extension_protocol_options,
            dns_refresh_rate,
            dns_jitter,
            dns_failure_refresh_rate,
            respect_dns_ttl,
            dns_lookup_family,
            dns_resolvers,
            use_tcp_for_dns_lookups,
            dns_resolution_config,
            typed_dns_resolver_config,
            wait_for_warm_on_init,
            outlier_detection,
            cleanup_interval,
            upstream_bind_config,
            lb_subset_config,
            common_lb_config,
            transport_socket,
            metadata,
            protocol_selection,
            upstream_connection_options,
            close_connections_on_host_health_failure,
            ignore_health_on_host_removal,
            filters,
            load_balancing_policy,
            lrs_server,
            lrs_report_endpoint_metrics,
            track_timeout_budgets,
            upstream_config,
            track_cluster_stats,
            preconnect_policy,
            connection_pool_per_downstream_connection,
            queuing_policies,
            cluster_discovery_type,
            lb_config,
        } = c;
        // Static and DNS clusters are always warmed before listeners start; nothing to wait for.
        let _ = wait_for_warm_on_init;
        super::core::metadata_ok(metadata);
        let mut errs = Errors::new();
        if name.is_empty() {
            errs.push(path.field("name").error("must not be empty"));
        }
        errs.check([
            deny(path, "transport_socket_matches", transport_socket_matches),
            deny(path, "transport_socket_matcher", transport_socket_matcher),
            deny(path, "stats_matcher", stats_matcher),
            deny(
                path,
                "per_connection_buffer_high_watermark_timeout",
                per_connection_buffer_high_watermark_timeout,
            ),
        ]);
        let health_checks = errs.or_default(Self::health_checks(path, health_checks, &cx.inputs));
        let circuit_breakers = errs
            .or_default(
                circuit_breakers
                    .as_ref()
                    .map(|cb| self::circuit_breakers(&path.field("circuit_breakers"), cb))
                    .transpose(),
            )
            .unwrap_or_default();
        errs.check([deny(
            path,
            "upstream_http_protocol_options",
            upstream_http_protocol_options,
        )]);
        let dns = errs.or_default(dns_options(
            path,
            &cx.dns_resolver,
            DnsFields {
                jitter: dns_jitter,
                failure_refresh_rate: dns_failure_refresh_rate,
                respect_ttl: *respect_dns_ttl,
                resolver: super::dns_resolver::DnsFields {
                    dns_resolvers,
                    use_tcp_for_dns_lookups: *use_tcp_for_dns_lookups,
                    dns_resolution_config,
                    typed_dns_resolver_config,
                },
            },
        ));
        let outlier = errs.or_default(
            outlier_detection
                .as_ref()
                .map(|o| self::outlier(&path.field("outlier_detection"), o).map(Box::new))
                .transpose(),
        );
        errs.check([
            deny(path, "cleanup_interval", cleanup_interval),
            deny(path, "upstream_bind_config", upstream_bind_config),
            lb_subset_config.as_ref().map_or(Ok(()), |subset| {
                deny(
                    &path.field("lb_subset_config"),
                    "subset_selectors",
                    &subset.subset_selectors,
                )
            }),
        ]);
        let tls = errs.take(super::tls::upstream_socket(
            &path.field("transport_socket"),
            transport_socket,
            cx,
        ));
        errs.check([
            deny(
                path,
                "close_connections_on_host_health_failure",
                close_connections_on_host_health_failure,
            ),
            deny(
                path,
                "ignore_health_on_host_removal",
                ignore_health_on_host_removal,
            ),
        ]);
        let metadata_exchange = errs.or_default(upstream_filters(&path.field("filters"), filters));
        errs.check([
            deny(path, "load_balancing_policy", load_balancing_policy),
            deny(path, "lrs_server", lrs_server),
            deny(
                path,
                "lrs_report_endpoint_metrics",
                lrs_report_endpoint_metrics,
            ),
            deny(path, "track_timeout_budgets", track_timeout_budgets),
            deny(path, "upstream_config", upstream_config),
            deny(path, "track_cluster_stats", track_cluster_stats),
            deny(path, "preconnect_policy", preconnect_policy),
            deny(
                path,
                "connection_pool_per_downstream_connection",
                connection_pool_per_downstream_connection,
            ),
            deny(path, "queuing_policies", queuing_policies),
        ]);
        let discovery = errs.take(discovery(path, cluster_discovery_type));
        let lb = errs.take(lb_policy_from(path, *lb_policy, lb_config));
        let dns_family = errs.take(dns_family(path, *dns_lookup_family));
        let eds = discovery.and_then(|d| errs.take(eds(path, d, eds_cluster_config, name)));
        let pipe = load_assignment.as_ref().and_then(pipe_endpoint);
        let endpoints =
            discovery.and_then(|d| errs.take(endpoints(path, d, load_assignment, pipe.is_some())));
        let buffer_limit = u32_or(per_connection_buffer_limit_bytes, DEFAULT_BUFFER_LIMIT);
        let upstream = tls.and_then(|tls| {
            errs.take(UpstreamHttp::from_proto(
                path,
                UpstreamHttpFields {
                    common_http_protocol_options,
                    http_protocol_options,
                    http2_protocol_options,
                    typed_extension_protocol_options,
                    protocol_selection: *protocol_selection,
                    max_requests_per_connection,
                },
                tls,
                buffer_limit,
            ))
        });
        let lb_common = lb.and_then(|lb| {
            errs.take(common_lb(
                &path.field("common_lb_config"),
                common_lb_config,
                lb,
            ))
        });
        let tcp_keepalive = errs.or_default(upstream_connection(
            &path.field("upstream_connection_options"),
            upstream_connection_options,
        ));
        let connect_timeout = errs.take(connect_timeout_of(path, connect_timeout));
        let dns_refresh_rate = errs.take(dns_refresh_rate_of(path, dns_refresh_rate));
        let head = discovery.zip(dns_family).zip(eds).zip(endpoints);
        let rest = upstream
            .zip(lb_common)
            .zip(connect_timeout)
            .zip(dns_refresh_rate);
        let (
            (((discovery, dns_family), eds), (localities, overprovisioning_factor)),
            (
                ((upstream, (lb, panic_threshold, locality_weighted)), connect_timeout),
                dns_refresh_rate,
            ),
        ) = errs.finish_some(head.zip(rest))?;
        Ok(Self {
            name: name.as_str().into(),
            stat_name: if alt_stat_name.is_empty() {
                name.clone()
            } else {
                alt_stat_name.clone()
            },
            discovery,
            circuit_breakers,
            istio: istio_metadata(metadata),
            istio_service: istio_service(metadata),
            metadata_exchange,
            outlier,
            health_checks,
            locality_weighted,
            connect_timeout,
            lb_policy: lb,
            localities,
            overprovisioning_factor,
            dns_refresh_rate,
            dns_family,
            dns,
            protocol: upstream.protocol,
            http2: upstream.http2,
            idle_timeout: upstream.idle_timeout,
            max_connection_duration: upstream.max_connection_duration,
            max_requests_per_connection: upstream.max_requests,
            per_connection_buffer_limit_bytes: buffer_limit,
            healthy_panic_threshold: panic_threshold,
            tcp_keepalive,
            tls: upstream.tls,
            eds,
            pipe,
        })
    }

    fn health_checks(
        path: &FieldPath,
        hcs: &[pb::core::HealthCheck],
        inputs: &super::inputs::Inputs,
    ) -> Result<Vec<super::health_check::HealthCheck>> {
        let health_checks = error::all(hcs.iter().enumerate().map(|(i, h)| {
            let hp = path.field("health_checks").index(i);
            super::health_check::HealthCheck::from_proto(&hp, h, inputs)
        }))?;
        if health_checks.len() > 1 {
            return Err(path
                .field("health_checks")
                .error("multiple health checks are not supported (as in Envoy)"));
        }
        Ok(health_checks)
    }
}

/// `filters`: Istio's upstream metadata exchange, the only upstream network filter built.
fn upstream_filters(
    path: &FieldPath,
    filters: &[pb::cluster::Filter],
) -> Result<Option<Arc<super::listener::MetadataExchange>>> {
    let exchanges = error::all(filters.iter().enumerate().map(|(i, f)| {
        let fp = path.index(i);
        let pb::cluster::Filter {
            name: _,
            typed_config,
            config_discovery,
        } = f;
        deny(&fp, "config_discovery", config_discovery)?;
        let Some(any) = typed_config else {
            return Err(fp.field("typed_config").error("is required"));
        };
        let tp = fp.field("typed_config");
        match super::core::any_type(any) {
            super::listener::METADATA_EXCHANGE_TYPE => {
                Ok(Arc::new(super::listener::metadata_exchange(&tp, any)?))
            }
            other => Err(tp
                .field("@type")
                .error(format!("upstream network filter {other} is not supported"))),
        }
    }))?;
    Ok(exchanges.into_iter().next_back())
}

fn discovery(
    path: &FieldPath,
    cdt: &Option<pb::cluster::cluster::ClusterDiscoveryType>,
) -> Result<Discovery> {
    use pb::cluster::cluster::{ClusterDiscoveryType as Cdt, DiscoveryType as D};
    Ok(match cdt {
        None => Discovery::Static,
        Some(Cdt::Type(t)) => match enum_value::<D>(path, "type", *t, |d| {
            matches!(d, D::Static | D::StrictDns | D::LogicalDns | D::Eds)
        })? {
            D::Static => Discovery::Static,
            D::StrictDns => Discovery::StrictDns,
            D::LogicalDns => Discovery::LogicalDns,
            D::Eds => Discovery::Eds,
            D::OriginalDst => unreachable!("refused above"),
        },
        Some(Cdt::ClusterType(_)) => return Err(path.unsupported("cluster_type")),
    })
}

fn dns_family(path: &FieldPath, value: i32) -> Result<DnsFamily> {
    use pb::cluster::cluster::DnsLookupFamily as F;
    Ok(
        match enum_value::<F>(path, "dns_lookup_family", value, |_| true)? {
            F::Auto => DnsFamily::Auto,
            F::V4Only => DnsFamily::V4Only,
            F::V6Only => DnsFamily::V6Only,
            F::V4Preferred => DnsFamily::V4Preferred,
            F::All => DnsFamily::All,
        },
    )
}

/// `lb_policy` with its `*_lb_config`.
fn lb_policy_from(
    path: &FieldPath,
    lb_policy: i32,
    lb_config: &Option<pb::cluster::cluster::LbConfig>,
) -> Result<LbPolicy> {
    use pb::cluster::cluster::{LbConfig, LbPolicy as L};
    let lb = match enum_value::<L>(path, "lb_policy", lb_policy, |l| {
        matches!(
            l,
            L::RoundRobin | L::LeastRequest | L::Random | L::RingHash | L::Maglev
        )
    })? {
        L::RoundRobin => LbPolicy::RoundRobin,
        L::LeastRequest => LbPolicy::LeastRequest {
            choice_count: 2,
            active_request_bias: 1.0,
        },
        L::Random => LbPolicy::Random,
        L::RingHash => LbPolicy::RingHash {
            min_ring_size: 1024,
            max_ring_size: 8 * 1024 * 1024,
            murmur: false,
            use_hostname: false,
        },
        L::Maglev => LbPolicy::Maglev {
            table_size: 65537,
            use_hostname: false,
        },
        _ => unreachable!("refused above"),
    };
    match lb_config {
        None => Ok(lb),
        Some(LbConfig::LeastRequestLbConfig(lr)) => {
            least_request(&path.field("least_request_lb_config"), lr, lb)
        }
        Some(LbConfig::RoundRobinLbConfig(rr)) => {
            let rp = path.field("round_robin_lb_config");
            let pb::cluster::cluster::RoundRobinLbConfig { slow_start_config } = rr;
            deny(&rp, "slow_start_config", slow_start_config)?;
            Ok(lb)
        }
        Some(LbConfig::RingHashLbConfig(rh)) => {
            ring_hash(&path.field("ring_hash_lb_config"), rh, lb)
        }
        Some(LbConfig::MaglevLbConfig(m)) => {
            let mp = path.field("maglev_lb_config");
            if !matches!(lb, LbPolicy::Maglev { .. }) {
                return Err(mp.error("is only valid with lb_policy MAGLEV"));
            }
            let pb::cluster::cluster::MaglevLbConfig { table_size } = m;
            let size = table_size.as_ref().map_or(65537, |v| v.value);
            if size > 5_000_011 || !is_prime(size) {
                return Err(mp
                    .field("table_size")
                    .error("must be a prime number no greater than 5000011"));
            }
            Ok(LbPolicy::Maglev {
                table_size: size,
                use_hostname: false,
            })
        }
        Some(LbConfig::OriginalDstLbConfig(_)) => Err(path.unsupported("original_dst_lb_config")),
    }
}

fn least_request(
    lp: &FieldPath,
    lr: &pb::cluster::cluster::LeastRequestLbConfig,
    lb: LbPolicy,
) -> Result<LbPolicy> {
    if !matches!(lb, LbPolicy::LeastRequest { .. }) {
        return Err(lp.error("is only valid with lb_policy LEAST_REQUEST"));
    }
    let pb::cluster::cluster::LeastRequestLbConfig {
        choice_count,
        active_request_bias,
        slow_start_config,
    } = lr;
    let mut errs = Errors::new();
    errs.check([deny(lp, "slow_start_config", slow_start_config)]);
    let n = u32_or(choice_count, 2);
    if n < 2 {
        errs.push(lp.field("choice_count").error("must be at least 2"));
    }
    let bias = match active_request_bias {
        None => 1.0,
        Some(r) => {
            let pb::core::RuntimeDouble {
                default_value,
                runtime_key: _,
            } = r;
            if !(0.0..=f64::MAX).contains(default_value) {
                errs.push(
                    lp.field("active_request_bias")
                        .error("must not be negative"),
                );
            }
            *default_value
        }
    };
    errs.finish_with(LbPolicy::LeastRequest {
        choice_count: n,
        active_request_bias: bias,
    })
}

fn ring_hash(
    rp: &FieldPath,
    rh: &pb::cluster::cluster::RingHashLbConfig,
    lb: LbPolicy,
) -> Result<LbPolicy> {
    use pb::cluster::cluster::ring_hash_lb_config::HashFunction as HF;
    let LbPolicy::RingHash {
        min_ring_size: min0,
        max_ring_size: max0,
        ..
    } = lb
    else {
        return Err(rp.error("is only valid with lb_policy RING_HASH"));
    };
    let pb::cluster::cluster::RingHashLbConfig {
        minimum_ring_size,
        hash_function,
        maximum_ring_size,
    } = rh;
    let murmur = match enum_value::<HF>(rp, "hash_function", *hash_function, |_| true)? {
        HF::XxHash => false,
        HF::MurmurHash2 => true,
    };
    let min = minimum_ring_size.as_ref().map_or(min0, |v| v.value);
    let max = maximum_ring_size.as_ref().map_or(max0, |v| v.value);
    if min == 0 || min > 8 * 1024 * 1024 {
        return Err(rp
            .field("minimum_ring_size")
            .error("must be between 1 and 8388608"));
    }
    if max == 0 || max > 8 * 1024 * 1024 {
        return Err(rp
            .field("maximum_ring_size")
            .error("must be between 1 and 8388608"));
    }
    if min > max {
        return Err(rp
            .field("minimum_ring_size")
            .error("must not be greater than maximum_ring_size"));
    }
    Ok(LbPolicy::RingHash {
        min_ring_size: min,
        max_ring_size: max,
        murmur,
        use_hostname: false,
    })
}

/// `eds_cluster_config`: set for, and only for, EDS clusters.
fn eds(
    path: &FieldPath,
    discovery: Discovery,
    config: &Option<pb::cluster::cluster::EdsClusterConfig>,
    name: &str,
) -> Result<Option<Eds>> {
    let ep = path.field("eds_cluster_config");
    match (discovery, config) {
        (Discovery::Eds, Some(ec)) => {
            let pb::cluster::cluster::EdsClusterConfig {
                eds_config,
                service_name,
            } = ec;
            let Some(cs) = eds_config else {
                return Err(ep.field("eds_config").error("is required"));
            };
            let source = super::xds::config_source(&ep.field("eds_config"), cs)?;
            if source.path.is_some() {
                return Err(ep.field("eds_config").field("path_config_source").error(
                    "file-based EDS is not supported (lds_config and cds_config can be files)",
                ));
            }
            Ok(Some(Eds {
                service_name: if service_name.is_empty() {
                    name.to_string()
                } else {
                    service_name.clone()
                },
                initial_fetch_timeout: source.initial_fetch_timeout,
            }))
        }
        (Discovery::Eds, None) => Err(ep.error("is required for type EDS")),
        (_, Some(_)) => Err(ep.error("is only meaningful for type EDS")),
        (_, None) => Ok(None),
    }
}

/// `load_assignment`: the localities and the overprovisioning factor.
fn endpoints(
    path: &FieldPath,
    discovery: Discovery,
    load_assignment: &Option<pb::endpoint::ClusterLoadAssignment>,
    pipe: bool,
) -> Result<(Vec<LocalityEndpoints>, u32)> {
    let (localities, overprovisioning_factor) = match load_assignment {
        Some(_) if pipe => {
            if discovery != Discovery::Static {
                return Err(path
                    .field("type")
                    .error("a cluster with a pipe endpoint must be STATIC"));
            }
            (Vec::new(), 140)
        }
        Some(_) if discovery == Discovery::Eds => {
            return Err(path
                .field("load_assignment")
                .error("an EDS cluster gets its endpoints from EDS"));
        }
        Some(la) => endpoints_of(&path.field("load_assignment"), la, discovery)?,
        None => (Vec::new(), 140),
    };
    if discovery == Discovery::LogicalDns {
        let n: usize = localities.iter().map(|l| l.endpoints.len()).sum();
        if n != 1 {
            return Err(path.field("load_assignment").error("LOGICAL_DNS clusters must have a single locality_lb_endpoint and a single lb_endpoint"));
        }
    }
    Ok((localities, overprovisioning_factor))
}

/// The cluster's fields about the upstream HTTP protocol.
struct UpstreamHttpFields<'a> {
    common_http_protocol_options: &'a Option<pb::core::HttpProtocolOptions>,
    http_protocol_options: &'a Option<pb::core::Http1ProtocolOptions>,
    http2_protocol_options: &'a Option<pb::core::Http2ProtocolOptions>,
    typed_extension_protocol_options: &'a std::collections::HashMap<String, pb::protobuf::Any>,
    protocol_selection: i32,
    max_requests_per_connection: &'a Option<pb::protobuf::UInt32Value>,
}

/// The upstream protocol and its connection settings.
struct UpstreamHttp {
    protocol: UpstreamProtocol,
    tls: Option<Arc<super::tls::UpstreamTls>>,
    http2: Http2Settings,
    idle_timeout: Option<Duration>,
    max_connection_duration: Option<Duration>,
    max_requests: Option<u32>,
}

impl UpstreamHttp {
    /// Upstream protocol: typed_extension_protocol_options wins over the deprecated fields.
    fn from_proto(
        path: &FieldPath,
        f: UpstreamHttpFields<'_>,
        tls: Option<Arc<super::tls::UpstreamTls>>,
        buffer_limit: u32,
    ) -> Result<Self> {
        use pb::cluster::cluster::ClusterProtocolSelection as Ps;
        let mut protocol = UpstreamProtocol::Http1;
        let mut common = *f.common_http_protocol_options;
        let mut h2 = f.http2_protocol_options.clone();
        if f.http2_protocol_options.is_some() {
            protocol = UpstreamProtocol::Http2;
        }
        if let Some(o) = f.http_protocol_options {
            http1_upstream(&path.field("http_protocol_options"), o)?;
        }
        if enum_value::<Ps>(path, "protocol_selection", f.protocol_selection, |_| true)?
            == Ps::UseDownstreamProtocol
        {
            protocol = UpstreamProtocol::UseDownstream {
                http2_allowed: f.http2_protocol_options.is_some(),
                http1_allowed: true,
            };
        }
        for (key, any) in f.typed_extension_protocol_options {
            let kp = path.field("typed_extension_protocol_options").key(key);
            if any_type(any) != HTTP_PROTOCOL_OPTIONS {
                return Err(kp.field("@type").error(format!(
                    "protocol options {} are not supported",
                    any_type(any)
                )));
            }
            let opts: pb::upstream_http::HttpProtocolOptions = decode_any(&kp, any)?;
            let (p, c, h) = upstream_http_options(&kp, &opts)?;
            if f.common_http_protocol_options.is_some() && c.is_some() {
                return Err(path.field("common_http_protocol_options").error(
                    "is also set in typed_extension_protocol_options; set it in one place",
                ));
            }
            protocol = p;
            common = c.or(common);
            h2 = h.or(h2);
            if p == UpstreamProtocol::Auto && tls.is_none() {
                return Err(kp.field("auto_config").error(
                    "needs a TLS transport socket: ALPN chooses between HTTP/2 and HTTP/1.1",
                ));
            }
        }
        // auto_config offers h2 and http/1.1 when the TLS context names no ALPN itself.
        let tls = match tls {
            Some(t) if protocol == UpstreamProtocol::Auto && t.alpn.is_empty() => {
                Some(Arc::new(t.with_alpn(&["h2", "http/1.1"])))
            }
            other => other,
        };
        let (idle_timeout, max_connection_duration, max_requests) =
            upstream_common(path, common, f.max_requests_per_connection)?;
        let http2 = http2_settings(&path.field("http2_protocol_options"), &h2, buffer_limit)?;
        Ok(Self {
            protocol,
            tls,
            http2,
            idle_timeout,
            max_connection_duration,
            max_requests,
        })
    }
}

/// `common_http_protocol_options` (from the cluster or its typed protocol options): the idle
/// timeout, the connection duration and the requests per connection.
fn upstream_common(
    path: &FieldPath,
    common: Option<pb::core::HttpProtocolOptions>,
    max_requests_per_connection: &Option<pb::protobuf::UInt32Value>,
) -> Result<(Option<Duration>, Option<Duration>, Option<u32>)> {
    let cp = path.field("common_http_protocol_options");
    let common = common.unwrap_or_default();
    let pb::core::HttpProtocolOptions {
        idle_timeout,
        max_connection_duration,
        max_connection_duration_jitter,
        max_headers_count,
        max_response_headers_kb,
        max_stream_duration,
        headers_with_underscores_action,
        max_requests_per_connection: common_max_requests,
    } = &common;
    let mut errs = Errors::new();
    errs.check([
        deny(
            &cp,
            "max_connection_duration_jitter",
            max_connection_duration_jitter,
        ),
        deny(&cp, "max_headers_count", max_headers_count),
        deny(&cp, "max_response_headers_kb", max_response_headers_kb),
        deny(&cp, "max_stream_duration", max_stream_duration),
        deny(
            &cp,
            "headers_with_underscores_action",
            headers_with_underscores_action,
        ),
    ]);
    if max_requests_per_connection.is_some() && common_max_requests.is_some() {
        errs.push(
            path.field("max_requests_per_connection")
                .error("is also set in common_http_protocol_options; set it in one place"),
        );
    }
    let max_requests = common_max_requests
        .as_ref()
        .or(max_requests_per_connection.as_ref())
        .map(|v| v.value)
        .filter(|v| *v > 0);
    let idle_timeout = errs.or_default(timeout_or(
        &cp,
        "idle_timeout",
        idle_timeout,
        Some(DEFAULT_UPSTREAM_IDLE_TIMEOUT),
    ));
    let max_connection_duration = errs.or_default(timeout_or(
        &cp,
        "max_connection_duration",
        max_connection_duration,
        None,
    ));
    errs.finish_with((idle_timeout, max_connection_duration, max_requests))
}

/// `common_lb_config`: the panic threshold, whether localities are weighted, and the lb
/// policy with hashing on host names.
fn common_lb(
    lp: &FieldPath,
    clb: &Option<pb::cluster::cluster::CommonLbConfig>,
    mut lb: LbPolicy,
) -> Result<(LbPolicy, f64, bool)> {
    use pb::cluster::cluster::common_lb_config::LocalityConfigSpecifier as LC;
    let Some(clb) = clb else {
        return Ok((lb, 50.0, false));
    };
    let pb::cluster::cluster::CommonLbConfig {
        healthy_panic_threshold,
        update_merge_window,
        ignore_new_hosts_until_first_hc,
        close_connections_on_host_set_change,
        consistent_hashing_lb_config,
        override_host_status,
        locality_config_specifier,
    } = clb;
    let _ = update_merge_window; // host-set updates are applied immediately (no batching window needed)
    let mut errs = Errors::new();
    let mut panic_threshold = 50.0;
    if let Some(p) = healthy_panic_threshold {
        if !(0.0..=100.0).contains(&p.value) {
            errs.push(
                lp.field("healthy_panic_threshold")
                    .error("must be between 0 and 100"),
            );
        }
        panic_threshold = p.value;
    }
    errs.check([
        deny(
            lp,
            "ignore_new_hosts_until_first_hc",
            ignore_new_hosts_until_first_hc,
        ),
        deny(
            lp,
            "close_connections_on_host_set_change",
            close_connections_on_host_set_change,
        ),
    ]);
    if let Some(ch) = consistent_hashing_lb_config {
        let cp = lp.field("consistent_hashing_lb_config");
        let pb::cluster::cluster::common_lb_config::ConsistentHashingLbConfig {
            use_hostname_for_hashing,
            hash_balance_factor,
        } = ch;
        errs.check([deny(&cp, "hash_balance_factor", hash_balance_factor)]);
        match &mut lb {
            LbPolicy::RingHash { use_hostname, .. } | LbPolicy::Maglev { use_hostname, .. } => {
                *use_hostname = *use_hostname_for_hashing
            }
            _ if *use_hostname_for_hashing => {
                errs.push(
                    cp.field("use_hostname_for_hashing")
                        .error("needs lb_policy RING_HASH or MAGLEV"),
                );
            }
            _ => {}
        }
    }
    errs.check([deny(lp, "override_host_status", override_host_status)]);
    let locality_weighted = match locality_config_specifier {
        None => false,
        Some(LC::LocalityWeightedLbConfig(_)) if lb.is_hashing() => {
            errs.push(
                lp.field("locality_weighted_lb_config")
                    .error("is not supported with RING_HASH or MAGLEV"),
            );
            false
        }
        Some(LC::LocalityWeightedLbConfig(_)) => true,
        Some(LC::ZoneAwareLbConfig(_)) => {
            errs.push(lp.unsupported("zone_aware_lb_config"));
            false
        }
    };
    errs.finish_with((lb, panic_threshold, locality_weighted))
}

/// `upstream_connection_options`: TCP keepalive.
fn upstream_connection(
    up: &FieldPath,
    uco: &Option<pb::cluster::UpstreamConnectionOptions>,
) -> Result<Option<Keepalive>> {
    let Some(uco) = uco else {
        return Ok(None);
    };
    let pb::cluster::UpstreamConnectionOptions {
        tcp_keepalive: ka,
        set_local_interface_name_on_upstream_connections,
        happy_eyeballs_config,
    } = uco;
    let mut errs = Errors::new();
    errs.check([
        deny(
            up,
            "set_local_interface_name_on_upstream_connections",
            set_local_interface_name_on_upstream_connections,
        ),
        deny(up, "happy_eyeballs_config", happy_eyeballs_config),
    ]);
    errs.finish_with(ka.as_ref().map(keepalive))
}

fn connect_timeout_of(path: &FieldPath, t: &Option<pb::protobuf::Duration>) -> Result<Duration> {
    let t = opt_duration(path, "connect_timeout", t)?.unwrap_or(DEFAULT_CONNECT_TIMEOUT);
    if t.is_zero() {
        return Err(path
            .field("connect_timeout")
            .error("must be greater than 0"));
    }
    Ok(t)
}

struct DnsFields<'a> {
    jitter: &'a Option<pb::protobuf::Duration>,
    failure_refresh_rate: &'a Option<pb::cluster::cluster::RefreshRate>,
    respect_ttl: bool,
    resolver: super::dns_resolver::DnsFields<'a>,
}

/// `dns_jitter`, `dns_failure_refresh_rate`, `respect_dns_ttl` and the resolver fields.
fn dns_options(
    path: &FieldPath,
    bootstrap_resolver: &Arc<super::dns_resolver::DnsResolver>,
    f: DnsFields<'_>,
) -> Result<DnsOptions> {
    let jitter = opt_duration(path, "dns_jitter", f.jitter)?.unwrap_or_default();
    let failure_refresh = f
        .failure_refresh_rate
        .as_ref()
        .map(|r| failure_refresh(&path.field("dns_failure_refresh_rate"), r))
        .transpose()?;
    Ok(DnsOptions {
        respect_ttl: f.respect_ttl,
        jitter,
        failure_refresh,
        resolver: super::dns_resolver::from_cluster(path, f.resolver, bootstrap_resolver)?,
    })
}

/// `dns_failure_refresh_rate`: `max_interval` defaults to 10 × `base_interval` (Envoy).
fn failure_refresh(
    path: &FieldPath,
    r: &pb::cluster::cluster::RefreshRate,
) -> Result<(Duration, Duration)> {
    let pb::cluster::cluster::RefreshRate {
        base_interval,
        max_interval,
    } = r;
    let base = opt_duration(path, "base_interval", base_interval)?
        .ok_or_else(|| path.field("base_interval").error("is required"))?;
    if base <= Duration::from_millis(1) {
        return Err(path
            .field("base_interval")
            .error("must be greater than 1ms"));
    }
    let max = opt_duration(path, "max_interval", max_interval)?.unwrap_or(base * 10);
    if max <= Duration::from_millis(1) || max < base {
        return Err(path
            .field("max_interval")
            .error("must be greater than 1ms and at least base_interval"));
    }
    Ok((base, max))
}

fn dns_refresh_rate_of(path: &FieldPath, t: &Option<pb::protobuf::Duration>) -> Result<Duration> {
    let t = opt_duration(path, "dns_refresh_rate", t)?.unwrap_or(DEFAULT_DNS_REFRESH);
    if t < Duration::from_millis(1) {
        return Err(path.field("dns_refresh_rate").error("must be at least 1ms"));
    }
    Ok(t)
}

fn http1_upstream(path: &FieldPath, o: &pb::core::Http1ProtocolOptions) -> Result<()> {
    let pb::core::Http1ProtocolOptions {
        allow_absolute_url,
        accept_http_10,
        default_host_for_http_10,
        header_key_format,
        enable_trailers,
        allow_chunked_length,
        override_stream_error_on_invalid_http_message,
        send_fully_qualified_url,
        use_balsa_parser,
        allow_custom_methods,
        ignore_http_11_upgrade,
    } = o;
    // Downstream-only settings: meaningless on an upstream connection, as in Envoy.
    let _ = (
        allow_absolute_url,
        accept_http_10,
        default_host_for_http_10,
        allow_chunked_length,
        use_balsa_parser,
        allow_custom_methods,
    );
    deny(path, "header_key_format", header_key_format)?;
    deny(path, "enable_trailers", enable_trailers)?;
    deny(
        path,
        "override_stream_error_on_invalid_http_message",
        override_stream_error_on_invalid_http_message,
    )?;
    deny(path, "send_fully_qualified_url", send_fully_qualified_url)?;
    deny(path, "ignore_http_11_upgrade", ignore_http_11_upgrade)?;
    Ok(())
}

type UpstreamOptions = (
    UpstreamProtocol,
    Option<pb::core::HttpProtocolOptions>,
    Option<pb::core::Http2ProtocolOptions>,
);

fn upstream_http_options(
    path: &FieldPath,
    o: &pb::upstream_http::HttpProtocolOptions,
) -> Result<UpstreamOptions> {
    use pb::upstream_http::http_protocol_options::UpstreamProtocolOptions as U;
    use pb::upstream_http::http_protocol_options::explicit_http_config::ProtocolConfig as P;
    let pb::upstream_http::HttpProtocolOptions {
        common_http_protocol_options,
        upstream_http_protocol_options,
        http_filters,
        header_validation_config,
        outlier_detection,
        request_mirror_policies,
        hash_policy,
        retry_policy,
        upstream_protocol_options,
    } = o;
    deny(
        path,
        "upstream_http_protocol_options",
        upstream_http_protocol_options,
    )?;
    deny(path, "http_filters", http_filters)?;
    deny(path, "header_validation_config", header_validation_config)?;
    deny(path, "outlier_detection", outlier_detection)?;
    deny(path, "request_mirror_policies", request_mirror_policies)?;
    deny(path, "hash_policy", hash_policy)?;
    deny(path, "retry_policy", retry_policy)?;
    let (protocol, h2) = match upstream_protocol_options {
        None => (UpstreamProtocol::Http1, None),
        Some(U::ExplicitHttpConfig(e)) => {
            let ep = path.field("explicit_http_config");
            match &e.protocol_config {
                Some(P::HttpProtocolOptions(h1)) => {
                    http1_upstream(&ep.field("http_protocol_options"), h1)?;
                    (UpstreamProtocol::Http1, None)
                }
                Some(P::Http2ProtocolOptions(h2)) => (UpstreamProtocol::Http2, Some(h2.clone())),
                Some(P::Http3ProtocolOptions(_)) => {
                    return Err(ep.unsupported("http3_protocol_options"));
                }
                None => {
                    return Err(ep.error(
                        "one of http_protocol_options or http2_protocol_options is required",
                    ));
                }
            }
        }
        Some(U::UseDownstreamProtocolConfig(d)) => {
            let dp = path.field("use_downstream_protocol_config");
            let pb::upstream_http::http_protocol_options::UseDownstreamHttpConfig {
                http_protocol_options,
                http2_protocol_options,
                http3_protocol_options,
            } = d;
            deny(&dp, "http3_protocol_options", http3_protocol_options)?;
            if let Some(h1) = http_protocol_options {
                http1_upstream(&dp.field("http_protocol_options"), h1)?;
            }
            (
                UpstreamProtocol::UseDownstream {
                    http2_allowed: http2_protocol_options.is_some(),
                    http1_allowed: true,
                },
                http2_protocol_options.clone(),
            )
        }
        Some(U::AutoConfig(a)) => {
            let ap = path.field("auto_config");
            let pb::upstream_http::http_protocol_options::AutoHttpConfig {
                http_protocol_options,
                http2_protocol_options,
                http3_protocol_options,
                alternate_protocols_cache_options,
            } = a;
            deny(&ap, "http3_protocol_options", http3_protocol_options)?;
            deny(
                &ap,
                "alternate_protocols_cache_options",
                alternate_protocols_cache_options,
            )?;
            if let Some(h1) = http_protocol_options {
                http1_upstream(&ap.field("http_protocol_options"), h1)?;
            }
            (UpstreamProtocol::Auto, http2_protocol_options.clone())
        }
    };
    Ok((protocol, *common_http_protocol_options, h2))
}

/// The path of a load assignment's only endpoint when it is a `pipe` address.
fn pipe_endpoint(la: &pb::endpoint::ClusterLoadAssignment) -> Option<std::path::PathBuf> {
    use pb::core::address::Address as A;
    use pb::endpoint::lb_endpoint::HostIdentifier;
    let [l] = la.endpoints.as_slice() else {
        return None;
    };
    let [e] = l.lb_endpoints.as_slice() else {
        return None;
    };
    match &e.host_identifier {
        Some(HostIdentifier::Endpoint(ep)) => match ep.address.as_ref()?.address.as_ref()? {
            A::Pipe(p) => Some(p.path.clone().into()),
            _ => None,
        },
        _ => None,
    }
}

/// The largest priority level (each level up to the largest is a slot of the host set).
const MAX_PRIORITY: u32 = 1024;

/// A `ClusterLoadAssignment`'s endpoints (a cluster's `load_assignment`, or an EDS resource).
pub fn endpoints_of(
    path: &FieldPath,
    la: &pb::endpoint::ClusterLoadAssignment,
    discovery: Discovery,
) -> Result<(Vec<LocalityEndpoints>, u32)> {
    use pb::endpoint::lb_endpoint::HostIdentifier;
    let pb::endpoint::ClusterLoadAssignment {
        cluster_name: _,
        endpoints,
        named_endpoints,
        policy,
    } = la;
    deny(path, "named_endpoints", named_endpoints)?;
    let mut overprovisioning = 140;
    if let Some(pol) = policy {
        let pp = path.field("policy");
        let pb::endpoint::cluster_load_assignment::Policy {
            drop_overloads,
            overprovisioning_factor,
            endpoint_stale_after,
            weighted_priority_health,
        } = pol;
        deny(&pp, "drop_overloads", drop_overloads)?;
        deny(&pp, "endpoint_stale_after", endpoint_stale_after)?;
        deny(&pp, "weighted_priority_health", weighted_priority_health)?;
        overprovisioning = u32_or(overprovisioning_factor, 140);
        if overprovisioning == 0 {
            return Err(pp
                .field("overprovisioning_factor")
                .error("must be greater than 0"));
        }
    }
    let mut out = Vec::with_capacity(endpoints.len());
    for (i, le) in endpoints.iter().enumerate() {
        let lp = path.field("endpoints").index(i);
        let pb::endpoint::LocalityLbEndpoints {
            locality,
            metadata,
            lb_endpoints,
            load_balancing_weight,
            priority,
            proximity,
            lb_config,
        } = le;
        super::core::metadata_ok(metadata);
        deny(&lp, "proximity", proximity)?;
        deny(&lp, "lb_config", lb_config)?;
        let locality = locality
            .as_ref()
            .map(|l| Locality {
                region: l.region.clone(),
                zone: l.zone.clone(),
                sub_zone: l.sub_zone.clone(),
            })
            .unwrap_or_default();
        let mut eps = Vec::with_capacity(lb_endpoints.len());
        for (j, lbe) in lb_endpoints.iter().enumerate() {
            let ep = lp.field("lb_endpoints").index(j);
            let pb::endpoint::LbEndpoint {
                health_status,
                metadata,
                load_balancing_weight,
                host_identifier,
            } = lbe;
            super::core::metadata_ok(metadata);
            let weight = u32_or(load_balancing_weight, 1);
            if weight == 0 {
                return Err(ep
                    .field("load_balancing_weight")
                    .error("must be at least 1"));
            }
            use pb::core::HealthStatus as H;
            // A value Envoy does not know is healthy there (only the unhealthy and degraded
            // statuses set a flag).
            let health = match H::try_from(*health_status).unwrap_or(H::Unknown) {
                H::Unknown | H::Healthy => Health::Healthy,
                H::Degraded => Health::Degraded,
                H::Unhealthy | H::Draining | H::Timeout => Health::Unhealthy,
            };
            let endpoint = match host_identifier {
                Some(HostIdentifier::Endpoint(e)) => e,
                Some(HostIdentifier::EndpointName(_)) => {
                    return Err(ep.unsupported("endpoint_name"));
                }
                None => return Err(ep.error("an endpoint is required")),
            };
            let epp = ep.field("endpoint");
            let pb::endpoint::Endpoint {
                address,
                health_check_config,
                hostname,
                additional_addresses,
                observability_name,
            } = endpoint;
            let health_check = match health_check_config {
                None => None,
                Some(h) => {
                    let hp = epp.field("health_check_config");
                    let pb::endpoint::endpoint::HealthCheckConfig {
                        port_value,
                        hostname,
                        address,
                        disable_active_health_check,
                    } = h;
                    let port =
                        match *port_value {
                            0 => None,
                            p => Some(u16::try_from(p).map_err(|_| {
                                hp.field("port_value").error("must be a port number")
                            })?),
                        };
                    let address = match address {
                        None => None,
                        Some(a) => {
                            let ap = hp.field("address");
                            let hp_addr = super::core::socket_address(&ap, &Some(a.clone()))?;
                            Some(hp_addr.socket_addr().ok_or_else(|| {
                                ap.error(format!("'{}' is not an IP address", hp_addr.host))
                            })?)
                        }
                    };
                    Some(Arc::new(EndpointHealthCheck {
                        port,
                        hostname: (!hostname.is_empty()).then(|| hostname.clone()),
                        address,
                        disabled: *disable_active_health_check,
                    }))
                }
            };
            deny(&epp, "additional_addresses", additional_addresses)?;
            let _ = observability_name; // shown in /clusters only by newer Envoy; remora shows the address
            let addr = super::core::socket_address(&epp.field("address"), address)?;
            if matches!(discovery, Discovery::Static | Discovery::Eds) && addr.ip().is_none() {
                return Err(epp.field("address").field("socket_address").field("address").error(format!(
                    "'{}' is not an IP address; STATIC and EDS clusters need IP addresses (use STRICT_DNS or LOGICAL_DNS for hostnames)",
                    addr.host
                )));
            }
            // Port 0 is accepted, as Envoy accepts it: connecting to it fails.
            eps.push(Endpoint {
                address: addr,
                weight,
                health,
                hostname: hostname.clone(),
                health_check,
            });
        }
        out.push(LocalityEndpoints {
            locality,
            weight: load_balancing_weight.as_ref().map(|w| w.value),
            priority: *priority,
            endpoints: eps,
        });
    }
    // Envoy accepts gaps between priorities (the levels between are empty) and so does the
    // host set; a level is a vector slot, so the largest is bounded.
    if let Some(i) = out.iter().position(|l| l.priority > MAX_PRIORITY) {
        return Err(path
            .field("endpoints")
            .index(i)
            .field("priority")
            .error(format!("priorities above {MAX_PRIORITY} are not supported")));
    }
    Ok((out, overprovisioning))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(yaml: &str) -> Result<Cluster> {
        let path = FieldPath::new("Cluster 'c'");
        let c: pb::cluster::Cluster =
            crate::config::decode_yaml("envoy.config.cluster.v3.Cluster", yaml, &path);
        let cx = super::super::context::TranslateContext::for_tests();
        Cluster::from_proto(&path, &c, &cx)
    }

    /// The DNS refresh fields: respect_dns_ttl, dns_jitter and dns_failure_refresh_rate (its
    /// max defaulting to 10 × base), and the resolver.
    #[test]
    fn dns_options() {
        let c = cluster(
            "{name: c, type: STRICT_DNS, respect_dns_ttl: true, dns_jitter: 2s, dns_failure_refresh_rate: {base_interval: 3s}, use_tcp_for_dns_lookups: true}",
        )
        .unwrap();
        assert!(c.dns.respect_ttl);
        assert_eq!(c.dns.jitter, Duration::from_secs(2));
        assert_eq!(
            c.dns.failure_refresh,
            Some((Duration::from_secs(3), Duration::from_secs(30)))
        );
        assert!(c.dns.resolver.use_tcp);
        let bad = |rate: &str| {
            cluster(&format!(
                "{{name: c, type: STRICT_DNS, dns_failure_refresh_rate: {rate}}}"
            ))
            .unwrap_err()
            .paths()
        };
        assert_eq!(
            bad("{max_interval: 3s}"),
            ["Cluster 'c'.dns_failure_refresh_rate.base_interval"]
        );
        assert_eq!(
            bad("{base_interval: 3s, max_interval: 2s}"),
            ["Cluster 'c'.dns_failure_refresh_rate.max_interval"]
        );
        let e = cluster("{name: c, dns_resolution_config: {resolvers: [{socket_address: {address: x.example}}]}}")
            .unwrap_err();
        assert_eq!(
            e.paths(),
            ["Cluster 'c'.dns_resolution_config.resolvers[0].socket_address.address"]
        );
    }

    /// What Envoy accepts in an assignment remora accepts too: a health status it does not
    /// know (healthy), port 0 (connecting fails), a gap between priorities (an empty level).
    #[test]
    fn assignments_envoy_accepts() {
        let ep = |port: u32, extra: &str| {
            format!(
                "{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}{extra}}}"
            )
        };
        let c = cluster(&format!(
            "{{name: c, type: STATIC, connect_timeout: 1s, load_assignment: {{cluster_name: c, endpoints: [{{lb_endpoints: [{}, {}]}}, {{priority: 2, lb_endpoints: [{}]}}]}}}}",
            ep(1, ", health_status: 42"),
            ep(0, ""),
            ep(2, "")
        ))
        .unwrap();
        let prios: Vec<u32> = c.localities.iter().map(|l| l.priority).collect();
        assert_eq!(prios, [0, 2]);
        let e = &c.localities[0].endpoints;
        assert_eq!(e[0].health, Health::Healthy);
        assert_eq!(e[1].address.port, 0);
        let e = cluster(&format!(
            "{{name: c, type: STATIC, connect_timeout: 1s, load_assignment: {{cluster_name: c, endpoints: [{{priority: 5000, lb_endpoints: [{}]}}]}}}}",
            ep(1, "")
        ))
        .unwrap_err();
        assert_eq!(
            e.paths(),
            ["Cluster 'c'.load_assignment.endpoints[0].priority"]
        );
    }

    /// One translation names every problem: an unsupported field, the circuit breakers, the
    /// outlier detection and the load balancing.
    #[test]
    fn every_error_of_a_cluster() {
        let e = cluster(
            r#"
name: c
type: STATIC
connect_timeout: 1s
upstream_http_protocol_options: {auto_sni: true}
circuit_breakers: {thresholds: [{max_connections: 1, retry_budget: {budget_percent: {value: 200}}}]}
outlier_detection: {interval: 0s}
lb_policy: MAGLEV
maglev_lb_config: {table_size: 4}
load_assignment: {cluster_name: c, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 1}}}}]}]}
"#,
        )
        .unwrap_err();
        let paths = e.paths();
        assert_eq!(
            paths,
            [
                "Cluster 'c'.circuit_breakers.thresholds[0].retry_budget.budget_percent",
                "Cluster 'c'.upstream_http_protocol_options",
                "Cluster 'c'.outlier_detection.interval",
                "Cluster 'c'.maglev_lb_config.table_size",
            ],
            "{e}"
        );
        // A single error keeps its path.
        let e = cluster("{name: c, connect_timeout: 0s}").unwrap_err();
        assert_eq!(
            e.to_string(),
            "Cluster 'c'.connect_timeout: must be greater than 0"
        );
    }
}
