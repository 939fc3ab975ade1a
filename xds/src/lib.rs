//! xDS for remora.
//!
//! - [`client`]: the ADS client a proxy runs: one gRPC stream (state of the world or delta)
//!   carrying every resource type, ACK/NACK with the translator's error, subscriptions that
//!   follow the configuration (EDS names from clusters, RDS and SDS names from listeners),
//!   reconnection with jittered exponential backoff.
//! - [`server`]: a snapshot-cache ADS server (state of the world and delta) that serves each
//!   node its snapshot, tracks what each node ACKed or NACKed, and is used by the tests and the
//!   local-mesh control plane.

#![forbid(unsafe_code)]

pub mod build;
pub mod client;
pub mod resource;
pub mod server;

pub use envoy_types::pb::envoy::service::discovery::v3 as discovery;
pub use envoy_types::pb::google::protobuf::Any;
