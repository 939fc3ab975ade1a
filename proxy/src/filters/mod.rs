//! Filters other than the router and tcp_proxy, named after their Envoy extensions:
//! `http/` (the HTTP filter chain's contract and its extensions), `network/` (the network
//! filter chain's), `common/` (what filters of both share: the RBAC engine).

pub mod common;
pub mod compressor;
pub mod http;
pub mod metadata_exchange;
pub mod network;
pub mod peer_metadata;
