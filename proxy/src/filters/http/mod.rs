//! The HTTP filter chain's contract (Envoy's `StreamDecoderFilter`/`StreamEncoderFilter`), one
//! module per extension beside it, named after the Envoy extension.
//!
//! - Configuration is translated once (`model::hcm::HttpFilter`); at listener start each entry
//!   becomes an [`HttpFilterFactory`] (which owns the filter's stats and shared state, such as
//!   a token bucket).
//! - Per stream, after the route is chosen, each factory creates a filter instance (or none, if
//!   the filter is disabled for the route). The decoder side runs in chain order, the encoder
//!   side in reverse order; the router is the terminal filter and is not one of these.
//! - A hook returns a [`Flow`]: continue, answer locally, or pause on a future (a fault delay)
//!   and act on its outcome. A local reply from a decoder filter still runs the encoder side of
//!   the filters before it (Envoy's `sendLocalReply`).
//! - What filters share along the stream (response flags and details, dynamic metadata, filter
//!   state, the route) is in [`StreamCx`]; the access log reads the same `StreamInfo`.

pub mod alpn;
pub mod chain;
pub mod compressor;
pub mod cors;
pub mod fault;
pub mod grpc_stats;
pub mod istio_stats;
pub mod local_ratelimit;
pub mod noop;
pub mod peer_metadata;
pub mod rbac;

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;

use crate::http::body::Body;
use crate::model::per_filter::PerFilter;
use crate::stream_info::{ConnectionInfo, ResponseFlags, StreamInfo};

/// What a hook decided.
pub enum Flow {
    /// Go on with the next filter.
    Continue,
    /// Stop the chain and answer locally (through `local_reply_config`, with the route's
    /// response header mutations, as every local reply).
    LocalReply(LocalReply),
    /// Stop iteration until the future resolves, then act on what it returns (Envoy's
    /// `StopIteration` followed by `continueDecoding`/`sendLocalReply`). The future owns what it
    /// needs; it must not block the worker (a delay is a timer).
    Pause(Pin<Box<dyn Future<Output = Flow> + Send>>),
}

impl std::fmt::Debug for Flow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Flow::Continue => f.write_str("Continue"),
            Flow::LocalReply(r) => f.debug_tuple("LocalReply").field(r).finish(),
            Flow::Pause(_) => f.write_str("Pause"),
        }
    }
}

/// A filter's local reply.
#[derive(Debug)]
pub struct LocalReply {
    pub status: http::StatusCode,
    /// Envoy's body text (e.g. `RBAC: access denied`).
    pub body: Cow<'static, str>,
    /// `%RESPONSE_CODE_DETAILS%` (e.g. `rbac_access_denied_matched_policy[none]`).
    pub details: Cow<'static, str>,
    pub flags: ResponseFlags,
    /// Headers added to the reply (`x-ratelimit-*`, `grpc-status` of a gRPC abort, …).
    pub headers: http::HeaderMap,
}

/// What a filter sees of its stream besides the message it is handed.
pub struct StreamCx<'a> {
    /// The downstream connection: addresses, SNI, the TLS peer (URI SAN, subject).
    pub connection: &'a ConnectionInfo,
    /// Response flags and details, dynamic metadata, filter state, route and cluster names.
    pub info: &'a mut StreamInfo,
    /// The route chosen before the decoder filters ran (`None`: no route matched; the router
    /// will answer 404 `NR` after the chain).
    pub route: Option<RouteCx<'a>>,
}

/// The chosen route, every level: the filters read their per-filter configuration from it, and
/// Envoy's router finalizes every local reply it sends (direct responses, redirects, upstream
/// failures, unknown clusters, filter replies) with the response header mutations of the
/// weighted cluster, route, virtual host and route configuration.
#[derive(Clone, Copy)]
pub struct RouteCx<'a> {
    pub route_config: &'a crate::model::route::RouteConfig,
    pub vhost: &'a crate::model::route::VirtualHost,
    pub route: &'a crate::model::route::Route,
    /// The weighted cluster chosen, when the route has weighted clusters.
    pub weighted: Option<&'a crate::model::route::WeightedCluster>,
}

impl<'a> RouteCx<'a> {
    /// The name of the cluster the route sends to: its own, the weighted cluster chosen, or
    /// the one `cluster_header` names. `None` for direct responses and redirects.
    pub fn cluster_name<'h>(&self, headers: &'h http::HeaderMap) -> Option<&'h str>
    where
        'a: 'h,
    {
        use crate::model::route::{ClusterTarget, RouteAction};
        let RouteAction::Forward(fwd) = &self.route.action else {
            return None;
        };
        match &fwd.cluster {
            ClusterTarget::Name(n) => Some(&**n),
            ClusterTarget::Weighted(_) => self.weighted.map(|w| &*w.name),
            ClusterTarget::Header(h) => headers.get(h).and_then(|v| v.to_str().ok()),
        }
    }

    /// The most specific `typed_per_filter_config` entry for a filter (weighted cluster, route,
    /// virtual host, route configuration), as Envoy's `mostSpecificPerFilterConfig`.
    pub fn per_filter(&self, filter_name: &str) -> Option<&'a PerFilter> {
        let levels = self.weighted.map(|w| &w.per_filter).into_iter().chain([
            &self.route.per_filter,
            &self.vhost.per_filter,
            &self.route_config.per_filter,
        ]);
        crate::model::per_filter::most_specific(levels, filter_name)
    }
}

/// One filter's instance on one stream. Every hook has a default that passes everything on,
/// so a filter implements only the hooks it acts in.
pub trait HttpFilter: Send {
    /// The request's headers (`end_stream`: the request has no body).
    fn on_request_headers(
        &mut self,
        _req: &mut http::request::Parts,
        _end_stream: bool,
        _cx: &mut StreamCx<'_>,
    ) -> Flow {
        Flow::Continue
    }

    /// The request body (data and trailers, as they stream), once the headers continued; wrap
    /// it to observe, change or buffer it.
    fn on_request_body(&mut self, body: Body, _cx: &mut StreamCx<'_>) -> Body {
        body
    }

    /// The response's headers, before they are sent (encoder side: reverse chain order).
    fn on_response_headers(
        &mut self,
        _resp: &mut http::response::Parts,
        _end_stream: bool,
        _cx: &mut StreamCx<'_>,
    ) -> Flow {
        Flow::Continue
    }

    /// The response body (data and trailers, as they stream).
    fn on_response_body(&mut self, body: Body, _cx: &mut StreamCx<'_>) -> Body {
        body
    }
}

/// A configured filter of a listener's chain: creates its instance per stream.
pub trait HttpFilterFactory: Send + Sync + std::fmt::Debug {
    /// `HttpFilter.name`: the key of `typed_per_filter_config`.
    fn name(&self) -> &str;

    /// The filter for one stream, `None` when it does nothing on it (disabled for the route, or
    /// nothing configured where it applies). `per_route` is the route's most specific entry for
    /// this filter's name (the chain runner resolves `disabled` before calling).
    fn create(
        &self,
        per_route: Option<&crate::model::per_filter::PerFilterConfig>,
        cx: &StreamCx<'_>,
    ) -> Option<Box<dyn HttpFilter>>;

    /// Called once at the end of every stream whose route enables the filter (Envoy's
    /// access-log time, as the access-log handler of the filter Envoy created for the
    /// stream), whether or not `create` returned an instance; `observes_completion` says
    /// whether to call it.
    fn on_stream_complete(&self, _s: &CompletedStream<'_>) {}

    fn observes_completion(&self) -> bool {
        false
    }

    /// The request and response headers `on_stream_complete` reads (kept for it, as for
    /// the access log).
    fn completion_headers(&self) -> (&[http::HeaderName], &[http::HeaderName]) {
        (&[], &[])
    }
}

/// A finished stream, as the access log sees it.
pub struct CompletedStream<'a> {
    pub info: &'a StreamInfo,
    pub request: Option<&'a crate::http::stream::RequestSnapshot>,
    pub response_headers: Option<&'a http::HeaderMap>,
}
