//! The rule set istio-iptables builds from its configuration
//! (tools/istio-iptables/pkg/capture/run.go, IptablesConfigurator.Run), rule for rule and in
//! the same order, so the restore input is byte-identical.

use crate::builder::{IP_VERSION_SPECIFIC as VERSIONED, RuleBuilder};
use crate::config::{Config, InterceptFilter, NetworkRange, separate_v4_v6, split};

pub const ISTIO_OUTPUT: &str = "ISTIO_OUTPUT";
pub const ISTIO_OUTPUT_DNS: &str = "ISTIO_OUTPUT_DNS";
pub const ISTIO_INBOUND: &str = "ISTIO_INBOUND";
pub const ISTIO_DIVERT: &str = "ISTIO_DIVERT";
pub const ISTIO_TPROXY: &str = "ISTIO_TPROXY";
pub const ISTIO_REDIRECT: &str = "ISTIO_REDIRECT";
pub const ISTIO_IN_REDIRECT: &str = "ISTIO_IN_REDIRECT";
pub const ISTIO_DROP: &str = "ISTIO_DROP";
/// In TPROXY mode, the mark on the proxy's outbound packets to the app by pod IP.
pub const OUTBOUND_MARK: &str = "1338";
/// The istio-agent DNS proxy port.
pub const DNS_PORT: &str = "15053";
const V6_LOOPBACK: &str = "::1/128";

/// Builds the rules for `cfg`. Errors are configuration errors (a bad CIDR list).
pub fn build(cfg: &Config) -> Result<RuleBuilder, String> {
    let (v4_exclude, v6_exclude) = separate_v4_v6(&cfg.outbound_ip_ranges_exclude)
        .map_err(|e| format!("--istio-service-exclude-cidr: {e}"))?;
    if v4_exclude.is_wildcard {
        return Err("invalid value for OUTBOUND_IP_RANGES_EXCLUDE".into());
    }
    let (v4_include, v6_include) = separate_v4_v6(&cfg.outbound_ip_ranges_include)
        .map_err(|e| format!("--istio-service-cidr: {e}"))?;
    let mut c = Capture {
        cfg,
        b: RuleBuilder::new(cfg.enable_ipv6),
        redirect_dns: effective_redirect_dns(cfg),
        include_loopback: v4_include.has_loopback_ip || v6_include.has_loopback_ip,
    };
    c.exclude_interfaces();
    c.kube_internal_interfaces();
    c.drop_invalid();
    c.fixed_chains();
    c.inbound_ports();
    c.b.append("OUTPUT", "nat", &["-j", ISTIO_OUTPUT]);
    c.outbound_ports_exclude();
    c.b.append_versioned(
        "127.0.0.6/32",
        "::6/128",
        ISTIO_OUTPUT,
        "nat",
        &["-o", "lo", "-s", VERSIONED, "-j", "RETURN"],
    );
    c.proxy_uids();
    c.proxy_gids();
    let owner_groups = InterceptFilter::parse(&cfg.owner_groups_include, &cfg.owner_groups_exclude);
    c.capture_by_owner_group(&owner_groups);
    if c.redirect_dns {
        c.dns();
    }
    let loopback = cfg.host_ipv4_loopback_cidr.as_str();
    c.b.append_versioned(
        loopback,
        V6_LOOPBACK,
        ISTIO_OUTPUT,
        "nat",
        &["-d", VERSIONED, "-j", "RETURN"],
    );
    for cidr in &v4_exclude.cidrs {
        c.b.append_v4(
            ISTIO_OUTPUT,
            "nat",
            &["-d", &cidr.to_string(), "-j", "RETURN"],
        );
    }
    for cidr in &v6_exclude.cidrs {
        c.b.append_v6(
            ISTIO_OUTPUT,
            "nat",
            &["-d", &cidr.to_string(), "-j", "RETURN"],
        );
    }
    for port in split(&cfg.outbound_ports_include) {
        c.b.append(
            ISTIO_OUTPUT,
            "nat",
            &["-p", "tcp", "--dport", port, "-j", ISTIO_REDIRECT],
        );
    }
    c.outbound_include(&v4_include, false);
    c.outbound_include(&v6_include, true);
    if cfg.tproxy() {
        c.tproxy_marks();
    }
    Ok(c.b)
}

/// REDIRECT_DNS without CAPTURE_ALL_DNS and without any DNS server captures nothing.
pub fn effective_redirect_dns(cfg: &Config) -> bool {
    cfg.redirect_dns
        && (cfg.capture_all_dns || !cfg.dns_servers_v4.is_empty() || !cfg.dns_servers_v6.is_empty())
}

struct Capture<'a> {
    cfg: &'a Config,
    b: RuleBuilder,
    redirect_dns: bool,
    include_loopback: bool,
}

impl Capture<'_> {
    fn exclude_interfaces(&mut self) {
        let tables: &[&str] = if self.cfg.tproxy() {
            &["nat", "mangle"]
        } else {
            &["nat"]
        };
        for table in tables {
            for nic in split(&self.cfg.exclude_interfaces) {
                self.b
                    .append("PREROUTING", table, &["-i", nic, "-j", "RETURN"]);
                self.b.append("OUTPUT", table, &["-o", nic, "-j", "RETURN"]);
            }
        }
    }

    fn kube_internal_interfaces(&mut self) {
        for nic in split(&self.cfg.reroute_virtual_interfaces) {
            self.b
                .insert("PREROUTING", "nat", 1, &["-i", nic, "-j", "RETURN"]);
        }
    }

    fn drop_invalid(&mut self) {
        if self.cfg.drop_invalid {
            self.b.append(
                "PREROUTING",
                "mangle",
                &["-m", "conntrack", "--ctstate", "INVALID", "-j", ISTIO_DROP],
            );
            self.b.append(ISTIO_DROP, "mangle", &["-j", "DROP"]);
        }
    }

    fn fixed_chains(&mut self) {
        let cfg = self.cfg;
        self.b.append(
            ISTIO_INBOUND,
            "nat",
            &[
                "-p",
                "tcp",
                "--dport",
                &cfg.inbound_tunnel_port,
                "-j",
                "RETURN",
            ],
        );
        self.b.append(
            ISTIO_REDIRECT,
            "nat",
            &["-p", "tcp", "-j", "REDIRECT", "--to-ports", &cfg.proxy_port],
        );
        self.b.append(
            ISTIO_IN_REDIRECT,
            "nat",
            &[
                "-p",
                "tcp",
                "-j",
                "REDIRECT",
                "--to-ports",
                &cfg.inbound_capture_port,
            ],
        );
    }

    fn inbound_ports(&mut self) {
        let cfg = self.cfg;
        if cfg.inbound_ports_include.is_empty() {
            return;
        }
        let mark = &cfg.inbound_tproxy_mark;
        let table = if cfg.tproxy() {
            self.b
                .append(ISTIO_DIVERT, "mangle", &["-j", "MARK", "--set-mark", mark]);
            self.b.append(ISTIO_DIVERT, "mangle", &["-j", "ACCEPT"]);
            let tproxy_mark = format!("{mark}/0xffffffff");
            self.b.append_versioned(
                &cfg.host_ipv4_loopback_cidr,
                V6_LOOPBACK,
                ISTIO_TPROXY,
                "mangle",
                &[
                    "!",
                    "-d",
                    VERSIONED,
                    "-p",
                    "tcp",
                    "-j",
                    "TPROXY",
                    "--tproxy-mark",
                    &tproxy_mark,
                    "--on-port",
                    &cfg.inbound_capture_port,
                ],
            );
            "mangle"
        } else {
            "nat"
        };
        self.b
            .append("PREROUTING", table, &["-p", "tcp", "-j", ISTIO_INBOUND]);
        if cfg.inbound_ports_include == "*" {
            for port in split(&cfg.inbound_ports_exclude) {
                self.b.append(
                    ISTIO_INBOUND,
                    table,
                    &["-p", "tcp", "--dport", port, "-j", "RETURN"],
                );
            }
            if cfg.tproxy() {
                self.b.append(
                    ISTIO_INBOUND,
                    "mangle",
                    &[
                        "-p",
                        "tcp",
                        "-m",
                        "conntrack",
                        "--ctstate",
                        "RELATED,ESTABLISHED",
                        "-j",
                        ISTIO_DIVERT,
                    ],
                );
                self.b
                    .append(ISTIO_INBOUND, "mangle", &["-p", "tcp", "-j", ISTIO_TPROXY]);
            } else {
                self.b.append(
                    ISTIO_INBOUND,
                    "nat",
                    &["-p", "tcp", "-j", ISTIO_IN_REDIRECT],
                );
            }
            return;
        }
        for port in split(&cfg.inbound_ports_include) {
            if cfg.tproxy() {
                self.b.append(
                    ISTIO_INBOUND,
                    "mangle",
                    &[
                        "-p",
                        "tcp",
                        "--dport",
                        port,
                        "-m",
                        "conntrack",
                        "--ctstate",
                        "RELATED,ESTABLISHED",
                        "-j",
                        ISTIO_DIVERT,
                    ],
                );
                self.b.append(
                    ISTIO_INBOUND,
                    "mangle",
                    &["-p", "tcp", "--dport", port, "-j", ISTIO_TPROXY],
                );
            } else {
                self.b.append(
                    ISTIO_INBOUND,
                    "nat",
                    &["-p", "tcp", "--dport", port, "-j", ISTIO_IN_REDIRECT],
                );
            }
        }
    }

    fn outbound_ports_exclude(&mut self) {
        for port in split(&self.cfg.outbound_ports_exclude) {
            self.b.append(
                ISTIO_OUTPUT,
                "nat",
                &["-p", "tcp", "--dport", port, "-j", "RETURN"],
            );
            self.b.append(
                ISTIO_OUTPUT,
                "nat",
                &["-p", "udp", "--dport", port, "-j", "RETURN"],
            );
        }
    }

    /// The proxy's own traffic: back to itself over lo (not to the loopback CIDR) goes to the
    /// inbound capture port; the rest of lo is not captured; everything else it sends returns.
    fn proxy_uids(&mut self) {
        let cfg = self.cfg;
        for uid in split(&cfg.proxy_uid) {
            self.proxy_owner("--uid-owner", uid, self.redirect_dns);
        }
    }

    fn proxy_gids(&mut self) {
        let cfg = self.cfg;
        for gid in split(&cfg.proxy_gid) {
            self.proxy_owner("--gid-owner", gid, false);
        }
    }

    /// The rules for one proxy owner (`--uid-owner` or `--gid-owner` `id`); with `skip_dns`,
    /// its TCP to port 53 over lo is not sent back to the inbound capture port either.
    fn proxy_owner(&mut self, owner: &str, id: &str, skip_dns: bool) {
        let cfg = self.cfg;
        let dns_and_tunnel = format!("53,{}", cfg.inbound_tunnel_port);
        let ports: &[&str] = if skip_dns {
            &["-m", "multiport", "!", "--dports", &dns_and_tunnel]
        } else {
            &["!", "--dport", &cfg.inbound_tunnel_port]
        };
        let mut args = vec!["-o", "lo", "!", "-d", VERSIONED, "-p", "tcp"];
        args.extend_from_slice(ports);
        args.extend_from_slice(&["-m", "owner", owner, id, "-j", ISTIO_IN_REDIRECT]);
        self.b.append_versioned(
            cfg.host_ipv4_loopback_cidr.as_str(),
            V6_LOOPBACK,
            ISTIO_OUTPUT,
            "nat",
            &args,
        );
        self.lo_return(owner, id);
        self.b.append(
            ISTIO_OUTPUT,
            "nat",
            &["-m", "owner", owner, id, "-j", "RETURN"],
        );
    }

    /// App-to-app traffic over lo is not captured, unless a loopback range is explicitly
    /// included (and, with DNS capture, except TCP port 53).
    fn lo_return(&mut self, owner: &str, id: &str) {
        if self.include_loopback {
            return;
        }
        if self.redirect_dns {
            self.b.append(
                ISTIO_OUTPUT,
                "nat",
                &[
                    "-o", "lo", "-p", "tcp", "!", "--dport", "53", "-m", "owner", "!", owner, id,
                    "-j", "RETURN",
                ],
            );
        } else {
            self.b.append(
                ISTIO_OUTPUT,
                "nat",
                &["-o", "lo", "-m", "owner", "!", owner, id, "-j", "RETURN"],
            );
        }
    }

    fn capture_by_owner_group(&mut self, filter: &InterceptFilter) {
        if filter.except {
            for group in &filter.values {
                self.b.append(
                    ISTIO_OUTPUT,
                    "nat",
                    &["-m", "owner", "--gid-owner", group, "-j", "RETURN"],
                );
            }
            return;
        }
        let mut params: Vec<&str> = Vec::new();
        for group in &filter.values {
            params.extend(["-m", "owner", "!", "--gid-owner", group]);
        }
        params.extend(["-j", "RETURN"]);
        self.b.append(ISTIO_OUTPUT, "nat", &params);
    }

    fn outbound_include(&mut self, range: &NetworkRange, v6: bool) {
        let nics = split(&self.cfg.reroute_virtual_interfaces);
        if range.is_wildcard {
            self.append_family(v6, ISTIO_OUTPUT, "nat", &["-j", ISTIO_REDIRECT]);
            for nic in nics {
                self.insert_family(v6, "PREROUTING", "nat", &["-i", nic, "-j", ISTIO_REDIRECT]);
            }
            return;
        }
        for cidr in &range.cidrs {
            let cidr = cidr.to_string();
            for nic in &nics {
                self.insert_family(
                    v6,
                    "PREROUTING",
                    "nat",
                    &["-i", nic, "-d", &cidr, "-j", ISTIO_REDIRECT],
                );
            }
            self.append_family(
                v6,
                ISTIO_OUTPUT,
                "nat",
                &["-d", &cidr, "-j", ISTIO_REDIRECT],
            );
        }
    }

    fn append_family(&mut self, v6: bool, chain: &str, table: &str, params: &[&str]) {
        if v6 {
            self.b.append_v6(chain, table, params);
        } else {
            self.b.append_v4(chain, table, params);
        }
    }

    fn insert_family(&mut self, v6: bool, chain: &str, table: &str, params: &[&str]) {
        if v6 {
            self.b.insert_v6(chain, table, 1, params);
        } else {
            self.b.insert_v4(chain, table, 1, params);
        }
    }

    fn tproxy_marks(&mut self) {
        let cfg = self.cfg;
        let mark = cfg.inbound_tproxy_mark.as_str();
        let loopback = cfg.host_ipv4_loopback_cidr.as_str();
        self.b.append(
            "PREROUTING",
            "mangle",
            &[
                "-p",
                "tcp",
                "-m",
                "mark",
                "--mark",
                mark,
                "-j",
                "CONNMARK",
                "--save-mark",
            ],
        );
        self.b.append(
            "OUTPUT",
            "mangle",
            &[
                "-p", "tcp", "-o", "lo", "-m", "mark", "--mark", mark, "-j", "RETURN",
            ],
        );
        for (owner, ids) in [
            ("--uid-owner", &cfg.proxy_uid),
            ("--gid-owner", &cfg.proxy_gid),
        ] {
            for id in split(ids) {
                self.b.append_versioned(
                    loopback,
                    V6_LOOPBACK,
                    "OUTPUT",
                    "mangle",
                    &[
                        "!",
                        "-d",
                        VERSIONED,
                        "-p",
                        "tcp",
                        "-o",
                        "lo",
                        "-m",
                        "owner",
                        owner,
                        id,
                        "-j",
                        "MARK",
                        "--set-mark",
                        OUTBOUND_MARK,
                    ],
                );
            }
        }
        self.b.append(
            "OUTPUT",
            "mangle",
            &[
                "-p",
                "tcp",
                "-m",
                "connmark",
                "--mark",
                mark,
                "-j",
                "CONNMARK",
                "--restore-mark",
            ],
        );
        self.b.insert(
            ISTIO_INBOUND,
            "mangle",
            1,
            &["-p", "tcp", "-m", "mark", "--mark", mark, "-j", "RETURN"],
        );
        self.b.insert_v4(
            ISTIO_INBOUND,
            "mangle",
            2,
            &[
                "-p",
                "tcp",
                "-s",
                "127.0.0.6/32",
                "-i",
                "lo",
                "-j",
                "RETURN",
            ],
        );
        self.b.insert_v6(
            ISTIO_INBOUND,
            "mangle",
            2,
            &["-p", "tcp", "-s", "::6/128", "-i", "lo", "-j", "RETURN"],
        );
        self.b.insert(
            ISTIO_INBOUND,
            "mangle",
            3,
            &[
                "-p",
                "tcp",
                "-i",
                "lo",
                "-m",
                "mark",
                "!",
                "--mark",
                OUTBOUND_MARK,
                "-j",
                "RETURN",
            ],
        );
    }

    /// DNS capture (SetupDNSRedir): TCP and UDP port 53 to the agent's DNS proxy, for every
    /// server or (CAPTURE_ALL_DNS) for all, and the conntrack zones that keep the two legs apart.
    fn dns(&mut self) {
        let cfg = self.cfg;
        let all = cfg.capture_all_dns;
        self.b.append("OUTPUT", "raw", &["-j", ISTIO_OUTPUT_DNS]);
        if all || !cfg.dns_servers_v4.is_empty() {
            self.b
                .append_v4(ISTIO_OUTPUT, "nat", &["-j", ISTIO_OUTPUT_DNS]);
        }
        if all || !cfg.dns_servers_v6.is_empty() {
            self.b
                .append_v6(ISTIO_OUTPUT, "nat", &["-j", ISTIO_OUTPUT_DNS]);
        }
        for (proto, to) in [("tcp", "--to-ports"), ("udp", "--to-port")] {
            if all {
                self.b.append(
                    ISTIO_OUTPUT_DNS,
                    "nat",
                    &["-p", proto, "--dport", "53", "-j", "REDIRECT", to, DNS_PORT],
                );
                continue;
            }
            for s in &cfg.dns_servers_v4 {
                let d = format!("{s}/32");
                self.b.append_v4(
                    ISTIO_OUTPUT_DNS,
                    "nat",
                    &[
                        "-p", proto, "--dport", "53", "-d", &d, "-j", "REDIRECT", to, DNS_PORT,
                    ],
                );
            }
            for s in &cfg.dns_servers_v6 {
                let d = format!("{s}/128");
                self.b.append_v6(
                    ISTIO_OUTPUT_DNS,
                    "nat",
                    &[
                        "-p", proto, "--dport", "53", "-d", &d, "-j", "REDIRECT", to, DNS_PORT,
                    ],
                );
            }
        }
        self.dns_conntrack_zones();
    }

    fn dns_conntrack_zones(&mut self) {
        let cfg = self.cfg;
        for (owner, ids) in [
            ("--uid-owner", &cfg.proxy_uid),
            ("--gid-owner", &cfg.proxy_gid),
        ] {
            for id in split(ids) {
                self.b.append(
                    ISTIO_OUTPUT_DNS,
                    "raw",
                    &[
                        "-p", "udp", "--dport", "53", "-m", "owner", owner, id, "-j", "CT",
                        "--zone", "1",
                    ],
                );
                self.b.append(
                    ISTIO_OUTPUT_DNS,
                    "raw",
                    &[
                        "-p", "udp", "--sport", DNS_PORT, "-m", "owner", owner, id, "-j", "CT",
                        "--zone", "2",
                    ],
                );
            }
        }
        if cfg.capture_all_dns {
            self.b.append("PREROUTING", "raw", &["-j", ISTIO_INBOUND]);
            self.b.append(
                ISTIO_OUTPUT_DNS,
                "raw",
                &["-p", "udp", "--dport", "53", "-j", "CT", "--zone", "2"],
            );
            self.b.append(
                ISTIO_INBOUND,
                "raw",
                &["-p", "udp", "--sport", "53", "-j", "CT", "--zone", "1"],
            );
            return;
        }
        if !cfg.dns_servers_v4.is_empty() {
            self.b
                .append_v4("PREROUTING", "raw", &["-j", ISTIO_INBOUND]);
        }
        for s in &cfg.dns_servers_v4 {
            let a = format!("{s}/32");
            self.b.append_v4(
                ISTIO_OUTPUT_DNS,
                "raw",
                &[
                    "-p", "udp", "--dport", "53", "-d", &a, "-j", "CT", "--zone", "2",
                ],
            );
            self.b.append_v4(
                ISTIO_INBOUND,
                "raw",
                &[
                    "-p", "udp", "--sport", "53", "-s", &a, "-j", "CT", "--zone", "1",
                ],
            );
        }
        if !cfg.dns_servers_v6.is_empty() {
            self.b
                .append_v6("PREROUTING", "raw", &["-j", ISTIO_INBOUND]);
        }
        for s in &cfg.dns_servers_v6 {
            let a = format!("{s}/128");
            self.b.append_v6(
                ISTIO_OUTPUT_DNS,
                "raw",
                &[
                    "-p", "udp", "--dport", "53", "-d", &a, "-j", "CT", "--zone", "2",
                ],
            );
            self.b.append_v6(
                ISTIO_INBOUND,
                "raw",
                &[
                    "-p", "udp", "--sport", "53", "-s", &a, "-j", "CT", "--zone", "1",
                ],
            );
        }
    }
}
