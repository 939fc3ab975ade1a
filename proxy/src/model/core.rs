//! Translation helpers shared by every model type: refusing unsupported fields by path,
//! durations, addresses, data sources, header mutations.

use super::inputs::{Inputs, NotRead};
use super::pb;
use crate::config::{FieldPath, Result};
use bytes::Bytes;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Refuse a field that is set (not at its default) but not supported.
pub fn deny<T: PartialEq + Default>(path: &FieldPath, field: &str, value: &T) -> Result<()> {
    if *value != T::default() {
        Err(path.unsupported(field))
    } else {
        Ok(())
    }
}

/// Refuse an enum field unless it has one of the supported values; names the value, as in
/// `clusters[2].lb_policy: MAGLEV is not supported`.
pub fn enum_value<E>(
    path: &FieldPath,
    field: &str,
    value: i32,
    accept: impl Fn(&E) -> bool,
) -> Result<E>
where
    E: TryFrom<i32> + std::fmt::Debug + EnumName,
{
    let p = path.field(field);
    match E::try_from(value) {
        Ok(e) if accept(&e) => Ok(e),
        Ok(e) => Err(p.error(format!("{} is not supported", e.enum_name()))),
        Err(_) => Err(p.error(format!("unknown enum value {value}"))),
    }
}

/// prost enums name their values through `as_str_name`.
pub trait EnumName {
    fn enum_name(&self) -> &'static str;
}

macro_rules! enum_names {
    ($($t:ty),* $(,)?) => { $(impl EnumName for $t { fn enum_name(&self) -> &'static str { self.as_str_name() } })* };
}
enum_names!(
    pb::cluster::cluster::LbPolicy,
    pb::cluster::cluster::DiscoveryType,
    pb::cluster::cluster::DnsLookupFamily,
    pb::cluster::cluster::ClusterProtocolSelection,
    pb::core::socket_address::Protocol,
    pb::core::RoutingPriority,
    pb::route::retry_policy::ResetHeaderFormat,
    pb::cluster::cluster::ring_hash_lb_config::HashFunction,
    pb::core::RequestMethod,
    pb::types::CodecClientType,
    pb::core::HealthStatus,
    pb::core::header_value_option::HeaderAppendAction,
    pb::core::http_protocol_options::HeadersWithUnderscoresAction,
    pb::core::TrafficDirection,
    pb::hcm::http_connection_manager::CodecType,
    pb::hcm::http_connection_manager::ServerHeaderTransformation,
    pb::hcm::http_connection_manager::ForwardClientCertDetails,
    pb::hcm::http_connection_manager::PathWithEscapedSlashesAction,
    pb::route::virtual_host::TlsRequirementType,
    pb::route::route_action::ClusterNotFoundResponseCode,
    pb::route::redirect_action::RedirectResponseCode,
    pb::listener::listener::DrainType,
    pb::accesslog::comparison_filter::Op,
    pb::tls::tls_parameters::TlsProtocol,
    pb::core::api_config_source::ApiType,
    pb::core::ApiVersion,
    pb::tls::subject_alt_name_matcher::SanType,
    pb::tls::certificate_validation_context::TrustChainVerification,
    pb::tls::downstream_tls_context::OcspStaplePolicy,
    pb::gzip::gzip::CompressionLevel,
    pb::gzip::gzip::CompressionStrategy,
    pb::brotli::brotli::EncoderMode,
    envoy_types::pb::envoy::config::trace::v3::zipkin_config::CollectorEndpointVersion,
    envoy_types::pb::envoy::config::trace::v3::zipkin_config::TraceContextOption,
    pb::metrics::HistogramEmitMode,
);

pub fn duration(d: &pb::protobuf::Duration) -> Option<Duration> {
    if d.seconds < 0 || d.nanos < 0 {
        return None;
    }
    Some(Duration::new(d.seconds as u64, d.nanos as u32))
}

/// An optional duration field; negative is an error.
pub fn opt_duration(
    path: &FieldPath,
    field: &str,
    d: &Option<pb::protobuf::Duration>,
) -> Result<Option<Duration>> {
    match d {
        None => Ok(None),
        Some(d) => duration(d)
            .map(Some)
            .ok_or_else(|| path.field(field).error("must not be negative")),
    }
}

/// A timeout where Envoy's meaning of zero is "disabled": `None` when unset gives `default`,
/// `Some(0)` gives `None` (no timeout).
pub fn timeout_or(
    path: &FieldPath,
    field: &str,
    d: &Option<pb::protobuf::Duration>,
    default: Option<Duration>,
) -> Result<Option<Duration>> {
    Ok(match opt_duration(path, field, d)? {
        None => default,
        Some(Duration::ZERO) => None,
        Some(t) => Some(t),
    })
}

pub fn u32_or(v: &Option<pb::protobuf::UInt32Value>, default: u32) -> u32 {
    v.as_ref().map(|v| v.value).unwrap_or(default)
}

pub fn bool_or(v: &Option<pb::protobuf::BoolValue>, default: bool) -> bool {
    v.as_ref().map(|v| v.value).unwrap_or(default)
}

/// A socket address as written in the config: an IP literal, or (for DNS clusters) a hostname.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

// === impl HostPort ===

impl HostPort {
    pub fn ip(&self) -> Option<IpAddr> {
        self.host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .ok()
    }

    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.ip().map(|ip| SocketAddr::new(ip, self.port))
    }
}

impl std::fmt::Display for HostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// `Address` with a TCP `socket_address`; pipes and internal addresses are refused here (the
/// places that accept them handle them first).
pub fn socket_address(path: &FieldPath, addr: &Option<pb::core::Address>) -> Result<HostPort> {
    use pb::core::address::Address as A;
    let addr = addr
        .as_ref()
        .ok_or_else(|| path.error("an address is required"))?;
    let pb::core::Address { address } = addr;
    match address {
        Some(A::SocketAddress(sa)) => host_port(&path.field("socket_address"), sa),
        Some(A::Pipe(_)) => Err(path
            .field("pipe")
            .error("pipe addresses are not supported here")),
        Some(A::EnvoyInternalAddress(_)) => Err(path.unsupported("envoy_internal_address")),
        None => Err(path.error("an address is required")),
    }
}

pub fn host_port(path: &FieldPath, sa: &pb::core::SocketAddress) -> Result<HostPort> {
    use pb::core::socket_address::{PortSpecifier, Protocol};
    let pb::core::SocketAddress {
        protocol,
        address,
        resolver_name,
        ipv4_compat,
        network_namespace_filepath,
        port_specifier,
    } = sa;
    enum_value::<Protocol>(path, "protocol", *protocol, |p| *p == Protocol::Tcp)?;
    deny(path, "resolver_name", resolver_name)?;
    deny(
        path,
        "network_namespace_filepath",
        network_namespace_filepath,
    )?;
    if *ipv4_compat
        && !address
            .parse::<std::net::Ipv6Addr>()
            .is_ok_and(|a| a.is_unspecified())
    {
        return Err(path
            .field("ipv4_compat")
            .error("is only supported on the IPv6 any address '::'"));
    }
    let port = match port_specifier {
        Some(PortSpecifier::PortValue(p)) => {
            u16::try_from(*p).map_err(|_| path.field("port_value").error("port out of range"))?
        }
        Some(PortSpecifier::NamedPort(_)) => return Err(path.unsupported("named_port")),
        None => 0,
    };
    if address.is_empty() {
        return Err(path.field("address").error("an address is required"));
    }
    Ok(HostPort {
        host: address.clone(),
        port,
    })
}

/// A `DataSource`'s bytes (file, inline bytes/string, environment variable); files and
/// variables come from the translation's [`Inputs`].
pub fn data_source(path: &FieldPath, ds: &pb::core::DataSource, inputs: &Inputs) -> Result<Bytes> {
    use pb::core::data_source::Specifier;
    let pb::core::DataSource {
        watched_directory,
        specifier,
    } = ds;
    deny(path, "watched_directory", watched_directory)?;
    match specifier {
        Some(Specifier::Filename(f)) => file(&path.field("filename"), f, inputs),
        Some(Specifier::InlineBytes(b)) => Ok(Bytes::from(b.clone())),
        Some(Specifier::InlineString(s)) => Ok(Bytes::from(s.clone())),
        Some(Specifier::EnvironmentVariable(v)) => {
            env(&path.field("environment_variable"), v, inputs).map(Bytes::from)
        }
        None => Err(path.error(
            "a data source needs filename, inline_bytes, inline_string or environment_variable",
        )),
    }
}

/// A file's bytes from the translation's inputs (`path` names the `filename` field).
pub fn file(path: &FieldPath, name: &str, inputs: &Inputs) -> Result<Bytes> {
    match inputs.file(name) {
        Ok(Ok(bytes)) => Ok(bytes.clone()),
        Ok(Err(reason)) => Err(path.error(format!("cannot read '{name}': {reason}"))),
        Err(NotRead) => Err(path.error(format!("'{name}' has not been read"))),
    }
}

/// An environment variable's value from the translation's inputs.
pub fn env(path: &FieldPath, name: &str, inputs: &Inputs) -> Result<String> {
    match inputs.env(name) {
        Ok(Some(value)) => Ok(value.to_string()),
        Ok(None) => Err(path.error(format!("environment variable '{name}' is not set"))),
        Err(NotRead) => Err(path.error(format!("environment variable '{name}' has not been read"))),
    }
}

/// Accept `metadata` (opaque to the data plane; kept in the config dump).
pub fn metadata_ok(_m: &Option<pb::core::Metadata>) {}

/// Decode an `Any` whose type must be `T`; a different type names both.
pub fn decode_any<T: prost::Message + prost::Name + Default>(
    path: &FieldPath,
    any: &pb::protobuf::Any,
) -> Result<T> {
    let want = T::full_name();
    let got = crate::config::descriptors::type_name_of_url(&any.type_url);
    if got != want {
        return Err(path
            .field("@type")
            .error(format!("expected {want}, got {got}")));
    }
    T::decode(any.value.as_slice()).map_err(|e| path.error(format!("cannot decode {want}: {e}")))
}

/// The message name inside an `Any`.
pub fn any_type(any: &pb::protobuf::Any) -> &str {
    crate::config::descriptors::type_name_of_url(&any.type_url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::cluster::cluster::LbPolicy;

    #[test]
    fn enum_refusal_names_value() {
        let p = FieldPath::new("static_resources.clusters[2]");
        let e = enum_value::<LbPolicy>(&p, "lb_policy", LbPolicy::Maglev as i32, |l| {
            *l == LbPolicy::RoundRobin
        })
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "static_resources.clusters[2].lb_policy: MAGLEV is not supported"
        );
    }

    #[test]
    fn timeouts_zero_means_disabled() {
        let p = FieldPath::root();
        let d = Some(pb::protobuf::Duration {
            seconds: 0,
            nanos: 0,
        });
        assert_eq!(
            timeout_or(&p, "t", &d, Some(Duration::from_secs(15))).unwrap(),
            None
        );
        assert_eq!(
            timeout_or(&p, "t", &None, Some(Duration::from_secs(15))).unwrap(),
            Some(Duration::from_secs(15))
        );
    }
}
