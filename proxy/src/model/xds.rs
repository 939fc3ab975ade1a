//! Bootstrap `dynamic_resources` and `ConfigSource`s: what is fetched over xDS and from where.
//! ADS (state of the world or delta) over an `envoy_grpc` static cluster is implemented; LDS,
//! RDS, CDS and EDS are delivered over it. Other sources are refused by path.

use super::core::{deny, enum_value, opt_duration};
use super::inputs::{Inputs, NotRead};
use super::pb;
use crate::config::{FieldPath, Result};
use std::time::Duration;

/// Envoy's default `initial_fetch_timeout`.
pub const DEFAULT_INITIAL_FETCH_TIMEOUT: Duration = Duration::from_secs(15);

/// The ADS stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ads {
    /// `DELTA_GRPC` (incremental) rather than `GRPC` (state of the world).
    pub delta: bool,
    /// The static cluster the gRPC stream goes to (`envoy_grpc.cluster_name`).
    pub cluster: String,
    pub set_node_on_first_message_only: bool,
}

/// Where a resource type comes from: ADS, or a file (`path_config_source`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// How long a resource may be waited for before its dependants proceed without it
    /// (`None`: forever).
    pub initial_fetch_timeout: Option<Duration>,
    /// File-based xDS: a YAML/JSON `DiscoveryResponse`-shaped file (`resources: [...]`),
    /// re-read when it changes.
    pub path: Option<std::path::PathBuf>,
    pub poll_interval: Duration,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DynamicResources {
    pub ads: Option<Ads>,
    pub cds: Option<Source>,
    pub lds: Option<Source>,
}

/// A file-based subscription's file must exist when it is configured, as Envoy checks
/// (`checkFilesystemSubscriptionBackingPath`); it is read later, in the start phase.
fn must_exist(at: &FieldPath, file: &std::path::Path, inputs: &Inputs) -> Result<()> {
    let name = file.to_string_lossy();
    match inputs.file(&name) {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(_)) | Err(NotRead) => Err(at.error(format!(
            "paths must refer to an existing path in the system: '{name}' does not exist"
        ))),
    }
}

/// A `ConfigSource`: only `ads: {}` is supported.
pub fn config_source(path: &FieldPath, cs: &pb::core::ConfigSource) -> Result<Source> {
    use pb::core::config_source::ConfigSourceSpecifier as S;
    let pb::core::ConfigSource {
        authorities,
        initial_fetch_timeout,
        resource_api_version,
        config_source_specifier,
    } = cs;
    deny(path, "authorities", authorities)?;
    enum_value::<pb::core::ApiVersion>(path, "resource_api_version", *resource_api_version, |v| {
        *v == pb::core::ApiVersion::V3
    })
    .or_else(|_| {
        // AUTO (0) means v3 in Envoy's v3 API.
        if *resource_api_version == 0 {
            Ok(pb::core::ApiVersion::V3)
        } else {
            Err(path
                .field("resource_api_version")
                .error("only V3 is supported"))
        }
    })?;
    let mut file = None;
    let mut poll_interval = Duration::from_millis(500);
    match config_source_specifier {
        Some(S::Ads(pb::core::AggregatedConfigSource {})) => {}
        Some(S::PathConfigSource(pcs)) => {
            let pp = path.field("path_config_source");
            let pb::core::PathConfigSource {
                path: file_path,
                watched_directory: _, // the file is polled, so a directory swap is seen too
                poll_interval: interval,
            } = pcs;
            if file_path.is_empty() {
                return Err(pp.field("path").error("must not be empty"));
            }
            if let Some(d) = opt_duration(&pp, "poll_interval", interval)? {
                poll_interval = d.max(Duration::from_millis(10));
            }
            file = Some(std::path::PathBuf::from(file_path));
        }
        #[allow(deprecated)]
        Some(S::Path(_)) => return Err(path.unsupported("path")),
        Some(S::ApiConfigSource(_)) => {
            return Err(path
                .field("api_config_source")
                .error("is not supported: remora fetches dynamic resources over ADS (ads: {})"));
        }
        Some(S::Self_(_)) => return Err(path.unsupported("self")),
        None => return Err(path.error("a config source needs ads: {}")),
    }
    let timeout = match opt_duration(path, "initial_fetch_timeout", initial_fetch_timeout)? {
        None => Some(DEFAULT_INITIAL_FETCH_TIMEOUT),
        Some(Duration::ZERO) => None,
        Some(t) => Some(t),
    };
    Ok(Source {
        initial_fetch_timeout: timeout,
        path: file,
        poll_interval,
    })
}

fn ads_source(path: &FieldPath, a: &pb::core::ApiConfigSource) -> Result<Ads> {
    use pb::core::api_config_source::ApiType as T;
    let pb::core::ApiConfigSource {
        api_type,
        transport_api_version,
        cluster_names,
        grpc_services,
        refresh_delay,
        request_timeout,
        rate_limit_settings,
        set_node_on_first_message_only,
        config_validators,
    } = a;
    let api = enum_value::<T>(path, "api_type", *api_type, |t| {
        matches!(
            t,
            T::Grpc | T::DeltaGrpc | T::AggregatedGrpc | T::AggregatedDeltaGrpc
        )
    })?;
    let delta = matches!(api, T::DeltaGrpc | T::AggregatedDeltaGrpc);
    if *transport_api_version != 0 && *transport_api_version != pb::core::ApiVersion::V3 as i32 {
        return Err(path
            .field("transport_api_version")
            .error("only V3 is supported"));
    }
    deny(path, "cluster_names", cluster_names)?;
    deny(path, "refresh_delay", refresh_delay)?;
    deny(path, "request_timeout", request_timeout)?;
    deny(path, "rate_limit_settings", rate_limit_settings)?;
    deny(path, "config_validators", config_validators)?;
    if grpc_services.len() != 1 {
        return Err(path
            .field("grpc_services")
            .error("exactly one gRPC service is required"));
    }
    let cluster = envoy_grpc_cluster(&path.field("grpc_services").index(0), &grpc_services[0])?;
    Ok(Ads {
        delta,
        cluster,
        set_node_on_first_message_only: *set_node_on_first_message_only,
    })
}

/// A `GrpcService` with `envoy_grpc`: the static cluster its stream goes to (ADS, the metrics
/// service sink).
pub fn envoy_grpc_cluster(gp: &FieldPath, g: &pb::core::GrpcService) -> Result<String> {
    use pb::core::grpc_service::TargetSpecifier;
    let pb::core::GrpcService {
        timeout: _, // the stream is long-lived; a per-call deadline does not apply to it
        initial_metadata,
        retry_policy,
        target_specifier,
    } = g;
    deny(gp, "initial_metadata", initial_metadata)?;
    deny(gp, "retry_policy", retry_policy)?;
    match target_specifier {
        Some(TargetSpecifier::EnvoyGrpc(e)) => {
            let ep = gp.field("envoy_grpc");
            let pb::core::grpc_service::EnvoyGrpc {
                cluster_name,
                authority,
                retry_policy,
                max_receive_message_length,
                skip_envoy_headers: _, // remora adds no x-envoy-* headers to its own gRPC calls
            } = e;
            deny(&ep, "authority", authority)?;
            deny(&ep, "retry_policy", retry_policy)?;
            deny(
                &ep,
                "max_receive_message_length",
                max_receive_message_length,
            )?;
            if cluster_name.is_empty() {
                return Err(ep.field("cluster_name").error("must not be empty"));
            }
            Ok(cluster_name.clone())
        }
        Some(TargetSpecifier::GoogleGrpc(_)) => Err(gp.unsupported("google_grpc")),
        None => Err(gp.error("envoy_grpc is required")),
    }
}

impl DynamicResources {
    pub fn from_proto(
        path: &FieldPath,
        d: &pb::bootstrap::bootstrap::DynamicResources,
        inputs: &Inputs,
    ) -> Result<Self> {
        let pb::bootstrap::bootstrap::DynamicResources {
            lds_config,
            lds_resources_locator,
            cds_config,
            cds_resources_locator,
            ads_config,
        } = d;
        deny(path, "lds_resources_locator", lds_resources_locator)?;
        deny(path, "cds_resources_locator", cds_resources_locator)?;
        let ads = ads_config
            .as_ref()
            .map(|a| ads_source(&path.field("ads_config"), a))
            .transpose()?;
        let cds = cds_config
            .as_ref()
            .map(|c| config_source(&path.field("cds_config"), c))
            .transpose()?;
        let lds = lds_config
            .as_ref()
            .map(|c| config_source(&path.field("lds_config"), c))
            .transpose()?;
        for (field, src) in [("cds_config", &cds), ("lds_config", &lds)] {
            if let Some(file) = src.as_ref().and_then(|s| s.path.as_ref()) {
                let at = path.field(field).field("path_config_source").field("path");
                must_exist(&at, file, inputs)?;
            }
            if src.as_ref().is_some_and(|s| s.path.is_none()) && ads.is_none() {
                return Err(path
                    .field(field)
                    .error("ads: {} needs dynamic_resources.ads_config"));
            }
        }
        Ok(Self { ads, cds, lds })
    }
}

/// Where SDS secrets come from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SdsSource {
    /// Over the ADS stream (`sds_config: {ads: {}}`).
    Ads,
    /// A separate SDS stream to this cluster (`api_config_source` with `envoy_grpc`), as Istio's
    /// `sds-grpc` to istio-agent.
    Cluster {
        cluster: String,
        set_node_on_first_message_only: bool,
    },
}

/// An `sds_config`.
pub fn sds_source(path: &FieldPath, cs: &pb::core::ConfigSource) -> Result<SdsSource> {
    use pb::core::config_source::ConfigSourceSpecifier as S;
    match &cs.config_source_specifier {
        Some(S::ApiConfigSource(api)) => {
            let pb::core::ConfigSource {
                authorities,
                initial_fetch_timeout: _, // a listener waits for its secrets (warming) as Envoy
                resource_api_version,
                config_source_specifier: _,
            } = cs;
            deny(path, "authorities", authorities)?;
            if *resource_api_version != 0
                && *resource_api_version != pb::core::ApiVersion::V3 as i32
            {
                return Err(path
                    .field("resource_api_version")
                    .error("only V3 is supported"));
            }
            let a = ads_source(&path.field("api_config_source"), api)?;
            if a.delta {
                return Err(path
                    .field("api_config_source")
                    .field("api_type")
                    .error("SDS streams are GRPC (state of the world)"));
            }
            Ok(SdsSource::Cluster {
                cluster: a.cluster,
                set_node_on_first_message_only: a.set_node_on_first_message_only,
            })
        }
        _ => {
            if config_source(path, cs)?.path.is_some() {
                return Err(path
                    .field("path_config_source")
                    .error("file-based SDS is not supported (use a filename in the TLS context)"));
            }
            Ok(SdsSource::Ads)
        }
    }
}
