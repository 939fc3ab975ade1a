//! Envoy's command line. Flags Envoy has for hot restart and platform specifics are accepted
//! where remora's behaviour already matches what they ask for; unknown flags are errors.

use clap::{Parser, ValueEnum};
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Load the configuration and serve.
    Serve,
    /// Load and translate everything, report errors, start nothing.
    Validate,
    /// Envoy's init-only mode: initialise (bind listeners, resolve clusters) and exit.
    InitOnly,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DrainStrategy {
    Gradual,
    Immediate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IpVersion {
    V4,
    V6,
}

/// remora: an Envoy-compatible sidecar proxy. Run `remora demo` for a self-contained demo.
#[derive(Debug, Clone, Parser)]
#[command(name = "remora", version = crate::VERSION, disable_version_flag = true, about)]
pub struct Options {
    /// Path to the v3 bootstrap (YAML, JSON or binary proto).
    #[arg(short = 'c', long = "config-path")]
    pub config_path: Option<PathBuf>,

    /// Bootstrap YAML merged over the file (protobuf merge: lists append).
    #[arg(long = "config-yaml")]
    pub config_yaml: Option<String>,

    #[arg(long, value_enum, default_value = "serve")]
    pub mode: Mode,

    /// Worker threads (default: the number of CPUs).
    #[arg(long)]
    pub concurrency: Option<usize>,

    /// Log level: trace, debug, info, warning/warn, error, critical, off.
    #[arg(short = 'l', long = "log-level", default_value = "info")]
    pub log_level: String,

    /// Per-component log levels, e.g. `upstream:debug,connection:trace`.
    #[arg(long = "component-log-level")]
    pub component_log_level: Option<String>,

    /// Envoy's application-log format string (spdlog flags; default
    /// `[%Y-%m-%d %T.%e][%t][%l][%n] [%g:%#] %v`).
    #[arg(long = "log-format")]
    pub log_format: Option<String>,

    /// Escape C-style escape sequences in application-log messages (one event, one line).
    #[arg(long = "log-format-escaped")]
    pub log_format_escaped: bool,

    /// Write application logs to this file instead of stderr.
    #[arg(long = "log-path")]
    pub log_path: Option<PathBuf>,

    #[arg(long = "service-node")]
    pub service_node: Option<String>,

    #[arg(long = "service-cluster")]
    pub service_cluster: Option<String>,

    #[arg(long = "service-zone")]
    pub service_zone: Option<String>,

    /// Seconds listeners drain connections before they stop (drain_listeners, shutdown).
    #[arg(long = "drain-time-s", default_value_t = 600)]
    pub drain_time_s: u64,

    #[arg(long = "drain-strategy", value_enum, default_value = "gradual")]
    pub drain_strategy: DrainStrategy,

    /// Hot restart only (remora does not hot restart; the parent is never waited for).
    #[arg(long = "parent-shutdown-time-s", default_value_t = 900)]
    pub parent_shutdown_time_s: u64,

    /// remora never hot restarts; accepted for compatibility.
    #[arg(long = "disable-hot-restart")]
    pub disable_hot_restart: bool,

    /// Hot restart epoch; only 0 (no hot restart) is possible.
    #[arg(long = "restart-epoch", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=0))]
    pub restart_epoch: u32,

    /// Hot restart shared-memory base id; meaningless without hot restart.
    #[arg(long = "base-id")]
    pub base_id: Option<u64>,

    /// Unknown fields in the bootstrap are warnings instead of errors.
    #[arg(long = "allow-unknown-static-fields")]
    pub allow_unknown_static_fields: bool,

    /// Unknown fields in dynamic (xDS) resources are errors (the default in remora).
    #[arg(long = "reject-unknown-dynamic-fields")]
    pub reject_unknown_dynamic_fields: bool,

    #[arg(long = "local-address-ip-version", value_enum, default_value = "v4")]
    pub local_address_ip_version: IpVersion,

    /// Write the admin listener's address here once it is bound.
    #[arg(long = "admin-address-path")]
    pub admin_address_path: Option<PathBuf>,

    /// Access-log flush interval in milliseconds.
    #[arg(long = "file-flush-interval-msec", default_value_t = 1000)]
    pub file_flush_interval_msec: u64,

    /// Print the version and exit.
    #[arg(long = "version")]
    pub version: bool,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Start a proxy with a built-in bootstrap in front of a built-in echo server, and print
    /// curl commands to try.
    Demo {
        /// Listener port for the demo proxy.
        #[arg(long, default_value_t = 10000)]
        port: u16,
        /// Admin port for the demo proxy.
        #[arg(long, default_value_t = 9901)]
        admin_port: u16,
    },
    /// The sidecar init container: istio-iptables' traffic-capture rules, from istio-iptables'
    /// own flags and environment (`--dry-run` prints them, `--cleanup-only` removes them).
    Iptables(Box<remora_iptables::Flags>),
    /// Development certificates (a local CA and Istio-shaped workload certificates).
    Certs {
        #[command(subcommand)]
        action: CertsCommand,
    },
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum CertsCommand {
    /// Create a development root CA: DIR/root-cert.pem and DIR/root-key.pem (0600).
    Ca {
        #[arg(long)]
        out: PathBuf,
        /// The CA certificate's common name.
        #[arg(long, default_value = "remora dev root CA")]
        name: String,
        /// ecdsa-p256 or rsa-2048.
        #[arg(long, default_value = "ecdsa-p256")]
        key: remora_certs::ca::KeyAlgorithm,
        /// Create an intermediate CA signed by the CA in this directory instead of a root
        /// (writes DIR/ca-chain.pem too).
        #[arg(long = "intermediate-of")]
        intermediate_of: Option<PathBuf>,
    },
    /// Issue a workload certificate in Istio's file-mounted layout: DIR/cert-chain.pem,
    /// DIR/key.pem (0600), DIR/root-cert.pem.
    Issue {
        /// Directory of the issuing CA (written by `remora certs ca`).
        #[arg(long)]
        ca: PathBuf,
        /// The identity, e.g. spiffe://cluster.local/ns/autolytiq/sa/api-gateway (the only URI SAN).
        #[arg(long = "spiffe-id")]
        spiffe_id: Option<remora_certs::SpiffeId>,
        /// DNS subject alt names (repeatable), for non-mesh TLS.
        #[arg(long = "dns")]
        dns: Vec<String>,
        /// Validity: 30m, 24h, 90d.
        #[arg(long, default_value = "24h", value_parser = remora_certs::ca::parse_ttl)]
        ttl: std::time::Duration,
        #[arg(long, default_value = "ecdsa-p256")]
        key: remora_certs::ca::KeyAlgorithm,
        #[arg(long)]
        out: PathBuf,
    },
}

/// Run a `remora certs` command; the exit code.
pub fn run_certs(cmd: &CertsCommand) -> i32 {
    use remora_certs::ca::{DevCa, LeafRequest};
    let result = match cmd {
        CertsCommand::Ca {
            out,
            name,
            key,
            intermediate_of,
        } => (|| {
            let ca = match intermediate_of {
                Some(parent) => DevCa::load(parent)?.intermediate(name, *key)?,
                None => DevCa::generate_root(name, *key)?,
            };
            ca.write(out)?;
            println!("wrote {}", out.join(remora_certs::ca::ROOT_CERT).display());
            Ok::<_, remora_certs::ca::CaError>(())
        })(),
        CertsCommand::Issue {
            ca,
            spiffe_id,
            dns,
            ttl,
            key,
            out,
        } => (|| {
            let ca = DevCa::load(ca)?;
            let mut req = LeafRequest::new(*ttl);
            req.spiffe_id = spiffe_id.clone();
            req.dns_names = dns.clone();
            req.algorithm = *key;
            ca.issue(&req)?.write_istio_layout(out)?;
            println!(
                "wrote {}, {} and {}",
                out.join(remora_certs::ca::CERT_CHAIN).display(),
                out.join(remora_certs::ca::KEY).display(),
                out.join(remora_certs::ca::ROOT_CERT).display()
            );
            Ok(())
        })(),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}
