//! `envoy.filters.network.local_ratelimit` (Envoy's
//! `source/extensions/filters/network/local_ratelimit/`): each new connection on the filter
//! chain takes a token from the chain's bucket (shared by every worker); without one it is
//! closed before any byte goes on (local close reason `local_ratelimit_close_over_limit`),
//! its response flag `URX` (Envoy's `UpstreamRetryLimitExceeded`, in tcp_proxy's access log)
//! and `local_rate_limit.<stat_prefix>.rate_limited` counts it.

use std::sync::Arc;

use super::{ConnCx, NetFlow, NetworkFilter, NetworkFilterFactory};
use crate::filters::common::local_ratelimit::TokenBucket;
use crate::model::local_ratelimit::NetworkLocalRateLimit;
use crate::model::runtime::RuntimeFlag;
use crate::runtime::RuntimeLoader;
use crate::stream_info::ResponseFlags;
use crate::telemetry::stats::{Counter, Store};

/// `%DOWNSTREAM_LOCAL_CLOSE_REASON%` of a connection closed over the limit.
pub const CLOSE_OVER_LIMIT: &str = "local_ratelimit_close_over_limit";

/// The filter on one filter chain: its bucket lives as long as the chain's configuration.
#[derive(Debug)]
pub struct NetworkLocalRateLimitFactory {
    /// `runtime_enabled`, read per connection from the runtime's snapshot.
    enabled: RuntimeFlag,
    runtime: Arc<RuntimeLoader>,
    bucket: Arc<TokenBucket>,
    rate_limited: Arc<Counter>,
}

impl NetworkLocalRateLimitFactory {
    pub fn new(config: &NetworkLocalRateLimit, store: &Store, runtime: Arc<RuntimeLoader>) -> Self {
        Self {
            enabled: config.enabled.clone(),
            runtime,
            bucket: Arc::new(TokenBucket::new(&config.token_bucket)),
            rate_limited: store.counter(&format!(
                "local_rate_limit.{}.rate_limited",
                config.stat_prefix
            )),
        }
    }

    /// Whether a new connection may go on (takes a token if so).
    fn admit(&self) -> bool {
        if self.bucket.consume() {
            return true;
        }
        self.rate_limited.inc();
        false
    }
}

impl NetworkFilterFactory for NetworkLocalRateLimitFactory {
    fn create(&self, _cx: &ConnCx<'_>) -> Option<Box<dyn NetworkFilter>> {
        if !self.enabled.enabled(|| self.runtime.snapshot()) {
            return None;
        }
        Some(Box::new(Filter {
            admitted: self.admit(),
        }))
    }
}

/// The decision was taken when the connection was accepted.
struct Filter {
    admitted: bool,
}

impl NetworkFilter for Filter {
    fn on_new_connection(&mut self, cx: &mut ConnCx<'_>) -> NetFlow {
        if self.admitted {
            return NetFlow::Continue;
        }
        *cx.response_flags |= ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED;
        NetFlow::Close(CLOSE_OVER_LIMIT.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::local_ratelimit::TokenBucket as BucketConfig;
    use crate::stream_info::DynamicMetadata;
    use std::time::Duration;

    fn connect(f: &NetworkLocalRateLimitFactory) -> Option<(NetFlow, ResponseFlags)> {
        let conn = crate::filters::http::local_ratelimit::tests::connection();
        let mut metadata = DynamicMetadata::default();
        let mut flags = ResponseFlags::empty();
        let mut cx = ConnCx {
            connection: &conn,
            metadata: &mut metadata,
            response_flags: &mut flags,
            termination_details: &mut None,
        };
        let mut filter = f.create(&cx)?;
        let flow = filter.on_new_connection(&mut cx);
        Some((flow, flags))
    }

    fn config(enabled: bool) -> NetworkLocalRateLimit {
        NetworkLocalRateLimit {
            stat_prefix: "tcp".into(),
            token_bucket: BucketConfig {
                max_tokens: 1,
                tokens_per_fill: 1,
                fill_interval: Duration::from_secs(1),
            },
            enabled: RuntimeFlag {
                default: enabled,
                runtime_key: None,
            },
        }
    }

    #[tokio::test(start_paused = true)]
    async fn connections_over_the_bucket_are_closed_and_counted() {
        let store = Store::default();
        let f = NetworkLocalRateLimitFactory::new(
            &config(true),
            &store,
            RuntimeLoader::for_tests(Default::default()),
        );
        assert!(matches!(
            connect(&f),
            Some((NetFlow::Continue, f)) if f.is_empty()
        ));
        let Some((NetFlow::Close(d), flags)) = connect(&f) else {
            panic!("closed")
        };
        assert_eq!(d, "local_ratelimit_close_over_limit");
        // Envoy's `UpstreamRetryLimitExceeded` on the connection's stream info.
        assert_eq!(flags, ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED);
        assert_eq!(
            store.counter("local_rate_limit.tcp.rate_limited").value(),
            1
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(matches!(connect(&f), Some((NetFlow::Continue, _))));

        let off = NetworkLocalRateLimitFactory::new(
            &config(false),
            &store,
            RuntimeLoader::for_tests(Default::default()),
        );
        assert!((0..3).all(|_| connect(&off).is_none()));
    }
}
