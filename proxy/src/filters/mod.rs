//! HTTP filters other than the router, named after their Envoy extensions.

pub mod compressor;
pub mod metadata_exchange;
pub mod peer_metadata;
