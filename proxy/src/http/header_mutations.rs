//! Header mutations applied to a request or response: the parsed `model::headers` mutations,
//! their format strings evaluated against the stream.

use crate::model::format::Formatter;
use crate::model::headers::{AppendAction, HeaderMutations};
use crate::telemetry::format::{FormatContext, RequestView};
use http::{HeaderMap, HeaderValue};

// === impl HeaderMutations (applying) ===

impl HeaderMutations {
    /// Apply to a header map with the formatters reading `ctx` as given (removals first, then
    /// additions).
    pub fn apply(&self, headers: &mut HeaderMap, ctx: &FormatContext<'_>) {
        self.apply_with(headers, |_, f| f.to_string_omit_empty(ctx));
    }

    /// Request headers: the formatters read the request as it is before this level's additions
    /// (Envoy's HeaderParser evaluates every value first, then writes).
    pub fn apply_request(&self, parts: &mut http::request::Parts, ctx: &FormatContext<'_>) {
        let (method, uri) = (&parts.method, &parts.uri);
        self.apply_with(&mut parts.headers, |h, f| {
            let ctx = FormatContext {
                request: Some(RequestView {
                    method,
                    uri,
                    headers: h,
                }),
                ..*ctx
            };
            f.to_string_omit_empty(&ctx)
        });
    }

    /// Response headers: `%RESP(...)%` reads the response as it is before this level's additions.
    pub fn apply_response(&self, headers: &mut HeaderMap, ctx: &FormatContext<'_>) {
        self.apply_with(headers, |h, f| {
            let ctx = FormatContext {
                response_headers: Some(h),
                ..*ctx
            };
            f.to_string_omit_empty(&ctx)
        });
    }

    /// Envoy's order: removals; every value evaluated (an operator with no value is empty, and
    /// an empty value is skipped unless `keep_empty_value`); overwrites; then appends.
    fn apply_with(&self, headers: &mut HeaderMap, eval: impl Fn(&HeaderMap, &Formatter) -> String) {
        for name in &self.remove {
            headers.remove(name);
        }
        if self.add.is_empty() {
            return;
        }
        let mut overwrite = Vec::new();
        let mut append = Vec::new();
        for h in &self.add {
            let value = match &h.literal {
                Some(v) => v.clone(),
                None => match HeaderValue::from_str(&eval(headers, &h.value)) {
                    Ok(v) => v,
                    Err(_) => continue,
                },
            };
            if value.is_empty() && !h.keep_empty_value {
                continue;
            }
            match h.action {
                AppendAction::AppendIfExistsOrAdd => append.push((h, value)),
                AppendAction::AddIfAbsent if !headers.contains_key(&h.name) => {
                    append.push((h, value))
                }
                AppendAction::OverwriteIfExists if !headers.contains_key(&h.name) => {}
                AppendAction::OverwriteIfExistsOrAdd | AppendAction::OverwriteIfExists => {
                    overwrite.push((h, value))
                }
                AppendAction::AddIfAbsent => {}
            }
        }
        for (h, v) in overwrite {
            headers.insert(h.name.clone(), v);
        }
        for (h, v) in append {
            headers.append(h.name.clone(), v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FieldPath;
    use crate::model::pb;

    fn opt(k: &str, v: &str, action: i32) -> pb::core::HeaderValueOption {
        pb::core::HeaderValueOption {
            header: Some(pb::core::HeaderValue {
                key: k.into(),
                value: v.into(),
                raw_value: vec![],
            }),
            append_action: action,
            ..Default::default()
        }
    }

    #[test]
    fn mutations_apply_in_order() {
        let m = HeaderMutations::from_proto(
            &FieldPath::root(),
            "add",
            &[
                opt("x-a", "1", 0), // APPEND_IF_EXISTS_OR_ADD
                opt("x-b", "2", 2), // OVERWRITE_IF_EXISTS_OR_ADD
                opt("x-c", "3", 1), // ADD_IF_ABSENT
            ],
            "remove",
            &["x-gone".into()],
        )
        .unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-a", "0".parse().unwrap());
        h.insert("x-b", "0".parse().unwrap());
        h.insert("x-c", "0".parse().unwrap());
        h.insert("x-gone", "0".parse().unwrap());
        m.apply(&mut h, &FormatContext::default());
        assert_eq!(h.get_all("x-a").iter().count(), 2);
        assert_eq!(h["x-b"], "2");
        assert_eq!(h["x-c"], "0");
        assert!(!h.contains_key("x-gone"));
    }

    #[test]
    fn request_values_read_the_live_request_and_empty_ones_are_skipped() {
        let mut keep = opt("x-kept", "%REQ(x-none)%", 0);
        keep.keep_empty_value = true;
        let m = HeaderMutations::from_proto(
            &FieldPath::root(),
            "add",
            &[
                opt("x-fmt", "%REQ(x-in)%", 0),
                opt("x-absent", "%REQ(x-none)%", 0),
                keep,
                // Evaluated before this level writes anything: x-fmt is not there yet.
                opt("x-chain", "%REQ(x-fmt)%", 0),
            ],
            "remove",
            &[],
        )
        .unwrap();
        let mut parts = http::Request::get("/p")
            .header("x-in", "input")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        m.apply_request(&mut parts, &FormatContext::default());
        assert_eq!(parts.headers["x-fmt"], "input");
        assert!(!parts.headers.contains_key("x-absent"));
        assert_eq!(parts.headers["x-kept"], "");
        assert!(!parts.headers.contains_key("x-chain"));
    }
}
