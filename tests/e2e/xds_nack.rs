//! Refused xDS resources, over state of the world and delta: the accepted ones of the same
//! update stay through later updates that carry only changes, every refusal is in one NACK (a
//! line each), in the log and in `/config_dump`'s `error_state`, and nothing is subscribed on a
//! refused resource's behalf (routes, secrets, or all endpoints through an empty name list).

use crate::support::*;
use crate::xds::{NODE, bootstrap_with_ads, lds_listener, xds_server};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::listener::v3::{self as listener, Listener};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
use remora_xds::build::{ads_source, assignment, eds_cluster, route_all_to, static_cluster};
use remora_xds::resource::{CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET, any};
use remora_xds::server::Snapshot;
use std::net::SocketAddr;

/// `lds_listener` terminating TLS with a certificate from SDS secret `secret` (over ADS).
fn tls_listener(name: &str, port: u16, rds: &str, secret: &str) -> Listener {
    let mut l = lds_listener(name, port, rds, name);
    let context = tls::DownstreamTlsContext {
        common_tls_context: Some(tls::CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![tls::SdsSecretConfig {
                name: secret.into(),
                sds_config: Some(ads_source()),
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    l.filter_chains[0].transport_socket = Some(core::TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(core::transport_socket::ConfigType::TypedConfig(any(
            &context,
        ))),
    });
    l
}

/// `tls_listener`, plus two filter chains whose network filter remora does not know: the
/// listener is refused (both chains named) after its first chain asked for its secret.
fn unknown_filter_listener(name: &str, port: u16, secret: &str) -> Listener {
    let mut l = tls_listener(name, port, "r1", secret);
    let mut chain = l.filter_chains[0].clone();
    chain.transport_socket = None;
    chain.filters = vec![listener::Filter {
        name: "envoy.filters.network.nope".into(),
        config_type: Some(listener::filter::ConfigType::TypedConfig(any(
            &envoy_types::pb::google::protobuf::Empty::default(),
        ))),
    }];
    l.filter_chains.push(chain.clone());
    l.filter_chains.push(chain);
    l
}

/// An RDS listener whose listener-level access log cannot be opened: it is refused after its
/// connection manager registered its route table (`<name>_routes`).
fn unopenable_log_listener(name: &str, port: u16) -> Listener {
    use envoy_types::pb::envoy::config::accesslog::v3 as accesslog;
    use envoy_types::pb::envoy::extensions::access_loggers::file::v3::FileAccessLog;
    let mut l = lds_listener(name, port, &format!("{name}_routes"), name);
    l.access_log = vec![accesslog::AccessLog {
        name: "envoy.access_loggers.file".into(),
        config_type: Some(accesslog::access_log::ConfigType::TypedConfig(any(
            &FileAccessLog {
                path: "/nonexistent-remora-dir/access.log".into(),
                ..Default::default()
            },
        ))),
        ..Default::default()
    }];
    l
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

async fn lds_nack(api: &str) {
    let a = upstream("a").await;
    let (cache, xds, _task) = xds_server().await;
    let (pa, pb, py, pz) = (
        closed_port().port(),
        closed_port().port(),
        closed_port().port(),
        closed_port().port(),
    );
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let snap = |version: &str, listeners: Vec<Listener>| {
        Snapshot::default()
            .with(CLUSTER, "c1", vec![any(&static_cluster("a_c", &[a.addr]))])
            .with(LISTENER, version, listeners.iter().map(any).collect())
            .with(
                ROUTE,
                "r1",
                vec![
                    any(&route_all_to("r1", "a_c")),
                    any(&route_all_to("x_routes", "a_c")),
                    any(&route_all_to("z_routes", "a_c")),
                ],
            )
    };
    // `a` is good; `x` cannot bind; `y` does not translate (its second and third chains); `z`
    // fails after its route table was made (its access log cannot be opened).
    cache.set_snapshot(
        NODE,
        snap(
            "l1",
            vec![
                lds_listener("a", pa, "r1", "a"),
                tls_listener("x", taken_port, "x_routes", "x_cert"),
                unknown_filter_listener("y", py, "y_cert"),
                unopenable_log_listener("z", pz),
            ],
        ),
    );
    let yaml = bootstrap_with_ads(xds, api).replace(
        "  cds_config: {ads: {}, resource_api_version: V3}\n",
        "  cds_config: {ads: {}, resource_api_version: V3}\n  lds_config: {ads: {}, resource_api_version: V3}\n",
    );
    let r = Remora::start(&yaml).await;
    cache.wait_until(NODE, LISTENER, |s| s.nacks == 1).await;
    r.wait_stat("listener_manager.total_listeners_active", 2)
        .await;
    assert_eq!(
        get(local(pa), "x", "/").await.header("x-upstream"),
        Some("a")
    );

    // One NACK, a line per error.
    let nack = cache.applied(NODE, LISTENER).nacked.unwrap().1;
    let lines: Vec<&str> = nack.lines().collect();
    assert_eq!(lines.len(), 4, "{nack}");
    assert!(
        lines[0].starts_with(&format!(
            "Listener 'x': listener 'x' (LDS): cannot bind '127.0.0.1:{taken_port}'"
        )),
        "{nack}"
    );
    assert!(
        lines[1].starts_with("Listener 'y'.filter_chains[1].filters[0]"),
        "{nack}"
    );
    assert!(
        lines[2].starts_with("Listener 'y'.filter_chains[2].filters[0]"),
        "{nack}"
    );
    assert!(
        lines[3].starts_with(&format!(
            "Listener 'z': listener 'z' (LDS): cannot open an access log for '127.0.0.1:{pz}'"
        )),
        "{nack}"
    );
    // Logged as Envoy logs it.
    let log = r.stderr();
    assert!(
        log.contains(&format!(
            "gRPC config for {LISTENER} rejected: Listener 'x'"
        )),
        "{log}"
    );
    assert!(
        log.contains("lds: listener 'y' config rejected: Listener 'y'."),
        "{log}"
    );

    // Nothing is asked for on the refused listener's behalf.
    let routes = cache.requests(NODE, ROUTE);
    assert!(routes.iter().any(|q| q.names.contains(&"r1".to_string())));
    assert!(
        routes
            .iter()
            .all(|q| !q.names.iter().any(|n| n == "x_routes" || n == "z_routes")),
        "{routes:?}"
    );
    let secrets = cache.requests(NODE, SECRET);
    assert!(
        secrets
            .iter()
            .all(|q| !q.names.iter().any(|n| n == "x_cert" || n == "y_cert")),
        "{secrets:?}"
    );

    // `/config_dump`: the refused listeners carry Envoy's error_state.
    let dump = r
        .config_dump_entry("envoy.admin.v3.ListenersConfigDump")
        .await;
    let dynamic = dump["dynamic_listeners"].as_array().unwrap();
    let by_name = |n: &str| dynamic.iter().find(|l| l["name"] == n).cloned();
    let good = by_name("a").expect("listener a");
    assert!(good.get("error_state").is_none(), "{good}");
    assert_eq!(good["active_state"]["version_info"], "l1");
    let x = by_name("x").expect("listener x");
    assert!(x.get("active_state").is_none(), "{x}");
    let e = &x["error_state"];
    assert_eq!(e["failed_configuration"]["name"], "x", "{x}");
    assert!(
        e["details"].as_str().unwrap().contains("cannot bind"),
        "{x}"
    );
    assert!(e["last_update_attempt"].is_string(), "{x}");
    assert_eq!(e["version_info"], "l1");
    assert!(by_name("y").is_some());
    // Envoy also lists the update's failures without a name.
    assert_eq!(
        dynamic.iter().filter(|l| l.get("name").is_none()).count(),
        3,
        "{dump}"
    );

    // The next update carries only `b` (delta: `x` and `y` removed); `a` stays.
    cache.set_snapshot(
        NODE,
        snap(
            "l2",
            vec![
                lds_listener("a", pa, "r1", "a"),
                lds_listener("b", pb, "r1", "b"),
            ],
        ),
    );
    cache
        .wait_until(NODE, LISTENER, |s| s.acked.as_deref() == Some("l2"))
        .await;
    r.wait_stat("listener_manager.total_listeners_active", 3)
        .await;
    assert_eq!(
        get(local(pb), "x", "/").await.header("x-upstream"),
        Some("a")
    );
    assert_eq!(
        get(local(pa), "x", "/").await.header("x-upstream"),
        Some("a")
    );
    assert_eq!(r.stat("listener_manager.listener_removed").await, 0);
    let dump = r
        .config_dump_entry("envoy.admin.v3.ListenersConfigDump")
        .await;
    assert!(!dump.to_string().contains("error_state"), "{dump}");
    // `a` keeps the version it was last updated at.
    let a_entry = dump["dynamic_listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "a")
        .cloned()
        .unwrap();
    assert_eq!(a_entry["active_state"]["version_info"], "l1");
    drop(taken);
}

#[tokio::test(flavor = "multi_thread")]
async fn lds_nack_keeps_accepted_listeners_state_of_the_world() {
    lds_nack("GRPC").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn lds_nack_keeps_accepted_listeners_delta() {
    lds_nack("DELTA_GRPC").await;
}

fn cluster_provided(name: &str, to: SocketAddr) -> Cluster {
    let mut c = static_cluster(name, &[to]);
    c.lb_policy =
        envoy_types::pb::envoy::config::cluster::v3::cluster::LbPolicy::ClusterProvided as i32;
    c
}

async fn cds_nack(api: &str) {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let (cache, xds, _task) = xds_server().await;
    let snap = |version: &str, clusters: Vec<Cluster>| {
        Snapshot::default()
            .with(CLUSTER, version, clusters.iter().map(any).collect())
            .with(ENDPOINT, "e1", vec![any(&assignment("dyn", &[a.addr]))])
    };
    // No EDS cluster yet: no endpoint request at all (an empty list would ask for every one).
    cache.set_snapshot(NODE, snap("1", vec![]));
    let r = Remora::start(&bootstrap_with_ads(xds, api)).await;
    let l = r.addr("in");
    cache
        .wait_until(NODE, CLUSTER, |s| s.acked.as_deref() == Some("1"))
        .await;
    assert_eq!(get(l, "x", "/b").await.status, 503);
    assert_eq!(cache.requests(NODE, ENDPOINT), vec![]);

    // Two refused clusters: one NACK, a line each; `dyn_static`, new in the same update, is
    // in service.
    cache.set_snapshot(
        NODE,
        snap(
            "2",
            vec![
                static_cluster("dyn_static", &[b.addr]),
                cluster_provided("bad1", a.addr),
                cluster_provided("bad2", a.addr),
            ],
        ),
    );
    cache.wait_until(NODE, CLUSTER, |s| s.nacks == 1).await;
    let nack = cache.applied(NODE, CLUSTER).nacked.unwrap().1;
    assert_eq!(
        nack,
        "Cluster 'bad1'.lb_policy: CLUSTER_PROVIDED is not supported\nCluster 'bad2'.lb_policy: CLUSTER_PROVIDED is not supported"
    );
    let log = r.stderr();
    assert!(
        log.contains("cds: cluster 'bad2' config rejected: Cluster 'bad2'.lb_policy"),
        "{log}"
    );
    assert_eq!(get(l, "x", "/b").await.header("x-upstream"), Some("b"));

    // The next update adds `dyn` (delta: only `dyn`, the refused ones removed); `dyn_static`
    // stays, and endpoints are asked for by name.
    cache.set_snapshot(
        NODE,
        snap(
            "3",
            vec![static_cluster("dyn_static", &[b.addr]), eds_cluster("dyn")],
        ),
    );
    cache
        .wait_until(NODE, CLUSTER, |s| s.acked.as_deref() == Some("3"))
        .await;
    cache
        .wait_until(NODE, ENDPOINT, |s| s.acked.as_deref() == Some("e1"))
        .await;
    assert_eq!(get(l, "x", "/a").await.header("x-upstream"), Some("a"));
    assert_eq!(get(l, "x", "/b").await.header("x-upstream"), Some("b"));
    assert_eq!(r.stat("cluster_manager.cluster_removed").await, 0);
    let eds = cache.requests(NODE, ENDPOINT);
    assert!(
        eds.iter()
            .all(|q| !q.names.is_empty() || !q.response_nonce.is_empty()),
        "{eds:?}"
    );
    // `dyn_static` keeps the version it was last updated at.
    let dump = r
        .config_dump_entry("envoy.admin.v3.ClustersConfigDump")
        .await;
    let entry = dump["dynamic_active_clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["cluster"]["name"] == "dyn_static")
        .cloned()
        .unwrap();
    assert_eq!(entry["version_info"], "2", "{dump}");
}

#[tokio::test(flavor = "multi_thread")]
async fn cds_nack_keeps_accepted_clusters_state_of_the_world() {
    cds_nack("GRPC").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cds_nack_keeps_accepted_clusters_delta() {
    cds_nack("DELTA_GRPC").await;
}

/// `route_all_to`, answering directly with the contents of `file`.
fn direct_from_file(
    name: &str,
    file: &str,
) -> envoy_types::pb::envoy::config::route::v3::RouteConfiguration {
    use envoy_types::pb::envoy::config::route::v3 as route;
    let mut rc = route_all_to(name, "a_c");
    rc.virtual_hosts[0].routes[0].action = Some(route::route::Action::DirectResponse(
        route::DirectResponseAction {
            status: 200,
            body: Some(core::DataSource {
                specifier: Some(core::data_source::Specifier::Filename(file.into())),
                ..Default::default()
            }),
            ..Default::default()
        },
    ));
    rc
}

/// A file named by an xDS resource is read by the loader between translations: unreadable, the
/// resource is refused with the field's path and the reason; readable, its contents are used.
#[tokio::test(flavor = "multi_thread")]
async fn files_named_over_xds_are_read_or_refused_by_path() {
    let a = upstream("a").await;
    let dir = TempDir::new("files");
    let body = dir.path("body.txt");
    let missing = dir.path("missing.txt");
    std::fs::write(&body, "from a file\n").unwrap();
    let (body, missing) = (body.to_str().unwrap(), missing.to_str().unwrap());
    let (cache, xds, _task) = xds_server().await;
    let port = closed_port().port();
    let snap = |version: &str, file: &str| {
        Snapshot::default()
            .with(CLUSTER, "c1", vec![any(&static_cluster("a_c", &[a.addr]))])
            .with(
                LISTENER,
                "l1",
                vec![any(&lds_listener("a", port, "r1", "a"))],
            )
            .with(ROUTE, version, vec![any(&direct_from_file("r1", file))])
    };
    cache.set_snapshot(NODE, snap("r1", body));
    let yaml = bootstrap_with_ads(xds, "GRPC").replace(
        "  cds_config: {ads: {}, resource_api_version: V3}\n",
        "  cds_config: {ads: {}, resource_api_version: V3}\n  lds_config: {ads: {}, resource_api_version: V3}\n",
    );
    let r = Remora::start(&yaml).await;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let resp = get(addr, "any", "/").await;
    assert_eq!((resp.status, resp.text().as_str()), (200, "from a file\n"));

    cache.set_snapshot(NODE, snap("r2", missing));
    cache.wait_until(NODE, ROUTE, |s| s.nacks == 1).await;
    let nack = cache.applied(NODE, ROUTE).nacked.unwrap().1;
    assert!(
        nack.contains(&format!(
            "RouteConfiguration 'r1'.virtual_hosts[0].routes[0].direct_response.body.filename: cannot read '{missing}': No such file or directory"
        )),
        "{nack}"
    );
    // The refused version changed nothing.
    let resp = get(addr, "any", "/").await;
    assert_eq!((resp.status, resp.text().as_str()), (200, "from a file\n"));
    drop(r);
}

/// A listener with errors in several places: its own field, its listener filter, and in each
/// of two chains' network filters (the connection manager's field and one of its HTTP filters;
/// an unknown filter).
fn many_errors_listener(name: &str, port: u16) -> Listener {
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
    use prost::Message;
    let mut l = lds_listener(name, port, "r1", "");
    l.freebind = Some(envoy_types::pb::google::protobuf::BoolValue { value: true });
    let unknown = || Some(any(&envoy_types::pb::google::protobuf::Empty::default()));
    l.listener_filters = vec![listener::ListenerFilter {
        name: "nope".into(),
        config_type: unknown().map(listener::listener_filter::ConfigType::TypedConfig),
        ..Default::default()
    }];
    let Some(listener::filter::ConfigType::TypedConfig(manager)) =
        l.filter_chains[0].filters[0].config_type.take()
    else {
        unreachable!("lds_listener has a typed connection manager")
    };
    let mut manager = hcm::HttpConnectionManager::decode(&manager.value[..]).unwrap();
    manager.http_filters.insert(
        0,
        hcm::HttpFilter {
            name: "nope".into(),
            config_type: unknown().map(hcm::http_filter::ConfigType::TypedConfig),
            ..Default::default()
        },
    );
    l.filter_chains[0].filters[0].config_type =
        Some(listener::filter::ConfigType::TypedConfig(any(&manager)));
    let mut chain = l.filter_chains[0].clone();
    chain.filters = vec![listener::Filter {
        name: "envoy.filters.network.nope".into(),
        config_type: unknown().map(listener::filter::ConfigType::TypedConfig),
    }];
    l.filter_chains.push(chain);
    l
}

/// One push of a listener with several errors: one NACK names every one, a line each.
#[tokio::test(flavor = "multi_thread")]
async fn lds_nack_names_every_error_of_a_listener() {
    let a = upstream("a").await;
    let (cache, xds, _task) = xds_server().await;
    let port = closed_port().port();
    cache.set_snapshot(
        NODE,
        Snapshot::default()
            .with(CLUSTER, "c1", vec![any(&static_cluster("a_c", &[a.addr]))])
            .with(LISTENER, "l1", vec![any(&many_errors_listener("m", port))])
            .with(ROUTE, "r1", vec![any(&route_all_to("r1", "a_c"))]),
    );
    let yaml = bootstrap_with_ads(xds, "GRPC").replace(
        "  cds_config: {ads: {}, resource_api_version: V3}\n",
        "  cds_config: {ads: {}, resource_api_version: V3}\n  lds_config: {ads: {}, resource_api_version: V3}\n",
    );
    let r = Remora::start(&yaml).await;
    cache.wait_until(NODE, LISTENER, |s| s.nacks == 1).await;
    let nack = cache.applied(NODE, LISTENER).nacked.unwrap().1;
    let lines: Vec<&str> = nack.lines().collect();
    let expected = [
        "Listener 'm'.freebind: is not supported",
        "Listener 'm'.listener_filters[0].typed_config.@type: listener filter google.protobuf.Empty is not supported",
        "Listener 'm'.filter_chains[0].filters[0].typed_config.stat_prefix: must not be empty",
        "Listener 'm'.filter_chains[0].filters[0].typed_config.http_filters[0].typed_config.@type: HTTP filter google.protobuf.Empty is not supported",
        "Listener 'm'.filter_chains[1].filters[0].typed_config.@type: network filter google.protobuf.Empty is not supported",
    ];
    assert_eq!(lines, expected, "{nack}");
    assert_eq!(r.stat("listener_manager.lds.update_rejected").await, 1);
}
