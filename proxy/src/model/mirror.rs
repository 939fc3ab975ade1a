//! `RequestMirrorPolicy` (route actions, virtual hosts and route configurations): the copies of
//! a routed request the router sends, fire and forget, to other clusters (Envoy's shadow
//! policies, `source/common/router/config_impl.cc` `ShadowPolicyImpl`).

use super::pb;
use super::runtime::RuntimeFraction;
use crate::config::{FieldPath, Result};
use http::{HeaderName, HeaderValue};
use std::sync::Arc;

/// One mirror policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorPolicy {
    pub cluster: MirrorCluster,
    /// `runtime_fraction`: the share of requests mirrored (all when absent).
    pub fraction: RuntimeFraction,
    /// `trace_sampled`: the copy's sampling decision as propagated upstream (`None`: the
    /// parent's decision); with tracing on, the copy carries the stream's span context with
    /// this decision.
    pub trace_sampled: Option<bool>,
    pub host: MirrorHost,
}

/// Where the copy goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MirrorCluster {
    Name(Arc<str>),
    /// `cluster_header`: the first value of this request header names the cluster (no copy
    /// when it is absent or empty).
    Header(HeaderName),
}

/// The copy's `Host`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MirrorHost {
    /// Envoy's default: `-shadow` appended to the host (before the port).
    Suffix,
    /// `disable_shadow_host_suffix_append`: the primary's host.
    Keep,
    /// `host_rewrite_literal` (which implies no suffix).
    Literal(HeaderValue),
}

/// The policies a route applies: its own when it has any, else its virtual host's, else the
/// route configuration's (each level replaces the less specific ones entirely, as Envoy).
pub type MirrorPolicies = Arc<[MirrorPolicy]>;

impl MirrorPolicy {
    pub fn from_proto(
        path: &FieldPath,
        p: &pb::route::route_action::RequestMirrorPolicy,
    ) -> Result<Self> {
        let pb::route::route_action::RequestMirrorPolicy {
            cluster,
            cluster_header,
            runtime_fraction,
            trace_sampled,
            disable_shadow_host_suffix_append,
            request_headers_mutations,
            host_rewrite_literal,
        } = p;
        let cluster = match (cluster.is_empty(), cluster_header.is_empty()) {
            (false, true) => MirrorCluster::Name(cluster.as_str().into()),
            (true, false) => MirrorCluster::Header(
                HeaderName::from_bytes(cluster_header.to_ascii_lowercase().as_bytes())
                    .map_err(|_| path.field("cluster_header").error("invalid header name"))?,
            ),
            (false, false) => {
                return Err(path.error(format!(
                    "Only one of cluster '{cluster}' or cluster_header '{cluster_header}' in request mirror policy can be specified"
                )));
            }
            (true, true) => {
                return Err(path.error(
                    "Exactly one of cluster or cluster_header in request mirror policy need to be specified",
                ));
            }
        };
        super::core::deny(path, "request_headers_mutations", request_headers_mutations)?;
        let fraction = match runtime_fraction {
            Some(f) => RuntimeFraction::from_proto(&path.field("runtime_fraction"), f)?,
            None => RuntimeFraction::ALWAYS,
        };
        let host = if !host_rewrite_literal.is_empty() {
            MirrorHost::Literal(
                HeaderValue::from_str(host_rewrite_literal)
                    .map_err(|_| path.field("host_rewrite_literal").error("invalid host"))?,
            )
        } else if *disable_shadow_host_suffix_append {
            MirrorHost::Keep
        } else {
            MirrorHost::Suffix
        };
        Ok(Self {
            cluster,
            fraction,
            trace_sampled: trace_sampled.as_ref().map(|b| b.value),
            host,
        })
    }

    /// A level's `request_mirror_policies`, or `inherited` when it has none.
    pub fn list(
        path: &FieldPath,
        list: &[pb::route::route_action::RequestMirrorPolicy],
        inherited: &MirrorPolicies,
    ) -> Result<MirrorPolicies> {
        if list.is_empty() {
            return Ok(inherited.clone());
        }
        let policies =
            crate::config::error::all(list.iter().enumerate().map(|(i, p)| {
                Self::from_proto(&path.field("request_mirror_policies").index(i), p)
            }))?;
        Ok(policies.into())
    }
}

/// Envoy's `shadowAppendedHost`: `-shadow` after the host name, before a port (`a:80` →
/// `a-shadow:80`; a bracketed IPv6 address keeps its brackets: `[::1]:80` → `[::1]-shadow:80`).
pub fn shadow_host(host: &[u8]) -> Vec<u8> {
    const SUFFIX: &[u8] = b"-shadow";
    let colon = host.iter().rposition(|&b| b == b':');
    let bracket = host.iter().rposition(|&b| b == b']');
    let port_start = match (colon, bracket) {
        (Some(c), None) => Some(c),
        (Some(c), Some(b)) if b < c => Some(c),
        _ => None,
    };
    let mut out = Vec::with_capacity(host.len() + SUFFIX.len());
    match port_start {
        Some(at) => {
            out.extend_from_slice(&host[..at]);
            out.extend_from_slice(SUFFIX);
            out.extend_from_slice(&host[at..]);
        }
        None => {
            out.extend_from_slice(host);
            out.extend_from_slice(SUFFIX);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::runtime::Percent;

    fn policy(yaml: &str) -> Result<MirrorPolicy> {
        let path = FieldPath::new("m");
        let p: pb::route::route_action::RequestMirrorPolicy = crate::config::decode_yaml(
            "envoy.config.route.v3.RouteAction.RequestMirrorPolicy",
            yaml,
            &path,
        );
        MirrorPolicy::from_proto(&path, &p)
    }

    #[test]
    fn the_shadow_suffix_goes_before_the_port() {
        let s = |h: &str| String::from_utf8(shadow_host(h.as_bytes())).unwrap();
        assert_eq!(s("example.com"), "example.com-shadow");
        assert_eq!(s("example.com:8080"), "example.com-shadow:8080");
        assert_eq!(s("[::1]:80"), "[::1]-shadow:80");
        assert_eq!(s("[::1]"), "[::1]-shadow");
        assert_eq!(s("10.0.0.1:9"), "10.0.0.1-shadow:9");
        assert_eq!(s(""), "-shadow");
    }

    #[test]
    fn defaults_mirror_everything_with_the_suffix() {
        let p = policy("cluster: m").unwrap();
        assert_eq!(p.cluster, MirrorCluster::Name("m".into()));
        assert_eq!(p.fraction, RuntimeFraction::ALWAYS);
        assert_eq!(p.host, MirrorHost::Suffix);
        assert_eq!(p.trace_sampled, None);
        let p = policy(
            "{cluster_header: X-Mirror, disable_shadow_host_suffix_append: true, trace_sampled: false, runtime_fraction: {default_value: {numerator: 10}, runtime_key: k}}",
        )
        .unwrap();
        assert_eq!(
            p.cluster,
            MirrorCluster::Header(HeaderName::from_static("x-mirror"))
        );
        assert_eq!(p.host, MirrorHost::Keep);
        assert_eq!(p.trace_sampled, Some(false));
        assert_eq!(p.fraction.default, Percent::hundred(10));
        assert_eq!(p.fraction.runtime_key.as_deref(), Some("k"));
        // A literal host implies no suffix.
        let p = policy("{cluster: m, host_rewrite_literal: lit.test}").unwrap();
        assert_eq!(
            p.host,
            MirrorHost::Literal(HeaderValue::from_static("lit.test"))
        );
    }

    #[test]
    fn refusals_name_their_path() {
        let e = policy("{cluster: a, cluster_header: b}").unwrap_err();
        assert!(e.to_string().contains("Only one of cluster 'a'"), "{e}");
        let e = policy("{runtime_fraction: {default_value: {numerator: 1}}}").unwrap_err();
        assert!(e.to_string().contains("Exactly one of cluster"), "{e}");
        let e = policy("{cluster: a, request_headers_mutations: [{remove: x}]}").unwrap_err();
        assert!(e.to_string().contains("m.request_headers_mutations"), "{e}");
        let e = policy("{cluster: a, runtime_fraction: {runtime_key: k}}").unwrap_err();
        assert!(
            e.to_string().contains("m.runtime_fraction.default_value"),
            "{e}"
        );
    }
}
