//! Bootstrap `layered_runtime`: static layers (and the admin layer, for `/runtime_modify`),
//! flattened to `a.b.c → value`. remora reads the keys it implements at configuration time and
//! reports, at startup, any key it does not use.

use super::core::deny;
use super::pb;
use crate::config::{FieldPath, Result};
use std::collections::BTreeMap;

/// Runtime keys remora honours (prefix match for the parameterised ones). The global
/// connection limit comes from the overload manager's resource monitor only:
/// `overload.global_downstream_max_connections` is reported as not used.
pub const KNOWN_KEYS: &[&str] = &["envoy.resource_limits.listener."];

#[derive(Debug, Clone, Default)]
pub struct Runtime {
    /// Final values after layering.
    pub values: BTreeMap<String, serde_json::Value>,
    /// Layer names in order, for `/runtime`.
    pub layers: Vec<String>,
    /// Whether an admin layer exists (`/runtime_modify` is allowed only then).
    pub has_admin_layer: bool,
}

impl Runtime {
    pub fn from_proto(
        path: &FieldPath,
        lr: &Option<pb::bootstrap::LayeredRuntime>,
    ) -> Result<Self> {
        use pb::bootstrap::runtime_layer::LayerSpecifier as L;
        let mut rt = Runtime::default();
        let Some(pb::bootstrap::LayeredRuntime { layers }) = lr else {
            return Ok(rt);
        };
        for (i, layer) in layers.iter().enumerate() {
            let lp = path.field("layers").index(i);
            let pb::bootstrap::RuntimeLayer {
                name,
                layer_specifier,
            } = layer;
            rt.layers.push(name.clone());
            match layer_specifier {
                Some(L::StaticLayer(s)) => flatten("", s, &mut rt.values),
                Some(L::AdminLayer(pb::bootstrap::runtime_layer::AdminLayer {})) => {
                    rt.has_admin_layer = true
                }
                Some(L::DiskLayer(d)) => {
                    deny(&lp, "disk_layer", &Some(d.clone()))?;
                }
                Some(L::RtdsLayer(r)) => {
                    deny(&lp, "rtds_layer", &Some(r.clone()))?;
                }
                None => {
                    return Err(lp.error(
                        "a runtime layer needs static_layer, disk_layer, admin_layer or rtds_layer",
                    ));
                }
            }
        }
        Ok(rt)
    }

    pub fn u64(&self, key: &str) -> Option<u64> {
        match self.values.get(key)? {
            serde_json::Value::Number(n) => n.as_u64().or_else(|| n.as_f64().map(|f| f as u64)),
            serde_json::Value::String(s) => s.parse().ok(),
            _ => None,
        }
    }

    /// Keys present in the runtime that remora does not read.
    pub fn unused_keys(&self) -> Vec<&str> {
        self.values
            .keys()
            .map(String::as_str)
            .filter(|k| !KNOWN_KEYS.iter().any(|p| k.starts_with(p)))
            .collect()
    }
}

fn flatten(prefix: &str, s: &pb::protobuf::Struct, out: &mut BTreeMap<String, serde_json::Value>) {
    use pb::protobuf::value::Kind;
    for (k, v) in &s.fields {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match &v.kind {
            Some(Kind::StructValue(inner)) => flatten(&key, inner, out),
            Some(Kind::NumberValue(n)) => {
                out.insert(
                    key,
                    serde_json::Number::from_f64(*n)
                        .map(serde_json::Value::Number)
                        .unwrap_or(serde_json::Value::Null),
                );
            }
            Some(Kind::StringValue(s)) => {
                out.insert(key, serde_json::Value::String(s.clone()));
            }
            Some(Kind::BoolValue(b)) => {
                out.insert(key, serde_json::Value::Bool(*b));
            }
            _ => {}
        }
    }
}

/// A protobuf `Struct` as JSON (node metadata, config dumps).
pub fn struct_to_json(s: &pb::protobuf::Struct) -> serde_json::Value {
    serde_json::Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), value_to_json(v)))
            .collect(),
    )
}

pub fn value_to_json(v: &pb::protobuf::Value) -> serde_json::Value {
    use pb::protobuf::value::Kind;
    match &v.kind {
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(*n)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null),
        Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(Kind::StructValue(s)) => struct_to_json(s),
        Some(Kind::ListValue(l)) => {
            serde_json::Value::Array(l.values.iter().map(value_to_json).collect())
        }
        Some(Kind::NullValue(_)) | None => serde_json::Value::Null,
    }
}

/// `RuntimeFractionalPercent` (`filter_enabled`, `filter_enforced`, CORS's `shadow_enabled`):
/// the share of requests a feature applies to, in parts per million of its `default_value`.
/// remora reads no runtime key per request: a `runtime_key` that the runtime sets is reported at
/// startup among the keys not used (`Runtime::unused_keys`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuntimeFraction {
    pub per_million: u32,
}

impl RuntimeFraction {
    pub const ALWAYS: Self = Self {
        per_million: 1_000_000,
    };

    pub fn from_proto(path: &FieldPath, f: &pb::core::RuntimeFractionalPercent) -> Result<Self> {
        let pb::core::RuntimeFractionalPercent {
            default_value,
            runtime_key: _,
        } = f;
        let Some(d) = default_value else {
            return Err(path.field("default_value").error("is required"));
        };
        Self::from_percent(&path.field("default_value"), d)
    }

    /// `envoy.type.v3.FractionalPercent`; a numerator above the denominator is all requests.
    pub fn from_percent(path: &FieldPath, d: &pb::types::FractionalPercent) -> Result<Self> {
        use pb::types::fractional_percent::DenominatorType as D;
        let pb::types::FractionalPercent {
            numerator,
            denominator,
        } = d;
        let scale: u64 = match D::try_from(*denominator) {
            Ok(D::Hundred) => 10_000,
            Ok(D::TenThousand) => 100,
            Ok(D::Million) => 1,
            Err(_) => {
                return Err(path
                    .field("denominator")
                    .error(format!("unknown enum value {denominator}")));
            }
        };
        Ok(Self {
            per_million: (u64::from(*numerator) * scale).min(1_000_000) as u32,
        })
    }

    /// Whether this request is in the fraction (Envoy's `featureEnabled`: a random draw).
    pub fn sample(&self) -> bool {
        match self.per_million {
            0 => false,
            1_000_000.. => true,
            n => fastrand::u32(0..1_000_000) < n,
        }
    }
}
