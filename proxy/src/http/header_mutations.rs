//! Header mutations applied to a request or response: the parsed `model::headers` mutations,
//! their format strings evaluated against the stream.

use crate::model::headers::{AppendAction, HeaderMutations};
use crate::telemetry::format::FormatContext;
use http::{HeaderMap, HeaderValue};

// === impl HeaderMutations (applying) ===

impl HeaderMutations {
    /// Apply to a header map: removals first, then additions (Envoy's order).
    pub fn apply(&self, headers: &mut HeaderMap, ctx: &FormatContext<'_>) {
        for name in &self.remove {
            headers.remove(name);
        }
        for h in &self.add {
            let value = match &h.literal {
                Some(v) => v.clone(),
                None => match HeaderValue::from_str(&h.value.to_string(ctx)) {
                    Ok(v) => v,
                    Err(_) => continue,
                },
            };
            if value.is_empty() && !h.keep_empty_value {
                continue;
            }
            match h.action {
                AppendAction::AppendIfExistsOrAdd => {
                    headers.append(h.name.clone(), value);
                }
                AppendAction::AddIfAbsent => {
                    if !headers.contains_key(&h.name) {
                        headers.insert(h.name.clone(), value);
                    }
                }
                AppendAction::OverwriteIfExistsOrAdd => {
                    headers.insert(h.name.clone(), value);
                }
                AppendAction::OverwriteIfExists => {
                    if headers.contains_key(&h.name) {
                        headers.insert(h.name.clone(), value);
                    }
                }
            }
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
}
