//! The rules applied for real, in a fresh network namespace (root only; skipped loudly
//! otherwise): the injected pod's rules go in through iptables-restore, pass Istio's own
//! verification (`-C` for every rule, same rule count per ISTIO_ chain), capture an outbound
//! connection to the outbound port with its original destination recoverable, are not applied
//! twice, and `--cleanup-only` removes every ISTIO_ chain and jump; in TPROXY mode, the mangle
//! rules with the policy rule and local route table, once however often applied.

use remora_iptables::config::Config;
use remora_iptables::log::Log;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::process::Command;
use std::time::Duration;

fn skip(why: &str) {
    eprintln!("SKIPPED netns test: {why}");
}

fn have(program: &str) -> bool {
    Command::new(program).arg("--version").output().is_ok()
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A named network namespace, deleted on drop.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.0]);
    }
}

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The injected pod's configuration (`-p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x "" -b '*'
/// -d 15090,15021,15020`), IPv4 only.
fn pod() -> Config {
    Config {
        proxy_uid: "1337".into(),
        proxy_gid: "1337".into(),
        inbound_interception_mode: "REDIRECT".into(),
        outbound_ip_ranges_include: "*".into(),
        inbound_ports_include: "*".into(),
        inbound_ports_exclude: "15090,15021,15020".into(),
        ..Config::default()
    }
}

fn istio_lines(save: &str) -> Vec<&str> {
    save.lines().filter(|l| l.contains("ISTIO_")).collect()
}

/// Creates a namespace (lo up, a veth pair with 10.0.0.1/24) and moves this thread into it;
/// None (after saying why) when that is not possible here.
fn enter_netns(tag: &str) -> Option<Netns> {
    if !nix::unistd::geteuid().is_root() {
        skip("not root");
        return None;
    }
    for program in ["ip", "iptables", "iptables-save", "iptables-restore"] {
        if !have(program) {
            skip(&format!("{program} not found"));
            return None;
        }
    }
    let name = format!("remora-ipt-{tag}-{}", std::process::id());
    if let Err(e) = ip(&["netns", "add", &name]) {
        skip(&format!("cannot create a network namespace: {e}"));
        return None;
    }
    let ns = Netns(name);
    for args in [
        vec!["-n", &ns.0, "link", "set", "lo", "up"],
        vec![
            "-n", &ns.0, "link", "add", "veth0", "type", "veth", "peer", "name", "veth1",
        ],
        vec!["-n", &ns.0, "addr", "add", "10.0.0.1/24", "dev", "veth0"],
        vec!["-n", &ns.0, "link", "set", "veth0", "up"],
        vec!["-n", &ns.0, "link", "set", "veth1", "up"],
    ] {
        ip(&args).unwrap();
    }
    // This test's thread, and what it spawns, now live in the namespace.
    let file = std::fs::File::open(format!("/run/netns/{}", ns.0)).unwrap();
    nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
    Some(ns)
}

#[test]
fn rules_apply_capture_and_clean_up_in_a_network_namespace() {
    let Some(_ns) = enter_netns("capture") else {
        return;
    };
    assert_eq!(istio_lines(&sh("iptables-save")), Vec::<&str>::new());

    let cfg = pod();
    remora_iptables::execute(&cfg, &Log::silent()).unwrap();
    let applied = sh("iptables-save");
    let rules = remora_iptables::capture::build(&cfg).unwrap();
    for check in rules.check_v4() {
        let out = Command::new("iptables").args(&check).output().unwrap();
        assert!(
            out.status.success(),
            "missing: iptables {}\n{applied}",
            check.join(" ")
        );
    }
    let count = |chain: &str| {
        applied
            .lines()
            .filter(|l| l.starts_with(&format!("-A {chain} ")))
            .count()
    };
    assert_eq!(count("ISTIO_INBOUND"), 5, "{applied}");
    assert_eq!(count("ISTIO_OUTPUT"), 9, "{applied}");

    // An outbound connection (this test runs as root, not uid 1337) lands on 15001 with its
    // original destination recoverable (SO_ORIGINAL_DST).
    let listener = TcpListener::bind("0.0.0.0:15001").unwrap();
    let target = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 80);
    let client = TcpStream::connect_timeout(&target.into(), Duration::from_secs(5)).unwrap();
    let (mut accepted, _) = listener.accept().unwrap();
    let orig =
        nix::sys::socket::getsockopt(&accepted, nix::sys::socket::sockopt::OriginalDst).unwrap();
    let orig = SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(orig.sin_addr.s_addr)),
        u16::from_be(orig.sin_port),
    );
    assert_eq!(orig, target);
    drop(client);
    let _ = accepted.read(&mut [0u8; 1]);

    // Applied again: compatible residue, nothing added.
    remora_iptables::execute(&cfg, &Log::silent()).unwrap();
    assert_eq!(istio_lines(&sh("iptables-save")), istio_lines(&applied));

    let cleanup = Config {
        cleanup_only: true,
        ..pod()
    };
    remora_iptables::execute(&cleanup, &Log::silent()).unwrap();
    assert_eq!(istio_lines(&sh("iptables-save")), Vec::<&str>::new());
    let after = TcpStream::connect_timeout(&target.into(), Duration::from_millis(300));
    assert!(after.is_err(), "still captured after cleanup");
}

/// TPROXY mode: the mangle rules, the policy rule and the local route table; a re-run adds
/// neither rules nor a second policy rule; cleanup removes the chains.
#[test]
fn tproxy_rules_and_routes_in_a_network_namespace() {
    let Some(_ns) = enter_netns("tproxy") else {
        return;
    };
    let cfg = Config {
        inbound_interception_mode: "TPROXY".into(),
        ..pod()
    };
    remora_iptables::execute(&cfg, &Log::silent()).unwrap();
    let applied = sh("iptables-save");
    for check in remora_iptables::capture::build(&cfg).unwrap().check_v4() {
        let out = Command::new("iptables").args(&check).output().unwrap();
        assert!(
            out.status.success(),
            "missing: iptables {}\n{applied}",
            check.join(" ")
        );
    }
    assert!(applied.contains(":ISTIO_TPROXY"), "{applied}");
    remora_iptables::execute(&cfg, &Log::silent()).unwrap();
    assert_eq!(istio_lines(&sh("iptables-save")), istio_lines(&applied));
    let rules = sh("ip -4 rule show fwmark 1337 lookup 133");
    assert_eq!(rules.lines().count(), 1, "{rules}");
    assert!(sh("ip -4 route show table 133 type local").contains("default dev lo"));
    let cleanup = Config {
        cleanup_only: true,
        ..cfg
    };
    remora_iptables::execute(&cleanup, &Log::silent()).unwrap();
    assert_eq!(istio_lines(&sh("iptables-save")), Vec::<&str>::new());
}
