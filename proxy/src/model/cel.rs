//! A CEL expression (`google.api.expr.v1alpha1.Expr`, the parsed form RBAC's
//! `Policy.condition` carries) → a checked expression over the request's attributes. The
//! subset: constants, lists, the attributes of Envoy's `request`, `source`, `destination` and
//! `connection` (a known set, resolved here), `request.headers[...]`, the logical, comparison,
//! membership and conditional operators, `size`, and the string functions `startsWith`,
//! `endsWith`, `contains` and `matches` (its pattern a constant, compiled once). Anything
//! else is refused by path. The runtime evaluates it (`filters::common::rbac`) with CEL's
//! error semantics: an attribute that is absent is an error, `&&`/`||` absorb an error the
//! other side decides, and a condition that does not evaluate to `true` does not match.

use super::matcher::HeaderKey;
use super::pb;
use crate::config::{FieldPath, Result};

/// A request attribute Envoy's CEL vocabulary names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attribute {
    RequestPath,
    RequestUrlPath,
    RequestHost,
    RequestScheme,
    RequestMethod,
    RequestReferer,
    RequestUserAgent,
    RequestId,
    RequestQuery,
    RequestProtocol,
    /// `request.headers`: a map, only read through `[...]` (or `in`).
    RequestHeaders,
    SourceAddress,
    SourcePort,
    DestinationAddress,
    DestinationPort,
    ConnectionId,
    ConnectionMtls,
    ConnectionRequestedServerName,
    ConnectionTlsVersion,
    ConnectionSubjectPeerCertificate,
    ConnectionUriSanPeerCertificate,
    ConnectionDnsSanPeerCertificate,
}

impl Attribute {
    fn lookup(object: &str, field: &str) -> Option<Self> {
        use Attribute::*;
        Some(match (object, field) {
            ("request", "path") => RequestPath,
            ("request", "url_path") => RequestUrlPath,
            ("request", "host") => RequestHost,
            ("request", "scheme") => RequestScheme,
            ("request", "method") => RequestMethod,
            ("request", "referer") => RequestReferer,
            ("request", "useragent") => RequestUserAgent,
            ("request", "id") => RequestId,
            ("request", "query") => RequestQuery,
            ("request", "protocol") => RequestProtocol,
            ("request", "headers") => RequestHeaders,
            ("source", "address") => SourceAddress,
            ("source", "port") => SourcePort,
            ("destination", "address") => DestinationAddress,
            ("destination", "port") => DestinationPort,
            ("connection", "id") => ConnectionId,
            ("connection", "mtls") => ConnectionMtls,
            ("connection", "requested_server_name") => ConnectionRequestedServerName,
            ("connection", "tls_version") => ConnectionTlsVersion,
            ("connection", "subject_peer_certificate") => ConnectionSubjectPeerCertificate,
            ("connection", "uri_san_peer_certificate") => ConnectionUriSanPeerCertificate,
            ("connection", "dns_san_peer_certificate") => ConnectionDnsSanPeerCertificate,
            _ => return None,
        })
    }
}

/// A constant.
#[derive(Debug, Clone, PartialEq)]
pub enum Const {
    Null,
    Bool(bool),
    Int(i64),
    Uint(u64),
    Double(f64),
    String(String),
    Bytes(Vec<u8>),
}

/// The functions and operators of the subset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Func {
    And,
    Or,
    Not,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Index,
    In,
    Conditional,
    Size,
    StartsWith,
    EndsWith,
    Contains,
}

/// A checked expression.
#[derive(Debug, Clone)]
pub enum Expr {
    Const(Const),
    Attr(Attribute),
    List(Vec<Expr>),
    Call(Func, Vec<Expr>),
    /// `s.matches(<constant pattern>)`: RE2 semantics, a partial match.
    Matches(Box<Expr>, regex::Regex),
    /// `request.headers[<constant name>]`, its name resolved here (`None`: not a valid header
    /// name, an evaluation error).
    Header(Option<HeaderKey>),
    /// `<constant name> in request.headers`, its name resolved here (`None`: not a valid
    /// header name, so never present).
    HasHeader(Option<HeaderKey>),
}

/// Translate `Policy.condition`. `path` is the condition's field.
pub fn from_proto(path: &FieldPath, e: &pb::cel::Expr) -> Result<Expr> {
    use pb::cel::expr::ExprKind as K;
    let pb::cel::Expr { id: _, expr_kind } = e;
    match expr_kind {
        None => Err(path.error("an expression needs one of its kinds")),
        Some(K::ConstExpr(c)) => constant(&path.field("const_expr"), c).map(Expr::Const),
        Some(K::IdentExpr(i)) => Err(path.field("ident_expr").error(format!(
            "identifier '{}' is not supported (only the attributes of request, source, destination and connection)",
            i.name
        ))),
        Some(K::SelectExpr(s)) => select(&path.field("select_expr"), s),
        Some(K::CallExpr(c)) => call(&path.field("call_expr"), c),
        Some(K::ListExpr(l)) => {
            let lp = path.field("list_expr");
            let pb::cel::expr::CreateList {
                elements,
                optional_indices,
            } = l;
            if !optional_indices.is_empty() {
                return Err(lp.unsupported("optional_indices"));
            }
            elements
                .iter()
                .enumerate()
                .map(|(i, e)| from_proto(&lp.field("elements").index(i), e))
                .collect::<Result<_>>()
                .map(Expr::List)
        }
        Some(K::StructExpr(_)) => Err(path.unsupported("struct_expr")),
        Some(K::ComprehensionExpr(_)) => Err(path.unsupported("comprehension_expr")),
    }
}

fn constant(path: &FieldPath, c: &pb::cel::Constant) -> Result<Const> {
    use pb::cel::constant::ConstantKind as C;
    let pb::cel::Constant { constant_kind } = c;
    #[allow(deprecated)]
    Ok(match constant_kind {
        Some(C::NullValue(_)) => Const::Null,
        Some(C::BoolValue(b)) => Const::Bool(*b),
        Some(C::Int64Value(i)) => Const::Int(*i),
        Some(C::Uint64Value(u)) => Const::Uint(*u),
        Some(C::DoubleValue(d)) => Const::Double(*d),
        Some(C::StringValue(s)) => Const::String(s.clone()),
        Some(C::BytesValue(b)) => Const::Bytes(b.clone()),
        Some(C::DurationValue(_)) => return Err(path.unsupported("duration_value")),
        Some(C::TimestampValue(_)) => return Err(path.unsupported("timestamp_value")),
        None => return Err(path.error("a constant needs a value")),
    })
}

fn select(path: &FieldPath, s: &pb::cel::expr::Select) -> Result<Expr> {
    use pb::cel::expr::ExprKind as K;
    let pb::cel::expr::Select {
        operand,
        field,
        test_only,
    } = s;
    if *test_only {
        return Err(path.unsupported("test_only"));
    }
    let object = match operand.as_deref().and_then(|o| o.expr_kind.as_ref()) {
        Some(K::IdentExpr(i)) => i.name.as_str(),
        _ => {
            return Err(path.field("operand").error(
                "only an attribute of request, source, destination or connection is supported",
            ));
        }
    };
    Attribute::lookup(object, field)
        .map(Expr::Attr)
        .ok_or_else(|| {
            path.field("field")
                .error(format!("attribute {object}.{field} is not supported"))
        })
}

fn call(path: &FieldPath, c: &pb::cel::expr::Call) -> Result<Expr> {
    let pb::cel::expr::Call {
        target,
        function,
        args,
    } = c;
    let mut all = Vec::with_capacity(args.len() + 1);
    if let Some(t) = target {
        all.push(from_proto(&path.field("target"), t)?);
    }
    for (i, a) in args.iter().enumerate() {
        all.push(from_proto(&path.field("args").index(i), a)?);
    }
    let (func, arity) = match function.as_str() {
        "_&&_" => (Func::And, 2),
        "_||_" => (Func::Or, 2),
        "!_" => (Func::Not, 1),
        "_==_" => (Func::Eq, 2),
        "_!=_" => (Func::Ne, 2),
        "_<_" => (Func::Lt, 2),
        "_<=_" => (Func::Le, 2),
        "_>_" => (Func::Gt, 2),
        "_>=_" => (Func::Ge, 2),
        "_[_]" => (Func::Index, 2),
        "@in" => (Func::In, 2),
        "_?_:_" => (Func::Conditional, 3),
        "size" => (Func::Size, 1),
        "startsWith" => (Func::StartsWith, 2),
        "endsWith" => (Func::EndsWith, 2),
        "contains" => (Func::Contains, 2),
        "matches" => {
            if all.len() != 2 {
                return Err(path
                    .field("function")
                    .error("matches takes a string and a pattern"));
            }
            let pattern = all.pop().expect("two arguments");
            let Expr::Const(Const::String(p)) = pattern else {
                return Err(path
                    .field("args")
                    .error("the pattern of matches must be a string constant"));
            };
            // CEL's matches is a partial match (RE2::PartialMatch): an unanchored search.
            let re = super::matcher::search_regex(
                &path.field("args"),
                &pb::matcher::RegexMatcher {
                    regex: p,
                    engine_type: None,
                },
            )?;
            let subject = all.pop().expect("two arguments");
            return Ok(Expr::Matches(Box::new(subject), re));
        }
        other => {
            return Err(path
                .field("function")
                .error(format!("CEL function '{other}' is not supported")));
        }
    };
    if all.len() != arity {
        return Err(path.field("function").error(format!(
            "'{function}' takes {arity} argument(s), got {}",
            all.len()
        )));
    }
    if func == Func::Index && !matches!(all[0], Expr::Attr(Attribute::RequestHeaders)) {
        return Err(path
            .field("function")
            .error("indexing is supported on request.headers only"));
    }
    Ok(resolve_header(func, all))
}

/// A header read by a constant name: its name parsed once, here, not per evaluation.
fn resolve_header(func: Func, all: Vec<Expr>) -> Expr {
    let key = |s: &str| HeaderKey::parse(&FieldPath::root(), s).ok();
    match (func, all.as_slice()) {
        (
            Func::Index,
            [
                Expr::Attr(Attribute::RequestHeaders),
                Expr::Const(Const::String(s)),
            ],
        ) => Expr::Header(key(s)),
        (
            Func::In,
            [
                Expr::Const(Const::String(s)),
                Expr::Attr(Attribute::RequestHeaders),
            ],
        ) => Expr::HasHeader(key(s)),
        _ => Expr::Call(func, all),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::cel::expr::ExprKind as K;

    fn ident(n: &str) -> pb::cel::Expr {
        pb::cel::Expr {
            id: 0,
            expr_kind: Some(K::IdentExpr(pb::cel::expr::Ident { name: n.into() })),
        }
    }

    fn sel(o: &str, f: &str) -> pb::cel::Expr {
        pb::cel::Expr {
            id: 0,
            expr_kind: Some(K::SelectExpr(Box::new(pb::cel::expr::Select {
                operand: Some(Box::new(ident(o))),
                field: f.into(),
                test_only: false,
            }))),
        }
    }

    fn call(f: &str, args: Vec<pb::cel::Expr>) -> pb::cel::Expr {
        pb::cel::Expr {
            id: 0,
            expr_kind: Some(K::CallExpr(Box::new(pb::cel::expr::Call {
                target: None,
                function: f.into(),
                args,
            }))),
        }
    }

    #[test]
    fn unknown_attributes_and_functions_are_refused_by_path() {
        let p = FieldPath::new("condition");
        let e = from_proto(&p, &sel("request", "nope")).unwrap_err();
        assert_eq!(e.paths(), vec!["condition.select_expr.field".to_string()]);
        let e = from_proto(&p, &call("frobnicate", vec![])).unwrap_err();
        assert_eq!(e.paths(), vec!["condition.call_expr.function".to_string()]);
        let ok = from_proto(
            &p,
            &call(
                "startsWith",
                vec![sel("request", "path"), sel("request", "host")],
            ),
        );
        assert!(ok.is_ok());
    }

    fn string(s: &str) -> pb::cel::Expr {
        pb::cel::Expr {
            id: 0,
            expr_kind: Some(K::ConstExpr(pb::cel::Constant {
                constant_kind: Some(pb::cel::constant::ConstantKind::StringValue(s.into())),
            })),
        }
    }

    #[test]
    fn constant_header_names_are_resolved_once() {
        let p = FieldPath::new("condition");
        let headers = || sel("request", "headers");
        let e = from_proto(&p, &call("_[_]", vec![headers(), string("X-User")])).unwrap();
        let want = HeaderKey::Named(http::HeaderName::from_static("x-user"));
        assert!(matches!(e, Expr::Header(Some(k)) if k == want));
        let e = from_proto(&p, &call("_[_]", vec![headers(), string(":method")])).unwrap();
        assert!(matches!(e, Expr::Header(Some(HeaderKey::Method))));
        let e = from_proto(&p, &call("@in", vec![string("bad name"), headers()])).unwrap();
        assert!(matches!(e, Expr::HasHeader(None)));
        // A name that is not a constant is read per evaluation.
        let e = from_proto(&p, &call("_[_]", vec![headers(), sel("request", "host")])).unwrap();
        assert!(matches!(e, Expr::Call(Func::Index, _)));
    }
}
