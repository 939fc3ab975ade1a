//! Build script: locate the Envoy FileDescriptorSet that envoy-types ships in its sources
//! (`src/generated/types.bin`, not exported by the crate), strip what the runtime never reads
//! (source comments, validation annotations), keep only the files the roots below reach, and
//! write it to OUT_DIR for `include_bytes!`.
//!
//! The crate's location comes from `cargo metadata`, which reads the lock file and the local
//! registry only, so this works offline and needs no protoc.

use prost::Message;
use prost_types::{DescriptorProto, EnumDescriptorProto, FileDescriptorSet};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest_dir =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());

    let descriptor_path = match std::env::var("REMORA_ENVOY_DESCRIPTORS") {
        Ok(p) => PathBuf::from(p),
        Err(_) => locate_envoy_types(&cargo, &manifest_dir).join("src/generated/types.bin"),
    };
    println!("cargo:rerun-if-changed={}", descriptor_path.display());
    println!("cargo:rerun-if-env-changed=REMORA_ENVOY_DESCRIPTORS");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=Cargo.toml");

    let raw = std::fs::read(&descriptor_path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", descriptor_path.display()));
    let mut set =
        FileDescriptorSet::decode(raw.as_slice()).expect("decoding envoy-types' descriptor set");
    // Every message name of the full set, so that a config naming an Envoy extension remora does
    // not implement is told so, rather than that the type does not exist.
    let mut all_names: Vec<String> = set
        .file
        .iter()
        .flat_map(|f| {
            f.message_type
                .iter()
                .map(move |m| format!("{}.{}", f.package(), m.name()))
        })
        .collect();
    all_names.sort();
    std::fs::write(out_dir.join("envoy_type_names.txt"), all_names.join("\n"))
        .expect("writing type names");
    prune(&mut set, ROOTS, ROOT_PACKAGES);
    for file in &mut set.file {
        file.source_code_info = None;
        file.options = None;
        for m in &mut file.message_type {
            strip_message(m);
        }
        for e in &mut file.enum_type {
            strip_enum(e);
        }
        for s in &mut file.service {
            s.options = None;
            for m in &mut s.method {
                m.options = None;
            }
        }
    }
    for f in istio_files() {
        let defined = |g: &FileDescriptorProto| {
            g.package == f.package
                && g.message_type
                    .iter()
                    .any(|m| f.message_type.iter().any(|n| n.name == m.name))
        };
        assert!(
            !set.file.iter().any(defined),
            "{} is already in envoy-types' descriptor set",
            f.name()
        );
        set.file.push(f);
    }
    std::fs::write(out_dir.join("envoy_descriptors.bin"), set.encode_to_vec())
        .expect("writing descriptors");
}

// === Istio's extension types ===
//
// istiod sends config messages that are not in Envoy's API (and not in envoy-types): their
// descriptors are written here from the wire facts (type names, field numbers and types), so
// that JSON, TypedStruct and the config dump can handle them like Envoy's own.

use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{
    EnumValueDescriptorProto, FieldDescriptorProto, FileDescriptorProto, MessageOptions,
    OneofDescriptorProto,
};

enum F {
    Bool,
    Str,
    Msg(&'static str),
    Enum(&'static str),
}

fn field(
    name: &str,
    number: i32,
    ty: F,
    repeated: bool,
    oneof: Option<i32>,
) -> FieldDescriptorProto {
    let (t, type_name) = match ty {
        F::Bool => (Type::Bool, None),
        F::Str => (Type::String, None),
        F::Msg(n) => (Type::Message, Some(n.to_string())),
        F::Enum(n) => (Type::Enum, Some(n.to_string())),
    };
    FieldDescriptorProto {
        name: Some(name.into()),
        number: Some(number),
        label: Some(if repeated {
            Label::Repeated
        } else {
            Label::Optional
        } as i32),
        r#type: Some(t as i32),
        type_name,
        json_name: Some(json_name(name)),
        oneof_index: oneof,
        ..Default::default()
    }
}

fn json_name(name: &str) -> String {
    let mut out = String::new();
    let mut up = false;
    for c in name.chars() {
        if c == '_' {
            up = true;
        } else if up {
            out.push(c.to_ascii_uppercase());
            up = false;
        } else {
            out.push(c);
        }
    }
    out
}

fn message(name: &str, fields: Vec<FieldDescriptorProto>) -> DescriptorProto {
    DescriptorProto {
        name: Some(name.into()),
        field: fields,
        ..Default::default()
    }
}

fn enumeration(name: &str, values: &[(&str, i32)]) -> EnumDescriptorProto {
    EnumDescriptorProto {
        name: Some(name.into()),
        value: values
            .iter()
            .map(|(n, v)| EnumValueDescriptorProto {
                name: Some(n.to_string()),
                number: Some(*v),
                options: None,
            })
            .collect(),
        ..Default::default()
    }
}

fn file(
    name: &str,
    package: &str,
    deps: &[&str],
    messages: Vec<DescriptorProto>,
    enums: Vec<EnumDescriptorProto>,
) -> FileDescriptorProto {
    FileDescriptorProto {
        name: Some(name.into()),
        package: Some(package.into()),
        dependency: deps.iter().map(|d| d.to_string()).collect(),
        message_type: messages,
        enum_type: enums,
        syntax: Some("proto3".into()),
        ..Default::default()
    }
}

fn istio_files() -> Vec<FileDescriptorProto> {
    const DURATION: &str = ".google.protobuf.Duration";
    const STRUCT: &str = ".google.protobuf.Struct";
    // stats.PluginConfig (filter istio.stats).
    let mut metric_config = message(
        "MetricConfig",
        vec![
            field(
                "dimensions",
                1,
                F::Msg(".stats.MetricConfig.DimensionsEntry"),
                true,
                None,
            ),
            field("name", 2, F::Str, false, None),
            field("tags_to_remove", 3, F::Str, true, None),
            field("match", 4, F::Str, false, None),
            field("drop", 5, F::Bool, false, None),
        ],
    );
    let mut entry = message(
        "DimensionsEntry",
        vec![
            field("key", 1, F::Str, false, None),
            field("value", 2, F::Str, false, None),
        ],
    );
    entry.options = Some(MessageOptions {
        map_entry: Some(true),
        ..Default::default()
    });
    metric_config.nested_type.push(entry);
    let stats = file(
        "istio/stats/config.proto",
        "stats",
        &["google/protobuf/duration.proto"],
        vec![
            message(
                "PluginConfig",
                vec![
                    field("disable_host_header_fallback", 6, F::Bool, false, None),
                    field("tcp_reporting_duration", 7, F::Msg(DURATION), false, None),
                    field("metrics", 8, F::Msg(".stats.MetricConfig"), true, None),
                    field(
                        "definitions",
                        9,
                        F::Msg(".stats.MetricDefinition"),
                        true,
                        None,
                    ),
                    field("reporter", 10, F::Enum(".stats.Reporter"), false, None),
                    field("rotation_interval", 11, F::Msg(DURATION), false, None),
                    field(
                        "graceful_deletion_interval",
                        12,
                        F::Msg(DURATION),
                        false,
                        None,
                    ),
                ],
            ),
            metric_config,
            message(
                "MetricDefinition",
                vec![
                    field("name", 1, F::Str, false, None),
                    field("value", 2, F::Str, false, None),
                    field("type", 3, F::Enum(".stats.MetricType"), false, None),
                ],
            ),
        ],
        vec![
            enumeration("Reporter", &[("UNSPECIFIED", 0), ("SERVER_GATEWAY", 1)]),
            enumeration(
                "MetricType",
                &[("COUNTER", 0), ("GAUGE", 1), ("HISTOGRAM", 2)],
            ),
        ],
    );
    // envoy.tcp.metadataexchange.config.MetadataExchange (network istio.metadata_exchange).
    let mx = file(
        "istio/metadata_exchange/config.proto",
        "envoy.tcp.metadataexchange.config",
        &[],
        vec![message(
            "MetadataExchange",
            vec![
                field("protocol", 1, F::Str, false, None),
                field("enable_discovery", 2, F::Bool, false, None),
                field("additional_labels", 3, F::Str, true, None),
            ],
        )],
        vec![],
    );
    // io.istio.http.peer_metadata.Config (HTTP istio.metadata_exchange).
    const PM: &str = ".io.istio.http.peer_metadata.Config";
    let mut config = message(
        "Config",
        vec![
            field(
                "downstream_discovery",
                1,
                F::Msg(".io.istio.http.peer_metadata.Config.DiscoveryMethod"),
                true,
                None,
            ),
            field(
                "upstream_discovery",
                2,
                F::Msg(".io.istio.http.peer_metadata.Config.DiscoveryMethod"),
                true,
                None,
            ),
            field(
                "downstream_propagation",
                3,
                F::Msg(".io.istio.http.peer_metadata.Config.PropagationMethod"),
                true,
                None,
            ),
            field(
                "upstream_propagation",
                4,
                F::Msg(".io.istio.http.peer_metadata.Config.PropagationMethod"),
                true,
                None,
            ),
            field("shared_with_upstream", 5, F::Bool, false, None),
            field("additional_labels", 6, F::Str, true, None),
        ],
    );
    let _ = PM;
    let mut discovery = message(
        "DiscoveryMethod",
        vec![
            field(
                "baggage",
                1,
                F::Msg(".io.istio.http.peer_metadata.Config.Baggage"),
                false,
                Some(0),
            ),
            field(
                "workload_discovery",
                2,
                F::Msg(".io.istio.http.peer_metadata.Config.WorkloadDiscovery"),
                false,
                Some(0),
            ),
            field(
                "istio_headers",
                3,
                F::Msg(".io.istio.http.peer_metadata.Config.IstioHeaders"),
                false,
                Some(0),
            ),
            field(
                "upstream_filter_state",
                4,
                F::Msg(".io.istio.http.peer_metadata.Config.UpstreamFilterState"),
                false,
                Some(0),
            ),
        ],
    );
    discovery.oneof_decl.push(OneofDescriptorProto {
        name: Some("method_specifier".into()),
        options: None,
    });
    let mut propagation = message(
        "PropagationMethod",
        vec![
            field(
                "istio_headers",
                1,
                F::Msg(".io.istio.http.peer_metadata.Config.IstioHeaders"),
                false,
                Some(0),
            ),
            field(
                "baggage",
                2,
                F::Msg(".io.istio.http.peer_metadata.Config.Baggage"),
                false,
                Some(0),
            ),
        ],
    );
    propagation.oneof_decl.push(OneofDescriptorProto {
        name: Some("method_specifier".into()),
        options: None,
    });
    config.nested_type = vec![
        message("Baggage", vec![]),
        message("WorkloadDiscovery", vec![]),
        message(
            "IstioHeaders",
            vec![field("skip_external_clusters", 1, F::Bool, false, None)],
        ),
        message(
            "UpstreamFilterState",
            vec![field("peer_metadata_key", 1, F::Str, false, None)],
        ),
        discovery,
        propagation,
    ];
    let peer_metadata = file(
        "istio/peer_metadata/config.proto",
        "io.istio.http.peer_metadata",
        &[],
        vec![config],
        vec![],
    );
    // istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig (istio.alpn).
    let mut filter_config = message(
        "FilterConfig",
        vec![field(
            "alpn_override",
            1,
            F::Msg(".istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig.AlpnOverride"),
            true,
            None,
        )],
    );
    filter_config.nested_type.push(message(
        "AlpnOverride",
        vec![
            field(
                "upstream_protocol",
                1,
                F::Enum(".istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig.Protocol"),
                false,
                None,
            ),
            field("alpn_override", 2, F::Str, true, None),
        ],
    ));
    filter_config.enum_type.push(enumeration(
        "Protocol",
        &[("HTTP10", 0), ("HTTP11", 1), ("HTTP2", 2)],
    ));
    let alpn = file(
        "istio/alpn/config.proto",
        "istio.envoy.config.filter.http.alpn.v2alpha1",
        &[],
        vec![filter_config],
        vec![],
    );
    // TypedStruct, both copies (istiod's wrapper for extension configs).
    let typed_struct = |pkg: &str, path: &str| {
        file(
            path,
            pkg,
            &["google/protobuf/struct.proto"],
            vec![message(
                "TypedStruct",
                vec![
                    field("type_url", 1, F::Str, false, None),
                    field("value", 2, F::Msg(STRUCT), false, None),
                ],
            )],
            vec![],
        )
    };
    // remora's own config-dump entry for the extensions it accepts as no-ops.
    let mut noop = message(
        "NoopExtensionsConfigDump",
        vec![field(
            "extensions",
            1,
            F::Msg(".remora.admin.v1.NoopExtensionsConfigDump.Extension"),
            true,
            None,
        )],
    );
    noop.nested_type.push(message(
        "Extension",
        vec![
            field("listener", 1, F::Str, false, None),
            field("filter_chain", 2, F::Str, false, None),
            field("name", 3, F::Str, false, None),
            field("type_url", 4, F::Str, false, None),
            field("reason", 5, F::Str, false, None),
        ],
    ));
    let remora_admin = file(
        "remora/admin/v1/noop.proto",
        "remora.admin.v1",
        &[],
        vec![noop],
        vec![],
    );
    vec![
        remora_admin,
        stats,
        mx,
        peer_metadata,
        alpn,
        typed_struct("udpa.type.v1", "udpa/type/v1/typed_struct.proto"),
        typed_struct("xds.type.v3", "xds/type/v3/typed_struct.proto"),
    ]
}

/// Messages that configuration and the admin API can name: the bootstrap (everything a
/// bootstrap field can reach comes with it) and the extension types that an `Any` may carry and
/// that remora implements. A type outside this closure is refused as unknown when a config names
/// it, which is what remora would do with it anyway. Add a type here when its extension lands.
const ROOTS: &[&str] = &[
    "envoy.config.bootstrap.v3.Bootstrap",
    "envoy.extensions.access_loggers.file.v3.FileAccessLog",
    "envoy.extensions.bootstrap.internal_listener.v3.InternalListener",
    "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
    "envoy.extensions.access_loggers.stream.v3.StderrAccessLog",
    "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
    "envoy.extensions.compression.brotli.compressor.v3.Brotli",
    "envoy.extensions.compression.gzip.compressor.v3.Gzip",
    "envoy.extensions.compression.zstd.compressor.v3.Zstd",
    "envoy.extensions.filters.http.compressor.v3.Compressor",
    "envoy.extensions.filters.http.cors.v3.Cors",
    "envoy.extensions.filters.http.cors.v3.CorsPolicy",
    "envoy.extensions.filters.http.fault.v3.HTTPFault",
    "envoy.extensions.filters.http.grpc_stats.v3.FilterConfig",
    "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
    "envoy.extensions.filters.http.rbac.v3.RBAC",
    "envoy.extensions.filters.http.rbac.v3.RBACPerRoute",
    "envoy.extensions.filters.http.router.v3.Router",
    "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector",
    "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector",
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
    "envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit",
    "envoy.extensions.filters.network.rbac.v3.RBAC",
    "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
    "envoy.config.metrics.v3.MetricsServiceConfig",
    "envoy.config.rbac.v3.Action",
    "envoy.type.matcher.v3.HttpRequestHeaderMatchInput",
    "envoy.extensions.matching.common_inputs.network.v3.SourceIPInput",
    "envoy.extensions.matching.common_inputs.ssl.v3.UriSanInput",
    "envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig",
    "envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig",
    "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate",
    "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer",
    "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
    "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
    "envoy.extensions.transport_sockets.tls.v3.Secret",
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "envoy.config.trace.v3.ZipkinConfig",
    "envoy.config.trace.v3.OpenTelemetryConfig",
    "envoy.extensions.tracers.opentelemetry.resource_detectors.v3.EnvironmentResourceDetectorConfig",
    "envoy.extensions.tracers.opentelemetry.resource_detectors.v3.StaticConfigResourceDetectorConfig",
];

/// Packages kept whole: the admin API's output types and the protobuf well-known types.
const ROOT_PACKAGES: &[&str] = &["envoy.admin.v3", "google.protobuf"];

/// Drop every file that no root reaches through imports. Envoy's full set is ~500 files and
/// costs ~17 MB of heap once decoded; the closure of the roots is under a fifth of that.
fn prune(set: &mut FileDescriptorSet, roots: &[&str], root_packages: &[&str]) {
    let mut file_of: HashMap<String, String> = HashMap::new();
    for f in &set.file {
        let package = f.package();
        for m in &f.message_type {
            file_of.insert(format!("{package}.{}", m.name()), f.name().to_string());
        }
    }
    let imports: HashMap<&str, &[String]> = set
        .file
        .iter()
        .map(|f| (f.name(), f.dependency.as_slice()))
        .collect();
    let mut pending: Vec<String> = roots
        .iter()
        .map(|r| {
            file_of
                .get(*r)
                .unwrap_or_else(|| panic!("root message {r} is not in envoy-types' descriptor set"))
                .clone()
        })
        .collect();
    pending.extend(
        set.file
            .iter()
            .filter(|f| root_packages.contains(&f.package()))
            .map(|f| f.name().to_string()),
    );
    let mut keep: BTreeSet<String> = BTreeSet::new();
    while let Some(name) = pending.pop() {
        if keep.insert(name.clone())
            && let Some(deps) = imports.get(name.as_str())
        {
            pending.extend(deps.iter().cloned());
        }
    }
    set.file.retain(|f| keep.contains(f.name()));
}

/// Keep only the options that change how a message is read: `map_entry` and `allow_alias`.
fn strip_message(m: &mut DescriptorProto) {
    for f in &mut m.field {
        f.options = None;
    }
    if let Some(o) = &mut m.options {
        let map_entry = o.map_entry;
        *o = Default::default();
        o.map_entry = map_entry;
    }
    for o in &mut m.oneof_decl {
        o.options = None;
    }
    for n in &mut m.nested_type {
        strip_message(n);
    }
    for e in &mut m.enum_type {
        strip_enum(e);
    }
}

fn strip_enum(e: &mut EnumDescriptorProto) {
    if let Some(o) = &mut e.options {
        let alias = o.allow_alias;
        *o = Default::default();
        o.allow_alias = alias;
    }
    for v in &mut e.value {
        v.options = None;
    }
}

fn locate_envoy_types(cargo: &str, manifest_dir: &Path) -> PathBuf {
    match from_cargo_metadata(cargo, manifest_dir) {
        Ok(dir) => dir,
        Err(metadata_error) => from_lock_and_registry(manifest_dir).unwrap_or_else(|e| {
            panic!(
                "cannot find envoy-types' sources: cargo metadata: {metadata_error}; registry scan: {e}; \
                 set REMORA_ENVOY_DESCRIPTORS to the path of envoy-types' src/generated/types.bin"
            )
        }),
    }
}

fn from_cargo_metadata(cargo: &str, manifest_dir: &Path) -> Result<PathBuf, String> {
    let output = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--offline",
            "--filter-platform",
        ])
        .arg(std::env::var("TARGET").map_err(|e| e.to_string())?)
        .arg("--manifest-path")
        .arg(manifest_dir.join("Cargo.toml"))
        .output()
        .map_err(|e| e.to_string())?;
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&output.stdout).map_err(|e| e.to_string())?;
    let pkg = meta["packages"]
        .as_array()
        .and_then(|pkgs| pkgs.iter().find(|p| p["name"] == "envoy-types"))
        .ok_or("envoy-types is not in the dependency graph")?;
    let manifest = PathBuf::from(pkg["manifest_path"].as_str().ok_or("no manifest_path")?);
    Ok(manifest
        .parent()
        .ok_or("manifest has no parent")?
        .to_path_buf())
}

/// Fallback: the version from the workspace's Cargo.lock, the sources from `$CARGO_HOME/registry/src`.
fn from_lock_and_registry(manifest_dir: &Path) -> Result<PathBuf, String> {
    let lock = manifest_dir
        .ancestors()
        .map(|d| d.join("Cargo.lock"))
        .find(|p| p.exists())
        .ok_or("no Cargo.lock")?;
    let text = std::fs::read_to_string(&lock).map_err(|e| e.to_string())?;
    let version = text
        .split("[[package]]")
        .find(|block| block.contains("name = \"envoy-types\""))
        .and_then(|block| block.lines().find_map(|l| l.strip_prefix("version = \"")))
        .map(|v| v.trim_end_matches('"').to_string())
        .ok_or("envoy-types not in Cargo.lock")?;
    let cargo_home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|_| std::env::var("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map_err(|e| e.to_string())?;
    let registries =
        std::fs::read_dir(cargo_home.join("registry/src")).map_err(|e| e.to_string())?;
    for reg in registries.flatten() {
        let candidate = reg.path().join(format!("envoy-types-{version}"));
        if candidate.join("src/generated/types.bin").exists() {
            return Ok(candidate);
        }
    }
    Err(format!(
        "envoy-types-{version} not found under {}",
        cargo_home.display()
    ))
}
