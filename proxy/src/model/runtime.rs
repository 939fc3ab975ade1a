//! Bootstrap `layered_runtime`: static layers, disk layers (a directory tree of files, one key
//! per file) and the admin layer (for `/runtime_modify`), flattened to `a.b.c → value`. remora
//! reads the keys it implements at configuration time, or per request through the server's
//! runtime snapshot (`crate::runtime`, which re-reads the disk layers when their symlink root
//! is swapped), and reports, at startup, any key it does not use.
//!
//! Translation reads no directory: a disk layer's tree is asked of the translation's
//! [`Inputs`], like any file a configuration names.

use super::core::deny;
use super::inputs::{DirFiles, Inputs, NotRead};
use super::pb;
use crate::config::{FieldPath, Result};
use bytes::Bytes;
use std::collections::BTreeMap;

/// Runtime keys remora honours (prefix match for the parameterised ones). The global
/// connection limit comes from the overload manager's resource monitor only:
/// `overload.global_downstream_max_connections` is reported as not used. `fault.http.` holds
/// the fault filter's default keys and their per-downstream-cluster forms.
pub const KNOWN_KEYS: &[&str] = &["envoy.resource_limits.listener.", "fault.http."];

/// Envoy's limit on a disk layer's depth (`DiskLayer::walkDirectory`).
pub const MAX_DISK_DEPTH: usize = 16;

#[derive(Debug, Clone, Default)]
pub struct Runtime {
    /// Final values after layering.
    pub values: BTreeMap<String, serde_json::Value>,
    /// Layer names in order, for `/runtime`.
    pub layers: Vec<String>,
    /// Whether an admin layer exists (`/runtime_modify` is allowed only then).
    pub has_admin_layer: bool,
    /// Each layer's own values, in order: what a re-read of the disk layers layers again.
    pub sources: Vec<Layer>,
}

/// One layer of the runtime.
#[derive(Debug, Clone)]
pub enum Layer {
    Static(BTreeMap<String, serde_json::Value>),
    Disk {
        spec: DiskLayer,
        /// What was read: `None` when the directory does not exist (Envoy skips the layer) or
        /// could not be read (skipped, counted in `runtime.load_error`).
        values: Option<BTreeMap<String, serde_json::Value>>,
        /// Why the directory could not be read.
        error: Option<String>,
    },
    Admin,
}

/// `RuntimeLayer.DiskLayer`: where its tree is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskLayer {
    /// The symbolic link swapped to publish a new tree (watched for the swap).
    pub symlink_root: String,
    /// `symlink_root/subdirectory`: the directory whose files are the keys.
    pub dir: String,
}

/// A layer load's outcome, for `runtime.*` stats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Layers in the snapshot (disk layers whose directory is missing or unreadable excluded).
    pub layers: usize,
    /// Disk layers that could not be read.
    pub errors: usize,
    /// Disk layers read.
    pub disk_layers: usize,
}

impl Runtime {
    pub fn from_proto(
        path: &FieldPath,
        lr: &Option<pb::bootstrap::LayeredRuntime>,
        inputs: &Inputs,
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
            if rt.layers.contains(name) {
                return Err(lp
                    .field("name")
                    .error(format!("Duplicate layer name: {name}")));
            }
            rt.layers.push(name.clone());
            let source = match layer_specifier {
                Some(L::StaticLayer(s)) => {
                    let mut values = BTreeMap::new();
                    flatten("", s, &mut values);
                    Layer::Static(values)
                }
                Some(L::AdminLayer(pb::bootstrap::runtime_layer::AdminLayer {})) => {
                    if rt.has_admin_layer {
                        return Err(lp.field("admin_layer").error(
                            "Too many admin layers specified in LayeredRuntime, at most one may be specified",
                        ));
                    }
                    rt.has_admin_layer = true;
                    Layer::Admin
                }
                Some(L::DiskLayer(d)) => {
                    let spec = DiskLayer::from_proto(&lp.field("disk_layer"), d, inputs)?;
                    let read = match inputs.dir(&spec.dir) {
                        Ok(read) => read.map(|o| o.cloned()).map_err(str::to_string),
                        Err(NotRead) => {
                            return Err(lp
                                .field("disk_layer")
                                .error(format!("'{}' has not been read", spec.dir)));
                        }
                    };
                    Layer::disk(spec, read)
                }
                Some(L::RtdsLayer(_)) => return Err(lp.unsupported("rtds_layer")),
                None => {
                    return Err(lp.error(
                        "a runtime layer needs static_layer, disk_layer, admin_layer or rtds_layer",
                    ));
                }
            };
            rt.sources.push(source);
        }
        rt.relayer();
        Ok(rt)
    }

    /// The same runtime with every disk layer read again through `read` (a directory's
    /// files, `Ok(None)` when it does not exist).
    pub fn reload_disk(
        &self,
        read: impl Fn(&str) -> std::result::Result<Option<DirFiles>, String>,
    ) -> Self {
        let mut rt = self.clone();
        for layer in &mut rt.sources {
            if let Layer::Disk { spec, .. } = layer {
                *layer = Layer::disk(spec.clone(), read(&spec.dir));
            }
        }
        rt.relayer();
        rt
    }

    /// The disk layers' symlink roots (watched for swaps).
    pub fn disk_roots(&self) -> Vec<&str> {
        self.sources
            .iter()
            .filter_map(|l| match l {
                Layer::Disk { spec, .. } => Some(spec.symlink_root.as_str()),
                _ => None,
            })
            .collect()
    }

    /// What the last load found (Envoy's `runtime.num_layers`, `load_error`, …).
    pub fn report(&self) -> LoadReport {
        let mut r = LoadReport::default();
        for l in &self.sources {
            match l {
                Layer::Disk {
                    values: None,
                    error,
                    ..
                } => r.errors += usize::from(error.is_some()),
                Layer::Disk { .. } => {
                    r.disk_layers += 1;
                    r.layers += 1;
                }
                _ => r.layers += 1,
            }
        }
        r
    }

    /// The final values: each layer's keys over the previous layers'.
    fn relayer(&mut self) {
        self.values.clear();
        for l in &self.sources {
            if let Layer::Static(v)
            | Layer::Disk {
                values: Some(v), ..
            } = l
            {
                self.values
                    .extend(v.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
        }
    }

    pub fn u64(&self, key: &str) -> Option<u64> {
        match self.values.get(key)? {
            serde_json::Value::Number(n) => n
                .as_u64()
                .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)),
            serde_json::Value::String(s) => s.parse().ok(),
            _ => None,
        }
    }

    /// Envoy's `getInteger(key, default)`.
    pub fn integer(&self, key: &str, default: u64) -> u64 {
        self.u64(key).unwrap_or(default)
    }

    /// Envoy's `featureEnabled(key, default_percent)` for a draw `random`: the key's value as a
    /// fractional percent (`{numerator, denominator}`) or as an integer percentage (above 100:
    /// always), else `default`.
    /// Envoy's `getBoolean`: `true`/`false` (a JSON bool or those words), else `default`.
    pub fn boolean(&self, key: &str, default: bool) -> bool {
        match self.values.get(key) {
            Some(serde_json::Value::Bool(b)) => *b,
            Some(serde_json::Value::String(s)) if s.eq_ignore_ascii_case("true") => true,
            Some(serde_json::Value::String(s)) if s.eq_ignore_ascii_case("false") => false,
            _ => default,
        }
    }

    pub fn feature_enabled(&self, key: &str, default: Percent, random: u64) -> bool {
        let percent = match self.values.get(key) {
            Some(serde_json::Value::Object(o)) => Percent::from_json(o).unwrap_or(default),
            Some(_) => match self.u64(key) {
                Some(n) if n > 100 => return true,
                Some(n) => Percent::hundred(n as u32),
                None => default,
            },
            None => default,
        };
        percent.enabled(random)
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

/// `envoy.type.v3.FractionalPercent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Percent {
    pub numerator: u32,
    /// 100, 10 000 or 1 000 000.
    pub denominator: u32,
}

impl Default for Percent {
    /// The proto's default: 0 of a hundred (never).
    fn default() -> Self {
        Self::hundred(0)
    }
}

impl Percent {
    pub const fn hundred(numerator: u32) -> Self {
        Self {
            numerator,
            denominator: 100,
        }
    }

    pub fn from_proto(path: &FieldPath, p: &Option<pb::types::FractionalPercent>) -> Result<Self> {
        let Some(pb::types::FractionalPercent {
            numerator,
            denominator,
        }) = p
        else {
            return Ok(Self::default());
        };
        Ok(Self {
            numerator: *numerator,
            denominator: denominator_value(*denominator).ok_or_else(|| {
                path.field("denominator")
                    .error(format!("unknown enum value {denominator}"))
            })?,
        })
    }

    /// A runtime value written as `{numerator: n, denominator: HUNDRED}`.
    fn from_json(o: &serde_json::Map<String, serde_json::Value>) -> Option<Self> {
        let numerator = match o.get("numerator") {
            None => 0,
            Some(n) => u32::try_from(n.as_u64()?).ok()?,
        };
        let denominator = match o.get("denominator") {
            None => 100,
            Some(serde_json::Value::String(s)) => match s.as_str() {
                "HUNDRED" => 100,
                "TEN_THOUSAND" => 10_000,
                "MILLION" => 1_000_000,
                _ => return None,
            },
            Some(n) => denominator_value(i32::try_from(n.as_i64()?).ok()?)?,
        };
        Some(Self {
            numerator,
            denominator,
        })
    }

    /// Envoy's `evaluateFractionalPercent`: `random % denominator < numerator`.
    pub fn enabled(&self, random: u64) -> bool {
        random % u64::from(self.denominator) < u64::from(self.numerator)
    }

    /// The same denominator with the numerator capped at `n` (a header's percentage).
    pub fn capped(self, n: u32) -> Self {
        Self {
            numerator: n.min(self.numerator),
            ..self
        }
    }
}

fn denominator_value(d: i32) -> Option<u32> {
    match d {
        0 => Some(100),
        1 => Some(10_000),
        2 => Some(1_000_000),
        _ => None,
    }
}

impl DiskLayer {
    fn from_proto(
        path: &FieldPath,
        d: &pb::bootstrap::runtime_layer::DiskLayer,
        inputs: &Inputs,
    ) -> Result<Self> {
        let pb::bootstrap::runtime_layer::DiskLayer {
            symlink_root,
            subdirectory,
            append_service_cluster,
        } = d;
        // The service cluster (node.cluster or --service-cluster) is not known to translation.
        deny(path, "append_service_cluster", append_service_cluster)?;
        // Envoy watches the root's directory for the link being moved over: that directory
        // must exist (the root itself need not).
        let parent = match symlink_root.rsplit_once('/') {
            Some(("", _)) => "/",
            Some((parent, _)) => parent,
            None => ".",
        };
        match inputs.is_dir(parent) {
            Ok(true) => {}
            Ok(false) => {
                return Err(path.field("symlink_root").error(format!(
                    "unable to add filesystem watch for file {symlink_root}: No such file or directory"
                )));
            }
            Err(NotRead) => {
                return Err(path
                    .field("symlink_root")
                    .error(format!("'{parent}' has not been read")));
            }
        }
        Ok(Self {
            symlink_root: symlink_root.clone(),
            dir: format!("{symlink_root}/{subdirectory}"),
        })
    }
}

impl Layer {
    fn disk(spec: DiskLayer, read: std::result::Result<Option<DirFiles>, String>) -> Self {
        match read {
            Ok(Some(files)) => Layer::Disk {
                spec,
                values: Some(disk_values(&files)),
                error: None,
            },
            Ok(None) => Layer::Disk {
                spec,
                values: None,
                error: None,
            },
            Err(e) => Layer::Disk {
                spec,
                values: None,
                error: Some(e),
            },
        }
    }
}

/// A disk layer's keys: each file's path under the layer with `/` as `.`, its value the file
/// without its comment lines (`#…`) and the last line's trailing whitespace.
fn disk_values(files: &[(String, Bytes)]) -> BTreeMap<String, serde_json::Value> {
    files
        .iter()
        .map(|(rel, bytes)| (rel.replace('/', "."), scalar(&file_value(bytes))))
        .collect()
}

fn file_value(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.split('\n').filter(|l| !l.is_empty()).collect();
    let mut value = String::new();
    for (i, line) in lines.iter().enumerate() {
        if line.starts_with('#') {
            continue;
        }
        if i + 1 == lines.len() {
            value.push_str(line.trim_end());
        } else {
            value.push_str(line);
            value.push('\n');
        }
    }
    value
}

/// A value as YAML reads a scalar: a number, a boolean, or the string itself.
fn scalar(s: &str) -> serde_json::Value {
    let t = s.trim();
    if let Ok(n) = t.parse::<u64>() {
        return serde_json::Value::from(n);
    }
    if let Ok(n) = t.parse::<i64>() {
        return serde_json::Value::from(n);
    }
    if let Some(n) = t.parse::<f64>().ok().and_then(serde_json::Number::from_f64) {
        return serde_json::Value::Number(n);
    }
    match t {
        "true" => serde_json::Value::Bool(true),
        "false" => serde_json::Value::Bool(false),
        _ => serde_json::Value::String(s.to_string()),
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
            // A fractional percent (or an empty struct) is one value, as Envoy's ProtoLayer.
            Some(Kind::StructValue(inner))
                if inner.fields.is_empty()
                    || inner.fields.contains_key("numerator")
                    || inner.fields.contains_key("denominator") =>
            {
                out.insert(key, struct_to_json(inner));
            }
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
/// the share of requests a feature applies to. As Envoy's `featureEnabled(runtime_key,
/// default_value)`: the runtime's value for `runtime_key` when it sets one (read from the live
/// snapshot, so a swapped disk layer applies at once), else `default_value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeFraction {
    pub default: Percent,
    /// `None` when empty (nothing to look up).
    pub runtime_key: Option<std::sync::Arc<str>>,
}

impl RuntimeFraction {
    pub const ALWAYS: Self = Self {
        default: Percent::hundred(100),
        runtime_key: None,
    };

    pub fn from_proto(path: &FieldPath, f: &pb::core::RuntimeFractionalPercent) -> Result<Self> {
        let pb::core::RuntimeFractionalPercent {
            default_value,
            runtime_key,
        } = f;
        if default_value.is_none() {
            return Err(path.field("default_value").error("is required"));
        }
        Ok(Self {
            default: Percent::from_proto(&path.field("default_value"), default_value)?,
            runtime_key: runtime_key_of(runtime_key),
        })
    }

    /// Whether this request is in the fraction (a random draw). `runtime` gives the snapshot,
    /// asked for only when there is a key to read.
    pub fn sample(&self, runtime: impl FnOnce() -> std::sync::Arc<Runtime>) -> bool {
        let random = fastrand::u64(..);
        match &self.runtime_key {
            Some(key) => runtime().feature_enabled(key, self.default, random),
            None => self.default.enabled(random),
        }
    }
}

/// `RuntimeFeatureFlag` (e.g. the network local rate limit's `runtime_enabled`): the runtime's
/// boolean for `runtime_key` when it sets one, else `default_value` (true when absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeFlag {
    pub default: bool,
    pub runtime_key: Option<std::sync::Arc<str>>,
}

impl RuntimeFlag {
    pub fn from_proto(f: &Option<pb::core::RuntimeFeatureFlag>) -> Self {
        match f {
            None => Self {
                default: true,
                runtime_key: None,
            },
            Some(pb::core::RuntimeFeatureFlag {
                default_value,
                runtime_key,
            }) => Self {
                default: default_value.as_ref().is_none_or(|b| b.value),
                runtime_key: runtime_key_of(runtime_key),
            },
        }
    }

    pub fn enabled(&self, runtime: impl FnOnce() -> std::sync::Arc<Runtime>) -> bool {
        match &self.runtime_key {
            Some(key) => runtime().boolean(key, self.default),
            None => self.default,
        }
    }
}

fn runtime_key_of(key: &str) -> Option<std::sync::Arc<str>> {
    (!key.is_empty()).then(|| key.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_files_are_keys_and_feature_percentages_read_as_envoy() {
        let files = vec![
            (
                "fault/http/abort/abort_percent".to_string(),
                Bytes::from_static(b"# placeholder\n30 \n"),
            ),
            ("a/b.c".to_string(), Bytes::from_static(b"text value\n")),
        ];
        let mut rt = Runtime {
            sources: vec![Layer::Disk {
                spec: DiskLayer {
                    symlink_root: "/r".into(),
                    dir: "/r/x".into(),
                },
                values: Some(disk_values(&files)),
                error: None,
            }],
            ..Default::default()
        };
        rt.relayer();
        assert_eq!(rt.u64("fault.http.abort.abort_percent"), Some(30));
        assert_eq!(rt.values["a.b.c"], "text value");
        let never = Percent::default();
        // 30 of a hundred: draws 0..29 of each hundred enabled.
        assert!(rt.feature_enabled("fault.http.abort.abort_percent", never, 129));
        assert!(!rt.feature_enabled("fault.http.abort.abort_percent", never, 130));
        // Missing: the default; above 100: always.
        assert!(!rt.feature_enabled("missing", never, 0));
        rt.values.insert("big".into(), 101.into());
        assert!(rt.feature_enabled("big", never, 99));
        // A fractional percent value.
        rt.values.insert(
            "frac".into(),
            serde_json::json!({"numerator": 5, "denominator": "TEN_THOUSAND"}),
        );
        assert!(rt.feature_enabled("frac", never, 10_004));
        assert!(!rt.feature_enabled("frac", never, 10_005));
        assert_eq!(
            rt.report(),
            LoadReport {
                layers: 1,
                errors: 0,
                disk_layers: 1
            }
        );
    }

    #[test]
    fn fractions_and_flags_read_their_runtime_key() {
        let mut rt = Runtime::default();
        rt.values.insert("off".into(), 0.into());
        rt.values.insert("flag".into(), false.into());
        let rt = std::sync::Arc::new(rt);
        let on = |key: &str| RuntimeFraction {
            default: Percent::hundred(100),
            runtime_key: runtime_key_of(key),
        };
        // The runtime's 0 % wins over the default's 100 %; an unset key keeps the default.
        assert!(!on("off").sample(|| rt.clone()));
        assert!(on("unset").sample(|| rt.clone()));
        assert!(on("").sample(|| unreachable!("no key: the runtime is not read")));
        let flag = |key: &str| RuntimeFlag {
            default: true,
            runtime_key: runtime_key_of(key),
        };
        assert!(!flag("flag").enabled(|| rt.clone()));
        assert!(flag("unset").enabled(|| rt.clone()));
        assert!(RuntimeFlag::from_proto(&None).default);
    }
}
