//! Proto3 JSON mapping: a JSON (or YAML, converted to JSON values) document → a
//! `DynamicMessage` over Envoy's descriptors, with errors naming the exact field path, also
//! inside `typed_config` and other `Any` fields.
//!
//! Accepted, as Envoy's loader accepts: field names in snake_case or lowerCamelCase; enums by
//! name or number; 64-bit integers as numbers or strings; Duration strings ("0.25s");
//! wrapper types as plain values; `Any` with `@type` (and `value` for well-known types);
//! Struct/Value/ListValue; FieldMask strings; a single object where a list is expected (Envoy's
//! dynamic-config-fs example relies on this). A `null` leaves a field unset.

use super::error::{ConfigError, FieldPath, Result};
use base64::Engine;
use prost::Message;
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor,
    ReflectMessage, Value,
};
use serde_json::Value as Json;
use std::collections::HashMap;

/// Decodes JSON values into dynamic messages.
pub struct JsonDecoder<'p> {
    pool: &'p DescriptorPool,
    allow_unknown_fields: bool,
    /// Unknown fields that were skipped because `allow_unknown_fields` is set.
    pub warnings: Vec<ConfigError>,
}

// === impl JsonDecoder ===

impl<'p> JsonDecoder<'p> {
    pub fn new(pool: &'p DescriptorPool, allow_unknown_fields: bool) -> Self {
        Self {
            pool,
            allow_unknown_fields,
            warnings: Vec::new(),
        }
    }

    /// Decode `value` as the message named `full_name`.
    pub fn decode(
        &mut self,
        full_name: &str,
        value: &Json,
        path: &FieldPath,
    ) -> Result<DynamicMessage> {
        let desc = self
            .pool
            .get_message_by_name(full_name)
            .ok_or_else(|| path.error(format!("unknown message type '{full_name}'")))?;
        self.message(&desc, value, path)
    }

    fn message(
        &mut self,
        desc: &MessageDescriptor,
        value: &Json,
        path: &FieldPath,
    ) -> Result<DynamicMessage> {
        if let Some(m) = self.well_known(desc, value, path)? {
            return Ok(m);
        }
        let obj = value.as_object().ok_or_else(|| {
            path.error(format!(
                "expected an object for {}, got {}",
                desc.full_name(),
                kind_of(value)
            ))
        })?;
        let mut msg = DynamicMessage::new(desc.clone());
        let mut oneofs_seen: HashMap<String, String> = HashMap::new();
        for (key, v) in obj {
            let Some(field) = desc
                .get_field_by_name(key)
                .or_else(|| desc.get_field_by_json_name(key))
            else {
                let err = path
                    .field(key)
                    .error(format!("unknown field in {}", desc.full_name()));
                if self.allow_unknown_fields {
                    self.warnings.push(err);
                    continue;
                }
                return Err(err);
            };
            let fpath = path.field(field.name());
            if v.is_null()
                && field.kind().as_message().map(|m| m.full_name()) != Some("google.protobuf.Value")
            {
                continue;
            }
            if let Some(oneof) = field.containing_oneof()
                && !oneof.is_synthetic()
                && let Some(prev) =
                    oneofs_seen.insert(oneof.name().to_string(), field.name().to_string())
            {
                return Err(fpath.error(format!(
                    "only one of the fields of oneof '{}' may be set, '{prev}' is set too",
                    oneof.name()
                )));
            }
            let decoded = self.field_value(&field, v, &fpath)?;
            msg.set_field(&field, decoded);
        }
        Ok(msg)
    }

    fn field_value(
        &mut self,
        field: &FieldDescriptor,
        v: &Json,
        path: &FieldPath,
    ) -> Result<Value> {
        if field.is_map() {
            let entry = field.kind();
            let entry = entry.as_message().expect("map fields have entry messages");
            let key_field = entry.map_entry_key_field();
            let value_field = entry.map_entry_value_field();
            let obj = v.as_object().ok_or_else(|| {
                path.error(format!("expected an object (map), got {}", kind_of(v)))
            })?;
            let mut map = HashMap::with_capacity(obj.len());
            for (k, item) in obj {
                let kpath = path.key(k);
                let key =
                    map_key(&key_field.kind(), k).ok_or_else(|| kpath.error("invalid map key"))?;
                map.insert(key, self.single(&value_field.kind(), item, &kpath)?);
            }
            Ok(Value::Map(map))
        } else if field.is_list() {
            match v {
                Json::Array(items) => {
                    let mut out = Vec::with_capacity(items.len());
                    for (i, item) in items.iter().enumerate() {
                        out.push(self.single(&field.kind(), item, &path.index(i))?);
                    }
                    Ok(Value::List(out))
                }
                other => Ok(Value::List(vec![self.single(
                    &field.kind(),
                    other,
                    &path.index(0),
                )?])),
            }
        } else {
            self.single(&field.kind(), v, path)
        }
    }

    fn single(&mut self, kind: &Kind, v: &Json, path: &FieldPath) -> Result<Value> {
        Ok(match kind {
            Kind::Message(m) => Value::Message(self.message(m, v, path)?),
            Kind::Enum(e) => match v {
                Json::String(s) => {
                    // Envoy parses enum names case-insensitively (`type: strict_dns` loads).
                    let val = e
                        .get_value_by_name(s)
                        .or_else(|| e.values().find(|v| v.name().eq_ignore_ascii_case(s)))
                        .ok_or_else(|| {
                            let names: Vec<_> = e.values().map(|v| v.name().to_string()).collect();
                            path.error(format!(
                                "unknown value '{s}' for enum {} (one of: {})",
                                e.full_name(),
                                names.join(", ")
                            ))
                        })?;
                    Value::EnumNumber(val.number())
                }
                Json::Number(n) => Value::EnumNumber(
                    n.as_i64()
                        .and_then(|n| i32::try_from(n).ok())
                        .ok_or_else(|| path.error("invalid enum number"))?,
                ),
                other => {
                    return Err(
                        path.error(format!("expected an enum name, got {}", kind_of(other)))
                    );
                }
            },
            Kind::Bool => match v {
                Json::Bool(b) => Value::Bool(*b),
                Json::String(s) if s == "true" || s == "false" => Value::Bool(s == "true"),
                other => {
                    return Err(path.error(format!("expected a boolean, got {}", kind_of(other))));
                }
            },
            Kind::String => match v {
                Json::String(s) => Value::String(s.clone()),
                // YAML turns unquoted `8080` or `true` into non-strings; Envoy's YAML loader keeps them as text.
                Json::Number(n) => Value::String(n.to_string()),
                Json::Bool(b) => Value::String(b.to_string()),
                other => {
                    return Err(path.error(format!("expected a string, got {}", kind_of(other))));
                }
            },
            Kind::Bytes => match v {
                Json::String(s) => Value::Bytes(
                    decode_base64(s)
                        .ok_or_else(|| path.error("invalid base64"))?
                        .into(),
                ),
                other => {
                    return Err(
                        path.error(format!("expected a base64 string, got {}", kind_of(other)))
                    );
                }
            },
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
                Value::I32(int(v, path).and_then(|n| {
                    i32::try_from(n).map_err(|_| path.error("out of range for int32"))
                })?)
            }
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
                Value::I64(int(v, path).and_then(|n| {
                    i64::try_from(n).map_err(|_| path.error("out of range for int64"))
                })?)
            }
            Kind::Uint32 | Kind::Fixed32 => Value::U32(int(v, path).and_then(|n| {
                u32::try_from(n).map_err(|_| path.error("out of range for uint32"))
            })?),
            Kind::Uint64 | Kind::Fixed64 => Value::U64(int(v, path).and_then(|n| {
                u64::try_from(n).map_err(|_| path.error("out of range for uint64"))
            })?),
            Kind::Double => Value::F64(float(v, path)?),
            Kind::Float => Value::F32(float(v, path)? as f32),
        })
    }

    /// The well-known types with a special JSON form. `None` means "a regular message".
    fn well_known(
        &mut self,
        desc: &MessageDescriptor,
        v: &Json,
        path: &FieldPath,
    ) -> Result<Option<DynamicMessage>> {
        let name = desc.full_name();
        let Some(wkt) = name.strip_prefix("google.protobuf.") else {
            return Ok(None);
        };
        let mut msg = DynamicMessage::new(desc.clone());
        match wkt {
            "Any" => return self.any(desc, v, path).map(Some),
            "Duration" => {
                let s = v.as_str().ok_or_else(|| {
                    path.error(format!(
                        "expected a duration string like \"1.5s\", got {}",
                        kind_of(v)
                    ))
                })?;
                let (secs, nanos) = parse_duration(s)
                    .ok_or_else(|| path.error(format!("invalid duration '{s}'")))?;
                msg.set_field_by_name("seconds", Value::I64(secs));
                msg.set_field_by_name("nanos", Value::I32(nanos));
            }
            "Timestamp" => {
                let s = v
                    .as_str()
                    .ok_or_else(|| path.error("expected an RFC 3339 timestamp string"))?;
                let (secs, nanos) = parse_timestamp(s)
                    .ok_or_else(|| path.error(format!("invalid timestamp '{s}'")))?;
                msg.set_field_by_name("seconds", Value::I64(secs));
                msg.set_field_by_name("nanos", Value::I32(nanos));
            }
            "FieldMask" => {
                let s = v
                    .as_str()
                    .ok_or_else(|| path.error("expected a field mask string"))?;
                let paths = s
                    .split(',')
                    .filter(|p| !p.is_empty())
                    .map(|p| Value::String(camel_to_snake(p)))
                    .collect();
                msg.set_field_by_name("paths", Value::List(paths));
            }
            "Struct" => {
                let obj = v
                    .as_object()
                    .ok_or_else(|| path.error(format!("expected an object, got {}", kind_of(v))))?;
                let value_desc = self
                    .pool
                    .get_message_by_name("google.protobuf.Value")
                    .expect("wkt");
                let mut fields = HashMap::new();
                for (k, item) in obj {
                    fields.insert(
                        MapKey::String(k.clone()),
                        Value::Message(self.message(&value_desc, item, &path.key(k))?),
                    );
                }
                msg.set_field_by_name("fields", Value::Map(fields));
            }
            "ListValue" => {
                let items = v
                    .as_array()
                    .ok_or_else(|| path.error(format!("expected a list, got {}", kind_of(v))))?;
                let value_desc = self
                    .pool
                    .get_message_by_name("google.protobuf.Value")
                    .expect("wkt");
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    out.push(Value::Message(self.message(
                        &value_desc,
                        item,
                        &path.index(i),
                    )?));
                }
                msg.set_field_by_name("values", Value::List(out));
            }
            "Value" => match v {
                Json::Null => msg.set_field_by_name("null_value", Value::EnumNumber(0)),
                Json::Bool(b) => msg.set_field_by_name("bool_value", Value::Bool(*b)),
                Json::Number(n) => {
                    msg.set_field_by_name("number_value", Value::F64(n.as_f64().unwrap_or(0.0)))
                }
                Json::String(s) => msg.set_field_by_name("string_value", Value::String(s.clone())),
                Json::Object(_) => {
                    let d = self
                        .pool
                        .get_message_by_name("google.protobuf.Struct")
                        .expect("wkt");
                    msg.set_field_by_name(
                        "struct_value",
                        Value::Message(self.message(&d, v, path)?),
                    );
                }
                Json::Array(_) => {
                    let d = self
                        .pool
                        .get_message_by_name("google.protobuf.ListValue")
                        .expect("wkt");
                    msg.set_field_by_name("list_value", Value::Message(self.message(&d, v, path)?));
                }
            },
            "Empty" => {
                if !v.as_object().is_some_and(|o| o.is_empty()) {
                    return Err(path.error("expected an empty object"));
                }
            }
            "DoubleValue" | "FloatValue" | "Int64Value" | "UInt64Value" | "Int32Value"
            | "UInt32Value" | "BoolValue" | "StringValue" | "BytesValue" => {
                let field = desc
                    .get_field_by_name("value")
                    .expect("wrapper types have a value field");
                // Also accept the verbose form `{ "value": x }`, as Envoy's loader does.
                let inner = match v.as_object() {
                    Some(o) if o.len() == 1 && o.contains_key("value") => &o["value"],
                    _ => v,
                };
                msg.set_field(&field, self.single(&field.kind(), inner, path)?);
            }
            _ => return Ok(None),
        }
        Ok(Some(msg))
    }

    fn any(
        &mut self,
        any_desc: &MessageDescriptor,
        v: &Json,
        path: &FieldPath,
    ) -> Result<DynamicMessage> {
        let obj = v.as_object().ok_or_else(|| {
            path.error(format!(
                "expected an object with \"@type\", got {}",
                kind_of(v)
            ))
        })?;
        let type_url = obj
            .get("@type")
            .and_then(Json::as_str)
            .ok_or_else(|| path.error("an Any field needs \"@type\""))?;
        let type_name = super::descriptors::type_name_of_url(type_url);
        // Envoy unwraps TypedStruct (istiod's wrapper for extension configs): the inner type
        // URL names the real message and `value` is that message in proto3 JSON.
        if matches!(
            type_name,
            "udpa.type.v1.TypedStruct" | "xds.type.v3.TypedStruct"
        ) {
            let inner_url = obj
                .get("type_url")
                .or_else(|| obj.get("typeUrl"))
                .and_then(Json::as_str)
                .ok_or_else(|| path.field("type_url").error("a TypedStruct needs type_url"))?;
            let inner_name = inner_url.rsplit('/').next().unwrap_or(inner_url);
            let mut unwrapped = match obj.get("value") {
                Some(Json::Object(m)) => m.clone(),
                None => serde_json::Map::new(),
                Some(other) => {
                    return Err(path
                        .field("value")
                        .error(format!("expected an object, got {}", kind_of(other))));
                }
            };
            unwrapped.insert(
                "@type".into(),
                Json::String(format!("type.googleapis.com/{inner_name}")),
            );
            return self.any(any_desc, &Json::Object(unwrapped), &path.field("value"));
        }
        let inner_desc = self.pool.get_message_by_name(type_name).ok_or_else(|| {
            let message = if super::descriptors::is_envoy_type(type_name) {
                format!("{type_name} is not supported")
            } else {
                format!("unknown type '{type_url}'")
            };
            path.field("@type").error(message)
        })?;
        let rest: serde_json::Map<String, Json> = obj
            .iter()
            .filter(|(k, _)| k.as_str() != "@type")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let special_json = type_name.starts_with("google.protobuf.")
            && !matches!(type_name, "google.protobuf.Any" | "google.protobuf.Empty");
        let inner = if special_json {
            let value = rest
                .get("value")
                .ok_or_else(|| path.error(format!("an Any of {type_name} needs \"value\"")))?;
            self.message(&inner_desc, value, &path.field("value"))?
        } else {
            self.message(&inner_desc, &Json::Object(rest), path)?
        };
        let mut any = DynamicMessage::new(any_desc.clone());
        any.set_field_by_name("type_url", Value::String(type_url.to_string()));
        any.set_field_by_name("value", Value::Bytes(inner.encode_to_vec().into()));
        Ok(any)
    }
}

/// Decode a JSON document into a prost message of type `T` (through the dynamic message).
pub fn decode_into<T: Message + Default>(
    decoder: &mut JsonDecoder<'_>,
    full_name: &str,
    value: &Json,
    path: &FieldPath,
) -> Result<T> {
    let dynamic = decoder.decode(full_name, value, path)?;
    T::decode(dynamic.encode_to_vec().as_slice()).map_err(|e| {
        path.error(format!(
            "internal error transcoding {}: {e}",
            dynamic.descriptor().full_name()
        ))
    })
}

fn kind_of(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "a list",
        Json::Object(_) => "an object",
    }
}

fn int(v: &Json, path: &FieldPath) -> Result<i128> {
    match v {
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                Ok(i as i128)
            } else if let Some(u) = n.as_u64() {
                Ok(u as i128)
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                if f.fract() == 0.0 && f.is_finite() {
                    Ok(f as i128)
                } else {
                    Err(path.error(format!("expected an integer, got {n}")))
                }
            }
        }
        Json::String(s) => s
            .trim()
            .parse::<i128>()
            .map_err(|_| path.error(format!("expected an integer, got '{s}'"))),
        other => Err(path.error(format!("expected an integer, got {}", kind_of(other)))),
    }
}

fn float(v: &Json, path: &FieldPath) -> Result<f64> {
    match v {
        Json::Number(n) => Ok(n.as_f64().unwrap_or(0.0)),
        Json::String(s) => match s.as_str() {
            "NaN" => Ok(f64::NAN),
            "Infinity" => Ok(f64::INFINITY),
            "-Infinity" => Ok(f64::NEG_INFINITY),
            _ => s
                .trim()
                .parse()
                .map_err(|_| path.error(format!("expected a number, got '{s}'"))),
        },
        other => Err(path.error(format!("expected a number, got {}", kind_of(other)))),
    }
}

fn map_key(kind: &Kind, k: &str) -> Option<MapKey> {
    Some(match kind {
        Kind::String => MapKey::String(k.to_string()),
        Kind::Bool => MapKey::Bool(k.parse().ok()?),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => MapKey::I32(k.parse().ok()?),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => MapKey::I64(k.parse().ok()?),
        Kind::Uint32 | Kind::Fixed32 => MapKey::U32(k.parse().ok()?),
        Kind::Uint64 | Kind::Fixed64 => MapKey::U64(k.parse().ok()?),
        _ => return None,
    })
}

fn decode_base64(s: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|e| e.decode(s).ok())
}

/// `"1.5s"`, `"-0.25s"`, `"3s"` → (seconds, nanos), as in proto3 JSON.
pub fn parse_duration(s: &str) -> Option<(i64, i32)> {
    let body = s.strip_suffix('s')?;
    let (neg, body) = match body.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, body),
    };
    let (whole, frac) = body.split_once('.').unwrap_or((body, ""));
    if whole.is_empty() && frac.is_empty()
        || frac.len() > 9
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let secs: i64 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let nanos: i32 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse().ok()?
    };
    if secs > 315_576_000_000 {
        return None;
    }
    Some(if neg { (-secs, -nanos) } else { (secs, nanos) })
}

/// RFC 3339 (`2024-01-02T03:04:05.5Z`, `...+01:00`) → (seconds, nanos) since the epoch.
pub fn parse_timestamp(s: &str) -> Option<(i64, i32)> {
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !(b[10] == b'T' || b[10] == b't')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d, h, mi, se) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    let mut rest = &s[19..];
    let mut nanos = 0i32;
    if let Some(r) = rest.strip_prefix('.') {
        let digits = r.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 9 {
            return None;
        }
        nanos = format!("{:0<9}", &r[..digits]).parse().ok()?;
        rest = &r[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let (oh, om) = rest[1..].split_once(':')?;
            sign * (oh.parse::<i64>().ok()? * 3600 + om.parse::<i64>().ok()? * 60)
        }
    };
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = if y2 >= 0 { y2 } else { y2 - 399 } / 400;
    let yoe = y2 - era * 400;
    let doy = (153 * (if mo > 2 { mo - 3 } else { mo + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + h * 3600 + mi * 60 + se - offset, nanos))
}

fn camel_to_snake(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    for c in s.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::descriptors::envoy_pool;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use serde_json::json;

    fn cluster(v: Json) -> Result<Cluster> {
        let pool = envoy_pool();
        let mut d = JsonDecoder::new(&pool, false);
        decode_into(
            &mut d,
            "envoy.config.cluster.v3.Cluster",
            &v,
            &FieldPath::new("clusters[0]"),
        )
    }

    #[test]
    fn decodes_snake_and_camel_durations_wrappers_enums() {
        let c = cluster(json!({
            "name": "a", "connectTimeout": "0.25s", "lb_policy": "LEAST_REQUEST",
            "per_connection_buffer_limit_bytes": 1024, "type": 1,
        }))
        .unwrap();
        assert_eq!(c.name, "a");
        let ct = c.connect_timeout.unwrap();
        assert_eq!((ct.seconds, ct.nanos), (0, 250_000_000));
        assert_eq!(c.lb_policy, 1);
        assert_eq!(c.per_connection_buffer_limit_bytes.unwrap().value, 1024);
    }

    #[test]
    fn typed_struct_is_unwrapped() {
        let c = cluster(json!({
            "name": "a",
            "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
                "type_url": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "value": {"explicit_http_config": {"http2_protocol_options": {}}}
            }}
        }))
        .unwrap();
        let any = &c.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
        assert_eq!(
            any.type_url,
            "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
        );
        // xds.type.v3.TypedStruct too; errors inside name the path through `value`.
        let e = cluster(json!({
            "name": "a",
            "typed_extension_protocol_options": {"x": {
                "@type": "type.googleapis.com/xds.type.v3.TypedStruct",
                "type_url": "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "value": {"bogus": 1}
            }}
        }))
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("typed_extension_protocol_options[\"x\"].value.bogus: unknown field"),
            "{e}"
        );
    }

    #[test]
    fn errors_name_the_path() {
        let e = cluster(json!({"name": "a", "lb_policy": "NOPE"})).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("clusters[0].lb_policy: unknown value 'NOPE'"),
            "{e}"
        );
        let e = cluster(json!({"name": "a", "bogus": 1})).unwrap_err();
        assert_eq!(
            e.to_string(),
            "clusters[0].bogus: unknown field in envoy.config.cluster.v3.Cluster"
        );
        let e = cluster(json!({"load_assignment": {"endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"port_value": "x"}}}}]}]}}))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "clusters[0].load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value: expected an integer, got 'x'"
        );
    }

    #[test]
    fn any_fields_keep_paths_and_reject_unknown_types() {
        let e = cluster(json!({"typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {"max_concurrent_streams": -1}}}}}))
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "clusters[0].typed_extension_protocol_options[\"envoy.extensions.upstreams.http.v3.HttpProtocolOptions\"].explicit_http_config.http2_protocol_options.max_concurrent_streams: out of range for uint32"
        );
        let e = cluster(json!({"transport_socket": {"name": "x", "typed_config": {"@type": "type.googleapis.com/no.such.Type"}}})).unwrap_err();
        assert_eq!(
            e.to_string(),
            "clusters[0].transport_socket.typed_config.@type: unknown type 'type.googleapis.com/no.such.Type'"
        );
    }

    #[test]
    fn oneof_conflicts_are_errors() {
        let e = cluster(json!({"type": "STATIC", "cluster_type": {"name": "x"}})).unwrap_err();
        assert!(
            e.to_string()
                .contains("only one of the fields of oneof 'cluster_discovery_type'"),
            "{e}"
        );
    }

    #[test]
    fn unknown_fields_can_be_warnings() {
        let pool = envoy_pool();
        let mut d = JsonDecoder::new(&pool, true);
        let c: Cluster = decode_into(
            &mut d,
            "envoy.config.cluster.v3.Cluster",
            &json!({"name": "a", "zzz": 1}),
            &FieldPath::root(),
        )
        .unwrap();
        assert_eq!(c.name, "a");
        assert_eq!(d.warnings.len(), 1);
    }

    #[test]
    fn durations_and_timestamps() {
        assert_eq!(parse_duration("1.5s"), Some((1, 500_000_000)));
        assert_eq!(parse_duration("-0.001s"), Some((0, -1_000_000)));
        assert_eq!(parse_duration("10s"), Some((10, 0)));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("1.s"), Some((1, 0)));
        assert_eq!(parse_timestamp("1970-01-01T00:00:01Z"), Some((1, 0)));
        assert_eq!(
            parse_timestamp("2000-03-01T00:00:00.5+01:00"),
            Some((951_865_200, 500_000_000))
        );
    }
}
