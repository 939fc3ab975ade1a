//! istio-iptables' dry-run goldens (tools/istio-iptables/pkg/capture/testdata, copied to
//! tests/data/istio-iptables): one test per golden, each with the configuration Istio's
//! run_test.go gives that case. Istio compares after trimming surrounding whitespace; remora's
//! dry-run output is compared byte for byte (the goldens end with one newline, as the
//! output does).

use remora_iptables::config::Config;
use remora_iptables::log::Log;

/// Istio's constructTestConfig.
fn base() -> Config {
    Config {
        proxy_uid: "1337".into(),
        proxy_gid: "1337".into(),
        dry_run: true,
        ..Config::default()
    }
}

fn golden(name: &str) -> String {
    let path = format!(
        "{}/../tests/data/istio-iptables/{name}.golden",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn check(name: &str, change: impl FnOnce(&mut Config)) {
    let mut cfg = base();
    change(&mut cfg);
    cfg.validate().unwrap_or_else(|e| panic!("{name}: {e:?}"));
    let got = remora_iptables::execute(&cfg, &Log::silent()).unwrap();
    let want = golden(name);
    if got != want {
        panic!("{name}: dry run differs from the golden\n--- want\n{want}--- got\n{got}");
    }
}

macro_rules! goldens {
    ($($test:ident = $name:literal => |$c:ident| $body:block)*) => {
        $(#[test] fn $test() { check($name, |$c: &mut Config| $body); })*

        /// Every golden in the directory has a test above.
        #[test]
        fn every_golden_is_tested() {
            let tested = [$($name),*];
            let dir = format!("{}/../tests/data/istio-iptables", env!("CARGO_MANIFEST_DIR"));
            let mut count = 0;
            for entry in std::fs::read_dir(&dir).unwrap() {
                let file = entry.unwrap().file_name().into_string().unwrap();
                if let Some(name) = file.strip_suffix(".golden") {
                    assert!(tested.contains(&name), "{name}.golden has no test");
                    count += 1;
                }
            }
            assert_eq!(count, 27);
        }
    };
}

fn v4(servers: &[&str]) -> Vec<String> {
    servers.iter().map(|s| s.to_string()).collect()
}

goldens! {
    ipv6_empty_inbound_ports = "ipv6-empty-inbound-ports" => |c| {
        c.inbound_ports_include = "".into();
        c.enable_ipv6 = true;
    }
    ip_range = "ip-range" => |c| {
        c.outbound_ip_ranges_exclude = "1.1.0.0/16".into();
        c.outbound_ip_ranges_include = "9.9.0.0/16".into();
        c.redirect_dns = true;
        c.enable_ipv6 = false;
        c.proxy_gid = "1,2".into();
        c.proxy_uid = "3,4".into();
        c.dns_servers_v4 = v4(&["127.0.0.53"]);
    }
    tproxy = "tproxy" => |c| {
        c.inbound_interception_mode = "TPROXY".into();
        c.inbound_ports_include = "*".into();
        c.outbound_ip_ranges_exclude = "1.1.0.0/16".into();
        c.outbound_ip_ranges_include = "9.9.0.0/16".into();
        c.redirect_dns = true;
        c.dns_servers_v4 = v4(&["127.0.0.53"]);
        c.proxy_gid = "1337".into();
        c.proxy_uid = "1337".into();
        c.exclude_interfaces = "not-istio-nic".into();
        c.enable_ipv6 = true;
    }
    ipv6_inbound_ports = "ipv6-inbound-ports" => |c| {
        c.inbound_ports_include = "4000,5000".into();
        c.enable_ipv6 = true;
    }
    ipv6_virt_interfaces = "ipv6-virt-interfaces" => |c| {
        c.inbound_ports_include = "4000,5000".into();
        c.reroute_virtual_interfaces = "eth0,eth1".into();
        c.enable_ipv6 = true;
    }
    ipv6_ipnets = "ipv6-ipnets" => |c| {
        c.inbound_ports_include = "4000,5000".into();
        c.inbound_ports_exclude = "6000,7000,".into();
        c.reroute_virtual_interfaces = "eth0,eth1".into();
        c.outbound_ip_ranges_exclude = "2001:db8::/32".into();
        c.outbound_ip_ranges_include = "2001:db8::/32".into();
        c.enable_ipv6 = true;
    }
    ipv6_uid_gid = "ipv6-uid-gid" => |c| {
        c.inbound_ports_include = "4000,5000".into();
        c.inbound_ports_exclude = "6000,7000".into();
        c.reroute_virtual_interfaces = "eth0,eth1".into();
        c.proxy_gid = "1,2".into();
        c.proxy_uid = "3,4".into();
        c.enable_ipv6 = true;
        c.outbound_ip_ranges_exclude = "2001:db8::/32".into();
        c.outbound_ip_ranges_include = "2001:db8::/32".into();
    }
    ipv6_outbound_ports = "ipv6-outbound-ports" => |c| {
        c.inbound_ports_include = "".into();
        c.outbound_ports_include = "32000,31000".into();
        c.enable_ipv6 = true;
    }
    empty = "empty" => |_c| {}
    kube_virt_interfaces = "kube-virt-interfaces" => |c| {
        c.reroute_virtual_interfaces = "eth1,eth2".into();
        c.outbound_ip_ranges_include = "*".into();
    }
    ipnets = "ipnets" => |c| {
        c.outbound_ip_ranges_include = "10.0.0.0/8".into();
    }
    ipnets_with_kube_virt_interfaces = "ipnets-with-kube-virt-interfaces" => |c| {
        c.reroute_virtual_interfaces = "eth1,eth2".into();
        c.outbound_ip_ranges_include = "10.0.0.0/8".into();
    }
    inbound_ports_include = "inbound-ports-include" => |c| {
        c.inbound_ports_include = "32000,31000".into();
    }
    inbound_ports_wildcard = "inbound-ports-wildcard" => |c| {
        c.inbound_ports_include = "*".into();
    }
    inbound_ports_tproxy = "inbound-ports-tproxy" => |c| {
        c.inbound_ports_include = "32000,31000".into();
        c.inbound_interception_mode = "TPROXY".into();
    }
    inbound_ports_wildcard_tproxy = "inbound-ports-wildcard-tproxy" => |c| {
        c.inbound_ports_include = "*".into();
        c.inbound_interception_mode = "TPROXY".into();
    }
    dns_uid_gid = "dns-uid-gid" => |c| {
        c.redirect_dns = true;
        c.dns_servers_v4 = v4(&["127.0.0.53"]);
        c.dns_servers_v6 = v4(&["::127.0.0.53"]);
        c.proxy_gid = "1,2".into();
        c.proxy_uid = "3,4".into();
        c.enable_ipv6 = true;
    }
    ipv6_dns_uid_gid = "ipv6-dns-uid-gid" => |c| {
        c.enable_ipv6 = true;
        c.redirect_dns = true;
        c.proxy_gid = "1,2".into();
        c.proxy_uid = "3,4".into();
    }
    outbound_owner_groups = "outbound-owner-groups" => |c| {
        c.owner_groups_include = "java,202".into();
    }
    outbound_owner_groups_exclude = "outbound-owner-groups-exclude" => |c| {
        c.owner_groups_exclude = "888,ftp".into();
    }
    ipv6_dns_outbound_owner_groups = "ipv6-dns-outbound-owner-groups" => |c| {
        c.enable_ipv6 = true;
        c.redirect_dns = true;
        c.owner_groups_include = "java,202".into();
    }
    ipv6_dns_outbound_owner_groups_exclude = "ipv6-dns-outbound-owner-groups-exclude" => |c| {
        c.enable_ipv6 = true;
        c.redirect_dns = true;
        c.owner_groups_exclude = "888,ftp".into();
    }
    outbound_ports_include = "outbound-ports-include" => |c| {
        c.outbound_ports_include = "32000,31000".into();
    }
    loopback_outbound_iprange = "loopback-outbound-iprange" => |c| {
        c.outbound_ip_ranges_include = "127.1.2.3/32".into();
        c.redirect_dns = true;
        c.dns_servers_v4 = v4(&["127.0.0.53"]);
        c.enable_ipv6 = false;
        c.proxy_gid = "1,2".into();
        c.proxy_uid = "3,4".into();
    }
    basic_exclude_nic = "basic-exclude-nic" => |c| {
        c.exclude_interfaces = "not-istio-nic".into();
    }
    drop_invalid = "drop-invalid" => |c| {
        c.drop_invalid = true;
    }
    host_ipv4_loopback_cidr = "host-ipv4-loopback-cidr" => |c| {
        c.host_ipv4_loopback_cidr = "127.0.0.1/8".into();
    }
}
