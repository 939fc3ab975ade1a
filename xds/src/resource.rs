//! xDS resource types: their type URLs and how to read a resource's name.

use envoy_types::pb::envoy::config::{cluster::v3::Cluster, endpoint::v3::ClusterLoadAssignment};
use envoy_types::pb::envoy::config::{listener::v3::Listener, route::v3::RouteConfiguration};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};

pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// Envoy's short name for a type (for stats and logs): `lds`, `rds`, `cds`, `eds`, `sds`.
pub fn short_name(type_url: &str) -> &'static str {
    match type_url {
        LISTENER => "lds",
        ROUTE => "rds",
        CLUSTER => "cds",
        ENDPOINT => "eds",
        SECRET => "sds",
        _ => "unknown",
    }
}

/// Whether a type is subscribed to as a whole (state of the world wildcard) by Envoy.
pub fn is_wildcard_type(type_url: &str) -> bool {
    matches!(type_url, LISTENER | CLUSTER)
}

/// Pack a message as an `Any`.
pub fn any<M: Message + Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

/// The name of a resource of a known type (`None` for an unknown type or undecodable bytes).
pub fn name_of(a: &Any) -> Option<String> {
    let b = a.value.as_slice();
    Some(match a.type_url.as_str() {
        LISTENER => Listener::decode(b).ok()?.name,
        ROUTE => RouteConfiguration::decode(b).ok()?.name,
        CLUSTER => Cluster::decode(b).ok()?.name,
        ENDPOINT => ClusterLoadAssignment::decode(b).ok()?.cluster_name,
        SECRET => Secret::decode(b).ok()?.name,
        _ => return None,
    })
}

/// A stable version for one resource's bytes (delta xDS per-resource versions).
pub fn digest_version(a: &Any) -> String {
    // FNV-1a: stable across processes, enough to tell contents apart.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in a.type_url.as_bytes().iter().chain(&a.value) {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_versions() {
        let c = Cluster {
            name: "a".into(),
            ..Default::default()
        };
        let a = any(&c);
        assert_eq!(a.type_url, CLUSTER);
        assert_eq!(name_of(&a).as_deref(), Some("a"));
        let cla = ClusterLoadAssignment {
            cluster_name: "b".into(),
            ..Default::default()
        };
        assert_eq!(name_of(&any(&cla)).as_deref(), Some("b"));
        assert_eq!(digest_version(&a), digest_version(&any(&c)));
        assert_ne!(digest_version(&a), digest_version(&any(&cla)));
        assert_eq!(short_name(ENDPOINT), "eds");
    }
}
