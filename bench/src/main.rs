//! remora-bench: runs remora side by side with `direct` (no proxy), nginx and HAProxy on
//! 127.0.0.1, interleaving the systems round by round, and reports throughput, latency
//! percentiles, proxy CPU per request and memory, with ratios between systems.
#![forbid(unsafe_code)]

mod children;
mod load;
mod mtls;
mod procfs;
mod report;
mod scrape;
mod systems;
mod upstream;
mod xds_scale;

use clap::Parser;
use report::Row;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use systems::{Kind, Setup};

#[derive(Debug, Clone, Parser)]
#[command(
    name = "remora-bench",
    about = "remora side by side with direct, nginx and HAProxy"
)]
struct Args {
    /// Scenarios (comma-separated): http1, http2, large-body, connections, idle-conns, mtls (the
    /// two-sidecar mTLS chain), mtls-handshake (a full mTLS handshake per request to the
    /// inbound sidecar), xds-scale (1 000 and 10 000 clusters over xDS, then route updates at
    /// 10/s under load; remora only), scrape (remora-telemetry with --scrape-hosts × 4 labelled
    /// series, scraped on /stats/prometheus under load; not in all), or all.
    #[arg(long, default_value = "http1")]
    scenario: String,
    /// Systems (comma-separated) among direct, remora, nginx, haproxy. Missing peers are skipped.
    #[arg(long, default_value = "direct,remora,nginx,haproxy")]
    systems: String,
    /// Rounds; systems run interleaved within each round.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds of measured load per system per round.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of unmeasured warm-up before each measurement.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Requests in flight (HTTP/1.1 connections, or HTTP/2 streams).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Open loop at this many requests per second (default: closed loop).
    #[arg(long)]
    rate: Option<f64>,
    /// Worker threads/processes for every proxy (remora --concurrency, nginx worker_processes,
    /// HAProxy nbthread).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Pin the proxy to the first CPUs and the harness (load + upstream) to the others.
    #[arg(long)]
    pin: bool,
    /// Response body size for http1/http2/connections.
    #[arg(long, default_value_t = 64)]
    response_size: usize,
    /// Idle keep-alive connections for idle-conns.
    #[arg(long, default_value_t = 10_000)]
    idle_connections: usize,
    /// The upstream: the harness's own hyper server, or nginx (when installed).
    #[arg(long, default_value = "harness")]
    upstream: String,
    /// The remora binary (default: target/release/remora, built with cargo first).
    #[arg(long)]
    remora: Option<PathBuf>,
    /// Distinct Host headers (label sets) for the `scrape` scenario: 4 labelled series each.
    #[arg(long, default_value_t = 2_500)]
    scrape_hosts: usize,
    /// Pause between two scrapes of the `scrape` scenario, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    scrape_pause_ms: u64,
    /// Write all results as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write an SVG chart of throughput and p99 per system.
    #[arg(long)]
    chart: Option<PathBuf>,
    /// A few seconds in total: 1 round, short runs, 200 idle connections (CI keeps the harness
    /// working with this; no target is checked).
    #[arg(long)]
    smoke: bool,
}

fn main() {
    let mut args = Args::parse();
    if args.smoke {
        args.rounds = 1;
        args.duration = args.duration.min(1.0);
        args.warmup = args.warmup.min(0.3);
        args.idle_connections = args.idle_connections.min(200);
    }
    raise_fd_limit();
    children::stop_on_signals();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let proxy_cpus = if args.pin {
        if cpus < 2 {
            eprintln!("--pin needs at least 2 CPUs; running unpinned");
            None
        } else {
            let proxy_n = args.workers.min(cpus - 1);
            let proxy: Vec<String> = (0..proxy_n).map(|c| c.to_string()).collect();
            let harness: Vec<usize> = (proxy_n..cpus).collect();
            pin_self(&harness);
            Some(proxy.join(","))
        }
    } else {
        None
    };
    let remora_bin = match &args.remora {
        Some(p) => p.clone(),
        None => build_remora(),
    };
    let work_dir = std::env::temp_dir().join(format!("remora-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work_dir).expect("work dir");

    let scenarios: Vec<String> = if args.scenario == "all" {
        [
            "http1",
            "http2",
            "large-body",
            "connections",
            "idle-conns",
            "mtls",
            "mtls-handshake",
            "xds-scale",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    } else {
        args.scenario.split(',').map(str::to_string).collect()
    };
    let mut kinds = Vec::new();
    for s in args.systems.split(',') {
        match Kind::parse(s) {
            Some(k) if systems::installed(k) => kinds.push(k),
            Some(k) => println!("skipped: {} (not installed)", k.name()),
            None => {
                eprintln!("unknown system '{s}'");
                std::process::exit(2);
            }
        }
    }

    println!(
        "remora-bench: {} round(s) × {:.1}s (+{:.1}s warm-up), concurrency {}, {}, {} worker(s), {}, remora = {}",
        args.rounds,
        args.duration,
        args.warmup,
        args.concurrency,
        args.rate
            .map(|r| format!("open loop at {r} req/s"))
            .unwrap_or_else(|| "closed loop".into()),
        args.workers,
        match &proxy_cpus {
            Some(c) => format!("proxy pinned to CPU {c}"),
            None => "unpinned".into(),
        },
        remora_bin.display()
    );

    let demo_rss = remora_demo_idle_rss(&remora_bin, &work_dir, &proxy_cpus);
    if let Some(rss) = demo_rss {
        println!(
            "remora idle RSS with the demo bootstrap: {:.1} MiB",
            rss as f64 / 1_048_576.0
        );
    }

    let mut rows = Vec::new();
    let mut xds_results = None;
    let mut scrape_results = Vec::new();
    // Runs that could not be measured: the harness exits non-zero so CI's smoke run can fail.
    let mut failures = 0usize;
    for sc in &scenarios {
        if sc == "xds-scale" {
            let (upstream, _upstream_process) =
                start_upstream(&args, args.response_size, &work_dir);
            let counts: &[usize] = if args.smoke {
                &[100, 1000]
            } else {
                &[1000, 10_000]
            };
            match xds_scale::run(
                &remora_bin,
                &work_dir.join("xds-scale"),
                &proxy_cpus,
                upstream,
                counts,
                args.duration.max(1.0),
                args.concurrency,
            ) {
                Ok(r) => xds_results = Some(r),
                Err(e) => {
                    failures += 1;
                    println!("  xds-scale    failed: {e}");
                }
            }
            continue;
        }
        if sc == "scrape" {
            let (upstream, _upstream_process) =
                start_upstream(&args, args.response_size, &work_dir);
            for round in 0..args.rounds {
                let setup = Setup {
                    upstream,
                    workers: args.workers,
                    h2: false,
                    cpus: proxy_cpus.clone(),
                    remora_bin: remora_bin.clone(),
                    work_dir: work_dir.join(format!("scrape-{round}")),
                    access_log: false,
                };
                match scrape::run(
                    &setup,
                    args.scrape_hosts,
                    Duration::from_secs_f64(args.duration),
                    args.concurrency,
                    Duration::from_millis(args.scrape_pause_ms),
                ) {
                    Ok(r) => {
                        println!(
                            "  scrape       round {round} {} series: {} scrapes of {} bytes, median {:.1} ms, max {:.1} ms; p99 {:.3} ms without, {:.3} ms with scraping ({:.0} / {:.0} req/s)",
                            r.series,
                            r.scrapes,
                            r.scrape_bytes,
                            r.scrape_ms_median,
                            r.scrape_ms_max,
                            r.p99_ms_without,
                            r.p99_ms_with,
                            r.rps_without,
                            r.rps_with
                        );
                        scrape_results.push(r);
                    }
                    Err(e) => {
                        failures += 1;
                        println!("  scrape       round {round} failed: {e}");
                    }
                }
            }
            continue;
        }
        let body_size = if sc == "large-body" {
            1 << 20
        } else {
            args.response_size
        };
        let (upstream, _upstream_process) = start_upstream(&args, body_size, &work_dir);
        let pki = if sc.starts_with("mtls") {
            Some(
                mtls::Pki::create(&work_dir.join(format!("{sc}-pki"))).expect("bench certificates"),
            )
        } else {
            None
        };
        for round in 0..args.rounds {
            for &kind in &kinds {
                if (sc == "idle-conns" || sc == "mtls-handshake") && kind == Kind::Direct {
                    continue;
                }
                let setup = Setup {
                    upstream,
                    workers: args.workers,
                    h2: sc == "http2",
                    cpus: proxy_cpus.clone(),
                    remora_bin: remora_bin.clone(),
                    work_dir: work_dir.join(format!("{sc}-{round}")),
                    access_log: false,
                };
                match run_one(sc, round, kind, &setup, &args, pki.as_ref()) {
                    Ok(row) if sc == "idle-conns" => {
                        println!(
                            "  {sc:<12} round {round} {:<8} {:>6} idle connections  {} bytes each",
                            kind.name(),
                            row.requests,
                            row.bytes_per_idle_connection
                                .map(|b| format!("{b:.0}"))
                                .unwrap_or_else(|| "-".into())
                        );
                        rows.push(row);
                    }
                    Ok(row) => {
                        let per_core = match (sc.as_str(), row.cpu_us_per_request) {
                            ("mtls-handshake", Some(c)) if c > 0.0 => {
                                format!("  = {:.0} handshakes per CPU-second", 1e6 / c)
                            }
                            ("mtls", Some(_)) => "  (per sidecar)".to_string(),
                            _ => String::new(),
                        };
                        println!(
                            "  {sc:<12} round {round} {:<8} {:>9.0} req/s  p99 {:>7.3} ms  cpu {}{per_core}",
                            kind.name(),
                            row.rps,
                            row.p99_ms,
                            row.cpu_us_per_request
                                .map(|c| format!("{c:.2} us/req"))
                                .unwrap_or_else(|| "-".into())
                        );
                        rows.push(row);
                    }
                    Err(e) => {
                        failures += 1;
                        println!("  {sc:<12} round {round} {:<8} failed: {e}", kind.name());
                    }
                }
            }
        }
    }
    let ratios = report::ratios(&rows);
    println!("\n{}", report::table(&rows, &ratios));
    if let Some(path) = &args.json {
        let doc = serde_json::json!({
            "command": std::env::args().collect::<Vec<_>>().join(" "),
            "cpus": cpus,
            "pinned_proxy_cpus": proxy_cpus,
            "remora_demo_idle_rss_bytes": demo_rss,
            "results": rows,
            "ratios": ratios,
            "scrape": scrape_results,
            "xds_scale": xds_results.as_ref().map(|(s, c)| serde_json::json!({"pushes": s, "route_churn": c})),
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc).expect("json"))
            .expect("writing --json");
        println!("wrote {}", path.display());
    }
    if let Some(path) = &args.chart {
        match report::chart(&rows, path) {
            Ok(()) => println!("wrote {}", path.display()),
            Err(e) => eprintln!("chart: {e}"),
        }
    }
    let _ = std::fs::remove_dir_all(&work_dir);
    if failures > 0 {
        eprintln!("remora-bench: {failures} run(s) failed");
        std::process::exit(1);
    }
}

/// The upstream's address, and the process to stop when it is nginx.
fn start_upstream(
    args: &Args,
    body_size: usize,
    work_dir: &std::path::Path,
) -> (SocketAddr, Option<systems::Running>) {
    if args.upstream == "nginx" {
        if let Some(running) = nginx_upstream(body_size, work_dir) {
            return (running.addr, Some(running));
        }
        println!("nginx upstream not available; using the harness upstream");
    }
    (
        upstream::start(body_size).expect("starting the upstream"),
        None,
    )
}

/// nginx serving a fixed body, as the upstream (when installed).
fn nginx_upstream(body_size: usize, work_dir: &std::path::Path) -> Option<systems::Running> {
    let nginx = systems::which("nginx")?;
    let dir = work_dir.join("nginx-upstream");
    std::fs::create_dir_all(&dir).ok()?;
    std::fs::write(dir.join("body"), vec![b'x'; body_size]).ok()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let d = dir.display();
    let conf = format!(
        "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\nevents {{ worker_connections 32768; }}\nhttp {{ access_log off; client_body_temp_path {d}/b; proxy_temp_path {d}/p; fastcgi_temp_path {d}/f; uwsgi_temp_path {d}/u; scgi_temp_path {d}/s; keepalive_requests 1000000; keepalive_timeout 3600s; server {{ listen 127.0.0.1:{port}; location / {{ root {d}; try_files /body =404; }} }} }}\n"
    );
    std::fs::write(dir.join("nginx.conf"), conf).ok()?;
    let child = children::spawn(
        std::process::Command::new(nginx)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-p")
            .arg(&dir),
    )
    .ok()?;
    std::thread::sleep(Duration::from_millis(300));
    Some(systems::Running::process(
        format!("127.0.0.1:{port}").parse().ok()?,
        child,
    ))
}

fn run_one(
    sc: &str,
    round: usize,
    kind: Kind,
    setup: &Setup,
    args: &Args,
    pki: Option<&mtls::Pki>,
) -> Result<Row, String> {
    std::fs::create_dir_all(&setup.work_dir).map_err(|e| e.to_string())?;
    let running = match (sc, pki) {
        ("mtls", Some(pki)) => mtls::start_chain(kind, setup, pki),
        ("mtls-handshake", Some(pki)) => mtls::start_inbound(kind, setup, pki),
        _ => systems::start(kind, setup),
    }
    .map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_millis(200));
    let pid = running.pid();
    let pids = running.pids();
    let rss_idle = pid.map(procfs::rss_bytes);
    let mut row = Row {
        scenario: sc.into(),
        system: kind.name().into(),
        round,
        requests: 0,
        errors: 0,
        rps: 0.0,
        bytes_per_sec: 0.0,
        p50_ms: 0.0,
        p90_ms: 0.0,
        p99_ms: 0.0,
        p999_ms: 0.0,
        max_ms: 0.0,
        cpu_us_per_request: None,
        rss_idle_bytes: rss_idle,
        rss_peak_bytes: None,
        bytes_per_idle_connection: None,
    };
    if sc == "idle-conns" {
        let before = pid.map(procfs::rss_bytes).unwrap_or(0);
        let conns = load::open_idle(running.addr, args.idle_connections, 64);
        std::thread::sleep(Duration::from_millis(500));
        let after = pid.map(procfs::rss_bytes).unwrap_or(0);
        row.requests = conns.len() as u64;
        row.errors = (args.idle_connections - conns.len()) as u64;
        if !conns.is_empty() {
            row.bytes_per_idle_connection =
                Some(after.saturating_sub(before) as f64 / conns.len() as f64);
        }
        row.rss_peak_bytes = pid.map(procfs::peak_rss_bytes);
        drop(conns);
        return Ok(row);
    }
    let spec = load::Spec {
        target: running.addr,
        h2: sc == "http2",
        concurrency: args.concurrency,
        pace: match args.rate {
            Some(r) => load::Pace::Open(r),
            None => load::Pace::Closed,
        },
        duration: Duration::from_secs_f64(args.warmup),
        new_connection_per_request: sc == "connections" || sc == "mtls-handshake",
        tls: match (sc, pki) {
            ("mtls-handshake", Some(pki)) => Some(pki.client_config()),
            _ => None,
        },
    };
    if args.warmup > 0.0 {
        load::run(&spec);
    }
    // CPU of every proxy process; a sidecar chain reports it per sidecar.
    let cpu = || -> Option<f64> {
        (!pids.is_empty())
            .then(|| pids.iter().map(|p| procfs::cpu_seconds(*p)).sum::<f64>() / pids.len() as f64)
    };
    let cpu0 = cpu();
    let measured = load::run(&load::Spec {
        duration: Duration::from_secs_f64(args.duration),
        ..spec
    });
    let cpu1 = cpu();
    row.requests = measured.requests;
    row.errors = measured.errors;
    row.rps = measured.rps();
    row.bytes_per_sec = measured.bytes_per_sec();
    row.p50_ms = measured.percentile_ms(0.50);
    row.p90_ms = measured.percentile_ms(0.90);
    row.p99_ms = measured.percentile_ms(0.99);
    row.p999_ms = measured.percentile_ms(0.999);
    row.max_ms = measured.max_ms();
    if let (Some(a), Some(b)) = (cpu0, cpu1)
        && measured.requests > 0
    {
        row.cpu_us_per_request = Some((b - a) * 1e6 / measured.requests as f64);
    }
    row.rss_peak_bytes = pid.map(procfs::peak_rss_bytes);
    Ok(row)
}

/// remora's idle RSS with the demo bootstrap (stdout access log, a direct response, a cluster).
fn remora_demo_idle_rss(
    bin: &std::path::Path,
    work_dir: &std::path::Path,
    cpus: &Option<String>,
) -> Option<u64> {
    let dir = work_dir.join("demo");
    std::fs::create_dir_all(&dir).ok()?;
    let up = std::net::TcpListener::bind("127.0.0.1:0").ok()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let cfg = dir.join("demo.yaml");
    std::fs::write(
        &cfg,
        remora::demo::demo_bootstrap(port, admin, up.local_addr().ok()?.port()),
    )
    .ok()?;
    let mut cmd = match cpus {
        Some(c) => {
            let mut cmd = std::process::Command::new("taskset");
            cmd.arg("-c").arg(c).arg(bin);
            cmd
        }
        None => std::process::Command::new(bin),
    };
    let child = children::spawn(
        cmd.arg("-c")
            .arg(&cfg)
            .arg("--concurrency")
            .arg("1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    )
    .ok()?;
    std::thread::sleep(Duration::from_millis(1500));
    Some(procfs::rss_bytes(child.id()))
}

/// Build remora in release (a no-op when up to date) and return its path.
fn build_remora() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf();
    let status = std::process::Command::new(cargo)
        .args(["build", "--release", "-p", "remora", "--bin", "remora"])
        .current_dir(&root)
        .status()
        .expect("running cargo build");
    assert!(status.success(), "building remora failed");
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    target.join("release/remora")
}

fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

fn pin_self(cpus: &[usize]) {
    use nix::sched::{CpuSet, sched_setaffinity};
    use nix::unistd::Pid;
    let mut set = CpuSet::new();
    for c in cpus {
        let _ = set.set(*c);
    }
    if let Err(e) = sched_setaffinity(Pid::from_raw(0), &set) {
        eprintln!("pinning the harness failed: {e}");
    }
}
