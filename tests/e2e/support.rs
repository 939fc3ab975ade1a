//! Test support: the real `remora` binary started on ephemeral ports, real upstream servers
//! (HTTP/1.1 + HTTP/2 echo with fault paths, gRPC with trailers, WebSocket, TCP echo) on
//! 127.0.0.1, and small HTTP clients.

#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const BIN: &str = env!("CARGO_BIN_EXE_remora");

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "remora-e2e-{}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            tag
        ));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running remora process.
pub struct Remora {
    child: Child,
    pub admin: SocketAddr,
    pub listeners: HashMap<String, SocketAddr>,
    pub dir: TempDir,
}

impl Remora {
    /// Start remora with this bootstrap YAML (admin on an ephemeral port is added if missing).
    pub async fn start(yaml: &str) -> Remora {
        Self::start_with(yaml, &[]).await
    }

    pub async fn start_with(yaml: &str, extra_args: &[&str]) -> Remora {
        match Self::try_start(yaml, extra_args).await {
            Ok(r) => r,
            Err(e) => panic!("remora did not start: {e}"),
        }
    }

    pub async fn try_start(yaml: &str, extra_args: &[&str]) -> Result<Remora, String> {
        Self::try_start_in(TempDir::new("run"), yaml, extra_args).await
    }

    /// `try_start` with the run's scratch directory made by the caller (who may have put
    /// `RUN_DIR` paths into resources served over xDS).
    pub async fn try_start_in(
        dir: TempDir,
        yaml: &str,
        extra_args: &[&str],
    ) -> Result<Remora, String> {
        Self::try_start_bin(BIN, dir, yaml, extra_args).await
    }

    /// `try_start_in` with another binary that takes Envoy's command line (the differential
    /// suite starts real Envoy this way).
    pub async fn try_start_bin(
        bin: &str,
        dir: TempDir,
        yaml: &str,
        extra_args: &[&str],
    ) -> Result<Remora, String> {
        // `RUN_DIR` in a config names this run's scratch directory (access logs and such).
        let mut yaml = yaml.replace("RUN_DIR", dir.0.to_str().unwrap());
        // A JSON bootstrap names its own admin address.
        if !yaml.contains("\nadmin:")
            && !yaml.starts_with("admin:")
            && !yaml.trim_start().starts_with('{')
        {
            yaml.push_str(
                "\nadmin:\n  address: {socket_address: {address: 127.0.0.1, port_value: 0}}\n",
            );
        }
        let cfg = dir.path("bootstrap.yaml");
        std::fs::write(&cfg, &yaml).unwrap();
        let admin_file = dir.path("admin.txt");
        let stdout = std::fs::File::create(dir.path("stdout.log")).unwrap();
        let stderr = std::fs::File::create(dir.path("stderr.log")).unwrap();
        let mut cmd = Command::new(bin);
        cmd.arg("-c")
            .arg(&cfg)
            .arg("--admin-address-path")
            .arg(&admin_file)
            .arg("--file-flush-interval-msec")
            .arg("100");
        if !extra_args.contains(&"--concurrency") {
            cmd.arg("--concurrency").arg("2");
        }
        cmd.args(extra_args);
        cmd.stdout(Stdio::from(stdout)).stderr(Stdio::from(stderr));
        let mut child = cmd.spawn().map_err(|e| e.to_string())?;
        live::add(child.id());
        let deadline = Instant::now() + Duration::from_secs(20);
        let admin: SocketAddr = loop {
            if let Ok(s) = std::fs::read_to_string(&admin_file)
                && let Ok(a) = s.trim().parse()
            {
                break a;
            }
            if let Ok(Some(status)) = child.try_wait() {
                let err = std::fs::read_to_string(dir.path("stderr.log")).unwrap_or_default();
                return Err(format!("exited with {status}: {err}"));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err("timed out waiting for the admin address".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let mut r = Remora {
            child,
            admin,
            listeners: HashMap::new(),
            dir,
        };
        loop {
            if let Ok((200, body)) = r.admin_get("/ready").await
                && body.trim() == "LIVE"
            {
                break;
            }
            if Instant::now() > deadline {
                return Err("timed out waiting for LIVE".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (_, listeners) = r
            .admin_get("/listeners?format=json")
            .await
            .map_err(|e| e.to_string())?;
        let v: serde_json::Value = serde_json::from_str(&listeners).map_err(|e| e.to_string())?;
        for l in v["listener_statuses"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            let name = l["name"].as_str().unwrap().to_string();
            let sa = &l["local_address"]["socket_address"];
            let ip: std::net::IpAddr = sa["address"].as_str().unwrap().parse().unwrap();
            let addr = SocketAddr::new(ip, sa["port_value"].as_u64().unwrap() as u16);
            r.listeners.insert(name, addr);
        }
        Ok(r)
    }

    pub fn addr(&self, listener: &str) -> SocketAddr {
        *self
            .listeners
            .get(listener)
            .unwrap_or_else(|| panic!("no listener {listener}: {:?}", self.listeners))
    }

    pub async fn admin_get(&self, path: &str) -> std::io::Result<(u16, String)> {
        let (s, h, b) = raw_http(
            self.admin,
            &format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"),
        )
        .await?;
        Ok((s, unchunked(&h, b)))
    }

    pub async fn admin_post(&self, path: &str) -> (u16, String) {
        let (s, _, b) = raw_http(self.admin, &format!("POST {path} HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")).await.unwrap();
        (s, b)
    }

    /// All counters and gauges from `/stats`.
    pub async fn stats(&self) -> HashMap<String, i64> {
        let (_, body) = self.admin_get("/stats").await.unwrap();
        body.lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(": ")?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect()
    }

    pub async fn stat(&self, name: &str) -> i64 {
        self.stats()
            .await
            .get(name)
            .copied()
            .unwrap_or_else(|| panic!("no stat {name}"))
    }

    /// Wait until a stat reaches `want` (stats are updated when a stream finishes). The bound is
    /// generous: on two shared cores the suite's heavier tests (10 rounds of 10 000 clusters)
    /// slow the others down, and a wait returns as soon as the value is there.
    pub async fn wait_stat(&self, name: &str, want: i64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let v = self.stats().await.get(name).copied();
            if v == Some(want) {
                return;
            }
            if Instant::now() > deadline {
                panic!("stat {name} is {v:?}, wanted {want}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The `/config_dump` entry of type `type_name` (e.g. `envoy.admin.v3.ListenersConfigDump`).
    pub async fn config_dump_entry(&self, type_name: &str) -> serde_json::Value {
        let (_, body) = self.admin_get("/config_dump").await.unwrap();
        let dump: serde_json::Value = serde_json::from_str(&body).unwrap();
        let want = format!("type.googleapis.com/{type_name}");
        dump["configs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["@type"] == want.as_str())
            .unwrap_or_else(|| panic!("no {type_name} in /config_dump: {dump}"))
            .clone()
    }

    /// The lines of `RUN_DIR/<file>` once there are at least `lines` of them (or after 5 s).
    pub async fn log_lines(&self, file: &str, lines: usize) -> Vec<String> {
        let path = self.dir.path(file);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let l: Vec<String> = text.lines().map(str::to_string).collect();
            if l.len() >= lines || Instant::now() > deadline {
                return l;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path("stderr.log")).unwrap_or_default()
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path("stdout.log")).unwrap_or_default()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process's resident set size (`VmRSS` in /proc/<pid>/status), in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS for remora: {status}"))
    }

    /// Send a signal by name (`TERM`, `USR1`, ...).
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args(["-s", name, &self.pid().to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -s {name} {} failed", self.pid());
    }

    /// Wait for the process to exit by itself.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Remora {
    fn drop(&mut self) {
        self.kill();
        live::remove(self.child.id());
    }
}

/// The remora processes running now. A failing test unwinds and drops its `Remora` (killed);
/// this covers the test binary itself being interrupted (SIGINT, SIGTERM): the processes it
/// started are killed before it exits.
mod live {
    use std::sync::{Mutex, Once};

    static PIDS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

    pub fn add(pid: u32) {
        static HANDLER: Once = Once::new();
        HANDLER.call_once(stop_on_signals);
        PIDS.lock().unwrap_or_else(|e| e.into_inner()).push(pid);
    }

    pub fn remove(pid: u32) {
        PIDS.lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|p| *p != pid);
    }

    fn stop_on_signals() {
        let (ready, installed) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                use tokio::signal::unix::{SignalKind, signal};
                let mut int = signal(SignalKind::interrupt()).unwrap();
                let mut term = signal(SignalKind::terminate()).unwrap();
                let _ = ready.send(());
                let code = tokio::select! {
                    _ = int.recv() => 130,
                    _ = term.recv() => 143,
                };
                let pids = PIDS.lock().unwrap_or_else(|e| e.into_inner()).clone();
                for pid in pids {
                    let _ = std::process::Command::new("kill")
                        .args(["-KILL", &pid.to_string()])
                        .status();
                }
                std::process::exit(code);
            });
        });
        let _ = installed.recv();
    }
}

/// Run `remora` to completion with arguments; returns (exit code, stdout, stderr).
pub fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// === clients ===

/// Send raw bytes, read until the peer closes; returns (status, head, body).
pub async fn raw_http(addr: SocketAddr, request: &str) -> std::io::Result<(u16, String, String)> {
    let bytes = raw_exchange(addr, request.as_bytes(), Duration::from_secs(10)).await?;
    Ok(split_response(&bytes))
}

/// Write bytes and read everything until close (or the timeout).
pub async fn raw_exchange(
    addr: SocketAddr,
    request: &[u8],
    timeout: Duration,
) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(request).await?;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(timeout, s.read_to_end(&mut out)).await;
    Ok(out)
}

pub fn split_response(bytes: &[u8]) -> (u16, String, String) {
    let text = String::from_utf8_lossy(bytes).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .map(|(h, b)| (h.to_string(), b.to_string()))
        .unwrap_or((text.clone(), String::new()));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head, body)
}

/// A body as sent, or its chunks joined when the head says `transfer-encoding: chunked` (Envoy's
/// admin answers so).
pub fn unchunked(head: &str, body: String) -> String {
    if !head
        .to_ascii_lowercase()
        .contains("\r\ntransfer-encoding: chunked")
    {
        return body;
    }
    let mut out = String::new();
    let mut rest = body.as_str();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].strip_prefix("\r\n").unwrap_or(&after[n..]);
    }
    out
}

/// A response as tests look at it.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    pub trailers: Option<http::HeaderMap>,
    pub version: http::Version,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// One HTTP/1.1 or HTTP/2 (prior knowledge) request on a fresh connection.
pub async fn request(addr: SocketAddr, h2: bool, req: http::Request<Full<Bytes>>) -> Resp {
    let stream = TcpStream::connect(addr).await.unwrap();
    let io = TokioIo::new(stream);
    let resp = if h2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(conn);
        sender.send_request(req).await.unwrap()
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        sender.send_request(req).await.unwrap()
    };
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    Resp {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
        version: parts.version,
    }
}

/// A simple GET over HTTP/1.1 with a Host header.
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> Resp {
    get_with(addr, host, path, &[]).await
}

pub async fn get_with(addr: SocketAddr, host: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
    let mut b = http::Request::builder().uri(path).header("host", host);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    request(addr, false, b.body(Full::new(Bytes::new())).unwrap()).await
}

pub fn h2_request(addr: SocketAddr, host: &str, path: &str) -> http::Request<Full<Bytes>> {
    http::Request::builder()
        .uri(format!("http://{host}{path}"))
        .version(http::Version::HTTP_2)
        .body(Full::new(Bytes::new()))
        .unwrap()
        .map(|b| {
            let _ = addr;
            b
        })
}

// === upstreams ===

/// A real HTTP/1.1 + HTTP/2 upstream. Every response carries `x-upstream: <name>`; the body is
/// JSON describing the request, except on the special paths:
/// `/status/N` (that status), `/delay/MS` (answer after MS ms), `/large/N` (N bytes),
/// `/stream/N` (N chunks of 1 KiB, streamed), `/grpc` (gRPC-style answer with trailers),
/// `/ws` (a WebSocket-style upgrade that echoes bytes), `/slowbody/MS` (headers now, body after MS),
/// `/abort/N` (N bytes of an announced 1 MiB, then the stream is reset).
pub struct Upstream {
    pub addr: SocketAddr,
    pub name: String,
    pub requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn upstream(name: &str) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let name_owned = name.to_string();
    let counter = requests.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let name = name_owned.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let name = name.clone();
                        counter.fetch_add(1, Ordering::Relaxed);
                        async move {
                            Ok::<_, std::convert::Infallible>(handle_upstream(&name, req).await)
                        }
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Upstream {
        addr,
        name: name.to_string(),
        requests,
        task,
    }
}

type UpError = Box<dyn std::error::Error + Send + Sync>;
type UpBody = http_body_util::combinators::BoxBody<Bytes, UpError>;

/// A body that cannot fail, boxed as the upstream's body type.
fn boxed<B>(body: B) -> UpBody
where
    B: http_body::Body<Data = Bytes, Error = std::convert::Infallible> + Send + Sync + 'static,
{
    body.map_err(|e| match e {}).boxed()
}

fn full(b: impl Into<Bytes>) -> UpBody {
    boxed(Full::new(b.into()))
}

/// `/abort/N`: a body announced as 1 MiB that fails after N bytes (hyper resets the stream:
/// RST_STREAM on HTTP/2, the connection closed on HTTP/1.1).
fn aborted_body(n: usize) -> UpBody {
    let frames: Vec<Result<http_body::Frame<Bytes>, UpError>> = vec![
        Ok(http_body::Frame::data(Bytes::from(vec![b'z'; n]))),
        Err("aborted by the test upstream".into()),
    ];
    use futures_util::StreamExt;
    let s = futures_util::stream::iter(frames).then(|f| async move {
        // Let the data frame leave before the reset.
        tokio::time::sleep(Duration::from_millis(50)).await;
        f
    });
    BodyExt::boxed(http_body_util::StreamBody::new(s))
}

async fn handle_upstream(
    name: &str,
    mut req: http::Request<hyper::body::Incoming>,
) -> http::Response<UpBody> {
    let path = req.uri().path().to_string();
    let resp = http::Response::builder().header("x-upstream", name);
    if path == "/ws" {
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on_upgrade.await {
                let mut io = TokioIo::new(up);
                let mut buf = [0u8; 1024];
                loop {
                    match io.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let mut reply = b"echo:".to_vec();
                            reply.extend_from_slice(&buf[..n]);
                            if io.write_all(&reply).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            }
        });
        return resp
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(full(Bytes::new()))
            .unwrap();
    }
    if let Some(ms) = path.strip_prefix("/delay/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
    }
    if let Some(code) = path.strip_prefix("/status/") {
        let code: u16 = code.parse().unwrap_or(500);
        return resp
            .status(code)
            .body(full(format!("status {code}")))
            .unwrap();
    }
    if let Some(n) = path.strip_prefix("/large/") {
        let n: usize = n.parse().unwrap_or(0);
        return resp.body(full(vec![b'x'; n])).unwrap();
    }
    if let Some(n) = path.strip_prefix("/stream/") {
        let n: usize = n.parse().unwrap_or(1);
        let chunks = futures_util::stream::iter((0..n).map(|_| {
            Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from(vec![b'y'; 1024])))
        }));
        return resp
            .body(boxed(http_body_util::StreamBody::new(chunks)))
            .unwrap();
    }
    if let Some(n) = path.strip_prefix("/abort/") {
        return resp
            .header("content-length", "1048576")
            .body(aborted_body(n.parse().unwrap_or(0)))
            .unwrap();
    }
    if let Some(ms) = path.strip_prefix("/slowbody/") {
        let ms: u64 = ms.parse().unwrap_or(0);
        let s = futures_util::stream::once(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from_static(
                b"late body",
            )))
        });
        return resp
            .header("content-length", "9")
            .body(boxed(http_body_util::StreamBody::new(s)))
            .unwrap();
    }
    if path.starts_with("/grpc") {
        let body = req
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        trailers.insert("grpc-message", "ok".parse().unwrap());
        let frames = vec![
            Ok::<_, std::convert::Infallible>(http_body::Frame::data(body)),
            Ok(http_body::Frame::trailers(trailers)),
        ];
        return resp
            .header("content-type", "application/grpc")
            .body(boxed(http_body_util::StreamBody::new(
                futures_util::stream::iter(frames),
            )))
            .unwrap();
    }
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let headers: serde_json::Map<String, serde_json::Value> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                serde_json::Value::String(v.to_str().unwrap_or("").to_string()),
            )
        })
        .collect();
    let info = serde_json::json!({
        "upstream": name,
        "method": parts.method.as_str(),
        "path": parts.uri.to_string(),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_len": body.len(),
        "body": String::from_utf8_lossy(&body),
    });
    resp.header("content-type", "application/json")
        .body(full(info.to_string()))
        .unwrap()
}

/// A raw TCP server on 127.0.0.1: `handle` runs on its own task for each accepted
/// connection; aborting the returned task stops accepting.
pub async fn serve_tcp<F, Fut>(handle: F) -> (SocketAddr, tokio::task::JoinHandle<()>)
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            if let Ok((s, _)) = listener.accept().await {
                tokio::spawn(handle(s));
            }
        }
    });
    (addr, task)
}

/// A TCP echo server.
pub async fn tcp_echo() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    serve_tcp(|mut s| async move {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
    })
    .await
}

pub fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a
}

/// A raw HTTP/1.1 server that answers the first request on each connection with a keep-alive
/// `200 ok`, then closes the connection: after `linger` (the peer sees the FIN while idle), or,
/// with `None`, when the next request arrives, without answering it (the keep-alive race).
pub async fn one_answer_per_connection(linger: Option<Duration>) -> SocketAddr {
    let (addr, _) = serve_tcp(move |mut s| async move {
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf).await;
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .await;
        match linger {
            Some(d) => tokio::time::sleep(d).await,
            None => {
                let _ = s.read(&mut buf).await;
            }
        }
    })
    .await;
    addr
}

/// A server that accepts, reads the request, and closes without answering.
pub async fn closing_upstream() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    serve_tcp(|mut s| async move {
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf).await;
    })
    .await
}

// === configuration snippets ===

/// A static cluster YAML entry.
pub fn cluster(name: &str, addrs: &[SocketAddr], extra: &str) -> String {
    let eps: Vec<String> = addrs
        .iter()
        .map(|a| format!("        - endpoint: {{address: {{socket_address: {{address: {}, port_value: {}}}}}}}", a.ip(), a.port()))
        .collect();
    format!(
        "  - name: {name}\n    type: STATIC\n    connect_timeout: 1s\n{extra}    load_assignment:\n      cluster_name: {name}\n      endpoints:\n      - lb_endpoints:\n{}\n",
        eps.join("\n")
    )
}

/// An HTTP listener with the given route_config body (indented YAML) and HCM extras.
pub fn http_listener(name: &str, hcm_extra: &str, virtual_hosts: &str) -> String {
    format!(
        r#"  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
{hcm_extra}          route_config:
            name: {name}_routes
            virtual_hosts:
{virtual_hosts}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#
    )
}

/// A bootstrap with listeners and clusters sections.
pub fn bootstrap(listeners: &str, clusters: &str) -> String {
    format!("static_resources:\n  listeners:\n{listeners}  clusters:\n{clusters}")
}

// === background load ===

/// What a background load saw: answers that were 200 with their whole body, and the others.
#[derive(Debug, Default)]
pub struct LoadResult {
    pub ok: usize,
    pub failed: usize,
    pub errors: Vec<String>,
}

/// A bounded background load: `conns` keep-alive HTTP/1.1 connections, each sending `GET path`
/// (Host `host`) one request after another, a short pause between, until stopped or
/// `LOAD_MAX_PER_CONN` requests. A request fails unless it answers 200 with its whole body; a
/// connection that fails is replaced.
pub struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    ok: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<LoadResult>>,
}

/// At a request per ~5 ms, at least 150 s of load per connection: longer than any test's
/// disturbance (30 control-plane flaps took long enough under CI's load to exhaust 5 000).
pub const LOAD_MAX_PER_CONN: usize = 30_000;

impl Load {
    pub fn start(addr: SocketAddr, host: &str, path: &str, conns: usize) -> Load {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let tasks = (0..conns)
            .map(|_| {
                let (stop, ok) = (stop.clone(), ok.clone());
                let (host, path) = (host.to_string(), path.to_string());
                tokio::spawn(async move { load_connection(addr, host, path, stop, ok).await })
            })
            .collect();
        Load { stop, ok, tasks }
    }

    /// Wait until `more` further requests succeeded (the load overlapped what happened before);
    /// panics after 60 s, or when the load ended first.
    pub async fn wait_for(&self, more: usize) {
        let want = self.ok.load(Ordering::Relaxed) + more;
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.ok.load(Ordering::Relaxed) < want {
            assert!(
                Instant::now() < deadline && self.tasks.iter().any(|t| !t.is_finished()),
                "the load stalled at {} successful requests",
                self.ok.load(Ordering::Relaxed)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stop and collect.
    pub async fn finish(self) -> LoadResult {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = LoadResult::default();
        for t in self.tasks {
            let r = t.await.unwrap();
            all.ok += r.ok;
            all.failed += r.failed;
            all.errors.extend(r.errors);
        }
        all
    }
}

async fn load_connection(
    addr: SocketAddr,
    host: String,
    path: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
    ok: Arc<AtomicUsize>,
) -> LoadResult {
    let mut r = LoadResult::default();
    let mut sender = None;
    while !stop.load(Ordering::Relaxed) && r.ok + r.failed < LOAD_MAX_PER_CONN {
        if sender.is_none() {
            sender = match h1_connect(addr).await {
                Ok(s) => Some(s),
                Err(e) => {
                    r.fail(format!("connect: {e}"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
        }
        let Some(send) = sender.as_mut() else {
            continue;
        };
        // The server may close an idle keep-alive connection (a drain): not a failure.
        if send.ready().await.is_err() {
            sender = None;
            continue;
        }
        let req = http::Request::builder()
            .uri(path.as_str())
            .header("host", host.as_str())
            .body(Full::new(Bytes::new()))
            .unwrap();
        let answer = match send.send_request(req).await {
            Ok(resp) => {
                let status = resp.status();
                let closing = resp
                    .headers()
                    .get("connection")
                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
                let body = resp.into_body().collect().await;
                if closing {
                    sender = None;
                }
                match body {
                    Ok(_) if status == 200 => Ok(()),
                    Ok(_) => Err(format!("status {status}")),
                    Err(e) => Err(format!("body: {e}")),
                }
            }
            Err(e) => Err(format!("request: {e}")),
        };
        match answer {
            Ok(()) => {
                r.ok += 1;
                ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                r.fail(e);
                sender = None;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    r
}

impl LoadResult {
    fn fail(&mut self, e: String) {
        self.failed += 1;
        if self.errors.len() < 10 {
            self.errors.push(e);
        }
    }
}

type H1Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn h1_connect(addr: SocketAddr) -> Result<H1Sender, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(sender)
}

// === xDS ===

/// A bootstrap whose clusters come over ADS (state of the world) from `xds` for `node`, with
/// the static `listeners` (their routes may name clusters only CDS defines).
pub fn ads_bootstrap(node: &str, xds: SocketAddr, listeners: &str) -> String {
    let ads_cluster = cluster(
        "xds-grpc",
        &[xds],
        "    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        explicit_http_config: {http2_protocol_options: {}}\n",
    );
    format!(
        "node: {{id: \"{node}\", cluster: faults}}\ndynamic_resources:\n  ads_config:\n    api_type: GRPC\n    transport_api_version: V3\n    grpc_services:\n    - envoy_grpc: {{cluster_name: xds-grpc}}\n  cds_config: {{ads: {{}}, resource_api_version: V3}}\n{}",
        bootstrap(listeners, &ads_cluster)
    )
}

/// remora-xds's ADS server on `listener` until the task is aborted.
pub fn serve_ads(
    cache: Arc<remora_xds::server::SnapshotCache>,
    listener: TcpListener,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let _ = remora_xds::server::serve_tcp(cache, listener).await;
    })
}

// === the shared Envoy configurations ===

/// The certificate files the shared configurations name (`certs/…`, relative to Envoy's working
/// directory), issued by a fresh development CA in `dir/certs`.
pub fn write_example_certs(dir: &std::path::Path) {
    use remora_certs::ca::{DevCa, KeyAlgorithm, LeafRequest};
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let ca = DevCa::generate_root("compat", KeyAlgorithm::EcdsaP256).unwrap();
    std::fs::write(certs.join("cacert.pem"), ca.root_pem()).unwrap();
    for (cert, key, dns) in [
        (
            "servercert.pem",
            "serverkey.pem",
            "proxy-postgres-backend.example.com",
        ),
        (
            "clientcert.pem",
            "clientkey.pem",
            "proxy-postgres-frontend.example.com",
        ),
        ("domain1.crt.pem", "domain1.key.pem", "domain1.example.com"),
        ("domain2.crt.pem", "domain2.key.pem", "domain2.example.com"),
    ] {
        let mut req = LeafRequest::new(std::time::Duration::from_secs(3600));
        req.dns_names = vec![dns.to_string()];
        let issued = ca.issue(&req).unwrap();
        std::fs::write(certs.join(cert), &issued.cert_chain_pem).unwrap();
        std::fs::write(certs.join(key), &issued.key_pem).unwrap();
    }
}

/// The shared configurations' routers without a typed_config (which Envoy 1.40 refuses: it
/// finds extensions by type only) given one, so the examples run as their authors meant.
pub fn with_typed_router(yaml: &str) -> String {
    let mut out = String::new();
    for line in yaml.lines() {
        out.push_str(line);
        out.push('\n');
        if line
            .trim_end()
            .ends_with("- name: envoy.filters.http.router")
        {
            let indent = line.len() - line.trim_start().len() + 2;
            out.push_str(&format!(
                "{}typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}\n",
                " ".repeat(indent)
            ));
        }
    }
    out
}

/// Whether an interop tool (curl, openssl, promtool…) runs here. Missing, a test skips loudly;
/// under `.ci/run` (REMORA_REQUIRE_INTEROP set, it installs them) a missing tool fails.
pub fn have_tool(tool: &str) -> bool {
    let runs = |arg: &str| {
        Command::new(tool)
            .arg(arg)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let ok = runs("--version") || runs("version");
    if !ok {
        assert!(
            std::env::var_os("REMORA_REQUIRE_INTEROP").is_none(),
            "{tool} is required (REMORA_REQUIRE_INTEROP is set)"
        );
        eprintln!("SKIPPED: {tool} is not installed; .ci/run installs it");
    }
    ok
}

// === a recording upstream ===

/// One request a [`Recorder`] got.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// Lower-case names, in the order they arrived.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What a [`Recorder`] does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Records it (body read to the end) and answers 200 `ok <name>`.
    Answer,
    /// Records it and never answers.
    Stall,
    /// Accepts connections and never reads from them (records nothing).
    BlackHole,
}

/// An HTTP/1.1 upstream that records every request it reads (for mirroring tests: which copy
/// arrived, with what host, headers and body).
pub struct Recorder {
    pub addr: SocketAddr,
    seen: Arc<std::sync::Mutex<Vec<Recorded>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Recorder {
    pub fn seen(&self) -> Vec<Recorded> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits (up to 10 s) until at least `n` requests were recorded.
    pub async fn wait_for(&self, n: usize) -> Vec<Recorded> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let seen = self.seen();
            if seen.len() >= n {
                return seen;
            }
            assert!(
                Instant::now() < deadline,
                "the recorder got {} requests, wanted {n}",
                seen.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the count has not moved for `quiet`, and returns it.
    pub async fn settled(&self, quiet: Duration) -> usize {
        let mut last = self.seen().len();
        loop {
            tokio::time::sleep(quiet).await;
            let now = self.seen().len();
            if now == last {
                return now;
            }
            last = now;
        }
    }
}

pub async fn recorder(name: &str, behaviour: Behaviour) -> Recorder {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<std::sync::Mutex<Vec<Recorded>>> = Arc::default();
    let (name, log) = (name.to_string(), seen.clone());
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            if behaviour == Behaviour::BlackHole {
                held.push(stream);
                continue;
            }
            let (name, log) = (name.clone(), log.clone());
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (name, log) = (name.clone(), log.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|c| c.to_bytes())
                                .unwrap_or_default();
                            log.lock().unwrap().push(Recorded {
                                method: parts.method.to_string(),
                                path: parts.uri.to_string(),
                                headers: parts
                                    .headers
                                    .iter()
                                    .map(|(k, v)| {
                                        (
                                            k.to_string(),
                                            String::from_utf8_lossy(v.as_bytes()).into(),
                                        )
                                    })
                                    .collect(),
                                body,
                            });
                            if behaviour == Behaviour::Stall {
                                std::future::pending::<()>().await;
                            }
                            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                                Bytes::from(format!("ok {name}")),
                            )))
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Recorder { addr, seen, task }
}

/// A DNS server on 127.0.0.1 (UDP): `answer` gives each A question's address and TTL, or
/// None for NXDOMAIN. Returns its address and the names it was asked, in order.
pub async fn dns_server(
    answer: impl Fn(&str, usize) -> Option<([u8; 4], u32)> + Send + 'static,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = asked.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
            let q = &buf[..n];
            // The question: labels from byte 12 to the root, then type and class.
            let (mut i, mut labels) = (12, Vec::new());
            while q[i] != 0 {
                let len = q[i] as usize;
                labels.push(String::from_utf8_lossy(&q[i + 1..i + 1 + len]).to_string());
                i += 1 + len;
            }
            let end = i + 5;
            let name = labels.join(".");
            let is_a = q[i + 1..i + 3] == [0, 1];
            let nth = {
                let mut log = log.lock().unwrap();
                log.push(name.clone());
                log.iter().filter(|n| **n == name).count()
            };
            let mut reply = q[..end].to_vec();
            reply[2] = 0x81;
            reply[3] = 0x80;
            match answer(&name, nth) {
                Some((ip, ttl)) if is_a => {
                    reply[7] = 1;
                    reply.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
                    reply.extend_from_slice(&ttl.to_be_bytes());
                    reply.extend_from_slice(&[0, 4]);
                    reply.extend_from_slice(&ip);
                }
                Some(_) => {}
                None => reply[3] |= 3,
            }
            let _ = socket.send_to(&reply, peer).await;
        }
    });
    (addr, asked)
}
