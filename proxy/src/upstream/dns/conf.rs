//! The system's resolver configuration, pure: `/etc/resolv.conf` (`nameserver`, `search`,
//! `domain`, `options ndots:`) and `/etc/hosts`, parsed as c-ares parses them.

use std::net::{IpAddr, SocketAddr};

/// What `/etc/resolv.conf` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvConf {
    pub nameservers: Vec<SocketAddr>,
    pub search: Vec<String>,
    pub ndots: u32,
}

impl Default for ResolvConf {
    fn default() -> Self {
        Self {
            nameservers: Vec::new(),
            search: Vec::new(),
            ndots: 1,
        }
    }
}

/// Parse resolv.conf text. Unknown lines and options are skipped, as the system resolver does;
/// the last `search`/`domain` line wins.
pub fn resolv_conf(text: &str) -> ResolvConf {
    let mut conf = ResolvConf::default();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or("");
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => {
                if let Some(ip) = words.next().and_then(nameserver_ip) {
                    conf.nameservers.push(SocketAddr::new(ip, 53));
                }
            }
            Some("search") => conf.search = words.map(domain).collect(),
            Some("domain") => conf.search = words.next().map(domain).into_iter().collect(),
            Some("options") => {
                for opt in words {
                    if let Some(n) = opt.strip_prefix("ndots:").and_then(|n| n.parse().ok()) {
                        conf.ndots = u32::min(n, 15);
                    }
                }
            }
            _ => {}
        }
    }
    conf
}

/// A nameserver address; an IPv6 zone (`fe80::1%eth0`) is dropped.
fn nameserver_ip(s: &str) -> Option<IpAddr> {
    s.split('%').next()?.parse().ok()
}

fn domain(s: &str) -> String {
    s.trim_end_matches('.').to_ascii_lowercase()
}

/// The addresses `/etc/hosts` gives `name` (case-insensitive, names and aliases).
pub fn hosts_lookup(text: &str, name: &str) -> Vec<IpAddr> {
    let name = name.trim_end_matches('.');
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut words = line.split_whitespace();
        let Some(ip) = words.next().and_then(|w| w.parse::<IpAddr>().ok()) else {
            continue;
        };
        if words.any(|w| w.trim_end_matches('.').eq_ignore_ascii_case(name)) && !out.contains(&ip) {
            out.push(ip);
        }
    }
    out
}

/// The names to query for `name`, in order (c-ares' search rules): a name ending in a dot is
/// only itself; a name with at least `ndots` dots is tried as is before the search domains,
/// otherwise after them; `no_search` keeps only the name as is.
pub fn candidates(name: &str, conf: &ResolvConf, no_search: bool) -> Vec<String> {
    if let Some(absolute) = name.strip_suffix('.') {
        return vec![absolute.to_string()];
    }
    if no_search || conf.search.is_empty() {
        return vec![name.to_string()];
    }
    let searched = conf
        .search
        .iter()
        .filter(|d| !d.is_empty())
        .map(|d| format!("{name}.{d}"));
    let dots = name.matches('.').count() as u32;
    if dots >= conf.ndots {
        std::iter::once(name.to_string()).chain(searched).collect()
    } else {
        searched.chain(std::iter::once(name.to_string())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_resolv_conf() {
        let c = resolv_conf(
            "# comment\nnameserver 10.0.0.2\nnameserver fe80::1%eth0 # zone\nnameserver bogus\n\
             domain old.example\nsearch NS.svc.cluster.local svc.cluster.local.\n\
             options timeout:2 ndots:5 attempts:3\n",
        );
        assert_eq!(
            c.nameservers,
            vec![
                "10.0.0.2:53".parse().unwrap(),
                "[fe80::1]:53".parse().unwrap()
            ]
        );
        assert_eq!(c.search, ["ns.svc.cluster.local", "svc.cluster.local"]);
        assert_eq!(c.ndots, 5);
        assert_eq!(resolv_conf(""), ResolvConf::default());
        assert_eq!(resolv_conf("options ndots:99").ndots, 15);
    }

    #[test]
    fn hosts_file_names_and_aliases() {
        let hosts = "127.0.0.1 localhost\n::1 localhost ip6-localhost\n10.1.1.1 Web web.alias # c\n\
                     # 10.2.2.2 web\nbad line\n";
        assert_eq!(
            hosts_lookup(hosts, "localhost"),
            vec![
                "127.0.0.1".parse::<IpAddr>().unwrap(),
                "::1".parse().unwrap()
            ]
        );
        assert_eq!(
            hosts_lookup(hosts, "web.ALIAS."),
            vec!["10.1.1.1".parse::<IpAddr>().unwrap()]
        );
        assert!(hosts_lookup(hosts, "other").is_empty());
    }

    #[test]
    fn search_order_follows_ndots() {
        let conf = ResolvConf {
            nameservers: vec![],
            search: vec!["a.local".into(), "b.local".into()],
            ndots: 2,
        };
        assert_eq!(
            candidates("svc", &conf, false),
            ["svc.a.local", "svc.b.local", "svc"]
        );
        assert_eq!(
            candidates("x.y.z", &conf, false),
            ["x.y.z", "x.y.z.a.local", "x.y.z.b.local"]
        );
        assert_eq!(candidates("svc.", &conf, false), ["svc"]);
        assert_eq!(candidates("svc", &conf, true), ["svc"]);
    }
}
