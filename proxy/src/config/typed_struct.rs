//! `udpa.type.v1.TypedStruct` / `xds.type.v3.TypedStruct` in binary resources (xDS): Envoy
//! accepts an extension config wrapped in a TypedStruct wherever an `Any` is expected (istiod
//! wraps its metadata-exchange configs this way). A resource that contains one is walked through
//! its descriptors and every wrapped `Any` is replaced by the inner message in binary form,
//! decoded from the TypedStruct's proto3 JSON with the same decoder (and field paths) as files.
//! Resources without a TypedStruct are left alone (one byte search).

use super::descriptors::type_name_of_url;
use super::error::{FieldPath, Result};
use super::json::JsonDecoder;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, ReflectMessage, Value};

const MARKER: &[u8] = b"TypedStruct";

fn is_typed_struct(type_name: &str) -> bool {
    matches!(
        type_name,
        "udpa.type.v1.TypedStruct" | "xds.type.v3.TypedStruct"
    )
}

fn mentions_typed_struct(bytes: &[u8]) -> bool {
    bytes.windows(MARKER.len()).any(|w| w == MARKER)
}

/// Decode a resource of type `T`, TypedStruct wrappers inside it unwrapped first. `pool` is
/// built on first need and reused for the rest of an update.
pub fn decode_resource<T: Message + prost::Name + Default>(
    pool: &mut Option<DescriptorPool>,
    bytes: &[u8],
) -> std::result::Result<T, String> {
    if !mentions_typed_struct(bytes) {
        return T::decode(bytes).map_err(|e| e.to_string());
    }
    let pool = pool.get_or_insert_with(super::descriptors::envoy_pool);
    match unwrap_binary(pool, &T::full_name(), bytes).map_err(|e| e.to_string())? {
        Some(b) => T::decode(b.as_slice()),
        None => T::decode(bytes),
    }
    .map_err(|e| e.to_string())
}

/// The resource `bytes` of message `type_name` with every TypedStruct unwrapped, or None when
/// there is none.
pub fn unwrap_binary(
    pool: &DescriptorPool,
    type_name: &str,
    bytes: &[u8],
) -> Result<Option<Vec<u8>>> {
    if !mentions_typed_struct(bytes) {
        return Ok(None);
    }
    let root = FieldPath::root();
    let desc = pool
        .get_message_by_name(type_name)
        .ok_or_else(|| root.error(format!("unknown message type '{type_name}'")))?;
    let mut msg = DynamicMessage::decode(desc, bytes)
        .map_err(|e| root.error(format!("cannot decode {type_name}: {e}")))?;
    let mut decoder = JsonDecoder::new(pool, false);
    walk(&mut decoder, pool, &mut msg, &root)?;
    Ok(Some(msg.encode_to_vec()))
}

fn walk(
    decoder: &mut JsonDecoder<'_>,
    pool: &DescriptorPool,
    msg: &mut DynamicMessage,
    path: &FieldPath,
) -> Result<()> {
    if msg.descriptor().full_name() == "google.protobuf.Any" {
        return any(decoder, pool, msg, path);
    }
    for (field, value) in msg.fields_mut() {
        let fp = path.field(field.name());
        match value {
            Value::Message(m) => walk(decoder, pool, m, &fp)?,
            Value::List(items) => {
                for (i, item) in items.iter_mut().enumerate() {
                    if let Value::Message(m) = item {
                        walk(decoder, pool, m, &fp.index(i))?;
                    }
                }
            }
            Value::Map(entries) => {
                for (k, v) in entries.iter_mut() {
                    if let Value::Message(m) = v {
                        walk(decoder, pool, m, &fp.key(&map_key_text(k)))?;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn any(
    decoder: &mut JsonDecoder<'_>,
    pool: &DescriptorPool,
    msg: &mut DynamicMessage,
    path: &FieldPath,
) -> Result<()> {
    let type_url = match msg.get_field_by_name("type_url").as_deref() {
        Some(Value::String(s)) => s.clone(),
        _ => return Ok(()),
    };
    let value = match msg.get_field_by_name("value").as_deref() {
        Some(Value::Bytes(b)) => b.clone(),
        _ => return Ok(()),
    };
    if !mentions_typed_struct(type_url.as_bytes()) && !mentions_typed_struct(&value) {
        return Ok(());
    }
    let type_name = type_name_of_url(&type_url);
    let (inner_url, mut inner) = if is_typed_struct(type_name) {
        let ts = crate::model::istio_pb::TypedStruct::decode(value.as_ref())
            .map_err(|e| path.error(format!("cannot decode {type_name}: {e}")))?;
        if ts.type_url.is_empty() {
            return Err(path.field("type_url").error("a TypedStruct needs type_url"));
        }
        let inner_name = type_name_of_url(&ts.type_url).to_string();
        let json = ts
            .value
            .as_ref()
            .map(crate::model::runtime::struct_to_json)
            .unwrap_or_else(|| serde_json::Value::Object(Default::default()));
        let inner = decoder.decode(&inner_name, &json, &path.field("value"))?;
        (format!("type.googleapis.com/{inner_name}"), inner)
    } else {
        // A wrapped config deeper inside (an HCM's filters inside a listener's filter).
        let Some(desc) = pool.get_message_by_name(type_name) else {
            return Ok(());
        };
        let inner = DynamicMessage::decode(desc, value.as_ref())
            .map_err(|e| path.error(format!("cannot decode {type_name}: {e}")))?;
        (type_url, inner)
    };
    walk(decoder, pool, &mut inner, path)?;
    msg.set_field_by_name("type_url", Value::String(inner_url));
    msg.set_field_by_name("value", Value::Bytes(inner.encode_to_vec().into()));
    Ok(())
}

/// A map key as it reads in a path: `connect_authority`, not `String("connect_authority")`.
fn map_key_text(k: &prost_reflect::MapKey) -> String {
    use prost_reflect::MapKey;
    match k {
        MapKey::String(s) => s.clone(),
        MapKey::Bool(b) => b.to_string(),
        MapKey::I32(n) => n.to_string(),
        MapKey::I64(n) => n.to_string(),
        MapKey::U32(n) => n.to_string(),
        MapKey::U64(n) => n.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::pb;
    use envoy_types::pb::google::protobuf::{Any, Struct, Value as PbValue, value::Kind};

    fn typed_struct(inner_url: &str, fields: &[(&str, Kind)]) -> Any {
        let ts = crate::model::istio_pb::TypedStruct {
            type_url: inner_url.into(),
            value: Some(Struct {
                fields: fields
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.to_string(),
                            PbValue {
                                kind: Some(v.clone()),
                            },
                        )
                    })
                    .collect(),
            }),
        };
        Any {
            type_url: "type.googleapis.com/udpa.type.v1.TypedStruct".into(),
            value: ts.encode_to_vec(),
        }
    }

    fn listener_with(filter: Any) -> pb::listener::Listener {
        pb::listener::Listener {
            name: "l".into(),
            filter_chains: vec![pb::listener::FilterChain {
                filters: vec![pb::listener::Filter {
                    name: "istio.metadata_exchange".into(),
                    config_type: Some(pb::listener::filter::ConfigType::TypedConfig(filter)),
                }],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn unwraps_istio_metadata_exchange_in_a_binary_listener() {
        let pool = crate::config::descriptors::envoy_pool();
        let l = listener_with(typed_struct(
            "type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange",
            &[
                ("protocol", Kind::StringValue("istio-peer-exchange".into())),
                ("enable_discovery", Kind::BoolValue(true)),
            ],
        ));
        let out = unwrap_binary(
            &pool,
            "envoy.config.listener.v3.Listener",
            &l.encode_to_vec(),
        )
        .unwrap()
        .expect("rewritten");
        let l = pb::listener::Listener::decode(out.as_slice()).unwrap();
        let Some(pb::listener::filter::ConfigType::TypedConfig(any)) =
            &l.filter_chains[0].filters[0].config_type
        else {
            panic!()
        };
        assert_eq!(
            any.type_url,
            "type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange"
        );
        let mx = crate::model::istio_pb::MetadataExchange::decode(any.value.as_slice()).unwrap();
        assert_eq!(mx.protocol, "istio-peer-exchange");
        assert!(mx.enable_discovery);
        // Nothing to do: None.
        let plain = pb::listener::Listener::default();
        assert!(
            unwrap_binary(
                &pool,
                "envoy.config.listener.v3.Listener",
                &plain.encode_to_vec()
            )
            .unwrap()
            .is_none()
        );
    }

    #[test]
    fn a_bad_field_in_a_typed_struct_names_its_path() {
        let pool = crate::config::descriptors::envoy_pool();
        let l = listener_with(typed_struct(
            "envoy.tcp.metadataexchange.config.MetadataExchange",
            &[("protocoll", Kind::StringValue("x".into()))],
        ));
        let err = unwrap_binary(
            &pool,
            "envoy.config.listener.v3.Listener",
            &l.encode_to_vec(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("filter_chains[0].filters[0].typed_config.value.protocoll"),
            "{err}"
        );
    }
    #[test]
    fn a_map_entry_in_a_path_reads_as_its_key() {
        let pool = crate::config::descriptors::envoy_pool();
        let rc = pb::route::RouteConfiguration {
            virtual_hosts: vec![pb::route::VirtualHost {
                typed_per_filter_config: [(
                    "connect_authority".to_string(),
                    typed_struct(
                        "envoy.tcp.metadataexchange.config.MetadataExchange",
                        &[("protocoll", Kind::StringValue("x".into()))],
                    ),
                )]
                .into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let err = unwrap_binary(
            &pool,
            "envoy.config.route.v3.RouteConfiguration",
            &rc.encode_to_vec(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with(
                "virtual_hosts[0].typed_per_filter_config[\"connect_authority\"].value.protocoll"
            ),
            "{err}"
        );
    }
}
