//! Envoy's protobuf descriptors, for proto3-JSON/YAML decoding and for the admin config dump.
//!
//! The set comes from envoy-types (see build.rs): Envoy's API, xds/udpa annotations and the
//! google.protobuf well-known types, with comments and validation annotations stripped. The pool
//! costs about 4 MB when decoded, so it is built when needed (config load, `/config_dump`) and
//! dropped afterwards instead of being kept for the life of the process.

use prost_reflect::DescriptorPool;

static ENVOY_DESCRIPTORS: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/envoy_descriptors.bin"));

/// Decode Envoy's descriptor pool.
pub fn envoy_pool() -> DescriptorPool {
    // The bytes are produced by build.rs from a set that prost-reflect can read; failing here
    // means the build itself is broken.
    DescriptorPool::decode(ENVOY_DESCRIPTORS).expect("embedded Envoy descriptor set is valid")
}

/// The message name from an `Any` type URL: `type.googleapis.com/envoy.x.Y` → `envoy.x.Y`.
pub fn type_name_of_url(type_url: &str) -> &str {
    type_url
        .rsplit_once('/')
        .map(|(_, n)| n)
        .unwrap_or(type_url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_has_bootstrap_and_wkt() {
        let pool = envoy_pool();
        for name in [
            "envoy.config.bootstrap.v3.Bootstrap",
            "envoy.admin.v3.ConfigDump",
            "google.protobuf.Duration",
            "google.protobuf.Struct",
            "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        ] {
            assert!(pool.get_message_by_name(name).is_some(), "{name}");
        }
        assert_eq!(type_name_of_url("type.googleapis.com/a.b.C"), "a.b.C");
    }
}
