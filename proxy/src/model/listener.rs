//! `envoy.config.listener.v3.Listener` → listeners with filter chains, Envoy's filter-chain
//! matching (destination port → destination IP → server name → transport protocol →
//! application protocols → direct source IP → source type → source IP → source port), listener
//! filters (TLS and HTTP inspectors) and network filters (HTTP connection manager, tcp_proxy).

use super::cluster::{Keepalive, keepalive};
use super::context::TranslateContext;
use super::core::{
    any_type, bool_or, decode_any, deny, enum_value, opt_duration, socket_address, u32_or,
};
use super::hcm::{HCM_TYPE, HttpConnectionManager};
use super::pb;
use super::tcp_proxy::{TCP_PROXY_TYPE, TcpProxy};
use crate::config::error::{self, Errors};
use crate::config::{FieldPath, Result};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

const TLS_INSPECTOR: &str = "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector";
const HTTP_INSPECTOR: &str = "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector";
pub const DEFAULT_LISTENER_FILTERS_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerFilter {
    TlsInspector,
    HttpInspector,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Unspecified,
    Inbound,
    Outbound,
}

#[derive(Debug, Clone)]
pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
    /// `stat_prefix`, if set; otherwise stats are named by the bound address.
    pub stat_prefix: Option<String>,
    pub filter_chains: Vec<Arc<FilterChain>>,
    pub default_filter_chain: Option<Arc<FilterChain>>,
    pub listener_filters: Vec<ListenerFilter>,
    pub listener_filters_timeout: Option<Duration>,
    pub continue_on_listener_filters_timeout: bool,
    pub per_connection_buffer_limit_bytes: u32,
    pub reuse_port: bool,
    pub tcp_keepalive: Option<Keepalive>,
    pub direction: Direction,
    /// Envoy's `drain_type: MODIFY_ONLY`: not drained by `/drain_listeners` (only by config changes).
    pub modify_only_drain: bool,
    /// From runtime `envoy.resource_limits.listener.<name>.connection_limit`.
    pub connection_limit: Option<u64>,
    /// `bypass_overload_manager`: exempt from the global downstream connection limit.
    pub bypass_overload_manager: bool,
    /// Listener access logs: connections that end before a network filter takes them (no
    /// filter chain matched, listener filter timeout, TLS handshake failure).
    pub access_logs: Vec<super::access_log::AccessLogConfig>,
}

#[derive(Debug)]
pub struct FilterChain {
    pub name: String,
    pub matcher: FilterChainMatch,
    /// `envoy.transport_sockets.tls`: terminate TLS before the network filter.
    pub tls: Option<Arc<super::tls::DownstreamTls>>,
    /// `transport_socket_connect_timeout`: how long the TLS handshake may take.
    pub handshake_timeout: Option<Duration>,
    /// The network filters before the terminal one, in chain order.
    pub filters: Vec<NetworkFilter>,
    /// A hash of the chain's configuration: a new version of the listener that has a chain
    /// with the same fingerprint keeps that chain's connections (no drain).
    pub fingerprint: u64,
    pub terminal: NetworkTerminal,
}

/// A network filter before the terminal one (`tcp_proxy` or `http_connection_manager`).
#[derive(Debug, Clone)]
pub enum NetworkFilter {
    /// Accepted as a no-op (the discovery half of the metadata exchange): listed in `/config_dump`, counted in `server.noop_extension.<short>`.
    Noop(super::hcm::NoopFilter),
    /// Istio's TCP metadata exchange (run by the listener right after the TLS handshake, so
    /// before every other filter sees a byte).
    MetadataExchange(Arc<MetadataExchange>),
    /// `envoy.filters.network.local_ratelimit`: a token bucket per filter chain.
    LocalRateLimit(Arc<super::local_ratelimit::NetworkLocalRateLimit>),
    /// `envoy.filters.network.rbac`.
    Rbac(Arc<super::rbac::NetworkRbac>),
    /// Istio's `istio.stats` on a TCP chain: the `istio_tcp_*` metrics.
    IstioStats(Arc<super::istio_stats::IstioStats>),
}

impl FilterChain {
    /// The filters accepted as no-ops.
    pub fn noop_filters(&self) -> impl Iterator<Item = &super::hcm::NoopFilter> {
        self.filters.iter().filter_map(|f| match f {
            NetworkFilter::Noop(n) => Some(n),
            _ => None,
        })
    }

    /// Istio's TCP metadata exchange, when the chain runs it.
    pub fn metadata_exchange(&self) -> Option<&Arc<MetadataExchange>> {
        self.filters.iter().find_map(|f| match f {
            NetworkFilter::MetadataExchange(m) => Some(m),
            _ => None,
        })
    }
}

/// `envoy.tcp.metadataexchange.config.MetadataExchange`: the exchange runs when TLS negotiated
/// `protocol`. (`enable_discovery`, the WDS fallback, only learns about the peer: telemetry.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataExchange {
    pub protocol: String,
    pub additional_labels: Vec<String>,
}

pub const METADATA_EXCHANGE_TYPE: &str = "envoy.tcp.metadataexchange.config.MetadataExchange";

/// Decode Istio's metadata-exchange config (network filter or cluster filter).
pub fn metadata_exchange(path: &FieldPath, any: &pb::protobuf::Any) -> Result<MetadataExchange> {
    let super::istio_pb::MetadataExchange {
        protocol,
        enable_discovery: _,
        additional_labels,
    } = decode_any(path, any)?;
    if protocol.is_empty() {
        return Err(path.field("protocol").error("must not be empty"));
    }
    Ok(MetadataExchange {
        protocol,
        additional_labels,
    })
}

#[derive(Debug)]
pub enum NetworkTerminal {
    Http(Arc<HttpConnectionManager>),
    Tcp(Arc<TcpProxy>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => return false,
            },
            (_, ip) => ip,
        };
        match (self.addr, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                let mask = if self.len == 0 {
                    0
                } else {
                    u32::MAX << (32 - self.len as u32)
                };
                (u32::from(a) & mask) == (u32::from(b) & mask)
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                let mask = if self.len == 0 {
                    0
                } else {
                    u128::MAX << (128 - self.len as u32)
                };
                (u128::from(a) & mask) == (u128::from(b) & mask)
            }
            _ => false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceType {
    Any,
    SameIpOrLoopback,
    External,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterChainMatch {
    pub destination_port: Option<u16>,
    pub prefix_ranges: Vec<Cidr>,
    pub server_names: Vec<String>,
    pub transport_protocol: Option<String>,
    pub application_protocols: Vec<String>,
    pub direct_source_prefix_ranges: Vec<Cidr>,
    pub source_type: SourceType,
    pub source_prefix_ranges: Vec<Cidr>,
    pub source_ports: Vec<u16>,
}

/// What filter-chain matching reads from a new connection.
pub struct ConnectionFacts<'a> {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub server_name: Option<&'a str>,
    pub transport_protocol: &'a str,
    pub application_protocols: &'a [Box<str>],
}

// === impl Listener ===

impl Listener {
    /// Every independent field is translated, so that one report names every problem.
    pub fn from_proto(
        path: &FieldPath,
        l: &pb::listener::Listener,
        cx: &TranslateContext,
    ) -> Result<Self> {
        use pb::listener::listener::DrainType;
        let rt = &*cx.runtime;
        let pb::listener::Listener {
            name,
            address,
            additional_addresses,
            stat_prefix,
            stats_matcher,
            filter_chains,
            fcds_config,
            filter_chain_matcher,
            use_original_dst,
            default_filter_chain,
            per_connection_buffer_limit_bytes,
            per_connection_buffer_high_watermark_timeout,
            metadata,
            deprecated_v1,
            drain_type,
            listener_filters,
            listener_filters_timeout,
            continue_on_listener_filters_timeout,
            transparent,
            freebind,
            socket_options,
            tcp_fast_open_queue_length,
            traffic_direction,
            udp_listener_config,
            api_listener,
            connection_balance_config,
            reuse_port,
            enable_reuse_port,
            access_log,
            max_connections_to_accept_per_socket_event,
            bind_to_port,
            enable_mptcp,
            ignore_global_conn_limit,
            bypass_overload_manager,
            tcp_keepalive,
            tcp_backlog_size,
            listener_specifier,
        } = l;
        super::core::metadata_ok(metadata);
        // It exempts a listener from the runtime key's global limit, which remora does not
        // implement (the key is reported as not used); the overload manager's limit is
        // bypassed with bypass_overload_manager, as in Envoy.
        let _ = ignore_global_conn_limit;
        let mut errs = Errors::new();
        errs.check([
            deny(path, "tcp_backlog_size", tcp_backlog_size),
            deny(path, "additional_addresses", additional_addresses),
            deny(path, "stats_matcher", stats_matcher),
            deny(path, "fcds_config", fcds_config),
            deny(path, "filter_chain_matcher", filter_chain_matcher),
            deny(
                path,
                "use_original_dst",
                &use_original_dst.as_ref().filter(|b| b.value),
            ),
            deny(
                path,
                "per_connection_buffer_high_watermark_timeout",
                per_connection_buffer_high_watermark_timeout,
            ),
            deny(path, "deprecated_v1", deprecated_v1),
            deny(
                path,
                "transparent",
                &transparent.as_ref().filter(|b| b.value),
            ),
            deny(path, "freebind", &freebind.as_ref().filter(|b| b.value)),
            deny(path, "socket_options", socket_options),
            deny(
                path,
                "tcp_fast_open_queue_length",
                tcp_fast_open_queue_length,
            ),
            deny(path, "udp_listener_config", udp_listener_config),
            deny(path, "api_listener", api_listener),
            deny(path, "connection_balance_config", connection_balance_config),
        ]);
        let access_logs =
            errs.or_default(error::all(access_log.iter().enumerate().map(|(i, al)| {
                super::access_log::AccessLogConfig::from_proto(
                    &path.field("access_log").index(i),
                    al,
                    rt,
                    &cx.inputs,
                )
            })));
        errs.check([deny(
            path,
            "max_connections_to_accept_per_socket_event",
            max_connections_to_accept_per_socket_event,
        )]);
        if !bool_or(bind_to_port, true) {
            errs.push(path.field("bind_to_port").error("false is not supported (listeners without their own socket arrive with xDS and original_dst)"));
        }
        errs.check([deny(path, "enable_mptcp", enable_mptcp)]);
        if listener_specifier.is_some() {
            errs.push(path.unsupported("internal_listener"));
        }
        let address = errs.take(listener_address(path, address));
        let name = match (name.is_empty(), address) {
            (false, _) => name.clone(),
            (true, Some(a)) => format!("{a}"),
            (true, None) => "<unnamed>".to_string(),
        };
        // Envoy only asks whether it is MODIFY_ONLY: a value it does not know drains as DEFAULT.
        let modify_only_drain = DrainType::try_from(*drain_type) == Ok(DrainType::ModifyOnly);
        let direction = errs
            .take(direction(path, *traffic_direction))
            .unwrap_or(Direction::Unspecified);
        let buffer_limit = u32_or(
            per_connection_buffer_limit_bytes,
            super::cluster::DEFAULT_BUFFER_LIMIT,
        );
        let lfilters =
            errs.take(error::all(listener_filters.iter().enumerate().map(
                |(i, lf)| listener_filter(&path.field("listener_filters").index(i), lf),
            )));
        let chains = errs.take(Self::chains(
            path,
            (filter_chains, default_filter_chain),
            &name,
            lfilters.as_deref(),
            cx,
            buffer_limit,
        ));
        let lf_timeout = errs.take(
            opt_duration(path, "listener_filters_timeout", listener_filters_timeout).map(
                |t| match t {
                    None => Some(DEFAULT_LISTENER_FILTERS_TIMEOUT),
                    Some(Duration::ZERO) => None,
                    Some(t) => Some(t),
                },
            ),
        );
        let (((address, lfilters), (chains, default_chain)), lf_timeout) =
            errs.finish_some(address.zip(lfilters).zip(chains).zip(lf_timeout))?;
        Ok(Self {
            bypass_overload_manager: *bypass_overload_manager,
            access_logs,
            connection_limit: rt.u64(&format!(
                "envoy.resource_limits.listener.{name}.connection_limit"
            )),
            name,
            address,
            stat_prefix: (!stat_prefix.is_empty()).then(|| stat_prefix.clone()),
            filter_chains: chains,
            default_filter_chain: default_chain,
            listener_filters: lfilters,
            listener_filters_timeout: lf_timeout,
            continue_on_listener_filters_timeout: *continue_on_listener_filters_timeout,
            per_connection_buffer_limit_bytes: buffer_limit,
            reuse_port: enable_reuse_port.as_ref().map(|b| b.value).unwrap_or(true) || *reuse_port,
            tcp_keepalive: tcp_keepalive.as_ref().map(keepalive),
            direction,
            modify_only_drain,
        })
    }

    /// The filter chains and the default one. Every chain is translated, so that one report
    /// names the problems of all of them. `lfilters`: the listener filters, when they translated.
    fn chains(
        path: &FieldPath,
        (filter_chains, default_filter_chain): (
            &[pb::listener::FilterChain],
            &Option<pb::listener::FilterChain>,
        ),
        name: &str,
        lfilters: Option<&[ListenerFilter]>,
        cx: &TranslateContext,
        buffer_limit: u32,
    ) -> Result<Chains> {
        let mut chains = Vec::with_capacity(filter_chains.len());
        let mut indices = Vec::with_capacity(filter_chains.len());
        let mut errs = Errors::new();
        for (i, fc) in filter_chains.iter().enumerate() {
            let fcp = path.field("filter_chains").index(i);
            let Some(chain) = errs.take(FilterChain::from_proto(&fcp, fc, cx, buffer_limit)) else {
                continue;
            };
            if let Some(k) = chains
                .iter()
                .position(|c: &Arc<FilterChain>| c.matcher == chain.matcher)
            {
                let j = indices[k];
                errs.push(fcp.error(format!(
                    "multiple filter chains with the same matching rules are defined (filter_chains[{j}] and filter_chains[{i}]) in listener {name}"
                )));
                continue;
            }
            if chain.needs_tls_inspector()
                && lfilters.is_some_and(|l| !l.contains(&ListenerFilter::TlsInspector))
                && chain.matcher.transport_protocol.as_deref() != Some("raw_buffer")
            {
                // Envoy only warns here; a chain matching on SNI or ALPN never matches without the inspector.
                tracing::warn!(listener = %name, "filter_chains[{i}] matches on server names or application protocols but the listener has no tls_inspector");
            }
            chains.push(Arc::new(chain));
            indices.push(i);
        }
        let default_chain = default_filter_chain.as_ref().and_then(|fc| {
            errs.take(FilterChain::from_proto(
                &path.field("default_filter_chain"),
                fc,
                cx,
                buffer_limit,
            ))
            .map(Arc::new)
        });
        errs.finish()?;
        if chains.is_empty() && default_chain.is_none() {
            return Err(path
                .field("filter_chains")
                .error(format!("no filter chains specified for listener {name}")));
        }
        Ok((chains, default_chain))
    }

    /// Envoy's filter chain selection; `None`: no chain (the connection is closed, `NR`).
    pub fn select_chain(&self, c: &ConnectionFacts<'_>) -> Option<&Arc<FilterChain>> {
        select(&self.filter_chains, c).or(self.default_filter_chain.as_ref())
    }
}

/// A listener's filter chains and its default one.
type Chains = (Vec<Arc<FilterChain>>, Option<Arc<FilterChain>>);

/// The address a listener binds: an IP address and port.
fn listener_address(path: &FieldPath, address: &Option<pb::core::Address>) -> Result<SocketAddr> {
    let ap = path.field("address");
    let hp = socket_address(&ap, address)?;
    let ip = hp.ip().ok_or_else(|| {
        ap.field("socket_address").field("address").error(format!(
            "'{}' is not an IP address (listeners bind to IP addresses)",
            hp.host
        ))
    })?;
    Ok(SocketAddr::new(ip, hp.port))
}

fn direction(path: &FieldPath, value: i32) -> Result<Direction> {
    use pb::core::TrafficDirection as T;
    Ok(
        match enum_value::<T>(path, "traffic_direction", value, |_| true)? {
            T::Unspecified => Direction::Unspecified,
            T::Inbound => Direction::Inbound,
            T::Outbound => Direction::Outbound,
        },
    )
}

/// `listener.0.0.0.0_10000.` as Envoy names listener stats.
pub fn stat_address(a: &SocketAddr) -> String {
    match a {
        SocketAddr::V4(v4) => format!("{}_{}", v4.ip(), v4.port()),
        SocketAddr::V6(v6) => format!("[{}]_{}", v6.ip(), v6.port()),
    }
}

fn listener_filter(path: &FieldPath, lf: &pb::listener::ListenerFilter) -> Result<ListenerFilter> {
    use pb::listener::listener_filter::ConfigType;
    let pb::listener::ListenerFilter {
        name,
        filter_disabled,
        config_type,
    } = lf;
    deny(path, "filter_disabled", filter_disabled)?;
    let type_name = match config_type {
        Some(ConfigType::TypedConfig(any)) => any_type(any).to_string(),
        Some(ConfigType::ConfigDiscovery(_)) => return Err(path.unsupported("config_discovery")),
        None => return Err(path.error(super::hcm::no_typed_config(name))),
    };
    let tp = path.field("typed_config");
    match type_name.as_str() {
        TLS_INSPECTOR => {
            if let Some(ConfigType::TypedConfig(any)) = config_type {
                let t: envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector = decode_any(&tp, any)?;
                let envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector {
                    enable_ja3_fingerprinting,
                    enable_ja4_fingerprinting,
                    initial_read_buffer_size,
                    close_connection_on_client_hello_parsing_errors,
                    max_client_hello_size,
                } = &t;
                let _ = initial_read_buffer_size; // a read-size hint; remora reads what the ClientHello needs
                let mut errs = Errors::new();
                errs.check([
                    deny(
                        &tp,
                        "enable_ja3_fingerprinting",
                        &enable_ja3_fingerprinting.as_ref().filter(|b| b.value),
                    ),
                    deny(
                        &tp,
                        "enable_ja4_fingerprinting",
                        &enable_ja4_fingerprinting.as_ref().filter(|b| b.value),
                    ),
                    deny(
                        &tp,
                        "close_connection_on_client_hello_parsing_errors",
                        close_connection_on_client_hello_parsing_errors,
                    ),
                    deny(&tp, "max_client_hello_size", max_client_hello_size),
                ]);
                errs.finish()?;
            }
            Ok(ListenerFilter::TlsInspector)
        }
        HTTP_INSPECTOR => {
            if let Some(ConfigType::TypedConfig(any)) = config_type {
                let envoy_types::pb::envoy::extensions::filters::listener::http_inspector::v3::HttpInspector {} = decode_any(&tp, any)?;
            }
            Ok(ListenerFilter::HttpInspector)
        }
        other => Err(tp
            .field("@type")
            .error(format!("listener filter {other} is not supported"))),
    }
}

// === impl FilterChain ===

impl FilterChain {
    fn from_proto(
        path: &FieldPath,
        fc: &pb::listener::FilterChain,
        cx: &TranslateContext,
        buffer_limit: u32,
    ) -> Result<Self> {
        let pb::listener::FilterChain {
            filter_chain_match,
            filters,
            use_proxy_proto,
            metadata,
            transport_socket,
            transport_socket_connect_timeout,
            name,
        } = fc;
        super::core::metadata_ok(metadata);
        let mut errs = Errors::new();
        errs.check([deny(path, "use_proxy_proto", use_proxy_proto)]);
        let tls = errs.take(super::tls::downstream_socket(
            &path.field("transport_socket"),
            transport_socket,
            cx,
        ));
        let handshake_timeout = errs.or_default(opt_duration(
            path,
            "transport_socket_connect_timeout",
            transport_socket_connect_timeout,
        ));
        let matcher = errs.take(match filter_chain_match {
            Some(m) => filter_chain_match_from(&path.field("filter_chain_match"), m),
            None => Ok(FilterChainMatch::any()),
        });
        let filters = errs.take(network_filters(
            &path.field("filters"),
            filters,
            cx,
            buffer_limit,
        ));
        let ((tls, matcher), (terminal, filters)) =
            errs.finish_some(tls.zip(matcher).zip(filters))?;
        // The exchange is built for tcp_proxy chains; in front of an HTTP connection manager it
        // is inert as long as TLS cannot negotiate its protocol (istiod's HTTP chains offer
        // h2 and http/1.1 only).
        let mx = filters.iter().find_map(|f| match f {
            NetworkFilter::MetadataExchange(m) => Some(m),
            _ => None,
        });
        if let (Some(m), NetworkTerminal::Http(_), Some(t)) = (mx, &terminal, &tls)
            && t.config
                .alpn_protocols
                .iter()
                .any(|p| p == m.protocol.as_bytes())
        {
            return Err(path.field("filters").error(format!(
                "metadata exchange before http_connection_manager with a TLS context offering '{}' is not supported",
                m.protocol
            )));
        }
        Ok(Self {
            name: name.clone(),
            matcher,
            tls,
            handshake_timeout,
            filters,
            fingerprint: {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                prost::Message::encode_to_vec(fc).hash(&mut h);
                h.finish()
            },
            terminal,
        })
    }

    fn needs_tls_inspector(&self) -> bool {
        !self.matcher.server_names.is_empty()
            || !self.matcher.application_protocols.is_empty()
            || self.matcher.transport_protocol.as_deref() == Some("tls")
    }
}

/// One network filter of a chain: the terminal one, or one in front of it.
enum Translated {
    Terminal(NetworkTerminal),
    Filter(Vec<NetworkFilter>),
}

/// A chain's network filters: the terminal one, and those in front of it in order. Every
/// filter is translated, so that one report names the problems of all of them.
fn network_filters(
    path: &FieldPath,
    filters: &[pb::listener::Filter],
    cx: &TranslateContext,
    buffer_limit: u32,
) -> Result<(NetworkTerminal, Vec<NetworkFilter>)> {
    if filters.is_empty() {
        return Err(path.error("at least one network filter is required"));
    }
    let mut errs = Errors::new();
    let mut terminal = None;
    let mut before = Vec::new();
    for (i, f) in filters.iter().enumerate() {
        let last = i + 1 == filters.len();
        match errs.take(network_filter(&path.index(i), f, last, cx, buffer_limit)) {
            Some(Translated::Terminal(t)) => terminal = Some(t),
            Some(Translated::Filter(f)) => before.extend(f),
            None => {}
        }
    }
    errs.finish()?;
    let terminal = terminal.ok_or_else(|| {
        path.error("the last network filter must be http_connection_manager or tcp_proxy")
    })?;
    Ok((terminal, before))
}

fn network_filter(
    fp: &FieldPath,
    f: &pb::listener::Filter,
    last: bool,
    cx: &TranslateContext,
    buffer_limit: u32,
) -> Result<Translated> {
    use pb::listener::filter::ConfigType;
    let rt = &*cx.runtime;
    let pb::listener::Filter { name, config_type } = f;
    let any = match config_type {
        Some(ConfigType::TypedConfig(any)) => any,
        Some(ConfigType::ConfigDiscovery(_)) => return Err(fp.unsupported("config_discovery")),
        None => return Err(fp.error(super::hcm::no_typed_config(name))),
    };
    let tp = fp.field("typed_config");
    let t = match any_type(any) {
        HCM_TYPE => NetworkTerminal::Http(Arc::new(HttpConnectionManager::from_proto(
            &tp,
            &decode_any(&tp, any)?,
            rt,
            buffer_limit,
            &cx.inputs,
        )?)),
        TCP_PROXY_TYPE => NetworkTerminal::Tcp(Arc::new(TcpProxy::from_proto(
            &tp,
            &decode_any(&tp, any)?,
            rt,
            &cx.inputs,
        )?)),
        METADATA_EXCHANGE_TYPE if !last => {
            let mx = Arc::new(metadata_exchange(&tp, any)?);
            return Ok(Translated::Filter(vec![
                NetworkFilter::Noop(super::hcm::NoopFilter {
                    name: name.clone(),
                    type_name: METADATA_EXCHANGE_TYPE,
                    short: "metadata_exchange_discovery",
                    reason: super::hcm::PEER_DISCOVERY_LATER,
                }),
                NetworkFilter::MetadataExchange(mx),
            ]));
        }
        super::local_ratelimit::NETWORK_TYPE if !last => {
            let c = super::local_ratelimit::NetworkLocalRateLimit::from_any(&tp, any)?;
            return Ok(Translated::Filter(vec![NetworkFilter::LocalRateLimit(
                Arc::new(c),
            )]));
        }
        super::rbac::NETWORK_RBAC_TYPE if !last => {
            return Ok(Translated::Filter(vec![NetworkFilter::Rbac(Arc::new(
                super::rbac::NetworkRbac::from_any(&tp, any)?,
            ))]));
        }
        super::hcm::ISTIO_STATS_TYPE if !last => {
            let c = super::istio_stats::IstioStats::from_any(&tp, any)?;
            return Ok(Translated::Filter(vec![NetworkFilter::IstioStats(
                Arc::new(c),
            )]));
        }
        other => {
            return Err(tp
                .field("@type")
                .error(format!("network filter {other} is not supported")));
        }
    };
    if !last {
        return Err(fp.error(format!(
            "terminal filter named {name} must be the last filter in a network filter chain"
        )));
    }
    Ok(Translated::Terminal(t))
}

pub(super) fn cidrs(path: &FieldPath, ranges: &[pb::core::CidrRange]) -> Result<Vec<Cidr>> {
    ranges
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let rp = path.index(i);
            let pb::core::CidrRange {
                address_prefix,
                prefix_len,
            } = r;
            let addr: IpAddr = address_prefix.parse().map_err(|_| {
                rp.field("address_prefix")
                    .error(format!("'{address_prefix}' is not an IP address"))
            })?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let len = u32_or(prefix_len, 0);
            if len > max {
                return Err(rp
                    .field("prefix_len")
                    .error(format!("must be at most {max}")));
            }
            Ok(Cidr {
                addr,
                len: len as u8,
            })
        })
        .collect()
}

fn filter_chain_match_from(
    path: &FieldPath,
    m: &pb::listener::FilterChainMatch,
) -> Result<FilterChainMatch> {
    use pb::listener::filter_chain_match::ConnectionSourceType as S;
    let pb::listener::FilterChainMatch {
        destination_port,
        prefix_ranges,
        address_suffix,
        suffix_len,
        direct_source_prefix_ranges,
        source_type,
        source_prefix_ranges,
        source_ports,
        server_names,
        transport_protocol,
        application_protocols,
    } = m;
    let mut errs = Errors::new();
    errs.check([
        deny(path, "address_suffix", address_suffix),
        deny(path, "suffix_len", suffix_len),
    ]);
    let source_type = errs.take(match S::try_from(*source_type) {
        Ok(S::Any) => Ok(SourceType::Any),
        Ok(S::SameIpOrLoopback) => Ok(SourceType::SameIpOrLoopback),
        Ok(S::External) => Ok(SourceType::External),
        Err(_) => Err(path
            .field("source_type")
            .error(format!("unknown value {source_type}"))),
    });
    let port = |p: u32, f: &str| {
        u16::try_from(p)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| path.field(f).error("must be between 1 and 65535"))
    };
    let destination_port = errs.or_default(
        destination_port
            .as_ref()
            .map(|p| port(p.value, "destination_port"))
            .transpose(),
    );
    let source_ports = errs.or_default(
        source_ports
            .iter()
            .map(|p| port(*p, "source_ports"))
            .collect::<Result<Vec<_>>>(),
    );
    for (i, n) in server_names.iter().enumerate() {
        if n.contains('*') && !n.starts_with("*.") {
            errs.push(path.field("server_names").index(i).error(format!(
                "partial wildcards are not supported in \"server_names\": '{n}'"
            )));
        }
    }
    let prefix_ranges = errs.or_default(cidrs(&path.field("prefix_ranges"), prefix_ranges));
    let direct_source_prefix_ranges = errs.or_default(cidrs(
        &path.field("direct_source_prefix_ranges"),
        direct_source_prefix_ranges,
    ));
    let source_prefix_ranges = errs.or_default(cidrs(
        &path.field("source_prefix_ranges"),
        source_prefix_ranges,
    ));
    let source_type = errs.finish_some(source_type)?;
    Ok(FilterChainMatch {
        destination_port,
        prefix_ranges,
        server_names: server_names
            .iter()
            .map(|s| s.to_ascii_lowercase())
            .collect(),
        transport_protocol: (!transport_protocol.is_empty()).then(|| transport_protocol.clone()),
        application_protocols: application_protocols.clone(),
        direct_source_prefix_ranges,
        source_type,
        source_prefix_ranges,
        source_ports,
    })
}

// === filter chain selection ===

impl FilterChainMatch {
    pub fn any() -> Self {
        FilterChainMatch {
            destination_port: None,
            prefix_ranges: vec![],
            server_names: vec![],
            transport_protocol: None,
            application_protocols: vec![],
            direct_source_prefix_ranges: vec![],
            source_type: SourceType::Any,
            source_prefix_ranges: vec![],
            source_ports: vec![],
        }
    }
}

/// The longest prefix among `ranges` containing `ip` (`None`: no range contains it).
fn best_prefix(ranges: &[Cidr], ip: IpAddr) -> Option<u8> {
    ranges
        .iter()
        .filter(|r| r.contains(ip))
        .map(|r| r.len)
        .max()
}

/// Server-name specificity: exact match beats the longest wildcard (`*.a.b` beats `*.b`).
fn server_name_score(names: &[String], sni: Option<&str>) -> Option<usize> {
    let sni = sni?;
    let sni = sni.to_ascii_lowercase();
    names
        .iter()
        .filter_map(|n| {
            if *n == sni {
                Some(usize::MAX)
            } else if let Some(suffix) = n.strip_prefix('*') {
                (sni.len() > suffix.len() && sni.ends_with(suffix)).then_some(suffix.len())
            } else {
                None
            }
        })
        .max()
}

fn is_loopback_or_same(c: &ConnectionFacts<'_>) -> bool {
    c.remote.ip().is_loopback() || c.remote.ip() == c.local.ip()
}

/// Keep the candidates that match this stage most specifically; if none has a criterion at this
/// stage that matches, keep the ones without a criterion.
fn stage<F>(cands: Vec<&Arc<FilterChain>>, score: F) -> Vec<&Arc<FilterChain>>
where
    F: Fn(&FilterChainMatch) -> Option<Option<usize>>,
{
    // score: None = no criterion at this stage; Some(None) = criterion, no match; Some(Some(s)) = match with specificity s.
    let best = cands
        .iter()
        .filter_map(|c| score(&c.matcher).flatten())
        .max();
    match best {
        Some(b) => cands
            .into_iter()
            .filter(|c| score(&c.matcher) == Some(Some(b)))
            .collect(),
        None => cands
            .into_iter()
            .filter(|c| score(&c.matcher).is_none())
            .collect(),
    }
}

fn select<'a>(
    chains: &'a [Arc<FilterChain>],
    c: &ConnectionFacts<'_>,
) -> Option<&'a Arc<FilterChain>> {
    let mut cands: Vec<&Arc<FilterChain>> = chains.iter().collect();
    cands = stage(cands, |m| {
        m.destination_port
            .map(|p| (p == c.local.port()).then_some(0))
    });
    cands = stage(cands, |m| {
        (!m.prefix_ranges.is_empty())
            .then(|| best_prefix(&m.prefix_ranges, c.local.ip()).map(|l| l as usize))
    });
    cands = stage(cands, |m| {
        (!m.server_names.is_empty()).then(|| server_name_score(&m.server_names, c.server_name))
    });
    cands = stage(cands, |m| {
        m.transport_protocol
            .as_ref()
            .map(|t| (t == c.transport_protocol).then_some(0))
    });
    cands = stage(cands, |m| {
        (!m.application_protocols.is_empty()).then(|| {
            m.application_protocols
                .iter()
                .any(|p| c.application_protocols.iter().any(|a| **a == **p))
                .then_some(0)
        })
    });
    cands = stage(cands, |m| {
        (!m.direct_source_prefix_ranges.is_empty())
            .then(|| best_prefix(&m.direct_source_prefix_ranges, c.remote.ip()).map(|l| l as usize))
    });
    cands = stage(cands, |m| match m.source_type {
        SourceType::Any => None,
        SourceType::SameIpOrLoopback => Some(is_loopback_or_same(c).then_some(0)),
        SourceType::External => Some((!is_loopback_or_same(c)).then_some(0)),
    });
    cands = stage(cands, |m| {
        (!m.source_prefix_ranges.is_empty())
            .then(|| best_prefix(&m.source_prefix_ranges, c.remote.ip()).map(|l| l as usize))
    });
    cands = stage(cands, |m| {
        (!m.source_ports.is_empty()).then(|| m.source_ports.contains(&c.remote.port()).then_some(0))
    });
    cands.into_iter().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(name: &str, m: FilterChainMatch) -> Arc<FilterChain> {
        Arc::new(FilterChain {
            name: name.into(),
            matcher: m,
            tls: None,
            handshake_timeout: None,
            filters: vec![],
            fingerprint: 0,
            terminal: NetworkTerminal::Tcp(Arc::new(TcpProxy {
                stat_prefix: "t".into(),
                cluster: super::super::tcp_proxy::TcpCluster::Name("c".into()),
                idle_timeout: None,
                max_connect_attempts: 1,
                max_downstream_connection_duration: None,
                access_logs: vec![],
            })),
        })
    }

    fn facts<'a>(
        local: &str,
        remote: &str,
        sni: Option<&'a str>,
        tp: &'a str,
    ) -> ConnectionFacts<'a> {
        ConnectionFacts {
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
            server_name: sni,
            transport_protocol: tp,
            application_protocols: &[],
        }
    }

    #[test]
    fn most_specific_chain_wins_stage_by_stage() {
        let chains = vec![
            chain("any", FilterChainMatch::any()),
            chain(
                "port",
                FilterChainMatch {
                    destination_port: Some(8080),
                    ..FilterChainMatch::any()
                },
            ),
            chain(
                "port+net",
                FilterChainMatch {
                    destination_port: Some(8080),
                    prefix_ranges: vec![Cidr {
                        addr: "10.0.0.0".parse().unwrap(),
                        len: 8,
                    }],
                    ..FilterChainMatch::any()
                },
            ),
            chain(
                "sni",
                FilterChainMatch {
                    server_names: vec!["a.example.com".into()],
                    ..FilterChainMatch::any()
                },
            ),
            chain(
                "wild",
                FilterChainMatch {
                    server_names: vec!["*.example.com".into()],
                    ..FilterChainMatch::any()
                },
            ),
            chain(
                "tls",
                FilterChainMatch {
                    transport_protocol: Some("tls".into()),
                    ..FilterChainMatch::any()
                },
            ),
            chain(
                "src",
                FilterChainMatch {
                    source_prefix_ranges: vec![Cidr {
                        addr: "192.168.0.0".parse().unwrap(),
                        len: 16,
                    }],
                    ..FilterChainMatch::any()
                },
            ),
        ];
        let name = |f: ConnectionFacts<'_>| select(&chains, &f).map(|c| c.name.clone());
        assert_eq!(
            name(facts("10.1.1.1:8080", "1.1.1.1:1", None, "raw_buffer")).unwrap(),
            "port+net"
        );
        assert_eq!(
            name(facts("11.1.1.1:8080", "1.1.1.1:1", None, "raw_buffer")).unwrap(),
            "port"
        );
        assert_eq!(
            name(facts(
                "11.1.1.1:9090",
                "1.1.1.1:1",
                Some("a.example.com"),
                "tls"
            ))
            .unwrap(),
            "sni"
        );
        assert_eq!(
            name(facts(
                "11.1.1.1:9090",
                "1.1.1.1:1",
                Some("b.example.com"),
                "tls"
            ))
            .unwrap(),
            "wild"
        );
        assert_eq!(
            name(facts(
                "11.1.1.1:9090",
                "1.1.1.1:1",
                Some("other.org"),
                "tls"
            ))
            .unwrap(),
            "tls"
        );
        assert_eq!(
            name(facts("11.1.1.1:9090", "192.168.1.1:1", None, "raw_buffer")).unwrap(),
            "src"
        );
        assert_eq!(
            name(facts("11.1.1.1:9090", "1.1.1.1:1", None, "raw_buffer")).unwrap(),
            "any"
        );
        let only = vec![chain(
            "port",
            FilterChainMatch {
                destination_port: Some(1),
                ..FilterChainMatch::any()
            },
        )];
        assert!(select(&only, &facts("1.1.1.1:2", "1.1.1.1:3", None, "raw_buffer")).is_none());
    }

    fn translate(yaml: &str) -> Result<Listener> {
        let path = FieldPath::new("Listener 'l'");
        let l: pb::listener::Listener =
            crate::config::decode_yaml("envoy.config.listener.v3.Listener", yaml, &path);
        let cx = TranslateContext::for_tests();
        Listener::from_proto(&path, &l, &cx)
    }

    /// A `drain_type` value Envoy does not know drains as DEFAULT (Envoy accepts it).
    #[test]
    fn unknown_drain_type_is_default() {
        let tcp = "{name: t, typed_config: {'@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: t, cluster: c}}";
        let yaml = |drain: &str| {
            format!(
                "{{name: l, address: {{socket_address: {{address: 127.0.0.1, port_value: 1}}}}, drain_type: {drain}, filter_chains: [{{filters: [{tcp}]}}]}}"
            )
        };
        assert!(!translate(&yaml("7")).unwrap().modify_only_drain);
        assert!(translate(&yaml("MODIFY_ONLY")).unwrap().modify_only_drain);
    }

    /// One translation names every problem: each chain's network filters, the listener
    /// filters and the listener's own fields.
    #[test]
    fn every_error_of_a_listener() {
        let tcp = "{name: t, typed_config: {'@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: t, cluster: c}}";
        let bad_tcp = "{name: t, typed_config: {'@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, cluster: c, max_connect_attempts: 0}}";
        let e = translate(&format!(
            r#"
name: l
address: {{socket_address: {{address: 127.0.0.1, port_value: 1}}}}
freebind: true
listener_filters:
- {{name: x, typed_config: {{'@type': type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector}}, filter_disabled: {{destination_port_range: {{start: 1, end: 2}}}}}}
filter_chains:
- filter_chain_match: {{destination_port: 1}}
  filters: [{bad_tcp}, {tcp}]
- filter_chain_match: {{destination_port: 2}}
  filters: [{tcp}, {bad_tcp}]
"#
        ))
        .unwrap_err();
        let paths = e.paths();
        assert_eq!(
            paths,
            [
                "Listener 'l'.freebind",
                "Listener 'l'.listener_filters[0].filter_disabled",
                "Listener 'l'.filter_chains[0].filters[0].typed_config.stat_prefix",
                "Listener 'l'.filter_chains[0].filters[0].typed_config.max_connect_attempts",
                "Listener 'l'.filter_chains[1].filters[0]",
                "Listener 'l'.filter_chains[1].filters[1].typed_config.stat_prefix",
                "Listener 'l'.filter_chains[1].filters[1].typed_config.max_connect_attempts",
            ],
            "{e}"
        );
    }

    #[test]
    fn cidr_contains() {
        let c = Cidr {
            addr: "10.0.0.0".parse().unwrap(),
            len: 8,
        };
        assert!(c.contains("10.255.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(
            Cidr {
                addr: "::".parse().unwrap(),
                len: 0
            }
            .contains("2001:db8::1".parse().unwrap())
        );
    }
}
