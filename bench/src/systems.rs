//! Systems under test: `direct` (no proxy), `remora`, and, when installed, `nginx` and `haproxy`
//! configured as equivalent plain reverse proxies (upstream keep-alive, the same worker count).
//! The harness writes every configuration itself.

use crate::children::Guard;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Direct,
    Remora,
    /// remora with Istio-style resilience configured on the path: circuit breakers, a retry
    /// policy, outlier detection (none of which trips on the happy path).
    #[serde(rename = "remora-resilient")]
    RemoraResilient,
    /// remora with the policy filters of bench/policy/rbac-fault.yaml before the router: a
    /// 20-policy RBAC filter (all evaluated) and a fault filter injecting 0 %.
    #[serde(rename = "remora-policy")]
    RemoraPolicy,
    /// remora with Istio's telemetry on the path (issue 15): both `istio.stats` filters
    /// (network and HTTP, bench/policy/telemetry.yaml) with an Istio sidecar's node metadata,
    /// an access log to a file in Istio's default format, and Zipkin tracing at 1 % sampling
    /// to a collector cluster (the harness's upstream, which answers the span reports 200).
    #[serde(rename = "remora-telemetry")]
    RemoraTelemetry,
    Nginx,
    Haproxy,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Remora => "remora",
            Kind::RemoraResilient => "remora-resilient",
            Kind::RemoraPolicy => "remora-policy",
            Kind::RemoraTelemetry => "remora-telemetry",
            Kind::Nginx => "nginx",
            Kind::Haproxy => "haproxy",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "direct" => Kind::Direct,
            "remora" => Kind::Remora,
            "remora-resilient" => Kind::RemoraResilient,
            "remora-policy" => Kind::RemoraPolicy,
            "remora-telemetry" => Kind::RemoraTelemetry,
            "nginx" => Kind::Nginx,
            "haproxy" => Kind::Haproxy,
            _ => return None,
        })
    }
}

/// How a system is set up.
#[derive(Debug, Clone)]
pub struct Setup {
    pub upstream: SocketAddr,
    pub workers: usize,
    /// Serve HTTP/2 (h2c, prior knowledge) to clients.
    pub h2: bool,
    /// CPU list for the proxy process (`taskset -c`), when pinning.
    pub cpus: Option<String>,
    pub remora_bin: PathBuf,
    pub work_dir: PathBuf,
    /// Use remora's demo-style bootstrap with a stdout access log (for the idle RSS target).
    pub access_log: bool,
}

/// A started system: the address the load goes to and the proxy processes (two for a
/// sidecar chain), each stopped when dropped.
pub struct Running {
    pub addr: SocketAddr,
    children: Vec<Guard>,
}

impl Running {
    /// A process the harness started for the whole run (the nginx upstream), stopped on drop.
    pub fn process(addr: SocketAddr, child: Guard) -> Self {
        Self::processes(addr, vec![child])
    }

    pub fn processes(addr: SocketAddr, children: Vec<Guard>) -> Self {
        Self { addr, children }
    }

    /// No proxy: the load goes straight to `addr`.
    pub fn direct(addr: SocketAddr) -> Self {
        Self {
            addr,
            children: Vec::new(),
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.children.first().map(|c| c.id())
    }

    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(|c| c.id()).collect()
    }
}

/// Whether a peer binary is installed.
pub fn installed(kind: Kind) -> bool {
    match kind {
        Kind::Direct
        | Kind::Remora
        | Kind::RemoraResilient
        | Kind::RemoraPolicy
        | Kind::RemoraTelemetry => true,
        Kind::Nginx => which("nginx").is_some(),
        Kind::Haproxy => which("haproxy").is_some(),
    }
}

pub fn which(bin: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub fn spawn(
    program: &Path,
    args: &[String],
    cpus: &Option<String>,
    log: &Path,
) -> std::io::Result<Guard> {
    let log_file = std::fs::File::create(log)?;
    let mut cmd = match cpus {
        Some(c) => {
            let mut cmd = Command::new("taskset");
            cmd.arg("-c").arg(c).arg(program);
            cmd
        }
        None => Command::new(program),
    };
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file);
    crate::children::spawn(&mut cmd)
}

/// Wait until something accepts and answers HTTP/1.1 on `addr` (or, for HTTP/2-only
/// listeners, accepts connections).
fn wait_ready(
    addr: SocketAddr,
    child: &mut Guard,
    log: &Path,
    h2_only: bool,
) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.try_wait() {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            return Err(std::io::Error::other(format!(
                "exited with {status}: {log}"
            )));
        }
        if let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            if h2_only {
                return Ok(());
            }
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            if s.write_all(
                format!("GET /ready HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .is_ok()
            {
                let mut buf = [0u8; 12];
                if s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.1 200") {
                    return Ok(());
                }
            }
        }
        if Instant::now() > deadline {
            return Err(std::io::Error::other(format!("not answering on {addr}")));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn start(kind: Kind, s: &Setup) -> std::io::Result<Running> {
    start_admin(kind, s, None)
}

/// A remora system with its admin listener on `admin_port` (the `scrape` scenario).
pub fn start_with_admin(kind: Kind, s: &Setup, admin_port: u16) -> std::io::Result<Running> {
    start_admin(kind, s, Some(admin_port))
}

fn start_admin(kind: Kind, s: &Setup, admin: Option<u16>) -> std::io::Result<Running> {
    if kind == Kind::Direct {
        return Ok(Running::direct(s.upstream));
    }
    let port = free_port()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("literal");
    let dir = s.work_dir.join(kind.name());
    std::fs::create_dir_all(&dir)?;
    let log = dir.join("output.log");
    let (program, args) = match kind {
        Kind::Remora | Kind::RemoraResilient | Kind::RemoraPolicy | Kind::RemoraTelemetry => {
            let cfg = dir.join("bootstrap.yaml");
            let mut yaml = remora_config(port, s.upstream, s.h2, s.access_log);
            if kind == Kind::RemoraResilient {
                yaml = with_resilience(&yaml);
            }
            if kind == Kind::RemoraPolicy {
                yaml = with_policy(&yaml);
            }
            if kind == Kind::RemoraTelemetry {
                yaml = with_telemetry(&yaml, &dir.join("access.log"), s.upstream);
            }
            if let Some(p) = admin {
                yaml = format!(
                    "admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {p}}}}}}}\n{yaml}"
                );
            }
            std::fs::write(&cfg, yaml)?;
            (
                s.remora_bin.clone(),
                vec![
                    "-c".into(),
                    cfg.display().to_string(),
                    "--concurrency".into(),
                    s.workers.to_string(),
                    "-l".into(),
                    "warning".into(),
                ],
            )
        }
        Kind::Nginx => {
            let cfg = dir.join("nginx.conf");
            std::fs::write(&cfg, nginx_config(port, s.upstream, s.workers, s.h2, &dir))?;
            (
                which("nginx").ok_or_else(|| std::io::Error::other("nginx not installed"))?,
                vec![
                    "-c".into(),
                    cfg.display().to_string(),
                    "-p".into(),
                    dir.display().to_string(),
                ],
            )
        }
        Kind::Haproxy => {
            let cfg = dir.join("haproxy.cfg");
            std::fs::write(
                &cfg,
                haproxy_config(port, s.upstream, s.workers, s.h2, fd_limit()),
            )?;
            (
                which("haproxy").ok_or_else(|| std::io::Error::other("haproxy not installed"))?,
                vec!["-f".into(), cfg.display().to_string(), "-db".into()],
            )
        }
        Kind::Direct => unreachable!(),
    };
    let mut child = spawn(&program, &args, &s.cpus, &log)?;
    // nginx and HAProxy serve h2c only with prior knowledge on an HTTP/2 listener.
    wait_ready(
        addr,
        &mut child,
        &log,
        s.h2 && !matches!(
            kind,
            Kind::Remora | Kind::RemoraResilient | Kind::RemoraPolicy | Kind::RemoraTelemetry
        ),
    )?;
    Ok(Running::process(addr, child))
}

/// Wait until `addr` accepts TCP connections (TLS listeners cannot take the plaintext probe).
pub fn wait_accepting(addr: SocketAddr, child: &mut Guard, log: &Path) -> std::io::Result<()> {
    wait_ready(addr, child, log, true)
}

/// remora: one listener routing everything to one static cluster, upstream HTTP/1.1.
pub fn remora_config(port: u16, upstream: SocketAddr, _h2: bool, access_log: bool) -> String {
    let log = if access_log {
        "          access_log:\n          - name: envoy.access_loggers.stdout\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog\n"
    } else {
        ""
    };
    format!(
        r#"static_resources:
  listeners:
  - name: bench
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          codec_type: AUTO
{log}          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: upstream}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
  - name: upstream
    type: STATIC
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: {}, port_value: {}}}}}}}
"#,
        upstream.ip(),
        upstream.port()
    )
}

/// The bench bootstrap with what istiod writes for a DestinationRule/VirtualService with
/// connection-pool limits, outlier detection and retries: Istio's default retry policy (2
/// attempts on connect-failure, refused-stream, unavailable, cancelled, retriable 503, other
/// hosts preferred), circuit breakers at Istio's values, consecutive-5xx ejection.
pub fn with_resilience(yaml: &str) -> String {
    yaml.replacen(
        "route: {cluster: upstream}",
        "route: {cluster: upstream, retry_policy: {retry_on: \"connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes\", num_retries: 2, retriable_status_codes: [503], retry_host_predicate: [{name: envoy.retry_host_predicates.previous_hosts, typed_config: {\"@type\": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate}}], host_selection_retry_max_attempts: 5}}",
        1,
    )
    .replacen(
        "    type: STATIC\n",
        "    type: STATIC\n    circuit_breakers:\n      thresholds:\n      - {max_connections: 4294967295, max_pending_requests: 4294967295, max_requests: 4294967295, max_retries: 4294967295, track_remaining: true}\n    outlier_detection: {consecutive_5xx: 5, interval: 10s, base_ejection_time: 30s, max_ejection_percent: 100}\n",
        1,
    )
}

/// The policy filters the `remora-policy` system runs before the router.
pub const POLICY_FILTERS: &str = include_str!("../policy/rbac-fault.yaml");

/// The bench bootstrap with bench/policy/rbac-fault.yaml's HTTP filters before the router.
pub fn with_policy(yaml: &str) -> String {
    let filters: String = POLICY_FILTERS
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("          {l}\n"))
        .collect();
    yaml.replacen(
        "          http_filters:\n",
        &format!("          http_filters:\n{filters}"),
        1,
    )
}

/// The HTTP filter the `remora-telemetry` system runs before the router.
pub const TELEMETRY_FILTERS: &str = include_str!("../policy/telemetry.yaml");

/// Istio's default access-log format (`EnvoyTextLogFormat` of istiod's mesh config).
pub const ISTIO_LOG_FORMAT: &str = "[%START_TIME%] \\\"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\\\" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% \\\"%UPSTREAM_TRANSPORT_FAILURE_REASON%\\\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \\\"%REQ(X-FORWARDED-FOR)%\\\" \\\"%REQ(USER-AGENT)%\\\" \\\"%REQ(X-REQUEST-ID)%\\\" \\\"%REQ(:AUTHORITY)%\\\" \\\"%UPSTREAM_HOST%\\\" %UPSTREAM_CLUSTER_RAW% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\\n";

/// An Istio sidecar's node (the shape of istio/proxy's client_node_metadata.json).
pub const ISTIO_NODE: &str = r#"node:
  id: sidecar~10.52.0.34~productpage-v1-84975bc778-pxz2w.default~default.svc.cluster.local
  cluster: productpage.default
  metadata:
    APP_CONTAINERS: test,bonzai
    CLUSTER_ID: client-cluster
    INSTANCE_IPS: 10.52.0.34
    ISTIO_VERSION: 1.5-dev
    LABELS: {app: productpage, version: v1, pod-template-hash: 84975bc778, service.istio.io/canonical-name: productpage-v1, service.istio.io/canonical-revision: version-1}
    MESH_ID: mesh
    NAME: productpage-v1-84975bc778-pxz2w
    NAMESPACE: default
    OWNER: kubernetes://apis/apps/v1/namespaces/default/deployments/productpage-v1
    SERVICE_ACCOUNT: bookinfo-productpage
    WORKLOAD_NAME: productpage-v1
"#;

/// The bench bootstrap with Istio's telemetry: the node metadata, the network `istio.stats`
/// filter before the connection manager, the HTTP one before the router, an access log to
/// `log` in Istio's format and Zipkin tracing at 1 % to a `zipkin` cluster at `collector`.
pub fn with_telemetry(yaml: &str, log: &Path, collector: SocketAddr) -> String {
    let filters: String = TELEMETRY_FILTERS
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("          {l}\n"))
        .collect();
    let network: String = TELEMETRY_FILTERS
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("      {l}\n"))
        .collect();
    let access_log = format!(
        "          access_log:\n          - name: envoy.access_loggers.file\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog\n              path: {}\n              log_format: {{text_format_source: {{inline_string: \"{ISTIO_LOG_FORMAT}\"}}}}\n",
        log.display()
    );
    let tracing = "          tracing:\n            random_sampling: {value: 1}\n            provider:\n              name: envoy.tracers.zipkin\n              typed_config:\n                \"@type\": type.googleapis.com/envoy.config.trace.v3.ZipkinConfig\n                collector_cluster: zipkin\n                collector_endpoint: /api/v2/spans\n                collector_endpoint_version: HTTP_JSON\n                shared_span_context: false\n";
    let collector_cluster = format!(
        "  - name: zipkin\n    type: STATIC\n    load_assignment:\n      cluster_name: zipkin\n      endpoints:\n      - lb_endpoints:\n        - endpoint: {{address: {{socket_address: {{address: {}, port_value: {}}}}}}}\n",
        collector.ip(),
        collector.port()
    );
    let yaml = format!("{ISTIO_NODE}{yaml}{collector_cluster}");
    yaml.replacen("    - filters:\n", &format!("    - filters:\n{network}"), 1)
        .replacen(
            "          codec_type: AUTO\n",
            &format!("          codec_type: AUTO\n{access_log}{tracing}"),
            1,
        )
        .replacen(
            "          http_filters:\n",
            &format!("          http_filters:\n{filters}"),
            1,
        )
}

/// nginx as a plain reverse proxy with upstream keep-alive.
pub fn nginx_config(
    port: u16,
    upstream: SocketAddr,
    workers: usize,
    h2: bool,
    dir: &Path,
) -> String {
    let http2 = if h2 { " http2" } else { "" };
    let d = dir.display();
    format!(
        r#"worker_processes {workers};
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
worker_rlimit_nofile 65536;
events {{ worker_connections 32768; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  keepalive_requests 1000000;
  keepalive_timeout 3600s;
  upstream backend {{ server {upstream}; keepalive 256; keepalive_requests 1000000; keepalive_timeout 3600s; }}
  server {{
    listen 127.0.0.1:{port}{http2};
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }}
  }}
}}
"#
    )
}

/// HAProxy as a plain reverse proxy with upstream keep-alive (`http-reuse always`).
/// The harness's file-descriptor limit (raised to the hard limit at start).
pub fn fd_limit() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(1024)
}

pub fn haproxy_config(
    port: u16,
    upstream: SocketAddr,
    workers: usize,
    h2: bool,
    fd_limit: u64,
) -> String {
    let proto = if h2 { " proto h2" } else { "" };
    // HAProxy needs two descriptors per proxied connection and refuses to start above the limit.
    let maxconn = fd_limit.saturating_sub(200) / 2;
    format!(
        r#"global
  nbthread {workers}
  maxconn {maxconn}
defaults
  mode http
  timeout connect 5s
  timeout client 3600s
  timeout server 3600s
  timeout http-keep-alive 3600s
  option http-keep-alive
  http-reuse always
frontend bench
  bind 127.0.0.1:{port}{proto}
  default_backend up
backend up
  server s1 {upstream}
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_resilient_bootstrap_differs_where_it_should() {
        let plain = remora_config(1, "127.0.0.1:2".parse().unwrap(), false, false);
        let resilient = with_resilience(&plain);
        for want in [
            "retry_policy: {retry_on: \"connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes\"",
            "    circuit_breakers:\n      thresholds:\n",
            "    outlier_detection: {consecutive_5xx: 5",
        ] {
            assert!(!plain.contains(want));
            assert!(resilient.contains(want), "{want}\n{resilient}");
        }
    }

    #[test]
    fn the_policy_bootstrap_puts_the_filters_before_the_router() {
        let plain = remora_config(1, "127.0.0.1:2".parse().unwrap(), false, false);
        let policy = with_policy(&plain);
        let rbac = policy
            .find("- name: envoy.filters.http.rbac")
            .expect("rbac");
        let fault = policy
            .find("- name: envoy.filters.http.fault")
            .expect("fault");
        let router = policy
            .find("- name: envoy.filters.http.router")
            .expect("router");
        assert!(rbac < fault && fault < router, "{policy}");
        assert_eq!(policy.matches("ns[autolytiq]-policy[p").count(), 20);
        // remora takes it (the whole pipeline, model included).
        use clap::Parser;
        let options =
            remora::cli::Options::try_parse_from(["remora", "--config-yaml", &policy]).unwrap();
        let sds = std::sync::Arc::new(remora::xds::sds::SdsRegistry::default());
        if let Err(e) = remora::server::load(&options, sds) {
            panic!("{e}\n{policy}");
        }
    }

    #[test]
    fn the_telemetry_bootstrap_loads_with_every_piece() {
        let plain = remora_config(1, "127.0.0.1:2".parse().unwrap(), false, false);
        let t = with_telemetry(
            &plain,
            Path::new("/tmp/remora-bench-test-access.log"),
            "127.0.0.1:3".parse().unwrap(),
        );
        assert_eq!(t.matches("- name: istio.stats").count(), 2, "{t}");
        for want in [
            "ISTIO_VERSION: 1.5-dev",
            "envoy.access_loggers.file",
            "random_sampling: {value: 1}",
            "collector_cluster: zipkin",
            "  - name: zipkin\n",
        ] {
            assert!(t.contains(want), "{want}\n{t}");
        }
        let http = t.find("          - name: istio.stats").expect("http");
        let router = t.find("- name: envoy.filters.http.router").expect("router");
        assert!(http < router, "{t}");
        use clap::Parser;
        let options =
            remora::cli::Options::try_parse_from(["remora", "--config-yaml", &t]).unwrap();
        let sds = std::sync::Arc::new(remora::xds::sds::SdsRegistry::default());
        if let Err(e) = remora::server::load(&options, sds) {
            panic!("{e}\n{t}");
        }
    }
}
