//! One configuration, three sources: the bootstrap file, ADS state of the world, delta ADS.
//!
//! `start_from(source, yaml)` runs remora on a bootstrap written for static resources either as
//! it is, or with its listeners and clusters moved into a snapshot of remora's own xDS server and
//! delivered over LDS/CDS (the rest of the bootstrap — node, admin, stats, static secrets and the
//! control-plane clusters named `*-grpc` — stays in the file). `across_sources!(case, …)` turns `async fn case(source: Source)` into three
//! tests, so a feature tested from a file is tested through xDS by the same assertions.

use crate::support::{Remora, TempDir};
use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use remora_xds::resource::{CLUSTER, LISTENER, any};
use remora_xds::server::{Snapshot, SnapshotCache};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;

/// Where the case's listeners and clusters come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Bootstrap,
    Sotw,
    Delta,
}

/// remora, and the control plane serving it (when the source is xDS).
pub struct Served {
    pub remora: Remora,
    pub xds: Option<(Arc<SnapshotCache>, tokio::task::JoinHandle<()>)>,
}

impl std::ops::Deref for Served {
    type Target = Remora;
    fn deref(&self) -> &Remora {
        &self.remora
    }
}

impl std::ops::DerefMut for Served {
    fn deref_mut(&mut self) -> &mut Remora {
        &mut self.remora
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some((_, task)) = &self.xds {
            task.abort();
        }
    }
}

const NODE: &str = "sidecar~10.0.0.9~parity-1.autolytiq~autolytiq.svc.cluster.local";

pub async fn start_from(source: Source, yaml: &str, extra_args: &[&str]) -> Served {
    let dir = TempDir::new("run");
    let yaml = yaml.replace("RUN_DIR", dir.0.to_str().unwrap());
    let api = match source {
        Source::Bootstrap => {
            let remora = Remora::try_start_in(dir, &yaml, extra_args)
                .await
                .unwrap_or_else(|e| panic!("remora did not start: {e}"));
            return Served { remora, xds: None };
        }
        Source::Sotw => "GRPC",
        Source::Delta => "DELTA_GRPC",
    };
    let mut proto = decode_bootstrap(&dir, &yaml);
    let statics = proto.static_resources.get_or_insert_default();
    let listeners = std::mem::take(&mut statics.listeners);
    // Control-plane clusters (`xds-grpc`, `sds-grpc`, as Istio names them) stay in the file: an
    // xDS source must name a static cluster.
    let (control, clusters): (Vec<_>, Vec<_>) = std::mem::take(&mut statics.clusters)
        .into_iter()
        .partition(|c| c.name.ends_with("-grpc"));
    statics.clusters = control;
    let node = proto.node.get_or_insert_default();
    if node.id.is_empty() {
        node.id = NODE.into();
    }
    let node_id = node.id.clone();

    let cache = SnapshotCache::new();
    cache.set_snapshot(
        &node_id,
        Snapshot::default()
            .with(LISTENER, "1", listeners.iter().map(any).collect())
            .with(CLUSTER, "1", clusters.iter().map(any).collect()),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let xds_addr = l.local_addr().unwrap();
    let served = cache.clone();
    let task = tokio::spawn(async move {
        let _ = remora_xds::server::serve_tcp(served, l).await;
    });

    let json = xds_bootstrap(&proto, api, xds_addr);
    let remora = Remora::try_start_in(dir, &json, extra_args)
        .await
        .unwrap_or_else(|e| panic!("remora did not start over {api}: {e}"));
    Served {
        remora,
        xds: Some((cache, task)),
    }
}

/// The YAML as remora decodes a file (Envoy's JSON mapping, typed configs resolved).
fn decode_bootstrap(dir: &TempDir, yaml: &str) -> Bootstrap {
    let path = dir.path("static.yaml");
    std::fs::write(&path, yaml).unwrap();
    remora::config::load::load_bootstrap(Some(&path), None, false)
        .unwrap_or_else(|e| panic!("the case's bootstrap does not load: {e}"))
        .bootstrap
}

/// The bootstrap without its listeners and clusters, plus ADS (`api`) to the server at `xds`
/// carrying LDS and CDS, as JSON.
fn xds_bootstrap(proto: &Bootstrap, api: &str, xds: SocketAddr) -> String {
    let pool = remora::config::descriptors::envoy_pool();
    let mut b = remora::admin::config_dump::message_json(&pool, proto, false).unwrap();
    let ads = json!({"ads": {}, "resource_api_version": "V3"});
    b["dynamic_resources"] = json!({
        "ads_config": {
            "api_type": api,
            "transport_api_version": "V3",
            "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}],
        },
        "cds_config": ads,
        "lds_config": ads,
    });
    if !b["static_resources"].is_object() {
        b["static_resources"] = json!({});
    }
    let mut clusters = match b["static_resources"]["clusters"].take() {
        Value::Array(kept) => kept,
        _ => Vec::new(),
    };
    clusters.push(json!({
        "name": "xds-grpc",
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": "xds-grpc",
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                "address": xds.ip().to_string(), "port_value": xds.port()}}}}]}],
        },
    }));
    b["static_resources"]["clusters"] = Value::Array(clusters);
    if b.get("admin").is_none() {
        b["admin"] =
            json!({"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}});
    }
    b.to_string()
}

/// `across_sources!(case_a, case_b)`: for each `async fn case_a(source: Source)`, a module
/// `case_a` with the tests `bootstrap`, `sotw` and `delta`.
#[macro_export]
macro_rules! across_sources {
    ($($case:ident),* $(,)?) => {$(
        mod $case {
            use $crate::sources::Source;
            #[tokio::test(flavor = "multi_thread")]
            async fn bootstrap() {
                super::$case(Source::Bootstrap).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn sotw() {
                super::$case(Source::Sotw).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn delta() {
                super::$case(Source::Delta).await
            }
        }
    )*};
}

impl Source {
    pub async fn start(self, yaml: &str) -> Served {
        start_from(self, yaml, &[]).await
    }

    pub async fn start_with(self, yaml: &str, extra_args: &[&str]) -> Served {
        start_from(self, yaml, extra_args).await
    }
}
