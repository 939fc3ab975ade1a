//! istio-iptables' configuration (tools/common/config/config.go): the same fields, defaults
//! and validation. Lists stay comma-separated strings, as istio-iptables keeps them, so the
//! rules carry the values exactly as given.

use std::net::IpAddr;
use std::time::Duration;

/// The ISTIO_OUTBOUND_OWNER_GROUPS limit on included groups (they become one rule).
const MAX_OWNER_GROUPS_INCLUDE: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub proxy_port: String,
    pub inbound_capture_port: String,
    pub inbound_tunnel_port: String,
    pub proxy_uid: String,
    pub proxy_gid: String,
    pub inbound_interception_mode: String,
    pub inbound_tproxy_mark: String,
    pub inbound_tproxy_route_table: String,
    pub inbound_ports_include: String,
    pub inbound_ports_exclude: String,
    pub owner_groups_include: String,
    pub owner_groups_exclude: String,
    pub outbound_ports_include: String,
    pub outbound_ports_exclude: String,
    pub outbound_ip_ranges_include: String,
    pub outbound_ip_ranges_exclude: String,
    pub reroute_virtual_interfaces: String,
    pub exclude_interfaces: String,
    pub iptables_probe_port: u16,
    pub probe_timeout: Duration,
    pub dry_run: bool,
    pub skip_rule_apply: bool,
    pub run_validation: bool,
    pub redirect_dns: bool,
    pub drop_invalid: bool,
    pub capture_all_dns: bool,
    pub enable_ipv6: bool,
    pub dns_servers_v4: Vec<String>,
    pub dns_servers_v6: Vec<String>,
    pub network_namespace: String,
    pub cni_mode: bool,
    pub dual_stack: bool,
    pub host_ipv4_loopback_cidr: String,
    pub reconcile: bool,
    pub cleanup_only: bool,
    pub force_apply: bool,
    pub native_nftables: bool,
    pub force_legacy_iptables: bool,
}

impl Default for Config {
    /// istio-iptables' DefaultConfig(); ProxyUID/ProxyGID are filled later from the
    /// environment (ENVOY_USER), as FillConfigFromEnvironment does.
    fn default() -> Self {
        Config {
            proxy_port: "15001".into(),
            inbound_capture_port: "15006".into(),
            inbound_tunnel_port: "15008".into(),
            proxy_uid: String::new(),
            proxy_gid: String::new(),
            inbound_interception_mode: String::new(),
            inbound_tproxy_mark: "1337".into(),
            inbound_tproxy_route_table: "133".into(),
            inbound_ports_include: String::new(),
            inbound_ports_exclude: String::new(),
            owner_groups_include: "*".into(),
            owner_groups_exclude: String::new(),
            outbound_ports_include: String::new(),
            outbound_ports_exclude: String::new(),
            outbound_ip_ranges_include: String::new(),
            outbound_ip_ranges_exclude: String::new(),
            reroute_virtual_interfaces: String::new(),
            exclude_interfaces: String::new(),
            iptables_probe_port: 15002,
            probe_timeout: Duration::from_secs(5),
            dry_run: false,
            skip_rule_apply: false,
            run_validation: false,
            redirect_dns: false,
            drop_invalid: false,
            capture_all_dns: false,
            enable_ipv6: false,
            dns_servers_v4: Vec::new(),
            dns_servers_v6: Vec::new(),
            network_namespace: String::new(),
            cni_mode: false,
            dual_stack: false,
            host_ipv4_loopback_cidr: "127.0.0.1/32".into(),
            reconcile: false,
            cleanup_only: false,
            force_apply: false,
            native_nftables: false,
            force_legacy_iptables: false,
        }
    }
}

/// Splits a comma-separated list, dropping empty elements (istio-iptables' config.Split).
pub fn split(s: &str) -> Vec<&str> {
    s.split(',').filter(|e| !e.is_empty()).collect()
}

impl Config {
    pub fn tproxy(&self) -> bool {
        self.inbound_interception_mode == "TPROXY"
    }

    /// Every error in the configuration, each naming its flag. istio-iptables checks the owner
    /// groups and the loopback CIDR; remora also refuses what iptables would reject later
    /// (ports, marks) and what it does not implement.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errors = Vec::new();
        self.validate_values(&mut errors);
        self.validate_supported(&mut errors);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    fn validate_values(&self, errors: &mut Vec<String>) {
        let filter = InterceptFilter::parse(&self.owner_groups_include, &self.owner_groups_exclude);
        if !filter.except && filter.values.len() > MAX_OWNER_GROUPS_INCLUDE {
            errors.push(format!(
                "ISTIO_OUTBOUND_OWNER_GROUPS: number of owner groups whose outgoing traffic should be \
                 redirected to Envoy cannot exceed {MAX_OWNER_GROUPS_INCLUDE}, got {}",
                filter.values.len()
            ));
        }
        if let Err(e) = validate_loopback_cidr(&self.host_ipv4_loopback_cidr) {
            errors.push(format!("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR: {e}"));
        }
        for (flag, value) in [
            ("--envoy-port", &self.proxy_port),
            ("--inbound-capture-port", &self.inbound_capture_port),
            ("--inbound-tunnel-port", &self.inbound_tunnel_port),
        ] {
            port(flag, value, errors);
        }
        for (flag, list) in [
            ("--istio-local-exclude-ports", &self.inbound_ports_exclude),
            ("--istio-outbound-ports", &self.outbound_ports_include),
            (
                "--istio-local-outbound-ports-exclude",
                &self.outbound_ports_exclude,
            ),
        ] {
            split(list).into_iter().for_each(|p| port(flag, p, errors));
        }
        if self.inbound_ports_include != "*" {
            split(&self.inbound_ports_include)
                .into_iter()
                .for_each(|p| port("--istio-inbound-ports", p, errors));
        }
        for (flag, list) in [
            ("--proxy-uid", &self.proxy_uid),
            ("--proxy-gid", &self.proxy_gid),
        ] {
            for id in split(list) {
                if id.parse::<u32>().is_err() {
                    errors.push(format!("{flag}: {id:?} is not a numeric id"));
                }
            }
        }
        for (flag, value) in [
            ("--istio-inbound-tproxy-mark", &self.inbound_tproxy_mark),
            (
                "--istio-inbound-tproxy-route-table",
                &self.inbound_tproxy_route_table,
            ),
        ] {
            if value.parse::<u32>().is_err() {
                errors.push(format!("{flag}: {value:?} is not a number"));
            }
        }
        if !matches!(
            self.inbound_interception_mode.as_str(),
            "" | "REDIRECT" | "TPROXY"
        ) {
            errors.push(format!(
                "--istio-inbound-interception-mode: {:?} is neither REDIRECT nor TPROXY",
                self.inbound_interception_mode
            ));
        }
        for (flag, list) in [
            ("--istio-service-cidr", &self.outbound_ip_ranges_include),
            (
                "--istio-service-exclude-cidr",
                &self.outbound_ip_ranges_exclude,
            ),
        ] {
            if let Err(e) = separate_v4_v6(list) {
                errors.push(format!("{flag}: {e}"));
            }
        }
        if self.outbound_ip_ranges_exclude == "*" {
            errors.push("--istio-service-exclude-cidr: \"*\" is not a valid exclusion".into());
        }
    }

    fn validate_supported(&self, errors: &mut Vec<String>) {
        let unsupported = [
            (
                self.run_validation,
                "--run-validation: the iptables validation probe is not implemented",
            ),
            (
                self.native_nftables,
                "--native-nftables: native nftables rules are not implemented; remora programs them through iptables-nft",
            ),
            (
                self.cni_mode,
                "--cni-mode: remora iptables runs as the init container only",
            ),
            (
                !self.network_namespace.is_empty(),
                "--network-namespace: remora iptables runs in its own network namespace only",
            ),
        ];
        for (set, message) in unsupported {
            if set {
                errors.push(message.to_string());
            }
        }
    }
}

fn port(flag: &str, value: &str, errors: &mut Vec<String>) {
    if value.parse::<u16>().is_err() {
        errors.push(format!("{flag}: {value:?} is not a port"));
    }
}

fn validate_loopback_cidr(cidr: &str) -> Result<(), String> {
    let p = Prefix::parse(cidr).map_err(|e| format!("failed to parse CIDR {cidr}: {e}"))?;
    match p.addr {
        IpAddr::V4(a) if a.is_loopback() => {}
        other => {
            return Err(format!(
                "expected valid IPv4 loopback address in CIDR {cidr}; found {other}"
            ));
        }
    }
    if !(8..=32).contains(&p.bits) {
        return Err(format!(
            "expected CIDR {cidr} to have mask in range [8, 32]; found {}",
            p.bits
        ));
    }
    Ok(())
}

/// A CIDR as Go's netip.ParsePrefix reads it: the address as written (not masked) and the
/// prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    pub addr: IpAddr,
    pub bits: u8,
}

impl Prefix {
    pub fn parse(s: &str) -> Result<Prefix, String> {
        let (addr, bits) = s
            .split_once('/')
            .ok_or_else(|| format!("netip.ParsePrefix({s:?}): no '/'"))?;
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("netip.ParsePrefix({s:?}): bad address {addr:?}"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let bits = bits
            .parse::<u8>()
            .ok()
            .filter(|b| {
                *b <= max && !bits.starts_with('+') && (bits == "0" || !bits.starts_with('0'))
            })
            .ok_or_else(|| format!("netip.ParsePrefix({s:?}): bad bits after slash: {bits:?}"))?;
        Ok(Prefix { addr, bits })
    }
}

impl std::fmt::Display for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.bits)
    }
}

/// The IPv4 or IPv6 part of an outbound CIDR list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkRange {
    pub is_wildcard: bool,
    pub cidrs: Vec<Prefix>,
    pub has_loopback_ip: bool,
}

/// Splits a CIDR list (or `*`) into its IPv4 and IPv6 ranges.
pub fn separate_v4_v6(list: &str) -> Result<(NetworkRange, NetworkRange), String> {
    if list == "*" {
        let all = NetworkRange {
            is_wildcard: true,
            ..Default::default()
        };
        return Ok((all.clone(), all));
    }
    let (mut v4, mut v6) = (NetworkRange::default(), NetworkRange::default());
    for item in split(list) {
        let p = Prefix::parse(item)?;
        let range = if p.addr.is_ipv4() { &mut v4 } else { &mut v6 };
        range.cidrs.push(p);
        range.has_loopback_ip |= p.addr.is_loopback();
    }
    Ok((v4, v6))
}

/// Which owner groups' outbound traffic is captured: all but `values` (`except`) or only
/// `values`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterceptFilter {
    pub values: Vec<String>,
    pub except: bool,
}

impl InterceptFilter {
    pub fn parse(include: &str, exclude: &str) -> InterceptFilter {
        if include == "*" {
            InterceptFilter {
                values: split(exclude).into_iter().map(String::from).collect(),
                except: true,
            }
        } else {
            InterceptFilter {
                values: split(include).into_iter().map(String::from).collect(),
                except: false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_drops_empty_elements() {
        assert_eq!(split("6000,7000,"), ["6000", "7000"]);
        assert!(split("").is_empty());
    }

    #[test]
    fn prefixes_keep_the_address_as_written() {
        assert_eq!(
            Prefix::parse("127.0.0.1/8").unwrap().to_string(),
            "127.0.0.1/8"
        );
        assert_eq!(
            Prefix::parse("2001:db8::/32").unwrap().to_string(),
            "2001:db8::/32"
        );
        assert!(Prefix::parse("10.0.0.0").is_err());
        assert!(Prefix::parse("10.0.0.0/33").is_err());
        assert!(Prefix::parse("10.0.0.0/08").is_err());
    }

    #[test]
    fn ranges_split_by_family() {
        let (v4, v6) = separate_v4_v6("10.0.0.0/8,fd00::/64,127.1.2.3/32").unwrap();
        assert_eq!(v4.cidrs.len(), 2);
        assert!(v4.has_loopback_ip);
        assert_eq!(v6.cidrs.len(), 1);
        assert!(!v6.has_loopback_ip);
        assert!(separate_v4_v6("*").unwrap().0.is_wildcard);
        assert!(separate_v4_v6("10.0.0.0/8,bogus").is_err());
    }

    #[test]
    fn validation_names_every_bad_flag() {
        let cfg = Config {
            proxy_port: "x".into(),
            inbound_interception_mode: "MAGIC".into(),
            host_ipv4_loopback_cidr: "10.0.0.1/8".into(),
            outbound_ip_ranges_exclude: "*".into(),
            run_validation: true,
            ..Config::default()
        };
        let errors = cfg.validate().unwrap_err();
        for needle in [
            "--envoy-port",
            "--istio-inbound-interception-mode",
            "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR",
            "--istio-service-exclude-cidr",
            "--run-validation",
        ] {
            assert!(
                errors.iter().any(|e| e.contains(needle)),
                "{needle}: {errors:?}"
            );
        }
        let ok = Config {
            proxy_uid: "1337".into(),
            proxy_gid: "1337".into(),
            inbound_ports_include: "*".into(),
            ..Config::default()
        };
        assert_eq!(ok.validate(), Ok(()));
    }

    #[test]
    fn owner_group_filter() {
        let f = InterceptFilter::parse("*", "888,ftp");
        assert!(f.except);
        assert_eq!(f.values, ["888", "ftp"]);
        let f = InterceptFilter::parse("java,202", "ignored");
        assert!(!f.except);
        assert_eq!(f.values, ["java", "202"]);
    }
}
