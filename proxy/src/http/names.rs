//! Header names the connection manager and router touch on every request, as constants. A
//! `&str` lookup parses and classifies the name each time; a `HeaderName` constant is ready.
//! Also the small helpers that let the common request skip whole groups of lookups, and the
//! per-worker pool of header maps that spares the codecs two allocations per head.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use std::cell::RefCell;

macro_rules! names {
    ($($(#[$doc:meta])* $id:ident = $s:literal;)*) => {
        $($(#[$doc])* pub const $id: HeaderName = HeaderName::from_static($s);)*
    };
}

names! {
    X_REQUEST_ID = "x-request-id";
    X_FORWARDED_FOR = "x-forwarded-for";
    X_FORWARDED_PROTO = "x-forwarded-proto";
    X_FORWARDED_PORT = "x-forwarded-port";
    X_FORWARDED_HOST = "x-forwarded-host";
    X_FORWARDED_CLIENT_CERT = "x-forwarded-client-cert";
    X_ENVOY_INTERNAL = "x-envoy-internal";
    X_ENVOY_EXTERNAL_ADDRESS = "x-envoy-external-address";
    X_ENVOY_ORIGINAL_PATH = "x-envoy-original-path";
    X_ENVOY_ORIGINAL_HOST = "x-envoy-original-host";
    X_ENVOY_EXPECTED_RQ_TIMEOUT_MS = "x-envoy-expected-rq-timeout-ms";
    X_ENVOY_UPSTREAM_RQ_TIMEOUT_MS = "x-envoy-upstream-rq-timeout-ms";
    X_ENVOY_UPSTREAM_RQ_PER_TRY_TIMEOUT_MS = "x-envoy-upstream-rq-per-try-timeout-ms";
    X_ENVOY_MAX_RETRIES = "x-envoy-max-retries";
    X_ENVOY_RETRY_ON = "x-envoy-retry-on";
    X_ENVOY_RETRY_GRPC_ON = "x-envoy-retry-grpc-on";
    X_ENVOY_RETRIABLE_STATUS_CODES = "x-envoy-retriable-status-codes";
    X_ENVOY_RETRIABLE_HEADER_NAMES = "x-envoy-retriable-header-names";
    X_ENVOY_ATTEMPT_COUNT = "x-envoy-attempt-count";
    X_ENVOY_RATELIMITED = "x-envoy-ratelimited";
    GRPC_STATUS = "grpc-status";
    X_ENVOY_UPSTREAM_STREAM_DURATION_MS = "x-envoy-upstream-stream-duration-ms";
    X_ENVOY_HEDGE_ON_PER_TRY_TIMEOUT = "x-envoy-hedge-on-per-try-timeout";
    X_ENVOY_UPSTREAM_SERVICE_TIME = "x-envoy-upstream-service-time";
    X_ENVOY_OVERLOADED = "x-envoy-overloaded";
    X_ENVOY_DOWNSTREAM_SERVICE_CLUSTER = "x-envoy-downstream-service-cluster";
    X_ENVOY_DOWNSTREAM_SERVICE_NODE = "x-envoy-downstream-service-node";
    X_ENVOY_DECORATOR_OPERATION = "x-envoy-decorator-operation";
    X_ENVOY_FORCE_TRACE = "x-envoy-force-trace";
    X_ENVOY_IP_TAGS = "x-envoy-ip-tags";
    X_ENVOY_UPSTREAM_ALT_STAT_NAME = "x-envoy-upstream-alt-stat-name";
    KEEP_ALIVE = "keep-alive";
    PROXY_CONNECTION = "proxy-connection";
    HTTP2_SETTINGS = "http2-settings";
}

/// Whether any header is an `x-envoy-*` one: one pass over the names, no hashing, so the
/// usual request skips Envoy's header sanitation lookups altogether.
pub fn any_envoy_header(h: &HeaderMap) -> bool {
    h.keys().any(|k| k.as_str().starts_with("x-envoy-"))
}

/// Hop-by-hop headers (RFC 9110 §7.6.1 and the legacy ones Envoy also strips).
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    *name == header::CONNECTION
        || *name == header::UPGRADE
        || *name == header::TE
        || *name == header::TRANSFER_ENCODING
        || *name == KEEP_ALIVE
        || *name == PROXY_CONNECTION
        || *name == HTTP2_SETTINGS
}

pub fn any_hop_by_hop(h: &HeaderMap) -> bool {
    h.keys().any(is_hop_by_hop)
}

/// Values below this are formatted once per worker and shared (`x-envoy-upstream-service-time`
/// and `x-envoy-expected-rq-timeout-ms` are small numbers on almost every request).
const CACHED_NUMBERS: u64 = 4096;

thread_local! {
    static NUMBERS: RefCell<Vec<Option<HeaderValue>>> = const { RefCell::new(Vec::new()) };
}

/// A decimal header value; small numbers come from a per-worker cache instead of an allocation.
pub fn number(n: u64) -> HeaderValue {
    if n >= CACHED_NUMBERS {
        return HeaderValue::from(n);
    }
    NUMBERS.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.is_empty() {
            cache.resize(CACHED_NUMBERS as usize, None);
        }
        cache[n as usize]
            .get_or_insert_with(|| HeaderValue::from(n))
            .clone()
    })
}

// === header maps ===

thread_local! {
    static MAPS: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
}

/// Maps kept per worker; beyond this, returned maps are freed.
const POOLED_MAPS: usize = 64;

/// An empty header map with room for `n` headers, from this worker's pool.
pub fn take_header_map(n: usize) -> HeaderMap {
    match MAPS.with(|m| m.borrow_mut().pop()) {
        Some(mut map) => {
            map.reserve(n);
            map
        }
        None => HeaderMap::with_capacity(n),
    }
}

/// Give a finished message's header map back for the next head (its allocation is kept).
pub fn recycle_header_map(mut map: HeaderMap) {
    if map.capacity() == 0 || map.capacity() > 256 {
        return;
    }
    map.clear();
    MAPS.with(|m| {
        let mut m = m.borrow_mut();
        if m.len() < POOLED_MAPS {
            m.push(map);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("a"));
        h.insert("x-custom", HeaderValue::from_static("b"));
        assert!(!any_envoy_header(&h));
        assert!(!any_hop_by_hop(&h));
        h.insert("keep-alive", HeaderValue::from_static("5"));
        assert!(any_hop_by_hop(&h));
        h.insert(X_ENVOY_MAX_RETRIES, HeaderValue::from_static("1"));
        assert!(any_envoy_header(&h));
        assert_eq!(number(0), "0");
        assert_eq!(number(17), "17");
        assert_eq!(number(17), "17");
        assert_eq!(number(123_456), "123456");
        recycle_header_map(h);
        let again = take_header_map(2);
        assert!(again.is_empty() && again.capacity() >= 2);
    }
}
