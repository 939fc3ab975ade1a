//! Envoy's matchers: `StringMatcher`, `RegexMatcher` (RE2 syntax, full match), route
//! `HeaderMatcher` and `QueryParameterMatcher`.

use super::pb;
use crate::config::{FieldPath, Result};
use http::{HeaderMap, HeaderName};
use regex::Regex;

/// A compiled `RegexMatcher`. Envoy's regex matches are full-string matches (RE2::FullMatch).
#[derive(Debug, Clone)]
pub struct FullRegex {
    pub source: String,
    full: Regex,
    /// `.*LIT.*`, `LIT.*`, `.*LIT` with a plain literal (Istio's namespace principals are
    /// `.*/ns/NS/.*`): matched without the regex engine, with the same meaning (`.` matches
    /// anything but a newline).
    literal: Option<(Literal, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Literal {
    Contains,
    Prefix,
    Suffix,
}

impl FullRegex {
    pub fn is_match(&self, s: &str) -> bool {
        match &self.literal {
            Some((kind, lit)) => {
                let (head, tail) = match kind {
                    Literal::Contains => match s.find(lit.as_str()) {
                        Some(i) => (&s[..i], &s[i + lit.len()..]),
                        None => return false,
                    },
                    Literal::Prefix => match s.strip_prefix(lit.as_str()) {
                        Some(rest) => ("", rest),
                        None => return false,
                    },
                    Literal::Suffix => match s.strip_suffix(lit.as_str()) {
                        Some(rest) => (rest, ""),
                        None => return false,
                    },
                };
                !head.contains('\n') && !tail.contains('\n')
            }
            None => self.full.is_match(s),
        }
    }
}

/// The literal form of a regex `.*LIT.*`, `LIT.*` or `.*LIT` (LIT without metacharacters).
fn literal_form(regex: &str) -> Option<(Literal, String)> {
    let plain = |l: &str| !l.is_empty() && !l.contains(|c: char| "\\.+*?()|[]{}^$".contains(c));
    let (kind, lit) = match (regex.strip_prefix(".*"), regex.strip_suffix(".*")) {
        (Some(rest), _) if rest.ends_with(".*") => (Literal::Contains, &rest[..rest.len() - 2]),
        (Some(rest), _) => (Literal::Suffix, rest),
        (None, Some(rest)) => (Literal::Prefix, rest),
        (None, None) => return None,
    };
    plain(lit).then(|| (kind, lit.to_string()))
}

/// Compile a `RegexMatcher` for full matches.
pub fn full_regex(path: &FieldPath, m: &pb::matcher::RegexMatcher) -> Result<FullRegex> {
    let pb::matcher::RegexMatcher { regex, engine_type } = m;
    let _ = engine_type; // google_re2 is the only engine; its max_program_size is deprecated.
    let full = Regex::new(&format!("^(?:{regex})$"))
        .map_err(|e| path.field("regex").error(format!("invalid regex: {e}")))?;
    Ok(FullRegex {
        source: regex.clone(),
        full,
        literal: literal_form(regex),
    })
}

/// Compile a `RegexMatcher` for search/replace (`regex_rewrite`).
pub fn search_regex(path: &FieldPath, m: &pb::matcher::RegexMatcher) -> Result<Regex> {
    let pb::matcher::RegexMatcher {
        regex,
        engine_type: _,
    } = m;
    Regex::new(regex).map_err(|e| path.field("regex").error(format!("invalid regex: {e}")))
}

#[derive(Debug, Clone)]
pub enum StringPattern {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    Regex(FullRegex),
}

/// `envoy.type.matcher.v3.StringMatcher`.
#[derive(Debug, Clone)]
pub struct StringMatcher {
    pub pattern: StringPattern,
    pub ignore_case: bool,
}

impl StringMatcher {
    pub fn from_proto(path: &FieldPath, m: &pb::matcher::StringMatcher) -> Result<Self> {
        use pb::matcher::string_matcher::MatchPattern as P;
        let pb::matcher::StringMatcher {
            ignore_case,
            match_pattern,
        } = m;
        let lower = |s: &String| {
            if *ignore_case {
                s.to_ascii_lowercase()
            } else {
                s.clone()
            }
        };
        let pattern = match match_pattern {
            Some(P::Exact(s)) => StringPattern::Exact(lower(s)),
            Some(P::Prefix(s)) => StringPattern::Prefix(lower(s)),
            Some(P::Suffix(s)) => StringPattern::Suffix(lower(s)),
            Some(P::Contains(s)) => StringPattern::Contains(lower(s)),
            Some(P::SafeRegex(r)) => {
                StringPattern::Regex(full_regex(&path.field("safe_regex"), r)?)
            }
            Some(P::Custom(_)) => return Err(path.unsupported("custom")),
            None => {
                return Err(path.error(
                    "a string matcher needs exact, prefix, suffix, contains or safe_regex",
                ));
            }
        };
        let empty_field = match &pattern {
            StringPattern::Prefix(v) if v.is_empty() => Some("prefix"),
            StringPattern::Suffix(v) if v.is_empty() => Some("suffix"),
            StringPattern::Contains(v) if v.is_empty() => Some("contains"),
            _ => None,
        };
        if let Some(f) = empty_field {
            return Err(path.field(f).error("must not be empty"));
        }
        Ok(Self {
            pattern,
            ignore_case: *ignore_case,
        })
    }

    pub fn exact(s: &str) -> Self {
        Self {
            pattern: StringPattern::Exact(s.to_string()),
            ignore_case: false,
        }
    }

    pub fn matches(&self, value: &str) -> bool {
        if self.ignore_case && !matches!(self.pattern, StringPattern::Regex(_)) {
            let lowered = value.to_ascii_lowercase();
            return self.matches_cased(&lowered);
        }
        self.matches_cased(value)
    }

    fn matches_cased(&self, value: &str) -> bool {
        match &self.pattern {
            StringPattern::Exact(s) => value == s,
            StringPattern::Prefix(s) => value.starts_with(s.as_str()),
            StringPattern::Suffix(s) => value.ends_with(s.as_str()),
            StringPattern::Contains(s) => value.contains(s.as_str()),
            StringPattern::Regex(r) => r.is_match(value),
        }
    }
}

/// SAN matching in TLS validation contexts.
impl remora_certs::verify::StrMatch for StringMatcher {
    fn matches(&self, s: &str) -> bool {
        StringMatcher::matches(self, s)
    }
    fn exact(&self) -> Option<&str> {
        match &self.pattern {
            StringPattern::Exact(e) if !self.ignore_case => Some(e),
            _ => None,
        }
    }
}

/// Which request header a matcher reads; pseudo-headers come from the request line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderKey {
    Method,
    Path,
    Authority,
    Scheme,
    Named(HeaderName),
}

impl HeaderKey {
    pub fn parse(path: &FieldPath, name: &str) -> Result<Self> {
        Ok(match name.to_ascii_lowercase().as_str() {
            ":method" => HeaderKey::Method,
            ":path" => HeaderKey::Path,
            ":authority" | "host" => HeaderKey::Authority,
            ":scheme" => HeaderKey::Scheme,
            n => HeaderKey::Named(
                HeaderName::from_bytes(n.as_bytes())
                    .map_err(|_| path.error(format!("invalid header name '{name}'")))?,
            ),
        })
    }
}

/// The request parts header matching reads.
pub struct RequestHeaders<'a> {
    pub method: &'a http::Method,
    pub path_and_query: &'a str,
    pub authority: &'a str,
    pub scheme: &'a str,
    pub headers: &'a HeaderMap,
}

impl RequestHeaders<'_> {
    /// All values of a header joined with "," (Envoy's `getAllOfHeaderAsString`).
    pub fn get(&self, key: &HeaderKey) -> Option<std::borrow::Cow<'_, str>> {
        use std::borrow::Cow;
        match key {
            HeaderKey::Method => Some(Cow::Borrowed(self.method.as_str())),
            HeaderKey::Path => Some(Cow::Borrowed(self.path_and_query)),
            HeaderKey::Authority => Some(Cow::Borrowed(self.authority)),
            HeaderKey::Scheme => Some(Cow::Borrowed(self.scheme)),
            HeaderKey::Named(n) => {
                let mut values = self.headers.get_all(n).iter();
                let first = values.next()?;
                let first = std::str::from_utf8(first.as_bytes()).unwrap_or("");
                match values.next() {
                    None => Some(Cow::Borrowed(first)),
                    Some(second) => {
                        let mut s =
                            format!("{first},{}", String::from_utf8_lossy(second.as_bytes()));
                        for v in values {
                            s.push(',');
                            s.push_str(&String::from_utf8_lossy(v.as_bytes()));
                        }
                        Some(Cow::Owned(s))
                    }
                }
            }
        }
    }
}

#[derive(Debug, Clone)]
pub enum HeaderMatch {
    String(StringMatcher),
    Range { start: i64, end: i64 },
    Present(bool),
}

/// `envoy.config.route.v3.HeaderMatcher`.
#[derive(Debug, Clone)]
pub struct HeaderMatcher {
    pub key: HeaderKey,
    pub spec: HeaderMatch,
    pub invert: bool,
    pub treat_missing_as_empty: bool,
}

impl HeaderMatcher {
    pub fn from_proto(path: &FieldPath, m: &pb::route::HeaderMatcher) -> Result<Self> {
        use pb::route::header_matcher::HeaderMatchSpecifier as S;
        let pb::route::HeaderMatcher {
            name,
            invert_match,
            treat_missing_header_as_empty,
            header_match_specifier,
        } = m;
        let key = HeaderKey::parse(&path.field("name"), name)?;
        let exact = |s: &str| HeaderMatch::String(StringMatcher::exact(s));
        let spec = match header_match_specifier {
            Some(S::ExactMatch(s)) => exact(s),
            Some(S::SafeRegexMatch(r)) => HeaderMatch::String(StringMatcher {
                pattern: StringPattern::Regex(full_regex(&path.field("safe_regex_match"), r)?),
                ignore_case: false,
            }),
            Some(S::RangeMatch(r)) => HeaderMatch::Range {
                start: r.start,
                end: r.end,
            },
            Some(S::PresentMatch(p)) => HeaderMatch::Present(*p),
            Some(S::PrefixMatch(s)) => HeaderMatch::String(StringMatcher {
                pattern: StringPattern::Prefix(s.clone()),
                ignore_case: false,
            }),
            Some(S::SuffixMatch(s)) => HeaderMatch::String(StringMatcher {
                pattern: StringPattern::Suffix(s.clone()),
                ignore_case: false,
            }),
            Some(S::ContainsMatch(s)) => HeaderMatch::String(StringMatcher {
                pattern: StringPattern::Contains(s.clone()),
                ignore_case: false,
            }),
            Some(S::StringMatch(s)) => {
                HeaderMatch::String(StringMatcher::from_proto(&path.field("string_match"), s)?)
            }
            // No specifier: the header must be present (Envoy treats this as a present match).
            None => HeaderMatch::Present(true),
        };
        Ok(Self {
            key,
            spec,
            invert: *invert_match,
            treat_missing_as_empty: *treat_missing_header_as_empty,
        })
    }

    /// Envoy's `HeaderUtility::matchHeaders` semantics, including its handling of a missing header.
    pub fn matches(&self, req: &RequestHeaders<'_>) -> bool {
        self.matches_value(req.get(&self.key))
    }

    /// The same on the header's value, `None` when absent (a network filter has no headers).
    pub fn matches_value(&self, value: Option<std::borrow::Cow<'_, str>>) -> bool {
        let is_present_type = matches!(self.spec, HeaderMatch::Present(_));
        let value = match value {
            Some(v) => v,
            None if self.treat_missing_as_empty => std::borrow::Cow::Borrowed(""),
            // Envoy 1.40: an absent header fails every value matcher, inverted or not.
            None if !is_present_type => return false,
            None => {
                return !self.invert && matches!(self.spec, HeaderMatch::Present(false));
            }
        };
        let m = match &self.spec {
            HeaderMatch::String(s) => s.matches(&value),
            HeaderMatch::Range { start, end } => {
                value.parse::<i64>().is_ok_and(|v| v >= *start && v < *end)
            }
            HeaderMatch::Present(p) => *p,
        };
        m != self.invert
    }
}

/// `envoy.config.route.v3.QueryParameterMatcher`.
#[derive(Debug, Clone)]
pub struct QueryParameterMatcher {
    pub name: String,
    /// `None`: the parameter must be present.
    pub matcher: Option<StringMatcher>,
    pub present: bool,
}

impl QueryParameterMatcher {
    pub fn from_proto(path: &FieldPath, m: &pb::route::QueryParameterMatcher) -> Result<Self> {
        use pb::route::query_parameter_matcher::QueryParameterMatchSpecifier as S;
        let pb::route::QueryParameterMatcher {
            name,
            query_parameter_match_specifier,
        } = m;
        if name.is_empty() {
            return Err(path.field("name").error("must not be empty"));
        }
        let (matcher, present) = match query_parameter_match_specifier {
            Some(S::StringMatch(s)) => (
                Some(StringMatcher::from_proto(&path.field("string_match"), s)?),
                true,
            ),
            Some(S::PresentMatch(p)) => (None, *p),
            None => (None, true),
        };
        Ok(Self {
            name: name.clone(),
            matcher,
            present,
        })
    }

    pub fn matches(&self, query: Option<&str>) -> bool {
        let value = query.and_then(|q| {
            q.split('&').find_map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (k == self.name).then_some(v)
            })
        });
        match (&self.matcher, value) {
            (Some(m), Some(v)) => m.matches(v),
            (Some(_), None) => false,
            (None, v) => v.is_some() == self.present,
        }
    }
}

/// `envoy.type.matcher.v3.PathMatcher`: the request's path without its query and fragment.
#[derive(Debug, Clone)]
pub struct PathMatcher(pub StringMatcher);

impl PathMatcher {
    pub fn from_proto(path: &FieldPath, m: &pb::matcher::PathMatcher) -> Result<Self> {
        use pb::matcher::path_matcher::Rule;
        let pb::matcher::PathMatcher { rule } = m;
        match rule {
            Some(Rule::Path(s)) => Ok(Self(StringMatcher::from_proto(&path.field("path"), s)?)),
            None => Err(path.error("a path matcher needs path")),
        }
    }

    /// `path_and_query` as `:path` carries it (Envoy's `PathUtil::removeQueryAndFragment`).
    pub fn matches(&self, path_and_query: &str) -> bool {
        let end = path_and_query
            .find(['?', '#'])
            .unwrap_or(path_and_query.len());
        self.0.matches(&path_and_query[..end])
    }
}

/// `envoy.type.matcher.v3.ValueMatcher`, on metadata values (JSON: null, number, string, bool,
/// list, struct).
#[derive(Debug, Clone)]
pub enum ValueMatcher {
    Null,
    /// `[start, end)`.
    DoubleRange(f64, f64),
    DoubleExact(f64),
    String(StringMatcher),
    Bool(bool),
    Present(bool),
    /// A list one of whose elements matches.
    List(Box<ValueMatcher>),
    Or(Vec<ValueMatcher>),
}

impl ValueMatcher {
    pub fn from_proto(path: &FieldPath, m: &pb::matcher::ValueMatcher) -> Result<Self> {
        use pb::matcher::value_matcher::MatchPattern as P;
        let pb::matcher::ValueMatcher { match_pattern } = m;
        Ok(match match_pattern {
            Some(P::NullMatch(pb::matcher::value_matcher::NullMatch {})) => Self::Null,
            Some(P::DoubleMatch(d)) => {
                use pb::matcher::double_matcher::MatchPattern as D;
                let pb::matcher::DoubleMatcher { match_pattern } = d;
                match match_pattern {
                    Some(D::Range(pb::types::DoubleRange { start, end })) => {
                        Self::DoubleRange(*start, *end)
                    }
                    Some(D::Exact(e)) => Self::DoubleExact(*e),
                    None => return Err(path.field("double_match").error("needs range or exact")),
                }
            }
            Some(P::StringMatch(s)) => {
                Self::String(StringMatcher::from_proto(&path.field("string_match"), s)?)
            }
            Some(P::BoolMatch(b)) => Self::Bool(*b),
            Some(P::PresentMatch(b)) => Self::Present(*b),
            Some(P::ListMatch(l)) => {
                use pb::matcher::list_matcher::MatchPattern as L;
                let lp = path.field("list_match");
                let pb::matcher::ListMatcher { match_pattern } = &**l;
                match match_pattern {
                    Some(L::OneOf(v)) => {
                        Self::List(Box::new(Self::from_proto(&lp.field("one_of"), v)?))
                    }
                    None => return Err(lp.error("a list matcher needs one_of")),
                }
            }
            Some(P::OrMatch(o)) => {
                let op = path.field("or_match");
                let pb::matcher::OrMatcher { value_matchers } = o;
                if value_matchers.len() < 2 {
                    return Err(op
                        .field("value_matchers")
                        .error("needs at least 2 matchers"));
                }
                Self::Or(
                    value_matchers
                        .iter()
                        .enumerate()
                        .map(|(i, v)| Self::from_proto(&op.field("value_matchers").index(i), v))
                        .collect::<Result<_>>()?,
                )
            }
            None => return Err(path.error("a value matcher needs one of its match patterns")),
        })
    }

    /// `None`: the value is absent (Envoy's `Value` with no kind).
    pub fn matches(&self, value: Option<&serde_json::Value>) -> bool {
        use serde_json::Value as V;
        match (self, value) {
            (Self::Present(p), v) => *p && v.is_some(),
            (_, None) => false,
            (Self::Null, Some(v)) => v.is_null(),
            (Self::DoubleRange(a, b), Some(V::Number(n))) => {
                n.as_f64().is_some_and(|x| *a <= x && x < *b)
            }
            (Self::DoubleExact(e), Some(V::Number(n))) => n.as_f64() == Some(*e),
            (Self::String(m), Some(V::String(s))) => m.matches(s),
            (Self::Bool(b), Some(V::Bool(v))) => b == v,
            (Self::List(m), Some(V::Array(items))) => items.iter().any(|i| m.matches(Some(i))),
            (Self::Or(ms), v) => ms.iter().any(|m| m.matches(v)),
            _ => false,
        }
    }
}

/// `envoy.type.matcher.v3.MetadataMatcher`: a value found by a filter namespace and a path of
/// struct keys.
#[derive(Debug, Clone)]
pub struct MetadataMatcher {
    pub filter: String,
    pub path: Vec<String>,
    pub value: ValueMatcher,
    pub invert: bool,
}

impl MetadataMatcher {
    pub fn from_proto(path: &FieldPath, m: &pb::matcher::MetadataMatcher) -> Result<Self> {
        use pb::matcher::metadata_matcher::path_segment::Segment;
        let pb::matcher::MetadataMatcher {
            filter,
            path: segments,
            value,
            invert,
        } = m;
        if filter.is_empty() {
            return Err(path.field("filter").error("must not be empty"));
        }
        if segments.is_empty() {
            return Err(path.field("path").error("needs at least one segment"));
        }
        let keys = segments
            .iter()
            .enumerate()
            .map(|(i, s)| match &s.segment {
                Some(Segment::Key(k)) if !k.is_empty() => Ok(k.clone()),
                Some(Segment::Key(_)) => Err(path
                    .field("path")
                    .index(i)
                    .field("key")
                    .error("must not be empty")),
                None => Err(path.field("path").index(i).error("needs key")),
            })
            .collect::<Result<_>>()?;
        let Some(value) = value else {
            return Err(path.field("value").error("is required"));
        };
        Ok(Self {
            filter: filter.clone(),
            path: keys,
            value: ValueMatcher::from_proto(&path.field("value"), value)?,
            invert: *invert,
        })
    }

    /// `namespace`: the filter's namespace of the metadata, if present.
    pub fn matches(&self, namespace: Option<&serde_json::Map<String, serde_json::Value>>) -> bool {
        let value = namespace.and_then(|ns| {
            let mut keys = self.path.iter();
            let mut v = ns.get(keys.next()?)?;
            for k in keys {
                v = v.as_object()?.get(k)?;
            }
            Some(v)
        });
        self.value.matches(value) != self.invert
    }
}

/// `envoy.type.matcher.v3.FilterStateMatcher` (its string form): the object under `key`,
/// serialised as a string.
#[derive(Debug, Clone)]
pub struct FilterStateMatcher {
    pub key: String,
    pub matcher: StringMatcher,
}

impl FilterStateMatcher {
    pub fn from_proto(path: &FieldPath, m: &pb::matcher::FilterStateMatcher) -> Result<Self> {
        use pb::matcher::filter_state_matcher::Matcher;
        let pb::matcher::FilterStateMatcher { key, matcher } = m;
        if key.is_empty() {
            return Err(path.field("key").error("must not be empty"));
        }
        let matcher = match matcher {
            Some(Matcher::StringMatch(s)) => {
                StringMatcher::from_proto(&path.field("string_match"), s)?
            }
            Some(Matcher::AddressMatch(_)) => return Err(path.unsupported("address_match")),
            None => return Err(path.error("a filter state matcher needs string_match")),
        };
        Ok(Self {
            key: key.clone(),
            matcher,
        })
    }

    /// `value`: the object's string serialisation, when the key is present.
    pub fn matches(&self, value: Option<&str>) -> bool {
        value.is_some_and(|v| self.matcher.matches(v))
    }
}

/// Refuse a list-of-matchers field for features not built yet.
pub fn deny_list<T: PartialEq>(path: &FieldPath, field: &str, v: &[T]) -> Result<()> {
    if v.is_empty() {
        Ok(())
    } else {
        Err(path.unsupported(field))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hm(spec: pb::route::header_matcher::HeaderMatchSpecifier, invert: bool) -> HeaderMatcher {
        HeaderMatcher::from_proto(
            &FieldPath::root(),
            &pb::route::HeaderMatcher {
                name: "x-a".into(),
                invert_match: invert,
                treat_missing_header_as_empty: false,
                header_match_specifier: Some(spec),
            },
        )
        .unwrap()
    }

    fn req(headers: &HeaderMap) -> RequestHeaders<'_> {
        RequestHeaders {
            method: &http::Method::GET,
            path_and_query: "/p?a=1&b=",
            authority: "h",
            scheme: "http",
            headers,
        }
    }

    #[test]
    fn header_matching_semantics() {
        use pb::route::header_matcher::HeaderMatchSpecifier as S;
        let mut h = HeaderMap::new();
        h.append("x-a", "one".parse().unwrap());
        h.append("x-a", "two".parse().unwrap());
        assert!(hm(S::ExactMatch("one,two".into()), false).matches(&req(&h)));
        assert!(hm(S::PrefixMatch("one".into()), false).matches(&req(&h)));
        assert!(!hm(S::PrefixMatch("one".into()), true).matches(&req(&h)));
        let empty = HeaderMap::new();
        assert!(!hm(S::PresentMatch(true), false).matches(&req(&empty)));
        assert!(hm(S::PresentMatch(false), false).matches(&req(&empty)));
        assert!(!hm(S::ExactMatch("x".into()), true).matches(&req(&empty)));
        assert!(!hm(S::ExactMatch("x".into()), false).matches(&req(&empty)));
        let mut n = HeaderMap::new();
        n.insert("x-a", "42".parse().unwrap());
        assert!(
            hm(
                S::RangeMatch(pb::types::Int64Range { start: 40, end: 43 }),
                false
            )
            .matches(&req(&n))
        );
        assert!(
            !hm(
                S::RangeMatch(pb::types::Int64Range { start: 40, end: 42 }),
                false
            )
            .matches(&req(&n))
        );
    }

    #[test]
    fn string_matcher_ignore_case_and_regex() {
        use pb::matcher::string_matcher::MatchPattern as P;
        let m = StringMatcher::from_proto(
            &FieldPath::root(),
            &pb::matcher::StringMatcher {
                ignore_case: true,
                match_pattern: Some(P::Prefix("AbC".into())),
            },
        )
        .unwrap();
        assert!(m.matches("abcdef"));
        let r = StringMatcher::from_proto(
            &FieldPath::root(),
            &pb::matcher::StringMatcher {
                ignore_case: false,
                match_pattern: Some(P::SafeRegex(pb::matcher::RegexMatcher {
                    regex: "a.c".into(),
                    engine_type: None,
                })),
            },
        )
        .unwrap();
        assert!(r.matches("abc"));
        assert!(!r.matches("abcd"), "regex matches are full matches");
        let e = StringMatcher::from_proto(
            &FieldPath::new("m"),
            &pb::matcher::StringMatcher {
                ignore_case: false,
                match_pattern: Some(P::SafeRegex(pb::matcher::RegexMatcher {
                    regex: "(".into(),
                    engine_type: None,
                })),
            },
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("m.safe_regex.regex: invalid regex"),
            "{e}"
        );
    }

    #[test]
    fn literal_regexes_match_as_the_regex_does() {
        let re = |r: &str| {
            full_regex(
                &FieldPath::root(),
                &pb::matcher::RegexMatcher {
                    regex: r.into(),
                    engine_type: None,
                },
            )
            .unwrap()
        };
        let subjects = [
            "spiffe://cluster.local/ns/autolytiq/sa/x",
            "/ns/autolytiq/",
            "spiffe://c/ns/autolytiq/sa/x\n",
            "a\n/ns/autolytiq/b",
            "spiffe://c/ns/autolytiq-2/sa",
            "",
            "spiffe://c/ns/other/sa/x",
        ];
        for r in [
            ".*/ns/autolytiq/.*",
            "spiffe://c/.*",
            ".*/sa/x",
            ".*a.c.*",
            "x.*y",
        ] {
            let m = re(r);
            for s in subjects {
                assert_eq!(m.is_match(s), m.full.is_match(s), "{r} on {s:?}");
            }
        }
        assert!(re(".*/ns/autolytiq/.*").literal.is_some());
        assert!(re(".*a.c.*").literal.is_none());
    }

    #[test]
    fn query_parameters() {
        let q = QueryParameterMatcher {
            name: "a".into(),
            matcher: Some(StringMatcher::exact("1")),
            present: true,
        };
        assert!(q.matches(Some("a=1&b=2")));
        assert!(!q.matches(Some("a=2")));
        let p = QueryParameterMatcher {
            name: "b".into(),
            matcher: None,
            present: true,
        };
        assert!(p.matches(Some("a=1&b")));
        assert!(!p.matches(None));
    }
}
