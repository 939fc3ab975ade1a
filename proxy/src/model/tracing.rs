//! Distributed tracing configuration: the connection manager's `tracing` (sampling, custom
//! tags, the provider) and the tracer providers (`envoy.config.trace.v3.Tracing.Http`, from
//! the connection manager or the bootstrap's deprecated `tracing.http`):
//! `envoy.tracers.zipkin` and `envoy.tracers.opentelemetry`. Pure translation; the runtime is
//! `crate::tracing`.

use super::core::{any_type, bool_or, decode_any, deny, enum_value};
use super::inputs::Inputs;
use super::pb;
use super::runtime::Percent;
use crate::config::error::Errors;
use crate::config::{FieldPath, Result};
use std::sync::Arc;

pub const ZIPKIN_NAME: &str = "envoy.tracers.zipkin";
pub const ZIPKIN_TYPE: &str = "envoy.config.trace.v3.ZipkinConfig";
pub const OTEL_NAME: &str = "envoy.tracers.opentelemetry";
pub const OTEL_TYPE: &str = "envoy.config.trace.v3.OpenTelemetryConfig";

/// Envoy's default `max_path_tag_length`.
pub const DEFAULT_MAX_PATH_TAG_LENGTH: u32 = 256;

/// The connection manager's `tracing`.
#[derive(Debug, Clone, PartialEq)]
pub struct HcmTracing {
    /// Out of 10 000 (Envoy turns the `Percent` into a TEN_THOUSAND fraction).
    pub client_sampling: Percent,
    pub random_sampling: Percent,
    pub overall_sampling: Percent,
    /// Span logs for the stream's timings (zipkin annotations, OpenTelemetry span events).
    pub verbose: bool,
    pub max_path_tag_length: usize,
    pub custom_tags: Vec<CustomTag>,
    /// `None`: the bootstrap's `tracing.http`, if any (else sampling only, no spans).
    pub provider: Option<Arc<Provider>>,
    /// The router starts a child span per upstream request (each retry its own), and the
    /// stream's span is a server span whatever the listener's direction.
    pub spawn_upstream_span: bool,
}

/// A custom tag: its name and where the value comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct CustomTag {
    pub tag: String,
    pub value: CustomTagValue,
}

#[derive(Debug, Clone, PartialEq)]
pub enum CustomTagValue {
    /// A literal, or an environment variable read at translation (Envoy reads it once).
    Fixed(String),
    RequestHeader {
        name: http::HeaderName,
        default: String,
    },
    /// The request's dynamic metadata (`metadata.kind.request`): namespace, key path.
    RequestMetadata {
        namespace: String,
        path: Vec<String>,
        default: String,
    },
}

/// A tracer provider.
#[derive(Debug, Clone, PartialEq)]
pub enum Provider {
    Zipkin(Zipkin),
    OpenTelemetry(OpenTelemetry),
}

/// `envoy.config.trace.v3.ZipkinConfig`.
#[derive(Debug, Clone, PartialEq)]
pub struct Zipkin {
    pub collector_cluster: String,
    pub collector_endpoint: String,
    /// The `host` of the report (`collector_hostname`, else the cluster's name).
    pub collector_hostname: String,
    pub trace_id_128bit: bool,
    pub shared_span_context: bool,
    /// `USE_B3_WITH_W3C_PROPAGATION`: `traceparent` read when no B3 header is and injected too.
    pub w3c: bool,
}

/// `envoy.config.trace.v3.OpenTelemetryConfig` (OTLP over gRPC).
#[derive(Debug, Clone, PartialEq)]
pub struct OpenTelemetry {
    pub cluster: String,
    /// `:authority` of the export (the gRPC service's `authority`, else the cluster's name).
    pub authority: String,
    pub timeout: Option<std::time::Duration>,
    pub service_name: String,
    pub max_cache_size: u32,
    pub telemetry_sdk_attributes: bool,
    pub service_name_attribute: bool,
    pub instrumentation_scope: bool,
    /// What the `resource_detectors` found, in order (the environment's
    /// `OTEL_RESOURCE_ATTRIBUTES` read at translation, static attributes).
    pub resource_attributes: Vec<(String, String)>,
}

const ENV_DETECTOR: &str = "envoy.extensions.tracers.opentelemetry.resource_detectors.v3.EnvironmentResourceDetectorConfig";
const STATIC_DETECTOR: &str = "envoy.extensions.tracers.opentelemetry.resource_detectors.v3.StaticConfigResourceDetectorConfig";

/// A resource detector's attributes: the environment's `OTEL_RESOURCE_ATTRIBUTES`
/// (`key=value,key=value`; unset: none) or the static ones (sorted by key).
fn detect(
    path: &FieldPath,
    d: &pb::core::TypedExtensionConfig,
    inputs: &Inputs,
) -> Result<Vec<(String, String)>> {
    use envoy_types::pb::envoy::extensions::tracers::opentelemetry::resource_detectors::v3 as rd;
    let tp = path.field("typed_config");
    let any = d
        .typed_config
        .as_ref()
        .ok_or_else(|| tp.error("is required"))?;
    match any_type(any) {
        ENV_DETECTOR => {
            let rd::EnvironmentResourceDetectorConfig {} = decode_any(&tp, any)?;
            let value = inputs.env("OTEL_RESOURCE_ATTRIBUTES").map_err(|_| {
                tp.error("environment variable 'OTEL_RESOURCE_ATTRIBUTES' has not been read")
            })?;
            Ok(value
                .unwrap_or("")
                .split(',')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .filter(|(k, _)| !k.is_empty())
                .collect())
        }
        STATIC_DETECTOR => {
            let rd::StaticConfigResourceDetectorConfig { attributes } = decode_any(&tp, any)?;
            let mut list: Vec<(String, String)> = attributes.into_iter().collect();
            list.sort();
            Ok(list)
        }
        other => Err(tp
            .field("@type")
            .error(format!("{other} is not supported by remora"))),
    }
}

// === impl HcmTracing ===

impl HcmTracing {
    pub fn from_proto(
        path: &FieldPath,
        t: &pb::hcm::http_connection_manager::Tracing,
        inputs: &Inputs,
    ) -> Result<Self> {
        #[allow(deprecated)]
        let pb::hcm::http_connection_manager::Tracing {
            client_sampling,
            random_sampling,
            overall_sampling,
            verbose,
            max_path_tag_length,
            custom_tags,
            provider,
            spawn_upstream_span,
            operation,
            upstream_operation,
            no_context_propagation,
        } = t;
        let mut errs = Errors::new();
        errs.check([
            deny(path, "no_context_propagation", no_context_propagation),
            deny(path, "operation", operation),
            deny(path, "upstream_operation", upstream_operation),
        ]);
        let percent = |field: &str, p: &Option<pb::types::Percent>| -> Result<Percent> {
            let value = p.as_ref().map_or(100.0, |p| p.value);
            if !(0.0..=100.0).contains(&value) {
                return Err(path.field(field).error("must be between 0 and 100"));
            }
            Ok(Percent {
                numerator: (value * 100.0).round() as u32,
                denominator: 10_000,
            })
        };
        let client = errs.take(percent("client_sampling", client_sampling));
        let random = errs.take(percent("random_sampling", random_sampling));
        let overall = errs.take(percent("overall_sampling", overall_sampling));
        let tags = errs.take(crate::config::error::all(
            custom_tags.iter().enumerate().map(|(i, t)| {
                CustomTag::from_proto(&path.field("custom_tags").index(i), t, inputs)
            }),
        ));
        let provider = errs.take(
            provider
                .as_ref()
                .map(|p| Provider::from_proto(&path.field("provider"), p, inputs))
                .transpose(),
        );
        let (((client, random), overall), (custom_tags, provider)) =
            errs.finish_some(client.zip(random).zip(overall).zip(tags.zip(provider)))?;
        Ok(Self {
            client_sampling: client,
            random_sampling: random,
            overall_sampling: overall,
            verbose: *verbose,
            max_path_tag_length: max_path_tag_length
                .as_ref()
                .map_or(DEFAULT_MAX_PATH_TAG_LENGTH, |v| v.value)
                as usize,
            custom_tags,
            provider: provider.map(Arc::new),
            spawn_upstream_span: bool_or(spawn_upstream_span, false),
        })
    }
}

// === impl CustomTag ===

impl CustomTag {
    fn from_proto(path: &FieldPath, t: &pb_tag::CustomTag, inputs: &Inputs) -> Result<Self> {
        use pb_tag::custom_tag::Type;
        let pb_tag::CustomTag { tag, r#type } = t;
        if tag.is_empty() {
            return Err(path.field("tag").error("must not be empty"));
        }
        let value = match r#type {
            None => {
                return Err(
                    path.error("one of literal, environment, request_header, metadata is required")
                );
            }
            Some(Type::Literal(l)) => CustomTagValue::Fixed(l.value.clone()),
            Some(Type::Environment(e)) => {
                let ep = path.field("environment");
                match inputs.env(&e.name) {
                    Ok(v) => CustomTagValue::Fixed(v.unwrap_or(&e.default_value).to_string()),
                    Err(_) => {
                        return Err(ep.error(format!(
                            "environment variable '{}' has not been read",
                            e.name
                        )));
                    }
                }
            }
            Some(Type::RequestHeader(h)) => CustomTagValue::RequestHeader {
                name: http::HeaderName::from_bytes(h.name.to_ascii_lowercase().as_bytes())
                    .map_err(|_| {
                        path.field("request_header")
                            .field("name")
                            .error("invalid header name")
                    })?,
                default: h.default_value.clone(),
            },
            Some(Type::Metadata(m)) => metadata_tag(&path.field("metadata"), m)?,
            Some(Type::Value(_)) => {
                return Err(path.field("value").error("is not supported by remora"));
            }
        };
        Ok(Self {
            tag: tag.clone(),
            value,
        })
    }
}

use envoy_types::pb::envoy::r#type::tracing::v3 as pb_tag;

/// A metadata tag: only the request's (dynamic) metadata is kept by remora's StreamInfo.
fn metadata_tag(path: &FieldPath, m: &pb_tag::custom_tag::Metadata) -> Result<CustomTagValue> {
    use envoy_types::pb::envoy::r#type::metadata::v3::{
        metadata_key::path_segment::Segment, metadata_kind::Kind,
    };
    let pb_tag::custom_tag::Metadata {
        kind,
        metadata_key,
        default_value,
    } = m;
    match kind.as_ref().and_then(|k| k.kind.as_ref()) {
        Some(Kind::Request(_)) => {}
        None => return Err(path.field("kind").error("is required")),
        Some(_) => {
            return Err(path
                .field("kind")
                .error("only the request's metadata is supported by remora"));
        }
    }
    let key = metadata_key
        .as_ref()
        .ok_or_else(|| path.field("metadata_key").error("is required"))?;
    let segments = key
        .path
        .iter()
        .map(|s| match &s.segment {
            Some(Segment::Key(k)) => Ok(k.clone()),
            _ => Err(path
                .field("metadata_key")
                .field("path")
                .error("only key segments are supported by remora")),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(CustomTagValue::RequestMetadata {
        namespace: key.key.clone(),
        path: segments,
        default: default_value.clone(),
    })
}

// === impl Provider ===

impl Provider {
    /// `envoy.config.trace.v3.Tracing.Http`: by `typed_config`'s type (the name is free).
    pub fn from_proto(
        path: &FieldPath,
        h: &pb_trace::tracing::Http,
        inputs: &Inputs,
    ) -> Result<Self> {
        use pb_trace::tracing::http::ConfigType;
        let tp = path.field("typed_config");
        let any = match &h.config_type {
            Some(ConfigType::TypedConfig(any)) => any,
            None => return Err(tp.error("is required")),
        };
        match any_type(any) {
            ZIPKIN_TYPE => Ok(Self::Zipkin(Zipkin::from_proto(
                &tp,
                &decode_any(&tp, any)?,
            )?)),
            OTEL_TYPE => Ok(Self::OpenTelemetry(OpenTelemetry::from_proto(
                &tp,
                &decode_any(&tp, any)?,
                inputs,
            )?)),
            other => Err(tp.field("@type").error(format!(
                "{other} is not supported by remora (supported: {ZIPKIN_NAME}, {OTEL_NAME})"
            ))),
        }
    }

    /// The bootstrap's `tracing` (deprecated `http`).
    pub fn from_bootstrap(
        path: &FieldPath,
        t: &Option<pb_trace::Tracing>,
        inputs: &Inputs,
    ) -> Result<Option<Self>> {
        let Some(pb_trace::Tracing { http }) = t else {
            return Ok(None);
        };
        http.as_ref()
            .map(|h| Self::from_proto(&path.field("http"), h, inputs))
            .transpose()
    }
}

use envoy_types::pb::envoy::config::trace::v3 as pb_trace;

// === impl Zipkin ===

impl Zipkin {
    fn from_proto(path: &FieldPath, z: &pb_trace::ZipkinConfig) -> Result<Self> {
        use pb_trace::zipkin_config::{CollectorEndpointVersion as V, TraceContextOption as T};
        #[allow(deprecated)]
        let pb_trace::ZipkinConfig {
            collector_cluster,
            collector_endpoint,
            trace_id_128bit,
            shared_span_context,
            collector_endpoint_version,
            collector_hostname,
            split_spans_for_request,
            trace_context_option,
            collector_service,
            timestamp_trace_ids,
        } = z;
        let mut errs = Errors::new();
        errs.check([
            deny(path, "split_spans_for_request", split_spans_for_request),
            deny(path, "collector_service", collector_service),
            deny(path, "timestamp_trace_ids", timestamp_trace_ids),
        ]);
        if collector_cluster.is_empty() {
            errs.push(path.field("collector_cluster").error("is required"));
        }
        if collector_endpoint.is_empty() {
            errs.push(path.field("collector_endpoint").error("is required"));
        }
        errs.take(enum_value::<V>(
            path,
            "collector_endpoint_version",
            *collector_endpoint_version,
            |v| *v == V::HttpJson,
        ));
        let w3c = errs.take(enum_value::<T>(
            path,
            "trace_context_option",
            *trace_context_option,
            |_| true,
        ));
        let w3c = errs.finish_some(w3c)?;
        Ok(Self {
            collector_cluster: collector_cluster.clone(),
            collector_endpoint: collector_endpoint.clone(),
            collector_hostname: if collector_hostname.is_empty() {
                collector_cluster.clone()
            } else {
                collector_hostname.clone()
            },
            trace_id_128bit: *trace_id_128bit,
            shared_span_context: bool_or(shared_span_context, true),
            w3c: w3c == T::UseB3WithW3cPropagation,
        })
    }
}

// === impl OpenTelemetry ===

impl OpenTelemetry {
    fn from_proto(
        path: &FieldPath,
        o: &pb_trace::OpenTelemetryConfig,
        inputs: &Inputs,
    ) -> Result<Self> {
        let pb_trace::OpenTelemetryConfig {
            grpc_service,
            http_service,
            exporter,
            service_name,
            resource_detectors,
            sampler,
            max_cache_size,
            set_telemetry_sdk_resource_attributes,
            set_service_name_resource_attribute,
            set_instrumentation_scope,
        } = o;
        let mut errs = Errors::new();
        errs.check([
            deny(path, "http_service", http_service),
            deny(path, "exporter", exporter),
            deny(path, "sampler", sampler),
        ]);
        let grpc = errs.take(grpc_cluster(&path.field("grpc_service"), grpc_service));
        let detected = errs.take(crate::config::error::all(
            resource_detectors
                .iter()
                .enumerate()
                .map(|(i, d)| detect(&path.field("resource_detectors").index(i), d, inputs)),
        ));
        let ((cluster, authority, timeout), detected) = errs.finish_some(grpc.zip(detected))?;
        Ok(Self {
            cluster,
            authority,
            timeout,
            service_name: if service_name.is_empty() {
                "unknown_service:envoy".to_string()
            } else {
                service_name.clone()
            },
            max_cache_size: max_cache_size.as_ref().map_or(1024, |v| v.value),
            telemetry_sdk_attributes: bool_or(set_telemetry_sdk_resource_attributes, true),
            service_name_attribute: bool_or(set_service_name_resource_attribute, true),
            instrumentation_scope: bool_or(set_instrumentation_scope, true),
            resource_attributes: detected.into_iter().flatten().collect(),
        })
    }
}

/// An Envoy gRPC service: its cluster, authority and timeout (initial metadata, retries and
/// Google gRPC refused).
fn grpc_cluster(
    path: &FieldPath,
    g: &Option<pb::core::GrpcService>,
) -> Result<(String, String, Option<std::time::Duration>)> {
    use pb::core::grpc_service::TargetSpecifier;
    let Some(pb::core::GrpcService {
        timeout,
        initial_metadata,
        retry_policy,
        target_specifier,
    }) = g
    else {
        return Err(path.error("is required (remora exports OTLP over an Envoy gRPC cluster)"));
    };
    deny(path, "initial_metadata", initial_metadata)?;
    deny(path, "retry_policy", retry_policy)?;
    let timeout = timeout.as_ref().and_then(super::core::duration);
    match target_specifier {
        Some(TargetSpecifier::EnvoyGrpc(e)) => {
            let ep = path.field("envoy_grpc");
            let pb::core::grpc_service::EnvoyGrpc {
                cluster_name,
                authority,
                retry_policy,
                max_receive_message_length,
                skip_envoy_headers,
            } = e;
            deny(&ep, "retry_policy", retry_policy)?;
            deny(
                &ep,
                "max_receive_message_length",
                max_receive_message_length,
            )?;
            deny(&ep, "skip_envoy_headers", skip_envoy_headers)?;
            if cluster_name.is_empty() {
                return Err(ep.field("cluster_name").error("is required"));
            }
            let authority = if authority.is_empty() {
                cluster_name.clone()
            } else {
                authority.clone()
            };
            Ok((cluster_name.clone(), authority, timeout))
        }
        Some(TargetSpecifier::GoogleGrpc(_)) => Err(path
            .field("google_grpc")
            .error("is not supported by remora (use envoy_grpc)")),
        None => Err(path.error("envoy_grpc is required")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hcm_tracing(yaml: &str) -> Result<HcmTracing> {
        let path = FieldPath::new("tracing");
        let t: pb::hcm::http_connection_manager::Tracing = crate::config::decode_yaml(
            "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.Tracing",
            yaml,
            &path,
        );
        HcmTracing::from_proto(&path, &t, &Inputs::none())
    }

    #[test]
    fn defaults_sample_everything() {
        let t = hcm_tracing("{}").unwrap();
        assert_eq!(
            t.random_sampling,
            Percent {
                numerator: 10_000,
                denominator: 10_000
            }
        );
        assert_eq!(t.max_path_tag_length, 256);
        assert!(t.provider.is_none());
    }

    #[test]
    fn zipkin_provider_and_refusals_by_path() {
        let t = hcm_tracing(
            "{random_sampling: {value: 12.5}, provider: {name: envoy.tracers.zipkin, typed_config: {'@type': type.googleapis.com/envoy.config.trace.v3.ZipkinConfig, collector_cluster: z, collector_endpoint: /api/v2/spans, collector_endpoint_version: HTTP_JSON}}}",
        )
        .unwrap();
        assert_eq!(t.random_sampling.numerator, 1250);
        let Some(p) = t.provider.as_deref() else {
            panic!("a provider")
        };
        let Provider::Zipkin(z) = p else {
            panic!("zipkin")
        };
        assert!(z.shared_span_context && !z.trace_id_128bit && !z.w3c);
        assert_eq!(z.collector_hostname, "z");
        assert!(!t.spawn_upstream_span);
        let t = hcm_tracing("{spawn_upstream_span: true, verbose: true}").unwrap();
        assert!(t.spawn_upstream_span && t.verbose);
        let e = hcm_tracing(
            "{no_context_propagation: true, provider: {name: envoy.tracers.zipkin, typed_config: {'@type': type.googleapis.com/envoy.config.trace.v3.ZipkinConfig, collector_cluster: z, collector_endpoint: /x, collector_endpoint_version: HTTP_PROTO}}}",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("tracing.no_context_propagation"), "{e}");
        assert!(
            e.contains("tracing.provider.typed_config.collector_endpoint_version"),
            "{e}"
        );
    }
}
