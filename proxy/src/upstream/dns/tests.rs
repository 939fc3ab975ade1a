//! The resolver against DNS servers on 127.0.0.1.

use super::wire::{self, RData, build::response};
use super::*;
use crate::model::dns_resolver::DnsResolver;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a test server answers: (rcode, records) for (name, qtype).
type Zone = Arc<dyn Fn(&str, u16) -> (u8, Vec<(String, u32, RData)>) + Send + Sync>;

fn answer(zone: &Zone, query: &[u8]) -> Option<Vec<u8>> {
    let q = wire::parse(query).ok()?;
    let (name, qtype) = q.question?;
    let (rcode, records) = zone(&name, qtype);
    let records: Vec<(&str, u32, RData)> = records
        .iter()
        .map(|(n, t, d)| (n.as_str(), *t, d.clone()))
        .collect();
    Some(response(query, rcode, &records))
}

/// A UDP server (and a TCP one on the same port); `udp_truncates` makes every UDP answer an
/// empty truncated one. Every question seen is logged with its transport.
struct Server {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// A question a test server saw: transport, name, type.
type Seen = (&'static str, String, u16);

async fn server(zone: Zone, udp_truncates: bool, wrong_id_first: bool) -> Server {
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = udp.local_addr().unwrap();
    let tcp = tokio::net::TcpListener::bind(addr).await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (z, log) = (zone.clone(), seen.clone());
    tokio::spawn(async move {
        let mut buf = vec![0u8; 512];
        while let Ok((n, peer)) = udp.recv_from(&mut buf).await {
            let q = wire::parse(&buf[..n]).unwrap();
            let (name, qtype) = q.question.unwrap();
            log.lock().unwrap().push(("udp", name, qtype));
            let mut reply = answer(&z, &buf[..n]).unwrap();
            if udp_truncates {
                reply = response(&buf[..n], 0, &[]);
                reply[2] |= 0x02;
            }
            if wrong_id_first {
                let mut spoof = reply.clone();
                spoof[0] ^= 0xff;
                udp.send_to(&spoof, peer).await.unwrap();
                udp.send_to(b"garbage", peer).await.unwrap();
            }
            udp.send_to(&reply, peer).await.unwrap();
        }
    });
    let (z, log) = (zone, seen.clone());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = tcp.accept().await {
            let len = s.read_u16().await.unwrap();
            let mut q = vec![0u8; usize::from(len)];
            s.read_exact(&mut q).await.unwrap();
            let (name, qtype) = wire::parse(&q).unwrap().question.unwrap();
            log.lock().unwrap().push(("tcp", name, qtype));
            let reply = answer(&z, &q).unwrap();
            s.write_all(&(reply.len() as u16).to_be_bytes())
                .await
                .unwrap();
            s.write_all(&reply).await.unwrap();
        }
    });
    Server { addr, seen }
}

fn simple_zone() -> Zone {
    Arc::new(|name: &str, qtype| match (name, qtype) {
        ("svc.example", wire::TYPE_A) => (
            0,
            vec![
                (
                    "svc.example".into(),
                    60,
                    RData::Cname("real.example".into()),
                ),
                (
                    "real.example".into(),
                    7,
                    RData::Ip("10.0.0.7".parse().unwrap()),
                ),
            ],
        ),
        ("v4only.example", wire::TYPE_A) => (
            0,
            vec![(
                "v4only.example".into(),
                9,
                RData::Ip("10.0.0.9".parse().unwrap()),
            )],
        ),
        ("svc.example" | "v4only.example", _) => (0, vec![]),
        ("broken.example", _) => (2, vec![]),
        _ => (wire::RCODE_NXDOMAIN, vec![]),
    })
}

fn config(servers: &[SocketAddr]) -> DnsResolver {
    DnsResolver {
        resolvers: servers.to_vec(),
        query_timeout: Duration::from_secs(1),
        query_tries: 1,
        ..DnsResolver::default()
    }
}

fn v4(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[tokio::test]
async fn udp_answer_with_ttl_ignoring_mismatched_ids() {
    let s = server(simple_zone(), false, true).await;
    let got = resolve(
        "svc.example",
        DnsFamily::V4Only,
        &config(&[s.addr]),
        &System::default(),
    )
    .await
    .unwrap();
    assert_eq!(got, vec![(v4("10.0.0.7"), 7)]);
    assert_eq!(
        *s.seen.lock().unwrap(),
        [("udp", "svc.example".to_string(), wire::TYPE_A)]
    );
}

#[tokio::test]
async fn truncated_udp_retries_over_tcp_and_tcp_only_skips_udp() {
    let s = server(simple_zone(), true, false).await;
    let cfg = config(&[s.addr]);
    let got = resolve("svc.example", DnsFamily::V4Only, &cfg, &System::default()).await;
    assert_eq!(got.unwrap(), vec![(v4("10.0.0.7"), 7)]);
    let tcp_only = DnsResolver {
        use_tcp: true,
        ..cfg
    };
    resolve(
        "svc.example",
        DnsFamily::V4Only,
        &tcp_only,
        &System::default(),
    )
    .await
    .unwrap();
    let seen: Vec<&str> = s.seen.lock().unwrap().iter().map(|s| s.0).collect();
    assert_eq!(seen, ["udp", "tcp", "tcp"]);
}

#[tokio::test]
async fn auto_falls_back_to_v4_and_search_domains_apply() {
    let s = server(simple_zone(), false, false).await;
    let sys = System {
        resolv: conf::resolv_conf("search example\noptions ndots:2\n"),
        hosts: String::new(),
    };
    let got = resolve("v4only", DnsFamily::Auto, &config(&[s.addr]), &sys).await;
    assert_eq!(got.unwrap(), vec![(v4("10.0.0.9"), 9)]);
    let names: Vec<(String, u16)> = s
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|(_, n, t)| (n.clone(), *t))
        .collect();
    assert_eq!(
        names,
        [
            ("v4only.example".into(), wire::TYPE_AAAA),
            ("v4only".into(), wire::TYPE_AAAA),
            ("v4only.example".into(), wire::TYPE_A),
        ]
    );
    let no_search = DnsResolver {
        no_default_search_domain: true,
        ..config(&[s.addr])
    };
    let got = resolve("v4only", DnsFamily::V4Only, &no_search, &sys).await;
    assert_eq!(got.unwrap(), vec![]);
}

#[tokio::test]
async fn failures_and_empty_answers() {
    let s = server(simple_zone(), false, false).await;
    let cfg = config(&[s.addr]);
    let sys = System::default();
    let nx = resolve("nothing.example", DnsFamily::V4Only, &cfg, &sys).await;
    assert_eq!(nx.unwrap(), vec![]);
    let servfail = resolve("broken.example", DnsFamily::V4Only, &cfg, &sys).await;
    assert!(matches!(servfail, Err(DnsError::Rcode(2))), "{servfail:?}");
}

#[tokio::test]
async fn a_silent_server_times_out_and_the_next_answers() {
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let s = server(simple_zone(), false, false).await;
    // Real time: a try's timeout long enough for the answering server on a loaded machine.
    let patient = |servers: &[SocketAddr]| DnsResolver {
        query_timeout: Duration::from_secs(3),
        ..config(servers)
    };
    let cfg = patient(&[silent.local_addr().unwrap(), s.addr]);
    let got = resolve("svc.example", DnsFamily::V4Only, &cfg, &System::default()).await;
    assert_eq!(got.unwrap(), vec![(v4("10.0.0.7"), 7)]);
    let alone = config(&[silent.local_addr().unwrap()]);
    let got = resolve("svc.example", DnsFamily::V4Only, &alone, &System::default()).await;
    assert!(matches!(got, Err(DnsError::Timeout)), "{got:?}");
}

#[tokio::test]
async fn hosts_file_and_localhost_need_no_server() {
    let cfg = config(&[]);
    let sys = System {
        resolv: ResolvConf::default(),
        hosts: "10.1.1.1 web\n::2 web\n".into(),
    };
    let got = resolve("web", DnsFamily::V4Preferred, &cfg, &sys)
        .await
        .unwrap();
    assert_eq!(got, vec![(v4("10.1.1.1"), 0)]);
    let got = resolve("localhost", DnsFamily::Auto, &cfg, &sys)
        .await
        .unwrap();
    assert_eq!(got, vec![(v4("::1"), 0)]);
    let got = resolve("10.2.2.2", DnsFamily::V6Only, &cfg, &sys).await;
    assert_eq!(got.unwrap(), vec![(v4("10.2.2.2"), 0)]);
}

#[test]
fn nameserver_choice() {
    let resolv = conf::resolv_conf("nameserver 10.0.0.53\n");
    let own: SocketAddr = "10.9.9.9:5353".parse().unwrap();
    let cfg = |fallback| DnsResolver {
        resolvers: vec![own],
        use_resolvers_as_fallback: fallback,
        ..DnsResolver::default()
    };
    assert_eq!(nameservers(&cfg(false), &resolv), [own]);
    assert_eq!(
        nameservers(&cfg(true), &resolv),
        ["10.0.0.53:53".parse().unwrap()]
    );
    assert_eq!(nameservers(&cfg(true), &ResolvConf::default()), [own]);
    assert_eq!(
        nameservers(&DnsResolver::default(), &ResolvConf::default()),
        ["127.0.0.1:53".parse().unwrap()]
    );
}

#[test]
fn family_selection() {
    let ips: Vec<IpAddr> = vec![v4("::1"), v4("127.0.0.1")];
    assert_eq!(pick_family(ips.clone(), DnsFamily::Auto), [v4("::1")]);
    assert_eq!(
        pick_family(ips.clone(), DnsFamily::V4Only),
        [v4("127.0.0.1")]
    );
    assert_eq!(
        pick_family(ips.clone(), DnsFamily::V4Preferred),
        [v4("127.0.0.1")]
    );
    assert_eq!(
        pick_family(vec![v4("::1")], DnsFamily::V4Preferred),
        [v4("::1")]
    );
    assert!(pick_family(vec![v4("::1")], DnsFamily::V4Only).is_empty());
    assert_eq!(pick_family(ips, DnsFamily::All).len(), 2);
}
