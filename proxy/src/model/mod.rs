//! The configuration pipeline, second half: Envoy protos → validated internal model.
//! Every proto struct is destructured field by field, so a field added to Envoy's API cannot
//! be missed silently: each is honoured or refused with its path.

pub mod access_log;
pub mod bootstrap;
pub mod cel;
pub mod cluster;
pub mod compressor;
pub mod context;
pub mod core;
pub mod cors;
pub mod dns_resolver;
pub mod fault;
pub mod format;
pub mod grpc_stats;
pub mod hash_policy;
pub mod hcm;
pub mod headers;
pub mod health_check;
pub mod inputs;
pub mod istio_pb;
pub mod istio_stats;
#[cfg(test)]
mod layering;
pub mod listener;
pub mod local_ratelimit;
pub mod log_format;
pub mod matcher;
pub mod mirror;
pub mod pb;
pub mod per_filter;
pub mod rbac;
pub mod response_flags;
pub mod retry;
pub mod route;
pub mod runtime;
pub mod stats_sinks;
pub mod stats_tags;
pub mod tcp_proxy;
pub mod tls;
pub mod tracing;
pub mod xds;

pub use matcher::FullRegex;
