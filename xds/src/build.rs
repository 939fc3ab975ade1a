//! Builders for the resources a control plane serves most: EDS clusters, static clusters,
//! endpoint assignments and a catch-all route (used by the tests, the bench and the local-mesh
//! control plane).

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as endpoint;
use envoy_types::pb::envoy::config::route::v3 as route;
use std::net::SocketAddr;

/// A TCP `Address`.
pub fn address(a: SocketAddr) -> Option<core::Address> {
    Some(core::Address {
        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
            address: a.ip().to_string(),
            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(
                a.port() as u32
            )),
            ..Default::default()
        })),
    })
}

/// `ads: {}` (v3).
pub fn ads_source() -> core::ConfigSource {
    core::ConfigSource {
        config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(
            core::AggregatedConfigSource {},
        )),
        resource_api_version: core::ApiVersion::V3 as i32,
        ..Default::default()
    }
}

/// One locality with these endpoints, for cluster (or EDS service) `name`.
pub fn assignment(name: &str, addrs: &[SocketAddr]) -> endpoint::ClusterLoadAssignment {
    endpoint::ClusterLoadAssignment {
        cluster_name: name.into(),
        endpoints: vec![endpoint::LocalityLbEndpoints {
            lb_endpoints: addrs
                .iter()
                .map(|a| endpoint::LbEndpoint {
                    host_identifier: Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(
                        endpoint::Endpoint {
                            address: address(*a),
                            ..Default::default()
                        },
                    )),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A cluster whose endpoints come from EDS over ADS (service name = cluster name).
pub fn eds_cluster(name: &str) -> Cluster {
    Cluster {
        name: name.into(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cluster::EdsClusterConfig {
            eds_config: Some(ads_source()),
            service_name: String::new(),
        }),
        ..Default::default()
    }
}

/// A STATIC cluster with these endpoints.
pub fn static_cluster(name: &str, addrs: &[SocketAddr]) -> Cluster {
    Cluster {
        name: name.into(),
        load_assignment: Some(assignment(name, addrs)),
        ..Default::default()
    }
}

/// Route configuration `name`: every request (any host, prefix `/`) to `cluster`.
pub fn route_all_to(name: &str, cluster: &str) -> route::RouteConfiguration {
    route::RouteConfiguration {
        name: name.into(),
        virtual_hosts: vec![route::VirtualHost {
            name: "all".into(),
            domains: vec!["*".into()],
            routes: vec![route::Route {
                r#match: Some(route::RouteMatch {
                    path_specifier: Some(route::route_match::PathSpecifier::Prefix("/".into())),
                    ..Default::default()
                }),
                action: Some(route::route::Action::Route(route::RouteAction {
                    cluster_specifier: Some(route::route_action::ClusterSpecifier::Cluster(
                        cluster.into(),
                    )),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}
