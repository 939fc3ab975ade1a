//! Short names for the Envoy proto modules the model translates.

pub use envoy_types::pb::envoy::config::accesslog::v3 as accesslog;
pub use envoy_types::pb::envoy::config::bootstrap::v3 as bootstrap;
pub use envoy_types::pb::envoy::config::cluster::v3 as cluster;
pub use envoy_types::pb::envoy::config::core::v3 as core;
pub use envoy_types::pb::envoy::config::endpoint::v3 as endpoint;
pub use envoy_types::pb::envoy::config::listener::v3 as listener;
pub use envoy_types::pb::envoy::config::metrics::v3 as metrics;
pub use envoy_types::pb::envoy::config::overload::v3 as overload;
pub use envoy_types::pb::envoy::config::route::v3 as route;
pub use envoy_types::pb::envoy::extensions::access_loggers::file::v3 as file_log;
pub use envoy_types::pb::envoy::extensions::access_loggers::stream::v3 as stream_log;
pub use envoy_types::pb::envoy::extensions::compression::brotli::compressor::v3 as brotli;
pub use envoy_types::pb::envoy::extensions::compression::gzip::compressor::v3 as gzip;
pub use envoy_types::pb::envoy::extensions::compression::zstd::compressor::v3 as zstd;
pub use envoy_types::pb::envoy::extensions::filters::common::fault::v3 as common_fault;
pub use envoy_types::pb::envoy::extensions::filters::http::compressor::v3 as compressor;
pub use envoy_types::pb::envoy::extensions::filters::http::cors::v3 as cors;
pub use envoy_types::pb::envoy::extensions::filters::http::fault::v3 as fault;
pub use envoy_types::pb::envoy::extensions::filters::http::grpc_stats::v3 as grpc_stats;
pub use envoy_types::pb::envoy::extensions::filters::http::router::v3 as router;
pub use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
pub use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp_proxy;
pub use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
pub use envoy_types::pb::envoy::extensions::upstreams::http::v3 as upstream_http;
pub use envoy_types::pb::envoy::r#type::matcher::v3 as matcher;
pub use envoy_types::pb::envoy::r#type::v3 as types;
pub use envoy_types::pb::google::protobuf;
