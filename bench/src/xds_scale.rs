//! The `xds-scale` scenario: remora under an xDS server (crate `remora-xds`) in this process.
//! Pushes N EDS clusters with their endpoints and measures the time until remora has ACKed both
//! (CDS, then the EDS subscription it makes, then EDS) and its RSS afterwards; then pushes route
//! updates at 10 per second under closed-loop HTTP/1.1 load and counts failed requests.

use crate::load;
use crate::procfs;
use remora_xds::build::{assignment, eds_cluster, route_all_to};
use remora_xds::resource::{CLUSTER, ENDPOINT, ROUTE, any};
use remora_xds::server::{Snapshot, SnapshotCache};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const NODE: &str = "bench";

#[derive(Debug, Clone, serde::Serialize)]
pub struct ScaleRow {
    pub clusters: usize,
    pub apply_ms: f64,
    pub rss_bytes: u64,
    /// One `/stats/prometheus` scrape: how long, how big.
    pub scrape_ms: f64,
    pub scrape_bytes: usize,
}

/// Time one `GET /stats/prometheus` from the admin listener (read to the end).
fn scrape(admin: SocketAddr) -> Result<(f64, usize), String> {
    use std::io::{Read, Write};
    let started = Instant::now();
    let mut s = std::net::TcpStream::connect(admin).map_err(|e| e.to_string())?;
    s.write_all(b"GET /stats/prometheus HTTP/1.0\r\nHost: admin\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut body = Vec::new();
    s.read_to_end(&mut body).map_err(|e| e.to_string())?;
    Ok((started.elapsed().as_secs_f64() * 1000.0, body.len()))
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ChurnRow {
    pub route_updates: usize,
    pub requests: u64,
    pub failed: u64,
    pub rps: f64,
}

fn snapshot(n: usize, version: &str, upstream: SocketAddr, route_to: &str) -> Snapshot {
    let names: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
    Snapshot::default()
        .with(
            CLUSTER,
            version,
            names.iter().map(|n| any(&eds_cluster(n))).collect(),
        )
        .with(
            ENDPOINT,
            version,
            names
                .iter()
                .map(|n| any(&assignment(n, &[upstream])))
                .collect(),
        )
        .with(ROUTE, version, vec![any(&route_all_to("bench", route_to))])
}

fn bootstrap(port: u16, xds: SocketAddr, admin: u16) -> String {
    format!(
        r#"node: {{id: {NODE}}}
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
# As the bootstrap pilot-agent writes for every Istio sidecar.
deferred_stat_options: {{enable_deferred_creation_stats: true}}
dynamic_resources:
  ads_config:
    api_type: GRPC
    transport_api_version: V3
    grpc_services: [{{envoy_grpc: {{cluster_name: xds}}}}]
  cds_config: {{ads: {{}}, resource_api_version: V3}}
static_resources:
  listeners:
  - name: bench
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          rds: {{route_config_name: bench, config_source: {{ads: {{}}, resource_api_version: V3}}}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
  - name: xds
    type: STATIC
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: xds
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: {}, port_value: {}}}}}}}
"#,
        xds.ip(),
        xds.port()
    )
}

/// Run the scenario: `counts` cluster pushes, then `churn_secs` of route updates under load.
pub fn run(
    remora_bin: &Path,
    work_dir: &Path,
    cpus: &Option<String>,
    upstream: SocketAddr,
    counts: &[usize],
    churn_secs: f64,
    concurrency: usize,
) -> Result<(Vec<ScaleRow>, ChurnRow), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let cache = SnapshotCache::new();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .map_err(|e| e.to_string())?;
    let xds = listener.local_addr().map_err(|e| e.to_string())?;
    rt.spawn(remora_xds::server::serve_tcp(cache.clone(), listener));
    // Before remora connects: an empty set, so it starts at once.
    cache.set_snapshot(NODE, snapshot(0, "0", upstream, "c0"));
    std::fs::create_dir_all(work_dir).map_err(|e| e.to_string())?;
    let port = crate::systems::free_port().map_err(|e| e.to_string())?;
    let admin_port = crate::systems::free_port().map_err(|e| e.to_string())?;
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().expect("literal");
    let cfg = work_dir.join("xds-scale.yaml");
    std::fs::write(&cfg, bootstrap(port, xds, admin_port)).map_err(|e| e.to_string())?;
    let log = work_dir.join("xds-scale.log");
    let child = crate::systems::spawn(
        remora_bin,
        &[
            "-c".into(),
            cfg.display().to_string(),
            "--concurrency".into(),
            "1".into(),
            "-l".into(),
            "warning".into(),
        ],
        cpus,
        &log,
    )
    .map_err(|e| e.to_string())?;
    let running = crate::systems::Running::process(
        format!("127.0.0.1:{port}").parse().expect("literal"),
        child,
    );
    let pid = running.pid().expect("a process");
    // `endpoints`: whether the version has EDS clusters (remora asks for no endpoints while it
    // has none: an empty EDS request would be a wildcard).
    let wait = |version: &str, endpoints: bool| {
        rt.block_on(async {
            let v = version.to_string();
            let done = async {
                cache
                    .wait_until(NODE, CLUSTER, |a| a.acked.as_deref() == Some(v.as_str()))
                    .await;
                if endpoints {
                    cache
                        .wait_until(NODE, ENDPOINT, |a| a.acked.as_deref() == Some(v.as_str()))
                        .await;
                }
            };
            tokio::time::timeout(Duration::from_secs(120), done)
                .await
                .is_ok()
        })
    };
    if !wait("0", false) {
        return Err(format!(
            "remora did not connect: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        ));
    }
    let mut rows = Vec::new();
    for &n in counts {
        let version = format!("n{n}");
        let started = Instant::now();
        cache.set_snapshot(NODE, snapshot(n, &version, upstream, "c0"));
        if !wait(&version, n > 0) {
            return Err(format!("{n} clusters were not applied within 120 s"));
        }
        let apply_ms = started.elapsed().as_secs_f64() * 1000.0;
        std::thread::sleep(Duration::from_millis(500));
        let rss_bytes = procfs::rss_bytes(pid);
        let (scrape_ms, scrape_bytes) = scrape(admin)?;
        let row = ScaleRow {
            clusters: n,
            apply_ms,
            rss_bytes,
            scrape_ms,
            scrape_bytes,
        };
        println!(
            "  xds-scale    {n:>6} clusters with endpoints applied in {apply_ms:>8.1} ms, RSS {:.1} MiB; /stats/prometheus in {scrape_ms:.1} ms ({:.1} MiB)",
            row.rss_bytes as f64 / 1_048_576.0,
            scrape_bytes as f64 / 1_048_576.0
        );
        rows.push(row);
    }
    // Route updates at 10/s under load: the route flips between two clusters.
    let n = counts.last().copied().unwrap_or(0).max(2);
    let last = format!("n{}", counts.last().copied().unwrap_or(0));
    cache.set_snapshot(NODE, snapshot(n, &last, upstream, "c0"));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pusher = {
        let (cache, stop) = (cache.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                i += 1;
                let to = if i.is_multiple_of(2) { "c0" } else { "c1" };
                let mut s = snapshot(0, &last, upstream, to);
                // Only the routes change: keep the clusters and endpoints as they are.
                let current = cache.snapshot(NODE);
                for t in [CLUSTER, ENDPOINT] {
                    if let Some(r) = current.types.get(t) {
                        s.types.insert(t.to_string(), r.clone());
                    }
                }
                if let Some(r) = s.types.get_mut(ROUTE) {
                    r.version = format!("r{i}");
                }
                cache.set_snapshot(NODE, s);
            }
            i
        })
    };
    let measured = load::run(&load::Spec {
        target: running.addr,
        h2: false,
        concurrency,
        pace: load::Pace::Closed,
        duration: Duration::from_secs_f64(churn_secs),
        new_connection_per_request: false,
        tls: None,
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let updates = pusher.join().unwrap_or(0);
    let churn = ChurnRow {
        route_updates: updates,
        requests: measured.requests,
        failed: measured.errors,
        rps: measured.rps(),
    };
    println!(
        "  xds-scale    {updates} route updates at 10/s under load: {} requests, {} failed ({:.0} req/s)",
        churn.requests, churn.failed, churn.rps
    );
    drop(running);
    Ok((rows, churn))
}
