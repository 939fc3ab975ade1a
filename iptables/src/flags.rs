//! istio-iptables' command line (tools/istio-iptables/pkg/cmd/root.go): the same long and short
//! flags, each also settable by its environment variable (the flag name upper-cased, `-` → `_`)
//! except `--envoy-port`; a flag given on the command line wins over the variable. A boolean
//! takes `--flag` or `--flag=true|false`, as pflag does.

use crate::config::Config;
use crate::log::{Level, parse_output_level};
use std::net::IpAddr;
use std::time::Duration;

/// Set up iptables rules for the Istio sidecar (istio-iptables' flags and environment).
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct Flags {
    /// The envoy port to which all TCP traffic is redirected (default 15001).
    #[arg(short = 'p', long = "envoy-port")]
    pub envoy_port: Option<String>,
    /// Port to which all inbound TCP traffic to the pod is redirected (default 15006).
    #[arg(short = 'z', long = "inbound-capture-port")]
    pub inbound_capture_port: Option<String>,
    /// The istio tunnel port for inbound TCP traffic (default 15008).
    #[arg(short = 'e', long = "inbound-tunnel-port")]
    pub inbound_tunnel_port: Option<String>,
    /// UIDs (comma-separated) whose traffic is not redirected: the proxy's (default: ENVOY_USER's, else 1337).
    #[arg(short = 'u', long = "proxy-uid")]
    pub proxy_uid: Option<String>,
    /// GIDs whose traffic is not redirected (default: the UIDs).
    #[arg(short = 'g', long = "proxy-gid")]
    pub proxy_gid: Option<String>,
    /// How inbound connections are redirected: REDIRECT or TPROXY.
    #[arg(short = 'm', long = "istio-inbound-interception-mode")]
    pub inbound_interception_mode: Option<String>,
    /// Inbound ports redirected to the proxy, or `*` for all; empty disables inbound capture.
    #[arg(short = 'b', long = "istio-inbound-ports")]
    pub inbound_ports: Option<String>,
    /// Inbound ports excluded when all (`*`) are redirected.
    #[arg(short = 'd', long = "istio-local-exclude-ports")]
    pub local_exclude_ports: Option<String>,
    /// Interfaces whose traffic is never captured.
    #[arg(short = 'c', long = "istio-exclude-interfaces")]
    pub exclude_interfaces: Option<String>,
    /// Outbound CIDRs redirected to the proxy, or `*` for all; empty disables outbound capture.
    #[arg(short = 'i', long = "istio-service-cidr")]
    pub service_cidr: Option<String>,
    /// Outbound CIDRs excluded from redirection.
    #[arg(short = 'x', long = "istio-service-exclude-cidr")]
    pub service_exclude_cidr: Option<String>,
    /// Outbound ports always redirected.
    #[arg(short = 'q', long = "istio-outbound-ports")]
    pub outbound_ports: Option<String>,
    /// Outbound ports excluded from redirection.
    #[arg(short = 'o', long = "istio-local-outbound-ports-exclude")]
    pub local_outbound_ports_exclude: Option<String>,
    /// Virtual interfaces whose inbound traffic is treated as outbound.
    #[arg(short = 'k', long = "kube-virt-interfaces")]
    pub kube_virt_interfaces: Option<String>,
    /// TPROXY mark (default 1337).
    #[arg(short = 't', long = "istio-inbound-tproxy-mark")]
    pub inbound_tproxy_mark: Option<String>,
    /// TPROXY routing table (default 133).
    #[arg(short = 'r', long = "istio-inbound-tproxy-route-table")]
    pub inbound_tproxy_route_table: Option<String>,
    /// Print the commands and iptables-restore input instead of running them.
    #[arg(short = 'n', long = "dry-run", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_bool)]
    pub dry_run: Option<bool>,
    /// Listen port of the validation probe (with --run-validation, which remora refuses).
    #[arg(long = "iptables-probe-port")]
    pub iptables_probe_port: Option<String>,
    /// Validation probe timeout (with --run-validation).
    #[arg(long = "probe-timeout")]
    pub probe_timeout: Option<String>,
    /// Do not apply any rule.
    #[arg(long = "skip-rule-apply", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_bool)]
    pub skip_rule_apply: Option<bool>,
    /// Validate the rules with a probe connection (not implemented: refused).
    #[arg(long = "run-validation", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_bool)]
    pub run_validation: Option<bool>,
    /// Capture DNS (port 53) to the agent on 15053 (also ISTIO_META_DNS_CAPTURE).
    #[arg(long = "redirect-dns", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_bool)]
    pub redirect_dns: Option<bool>,
    /// Drop conntrack-INVALID packets instead of resetting (also INVALID_DROP).
    #[arg(long = "drop-invalid", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_bool)]
    pub drop_invalid: Option<bool>,
    /// IPv4 and IPv6 redirects for dual-stack pods (also ISTIO_DUAL_STACK).
    #[arg(long = "dual-stack", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_bool)]
    pub dual_stack: Option<bool>,
    /// Capture all DNS at port 53, not only to the resolv.conf servers (with --redirect-dns).
    #[arg(long = "capture-all-dns", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_bool)]
    pub capture_all_dns: Option<bool>,
    /// The network namespace to apply the rules to (CNI only: refused).
    #[arg(long = "network-namespace")]
    pub network_namespace: Option<String>,
    /// Run as the CNI plugin (refused).
    #[arg(long = "cni-mode", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_bool)]
    pub cni_mode: Option<bool>,
    /// Replace pre-existing, different ISTIO rules instead of adding to them.
    #[arg(long = "reconcile", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_bool)]
    pub reconcile: Option<bool>,
    /// Remove the rules these flags describe, creating none.
    #[arg(long = "cleanup-only", visible_alias = "cleanup", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_bool)]
    pub cleanup_only: Option<bool>,
    /// Apply even when the rules already appear to be in place.
    #[arg(long = "force-apply", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_bool)]
    pub force_apply: Option<bool>,
    /// Native nftables rules (refused: remora programs nftables through iptables-nft).
    #[arg(long = "native-nftables", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_bool)]
    pub native_nftables: Option<bool>,
    /// Use the iptables-legacy binaries whatever exists.
    #[arg(long = "force-legacy-iptables", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_bool)]
    pub force_legacy_iptables: Option<bool>,
    /// Log level per scope, e.g. `default:info` (levels: debug, info, warn, error, fatal, none).
    #[arg(long = "log_output_level")]
    pub log_output_level: Option<String>,
}

/// Go's strconv.ParseBool.
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(format!("invalid boolean {s:?}")),
    }
}

/// Go's time.ParseDuration for the units istio-iptables' users write (`5s`, `1m30s`, `500ms`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {s:?}");
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = s;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let value: f64 = rest[..n].parse().map_err(|_| bad())?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..u] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += value * scale;
        rest = &rest[u..];
    }
    Ok(Duration::from_secs_f64(total))
}

/// The environment variables a flag reads, strongest last (pflag's BindEnv, then AdditionalEnv).
fn env_names(flag: &str) -> Vec<String> {
    let mut names = vec![flag.to_uppercase().replace('-', "_")];
    match flag {
        "redirect-dns" => names.push("ISTIO_META_DNS_CAPTURE".into()),
        "drop-invalid" => names.push("INVALID_DROP".into()),
        "dual-stack" => names.push("ISTIO_DUAL_STACK".into()),
        _ => {}
    }
    names
}

/// Resolves flags and environment into a [`Config`] and the log level. Host facts (the
/// ENVOY_USER uid, IPv6, DNS servers) are filled by [`fill_from_host`].
pub struct Resolver<'a> {
    pub env: &'a dyn Fn(&str) -> Option<String>,
    pub errors: Vec<String>,
}

impl Resolver<'_> {
    fn string(&mut self, flag: &str, given: &Option<String>, into: &mut String) {
        if let Some(v) = given {
            *into = v.clone();
            return;
        }
        for name in env_names(flag) {
            if let Some(v) = (self.env)(&name) {
                *into = v;
            }
        }
    }

    fn boolean(&mut self, flag: &str, given: Option<bool>, into: &mut bool) {
        if let Some(v) = given {
            *into = v;
            return;
        }
        for name in env_names(flag) {
            if let Some(v) = (self.env)(&name) {
                match parse_bool(&v) {
                    Ok(b) => *into = b,
                    Err(e) => self.errors.push(format!("{name}: {e}")),
                }
            }
        }
    }

    /// The configuration and log level, or every error (each naming its flag or variable).
    pub fn resolve(mut self, f: &Flags) -> Result<(Config, Level), Vec<String>> {
        let mut c = Config::default();
        if let Some(p) = &f.envoy_port {
            c.proxy_port = p.clone();
        }
        self.string(
            "inbound-capture-port",
            &f.inbound_capture_port,
            &mut c.inbound_capture_port,
        );
        self.string(
            "inbound-tunnel-port",
            &f.inbound_tunnel_port,
            &mut c.inbound_tunnel_port,
        );
        self.string("proxy-uid", &f.proxy_uid, &mut c.proxy_uid);
        self.string("proxy-gid", &f.proxy_gid, &mut c.proxy_gid);
        self.string(
            "istio-inbound-interception-mode",
            &f.inbound_interception_mode,
            &mut c.inbound_interception_mode,
        );
        self.string(
            "istio-inbound-ports",
            &f.inbound_ports,
            &mut c.inbound_ports_include,
        );
        self.string(
            "istio-local-exclude-ports",
            &f.local_exclude_ports,
            &mut c.inbound_ports_exclude,
        );
        self.string(
            "istio-exclude-interfaces",
            &f.exclude_interfaces,
            &mut c.exclude_interfaces,
        );
        self.string(
            "istio-service-cidr",
            &f.service_cidr,
            &mut c.outbound_ip_ranges_include,
        );
        self.string(
            "istio-service-exclude-cidr",
            &f.service_exclude_cidr,
            &mut c.outbound_ip_ranges_exclude,
        );
        self.string(
            "istio-outbound-ports",
            &f.outbound_ports,
            &mut c.outbound_ports_include,
        );
        self.string(
            "istio-local-outbound-ports-exclude",
            &f.local_outbound_ports_exclude,
            &mut c.outbound_ports_exclude,
        );
        self.string(
            "kube-virt-interfaces",
            &f.kube_virt_interfaces,
            &mut c.reroute_virtual_interfaces,
        );
        self.string(
            "istio-inbound-tproxy-mark",
            &f.inbound_tproxy_mark,
            &mut c.inbound_tproxy_mark,
        );
        self.string(
            "istio-inbound-tproxy-route-table",
            &f.inbound_tproxy_route_table,
            &mut c.inbound_tproxy_route_table,
        );
        self.string(
            "network-namespace",
            &f.network_namespace,
            &mut c.network_namespace,
        );
        self.booleans(f, &mut c);
        self.probe(f, &mut c);
        self.env_only(&mut c);
        let level = match &f.log_output_level {
            Some(spec) => parse_output_level(spec).unwrap_or_else(|e| {
                self.errors.push(e);
                Level::Info
            }),
            None => Level::Info,
        };
        if self.errors.is_empty() {
            Ok((c, level))
        } else {
            Err(self.errors)
        }
    }

    fn booleans(&mut self, f: &Flags, c: &mut Config) {
        self.boolean("dry-run", f.dry_run, &mut c.dry_run);
        self.boolean("skip-rule-apply", f.skip_rule_apply, &mut c.skip_rule_apply);
        self.boolean("run-validation", f.run_validation, &mut c.run_validation);
        self.boolean("redirect-dns", f.redirect_dns, &mut c.redirect_dns);
        self.boolean("drop-invalid", f.drop_invalid, &mut c.drop_invalid);
        self.boolean("dual-stack", f.dual_stack, &mut c.dual_stack);
        self.boolean("capture-all-dns", f.capture_all_dns, &mut c.capture_all_dns);
        self.boolean("cni-mode", f.cni_mode, &mut c.cni_mode);
        self.boolean("reconcile", f.reconcile, &mut c.reconcile);
        self.boolean("cleanup-only", f.cleanup_only, &mut c.cleanup_only);
        self.boolean("force-apply", f.force_apply, &mut c.force_apply);
        self.boolean("native-nftables", f.native_nftables, &mut c.native_nftables);
        self.boolean(
            "force-legacy-iptables",
            f.force_legacy_iptables,
            &mut c.force_legacy_iptables,
        );
    }

    fn probe(&mut self, f: &Flags, c: &mut Config) {
        let mut port = String::new();
        self.string("iptables-probe-port", &f.iptables_probe_port, &mut port);
        if !port.is_empty() {
            match port.parse() {
                Ok(p) => c.iptables_probe_port = p,
                Err(_) => self
                    .errors
                    .push(format!("--iptables-probe-port: {port:?} is not a port")),
            }
        }
        let mut timeout = String::new();
        self.string("probe-timeout", &f.probe_timeout, &mut timeout);
        if !timeout.is_empty() {
            match parse_duration(&timeout) {
                Ok(d) => c.probe_timeout = d,
                Err(e) => self.errors.push(format!("--probe-timeout: {e}")),
            }
        }
    }

    /// Variables with no flag.
    fn env_only(&mut self, c: &mut Config) {
        for (name, into) in [
            ("ISTIO_OUTBOUND_OWNER_GROUPS", &mut c.owner_groups_include),
            (
                "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE",
                &mut c.owner_groups_exclude,
            ),
            (
                "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR",
                &mut c.host_ipv4_loopback_cidr,
            ),
        ] {
            if let Some(v) = (self.env)(name) {
                *into = v;
            }
        }
    }
}

/// What istio-iptables reads from the host besides its flags.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Host {
    /// The uid of ENVOY_USER (default `istio-proxy`) in /etc/passwd, if any.
    pub envoy_user_uid: Option<String>,
    /// The interface addresses, in interface order.
    pub addresses: Vec<IpAddr>,
    /// /etc/resolv.conf, if readable.
    pub resolv_conf: Option<String>,
}

impl Host {
    pub fn probe(env: &dyn Fn(&str) -> Option<String>) -> Host {
        let user = env("ENVOY_USER").unwrap_or_else(|| "istio-proxy".into());
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        let addresses = nix::ifaddrs::getifaddrs()
            .map(|addrs| {
                addrs
                    .filter_map(|a| {
                        let s = a.address?;
                        if let Some(v4) = s.as_sockaddr_in() {
                            Some(IpAddr::V4(v4.ip()))
                        } else {
                            s.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        Host {
            envoy_user_uid: passwd_uid(&passwd, &user),
            addresses,
            resolv_conf: std::fs::read_to_string("/etc/resolv.conf").ok(),
        }
    }
}

fn passwd_uid(passwd: &str, user: &str) -> Option<String> {
    passwd.lines().find_map(|l| {
        let mut fields = l.split(':');
        (fields.next()? == user).then(|| fields.nth(1).map(String::from))?
    })
}

/// FillConfigFromEnvironment: the proxy uid (ENVOY_USER's, else 1337) and gid (the uid), IPv6
/// (the first non-loopback, non-link-local address is IPv6; with dual stack, any is), and the
/// DNS servers (resolv.conf) when DNS is captured per server.
pub fn fill_from_host(c: &mut Config, host: &Host) -> Result<(), String> {
    if c.proxy_uid.is_empty() {
        c.proxy_uid = host.envoy_user_uid.clone().unwrap_or_else(|| "1337".into());
    }
    if c.proxy_gid.is_empty() {
        c.proxy_gid = c.proxy_uid.clone();
    }
    c.enable_ipv6 = local_ipv6(&host.addresses, c.dual_stack)?;
    if c.redirect_dns && !c.capture_all_dns {
        let conf = host
            .resolv_conf
            .as_deref()
            .ok_or("failed to load /etc/resolv.conf")?;
        for server in nameservers(conf) {
            match server {
                IpAddr::V4(_) => c.dns_servers_v4.push(server.to_string()),
                IpAddr::V6(_) => c.dns_servers_v6.push(server.to_string()),
            }
        }
    }
    Ok(())
}

fn local_ipv6(addresses: &[IpAddr], dual_stack: bool) -> Result<bool, String> {
    let usable = addresses.iter().map(|a| match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(*a),
        v4 => *v4,
    });
    let usable: Vec<IpAddr> = usable
        .filter(|a| {
            !a.is_loopback()
                && !match a {
                    IpAddr::V4(v4) => v4.is_link_local(),
                    IpAddr::V6(v6) => {
                        v6.is_unicast_link_local()
                            || (v6.is_multicast() && (v6.segments()[0] & 0x000f) == 2)
                    }
                }
        })
        .collect();
    let first = usable.first().ok_or("no valid local IP address found")?;
    if !dual_stack {
        return Ok(first.is_ipv6());
    }
    Ok(usable.iter().any(|a| a.is_ipv6()))
}

fn nameservers(conf: &str) -> Vec<IpAddr> {
    conf.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next()? == "nameserver").then(|| words.next()?.parse().ok())?
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn passwd_and_resolv_conf() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\nistio-proxy:x:1337:1337::/home:/bin/false\n";
        assert_eq!(passwd_uid(passwd, "istio-proxy").as_deref(), Some("1337"));
        assert_eq!(passwd_uid(passwd, "nobody"), None);
        let conf = "# c\nsearch x\nnameserver 10.96.0.10\nnameserver fd00::a\noptions ndots:5\n";
        assert_eq!(
            nameservers(conf),
            [
                "10.96.0.10".parse::<IpAddr>().unwrap(),
                "fd00::a".parse().unwrap()
            ]
        );
    }

    #[test]
    fn ipv6_follows_the_first_usable_address() {
        let a = |s: &str| s.parse::<IpAddr>().unwrap();
        let v4_first = [a("127.0.0.1"), a("10.0.0.5"), a("fe80::1"), a("fd00::5")];
        assert_eq!(local_ipv6(&v4_first, false), Ok(false));
        assert_eq!(local_ipv6(&v4_first, true), Ok(true));
        let v6_only = [a("::1"), a("fe80::1"), a("fd00::5")];
        assert_eq!(local_ipv6(&v6_only, false), Ok(true));
        assert!(local_ipv6(&[a("127.0.0.1")], false).is_err());
    }
}
