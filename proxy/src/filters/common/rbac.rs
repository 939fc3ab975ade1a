//! The RBAC engine both RBAC filters share (Envoy's `extensions/filters/common/rbac`): a
//! `model::rbac::Engine` evaluated against a connection (and a request's headers, for the HTTP
//! filter), the decision with its effective policy, the filters' stats and the names of their
//! dynamic metadata keys.
//!
//! Policies are evaluated in name order (Envoy keeps them in a `std::map`); the first that
//! matches is the effective policy. A policy matches when one of its permissions AND one of
//! its principals match (permissions first, then principals, then the CEL condition).

use std::borrow::Cow;
use std::cell::OnceCell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use crate::model::cel::{self, Attribute, Const, Func};
use crate::model::listener::Cidr;
use crate::model::matcher::{HeaderKey, PathMatcher, RequestHeaders};
use crate::model::rbac::{
    Action, Engine, Input as MatchInput, MatchAction, MatcherRules, Permission, Policy, Predicate,
    Principal, PrincipalName, Rules,
};
use crate::stream_info::{ConnectionInfo, DynamicMetadata, FilterState, Protocol};
use crate::telemetry::stats::{Counter, Store};

/// Envoy's dynamic metadata keys (`DynamicMetadataKeysSingleton`).
pub const SHADOW_EFFECTIVE_POLICY_ID: &str = "shadow_effective_policy_id";
pub const SHADOW_ENGINE_RESULT: &str = "shadow_engine_result";
pub const ENFORCED_EFFECTIVE_POLICY_ID: &str = "enforced_effective_policy_id";
pub const ENFORCED_ENGINE_RESULT: &str = "enforced_engine_result";
pub const ENGINE_RESULT_ALLOWED: &str = "allowed";
pub const ENGINE_RESULT_DENIED: &str = "denied";
/// `envoy.common`'s `access_log_hint`, set by a LOG action.
pub const COMMON_NAMESPACE: &str = "envoy.common";
pub const ACCESS_LOG_HINT: &str = "access_log_hint";

/// What an engine reads.
pub struct Input<'a> {
    pub connection: &'a ConnectionInfo,
    /// The downstream address after `x-forwarded-for` processing (`remote_ip`); the
    /// connection's remote address for the network filter.
    pub downstream_remote: SocketAddr,
    /// The request's headers (`None` for the network filter: every header is absent).
    pub headers: Option<&'a RequestHeaders<'a>>,
    pub metadata: &'a DynamicMetadata,
    pub filter_state: &'a FilterState,
    pub protocol: Option<Protocol>,
}

/// An engine's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The effective policy (or the matcher action's name).
    pub policy: Option<Arc<str>>,
    /// `envoy.common.access_log_hint` to set (a LOG engine, enforced only).
    pub log_hint: Option<bool>,
}

/// Whether the engine's LOG hint is written (Envoy writes it only for the enforced engine).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Enforced,
    Shadow,
}

/// Evaluate an engine.
pub fn evaluate(engine: &Engine, input: &Input<'_>, mode: Mode) -> Decision {
    let cx = Cx::new(input);
    match engine {
        Engine::Rules(r) => evaluate_rules(r, &cx, mode),
        Engine::Matcher(m) => evaluate_matcher(m, &cx, mode),
    }
}

/// One evaluation's view of its input: what several rules read is computed once, on first use
/// (the path without its query), so that a policy of many rules costs its comparisons only.
struct Cx<'a> {
    input: &'a Input<'a>,
    /// `:path` without query and fragment (Envoy's `PathUtil::removeQueryAndFragment`).
    url_path: OnceCell<Option<&'a str>>,
}

impl<'a> Cx<'a> {
    fn new(input: &'a Input<'a>) -> Self {
        Self {
            input,
            url_path: OnceCell::new(),
        }
    }

    fn header(&self, key: &HeaderKey) -> Option<Cow<'a, str>> {
        self.input.headers.and_then(|h| h.get(key))
    }

    fn method(&self) -> Option<&'a http::Method> {
        self.input.headers.map(|h| h.method)
    }

    fn path(&self) -> Option<&'a str> {
        self.input.headers.map(|h| h.path_and_query)
    }

    fn url_path(&self) -> Option<&'a str> {
        *self.url_path.get_or_init(|| {
            self.path()
                .map(|p| &p[..p.find(['?', '#']).unwrap_or(p.len())])
        })
    }

    fn url_path_matches(&self, m: &PathMatcher) -> bool {
        self.url_path().is_some_and(|p| m.0.matches(p))
    }
}

fn evaluate_rules(rules: &Rules, cx: &Cx<'_>, mode: Mode) -> Decision {
    let matched = rules.policies.iter().find(|p| policy_matches(p, cx));
    let policy = matched.map(|p| p.name.clone());
    let (allowed, log_hint) = match rules.action {
        Action::Allow => (matched.is_some(), None),
        Action::Deny => (matched.is_none(), None),
        Action::Log => (true, (mode == Mode::Enforced).then_some(matched.is_some())),
    };
    Decision {
        allowed,
        policy,
        log_hint,
    }
}

fn evaluate_matcher(m: &MatcherRules, cx: &Cx<'_>, mode: Mode) -> Decision {
    let action: Option<&MatchAction> = m
        .matchers
        .iter()
        .find(|(p, _)| predicate_matches(p, cx))
        .map(|(_, a)| a)
        .or(m.on_no_match.as_ref());
    match action {
        // No match and no on_no_match: denied.
        None => Decision {
            allowed: false,
            policy: None,
            log_hint: None,
        },
        Some(a) => Decision {
            allowed: a.action != Action::Deny,
            policy: Some(a.name.clone()),
            log_hint: (m.has_log && mode == Mode::Enforced).then_some(a.action == Action::Log),
        },
    }
}

fn policy_matches(p: &Policy, cx: &Cx<'_>) -> bool {
    p.permissions.iter().any(|x| permission_matches(x, cx))
        && p.principals.iter().any(|x| principal_matches(x, cx))
        && p.condition
            .as_ref()
            .is_none_or(|c| eval(c, cx) == V::Bool(true))
}

/// Envoy's `CidrRange::isInRange`: the address family must be the range's.
fn in_range(c: &Cidr, ip: IpAddr) -> bool {
    c.addr.is_ipv4() == ip.is_ipv4() && c.contains(ip)
}

fn permission_matches(p: &Permission, cx: &Cx<'_>) -> bool {
    let input = cx.input;
    match p {
        Permission::Any => true,
        Permission::And(all) => all.iter().all(|x| permission_matches(x, cx)),
        Permission::Or(any) => any.iter().any(|x| permission_matches(x, cx)),
        Permission::Not(x) => !permission_matches(x, cx),
        Permission::Header(h) => h.matches_value(cx.header(&h.key)),
        Permission::Methods(ms) => cx.method().is_some_and(|m| ms.contains(m)),
        Permission::UrlPath(m) => cx.url_path_matches(m),
        Permission::DestinationIp(c) => in_range(c, input.connection.local.ip()),
        Permission::DestinationPort(port) => input.connection.local.port() == *port,
        Permission::DestinationPortRange(start, end) => {
            let port = u32::from(input.connection.local.port());
            *start <= port && port < *end
        }
        Permission::Metadata(m) => m.matches(input.metadata.namespace(&m.filter)),
        Permission::RequestedServerName(m) => m.matches(
            input
                .connection
                .requested_server_name
                .as_deref()
                .unwrap_or(""),
        ),
    }
}

fn principal_matches(p: &Principal, cx: &Cx<'_>) -> bool {
    let input = cx.input;
    match p {
        Principal::Any => true,
        Principal::And(all) => all.iter().all(|x| principal_matches(x, cx)),
        Principal::Or(any) => any.iter().any(|x| principal_matches(x, cx)),
        Principal::Not(x) => !principal_matches(x, cx),
        Principal::Authenticated(m) => authenticated(m.as_ref(), input.connection),
        Principal::SourceIp(c) | Principal::DirectRemoteIp(c) => {
            in_range(c, input.connection.remote.ip())
        }
        Principal::RemoteIp(c) => in_range(c, input.downstream_remote.ip()),
        Principal::Header(h) => h.matches_value(cx.header(&h.key)),
        Principal::UrlPath(m) => cx.url_path_matches(m),
        Principal::Metadata(m) => m.matches(input.metadata.namespace(&m.filter)),
        Principal::FilterState(f) => f.matches(input.filter_state.get(&f.key).as_deref()),
    }
}

/// Envoy's `AuthenticatedMatcher`: a TLS connection; with a name, any of the peer's URI SANs,
/// then any of its DNS SANs, then its subject.
fn authenticated(m: Option<&PrincipalName>, conn: &ConnectionInfo) -> bool {
    let Some(tls) = &conn.tls else {
        return false;
    };
    let Some(m) = m else {
        return true;
    };
    match &tls.peer {
        Some(peer) => {
            peer.details.uri_sans().any(|u| m.matches(u))
                || peer.details.dns_sans().any(|d| m.matches(d))
                || m.matches(&peer.details.subject)
        }
        None => m.matches(""),
    }
}

/// A matcher input's value: borrowed from the request, formatted on the stack (an address or
/// a port), or joined (several values of a header or SAN).
enum Text<'a> {
    Borrowed(Cow<'a, str>),
    Small(SmallText),
}

impl std::ops::Deref for Text<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        match self {
            Text::Borrowed(s) => s,
            Text::Small(s) => s.as_str(),
        }
    }
}

/// An address or a port formatted without allocating (an IPv6 address takes at most 45
/// bytes).
struct SmallText {
    len: usize,
    buf: [u8; 48],
}

impl SmallText {
    fn of(v: impl std::fmt::Display) -> Text<'static> {
        use std::fmt::Write;
        let mut s = SmallText {
            len: 0,
            buf: [0; 48],
        };
        match write!(s, "{v}") {
            Ok(()) => Text::Small(s),
            Err(_) => Text::Borrowed(Cow::Owned(v.to_string())),
        }
    }

    fn as_str(&self) -> &str {
        // Only whole `str`s are written.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl std::fmt::Write for SmallText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        let dst = self.buf.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Values joined with `,`, borrowed when there is one.
fn joined<'a>(mut values: impl Iterator<Item = &'a str>) -> Option<Text<'a>> {
    let first = values.next()?;
    let Some(second) = values.next() else {
        return (!first.is_empty()).then_some(Text::Borrowed(Cow::Borrowed(first)));
    };
    let mut s = format!("{first},{second}");
    for v in values {
        s.push(',');
        s.push_str(v);
    }
    Some(Text::Borrowed(Cow::Owned(s)))
}

fn input_value<'a>(i: &MatchInput, cx: &Cx<'a>) -> Option<Text<'a>> {
    let conn = cx.input.connection;
    let peer = conn.tls.as_ref().and_then(|t| t.peer.as_ref());
    match i {
        MatchInput::RequestHeader(k) => cx.header(k).map(Text::Borrowed),
        MatchInput::DestinationIp => Some(SmallText::of(conn.local.ip())),
        MatchInput::DestinationPort => Some(SmallText::of(conn.local.port())),
        MatchInput::SourceIp | MatchInput::DirectSourceIp => Some(SmallText::of(conn.remote.ip())),
        MatchInput::SourcePort => Some(SmallText::of(conn.remote.port())),
        MatchInput::ServerName => conn
            .requested_server_name
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(|s| Text::Borrowed(Cow::Borrowed(s))),
        MatchInput::UriSan => peer.and_then(|p| joined(p.details.uri_sans())),
        MatchInput::DnsSan => peer.and_then(|p| joined(p.details.dns_sans())),
        MatchInput::Subject => peer
            .map(|p| p.details.subject.as_str())
            .filter(|s| !s.is_empty())
            .map(|s| Text::Borrowed(Cow::Borrowed(s))),
    }
}

fn predicate_matches(p: &Predicate, cx: &Cx<'_>) -> bool {
    match p {
        // An input with no value matches no value matcher.
        Predicate::Single(i, m) => input_value(i, cx).is_some_and(|v| m.matches(&v)),
        Predicate::Or(ps) => ps.iter().any(|p| predicate_matches(p, cx)),
        Predicate::And(ps) => ps.iter().all(|p| predicate_matches(p, cx)),
        Predicate::Not(p) => !predicate_matches(p, cx),
    }
}

// === CEL ===

/// A CEL value (`Err`: an evaluation error, such as an absent attribute).
#[derive(Debug, Clone, PartialEq)]
enum V<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Uint(u64),
    Double(f64),
    Str(Cow<'a, str>),
    Bytes(Cow<'a, [u8]>),
    List(Vec<V<'a>>),
    /// `request.headers`.
    Headers,
    Err,
}

fn eval<'a, 'c: 'a>(e: &'a cel::Expr, cx: &Cx<'c>) -> V<'a> {
    match e {
        cel::Expr::Const(c) => match c {
            Const::Null => V::Null,
            Const::Bool(b) => V::Bool(*b),
            Const::Int(i) => V::Int(*i),
            Const::Uint(u) => V::Uint(*u),
            Const::Double(d) => V::Double(*d),
            Const::String(s) => V::Str(Cow::Borrowed(s)),
            Const::Bytes(b) => V::Bytes(Cow::Borrowed(b)),
        },
        cel::Expr::Attr(a) => attribute(*a, cx),
        cel::Expr::List(items) => V::List(items.iter().map(|i| eval(i, cx)).collect()),
        cel::Expr::Matches(s, re) => match eval(s, cx) {
            V::Str(s) => V::Bool(re.is_match(&s)),
            _ => V::Err,
        },
        cel::Expr::Call(f, args) => call(*f, args, cx),
        // An invalid name is an error, as an absent header.
        cel::Expr::Header(key) => key
            .as_ref()
            .and_then(|k| cx.header(k))
            .map_or(V::Err, V::Str),
        cel::Expr::HasHeader(key) => match cx.input.headers {
            None => V::Err,
            Some(_) => V::Bool(key.as_ref().is_some_and(|k| cx.header(k).is_some())),
        },
    }
}

fn call<'a, 'c: 'a>(f: Func, args: &'a [cel::Expr], cx: &Cx<'c>) -> V<'a> {
    let arg = |i: usize| eval(&args[i], cx);
    match f {
        // Commutative logic: a side that decides absorbs the other's error.
        Func::And => match (arg(0), arg(1)) {
            (V::Bool(false), _) | (_, V::Bool(false)) => V::Bool(false),
            (V::Bool(true), V::Bool(true)) => V::Bool(true),
            _ => V::Err,
        },
        Func::Or => match (arg(0), arg(1)) {
            (V::Bool(true), _) | (_, V::Bool(true)) => V::Bool(true),
            (V::Bool(false), V::Bool(false)) => V::Bool(false),
            _ => V::Err,
        },
        Func::Not => match arg(0) {
            V::Bool(b) => V::Bool(!b),
            _ => V::Err,
        },
        Func::Conditional => match arg(0) {
            V::Bool(true) => arg(1),
            V::Bool(false) => arg(2),
            _ => V::Err,
        },
        Func::Eq | Func::Ne => {
            let (a, b) = (arg(0), arg(1));
            match equal(&a, &b) {
                Some(eq) => V::Bool(eq == (f == Func::Eq)),
                None => V::Err,
            }
        }
        Func::Lt | Func::Le | Func::Gt | Func::Ge => {
            use std::cmp::Ordering::*;
            match compare(&arg(0), &arg(1)) {
                Some(o) => V::Bool(match f {
                    Func::Lt => o == Less,
                    Func::Le => o != Greater,
                    Func::Gt => o == Greater,
                    _ => o != Less,
                }),
                None => V::Err,
            }
        }
        Func::Index => match arg(1) {
            V::Str(k) => match HeaderKey::parse(&crate::config::FieldPath::root(), &k) {
                Ok(key) => cx.header(&key).map_or(V::Err, V::Str),
                Err(_) => V::Err,
            },
            _ => V::Err,
        },
        Func::In => match (arg(0), arg(1)) {
            (V::Err, _) | (_, V::Err) => V::Err,
            (x, V::List(items)) => V::Bool(items.iter().any(|i| equal(&x, i) == Some(true))),
            (V::Str(k), V::Headers) => V::Bool(
                HeaderKey::parse(&crate::config::FieldPath::root(), &k)
                    .is_ok_and(|key| cx.header(&key).is_some()),
            ),
            _ => V::Err,
        },
        Func::Size => match arg(0) {
            V::Str(s) => V::Int(s.chars().count() as i64),
            V::Bytes(b) => V::Int(b.len() as i64),
            V::List(l) => V::Int(l.len() as i64),
            _ => V::Err,
        },
        Func::StartsWith | Func::EndsWith | Func::Contains => match (arg(0), arg(1)) {
            (V::Str(s), V::Str(p)) => V::Bool(match f {
                Func::StartsWith => s.starts_with(&*p),
                Func::EndsWith => s.ends_with(&*p),
                _ => s.contains(&*p),
            }),
            _ => V::Err,
        },
    }
}

/// CEL's heterogeneous equality: numbers compare by value, other kinds must agree (`None`: an
/// error operand).
fn equal(a: &V<'_>, b: &V<'_>) -> Option<bool> {
    match (a, b) {
        (V::Err, _) | (_, V::Err) => None,
        (V::Str(x), V::Str(y)) => Some(x == y),
        (V::Bytes(x), V::Bytes(y)) => Some(x == y),
        (V::Bool(x), V::Bool(y)) => Some(x == y),
        (V::Null, V::Null) => Some(true),
        (V::List(x), V::List(y)) => {
            Some(x.len() == y.len() && x.iter().zip(y).all(|(a, b)| equal(a, b) == Some(true)))
        }
        _ => match (number(a), number(b)) {
            (Some(x), Some(y)) => Some(x == y),
            _ => Some(false),
        },
    }
}

fn number(v: &V<'_>) -> Option<f64> {
    match v {
        V::Int(i) => Some(*i as f64),
        V::Uint(u) => Some(*u as f64),
        V::Double(d) => Some(*d),
        _ => None,
    }
}

fn compare(a: &V<'_>, b: &V<'_>) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (V::Str(x), V::Str(y)) => Some(x.cmp(y)),
        (V::Bytes(x), V::Bytes(y)) => Some(x.cmp(y)),
        (V::Bool(x), V::Bool(y)) => Some(x.cmp(y)),
        (V::Int(x), V::Int(y)) => Some(x.cmp(y)),
        (V::Uint(x), V::Uint(y)) => Some(x.cmp(y)),
        _ => number(a)?.partial_cmp(&number(b)?),
    }
}

fn attribute<'c>(a: Attribute, cx: &Cx<'c>) -> V<'c> {
    let input = cx.input;
    let conn = input.connection;
    let tls = conn.tls.as_deref();
    let peer = tls.and_then(|t| t.peer.as_ref());
    let header = |k: HeaderKey| cx.header(&k).map_or(V::Err, V::Str);
    let named = |n: &'static str| header(HeaderKey::Named(http::HeaderName::from_static(n)));
    match a {
        Attribute::RequestPath => cx.path().map_or(V::Err, |p| V::Str(Cow::Borrowed(p))),
        Attribute::RequestUrlPath => cx.path().map_or(V::Err, |p| {
            V::Str(Cow::Borrowed(&p[..p.find('?').unwrap_or(p.len())]))
        }),
        Attribute::RequestQuery => cx.path().map_or(V::Err, |p| {
            V::Str(Cow::Borrowed(p.find('?').map_or("", |i| &p[i + 1..])))
        }),
        Attribute::RequestHost => header(HeaderKey::Authority),
        Attribute::RequestScheme => header(HeaderKey::Scheme),
        Attribute::RequestMethod => header(HeaderKey::Method),
        Attribute::RequestReferer => named("referer"),
        Attribute::RequestUserAgent => named("user-agent"),
        Attribute::RequestId => named("x-request-id"),
        Attribute::RequestProtocol => input
            .protocol
            .map_or(V::Err, |p| V::Str(Cow::Borrowed(p.as_str()))),
        Attribute::RequestHeaders => {
            if input.headers.is_some() {
                V::Headers
            } else {
                V::Err
            }
        }
        Attribute::SourceAddress => V::Str(Cow::Owned(input.downstream_remote.to_string())),
        Attribute::SourcePort => V::Int(i64::from(input.downstream_remote.port())),
        Attribute::DestinationAddress => V::Str(Cow::Owned(conn.local.to_string())),
        Attribute::DestinationPort => V::Int(i64::from(conn.local.port())),
        Attribute::ConnectionId => V::Uint(conn.id),
        Attribute::ConnectionMtls => V::Bool(peer.is_some()),
        Attribute::ConnectionRequestedServerName => V::Str(Cow::Borrowed(
            conn.requested_server_name.as_deref().unwrap_or(""),
        )),
        Attribute::ConnectionTlsVersion => tls.map_or(V::Err, |t| V::Str(Cow::Borrowed(t.version))),
        Attribute::ConnectionSubjectPeerCertificate => tls.map_or(V::Err, |_| {
            V::Str(Cow::Borrowed(
                peer.map_or("", |p| p.details.subject.as_str()),
            ))
        }),
        Attribute::ConnectionUriSanPeerCertificate => peer
            .and_then(|p| p.details.uri_sans().next())
            .map_or(V::Err, |s| V::Str(Cow::Borrowed(s))),
        Attribute::ConnectionDnsSanPeerCertificate => peer
            .and_then(|p| p.details.dns_sans().next())
            .map_or(V::Err, |s| V::Str(Cow::Borrowed(s))),
    }
}

// === Stats ===

/// Envoy's `statPrefixJoin`.
pub fn stat_prefix_join(prefix: &str, token: &str) -> String {
    if prefix.is_empty() {
        token.to_string()
    } else if prefix.ends_with('.') {
        format!("{prefix}{token}")
    } else {
        format!("{prefix}.{token}")
    }
}

/// An RBAC filter's counters: `<prefix>rbac.[<rules prefix>.]allowed|denied` and
/// `<prefix>rbac.[<shadow rules prefix>.]shadow_allowed|shadow_denied`, and with per-rule stats
/// `…policy.<name>.<stat>` (created when first counted, as Envoy's, and kept by policy name so
/// that a request only increments).
#[derive(Debug)]
pub struct RbacStats {
    pub allowed: Arc<Counter>,
    pub denied: Arc<Counter>,
    pub shadow_allowed: Arc<Counter>,
    pub shadow_denied: Arc<Counter>,
    store: Arc<Store>,
    policy_prefix: String,
    shadow_policy_prefix: String,
    /// Per-rule counters by policy name: allowed, denied, shadow_allowed, shadow_denied.
    per_rule: Mutex<HashMap<Arc<str>, PerRule>>,
}

type PerRule = [Option<Arc<Counter>>; 4];

/// Policy names whose per-rule counters are kept (a policy past it is looked up by name).
const PER_RULE_CACHE: usize = 1024;

impl RbacStats {
    /// `prefix`: `http.<hcm stat_prefix>.` for the HTTP filter, the network filter's
    /// `stat_prefix`.
    pub fn new(store: &Arc<Store>, prefix: &str, rules_prefix: &str, shadow_prefix: &str) -> Self {
        let base = stat_prefix_join(prefix, "rbac.");
        let enforced = stat_prefix_join(&base, rules_prefix);
        let shadow = stat_prefix_join(&base, shadow_prefix);
        Self {
            allowed: store.counter(&stat_prefix_join(&enforced, "allowed")),
            denied: store.counter(&stat_prefix_join(&enforced, "denied")),
            shadow_allowed: store.counter(&stat_prefix_join(&shadow, "shadow_allowed")),
            shadow_denied: store.counter(&stat_prefix_join(&shadow, "shadow_denied")),
            store: store.clone(),
            policy_prefix: stat_prefix_join(&enforced, "policy."),
            shadow_policy_prefix: stat_prefix_join(&shadow, "policy."),
            per_rule: Mutex::new(HashMap::new()),
        }
    }

    /// Count one decision (and, with per-rule stats, its effective policy's counter).
    pub fn count(&self, mode: Mode, d: &Decision, per_rule: bool) {
        let (counter, slot) = match (mode, d.allowed) {
            (Mode::Enforced, true) => (&self.allowed, 0),
            (Mode::Enforced, false) => (&self.denied, 1),
            (Mode::Shadow, true) => (&self.shadow_allowed, 2),
            (Mode::Shadow, false) => (&self.shadow_denied, 3),
        };
        counter.inc();
        if per_rule && let Some(p) = d.policy.as_ref().filter(|p| !p.is_empty()) {
            self.count_rule(p, slot);
        }
    }

    /// Count a policy's decision: its counter from the cache, else created (and cached) by
    /// its name.
    fn count_rule(&self, policy: &Arc<str>, slot: usize) {
        let mut cache = self.per_rule.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cache.get(&**policy).and_then(|r| r[slot].as_ref()) {
            c.inc();
            return;
        }
        let (prefix, stat) = match slot {
            0 => (&self.policy_prefix, "allowed"),
            1 => (&self.policy_prefix, "denied"),
            2 => (&self.shadow_policy_prefix, "shadow_allowed"),
            _ => (&self.shadow_policy_prefix, "shadow_denied"),
        };
        let c = self.store.counter(&format!("{prefix}{policy}.{stat}"));
        c.inc();
        if cache.len() < PER_RULE_CACHE || cache.contains_key(&**policy) {
            cache.entry(policy.clone()).or_default()[slot] = Some(c);
        }
    }
}

/// `rbac_access_denied_matched_policy[<policy or none>]`, whitespace replaced by `_` (Envoy's
/// `responseDetail`).
pub fn response_detail(policy: Option<&str>) -> Cow<'static, str> {
    let Some(p) = policy.filter(|p| !p.is_empty()) else {
        return Cow::Borrowed("rbac_access_denied_matched_policy[none]");
    };
    let sanitized: String = p
        .chars()
        .map(|c| {
            if c.is_ascii_whitespace() || c == '\x0b' {
                '_'
            } else {
                c
            }
        })
        .collect();
    Cow::Owned(format!("rbac_access_denied_matched_policy[{sanitized}]"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cel_reads_headers_by_their_resolved_names() {
        let cfg = testing::http_rbac(
            r#"
rules:
  policies:
    p:
      permissions: [{any: true}]
      principals: [{any: true}]
      condition:
        call_expr:
          function: _&&_
          args:
          - call_expr:
              function: _==_
              args:
              - call_expr:
                  function: _[_]
                  args:
                  - select_expr: {operand: {ident_expr: {name: request}}, field: headers}
                  - const_expr: {string_value: X-User}
              - const_expr: {string_value: alice}
          - call_expr:
              function: "@in"
              args:
              - const_expr: {string_value: x-trace}
              - select_expr: {operand: {ident_expr: {name: request}}, field: headers}
"#,
        );
        let engine = cfg.engine.as_ref().unwrap();
        let conn = testing::connection(8080, None);
        let (md, fs) = (DynamicMetadata::default(), FilterState::default());
        let allowed = |headers: &[(&str, &str)], http: bool| {
            let mut map = http::HeaderMap::new();
            for (k, v) in headers {
                map.append(
                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            let rh = RequestHeaders {
                method: &http::Method::GET,
                path_and_query: "/",
                authority: "svc",
                scheme: "http",
                headers: &map,
            };
            let input = Input {
                connection: &conn,
                downstream_remote: conn.remote,
                headers: http.then_some(&rh),
                metadata: &md,
                filter_state: &fs,
                protocol: None,
            };
            evaluate(engine, &input, Mode::Enforced).allowed
        };
        assert!(allowed(&[("x-user", "alice"), ("x-trace", "1")], true));
        assert!(!allowed(&[("x-user", "alice")], true));
        assert!(!allowed(&[("x-user", "bob"), ("x-trace", "1")], true));
        // Without request headers (the network filter) both are errors: no match.
        assert!(!allowed(&[("x-user", "alice"), ("x-trace", "1")], false));
    }

    /// A compiled method set decides as Envoy's exact, case-sensitive `:method` matchers, and
    /// matches nothing without request headers (the network filter).
    #[test]
    fn method_sets_decide_as_header_matchers() {
        let cfg = testing::http_rbac(
            r#"
rules:
  policies:
    p:
      permissions:
      - or_rules: {rules: [{header: {name: ":method", string_match: {exact: GET}}}, {header: {name: ":method", exact_match: post}}]}
      principals: [{any: true}]
"#,
        );
        let engine = cfg.engine.as_ref().unwrap();
        let Engine::Rules(r) = engine else {
            panic!("rules")
        };
        assert!(matches!(
            r.policies[0].permissions[0],
            Permission::Methods(_)
        ));
        let conn = testing::connection(8080, None);
        let (md, fs) = (DynamicMetadata::default(), FilterState::default());
        let map = http::HeaderMap::new();
        let allowed = |method: &str, http: bool| {
            let method = http::Method::from_bytes(method.as_bytes()).unwrap();
            let rh = RequestHeaders {
                method: &method,
                path_and_query: "/",
                authority: "svc",
                scheme: "http",
                headers: &map,
            };
            let input = Input {
                connection: &conn,
                downstream_remote: conn.remote,
                headers: http.then_some(&rh),
                metadata: &md,
                filter_state: &fs,
                protocol: None,
            };
            evaluate(engine, &input, Mode::Enforced).allowed
        };
        for (method, expect) in [
            ("GET", true),
            ("post", true),
            ("POST", false),
            ("get", false),
            ("GETX", false),
        ] {
            assert_eq!(allowed(method, true), expect, "{method}");
            assert!(!allowed(method, false), "{method} without headers");
        }
    }

    #[test]
    fn details_and_prefixes() {
        assert_eq!(
            response_detail(Some("ab df  xy")),
            "rbac_access_denied_matched_policy[ab_df__xy]"
        );
        assert_eq!(
            response_detail(None),
            "rbac_access_denied_matched_policy[none]"
        );
        assert_eq!(stat_prefix_join("http.ing.", "rbac."), "http.ing.rbac.");
        assert_eq!(stat_prefix_join("tcpr", "rbac."), "tcpr.rbac.");
        assert_eq!(stat_prefix_join("http.ing.rbac.", ""), "http.ing.rbac.");
        assert_eq!(
            stat_prefix_join("http.ing.rbac.myrules_", "allowed"),
            "http.ing.rbac.myrules_.allowed"
        );
    }
}

/// What the filters' tests build a connection and an engine from.
#[cfg(test)]
pub(crate) mod testing {
    use crate::config::FieldPath;
    use crate::model::rbac::{HTTP_RBAC_TYPE, HttpRbac, NETWORK_RBAC_TYPE, NetworkRbac};
    use crate::stream_info::ConnectionInfo;
    use crate::transport_sockets::tls::{PeerCert, TlsInfo};
    use remora_certs::ca::{DevCa, KeyAlgorithm, LeafRequest};
    use std::sync::{Arc, OnceLock};
    use std::time::Duration;

    fn ca() -> &'static DevCa {
        static CA: OnceLock<DevCa> = OnceLock::new();
        CA.get_or_init(|| DevCa::generate_root("rbac-test", KeyAlgorithm::EcdsaP256).unwrap())
    }

    /// A peer certificate the dev CA issued for a SPIFFE ID (and `localhost`).
    pub fn peer(spiffe: &str) -> PeerCert {
        let id = remora_certs::SpiffeId::parse(spiffe).unwrap();
        let mut req = LeafRequest::spiffe(id.clone(), Duration::from_secs(3600));
        req.dns_names = vec!["localhost".into()];
        let issued = ca().issue(&req).unwrap();
        let der = remora_certs::pem::certificates(issued.cert_chain_pem.as_bytes())
            .unwrap()
            .remove(0);
        PeerCert {
            spiffe_id: Some(id),
            details: remora_certs::info::CertDetails::parse(&der).unwrap(),
            der: der.as_ref().into(),
        }
    }

    /// A connection from 10.1.2.3 to 127.0.0.1:`port`, over mTLS with `spiffe` when given.
    pub fn connection(port: u16, spiffe: Option<&str>) -> Arc<ConnectionInfo> {
        Arc::new(ConnectionInfo {
            id: 7,
            local: ([127, 0, 0, 1], port).into(),
            remote: ([10, 1, 2, 3], 40000).into(),
            requested_server_name: None,
            application_protocols: Vec::new(),
            transport_protocol: if spiffe.is_some() {
                "tls"
            } else {
                "raw_buffer"
            },
            tls: spiffe.map(|s| {
                Box::new(TlsInfo {
                    server_name: None,
                    version: "TLSv1.3",
                    cipher: "TLS_AES_128_GCM_SHA256",
                    curve: None,
                    alpn: None,
                    session_reused: false,
                    peer: Some(peer(s)),
                    local: None,
                })
            }),
        })
    }

    pub fn http_rbac(yaml: &str) -> Arc<HttpRbac> {
        let path = FieldPath::new("rbac");
        let c = crate::config::decode_yaml(HTTP_RBAC_TYPE, yaml, &path);
        Arc::new(HttpRbac::from_proto(&path, &c).unwrap())
    }

    pub fn network_rbac(yaml: &str) -> Arc<NetworkRbac> {
        let path = FieldPath::new("rbac");
        let c: crate::model::pb::network_rbac::Rbac =
            crate::config::decode_yaml(NETWORK_RBAC_TYPE, yaml, &path);
        let any = crate::model::pb::protobuf::Any {
            type_url: format!("type.googleapis.com/{NETWORK_RBAC_TYPE}"),
            value: prost::Message::encode_to_vec(&c),
        };
        Arc::new(NetworkRbac::from_any(&path, &any).unwrap())
    }

    pub fn store() -> Arc<crate::telemetry::stats::Store> {
        Arc::new(crate::telemetry::stats::Store::new(
            crate::telemetry::tags::TagProducer::envoy_defaults(),
            None,
        ))
    }
}
