//! Load balancers: RING_HASH and MAGLEV with the route's hash policies (header, cookie,
//! source IP), and locality-weighted balancing.

use crate::sources::Source;
use crate::support::*;
use std::collections::HashMap;
use std::net::SocketAddr;

fn proxy(hosts: &[SocketAddr], cluster_extra: &str, route_extra: &str) -> String {
    let vhosts = format!(
        "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {{prefix: \"/\"}}\n                route: {{cluster: backend{route_extra}}}\n"
    );
    bootstrap(
        &http_listener("main", "", &vhosts),
        &cluster("backend", hosts, cluster_extra),
    )
}

async fn upstreams(n: usize) -> Vec<Upstream> {
    let mut v = Vec::new();
    for i in 0..n {
        v.push(upstream(&format!("u{i}")).await);
    }
    v
}

async fn ring_hash_keeps_a_header_on_one_host(source: Source) {
    let us = upstreams(3).await;
    let addrs: Vec<_> = us.iter().map(|u| u.addr).collect();
    let r = source
        .start(&proxy(
            &addrs,
            "    lb_policy: RING_HASH\n    ring_hash_lb_config: {minimum_ring_size: 512}\n",
            ", hash_policy: [{header: {header_name: x-user}}]",
        ))
        .await;
    let addr = r.addr("main");
    let mut owner: HashMap<String, String> = HashMap::new();
    for round in 0..3 {
        for u in 0..20 {
            let user = format!("user-{u}");
            let resp = get_with(addr, "x", "/", &[("x-user", &user)]).await;
            let host = resp.header("x-upstream").unwrap().to_string();
            if round == 0 {
                owner.insert(user, host);
            } else {
                assert_eq!(owner[&user], host, "{user} moved");
            }
        }
    }
    let distinct: std::collections::HashSet<_> = owner.values().collect();
    assert!(distinct.len() >= 2, "20 users on one host: {owner:?}");
}

async fn maglev_generates_a_sticky_cookie_and_honours_it(source: Source) {
    let us = upstreams(3).await;
    let addrs: Vec<_> = us.iter().map(|u| u.addr).collect();
    let r = source
        .start(&proxy(
            &addrs,
            "    lb_policy: MAGLEV\n",
            ", hash_policy: [{cookie: {name: sticky, ttl: 3600s, path: /}}]",
        ))
        .await;
    let addr = r.addr("main");
    let first = get(addr, "x", "/").await;
    let set = first
        .header("set-cookie")
        .expect("a generated cookie")
        .to_string();
    assert!(
        set.starts_with("sticky=\"") && set.ends_with("\"; Max-Age=3600; Path=/; HttpOnly"),
        "{set}"
    );
    let value = set.split(';').next().unwrap().to_string();
    let host = first.header("x-upstream").unwrap().to_string();
    for _ in 0..10 {
        let resp = get_with(addr, "x", "/", &[("cookie", &value)]).await;
        assert_eq!(resp.header("x-upstream").unwrap(), host);
        assert!(resp.header("set-cookie").is_none(), "the cookie was sent");
    }
    // Source IP hashing: every request from 127.0.0.1 lands on one host.
    let r = source
        .start(&proxy(
            &addrs,
            "    lb_policy: MAGLEV\n",
            ", hash_policy: [{connection_properties: {source_ip: true}}]",
        ))
        .await;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..10 {
        let resp = get(r.addr("main"), "x", "/").await;
        seen.insert(resp.header("x-upstream").unwrap().to_string());
    }
    assert_eq!(seen.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn locality_weights_split_traffic() {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let ep = |u: &Upstream| {
        format!(
            "        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}}}\n",
            u.addr.port()
        )
    };
    let clusters = format!(
        "  - name: backend\n    type: STATIC\n    connect_timeout: 1s\n    common_lb_config: {{locality_weighted_lb_config: {{}}}}\n    load_assignment:\n      cluster_name: backend\n      endpoints:\n      - locality: {{zone: z1}}\n        load_balancing_weight: 1\n        lb_endpoints:\n{}      - locality: {{zone: z2}}\n        load_balancing_weight: 3\n        lb_endpoints:\n{}",
        ep(&a),
        ep(&b)
    );
    let vhosts = "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {prefix: \"/\"}\n                route: {cluster: backend}\n";
    let r = Remora::start(&bootstrap(&http_listener("main", "", vhosts), &clusters)).await;
    let mut to_a = 0;
    for _ in 0..200 {
        if get(r.addr("main"), "x", "/").await.header("x-upstream") == Some("a") {
            to_a += 1;
        }
    }
    // 1 : 3 → a quarter: 50 of 200, give or take four standard deviations (~6 each).
    assert!(
        (26..=74).contains(&to_a),
        "{to_a} of 200 to the weight-1 locality"
    );
}

crate::across_sources!(
    ring_hash_keeps_a_header_on_one_host,
    maglev_generates_a_sticky_cookie_and_honours_it,
);
