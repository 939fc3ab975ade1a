//! `envoy.filters.http.rbac` and `envoy.filters.network.rbac` (and `RBACPerRoute`) → validated
//! engines: `envoy.config.rbac.v3.RBAC` policies (their permissions, principals and CEL
//! condition) or the unified matcher form (`matcher`/`shadow_matcher`: a matcher list of
//! predicates on the inputs Envoy allows RBAC, each ending in an `envoy.config.rbac.v3.Action`).
//! Regexes are compiled here, once. The runtime (`filters::common::rbac`) evaluates them.

use std::sync::Arc;

use super::cel;
use super::core::{any_type, decode_any, opt_duration};
use super::listener::Cidr;
use super::matcher::{
    FilterStateMatcher, HeaderKey, HeaderMatch, HeaderMatcher, MetadataMatcher, PathMatcher,
    StringMatcher, StringPattern,
};
use super::pb;
use crate::config::error::Errors;
use crate::config::{FieldPath, Result};

pub const HTTP_RBAC_TYPE: &str = "envoy.extensions.filters.http.rbac.v3.RBAC";
pub const HTTP_RBAC_PER_ROUTE_TYPE: &str = "envoy.extensions.filters.http.rbac.v3.RBACPerRoute";
pub const NETWORK_RBAC_TYPE: &str = "envoy.extensions.filters.network.rbac.v3.RBAC";
const ACTION_TYPE: &str = "envoy.config.rbac.v3.Action";

/// `RBAC.Action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
    Log,
}

impl Action {
    fn from_i32(path: &FieldPath, v: i32) -> Result<Self> {
        use pb::rbac::rbac::Action as A;
        match A::try_from(v) {
            Ok(A::Allow) => Ok(Action::Allow),
            Ok(A::Deny) => Ok(Action::Deny),
            Ok(A::Log) => Ok(Action::Log),
            Err(_) => Err(path.error(format!("unknown enum value {v}"))),
        }
    }
}

/// `envoy.config.rbac.v3.Permission`.
#[derive(Debug, Clone)]
pub enum Permission {
    Any,
    And(Vec<Permission>),
    Or(Vec<Permission>),
    Not(Box<Permission>),
    Header(HeaderMatcher),
    /// A `:method` header matcher of `exact` methods (case-sensitive, not inverted) and an
    /// `or_rules` of them, compiled to the request's method compared without a header read.
    Methods(Box<[http::Method]>),
    UrlPath(PathMatcher),
    DestinationIp(Cidr),
    DestinationPort(u16),
    /// `[start, end)`.
    DestinationPortRange(u32, u32),
    Metadata(MetadataMatcher),
    RequestedServerName(StringMatcher),
}

/// `envoy.config.rbac.v3.Principal`.
#[derive(Debug, Clone)]
pub enum Principal {
    Any,
    And(Vec<Principal>),
    Or(Vec<Principal>),
    Not(Box<Principal>),
    /// `None`: any TLS peer.
    Authenticated(Option<PrincipalName>),
    /// The connection's remote address.
    SourceIp(Cidr),
    /// The socket's peer, whatever a proxy protocol or `x-forwarded-for` said.
    DirectRemoteIp(Cidr),
    /// The downstream address after `x-forwarded-for` processing.
    RemoteIp(Cidr),
    Header(HeaderMatcher),
    UrlPath(PathMatcher),
    Metadata(MetadataMatcher),
    FilterState(FilterStateMatcher),
}

/// `authenticated.principal_name`: the matcher, and a literal every name it matches contains
/// (the `NS` of Istio's `.*/ns/NS/.*`), searched first: a peer's SANs and subject that do not
/// contain it are refused without the matcher (most names, for most policies).
#[derive(Debug, Clone)]
pub struct PrincipalName {
    pub matcher: StringMatcher,
    required: Option<Box<str>>,
}

impl PrincipalName {
    pub fn new(matcher: StringMatcher) -> Self {
        let required = match &matcher.pattern {
            StringPattern::Regex(r) => required_literal(&r.source).map(Into::into),
            _ => None,
        };
        Self { matcher, required }
    }

    pub fn matches(&self, name: &str) -> bool {
        self.required.as_deref().is_none_or(|l| name.contains(l)) && self.matcher.matches(name)
    }
}

/// The literal of a regex `.*LIT.*`, `LIT.*` or `.*LIT` whose `LIT` has no metacharacter: a
/// string the regex fully matches contains it.
fn required_literal(regex: &str) -> Option<&str> {
    let lit = regex.strip_prefix(".*").unwrap_or(regex);
    let lit = lit.strip_suffix(".*").unwrap_or(lit);
    let plain = lit.len() < regex.len()
        && !lit.is_empty()
        && !lit.contains(|c: char| "\\.+*?()|[]{}^$".contains(c));
    plain.then_some(lit)
}

/// One named policy: a permission AND a principal (each list ORed) AND the condition.
#[derive(Debug, Clone)]
pub struct Policy {
    pub name: Arc<str>,
    pub permissions: Vec<Permission>,
    pub principals: Vec<Principal>,
    pub condition: Option<cel::Expr>,
}

/// `envoy.config.rbac.v3.RBAC`: the policies sorted by name, as Envoy's `std::map` holds them
/// (the first matching one is the effective policy).
#[derive(Debug, Clone)]
pub struct Rules {
    pub action: Action,
    pub policies: Vec<Policy>,
}

/// What a matcher's input reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// All values joined with `,`.
    RequestHeader(super::matcher::HeaderKey),
    DestinationIp,
    DestinationPort,
    SourceIp,
    SourcePort,
    DirectSourceIp,
    ServerName,
    /// The peer certificate's URI SANs joined with `,`.
    UriSan,
    DnsSan,
    Subject,
}

/// A matcher-list predicate.
#[derive(Debug, Clone)]
pub enum Predicate {
    Single(Input, StringMatcher),
    Or(Vec<Predicate>),
    And(Vec<Predicate>),
    Not(Box<Predicate>),
}

/// A matcher's action: `envoy.config.rbac.v3.Action`.
#[derive(Debug, Clone)]
pub struct MatchAction {
    pub name: Arc<str>,
    pub action: Action,
}

/// The unified matcher form: the first predicate that matches decides, else `on_no_match`,
/// else deny.
#[derive(Debug, Clone)]
pub struct MatcherRules {
    pub matchers: Vec<(Predicate, MatchAction)>,
    pub on_no_match: Option<MatchAction>,
    /// Some action is LOG: every evaluation sets `access_log_hint`.
    pub has_log: bool,
}

/// An engine: policies, or the matcher form.
#[derive(Debug, Clone)]
pub enum Engine {
    Rules(Rules),
    Matcher(MatcherRules),
}

/// `envoy.extensions.filters.http.rbac.v3.RBAC` (and the `rbac` of `RBACPerRoute`).
#[derive(Debug, Clone, Default)]
pub struct HttpRbac {
    /// `None`: no engine (everything is allowed).
    pub engine: Option<Engine>,
    pub shadow: Option<Engine>,
    pub rules_stat_prefix: String,
    pub shadow_rules_stat_prefix: String,
    pub track_per_rule_stats: bool,
}

/// `envoy.extensions.filters.network.rbac.v3.RBAC`.
#[derive(Debug, Clone)]
pub struct NetworkRbac {
    pub engine: Option<Engine>,
    pub shadow: Option<Engine>,
    pub stat_prefix: String,
    pub shadow_rules_stat_prefix: String,
    /// `CONTINUOUS`: evaluated on every read, not only the first.
    pub continuous: bool,
    /// How long a denied connection is held (reads stopped) before it is closed.
    pub delay_deny: Option<std::time::Duration>,
}

/// Which filter an engine is for: the inputs the matcher form may read differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Http,
    Network,
}

// === impl HttpRbac ===

impl HttpRbac {
    pub fn from_proto(path: &FieldPath, c: &pb::http_rbac::Rbac) -> Result<Self> {
        let pb::http_rbac::Rbac {
            rules,
            rules_stat_prefix,
            matcher,
            shadow_rules,
            shadow_matcher,
            shadow_rules_stat_prefix,
            track_per_rule_stats,
        } = c;
        let mut errs = Errors::new();
        let enforced =
            errs.or_default(engine(path, rules, "rules", matcher, "matcher", Side::Http));
        let shadow = errs.or_default(engine(
            path,
            shadow_rules,
            "shadow_rules",
            shadow_matcher,
            "shadow_matcher",
            Side::Http,
        ));
        errs.finish_with(Self {
            engine: enforced,
            shadow,
            rules_stat_prefix: rules_stat_prefix.clone(),
            shadow_rules_stat_prefix: shadow_rules_stat_prefix.clone(),
            track_per_rule_stats: *track_per_rule_stats,
        })
    }

    pub fn from_any(path: &FieldPath, any: &pb::protobuf::Any) -> Result<Self> {
        Self::from_proto(path, &decode_any(path, any)?)
    }
}

/// `RBACPerRoute`: the route's own configuration (its `rbac` absent: no engines, so the filter
/// allows everything on the route).
pub fn per_route(path: &FieldPath, any: &pb::protobuf::Any) -> Result<Arc<HttpRbac>> {
    let pb::http_rbac::RbacPerRoute { rbac } = decode_any(path, any)?;
    Ok(Arc::new(match rbac {
        Some(r) => HttpRbac::from_proto(&path.field("rbac"), &r)?,
        None => HttpRbac::default(),
    }))
}

// === impl NetworkRbac ===

impl NetworkRbac {
    pub fn from_any(path: &FieldPath, any: &pb::protobuf::Any) -> Result<Self> {
        use pb::network_rbac::rbac::EnforcementType;
        let pb::network_rbac::Rbac {
            rules,
            matcher,
            shadow_rules,
            shadow_matcher,
            shadow_rules_stat_prefix,
            stat_prefix,
            enforcement_type,
            delay_deny,
        } = decode_any(path, any)?;
        let mut errs = Errors::new();
        if stat_prefix.is_empty() {
            errs.push(path.field("stat_prefix").error("must not be empty"));
        }
        let enforced = errs.or_default(engine(
            path,
            &rules,
            "rules",
            &matcher,
            "matcher",
            Side::Network,
        ));
        let shadow = errs.or_default(engine(
            path,
            &shadow_rules,
            "shadow_rules",
            &shadow_matcher,
            "shadow_matcher",
            Side::Network,
        ));
        let continuous = match EnforcementType::try_from(enforcement_type) {
            Ok(EnforcementType::OneTimeOnFirstByte) => false,
            Ok(EnforcementType::Continuous) => true,
            Err(_) => {
                errs.push(
                    path.field("enforcement_type")
                        .error(format!("unknown enum value {enforcement_type}")),
                );
                false
            }
        };
        let delay_deny = errs.or_default(opt_duration(path, "delay_deny", &delay_deny));
        errs.finish_with(Self {
            engine: enforced,
            shadow,
            stat_prefix,
            shadow_rules_stat_prefix,
            continuous,
            delay_deny: delay_deny.filter(|d| !d.is_zero()),
        })
    }
}

/// The engine of `rules`/`matcher` (the matcher wins when both are set, as in Envoy).
fn engine(
    path: &FieldPath,
    rules: &Option<pb::rbac::Rbac>,
    rules_field: &str,
    matcher: &Option<pb::xds_matcher::Matcher>,
    matcher_field: &str,
    side: Side,
) -> Result<Option<Engine>> {
    if let Some(m) = matcher {
        return matcher_rules(&path.field(matcher_field), m, side)
            .map(|m| Some(Engine::Matcher(m)));
    }
    match rules {
        Some(r) => Rules::from_proto(&path.field(rules_field), r).map(|r| Some(Engine::Rules(r))),
        None => Ok(None),
    }
}

// === impl Rules ===

impl Rules {
    pub fn from_proto(path: &FieldPath, r: &pb::rbac::Rbac) -> Result<Self> {
        let pb::rbac::Rbac {
            action,
            policies,
            audit_logging_options,
        } = r;
        let mut errs = Errors::new();
        if audit_logging_options.is_some() {
            errs.push(path.unsupported("audit_logging_options"));
        }
        let action = errs.take(Action::from_i32(&path.field("action"), *action));
        let mut names: Vec<&String> = policies.keys().collect();
        names.sort();
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            if let Some(p) = errs.take(policy(
                &path.field("policies").key(name),
                name,
                &policies[name],
            )) {
                out.push(p);
            }
        }
        let action = errs.finish_some(action)?;
        Ok(Self {
            action,
            policies: out,
        })
    }
}

fn policy(path: &FieldPath, name: &str, p: &pb::rbac::Policy) -> Result<Policy> {
    let pb::rbac::Policy {
        permissions,
        principals,
        condition,
        checked_condition,
        cel_config,
    } = p;
    let mut errs = Errors::new();
    if permissions.is_empty() {
        errs.push(
            path.field("permissions")
                .error("needs at least one permission"),
        );
    }
    if principals.is_empty() {
        errs.push(
            path.field("principals")
                .error("needs at least one principal"),
        );
    }
    if checked_condition.is_some() {
        errs.push(path.unsupported("checked_condition"));
    }
    if cel_config.is_some() {
        errs.push(path.unsupported("cel_config"));
    }
    let perms: Vec<Permission> = permissions
        .iter()
        .enumerate()
        .filter_map(|(i, p)| errs.take(permission(&path.field("permissions").index(i), p)))
        .collect();
    let ids: Vec<Principal> = principals
        .iter()
        .enumerate()
        .filter_map(|(i, p)| errs.take(principal(&path.field("principals").index(i), p)))
        .collect();
    let condition = match condition {
        Some(c) => errs.take(cel::from_proto(&path.field("condition"), c)),
        None => None,
    };
    errs.finish_with(Policy {
        name: name.into(),
        permissions: perms,
        principals: ids,
        condition,
    })
}

/// A set of one rule is that rule (an AND or an OR of one decides as it does): istiod wraps
/// every rule in one-element `and_rules`/`or_rules`, which would otherwise be walked on every
/// request.
fn single_or<T>(set: Vec<T>, many: fn(Vec<T>) -> T) -> T {
    match <[T; 1]>::try_from(set) {
        Ok([one]) => one,
        Err(set) => many(set),
    }
}

/// An `or_rules`: a set of one rule is that rule, a set of methods one method set.
fn or_permissions(set: Vec<Permission>) -> Permission {
    if set.len() > 1 && set.iter().all(|p| matches!(p, Permission::Methods(_))) {
        let methods = set
            .into_iter()
            .flat_map(|p| match p {
                Permission::Methods(m) => m.into_vec(),
                _ => Vec::new(),
            })
            .collect();
        return Permission::Methods(methods);
    }
    single_or(set, Permission::Or)
}

/// The method of a `:method` matcher that is an exact, case-sensitive, non-inverted string
/// match on a valid method token: it matches exactly the requests of that method (a present
/// `:method` always; an absent one, for the network filter, matches no non-empty string even
/// treated as empty).
fn exact_method(h: &HeaderMatcher) -> Option<http::Method> {
    let HeaderMatch::String(StringMatcher {
        pattern: StringPattern::Exact(m),
        ignore_case: false,
    }) = &h.spec
    else {
        return None;
    };
    if h.key != HeaderKey::Method || h.invert || m.is_empty() {
        return None;
    }
    let method = http::Method::from_bytes(m.as_bytes()).ok()?;
    (method.as_str() == m).then_some(method)
}

/// Envoy's `CidrRange::create`: a prefix length past the family's width is clamped to it.
fn cidr(path: &FieldPath, r: &pb::core::CidrRange) -> Result<Cidr> {
    let pb::core::CidrRange {
        address_prefix,
        prefix_len,
    } = r;
    let addr: std::net::IpAddr = address_prefix.parse().map_err(|_| {
        path.field("address_prefix").error(format!(
            "Failed to create CIDR range: malformed IP address: {address_prefix}"
        ))
    })?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = super::core::u32_or(prefix_len, 0).min(max);
    Ok(Cidr {
        addr,
        len: len as u8,
    })
}

fn permission(path: &FieldPath, p: &pb::rbac::Permission) -> Result<Permission> {
    use pb::rbac::permission::Rule as R;
    let pb::rbac::Permission { rule } = p;
    let set = |field: &str, s: &pb::rbac::permission::Set| -> Result<Vec<Permission>> {
        let sp = path.field(field);
        let pb::rbac::permission::Set { rules } = s;
        if rules.is_empty() {
            return Err(sp.field("rules").error("needs at least one rule"));
        }
        crate::config::error::all(
            rules
                .iter()
                .enumerate()
                .map(|(i, r)| permission(&sp.field("rules").index(i), r)),
        )
    };
    Ok(match rule {
        None => return Err(path.error("a permission needs one of its rules")),
        Some(R::Any(true)) => Permission::Any,
        Some(R::Any(false)) => return Err(path.field("any").error("must be true")),
        Some(R::AndRules(s)) => single_or(set("and_rules", s)?, Permission::And),
        Some(R::OrRules(s)) => or_permissions(set("or_rules", s)?),
        Some(R::NotRule(n)) => Permission::Not(Box::new(permission(&path.field("not_rule"), n)?)),
        Some(R::Header(h)) => {
            let h = HeaderMatcher::from_proto(&path.field("header"), h)?;
            match exact_method(&h) {
                Some(m) => Permission::Methods(Box::new([m])),
                None => Permission::Header(h),
            }
        }
        Some(R::UrlPath(u)) => {
            Permission::UrlPath(PathMatcher::from_proto(&path.field("url_path"), u)?)
        }
        Some(R::DestinationIp(c)) => {
            Permission::DestinationIp(cidr(&path.field("destination_ip"), c)?)
        }
        Some(R::DestinationPort(p)) => match u16::try_from(*p) {
            Ok(p) => Permission::DestinationPort(p),
            Err(_) => {
                return Err(path
                    .field("destination_port")
                    .error("must be at most 65535"));
            }
        },
        Some(R::DestinationPortRange(r)) => {
            let rp = path.field("destination_port_range");
            let pb::types::Int32Range { start, end } = *r;
            if !(0..=65536).contains(&start) {
                return Err(rp
                    .field("start")
                    .error(format!("range start {start} is out of bounds")));
            }
            if !(0..=65536).contains(&end) {
                return Err(rp
                    .field("end")
                    .error(format!("range end {end} is out of bounds")));
            }
            if start >= end {
                return Err(rp.error(format!(
                    "range start {start} cannot be greater or equal than range end {end}"
                )));
            }
            Permission::DestinationPortRange(start as u32, end as u32)
        }
        Some(R::Metadata(m)) => {
            Permission::Metadata(MetadataMatcher::from_proto(&path.field("metadata"), m)?)
        }
        Some(R::RequestedServerName(s)) => Permission::RequestedServerName(
            StringMatcher::from_proto(&path.field("requested_server_name"), s)?,
        ),
        Some(R::SourcedMetadata(s)) => {
            Permission::Metadata(sourced_metadata(&path.field("sourced_metadata"), s)?)
        }
        Some(R::Matcher(_)) => return Err(path.unsupported("matcher")),
        Some(R::UriTemplate(_)) => return Err(path.unsupported("uri_template")),
    })
}

/// `SourcedMetadata` from dynamic metadata (route metadata is refused).
fn sourced_metadata(path: &FieldPath, s: &pb::rbac::SourcedMetadata) -> Result<MetadataMatcher> {
    let pb::rbac::SourcedMetadata {
        metadata_matcher,
        metadata_source,
    } = s;
    if *metadata_source != pb::rbac::MetadataSource::Dynamic as i32 {
        return Err(path
            .field("metadata_source")
            .error("only DYNAMIC is supported"));
    }
    match metadata_matcher {
        Some(m) => MetadataMatcher::from_proto(&path.field("metadata_matcher"), m),
        None => Err(path.field("metadata_matcher").error("is required")),
    }
}

fn principal(path: &FieldPath, p: &pb::rbac::Principal) -> Result<Principal> {
    use pb::rbac::principal::Identifier as I;
    let pb::rbac::Principal { identifier } = p;
    let set = |field: &str, s: &pb::rbac::principal::Set| -> Result<Vec<Principal>> {
        let sp = path.field(field);
        let pb::rbac::principal::Set { ids } = s;
        if ids.is_empty() {
            return Err(sp.field("ids").error("needs at least one principal"));
        }
        crate::config::error::all(
            ids.iter()
                .enumerate()
                .map(|(i, r)| principal(&sp.field("ids").index(i), r)),
        )
    };
    Ok(match identifier {
        None => return Err(path.error("a principal needs one of its identifiers")),
        Some(I::Any(true)) => Principal::Any,
        Some(I::Any(false)) => return Err(path.field("any").error("must be true")),
        Some(I::AndIds(s)) => single_or(set("and_ids", s)?, Principal::And),
        Some(I::OrIds(s)) => single_or(set("or_ids", s)?, Principal::Or),
        Some(I::NotId(n)) => Principal::Not(Box::new(principal(&path.field("not_id"), n)?)),
        Some(I::Authenticated(a)) => {
            let pb::rbac::principal::Authenticated { principal_name } = a;
            Principal::Authenticated(
                principal_name
                    .as_ref()
                    .map(|m| {
                        StringMatcher::from_proto(
                            &path.field("authenticated").field("principal_name"),
                            m,
                        )
                        .map(PrincipalName::new)
                    })
                    .transpose()?,
            )
        }
        #[allow(deprecated)]
        Some(I::SourceIp(c)) => Principal::SourceIp(cidr(&path.field("source_ip"), c)?),
        Some(I::DirectRemoteIp(c)) => {
            Principal::DirectRemoteIp(cidr(&path.field("direct_remote_ip"), c)?)
        }
        Some(I::RemoteIp(c)) => Principal::RemoteIp(cidr(&path.field("remote_ip"), c)?),
        Some(I::Header(h)) => {
            Principal::Header(HeaderMatcher::from_proto(&path.field("header"), h)?)
        }
        Some(I::UrlPath(u)) => {
            Principal::UrlPath(PathMatcher::from_proto(&path.field("url_path"), u)?)
        }
        Some(I::Metadata(m)) => {
            Principal::Metadata(MetadataMatcher::from_proto(&path.field("metadata"), m)?)
        }
        Some(I::FilterState(f)) => Principal::FilterState(FilterStateMatcher::from_proto(
            &path.field("filter_state"),
            f,
        )?),
        Some(I::SourcedMetadata(s)) => {
            Principal::Metadata(sourced_metadata(&path.field("sourced_metadata"), s)?)
        }
        Some(I::Custom(_)) => return Err(path.unsupported("custom")),
    })
}

// === The matcher form ===

fn matcher_rules(
    path: &FieldPath,
    m: &pb::xds_matcher::Matcher,
    side: Side,
) -> Result<MatcherRules> {
    use pb::xds_matcher::matcher::MatcherType;
    let pb::xds_matcher::Matcher {
        on_no_match,
        matcher_type,
    } = m;
    let mut errs = Errors::new();
    let mut has_log = false;
    let mut matchers = Vec::new();
    match matcher_type {
        Some(MatcherType::MatcherList(l)) => {
            let lp = path.field("matcher_list");
            let pb::xds_matcher::matcher::MatcherList { matchers: list } = l;
            if list.is_empty() {
                errs.push(lp.field("matchers").error("needs at least one matcher"));
            }
            for (i, fm) in list.iter().enumerate() {
                let fp = lp.field("matchers").index(i);
                let pb::xds_matcher::matcher::matcher_list::FieldMatcher {
                    predicate,
                    on_match,
                } = fm;
                let pred = match predicate {
                    Some(p) => errs.take(predicate_from(&fp.field("predicate"), p, side)),
                    None => {
                        errs.push(fp.field("predicate").error("is required"));
                        None
                    }
                };
                let action = match on_match {
                    Some(o) => errs.take(on_match_action(&fp.field("on_match"), o)),
                    None => {
                        errs.push(fp.field("on_match").error("is required"));
                        None
                    }
                };
                if let (Some(p), Some(a)) = (pred, action) {
                    has_log |= a.action == Action::Log;
                    matchers.push((p, a));
                }
            }
        }
        Some(MatcherType::MatcherTree(_)) => errs.push(path.unsupported("matcher_tree")),
        None => errs.push(path.error("a matcher needs matcher_list")),
    }
    let on_no_match = match on_no_match {
        Some(o) => errs.take(on_match_action(&path.field("on_no_match"), o)),
        None => None,
    };
    has_log |= on_no_match
        .as_ref()
        .is_some_and(|a| a.action == Action::Log);
    errs.finish_with(MatcherRules {
        matchers,
        on_no_match,
        has_log,
    })
}

fn on_match_action(path: &FieldPath, o: &pb::xds_matcher::matcher::OnMatch) -> Result<MatchAction> {
    use pb::xds_matcher::matcher::on_match::OnMatch as O;
    let pb::xds_matcher::matcher::OnMatch {
        keep_matching,
        on_match,
    } = o;
    if *keep_matching {
        return Err(path.unsupported("keep_matching"));
    }
    match on_match {
        Some(O::Action(a)) => {
            let ap = path.field("action");
            let pb::xds_core::TypedExtensionConfig {
                name: _,
                typed_config,
            } = a;
            let Some(any) = typed_config else {
                return Err(ap.field("typed_config").error("is required"));
            };
            let tp = ap.field("typed_config");
            if any_type(any) != ACTION_TYPE {
                return Err(tp.field("@type").error(format!(
                    "RBAC matcher actions must be {ACTION_TYPE}, got {}",
                    any_type(any)
                )));
            }
            let pb::rbac::Action { name, action } = decode_any(&tp, any)?;
            Ok(MatchAction {
                name: name.into(),
                action: Action::from_i32(&tp.field("action"), action)?,
            })
        }
        Some(O::Matcher(_)) => Err(path.unsupported("matcher")),
        None => Err(path.error("on_match needs an action")),
    }
}

fn predicate_from(
    path: &FieldPath,
    p: &pb::xds_matcher::matcher::matcher_list::Predicate,
    side: Side,
) -> Result<Predicate> {
    use pb::xds_matcher::matcher::matcher_list::predicate::{MatchType as M, single_predicate};
    let pb::xds_matcher::matcher::matcher_list::Predicate { match_type } = p;
    let list = |field: &str,
                l: &pb::xds_matcher::matcher::matcher_list::predicate::PredicateList|
     -> Result<Vec<Predicate>> {
        let lp = path.field(field);
        if l.predicate.len() < 2 {
            return Err(lp.field("predicate").error("needs at least 2 predicates"));
        }
        crate::config::error::all(
            l.predicate
                .iter()
                .enumerate()
                .map(|(i, p)| predicate_from(&lp.field("predicate").index(i), p, side)),
        )
    };
    match match_type {
        Some(M::SinglePredicate(s)) => {
            let sp = path.field("single_predicate");
            let pb::xds_matcher::matcher::matcher_list::predicate::SinglePredicate {
                input,
                matcher,
            } = s;
            let input = match input {
                Some(i) => matcher_input(&sp.field("input"), i, side)?,
                None => return Err(sp.field("input").error("is required")),
            };
            let m = match matcher {
                Some(single_predicate::Matcher::ValueMatch(v)) => {
                    xds_string_matcher(&sp.field("value_match"), v)?
                }
                Some(single_predicate::Matcher::CustomMatch(_)) => {
                    return Err(sp.unsupported("custom_match"));
                }
                None => return Err(sp.error("needs value_match")),
            };
            Ok(Predicate::Single(input, m))
        }
        Some(M::OrMatcher(l)) => Ok(Predicate::Or(list("or_matcher", l)?)),
        Some(M::AndMatcher(l)) => Ok(Predicate::And(list("and_matcher", l)?)),
        Some(M::NotMatcher(n)) => Ok(Predicate::Not(Box::new(predicate_from(
            &path.field("not_matcher"),
            n,
            side,
        )?))),
        None => Err(path.error("a predicate needs one of its match types")),
    }
}

/// The xDS `StringMatcher` as Envoy's (same fields).
fn xds_string_matcher(
    path: &FieldPath,
    m: &pb::xds_matcher::StringMatcher,
) -> Result<StringMatcher> {
    use pb::matcher::string_matcher::MatchPattern as E;
    use pb::xds_matcher::string_matcher::MatchPattern as X;
    let pb::xds_matcher::StringMatcher {
        ignore_case,
        match_pattern,
    } = m;
    let match_pattern = match match_pattern {
        Some(X::Exact(s)) => Some(E::Exact(s.clone())),
        Some(X::Prefix(s)) => Some(E::Prefix(s.clone())),
        Some(X::Suffix(s)) => Some(E::Suffix(s.clone())),
        Some(X::Contains(s)) => Some(E::Contains(s.clone())),
        Some(X::SafeRegex(r)) => {
            let pb::xds_matcher::RegexMatcher { regex, engine_type } = r;
            // xDS's RegexMatcher requires its engine (google_re2, the only one).
            if engine_type.is_none() {
                return Err(path
                    .field("safe_regex")
                    .field("engine_type")
                    .error("is required"));
            }
            Some(E::SafeRegex(pb::matcher::RegexMatcher {
                regex: regex.clone(),
                engine_type: None,
            }))
        }
        Some(X::Custom(_)) => return Err(path.unsupported("custom")),
        None => None,
    };
    StringMatcher::from_proto(
        path,
        &pb::matcher::StringMatcher {
            ignore_case: *ignore_case,
            match_pattern,
        },
    )
}

fn matcher_input(
    path: &FieldPath,
    i: &pb::xds_core::TypedExtensionConfig,
    side: Side,
) -> Result<Input> {
    let pb::xds_core::TypedExtensionConfig {
        name: _,
        typed_config,
    } = i;
    let tp = path.field("typed_config");
    let Some(any) = typed_config else {
        return Err(tp.error("is required"));
    };
    let t = any_type(any);
    let net = "envoy.extensions.matching.common_inputs.network.v3.";
    let ssl = "envoy.extensions.matching.common_inputs.ssl.v3.";
    let input = match t {
        "envoy.type.matcher.v3.HttpRequestHeaderMatchInput" if side == Side::Http => {
            let pb::matcher::HttpRequestHeaderMatchInput { header_name } = decode_any(&tp, any)?;
            Input::RequestHeader(super::matcher::HeaderKey::parse(
                &tp.field("header_name"),
                &header_name,
            )?)
        }
        _ if t.strip_prefix(net) == Some("DestinationIPInput") => Input::DestinationIp,
        _ if t.strip_prefix(net) == Some("DestinationPortInput") => Input::DestinationPort,
        _ if t.strip_prefix(net) == Some("SourceIPInput") => Input::SourceIp,
        _ if t.strip_prefix(net) == Some("SourcePortInput") => Input::SourcePort,
        _ if t.strip_prefix(net) == Some("DirectSourceIPInput") => Input::DirectSourceIp,
        _ if t.strip_prefix(net) == Some("ServerNameInput") => Input::ServerName,
        _ if t.strip_prefix(ssl) == Some("UriSanInput") => Input::UriSan,
        _ if t.strip_prefix(ssl) == Some("DnsSanInput") => Input::DnsSan,
        _ if t.strip_prefix(ssl) == Some("SubjectInput") => Input::Subject,
        other => {
            return Err(tp.field("@type").error(format!(
                "RBAC {} filter cannot match on '{other}'",
                if side == Side::Http {
                    "HTTP"
                } else {
                    "network"
                }
            )));
        }
    };
    Ok(input)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(yaml: &str) -> Result<HttpRbac> {
        let path = FieldPath::new("f");
        let c: pb::http_rbac::Rbac = crate::config::decode_yaml(HTTP_RBAC_TYPE, yaml, &path);
        HttpRbac::from_proto(&path, &c)
    }

    #[test]
    fn one_element_sets_are_their_element() {
        let r = http(
            r#"
rules:
  policies:
    p:
      permissions:
      - and_rules: {rules: [{or_rules: {rules: [{destination_port: 8080}]}}]}
      - and_rules: {rules: [{destination_port: 1}, {or_rules: {rules: [{any: true}, {destination_port: 2}]}}]}
      principals:
      - and_ids: {ids: [{or_ids: {ids: [{any: true}]}}]}
"#,
        )
        .unwrap();
        let Some(Engine::Rules(rules)) = &r.engine else {
            panic!("rules")
        };
        let p = &rules.policies[0];
        assert!(matches!(
            p.permissions[0],
            Permission::DestinationPort(8080)
        ));
        let Permission::And(and) = &p.permissions[1] else {
            panic!("two rules stay an AND")
        };
        assert!(matches!(&and[1], Permission::Or(or) if or.len() == 2));
        assert!(matches!(p.principals[0], Principal::Any));
    }

    #[test]
    fn exact_methods_compile_to_a_method_set() {
        let r = http(
            r#"
rules:
  policies:
    p:
      permissions:
      - and_rules:
          rules:
          - or_rules: {rules: [{header: {name: ":method", string_match: {exact: GET}}}, {header: {name: ":method", exact_match: POST}}]}
          - url_path: {path: {prefix: "/api"}}
      - header: {name: ":method", string_match: {exact: get}}
      - header: {name: ":method", string_match: {exact: GET, ignore_case: true}}
      - header: {name: ":method", string_match: {exact: GET}, invert_match: true}
      - header: {name: ":method", string_match: {prefix: G}}
      - header: {name: ":method", string_match: {exact: "G T"}}
      - or_rules: {rules: [{header: {name: ":method", string_match: {exact: PUT}}}, {destination_port: 1}]}
      principals: [{any: true}]
"#,
        )
        .unwrap();
        let Some(Engine::Rules(rules)) = &r.engine else {
            panic!("rules")
        };
        let p = &rules.policies[0].permissions;
        let Permission::And(and) = &p[0] else {
            panic!("an AND")
        };
        assert!(
            matches!(&and[0], Permission::Methods(m) if **m == [http::Method::GET, http::Method::POST])
        );
        assert!(matches!(&and[1], Permission::UrlPath(_)));
        // Lowercase is another (extension) method, compared as such.
        assert!(matches!(&p[1], Permission::Methods(m) if m[0].as_str() == "get"));
        // Case-insensitive, inverted, non-exact and invalid methods stay header matchers.
        for (i, h) in p[2..=5].iter().enumerate() {
            assert!(matches!(h, Permission::Header(_)), "{}", i + 2);
        }
        let Permission::Or(or) = &p[6] else {
            panic!("a mixed OR stays an OR")
        };
        assert!(matches!(&or[0], Permission::Methods(m) if **m == [http::Method::PUT]));
    }

    #[test]
    fn principal_names_are_prefiltered_by_their_literal() {
        assert_eq!(
            required_literal(".*/ns/autolytiq/.*"),
            Some("/ns/autolytiq/")
        );
        assert_eq!(required_literal("spiffe://td/.*"), Some("spiffe://td/"));
        assert_eq!(required_literal(".*/sa/x"), Some("/sa/x"));
        for no in ["a.*b", ".*", ".*a|b.*", ".*(x).*", "exact"] {
            assert_eq!(required_literal(no), None, "{no}");
        }
        let r = http(
            r#"
rules:
  policies:
    p:
      permissions: [{any: true}]
      principals:
      - authenticated: {principal_name: {safe_regex: {regex: ".*/ns/autolytiq/.*"}}}
"#,
        )
        .unwrap();
        let Some(Engine::Rules(rules)) = &r.engine else {
            panic!("rules")
        };
        let Principal::Authenticated(Some(name)) = &rules.policies[0].principals[0] else {
            panic!("authenticated")
        };
        assert!(name.matches("spiffe://cluster.local/ns/autolytiq/sa/x"));
        assert!(!name.matches("spiffe://cluster.local/ns/other/sa/x"));
        // The regex still decides: `.` does not match a newline.
        assert!(!name.matches("x\n/ns/autolytiq/"));
    }

    #[test]
    fn policies_sorted_and_refusals_by_path() {
        let r = http(
            r#"
rules:
  action: DENY
  policies:
    zeta: {permissions: [{any: true}], principals: [{any: true}]}
    alpha: {permissions: [{destination_port: 80}], principals: [{authenticated: {principal_name: {exact: a}}}]}
"#,
        )
        .unwrap();
        let Some(Engine::Rules(rules)) = &r.engine else {
            panic!("rules")
        };
        assert_eq!(rules.action, Action::Deny);
        let names: Vec<&str> = rules.policies.iter().map(|p| &*p.name).collect();
        assert_eq!(names, ["alpha", "zeta"]);

        let e = http(
            r#"
rules:
  policies:
    p:
      permissions: [{uri_template: {name: x}}, {destination_port: 70000}]
      principals: []
"#,
        )
        .unwrap_err();
        assert_eq!(
            e.paths(),
            vec![
                "f.rules.policies[\"p\"].principals".to_string(),
                "f.rules.policies[\"p\"].permissions[0].uri_template".to_string(),
                "f.rules.policies[\"p\"].permissions[1].destination_port".to_string(),
            ],
            "{e}"
        );
    }

    #[test]
    fn matcher_form_translates() {
        let r = http(
            r#"
matcher:
  matcher_list:
    matchers:
    - predicate:
        not_matcher:
          single_predicate:
            input:
              name: h
              typed_config:
                "@type": type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput
                header_name: referer
            value_match: {safe_regex: {google_re2: {}, regex: "https?://x.*"}}
      on_match:
        action:
          name: a
          typed_config: {"@type": type.googleapis.com/envoy.config.rbac.v3.Action, name: illegal-referer, action: DENY}
  on_no_match:
    action:
      name: a
      typed_config: {"@type": type.googleapis.com/envoy.config.rbac.v3.Action, name: all-pass}
"#,
        )
        .unwrap();
        let Some(Engine::Matcher(m)) = &r.engine else {
            panic!("matcher")
        };
        assert_eq!(m.matchers.len(), 1);
        assert_eq!(&*m.on_no_match.as_ref().unwrap().name, "all-pass");
    }

    #[test]
    fn xds_regex_needs_its_engine_and_cidr_lengths_clamp() {
        let e = http(
            r#"
matcher:
  matcher_list:
    matchers:
    - predicate:
        single_predicate:
          input: {name: h, typed_config: {"@type": type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput, header_name: a}}
          value_match: {safe_regex: {regex: "x"}}
      on_match: {action: {name: a, typed_config: {"@type": type.googleapis.com/envoy.config.rbac.v3.Action, name: n}}}
"#,
        )
        .unwrap_err();
        assert_eq!(
            e.paths(),
            vec![
                "f.matcher.matcher_list.matchers[0].predicate.single_predicate.value_match.safe_regex.engine_type"
                    .to_string()
            ]
        );
        let r = http(
            "rules: {policies: {p: {permissions: [{destination_ip: {address_prefix: 10.0.0.0, prefix_len: 40}}], principals: [{any: true}]}}}",
        )
        .unwrap();
        let Some(Engine::Rules(rules)) = &r.engine else {
            panic!("rules")
        };
        match &rules.policies[0].permissions[0] {
            Permission::DestinationIp(c) => assert_eq!(c.len, 32),
            other => panic!("{other:?}"),
        }
    }
}
