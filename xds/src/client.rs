//! The ADS client: one gRPC stream to the management server carrying every subscribed type,
//! state of the world or delta.
//!
//! The proxy gives a [`Handler`] that applies a type's complete current set of resources (in
//! delta mode the client keeps the set, so the proxy has one code path) and returns the error
//! text for a NACK. Subscriptions change through [`Subscriptions`] (EDS names follow clusters,
//! RDS and SDS names follow listeners). The stream reconnects with jittered exponential
//! backoff; the proxy keeps its last good configuration meanwhile.

use crate::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use crate::discovery::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

/// Where the management server is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Tcp(SocketAddr),
    /// A Unix socket (Envoy `pipe`), as istio-agent serves xDS and SDS.
    Unix(PathBuf),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Tcp(a) => write!(f, "{a}"),
            Target::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub target: Target,
    pub node: Node,
    /// `DELTA_GRPC` instead of `GRPC`.
    pub delta: bool,
    pub set_node_on_first_message_only: bool,
    /// Reconnect backoff: base and cap (Envoy: 500 ms and 30 s), fully jittered.
    pub backoff: (Duration, Duration),
}

/// What the proxy does with resources.
pub trait Handler: Send + Sync + 'static {
    /// Apply every current resource of `type_url` (for LDS/CDS a missing one is removed).
    /// The resources it refuses NACK the update (their previous versions must stay in place);
    /// the others are applied. In delta mode a refused resource is not part of the client's
    /// state afterwards (its previous version is), so the next update does not send it again.
    fn apply(&self, type_url: &str, version: &str, resources: Vec<Any>)
    -> Result<(), Vec<Refused>>;
    /// The stream came up or went down (`control_plane.connected_state`).
    fn connected(&self, up: bool);
}

/// A resource the handler refused: its position in the `resources` it was given, and why (the
/// text names the resource).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub index: usize,
    pub message: String,
}

/// The NACK's `error_detail` message: one line per refusal, as Envoy joins listener errors (a
/// line break inside a message is written `\n`).
pub fn nack_text(refused: &[Refused]) -> String {
    refused
        .iter()
        .map(|r| r.message.replace('\n', "\\n"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Envoy NACKs with `INTERNAL` and logs the rejection at warning level.
fn nack(type_url: &str, refused: &[Refused]) -> Option<RpcStatus> {
    if refused.is_empty() {
        return None;
    }
    let message = nack_text(refused);
    tracing::warn!("gRPC config for {type_url} rejected: {message}");
    Some(RpcStatus {
        code: 13,
        message,
        details: vec![],
    })
}

/// Change what is subscribed (names of a non-wildcard type; an empty set unsubscribes).
#[derive(Debug, Clone)]
pub struct Subscriptions {
    tx: mpsc::UnboundedSender<(String, Interest)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interest {
    Wildcard,
    Names(BTreeSet<String>),
}

impl Subscriptions {
    pub fn set(&self, type_url: &str, interest: Interest) {
        let _ = self.tx.send((type_url.to_string(), interest));
    }
}

/// Per-type client state, kept across reconnections.
#[derive(Debug, Default)]
struct TypeState {
    interest: Option<Interest>,
    /// The last accepted version (SotW `version_info`).
    version: String,
    /// The nonce of the last response.
    nonce: String,
    /// Delta: the accepted resources and their versions.
    resources: BTreeMap<String, (String, Any)>,
    /// State of the world: the names the last request on this stream carried (what ACKs repeat).
    sent_names: Vec<String>,
}

/// Start the client on the current runtime. Returns the handle for subscriptions; `initial`
/// are the first subscriptions (sent in this order).
pub fn start(
    config: Config,
    handler: Arc<dyn Handler>,
    initial: Vec<(String, Interest)>,
) -> Subscriptions {
    let (tx, rx) = mpsc::unbounded_channel();
    let subs = Subscriptions { tx };
    for (t, i) in initial {
        subs.set(&t, i);
    }
    tokio::spawn(run(config, handler, rx));
    subs
}

/// A gRPC channel to `target` (the proxy's other gRPC streams, such as the metrics service
/// sink, connect the same way).
pub async fn connect(
    target: &Target,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    match target {
        Target::Tcp(addr) => {
            tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .expect("a valid URI")
                .connect_timeout(Duration::from_secs(5))
                .connect()
                .await
        }
        Target::Unix(path) => {
            let path = path.clone();
            tonic::transport::Endpoint::from_static("http://localhost")
                .connect_with_connector(tower::service_fn(move |_| {
                    let path = path.clone();
                    async move {
                        let s = tokio::net::UnixStream::connect(path).await?;
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
                    }
                }))
                .await
        }
    }
}

/// Envoy's order: clusters and their endpoints before listeners and their routes.
fn type_order(t: &str) -> u8 {
    match t {
        crate::resource::CLUSTER => 0,
        crate::resource::ENDPOINT => 1,
        crate::resource::LISTENER => 2,
        crate::resource::ROUTE => 3,
        crate::resource::SECRET => 4,
        _ => 5,
    }
}

async fn run(
    config: Config,
    handler: Arc<dyn Handler>,
    mut subs: mpsc::UnboundedReceiver<(String, Interest)>,
) {
    let mut types: HashMap<String, TypeState> = HashMap::new();
    let mut attempt: u32 = 0;
    loop {
        // Take every subscription change made while disconnected.
        while let Ok((t, i)) = subs.try_recv() {
            types.entry(t).or_default().interest = Some(i);
        }
        let result = match connect(&config.target).await {
            Ok(channel) => {
                let r = if config.delta {
                    delta_stream(
                        &config,
                        &handler,
                        channel,
                        &mut types,
                        &mut subs,
                        &mut attempt,
                    )
                    .await
                } else {
                    sotw_stream(
                        &config,
                        &handler,
                        channel,
                        &mut types,
                        &mut subs,
                        &mut attempt,
                    )
                    .await
                };
                handler.connected(false);
                r
            }
            Err(e) => Err(e.to_string()),
        };
        match result {
            Ok(()) => return, // the proxy is gone
            Err(e) => tracing::warn!(target = %config.target, "xDS stream closed: {e}"),
        }
        // Full jitter: uniform in [0, min(cap, base * 2^attempt)].
        let (base, cap) = config.backoff;
        let ceiling = base
            .saturating_mul(1u32 << attempt.min(16))
            .min(cap)
            .max(Duration::from_millis(1));
        attempt = attempt.saturating_add(1);
        let wait = ceiling.mul_f64(fastrand::f64());
        tokio::time::sleep(wait).await;
    }
}

fn sorted_types(types: &HashMap<String, TypeState>) -> Vec<String> {
    let mut v: Vec<String> = types
        .iter()
        .filter(|(_, s)| s.interest.as_ref().is_some_and(on_wire))
        .map(|(t, _)| t.clone())
        .collect();
    v.sort_by_key(|t| (type_order(t), t.clone()));
    v
}

/// Whether an interest goes on the wire: a named subscription without names is never sent (an
/// empty list asks for every resource, in SotW and in delta's first request).
fn on_wire(i: &Interest) -> bool {
    !matches!(i, Interest::Names(n) if n.is_empty())
}

fn names_of(i: &Interest) -> Vec<String> {
    match i {
        Interest::Wildcard => Vec::new(),
        Interest::Names(n) => n.iter().cloned().collect(),
    }
}

/// The node goes in the first request, or in every one unless `set_node_on_first_message_only`.
struct NodeOnce<'a> {
    config: &'a Config,
    sent: bool,
}

impl<'a> NodeOnce<'a> {
    fn new(config: &'a Config) -> Self {
        Self {
            config,
            sent: false,
        }
    }

    fn next(&mut self) -> Option<Node> {
        if self.config.set_node_on_first_message_only && self.sent {
            return None;
        }
        self.sent = true;
        Some(self.config.node.clone())
    }
}

// === state of the world ===

async fn sotw_stream(
    config: &Config,
    handler: &Arc<dyn Handler>,
    channel: tonic::transport::Channel,
    types: &mut HashMap<String, TypeState>,
    subs: &mut mpsc::UnboundedReceiver<(String, Interest)>,
    attempt: &mut u32,
) -> Result<(), String> {
    let mut client =
        AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(usize::MAX);
    let (tx, rx) = mpsc::unbounded_channel::<DiscoveryRequest>();
    let mut node = NodeOnce::new(config);
    for t in sorted_types(types) {
        let Some(st) = types.get_mut(&t) else {
            continue;
        };
        st.sent_names = st.interest.as_ref().map(names_of).unwrap_or_default();
        let _ = tx.send(DiscoveryRequest {
            version_info: st.version.clone(),
            node: node.next(),
            resource_names: st.sent_names.clone(),
            type_url: t.clone(),
            ..Default::default()
        });
    }
    let mut inbound = client
        .stream_aggregated_resources(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
        .await
        .map_err(|s| status_text(&s))?
        .into_inner();
    handler.connected(true);
    loop {
        tokio::select! {
            msg = inbound.next() => {
                let resp: DiscoveryResponse = received(msg)?;
                *attempt = 0;
                let st = types.entry(resp.type_url.clone()).or_default();
                st.nonce = resp.nonce.clone();
                let refused = handler
                    .apply(&resp.type_url, &resp.version_info, resp.resources)
                    .err()
                    .unwrap_or_default();
                let error_detail = nack(&resp.type_url, &refused);
                if error_detail.is_none() {
                    st.version = resp.version_info;
                }
                let version = st.version.clone();
                let _ = tx.send(DiscoveryRequest {
                    version_info: version,
                    node: node.next(),
                    resource_names: st.sent_names.clone(),
                    type_url: resp.type_url,
                    response_nonce: resp.nonce,
                    error_detail,
                    ..Default::default()
                });
            }
            sub = subs.recv() => {
                let Some((t, interest)) = sub else { return Ok(()) };
                let st = types.entry(t.clone()).or_default();
                if st.interest.as_ref() == Some(&interest) {
                    continue;
                }
                let send = on_wire(&interest);
                st.interest = Some(interest);
                if !send {
                    continue; // the server keeps sending the last names; nothing asks for all
                }
                st.sent_names = st.interest.as_ref().map(names_of).unwrap_or_default();
                let _ = tx.send(DiscoveryRequest {
                    version_info: st.version.clone(),
                    node: node.next(),
                    resource_names: st.sent_names.clone(),
                    type_url: t,
                    response_nonce: st.nonce.clone(),
                    ..Default::default()
                });
            }
        }
    }
}

// === delta ===

async fn delta_stream(
    config: &Config,
    handler: &Arc<dyn Handler>,
    channel: tonic::transport::Channel,
    types: &mut HashMap<String, TypeState>,
    subs: &mut mpsc::UnboundedReceiver<(String, Interest)>,
    attempt: &mut u32,
) -> Result<(), String> {
    let mut client =
        AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(usize::MAX);
    let (tx, rx) = mpsc::unbounded_channel::<DeltaDiscoveryRequest>();
    let mut node = NodeOnce::new(config);
    for t in sorted_types(types) {
        let Some(st) = types.get(&t) else { continue };
        let _ = tx.send(DeltaDiscoveryRequest {
            node: node.next(),
            type_url: t.clone(),
            resource_names_subscribe: st.interest.as_ref().map(names_of).unwrap_or_default(),
            // What we already have: the server sends only what changed.
            initial_resource_versions: st
                .resources
                .iter()
                .map(|(n, (v, _))| (n.clone(), v.clone()))
                .collect(),
            ..Default::default()
        });
    }
    let mut inbound = client
        .delta_aggregated_resources(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
        .await
        .map_err(|s| status_text(&s))?
        .into_inner();
    handler.connected(true);
    loop {
        tokio::select! {
            msg = inbound.next() => {
                let resp: DeltaDiscoveryResponse = received(msg)?;
                *attempt = 0;
                let st = types.entry(resp.type_url.clone()).or_default();
                let refused = apply_delta(handler.as_ref(), st, &resp);
                let error_detail = nack(&resp.type_url, &refused);
                let _ = tx.send(DeltaDiscoveryRequest {
                    node: node.next(),
                    type_url: resp.type_url,
                    response_nonce: resp.nonce,
                    error_detail,
                    ..Default::default()
                });
            }
            sub = subs.recv() => {
                let Some((t, interest)) = sub else { return Ok(()) };
                let st = types.entry(t.clone()).or_default();
                let before = st.interest.clone();
                if before.as_ref() == Some(&interest) {
                    continue;
                }
                let (subscribe, unsubscribe): (Vec<String>, Vec<String>) = match (&before, &interest) {
                    (Some(Interest::Names(old)), Interest::Names(new)) => (
                        new.difference(old).cloned().collect(),
                        old.difference(new).cloned().collect(),
                    ),
                    (_, Interest::Wildcard) => (vec!["*".to_string()], vec![]),
                    (_, Interest::Names(new)) => (new.iter().cloned().collect(), vec![]),
                };
                st.interest = Some(interest);
                if subscribe.is_empty() && unsubscribe.is_empty() {
                    continue; // an empty first request would be a wildcard subscription
                }
                let _ = tx.send(DeltaDiscoveryRequest {
                    node: node.next(),
                    type_url: t,
                    resource_names_subscribe: subscribe,
                    resource_names_unsubscribe: unsubscribe,
                    ..Default::default()
                });
            }
        }
    }
}

/// Apply a delta response: the handler gets what the client holds (the resources it accepted
/// before) minus `removed_resources`, plus what came. Afterwards the client holds that set,
/// except that a refused resource keeps its previous version (or stays absent): the next
/// response, which carries only what changed again, must not lose the accepted resources, nor
/// bring back a refused one.
fn apply_delta(
    handler: &dyn Handler,
    st: &mut TypeState,
    resp: &DeltaDiscoveryResponse,
) -> Vec<Refused> {
    let mut next = st.resources.clone();
    for n in &resp.removed_resources {
        next.remove(n);
    }
    for r in &resp.resources {
        if let Some(a) = &r.resource {
            next.insert(r.name.clone(), (r.version.clone(), a.clone()));
        }
    }
    let names: Vec<String> = next.keys().cloned().collect();
    let all: Vec<Any> = next.values().map(|(_, a)| a.clone()).collect();
    let refused = handler
        .apply(&resp.type_url, &resp.system_version_info, all)
        .err()
        .unwrap_or_default();
    for name in refused.iter().filter_map(|r| names.get(r.index)) {
        match st.resources.get(name) {
            Some(previous) => next.insert(name.clone(), previous.clone()),
            None => next.remove(name),
        };
    }
    st.resources = next;
    if refused.is_empty() {
        st.version = resp.system_version_info.clone();
    }
    refused
}

fn status_text(s: &tonic::Status) -> String {
    format!("{}: {}", s.code(), s.message())
}

/// The next response on an ADS stream, or why the stream ended.
fn received<T>(msg: Option<Result<T, tonic::Status>>) -> Result<T, String> {
    match msg {
        Some(Ok(r)) => Ok(r),
        Some(Err(s)) => Err(status_text(&s)),
        None => Err("the server closed the stream".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::{CLUSTER, ENDPOINT, any};
    use crate::server::{Snapshot, SnapshotCache};
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use prost::Message;
    use std::sync::Mutex;

    /// Records what it was given; refuses clusters named `bad`.
    #[derive(Default)]
    struct Recorder {
        applied: Mutex<Vec<(String, String, Vec<String>)>>,
        up: Mutex<Vec<bool>>,
    }

    impl Handler for Recorder {
        fn apply(
            &self,
            type_url: &str,
            version: &str,
            resources: Vec<Any>,
        ) -> Result<(), Vec<Refused>> {
            let names: Vec<String> = resources
                .iter()
                .map(|a| crate::resource::name_of(a).unwrap_or_default())
                .collect();
            let refused: Vec<Refused> = names
                .iter()
                .enumerate()
                .filter(|(_, n)| n.starts_with("bad"))
                .map(|(index, n)| Refused {
                    index,
                    message: format!("'{n}' is refused"),
                })
                .collect();
            self.applied
                .lock()
                .unwrap()
                .push((type_url.into(), version.into(), names));
            if refused.is_empty() {
                Ok(())
            } else {
                Err(refused)
            }
        }
        fn connected(&self, up: bool) {
            self.up.lock().unwrap().push(up);
        }
    }

    fn cluster(name: &str) -> Any {
        any(&Cluster {
            name: name.into(),
            ..Default::default()
        })
    }

    fn cla(name: &str) -> Any {
        any(&ClusterLoadAssignment {
            cluster_name: name.into(),
            ..Default::default()
        })
    }

    async fn server() -> (Arc<SnapshotCache>, SocketAddr) {
        let cache = SnapshotCache::new();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(crate::server::serve_tcp(cache.clone(), l));
        (cache, addr)
    }

    fn config(addr: SocketAddr, delta: bool) -> Config {
        Config {
            target: Target::Tcp(addr),
            node: Node {
                id: "n1".into(),
                ..Default::default()
            },
            delta,
            set_node_on_first_message_only: true,
            backoff: (Duration::from_millis(20), Duration::from_millis(100)),
        }
    }

    async fn exchange(delta: bool) {
        let (cache, addr) = server().await;
        cache.set_snapshot(
            "n1",
            Snapshot::default()
                .with(CLUSTER, "v1", vec![cluster("a"), cluster("b")])
                .with(ENDPOINT, "e1", vec![cla("a"), cla("b")]),
        );
        let rec = Arc::new(Recorder::default());
        let subs = start(
            config(addr, delta),
            rec.clone(),
            vec![(CLUSTER.into(), Interest::Wildcard)],
        );
        cache
            .wait_until("n1", CLUSTER, |a| a.acked.as_deref() == Some("v1"))
            .await;
        // Named EDS subscription: only `a`.
        subs.set(ENDPOINT, Interest::Names(["a".to_string()].into()));
        cache
            .wait_until("n1", ENDPOINT, |a| a.acked.as_deref() == Some("e1"))
            .await;
        // A refused update: NACK with the handler's text; the last good version stays ACKed.
        cache.set_snapshot(
            "n1",
            Snapshot::default()
                .with(CLUSTER, "v2", vec![cluster("a"), cluster("bad")])
                .with(ENDPOINT, "e1", vec![cla("a"), cla("b")]),
        );
        cache.wait_until("n1", CLUSTER, |a| a.nacks == 1).await;
        let applied = cache.applied("n1", CLUSTER);
        assert_eq!(applied.acked.as_deref(), Some("v1"));
        assert_eq!(
            applied.nacked.as_ref().map(|(_, m)| m.as_str()),
            Some("'bad' is refused")
        );
        // A good update with a removal.
        cache.set_snapshot(
            "n1",
            Snapshot::default()
                .with(CLUSTER, "v3", vec![cluster("a")])
                .with(ENDPOINT, "e1", vec![cla("a"), cla("b")]),
        );
        cache
            .wait_until("n1", CLUSTER, |a| a.acked.as_deref() == Some("v3"))
            .await;
        let log = rec.applied.lock().unwrap().clone();
        let cds: Vec<&Vec<String>> = log
            .iter()
            .filter(|e| e.0 == CLUSTER)
            .map(|e| &e.2)
            .collect();
        assert_eq!(
            cds.first().unwrap(),
            &&vec!["a".to_string(), "b".to_string()]
        );
        assert_eq!(cds.last().unwrap(), &&vec!["a".to_string()]);
        let eds: Vec<&Vec<String>> = log
            .iter()
            .filter(|e| e.0 == ENDPOINT)
            .map(|e| &e.2)
            .collect();
        assert_eq!(eds.last().unwrap(), &&vec!["a".to_string()]);
        assert_eq!(rec.up.lock().unwrap().first(), Some(&true));
    }

    #[tokio::test]
    async fn state_of_the_world_ack_nack_and_subscriptions() {
        exchange(false).await;
    }

    #[tokio::test]
    async fn delta_ack_nack_and_subscriptions() {
        exchange(true).await;
    }

    /// Refuses clusters whose `alt_stat_name` is `refuse`; records the names it was given.
    #[derive(Default)]
    struct Marked(Mutex<Vec<Vec<String>>>);

    impl Handler for Marked {
        fn apply(&self, _: &str, _: &str, resources: Vec<Any>) -> Result<(), Vec<Refused>> {
            let clusters: Vec<Cluster> = resources
                .iter()
                .map(|a| Cluster::decode(a.value.as_slice()).unwrap())
                .collect();
            self.0
                .lock()
                .unwrap()
                .push(clusters.iter().map(|c| c.name.clone()).collect());
            let refused: Vec<Refused> = (clusters.iter().enumerate())
                .filter(|(_, c)| c.alt_stat_name == "refuse")
                .map(|(index, c)| Refused {
                    index,
                    message: format!("{} refused", c.name),
                })
                .collect();
            if refused.is_empty() {
                Ok(())
            } else {
                Err(refused)
            }
        }
        fn connected(&self, _: bool) {}
    }

    fn delta(added: &[(&str, &str, bool)], removed: &[&str]) -> DeltaDiscoveryResponse {
        use crate::discovery::Resource;
        DeltaDiscoveryResponse {
            type_url: CLUSTER.into(),
            system_version_info: "v".into(),
            resources: added
                .iter()
                .map(|(name, version, refuse)| Resource {
                    name: name.to_string(),
                    version: version.to_string(),
                    resource: Some(any(&Cluster {
                        name: name.to_string(),
                        alt_stat_name: if *refuse {
                            "refuse".into()
                        } else {
                            String::new()
                        },
                        ..Default::default()
                    })),
                    ..Default::default()
                })
                .collect(),
            removed_resources: removed.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    /// Delta: the handler always gets the accepted resources plus what came; a refused resource
    /// is not kept (a refused change keeps the previous version).
    #[test]
    fn delta_state_is_the_accepted_union_minus_removals() {
        let h = Marked::default();
        let mut st = TypeState::default();
        let versions = |st: &TypeState| -> Vec<(String, String)> {
            st.resources
                .iter()
                .map(|(n, (v, _))| (n.clone(), v.clone()))
                .collect()
        };
        let refused = apply_delta(
            &h,
            &mut st,
            &delta(&[("a", "1", false), ("x", "1", true)], &[]),
        );
        assert_eq!(refused.len(), 1);
        assert_eq!(versions(&st), [("a".into(), "1".into())]);
        assert!(apply_delta(&h, &mut st, &delta(&[("b", "1", false)], &[])).is_empty());
        assert_eq!(h.0.lock().unwrap().last().unwrap(), &["a", "b"]);
        // A refused change of `a` keeps version 1.
        let refused = apply_delta(&h, &mut st, &delta(&[("a", "2", true)], &[]));
        assert_eq!(refused[0].message, "a refused");
        assert_eq!(
            versions(&st),
            [("a".into(), "1".into()), ("b".into(), "1".into())]
        );
        assert!(apply_delta(&h, &mut st, &delta(&[], &["b"])).is_empty());
        assert_eq!(h.0.lock().unwrap().last().unwrap(), &["a"]);
        assert_eq!(versions(&st), [("a".into(), "1".into())]);
    }

    /// A named subscription without names never goes out: an empty list would ask for every
    /// resource of the type.
    async fn no_empty_named_request(delta: bool) {
        use crate::resource::ROUTE;
        let (cache, addr) = server().await;
        cache.set_snapshot(
            "n1",
            Snapshot::default()
                .with(CLUSTER, "v1", vec![cluster("a")])
                .with(ENDPOINT, "e1", vec![cla("a"), cla("b")]),
        );
        let rec = Arc::new(Recorder::default());
        let subs = start(
            config(addr, delta),
            rec.clone(),
            vec![
                (CLUSTER.into(), Interest::Wildcard),
                (ENDPOINT.into(), Interest::Names(BTreeSet::new())),
            ],
        );
        cache.wait_until("n1", CLUSTER, |a| a.acks >= 1).await;
        subs.set(ENDPOINT, Interest::Names(["a".to_string()].into()));
        cache.wait_until("n1", ENDPOINT, |a| a.acks >= 1).await;
        subs.set(ENDPOINT, Interest::Names(BTreeSet::new()));
        // Subscriptions are handled in order: once ROUTE is asked for, ENDPOINT was handled.
        subs.set(ROUTE, Interest::Names(["r".to_string()].into()));
        while cache.requests("n1", ROUTE).is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let eds = cache.requests("n1", ENDPOINT);
        assert!(!eds.is_empty());
        for r in &eds {
            let asks_all = if delta {
                r.names.is_empty() && r.unsubscribe.is_empty() && r.response_nonce.is_empty()
            } else {
                r.names.is_empty()
            };
            assert!(!asks_all, "{eds:?}");
        }
        if delta {
            assert!(eds.iter().any(|r| r.unsubscribe == ["a"]), "{eds:?}");
        }
    }

    #[tokio::test]
    async fn state_of_the_world_never_asks_for_all_endpoints() {
        no_empty_named_request(false).await;
    }

    #[tokio::test]
    async fn delta_never_asks_for_all_endpoints() {
        no_empty_named_request(true).await;
    }

    #[tokio::test]
    async fn reconnects_and_resumes() {
        let cache = SnapshotCache::new();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(crate::server::serve_tcp(cache.clone(), l));
        cache.set_snapshot(
            "n1",
            Snapshot::default().with(CLUSTER, "v1", vec![cluster("a")]),
        );
        let rec = Arc::new(Recorder::default());
        let _subs = start(
            config(addr, false),
            rec.clone(),
            vec![(CLUSTER.into(), Interest::Wildcard)],
        );
        cache.wait_until("n1", CLUSTER, |a| a.acks >= 1).await;
        // The control plane goes away (streams closed, nothing listening), and comes back on
        // the same port with a new version.
        server.abort();
        let _ = server.await;
        cache.disconnect_all();
        cache.wait_streams("n1", 0).await;
        let l = loop {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        cache.set_snapshot(
            "n1",
            Snapshot::default().with(CLUSTER, "v2", vec![cluster("b")]),
        );
        tokio::spawn(crate::server::serve_tcp(cache.clone(), l));
        cache
            .wait_until("n1", CLUSTER, |a| a.acked.as_deref() == Some("v2"))
            .await;
        let up = rec.up.lock().unwrap().clone();
        assert_eq!(&up[..3], &[true, false, true], "{up:?}");
    }
}
