//! A snapshot-cache ADS server (state of the world and delta), for tests and the local-mesh
//! control plane: each node (by `node.id`) gets its current [`Snapshot`]; every stream follows
//! snapshot changes; ACKs and NACKs are recorded per node and type ([`Applied`]).

use crate::discovery::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use crate::discovery::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use crate::resource::{digest_version, is_wildcard_type};
use envoy_types::pb::google::protobuf::Any;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use tokio::sync::{Notify, mpsc, watch};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

/// One resource type's contents in a snapshot.
#[derive(Debug, Clone, Default)]
pub struct Resources {
    pub version: String,
    /// By resource name.
    pub items: BTreeMap<String, Any>,
}

/// What a node should have: resources by type URL.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub types: HashMap<String, Resources>,
}

impl Snapshot {
    /// Set a type's resources (named by [`crate::resource::name_of`]) at `version`.
    pub fn with(mut self, type_url: &str, version: &str, resources: Vec<Any>) -> Self {
        let items = resources
            .into_iter()
            .map(|a| (crate::resource::name_of(&a).unwrap_or_default(), a))
            .collect();
        self.types.insert(
            type_url.to_string(),
            Resources {
                version: version.to_string(),
                items,
            },
        );
        self
    }
}

/// How long [`SnapshotCache::wait_until`] and [`SnapshotCache::wait_streams`] wait (the tests'
/// and the bench's waits: longer than any of them needs, far shorter than a hung CI run).
pub const WAIT_LIMIT: std::time::Duration = std::time::Duration::from_secs(180);

/// What a node did with what it was sent, per type.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// The last version the node ACKed.
    pub acked: Option<String>,
    /// The last NACK: the version it refused and the node's error text.
    pub nacked: Option<(String, String)>,
    pub acks: u64,
    pub nacks: u64,
}

/// A request a node sent: state of the world (`resource_names`) or delta (the names it
/// subscribed and unsubscribed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requested {
    pub type_url: String,
    pub delta: bool,
    /// SotW `resource_names`, or delta `resource_names_subscribe`.
    pub names: Vec<String>,
    /// Delta `resource_names_unsubscribe`.
    pub unsubscribe: Vec<String>,
    /// The nonce it answers (empty: not an ACK or NACK).
    pub response_nonce: String,
}

struct NodeEntry {
    snapshot: watch::Sender<Arc<Snapshot>>,
    applied: HashMap<String, Applied>,
    requests: Vec<Requested>,
    /// Streams currently open for the node.
    streams: usize,
}

/// Snapshots per node, and what each node applied.
pub struct SnapshotCache {
    nodes: Mutex<HashMap<String, NodeEntry>>,
    changed: Notify,
    nonce: AtomicU64,
    /// Bumped to close every open stream (a control plane going away).
    generation: watch::Sender<u64>,
}

impl std::fmt::Debug for SnapshotCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotCache").finish_non_exhaustive()
    }
}

// === impl SnapshotCache ===

impl SnapshotCache {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            nodes: Mutex::default(),
            changed: Notify::new(),
            nonce: AtomicU64::new(0),
            generation: watch::channel(0).0,
        })
    }

    /// Close every open stream now (the clients see the stream end and reconnect).
    pub fn disconnect_all(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    fn entry<'a>(nodes: &'a mut HashMap<String, NodeEntry>, node: &str) -> &'a mut NodeEntry {
        nodes.entry(node.to_string()).or_insert_with(|| NodeEntry {
            snapshot: watch::channel(Arc::new(Snapshot::default())).0,
            applied: HashMap::new(),
            requests: Vec::new(),
            streams: 0,
        })
    }

    /// Replace a node's snapshot; open streams push what changed.
    pub fn set_snapshot(&self, node: &str, snapshot: Snapshot) {
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        Self::entry(&mut nodes, node)
            .snapshot
            .send_replace(Arc::new(snapshot));
    }

    pub fn snapshot(&self, node: &str) -> Arc<Snapshot> {
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        Self::entry(&mut nodes, node).snapshot.borrow().clone()
    }

    fn subscribe(&self, node: &str) -> watch::Receiver<Arc<Snapshot>> {
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        let e = Self::entry(&mut nodes, node);
        e.streams += 1;
        e.snapshot.subscribe()
    }

    fn stream_closed(&self, node: &str) {
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = nodes.get_mut(node) {
            e.streams = e.streams.saturating_sub(1);
        }
        drop(nodes);
        self.changed.notify_waiters();
    }

    fn record(&self, node: &str, type_url: &str, version: &str, error: Option<String>) {
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        let a = Self::entry(&mut nodes, node)
            .applied
            .entry(type_url.to_string())
            .or_default();
        match error {
            None => {
                a.acked = Some(version.to_string());
                a.acks += 1;
            }
            Some(message) => {
                a.nacked = Some((version.to_string(), message));
                a.nacks += 1;
            }
        }
        drop(nodes);
        self.changed.notify_waiters();
    }

    fn record_request(&self, node: &str, request: Requested) {
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        Self::entry(&mut nodes, node).requests.push(request);
    }

    /// Every request `node` sent for `type_url`, in order.
    pub fn requests(&self, node: &str, type_url: &str) -> Vec<Requested> {
        let nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        nodes
            .get(node)
            .map(|n| {
                n.requests
                    .iter()
                    .filter(|r| r.type_url == type_url)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// What `node` did with `type_url`.
    pub fn applied(&self, node: &str, type_url: &str) -> Applied {
        let nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        nodes
            .get(node)
            .and_then(|n| n.applied.get(type_url))
            .cloned()
            .unwrap_or_default()
    }

    /// Open streams of `node`.
    pub fn streams(&self, node: &str) -> usize {
        let nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        nodes.get(node).map(|n| n.streams).unwrap_or(0)
    }

    /// Wait until `f` holds for what the node applied (re-checked after each ACK, NACK or
    /// stream change).
    ///
    /// Bounded by [`WAIT_LIMIT`]: a node that never gets there is a failure (a panic naming the
    /// node, the type and its last state), not a test or bench run that hangs.
    pub async fn wait_until(&self, node: &str, type_url: &str, f: impl Fn(&Applied) -> bool) {
        let wait = async {
            loop {
                let notified = self.changed.notified();
                if f(&self.applied(node, type_url)) {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(WAIT_LIMIT, wait).await.is_err() {
            panic!(
                "{node} did not reach the awaited {type_url} state within {WAIT_LIMIT:?}: {:?}",
                self.applied(node, type_url)
            );
        }
    }

    /// Wait until the node has `n` streams open (bounded as [`SnapshotCache::wait_until`]).
    pub async fn wait_streams(&self, node: &str, n: usize) {
        let wait = async {
            loop {
                let notified = self.changed.notified();
                if self.streams(node) == n {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(WAIT_LIMIT, wait).await.is_err() {
            panic!(
                "{node} has {} streams open, not {n}, after {WAIT_LIMIT:?}",
                self.streams(node)
            );
        }
    }

    fn next_nonce(&self) -> String {
        (self.nonce.fetch_add(1, Relaxed) + 1).to_string()
    }
}

/// The gRPC service over a cache.
#[derive(Debug, Clone)]
pub struct AdsServer {
    cache: Arc<SnapshotCache>,
}

impl AdsServer {
    pub fn new(cache: Arc<SnapshotCache>) -> Self {
        Self { cache }
    }

    pub fn into_service(self) -> AggregatedDiscoveryServiceServer<Self> {
        AggregatedDiscoveryServiceServer::new(self)
    }
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

// === state of the world ===

#[derive(Default)]
struct SotwType {
    /// `None`: wildcard.
    names: Option<BTreeSet<String>>,
    sent_version: Option<String>,
    nonce: String,
}

fn sotw_response(
    cache: &SnapshotCache,
    snapshot: &Snapshot,
    type_url: &str,
    st: &mut SotwType,
) -> Option<DiscoveryResponse> {
    let res = snapshot.types.get(type_url)?;
    let resources = res
        .items
        .iter()
        .filter(|(name, _)| st.names.as_ref().is_none_or(|n| n.contains(*name)))
        .map(|(_, a)| a.clone())
        .collect();
    st.sent_version = Some(res.version.clone());
    st.nonce = cache.next_nonce();
    Some(DiscoveryResponse {
        version_info: res.version.clone(),
        resources,
        type_url: type_url.to_string(),
        nonce: st.nonce.clone(),
        ..Default::default()
    })
}

/// One stream's node: learnt from the first request, then the snapshots it follows. Dropping
/// it tells the cache the stream is gone.
struct StreamNode {
    cache: Arc<SnapshotCache>,
    id: Option<String>,
    snapshots: Option<watch::Receiver<Arc<Snapshot>>>,
}

impl StreamNode {
    fn new(cache: &Arc<SnapshotCache>) -> Self {
        Self {
            cache: cache.clone(),
            id: None,
            snapshots: None,
        }
    }

    /// The node id, from this request on the first one.
    /// `identify`, telling the client why when the stream cannot go on.
    async fn identify_or_refuse<T>(
        &mut self,
        node: Option<&envoy_types::pb::envoy::config::core::v3::Node>,
        tx: &mpsc::Sender<Result<T, Status>>,
    ) -> Option<String> {
        match self.identify(node) {
            Ok(id) => Some(id),
            Err(status) => {
                let _ = tx.send(Err(status)).await;
                None
            }
        }
    }

    fn identify(
        &mut self,
        node: Option<&envoy_types::pb::envoy::config::core::v3::Node>,
    ) -> Result<String, Status> {
        if let Some(id) = &self.id {
            return Ok(id.clone());
        }
        let id = node
            .map(|n| n.id.clone())
            .ok_or_else(|| Status::invalid_argument("the first request must carry a node"))?;
        self.snapshots = Some(self.cache.subscribe(&id));
        self.id = Some(id.clone());
        Ok(id)
    }

    /// Resolves when the node's snapshot changes (`false`: the cache is gone).
    async fn changed(&mut self) -> bool {
        match self.snapshots.as_mut() {
            Some(rx) => rx.changed().await.is_ok(),
            None => std::future::pending().await,
        }
    }

    fn current(&mut self) -> Arc<Snapshot> {
        self.snapshots
            .as_mut()
            .expect("identified")
            .borrow_and_update()
            .clone()
    }
}

impl Drop for StreamNode {
    fn drop(&mut self) {
        if let Some(id) = &self.id {
            self.cache.stream_closed(id);
        }
    }
}

async fn run_sotw(
    cache: Arc<SnapshotCache>,
    mut requests: Streaming<DiscoveryRequest>,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
) {
    let mut node = StreamNode::new(&cache);
    let mut types: HashMap<String, SotwType> = HashMap::new();
    let mut generation = cache.generation.subscribe();
    loop {
        tokio::select! {
            _ = generation.changed() => {
                let _ = tx.send(Err(Status::unavailable("the control plane closed the stream"))).await;
                break;
            }
            req = requests.next() => {
                let req = match req {
                    Some(Ok(r)) => r,
                    _ => break,
                };
                let Some(id) = node.identify_or_refuse(req.node.as_ref(), &tx).await else {
                    break;
                };
                cache.record_request(&id, Requested {
                    type_url: req.type_url.clone(),
                    delta: false,
                    names: req.resource_names.clone(),
                    unsubscribe: Vec::new(),
                    response_nonce: req.response_nonce.clone(),
                });
                let st = types.entry(req.type_url.clone()).or_default();
                let first = st.nonce.is_empty() && st.sent_version.is_none();
                if !req.response_nonce.is_empty() {
                    if req.response_nonce != st.nonce {
                        continue; // a stale response; a newer one is in flight
                    }
                    let error = req.error_detail.as_ref().map(|e| e.message.clone());
                    cache.record(&id, &req.type_url, &req.version_info, error);
                }
                let names: Option<BTreeSet<String>> = if req.resource_names.iter().any(|n| n == "*")
                    || (req.resource_names.is_empty() && is_wildcard_type(&req.type_url))
                {
                    None
                } else {
                    Some(req.resource_names.iter().cloned().collect())
                };
                let changed_names = names != st.names;
                st.names = names;
                if first || changed_names {
                    let snap = node.current();
                    if let Some(resp) = sotw_response(&cache, &snap, &req.type_url, st)
                        && tx.send(Ok(resp)).await.is_err()
                    {
                        break;
                    }
                }
            }
            ok = node.changed() => {
                if !ok {
                    break;
                }
                let snap = node.current();
                for (type_url, st) in types.iter_mut() {
                    let version = snap.types.get(type_url).map(|r| &r.version);
                    if version.is_some() && version != st.sent_version.as_ref()
                        && let Some(resp) = sotw_response(&cache, &snap, type_url, st)
                        && tx.send(Ok(resp)).await.is_err()
                    {
                        return;
                    }
                }
            }
        }
    }
}

// === delta ===

#[derive(Default)]
struct DeltaType {
    wildcard: bool,
    names: BTreeSet<String>,
    /// What the client has ACKed: name → version.
    known: HashMap<String, String>,
    /// What it will have once it answers the response with `nonce`.
    pending: Option<HashMap<String, String>>,
    nonce: String,
    started: bool,
    /// A response was sent (the first one goes out even when empty, if the snapshot has the
    /// type: the client waits for it).
    responded: bool,
}

fn delta_response(
    cache: &SnapshotCache,
    snapshot: &Snapshot,
    type_url: &str,
    st: &mut DeltaType,
) -> Option<DeltaDiscoveryResponse> {
    let empty = Resources::default();
    let res = snapshot.types.get(type_url).unwrap_or(&empty);
    let wanted = |name: &str| st.wildcard || st.names.contains(name);
    // Differences against what the client ACKed (an unACKed response is simply superseded).
    let mut next = st.known.clone();
    let mut resources = Vec::new();
    for (name, a) in &res.items {
        if !wanted(name) {
            continue;
        }
        let version = digest_version(a);
        if st.known.get(name) != Some(&version) {
            resources.push(Resource {
                name: name.clone(),
                version: version.clone(),
                resource: Some(a.clone()),
                ..Default::default()
            });
            next.insert(name.clone(), version);
        }
    }
    let removed: Vec<String> = st
        .known
        .keys()
        .filter(|n| !res.items.contains_key(*n) || !wanted(n))
        .cloned()
        .collect();
    for n in &removed {
        next.remove(n);
    }
    let first = !st.responded && snapshot.types.contains_key(type_url);
    if resources.is_empty() && removed.is_empty() && !first {
        return None;
    }
    if st.pending.as_ref() == Some(&next) {
        return None; // already sent, waiting for the ACK
    }
    st.pending = Some(next);
    st.responded = true;
    st.nonce = cache.next_nonce();
    Some(DeltaDiscoveryResponse {
        system_version_info: res.version.clone(),
        resources,
        type_url: type_url.to_string(),
        removed_resources: removed,
        nonce: st.nonce.clone(),
        ..Default::default()
    })
}

async fn run_delta(
    cache: Arc<SnapshotCache>,
    mut requests: Streaming<DeltaDiscoveryRequest>,
    tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
) {
    let mut node = StreamNode::new(&cache);
    let mut types: HashMap<String, DeltaType> = HashMap::new();
    let mut generation = cache.generation.subscribe();
    // The version each type was last sent at, to record ACK versions.
    let mut sent_versions: HashMap<String, String> = HashMap::new();
    loop {
        tokio::select! {
            _ = generation.changed() => {
                let _ = tx.send(Err(Status::unavailable("the control plane closed the stream"))).await;
                break;
            }
            req = requests.next() => {
                let req = match req {
                    Some(Ok(r)) => r,
                    _ => break,
                };
                let Some(id) = node.identify_or_refuse(req.node.as_ref(), &tx).await else {
                    break;
                };
                cache.record_request(&id, Requested {
                    type_url: req.type_url.clone(),
                    delta: true,
                    names: req.resource_names_subscribe.clone(),
                    unsubscribe: req.resource_names_unsubscribe.clone(),
                    response_nonce: req.response_nonce.clone(),
                });
                let st = types.entry(req.type_url.clone()).or_default();
                if !req.response_nonce.is_empty() {
                    if req.response_nonce == st.nonce {
                        let error = req.error_detail.as_ref().map(|e| e.message.clone());
                        // ACK or NACK, what was sent counts as sent (as istiod and
                        // go-control-plane track it): the next response carries only what
                        // changes again, so a client must keep the resources it accepted.
                        if let Some(next) = st.pending.take() {
                            st.known = next;
                        }
                        let version = sent_versions.get(&req.type_url).cloned().unwrap_or_default();
                        cache.record(&id, &req.type_url, &version, error);
                    }
                    if req.resource_names_subscribe.is_empty() && req.resource_names_unsubscribe.is_empty() {
                        continue;
                    }
                }
                if !st.started {
                    st.started = true;
                    st.wildcard = req.resource_names_subscribe.is_empty()
                        || req.resource_names_subscribe.iter().any(|n| n == "*");
                    st.known = req.initial_resource_versions.clone();
                }
                for n in &req.resource_names_subscribe {
                    if n == "*" {
                        st.wildcard = true;
                    } else {
                        st.names.insert(n.clone());
                    }
                }
                for n in &req.resource_names_unsubscribe {
                    if n == "*" {
                        st.wildcard = false;
                    } else {
                        st.names.remove(n);
                    }
                }
                let snap = node.current();
                if let Some(resp) = delta_response(&cache, &snap, &req.type_url, st) {
                    sent_versions.insert(req.type_url.clone(), resp.system_version_info.clone());
                    if tx.send(Ok(resp)).await.is_err() {
                        break;
                    }
                }
            }
            ok = node.changed() => {
                if !ok {
                    break;
                }
                let snap = node.current();
                for (type_url, st) in types.iter_mut() {
                    if let Some(resp) = delta_response(&cache, &snap, type_url, st) {
                        sent_versions.insert(type_url.clone(), resp.system_version_info.clone());
                        if tx.send(Ok(resp)).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsServer {
    type StreamAggregatedResourcesStream = ResponseStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = ResponseStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(run_sotw(self.cache.clone(), request.into_inner(), tx));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(run_delta(self.cache.clone(), request.into_inner(), tx));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// Serve ADS on a TCP listener until the future is dropped.
pub async fn serve_tcp(
    cache: Arc<SnapshotCache>,
    listener: tokio::net::TcpListener,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .add_service(AdsServer::new(cache).into_service())
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
        .await
}

/// Serve ADS on a Unix socket (istio-agent's `XDS` socket shape) until the future is dropped.
pub async fn serve_unix(
    cache: Arc<SnapshotCache>,
    listener: tokio::net::UnixListener,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .add_service(AdsServer::new(cache).into_service())
        .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener))
        .await
}
