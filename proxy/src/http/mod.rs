//! HTTP: the connection manager (`envoy.filters.network.http_connection_manager`), its codecs,
//! the router filter, local replies and per-stream accounting.

pub mod body;
pub mod codec;
pub mod conn_manager;
pub mod h2_flood;
pub mod hash_policy;
pub mod header_mutations;
pub mod local_reply;
pub mod names;
pub mod retry;
pub mod router;
pub mod server;
pub mod shadow;
pub mod stream;
