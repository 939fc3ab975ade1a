//! The network filter chain's contract (Envoy's `Network::ReadFilter`/`WriteFilter`), one
//! module per extension beside it. A filter chain's network filters run in order on a new
//! connection and on the bytes read from downstream, and in reverse order on the bytes
//! written to downstream (as Envoy runs write filters); the terminal filter (tcp_proxy or the
//! HTTP connection manager) is not one of these.

pub mod chain;
pub mod istio_stats;
pub mod local_ratelimit;
pub mod metadata_exchange;
pub mod rbac;

use std::future::Future;
use std::pin::Pin;

use crate::stream_info::ConnectionInfo;

/// What a network filter decided.
pub enum NetFlow {
    /// Go on with the next filter.
    Continue,
    /// Close the connection before any byte reaches the upstream, for this reason (Envoy's
    /// local close reason, `%DOWNSTREAM_LOCAL_CLOSE_REASON%`: `rbac_deny_close`,
    /// `local_ratelimit_close_over_limit`).
    Close(std::borrow::Cow<'static, str>),
    /// Stop until the future resolves, then act on what it returns.
    Pause(Pin<Box<dyn Future<Output = NetFlow> + Send>>),
}

/// What a network filter sees of its connection.
pub struct ConnCx<'a> {
    pub connection: &'a ConnectionInfo,
    /// Dynamic metadata of the connection (`%DYNAMIC_METADATA%` of its access log).
    pub metadata: &'a mut crate::stream_info::DynamicMetadata,
    /// Response flags of the connection's stream info (`%RESPONSE_FLAGS%` of its access log).
    pub response_flags: &'a mut crate::stream_info::ResponseFlags,
    /// `%CONNECTION_TERMINATION_DETAILS%` of the connection (e.g. what RBAC denied).
    pub termination_details: &'a mut Option<std::borrow::Cow<'static, str>>,
}

/// One network filter on one connection.
pub trait NetworkFilter: Send {
    /// A connection was accepted on the filter chain (after the TLS handshake, if any).
    fn on_new_connection(&mut self, _cx: &mut ConnCx<'_>) -> NetFlow {
        NetFlow::Continue
    }

    /// Bytes read from downstream (`end_stream`: downstream half-closed).
    fn on_data(&mut self, _data: &[u8], _end_stream: bool, _cx: &mut ConnCx<'_>) -> NetFlow {
        NetFlow::Continue
    }

    /// Istio's TCP metadata exchange read the peer's workload (before `on_new_connection`).
    fn on_peer(&mut self, _peer: &std::sync::Arc<crate::telemetry::istio::Peer>) {}

    /// The terminal tcp_proxy connected upstream (its exchanged peer and TLS info).
    fn on_upstream(&mut self, _up: &chain::UpstreamPeer) {}

    /// Bytes about to be written to downstream (`end_stream`: the write side is shutting
    /// down; Envoy's `WriteFilter::onWrite`). Runs in reverse filter order.
    fn on_write(&mut self, _data: &[u8], _end_stream: bool, _cx: &mut ConnCx<'_>) -> NetFlow {
        NetFlow::Continue
    }

    /// Whether `on_write` does anything: when no filter of a connection does, its writes go
    /// straight to the socket (vectored, unbuffered).
    fn watches_writes(&self) -> bool {
        false
    }

    /// The connection closed (Envoy's `LocalClose`/`RemoteClose` event): the response flags
    /// are final (the terminal tcp_proxy's included).
    fn on_close(&mut self, _cx: &mut ConnCx<'_>) {}
}

/// A configured network filter of a filter chain.
pub trait NetworkFilterFactory: Send + Sync + std::fmt::Debug {
    fn create(&self, cx: &ConnCx<'_>) -> Option<Box<dyn NetworkFilter>>;
}
