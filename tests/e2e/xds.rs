//! Dynamic configuration over ADS against remora's own xDS server (crate `remora-xds`): CDS and
//! EDS over state of the world and delta, ACK/NACK with the translator's error, endpoint changes
//! moving traffic, removal, and a control plane that goes away and comes back.

use crate::support::*;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as endpoint;
use remora_xds::resource::{CLUSTER, ENDPOINT, any};
use remora_xds::server::{Snapshot, SnapshotCache};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

const NODE: &str = "sidecar~10.0.0.1~deal-1.autolytiq~autolytiq.svc.cluster.local";

fn socket(a: SocketAddr) -> Option<core::Address> {
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

fn assignment(name: &str, addrs: &[SocketAddr]) -> endpoint::ClusterLoadAssignment {
    endpoint::ClusterLoadAssignment {
        cluster_name: name.into(),
        endpoints: vec![endpoint::LocalityLbEndpoints {
            lb_endpoints: addrs
                .iter()
                .map(|a| endpoint::LbEndpoint {
                    host_identifier: Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(
                        endpoint::Endpoint {
                            address: socket(*a),
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

fn eds_cluster(name: &str) -> Cluster {
    use envoy_types::pb::envoy::config::cluster::v3::cluster;
    Cluster {
        name: name.into(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cluster::EdsClusterConfig {
            eds_config: Some(core::ConfigSource {
                config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(
                    core::AggregatedConfigSource {},
                )),
                resource_api_version: core::ApiVersion::V3 as i32,
                ..Default::default()
            }),
            service_name: String::new(),
        }),
        connect_timeout: Some(envoy_types::pb::google::protobuf::Duration {
            seconds: 1,
            nanos: 0,
        }),
        ..Default::default()
    }
}

fn static_cluster(name: &str, addr: SocketAddr) -> Cluster {
    Cluster {
        name: name.into(),
        load_assignment: Some(assignment(name, &[addr])),
        ..Default::default()
    }
}

/// A bootstrap with ADS (api_type `api`) to `xds`, CDS over ADS, and a listener routing
/// `/a` → `dyn`, `/b` → `dyn_static` (clusters that only CDS defines).
fn bootstrap_with_ads(xds: SocketAddr, api: &str) -> String {
    let routes = "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {prefix: /a}\n                route: {cluster: dyn}\n              - match: {prefix: /b}\n                route: {cluster: dyn_static}\n";
    let listener = http_listener("in", "", routes).replace(
        "            name: in_routes\n",
        "            name: in_routes\n            validate_clusters: false\n",
    );
    format!(
        "node: {{id: \"{NODE}\", cluster: deal.autolytiq}}\ndynamic_resources:\n  ads_config:\n    api_type: {api}\n    transport_api_version: V3\n    set_node_on_first_message_only: true\n    grpc_services:\n    - envoy_grpc: {{cluster_name: xds-grpc}}\n  cds_config: {{ads: {{}}, resource_api_version: V3}}\n{}",
        bootstrap(
            &listener,
            &cluster(
                "xds-grpc",
                &[xds],
                "    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        explicit_http_config: {http2_protocol_options: {}}\n"
            )
        )
    )
}

async fn xds_server() -> (Arc<SnapshotCache>, SocketAddr, tokio::task::JoinHandle<()>) {
    let cache = SnapshotCache::new();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let c = cache.clone();
    let task = tokio::spawn(async move {
        let _ = remora_xds::server::serve_tcp(c, l).await;
    });
    (cache, addr, task)
}

fn snapshot(
    version: &str,
    clusters: Vec<Cluster>,
    eds_version: &str,
    assignments: Vec<endpoint::ClusterLoadAssignment>,
) -> Snapshot {
    Snapshot::default()
        .with(CLUSTER, version, clusters.iter().map(any).collect())
        .with(ENDPOINT, eds_version, assignments.iter().map(any).collect())
}

async fn cds_and_eds(api: &str) {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let (cache, xds, _task) = xds_server().await;
    cache.set_snapshot(
        NODE,
        snapshot(
            "1",
            vec![eds_cluster("dyn"), static_cluster("dyn_static", b.addr)],
            "e1",
            vec![assignment("dyn", &[a.addr])],
        ),
    );
    let r = Remora::start(&bootstrap_with_ads(xds, api)).await;
    let l = r.addr("in");
    // Listeners start after the first CDS update and the EDS it waited for.
    assert_eq!(get(l, "x", "/a").await.header("x-upstream"), Some("a"));
    assert_eq!(get(l, "x", "/b").await.header("x-upstream"), Some("b"));
    cache
        .wait_until(NODE, CLUSTER, |s| s.acked.as_deref() == Some("1"))
        .await;
    assert_eq!(r.stat("control_plane.connected_state").await, 1);
    assert_eq!(r.stat("cluster_manager.cds.update_success").await, 1);
    assert_eq!(r.stat("cluster.dyn.membership_total").await, 1);

    // EDS moves traffic: `dyn` now points at b.
    cache.set_snapshot(
        NODE,
        snapshot(
            "1",
            vec![eds_cluster("dyn"), static_cluster("dyn_static", b.addr)],
            "e2",
            vec![assignment("dyn", &[b.addr])],
        ),
    );
    cache
        .wait_until(NODE, ENDPOINT, |s| s.acked.as_deref() == Some("e2"))
        .await;
    assert_eq!(get(l, "x", "/a").await.header("x-upstream"), Some("b"));

    // A cluster remora cannot translate: NACK naming the field; everything else keeps working.
    let mut bad = static_cluster("bad", a.addr);
    bad.lb_policy = envoy_types::pb::envoy::config::cluster::v3::cluster::LbPolicy::Maglev as i32;
    cache.set_snapshot(
        NODE,
        snapshot(
            "2",
            vec![
                eds_cluster("dyn"),
                static_cluster("dyn_static", b.addr),
                bad,
            ],
            "e2",
            vec![assignment("dyn", &[b.addr])],
        ),
    );
    cache.wait_until(NODE, CLUSTER, |s| s.nacks == 1).await;
    let applied = cache.applied(NODE, CLUSTER);
    assert_eq!(applied.acked.as_deref(), Some("1"));
    assert_eq!(
        applied.nacked.as_ref().map(|(_, m)| m.as_str()),
        Some("Cluster 'bad'.lb_policy: MAGLEV is not supported")
    );
    assert_eq!(r.stat("cluster_manager.cds.update_rejected").await, 1);
    assert_eq!(get(l, "x", "/b").await.header("x-upstream"), Some("b"));

    // Removal: `dyn_static` goes; its route now answers 503 NC.
    cache.set_snapshot(
        NODE,
        snapshot(
            "3",
            vec![eds_cluster("dyn")],
            "e2",
            vec![assignment("dyn", &[b.addr])],
        ),
    );
    cache
        .wait_until(NODE, CLUSTER, |s| s.acked.as_deref() == Some("3"))
        .await;
    let resp = get(l, "x", "/b").await;
    assert_eq!(resp.status, 503);
    assert_eq!(r.stat("cluster_manager.cluster_removed").await, 1);
    assert_eq!(get(l, "x", "/a").await.header("x-upstream"), Some("b"));
}

#[tokio::test(flavor = "multi_thread")]
async fn cds_and_eds_over_ads_state_of_the_world() {
    cds_and_eds("GRPC").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cds_and_eds_over_ads_delta() {
    cds_and_eds("DELTA_GRPC").await;
}

/// The control plane goes away: traffic keeps flowing on the last configuration and the stats
/// say so; when it comes back, updates apply again.
#[tokio::test(flavor = "multi_thread")]
async fn control_plane_loss_and_return() {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let (cache, xds, task) = xds_server().await;
    cache.set_snapshot(
        NODE,
        snapshot(
            "1",
            vec![eds_cluster("dyn")],
            "e1",
            vec![assignment("dyn", &[a.addr])],
        ),
    );
    let r = Remora::start(&bootstrap_with_ads(xds, "GRPC")).await;
    let l = r.addr("in");
    assert_eq!(get(l, "x", "/a").await.header("x-upstream"), Some("a"));
    task.abort();
    let _ = task.await;
    cache.disconnect_all();
    r.wait_stat("control_plane.connected_state", 0).await;
    for _ in 0..5 {
        assert_eq!(get(l, "x", "/a").await.header("x-upstream"), Some("a"));
    }
    // Back on the same address, with new endpoints.
    cache.set_snapshot(
        NODE,
        snapshot(
            "1",
            vec![eds_cluster("dyn")],
            "e2",
            vec![assignment("dyn", &[b.addr])],
        ),
    );
    let listener = loop {
        match tokio::net::TcpListener::bind(xds).await {
            Ok(l) => break l,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let c = cache.clone();
    tokio::spawn(async move {
        let _ = remora_xds::server::serve_tcp(c, listener).await;
    });
    cache
        .wait_until(NODE, ENDPOINT, |s| s.acked.as_deref() == Some("e2"))
        .await;
    r.wait_stat("control_plane.connected_state", 1).await;
    assert_eq!(get(l, "x", "/a").await.header("x-upstream"), Some("b"));
}
