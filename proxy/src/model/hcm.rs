//! `envoy.filters.network.http_connection_manager` → the connection manager's settings, its
//! HTTP filter chain (ending in the router) and its route table.

use super::access_log::{AccessLogConfig, LogFilter, LogFormat, content_type, substitution_format};
use super::core::{
    any_type, bool_or, decode_any, deny, enum_value, opt_duration, timeout_or, u32_or,
};
use super::headers::HeaderMutations;
use super::inputs::Inputs;
use super::pb;
use super::route::RouteConfig;
use super::runtime::Runtime;
use crate::config::error::{self, Errors};
use crate::config::{FieldPath, Result};
use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use std::sync::Arc;
use std::time::Duration;

pub const HCM_TYPE: &str =
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
pub const ROUTER_TYPE: &str = "envoy.extensions.filters.http.router.v3.Router";
pub const ROUTER_NAME: &str = "envoy.filters.http.router";
const UUID_REQUEST_ID: &str = "envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Auto,
    Http1,
    Http2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerHeader {
    Overwrite,
    AppendIfAbsent,
    PassThrough,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnderscoreHeaders {
    Allow,
    RejectRequest,
    DropHeader,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StripPort {
    None,
    Matching,
    Any,
}

#[derive(Debug, Clone)]
pub struct Http1Settings {
    pub allow_absolute_url: bool,
    pub accept_http_10: bool,
    pub default_host_for_http_10: Option<String>,
    pub allow_chunked_length: bool,
}

#[derive(Debug, Clone)]
pub struct Http2Settings {
    pub max_concurrent_streams: u32,
    pub initial_stream_window_size: u32,
    pub initial_connection_window_size: u32,
    pub hpack_table_size: u32,
}

/// Envoy's HTTP/2 flood limits (downstream connections; `http::h2_flood` enforces them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FloodLimits {
    pub max_outbound_frames: u32,
    pub max_outbound_control_frames: u32,
    pub max_consecutive_inbound_frames_with_empty_payload: u32,
    pub max_inbound_priority_frames_per_stream: u32,
    pub max_inbound_window_update_frames_per_data_frame_sent: u32,
}

impl Default for FloodLimits {
    /// Envoy's defaults.
    fn default() -> Self {
        Self {
            max_outbound_frames: 10_000,
            max_outbound_control_frames: 1_000,
            max_consecutive_inbound_frames_with_empty_payload: 1,
            max_inbound_priority_frames_per_stream: 100,
            max_inbound_window_update_frames_per_data_frame_sent: 10,
        }
    }
}

/// One entry of the HTTP filter chain: its name (the key of `typed_per_filter_config`), whether
/// it is `disabled` (then it runs only where a route's per-filter config enables it), and what
/// it runs as.
#[derive(Debug, Clone)]
pub struct HttpFilterEntry {
    pub name: String,
    pub disabled: bool,
    pub filter: HttpFilter,
}

/// The HTTP filters, in order; the router is always last.
#[derive(Debug, Clone)]
pub enum HttpFilter {
    /// `istio.alpn`: the ALPN list offered to TLS upstreams, by upstream HTTP protocol.
    Alpn(Arc<AlpnOverrides>),
    /// Istio's HTTP metadata exchange (`x-envoy-peer-metadata*` headers).
    PeerMetadata(Arc<PeerMetadataConfig>),
    Compressor(Arc<super::compressor::CompressorConfig>),
    /// `envoy.filters.http.fault`.
    Fault(Arc<super::fault::FaultSettings>),
    /// `envoy.filters.http.local_ratelimit`.
    LocalRateLimit(Arc<super::local_ratelimit::LocalRateLimit>),
    /// `envoy.filters.http.cors`: the policies come from the routes.
    Cors,
    /// `envoy.filters.http.rbac`.
    Rbac(Arc<super::rbac::HttpRbac>),
    /// Istio's `istio.stats`: the standard metrics, at the end of every stream.
    IstioStats(Arc<super::istio_stats::IstioStats>),
    /// `envoy.filters.http.grpc_stats`: gRPC calls and messages counted per cluster.
    GrpcStats(Arc<super::grpc_stats::GrpcStats>),
    /// Accepted without acting on it (purely observational, or with nothing configured to do);
    /// listed in `/config_dump` and counted in `server.noop_extension.<short name>`.
    Noop(NoopFilter),
    Router(RouterConfig),
}

/// One ALPN list and a key that tells upstream connections offering it apart in the pools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlpnOverride {
    pub protocols: Arc<[String]>,
    pub key: u64,
}

/// Istio's `istio.alpn` filter: what a new upstream TLS connection offers instead of the
/// cluster's `alpn_protocols`, by the HTTP protocol it will carry (unless the cluster's
/// `filter_metadata.istio.alpn_override` is `"false"`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlpnOverrides {
    pub http10: Option<AlpnOverride>,
    pub http11: Option<AlpnOverride>,
    pub http2: Option<AlpnOverride>,
}

/// `io.istio.http.peer_metadata.Config`, as far as it changes traffic: which side's
/// `x-envoy-peer-metadata*` headers are removed (IstioHeaders discovery) and where this
/// workload's are added (IstioHeaders propagation; `Some(skip_external_clusters)`). Workload
/// discovery, baggage discovery and upstream filter state only learn about the peer for
/// telemetry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerMetadataConfig {
    /// Some discovery method is configured (what it learns is for telemetry).
    pub discovers: bool,
    pub downstream_istio_headers: bool,
    pub upstream_istio_headers: bool,
    pub upstream_propagation: Option<bool>,
    pub downstream_propagation: Option<bool>,
    pub additional_labels: Vec<String>,
}

fn peer_metadata(path: &FieldPath, any: &pb::protobuf::Any) -> Result<PeerMetadataConfig> {
    use super::istio_pb::{Discovery, Propagation};
    let super::istio_pb::PeerMetadata {
        downstream_discovery,
        upstream_discovery,
        downstream_propagation,
        upstream_propagation,
        shared_with_upstream,
        additional_labels,
    } = decode_any(path, any)?;
    deny(path, "shared_with_upstream", &shared_with_upstream)?;
    let headers = |methods: &[super::istio_pb::DiscoveryMethod]| {
        methods
            .iter()
            .any(|m| matches!(m.method_specifier, Some(Discovery::IstioHeaders(_))))
    };
    let propagation =
        |field: &str, methods: &[super::istio_pb::PropagationMethod]| -> Result<Option<bool>> {
            let mut out = None;
            for (i, m) in methods.iter().enumerate() {
                match &m.method_specifier {
                    Some(Propagation::IstioHeaders(h)) => out = Some(h.skip_external_clusters),
                    Some(Propagation::Baggage(_)) => {
                        return Err(path
                            .field(field)
                            .index(i)
                            .field("baggage")
                            .error("baggage propagation is not supported"));
                    }
                    None => {}
                }
            }
            Ok(out)
        };
    Ok(PeerMetadataConfig {
        discovers: !downstream_discovery.is_empty() || !upstream_discovery.is_empty(),
        downstream_istio_headers: headers(&downstream_discovery),
        upstream_istio_headers: headers(&upstream_discovery),
        upstream_propagation: propagation("upstream_propagation", &upstream_propagation)?,
        downstream_propagation: propagation("downstream_propagation", &downstream_propagation)?,
        additional_labels,
    })
}

pub const ISTIO_ALPN_TYPE: &str = "istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig";

fn alpn_overrides(path: &FieldPath, any: &pb::protobuf::Any) -> Result<AlpnOverrides> {
    use std::hash::{Hash, Hasher};
    let cfg: super::istio_pb::AlpnFilterConfig = decode_any(path, any)?;
    let mut out = AlpnOverrides::default();
    for (i, o) in cfg.alpn_override.iter().enumerate() {
        let op = path.field("alpn_override").index(i);
        if o.alpn_override.is_empty() {
            return Err(op.field("alpn_override").error("must not be empty"));
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        o.alpn_override.hash(&mut h);
        // 0 is the cluster's own list.
        let key = h.finish().max(1);
        let v = Some(AlpnOverride {
            protocols: o.alpn_override.clone().into(),
            key,
        });
        match o.upstream_protocol {
            0 => out.http10 = v,
            1 => out.http11 = v,
            2 => out.http2 = v,
            other => {
                return Err(op
                    .field("upstream_protocol")
                    .error(format!("unknown enum value {other}")));
            }
        }
    }
    Ok(out)
}

/// An extension remora accepts as a no-op, and why that loses nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoopFilter {
    /// The filter's `name` in the configuration.
    pub name: String,
    pub type_name: &'static str,
    /// The stat's last segment (`server.noop_extension.<short>`).
    pub short: &'static str,
    pub reason: &'static str,
}

pub const ISTIO_STATS_TYPE: &str = "stats.PluginConfig";
pub const PEER_METADATA_TYPE: &str = "io.istio.http.peer_metadata.Config";
use super::cors::CORS_TYPE;
use super::grpc_stats::GRPC_STATS_TYPE;

/// Why the peer discovery of Istio's metadata exchange (HTTP and TCP) may be accepted now.
pub const PEER_DISCOVERY_LATER: &str = "peer discovery (the peer's metadata from its headers or \
    frame, workload discovery, baggage) is only read by Istio telemetry, implemented by remora's \
    telemetry stage; the exchange itself runs";

#[derive(Debug, Clone)]
pub struct RouterConfig {
    pub dynamic_stats: bool,
    pub suppress_envoy_headers: bool,
    pub respect_expected_rq_timeout: bool,
    /// A child span per upstream request under the stream's span (as the connection
    /// manager's `tracing.spawn_upstream_span` asks, without changing the stream span's kind).
    pub start_child_span: bool,
}

#[derive(Debug, Clone)]
pub struct ResponseMapper {
    pub filter: LogFilter,
    pub status: Option<StatusCode>,
    pub body: Option<Bytes>,
    pub body_format: Option<(LogFormat, Option<String>)>,
    pub headers: HeaderMutations,
}

#[derive(Debug, Clone, Default)]
pub struct LocalReplyConfig {
    pub mappers: Vec<ResponseMapper>,
    pub body_format: Option<(LogFormat, Option<String>)>,
}

/// What happens to `x-forwarded-client-cert` (Envoy's `forward_client_cert_details`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XfccMode {
    Sanitize,
    ForwardOnly,
    AppendForward,
    SanitizeSet,
    AlwaysForwardOnly,
}

/// `forward_client_cert_details` with the `set_current_client_cert_details` fields to add.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Xfcc {
    pub mode: XfccMode,
    pub cert: bool,
    pub subject: bool,
    pub uri: bool,
    pub dns: bool,
}

impl Xfcc {
    fn from_proto(
        path: &FieldPath,
        mode: pb::hcm::http_connection_manager::ForwardClientCertDetails,
        details: &Option<pb::hcm::http_connection_manager::SetCurrentClientCertDetails>,
    ) -> Result<Self> {
        use pb::hcm::http_connection_manager::ForwardClientCertDetails as F;
        let mode = match mode {
            F::Sanitize => XfccMode::Sanitize,
            F::ForwardOnly => XfccMode::ForwardOnly,
            F::AppendForward => XfccMode::AppendForward,
            F::SanitizeSet => XfccMode::SanitizeSet,
            F::AlwaysForwardOnly => XfccMode::AlwaysForwardOnly,
        };
        let mut x = Self {
            mode,
            cert: false,
            subject: false,
            uri: false,
            dns: false,
        };
        if let Some(d) = details {
            let dp = path.field("set_current_client_cert_details");
            let pb::hcm::http_connection_manager::SetCurrentClientCertDetails {
                subject,
                cert,
                chain,
                dns,
                uri,
                issuer,
                format,
            } = d;
            let mut errs = Errors::new();
            errs.check([
                deny(&dp, "chain", chain),
                deny(&dp, "issuer", issuer),
                deny(&dp, "format", format),
            ]);
            errs.finish()?;
            x.subject = subject.as_ref().is_some_and(|b| b.value);
            x.cert = *cert;
            x.uri = *uri;
            x.dns = *dns;
        }
        Ok(x)
    }
}

#[derive(Debug)]
pub struct HttpConnectionManager {
    pub stat_prefix: String,
    pub codec: Codec,
    /// The inline route configuration, or (with RDS) the empty one used until RDS delivers.
    pub route_config: Arc<RouteConfig>,
    /// `rds.route_config_name`, when routes come from RDS.
    pub rds: Option<String>,
    pub http_filters: Vec<HttpFilterEntry>,
    pub router: RouterConfig,
    /// The listener's `per_connection_buffer_limit_bytes`: bounds a request body kept for retries.
    pub buffer_limit: u32,
    pub access_logs: Vec<AccessLogConfig>,
    pub server_name: HeaderValue,
    pub server_header: ServerHeader,
    pub max_request_headers_bytes: usize,
    pub max_headers_count: usize,
    pub idle_timeout: Option<Duration>,
    pub max_connection_duration: Option<Duration>,
    pub max_requests_per_connection: Option<u32>,
    pub underscore_headers: UnderscoreHeaders,
    pub stream_idle_timeout: Option<Duration>,
    pub request_timeout: Option<Duration>,
    pub request_headers_timeout: Option<Duration>,
    pub drain_timeout: Duration,
    pub use_remote_address: bool,
    pub internal_addresses: InternalAddresses,
    pub xff_num_trusted_hops: u32,
    pub skip_xff_append: bool,
    pub via: Option<HeaderValue>,
    pub generate_request_id: bool,
    /// `forward_client_cert_details` and `set_current_client_cert_details` (XFCC).
    pub xfcc: Xfcc,
    pub preserve_external_request_id: bool,
    pub always_set_request_id_in_response: bool,
    pub upgrades: Vec<(String, bool)>,
    pub strip_port: StripPort,
    pub strip_trailing_host_dot: bool,
    pub merge_slashes: bool,
    pub proxy_100_continue: bool,
    pub append_x_forwarded_port: bool,
    /// Set `user-agent` (if absent) and `x-envoy-downstream-service-cluster/-node` from the
    /// node's identity (`--service-cluster`, `--service-node`).
    pub add_user_agent: bool,
    pub local_reply: LocalReplyConfig,
    pub http1: Http1Settings,
    pub http2: Http2Settings,
    pub http2_flood: FloodLimits,
    /// `tracing`: sampling, tags and the provider (`crate::tracing` runs it).
    pub tracing: Option<Arc<super::tracing::HcmTracing>>,
    /// The UUID request id's `pack_trace_reason`: the sampling decision written into
    /// `x-request-id`.
    pub pack_trace_reason: bool,
    /// `use_request_id_for_trace_sampling`: sample by the request id (else at random).
    pub request_id_sampling: bool,
}

/// Defaults from Envoy's API.
pub const DEFAULT_MAX_REQUEST_HEADERS_KB: u32 = 60;
pub const DEFAULT_MAX_HEADERS_COUNT: u32 = 100;
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
pub const DEFAULT_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

// === impl HttpConnectionManager ===

impl HttpConnectionManager {
    /// Every independent field is translated, so that one report names every problem.
    pub fn from_proto(
        path: &FieldPath,
        h: &pb::hcm::HttpConnectionManager,
        rt: &Runtime,
        buffer_limit: u32,
        inputs: &Inputs,
    ) -> Result<Self> {
        use pb::hcm::http_connection_manager::{
            ForwardClientCertDetails as Fcc, PathWithEscapedSlashesAction as Esc,
        };
        let pb::hcm::HttpConnectionManager {
            codec_type,
            stat_prefix,
            http_filters,
            add_user_agent,
            tracing,
            common_http_protocol_options,
            http1_safe_max_connection_duration,
            http_protocol_options,
            http2_protocol_options,
            http3_protocol_options,
            server_name,
            server_header_transformation,
            scheme_header_transformation,
            max_request_headers_kb,
            stream_idle_timeout,
            stream_flush_timeout,
            request_timeout,
            request_headers_timeout,
            drain_timeout,
            drain_timeout_jitter,
            delayed_close_timeout,
            access_log,
            access_log_flush_interval,
            flush_access_log_on_new_request,
            access_log_options,
            use_remote_address,
            xff_num_trusted_hops,
            original_ip_detection_extensions,
            early_header_mutation_extensions,
            internal_address_config,
            skip_xff_append,
            via,
            generate_request_id,
            preserve_external_request_id,
            always_set_request_id_in_response,
            forward_client_cert_details,
            set_current_client_cert_details,
            forward_client_cert_matcher,
            proxy_100_continue,
            represent_ipv4_remote_address_as_ipv4_mapped_ipv6,
            upgrade_configs,
            normalize_path,
            merge_slashes,
            path_with_escaped_slashes_action,
            request_id_extension,
            local_reply_config,
            strip_matching_host_port,
            stream_error_on_invalid_http_message,
            path_normalization_options,
            strip_trailing_host_dot,
            proxy_status_config,
            typed_header_validation_config,
            append_x_forwarded_port,
            append_local_overload,
            add_proxy_protocol_connection_state,
            forward_proto_config,
            route_specifier,
            strip_port_mode,
        } = h;
        let mut errs = Errors::new();
        if stat_prefix.is_empty() {
            errs.push(path.field("stat_prefix").error("must not be empty"));
        }
        errs.check([
            deny(
                path,
                "http1_safe_max_connection_duration",
                http1_safe_max_connection_duration,
            ),
            deny(path, "http3_protocol_options", http3_protocol_options),
            deny(
                path,
                "scheme_header_transformation",
                scheme_header_transformation,
            ),
            deny(path, "stream_flush_timeout", stream_flush_timeout),
            deny(path, "drain_timeout_jitter", drain_timeout_jitter),
            deny(path, "access_log_flush_interval", access_log_flush_interval),
            deny(
                path,
                "flush_access_log_on_new_request",
                flush_access_log_on_new_request,
            ),
            deny(path, "access_log_options", access_log_options),
            deny(
                path,
                "original_ip_detection_extensions",
                original_ip_detection_extensions,
            ),
            deny(
                path,
                "early_header_mutation_extensions",
                early_header_mutation_extensions,
            ),
            deny(
                path,
                "forward_client_cert_matcher",
                forward_client_cert_matcher,
            ),
            deny(
                path,
                "represent_ipv4_remote_address_as_ipv4_mapped_ipv6",
                represent_ipv4_remote_address_as_ipv4_mapped_ipv6,
            ),
            deny(
                path,
                "normalize_path",
                &normalize_path.as_ref().filter(|b| b.value),
            ),
            enum_value::<Esc>(
                path,
                "path_with_escaped_slashes_action",
                *path_with_escaped_slashes_action,
                |a| matches!(a, Esc::ImplementationSpecificDefault | Esc::KeepUnchanged),
            )
            .map(drop),
            deny(
                path,
                "stream_error_on_invalid_http_message",
                stream_error_on_invalid_http_message,
            ),
            deny(
                path,
                "path_normalization_options",
                path_normalization_options,
            ),
            deny(path, "proxy_status_config", proxy_status_config),
            deny(
                path,
                "typed_header_validation_config",
                typed_header_validation_config,
            ),
            deny(path, "append_local_overload", append_local_overload),
            deny(
                path,
                "add_proxy_protocol_connection_state",
                add_proxy_protocol_connection_state,
            ),
            deny(path, "forward_proto_config", forward_proto_config),
        ]);
        let xfcc = errs.take(
            enum_value::<Fcc>(
                path,
                "forward_client_cert_details",
                *forward_client_cert_details,
                |_| true,
            )
            .and_then(|mode| Xfcc::from_proto(path, mode, set_current_client_cert_details)),
        );
        let (pack_trace_reason, request_id_sampling) = errs
            .take(request_id(path, request_id_extension))
            .unwrap_or((true, true));
        let tracing = errs.or_default(
            tracing
                .as_ref()
                .map(|t| super::tracing::HcmTracing::from_proto(&path.field("tracing"), t, inputs))
                .transpose(),
        );
        let codec = errs.take(codec(path, *codec_type)).unwrap_or(Codec::Auto);
        let server_header = errs
            .take(server_header(path, *server_header_transformation))
            .unwrap_or(ServerHeader::Overwrite);
        let server_name = errs.take(header_value(
            &path.field("server_name"),
            if server_name.is_empty() {
                "envoy"
            } else {
                server_name
            },
        ));
        let common = errs.take(CommonOptions::from_proto(
            &path.field("common_http_protocol_options"),
            common_http_protocol_options,
        ));
        let max_kb = u32_or(max_request_headers_kb, DEFAULT_MAX_REQUEST_HEADERS_KB);
        if !(1..=8192).contains(&max_kb) {
            errs.push(
                path.field("max_request_headers_kb")
                    .error("must be between 1 and 8192"),
            );
        }
        let http1 = errs.take(http1_settings(
            &path.field("http_protocol_options"),
            http_protocol_options,
        ));
        let http2 = errs.take(downstream_http2_settings(
            &path.field("http2_protocol_options"),
            http2_protocol_options,
            buffer_limit,
        ));
        let access_logs =
            errs.or_default(error::all(access_log.iter().enumerate().map(|(i, al)| {
                AccessLogConfig::from_proto(&path.field("access_log").index(i), al, rt, inputs)
            })));
        let upgrades = errs.or_default(upgrades(&path.field("upgrade_configs"), upgrade_configs));
        let route = errs.take(routes(path, route_specifier, inputs));
        let chain = errs.take(http_filter_chain(
            &path.field("http_filters"),
            http_filters,
            rt,
            inputs,
        ));
        let strip_port = errs
            .take(strip_port(path, *strip_matching_host_port, strip_port_mode))
            .unwrap_or(StripPort::None);
        let timeouts = errs.take(Timeouts::from_proto(
            path,
            [
                stream_idle_timeout,
                request_timeout,
                request_headers_timeout,
                drain_timeout,
                delayed_close_timeout,
            ],
        ));
        let via = errs.or_default(
            (!via.is_empty())
                .then(|| header_value(&path.field("via"), via))
                .transpose(),
        );
        let local_reply = errs.or_default(local_reply(
            &path.field("local_reply_config"),
            local_reply_config,
            rt,
            inputs,
        ));
        let head = xfcc.zip(server_name).zip(common).zip(timeouts);
        let body = http1.zip(http2).zip(route).zip(chain);
        let (
            (((xfcc, server_name), common), timeouts),
            (((http1, (http2, http2_flood)), (route_config, rds)), (filters, router)),
        ) = errs.finish_some(head.zip(body))?;
        Ok(Self {
            xfcc,
            stat_prefix: stat_prefix.clone(),
            codec,
            route_config,
            rds,
            http_filters: filters,
            router,
            buffer_limit,
            access_logs,
            server_name,
            server_header,
            max_request_headers_bytes: max_kb as usize * 1024,
            max_headers_count: common.max_headers_count as usize,
            idle_timeout: common.idle_timeout,
            max_connection_duration: common.max_connection_duration,
            max_requests_per_connection: common.max_requests_per_connection,
            underscore_headers: common.underscore_headers,
            stream_idle_timeout: timeouts.stream_idle,
            request_timeout: timeouts.request,
            request_headers_timeout: timeouts.request_headers,
            drain_timeout: timeouts.drain,
            use_remote_address: bool_or(use_remote_address, false),
            internal_addresses: InternalAddresses::from_proto(
                &path.field("internal_address_config"),
                internal_address_config.as_ref(),
            )?,
            xff_num_trusted_hops: *xff_num_trusted_hops,
            skip_xff_append: *skip_xff_append,
            via,
            generate_request_id: bool_or(generate_request_id, true),
            preserve_external_request_id: *preserve_external_request_id,
            always_set_request_id_in_response: *always_set_request_id_in_response,
            upgrades,
            strip_port,
            strip_trailing_host_dot: *strip_trailing_host_dot,
            merge_slashes: *merge_slashes,
            proxy_100_continue: *proxy_100_continue,
            append_x_forwarded_port: *append_x_forwarded_port,
            add_user_agent: bool_or(add_user_agent, false),
            local_reply,
            http1,
            http2,
            http2_flood,
            tracing: tracing.map(Arc::new),
            pack_trace_reason,
            request_id_sampling,
        })
    }

    /// Whether an upgrade type is allowed, route setting first, then the connection manager's.
    pub fn upgrade_allowed(&self, route_upgrades: &[(String, bool)], upgrade: &str) -> bool {
        let find = |list: &[(String, bool)]| {
            list.iter()
                .find(|(t, _)| t.eq_ignore_ascii_case(upgrade))
                .map(|(_, e)| *e)
        };
        match (find(route_upgrades), find(&self.upgrades)) {
            (Some(route), Some(_)) => route,
            (Some(_), None) => false,
            (None, Some(hcm)) => hcm,
            (None, None) => false,
        }
    }
}

/// `request_id_extension`: only the UUID extension (the behaviour), and its tracing options
/// (`pack_trace_reason`, `use_request_id_for_trace_sampling`, both true by default).
fn request_id(path: &FieldPath, rid: &Option<pb::hcm::RequestIdExtension>) -> Result<(bool, bool)> {
    let Some(rid) = rid else {
        return Ok((true, true));
    };
    let rp = path.field("request_id_extension");
    let any = rid
        .typed_config
        .as_ref()
        .ok_or_else(|| rp.field("typed_config").error("is required"))?;
    if any_type(any) != UUID_REQUEST_ID {
        return Err(rp
            .field("typed_config")
            .field("@type")
            .error(format!("{} is not supported", any_type(any))));
    }
    let envoy_types::pb::envoy::extensions::request_id::uuid::v3::UuidRequestIdConfig {
        pack_trace_reason,
        use_request_id_for_trace_sampling,
    } = decode_any(&rp.field("typed_config"), any)?;
    Ok((
        bool_or(&pack_trace_reason, true),
        bool_or(&use_request_id_for_trace_sampling, true),
    ))
}

fn codec(path: &FieldPath, value: i32) -> Result<Codec> {
    use pb::hcm::http_connection_manager::CodecType;
    Ok(
        match enum_value::<CodecType>(path, "codec_type", value, |c| *c != CodecType::Http3)? {
            CodecType::Auto => Codec::Auto,
            CodecType::Http1 => Codec::Http1,
            CodecType::Http2 => Codec::Http2,
            CodecType::Http3 => unreachable!("refused above"),
        },
    )
}

fn server_header(path: &FieldPath, value: i32) -> Result<ServerHeader> {
    use pb::hcm::http_connection_manager::ServerHeaderTransformation as Sht;
    Ok(
        match enum_value::<Sht>(path, "server_header_transformation", value, |_| true)? {
            Sht::Overwrite => ServerHeader::Overwrite,
            Sht::AppendIfAbsent => ServerHeader::AppendIfAbsent,
            Sht::PassThrough => ServerHeader::PassThrough,
        },
    )
}

fn header_value(path: &FieldPath, value: &str) -> Result<HeaderValue> {
    HeaderValue::from_str(value).map_err(|_| path.error("invalid header value"))
}

/// The connection manager's `common_http_protocol_options`.
struct CommonOptions {
    idle_timeout: Option<Duration>,
    max_connection_duration: Option<Duration>,
    max_headers_count: u32,
    max_requests_per_connection: Option<u32>,
    underscore_headers: UnderscoreHeaders,
}

impl CommonOptions {
    fn from_proto(cp: &FieldPath, o: &Option<pb::core::HttpProtocolOptions>) -> Result<Self> {
        use pb::core::http_protocol_options::HeadersWithUnderscoresAction as U;
        let common = o.unwrap_or_default();
        let pb::core::HttpProtocolOptions {
            idle_timeout,
            max_connection_duration,
            max_connection_duration_jitter,
            max_headers_count,
            max_response_headers_kb,
            max_stream_duration,
            headers_with_underscores_action,
            max_requests_per_connection,
        } = &common;
        let mut errs = Errors::new();
        errs.check([
            deny(
                cp,
                "max_connection_duration_jitter",
                max_connection_duration_jitter,
            ),
            deny(cp, "max_response_headers_kb", max_response_headers_kb),
            deny(cp, "max_stream_duration", max_stream_duration),
        ]);
        let underscore_headers = errs.take(
            enum_value::<U>(
                cp,
                "headers_with_underscores_action",
                *headers_with_underscores_action,
                |_| true,
            )
            .map(|u| match u {
                U::Allow => UnderscoreHeaders::Allow,
                U::RejectRequest => UnderscoreHeaders::RejectRequest,
                U::DropHeader => UnderscoreHeaders::DropHeader,
            }),
        );
        let max_headers_count = u32_or(max_headers_count, DEFAULT_MAX_HEADERS_COUNT);
        if max_headers_count == 0 {
            errs.push(cp.field("max_headers_count").error("must be at least 1"));
        }
        let idle_timeout = errs.or_default(timeout_or(
            cp,
            "idle_timeout",
            idle_timeout,
            Some(DEFAULT_IDLE_TIMEOUT),
        ));
        let max_connection_duration = errs.or_default(timeout_or(
            cp,
            "max_connection_duration",
            max_connection_duration,
            None,
        ));
        Ok(Self {
            underscore_headers: errs.finish_some(underscore_headers)?,
            idle_timeout,
            max_connection_duration,
            max_headers_count,
            max_requests_per_connection: max_requests_per_connection
                .as_ref()
                .map(|v| v.value)
                .filter(|v| *v > 0),
        })
    }
}

/// The connection manager's own timeouts.
struct Timeouts {
    stream_idle: Option<Duration>,
    request: Option<Duration>,
    request_headers: Option<Duration>,
    drain: Duration,
}

impl Timeouts {
    /// `stream_idle_timeout`, `request_timeout`, `request_headers_timeout`, `drain_timeout`,
    /// `delayed_close_timeout`.
    fn from_proto(path: &FieldPath, t: [&Option<pb::protobuf::Duration>; 5]) -> Result<Self> {
        let [stream_idle, request, request_headers, drain, delayed_close] = t;
        let mut errs = Errors::new();
        let stream_idle = errs.or_default(timeout_or(
            path,
            "stream_idle_timeout",
            stream_idle,
            Some(DEFAULT_STREAM_IDLE_TIMEOUT),
        ));
        let request = errs.or_default(timeout_or(path, "request_timeout", request, None));
        let request_headers = errs.or_default(timeout_or(
            path,
            "request_headers_timeout",
            request_headers,
            None,
        ));
        let drain = errs
            .or_default(opt_duration(path, "drain_timeout", drain))
            .unwrap_or(DEFAULT_DRAIN_TIMEOUT);
        // remora closes a connection as soon as its last response is written: only a delayed
        // close of 0s (off) can be honoured; another value is refused, not ignored.
        errs.check([
            opt_duration(path, "delayed_close_timeout", delayed_close).and_then(|d| match d {
                None | Some(Duration::ZERO) => Ok(()),
                Some(_) => Err(path.field("delayed_close_timeout").error(
                    "only 0s is supported: remora does not delay closing a connection after its last response",
                )),
            }),
        ]);
        errs.finish_with(Self {
            stream_idle,
            request,
            request_headers,
            drain,
        })
    }
}

/// `upgrade_configs`: the upgrade types and whether each is enabled.
fn upgrades(
    path: &FieldPath,
    configs: &[pb::hcm::http_connection_manager::UpgradeConfig],
) -> Result<Vec<(String, bool)>> {
    error::all(configs.iter().enumerate().map(|(i, u)| {
        let up = path.index(i);
        let pb::hcm::http_connection_manager::UpgradeConfig {
            upgrade_type,
            filters,
            enabled,
        } = u;
        deny(&up, "filters", filters)?;
        if upgrade_type.eq_ignore_ascii_case("connect") {
            return Err(up.field("upgrade_type").error("CONNECT is not supported"));
        }
        Ok((upgrade_type.to_ascii_lowercase(), bool_or(enabled, true)))
    }))
}

/// The inline route configuration, or (with RDS) the empty one used until RDS delivers, and
/// the RDS name.
fn routes(
    path: &FieldPath,
    rs: &Option<pb::hcm::http_connection_manager::RouteSpecifier>,
    inputs: &Inputs,
) -> Result<(Arc<RouteConfig>, Option<String>)> {
    use pb::hcm::http_connection_manager::RouteSpecifier;
    match rs {
        Some(RouteSpecifier::RouteConfig(rc)) => Ok((
            Arc::new(RouteConfig::from_proto(
                &path.field("route_config"),
                rc,
                4096,
                inputs,
            )?),
            None,
        )),
        Some(RouteSpecifier::Rds(rds)) => {
            let rp = path.field("rds");
            let pb::hcm::Rds {
                config_source,
                route_config_name,
            } = rds;
            let Some(cs) = config_source else {
                return Err(rp.field("config_source").error("is required"));
            };
            if super::xds::config_source(&rp.field("config_source"), cs)?
                .path
                .is_some()
            {
                return Err(rp.field("config_source").field("path_config_source").error(
                    "file-based RDS is not supported (lds_config and cds_config can be files)",
                ));
            }
            if route_config_name.is_empty() {
                return Err(rp.field("route_config_name").error("must not be empty"));
            }
            // No routes until RDS delivers them: requests get 404 NR meanwhile.
            let empty = RouteConfig::from_proto(
                &rp,
                &pb::route::RouteConfiguration {
                    name: route_config_name.clone(),
                    ..Default::default()
                },
                4096,
                inputs,
            )?;
            Ok((Arc::new(empty), Some(route_config_name.clone())))
        }
        Some(RouteSpecifier::ScopedRoutes(_)) => Err(path.unsupported("scoped_routes")),
        None => Err(path.error("one of route_config, rds or scoped_routes is required")),
    }
}

fn strip_port(
    path: &FieldPath,
    strip_matching_host_port: bool,
    mode: &Option<pb::hcm::http_connection_manager::StripPortMode>,
) -> Result<StripPort> {
    use pb::hcm::http_connection_manager::StripPortMode;
    Ok(match (strip_matching_host_port, mode) {
        (true, Some(_)) => {
            return Err(path
                .error("strip_matching_host_port and strip_any_host_port are mutually exclusive"));
        }
        (true, None) => StripPort::Matching,
        (false, Some(StripPortMode::StripAnyHostPort(true))) => StripPort::Any,
        (false, _) => StripPort::None,
    })
}

fn http1_settings(
    path: &FieldPath,
    o: &Option<pb::core::Http1ProtocolOptions>,
) -> Result<Http1Settings> {
    let o = o.clone().unwrap_or_default();
    let pb::core::Http1ProtocolOptions {
        allow_absolute_url,
        accept_http_10,
        default_host_for_http_10,
        header_key_format,
        enable_trailers,
        allow_chunked_length,
        override_stream_error_on_invalid_http_message,
        send_fully_qualified_url,
        use_balsa_parser,
        allow_custom_methods,
        ignore_http_11_upgrade,
    } = &o;
    deny(path, "header_key_format", header_key_format)?;
    deny(path, "enable_trailers", enable_trailers)?;
    deny(
        path,
        "override_stream_error_on_invalid_http_message",
        override_stream_error_on_invalid_http_message,
    )?;
    deny(path, "send_fully_qualified_url", send_fully_qualified_url)?;
    let _ = use_balsa_parser; // parser choice: remora has one HTTP/1 parser
    deny(path, "allow_custom_methods", allow_custom_methods)?;
    deny(path, "ignore_http_11_upgrade", ignore_http_11_upgrade)?;
    Ok(Http1Settings {
        allow_absolute_url: bool_or(allow_absolute_url, true),
        accept_http_10: *accept_http_10,
        default_host_for_http_10: (!default_host_for_http_10.is_empty())
            .then(|| default_host_for_http_10.clone()),
        allow_chunked_length: *allow_chunked_length,
    })
}

/// A connection manager's HTTP/2 settings: those it shares with clusters, and the flood
/// limits only downstream connections enforce.
pub fn downstream_http2_settings(
    path: &FieldPath,
    o: &Option<pb::core::Http2ProtocolOptions>,
    buffer_limit: u32,
) -> Result<(Http2Settings, FloodLimits)> {
    let mut rest = o.clone().unwrap_or_default();
    let d = FloodLimits::default();
    let flood = FloodLimits {
        max_outbound_frames: u32_or(&rest.max_outbound_frames.take(), d.max_outbound_frames),
        max_outbound_control_frames: u32_or(
            &rest.max_outbound_control_frames.take(),
            d.max_outbound_control_frames,
        ),
        max_consecutive_inbound_frames_with_empty_payload: u32_or(
            &rest
                .max_consecutive_inbound_frames_with_empty_payload
                .take(),
            d.max_consecutive_inbound_frames_with_empty_payload,
        ),
        max_inbound_priority_frames_per_stream: u32_or(
            &rest.max_inbound_priority_frames_per_stream.take(),
            d.max_inbound_priority_frames_per_stream,
        ),
        max_inbound_window_update_frames_per_data_frame_sent: u32_or(
            &rest
                .max_inbound_window_update_frames_per_data_frame_sent
                .take(),
            d.max_inbound_window_update_frames_per_data_frame_sent,
        ),
    };
    // Envoy's proto constraints (`gte: 1`).
    for (name, v) in [
        ("max_outbound_frames", flood.max_outbound_frames),
        (
            "max_outbound_control_frames",
            flood.max_outbound_control_frames,
        ),
        (
            "max_inbound_window_update_frames_per_data_frame_sent",
            flood.max_inbound_window_update_frames_per_data_frame_sent,
        ),
    ] {
        if v < 1 {
            return Err(path.field(name).error("must be at least 1"));
        }
    }
    Ok((http2_settings(path, &Some(rest), buffer_limit)?, flood))
}

/// HTTP/2 settings. Window sizes default to the connection's buffer limit (Envoy bounds what it
/// buffers by `per_connection_buffer_limit_bytes`; remora streams, so the window is the bound).
pub fn http2_settings(
    path: &FieldPath,
    o: &Option<pb::core::Http2ProtocolOptions>,
    buffer_limit: u32,
) -> Result<Http2Settings> {
    let o = o.clone().unwrap_or_default();
    let pb::core::Http2ProtocolOptions {
        hpack_table_size,
        max_concurrent_streams,
        initial_stream_window_size,
        initial_connection_window_size,
        allow_connect,
        allow_metadata,
        max_outbound_frames,
        max_outbound_control_frames,
        max_consecutive_inbound_frames_with_empty_payload,
        max_inbound_priority_frames_per_stream,
        max_inbound_window_update_frames_per_data_frame_sent,
        stream_error_on_invalid_http_messaging,
        override_stream_error_on_invalid_http_message,
        custom_settings_parameters,
        connection_keepalive,
        use_oghttp2_codec,
        max_metadata_size,
        enable_huffman_encoding,
        max_header_field_size_kb,
        disallow_obs_text,
        stream_reset_burst,
        stream_reset_rate,
    } = &o;
    deny(path, "allow_connect", allow_connect)?;
    deny(path, "allow_metadata", allow_metadata)?;
    // Flood limits: enforced on downstream connections only (`downstream_http2_settings`).
    deny(path, "max_outbound_frames", max_outbound_frames)?;
    deny(
        path,
        "max_outbound_control_frames",
        max_outbound_control_frames,
    )?;
    deny(
        path,
        "max_consecutive_inbound_frames_with_empty_payload",
        max_consecutive_inbound_frames_with_empty_payload,
    )?;
    deny(
        path,
        "max_inbound_priority_frames_per_stream",
        max_inbound_priority_frames_per_stream,
    )?;
    deny(
        path,
        "max_inbound_window_update_frames_per_data_frame_sent",
        max_inbound_window_update_frames_per_data_frame_sent,
    )?;
    deny(
        path,
        "stream_error_on_invalid_http_messaging",
        stream_error_on_invalid_http_messaging,
    )?;
    deny(
        path,
        "override_stream_error_on_invalid_http_message",
        override_stream_error_on_invalid_http_message,
    )?;
    deny(
        path,
        "custom_settings_parameters",
        custom_settings_parameters,
    )?;
    deny(path, "connection_keepalive", connection_keepalive)?;
    let _ = use_oghttp2_codec; // codec choice: remora has one HTTP/2 codec
    deny(path, "max_metadata_size", max_metadata_size)?;
    deny(path, "enable_huffman_encoding", enable_huffman_encoding)?;
    deny(path, "max_header_field_size_kb", max_header_field_size_kb)?;
    deny(path, "disallow_obs_text", disallow_obs_text)?;
    deny(path, "stream_reset_burst", stream_reset_burst)?;
    deny(path, "stream_reset_rate", stream_reset_rate)?;
    let window_default = buffer_limit.clamp(65_535, 1 << 30);
    let stream_window = u32_or(initial_stream_window_size, window_default);
    let conn_window = u32_or(initial_connection_window_size, window_default);
    for (name, v) in [
        ("initial_stream_window_size", stream_window),
        ("initial_connection_window_size", conn_window),
    ] {
        if !(65_535..=2_147_483_647).contains(&v) {
            return Err(path
                .field(name)
                .error("must be between 65535 and 2147483647"));
        }
    }
    Ok(Http2Settings {
        max_concurrent_streams: u32_or(max_concurrent_streams, 2_147_483_647),
        initial_stream_window_size: stream_window,
        initial_connection_window_size: conn_window,
        hpack_table_size: u32_or(hpack_table_size, 4096),
    })
}

/// The HTTP filters, the router last. Every filter is translated, so that one report names
/// the problems of all of them.
fn http_filter_chain(
    path: &FieldPath,
    filters: &[pb::hcm::HttpFilter],
    rt: &Runtime,
    inputs: &Inputs,
) -> Result<(Vec<HttpFilterEntry>, RouterConfig)> {
    let mut errs = Errors::new();
    let mut out = Vec::new();
    for (i, f) in filters.iter().enumerate() {
        let last = i + 1 == filters.len();
        let runs = errs
            .take(http_filter(&path.index(i), f, last, rt, inputs))
            .unwrap_or_default();
        out.extend(runs.into_iter().map(|filter| HttpFilterEntry {
            name: f.name.clone(),
            disabled: f.disabled,
            filter,
        }));
    }
    errs.finish()?;
    let router = out
        .iter()
        .find_map(|f| match &f.filter {
            HttpFilter::Router(r) => Some(r.clone()),
            _ => None,
        })
        .ok_or_else(|| {
            path.error("the last HTTP filter must be the router (envoy.filters.http.router)")
        })?;
    Ok((out, router))
}

/// Envoy's error for an extension without a typed_config (it finds extensions by type only).
pub fn no_typed_config(name: &str) -> String {
    format!("Didn't find a registered implementation for '{name}' with type URL: ''")
}

/// One HTTP filter: what it runs as (none when disabled or an optional unknown one; the peer
/// metadata filter runs as two).
fn http_filter(
    fp: &FieldPath,
    f: &pb::hcm::HttpFilter,
    last: bool,
    rt: &Runtime,
    inputs: &Inputs,
) -> Result<Vec<HttpFilter>> {
    use pb::hcm::http_filter::ConfigType;
    let mut out = Vec::new();
    let pb::hcm::HttpFilter {
        name,
        is_optional,
        disabled,
        config_type,
    } = f;
    let typed = match config_type {
        Some(ConfigType::TypedConfig(any)) => Some(any),
        Some(ConfigType::ConfigDiscovery(_)) => return Err(fp.unsupported("config_discovery")),
        None => None,
    };
    // Envoy finds an extension by its typed_config's type only (no lookup by name since
    // `envoy.reloadable_features.no_extension_lookup_by_name`).
    let type_name = typed.map(any_type).unwrap_or("");
    match type_name {
        ROUTER_TYPE => {
            if *disabled {
                return Err(fp
                    .field("disabled")
                    .error("the router filter cannot be disabled"));
            }
            // The router's type comes from its typed_config, so `typed` is set here.
            let cfg = typed
                .map(|any| decode_any::<pb::router::Router>(&fp.field("typed_config"), any))
                .transpose()?
                .unwrap_or_default();
            let r = router_config(&fp.field("typed_config"), &cfg)?;
            if !last {
                return Err(fp.error(format!(
                    "terminal filter named {name} of type {ROUTER_NAME} must be the last filter in a http filter chain."
                )));
            }
            out.push(HttpFilter::Router(r));
        }
        PEER_METADATA_TYPE => {
            let any = typed.expect("a type name comes from a typed_config");
            let cfg = peer_metadata(&fp.field("typed_config"), any)?;
            // Header propagation and removal run; what discovery learns about the peer is
            // only read by telemetry, so that part is listed as a no-op.
            if cfg.discovers && !*disabled {
                out.push(HttpFilter::Noop(NoopFilter {
                    name: name.clone(),
                    type_name: PEER_METADATA_TYPE,
                    short: "peer_metadata_discovery",
                    reason: PEER_DISCOVERY_LATER,
                }));
            }
            // Kept when disabled: a route's typed_per_filter_config may enable it.
            out.push(HttpFilter::PeerMetadata(Arc::new(cfg)));
        }
        ISTIO_STATS_TYPE => {
            let any = typed.expect("a type name comes from a typed_config");
            let cfg = super::istio_stats::IstioStats::from_any(&fp.field("typed_config"), any)?;
            // Kept when disabled: a route's typed_per_filter_config may enable it.
            out.push(HttpFilter::IstioStats(Arc::new(cfg)));
        }
        GRPC_STATS_TYPE => {
            let any = typed.expect("a type name comes from a typed_config");
            let cfg = super::grpc_stats::GrpcStats::from_any(&fp.field("typed_config"), any)?;
            // Kept when disabled: a route's typed_per_filter_config may enable it.
            out.push(HttpFilter::GrpcStats(Arc::new(cfg)));
        }
        CORS_TYPE => {
            let any = typed.expect("a type name comes from a typed_config");
            super::cors::Cors::from_any(&fp.field("typed_config"), any)?;
            // Kept when disabled: a route's typed_per_filter_config may enable it.
            out.push(HttpFilter::Cors);
        }
        super::local_ratelimit::HTTP_TYPE => {
            let any = typed.expect("a type name comes from a typed_config");
            let config = super::local_ratelimit::LocalRateLimit::from_any(
                &fp.field("typed_config"),
                any,
                false,
                inputs,
            )?;
            // Kept when disabled: a route's typed_per_filter_config may enable it.
            out.push(HttpFilter::LocalRateLimit(Arc::new(config)));
        }
        super::fault::FAULT_TYPE => {
            let tp = fp.field("typed_config");
            let any = typed.expect("a type name comes from a typed_config");
            let settings = super::fault::FaultSettings::from_any(&tp, any)?;
            // Kept when disabled: a route's FilterConfig may enable it.
            out.push(HttpFilter::Fault(Arc::new(settings)));
        }
        ISTIO_ALPN_TYPE => {
            let any = typed.expect("a type name comes from a typed_config");
            let cfg = alpn_overrides(&fp.field("typed_config"), any)?;
            if !*disabled {
                out.push(HttpFilter::Alpn(Arc::new(cfg)));
            }
        }
        super::compressor::COMPRESSOR_TYPE => {
            let Some(any) = typed else {
                return Err(fp.field("typed_config").error("is required"));
            };
            let tp = fp.field("typed_config");
            let cfg =
                super::compressor::CompressorConfig::from_proto(&tp, &decode_any(&tp, any)?, rt)?;
            // Kept when disabled: a route's typed_per_filter_config may enable it.
            out.push(HttpFilter::Compressor(Arc::new(cfg)));
        }
        super::rbac::HTTP_RBAC_TYPE => {
            let any = typed.expect("a type name comes from a typed_config");
            let cfg = super::rbac::HttpRbac::from_any(&fp.field("typed_config"), any)?;
            // Kept when disabled: a route's typed_per_filter_config may enable it.
            out.push(HttpFilter::Rbac(Arc::new(cfg)));
        }
        _ if *is_optional => {
            tracing::warn!(filter = %name, "optional HTTP filter {} is not supported by remora and is skipped (is_optional: true)", if type_name.is_empty() { name.as_str() } else { type_name });
        }
        "" => return Err(fp.error(no_typed_config(name))),
        other => {
            return Err(fp
                .field("typed_config")
                .field("@type")
                .error(format!("HTTP filter {other} is not supported")));
        }
    }
    Ok(out)
}

fn router_config(path: &FieldPath, r: &pb::router::Router) -> Result<RouterConfig> {
    let pb::router::Router {
        dynamic_stats,
        start_child_span,
        upstream_log,
        upstream_log_options,
        suppress_envoy_headers,
        strict_check_headers,
        respect_expected_rq_timeout,
        suppress_grpc_request_failure_code_stats,
        upstream_http_filters,
        reject_connect_request_early_data,
    } = r;
    let mut errs = Errors::new();
    errs.check([
        deny(path, "upstream_log", upstream_log),
        deny(path, "upstream_log_options", upstream_log_options),
        deny(path, "strict_check_headers", strict_check_headers),
        deny(
            path,
            "suppress_grpc_request_failure_code_stats",
            suppress_grpc_request_failure_code_stats,
        ),
        deny(path, "upstream_http_filters", upstream_http_filters),
        deny(
            path,
            "reject_connect_request_early_data",
            reject_connect_request_early_data,
        ),
    ]);
    errs.finish()?;
    Ok(RouterConfig {
        dynamic_stats: bool_or(dynamic_stats, true),
        suppress_envoy_headers: *suppress_envoy_headers,
        respect_expected_rq_timeout: *respect_expected_rq_timeout,
        start_child_span: *start_child_span,
    })
}

fn local_reply(
    path: &FieldPath,
    lr: &Option<pb::hcm::LocalReplyConfig>,
    rt: &Runtime,
    inputs: &Inputs,
) -> Result<LocalReplyConfig> {
    let Some(pb::hcm::LocalReplyConfig {
        mappers,
        body_format,
    }) = lr
    else {
        return Ok(LocalReplyConfig::default());
    };
    let mut errs = Errors::new();
    let mappers =
        errs.or_default(error::all(mappers.iter().enumerate().map(|(i, m)| {
            response_mapper(&path.field("mappers").index(i), m, rt, inputs)
        })));
    let body_format = errs.or_default(
        body_format
            .as_ref()
            .map(|f| {
                Ok::<_, crate::config::ConfigError>((
                    substitution_format(&path.field("body_format"), f, inputs)?,
                    content_type(f),
                ))
            })
            .transpose(),
    );
    errs.finish_with(LocalReplyConfig {
        mappers,
        body_format,
    })
}

fn response_mapper(
    mp: &FieldPath,
    m: &pb::hcm::ResponseMapper,
    rt: &Runtime,
    inputs: &Inputs,
) -> Result<ResponseMapper> {
    let pb::hcm::ResponseMapper {
        filter,
        status_code,
        body,
        body_format_override,
        headers_to_add,
    } = m;
    let filter = filter
        .as_ref()
        .ok_or_else(|| mp.field("filter").error("is required"))?;
    let status = match status_code {
        Some(s) => Some(
            u16::try_from(s.value)
                .ok()
                .filter(|c| (200..600).contains(c))
                .and_then(|c| StatusCode::from_u16(c).ok())
                .ok_or_else(|| mp.field("status_code").error("must be between 200 and 599"))?,
        ),
        None => None,
    };
    Ok(ResponseMapper {
        filter: LogFilter::from_proto(&mp.field("filter"), filter, rt)?,
        status,
        body: body
            .as_ref()
            .map(|b| super::core::data_source(&mp.field("body"), b, inputs))
            .transpose()?,
        body_format: body_format_override
            .as_ref()
            .map(|f| {
                Ok::<_, crate::config::ConfigError>((
                    substitution_format(&mp.field("body_format_override"), f, inputs)?,
                    content_type(f),
                ))
            })
            .transpose()?,
        headers: HeaderMutations::from_proto_in(
            mp,
            ("headers_to_add", headers_to_add),
            ("headers_to_remove", &[]),
            inputs,
        )?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hcm(yaml: &str) -> Result<HttpConnectionManager> {
        let path = FieldPath::new("hcm");
        let h: pb::hcm::HttpConnectionManager = crate::config::decode_yaml(HCM_TYPE, yaml, &path);
        HttpConnectionManager::from_proto(&path, &h, &Runtime::default(), 1 << 20, &Inputs::none())
    }

    /// One translation names every problem: the connection manager's fields and each HTTP
    /// filter's.
    #[test]
    fn every_error_of_a_connection_manager() {
        let e = hcm(r#"
stat_prefix: s
codec_type: HTTP3
stream_idle_timeout: -1s
route_config: {virtual_hosts: [{name: v, domains: ["*"], routes: [{match: {prefix: /}, direct_response: {status: 200}}]}]}
http_filters:
- {name: f, typed_config: {'@type': type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault, delay: {fixed_delay: 0s, percentage: {numerator: 100}}}}
- {name: u, typed_config: {'@type': type.googleapis.com/google.protobuf.Struct, value: {}}}
- {name: envoy.filters.http.router, typed_config: {'@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router, strict_check_headers: [x-envoy-max-retries]}}
"#)
        .unwrap_err();
        let paths = e.paths();
        assert_eq!(
            paths,
            [
                "hcm.codec_type",
                "hcm.http_filters[0].typed_config.delay.fixed_delay",
                "hcm.http_filters[1].typed_config.@type",
                "hcm.http_filters[2].typed_config.strict_check_headers",
                "hcm.stream_idle_timeout",
            ],
            "{e}"
        );
    }

    /// A delayed close remora does not do is refused by path; 0s (off) is what it does.
    #[test]
    fn delayed_close_timeout_only_off() {
        let base = r#"
stat_prefix: s
route_config: {virtual_hosts: [{name: v, domains: ["*"], routes: [{match: {prefix: /}, direct_response: {status: 200}}]}]}
http_filters:
- {name: envoy.filters.http.router, typed_config: {'@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
"#;
        assert!(hcm(&format!("{base}delayed_close_timeout: 0s\n")).is_ok());
        let e = hcm(&format!("{base}delayed_close_timeout: 5s\n")).unwrap_err();
        assert_eq!(
            e.path.as_ref().map(|p| p.to_string()).as_deref(),
            Some("hcm.delayed_close_timeout"),
            "{e}"
        );
    }

    /// Envoy 1.40 finds an extension by its typed_config's type only: a router named but not
    /// typed is refused with Envoy's words (it was looked up by name before).
    #[test]
    fn a_filter_without_typed_config_is_not_found_by_name() {
        let e = hcm(r#"
stat_prefix: s
route_config: {virtual_hosts: [{name: v, domains: ["*"], routes: [{match: {prefix: /}, direct_response: {status: 200}}]}]}
http_filters:
- {name: envoy.filters.http.router}
"#)
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "hcm.http_filters[0]: Didn't find a registered implementation for 'envoy.filters.http.router' with type URL: ''"
        );
    }
}

/// `internal_address_config`: the downstream addresses that make a request internal. Envoy
/// 1.40 (since the `explicit_internal_address_config` guard went away) trusts no address when it
/// is absent; when present, `cidr_ranges` if any, else its RFC 1918 / RFC 4193 / loopback default.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InternalAddresses {
    pub configured: bool,
    /// Unix-socket peers are internal (remora's HTTP listeners are TCP only: no such peer).
    pub unix_sockets: bool,
    pub cidr_ranges: Vec<super::listener::Cidr>,
}

impl InternalAddresses {
    fn from_proto(
        path: &FieldPath,
        cfg: Option<&pb::hcm::http_connection_manager::InternalAddressConfig>,
    ) -> Result<Self> {
        let Some(pb::hcm::http_connection_manager::InternalAddressConfig {
            unix_sockets,
            cidr_ranges,
        }) = cfg
        else {
            return Ok(Self::default());
        };
        Ok(Self {
            configured: true,
            unix_sockets: *unix_sockets,
            cidr_ranges: super::listener::cidrs(&path.field("cidr_ranges"), cidr_ranges)?,
        })
    }

    /// Whether a request from this (IP) address is internal.
    pub fn is_internal(&self, ip: std::net::IpAddr) -> bool {
        if !self.configured {
            return false;
        }
        if self.cidr_ranges.is_empty() {
            return default_internal(ip);
        }
        self.cidr_ranges.iter().any(|c| c.contains(ip))
    }
}

/// Envoy's `Network::Utility::isInternalAddress`: RFC 1918, 127.0.0.1, fd00::/8, ::1.
fn default_internal(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => v4.is_private() || v4 == std::net::Ipv4Addr::LOCALHOST,
        std::net::IpAddr::V6(v6) => v6.is_loopback() || v6.octets()[0] == 0xfd,
    }
}

#[cfg(test)]
mod internal_address_tests {
    use super::*;

    #[test]
    fn internal_addresses_are_explicit() {
        let none = InternalAddresses::default();
        assert!(!none.is_internal("127.0.0.1".parse().unwrap()));
        assert!(!none.is_internal("10.0.0.1".parse().unwrap()));
        let default_ranges = InternalAddresses {
            configured: true,
            ..Default::default()
        };
        assert!(default_ranges.is_internal("10.1.2.3".parse().unwrap()));
        assert!(default_ranges.is_internal("127.0.0.1".parse().unwrap()));
        assert!(default_ranges.is_internal("fd00::1".parse().unwrap()));
        assert!(!default_ranges.is_internal("8.8.8.8".parse().unwrap()));
        assert!(!default_ranges.is_internal("127.0.0.2".parse().unwrap()));
        assert!(!default_ranges.is_internal("fc00::1".parse().unwrap()));
        let ranges = InternalAddresses {
            configured: true,
            unix_sockets: false,
            cidr_ranges: vec![super::super::listener::Cidr {
                addr: "192.0.2.0".parse().unwrap(),
                len: 24,
            }],
        };
        assert!(ranges.is_internal("192.0.2.9".parse().unwrap()));
        assert!(!ranges.is_internal("10.1.2.3".parse().unwrap()));
    }
}
