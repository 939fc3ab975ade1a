//! The stub resolver of STRICT_DNS and LOGICAL_DNS clusters, after Envoy's c-ares resolver:
//! `/etc/hosts` first, then A/AAAA queries to the configured (or `/etc/resolv.conf`'s)
//! nameservers over UDP (TCP when truncated or configured), with the search domains, ids
//! checked, a timeout per try and `query_tries` tries per nameserver. Answers carry their TTLs.

pub mod conf;
pub mod wire;

use crate::model::cluster::DnsFamily;
use crate::model::dns_resolver::DnsResolver;
use conf::ResolvConf;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wire::{TYPE_A, TYPE_AAAA};

/// An address and its TTL in seconds (0: no TTL, as for `/etc/hosts`).
pub type Answer = Vec<(IpAddr, u32)>;

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("DNS query timed out")]
    Timeout,
    #[error("DNS server answered with rcode {0}")]
    Rcode(u8),
    #[error("DNS I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Wire(#[from] wire::WireError),
    #[error("DNS answer does not match the query")]
    Mismatch,
}

/// The system files the resolver reads (each resolution reads them again).
#[derive(Debug, Clone, Default)]
pub struct System {
    pub resolv: ResolvConf,
    pub hosts: String,
}

impl System {
    /// `/etc/resolv.conf` and `/etc/hosts`; a missing file is empty.
    pub async fn read() -> Self {
        let read =
            |p: &'static str| async move { tokio::fs::read_to_string(p).await.unwrap_or_default() };
        Self {
            resolv: conf::resolv_conf(&read("/etc/resolv.conf").await),
            hosts: read("/etc/hosts").await,
        }
    }
}

/// Resolve `name` for `family` (Envoy's `dns_lookup_family`): AUTO asks for IPv6 and falls
/// back to IPv4, V4_PREFERRED the other way round, ALL asks for both at once.
pub async fn resolve(
    name: &str,
    family: DnsFamily,
    cfg: &DnsResolver,
    sys: &System,
) -> Result<Answer, DnsError> {
    if let Ok(ip) = name.trim_start_matches('[').trim_end_matches(']').parse() {
        return Ok(vec![(ip, 0)]);
    }
    let from_hosts = pick_family(local_addresses(name, &sys.hosts), family);
    if !from_hosts.is_empty() {
        return Ok(from_hosts.into_iter().map(|ip| (ip, 0)).collect());
    }
    let stages: &[&[u16]] = match family {
        DnsFamily::V4Only => &[&[TYPE_A]],
        DnsFamily::V6Only => &[&[TYPE_AAAA]],
        DnsFamily::Auto => &[&[TYPE_AAAA], &[TYPE_A]],
        DnsFamily::V4Preferred => &[&[TYPE_A], &[TYPE_AAAA]],
        DnsFamily::All => &[&[TYPE_A, TYPE_AAAA]],
    };
    let servers = nameservers(cfg, &sys.resolv);
    let names = conf::candidates(name, &sys.resolv, cfg.no_default_search_domain);
    let mut last = Ok(Vec::new());
    for qtypes in stages {
        last = search(&names, qtypes, &servers, cfg).await;
        if last.as_ref().is_ok_and(|a| !a.is_empty()) {
            break;
        }
    }
    last
}

/// `/etc/hosts`' addresses for `name`; `localhost` is the loopback addresses when the file
/// does not name it (as c-ares does).
fn local_addresses(name: &str, hosts: &str) -> Vec<IpAddr> {
    let found = conf::hosts_lookup(hosts, name);
    if found.is_empty() && name.trim_end_matches('.').eq_ignore_ascii_case("localhost") {
        return vec![Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()];
    }
    found
}

/// Envoy's `dns_lookup_family` over a list of addresses.
pub fn pick_family(ips: Vec<IpAddr>, family: DnsFamily) -> Vec<IpAddr> {
    let v4: Vec<IpAddr> = ips.iter().copied().filter(IpAddr::is_ipv4).collect();
    let v6: Vec<IpAddr> = ips.iter().copied().filter(IpAddr::is_ipv6).collect();
    let (first, second) = match family {
        DnsFamily::V4Only => (v4, Vec::new()),
        DnsFamily::V6Only => (v6, Vec::new()),
        DnsFamily::Auto => (v6, v4),
        DnsFamily::V4Preferred => (v4, v6),
        DnsFamily::All => (ips, Vec::new()),
    };
    let mut out = if first.is_empty() { second } else { first };
    out.dedup();
    out
}

/// The nameservers to ask: the configured `resolvers` (or the system's, when there are none or
/// they are only a fallback and the system has some); 127.0.0.1:53 when nothing names one.
pub fn nameservers(cfg: &DnsResolver, resolv: &ResolvConf) -> Vec<SocketAddr> {
    let system = &resolv.nameservers;
    let chosen =
        if cfg.resolvers.is_empty() || (cfg.use_resolvers_as_fallback && !system.is_empty()) {
            system
        } else {
            &cfg.resolvers
        };
    if chosen.is_empty() {
        vec![SocketAddr::from((Ipv4Addr::LOCALHOST, 53))]
    } else {
        chosen.clone()
    }
}

/// The first candidate name with addresses of `qtypes`; a name that does not exist (or has no
/// such records) moves on to the next, any other failure ends the search.
async fn search(
    names: &[String],
    qtypes: &[u16],
    servers: &[SocketAddr],
    cfg: &DnsResolver,
) -> Result<Answer, DnsError> {
    for name in names {
        let mut found = Vec::new();
        let mut failure = None;
        for &qtype in qtypes {
            match exchange(name, qtype, servers, cfg).await {
                Ok(addrs) => found.extend(addrs),
                Err(e) => failure = Some(e),
            }
        }
        if !found.is_empty() {
            return Ok(found);
        }
        if let Some(e) = failure {
            return Err(e);
        }
    }
    Ok(Vec::new())
}

/// One question, asked of each server in turn for `query_tries` rounds until one answers.
/// NXDOMAIN and an empty answer are no addresses; SERVFAIL and the like try the next server.
async fn exchange(
    name: &str,
    qtype: u16,
    servers: &[SocketAddr],
    cfg: &DnsResolver,
) -> Result<Answer, DnsError> {
    let start = if cfg.rotate_nameservers {
        fastrand::usize(..servers.len().max(1))
    } else {
        0
    };
    let mut last = DnsError::Timeout;
    for attempt in 0..cfg.query_tries as usize * servers.len() {
        let server = servers[(start + attempt) % servers.len()];
        let id = fastrand::u16(..);
        let query = wire::query(id, name, qtype)?;
        let reply = tokio::time::timeout(cfg.query_timeout, ask(server, &query, id, cfg.use_tcp));
        match reply.await {
            Ok(Ok(m)) if m.rcode == 0 => return Ok(wire::addresses(&m, name, qtype)),
            Ok(Ok(m)) if m.rcode == wire::RCODE_NXDOMAIN => return Ok(Vec::new()),
            Ok(Ok(m)) => last = DnsError::Rcode(m.rcode),
            Ok(Err(e)) => last = e,
            Err(_) => last = DnsError::Timeout,
        }
        tracing::debug!(%server, name, qtype, "DNS try failed: {last}");
    }
    Err(last)
}

/// Ask one server: over UDP, again over TCP if the answer is truncated; or over TCP only.
async fn ask(
    server: SocketAddr,
    query: &[u8],
    id: u16,
    tcp: bool,
) -> Result<wire::Message, DnsError> {
    if !tcp {
        let m = ask_udp(server, query, id).await?;
        if !m.truncated {
            return Ok(m);
        }
    }
    ask_tcp(server, query, id).await
}

/// Whether `m` answers `query` (id, and the same question).
fn answers(m: &wire::Message, query: &[u8], id: u16) -> bool {
    let asked = wire::parse(query).ok().and_then(|q| q.question);
    m.is_response && m.id == id && m.question == asked
}

async fn ask_udp(server: SocketAddr, query: &[u8], id: u16) -> Result<wire::Message, DnsError> {
    let local: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = tokio::net::UdpSocket::bind(local).await?;
    socket.connect(server).await?;
    socket.send(query).await?;
    let mut buf = vec![0u8; 65_535];
    loop {
        let n = socket.recv(&mut buf).await?;
        // A reply that is not for this query (or not a message) is dropped: keep waiting.
        match wire::parse(&buf[..n]) {
            Ok(m) if answers(&m, query, id) => return Ok(m),
            _ => continue,
        }
    }
}

async fn ask_tcp(server: SocketAddr, query: &[u8], id: u16) -> Result<wire::Message, DnsError> {
    let mut stream = tokio::net::TcpStream::connect(server).await?;
    let len = u16::try_from(query.len()).map_err(|_| DnsError::Mismatch)?;
    let mut framed = len.to_be_bytes().to_vec();
    framed.extend_from_slice(query);
    stream.write_all(&framed).await?;
    let len = stream.read_u16().await?;
    let mut buf = vec![0u8; usize::from(len)];
    stream.read_exact(&mut buf).await?;
    let m = wire::parse(&buf)?;
    if !answers(&m, query, id) {
        return Err(DnsError::Mismatch);
    }
    Ok(m)
}

#[cfg(test)]
mod tests;
