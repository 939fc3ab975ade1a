//! Envoy's response flags (`%RESPONSE_FLAGS%`, access-log `response_flag_filter`): the set,
//! and its short (`UF`) and long (`UpstreamConnectionFailure`) names in Envoy's order. Set on a
//! stream's `StreamInfo` at runtime; named in configuration by access-log filters.

use bitflags::bitflags;

bitflags! {
    /// Envoy's response flags (`%RESPONSE_FLAGS%`), in Envoy's order.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub struct ResponseFlags: u32 {
        const FAILED_LOCAL_HEALTH_CHECK = 1 << 0;
        const NO_HEALTHY_UPSTREAM = 1 << 1;
        const UPSTREAM_REQUEST_TIMEOUT = 1 << 2;
        const LOCAL_RESET = 1 << 3;
        const UPSTREAM_REMOTE_RESET = 1 << 4;
        const UPSTREAM_CONNECTION_FAILURE = 1 << 5;
        const UPSTREAM_CONNECTION_TERMINATION = 1 << 6;
        const UPSTREAM_OVERFLOW = 1 << 7;
        const NO_ROUTE_FOUND = 1 << 8;
        const DELAY_INJECTED = 1 << 9;
        const FAULT_INJECTED = 1 << 10;
        const RATE_LIMITED = 1 << 11;
        const UNAUTHORIZED_EXTERNAL_SERVICE = 1 << 12;
        const RATELIMIT_SERVICE_ERROR = 1 << 13;
        const DOWNSTREAM_CONNECTION_TERMINATION = 1 << 14;
        const UPSTREAM_RETRY_LIMIT_EXCEEDED = 1 << 15;
        const STREAM_IDLE_TIMEOUT = 1 << 16;
        const INVALID_ENVOY_REQUEST_HEADERS = 1 << 17;
        const DOWNSTREAM_PROTOCOL_ERROR = 1 << 18;
        const UPSTREAM_MAX_STREAM_DURATION_REACHED = 1 << 19;
        const RESPONSE_FROM_CACHE_FILTER = 1 << 20;
        const NO_FILTER_CONFIG_FOUND = 1 << 21;
        const DURATION_TIMEOUT = 1 << 22;
        const UPSTREAM_PROTOCOL_ERROR = 1 << 23;
        const NO_CLUSTER_FOUND = 1 << 24;
        const OVERLOAD_MANAGER = 1 << 25;
        const DNS_RESOLUTION_FAILURE = 1 << 26;
        const DROP_OVERLOAD = 1 << 27;
        const DOWNSTREAM_REMOTE_RESET = 1 << 28;
    }
}

/// (flag, short, long) in Envoy's order.
const FLAG_NAMES: [(ResponseFlags, &str, &str); 29] = [
    (
        ResponseFlags::FAILED_LOCAL_HEALTH_CHECK,
        "LH",
        "FailedLocalHealthCheck",
    ),
    (
        ResponseFlags::NO_HEALTHY_UPSTREAM,
        "UH",
        "NoHealthyUpstream",
    ),
    (
        ResponseFlags::UPSTREAM_REQUEST_TIMEOUT,
        "UT",
        "UpstreamRequestTimeout",
    ),
    (ResponseFlags::LOCAL_RESET, "LR", "LocalReset"),
    (
        ResponseFlags::UPSTREAM_REMOTE_RESET,
        "UR",
        "UpstreamRemoteReset",
    ),
    (
        ResponseFlags::UPSTREAM_CONNECTION_FAILURE,
        "UF",
        "UpstreamConnectionFailure",
    ),
    (
        ResponseFlags::UPSTREAM_CONNECTION_TERMINATION,
        "UC",
        "UpstreamConnectionTermination",
    ),
    (ResponseFlags::UPSTREAM_OVERFLOW, "UO", "UpstreamOverflow"),
    (ResponseFlags::NO_ROUTE_FOUND, "NR", "NoRouteFound"),
    (ResponseFlags::DELAY_INJECTED, "DI", "DelayInjected"),
    (ResponseFlags::FAULT_INJECTED, "FI", "FaultInjected"),
    (ResponseFlags::RATE_LIMITED, "RL", "RateLimited"),
    (
        ResponseFlags::UNAUTHORIZED_EXTERNAL_SERVICE,
        "UAEX",
        "UnauthorizedExternalService",
    ),
    (
        ResponseFlags::RATELIMIT_SERVICE_ERROR,
        "RLSE",
        "RateLimitServiceError",
    ),
    (
        ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION,
        "DC",
        "DownstreamConnectionTermination",
    ),
    (
        ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED,
        "URX",
        "UpstreamRetryLimitExceeded",
    ),
    (
        ResponseFlags::STREAM_IDLE_TIMEOUT,
        "SI",
        "StreamIdleTimeout",
    ),
    (
        ResponseFlags::INVALID_ENVOY_REQUEST_HEADERS,
        "IH",
        "InvalidEnvoyRequestHeaders",
    ),
    (
        ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR,
        "DPE",
        "DownstreamProtocolError",
    ),
    (
        ResponseFlags::UPSTREAM_MAX_STREAM_DURATION_REACHED,
        "UMSDR",
        "UpstreamMaxStreamDurationReached",
    ),
    (
        ResponseFlags::RESPONSE_FROM_CACHE_FILTER,
        "RFCF",
        "ResponseFromCacheFilter",
    ),
    (
        ResponseFlags::NO_FILTER_CONFIG_FOUND,
        "NFCF",
        "NoFilterConfigFound",
    ),
    (ResponseFlags::DURATION_TIMEOUT, "DT", "DurationTimeout"),
    (
        ResponseFlags::UPSTREAM_PROTOCOL_ERROR,
        "UPE",
        "UpstreamProtocolError",
    ),
    (ResponseFlags::NO_CLUSTER_FOUND, "NC", "NoClusterFound"),
    (
        ResponseFlags::OVERLOAD_MANAGER,
        "OM",
        "OverloadManagerTerminated",
    ),
    (
        ResponseFlags::DNS_RESOLUTION_FAILURE,
        "DF",
        "DnsResolutionFailed",
    ),
    (ResponseFlags::DROP_OVERLOAD, "DO", "DropOverload"),
    (
        ResponseFlags::DOWNSTREAM_REMOTE_RESET,
        "DR",
        "DownstreamRemoteReset",
    ),
];

// === impl ResponseFlags ===

impl ResponseFlags {
    /// `UF,URX`, or `-` when none is set.
    pub fn write_short(&self, out: &mut String) {
        self.write_with(out, |(_, short, _)| short)
    }

    pub fn write_long(&self, out: &mut String) {
        self.write_with(out, |(_, _, long)| long)
    }

    fn write_with(
        &self,
        out: &mut String,
        pick: impl Fn(&(ResponseFlags, &'static str, &'static str)) -> &'static str,
    ) {
        if self.is_empty() {
            out.push('-');
            return;
        }
        let mut first = true;
        for entry in FLAG_NAMES.iter().filter(|(f, _, _)| self.contains(*f)) {
            if !first {
                out.push(',');
            }
            first = false;
            out.push_str(pick(entry));
        }
    }

    pub fn short_string(&self) -> String {
        let mut s = String::new();
        self.write_short(&mut s);
        s
    }

    /// Parse a short name (`UF`), for access-log `response_flag_filter`.
    pub fn from_short(name: &str) -> Option<ResponseFlags> {
        FLAG_NAMES
            .iter()
            .find(|(_, s, _)| *s == name)
            .map(|(f, _, _)| *f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_print_in_envoy_order() {
        let f = ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED
            | ResponseFlags::UPSTREAM_CONNECTION_FAILURE;
        assert_eq!(f.short_string(), "UF,URX");
        assert_eq!(ResponseFlags::empty().short_string(), "-");
        let mut s = String::new();
        ResponseFlags::NO_ROUTE_FOUND.write_long(&mut s);
        assert_eq!(s, "NoRouteFound");
        assert_eq!(
            ResponseFlags::from_short("UO"),
            Some(ResponseFlags::UPSTREAM_OVERFLOW)
        );
    }
}
