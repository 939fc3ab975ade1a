//! Istio's `istio.alpn` (`istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig`): the ALPN
//! list a new upstream TLS connection offers, by the HTTP protocol it will carry. The filter
//! does nothing per stream: the router reads the overrides when it connects (Istio's filter
//! sets them in the stream's filter state for the upstream connection; remora's pools key
//! their connections by the list offered).

use crate::model::hcm::{AlpnOverrides, HttpFilter, HttpFilterEntry};
use std::sync::Arc;

/// The overrides the router offers: the last `istio.alpn` of the chain (each sets the same
/// filter-state key, so the last one wins).
pub fn router_overrides(filters: &[HttpFilterEntry]) -> Option<Arc<AlpnOverrides>> {
    filters.iter().rev().find_map(|f| match &f.filter {
        HttpFilter::Alpn(a) => Some(a.clone()),
        _ => None,
    })
}
