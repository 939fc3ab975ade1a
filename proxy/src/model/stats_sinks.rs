//! `stats_sinks` (`envoy.config.metrics.v3.StatsSink`) → where flushed stats go:
//! `envoy.stat_sinks.statsd` (`StatsdSink`: UDP address or TCP cluster) and
//! `envoy.stat_sinks.metrics_service` (`MetricsServiceConfig`: gRPC stream to a cluster),
//! `envoy.stat_sinks.dog_statsd` (`DogStatsdSink`: statsd with DogStatsD tags over UDP). Other
//! sinks are refused by their `@type`. The clusters named must be static clusters of the
//! bootstrap (Envoy creates the sinks with the static clusters only); `bootstrap.rs` checks them.

use super::core::opt_duration;
use super::core::{any_type, bool_or, decode_any, enum_value, host_port};
use super::pb;
use crate::config::{FieldPath, Result};
use std::net::SocketAddr;
use std::time::Duration;

/// One stats sink.
#[derive(Debug, Clone, PartialEq)]
pub enum StatsSink {
    Statsd(Statsd),
    MetricsService(MetricsService),
    DogStatsd(DogStatsd),
}

/// `envoy.config.metrics.v3.DogStatsdSink`: statsd lines with tag-extracted names and the tags
/// as `|#name:value,...`, over UDP.
#[derive(Debug, Clone, PartialEq)]
pub struct DogStatsd {
    pub address: SocketAddr,
    /// `prefix`, `envoy` when empty.
    pub prefix: String,
    /// `max_bytes_per_datagram`: lines joined by `\n` up to this size (one per datagram when
    /// unset).
    pub max_bytes_per_datagram: Option<u64>,
}

/// `envoy.config.metrics.v3.StatsdSink`: Envoy's plain statsd lines with full stat names.
#[derive(Debug, Clone, PartialEq)]
pub struct Statsd {
    pub target: StatsdTarget,
    /// `prefix`, `envoy` when empty.
    pub prefix: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum StatsdTarget {
    /// `address`: one datagram per line.
    Udp(SocketAddr),
    /// `tcp_cluster_name`: newline-terminated lines over a connection to the cluster.
    Tcp(String),
}

/// `envoy.config.metrics.v3.MetricsServiceConfig`.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsService {
    /// `grpc_service.envoy_grpc.cluster_name`.
    pub cluster: String,
    /// `report_counters_as_deltas` (default false: cumulative values).
    pub counters_as_deltas: bool,
    /// `emit_tags_as_labels`: tag-extracted names with the tags as labels.
    pub tags_as_labels: bool,
    /// `histogram_emit_mode`: a summary and/or a histogram per histogram.
    pub emit_summary: bool,
    pub emit_histogram: bool,
    /// `batch_size`: at most this many metric families per message (0: all in one).
    pub batch_size: usize,
}

/// Envoy's default statsd prefix.
pub const DEFAULT_STATSD_PREFIX: &str = "envoy";

const STATSD: &str = "envoy.config.metrics.v3.StatsdSink";
const METRICS_SERVICE: &str = "envoy.config.metrics.v3.MetricsServiceConfig";
const DOG_STATSD: &str = "envoy.config.metrics.v3.DogStatsdSink";

impl StatsSink {
    pub fn from_proto(path: &FieldPath, s: &pb::metrics::StatsSink) -> Result<Self> {
        use pb::metrics::stats_sink::ConfigType;
        let pb::metrics::StatsSink { name, config_type } = s;
        let Some(ConfigType::TypedConfig(any)) = config_type else {
            return Err(path.error(format!("stats sink '{name}' needs a typed_config")));
        };
        let tp = path.field("typed_config");
        match any_type(any) {
            STATSD => Ok(Self::Statsd(statsd(&tp, &decode_any(&tp, any)?)?)),
            METRICS_SERVICE => Ok(Self::MetricsService(metrics_service(
                &tp,
                &decode_any(&tp, any)?,
            )?)),
            DOG_STATSD => Ok(Self::DogStatsd(dog_statsd(&tp, &decode_any(&tp, any)?)?)),
            other => Err(tp
                .field("@type")
                .error(format!("stats sink {other} is not supported"))),
        }
    }

    /// The cluster the sink connects to, with the path of the field that names it.
    pub fn cluster(&self, path: &FieldPath) -> Option<(&str, FieldPath)> {
        let tp = path.field("typed_config");
        match self {
            Self::Statsd(Statsd {
                target: StatsdTarget::Tcp(c),
                ..
            }) => Some((c, tp.field("tcp_cluster_name"))),
            Self::Statsd(_) | Self::DogStatsd(_) => None,
            Self::MetricsService(m) => Some((
                &m.cluster,
                tp.field("grpc_service")
                    .field("envoy_grpc")
                    .field("cluster_name"),
            )),
        }
    }
}

fn statsd(path: &FieldPath, s: &pb::metrics::StatsdSink) -> Result<Statsd> {
    use pb::metrics::statsd_sink::StatsdSpecifier;
    let pb::metrics::StatsdSink {
        prefix,
        statsd_specifier,
    } = s;
    let target = match statsd_specifier {
        Some(StatsdSpecifier::Address(a)) => StatsdTarget::Udp(udp_address(path, a)?),
        Some(StatsdSpecifier::TcpClusterName(c)) => {
            if c.is_empty() {
                return Err(path.field("tcp_cluster_name").error("must not be empty"));
            }
            StatsdTarget::Tcp(c.clone())
        }
        None => return Err(path.error("address or tcp_cluster_name is required")),
    };
    Ok(Statsd {
        target,
        prefix: prefix_or_default(prefix),
    })
}

fn prefix_or_default(prefix: &str) -> String {
    if prefix.is_empty() {
        DEFAULT_STATSD_PREFIX.to_string()
    } else {
        prefix.to_string()
    }
}

fn dog_statsd(path: &FieldPath, s: &pb::metrics::DogStatsdSink) -> Result<DogStatsd> {
    use pb::metrics::dog_statsd_sink::DogStatsdSpecifier;
    let pb::metrics::DogStatsdSink {
        prefix,
        max_bytes_per_datagram,
        dog_statsd_specifier,
    } = s;
    let address = match dog_statsd_specifier {
        Some(DogStatsdSpecifier::Address(a)) => udp_address(path, a)?,
        None => return Err(path.error("address is required")),
    };
    let max_bytes_per_datagram = max_bytes_per_datagram.as_ref().map(|v| v.value);
    if max_bytes_per_datagram == Some(0) {
        return Err(path
            .field("max_bytes_per_datagram")
            .error("value must be greater than 0"));
    }
    Ok(DogStatsd {
        address,
        prefix: prefix_or_default(prefix),
        max_bytes_per_datagram,
    })
}

/// The statsd UDP address: an IP literal and port (Envoy resolves no name here); its
/// `protocol` is not read, as in Envoy.
fn udp_address(path: &FieldPath, a: &pb::core::Address) -> Result<SocketAddr> {
    use pb::core::address::Address as A;
    let ap = path.field("address");
    let pb::core::Address { address } = a;
    let sa = match address {
        Some(A::SocketAddress(sa)) => sa,
        Some(A::Pipe(_)) => return Err(ap.unsupported("pipe")),
        Some(A::EnvoyInternalAddress(_)) => return Err(ap.unsupported("envoy_internal_address")),
        None => return Err(ap.error("an address is required")),
    };
    let sp = ap.field("socket_address");
    let tcp = pb::core::SocketAddress {
        protocol: pb::core::socket_address::Protocol::Tcp as i32,
        ..sa.clone()
    };
    let hp = host_port(&sp, &tcp)?;
    hp.socket_addr().ok_or_else(|| {
        sp.field("address")
            .error(format!("malformed IP address: {}", hp.host))
    })
}

fn metrics_service(
    path: &FieldPath,
    m: &pb::metrics::MetricsServiceConfig,
) -> Result<MetricsService> {
    use pb::metrics::HistogramEmitMode as H;
    let pb::metrics::MetricsServiceConfig {
        grpc_service,
        transport_api_version,
        report_counters_as_deltas,
        emit_tags_as_labels,
        histogram_emit_mode,
        batch_size,
    } = m;
    let Some(g) = grpc_service else {
        return Err(path.field("grpc_service").error("is required"));
    };
    if *transport_api_version != 0 && *transport_api_version != pb::core::ApiVersion::V3 as i32 {
        return Err(path
            .field("transport_api_version")
            .error("only V3 is supported (the v2 xDS major version has been removed)"));
    }
    let cluster = super::xds::envoy_grpc_cluster(&path.field("grpc_service"), g)?;
    let mode = enum_value::<H>(path, "histogram_emit_mode", *histogram_emit_mode, |_| true)?;
    Ok(MetricsService {
        cluster,
        counters_as_deltas: bool_or(report_counters_as_deltas, false),
        tags_as_labels: *emit_tags_as_labels,
        emit_summary: matches!(mode, H::SummaryAndHistogram | H::Summary),
        emit_histogram: matches!(mode, H::SummaryAndHistogram | H::Histogram),
        batch_size: *batch_size as usize,
    })
}

/// `stats_flush_interval` (Envoy's bounds: at least 1 ms, under 5 minutes; 5 s by default) or
/// `stats_flush_on_admin`, not both.
pub fn flush_settings(
    path: &FieldPath,
    interval: &Option<pb::protobuf::Duration>,
    flush: &Option<pb::bootstrap::bootstrap::StatsFlush>,
) -> Result<(Duration, bool)> {
    use pb::bootstrap::bootstrap::StatsFlush;
    let every = opt_duration(path, "stats_flush_interval", interval)?;
    if let Some(d) = every
        && !(Duration::from_millis(1)..Duration::from_secs(300)).contains(&d)
    {
        return Err(path
            .field("stats_flush_interval")
            .error("value must be inside range [1ms, 5m0s)"));
    }
    match flush {
        Some(StatsFlush::StatsFlushOnAdmin(on)) => {
            if !on {
                return Err(path
                    .field("stats_flush_on_admin")
                    .error("value must equal true"));
            }
            if every.is_some() {
                return Err(path.field("stats_flush_on_admin").error(
                    "Only one of stats_flush_interval or stats_flush_on_admin should be set!",
                ));
            }
            Ok((Duration::from_secs(5), true))
        }
        None => Ok((every.unwrap_or(Duration::from_secs(5)), false)),
    }
}

/// The clusters stats sinks connect to are static ones (Envoy creates its sinks with the
/// static clusters: `tcp statsd: unknown cluster`, `Unknown gRPC client cluster`).
pub fn check_clusters(
    path: &FieldPath,
    sinks: &[StatsSink],
    cs: &[pb::cluster::Cluster],
) -> Result<()> {
    crate::config::error::all(sinks.iter().enumerate().map(|(i, s)| {
        match s.cluster(&path.field("stats_sinks").index(i)) {
            Some((name, at)) if !cs.iter().any(|c| c.name == name) => {
                Err(at.error(format!("unknown static cluster '{name}'")))
            }
            _ => Ok(()),
        }
    }))
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink(yaml: &str) -> Result<StatsSink> {
        let s: pb::metrics::StatsSink = crate::config::decode_yaml(
            "envoy.config.metrics.v3.StatsSink",
            yaml,
            &FieldPath::root(),
        );
        StatsSink::from_proto(&FieldPath::root().field("stats_sinks").index(0), &s)
    }

    #[test]
    fn statsd_udp_tcp_and_default_prefix() {
        let udp = sink(
            r#"{name: envoy.stat_sinks.statsd, typed_config: {"@type": type.googleapis.com/envoy.config.metrics.v3.StatsdSink, address: {socket_address: {address: 127.0.0.1, port_value: 9125}}}}"#,
        )
        .unwrap();
        assert_eq!(
            udp,
            StatsSink::Statsd(Statsd {
                target: StatsdTarget::Udp("127.0.0.1:9125".parse().unwrap()),
                prefix: "envoy".into()
            })
        );
        let tcp = sink(
            r#"{name: s, typed_config: {"@type": type.googleapis.com/envoy.config.metrics.v3.StatsdSink, tcp_cluster_name: statsd, prefix: p}}"#,
        )
        .unwrap();
        assert_eq!(
            tcp,
            StatsSink::Statsd(Statsd {
                target: StatsdTarget::Tcp("statsd".into()),
                prefix: "p".into()
            })
        );
        let (c, p) = tcp.cluster(&FieldPath::root().field("s")).unwrap();
        assert_eq!(
            (c, p.as_str()),
            ("statsd", "s.typed_config.tcp_cluster_name")
        );
    }

    #[test]
    fn refusals_name_their_path() {
        let cases = [
            (
                r#"{name: s, typed_config: {"@type": type.googleapis.com/envoy.config.metrics.v3.StatsdSink, address: {socket_address: {address: statsd.local, port_value: 1}}}}"#,
                "stats_sinks[0].typed_config.address.socket_address.address",
            ),
            (
                r#"{name: s, typed_config: {"@type": type.googleapis.com/envoy.config.metrics.v3.StatsdSink}}"#,
                "stats_sinks[0].typed_config",
            ),
            (
                r#"{name: s, typed_config: {"@type": type.googleapis.com/envoy.config.metrics.v3.HystrixSink}}"#,
                "stats_sinks[0].typed_config.@type",
            ),
            (
                r#"{name: s, typed_config: {"@type": type.googleapis.com/envoy.config.metrics.v3.DogStatsdSink, address: {socket_address: {address: 127.0.0.1, port_value: 1}}, max_bytes_per_datagram: 0}}"#,
                "stats_sinks[0].typed_config.max_bytes_per_datagram",
            ),
            (
                r#"{name: s, typed_config: {"@type": type.googleapis.com/envoy.config.metrics.v3.MetricsServiceConfig, transport_api_version: V2, grpc_service: {envoy_grpc: {cluster_name: m}}}}"#,
                "stats_sinks[0].typed_config.transport_api_version",
            ),
            (
                r#"{name: s, typed_config: {"@type": type.googleapis.com/envoy.config.metrics.v3.MetricsServiceConfig}}"#,
                "stats_sinks[0].typed_config.grpc_service",
            ),
            (
                r#"{name: s, typed_config: {"@type": type.googleapis.com/envoy.config.metrics.v3.MetricsServiceConfig, grpc_service: {google_grpc: {target_uri: x, stat_prefix: y}}}}"#,
                "stats_sinks[0].typed_config.grpc_service.google_grpc",
            ),
            (r#"{name: s}"#, "stats_sinks[0]"),
        ];
        for (yaml, path) in cases {
            let e = sink(yaml).unwrap_err();
            assert_eq!(e.paths(), [path], "{e}");
        }
    }

    #[test]
    fn dog_statsd_fields() {
        let d = sink(
            r#"{name: envoy.stat_sinks.dog_statsd, typed_config: {"@type": type.googleapis.com/envoy.config.metrics.v3.DogStatsdSink, address: {socket_address: {address: "::1", port_value: 8125}}, max_bytes_per_datagram: 512}}"#,
        )
        .unwrap();
        assert_eq!(
            d,
            StatsSink::DogStatsd(DogStatsd {
                address: "[::1]:8125".parse().unwrap(),
                prefix: "envoy".into(),
                max_bytes_per_datagram: Some(512),
            })
        );
    }

    #[test]
    fn metrics_service_fields() {
        let m = sink(
            r#"{name: envoy.stat_sinks.metrics_service, typed_config: {"@type": type.googleapis.com/envoy.config.metrics.v3.MetricsServiceConfig, transport_api_version: V3, grpc_service: {envoy_grpc: {cluster_name: ms}}, report_counters_as_deltas: true, emit_tags_as_labels: true, histogram_emit_mode: SUMMARY, batch_size: 10}}"#,
        )
        .unwrap();
        assert_eq!(
            m,
            StatsSink::MetricsService(MetricsService {
                cluster: "ms".into(),
                counters_as_deltas: true,
                tags_as_labels: true,
                emit_summary: true,
                emit_histogram: false,
                batch_size: 10,
            })
        );
    }
}
