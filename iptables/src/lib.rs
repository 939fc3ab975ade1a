//! `remora iptables`: the sidecar init container. It writes istio-iptables' traffic-capture
//! rules from istio-iptables' own flags and environment; `--dry-run` prints exactly what
//! istio-iptables' dry run records (Istio's golden files), and `--cleanup-only` removes the rules.
//!
//! config.rs: the configuration (defaults, validation); flags.rs: the command line and
//! environment; capture.rs: the rule set (Istio's capture/run.go); builder.rs: rules rendered as
//! iptables-restore input, checks and undo commands; deps.rs: running the binaries (nft or
//! legacy, detected as Istio does) or recording them; run.rs: verify, clean up, apply;
//! routes.rs: the TPROXY policy routes and the IPv6 `::6` loopback address.
#![forbid(unsafe_code)]

pub mod builder;
pub mod capture;
pub mod config;
pub mod deps;
pub mod flags;
pub mod log;
pub mod routes;
pub mod run;

pub use flags::Flags;

use config::Config;
use log::Log;

/// Runs `remora iptables` with `flags` and the process environment; the exit code.
pub fn main(flags: &Flags) -> i32 {
    let env = |name: &str| std::env::var(name).ok();
    let resolver = flags::Resolver {
        env: &env,
        errors: Vec::new(),
    };
    let (mut cfg, level) = match resolver.resolve(flags) {
        Ok(r) => r,
        Err(errors) => return fail(&errors),
    };
    let log = Log::stderr(level);
    if let Err(e) = flags::fill_from_host(&mut cfg, &flags::Host::probe(&env)) {
        return fail(&[e]);
    }
    if let Err(errors) = cfg.validate() {
        return fail(&errors);
    }
    log.info(&format!("Istio config:\n{}", describe(&cfg)));
    match execute(&cfg, &log) {
        Ok(record) => {
            print!("{record}");
            0
        }
        Err(e) => {
            log.error(&e);
            eprintln!("error: {e}");
            1
        }
    }
}

fn fail(errors: &[String]) -> i32 {
    for e in errors {
        eprintln!("error: {e}");
    }
    1
}

/// Applies `cfg` (or records it, in a dry run); the dry-run record, empty otherwise.
pub fn execute(cfg: &Config, log: &Log) -> Result<String, String> {
    if cfg.skip_rule_apply {
        log.info("skipping iptables rule apply (--skip-rule-apply)");
        return Ok(String::new());
    }
    if cfg.dry_run {
        log.info("running iptables in dry-run mode, no rule changes will be made");
        let mut record = deps::DryRun::default();
        run::run(cfg, &mut record, log)?;
        return Ok(record.output());
    }
    let mut real = deps::Real {
        force_legacy: cfg.force_legacy_iptables,
    };
    run::run(cfg, &mut real, log)?;
    if !cfg.cleanup_only {
        routes::configure(cfg, log)?;
    }
    Ok(String::new())
}

/// The configuration as istio-iptables logs it (Config.Print).
pub fn describe(c: &Config) -> String {
    let lines = [
        ("PROXY_PORT", c.proxy_port.clone()),
        ("PROXY_INBOUND_CAPTURE_PORT", c.inbound_capture_port.clone()),
        ("PROXY_TUNNEL_PORT", c.inbound_tunnel_port.clone()),
        ("PROXY_UID", c.proxy_uid.clone()),
        ("PROXY_GID", c.proxy_gid.clone()),
        (
            "INBOUND_INTERCEPTION_MODE",
            c.inbound_interception_mode.clone(),
        ),
        ("INBOUND_TPROXY_MARK", c.inbound_tproxy_mark.clone()),
        (
            "INBOUND_TPROXY_ROUTE_TABLE",
            c.inbound_tproxy_route_table.clone(),
        ),
        ("INBOUND_PORTS_INCLUDE", c.inbound_ports_include.clone()),
        ("INBOUND_PORTS_EXCLUDE", c.inbound_ports_exclude.clone()),
        (
            "OUTBOUND_OWNER_GROUPS_INCLUDE",
            c.owner_groups_include.clone(),
        ),
        (
            "OUTBOUND_OWNER_GROUPS_EXCLUDE",
            c.owner_groups_exclude.clone(),
        ),
        (
            "OUTBOUND_IP_RANGES_INCLUDE",
            c.outbound_ip_ranges_include.clone(),
        ),
        (
            "OUTBOUND_IP_RANGES_EXCLUDE",
            c.outbound_ip_ranges_exclude.clone(),
        ),
        ("OUTBOUND_PORTS_INCLUDE", c.outbound_ports_include.clone()),
        ("OUTBOUND_PORTS_EXCLUDE", c.outbound_ports_exclude.clone()),
        ("KUBE_VIRT_INTERFACES", c.reroute_virtual_interfaces.clone()),
        ("ENABLE_INBOUND_IPV6", c.enable_ipv6.to_string()),
        ("DUAL_STACK", c.dual_stack.to_string()),
        ("DNS_CAPTURE", c.redirect_dns.to_string()),
        ("DROP_INVALID", c.drop_invalid.to_string()),
        ("CAPTURE_ALL_DNS", c.capture_all_dns.to_string()),
        (
            "DNS_SERVERS",
            format!("{:?},{:?}", c.dns_servers_v4, c.dns_servers_v6),
        ),
        ("EXCLUDE_INTERFACES", c.exclude_interfaces.clone()),
        ("RECONCILE", c.reconcile.to_string()),
        ("CLEANUP_ONLY", c.cleanup_only.to_string()),
        ("FORCE_APPLY", c.force_apply.to_string()),
    ];
    lines.iter().map(|(k, v)| format!("{k}={v}\n")).collect()
}
