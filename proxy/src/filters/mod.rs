//! HTTP filters other than the router, named after their Envoy extensions.

pub mod compressor;
pub mod peer_metadata;
