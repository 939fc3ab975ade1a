//! `envoy.config.bootstrap.v3.Bootstrap` → the whole static configuration, with the checks
//! that span resources (unique names, clusters referenced by routes).

use super::access_log::AccessLogConfig;
use super::cluster::Cluster;
use super::core::{bool_or, deny};
use super::format::{DEFAULT_ACCESS_LOG_FORMAT, Formatter};
use super::listener::Listener;
use super::log_format::LineFormat;
use super::matcher::StringMatcher;
use super::pb;
use super::runtime::Runtime;
use super::stats_tags::{DEFAULT_TAGS, TagSpec};
use crate::config::{FieldPath, Result};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Default)]
pub struct Node {
    pub id: String,
    pub cluster: String,
    pub metadata: serde_json::Value,
    /// `locality.region` and `locality.zone`.
    pub region: String,
    pub zone: String,
}

#[derive(Debug)]
pub struct Admin {
    pub address: SocketAddr,
    pub access_logs: Vec<AccessLogConfig>,
}

#[derive(Debug, Clone)]
pub enum StatsMatcher {
    RejectAll,
    Inclusion(Vec<StringMatcher>),
    Exclusion(Vec<StringMatcher>),
}

#[derive(Debug)]
pub struct StatsSettings {
    pub tags: Vec<TagSpec>,
    pub use_all_default_tags: bool,
    pub matcher: Option<StatsMatcher>,
    /// `stats_flush_interval` (default 5 s): how often stats go to the sinks.
    pub flush_interval: Duration,
    /// `stats_flush_on_admin`: flush only when the admin stats are read (no timer).
    pub flush_on_admin: bool,
    /// `stats_sinks`.
    pub sinks: Vec<super::stats_sinks::StatsSink>,
}

#[derive(Debug)]
pub struct Bootstrap {
    pub node: Node,
    /// The overload manager's `global_downstream_max_connections` monitor: at most this many
    /// downstream connections across listeners (those with `bypass_overload_manager` aside).
    pub global_downstream_max_connections: Option<u64>,
    /// `dynamic_resources`: ADS, and what comes over it.
    pub dynamic: super::xds::DynamicResources,
    pub admin: Option<Admin>,
    pub listeners: Vec<Arc<Listener>>,
    pub clusters: Vec<Arc<Cluster>>,
    pub stats: StatsSettings,
    /// The runtime layer, static secrets and reload hook: what later xDS translations read too.
    pub context: Arc<super::context::TranslateContext>,
    /// `deferred_stat_options.enable_deferred_creation_stats`.
    pub deferred_creation_stats: bool,
    /// `application_log_config.log_format`.
    pub app_log_format: Option<LineFormat>,
    /// `cluster_manager.outlier_detection.event_log_path`: where outlier ejection events go.
    pub outlier_event_log: Option<std::path::PathBuf>,
    /// `tracing.http` (deprecated): the provider of connection managers that name none.
    pub tracing: Option<Arc<super::tracing::Provider>>,
}

impl Bootstrap {
    /// `sds`: where TLS contexts' SDS secrets come from (the server's registry).
    pub fn from_proto(
        b: &pb::bootstrap::Bootstrap,
        sds: Arc<dyn super::context::SecretSources>,
        inputs: Arc<super::inputs::Inputs>,
    ) -> Result<Self> {
        let path = FieldPath::root();
        let pb::bootstrap::Bootstrap {
            node,
            node_context_params,
            static_resources,
            dynamic_resources,
            cluster_manager,
            hds_config,
            flags_path,
            stats_sinks,
            deferred_stat_options,
            stats_config,
            stats_flush_interval,
            watchdog,
            watchdogs,
            tracing,
            layered_runtime,
            admin,
            overload_manager,
            enable_dispatcher_stats,
            header_prefix,
            stats_server_version_override,
            use_tcp_for_dns_lookups,
            dns_resolution_config,
            typed_dns_resolver_config,
            bootstrap_extensions,
            fatal_actions,
            config_sources,
            default_config_source,
            default_socket_interface,
            certificate_provider_instances,
            inline_headers,
            perf_tracing_file_path,
            default_regex_engine,
            xds_delegate_extension,
            xds_config_tracker_extension,
            listener_manager,
            application_log_config,
            grpc_async_client_manager_config,
            memory_allocator_manager,
            stats_flush,
            stats_eviction,
            enable_worker_cpu_affinity,
        } = b;
        let mut errs = crate::config::error::Errors::new();
        errs.check([
            deny(
                &path,
                "enable_worker_cpu_affinity",
                enable_worker_cpu_affinity,
            ),
            deny(&path, "node_context_params", node_context_params),
        ]);
        let dynamic = errs.take(
            dynamic_resources
                .as_ref()
                .map(|d| {
                    super::xds::DynamicResources::from_proto(
                        &path.field("dynamic_resources"),
                        d,
                        &inputs,
                    )
                })
                .transpose()
                .map(Option::unwrap_or_default),
        );
        let outlier_event_log = errs.or_default(
            cluster_manager
                .as_ref()
                .map(|cm| cluster_manager_from(&path.field("cluster_manager"), cm))
                .transpose()
                .map(Option::flatten),
        );
        errs.check([
            deny(&path, "hds_config", hds_config),
            deny(&path, "flags_path", flags_path),
        ]);
        let sinks = errs.or_default(crate::config::error::all(
            stats_sinks.iter().enumerate().map(|(i, s)| {
                super::stats_sinks::StatsSink::from_proto(&path.field("stats_sinks").index(i), s)
            }),
        ));
        let deferred_creation_stats = deferred_stat_options
            .as_ref()
            .is_some_and(|d| d.enable_deferred_creation_stats);
        errs.check([
            deny(&path, "watchdog", watchdog),
            deny(&path, "watchdogs", watchdogs),
        ]);
        let tracing = errs.or_default(super::tracing::Provider::from_bootstrap(
            &path.field("tracing"),
            tracing,
            &inputs,
        ));
        let global_downstream_max_connections = errs.or_default(match overload_manager {
            Some(om) => overload(&path.field("overload_manager"), om),
            None => Ok(None),
        });
        errs.check([
            deny(&path, "enable_dispatcher_stats", enable_dispatcher_stats),
            deny(&path, "header_prefix", header_prefix),
            deny(
                &path,
                "stats_server_version_override",
                stats_server_version_override,
            ),
        ]);
        let dns_resolver = errs.or_default(super::dns_resolver::from_fields(
            &path,
            super::dns_resolver::DnsFields {
                dns_resolvers: &[],
                use_tcp_for_dns_lookups: *use_tcp_for_dns_lookups,
                dns_resolution_config,
                typed_dns_resolver_config,
            },
        ));
        errs.check(bootstrap_extensions.iter().enumerate().map(|(i, ext)| {
            bootstrap_extension(&path.field("bootstrap_extensions").index(i), ext)
        }));
        errs.check([
            deny(&path, "fatal_actions", fatal_actions),
            deny(&path, "config_sources", config_sources),
            deny(&path, "default_config_source", default_config_source),
            deny(&path, "default_socket_interface", default_socket_interface),
            deny(
                &path,
                "certificate_provider_instances",
                certificate_provider_instances,
            ),
            deny(&path, "inline_headers", inline_headers),
            deny(&path, "perf_tracing_file_path", perf_tracing_file_path),
            deny(&path, "default_regex_engine", default_regex_engine),
            deny(&path, "xds_delegate_extension", xds_delegate_extension),
            deny(
                &path,
                "xds_config_tracker_extension",
                xds_config_tracker_extension,
            ),
            deny(&path, "listener_manager", listener_manager),
        ]);
        let app_log_format = errs.or_default(
            application_log_config
                .as_ref()
                .map(|a| app_log_format(&path.field("application_log_config"), a))
                .transpose()
                .map(Option::flatten),
        );
        errs.check([
            deny(
                &path,
                "grpc_async_client_manager_config",
                grpc_async_client_manager_config,
            ),
            deny(&path, "memory_allocator_manager", memory_allocator_manager),
            deny(&path, "stats_eviction", stats_eviction),
        ]);

        // Without its runtime layer, the rest is translated with an empty one (the layer's
        // error is reported with the others).
        let runtime = errs.or_default(Runtime::from_proto(
            &path.field("layered_runtime"),
            layered_runtime,
            &inputs,
        ));
        let node = node.as_ref().map(node_from).unwrap_or_default();
        let admin = errs.or_default(match admin {
            Some(a) => admin_from(&path.field("admin"), a, &runtime, &inputs),
            None => Ok(None),
        });

        let (flush_interval, flush_on_admin) = errs.or_default(super::stats_sinks::flush_settings(
            &path,
            stats_flush_interval,
            stats_flush,
        ));
        let stats = errs.take(
            stats_settings(&path.field("stats_config"), stats_config, flush_interval).map(|s| {
                StatsSettings {
                    flush_on_admin,
                    sinks,
                    ..s
                }
            }),
        );

        let sp = path.field("static_resources");
        let empty = pb::bootstrap::bootstrap::StaticResources::default();
        let pb::bootstrap::bootstrap::StaticResources {
            listeners: ls,
            clusters: cs,
            secrets,
        } = static_resources.as_ref().unwrap_or(&empty);
        let reload = super::context::ReloadHook::default();
        let material = super::tls::Material {
            inputs: &inputs,
            reload: &reload,
        };
        // Listeners and clusters are translated with the secrets that translated.
        let (secrets, secret_errors) =
            super::tls::StaticSecrets::each(&sp.field("secrets"), secrets, material);
        errs.check([secret_errors.finish()]);
        let context = Arc::new(super::context::TranslateContext {
            runtime: Arc::new(runtime),
            secrets: Arc::new(secrets),
            reload,
            sds,
            inputs,
            dns_resolver: Arc::new(dns_resolver),
        });
        let (clusters, listeners) =
            errs.or_default(static_listeners_and_clusters(&sp, cs, ls, &context));
        if let Some(dynamic) = &dynamic {
            errs.check([check_dynamic(&path, dynamic, cs, &listeners, &clusters)]);
        }
        if let Some(stats) = &stats {
            errs.check([super::stats_sinks::check_clusters(&path, &stats.sinks, cs)]);
        }
        let (dynamic, stats) = errs.finish_some(dynamic.zip(stats))?;
        Ok(Self {
            node,
            global_downstream_max_connections,
            dynamic,
            admin,
            listeners,
            clusters,
            stats,
            context,
            deferred_creation_stats,
            app_log_format,
            outlier_event_log,
            tracing: tracing.map(Arc::new),
        })
    }
}

fn node_from(n: &pb::core::Node) -> Node {
    Node {
        id: n.id.clone(),
        cluster: n.cluster.clone(),
        metadata: n
            .metadata
            .as_ref()
            .map(super::runtime::struct_to_json)
            .unwrap_or_default(),
        region: n
            .locality
            .as_ref()
            .map(|l| l.region.clone())
            .unwrap_or_default(),
        zone: n
            .locality
            .as_ref()
            .map(|l| l.zone.clone())
            .unwrap_or_default(),
    }
}

/// `cluster_manager`: the outlier event log's path.
fn cluster_manager_from(
    cp: &FieldPath,
    cm: &pb::bootstrap::ClusterManager,
) -> Result<Option<std::path::PathBuf>> {
    let pb::bootstrap::ClusterManager {
        local_cluster_name,
        outlier_detection,
        upstream_bind_config,
        load_stats_config,
        enable_deferred_cluster_creation,
    } = cm;
    // Deferred creation only changes when a cluster's internals are built, not behaviour.
    let _ = enable_deferred_cluster_creation;
    let mut errs = crate::config::error::Errors::new();
    errs.check([deny(cp, "local_cluster_name", local_cluster_name)]);
    let mut outlier_event_log = None;
    if let Some(od) = outlier_detection {
        let op = cp.field("outlier_detection");
        let pb::bootstrap::cluster_manager::OutlierDetection {
            event_log_path,
            event_service,
        } = od;
        errs.check([deny(&op, "event_service", event_service)]);
        if !event_log_path.is_empty() {
            outlier_event_log = Some(std::path::PathBuf::from(event_log_path));
        }
    }
    errs.check([
        deny(cp, "upstream_bind_config", upstream_bind_config),
        deny(cp, "load_stats_config", load_stats_config),
    ]);
    errs.finish_with(outlier_event_log)
}

/// The static clusters and listeners.
type StaticResources = (Vec<Arc<Cluster>>, Vec<Arc<Listener>>);

/// The static clusters and listeners. Every one is translated, so that one report names the
/// problems of all of them; routes are checked against the names of every static cluster
/// (one that failed is reported on its own, not again by each route naming it).
fn static_listeners_and_clusters(
    sp: &FieldPath,
    cs: &[pb::cluster::Cluster],
    ls: &[pb::listener::Listener],
    context: &super::context::TranslateContext,
) -> Result<StaticResources> {
    let mut errs = crate::config::error::Errors::new();
    let mut clusters = Vec::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    for (i, c) in cs.iter().enumerate() {
        let cp = sp.field("clusters").index(i);
        let cluster = errs.take(Cluster::from_proto(&cp, c, context));
        if let Some(prev) = names.get(&c.name).filter(|_| !c.name.is_empty()) {
            errs.push(cp.field("name").error(format!(
                "cluster manager: duplicate cluster '{}' (also static_resources.clusters[{prev}])",
                c.name
            )));
            continue;
        }
        names.insert(c.name.clone(), i);
        clusters.extend(cluster.map(Arc::new));
    }
    let mut listeners = Vec::new();
    let mut lnames: HashMap<String, usize> = HashMap::new();
    for (i, l) in ls.iter().enumerate() {
        let lp = sp.field("listeners").index(i);
        let Some(listener) = errs.take(Listener::from_proto(&lp, l, context)) else {
            continue;
        };
        if let Some(prev) = lnames.insert(listener.name.clone(), i) {
            errs.push(lp.field("name").error(format!(
                "duplicate listener name '{}' (also static_resources.listeners[{prev}])",
                listener.name
            )));
            continue;
        }
        let checked = errs.take(
            check_route_clusters(&lp, &listener, &names)
                .and_then(|()| check_no_pipe_targets(&lp, &listener, &clusters)),
        );
        if checked.is_some() {
            listeners.push(Arc::new(listener));
        }
    }
    errs.finish_with((clusters, listeners))
}

/// What static resources need of `dynamic_resources`: the ADS stream's cluster is a static one;
/// RDS and EDS need ADS.
fn check_dynamic(
    path: &FieldPath,
    dynamic: &super::xds::DynamicResources,
    cs: &[pb::cluster::Cluster],
    listeners: &[Arc<Listener>],
    clusters: &[Arc<Cluster>],
) -> Result<()> {
    if let Some(ads) = &dynamic.ads
        && !cs.iter().any(|c| c.name == *ads.cluster)
    {
        return Err(path
            .field("dynamic_resources")
            .field("ads_config")
            .field("grpc_services")
            .index(0)
            .field("envoy_grpc")
            .field("cluster_name")
            .error(format!("unknown static cluster '{}'", ads.cluster)));
    }
    if dynamic.ads.is_some() {
        return Ok(());
    }
    for (i, l) in listeners.iter().enumerate() {
        for (j, fc) in l.filter_chains.iter().enumerate() {
            if let super::listener::NetworkTerminal::Http(h) = &fc.terminal
                && h.rds.is_some()
            {
                return Err(path
                    .field("static_resources")
                    .field("listeners")
                    .index(i)
                    .field("filter_chains")
                    .index(j)
                    .error("RDS needs dynamic_resources.ads_config"));
            }
        }
    }
    if let Some(i) = clusters.iter().position(|c| c.eds.is_some()) {
        return Err(path
            .field("static_resources")
            .field("clusters")
            .index(i)
            .field("eds_cluster_config")
            .error("EDS needs dynamic_resources.ads_config"));
    }
    Ok(())
}

const INTERNAL_LISTENER: &str = "envoy.extensions.bootstrap.internal_listener.v3.InternalListener";

/// `bootstrap_extensions`: the internal-listener extension (Istio always adds it) is accepted —
/// it only enables internal listeners, and a listener or cluster with an internal address is
/// refused where it is named; other extensions are refused.
fn bootstrap_extension(path: &FieldPath, ext: &pb::core::TypedExtensionConfig) -> Result<()> {
    let pb::core::TypedExtensionConfig { name, typed_config } = ext;
    let Some(any) = typed_config else {
        return Err(path.error(format!("bootstrap extension '{name}' needs a typed_config")));
    };
    let tp = path.field("typed_config");
    match super::core::any_type(any) {
        INTERNAL_LISTENER => {
            let envoy_types::pb::envoy::extensions::bootstrap::internal_listener::v3::InternalListener {
                buffer_size_kb: _, // the buffer of internal connections, which are refused elsewhere
            } = super::core::decode_any(&tp, any)?;
            Ok(())
        }
        other => Err(tp
            .field("@type")
            .error(format!("bootstrap extension {other} is not supported"))),
    }
}

const DOWNSTREAM_CONNECTIONS: &str =
    "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig";

/// `application_log_config`: a text pattern or a JSON object of patterns.
fn app_log_format(
    path: &FieldPath,
    a: &pb::bootstrap::bootstrap::ApplicationLogConfig,
) -> Result<Option<LineFormat>> {
    use pb::bootstrap::bootstrap::application_log_config::log_format::LogFormat as F;
    let pb::bootstrap::bootstrap::ApplicationLogConfig { log_format } = a;
    let Some(lf) = log_format else {
        return Ok(None);
    };
    let lp = path.field("log_format");
    Ok(match &lf.log_format {
        Some(F::TextFormat(t)) => {
            Some(LineFormat::text(t).map_err(|e| lp.field("text_format").error(e))?)
        }
        Some(F::JsonFormat(j)) => {
            let json = super::runtime::struct_to_json(j);
            let obj = json.as_object().cloned().unwrap_or_default();
            Some(LineFormat::json(&obj).map_err(|e| lp.field("json_format").error(e))?)
        }
        None => None,
    })
}

/// `overload_manager`: the global downstream connection limit monitor is honoured; actions,
/// load-shed points and other monitors are refused.
fn overload(path: &FieldPath, om: &pb::overload::OverloadManager) -> Result<Option<u64>> {
    use pb::overload::resource_monitor::ConfigType;
    let pb::overload::OverloadManager {
        refresh_interval: _, // the connection monitor is exact, not sampled
        resource_monitors,
        actions,
        loadshed_points,
        buffer_factory_config,
    } = om;
    deny(path, "actions", actions)?;
    deny(path, "loadshed_points", loadshed_points)?;
    deny(path, "buffer_factory_config", buffer_factory_config)?;
    let mut limit = None;
    for (i, m) in resource_monitors.iter().enumerate() {
        let mp = path.field("resource_monitors").index(i);
        let pb::overload::ResourceMonitor { name, config_type } = m;
        let Some(ConfigType::TypedConfig(any)) = config_type else {
            return Err(mp.error(format!("resource monitor '{name}' needs a typed_config")));
        };
        let tp = mp.field("typed_config");
        if super::core::any_type(any) != DOWNSTREAM_CONNECTIONS {
            return Err(tp.field("@type").error(format!(
                "resource monitor {} is not supported",
                super::core::any_type(any)
            )));
        }
        let envoy_types::pb::envoy::extensions::resource_monitors::downstream_connections::v3::DownstreamConnectionsConfig {
            max_active_downstream_connections,
        } = super::core::decode_any(&tp, any)?;
        if max_active_downstream_connections <= 0 {
            return Err(tp
                .field("max_active_downstream_connections")
                .error("must be greater than 0"));
        }
        limit = Some(max_active_downstream_connections as u64);
    }
    Ok(limit)
}

/// Routes and tcp_proxy cannot send traffic to a `pipe` cluster (those serve xDS/SDS only).
fn check_no_pipe_targets(lp: &FieldPath, l: &Listener, clusters: &[Arc<Cluster>]) -> Result<()> {
    use super::listener::NetworkTerminal;
    let pipes: Vec<&str> = clusters
        .iter()
        .filter(|c| c.pipe.is_some())
        .map(|c| &*c.name)
        .collect();
    if pipes.is_empty() {
        return Ok(());
    }
    for fc in l.filter_chains.iter().chain(l.default_filter_chain.iter()) {
        let targets: Vec<&str> = match &fc.terminal {
            NetworkTerminal::Http(h) => h
                .route_config
                .referenced_clusters
                .iter()
                .map(|c| &**c)
                .collect(),
            NetworkTerminal::Tcp(t) => t.clusters().collect(),
        };
        if let Some(p) = targets.iter().find(|t| pipes.contains(t)) {
            return Err(lp.error(format!(
                "cluster '{p}' has a pipe endpoint: proxying to Unix sockets is not supported (pipe clusters serve xDS/SDS)"
            )));
        }
    }
    Ok(())
}

/// Inline route configurations validate their clusters (Envoy's `validate_clusters` defaults to
/// true for them): a route naming an undefined cluster is a configuration error.
fn check_route_clusters(
    lp: &FieldPath,
    l: &Listener,
    clusters: &HashMap<String, usize>,
) -> Result<()> {
    use super::listener::NetworkTerminal;
    for (i, fc) in l
        .filter_chains
        .iter()
        .chain(l.default_filter_chain.iter())
        .enumerate()
    {
        let NetworkTerminal::Http(hcm) = &fc.terminal else {
            continue;
        };
        if hcm.route_config.validate_clusters == Some(false) {
            continue;
        }
        for name in &hcm.route_config.referenced_clusters {
            if !clusters.contains_key(&**name) {
                let chain = if i < l.filter_chains.len() {
                    format!("filter_chains[{i}]")
                } else {
                    "default_filter_chain".into()
                };
                return Err(lp.field(&chain).error(format!(
                    "route configuration '{}' references cluster '{name}', which is not defined in static_resources.clusters",
                    hcm.route_config.name
                )));
            }
        }
    }
    Ok(())
}

fn admin_from(
    path: &FieldPath,
    a: &pb::bootstrap::Admin,
    rt: &Runtime,
    inputs: &super::inputs::Inputs,
) -> Result<Option<Admin>> {
    let pb::bootstrap::Admin {
        access_log,
        access_log_path,
        profile_path,
        address,
        socket_options,
        ignore_global_conn_limit,
        allow_paths,
    } = a;
    deny(path, "socket_options", socket_options)?;
    deny(path, "allow_paths", allow_paths)?;
    let _ = profile_path; // the CPU profiler endpoint is not offered; the path is only where it would write
    let _ = ignore_global_conn_limit; // no global connection limit applies to the admin listener
    let Some(addr) = address else {
        if !access_log.is_empty() || !access_log_path.is_empty() {
            return Err(path
                .field("address")
                .error("is required when admin is configured"));
        }
        return Ok(None);
    };
    let hp = super::core::socket_address(&path.field("address"), &Some(addr.clone()))?;
    let ip = hp.ip().ok_or_else(|| {
        path.field("address")
            .error(format!("'{}' is not an IP address", hp.host))
    })?;
    let mut logs = Vec::new();
    for (i, al) in access_log.iter().enumerate() {
        logs.push(AccessLogConfig::from_proto(
            &path.field("access_log").index(i),
            al,
            rt,
            inputs,
        )?);
    }
    if !access_log_path.is_empty() {
        logs.push(AccessLogConfig {
            name: "admin".into(),
            filter: None,
            sink: super::access_log::Sink::File(access_log_path.into()),
            format: super::access_log::LogFormat::Text(
                Formatter::parse(DEFAULT_ACCESS_LOG_FORMAT).expect("default format"),
            ),
        });
    }
    Ok(Some(Admin {
        address: SocketAddr::new(ip, hp.port),
        access_logs: logs,
    }))
}

fn stats_settings(
    path: &FieldPath,
    sc: &Option<pb::metrics::StatsConfig>,
    flush_interval: Duration,
) -> Result<StatsSettings> {
    use pb::metrics::stats_matcher::StatsMatcher as M;
    use pb::metrics::tag_specifier::TagValue;
    let mut out = StatsSettings {
        tags: vec![],
        use_all_default_tags: true,
        matcher: None,
        flush_interval,
        flush_on_admin: false,
        sinks: Vec::new(),
    };
    let Some(sc) = sc else { return Ok(out) };
    let pb::metrics::StatsConfig {
        stats_tags,
        use_all_default_tags,
        stats_matcher,
        histogram_bucket_settings,
        allow_default_tag_overrides,
    } = sc;
    deny(path, "histogram_bucket_settings", histogram_bucket_settings)?;
    let _ = allow_default_tag_overrides; // custom tags already override defaults of the same name
    out.use_all_default_tags = bool_or(use_all_default_tags, true);
    for (i, t) in stats_tags.iter().enumerate() {
        let tp = path.field("stats_tags").index(i);
        let pb::metrics::TagSpecifier {
            tag_name,
            tag_value,
        } = t;
        if tag_name.is_empty() {
            return Err(tp.field("tag_name").error("must not be empty"));
        }
        out.tags.push(match tag_value {
            Some(TagValue::Regex(r)) if !r.is_empty() => {
                fancy_regex::Regex::new(r).map_err(|e| tp.field("regex").error(format!("invalid regex: {e}")))?;
                TagSpec::Regex { name: tag_name.clone(), regex: r.clone() }
            }
            Some(TagValue::FixedValue(v)) => TagSpec::Fixed { name: tag_name.clone(), value: v.clone() },
            _ => {
                if !DEFAULT_TAGS.iter().any(|d| d.name == tag_name) {
                    return Err(tp.error(format!("no regex specified for tag specifier and no default regex for name: '{tag_name}'")));
                }
                TagSpec::Default { name: tag_name.clone() }
            }
        });
    }
    if let Some(sm) = stats_matcher {
        let mp = path.field("stats_matcher");
        let list =
            |p: FieldPath, l: &pb::matcher::ListStringMatcher| -> Result<Vec<StringMatcher>> {
                l.patterns
                    .iter()
                    .enumerate()
                    .map(|(i, m)| StringMatcher::from_proto(&p.field("patterns").index(i), m))
                    .collect()
            };
        out.matcher = match &sm.stats_matcher {
            Some(M::RejectAll(true)) => Some(StatsMatcher::RejectAll),
            Some(M::RejectAll(false)) | None => None,
            Some(M::InclusionList(l)) => Some(StatsMatcher::Inclusion(list(
                mp.field("inclusion_list"),
                l,
            )?)),
            Some(M::ExclusionList(l)) => Some(StatsMatcher::Exclusion(list(
                mp.field("exclusion_list"),
                l,
            )?)),
        };
    }
    Ok(out)
}

impl StatsMatcher {
    /// Whether a stat with this name is instantiated.
    pub fn accepts(&self, name: &str) -> bool {
        match self {
            StatsMatcher::RejectAll => false,
            StatsMatcher::Inclusion(ms) => ms.iter().any(|m| m.matches(name)),
            StatsMatcher::Exclusion(ms) => !ms.iter().any(|m| m.matches(name)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bootstrap's DNS resolver is the one of DNS clusters that set none of their own.
    #[test]
    fn bootstrap_dns_resolver_is_the_clusters_default() {
        let yaml = r#"
typed_dns_resolver_config:
  name: envoy.network.dns_resolver.cares
  typed_config:
    '@type': type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig
    resolvers: [{socket_address: {address: 10.0.0.1}}]
    dns_resolver_options: {use_tcp_for_dns_lookups: true}
static_resources:
  clusters:
  - {name: a, type: STRICT_DNS}
  - {name: b, type: STRICT_DNS, dns_resolvers: [{socket_address: {address: 10.0.0.2}}]}
"#;
        let b: pb::bootstrap::Bootstrap = crate::config::decode_yaml(
            "envoy.config.bootstrap.v3.Bootstrap",
            yaml,
            &FieldPath::root(),
        );
        let b = Bootstrap::from_proto(
            &b,
            Arc::new(super::super::context::NoSecretSources),
            Arc::new(super::super::inputs::Inputs::none()),
        )
        .unwrap();
        let a = &b.clusters[0].dns.resolver;
        assert_eq!(a.resolvers, vec!["10.0.0.1:53".parse().unwrap()]);
        assert!(a.use_tcp);
        assert!(Arc::ptr_eq(a, &b.context.dns_resolver));
        let own = &b.clusters[1].dns.resolver;
        assert_eq!(own.resolvers, vec!["10.0.0.2:53".parse().unwrap()]);
        assert!(!own.use_tcp);
    }

    /// One translation names every problem: each static listener's and cluster's, and the
    /// top-level sections'.
    #[test]
    fn every_error_of_a_bootstrap() {
        let yaml = r#"
flags_path: /x
static_resources:
  listeners:
  - name: l
    address: {socket_address: {address: 127.0.0.1, port_value: 1}}
    freebind: true
    filter_chains:
    - filters:
      - name: t
        typed_config: {'@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: t, cluster: a}
  clusters:
  - {name: a, connect_timeout: 0s}
  - {name: b, cleanup_interval: 1s}
  - {name: c}
"#;
        let b: pb::bootstrap::Bootstrap = crate::config::decode_yaml(
            "envoy.config.bootstrap.v3.Bootstrap",
            yaml,
            &FieldPath::root(),
        );
        let e = Bootstrap::from_proto(
            &b,
            Arc::new(super::super::context::NoSecretSources),
            Arc::new(super::super::inputs::Inputs::none()),
        )
        .unwrap_err();
        let paths = e.paths();
        assert_eq!(
            paths,
            [
                "flags_path",
                "static_resources.clusters[0].connect_timeout",
                "static_resources.clusters[1].cleanup_interval",
                "static_resources.listeners[0].freebind",
            ],
            "{e}"
        );
    }
}
