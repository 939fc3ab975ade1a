//! Header mutations: `request_headers_to_add` / `_remove` and their response twins, at route,
//! virtual host, route configuration and weighted-cluster level. Values are format strings
//! (`%DOWNSTREAM_REMOTE_ADDRESS%` ...), evaluated per request by `http::header_mutations`.

use super::format::Formatter;
use super::inputs::Inputs;
use super::pb;
use crate::config::{FieldPath, Result};
use http::{HeaderName, HeaderValue};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendAction {
    AppendIfExistsOrAdd,
    AddIfAbsent,
    OverwriteIfExistsOrAdd,
    OverwriteIfExists,
}

#[derive(Debug, Clone)]
pub struct HeaderToAdd {
    pub name: HeaderName,
    pub value: Formatter,
    /// Set when the value has no operators: no per-request formatting needed.
    pub literal: Option<HeaderValue>,
    pub action: AppendAction,
    pub keep_empty_value: bool,
}

/// One level's header mutations.
#[derive(Debug, Clone, Default)]
pub struct HeaderMutations {
    pub add: Vec<HeaderToAdd>,
    pub remove: Vec<HeaderName>,
}

impl HeaderMutations {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }

    /// `request_headers_to_add` / `request_headers_to_remove` of a message.
    pub fn request(
        path: &FieldPath,
        add: &[pb::core::HeaderValueOption],
        remove: &[String],
        inputs: &Inputs,
    ) -> Result<Self> {
        Self::from_proto_in(
            path,
            ("request_headers_to_add", add),
            ("request_headers_to_remove", remove),
            inputs,
        )
    }

    /// `response_headers_to_add` / `response_headers_to_remove` of a message.
    pub fn response(
        path: &FieldPath,
        add: &[pb::core::HeaderValueOption],
        remove: &[String],
        inputs: &Inputs,
    ) -> Result<Self> {
        Self::from_proto_in(
            path,
            ("response_headers_to_add", add),
            ("response_headers_to_remove", remove),
            inputs,
        )
    }

    /// `from_proto_in` for tests: values that name no environment variable.
    #[cfg(test)]
    pub fn from_proto(
        path: &FieldPath,
        add_field: &str,
        add: &[pb::core::HeaderValueOption],
        remove_field: &str,
        remove: &[String],
    ) -> Result<Self> {
        Self::from_proto_in(
            path,
            (add_field, add),
            (remove_field, remove),
            &Inputs::none(),
        )
    }

    /// `(field name, values)` of the headers to add and to remove.
    pub fn from_proto_in(
        path: &FieldPath,
        (add_field, add): (&str, &[pb::core::HeaderValueOption]),
        (remove_field, remove): (&str, &[String]),
        inputs: &Inputs,
    ) -> Result<Self> {
        let mut out = HeaderMutations::default();
        for (i, opt) in add.iter().enumerate() {
            out.add
                .push(header_to_add(&path.field(add_field).index(i), opt, inputs)?);
        }
        for (i, name) in remove.iter().enumerate() {
            let p = path.field(remove_field).index(i);
            let lower = name.to_ascii_lowercase();
            if lower.starts_with(':') || lower == "host" {
                return Err(p.error(format!("cannot remove '{name}'")));
            }
            out.remove.push(
                HeaderName::from_bytes(lower.as_bytes())
                    .map_err(|_| p.error(format!("invalid header name '{name}'")))?,
            );
        }
        Ok(out)
    }
}

fn header_to_add(
    path: &FieldPath,
    opt: &pb::core::HeaderValueOption,
    inputs: &Inputs,
) -> Result<HeaderToAdd> {
    use pb::core::header_value_option::HeaderAppendAction as A;
    let pb::core::HeaderValueOption {
        header,
        append,
        append_action,
        keep_empty_value,
    } = opt;
    let header = header
        .as_ref()
        .ok_or_else(|| path.field("header").error("is required"))?;
    let pb::core::HeaderValue {
        key,
        value,
        raw_value,
    } = header;
    let hp = path.field("header");
    let lower = key.to_ascii_lowercase();
    if lower.starts_with(':') || lower == "host" {
        return Err(hp
            .field("key")
            .error(format!("cannot set '{key}' with header mutations")));
    }
    let name = HeaderName::from_bytes(lower.as_bytes()).map_err(|_| {
        hp.field("key")
            .error(format!("invalid header name '{key}'"))
    })?;
    let text = if !raw_value.is_empty() {
        if !value.is_empty() {
            return Err(hp.error("only one of value and raw_value may be set"));
        }
        String::from_utf8(raw_value.clone())
            .map_err(|_| hp.field("raw_value").error("must be UTF-8"))?
    } else {
        value.clone()
    };
    let formatter = Formatter::parse_in(&text, inputs).map_err(|e| hp.field("value").error(e))?;
    let literal = match formatter.as_literal() {
        Some(l) => Some(
            HeaderValue::from_str(&l)
                .map_err(|_| hp.field("value").error("invalid header value"))?,
        ),
        None => None,
    };
    let action = match (append, A::try_from(*append_action)) {
        (Some(_), Ok(a)) if a != A::AppendIfExistsOrAdd => {
            return Err(path.error("append and append_action are mutually exclusive"));
        }
        (Some(b), _) => {
            if b.value {
                AppendAction::AppendIfExistsOrAdd
            } else {
                AppendAction::OverwriteIfExistsOrAdd
            }
        }
        (None, Ok(A::AppendIfExistsOrAdd)) => AppendAction::AppendIfExistsOrAdd,
        (None, Ok(A::AddIfAbsent)) => AppendAction::AddIfAbsent,
        (None, Ok(A::OverwriteIfExistsOrAdd)) => AppendAction::OverwriteIfExistsOrAdd,
        (None, Ok(A::OverwriteIfExists)) => AppendAction::OverwriteIfExists,
        (None, Err(_)) => {
            return Err(path
                .field("append_action")
                .error(format!("unknown value {append_action}")));
        }
    };
    Ok(HeaderToAdd {
        name,
        value: formatter,
        literal,
        action,
        keep_empty_value: *keep_empty_value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opt(k: &str, v: &str, append: Option<bool>, action: i32) -> pb::core::HeaderValueOption {
        pb::core::HeaderValueOption {
            header: Some(pb::core::HeaderValue {
                key: k.into(),
                value: v.into(),
                raw_value: vec![],
            }),
            append: append.map(|value| pb::protobuf::BoolValue { value }),
            append_action: action,
            keep_empty_value: false,
        }
    }

    #[test]
    fn refusals_have_paths() {
        let e = HeaderMutations::from_proto(
            &FieldPath::new("r"),
            "add",
            &[opt(":path", "/", None, 0)],
            "remove",
            &[],
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "r.add[0].header.key: cannot set ':path' with header mutations"
        );
        let e = HeaderMutations::from_proto(
            &FieldPath::new("r"),
            "add",
            &[opt("x", "%NOPE%", None, 0)],
            "remove",
            &[],
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "r.add[0].header.value: Not supported field in StreamInfo: NOPE"
        );
    }
}
