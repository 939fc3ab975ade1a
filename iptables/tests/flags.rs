//! The command line: the real istio-init arguments of an injected pod (Istio's
//! hello.yaml.injected, copied to tests/data/istio-iptables), the environment variables, and
//! the dry runs of that pod's rules and of their cleanup.

use clap::Parser;
use remora_iptables::Flags;
use remora_iptables::config::Config;
use remora_iptables::flags::{Host, Resolver, fill_from_host};
use remora_iptables::log::{Level, Log};
use std::collections::HashMap;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    flags: Flags,
}

fn parse(args: &[&str]) -> Result<Flags, clap::Error> {
    Cli::try_parse_from(std::iter::once("iptables").chain(args.iter().copied())).map(|c| c.flags)
}

fn unquote(s: &str) -> String {
    let s = s.trim();
    for q in ['"', '\''] {
        if let Some(inner) = s.strip_prefix(q).and_then(|r| r.strip_suffix(q)) {
            return inner.to_string();
        }
    }
    s.to_string()
}

/// The istio-init container's args after `istio-iptables`.
fn injected_args() -> Vec<String> {
    let path = format!(
        "{}/../tests/data/istio-iptables/hello.yaml.injected",
        env!("CARGO_MANIFEST_DIR")
    );
    let yaml = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = yaml.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.trim() == "- istio-iptables")
        .expect("istio-init args");
    lines[start + 1..]
        .iter()
        .take_while(|l| l.trim_start().starts_with("- "))
        .map(|l| unquote(l.trim_start().strip_prefix("- ").unwrap()))
        .collect()
}

fn resolve(flags: &Flags, env: &[(&str, &str)]) -> Result<(Config, Level), Vec<String>> {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let lookup = move |name: &str| env.get(name).cloned();
    Resolver {
        env: &lookup,
        errors: Vec::new(),
    }
    .resolve(flags)
}

fn pod_host() -> Host {
    Host {
        envoy_user_uid: None,
        addresses: vec!["127.0.0.1".parse().unwrap(), "10.244.0.17".parse().unwrap()],
        resolv_conf: Some("nameserver 10.96.0.10\n".into()),
    }
}

#[test]
fn injected_init_container_args() {
    let args = injected_args();
    assert_eq!(
        args,
        [
            "-p",
            "15001",
            "-z",
            "15006",
            "-u",
            "1337",
            "-m",
            "REDIRECT",
            "-i",
            "*",
            "-x",
            "",
            "-b",
            "*",
            "-d",
            "15090,15021,15020",
            "--log_output_level=default:info"
        ]
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let flags = parse(&args).unwrap();
    let (mut cfg, level) = resolve(&flags, &[]).unwrap();
    assert_eq!(level, Level::Info);
    fill_from_host(&mut cfg, &pod_host()).unwrap();
    let want = Config {
        proxy_port: "15001".into(),
        inbound_capture_port: "15006".into(),
        proxy_uid: "1337".into(),
        proxy_gid: "1337".into(),
        inbound_interception_mode: "REDIRECT".into(),
        outbound_ip_ranges_include: "*".into(),
        outbound_ip_ranges_exclude: "".into(),
        inbound_ports_include: "*".into(),
        inbound_ports_exclude: "15090,15021,15020".into(),
        ..Config::default()
    };
    assert_eq!(cfg, want);
    assert_eq!(cfg.validate(), Ok(()));
}

#[test]
fn long_forms_equal_short_forms() {
    let short = parse(&[
        "-p",
        "1",
        "-z",
        "2",
        "-e",
        "3",
        "-u",
        "4",
        "-g",
        "5",
        "-m",
        "TPROXY",
        "-b",
        "6",
        "-d",
        "7",
        "-c",
        "eth9",
        "-i",
        "10.0.0.0/8",
        "-x",
        "10.1.0.0/16",
        "-q",
        "8",
        "-o",
        "9",
        "-k",
        "eth1",
        "-t",
        "10",
        "-r",
        "11",
        "-n",
    ])
    .unwrap();
    let long = parse(&[
        "--envoy-port=1",
        "--inbound-capture-port=2",
        "--inbound-tunnel-port=3",
        "--proxy-uid=4",
        "--proxy-gid=5",
        "--istio-inbound-interception-mode=TPROXY",
        "--istio-inbound-ports=6",
        "--istio-local-exclude-ports=7",
        "--istio-exclude-interfaces=eth9",
        "--istio-service-cidr=10.0.0.0/8",
        "--istio-service-exclude-cidr=10.1.0.0/16",
        "--istio-outbound-ports=8",
        "--istio-local-outbound-ports-exclude=9",
        "--kube-virt-interfaces=eth1",
        "--istio-inbound-tproxy-mark=10",
        "--istio-inbound-tproxy-route-table=11",
        "--dry-run",
    ])
    .unwrap();
    assert_eq!(short, long);
    assert_eq!(long.dry_run, Some(true));
    assert_eq!(long.envoy_port.as_deref(), Some("1"));
}

#[test]
fn booleans_take_pflag_forms() {
    let f = parse(&[
        "--redirect-dns",
        "--capture-all-dns=false",
        "--cleanup",
        "--reconcile=true",
    ])
    .unwrap();
    assert_eq!(f.redirect_dns, Some(true));
    assert_eq!(f.capture_all_dns, Some(false));
    assert_eq!(f.cleanup_only, Some(true));
    assert_eq!(f.reconcile, Some(true));
    assert!(parse(&["--dry-run=maybe"]).is_err());
    assert!(parse(&["--no-such-flag"]).is_err());
}

#[test]
fn environment_sets_what_flags_do_not() {
    let flags = parse(&["-z", "16006"]).unwrap();
    let (cfg, _) = resolve(
        &flags,
        &[
            ("INBOUND_CAPTURE_PORT", "17006"),
            ("ISTIO_INBOUND_PORTS", "*"),
            ("ISTIO_LOCAL_EXCLUDE_PORTS", "15020"),
            ("ENVOY_PORT", "9999"),
            ("REDIRECT_DNS", "false"),
            ("ISTIO_META_DNS_CAPTURE", "true"),
            ("INVALID_DROP", "1"),
            ("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", "888"),
            ("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", "127.0.0.1/8"),
        ],
    )
    .unwrap();
    assert_eq!(cfg.inbound_capture_port, "16006", "the flag wins");
    assert_eq!(cfg.inbound_ports_include, "*");
    assert_eq!(cfg.inbound_ports_exclude, "15020");
    assert_eq!(cfg.proxy_port, "15001", "--envoy-port has no variable");
    assert!(
        cfg.redirect_dns,
        "ISTIO_META_DNS_CAPTURE overrides REDIRECT_DNS"
    );
    assert!(cfg.drop_invalid);
    assert_eq!(cfg.owner_groups_exclude, "888");
    assert_eq!(cfg.host_ipv4_loopback_cidr, "127.0.0.1/8");
    let errors = resolve(&parse(&[]).unwrap(), &[("DRY_RUN", "yes")]).unwrap_err();
    assert_eq!(errors, ["DRY_RUN: invalid boolean \"yes\""]);
}

#[test]
fn host_fills_uid_ipv6_and_dns_servers() {
    let (mut cfg, _) = resolve(&parse(&["--redirect-dns"]).unwrap(), &[]).unwrap();
    let host = Host {
        envoy_user_uid: Some("1500".into()),
        addresses: vec!["::1".parse().unwrap(), "fd00::17".parse().unwrap()],
        resolv_conf: Some("nameserver fd00::a\nnameserver 10.96.0.10\n".into()),
    };
    fill_from_host(&mut cfg, &host).unwrap();
    assert_eq!(
        (cfg.proxy_uid.as_str(), cfg.proxy_gid.as_str()),
        ("1500", "1500")
    );
    assert!(cfg.enable_ipv6);
    assert_eq!(cfg.dns_servers_v4, ["10.96.0.10"]);
    assert_eq!(cfg.dns_servers_v6, ["fd00::a"]);
}

fn pod_config(extra: &[&str]) -> Config {
    let mut args = injected_args();
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push("--dry-run".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (mut cfg, _) = resolve(&parse(&args).unwrap(), &[]).unwrap();
    fill_from_host(&mut cfg, &pod_host()).unwrap();
    cfg
}

const POD_NAT: &str = "\
-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A ISTIO_INBOUND -p tcp --dport 15090 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15021 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15020 -j RETURN
-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
-A ISTIO_OUTPUT -j ISTIO_REDIRECT
";

/// The default sidecar's rules: every inbound port but the tunnel and the three sidecar ports,
/// every outbound address.
#[test]
fn injected_pod_dry_run() {
    let got = remora_iptables::execute(&pod_config(&[]), &Log::silent()).unwrap();
    let want = format!(
        "iptables-save\nip6tables-save\n* nat\n-N ISTIO_INBOUND\n-N ISTIO_REDIRECT\n-N ISTIO_IN_REDIRECT\n-N ISTIO_OUTPUT\n{POD_NAT}COMMIT\niptables-save\n"
    );
    assert_eq!(got, want);
}

/// Istio's cleanup: the jumps and built-in-chain rules deleted in reverse order, then each
/// ISTIO_ chain flushed and deleted.
#[test]
fn injected_pod_cleanup_dry_run() {
    let got = remora_iptables::execute(&pod_config(&["--cleanup"]), &Log::silent()).unwrap();
    let want = "\
iptables-save
ip6tables-save
iptables -t nat -D ISTIO_OUTPUT -j ISTIO_REDIRECT
iptables -t nat -D ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT
iptables -t nat -D ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
iptables -t nat -D OUTPUT -j ISTIO_OUTPUT
iptables -t nat -D ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT
iptables -t nat -D PREROUTING -p tcp -j ISTIO_INBOUND
iptables -t nat -F ISTIO_OUTPUT
iptables -t nat -X ISTIO_OUTPUT
iptables -t nat -F ISTIO_INBOUND
iptables -t nat -X ISTIO_INBOUND
iptables -t nat -F ISTIO_IN_REDIRECT
iptables -t nat -X ISTIO_IN_REDIRECT
iptables -t nat -F ISTIO_REDIRECT
iptables -t nat -X ISTIO_REDIRECT
iptables-save
";
    assert_eq!(got, want);
}

#[test]
fn skip_rule_apply_does_nothing() {
    let got =
        remora_iptables::execute(&pod_config(&["--skip-rule-apply"]), &Log::silent()).unwrap();
    assert_eq!(got, "");
}
