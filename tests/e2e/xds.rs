//! Dynamic configuration over ADS against remora's own xDS server (crate `remora-xds`): CDS and
//! EDS over state of the world and delta, ACK/NACK with the translator's error, endpoint changes
//! moving traffic, removal, and a control plane that goes away and comes back.

use crate::support::*;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as endpoint;
use remora_xds::build::{
    address, ads_source, assignment, eds_cluster, route_all_to, static_cluster,
};
use remora_xds::resource::{CLUSTER, ENDPOINT, any};
use remora_xds::server::{Snapshot, SnapshotCache};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub(crate) const NODE: &str = "sidecar~10.0.0.1~deal-1.autolytiq~autolytiq.svc.cluster.local";

/// A bootstrap with ADS (api_type `api`) to `xds`, CDS over ADS, and a listener routing
/// `/a` → `dyn`, `/b` → `dyn_static` (clusters that only CDS defines).
pub(crate) fn bootstrap_with_ads(xds: SocketAddr, api: &str) -> String {
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

/// `bootstrap_with_ads`, with the static listener `in` taking its routes (`in_routes`) from RDS.
fn bootstrap_with_static_rds(xds: SocketAddr) -> String {
    let yaml = bootstrap_with_ads(xds, "GRPC").replace(
        "          route_config:\n            name: in_routes\n            validate_clusters: false\n            virtual_hosts:\n",
        "          upgrade_configs: [{upgrade_type: websocket}]\n          rds: {route_config_name: in_routes, config_source: {ads: {}, resource_api_version: V3}}\n          unused_routes:\n            virtual_hosts:\n",
    );
    // Drop the inline routes the helper wrote (now under a key remora would refuse).
    let start = yaml.find("          unused_routes:\n").unwrap();
    let end = yaml.find("          http_filters:\n").unwrap();
    format!("{}{}", &yaml[..start], &yaml[end..])
}

pub(crate) async fn xds_server() -> (Arc<SnapshotCache>, SocketAddr, tokio::task::JoinHandle<()>) {
    let cache = SnapshotCache::new();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let c = cache.clone();
    let task = tokio::spawn(async move {
        let _ = remora_xds::server::serve_tcp(c, l).await;
    });
    (cache, addr, task)
}

/// remora on `bootstrap_with_ads`, the control plane serving EDS cluster `dyn` → `upstream`
/// (versions `1`/`e1`), and `/a` reaching it.
async fn serving_dyn(cache: &SnapshotCache, xds: SocketAddr, upstream: SocketAddr) -> Remora {
    cache.set_snapshot(
        NODE,
        snapshot(
            "1",
            vec![eds_cluster("dyn")],
            "e1",
            vec![assignment("dyn", &[upstream])],
        ),
    );
    let r = Remora::start(&bootstrap_with_ads(xds, "GRPC")).await;
    assert_eq!(
        get(r.addr("in"), "x", "/a").await.header("x-upstream"),
        Some("a")
    );
    r
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
            vec![eds_cluster("dyn"), static_cluster("dyn_static", &[b.addr])],
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
    // What came over xDS is in /config_dump, as istioctl proxy-config reads it.
    let (_, dump) = r
        .admin_get("/config_dump?resource=dynamic_active_clusters")
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&dump).unwrap();
    let names: Vec<&str> = v["configs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["cluster"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["dyn", "dyn_static"]);
    assert_eq!(v["configs"][0]["version_info"], "1");

    // EDS moves traffic: `dyn` now points at b.
    cache.set_snapshot(
        NODE,
        snapshot(
            "1",
            vec![eds_cluster("dyn"), static_cluster("dyn_static", &[b.addr])],
            "e2",
            vec![assignment("dyn", &[b.addr])],
        ),
    );
    cache
        .wait_until(NODE, ENDPOINT, |s| s.acked.as_deref() == Some("e2"))
        .await;
    assert_eq!(get(l, "x", "/a").await.header("x-upstream"), Some("b"));

    // A cluster remora cannot translate: NACK naming the field; everything else keeps working.
    let mut bad = static_cluster("bad", &[a.addr]);
    bad.lb_policy =
        envoy_types::pb::envoy::config::cluster::v3::cluster::LbPolicy::ClusterProvided as i32;
    cache.set_snapshot(
        NODE,
        snapshot(
            "2",
            vec![
                eds_cluster("dyn"),
                static_cluster("dyn_static", &[b.addr]),
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
        Some("Cluster 'bad'.lb_policy: CLUSTER_PROVIDED is not supported")
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
    let r = serving_dyn(&cache, xds, a.addr).await;
    let l = r.addr("in");
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
    let mut attempts = 0;
    let listener = loop {
        match tokio::net::TcpListener::bind(xds).await {
            Ok(l) => break l,
            Err(_) if attempts < 200 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("cannot bind the control plane's address again within 10 s: {e}"),
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

/// RDS: routes arrive over ADS and change under load — no request fails, a WebSocket opened
/// before the changes keeps working, and a route configuration remora cannot translate is
/// NACKed with its path while the previous routes keep serving.
#[tokio::test(flavor = "multi_thread")]
async fn rds_updates_under_load_drop_nothing() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = upstream("a").await;
    let b = upstream("b").await;
    let (cache, xds, _task) = xds_server().await;
    let clusters = [
        static_cluster("a_c", &[a.addr]),
        static_cluster("b_c", &[b.addr]),
    ];
    let snap = |v: &str, to: &str| {
        Snapshot::default()
            .with(CLUSTER, "c1", clusters.iter().map(any).collect())
            .with(
                remora_xds::resource::ROUTE,
                v,
                vec![any(&route_all_to("in_routes", to))],
            )
    };
    cache.set_snapshot(NODE, snap("r0", "a_c"));
    let yaml = bootstrap_with_static_rds(xds);
    let r = Remora::start(&yaml).await;
    let l = r.addr("in");
    cache
        .wait_until(NODE, remora_xds::resource::ROUTE, |s| {
            s.acked.as_deref() == Some("r0")
        })
        .await;
    assert_eq!(get(l, "x", "/").await.header("x-upstream"), Some("a"));

    // A WebSocket through the route as it is now.
    let mut ws = tokio::net::TcpStream::connect(l).await.unwrap();
    ws.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = ws.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 101"));

    // Load on keep-alive connections while the routes flip between a and b.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let stop = stop.clone();
        workers.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(l).await.unwrap();
            let (mut send, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            let (mut ok, mut failed) = (0u32, 0u32);
            let mut seen = std::collections::BTreeSet::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let req = http::Request::builder()
                    .uri("/")
                    .header("host", "x")
                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                    .unwrap();
                match send.send_request(req).await {
                    Ok(resp) if resp.status() == 200 => {
                        ok += 1;
                        if let Some(u) = resp.headers().get("x-upstream") {
                            seen.insert(u.to_str().unwrap().to_string());
                        }
                        let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
                    }
                    _ => failed += 1,
                }
            }
            (ok, failed, seen)
        }));
    }
    for i in 1..=20 {
        let to = if i % 2 == 1 { "b_c" } else { "a_c" };
        cache.set_snapshot(NODE, snap(&format!("r{i}"), to));
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    cache
        .wait_until(NODE, remora_xds::resource::ROUTE, |s| {
            s.acked.as_deref() == Some("r20")
        })
        .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut failed) = (0, 0);
    let mut seen = std::collections::BTreeSet::new();
    for w in workers {
        let (o, f, s) = w.await.unwrap();
        ok += o;
        failed += f;
        seen.extend(s);
    }
    assert_eq!(failed, 0, "{ok} ok");
    assert!(ok > 100, "{ok}");
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(get(l, "x", "/").await.header("x-upstream"), Some("a"));
    assert_eq!(r.stat("http.in.rds.in_routes.update_success").await, 21);

    // The WebSocket opened before all that still echoes.
    ws.write_all(b"still-here").await.unwrap();
    let n = ws.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"echo:still-here");

    // A route configuration naming a bad regex: NACKed by path, the last routes stay.
    let mut bad = route_all_to("in_routes", "b_c");
    bad.virtual_hosts[0].routes[0].r#match =
        Some(envoy_types::pb::envoy::config::route::v3::RouteMatch {
            path_specifier: Some(
                envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier::SafeRegex(
                    envoy_types::pb::envoy::r#type::matcher::v3::RegexMatcher {
                        regex: "(".into(),
                        ..Default::default()
                    },
                ),
            ),
            ..Default::default()
        });
    cache.set_snapshot(
        NODE,
        Snapshot::default()
            .with(CLUSTER, "c1", clusters.iter().map(any).collect())
            .with(remora_xds::resource::ROUTE, "r21", vec![any(&bad)]),
    );
    cache
        .wait_until(NODE, remora_xds::resource::ROUTE, |s| s.nacks == 1)
        .await;
    let nack = cache
        .applied(NODE, remora_xds::resource::ROUTE)
        .nacked
        .unwrap()
        .1;
    assert!(
        nack.starts_with("RouteConfiguration 'in_routes'.virtual_hosts[0].routes[0].match.safe_regex.regex: invalid regex"),
        "{nack}"
    );
    assert_eq!(get(l, "x", "/").await.header("x-upstream"), Some("a"));
    assert_eq!(r.stat("http.in.rds.in_routes.update_rejected").await, 1);
}

pub(crate) fn lds_listener(
    name: &str,
    port: u16,
    rds_name: &str,
    stat_prefix: &str,
) -> envoy_types::pb::envoy::config::listener::v3::Listener {
    use envoy_types::pb::envoy::config::listener::v3 as listener;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
    let manager = hcm::HttpConnectionManager {
        stat_prefix: stat_prefix.into(),
        route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::Rds(
            hcm::Rds {
                route_config_name: rds_name.into(),
                config_source: Some(ads_source()),
            },
        )),
        upgrade_configs: vec![hcm::http_connection_manager::UpgradeConfig {
            upgrade_type: "websocket".into(),
            ..Default::default()
        }],
        http_filters: vec![hcm::HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(hcm::http_filter::ConfigType::TypedConfig(any(
                &envoy_types::pb::envoy::extensions::filters::http::router::v3::Router::default(),
            ))),
            ..Default::default()
        }],
        ..Default::default()
    };
    listener::Listener {
        name: name.into(),
        address: address(SocketAddr::from(([127, 0, 0, 1], port))),
        filter_chains: vec![listener::FilterChain {
            filters: vec![listener::Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(listener::filter::ConfigType::TypedConfig(any(&manager))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// LDS: a listener from the control plane warms until its routes arrive, serves, is modified
/// in place (same port, the open WebSocket keeps working), a listener whose port is taken is
/// NACKed while the others serve, and removal closes the port.
#[tokio::test(flavor = "multi_thread")]
async fn lds_listeners_warm_update_and_go() {
    use remora_xds::resource::{LISTENER, ROUTE};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = upstream("a").await;
    let b = upstream("b").await;
    let (cache, xds, _task) = xds_server().await;
    let port = closed_port().port();
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let clusters = [
        static_cluster("a_c", &[a.addr]),
        static_cluster("b_c", &[b.addr]),
    ];
    let snap = |lv: &str,
                listeners: Vec<envoy_types::pb::envoy::config::listener::v3::Listener>,
                rv: &str,
                to: &str| {
        Snapshot::default()
            .with(CLUSTER, "c1", clusters.iter().map(any).collect())
            .with(LISTENER, lv, listeners.iter().map(any).collect())
            .with(ROUTE, rv, vec![any(&route_all_to("r1", to))])
    };
    cache.set_snapshot(
        NODE,
        snap(
            "l1",
            vec![lds_listener("dyn", port, "r1", "dyn")],
            "r1",
            "a_c",
        ),
    );
    let yaml = bootstrap_with_ads(xds, "GRPC").replace(
        "  cds_config: {ads: {}, resource_api_version: V3}\n",
        "  cds_config: {ads: {}, resource_api_version: V3}\n  lds_config: {ads: {}, resource_api_version: V3}\n",
    );
    let r = Remora::start(&yaml).await;
    let l = SocketAddr::from(([127, 0, 0, 1], port));
    r.wait_stat("listener_manager.total_listeners_active", 2)
        .await;
    assert_eq!(get(l, "x", "/").await.header("x-upstream"), Some("a"));
    assert_eq!(r.stat("listener_manager.lds.update_success").await, 1);
    let (_, listeners) = r.admin_get("/listeners").await.unwrap();
    assert!(
        listeners.contains(&format!("dyn::127.0.0.1:{port}")),
        "{listeners}"
    );

    // A WebSocket on the listener as it is.
    let mut ws = tokio::net::TcpStream::connect(l).await.unwrap();
    ws.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = ws.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 101"));

    // Modified: a new stat prefix and new routes (r2 → b). It warms until r2 arrives, then
    // takes over the port; the WebSocket stays on the old listener and keeps working.
    cache.set_snapshot(
        NODE,
        Snapshot::default()
            .with(CLUSTER, "c1", clusters.iter().map(any).collect())
            .with(
                LISTENER,
                "l2",
                vec![any(&lds_listener("dyn", port, "r2", "dyn2"))],
            )
            .with(
                ROUTE,
                "r2",
                vec![
                    any(&route_all_to("r1", "a_c")),
                    any(&route_all_to("r2", "b_c")),
                ],
            ),
    );
    cache
        .wait_until(NODE, LISTENER, |s| s.acked.as_deref() == Some("l2"))
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        if get(l, "x", "/").await.header("x-upstream") == Some("b") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the modified listener did not take over"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(r.stat("listener_manager.listener_modified").await, 1);
    ws.write_all(b"after-update").await.unwrap();
    let n = ws.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"echo:after-update");

    // A second listener on a port that is taken: NACKed, the first keeps serving.
    cache.set_snapshot(
        NODE,
        Snapshot::default()
            .with(CLUSTER, "c1", clusters.iter().map(any).collect())
            .with(
                LISTENER,
                "l3",
                vec![
                    any(&lds_listener("dyn", port, "r2", "dyn2")),
                    any(&lds_listener("clash", taken_port, "r1", "clash")),
                ],
            )
            .with(
                ROUTE,
                "r2",
                vec![
                    any(&route_all_to("r1", "a_c")),
                    any(&route_all_to("r2", "b_c")),
                ],
            ),
    );
    cache.wait_until(NODE, LISTENER, |s| s.nacks == 1).await;
    let nack = cache.applied(NODE, LISTENER).nacked.unwrap().1;
    assert!(
        nack.starts_with(&format!(
            "Listener 'clash': listener 'clash' (LDS): cannot bind '127.0.0.1:{taken_port}'"
        )),
        "{nack}"
    );
    assert_eq!(get(l, "x", "/").await.header("x-upstream"), Some("b"));
    drop(taken);

    // Removed: the port closes.
    cache.set_snapshot(
        NODE,
        Snapshot::default()
            .with(CLUSTER, "c1", clusters.iter().map(any).collect())
            .with(LISTENER, "l4", vec![])
            .with(ROUTE, "r2", vec![]),
    );
    cache
        .wait_until(NODE, LISTENER, |s| s.acked.as_deref() == Some("l4"))
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(l).await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the removed listener still accepts"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(r.stat("listener_manager.listener_removed").await, 1);
}

fn base64_of(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
}

fn tls_secret(
    name: &str,
    issued: &remora_certs::ca::Issued,
) -> envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
    let inline = |b: &str| {
        Some(core::DataSource {
            specifier: Some(core::data_source::Specifier::InlineBytes(
                b.as_bytes().to_vec(),
            )),
            ..Default::default()
        })
    };
    tls::Secret {
        name: name.into(),
        r#type: Some(tls::secret::Type::TlsCertificate(tls::TlsCertificate {
            certificate_chain: inline(&issued.cert_chain_pem),
            private_key: inline(&issued.key_pem),
            ..Default::default()
        })),
    }
}

fn root_secret(
    name: &str,
    root_pem: &str,
) -> envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
    tls::Secret {
        name: name.into(),
        r#type: Some(tls::secret::Type::ValidationContext(
            tls::CertificateValidationContext {
                trusted_ca: Some(core::DataSource {
                    specifier: Some(core::data_source::Specifier::InlineBytes(
                        root_pem.as_bytes().to_vec(),
                    )),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )),
    }
}

/// istio-agent's SDS server on a Unix socket, serving `default` (this `cert`) and `ROOTCA`
/// (the PKI's root) as version `s1`.
struct SdsServer {
    cache: Arc<SnapshotCache>,
    socket: std::path::PathBuf,
    _dir: TempDir,
    _task: tokio::task::JoinHandle<()>,
}

fn sds_server(pki: &crate::tls::Pki, cert: &remora_certs::ca::Issued) -> SdsServer {
    use remora_xds::resource::SECRET;
    let dir = TempDir::new("sds");
    let socket = dir.path("SDS");
    let cache = SnapshotCache::new();
    let unix = tokio::net::UnixListener::bind(&socket).unwrap();
    let task = tokio::spawn({
        let cache = cache.clone();
        async move {
            let _ = remora_xds::server::serve_unix(cache, unix).await;
        }
    });
    cache.set_snapshot(
        NODE,
        Snapshot::default().with(
            SECRET,
            "s1",
            vec![
                any(&tls_secret("default", cert)),
                any(&root_secret("ROOTCA", pki.ca.root_pem())),
            ],
        ),
    );
    SdsServer {
        cache,
        socket,
        _dir: dir,
        _task: task,
    }
}

/// A listener whose certificate and trusted CA come from an SDS stream (`sds-grpc` over a Unix
/// socket, as istio-agent serves them): the same from the bootstrap and when the listener
/// itself comes over LDS.
async fn sds_secrets_on_a_tls_listener(source: crate::sources::Source) {
    use crate::tls::{DEAL, GATEWAY, Pki, client_config, tls_get};
    use remora_xds::resource::SECRET;
    let pki = Pki::new();
    let app = upstream("deal-app").await;
    let cert = pki.issue(DEAL, |_| {});
    let sds = sds_server(&pki, &cert);
    let r = source
        .start(&sds_listener_yaml(app.addr, &sds.socket))
        .await;
    sds.cache
        .wait_until(NODE, SECRET, |s| s.acked.as_deref() == Some("s1"))
        .await;
    let gw = pki.issue(GATEWAY, |_| {});
    let cfg = client_config(pki.ca.root_pem(), Some(&gw), &["http/1.1"]);
    let resp = tls_get(r.addr("inbound"), cfg, "/").await.unwrap();
    assert_eq!(resp.status, 200);
}

/// A TLS listener (`inbound` → `app`) whose secrets `default` and `ROOTCA` come from SDS over
/// the Unix socket `socket` (cluster `sds-grpc`).
fn sds_listener_yaml(app: SocketAddr, socket: &std::path::Path) -> String {
    let sds = "{api_config_source: {api_type: GRPC, transport_api_version: V3, grpc_services: [{envoy_grpc: {cluster_name: sds-grpc}}]}, resource_api_version: V3}";
    let listener = http_listener(
        "inbound",
        "",
        "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {prefix: /}\n                route: {cluster: app}\n",
    ) + &format!(
        "      transport_socket:\n        name: envoy.transport_sockets.tls\n        typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext\n          require_client_certificate: true\n          common_tls_context:\n            tls_certificate_sds_secret_configs: [{{name: default, sds_config: {sds}}}]\n            combined_validation_context:\n              default_validation_context:\n                match_subject_alt_names: [{{prefix: \"spiffe://cluster.local/\"}}]\n              validation_context_sds_secret_config: {{name: ROOTCA, sds_config: {sds}}}\n"
    );
    let clusters = cluster("app", &[app], "")
        + &format!(
            "  - name: sds-grpc\n    type: STATIC\n    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        explicit_http_config: {{http2_protocol_options: {{}}}}\n    load_assignment:\n      cluster_name: sds-grpc\n      endpoints:\n      - lb_endpoints:\n        - endpoint: {{address: {{pipe: {{path: {}}}}}}}\n",
            socket.display()
        );
    format!("node: {{id: \"{NODE}\"}}\n") + &bootstrap(&listener, &clusters)
}

crate::across_sources!(sds_secrets_on_a_tls_listener);

/// SDS as istio-agent serves it: secrets `default` and `ROOTCA` over a Unix socket (a `pipe`
/// cluster), named by a listener's TLS context. The listener serves once they arrive; a
/// rotated certificate is picked up under load with no failed request; a secret whose key does
/// not match is NACKed and the previous certificate stays.
#[tokio::test(flavor = "multi_thread")]
async fn sds_over_a_unix_socket_with_rotation_under_load() {
    use crate::tls::{DEAL, GATEWAY, Pki, client_config, tls_connect, tls_get};
    use remora_xds::resource::SECRET;
    let pki = Pki::new();
    let app = upstream("deal-app").await;
    let v1 = pki.issue(DEAL, |_| {});
    let sds = sds_server(&pki, &v1);
    let cache = sds.cache.clone();
    let yaml = sds_listener_yaml(app.addr, &sds.socket);
    let r = Remora::start(&yaml).await;
    let addr = r.addr("inbound");
    cache
        .wait_until(NODE, SECRET, |s| s.acked.as_deref() == Some("s1"))
        .await;
    let root = pki.ca.root_pem().to_string();
    let gw = pki.issue(GATEWAY, |_| {});
    let cfg = client_config(&root, Some(&gw), &["http/1.1"]);
    let served = |s: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>| {
        let der = s.get_ref().1.peer_certificates().unwrap()[0].clone();
        remora_certs::info::CertDetails::parse(&der).unwrap().serial
    };
    let serial = |i: &remora_certs::ca::Issued| {
        remora_certs::info::CertDetails::parse(
            &remora_certs::pem::certificates(i.cert_chain_pem.as_bytes()).unwrap()[0],
        )
        .unwrap()
        .serial
    };
    assert_eq!(
        served(&tls_connect(addr, cfg.clone()).await.unwrap()),
        serial(&v1)
    );
    assert_eq!(tls_get(addr, cfg.clone(), "/").await.unwrap().status, 200);

    // Rotation under load: new mTLS connections keep coming while the certificate changes.
    // Counted, not timed: the rotation starts after 20 requests and the load stops 20 after it.
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU32::new(0));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (stop, done, cfg) = (stop.clone(), done.clone(), cfg.clone());
        workers.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, 0u32);
            while !stop.load(Ordering::Relaxed) {
                match tls_get(addr, cfg.clone(), "/").await {
                    Ok(r) if r.status == 200 => ok += 1,
                    _ => failed += 1,
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            (ok, failed)
        }));
    }
    let at_least = |n: u32| {
        let done = done.clone();
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while done.load(Ordering::Relaxed) < n {
                assert!(
                    std::time::Instant::now() < deadline,
                    "load stalled before {n} requests"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    at_least(20).await;
    let v2 = pki.issue(DEAL, |_| {});
    cache.set_snapshot(
        NODE,
        Snapshot::default().with(
            SECRET,
            "s2",
            vec![
                any(&tls_secret("default", &v2)),
                any(&root_secret("ROOTCA", pki.ca.root_pem())),
            ],
        ),
    );
    cache
        .wait_until(NODE, SECRET, |s| s.acked.as_deref() == Some("s2"))
        .await;
    at_least(done.load(Ordering::Relaxed) + 20).await;
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut failed) = (0, 0);
    for w in workers {
        let (o, f) = w.await.unwrap();
        ok += o;
        failed += f;
    }
    assert_eq!(failed, 0, "{ok} ok");
    assert!(ok >= 40, "{ok}");
    // A fresh client (no resumed session, which would show the first certificate again).
    let fresh = || client_config(&root, Some(&gw), &["http/1.1"]);
    assert_eq!(
        served(&tls_connect(addr, fresh()).await.unwrap()),
        serial(&v2)
    );

    // A secret whose key is not its certificate's: NACK, v2 stays.
    let v3 = pki.issue(DEAL, |_| {});
    let mut broken = v3.clone();
    broken.key_pem = v1.key_pem.clone();
    cache.set_snapshot(
        NODE,
        Snapshot::default().with(
            SECRET,
            "s3",
            vec![
                any(&tls_secret("default", &broken)),
                any(&root_secret("ROOTCA", pki.ca.root_pem())),
            ],
        ),
    );
    cache.wait_until(NODE, SECRET, |s| s.nacks == 1).await;
    let (_, dump) = r
        .admin_get("/config_dump?resource=dynamic_active_secrets")
        .await
        .unwrap();
    assert!(dump.contains("\"name\": \"default\""), "{dump}");
    assert!(dump.contains("\"name\": \"ROOTCA\""), "{dump}");
    assert!(
        !dump.contains("PRIVATE KEY") && !dump.contains(&base64_of(&v2.key_pem)),
        "a private key leaked"
    );
    let nack = cache.applied(NODE, SECRET).nacked.unwrap().1;
    assert_eq!(
        nack,
        "Secret 'default'.tls_certificate: the private key does not match the certificate (sds:default)"
    );
    // A fresh client (no resumed session, which would show the first certificate again).
    let fresh = || client_config(&root, Some(&gw), &["http/1.1"]);
    assert_eq!(
        served(&tls_connect(addr, fresh()).await.unwrap()),
        serial(&v2)
    );
}

/// File-based xDS, Envoy's dynamic-config-fs example for real: LDS and CDS from files, and an
/// edit of the CDS file (moved into place, as the example does) moves traffic without a restart.
#[tokio::test(flavor = "multi_thread")]
async fn file_based_xds_example_runs() {
    let a = upstream("service1").await;
    let b = upstream("service2").await;
    let dir = TempDir::new("fs-xds");
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("tests/data/envoy-configs/examples");
    let port = closed_port().port();
    let lds = std::fs::read_to_string(data.join("dynamic-config-fs_configs_lds.yaml"))
        .unwrap()
        .replace("address: 0.0.0.0", "address: 127.0.0.1")
        .replace("port_value: 10000", &format!("port_value: {port}"));
    let cds_for = |addr: SocketAddr| {
        std::fs::read_to_string(data.join("dynamic-config-fs_configs_cds.yaml"))
            .unwrap()
            .replace("address: service1", &format!("address: {}", addr.ip()))
            .replace("port_value: 8080", &format!("port_value: {}", addr.port()))
    };
    std::fs::write(dir.path("lds.yaml"), lds).unwrap();
    std::fs::write(dir.path("cds.yaml"), cds_for(a.addr)).unwrap();
    let yaml = std::fs::read_to_string(data.join("dynamic-config-fs_envoy.yaml"))
        .unwrap()
        .replace("/var/lib/envoy/", &format!("{}/", dir.0.display()))
        .replace("address: 0.0.0.0", "address: 127.0.0.1")
        .replace("port_value: 19000", "port_value: 0");
    let r = Remora::start(&yaml).await;
    let l = SocketAddr::from(([127, 0, 0, 1], port));
    r.wait_stat("listener_manager.total_listeners_active", 1)
        .await;
    assert_eq!(
        get(l, "x", "/").await.header("x-upstream"),
        Some("service1")
    );
    // Edit the cluster: write aside, then move into place.
    std::fs::write(dir.path("cds.yaml.tmp"), cds_for(b.addr)).unwrap();
    std::fs::rename(dir.path("cds.yaml.tmp"), dir.path("cds.yaml")).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while get(l, "x", "/").await.header("x-upstream") != Some("service2") {
        assert!(
            std::time::Instant::now() < deadline,
            "the CDS file change was not applied"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(r.stat("cluster_manager.cds.update_success").await, 2);
    // A cluster remora cannot translate next to the good one: rejected by path, the rest stays.
    let broken = cds_for(b.addr)
        + "- \"@type\": type.googleapis.com/envoy.config.cluster.v3.Cluster\n  name: x\n  lb_policy: CLUSTER_PROVIDED\n";
    std::fs::write(dir.path("cds.yaml.tmp"), broken).unwrap();
    std::fs::rename(dir.path("cds.yaml.tmp"), dir.path("cds.yaml")).unwrap();
    r.wait_stat("cluster_manager.cds.update_rejected", 1).await;
    assert_eq!(
        get(l, "x", "/").await.header("x-upstream"),
        Some("service2")
    );
}

/// A control plane that sends garbage: bytes that are no Cluster, or a resource of another type
/// in a CDS response. Each is NACKed with what was wrong; traffic carries on.
#[tokio::test(flavor = "multi_thread")]
async fn garbage_from_the_control_plane_is_nacked() {
    let a = upstream("a").await;
    let (cache, xds, _task) = xds_server().await;
    let r = serving_dyn(&cache, xds, a.addr).await;
    let l = r.addr("in");
    let mut garbage =
        Snapshot::default().with(ENDPOINT, "e1", vec![any(&assignment("dyn", &[a.addr]))]);
    garbage.types.insert(
        CLUSTER.to_string(),
        remora_xds::server::Resources {
            version: "2".into(),
            items: [
                (
                    "junk".to_string(),
                    envoy_types::pb::google::protobuf::Any {
                        type_url: CLUSTER.into(),
                        value: vec![0xff, 0xff, 0xff, 0x01],
                    },
                ),
                ("dyn".to_string(), any(&eds_cluster("dyn"))),
                ("wrong".to_string(), any(&assignment("x", &[a.addr]))),
            ]
            .into(),
        },
    );
    cache.set_snapshot(NODE, garbage);
    cache.wait_until(NODE, CLUSTER, |s| s.nacks == 1).await;
    let nack = cache.applied(NODE, CLUSTER).nacked.unwrap().1;
    assert!(nack.contains("not a valid Cluster"), "{nack}");
    assert!(
        nack.contains("expected type.googleapis.com/envoy.config.cluster.v3.Cluster, got type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"),
        "{nack}"
    );
    assert_eq!(get(l, "x", "/a").await.header("x-upstream"), Some("a"));
    assert_eq!(r.stat("control_plane.connected_state").await, 1);
}

/// The node identity the control plane sees comes from the bootstrap, with Envoy's
/// `--service-node` / `--service-cluster` overrides.
#[tokio::test(flavor = "multi_thread")]
async fn node_identity_and_command_line_overrides() {
    let (cache, xds, _task) = xds_server().await;
    let overridden = "sidecar~10.0.0.9~other.ns~ns.svc.cluster.local";
    cache.set_snapshot(overridden, Snapshot::default().with(CLUSTER, "1", vec![]));
    let _r = Remora::start_with(
        &bootstrap_with_ads(xds, "GRPC"),
        &[
            "--service-node",
            overridden,
            "--service-cluster",
            "other.ns",
        ],
    )
    .await;
    cache
        .wait_until(overridden, CLUSTER, |s| s.acked.as_deref() == Some("1"))
        .await;
    assert_eq!(cache.streams(overridden), 1);
    assert_eq!(cache.streams(NODE), 0);
}

/// The bootstraps istio-agent writes (istio/istio's goldens, unchanged but for paths and
/// ports): they load, connect to the control plane over the `XDS` Unix socket with delta ADS,
/// take listeners, routes and clusters from it and serve; the Prometheus listener (15090)
/// serves `/stats/prometheus` through its compressor filters.
#[tokio::test(flavor = "multi_thread")]
async fn istio_bootstrap_goldens_connect_over_a_unix_socket() {
    use remora_xds::resource::{LISTENER, ROUTE};
    for golden in ["default_golden.json", "authsds_golden.json"] {
        let text = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../tests/data/istio-bootstrap")
                .join(golden),
        )
        .unwrap();
        let mut b: serde_json::Value = serde_json::from_str(&text).unwrap();
        let node = b["node"]["id"].as_str().unwrap().to_string();
        assert_eq!(node, "sidecar~1.2.3.4~foo~bar");
        let dir = TempDir::new("istio");
        let xds_socket = dir.path("XDS");
        let sds_socket = dir.path("test.sock");
        // Paths and ports rewritten: the sockets in this test's directory, ephemeral ports.
        let admin_port = closed_port().port();
        b["admin"]["address"]["socket_address"]["port_value"] = admin_port.into();
        for l in b["static_resources"]["listeners"].as_array_mut().unwrap() {
            l["address"]["socket_address"]["address"] = "127.0.0.1".into();
            l["address"]["socket_address"]["port_value"] = 0.into();
        }
        for c in b["static_resources"]["clusters"].as_array_mut().unwrap() {
            let name = c["name"].as_str().unwrap().to_string();
            let ep =
                &mut c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"];
            match name.as_str() {
                "xds-grpc" => ep["pipe"]["path"] = xds_socket.to_str().unwrap().into(),
                "sds-grpc" => ep["pipe"]["path"] = sds_socket.to_str().unwrap().into(),
                "prometheus_stats" => ep["socket_address"]["port_value"] = admin_port.into(),
                _ => {}
            }
        }
        let cache = SnapshotCache::new();
        let unix = tokio::net::UnixListener::bind(&xds_socket).unwrap();
        let server = tokio::spawn(remora_xds::server::serve_unix(cache.clone(), unix));
        let app = upstream("deal").await;
        let port = closed_port().port();
        cache.set_snapshot(
            &node,
            Snapshot::default()
                .with(
                    CLUSTER,
                    "c1",
                    vec![any(&static_cluster("outbound|8082||deal", &[app.addr]))],
                )
                .with(
                    LISTENER,
                    "l1",
                    vec![any(&lds_listener(
                        "virtualOutbound",
                        port,
                        "8082",
                        "outbound_0.0.0.0_8082",
                    ))],
                )
                .with(
                    ROUTE,
                    "r1",
                    vec![any(&route_all_to("8082", "outbound|8082||deal"))],
                ),
        );
        let r = Remora::start(&serde_json::to_string_pretty(&b).unwrap()).await;
        for t in [CLUSTER, LISTENER, ROUTE] {
            cache
                .wait_until(&node, t, |s| s.acked.is_some() && s.nacked.is_none())
                .await;
        }
        r.wait_stat("listener_manager.total_listeners_active", 3)
            .await;
        // The golden's stats matcher keeps listener_manager.* and cluster_manager.* (not
        // control_plane.*).
        let stats = r.stats().await;
        assert_eq!(stats["listener_manager.lds.update_success"], 1);
        assert_eq!(stats["cluster_manager.cds.update_success"], 1);
        assert!(!stats.contains_key("control_plane.connected_state"));
        let resp = get(SocketAddr::from(([127, 0, 0, 1], port)), "deal", "/x").await;
        assert_eq!(resp.status, 200, "{golden}");
        assert_eq!(resp.header("x-upstream"), Some("deal"));

        // Prometheus' scrape through the 15090 listener, compressed as the golden asks.
        let prom = r.addr("0.0.0.0_15090");
        let out = std::process::Command::new("curl")
            .args([
                "-s",
                "-D",
                "-",
                "-o",
                "/dev/stderr",
                "--compressed",
                "-H",
                "accept-encoding: gzip",
            ])
            .arg(format!("http://{prom}/stats/prometheus"))
            .output()
            .expect("curl is installed (.ci/run installs it)");
        let head = String::from_utf8_lossy(&out.stdout).to_lowercase();
        let body = String::from_utf8_lossy(&out.stderr);
        assert!(head.starts_with("http/1.1 200"), "{golden}: {head}");
        assert!(head.contains("content-encoding: gzip"), "{golden}: {head}");
        assert!(
            body.contains("envoy_cluster_manager_cds_update_success"),
            "{golden}: {body}"
        );
        // The golden's stats matcher keeps cluster_manager.*, drops http.* of the app listener.
        assert!(
            !body
                .lines()
                .any(|l| l.starts_with("envoy_http_downstream_rq_total")),
            "{body}"
        );
        drop(r);
        server.abort();
    }
}

/// A STRICT_DNS cluster from CDS, its resolver (`dns_resolution_config`) a DNS server of the
/// test answering with a 1s TTL: it routes, and with `respect_dns_ttl` its name is asked again
/// at the TTL although `dns_refresh_rate` is an hour.
#[tokio::test(flavor = "multi_thread")]
#[allow(deprecated)] // the Cluster's DNS fields, as Istio still sets them
async fn cds_strict_dns_cluster_refreshes_at_the_ttl() {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::{
        ClusterDiscoveryType, DiscoveryType,
    };
    let app = upstream("dyn").await;
    let (dns, asked) =
        dns_server(|name, _| (name == "svc.remora.test").then_some(([127, 0, 0, 1], 1))).await;
    let (cache, xds, _task) = xds_server().await;
    let mut c = static_cluster("dyn", &[app.addr]);
    let lb = &mut c.load_assignment.as_mut().unwrap().endpoints[0].lb_endpoints[0];
    if let Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(e)) = &mut lb.host_identifier
        && let Some(core::address::Address::SocketAddress(sa)) =
            &mut e.address.as_mut().unwrap().address
    {
        sa.address = "svc.remora.test".into();
    }
    c.cluster_discovery_type = Some(ClusterDiscoveryType::Type(DiscoveryType::StrictDns as i32));
    c.respect_dns_ttl = true;
    c.dns_refresh_rate = Some(envoy_types::pb::google::protobuf::Duration {
        seconds: 3600,
        nanos: 0,
    });
    c.dns_resolution_config = Some(core::DnsResolutionConfig {
        resolvers: vec![address(dns).unwrap()],
        dns_resolver_options: Some(core::DnsResolverOptions {
            use_tcp_for_dns_lookups: false,
            no_default_search_domain: true,
        }),
    });
    cache.set_snapshot(NODE, Snapshot::default().with(CLUSTER, "1", vec![any(&c)]));
    let r = Remora::start(&bootstrap_with_ads(xds, "GRPC")).await;
    cache
        .wait_until(NODE, CLUSTER, |s| s.acked.as_deref() == Some("1"))
        .await;
    r.wait_stat("cluster.dyn.membership_total", 1).await;
    let resp = get(r.addr("in"), "x", "/a").await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-upstream"), Some("dyn"));
    r.wait_stat("cluster.dyn.update_success", 3).await;
    assert!(asked.lock().unwrap().iter().all(|n| n == "svc.remora.test"));
}

/// Istio's `all_golden.json` (every optional ProxyConfig setting) runs: its STRICT_DNS
/// clusters (`respect_dns_ttl`) resolve through remora's resolver — pointed, by an added
/// `dns_resolution_config`, at a DNS server of the test, as this sandbox's nameserver answers
/// nothing — `metrics-service` to 127.0.0.1 and `accesslog-service` not at all (NXDOMAIN);
/// remora serves, gets ready and answers on admin.
#[tokio::test(flavor = "multi_thread")]
async fn istio_all_golden_serves() {
    use remora_xds::resource::{LISTENER, ROUTE};
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/data/istio-bootstrap/all_golden.json"),
    )
    .unwrap();
    let mut b: serde_json::Value = serde_json::from_str(&text).unwrap();
    let node = b["node"]["id"].as_str().unwrap().to_string();
    let (dns, asked) = dns_server(|name, _| match name {
        "metrics-service" => Some(([127, 0, 0, 1], 1)),
        _ => None,
    })
    .await;
    let dir = TempDir::new("istio-all");
    let xds_socket = dir.path("XDS");
    let admin_port = closed_port().port();
    b["admin"]["address"]["socket_address"]["port_value"] = admin_port.into();
    b["admin"]["access_log"][0]["typed_config"]["path"] = "/dev/null".into();
    b["admin"].as_object_mut().unwrap().remove("profile_path");
    for l in b["static_resources"]["listeners"].as_array_mut().unwrap() {
        l["address"]["socket_address"]["address"] = "127.0.0.1".into();
        l["address"]["socket_address"]["port_value"] = 0.into();
    }
    for c in b["static_resources"]["clusters"].as_array_mut().unwrap() {
        let name = c["name"].as_str().unwrap().to_string();
        let ep =
            &mut c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"];
        match name.as_str() {
            "xds-grpc" => ep["pipe"]["path"] = xds_socket.to_str().unwrap().into(),
            "sds-grpc" => ep["pipe"]["path"] = dir.path("sds.sock").to_str().unwrap().into(),
            "prometheus_stats" => ep["socket_address"]["port_value"] = admin_port.into(),
            _ => {}
        }
        if c["type"] == "STRICT_DNS" {
            assert_eq!(c["respect_dns_ttl"], true, "{name}");
            c["dns_resolution_config"] = serde_json::json!({
                "resolvers": [{"socket_address": {"address": "127.0.0.1", "port_value": dns.port()}}]
            });
        }
    }
    let cache = SnapshotCache::new();
    let unix = tokio::net::UnixListener::bind(&xds_socket).unwrap();
    let server = tokio::spawn(remora_xds::server::serve_unix(cache.clone(), unix));
    let app = upstream("deal").await;
    let port = closed_port().port();
    cache.set_snapshot(
        &node,
        Snapshot::default()
            .with(
                CLUSTER,
                "c1",
                vec![any(&static_cluster("outbound|8082||deal", &[app.addr]))],
            )
            .with(
                LISTENER,
                "l1",
                vec![any(&lds_listener(
                    "virtualOutbound",
                    port,
                    "8082",
                    "outbound_0.0.0.0_8082",
                ))],
            )
            .with(
                ROUTE,
                "r1",
                vec![any(&route_all_to("8082", "outbound|8082||deal"))],
            ),
    );
    let r = Remora::start(&serde_json::to_string_pretty(&b).unwrap()).await;
    for t in [CLUSTER, LISTENER, ROUTE] {
        cache
            .wait_until(&node, t, |s| s.acked.is_some() && s.nacked.is_none())
            .await;
    }
    let (status, body) = r.admin_get("/ready").await.unwrap();
    assert_eq!((status, body.trim()), (200, "LIVE"));
    let resp = get(SocketAddr::from(([127, 0, 0, 1], port)), "deal", "/x").await;
    assert_eq!(resp.status, 200);
    let (_, clusters) = r.admin_get("/clusters").await.unwrap();
    assert!(
        clusters.contains("envoy_metrics_service::127.0.0.1:15000::"),
        "{clusters}"
    );
    assert!(
        !clusters.lines().any(|l| l
            .strip_prefix("envoy_accesslog_service::")
            .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))),
        "no hosts: {clusters}"
    );
    assert!(
        clusters.contains("zipkin::127.0.0.1:6000::"),
        "localhost from /etc/hosts: {clusters}"
    );
    let asked = asked.lock().unwrap().clone();
    assert!(asked.contains(&"metrics-service".to_string()), "{asked:?}");
    assert!(
        asked.contains(&"accesslog-service".to_string()),
        "{asked:?}"
    );
    drop(r);
    server.abort();
}

/// An HTTP connection manager as istiod builds it for a sidecar's outbound listener, from
/// `filters` (name, Any) plus the router.
fn istio_hcm_listener(
    name: &str,
    port: u16,
    route: &str,
    filters: Vec<(&str, envoy_types::pb::google::protobuf::Any)>,
) -> envoy_types::pb::envoy::config::listener::v3::Listener {
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
    let mut l = lds_listener(name, port, route, name);
    let manager = hcm::HttpConnectionManager {
        stat_prefix: name.into(),
        route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::Rds(
            hcm::Rds {
                route_config_name: route.into(),
                config_source: Some(ads_source()),
            },
        )),
        http_filters: filters
            .into_iter()
            .map(|(n, a)| hcm::HttpFilter {
                name: n.into(),
                config_type: Some(hcm::http_filter::ConfigType::TypedConfig(a)),
                ..Default::default()
            })
            .chain(std::iter::once(hcm::HttpFilter {
                name: "envoy.filters.http.router".into(),
                config_type: Some(hcm::http_filter::ConfigType::TypedConfig(any(
                    &envoy_types::pb::envoy::extensions::filters::http::router::v3::Router::default(
                    ),
                ))),
                ..Default::default()
            }))
            .collect(),
        ..Default::default()
    };
    l.filter_chains[0].filters[0].config_type = Some(
        envoy_types::pb::envoy::config::listener::v3::filter::ConfigType::TypedConfig(any(
            &manager,
        )),
    );
    l
}

/// istiod's wrapper: `udpa.type.v1.TypedStruct` around the proto3 JSON of the real config.
fn typed_struct(inner: &str, value: serde_json::Value) -> envoy_types::pb::google::protobuf::Any {
    use envoy_types::pb::google::protobuf::{ListValue, Struct, Value, value::Kind};
    fn to_value(v: &serde_json::Value) -> Value {
        let kind = match v {
            serde_json::Value::Null => Kind::NullValue(0),
            serde_json::Value::Bool(b) => Kind::BoolValue(*b),
            serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap()),
            serde_json::Value::String(s) => Kind::StringValue(s.clone()),
            serde_json::Value::Array(a) => Kind::ListValue(ListValue {
                values: a.iter().map(to_value).collect(),
            }),
            serde_json::Value::Object(o) => Kind::StructValue(Struct {
                fields: o.iter().map(|(k, v)| (k.clone(), to_value(v))).collect(),
            }),
        };
        Value { kind: Some(kind) }
    }
    let Value {
        kind: Some(Kind::StructValue(s)),
    } = to_value(&value)
    else {
        unreachable!()
    };
    let ts = remora::model::istio_pb::TypedStruct {
        type_url: format!("type.googleapis.com/{inner}"),
        value: Some(s),
    };
    envoy_types::pb::google::protobuf::Any {
        type_url: "type.googleapis.com/udpa.type.v1.TypedStruct".into(),
        value: prost::Message::encode_to_vec(&ts),
    }
}

/// What istiod puts in a sidecar's outbound HTTP filter chain is accepted over binary xDS:
/// the TypedStruct-wrapped peer metadata filter (its headers propagated), grpc_stats (built),
/// istio.alpn, an empty fault filter, the cors filter (policies come from the routes) and
/// istio.stats (Istio's metrics, scraped); what would change traffic and is not built
/// (set_filter_state, a TypedStruct with a wrong field) is NACKed by path while the listener
/// keeps serving.
#[tokio::test(flavor = "multi_thread")]
async fn istiod_outbound_http_filters_accepted_or_nacked_by_path() {
    use remora_xds::resource::{LISTENER, ROUTE};
    let app = upstream("reviews").await;
    let (cache, xds, _task) = xds_server().await;
    let port = closed_port().port();
    let peer_metadata = typed_struct(
        "io.istio.http.peer_metadata.Config",
        serde_json::json!({
            "upstream_discovery": [{"istio_headers": {}}, {"workload_discovery": {}}],
            "upstream_propagation": [{"istio_headers": {}}]
        }),
    );
    let grpc_stats = any(
        &envoy_types::pb::envoy::extensions::filters::http::grpc_stats::v3::FilterConfig {
            emit_filter_state: true,
            ..Default::default()
        },
    );
    let fault =
        any(&envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault::default());
    let cors = any(&envoy_types::pb::envoy::extensions::filters::http::cors::v3::Cors::default());
    let stats = envoy_types::pb::google::protobuf::Any {
        type_url: "type.googleapis.com/stats.PluginConfig".into(),
        value: prost::Message::encode_to_vec(&remora::model::istio_pb::PluginConfig {
            disable_host_header_fallback: false,
            ..Default::default()
        }),
    };
    // istiod's fixed ALPN overrides (implemented: see tls::istio_alpn_filter_selects_the_peers_http_chain).
    let alpn = any(&remora::model::istio_pb::AlpnFilterConfig {
        alpn_override: [
            (0, ["istio-http/1.0", "istio", "http/1.0"]),
            (1, ["istio-http/1.1", "istio", "http/1.1"]),
            (2, ["istio-h2", "istio", "h2"]),
        ]
        .into_iter()
        .map(|(p, l)| remora::model::istio_pb::AlpnOverride {
            upstream_protocol: p,
            alpn_override: l.iter().map(|s| s.to_string()).collect(),
        })
        .collect(),
    });
    let filters = vec![
        ("istio.metadata_exchange", peer_metadata.clone()),
        ("envoy.filters.http.grpc_stats", grpc_stats.clone()),
        ("istio.alpn", alpn),
        ("envoy.filters.http.fault", fault.clone()),
        ("envoy.filters.http.cors", cors.clone()),
        ("istio.stats", stats.clone()),
    ];
    let snap = |v: &str, l: envoy_types::pb::envoy::config::listener::v3::Listener| {
        Snapshot::default()
            .with(
                CLUSTER,
                "c1",
                vec![any(&static_cluster("outbound|9080||reviews", &[app.addr]))],
            )
            .with(LISTENER, v, vec![any(&l)])
            .with(
                ROUTE,
                "r1",
                vec![any(&route_all_to("9080", "outbound|9080||reviews"))],
            )
    };
    cache.set_snapshot(
        NODE,
        snap(
            "l1",
            istio_hcm_listener("0.0.0.0_9080", port, "9080", filters.clone()),
        ),
    );
    let yaml = bootstrap_with_ads(xds, "DELTA_GRPC").replace(
        "  cds_config: {ads: {}, resource_api_version: V3}\n",
        "  cds_config: {ads: {}, resource_api_version: V3}\n  lds_config: {ads: {}, resource_api_version: V3}\n",
    );
    let r = Remora::start(&yaml).await;
    cache
        .wait_until(NODE, LISTENER, |s| s.acked.as_deref() == Some("l1"))
        .await;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    r.wait_stat("listener_manager.total_listeners_active", 2)
        .await;
    // The peer-metadata filter: this workload's identity goes to the upstream.
    let echoed = get(addr, "reviews", "/").await;
    assert_eq!(echoed.header("x-upstream"), Some("reviews"));
    let h = &echoed.json()["headers"];
    assert_eq!(h["x-envoy-peer-metadata-id"], NODE);
    assert!(
        h["x-envoy-peer-metadata"]
            .as_str()
            .is_some_and(|v| !v.is_empty()),
        "{h}"
    );
    let stats = r.stats().await;
    assert!(!stats.contains_key("server.noop_extension.peer_metadata"));
    assert_eq!(stats["server.noop_extension.peer_metadata_discovery"], 1);
    // The fault and CORS filters run (istiod's fault filter is empty: it injects nothing).
    assert!(!stats.contains_key("server.noop_extension.fault"));
    assert!(!stats.contains_key("server.noop_extension.cors"));
    assert!(!stats.contains_key("server.noop_extension.grpc_stats"));
    assert!(!stats.contains_key("server.noop_extension.istio_stats"));
    // istio.stats delivered by xDS records Istio's metrics (the listener is outbound: the
    // client side reports; no peer answered the exchange, no Istio metadata on the cluster:
    // the Host header names the service).
    let prom = r.admin_get("/stats/prometheus").await.unwrap().1;
    let line = prom
        .lines()
        .find(|l| l.starts_with("istio_requests_total{"))
        .unwrap_or_else(|| panic!("{prom}"));
    assert!(
        line.starts_with("istio_requests_total{reporter=\"source\","),
        "{line}"
    );
    assert!(line.contains("destination_service=\"reviews\""), "{line}");
    assert!(line.contains("destination_workload=\"unknown\""), "{line}");
    assert!(line.contains("response_code=\"200\""), "{line}");
    assert!(line.ends_with("} 1"), "{line}");
    assert!(prom.contains("# TYPE istio_build gauge"), "{prom}");
    let noop = r
        .config_dump_entry("remora.admin.v1.NoopExtensionsConfigDump")
        .await;
    let listed: Vec<&str> = noop["extensions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type_url"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed,
        [
            // Its peer discovery only (the header exchange runs).
            "type.googleapis.com/io.istio.http.peer_metadata.Config",
        ]
    );
    assert!(
        noop["extensions"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("telemetry")
    );

    // Not built, changes traffic: NACKed by path, the listener as it was keeps serving.
    let set_filter_state = envoy_types::pb::google::protobuf::Any {
        type_url: "type.googleapis.com/envoy.extensions.filters.http.set_filter_state.v3.Config"
            .into(),
        value: vec![],
    };
    // Push a version of the listener with these filters; the NACK's text.
    let refused =
        |version: &'static str,
         filters: Vec<(&'static str, envoy_types::pb::google::protobuf::Any)>| {
            let cache = cache.clone();
            let l = istio_hcm_listener("0.0.0.0_9080", port, "9080", filters);
            let snapshot = snap(version, l);
            async move {
                cache.set_snapshot(NODE, snapshot);
                cache
                    .wait_until(NODE, LISTENER, |s| {
                        s.nacked.as_ref().is_some_and(|(v, _)| v == version)
                    })
                    .await;
                cache.applied(NODE, LISTENER).nacked.unwrap().1
            }
        };
    let mut with_sfs = filters.clone();
    with_sfs.insert(2, ("connect_authority", set_filter_state));
    let why = refused("l2", with_sfs).await;
    assert!(
        why.contains("filter_chains[0].filters[0].typed_config.http_filters[2].typed_config.@type: HTTP filter envoy.extensions.filters.http.set_filter_state.v3.Config is not supported"),
        "{why}"
    );
    let mut with_bad = filters.clone();
    with_bad[0].1 = typed_struct(
        "io.istio.http.peer_metadata.Config",
        serde_json::json!({"upstream_discovery": [{"istio_headerz": {}}]}),
    );
    let why = refused("l3", with_bad).await;
    assert!(
        why.contains("Listener '0.0.0.0_9080': filter_chains[0].filters[0].typed_config.http_filters[0].typed_config.value.upstream_discovery[0].istio_headerz"),
        "{why}"
    );
    // istio.stats with an expression outside remora's subset: NACKed by path.
    let mut with_bad_stats = filters.clone();
    with_bad_stats[5].1 = typed_struct(
        "stats.PluginConfig",
        serde_json::json!({"metrics": [{"name": "requests_total",
            "dimensions": {"response_code": "filter_state['wasm.istio_responseClass']"}}]}),
    );
    let why = refused("l4", with_bad_stats).await;
    assert!(
        why.contains("http_filters[5].typed_config.metrics[0].dimensions[\"response_code\"]"),
        "{why}"
    );
    // The refusals left the listener as it was.
    assert_eq!(get(addr, "reviews", "/").await.status, 200);
    assert_eq!(r.stat("listener_manager.total_listeners_active").await, 2);
}

/// A gRPC-style HTTP/2 stream (request and response bodies open, messages echoed as they
/// come) lives through a route update and a listener modification: Envoy would drain the
/// listener and end the stream (envoy#8564); remora keeps it on its connection's filter chain.
#[tokio::test(flavor = "multi_thread")]
async fn grpc_stream_survives_route_and_listener_updates() {
    use bytes::Bytes;
    use envoy_types::pb::envoy::extensions::upstreams::http::v3 as up;
    use http_body_util::{BodyExt, StreamBody};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use remora_xds::resource::{LISTENER, ROUTE};
    // An HTTP/2 upstream that echoes each request data frame as soon as it arrives.
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    let echo_task = tokio::spawn(async move {
        loop {
            let Ok((s, _)) = echo.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let body = req.into_body().map_frame(|f| f);
                        Ok::<_, std::convert::Infallible>(
                            http::Response::builder()
                                .header("content-type", "application/grpc")
                                .body(body)
                                .unwrap(),
                        )
                    },
                );
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    let h2_cluster = |name: &str| {
        let mut c = static_cluster(name, &[echo_addr]);
        c.typed_extension_protocol_options.insert(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".into(),
            any(&up::HttpProtocolOptions {
                upstream_protocol_options: Some(
                    up::http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                        up::http_protocol_options::ExplicitHttpConfig {
                            protocol_config: Some(
                                up::http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                                    Default::default(),
                                ),
                            ),
                        },
                    ),
                ),
                ..Default::default()
            }),
        );
        c
    };
    let (cache, xds, _task) = xds_server().await;
    let port = closed_port().port();
    let snap = |lv: &str, prefix: &str, rv: &str, to: &str| {
        Snapshot::default()
            .with(
                CLUSTER,
                "c1",
                vec![any(&h2_cluster("echo_a")), any(&h2_cluster("echo_b"))],
            )
            .with(
                LISTENER,
                lv,
                vec![any(&lds_listener("dyn", port, "r", prefix))],
            )
            .with(ROUTE, rv, vec![any(&route_all_to("r", to))])
    };
    cache.set_snapshot(NODE, snap("l1", "dyn", "r1", "echo_a"));
    let yaml = bootstrap_with_ads(xds, "GRPC").replace(
        "  cds_config: {ads: {}, resource_api_version: V3}\n",
        "  cds_config: {ads: {}, resource_api_version: V3}\n  lds_config: {ads: {}, resource_api_version: V3}\n",
    );
    let r = Remora::start(&yaml).await;
    r.wait_stat("listener_manager.total_listeners_active", 2)
        .await;

    // The client: one HTTP/2 connection, one long request whose body we feed.
    let io = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .unwrap();
    tokio::spawn(conn);
    let (tx, rx) =
        tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, std::convert::Infallible>>(4);
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://127.0.0.1:{port}/echo.Echo/Stream"))
        .header("content-type", "application/grpc")
        .body(StreamBody::new(tokio_stream_from(rx)))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut next = async || -> Bytes {
        loop {
            let f = tokio::time::timeout(Duration::from_secs(5), body.frame())
                .await
                .expect("a frame within 5 s")
                .expect("the stream is open")
                .unwrap();
            if let Ok(d) = f.into_data() {
                return d;
            }
        }
    };
    tx.send(Ok(http_body::Frame::data(Bytes::from_static(b"one"))))
        .await
        .unwrap();
    assert_eq!(next().await, "one");

    // The route moves to the other cluster, then the listener itself is modified.
    cache.set_snapshot(NODE, snap("l1", "dyn", "r2", "echo_b"));
    cache
        .wait_until(NODE, ROUTE, |s| s.acked.as_deref() == Some("r2"))
        .await;
    tx.send(Ok(http_body::Frame::data(Bytes::from_static(b"two"))))
        .await
        .unwrap();
    assert_eq!(next().await, "two");
    cache.set_snapshot(NODE, snap("l2", "dyn_v2", "r2", "echo_b"));
    cache
        .wait_until(NODE, LISTENER, |s| s.acked.as_deref() == Some("l2"))
        .await;
    r.wait_stat("listener_manager.listener_modified", 1).await;
    // The new version shares route configuration `r` at once (no RDS push is due: it did not
    // change), so it does not sit warming behind its predecessor.
    r.wait_stat("listener_manager.total_listeners_warming", 0)
        .await;
    tx.send(Ok(http_body::Frame::data(Bytes::from_static(b"three"))))
        .await
        .unwrap();
    assert_eq!(
        next().await,
        "three",
        "the stream outlived the listener update"
    );
    drop(tx);
    assert!(
        tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .unwrap()
            .is_none_or(|f| f.is_ok()),
        "the stream ends cleanly"
    );
    // New streams take the new route on the new listener.
    let stats = r.stats().await;
    assert_eq!(stats["cluster.echo_a.upstream_rq_total"], 1);
    let resp = request(
        SocketAddr::from(([127, 0, 0, 1], port)),
        true,
        h2_request(SocketAddr::from(([127, 0, 0, 1], port)), "x", "/again"),
    )
    .await;
    assert_eq!(resp.status, 200);
    r.wait_stat("cluster.echo_b.upstream_rq_total", 1).await;
    r.wait_stat("http.dyn_v2.downstream_rq_total", 1).await;
    echo_task.abort();
}

/// An mpsc receiver as a stream (no tokio-stream dependency).
fn tokio_stream_from<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> std::pin::Pin<Box<dyn futures_util::Stream<Item = T> + Send>> {
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|v| (v, rx))
    }))
}

/// A listener modified by LDS: connections on a filter chain the new version still has (the
/// same configuration) are left alone however long they live; those on a chain the new
/// version dropped drain and are closed at the `--drain-time-s` deadline.
#[tokio::test(flavor = "multi_thread")]
async fn modified_listener_drains_only_removed_filter_chains() {
    use remora_xds::resource::{LISTENER, ROUTE};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = upstream("a").await;
    let (cache, xds, _task) = xds_server().await;
    let port = closed_port().port();
    let snap = |v: &str, l: envoy_types::pb::envoy::config::listener::v3::Listener| {
        Snapshot::default()
            .with(CLUSTER, "c1", vec![any(&static_cluster("a_c", &[a.addr]))])
            .with(LISTENER, v, vec![any(&l)])
            .with(ROUTE, "r1", vec![any(&route_all_to("r1", "a_c"))])
    };
    cache.set_snapshot(NODE, snap("l1", lds_listener("dyn", port, "r1", "dyn")));
    let yaml = bootstrap_with_ads(xds, "GRPC").replace(
        "  cds_config: {ads: {}, resource_api_version: V3}\n",
        "  cds_config: {ads: {}, resource_api_version: V3}\n  lds_config: {ads: {}, resource_api_version: V3}\n",
    );
    let r = Remora::start_with(&yaml, &["--drain-time-s", "1"]).await;
    r.wait_stat("listener_manager.total_listeners_active", 2)
        .await;
    let l = SocketAddr::from(([127, 0, 0, 1], port));
    let ws = || async move {
        let mut ws = tokio::net::TcpStream::connect(l).await.unwrap();
        ws.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").await.unwrap();
        let mut buf = vec![0u8; 1024];
        let n = ws.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 101"));
        ws
    };
    let echo = |mut ws: tokio::net::TcpStream, msg: &'static [u8]| async move {
        ws.write_all(msg).await.ok()?;
        let mut buf = vec![0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(3), ws.read(&mut buf))
            .await
            .ok()?
            .ok()?;
        (n > 0 && &buf[..n] == [b"echo:", msg].concat().as_slice()).then_some(ws)
    };
    let ws1 = ws().await;

    // v2 changes only the listener (its chain is identical): nothing drains.
    let mut v2 = lds_listener("dyn", port, "r1", "dyn");
    v2.per_connection_buffer_limit_bytes =
        Some(envoy_types::pb::google::protobuf::UInt32Value { value: 65536 });
    cache.set_snapshot(NODE, snap("l2", v2));
    cache
        .wait_until(NODE, LISTENER, |s| s.acked.as_deref() == Some("l2"))
        .await;
    r.wait_stat("listener_manager.listener_modified", 1).await;
    assert_eq!(
        r.stat("listener_manager.total_filter_chains_draining")
            .await,
        0
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let ws1 = echo(ws1, b"still here")
        .await
        .expect("a kept chain's connection is not drained");

    // v3 changes the chain itself: its connections drain and close at the 1 s deadline.
    cache.set_snapshot(NODE, snap("l3", lds_listener("dyn", port, "r1", "dyn3")));
    cache
        .wait_until(NODE, LISTENER, |s| s.acked.as_deref() == Some("l3"))
        .await;
    r.wait_stat("listener_manager.listener_modified", 2).await;
    assert_eq!(
        r.stat("listener_manager.total_filter_chains_draining")
            .await,
        1
    );
    let ws1 = echo(ws1, b"draining")
        .await
        .expect("open until the deadline");
    let started = std::time::Instant::now();
    let mut ws1 = ws1;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), ws1.read(&mut buf))
        .await
        .expect("closed at the drain deadline")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    r.wait_stat("listener_manager.total_filter_chains_draining", 0)
        .await;
    // New connections are served by the new chain.
    assert_eq!(get(l, "x", "/").await.status, 200);
    r.wait_stat("http.dyn3.downstream_rq_total", 1).await;

    // v4 names a route configuration not sent yet: it warms while v3 serves, and the dump
    // shows both states, as Envoy's does.
    cache.set_snapshot(NODE, snap("l4", lds_listener("dyn", port, "r9", "dyn4")));
    cache
        .wait_until(NODE, LISTENER, |s| s.acked.as_deref() == Some("l4"))
        .await;
    r.wait_stat("listener_manager.total_listeners_warming", 1)
        .await;
    let listener_dump = async || {
        r.config_dump_entry("envoy.admin.v3.ListenersConfigDump")
            .await["dynamic_listeners"][0]
            .clone()
    };
    let dl = listener_dump().await;
    assert_eq!(dl["name"], "dyn");
    assert_eq!(dl["active_state"]["version_info"], "l3", "{dl}");
    assert_eq!(dl["warming_state"]["version_info"], "l4", "{dl}");
    assert_eq!(get(l, "x", "/").await.status, 200, "v3 serves meanwhile");
    let mut with_r9 = snap("l4", lds_listener("dyn", port, "r9", "dyn4"));
    with_r9 = with_r9.with(
        ROUTE,
        "r2",
        vec![
            any(&route_all_to("r1", "a_c")),
            any(&route_all_to("r9", "a_c")),
        ],
    );
    cache.set_snapshot(NODE, with_r9);
    r.wait_stat("listener_manager.total_listeners_warming", 0)
        .await;
    let dl = listener_dump().await;
    assert_eq!(dl["active_state"]["version_info"], "l4", "{dl}");
    assert!(dl.get("warming_state").is_none(), "{dl}");
}

/// A CDS cluster that originates mTLS with SDS secrets warms until they arrive (Envoy's
/// cluster warming), instead of failing handshakes: meanwhile the route's cluster is not in
/// service (503 NC); once the secrets come over ADS the cluster serves through the mTLS hop.
#[tokio::test(flavor = "multi_thread")]
async fn sds_cluster_warms_on_its_secrets() {
    use crate::tls::{DEAL, GATEWAY, Pki, downstream_tls};
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
    use remora_xds::resource::SECRET;
    let pki = Pki::new();
    let app = upstream("deal-app").await;
    // The mTLS server side: a static listener of the same remora with file certificates.
    let server_certs = pki.write("deal", DEAL);
    let (cache, xds, _task) = xds_server().await;
    let sds = |name: &str| tls::SdsSecretConfig {
        name: name.into(),
        sds_config: Some(ads_source()),
    };
    let secure = |target: SocketAddr| {
        let mut c = static_cluster("secure", &[target]);
        let ctx = tls::UpstreamTlsContext {
            common_tls_context: Some(tls::CommonTlsContext {
                tls_certificate_sds_secret_configs: vec![sds("client")],
                validation_context_type: Some(
                    tls::common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(
                        sds("root"),
                    ),
                ),
                ..Default::default()
            }),
            ..Default::default()
        };
        c.transport_socket = Some(core::TransportSocket {
            name: "envoy.transport_sockets.tls".into(),
            config_type: Some(core::transport_socket::ConfigType::TypedConfig(any(&ctx))),
        });
        c
    };
    let tls_in = http_listener(
        "tls_in",
        "",
        "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {prefix: /}\n                route: {cluster: app}\n",
    ) + &downstream_tls(&server_certs, true, Some(GATEWAY));
    // The bootstrap: listener `in` (routes to `secure`), `tls_in`, the xDS cluster and `app`.
    let in_routes = "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {prefix: /}\n                route: {cluster: secure}\n";
    let listener_in = http_listener("in", "", in_routes).replace(
        "            name: in_routes\n",
        "            name: in_routes\n            validate_clusters: false\n",
    );
    let yaml = format!(
        "node: {{id: \"{NODE}\"}}\ndynamic_resources:\n  ads_config:\n    api_type: GRPC\n    transport_api_version: V3\n    grpc_services:\n    - envoy_grpc: {{cluster_name: xds-grpc}}\n  cds_config: {{ads: {{}}, resource_api_version: V3}}\n{}",
        bootstrap(
            &(listener_in + &tls_in),
            &(cluster(
                "xds-grpc",
                &[xds],
                "    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        explicit_http_config: {http2_protocol_options: {}}\n",
            ) + &cluster("app", &[app.addr], ""))
        )
    );
    // The static listener's port is only known once remora runs: the cluster comes after
    // start (an empty CDS first, so that initialization does not wait for it).
    cache.set_snapshot(NODE, Snapshot::default().with(CLUSTER, "c0", vec![]));
    let r = Remora::start(&yaml).await;
    let target = r.addr("tls_in");
    cache.set_snapshot(
        NODE,
        Snapshot::default().with(CLUSTER, "c1", vec![any(&secure(target))]),
    );
    cache
        .wait_until(NODE, CLUSTER, |s| s.acked.as_deref() == Some("c1"))
        .await;
    r.wait_stat("cluster_manager.warming_clusters", 1).await;
    let resp = get(r.addr("in"), "x", "/").await;
    assert_eq!(
        resp.status, 503,
        "not in service while its secrets are missing"
    );
    assert!(
        r.stats()
            .await
            .get("cluster.secure.ssl.connection_error")
            .is_none_or(|v| *v == 0)
    );

    let gw = pki.issue(GATEWAY, |_| {});
    cache.set_snapshot(
        NODE,
        Snapshot::default()
            .with(CLUSTER, "c1", vec![any(&secure(target))])
            .with(
                SECRET,
                "s1",
                vec![
                    any(&tls_secret("client", &gw)),
                    any(&root_secret("root", pki.ca.root_pem())),
                ],
            ),
    );
    r.wait_stat("cluster_manager.warming_clusters", 0).await;
    let resp = get(r.addr("in"), "x", "/").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("x-upstream"), Some("deal-app"));
    assert_eq!(r.stat("cluster.secure.ssl.handshake").await, 1);
}

/// A static listener whose routes come from RDS: as in Envoy, remora's initialisation waits for
/// them, so the first request is routed rather than answered 404 from an empty table.
#[tokio::test(flavor = "multi_thread")]
async fn static_listener_waits_for_its_rds_routes() {
    let a = upstream("a").await;
    let (cache, xds, _task) = xds_server().await;
    let clusters = vec![any(&static_cluster("a_c", &[a.addr]))];
    cache.set_snapshot(
        NODE,
        Snapshot::default().with(CLUSTER, "c1", clusters.clone()),
    );
    let late = {
        let cache = cache.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            cache.set_snapshot(
                NODE,
                Snapshot::default().with(CLUSTER, "c1", clusters).with(
                    remora_xds::resource::ROUTE,
                    "r1",
                    vec![any(&route_all_to("in_routes", "a_c"))],
                ),
            );
        })
    };
    let started = std::time::Instant::now();
    let r = Remora::start(&bootstrap_with_static_rds(xds)).await;
    let resp = get(r.addr("in"), "x", "/a").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("x-upstream"), Some("a"));
    assert!(
        started.elapsed() >= Duration::from_millis(450),
        "{:?}",
        started.elapsed()
    );
    late.await.unwrap();
}
