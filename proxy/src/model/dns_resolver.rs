//! `envoy.network.dns_resolver.cares` (`CaresDnsResolverConfig`) → the DNS resolver a
//! STRICT_DNS or LOGICAL_DNS cluster uses, from whichever of the cluster's (or, for a cluster
//! that sets none, the bootstrap's) DNS fields Envoy reads: `typed_dns_resolver_config`, else
//! `dns_resolution_config`, else the deprecated `dns_resolvers` and `use_tcp_for_dns_lookups`.

use super::core::{decode_any, deny, socket_address};
use super::pb;
use crate::config::{FieldPath, Result, error};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub const CARES: &str = "envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig";
/// Envoy's defaults (c-ares' own are 2 s and 3 tries).
pub const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_QUERY_TRIES: u32 = 4;

/// The resolver: c-ares' configuration as Envoy sets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsResolver {
    /// `resolvers` (port 0 is 53); empty: the system's (`/etc/resolv.conf`).
    pub resolvers: Vec<SocketAddr>,
    /// `use_resolvers_as_fallback`: the system's nameservers first, `resolvers` only if none.
    pub use_resolvers_as_fallback: bool,
    /// `dns_resolver_options.use_tcp_for_dns_lookups`.
    pub use_tcp: bool,
    /// `dns_resolver_options.no_default_search_domain`: no `search` domains.
    pub no_default_search_domain: bool,
    /// `query_timeout_seconds`: each try's timeout.
    pub query_timeout: Duration,
    /// `query_tries`: tries per nameserver.
    pub query_tries: u32,
    /// `rotate_nameservers`: start each query at a random nameserver.
    pub rotate_nameservers: bool,
}

impl Default for DnsResolver {
    fn default() -> Self {
        Self {
            resolvers: Vec::new(),
            use_resolvers_as_fallback: false,
            use_tcp: false,
            no_default_search_domain: false,
            query_timeout: DEFAULT_QUERY_TIMEOUT,
            query_tries: DEFAULT_QUERY_TRIES,
            rotate_nameservers: false,
        }
    }
}

/// The cluster's (or bootstrap's, without `dns_resolvers`) fields that choose the resolver.
pub struct DnsFields<'a> {
    pub dns_resolvers: &'a [pb::core::Address],
    pub use_tcp_for_dns_lookups: bool,
    pub dns_resolution_config: &'a Option<pb::core::DnsResolutionConfig>,
    pub typed_dns_resolver_config: &'a Option<pb::core::TypedExtensionConfig>,
}

/// A cluster's resolver: its own when it sets any of the fields, else the bootstrap's.
pub fn from_cluster(
    path: &FieldPath,
    f: DnsFields<'_>,
    bootstrap: &Arc<DnsResolver>,
) -> Result<Arc<DnsResolver>> {
    let own = typed(f.typed_dns_resolver_config).is_some()
        || f.dns_resolution_config.is_some()
        || f.use_tcp_for_dns_lookups
        || !f.dns_resolvers.is_empty();
    if !own {
        return Ok(bootstrap.clone());
    }
    from_fields(path, f).map(Arc::new)
}

/// The resolver as Envoy picks it: `typed_dns_resolver_config` wins, then
/// `dns_resolution_config`, then the deprecated fields.
pub fn from_fields(path: &FieldPath, f: DnsFields<'_>) -> Result<DnsResolver> {
    if let Some(any) = typed(f.typed_dns_resolver_config) {
        return typed_config(&path.field("typed_dns_resolver_config"), any);
    }
    if let Some(drc) = f.dns_resolution_config {
        let p = path.field("dns_resolution_config");
        let pb::core::DnsResolutionConfig {
            resolvers,
            dns_resolver_options,
        } = drc;
        let mut r = DnsResolver {
            resolvers: addresses(&p.field("resolvers"), resolvers)?,
            ..DnsResolver::default()
        };
        options(&mut r, dns_resolver_options);
        return Ok(r);
    }
    Ok(DnsResolver {
        resolvers: addresses(&path.field("dns_resolvers"), f.dns_resolvers)?,
        use_tcp: f.use_tcp_for_dns_lookups,
        ..DnsResolver::default()
    })
}

fn options(r: &mut DnsResolver, o: &Option<pb::core::DnsResolverOptions>) {
    if let Some(pb::core::DnsResolverOptions {
        use_tcp_for_dns_lookups,
        no_default_search_domain,
    }) = o
    {
        r.use_tcp = *use_tcp_for_dns_lookups;
        r.no_default_search_domain = *no_default_search_domain;
    }
}

/// `typed_dns_resolver_config` when it names a type (Envoy reads it only then).
fn typed(t: &Option<pb::core::TypedExtensionConfig>) -> Option<&pb::protobuf::Any> {
    t.as_ref()?
        .typed_config
        .as_ref()
        .filter(|any| !any.type_url.is_empty())
}

fn typed_config(path: &FieldPath, any: &pb::protobuf::Any) -> Result<DnsResolver> {
    let tp = path.field("typed_config");
    if super::core::any_type(any) != CARES {
        return Err(tp.field("@type").error(format!(
            "DNS resolver {} is not supported (only {CARES})",
            super::core::any_type(any)
        )));
    }
    cares(
        &tp,
        &decode_any::<pb::cares::CaresDnsResolverConfig>(&tp, any)?,
    )
}

/// `CaresDnsResolverConfig`. The channel fields (`udp_max_queries`, `max_udp_channel_duration`,
/// `reinit_channel_on_timeout`) hold trivially: every query has a socket of its own.
fn cares(path: &FieldPath, c: &pb::cares::CaresDnsResolverConfig) -> Result<DnsResolver> {
    let pb::cares::CaresDnsResolverConfig {
        resolvers,
        use_resolvers_as_fallback,
        filter_unroutable_families,
        dns_resolver_options,
        udp_max_queries: _,
        query_timeout_seconds,
        query_tries,
        rotate_nameservers,
        edns0_max_payload_size,
        max_udp_channel_duration: _,
        reinit_channel_on_timeout: _,
        qcache_max_ttl,
    } = c;
    deny(
        path,
        "filter_unroutable_families",
        filter_unroutable_families,
    )?;
    deny(path, "edns0_max_payload_size", edns0_max_payload_size)?;
    if qcache_max_ttl.as_ref().is_some_and(|v| v.value != 0) {
        return Err(path.unsupported("qcache_max_ttl"));
    }
    let query_timeout = match query_timeout_seconds {
        None => DEFAULT_QUERY_TIMEOUT,
        Some(v) if v.value == 0 => {
            return Err(path
                .field("query_timeout_seconds")
                .error("must be at least 1"));
        }
        Some(v) => Duration::from_secs(v.value.min(86_400)),
    };
    let query_tries = match query_tries {
        None => DEFAULT_QUERY_TRIES,
        Some(v) if v.value == 0 => {
            return Err(path.field("query_tries").error("must be at least 1"));
        }
        Some(v) => v.value,
    };
    let mut r = DnsResolver {
        resolvers: addresses(&path.field("resolvers"), resolvers)?,
        use_resolvers_as_fallback: *use_resolvers_as_fallback,
        query_timeout,
        query_tries,
        rotate_nameservers: *rotate_nameservers,
        ..DnsResolver::default()
    };
    options(&mut r, dns_resolver_options);
    Ok(r)
}

/// Resolver addresses: IP socket addresses (port 0 is 53).
fn addresses(path: &FieldPath, addrs: &[pb::core::Address]) -> Result<Vec<SocketAddr>> {
    error::all(addrs.iter().enumerate().map(|(i, a)| {
        let p = path.index(i);
        let hp = socket_address(&p, &Some(a.clone()))?;
        let ip = hp.ip().ok_or_else(|| {
            p.field("socket_address")
                .field("address")
                .error(format!("'{}' is not an IP address", hp.host))
        })?;
        Ok(SocketAddr::new(ip, if hp.port == 0 { 53 } else { hp.port }))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(yaml: &str) -> pb::cluster::Cluster {
        crate::config::decode_yaml("envoy.config.cluster.v3.Cluster", yaml, &FieldPath::root())
    }

    fn resolver(yaml: &str) -> Result<DnsResolver> {
        let c = cluster(yaml);
        from_fields(
            &FieldPath::new("c"),
            DnsFields {
                dns_resolvers: &c.dns_resolvers,
                use_tcp_for_dns_lookups: c.use_tcp_for_dns_lookups,
                dns_resolution_config: &c.dns_resolution_config,
                typed_dns_resolver_config: &c.typed_dns_resolver_config,
            },
        )
    }

    #[test]
    fn deprecated_fields() {
        let r = resolver(
            "{name: c, use_tcp_for_dns_lookups: true, dns_resolvers: [{socket_address: {address: 10.0.0.1}}]}",
        )
        .unwrap();
        assert_eq!(r.resolvers, vec!["10.0.0.1:53".parse().unwrap()]);
        assert!(r.use_tcp && !r.no_default_search_domain);
        assert_eq!(resolver("{name: c}").unwrap(), DnsResolver::default());
    }

    #[test]
    fn resolution_config_wins_over_deprecated_fields() {
        let r = resolver(
            "{name: c, use_tcp_for_dns_lookups: true, dns_resolution_config: {resolvers: [{socket_address: {address: '::1', port_value: 5353}}], dns_resolver_options: {no_default_search_domain: true}}}",
        )
        .unwrap();
        assert_eq!(r.resolvers, vec!["[::1]:5353".parse().unwrap()]);
        assert!(!r.use_tcp && r.no_default_search_domain);
    }

    #[test]
    fn typed_cares_config() {
        let r = resolver(
            "{name: c, dns_resolution_config: {resolvers: [{socket_address: {address: 10.9.9.9}}]}, typed_dns_resolver_config: {name: envoy.network.dns_resolver.cares, typed_config: {'@type': type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig, resolvers: [{socket_address: {address: 127.0.0.1, port_value: 53000}}], use_resolvers_as_fallback: true, rotate_nameservers: true, query_timeout_seconds: 2, query_tries: 1, udp_max_queries: 10, dns_resolver_options: {use_tcp_for_dns_lookups: true}}}}",
        )
        .unwrap();
        assert_eq!(
            r,
            DnsResolver {
                resolvers: vec!["127.0.0.1:53000".parse().unwrap()],
                use_resolvers_as_fallback: true,
                use_tcp: true,
                no_default_search_domain: false,
                query_timeout: Duration::from_secs(2),
                query_tries: 1,
                rotate_nameservers: true,
            }
        );
    }

    #[test]
    fn refusals_name_their_path() {
        let typed = |fields: &str| {
            resolver(&format!("{{name: c, typed_dns_resolver_config: {{name: x, typed_config: {{'@type': type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig, {fields}}}}}}}"))
                .unwrap_err()
                .paths()
        };
        let base = "c.typed_dns_resolver_config.typed_config";
        assert_eq!(
            typed("filter_unroutable_families: true"),
            [format!("{base}.filter_unroutable_families")]
        );
        assert_eq!(
            typed("edns0_max_payload_size: 1232"),
            [format!("{base}.edns0_max_payload_size")]
        );
        assert_eq!(
            typed("qcache_max_ttl: 60"),
            [format!("{base}.qcache_max_ttl")]
        );
        assert_eq!(typed("query_tries: 0"), [format!("{base}.query_tries")]);
        assert_eq!(
            typed("resolvers: [{socket_address: {address: dns.example}}]"),
            [format!("{base}.resolvers[0].socket_address.address")]
        );
        let other = resolver("{name: c, typed_dns_resolver_config: {name: x, typed_config: {'@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}")
            .unwrap_err();
        assert_eq!(other.paths(), [format!("{base}.@type")]);
    }
}
