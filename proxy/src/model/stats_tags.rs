//! Envoy's tag-extraction configuration: `stats_config.stats_tags` specifiers and Envoy's
//! default extractors (names and regexes). `telemetry::tags::TagProducer` compiles and runs
//! them when stats are registered.

/// One of Envoy's default tag extractors.
#[derive(Debug)]
pub struct DefaultTag {
    pub name: &'static str,
    pub regex: &'static str,
    /// A substring every name it can match contains (Envoy's pre-filter for the defaults).
    pub substr: Option<&'static str>,
}

/// Envoy's default tag extractors (source/common/config/well_known_names.cc), in Envoy's order.
pub const DEFAULT_TAGS: &[DefaultTag] = &[
    DefaultTag {
        name: "envoy.response_code",
        regex: r"_rq(_(\d{3}))$",
        substr: Some("_rq_"),
    },
    DefaultTag {
        name: "envoy.response_code_class",
        regex: r"_rq_(\d)xx$",
        substr: Some("_rq_"),
    },
    DefaultTag {
        name: "envoy.dynamo_partition_id",
        regex: r"^http(?=\.).*?\.dynamodb\.table(?=\.).*?\.capacity(?=\.).*?(\.__partition_id=(\w{7}))$",
        substr: Some(".dynamodb.table."),
    },
    DefaultTag {
        name: "envoy.dynamo_operation",
        regex: r"^http(?=\.).*?\.dynamodb.(?:operation|table(?=\.).*?\.capacity)(\.(.*?))(?:\.|$)",
        substr: Some(".dynamodb."),
    },
    DefaultTag {
        name: "envoy.mongo_callsite",
        regex: r"^mongo(?=\.).*?\.collection(?=\.).*?\.callsite\.((.*?)\.).*?query.\w+?$",
        substr: Some(".collection."),
    },
    DefaultTag {
        name: "envoy.dynamo_table",
        regex: r"^http(?=\.).*?\.dynamodb.(?:table|error)\.((.*?)\.)",
        substr: Some(".dynamodb."),
    },
    DefaultTag {
        name: "envoy.mongo_collection",
        regex: r"^mongo(?=\.).*?\.collection\.((.*?)\.).*?query.\w+?$",
        substr: Some(".collection."),
    },
    DefaultTag {
        name: "envoy.mongo_cmd",
        regex: r"^mongo(?=\.).*?\.cmd\.((.*?)\.)\w+?$",
        substr: Some(".cmd."),
    },
    DefaultTag {
        name: "envoy.grpc_bridge_method",
        regex: r"^cluster(?=\.).*?\.grpc(?=\.).*\.((.*?)\.)\w+?$",
        substr: Some(".grpc."),
    },
    DefaultTag {
        name: "envoy.http_user_agent",
        regex: r"^http(?=\.).*?\.user_agent\.((.*?)\.)\w+?$",
        substr: Some(".user_agent."),
    },
    DefaultTag {
        name: "envoy.virtual_cluster",
        regex: r"^vhost(?=\.).*?\.vcluster\.((.*?)\.)\w+?$",
        substr: Some(".vcluster."),
    },
    DefaultTag {
        name: "envoy.fault_downstream_cluster",
        regex: r"^http(?=\.).*?\.fault\.((.*?)\.)\w+?$",
        substr: Some(".fault."),
    },
    DefaultTag {
        name: "envoy.ssl_cipher",
        regex: r"^listener(?=\.).*?\.ssl\.cipher(\.(.*?))$",
        substr: None,
    },
    DefaultTag {
        name: "envoy.ssl_cipher_suite",
        regex: r"^cluster(?=\.).*?\.ssl\.ciphers(\.(.*?))$",
        substr: Some(".ssl.ciphers."),
    },
    DefaultTag {
        name: "envoy.grpc_bridge_service",
        regex: r"^cluster(?=\.).*?\.grpc\.((.*?)\.)",
        substr: Some(".grpc."),
    },
    DefaultTag {
        name: "envoy.tcp_prefix",
        regex: r"^tcp\.((.*?)\.)\w+?$",
        substr: None,
    },
    DefaultTag {
        name: "envoy.udp_prefix",
        regex: r"^udp\.((.*?)\.)\w+?$",
        substr: None,
    },
    DefaultTag {
        name: "envoy.clientssl_prefix",
        regex: r"^auth\.clientssl\.((.*?)\.)\w+?$",
        substr: None,
    },
    DefaultTag {
        name: "envoy.ratelimit_prefix",
        regex: r"^ratelimit\.((.*?)\.)\w+?$",
        substr: None,
    },
    DefaultTag {
        name: "envoy.cluster_name",
        regex: r"^cluster\.(([^\.]+)\.).*",
        substr: None,
    },
    DefaultTag {
        name: "envoy.http_conn_manager_prefix",
        regex: r"^listener(?=\.).*?\.http\.((.*?)\.)",
        substr: Some(".http."),
    },
    DefaultTag {
        name: "envoy.http_conn_manager_prefix",
        regex: r"^http\.((.*?)\.)",
        substr: None,
    },
    DefaultTag {
        name: "envoy.listener_address",
        regex: r"^listener\.(((?:[_.[:digit:]]*|[_\[\]aAbBcCdDeEfF[:digit:]]*))\.)",
        substr: None,
    },
    DefaultTag {
        name: "envoy.virtual_host",
        regex: r"^vhost\.((.*?)\.)",
        substr: None,
    },
    DefaultTag {
        name: "envoy.mongo_prefix",
        regex: r"^mongo\.((.*?)\.)",
        substr: None,
    },
    DefaultTag {
        name: "envoy.rds_route_config",
        regex: r"^http(?=\.).*?\.rds\.((.*?)\.)\w+?$",
        substr: Some(".rds."),
    },
    DefaultTag {
        name: "envoy.worker_id",
        regex: r"^listener_manager\.((worker_\d+)\.)",
        substr: Some("listener_manager.worker_"),
    },
];

/// A custom tag from bootstrap `stats_config.stats_tags`.
#[derive(Debug, Clone)]
pub enum TagSpec {
    Regex {
        name: String,
        regex: String,
    },
    Fixed {
        name: String,
        value: String,
    },
    /// A default tag named without a regex: use Envoy's default pattern for it.
    Default {
        name: String,
    },
}
