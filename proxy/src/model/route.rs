//! `RouteConfiguration` → the route table: virtual hosts by domain, routes by path, headers,
//! query parameters and gRPC; actions forward (cluster, weighted clusters, cluster header),
//! redirect and direct response. Matching is Envoy's (`source/common/router/config_impl.cc`).

use super::core::{deny, enum_value, opt_duration, timeout_or, u32_or};
use super::headers::HeaderMutations;
use super::inputs::Inputs;
use super::matcher::{
    HeaderMatcher, QueryParameterMatcher, RequestHeaders, full_regex, search_regex,
};
use super::mirror::{MirrorCluster, MirrorPolicies, MirrorPolicy};
use super::per_filter::PerFilterConfigs;
use super::retry::RetryPolicy;
use super::{FullRegex, pb};
use crate::config::{FieldPath, Result};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use regex::Regex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Envoy's default route timeout.
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);

/// A translated `RouteConfiguration`.
#[derive(Debug)]
pub struct RouteConfig {
    pub name: String,
    pub virtual_hosts: Vec<VirtualHost>,
    /// `typed_per_filter_config` (the least specific level).
    pub per_filter: PerFilterConfigs,
    index: VhostIndex,
    pub internal_only_headers: Vec<HeaderName>,
    pub request_headers: HeaderMutations,
    pub response_headers: HeaderMutations,
    pub most_specific_header_mutations_wins: bool,
    pub ignore_port_in_host_matching: bool,
    /// Clusters every route names (for `validate_clusters` and for the router's stats).
    pub referenced_clusters: Vec<Arc<str>>,
    pub validate_clusters: Option<bool>,
}

#[derive(Debug, Default)]
struct VhostIndex {
    exact: HashMap<String, usize>,
    /// `*.example.com` → (".example.com", idx), longest first.
    suffix: Vec<(String, usize)>,
    /// `example.*` → ("example.", idx), longest first.
    prefix: Vec<(String, usize)>,
    default: Option<usize>,
}

#[derive(Debug)]
pub struct VirtualHost {
    pub name: Arc<str>,
    pub routes: Vec<Route>,
    pub per_filter: PerFilterConfigs,
    pub request_headers: HeaderMutations,
    pub response_headers: HeaderMutations,
    pub require_tls: TlsRequirement,
    /// The virtual host's `retry_policy` (a route's own replaces it entirely).
    pub retry_policy: Option<Arc<RetryPolicy>>,
    /// `per_request_buffer_limit_bytes`: how much of a request body is kept for a retry.
    pub buffer_limit: Option<u32>,
    /// `include_request_attempt_count`: `x-envoy-attempt-count` on upstream requests.
    pub attempt_count_upstream: bool,
    /// `include_attempt_count_in_response`: `x-envoy-attempt-count` on responses.
    pub attempt_count_downstream: bool,
    /// `rate_limits`: the descriptors the local rate limit filter matches.
    pub rate_limits: Vec<super::local_ratelimit::RateLimitPolicy>,
    /// The deprecated `cors` policy (used when no level has a per-filter `CorsPolicy`).
    pub cors: Option<Arc<super::cors::CorsPolicy>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsRequirement {
    None,
    ExternalOnly,
    All,
}

#[derive(Debug)]
pub struct Route {
    pub name: Option<Arc<str>>,
    pub per_filter: PerFilterConfigs,
    pub path: PathMatch,
    pub case_sensitive: bool,
    pub headers: Vec<HeaderMatcher>,
    pub query_parameters: Vec<QueryParameterMatcher>,
    pub grpc: bool,
    pub action: RouteAction,
    pub request_headers: HeaderMutations,
    pub response_headers: HeaderMutations,
    /// `per_request_buffer_limit_bytes` (replaces the virtual host's).
    pub buffer_limit: Option<u32>,
    /// `decorator`: the span's operation name (`crate::tracing` applies it).
    pub decorator: Option<Decorator>,
}

/// A route's `decorator`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decorator {
    pub operation: String,
    /// Whether the operation travels in `x-envoy-decorator-operation` (default true).
    pub propagate: bool,
}

#[derive(Debug)]
pub enum PathMatch {
    Prefix(String),
    Path(String),
    Regex(FullRegex),
    SeparatedPrefix(String),
}

#[derive(Debug)]
pub enum RouteAction {
    Forward(Box<ForwardAction>),
    Redirect(Box<Redirect>),
    Direct(DirectResponse),
}

#[derive(Debug)]
pub struct ForwardAction {
    pub cluster: ClusterTarget,
    pub cluster_not_found_code: StatusCode,
    pub prefix_rewrite: Option<String>,
    pub regex_rewrite: Option<(Regex, String)>,
    pub host_rewrite: HostRewrite,
    pub append_x_forwarded_host: bool,
    /// `None`: no route timeout (a configured 0).
    pub timeout: Option<Duration>,
    /// Per-route stream idle timeout; `None` keeps the connection manager's.
    pub idle_timeout: Option<Duration>,
    /// Upgrade types allowed (or disallowed) on this route, overriding the connection manager.
    pub upgrades: Vec<(String, bool)>,
    /// The route's `retry_policy` (replaces the virtual host's).
    pub retry_policy: Option<Arc<RetryPolicy>>,
    /// `hash_policy`: what the request hashes to for RING_HASH and MAGLEV clusters.
    pub hash_policy: Vec<super::hash_policy::HashPolicy>,
    /// `rate_limits`: the descriptors the local rate limit filter matches.
    pub rate_limits: Vec<super::local_ratelimit::RateLimitPolicy>,
    /// `include_vh_rate_limits` (deprecated): the virtual host's `rate_limits` apply as well.
    pub include_vh_rate_limits: bool,
    /// The deprecated `cors` policy (used when no level has a per-filter `CorsPolicy`).
    pub cors: Option<Arc<super::cors::CorsPolicy>>,
    /// `request_mirror_policies`: the route's, else its virtual host's, else the route
    /// configuration's.
    pub mirrors: MirrorPolicies,
}

#[derive(Debug)]
pub enum ClusterTarget {
    Name(Arc<str>),
    Header(HeaderName),
    Weighted(WeightedClusters),
}

#[derive(Debug)]
pub struct WeightedClusters {
    pub clusters: Vec<WeightedCluster>,
    pub total_weight: u64,
}

#[derive(Debug)]
pub struct WeightedCluster {
    pub name: Arc<str>,
    pub weight: u32,
    /// The most specific level of `typed_per_filter_config`.
    pub per_filter: PerFilterConfigs,
    pub request_headers: HeaderMutations,
    pub response_headers: HeaderMutations,
    pub host_rewrite_literal: Option<HeaderValue>,
}

#[derive(Debug)]
pub enum HostRewrite {
    None,
    Literal(HeaderValue),
    Auto,
    Header(HeaderName),
}

#[derive(Debug)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub path: RedirectPath,
    pub code: StatusCode,
    pub strip_query: bool,
}

#[derive(Debug)]
pub enum RedirectPath {
    Keep,
    Path(String),
    PrefixRewrite(String),
    RegexRewrite(Regex, String),
}

#[derive(Debug)]
pub struct DirectResponse {
    pub status: StatusCode,
    pub body: Option<Bytes>,
}

/// What route matching reads from a request.
pub struct RouteRequest<'a> {
    pub headers: RequestHeaders<'a>,
    /// The host used for virtual-host selection (lower-cased, port handling applied).
    pub host: &'a str,
    pub is_tls: bool,
    pub is_internal: bool,
}

/// The outcome of matching.
pub enum RouteMatch<'a> {
    Route {
        vhost: &'a VirtualHost,
        route: &'a Route,
        matched_prefix_len: usize,
    },
    /// `require_tls` on the virtual host: redirect to https.
    RequireTls {
        vhost: &'a VirtualHost,
    },
    NoRoute,
}

// === impl RouteConfig ===

impl RouteConfig {
    pub fn from_proto(
        path: &FieldPath,
        rc: &pb::route::RouteConfiguration,
        max_direct_default: u32,
        inputs: &Inputs,
    ) -> Result<Self> {
        let pb::route::RouteConfiguration {
            name,
            virtual_hosts,
            vhds,
            internal_only_headers,
            response_headers_to_add,
            response_headers_to_remove,
            request_headers_to_add,
            request_headers_to_remove,
            most_specific_header_mutations_wins,
            validate_clusters,
            max_direct_response_body_size_bytes,
            cluster_specifier_plugins,
            request_mirror_policies,
            ignore_port_in_host_matching,
            vhost_header,
            ignore_path_parameters_in_path_matching,
            typed_per_filter_config,
            metadata,
            route_specifiers,
        } = rc;
        deny(path, "vhds", vhds)?;
        deny(path, "cluster_specifier_plugins", cluster_specifier_plugins)?;
        let mirrors =
            MirrorPolicy::list(path, request_mirror_policies, &MirrorPolicies::default())?;
        deny(path, "vhost_header", vhost_header)?;
        deny(
            path,
            "ignore_path_parameters_in_path_matching",
            ignore_path_parameters_in_path_matching,
        )?;
        let per_filter = PerFilterConfigs::from_proto(
            &path.field("typed_per_filter_config"),
            typed_per_filter_config,
        )?;
        deny(path, "route_specifiers", route_specifiers)?;
        super::core::metadata_ok(metadata);
        let max_direct = u32_or(max_direct_response_body_size_bytes, max_direct_default) as usize;

        let mut internal = Vec::new();
        for (i, h) in internal_only_headers.iter().enumerate() {
            internal.push(
                HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).map_err(|_| {
                    path.field("internal_only_headers")
                        .index(i)
                        .error("invalid header name")
                })?,
            );
        }
        let mut vhosts = Vec::with_capacity(virtual_hosts.len());
        let mut index = VhostIndex::default();
        let mut seen_names: HashMap<&str, usize> = HashMap::new();
        // Every virtual host is translated, so that one report names the problems of all.
        let mut errors = Vec::new();
        for (i, vh) in virtual_hosts.iter().enumerate() {
            let vp = path.field("virtual_hosts").index(i);
            if let Some(prev) = seen_names.insert(vh.name.as_str(), i) {
                errors.push(vp.field("name").error(format!(
                    "virtual host name '{}' is also used by virtual_hosts[{prev}]",
                    vh.name
                )));
                continue;
            }
            let translated = index
                .add(&vp, &vh.domains, i, &vh.name, name)
                .and_then(|()| VirtualHost::from_proto(&vp, vh, max_direct, &mirrors, inputs));
            match translated {
                Ok(v) => vhosts.push(v),
                Err(e) => errors.push(e),
            }
        }
        if let Some(e) = crate::config::ConfigError::join(errors) {
            return Err(e);
        }
        index.suffix.sort_by_key(|e| std::cmp::Reverse(e.0.len()));
        index.prefix.sort_by_key(|e| std::cmp::Reverse(e.0.len()));

        let mut referenced: Vec<Arc<str>> = Vec::new();
        for vh in &vhosts {
            for r in &vh.routes {
                if let RouteAction::Forward(f) = &r.action {
                    referenced.extend(f.mirrors.iter().filter_map(|m| match &m.cluster {
                        MirrorCluster::Name(n) => Some(n.clone()),
                        MirrorCluster::Header(_) => None,
                    }));
                    match &f.cluster {
                        ClusterTarget::Name(n) => referenced.push(n.clone()),
                        ClusterTarget::Weighted(w) => {
                            referenced.extend(w.clusters.iter().map(|c| c.name.clone()))
                        }
                        ClusterTarget::Header(_) => {}
                    }
                }
            }
        }
        referenced.sort();
        referenced.dedup();
        Ok(Self {
            per_filter,
            name: name.clone(),
            virtual_hosts: vhosts,
            index,
            internal_only_headers: internal,
            request_headers: HeaderMutations::request(
                path,
                request_headers_to_add,
                request_headers_to_remove,
                inputs,
            )?,
            response_headers: HeaderMutations::response(
                path,
                response_headers_to_add,
                response_headers_to_remove,
                inputs,
            )?,
            most_specific_header_mutations_wins: *most_specific_header_mutations_wins,
            ignore_port_in_host_matching: *ignore_port_in_host_matching,
            referenced_clusters: referenced,
            validate_clusters: validate_clusters.as_ref().map(|b| b.value),
        })
    }

    /// Envoy's virtual-host selection: exact domain, then the longest `*suffix`, then the
    /// longest `prefix*`, then `*`.
    pub fn find_virtual_host(&self, host: &str) -> Option<&VirtualHost> {
        let host = if self.ignore_port_in_host_matching {
            strip_port(host)
        } else {
            host
        };
        let idx = self
            .index
            .exact
            .get(host)
            .copied()
            .or_else(|| {
                self.index
                    .suffix
                    .iter()
                    .find(|(s, _)| host.len() > s.len() && host.ends_with(s.as_str()))
                    .map(|(_, i)| *i)
            })
            .or_else(|| {
                self.index
                    .prefix
                    .iter()
                    .find(|(p, _)| host.len() > p.len() && host.starts_with(p.as_str()))
                    .map(|(_, i)| *i)
            })
            .or(self.index.default)?;
        self.virtual_hosts.get(idx)
    }

    pub fn route<'a>(&'a self, req: &RouteRequest<'_>) -> RouteMatch<'a> {
        let Some(vhost) = self.find_virtual_host(req.host) else {
            return RouteMatch::NoRoute;
        };
        match vhost.require_tls {
            TlsRequirement::All if !req.is_tls => return RouteMatch::RequireTls { vhost },
            TlsRequirement::ExternalOnly if !req.is_tls && !req.is_internal => {
                return RouteMatch::RequireTls { vhost };
            }
            _ => {}
        }
        for route in &vhost.routes {
            if let Some(len) = route.matches(&req.headers) {
                return RouteMatch::Route {
                    vhost,
                    route,
                    matched_prefix_len: len,
                };
            }
        }
        RouteMatch::NoRoute
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // [v6]:port
        return match host.rfind("]:") {
            Some(i) => &host[..=i],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((h, p))
            if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && !h.contains(':') =>
        {
            h
        }
        _ => host,
    }
}

// === impl VhostIndex ===

impl VhostIndex {
    fn add(
        &mut self,
        vp: &FieldPath,
        domains: &[String],
        idx: usize,
        vhost_name: &str,
        rc_name: &str,
    ) -> Result<()> {
        if domains.is_empty() {
            return Err(vp.field("domains").error("at least one domain is required"));
        }
        for (j, d) in domains.iter().enumerate() {
            let dp = vp.field("domains").index(j);
            let d = d.to_ascii_lowercase();
            let dup = || {
                dp.error(format!(
                    "Only unique values for domains are permitted. Duplicate entry of domain {d} in route {rc_name} (virtual host {vhost_name})"
                ))
            };
            if d == "*" {
                if self.default.replace(idx).is_some() {
                    return Err(dup());
                }
            } else if d.is_empty() {
                return Err(dp.error("must not be empty"));
            } else if d.matches('*').count() > 1
                || (d.contains('*') && !d.starts_with('*') && !d.ends_with('*'))
            {
                return Err(dp.error(format!(
                    "invalid domain '{d}': a wildcard may only appear once, at the start or the end"
                )));
            } else if let Some(suffix) = d.strip_prefix('*') {
                if self.suffix.iter().any(|(s, _)| s == suffix) {
                    return Err(dup());
                }
                self.suffix.push((suffix.to_string(), idx));
            } else if let Some(prefix) = d.strip_suffix('*') {
                if self.prefix.iter().any(|(p, _)| p == prefix) {
                    return Err(dup());
                }
                self.prefix.push((prefix.to_string(), idx));
            } else if self.exact.insert(d.clone(), idx).is_some() {
                return Err(dup());
            }
        }
        Ok(())
    }
}

// === impl VirtualHost ===

impl VirtualHost {
    fn from_proto(
        path: &FieldPath,
        vh: &pb::route::VirtualHost,
        max_direct: usize,
        route_config_mirrors: &MirrorPolicies,
        inputs: &Inputs,
    ) -> Result<Self> {
        use pb::route::virtual_host::TlsRequirementType as T;
        let pb::route::VirtualHost {
            name,
            domains: _,
            routes,
            matcher,
            require_tls,
            virtual_clusters,
            rate_limits,
            request_headers_to_add,
            request_headers_to_remove,
            response_headers_to_add,
            response_headers_to_remove,
            cors,
            typed_per_filter_config,
            include_request_attempt_count,
            include_attempt_count_in_response,
            retry_policy,
            retry_policy_typed_config,
            hedge_policy,
            include_is_timeout_retry_header,
            per_request_buffer_limit_bytes,
            request_body_buffer_limit,
            request_mirror_policies,
            metadata,
            route_specifiers,
        } = vh;
        if name.is_empty() {
            return Err(path.field("name").error("must not be empty"));
        }
        deny(path, "matcher", matcher)?;
        deny(path, "virtual_clusters", virtual_clusters)?;
        let rate_limits =
            super::local_ratelimit::RateLimitPolicy::list(path, "rate_limits", rate_limits)?;
        let cors = cors
            .as_ref()
            .map(|c| {
                super::cors::CorsPolicy::from_route_proto(&path.field("cors"), c).map(Arc::new)
            })
            .transpose()?;
        let per_filter = PerFilterConfigs::from_proto(
            &path.field("typed_per_filter_config"),
            typed_per_filter_config,
        )?;
        deny(path, "retry_policy_typed_config", retry_policy_typed_config)?;
        deny(path, "hedge_policy", hedge_policy)?;
        deny(
            path,
            "include_is_timeout_retry_header",
            include_is_timeout_retry_header,
        )?;
        deny(path, "request_body_buffer_limit", request_body_buffer_limit)?;
        let retry_policy = retry_policy
            .as_ref()
            .map(|r| RetryPolicy::from_proto(&path.field("retry_policy"), r).map(Arc::new))
            .transpose()?;
        let mirrors = MirrorPolicy::list(path, request_mirror_policies, route_config_mirrors)?;
        deny(path, "route_specifiers", route_specifiers)?;
        super::core::metadata_ok(metadata);
        let require_tls = match enum_value::<T>(path, "require_tls", *require_tls, |_| true)? {
            T::None => TlsRequirement::None,
            T::ExternalOnly => TlsRequirement::ExternalOnly,
            T::All => TlsRequirement::All,
        };
        let out_routes = crate::config::error::all(routes.iter().enumerate().map(|(i, r)| {
            Route::from_proto(
                &path.field("routes").index(i),
                r,
                max_direct,
                &mirrors,
                inputs,
            )
        }))?;
        Ok(Self {
            per_filter,
            name: name.as_str().into(),
            routes: out_routes,
            request_headers: HeaderMutations::request(
                path,
                request_headers_to_add,
                request_headers_to_remove,
                inputs,
            )?,
            response_headers: HeaderMutations::response(
                path,
                response_headers_to_add,
                response_headers_to_remove,
                inputs,
            )?,
            require_tls,
            retry_policy,
            buffer_limit: per_request_buffer_limit_bytes.as_ref().map(|v| v.value),
            attempt_count_upstream: *include_request_attempt_count,
            attempt_count_downstream: *include_attempt_count_in_response,
            rate_limits,
            cors,
        })
    }
}

// === impl Route ===

impl Route {
    fn from_proto(
        path: &FieldPath,
        r: &pb::route::Route,
        max_direct: usize,
        vhost_mirrors: &MirrorPolicies,
        inputs: &Inputs,
    ) -> Result<Self> {
        use pb::route::route::Action as A;
        let pb::route::Route {
            name,
            r#match,
            metadata,
            decorator,
            typed_per_filter_config,
            request_headers_to_add,
            request_headers_to_remove,
            response_headers_to_add,
            response_headers_to_remove,
            tracing,
            per_request_buffer_limit_bytes,
            stat_prefix,
            request_body_buffer_limit,
            route_specifiers,
            action,
        } = r;
        super::core::metadata_ok(metadata);
        let decorator = decorator
            .as_ref()
            .map(|d| {
                if d.operation.is_empty() {
                    return Err(path
                        .field("decorator")
                        .field("operation")
                        .error("must not be empty"));
                }
                Ok(Decorator {
                    operation: d.operation.clone(),
                    propagate: super::core::bool_or(&d.propagate, true),
                })
            })
            .transpose()?;
        let per_filter = PerFilterConfigs::from_proto(
            &path.field("typed_per_filter_config"),
            typed_per_filter_config,
        )?;
        deny(path, "tracing", tracing)?;
        deny(path, "stat_prefix", stat_prefix)?;
        deny(path, "request_body_buffer_limit", request_body_buffer_limit)?;
        deny(path, "route_specifiers", route_specifiers)?;
        let mp = path.field("match");
        let m = r#match.as_ref().ok_or_else(|| mp.error("is required"))?;
        let (path_match, case_sensitive, headers, query_parameters, grpc) = route_match(&mp, m)?;
        let action = match action {
            Some(A::Route(ra)) => RouteAction::Forward(Box::new(forward_action(
                &path.field("route"),
                ra,
                &path_match,
                vhost_mirrors,
                inputs,
            )?)),
            Some(A::Redirect(rd)) => RouteAction::Redirect(Box::new(redirect(
                &path.field("redirect"),
                rd,
                &path_match,
            )?)),
            Some(A::DirectResponse(d)) => RouteAction::Direct(direct_response(
                &path.field("direct_response"),
                d,
                max_direct,
                inputs,
            )?),
            Some(A::FilterAction(_)) => return Err(path.unsupported("filter_action")),
            Some(A::NonForwardingAction(_)) => {
                return Err(path.unsupported("non_forwarding_action"));
            }
            None => return Err(path.error("a route needs route, redirect or direct_response")),
        };
        Ok(Self {
            per_filter,
            name: (!name.is_empty()).then(|| name.as_str().into()),
            path: path_match,
            case_sensitive,
            headers,
            query_parameters,
            grpc,
            action,
            request_headers: HeaderMutations::request(
                path,
                request_headers_to_add,
                request_headers_to_remove,
                inputs,
            )?,
            response_headers: HeaderMutations::response(
                path,
                response_headers_to_add,
                response_headers_to_remove,
                inputs,
            )?,
            buffer_limit: per_request_buffer_limit_bytes.as_ref().map(|v| v.value),
            decorator,
        })
    }

    /// `Some(len of the matched path prefix)` when the route matches.
    pub fn matches(&self, req: &RequestHeaders<'_>) -> Option<usize> {
        let full = req.path_and_query;
        let (path_only, query) = match full.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (full, None),
        };
        let len = match &self.path {
            // Envoy's prefix match reads the whole :path, query string included.
            PathMatch::Prefix(p) => starts_with(full, p, self.case_sensitive).then_some(p.len())?,
            PathMatch::Path(p) => eq(path_only, p, self.case_sensitive).then_some(p.len())?,
            PathMatch::Regex(r) => r.is_match(path_only).then_some(path_only.len())?,
            PathMatch::SeparatedPrefix(p) => {
                let ok = starts_with(path_only, p, self.case_sensitive)
                    && (path_only.len() == p.len() || path_only.as_bytes()[p.len()] == b'/');
                ok.then_some(p.len())?
            }
        };
        if self.grpc {
            let ct = req
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !ct.starts_with("application/grpc") {
                return None;
            }
        }
        if !self.headers.iter().all(|h| h.matches(req)) {
            return None;
        }
        if !self.query_parameters.iter().all(|q| q.matches(query)) {
            return None;
        }
        Some(len)
    }
}

fn starts_with(s: &str, prefix: &str, case_sensitive: bool) -> bool {
    if case_sensitive {
        s.starts_with(prefix)
    } else {
        s.len() >= prefix.len()
            && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
    }
}

fn eq(a: &str, b: &str, case_sensitive: bool) -> bool {
    if case_sensitive {
        a == b
    } else {
        a.eq_ignore_ascii_case(b)
    }
}

type MatchParts = (
    PathMatch,
    bool,
    Vec<HeaderMatcher>,
    Vec<QueryParameterMatcher>,
    bool,
);

fn route_match(path: &FieldPath, m: &pb::route::RouteMatch) -> Result<MatchParts> {
    use pb::route::route_match::PathSpecifier as P;
    let pb::route::RouteMatch {
        case_sensitive,
        runtime_fraction,
        headers,
        query_parameters,
        cookies,
        grpc,
        tls_context,
        dynamic_metadata,
        filter_state,
        path_specifier,
    } = m;
    deny(path, "runtime_fraction", runtime_fraction)?;
    deny(path, "cookies", cookies)?;
    deny(path, "tls_context", tls_context)?;
    deny(path, "dynamic_metadata", dynamic_metadata)?;
    deny(path, "filter_state", filter_state)?;
    let case_sensitive = case_sensitive.as_ref().map(|b| b.value).unwrap_or(true);
    let path_match = match path_specifier {
        Some(P::Prefix(p)) => PathMatch::Prefix(p.clone()),
        Some(P::Path(p)) => PathMatch::Path(p.clone()),
        Some(P::SafeRegex(r)) => PathMatch::Regex(full_regex(&path.field("safe_regex"), r)?),
        Some(P::PathSeparatedPrefix(p)) => {
            if p.contains('?')
                || p.contains('#')
                || (p.len() > 1 && p.ends_with('/'))
                || !p.starts_with('/')
            {
                return Err(path
                    .field("path_separated_prefix")
                    .error("must start with '/', not end with '/', and contain no '?' or '#'"));
            }
            PathMatch::SeparatedPrefix(p.clone())
        }
        Some(P::ConnectMatcher(_)) => return Err(path.unsupported("connect_matcher")),
        Some(P::PathMatchPolicy(_)) => return Err(path.unsupported("path_match_policy")),
        None => {
            return Err(
                path.error("one of prefix, path, safe_regex or path_separated_prefix is required")
            );
        }
    };
    let mut hm = Vec::with_capacity(headers.len());
    for (i, h) in headers.iter().enumerate() {
        hm.push(HeaderMatcher::from_proto(
            &path.field("headers").index(i),
            h,
        )?);
    }
    let mut qm = Vec::with_capacity(query_parameters.len());
    for (i, q) in query_parameters.iter().enumerate() {
        qm.push(QueryParameterMatcher::from_proto(
            &path.field("query_parameters").index(i),
            q,
        )?);
    }
    let grpc = match grpc {
        Some(pb::route::route_match::GrpcRouteMatchOptions {}) => true,
        None => false,
    };
    Ok((path_match, case_sensitive, hm, qm, grpc))
}

fn forward_action(
    path: &FieldPath,
    ra: &pb::route::RouteAction,
    path_match: &PathMatch,
    vhost_mirrors: &MirrorPolicies,
    inputs: &Inputs,
) -> Result<ForwardAction> {
    use pb::route::route_action::{
        ClusterNotFoundResponseCode as C, ClusterSpecifier as CS, HostRewriteSpecifier as H,
    };
    let pb::route::RouteAction {
        cluster_not_found_response_code,
        metadata_match,
        prefix_rewrite,
        regex_rewrite,
        path_rewrite_policy,
        path_rewrite,
        append_x_forwarded_host,
        timeout,
        idle_timeout,
        flush_timeout,
        early_data_policy,
        retry_policy,
        retry_policy_typed_config,
        request_mirror_policies,
        priority,
        rate_limits,
        include_vh_rate_limits,
        hash_policy,
        cors,
        max_grpc_timeout,
        grpc_timeout_offset,
        upgrade_configs,
        internal_redirect_policy,
        internal_redirect_action,
        max_internal_redirects,
        hedge_policy,
        max_stream_duration,
        cluster_specifier,
        host_rewrite_specifier,
    } = ra;
    deny(path, "metadata_match", metadata_match)?;
    deny(path, "path_rewrite_policy", path_rewrite_policy)?;
    deny(path, "path_rewrite", path_rewrite)?;
    deny(path, "flush_timeout", flush_timeout)?;
    deny(path, "early_data_policy", early_data_policy)?;
    deny(path, "retry_policy_typed_config", retry_policy_typed_config)?;
    let retry_policy = retry_policy
        .as_ref()
        .map(|r| RetryPolicy::from_proto(&path.field("retry_policy"), r).map(Arc::new))
        .transpose()?;
    let mirrors = MirrorPolicy::list(path, request_mirror_policies, vhost_mirrors)?;
    enum_value::<pb::core::RoutingPriority>(path, "priority", *priority, |p| {
        *p == pb::core::RoutingPriority::Default
    })?;
    let rate_limits =
        super::local_ratelimit::RateLimitPolicy::list(path, "rate_limits", rate_limits)?;
    let include_vh_rate_limits = super::core::bool_or(include_vh_rate_limits, false);
    let hash_policy = hash_policy
        .iter()
        .enumerate()
        .map(|(i, h)| {
            super::hash_policy::HashPolicy::from_proto(&path.field("hash_policy").index(i), h)
        })
        .collect::<Result<Vec<_>>>()?;
    let cors = cors
        .as_ref()
        .map(|c| super::cors::CorsPolicy::from_route_proto(&path.field("cors"), c).map(Arc::new))
        .transpose()?;
    deny(path, "max_grpc_timeout", max_grpc_timeout)?;
    deny(path, "grpc_timeout_offset", grpc_timeout_offset)?;
    deny(path, "internal_redirect_policy", internal_redirect_policy)?;
    deny(path, "internal_redirect_action", internal_redirect_action)?;
    deny(path, "max_internal_redirects", max_internal_redirects)?;
    deny(path, "hedge_policy", hedge_policy)?;
    deny(path, "max_stream_duration", max_stream_duration)?;

    let cluster_not_found_code = match enum_value::<C>(
        path,
        "cluster_not_found_response_code",
        *cluster_not_found_response_code,
        |_| true,
    )? {
        C::ServiceUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        C::NotFound => StatusCode::NOT_FOUND,
        C::InternalServerError => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let cluster = match cluster_specifier {
        Some(CS::Cluster(c)) if !c.is_empty() => ClusterTarget::Name(c.as_str().into()),
        Some(CS::Cluster(_)) => return Err(path.field("cluster").error("must not be empty")),
        Some(CS::ClusterHeader(h)) => ClusterTarget::Header(
            HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes())
                .map_err(|_| path.field("cluster_header").error("invalid header name"))?,
        ),
        Some(CS::WeightedClusters(w)) => {
            ClusterTarget::Weighted(weighted(&path.field("weighted_clusters"), w, inputs)?)
        }
        Some(CS::ClusterSpecifierPlugin(_)) => {
            return Err(path.unsupported("cluster_specifier_plugin"));
        }
        Some(CS::InlineClusterSpecifierPlugin(_)) => {
            return Err(path.unsupported("inline_cluster_specifier_plugin"));
        }
        None => {
            return Err(
                path.error("one of cluster, cluster_header or weighted_clusters is required")
            );
        }
    };
    let prefix_rewrite = if prefix_rewrite.is_empty() {
        None
    } else {
        if matches!(path_match, PathMatch::Regex(_)) {
            return Err(path
                .field("prefix_rewrite")
                .error("cannot be used with a safe_regex route match"));
        }
        Some(prefix_rewrite.clone())
    };
    let regex_rewrite = match regex_rewrite {
        Some(rr) => {
            if prefix_rewrite.is_some() {
                return Err(path.error("prefix_rewrite and regex_rewrite are mutually exclusive"));
            }
            Some(regex_substitution(&path.field("regex_rewrite"), rr)?)
        }
        None => None,
    };
    let host_rewrite = match host_rewrite_specifier {
        None => HostRewrite::None,
        Some(H::HostRewriteLiteral(h)) => HostRewrite::Literal(
            HeaderValue::from_str(h)
                .map_err(|_| path.field("host_rewrite_literal").error("invalid host"))?,
        ),
        Some(H::AutoHostRewrite(b)) => {
            if b.value {
                HostRewrite::Auto
            } else {
                HostRewrite::None
            }
        }
        Some(H::HostRewriteHeader(h)) => HostRewrite::Header(
            HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).map_err(|_| {
                path.field("host_rewrite_header")
                    .error("invalid header name")
            })?,
        ),
        Some(H::HostRewritePathRegex(_)) => return Err(path.unsupported("host_rewrite_path_regex")),
        Some(H::HostRewrite(_)) => return Err(path.unsupported("host_rewrite")),
    };
    let mut upgrades = Vec::new();
    for (i, u) in upgrade_configs.iter().enumerate() {
        let up = path.field("upgrade_configs").index(i);
        let pb::route::route_action::UpgradeConfig {
            upgrade_type,
            enabled,
            connect_config,
        } = u;
        deny(&up, "connect_config", connect_config)?;
        if upgrade_type.eq_ignore_ascii_case("connect") {
            return Err(up.field("upgrade_type").error("CONNECT is not supported"));
        }
        upgrades.push((
            upgrade_type.to_ascii_lowercase(),
            enabled.as_ref().map(|b| b.value).unwrap_or(true),
        ));
    }
    Ok(ForwardAction {
        cluster,
        cluster_not_found_code,
        prefix_rewrite,
        regex_rewrite,
        host_rewrite,
        append_x_forwarded_host: *append_x_forwarded_host,
        timeout: timeout_or(path, "timeout", timeout, Some(DEFAULT_ROUTE_TIMEOUT))?,
        idle_timeout: opt_duration(path, "idle_timeout", idle_timeout)?,
        upgrades,
        retry_policy,
        hash_policy,
        rate_limits,
        include_vh_rate_limits,
        cors,
        mirrors,
    })
}

pub(crate) fn regex_substitution(
    path: &FieldPath,
    rr: &pb::matcher::RegexMatchAndSubstitute,
) -> Result<(Regex, String)> {
    let pb::matcher::RegexMatchAndSubstitute {
        pattern,
        substitution,
    } = rr;
    let pattern = pattern
        .as_ref()
        .ok_or_else(|| path.field("pattern").error("is required"))?;
    let re = search_regex(&path.field("pattern"), pattern)?;
    // RE2 writes capture references as \1; the regex crate as ${1}.
    let mut sub = String::with_capacity(substitution.len());
    let mut chars = substitution.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.peek() {
                Some(d) if d.is_ascii_digit() => {
                    sub.push_str(&format!("${{{d}}}"));
                    chars.next();
                }
                Some('\\') => {
                    sub.push('\\');
                    chars.next();
                }
                _ => sub.push('\\'),
            },
            '$' => sub.push_str("$$"),
            other => sub.push(other),
        }
    }
    Ok((re, sub))
}

fn weighted(
    path: &FieldPath,
    w: &pb::route::WeightedCluster,
    inputs: &Inputs,
) -> Result<WeightedClusters> {
    let pb::route::WeightedCluster {
        clusters,
        total_weight,
        runtime_key_prefix,
        random_value_specifier,
    } = w;
    deny(path, "runtime_key_prefix", runtime_key_prefix)?;
    deny(path, "random_value_specifier", random_value_specifier)?;
    if clusters.is_empty() {
        return Err(path
            .field("clusters")
            .error("at least one cluster is required"));
    }
    let mut out = Vec::with_capacity(clusters.len());
    let mut sum = 0u64;
    for (i, c) in clusters.iter().enumerate() {
        let cp = path.field("clusters").index(i);
        let pb::route::weighted_cluster::ClusterWeight {
            name,
            cluster_header,
            weight,
            metadata_match,
            request_headers_to_add,
            request_headers_to_remove,
            response_headers_to_add,
            response_headers_to_remove,
            typed_per_filter_config,
            host_rewrite_specifier,
        } = c;
        deny(&cp, "cluster_header", cluster_header)?;
        deny(&cp, "metadata_match", metadata_match)?;
        let per_filter = PerFilterConfigs::from_proto(
            &cp.field("typed_per_filter_config"),
            typed_per_filter_config,
        )?;
        if name.is_empty() {
            return Err(cp.field("name").error("must not be empty"));
        }
        let weight = weight.as_ref().map(|w| w.value).unwrap_or(0);
        sum += weight as u64;
        let host_rewrite_literal = match host_rewrite_specifier {
            Some(pb::route::weighted_cluster::cluster_weight::HostRewriteSpecifier::HostRewriteLiteral(h)) => {
                Some(HeaderValue::from_str(h).map_err(|_| cp.field("host_rewrite_literal").error("invalid host"))?)
            }
            None => None,
        };
        out.push(WeightedCluster {
            per_filter,
            name: name.as_str().into(),
            weight,
            request_headers: HeaderMutations::request(
                &cp,
                request_headers_to_add,
                request_headers_to_remove,
                inputs,
            )?,
            response_headers: HeaderMutations::response(
                &cp,
                response_headers_to_add,
                response_headers_to_remove,
                inputs,
            )?,
            host_rewrite_literal,
        });
    }
    if let Some(t) = total_weight
        && t.value as u64 != sum
    {
        return Err(path.field("total_weight").error(format!(
            "is {} but the cluster weights add up to {sum}",
            t.value
        )));
    }
    if sum == 0 {
        return Err(path
            .field("clusters")
            .error("the sum of weights must be greater than 0"));
    }
    Ok(WeightedClusters {
        clusters: out,
        total_weight: sum,
    })
}

impl WeightedClusters {
    /// Pick a cluster for a random value in `[0, total_weight)`.
    pub fn pick(&self, random: u64) -> &WeightedCluster {
        let mut point = random % self.total_weight;
        for c in &self.clusters {
            if point < c.weight as u64 {
                return c;
            }
            point -= c.weight as u64;
        }
        &self.clusters[self.clusters.len() - 1]
    }
}

fn redirect(
    path: &FieldPath,
    r: &pb::route::RedirectAction,
    path_match: &PathMatch,
) -> Result<Redirect> {
    use pb::route::redirect_action::{
        PathRewriteSpecifier as P, RedirectResponseCode as C, SchemeRewriteSpecifier as S,
    };
    let pb::route::RedirectAction {
        host_redirect,
        port_redirect,
        response_code,
        strip_query,
        scheme_rewrite_specifier,
        path_rewrite_specifier,
    } = r;
    let code = match enum_value::<C>(path, "response_code", *response_code, |_| true)? {
        C::MovedPermanently => StatusCode::MOVED_PERMANENTLY,
        C::Found => StatusCode::FOUND,
        C::SeeOther => StatusCode::SEE_OTHER,
        C::TemporaryRedirect => StatusCode::TEMPORARY_REDIRECT,
        C::PermanentRedirect => StatusCode::PERMANENT_REDIRECT,
    };
    let scheme = match scheme_rewrite_specifier {
        Some(S::HttpsRedirect(true)) => Some("https".to_string()),
        Some(S::HttpsRedirect(false)) | None => None,
        Some(S::SchemeRedirect(s)) => Some(s.to_ascii_lowercase()),
    };
    let port = match *port_redirect {
        0 => None,
        p => Some(
            u16::try_from(p).map_err(|_| path.field("port_redirect").error("port out of range"))?,
        ),
    };
    let rpath = match path_rewrite_specifier {
        None => RedirectPath::Keep,
        Some(P::PathRedirect(p)) => RedirectPath::Path(p.clone()),
        Some(P::PrefixRewrite(p)) => {
            if matches!(path_match, PathMatch::Regex(_)) {
                return Err(path
                    .field("prefix_rewrite")
                    .error("cannot be used with a safe_regex route match"));
            }
            RedirectPath::PrefixRewrite(p.clone())
        }
        Some(P::RegexRewrite(rr)) => {
            let (re, sub) = regex_substitution(&path.field("regex_rewrite"), rr)?;
            RedirectPath::RegexRewrite(re, sub)
        }
        Some(P::PathRewrite(_)) => return Err(path.unsupported("path_rewrite")),
    };
    Ok(Redirect {
        scheme,
        host: (!host_redirect.is_empty()).then(|| host_redirect.clone()),
        port,
        path: rpath,
        code,
        strip_query: *strip_query,
    })
}

fn direct_response(
    path: &FieldPath,
    d: &pb::route::DirectResponseAction,
    max: usize,
    inputs: &Inputs,
) -> Result<DirectResponse> {
    let pb::route::DirectResponseAction {
        status,
        body,
        body_format,
    } = d;
    deny(path, "body_format", body_format)?;
    let status = u16::try_from(*status)
        .ok()
        .filter(|s| (100..600).contains(s))
        .and_then(|s| StatusCode::from_u16(s).ok())
        .ok_or_else(|| {
            path.field("status")
                .error(format!("{status} is not a valid HTTP status (100..599)"))
        })?;
    let body = match body {
        Some(b) => {
            let bytes = super::core::data_source(&path.field("body"), b, inputs)?;
            if bytes.len() > max {
                return Err(path.field("body").error(format!(
                    "response body size is {} bytes; maximum is {max}",
                    bytes.len()
                )));
            }
            Some(bytes)
        }
        None => None,
    };
    Ok(DirectResponse { status, body })
}

/// Apply `prefix_rewrite` / `regex_rewrite` to a `path?query`. The query string is kept.
pub fn rewrite_path(
    f: &ForwardAction,
    path_and_query: &str,
    matched_prefix_len: usize,
) -> Option<String> {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    let new_path = if let Some(prefix) = &f.prefix_rewrite {
        let rest = path.get(matched_prefix_len.min(path.len())..).unwrap_or("");
        format!("{prefix}{rest}")
    } else if let Some((re, sub)) = &f.regex_rewrite {
        re.replace_all(path, sub.as_str()).into_owned()
    } else {
        return None;
    };
    Some(match query {
        Some(q) => format!("{new_path}?{q}"),
        None => new_path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rc(yaml: &str) -> Result<RouteConfig> {
        let path = FieldPath::new("route_config");
        let proto: pb::route::RouteConfiguration =
            crate::config::decode_yaml("envoy.config.route.v3.RouteConfiguration", yaml, &path);
        RouteConfig::from_proto(&path, &proto, 4096, &Inputs::none())
    }

    /// Translation reads no file: it asks its inputs, which note what is wanted.
    #[test]
    fn files_come_from_the_inputs() {
        let path = FieldPath::new("route_config");
        let yaml = r#"
virtual_hosts:
- name: a
  domains: ["*"]
  routes:
  - match: {prefix: /}
    direct_response: {status: 200, body: {filename: /etc/hostname}}
"#;
        let proto: pb::route::RouteConfiguration =
            crate::config::decode_yaml("envoy.config.route.v3.RouteConfiguration", yaml, &path);
        let none = Inputs::none();
        let e = RouteConfig::from_proto(&path, &proto, 4096, &none).unwrap_err();
        assert!(
            e.to_string().contains("'/etc/hostname' has not been read"),
            "{e}"
        );
        let wanted = none.take_wanted();
        assert_eq!(wanted.files.iter().collect::<Vec<_>>(), ["/etc/hostname"]);

        let read = none.with(
            [(
                "/etc/hostname".to_string(),
                Ok(Bytes::from_static(b"given")),
            )],
            [],
        );
        let rc = RouteConfig::from_proto(&path, &proto, 4096, &read).unwrap();
        let RouteAction::Direct(d) = &rc.virtual_hosts[0].routes[0].action else {
            panic!("a direct response");
        };
        assert_eq!(d.body.as_deref(), Some(&b"given"[..]));
    }

    /// Every virtual host and route is translated: one error names all their problems.
    #[test]
    fn errors_of_every_virtual_host_and_route() {
        let e = rc(r#"
virtual_hosts:
- name: a
  domains: ["a"]
  routes:
  - match: {prefix: /}
    route: {cluster: c, regex_rewrite: {pattern: {regex: "("}, substitution: x}}
  - match: {prefix: /x}
    route: {cluster: c}
  - match: {prefix: /y}
    direct_response: {status: 99}
- name: b
  domains: []
- name: c
  domains: ["c"]
"#)
        .unwrap_err();
        let text = e.to_string();
        let lines: Vec<String> = e.iter().map(|e| e.alone()).collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(
            lines[0].starts_with("route_config.virtual_hosts[0].routes[0]"),
            "{text}"
        );
        assert!(
            lines[1].starts_with("route_config.virtual_hosts[0].routes[2]"),
            "{text}"
        );
        assert_eq!(
            lines[2],
            "route_config.virtual_hosts[1].domains: at least one domain is required"
        );
    }

    fn find<'a>(
        c: &'a RouteConfig,
        host: &str,
        path: &str,
        headers: &HeaderMap,
    ) -> Option<(&'a str, &'a Route, usize)> {
        let req = RouteRequest {
            headers: RequestHeaders {
                method: &http::Method::GET,
                path_and_query: path,
                authority: host,
                scheme: "http",
                headers,
            },
            host,
            is_tls: false,
            is_internal: false,
        };
        match c.route(&req) {
            RouteMatch::Route {
                vhost,
                route,
                matched_prefix_len,
            } => Some((&vhost.name, route, matched_prefix_len)),
            _ => None,
        }
    }
    use http::HeaderMap;

    #[test]
    fn vhost_selection_order() {
        let c = rc(r#"
virtual_hosts:
- {name: exact, domains: ["api.example.com", "api.example.com:8080"], routes: [{match: {prefix: "/"}, direct_response: {status: 200}}]}
- {name: suffix_long, domains: ["*.api.example.com"], routes: [{match: {prefix: "/"}, direct_response: {status: 200}}]}
- {name: suffix, domains: ["*.example.com"], routes: [{match: {prefix: "/"}, direct_response: {status: 200}}]}
- {name: prefix, domains: ["api.*"], routes: [{match: {prefix: "/"}, direct_response: {status: 200}}]}
- {name: default, domains: ["*"], routes: [{match: {prefix: "/"}, direct_response: {status: 200}}]}
"#)
        .unwrap();
        let h = HeaderMap::new();
        let name = |host: &str| find(&c, host, "/", &h).unwrap().0.to_string();
        assert_eq!(name("api.example.com"), "exact");
        assert_eq!(name("api.example.com:8080"), "exact");
        assert_eq!(name("x.api.example.com"), "suffix_long");
        assert_eq!(name("www.example.com"), "suffix");
        assert_eq!(name("api.other.org"), "prefix");
        assert_eq!(name("api.example.com:9999"), "prefix");
        assert_eq!(name("other"), "default");
        assert_eq!(
            name(".example.com"),
            "default",
            "a wildcard matches at least one character"
        );
    }

    #[test]
    fn duplicate_domains_are_refused() {
        let e = rc("virtual_hosts: [{name: a, domains: [x], routes: []}, {name: b, domains: [X], routes: []}]").unwrap_err();
        assert!(e.to_string().starts_with("route_config.virtual_hosts[1].domains[0]: Only unique values for domains are permitted"), "{e}");
    }

    #[test]
    fn path_matching_kinds() {
        let c = rc(r#"
virtual_hosts:
- name: v
  domains: ["*"]
  routes:
  - {name: exact, match: {path: "/exact"}, direct_response: {status: 200}}
  - {name: sep, match: {path_separated_prefix: "/api"}, direct_response: {status: 200}}
  - {name: regex, match: {safe_regex: {regex: "/r/[0-9]+"}}, direct_response: {status: 200}}
  - {name: ci, match: {prefix: "/CI", case_sensitive: false}, direct_response: {status: 200}}
  - {name: hdr, match: {prefix: "/h", headers: [{name: x-v, string_match: {exact: "2"}}]}, direct_response: {status: 200}}
  - {name: query, match: {prefix: "/q", query_parameters: [{name: debug, present_match: true}]}, direct_response: {status: 200}}
  - {name: grpc, match: {prefix: "/g", grpc: {}}, direct_response: {status: 200}}
  - {name: rest, match: {prefix: "/"}, direct_response: {status: 404}}
"#)
        .unwrap();
        let h = HeaderMap::new();
        let name = |p: &str, h: &HeaderMap| {
            find(&c, "x", p, h)
                .map(|(_, r, _)| r.name.as_deref().unwrap_or("").to_string())
                .unwrap()
        };
        assert_eq!(name("/exact", &h), "exact");
        assert_eq!(name("/exact?x=1", &h), "exact");
        assert_eq!(name("/exactly", &h), "rest");
        assert_eq!(name("/api", &h), "sep");
        assert_eq!(name("/api/v1", &h), "sep");
        assert_eq!(name("/apiv1", &h), "rest");
        assert_eq!(name("/r/123", &h), "regex");
        assert_eq!(name("/r/12a", &h), "rest");
        assert_eq!(name("/ci/x", &h), "ci");
        assert_eq!(name("/h", &h), "rest");
        let mut hv = HeaderMap::new();
        hv.insert("x-v", "2".parse().unwrap());
        assert_eq!(name("/h", &hv), "hdr");
        assert_eq!(name("/q?debug", &h), "query");
        assert_eq!(name("/q", &h), "rest");
        let mut g = HeaderMap::new();
        g.insert("content-type", "application/grpc+proto".parse().unwrap());
        assert_eq!(name("/g", &g), "grpc");
        assert_eq!(name("/g", &h), "rest");
    }

    #[test]
    fn mirror_policies_come_from_the_most_specific_level_that_has_them() {
        let c = rc(r#"
request_mirror_policies: [{cluster: from_rc}]
virtual_hosts:
- name: with
  domains: ["with"]
  request_mirror_policies: [{cluster: from_vh}, {cluster_header: x-m}]
  routes:
  - match: {prefix: "/own"}
    route: {cluster: a, request_mirror_policies: [{cluster: from_route}]}
  - match: {prefix: "/"}
    route: {cluster: a}
- name: without
  domains: ["*"]
  routes:
  - match: {prefix: "/"}
    route: {cluster: a}
"#)
        .unwrap();
        let h = HeaderMap::new();
        let names = |host: &str, path: &str| -> Vec<String> {
            let (_, r, _) = find(&c, host, path, &h).unwrap();
            let RouteAction::Forward(f) = &r.action else {
                panic!()
            };
            f.mirrors
                .iter()
                .map(|m| match &m.cluster {
                    MirrorCluster::Name(n) => n.to_string(),
                    MirrorCluster::Header(h) => format!("header {h}"),
                })
                .collect()
        };
        assert_eq!(names("with", "/own"), ["from_route"]);
        assert_eq!(names("with", "/x"), ["from_vh", "header x-m"]);
        assert_eq!(names("other", "/x"), ["from_rc"]);
        // Named mirror clusters are validated with the routes' clusters.
        for n in ["from_route", "from_vh", "from_rc", "a"] {
            assert!(c.referenced_clusters.iter().any(|r| &**r == n), "{n}");
        }
        let e = rc(r#"
virtual_hosts:
- name: v
  domains: ["*"]
  routes:
  - match: {prefix: "/"}
    route: {cluster: a, request_mirror_policies: [{cluster: m, request_headers_mutations: [{remove: x}]}]}
"#)
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("routes[0].route.request_mirror_policies[0].request_headers_mutations"),
            "{e}"
        );
    }

    #[test]
    fn rewrites_and_weights() {
        let c = rc(r#"
virtual_hosts:
- name: v
  domains: ["*"]
  routes:
  - match: {prefix: "/old/"}
    route: {cluster: a, prefix_rewrite: "/new/", timeout: 0s}
  - match: {prefix: "/re"}
    route: {cluster: a, regex_rewrite: {pattern: {regex: "^/re/(\\d+)$"}, substitution: "/id/\\1"}}
  - match: {prefix: "/w"}
    route: {weighted_clusters: {clusters: [{name: a, weight: 1}, {name: b, weight: 3}]}}
"#)
        .unwrap();
        let h = HeaderMap::new();
        let (_, r, len) = find(&c, "x", "/old/x?q=1", &h).unwrap();
        let RouteAction::Forward(f) = &r.action else {
            panic!()
        };
        assert_eq!(rewrite_path(f, "/old/x?q=1", len).unwrap(), "/new/x?q=1");
        assert_eq!(f.timeout, None);
        let (_, r, len) = find(&c, "x", "/re/42", &h).unwrap();
        let RouteAction::Forward(f) = &r.action else {
            panic!()
        };
        assert_eq!(rewrite_path(f, "/re/42", len).unwrap(), "/id/42");
        assert_eq!(f.timeout, Some(DEFAULT_ROUTE_TIMEOUT));
        let (_, r, _) = find(&c, "x", "/w", &h).unwrap();
        let RouteAction::Forward(f) = &r.action else {
            panic!()
        };
        let ClusterTarget::Weighted(w) = &f.cluster else {
            panic!()
        };
        assert_eq!(&*w.pick(0).name, "a");
        assert_eq!(&*w.pick(1).name, "b");
        assert_eq!(&*w.pick(3).name, "b");
        assert_eq!(&*w.pick(4).name, "a");
        assert_eq!(c.referenced_clusters.len(), 2);
    }

    #[test]
    fn unsupported_fields_are_refused_by_path() {
        let e = rc("virtual_hosts: [{name: v, domains: ['*'], routes: [{match: {prefix: /}, route: {cluster: a, hedge_policy: {hedge_on_per_try_timeout: true}}}]}]").unwrap_err();
        assert_eq!(
            e.to_string(),
            "route_config.virtual_hosts[0].routes[0].route.hedge_policy: is not supported"
        );
        let e = rc("virtual_hosts: [{name: v, domains: ['*'], retry_policy: {retry_on: 5xx, retry_priority: {name: p}}, routes: [{match: {prefix: /}, route: {cluster: a}}]}]").unwrap_err();
        assert_eq!(
            e.to_string(),
            "route_config.virtual_hosts[0].retry_policy.retry_priority: is not supported"
        );
    }
}
