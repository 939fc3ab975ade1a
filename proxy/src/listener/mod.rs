//! Listeners: binding (one SO_REUSEPORT socket per worker, or one shared socket), accepting,
//! listener filters (TLS and HTTP inspectors), Envoy's filter-chain selection, and handing the
//! connection to its network filter (HTTP connection manager or tcp_proxy).

pub mod http_inspector;
pub mod manager;
pub mod tls_inspector;

use crate::context::ServerContext;
use crate::http::conn_manager::{ConnectionManager, DownstreamConn};
use crate::io::Split;
use crate::model::listener::{ConnectionFacts, Listener, ListenerFilter, NetworkTerminal};
use crate::stream_info::{ConnectionInfo, ResponseFlags, StreamInfo};
use crate::tcp::proxy::TcpProxyFilter;
use crate::telemetry::access_log::{AccessLogger, filter_input};
use crate::telemetry::format::FormatContext;
use crate::telemetry::stats::{Counter, Gauge, Histogram, Store};
use crate::transport_sockets::tls::{self, TlsStats};
use crate::upstream::cluster::ClusterManager;
use bytes::BytesMut;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Instant, SystemTime};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::Instrument;

static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

/// `listener.<address or stat_prefix>.*`
#[derive(Debug)]
pub struct ListenerStats {
    pub downstream_cx_total: Arc<Counter>,
    pub downstream_cx_active: Arc<Gauge>,
    pub downstream_cx_destroy: Arc<Counter>,
    pub downstream_cx_length_ms: Arc<Histogram>,
    pub downstream_cx_overflow: Arc<Counter>,
    pub downstream_pre_cx_active: Arc<Gauge>,
    pub downstream_pre_cx_timeout: Arc<Counter>,
    pub no_filter_chain_match: Arc<Counter>,
    pub downstream_global_cx_overflow: Arc<Counter>,
}

impl ListenerStats {
    fn new(store: &Store, name: &str) -> Self {
        let c = |n: &str| store.counter(&format!("listener.{name}.{n}"));
        let g = |n: &str| store.gauge(&format!("listener.{name}.{n}"));
        Self {
            downstream_cx_total: c("downstream_cx_total"),
            downstream_cx_active: g("downstream_cx_active"),
            downstream_cx_destroy: c("downstream_cx_destroy"),
            downstream_cx_length_ms: store
                .histogram(&format!("listener.{name}.downstream_cx_length_ms")),
            downstream_cx_overflow: c("downstream_cx_overflow"),
            downstream_pre_cx_active: g("downstream_pre_cx_active"),
            downstream_pre_cx_timeout: c("downstream_pre_cx_timeout"),
            no_filter_chain_match: c("no_filter_chain_match"),
            downstream_global_cx_overflow: c("downstream_global_cx_overflow"),
        }
    }
}

/// `tls_inspector.*` and `http_inspector.*` (Envoy's listener-filter stats, shared by listeners).
#[derive(Debug)]
struct InspectorStats {
    tls_found: Arc<Counter>,
    tls_not_found: Arc<Counter>,
    sni_found: Arc<Counter>,
    sni_not_found: Arc<Counter>,
    alpn_found: Arc<Counter>,
    alpn_not_found: Arc<Counter>,
    http10_found: Arc<Counter>,
    http11_found: Arc<Counter>,
    http2_found: Arc<Counter>,
    http_not_found: Arc<Counter>,
}

impl InspectorStats {
    fn new(store: &Store) -> Self {
        let t = |n: &str| store.counter(&format!("tls_inspector.{n}"));
        let h = |n: &str| store.counter(&format!("http_inspector.{n}"));
        Self {
            tls_found: t("tls_found"),
            tls_not_found: t("tls_not_found"),
            sni_found: t("sni_found"),
            sni_not_found: t("sni_not_found"),
            alpn_found: t("alpn_found"),
            alpn_not_found: t("alpn_not_found"),
            http10_found: h("http10_found"),
            http11_found: h("http11_found"),
            http2_found: h("http2_found"),
            http_not_found: h("http_not_found"),
        }
    }
}

/// A filter chain's network filter, built.
pub enum Terminal {
    Http(Arc<ConnectionManager>),
    Tcp(Arc<TcpProxyFilter>),
}

/// A filter chain at runtime: its configuration (transport socket) and its network filter.
pub struct ActiveChain {
    pub config: Arc<crate::model::listener::FilterChain>,
    terminal: Terminal,
    /// Turns true when this chain's connections should finish and close (the listener drains,
    /// or a new version of the listener no longer has this chain). Shared with the same chain
    /// in earlier versions of the listener, whose connections live on.
    drain: Arc<watch::Sender<bool>>,
    /// Turns true at the drain deadline: the chain's remaining connections are closed.
    close: Arc<watch::Sender<bool>>,
    /// Istio's metadata exchange: the protocol it runs for, and this workload's frame.
    mx: Option<(Arc<crate::model::listener::MetadataExchange>, bytes::Bytes)>,
    /// The network filters before the terminal one (empty: none run).
    network: Vec<Arc<dyn crate::filters::network::NetworkFilterFactory>>,
}

/// A listener at runtime.
pub struct ActiveListener {
    pub config: Arc<Listener>,
    chains: Vec<ActiveChain>,
    default_chain: Option<ActiveChain>,
    pub stats: ListenerStats,
    pub origin: ListenerOrigin,
    /// `listener.<address>.ssl.*`, when a filter chain terminates TLS.
    pub ssl: Option<TlsStats>,
    access_logs: Vec<AccessLogger>,
    inspector_stats: Option<InspectorStats>,
    /// `metadata_exchange.*`, when a chain runs Istio's metadata exchange.
    mx_stats: Option<crate::filters::network::metadata_exchange::MxStats>,
    pub local_address: SocketAddr,
    /// The server context (the overload manager's connection count).
    server: Arc<ServerContext>,
    /// The bound sockets (one per worker with reuse_port, else one); workers accept on
    /// duplicates, and a replacement listener on the same address inherits them.
    bound: std::sync::Mutex<Vec<std::net::TcpListener>>,
    pub stop: watch::Sender<bool>,
}

impl std::fmt::Debug for ActiveListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActiveListener")
            .field("name", &self.config.name)
            .field("address", &self.local_address)
            .finish()
    }
}

/// Where a listener came from: the bootstrap (by index) or LDS (`added_via_api`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerOrigin {
    Static(usize),
    Lds,
}

// === impl ListenerOrigin ===

impl std::fmt::Display for ListenerOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Static(i) => write!(f, "static_resources.listeners[{i}]"),
            Self::Lds => f.write_str("LDS"),
        }
    }
}

/// Why a listener could not be started.
#[derive(Debug, thiserror::Error)]
#[error("listener '{name}' ({origin}): {} '{address}': {source}", stage.doing())]
pub struct BindError {
    pub name: String,
    pub origin: ListenerOrigin,
    pub stage: StartStage,
    pub address: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// What failed when a listener started: its sockets, or an access log it (or one of its filter
/// chains) writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartStage {
    Bind,
    AccessLog,
}

impl StartStage {
    fn doing(self) -> &'static str {
        match self {
            Self::Bind => "cannot bind",
            Self::AccessLog => "cannot open an access log for",
        }
    }
}

fn bind(addr: SocketAddr, reuse_port: bool) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    if reuse_port {
        sock.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    sock.set_nonblocking(true)?;
    Ok(sock.into())
}

impl ActiveListener {
    /// Bind the listener's sockets (one per worker with `enable_reuse_port`) — or take over
    /// `inherit`'s when it listens on the same address — and build its filter chains.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: Arc<Listener>,
        origin: ListenerOrigin,
        workers: usize,
        cx: &Arc<ServerContext>,
        clusters: &Arc<ClusterManager>,
        inherit: Option<&ActiveListener>,
    ) -> Result<Arc<Self>, BindError> {
        let (store, local) = (&cx.store, &cx.local);
        let fail = |stage, address, source| BindError {
            name: config.name.clone(),
            origin,
            stage,
            address,
            source,
        };
        let err = |address, source| fail(StartStage::Bind, address, source);
        let log_err = |address, source| fail(StartStage::AccessLog, address, source);
        let sockets = match inherit.filter(|old| {
            old.config.address == config.address && old.config.reuse_port == config.reuse_port
        }) {
            Some(old) => old
                .bound
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|s| s.try_clone())
                .collect::<std::io::Result<Vec<_>>>()
                .map_err(|e| err(config.address, e))?,
            None => {
                let first =
                    bind(config.address, config.reuse_port).map_err(|e| err(config.address, e))?;
                let local_address = first.local_addr().map_err(|e| err(config.address, e))?;
                let mut sockets = vec![first];
                if config.reuse_port {
                    for _ in 1..workers {
                        sockets.push(bind(local_address, true).map_err(|e| err(local_address, e))?);
                    }
                }
                sockets
            }
        };
        let local_address = sockets[0]
            .local_addr()
            .map_err(|e| err(config.address, e))?;
        // `listener.<stat_prefix or bound address>.`: with port 0 the name carries the real port.
        let stat_name = config
            .stat_prefix
            .clone()
            .unwrap_or_else(|| crate::model::listener::stat_address(&local_address));
        let build =
            |fc: &Arc<crate::model::listener::FilterChain>| -> Result<ActiveChain, BindError> {
                let network = crate::filters::network::chain::build(
                    &fc.filters,
                    &crate::filters::network::chain::BuildCx {
                        server: cx,
                        clusters,
                        direction: config.direction,
                        tcp_cluster: match &fc.terminal {
                            NetworkTerminal::Tcp(t) => match &t.cluster {
                                crate::model::tcp_proxy::TcpCluster::Name(n) => Some(n),
                                _ => None,
                            },
                            _ => None,
                        },
                    },
                );
                let terminal = match &fc.terminal {
                    NetworkTerminal::Http(h) => Terminal::Http(Arc::new(
                        ConnectionManager::new(
                            h.clone(),
                            cx,
                            clusters.clone(),
                            &stat_name,
                            local_address.port(),
                            config.direction,
                        )
                        .map_err(|e| log_err(local_address, e))?,
                    )),
                    NetworkTerminal::Tcp(t) => Terminal::Tcp(Arc::new(
                        TcpProxyFilter::new(
                            t.clone(),
                            cx,
                            clusters.clone(),
                            config.per_connection_buffer_limit_bytes,
                        )
                        .map_err(|e| log_err(local_address, e))?,
                    )),
                };
                // The same chain in the version this one replaces: its connections stay, so they
                // drain with this version's chain.
                let same = inherit.and_then(|old| {
                    old.all_chains()
                        .find(|c| c.config.fingerprint == fc.fingerprint && !*c.drain.borrow())
                });
                if let Some(tls) = &fc.tls {
                    for source in tls.file_sources() {
                        cx.cert_watcher.watch(source);
                    }
                }
                let mx = fc.metadata_exchange().map(|m| {
                    let frame = crate::filters::network::metadata_exchange::frame(
                        &local.node,
                        &m.additional_labels,
                    );
                    (m.clone(), frame)
                });
                Ok(ActiveChain {
                    config: fc.clone(),
                    terminal,
                    mx,
                    network,
                    drain: same
                        .map_or_else(|| Arc::new(watch::channel(false).0), |c| c.drain.clone()),
                    close: same
                        .map_or_else(|| Arc::new(watch::channel(false).0), |c| c.close.clone()),
                })
            };
        let chains = config
            .filter_chains
            .iter()
            .map(&build)
            .collect::<Result<Vec<_>, _>>()?;
        let default_chain = config
            .default_filter_chain
            .as_ref()
            .map(build)
            .transpose()?;
        let has_tls = chains
            .iter()
            .chain(default_chain.iter())
            .any(|c| c.config.tls.is_some());
        let access_logs = config
            .access_logs
            .iter()
            .map(|l| AccessLogger::new(l.clone(), &cx.access_logs))
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(|e| log_err(local_address, e))?;
        let mx_stats = chains
            .iter()
            .chain(default_chain.iter())
            .any(|c| c.mx.is_some())
            .then(|| crate::filters::network::metadata_exchange::MxStats::new(store));
        Ok(Arc::new(Self {
            server: cx.clone(),
            mx_stats,
            origin,
            inspector_stats: (!config.listener_filters.is_empty())
                .then(|| InspectorStats::new(store)),
            access_logs,
            stats: ListenerStats::new(store, &stat_name),
            ssl: has_tls.then(|| {
                let ssl = TlsStats::new(store, &format!("listener.{stat_name}"));
                for tls in chains
                    .iter()
                    .chain(default_chain.iter())
                    .filter_map(|c| c.config.tls.as_ref())
                {
                    ssl.certificates(&tls.names, &tls.certificates, tls.trust.as_ref());
                }
                ssl
            }),
            config,
            chains,
            default_chain,
            local_address,
            bound: std::sync::Mutex::new(sockets),
            stop: watch::channel(false).0,
        }))
    }

    /// The route tables of its HTTP connection managers (listener warming waits for RDS).
    pub fn route_tables(&self) -> Vec<Arc<crate::xds::rds::RouteTable>> {
        self.chains
            .iter()
            .chain(self.default_chain.iter())
            .filter_map(|c| match &c.terminal {
                Terminal::Http(h) => Some(h.routes.clone()),
                Terminal::Tcp(_) => None,
            })
            .collect()
    }

    /// Whether every certificate and trusted CA its TLS contexts use is available (SDS secrets
    /// arrive after the listener is built: Envoy keeps such a listener warming).
    pub fn secrets_ready(&self) -> bool {
        self.config
            .filter_chains
            .iter()
            .chain(self.config.default_filter_chain.iter())
            .filter_map(|fc| fc.tls.as_ref())
            .all(|t| crate::model::tls::sources_ready(&t.certificates, &t.trust))
    }

    /// A duplicate of the socket worker `i` accepts on.
    pub fn socket_for(&self, worker: usize) -> std::io::Result<std::net::TcpListener> {
        let bound = self.bound.lock().unwrap_or_else(|e| e.into_inner());
        match bound.get(worker % bound.len().max(1)) {
            Some(s) => s.try_clone(),
            None => Err(std::io::Error::other("the listener is closed")),
        }
    }

    /// Stop accepting and let go of the sockets (the port closes once the accept loops end,
    /// unless a replacement listener took them over).
    pub fn shut(&self) {
        self.stop.send_replace(true);
        self.bound.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Accept connections on this worker until the listener stops.
    pub async fn accept_loop(self: Arc<Self>, socket: std::net::TcpListener) {
        let sock = match tokio::net::TcpListener::from_std(socket) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(listener = %self.config.name, "cannot register listener socket: {e}");
                return;
            }
        };
        let mut stop = self.stop.subscribe();
        loop {
            tokio::select! {
                r = sock.accept() => match r {
                    Ok((stream, remote)) => {
                        let l = self.clone();
                        tokio::spawn(async move { l.handle(stream, remote).await });
                    }
                    Err(e) => {
                        // EMFILE and friends: back off briefly instead of spinning.
                        tracing::warn!(listener = %self.config.name, "accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                },
                _ = stopped(&mut stop) => break,
            }
        }
    }

    async fn handle(self: Arc<Self>, stream: TcpStream, remote: SocketAddr) {
        // The overload manager's global limit (listeners with bypass_overload_manager aside).
        let global = &self.server.downstream;
        let counted = !self.config.bypass_overload_manager && global.limited();
        if counted && !global.try_acquire() {
            self.stats.downstream_global_cx_overflow.inc();
            return;
        }
        self.clone().serve_connection(stream, remote).await;
        if counted {
            global.release();
        }
    }

    /// A connection within the listener's limit gets its id at once, and everything logged
    /// about it from then on (accept, listener filters, chain selection, TLS, the network
    /// filter, close) carries it as Envoy's `[Tags: "ConnectionId":"N"]`.
    async fn serve_connection(self: Arc<Self>, stream: TcpStream, remote: SocketAddr) {
        if let Some(limit) = self.config.connection_limit
            && self.stats.downstream_cx_active.value() as u64 >= limit
        {
            self.stats.downstream_cx_overflow.inc();
            return;
        }
        let id = NEXT_CONNECTION_ID.fetch_add(1, Relaxed);
        let span = tracing::debug_span!(crate::logging::CONNECTION_SPAN, id);
        self.serve_accepted(stream, remote, id)
            .instrument(span)
            .await
    }

    async fn serve_accepted(self: Arc<Self>, mut stream: TcpStream, remote: SocketAddr, id: u64) {
        let stats = &self.stats;
        tracing::debug!(listener = %self.config.name, "new connection from {remote}");
        stats.downstream_cx_total.inc();
        stats.downstream_cx_active.inc();
        let opened = Instant::now();
        let _ = stream.set_nodelay(true);
        crate::upstream::pool::set_keepalive(&stream, &self.config.tcp_keepalive);
        let local = stream.local_addr().unwrap_or(self.local_address);

        // Listener filters.
        let mut prefix = BytesMut::new();
        stats.downstream_pre_cx_active.inc();
        let inspected = self.run_listener_filters(&mut stream, &mut prefix).await;
        stats.downstream_pre_cx_active.dec();
        let Some((server_name, transport, app_protocols)) = inspected else {
            let info = ConnectionInfo {
                id,
                local,
                remote,
                requested_server_name: None,
                application_protocols: Vec::new(),
                transport_protocol: "raw_buffer",
                tls: None,
            };
            self.log_connection(Arc::new(info), opened, ResponseFlags::empty(), None, None);
            self.closed(opened);
            return;
        };
        let facts = ConnectionFacts {
            local,
            remote,
            server_name: server_name.as_deref(),
            transport_protocol: transport,
            application_protocols: &app_protocols,
        };
        let chain = self.config.select_chain(&facts).and_then(|c| {
            match self
                .config
                .filter_chains
                .iter()
                .position(|x| Arc::ptr_eq(x, c))
            {
                Some(i) => self.chains.get(i),
                None => self.default_chain.as_ref(),
            }
        });
        let mut info = ConnectionInfo {
            id,
            local,
            remote,
            requested_server_name: server_name.map(String::into_boxed_str),
            application_protocols: app_protocols,
            transport_protocol: transport,
            tls: None,
        };
        let Some(chain) = chain else {
            stats.no_filter_chain_match.inc();
            tracing::debug!(listener = %self.config.name, %remote, "closing connection: no matching filter chain");
            let flags = ResponseFlags::NO_ROUTE_FOUND;
            self.log_connection(Arc::new(info), opened, flags, None, None);
            self.closed(opened);
            return;
        };
        match (&chain.config.tls, &self.ssl) {
            (Some(tls), Some(ssl)) => {
                let accepted = tls::accept(
                    tls,
                    ssl,
                    stream,
                    prefix.freeze(),
                    chain.config.handshake_timeout,
                )
                .await;
                match accepted {
                    // The SNI is the TLS inspector's (Envoy learns nothing of it from the
                    // handshake for %REQUESTED_SERVER_NAME%).
                    Ok((mut stream, tls_info)) => {
                        let mut prefix = BytesMut::new();
                        let mut peer = None;
                        if let Some((mx, ours)) = &chain.mx {
                            let stats = self
                                .mx_stats
                                .as_ref()
                                .expect("built when a chain runs the exchange");
                            if tls_info.alpn.as_deref() == Some(mx.protocol.as_str()) {
                                match crate::filters::network::metadata_exchange::exchange_peer(
                                    &mut stream,
                                    ours,
                                    std::time::Duration::from_secs(10),
                                    stats,
                                )
                                .await
                                {
                                    Ok((left, p)) => (prefix, peer) = (left, p),
                                    Err(e) => {
                                        tracing::debug!(listener = %self.config.name, %remote, "metadata exchange failed: {e}");
                                        info.tls = Some(Box::new(tls_info));
                                        self.log_connection(
                                            Arc::new(info),
                                            opened,
                                            ResponseFlags::empty(),
                                            None,
                                            None,
                                        );
                                        self.closed(opened);
                                        return;
                                    }
                                }
                            } else {
                                stats.alpn_protocol_not_found.inc();
                            }
                        }
                        info.tls = Some(Box::new(tls_info));
                        let info = Arc::new(info);
                        let closed = self
                            .dispatch(chain, info.clone(), stream, prefix, peer)
                            .await;
                        self.log_connection(info, opened, ResponseFlags::empty(), None, closed);
                    }
                    Err(failure) => {
                        let e = &failure.error;
                        tracing::debug!(listener = %self.config.name, %remote, "TLS handshake failed: {e}");
                        let reason = tls::failure_reason(e);
                        // What the handshake learnt before it failed (the version, the peer's
                        // certificate), as Envoy's connection-level log shows it.
                        info.tls = failure.info.map(Box::new);
                        self.log_connection(
                            Arc::new(info),
                            opened,
                            ResponseFlags::empty(),
                            Some(reason),
                            None,
                        );
                    }
                }
            }
            _ => {
                let info = Arc::new(info);
                let closed = self
                    .dispatch(chain, info.clone(), stream, prefix, None)
                    .await;
                self.log_connection(info, opened, ResponseFlags::empty(), None, closed);
            }
        }
        self.closed(opened);
    }

    /// Hand an established connection (plaintext or after the TLS handshake) to its network
    /// filters, then the terminal one.
    /// The connection lives until it ends, or until its chain's drain deadline. Returns the
    /// connection manager's local close reason, if any.
    async fn dispatch<S: Split>(
        &self,
        chain: &ActiveChain,
        info: Arc<ConnectionInfo>,
        stream: S,
        prefix: BytesMut,
        peer: Option<Arc<crate::telemetry::istio::Peer>>,
    ) -> Option<&'static str> {
        use crate::filters::network::chain::{Filtered, NetChain};
        let is_tls = info.tls.is_some();
        let mut close = chain.close.subscribe();
        let net = NetChain::create(&chain.network, &info);
        let serve = async {
            let Some(mut net) = net else {
                return self
                    .serve_terminal(chain, info, is_tls, stream, prefix, None)
                    .await;
            };
            let state = net.state();
            if let Some(p) = &peer {
                net.on_peer(p);
            }
            let admitted = async {
                net.on_new_connection().await?;
                if !prefix.is_empty() {
                    net.on_data(&prefix, false).await?;
                }
                Ok::<_, std::borrow::Cow<'static, str>>(())
            };
            match admitted.await {
                Ok(()) => {
                    let filtered = Filtered::new(stream, net);
                    let conn = info.clone();
                    let reason = self
                        .serve_terminal(chain, conn, is_tls, filtered, prefix, Some(&state))
                        .await;
                    // A connection manager has no log of a connection a filter closed.
                    if matches!(chain.terminal, Terminal::Http(_)) {
                        self.log_closed_by_filter(info, &state);
                    }
                    reason
                }
                Err(detail) => {
                    tracing::debug!(listener = %self.config.name, chain = %chain.config.name, "network filter closed the connection: {detail}");
                    match &chain.terminal {
                        Terminal::Tcp(tcp) => tcp.log_refused(info, &state),
                        Terminal::Http(_) => self.log_closed_by_filter(info, &state),
                    }
                    None
                }
            }
        };
        tokio::select! {
            reason = serve => reason,
            _ = stopped(&mut close) => {
                tracing::debug!(listener = %self.config.name, chain = %chain.config.name, "drain deadline: closing the connection");
                None
            }
        }
    }

    /// The terminal network filter on the connection. Returns why a connection manager closed
    /// it, when it did (its local close reason, for the listener's access log).
    async fn serve_terminal<S: Split>(
        &self,
        chain: &ActiveChain,
        info: Arc<ConnectionInfo>,
        is_tls: bool,
        stream: S,
        prefix: BytesMut,
        net: Option<&crate::filters::network::chain::SharedState>,
    ) -> Option<&'static str> {
        match &chain.terminal {
            Terminal::Http(hcm) => {
                let conn = DownstreamConn::new(info, is_tls);
                crate::http::server::serve(
                    hcm.clone(),
                    conn.clone(),
                    stream,
                    prefix,
                    chain.drain.subscribe(),
                )
                .await;
                conn.close_reason()
            }
            // Boxed, like HTTP/2: the idle HTTP/1.1 connection sets the size of this future.
            Terminal::Tcp(tcp) => {
                Box::pin(tcp.serve(info, stream, prefix.freeze(), net)).await;
                None
            }
        }
    }

    /// A listener access-log line for a connection a network filter closed (in front of a
    /// connection manager, which logs only requests).
    fn log_closed_by_filter(
        &self,
        conn: Arc<ConnectionInfo>,
        state: &crate::filters::network::chain::SharedState,
    ) {
        let st = state.lock().unwrap_or_else(|e| e.into_inner());
        let Some(detail) = st.closed.clone() else {
            return;
        };
        if self.access_logs.is_empty() {
            return;
        }
        let mut info = StreamInfo::new(conn);
        info.downstream_local_close_reason = Some(detail);
        info.connection_termination_details = st.termination_details.clone();
        info.dynamic_metadata = st.metadata.clone();
        info.set_flag(st.response_flags);
        info.last_downstream_tx = Some(Instant::now());
        let ctx = FormatContext {
            info: Some(&info),
            ..Default::default()
        };
        let input = filter_input(&info, None);
        for l in &self.access_logs {
            l.log(&ctx, &input);
        }
    }

    fn all_chains(&self) -> impl Iterator<Item = &ActiveChain> {
        self.chains.iter().chain(self.default_chain.iter())
    }

    /// Drain every connection (listener removal, `/drain_listeners`).
    pub fn drain_all(&self) {
        for c in self.all_chains() {
            c.drain.send_replace(true);
        }
    }

    /// This listener was replaced by `new`: connections on a filter chain `new` still has
    /// (the same configuration) carry on as they are; those on a chain it no longer has start
    /// draining. Returns how many chains drain (`close_retired` ends them at the deadline).
    pub fn retire_chains(&self, new: &ActiveListener) -> usize {
        let kept: std::collections::HashSet<u64> =
            new.all_chains().map(|c| c.config.fingerprint).collect();
        let mut draining = 0;
        for c in self.all_chains() {
            if !kept.contains(&c.config.fingerprint) {
                c.drain.send_replace(true);
                draining += 1;
            }
        }
        draining
    }

    /// The drain deadline: close what is left on the draining chains.
    pub fn close_retired(&self) {
        for c in self.all_chains() {
            if *c.drain.borrow() {
                c.close.send_replace(true);
            }
        }
    }

    /// The listener access-log line of a connection, when it closes (Envoy logs every
    /// connection, the ones no network filter took too).
    fn log_connection(
        &self,
        conn: Arc<ConnectionInfo>,
        opened: Instant,
        flags: ResponseFlags,
        reason: Option<String>,
        closed: Option<&'static str>,
    ) {
        if self.access_logs.is_empty() {
            return;
        }
        let mut info = StreamInfo::new(conn);
        info.downstream_local_close_reason = closed.map(Into::into);
        info.start = opened;
        info.start_time = SystemTime::now()
            .checked_sub(opened.elapsed())
            .unwrap_or(info.start_time);
        info.set_flag(flags);
        info.downstream_transport_failure_reason = reason;
        info.last_downstream_tx = Some(Instant::now());
        let ctx = FormatContext {
            info: Some(&info),
            ..Default::default()
        };
        let input = filter_input(&info, None);
        for l in &self.access_logs {
            l.log(&ctx, &input);
        }
    }

    fn closed(&self, opened: Instant) {
        tracing::debug!(listener = %self.config.name, "closing socket");
        self.stats.downstream_cx_active.dec();
        self.stats.downstream_cx_destroy.inc();
        self.stats
            .downstream_cx_length_ms
            .record(opened.elapsed().as_millis() as u64);
    }

    /// Run the TLS / HTTP inspectors on the first bytes (read into `prefix`). `None`: close.
    async fn run_listener_filters(
        &self,
        stream: &mut TcpStream,
        prefix: &mut BytesMut,
    ) -> Option<(Option<String>, &'static str, Vec<Box<str>>)> {
        let filters = &self.config.listener_filters;
        let mut server_name = None;
        let mut transport = "raw_buffer";
        let mut protocols: Vec<Box<str>> = Vec::new();
        if filters.is_empty() {
            return Some((server_name, transport, protocols));
        }
        let tls = filters.contains(&ListenerFilter::TlsInspector);
        let http = filters.contains(&ListenerFilter::HttpInspector);
        let deadline = self
            .config
            .listener_filters_timeout
            .map(|t| Instant::now() + t);
        let mut tls_done = !tls;
        let mut http_done = !http;
        while !(tls_done && http_done) {
            if !tls_done {
                match tls_inspector::inspect(prefix) {
                    tls_inspector::Inspect::NeedMore => {}
                    tls_inspector::Inspect::NotTls => {
                        tls_done = true;
                        if let Some(s) = &self.inspector_stats {
                            s.tls_not_found.inc();
                        }
                    }
                    tls_inspector::Inspect::Tls(ch) => {
                        tls_done = true;
                        http_done = true;
                        transport = "tls";
                        if let Some(s) = &self.inspector_stats {
                            s.tls_found.inc();
                            match ch.server_name {
                                Some(_) => s.sni_found.inc(),
                                None => s.sni_not_found.inc(),
                            }
                            match ch.alpn.is_empty() {
                                false => s.alpn_found.inc(),
                                true => s.alpn_not_found.inc(),
                            }
                        }
                        server_name = ch.server_name;
                        protocols = ch.alpn.into_iter().map(String::into_boxed_str).collect();
                    }
                }
            }
            if !http_done {
                match http_inspector::inspect(prefix) {
                    http_inspector::Inspect::NeedMore => {}
                    http_inspector::Inspect::NotHttp => {
                        http_done = true;
                        if let Some(s) = &self.inspector_stats {
                            s.http_not_found.inc();
                        }
                    }
                    http_inspector::Inspect::Http(p) => {
                        http_done = true;
                        if let Some(s) = &self.inspector_stats {
                            match p {
                                "http/1.0" => s.http10_found.inc(),
                                "h2c" => s.http2_found.inc(),
                                _ => s.http11_found.inc(),
                            }
                        }
                        protocols = vec![p.into()];
                    }
                }
            }
            if tls_done && http_done {
                break;
            }
            prefix.reserve(4096);
            let read = async {
                match deadline {
                    Some(d) => tokio::time::timeout_at(d.into(), stream.read_buf(prefix))
                        .await
                        .ok(),
                    None => Some(stream.read_buf(prefix).await),
                }
            };
            match read.await {
                None => {
                    self.stats.downstream_pre_cx_timeout.inc();
                    if self.config.continue_on_listener_filters_timeout {
                        break;
                    }
                    return None;
                }
                Some(Ok(0)) | Some(Err(_)) => {
                    if prefix.is_empty() {
                        return None;
                    }
                    break;
                }
                Some(Ok(_)) => {}
            }
        }
        Some((server_name, transport, protocols))
    }
}

/// Resolves once the watch turns true (or its sender is gone).
pub async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
}

/// `listener_manager.*`
#[derive(Debug)]
pub struct ListenerManagerStats {
    pub listener_added: Arc<Counter>,
    pub listener_modified: Arc<Counter>,
    pub listener_removed: Arc<Counter>,
    pub listener_create_success: Arc<Counter>,
    pub listener_create_failure: Arc<Counter>,
    pub listener_stopped: Arc<Counter>,
    pub total_listeners_active: Arc<Gauge>,
    pub total_listeners_warming: Arc<Gauge>,
    pub total_listeners_draining: Arc<Gauge>,
    pub total_filter_chains_draining: Arc<Gauge>,
    pub workers_started: Arc<Gauge>,
}

impl ListenerManagerStats {
    pub fn new(store: &Store) -> Self {
        let c = |n: &str| store.counter(&format!("listener_manager.{n}"));
        let g = |n: &str| store.gauge(&format!("listener_manager.{n}"));
        Self {
            listener_added: c("listener_added"),
            listener_modified: c("listener_modified"),
            listener_removed: c("listener_removed"),
            listener_create_success: c("listener_create_success"),
            listener_create_failure: c("listener_create_failure"),
            listener_stopped: c("listener_stopped"),
            total_listeners_active: g("total_listeners_active"),
            total_listeners_warming: g("total_listeners_warming"),
            total_listeners_draining: g("total_listeners_draining"),
            total_filter_chains_draining: g("total_filter_chains_draining"),
            workers_started: g("workers_started"),
        }
    }
}
