//! Envoy's protobuf descriptors, for proto3-JSON/YAML decoding and for the admin config dump.
//!
//! The set comes from envoy-types (see build.rs): the part of Envoy's API that the bootstrap, the
//! admin API and the extensions remora implements reach, plus the google.protobuf well-known
//! types, with comments and validation annotations stripped. The pool is built when needed
//! (config load, `/config_dump`) and dropped afterwards instead of being kept for the life of
//! the process.

use prost_reflect::DescriptorPool;

static ENVOY_DESCRIPTORS: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/envoy_descriptors.bin"));

/// Decode Envoy's descriptor pool.
pub fn envoy_pool() -> DescriptorPool {
    // The bytes are produced by build.rs from a set that prost-reflect can read; failing here
    // means the build itself is broken.
    DescriptorPool::decode(ENVOY_DESCRIPTORS).expect("embedded Envoy descriptor set is valid")
}

/// Names of every top-level message in Envoy's API, including those left out of the pool.
static ENVOY_TYPE_NAMES: &str = include_str!(concat!(env!("OUT_DIR"), "/envoy_type_names.txt"));

/// Whether `name` is a message of Envoy's API (whether or not remora implements it).
pub fn is_envoy_type(name: &str) -> bool {
    ENVOY_TYPE_NAMES.lines().any(|n| n == name)
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
        // Known to Envoy, outside the pool: named as unsupported rather than unknown.
        let bridge = "envoy.extensions.filters.http.grpc_http1_bridge.v3.Config";
        assert!(pool.get_message_by_name(bridge).is_none());
        assert!(is_envoy_type(bridge));
        assert!(!is_envoy_type(
            "envoy.extensions.filters.http.grpc_http1_bridge.v3.NoSuch"
        ));
    }
}
