//! The `scrape` scenario (issue 15): remora with Istio's telemetry (the `remora-telemetry`
//! system) holding many labelled series, scraped on `/stats/prometheus` while HTTP/1.1 load
//! runs. Istio's `istio.stats` names `destination_service` after the Host header when the
//! cluster has no Istio metadata, so `hosts` requests with distinct Host headers create `hosts`
//! label sets in each of the four HTTP families (`istio_requests_total` and the three
//! histograms): 2 500 hosts are 10 000 series. Then the same load runs twice, without and with
//! a scraper (one scrape after another, a pause of `pause` between them), and the data path's
//! p99 of both runs is reported with the scrapes' times.

use crate::load;
use crate::systems::{self, Setup};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, serde::Serialize)]
pub struct ScrapeRow {
    pub hosts: usize,
    /// Labelled series behind `/stats/prometheus` (4 per host).
    pub series: usize,
    pub scrapes: usize,
    pub scrape_bytes: usize,
    pub scrape_ms_median: f64,
    pub scrape_ms_max: f64,
    pub rps_without: f64,
    pub p99_ms_without: f64,
    pub rps_with: f64,
    pub p99_ms_with: f64,
}

/// One `GET /stats/prometheus` (read to the end): milliseconds and bytes.
fn scrape(admin: SocketAddr) -> Result<(f64, usize), String> {
    let started = Instant::now();
    let mut s = std::net::TcpStream::connect(admin).map_err(|e| e.to_string())?;
    s.write_all(b"GET /stats/prometheus HTTP/1.0\r\nHost: admin\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut body = Vec::new();
    s.read_to_end(&mut body).map_err(|e| e.to_string())?;
    if !body.starts_with(b"HTTP/1.1 200") && !body.starts_with(b"HTTP/1.0 200") {
        return Err(format!(
            "scrape: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        ));
    }
    Ok((started.elapsed().as_secs_f64() * 1000.0, body.len()))
}

/// `n` keep-alive requests, each with its own Host header (each makes a label set).
fn make_series(target: SocketAddr, n: usize) -> Result<(), String> {
    let mut s = std::net::TcpStream::connect(target).map_err(|e| e.to_string())?;
    let _ = s.set_nodelay(true);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    for i in 0..n {
        write!(
            s,
            "GET / HTTP/1.1\r\nHost: svc-{i}.bench.svc.cluster.local\r\n\r\n"
        )
        .map_err(|e| e.to_string())?;
        // One response: the head, then content-length bytes.
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    buf.drain(..end + 4 + len);
                    break;
                }
            }
            let k = s.read(&mut chunk).map_err(|e| e.to_string())?;
            if k == 0 {
                return Err("remora closed the connection".into());
            }
            buf.extend_from_slice(&chunk[..k]);
        }
    }
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Run the scenario once.
pub fn run(
    setup: &Setup,
    hosts: usize,
    duration: Duration,
    concurrency: usize,
    pause: Duration,
) -> Result<ScrapeRow, String> {
    std::fs::create_dir_all(&setup.work_dir).map_err(|e| e.to_string())?;
    let admin_port = systems::free_port().map_err(|e| e.to_string())?;
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}")
        .parse()
        .map_err(|e| format!("{e}"))?;
    let running = systems::start_with_admin(systems::Kind::RemoraTelemetry, setup, admin_port)
        .map_err(|e| e.to_string())?;
    make_series(running.addr, hosts)?;
    let (ms, bytes) = scrape(admin)?;
    println!("  scrape       {hosts} hosts: first scrape {ms:.1} ms, {bytes} bytes");
    let spec = load::Spec {
        target: running.addr,
        h2: false,
        concurrency,
        pace: load::Pace::Closed,
        duration,
        new_connection_per_request: false,
        tls: None,
    };
    load::run(&load::Spec {
        duration: Duration::from_secs(1),
        ..spec.clone()
    });
    let without = load::run(&spec);
    let stop = AtomicBool::new(false);
    let (with, times) = std::thread::scope(|s| {
        let scraper = s.spawn(|| {
            let mut times = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match scrape(admin) {
                    Ok(t) => times.push(t),
                    Err(e) => return Err(e),
                }
                std::thread::sleep(pause);
            }
            Ok(times)
        });
        let with = load::run(&spec);
        stop.store(true, Ordering::Relaxed);
        (with, scraper.join())
    });
    let times = times.map_err(|_| "scraper panicked".to_string())??;
    let mut ms: Vec<f64> = times.iter().map(|t| t.0).collect();
    let max = ms.iter().cloned().fold(0.0, f64::max);
    Ok(ScrapeRow {
        hosts,
        series: hosts * 4,
        scrapes: times.len(),
        scrape_bytes: times.last().map_or(bytes, |t| t.1),
        scrape_ms_median: median(&mut ms),
        scrape_ms_max: max,
        rps_without: without.rps(),
        p99_ms_without: without.percentile_ms(0.99),
        rps_with: with.rps(),
        p99_ms_with: with.percentile_ms(0.99),
    })
}
