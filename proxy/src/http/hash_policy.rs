//! The route's `hash_policy` evaluated for a request (Envoy's `HashPolicyImpl::generateHash`):
//! each policy that finds its key contributes xxHash64 of it, combined by rotate-and-xor;
//! `terminal` stops at the first hash. A cookie policy with a `ttl` whose cookie is absent
//! generates the cookie (from the connection's addresses, as Envoy does) and asks for a
//! `Set-Cookie` on the response.

use crate::model::hash_policy::{HashKey, HashPolicy};
use crate::upstream::hash::xx;
use http::HeaderValue;
use http::request::Parts;
use std::net::SocketAddr;

/// What the request hashed to, and the cookie to set on the response, if any.
#[derive(Debug, Default)]
pub struct RequestHash {
    pub hash: Option<u64>,
    pub set_cookie: Option<HeaderValue>,
}

/// The connection addresses a generated cookie is derived from.
pub struct Addresses {
    /// The client address as the connection manager resolved it (`x-forwarded-for` aware).
    pub client: SocketAddr,
    pub connection_remote: SocketAddr,
    pub connection_local: SocketAddr,
}

pub fn compute(policies: &[HashPolicy], parts: &Parts, addrs: &Addresses) -> RequestHash {
    let mut out = RequestHash::default();
    for p in policies {
        if let Some(h) = evaluate(p, parts, addrs, &mut out.set_cookie) {
            let old = out.hash.map_or(0, |v| v.rotate_left(1));
            out.hash = Some(old ^ h);
        }
        if p.terminal && out.hash.is_some() {
            break;
        }
    }
    out
}

fn evaluate(
    p: &HashPolicy,
    parts: &Parts,
    addrs: &Addresses,
    set_cookie: &mut Option<HeaderValue>,
) -> Option<u64> {
    match &p.key {
        HashKey::Header { name, rewrite } => {
            let mut values: Vec<std::borrow::Cow<'_, [u8]>> = parts
                .headers
                .get_all(name)
                .iter()
                .map(|v| match rewrite {
                    Some((re, sub)) => std::borrow::Cow::Owned(
                        re.replace_all(&String::from_utf8_lossy(v.as_bytes()), sub.as_str())
                            .into_owned()
                            .into_bytes(),
                    ),
                    None => std::borrow::Cow::Borrowed(v.as_bytes()),
                })
                .collect();
            match values.len() {
                0 => None,
                1 => Some(xx(&values[0])),
                // Several values: sorted, each chained into the next as the seed.
                _ => {
                    values.sort();
                    Some(
                        values
                            .iter()
                            .fold(0, |seed, v| xxhash_rust::xxh64::xxh64(v, seed)),
                    )
                }
            }
        }
        HashKey::Cookie {
            name,
            ttl,
            path,
            attributes,
        } => {
            if let Some(v) = cookie(parts, name) {
                return Some(xx(v.as_bytes()));
            }
            let ttl = (*ttl)?;
            let value = format!(
                "{:016x}",
                xx(format!("{}{}", addrs.connection_remote, addrs.connection_local).as_bytes())
            );
            let mut c = format!("{name}=\"{value}\"");
            if !ttl.is_zero() {
                c.push_str(&format!("; Max-Age={}", ttl.as_secs()));
            }
            if !path.is_empty() {
                c.push_str(&format!("; Path={path}"));
            }
            for (n, v) in attributes {
                if v.is_empty() {
                    c.push_str(&format!("; {n}"));
                } else {
                    c.push_str(&format!("; {n}={v}"));
                }
            }
            c.push_str("; HttpOnly");
            *set_cookie = HeaderValue::from_str(&c).ok();
            Some(xx(value.as_bytes()))
        }
        HashKey::SourceIp => Some(xx(addrs.client.ip().to_string().as_bytes())),
        HashKey::QueryParameter(name) => {
            let q = parts.uri.query()?;
            q.split('&').find_map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (k == name).then(|| xx(v.as_bytes()))
            })
        }
    }
}

/// A cookie's value from the request's `cookie` headers (quotes removed).
fn cookie<'a>(parts: &'a Parts, name: &str) -> Option<&'a str> {
    parts
        .headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name).then(|| v.trim_matches('"'))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn addrs() -> Addresses {
        Addresses {
            client: "10.1.2.3:5555".parse().unwrap(),
            connection_remote: "10.1.2.3:5555".parse().unwrap(),
            connection_local: "10.0.0.1:8080".parse().unwrap(),
        }
    }

    fn policy(key: HashKey, terminal: bool) -> HashPolicy {
        HashPolicy { key, terminal }
    }

    #[test]
    fn keys_combine_as_envoy() {
        let user = policy(
            HashKey::Header {
                name: http::HeaderName::from_static("x-user"),
                rewrite: None,
            },
            false,
        );
        let ip = policy(HashKey::SourceIp, false);
        let p = parts("/a?session=s1&x=2", &[("x-user", "alice")]);
        assert_eq!(
            compute(std::slice::from_ref(&user), &p, &addrs()).hash,
            Some(xx(b"alice"))
        );
        let both = compute(&[user.clone(), ip.clone()], &p, &addrs()).hash;
        assert_eq!(both, Some(xx(b"alice").rotate_left(1) ^ xx(b"10.1.2.3")));
        // Terminal: the first hash ends it.
        let terminal = policy(user.key.clone(), true);
        assert_eq!(
            compute(&[terminal, ip.clone()], &p, &addrs()).hash,
            Some(xx(b"alice"))
        );
        // An absent header contributes nothing.
        let none = parts("/", &[]);
        assert_eq!(compute(&[user], &none, &addrs()).hash, None);
        let q = policy(HashKey::QueryParameter("session".into()), false);
        assert_eq!(compute(&[q], &p, &addrs()).hash, Some(xx(b"s1")));
    }

    #[test]
    fn cookies_are_read_or_generated() {
        let c = policy(
            HashKey::Cookie {
                name: "sticky".into(),
                ttl: Some(std::time::Duration::from_secs(3600)),
                path: "/".into(),
                attributes: vec![("SameSite".into(), "Lax".into())],
            },
            false,
        );
        let with = parts("/", &[("cookie", "a=b; sticky=\"abc\"")]);
        let r = compute(std::slice::from_ref(&c), &with, &addrs());
        assert_eq!(r.hash, Some(xx(b"abc")));
        assert!(r.set_cookie.is_none());
        let without = parts("/", &[]);
        let r = compute(&[c], &without, &addrs());
        let value = format!("{:016x}", xx(b"10.1.2.3:555510.0.0.1:8080"));
        assert_eq!(r.hash, Some(xx(value.as_bytes())));
        assert_eq!(
            r.set_cookie.unwrap(),
            format!("sticky=\"{value}\"; Max-Age=3600; Path=/; SameSite=Lax; HttpOnly").as_str()
        );
    }
}
