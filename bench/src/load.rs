//! The load generator: closed loop (fixed concurrency: maximum throughput) or open loop (fixed
//! rate; latency measured from each request's intended send time, so a stall shows as latency
//! instead of silently lowering the rate), HTTP/1.1 or HTTP/2, keep-alive or a new connection per
//! request. Latencies go into an HDR histogram (microseconds).

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// As fast as each connection can go.
    Closed,
    /// This many requests per second in total.
    Open(f64),
}

#[derive(Debug, Clone)]
pub struct Spec {
    pub target: SocketAddr,
    pub h2: bool,
    /// Concurrent requests in flight (connections for HTTP/1.1, streams for HTTP/2).
    pub concurrency: usize,
    pub pace: Pace,
    pub duration: Duration,
    /// A new TCP connection for every request (`Connection: close`).
    pub new_connection_per_request: bool,
    /// Speak TLS (HTTP/1.1) with this client configuration (mTLS: it carries a certificate).
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub requests: u64,
    pub errors: u64,
    pub body_bytes: u64,
    pub elapsed: Duration,
    /// Latency in microseconds.
    pub latency: Histogram<u64>,
}

impl Outcome {
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
    pub fn bytes_per_sec(&self) -> f64 {
        self.body_bytes as f64 / self.elapsed.as_secs_f64()
    }
    pub fn percentile_ms(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }
    pub fn max_ms(&self) -> f64 {
        self.latency.max() as f64 / 1000.0
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds")
}

struct Shared {
    start: Instant,
    end: Instant,
    next: AtomicU64,
    interval: Option<Duration>,
}

/// Run a load on a fresh current-thread runtime on this thread.
pub fn run(spec: &Spec) -> Outcome {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("load runtime");
    rt.block_on(run_async(spec.clone()))
}

async fn run_async(spec: Spec) -> Outcome {
    let start = Instant::now();
    let shared = Arc::new(Shared {
        start,
        end: start + spec.duration,
        next: AtomicU64::new(0),
        interval: match spec.pace {
            Pace::Closed => None,
            Pace::Open(rate) => Some(Duration::from_secs_f64(1.0 / rate.max(1.0))),
        },
    });
    let mut tasks = Vec::new();
    if spec.h2 {
        // A few HTTP/2 connections, the streams spread over them.
        let conns = spec.concurrency.div_ceil(32).max(1);
        for c in 0..conns {
            let streams = spec.concurrency / conns + usize::from(c < spec.concurrency % conns);
            let shared = shared.clone();
            let target = spec.target;
            tasks.push(tokio::spawn(async move {
                h2_connection(target, streams, shared).await
            }));
        }
    } else {
        for _ in 0..spec.concurrency {
            let shared = shared.clone();
            let target = spec.target;
            let fresh = spec.new_connection_per_request;
            let tls = spec.tls.clone();
            tasks.push(tokio::spawn(async move {
                h1_worker(target, fresh, tls, shared).await
            }));
        }
    }
    let mut out = Outcome {
        requests: 0,
        errors: 0,
        body_bytes: 0,
        elapsed: Duration::ZERO,
        latency: histogram(),
    };
    for t in tasks {
        if let Ok(part) = t.await {
            out.requests += part.requests;
            out.errors += part.errors;
            out.body_bytes += part.body_bytes;
            out.latency
                .add(&part.latency)
                .expect("same histogram bounds");
        }
    }
    out.elapsed = start
        .elapsed()
        .min(spec.duration + Duration::from_millis(500))
        .max(spec.duration);
    out
}

/// The next request's intended send time (open loop), or `None` when the run is over.
async fn next_slot(shared: &Shared) -> Option<Instant> {
    match shared.interval {
        None => {
            let now = Instant::now();
            (now < shared.end).then_some(now)
        }
        Some(interval) => {
            let i = shared.next.fetch_add(1, Relaxed);
            let at = shared.start + interval * i as u32;
            if at >= shared.end {
                return None;
            }
            // tokio timers have millisecond resolution: sleep only when well ahead.
            if at > Instant::now() + Duration::from_millis(1) {
                tokio::time::sleep_until(at.into()).await;
            }
            Some(at)
        }
    }
}

fn request(h2: bool, target: SocketAddr, close: bool) -> http::Request<Empty<Bytes>> {
    let b = http::Request::builder();
    let b = if h2 {
        b.uri(format!("http://{target}/bench"))
            .version(http::Version::HTTP_2)
    } else {
        b.uri("/bench")
            .header(http::header::HOST, target.to_string())
    };
    let b = if close {
        b.header(http::header::CONNECTION, "close")
    } else {
        b
    };
    b.body(Empty::new()).expect("static request")
}

async fn drain(body: hyper::body::Incoming) -> Result<u64, hyper::Error> {
    let mut body = body;
    let mut n = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(d) = frame?.into_data() {
            n += d.len() as u64;
        }
    }
    Ok(n)
}

async fn h1_connect(
    target: SocketAddr,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Option<http1::SendRequest<Empty<Bytes>>> {
    let stream = TcpStream::connect(target).await.ok()?;
    let _ = stream.set_nodelay(true);
    match tls {
        None => {
            let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.ok()?;
            tokio::spawn(conn);
            Some(sender)
        }
        Some(cfg) => {
            let name = rustls_pki_types::ServerName::try_from("inbound.bench").expect("literal");
            let tls = tokio_rustls::TlsConnector::from(cfg.clone())
                .connect(name, stream)
                .await
                .ok()?;
            let (sender, conn) = http1::handshake(TokioIo::new(tls)).await.ok()?;
            tokio::spawn(conn);
            Some(sender)
        }
    }
}

async fn h1_worker(
    target: SocketAddr,
    fresh: bool,
    tls: Option<Arc<rustls::ClientConfig>>,
    shared: Arc<Shared>,
) -> Outcome {
    let mut out = Outcome {
        requests: 0,
        errors: 0,
        body_bytes: 0,
        elapsed: Duration::ZERO,
        latency: histogram(),
    };
    let mut sender: Option<http1::SendRequest<Empty<Bytes>>> = None;
    while let Some(intended) = next_slot(&shared).await {
        if fresh || sender.as_ref().is_none_or(|s| s.is_closed()) {
            sender = h1_connect(target, tls.as_ref()).await;
        }
        let Some(s) = sender.as_mut() else {
            out.errors += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        if s.ready().await.is_err() {
            sender = None;
            out.errors += 1;
            continue;
        }
        match s.send_request(request(false, target, fresh)).await {
            Ok(resp) => {
                let ok = resp.status().is_success();
                match drain(resp.into_body()).await {
                    Ok(n) if ok => {
                        out.requests += 1;
                        out.body_bytes += n;
                        let _ = out
                            .latency
                            .record(intended.elapsed().as_micros().max(1) as u64);
                    }
                    _ => out.errors += 1,
                }
            }
            Err(_) => {
                out.errors += 1;
                sender = None;
            }
        }
    }
    out
}

async fn h2_connection(target: SocketAddr, streams: usize, shared: Arc<Shared>) -> Outcome {
    let mut out = Outcome {
        requests: 0,
        errors: 0,
        body_bytes: 0,
        elapsed: Duration::ZERO,
        latency: histogram(),
    };
    let Ok(stream) = TcpStream::connect(target).await else {
        out.errors += 1;
        return out;
    };
    let _ = stream.set_nodelay(true);
    let Ok((sender, conn)) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await
    else {
        out.errors += 1;
        return out;
    };
    tokio::spawn(conn);
    let mut tasks = Vec::new();
    for _ in 0..streams {
        let mut sender = sender.clone();
        let shared = shared.clone();
        tasks.push(tokio::spawn(async move {
            let mut part = Outcome {
                requests: 0,
                errors: 0,
                body_bytes: 0,
                elapsed: Duration::ZERO,
                latency: histogram(),
            };
            while let Some(intended) = next_slot(&shared).await {
                if sender.ready().await.is_err() {
                    part.errors += 1;
                    break;
                }
                match sender.send_request(request(true, target, false)).await {
                    Ok(resp) => {
                        let ok = resp.status().is_success();
                        match drain(resp.into_body()).await {
                            Ok(n) if ok => {
                                part.requests += 1;
                                part.body_bytes += n;
                                let _ = part
                                    .latency
                                    .record(intended.elapsed().as_micros().max(1) as u64);
                            }
                            _ => part.errors += 1,
                        }
                    }
                    Err(_) => part.errors += 1,
                }
            }
            part
        }));
    }
    for t in tasks {
        if let Ok(p) = t.await {
            out.requests += p.requests;
            out.errors += p.errors;
            out.body_bytes += p.body_bytes;
            out.latency.add(&p.latency).expect("same bounds");
        }
    }
    out
}

/// Open `n` keep-alive connections, make one request on each (at most `parallel` at a time),
/// and keep them open. Returns the connections that completed their request.
pub fn open_idle(target: SocketAddr, n: usize, parallel: usize) -> Vec<std::net::TcpStream> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let sem = Arc::new(tokio::sync::Semaphore::new(parallel));
        let mut tasks = Vec::with_capacity(n);
        for _ in 0..n {
            let sem = sem.clone();
            tasks.push(tokio::spawn(async move {
                let _permit = sem.acquire().await.ok()?;
                // A proxy at its connection limit never answers: give each connection 10 s.
                tokio::time::timeout(Duration::from_secs(10), idle_one(target))
                    .await
                    .ok()
                    .flatten()
            }));
        }
        let mut out = Vec::with_capacity(n);
        for t in tasks {
            if let Ok(Some(s)) = t.await {
                out.push(s);
            }
        }
        out
    })
}

async fn idle_one(target: SocketAddr) -> Option<std::net::TcpStream> {
    {
        {
            let mut s = TcpStream::connect(target).await.ok()?;
            s.write_all(format!("GET /bench HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
                .await
                .ok()?;
            let mut buf = Vec::with_capacity(1024);
            let mut chunk = [0u8; 4096];
            loop {
                let k = s.read(&mut chunk).await.ok()?;
                if k == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..k]);
                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            l.strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + len {
                        break;
                    }
                }
            }
            s.into_std().ok()
        }
    }
}
