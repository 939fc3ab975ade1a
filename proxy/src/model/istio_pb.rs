//! Istio's extension config messages (not in Envoy's API, not in envoy-types), as prost
//! types matching the descriptors build.rs adds to the pool: same packages, field numbers and
//! types as istio/api and istio/proxy.

#![allow(missing_docs)]

use envoy_types::pb::google::protobuf::Duration;

macro_rules! named {
    ($t:ty, $package:literal, $name:literal) => {
        impl prost::Name for $t {
            const NAME: &'static str = $name;
            const PACKAGE: &'static str = $package;
            fn full_name() -> String {
                concat!($package, ".", $name).into()
            }
            fn type_url() -> String {
                concat!("type.googleapis.com/", $package, ".", $name).into()
            }
        }
    };
}

/// `stats.PluginConfig` (filter `istio.stats`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct PluginConfig {
    #[prost(bool, tag = "6")]
    pub disable_host_header_fallback: bool,
    #[prost(message, optional, tag = "7")]
    pub tcp_reporting_duration: Option<Duration>,
    #[prost(message, repeated, tag = "8")]
    pub metrics: Vec<MetricConfig>,
    #[prost(message, repeated, tag = "9")]
    pub definitions: Vec<MetricDefinition>,
    #[prost(int32, tag = "10")]
    pub reporter: i32,
    #[prost(message, optional, tag = "11")]
    pub rotation_interval: Option<Duration>,
    #[prost(message, optional, tag = "12")]
    pub graceful_deletion_interval: Option<Duration>,
}
named!(PluginConfig, "stats", "PluginConfig");

#[derive(Clone, PartialEq, prost::Message)]
pub struct MetricConfig {
    #[prost(btree_map = "string, string", tag = "1")]
    pub dimensions: std::collections::BTreeMap<String, String>,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(string, repeated, tag = "3")]
    pub tags_to_remove: Vec<String>,
    #[prost(string, tag = "4")]
    pub r#match: String,
    #[prost(bool, tag = "5")]
    pub drop: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct MetricDefinition {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
    #[prost(int32, tag = "3")]
    pub r#type: i32,
}

/// `envoy.tcp.metadataexchange.config.MetadataExchange` (network `istio.metadata_exchange`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct MetadataExchange {
    #[prost(string, tag = "1")]
    pub protocol: String,
    #[prost(bool, tag = "2")]
    pub enable_discovery: bool,
    #[prost(string, repeated, tag = "3")]
    pub additional_labels: Vec<String>,
}
named!(
    MetadataExchange,
    "envoy.tcp.metadataexchange.config",
    "MetadataExchange"
);

/// `io.istio.http.peer_metadata.Config` (HTTP `istio.metadata_exchange`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct PeerMetadata {
    #[prost(message, repeated, tag = "1")]
    pub downstream_discovery: Vec<DiscoveryMethod>,
    #[prost(message, repeated, tag = "2")]
    pub upstream_discovery: Vec<DiscoveryMethod>,
    #[prost(message, repeated, tag = "3")]
    pub downstream_propagation: Vec<PropagationMethod>,
    #[prost(message, repeated, tag = "4")]
    pub upstream_propagation: Vec<PropagationMethod>,
    #[prost(bool, tag = "5")]
    pub shared_with_upstream: bool,
    #[prost(string, repeated, tag = "6")]
    pub additional_labels: Vec<String>,
}
named!(PeerMetadata, "io.istio.http.peer_metadata", "Config");

#[derive(Clone, PartialEq, prost::Message)]
pub struct DiscoveryMethod {
    #[prost(oneof = "Discovery", tags = "1, 2, 3, 4")]
    pub method_specifier: Option<Discovery>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Discovery {
    #[prost(message, tag = "1")]
    Baggage(Empty),
    #[prost(message, tag = "2")]
    WorkloadDiscovery(Empty),
    #[prost(message, tag = "3")]
    IstioHeaders(IstioHeaders),
    #[prost(message, tag = "4")]
    UpstreamFilterState(UpstreamFilterState),
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PropagationMethod {
    #[prost(oneof = "Propagation", tags = "1, 2")]
    pub method_specifier: Option<Propagation>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Propagation {
    #[prost(message, tag = "1")]
    IstioHeaders(IstioHeaders),
    #[prost(message, tag = "2")]
    Baggage(Empty),
}

/// `Config.Baggage` and `Config.WorkloadDiscovery` carry no fields.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Empty {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct IstioHeaders {
    #[prost(bool, tag = "1")]
    pub skip_external_clusters: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct UpstreamFilterState {
    #[prost(string, tag = "1")]
    pub peer_metadata_key: String,
}

/// `istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig` (`istio.alpn`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct AlpnFilterConfig {
    #[prost(message, repeated, tag = "1")]
    pub alpn_override: Vec<AlpnOverride>,
}
named!(
    AlpnFilterConfig,
    "istio.envoy.config.filter.http.alpn.v2alpha1",
    "FilterConfig"
);

#[derive(Clone, PartialEq, prost::Message)]
pub struct AlpnOverride {
    /// `HTTP10` = 0, `HTTP11` = 1, `HTTP2` = 2.
    #[prost(int32, tag = "1")]
    pub upstream_protocol: i32,
    #[prost(string, repeated, tag = "2")]
    pub alpn_override: Vec<String>,
}

/// `udpa.type.v1.TypedStruct` / `xds.type.v3.TypedStruct` (same layout).
#[derive(Clone, PartialEq, prost::Message)]
pub struct TypedStruct {
    #[prost(string, tag = "1")]
    pub type_url: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<envoy_types::pb::google::protobuf::Struct>,
}
