//! What istio-iptables sets up besides iptables (tools/common/tproxy): with IPv6, the `::6`
//! address on lo (the inbound passthrough source); in TPROXY mode, a policy rule sending
//! packets marked with the TPROXY mark to the route table, whose one route delivers
//! everything locally. Run through `ip`; "File exists" counts as done for addresses and routes, and
//! a policy rule already listed is not added again.

use crate::config::Config;
use crate::deps::exec;
use crate::log::Log;

/// The `ip` invocations `cfg` needs, in order.
pub fn commands(cfg: &Config) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    if cfg.enable_ipv6 {
        out.push(s(&["-6", "addr", "add", "::6/128", "dev", "lo"]));
    }
    if cfg.inbound_ports_include.is_empty() || !cfg.tproxy() {
        return out;
    }
    let (mark, table) = (&cfg.inbound_tproxy_mark, &cfg.inbound_tproxy_route_table);
    let families: &[&str] = if cfg.enable_ipv6 {
        &["-4", "-6"]
    } else {
        &["-4"]
    };
    for f in families {
        out.push(s(&[f, "rule", "add", "fwmark", mark, "lookup", table]));
    }
    for f in families {
        out.push(s(&[
            f, "route", "add", "local", "default", "dev", "lo", "table", table,
        ]));
    }
    out
}

/// Runs [`commands`].
pub fn configure(cfg: &Config, log: &Log) -> Result<(), String> {
    for args in commands(cfg) {
        if args[1] == "rule" && rule_exists(&args) {
            continue;
        }
        log.info(&format!("Running command: ip {}", args.join(" ")));
        match exec("ip", &args, None) {
            Ok(_) => {}
            Err(e) if args[1] != "rule" && e.contains("File exists") => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A re-run must not stack a second identical policy rule (each gets its own priority).
fn rule_exists(add: &[String]) -> bool {
    let mut show = add.to_vec();
    show[2] = "show".into();
    exec("ip", &show, None).is_ok_and(|out| !out.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tproxy_routes_per_family() {
        let cfg = Config {
            inbound_interception_mode: "TPROXY".into(),
            inbound_ports_include: "*".into(),
            enable_ipv6: true,
            ..Config::default()
        };
        let cmds: Vec<String> = commands(&cfg).iter().map(|c| c.join(" ")).collect();
        assert_eq!(
            cmds,
            [
                "-6 addr add ::6/128 dev lo",
                "-4 rule add fwmark 1337 lookup 133",
                "-6 rule add fwmark 1337 lookup 133",
                "-4 route add local default dev lo table 133",
                "-6 route add local default dev lo table 133",
            ]
        );
        let redirect = Config {
            inbound_ports_include: "*".into(),
            ..Config::default()
        };
        assert!(commands(&redirect).is_empty());
    }
}
