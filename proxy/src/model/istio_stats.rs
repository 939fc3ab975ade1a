//! Istio's `istio.stats` filter config (`stats.PluginConfig`, HTTP and network): which of
//! Istio's standard metrics are kept, which labels they lose, and which labels are added or
//! changed with the CEL expressions istiod and Istio's documentation use. Istio logs and skips
//! what it cannot parse; remora refuses it by path instead (a metric or tag it does not know,
//! an expression outside the supported subset, `definitions`, `rotation_interval`).
//!
//! The expression subset: string literals (`'x'`, `"x"`), `+` between them, and the
//! attributes `request.{host, path, url_path, method, scheme, protocol, id, headers['h']}`,
//! `response.{code, grpc_status}`, `xds.{cluster_name, route_name}`,
//! `xds.node.metadata.K[...]` / `node.metadata...` (resolved once, from the bootstrap node),
//! and the peers' fields `upstream_peer.F` / `downstream_peer.F` (also under `filter_state.`),
//! F one of `workload, namespace, cluster, service, revision, app, version, name, identity,
//! labels['k']`.

use super::core::{decode_any, duration};
use super::pb;
use crate::config::{FieldPath, Result};
use std::sync::Arc;
use std::time::Duration;

/// The metrics Istio's filter knows, by the name `metrics[].name` uses (without `istio_`).
pub const STANDARD_METRICS: [&str; 10] = [
    "requests_total",
    "request_duration_milliseconds",
    "request_bytes",
    "response_bytes",
    "request_messages_total",
    "response_messages_total",
    "tcp_connections_opened_total",
    "tcp_connections_closed_total",
    "tcp_sent_bytes_total",
    "tcp_received_bytes_total",
];

/// The standard labels, in the order the filter pushes them for HTTP metrics.
pub const HTTP_LABELS: [&str; 25] = [
    "reporter",
    "source_workload",
    "source_canonical_service",
    "source_canonical_revision",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_service_name",
    "destination_service_namespace",
    "destination_cluster",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
];

/// Index of `response_code` and `grpc_response_status` in [`HTTP_LABELS`] (TCP has neither).
pub const RESPONSE_CODE: usize = 21;
pub const GRPC_STATUS: usize = 22;

/// Who reports: the client sidecar (`source`), the server sidecar (`destination`) or a
/// waypoint/gateway (`waypoint`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reporter {
    ClientSidecar,
    ServerSidecar,
    ServerGateway,
}

impl Reporter {
    pub fn label(self) -> &'static str {
        match self {
            Reporter::ClientSidecar => "source",
            Reporter::ServerSidecar => "destination",
            Reporter::ServerGateway => "waypoint",
        }
    }

    /// Istio's choice when `reporter` is unset: from the listener's traffic direction
    /// (outbound and unspecified: the client sidecar).
    pub fn from_direction(d: super::listener::Direction) -> Self {
        match d {
            super::listener::Direction::Inbound => Reporter::ServerSidecar,
            _ => Reporter::ClientSidecar,
        }
    }
}

/// Which peer an attribute reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Upstream,
    Downstream,
}

/// A peer's field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerField {
    Workload,
    Namespace,
    Cluster,
    Service,
    Revision,
    App,
    Version,
    Name,
    Identity,
    Label(Box<str>),
}

/// One value an expression reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attr {
    RequestHost,
    RequestPath,
    RequestUrlPath,
    RequestMethod,
    RequestScheme,
    RequestProtocol,
    RequestId,
    RequestHeader(http::HeaderName),
    ResponseCode,
    ResponseGrpcStatus,
    ClusterName,
    RouteName,
    /// A path into the bootstrap node's metadata (constant for the process).
    NodeMetadata(Vec<Box<str>>),
    Peer(Side, PeerField),
}

/// An expression: parts concatenated (one part for a plain literal or attribute).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Lit(Box<str>),
    Attr(Attr),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expr(pub Vec<Part>);

/// What happens to one label of one metric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelOp {
    /// The label is removed (`tags_to_remove`).
    Remove,
    /// The label's value is the expression's (`dimensions` of a standard label).
    Set(Expr),
}

/// The overrides of one standard metric.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricOverride {
    pub drop: bool,
    /// Standard labels changed or removed (by label name).
    pub changed: Vec<(&'static str, LabelOp)>,
    /// Labels added after the standard ones, sorted by name as Istio adds them.
    pub added: Vec<(Box<str>, Expr)>,
}

/// `stats.PluginConfig`, translated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IstioStats {
    /// `None`: from the listener's direction.
    pub reporter: Option<Reporter>,
    pub disable_host_header_fallback: bool,
    /// `tcp_reporting_duration` (default 5 s; zero: only at close).
    pub tcp_reporting_duration: Duration,
    /// Per standard metric, in [`STANDARD_METRICS`] order.
    pub overrides: Vec<MetricOverride>,
}

impl IstioStats {
    pub fn from_any(path: &FieldPath, any: &pb::protobuf::Any) -> Result<Self> {
        let cfg: super::istio_pb::PluginConfig = decode_any(path, any)?;
        Self::from_proto(path, &cfg)
    }

    pub fn from_proto(path: &FieldPath, cfg: &super::istio_pb::PluginConfig) -> Result<Self> {
        let super::istio_pb::PluginConfig {
            disable_host_header_fallback,
            tcp_reporting_duration,
            metrics,
            definitions,
            reporter,
            rotation_interval,
            graceful_deletion_interval,
        } = cfg;
        if !definitions.is_empty() {
            return Err(path.unsupported("definitions"));
        }
        if rotation_interval.is_some() {
            return Err(path.unsupported("rotation_interval"));
        }
        // Only used with a rotation.
        if graceful_deletion_interval.is_some() {
            return Err(path.unsupported("graceful_deletion_interval"));
        }
        let reporter = match reporter {
            0 => None,
            1 => Some(Reporter::ServerGateway),
            n => {
                return Err(path
                    .field("reporter")
                    .error(format!("unknown reporter {n}")));
            }
        };
        let tcp_reporting_duration = match tcp_reporting_duration {
            None => Duration::from_secs(5),
            Some(d) => duration(d).ok_or_else(|| {
                path.field("tcp_reporting_duration")
                    .error("must be a non-negative duration")
            })?,
        };
        let mut overrides = vec![MetricOverride::default(); STANDARD_METRICS.len()];
        for (i, m) in metrics.iter().enumerate() {
            apply_metric(&path.field("metrics").index(i), m, &mut overrides)?;
        }
        for o in &mut overrides {
            o.added.sort_by(|a, b| a.0.cmp(&b.0));
        }
        Ok(Self {
            reporter,
            disable_host_header_fallback: *disable_host_header_fallback,
            tcp_reporting_duration,
            overrides,
        })
    }
}

/// The standard metrics a `metrics[]` entry applies to (all when its name is empty).
fn targets(path: &FieldPath, name: &str) -> Result<Vec<usize>> {
    if name.is_empty() {
        return Ok((0..STANDARD_METRICS.len()).collect());
    }
    match STANDARD_METRICS.iter().position(|m| *m == name) {
        Some(i) => Ok(vec![i]),
        None => Err(path.field("name").error(format!(
            "{name} is not one of Istio's standard metrics (custom metrics need `definitions`, \
             which remora does not support)"
        ))),
    }
}

fn standard_label(name: &str) -> Option<&'static str> {
    HTTP_LABELS.iter().find(|l| **l == name).copied()
}

fn apply_metric(
    path: &FieldPath,
    m: &super::istio_pb::MetricConfig,
    out: &mut [MetricOverride],
) -> Result<()> {
    let super::istio_pb::MetricConfig {
        dimensions,
        name,
        tags_to_remove,
        r#match,
        drop,
    } = m;
    if !r#match.is_empty() {
        return Err(path.unsupported("match"));
    }
    let targets = targets(path, name)?;
    if *drop {
        for t in &targets {
            out[*t].drop = true;
        }
        return Ok(());
    }
    for (j, tag) in tags_to_remove.iter().enumerate() {
        let label = standard_label(tag).ok_or_else(|| {
            path.field("tags_to_remove")
                .index(j)
                .error(format!("{tag} is not one of Istio's standard labels"))
        })?;
        for t in &targets {
            set_op(&mut out[*t], label, LabelOp::Remove);
        }
    }
    for (tag, expr) in dimensions {
        let dp = path.field("dimensions").key(tag);
        let e = parse(expr).map_err(|why| dp.error(format!("expression `{expr}`: {why}")))?;
        for t in &targets {
            match standard_label(tag) {
                Some(label) => set_op(&mut out[*t], label, LabelOp::Set(e.clone())),
                None => {
                    let o = &mut out[*t];
                    o.added.retain(|(n, _)| &**n != tag.as_str());
                    o.added.push((tag.as_str().into(), e.clone()));
                }
            }
        }
    }
    Ok(())
}

fn set_op(o: &mut MetricOverride, label: &'static str, op: LabelOp) {
    match o.changed.iter_mut().find(|(l, _)| *l == label) {
        Some(slot) => slot.1 = op,
        None => o.changed.push((label, op)),
    }
}

// === the expression subset ===

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Int(u64),
    Dot,
    Open,
    Close,
    Plus,
}

fn lex(s: &str) -> std::result::Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b' ' | b'\t' | b'\n' => i += 1,
            b'.' => (out.push(Tok::Dot), i += 1).1,
            b'[' => (out.push(Tok::Open), i += 1).1,
            b']' => (out.push(Tok::Close), i += 1).1,
            b'+' => (out.push(Tok::Plus), i += 1).1,
            b'\'' | b'"' => {
                let end = s[i + 1..]
                    .find(c as char)
                    .ok_or("unterminated string literal")?;
                let lit = &s[i + 1..i + 1 + end];
                if lit.contains('\\') {
                    return Err("escapes in string literals are not supported".into());
                }
                out.push(Tok::Str(lit.to_string()));
                i += end + 2;
            }
            b'0'..=b'9' => {
                let end = s[i..]
                    .find(|c: char| !c.is_ascii_digit())
                    .map_or(s.len(), |e| i + e);
                out.push(Tok::Int(s[i..end].parse().map_err(|_| "bad integer")?));
                i = end;
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let end = s[i..]
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .map_or(s.len(), |e| i + e);
                out.push(Tok::Ident(s[i..end].to_string()));
                i = end;
            }
            _ => return Err(format!("`{}` is not supported", c as char)),
        }
    }
    Ok(out)
}

/// Parse an expression of the supported subset.
pub fn parse(s: &str) -> std::result::Result<Expr, String> {
    let toks = lex(s)?;
    let mut parts = Vec::new();
    for term in toks.split(|t| *t == Tok::Plus) {
        parts.push(term_of(term)?);
    }
    if parts.is_empty() {
        return Err("empty expression".into());
    }
    Ok(Expr(parts))
}

fn term_of(toks: &[Tok]) -> std::result::Result<Part, String> {
    match toks {
        [] => Err("empty operand".into()),
        [Tok::Str(s)] => Ok(Part::Lit(s.as_str().into())),
        [Tok::Ident(_), ..] => Ok(Part::Attr(attr_of(&path_of(toks)?)?)),
        _ => Err("only string literals and attributes are supported".into()),
    }
}

/// `a.b['c'].d` → `["a", "b", "c", "d"]`.
fn path_of(toks: &[Tok]) -> std::result::Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut it = toks.iter().peekable();
    match it.next() {
        Some(Tok::Ident(s)) => out.push(s.clone()),
        _ => return Err("an attribute starts with a name".into()),
    }
    while let Some(t) = it.next() {
        match (t, it.next(), it.peek()) {
            (Tok::Dot, Some(Tok::Ident(s)), _) => out.push(s.clone()),
            (Tok::Open, Some(Tok::Str(s)), Some(Tok::Close)) => {
                out.push(s.clone());
                it.next();
            }
            (Tok::Open, Some(Tok::Int(n)), Some(Tok::Close)) => {
                out.push(n.to_string());
                it.next();
            }
            _ => return Err("only `.name` and `['key']` selections are supported".into()),
        }
    }
    Ok(out)
}

fn attr_of(p: &[String]) -> std::result::Result<Attr, String> {
    let s: Vec<&str> = p.iter().map(|s| s.as_str()).collect();
    Ok(match s.as_slice() {
        ["request", "host"] => Attr::RequestHost,
        ["request", "path"] => Attr::RequestPath,
        ["request", "url_path"] => Attr::RequestUrlPath,
        ["request", "method"] => Attr::RequestMethod,
        ["request", "scheme"] => Attr::RequestScheme,
        ["request", "protocol"] => Attr::RequestProtocol,
        ["request", "id"] => Attr::RequestId,
        ["request", "headers", h] => Attr::RequestHeader(
            http::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes())
                .map_err(|_| format!("`{h}` is not a header name"))?,
        ),
        ["response", "code"] => Attr::ResponseCode,
        ["response", "grpc_status"] => Attr::ResponseGrpcStatus,
        ["xds", "cluster_name"] => Attr::ClusterName,
        ["xds", "route_name"] => Attr::RouteName,
        ["xds", "node", "metadata", rest @ ..] | ["node", "metadata", rest @ ..] => {
            Attr::NodeMetadata(rest.iter().map(|s| (*s).into()).collect())
        }
        ["filter_state", peer, rest @ ..] | [peer, rest @ ..]
            if *peer == "upstream_peer" || *peer == "downstream_peer" =>
        {
            let side = match *peer {
                "upstream_peer" => Side::Upstream,
                _ => Side::Downstream,
            };
            Attr::Peer(side, peer_field(rest)?)
        }
        _ => return Err(format!("attribute `{}` is not supported", p.join("."))),
    })
}

fn peer_field(rest: &[&str]) -> std::result::Result<PeerField, String> {
    Ok(match rest {
        ["workload"] => PeerField::Workload,
        ["namespace"] => PeerField::Namespace,
        ["cluster"] => PeerField::Cluster,
        ["service"] => PeerField::Service,
        ["revision"] => PeerField::Revision,
        ["app"] => PeerField::App,
        ["version"] => PeerField::Version,
        ["name"] => PeerField::Name,
        ["identity"] => PeerField::Identity,
        ["labels", k] => PeerField::Label((*k).into()),
        _ => return Err(format!("peer field `{}` is not supported", rest.join("."))),
    })
}

/// A node metadata path's value as a label (strings as they are; other values as JSON).
pub fn node_metadata_value(meta: &serde_json::Value, path: &[Box<str>]) -> Option<Arc<str>> {
    let mut v = meta;
    for k in path {
        v = match v {
            serde_json::Value::Object(m) => m.get(&**k)?,
            serde_json::Value::Array(a) => a.get(k.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(match v {
        serde_json::Value::String(s) => s.as_str().into(),
        other => other.to_string().into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::istio_pb::{MetricConfig, PluginConfig};

    fn translate(cfg: PluginConfig) -> Result<IstioStats> {
        IstioStats::from_proto(&FieldPath::new("f.typed_config"), &cfg)
    }

    #[test]
    fn expressions_of_istios_docs_parse() {
        assert_eq!(
            parse("request.host").unwrap(),
            Expr(vec![Part::Attr(Attr::RequestHost)])
        );
        assert_eq!(
            parse("request.headers['X-Foo']").unwrap(),
            Expr(vec![Part::Attr(Attr::RequestHeader(
                http::HeaderName::from_static("x-foo")
            ))])
        );
        assert_eq!(
            parse("filter_state.upstream_peer.labels['role']").unwrap(),
            Expr(vec![Part::Attr(Attr::Peer(
                Side::Upstream,
                PeerField::Label("role".into())
            ))])
        );
        assert_eq!(
            parse("'_' + xds.node.metadata['LABELS'].app").unwrap(),
            Expr(vec![
                Part::Lit("_".into()),
                Part::Attr(Attr::NodeMetadata(vec!["LABELS".into(), "app".into()]))
            ])
        );
        assert_eq!(
            parse("upstream_peer.workload").unwrap(),
            Expr(vec![Part::Attr(Attr::Peer(
                Side::Upstream,
                PeerField::Workload
            ))])
        );
    }

    #[test]
    fn expressions_outside_the_subset_are_refused() {
        for e in [
            "cannot _ parse | 1",
            "cannot_evaluate",
            "filter_state['wasm.istio_responseClass']",
            "request.size > 3",
            "xds.cluster_metadata.filter_metadata.istio.services[0].name",
            "",
        ] {
            assert!(parse(e).is_err(), "{e}");
        }
    }

    #[test]
    fn overrides_apply_to_named_or_all_metrics() {
        let mut dims = std::collections::BTreeMap::new();
        dims.insert(
            "role".to_string(),
            "upstream_peer.labels['role']".to_string(),
        );
        dims.insert("source_app".to_string(), "'x'".to_string());
        let cfg = translate(PluginConfig {
            metrics: vec![
                MetricConfig {
                    name: "requests_total".into(),
                    dimensions: dims,
                    ..Default::default()
                },
                MetricConfig {
                    tags_to_remove: vec!["response_flags".into()],
                    ..Default::default()
                },
                MetricConfig {
                    name: "request_bytes".into(),
                    drop: true,
                    ..Default::default()
                },
            ],
            ..Default::default()
        })
        .unwrap();
        let rq = &cfg.overrides[0];
        assert_eq!(rq.added.len(), 1);
        assert_eq!(&*rq.added[0].0, "role");
        assert!(rq.changed.contains(&("response_flags", LabelOp::Remove)));
        assert!(rq.changed.contains(&(
            "source_app",
            LabelOp::Set(Expr(vec![Part::Lit("x".into())]))
        )));
        assert!(cfg.overrides[2].drop);
        assert!(cfg.overrides[9].changed[0] == ("response_flags", LabelOp::Remove));
        assert_eq!(cfg.tcp_reporting_duration, Duration::from_secs(5));
        assert_eq!(cfg.reporter, None);
    }

    #[test]
    fn unsupported_fields_are_refused_by_path() {
        let err = |cfg: PluginConfig| translate(cfg).unwrap_err().to_string();
        assert!(
            err(PluginConfig {
                definitions: vec![Default::default()],
                ..Default::default()
            })
            .contains("f.typed_config.definitions")
        );
        assert!(
            err(PluginConfig {
                rotation_interval: Some(Default::default()),
                ..Default::default()
            })
            .contains("f.typed_config.rotation_interval")
        );
        let bad_dim = err(PluginConfig {
            metrics: vec![MetricConfig {
                dimensions: [("x".to_string(), "cannot_evaluate".to_string())].into(),
                ..Default::default()
            }],
            ..Default::default()
        });
        assert!(
            bad_dim.contains("f.typed_config.metrics[0].dimensions[\"x\"]"),
            "{bad_dim}"
        );
        let bad_tag = err(PluginConfig {
            metrics: vec![MetricConfig {
                tags_to_remove: vec!["nope".into()],
                ..Default::default()
            }],
            ..Default::default()
        });
        assert!(bad_tag.contains("f.typed_config.metrics[0].tags_to_remove[0]"));
        let bad_name = err(PluginConfig {
            metrics: vec![MetricConfig {
                name: "custom".into(),
                ..Default::default()
            }],
            ..Default::default()
        });
        assert!(bad_name.contains("f.typed_config.metrics[0].name"));
        assert!(
            err(PluginConfig {
                reporter: 7,
                ..Default::default()
            })
            .contains("f.typed_config.reporter")
        );
    }

    #[test]
    fn node_metadata_paths() {
        let meta = serde_json::json!({"LABELS": {"app": "a"}, "N": ["x"]});
        assert_eq!(
            node_metadata_value(&meta, &["LABELS".into(), "app".into()]).as_deref(),
            Some("a")
        );
        assert_eq!(
            node_metadata_value(&meta, &["N".into(), "0".into()]).as_deref(),
            Some("x")
        );
        assert_eq!(node_metadata_value(&meta, &["Q".into()]), None);
    }
}
