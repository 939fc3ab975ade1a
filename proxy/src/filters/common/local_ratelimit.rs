//! The local rate limiter both local_ratelimit filters share (Envoy's
//! `source/extensions/filters/common/local_ratelimit/`): token buckets that refill continuously
//! (Envoy's `AtomicTokenBucketImpl`: `tokens_per_fill / fill_interval` tokens a second, up to
//! `max_tokens`, starting full), a default bucket and one per configured descriptor.
//!
//! A bucket is shared by every worker (one per filter configuration, as in Envoy) and taken
//! from without a lock. Time is tokio's, so paused-time tests drive it.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use tokio::time::Instant;

use crate::model::local_ratelimit::{LocalDescriptor, TokenBucket as BucketConfig};

/// One token bucket (Envoy's `AtomicTokenBucketImpl`): the bucket is the time since which it
/// has been filling, so that taking a token is one compare-and-swap on that instant.
#[derive(Debug)]
pub struct TokenBucket {
    max_tokens: f64,
    /// Tokens per second.
    fill_rate: f64,
    base: Instant,
    /// Seconds after `base` (an `f64`'s bits) since which the bucket has been filling:
    /// `min(max_tokens, (now - filling_since) * fill_rate)` tokens are in it.
    filling_since: AtomicU64,
}

impl TokenBucket {
    pub fn new(c: &BucketConfig) -> Self {
        let max_tokens = f64::from(c.max_tokens);
        // Envoy's floor: one token a year.
        let fill_rate = c.fill_rate().max(1.0 / (365.0 * 24.0 * 3600.0));
        Self {
            max_tokens,
            fill_rate,
            base: Instant::now(),
            // Full at the start.
            filling_since: AtomicU64::new((-max_tokens / fill_rate).to_bits()),
        }
    }

    fn now(&self) -> f64 {
        Instant::now()
            .saturating_duration_since(self.base)
            .as_secs_f64()
    }

    fn tokens_at(&self, now: f64, since: f64) -> f64 {
        ((now - since) * self.fill_rate).min(self.max_tokens)
    }

    /// Take one token; `false` when less than one is left.
    pub fn consume(&self) -> bool {
        let now = self.now();
        let mut old = self.filling_since.load(Relaxed);
        loop {
            let since = f64::from_bits(old);
            let tokens = self.tokens_at(now, since);
            if tokens < 1.0 {
                return false;
            }
            let new = now - (tokens - 1.0) / self.fill_rate;
            match self
                .filling_since
                .compare_exchange_weak(old, new.to_bits(), Relaxed, Relaxed)
            {
                Ok(_) => return true,
                Err(actual) => old = actual,
            }
        }
    }

    fn tokens(&self) -> f64 {
        self.tokens_at(self.now(), f64::from_bits(self.filling_since.load(Relaxed)))
    }

    pub fn max_tokens(&self) -> u64 {
        self.max_tokens as u64
    }

    /// Whole tokens in the bucket now.
    pub fn remaining_tokens(&self) -> u64 {
        self.tokens().floor() as u64
    }

    /// `x-ratelimit-reset`: the seconds until a whole token is in the bucket, rounded up
    /// (0 while one is), as Envoy 1.40 reports them.
    pub fn reset_seconds(&self) -> u64 {
        self.next_token_ms().div_ceil(1000)
    }

    /// `Retry-After`: the seconds until the next token, at least 1.
    pub fn retry_after_seconds(&self) -> u64 {
        self.next_token_ms().div_ceil(1000).max(1)
    }

    fn next_token_ms(&self) -> u64 {
        let tokens = self.tokens();
        if tokens >= 1.0 {
            return 0;
        }
        ((1.0 - tokens) / self.fill_rate * 1000.0).ceil() as u64
    }

    pub fn fill_rate(&self) -> f64 {
        self.fill_rate
    }
}

/// A configured descriptor: `(key, value)` entries in order.
pub type Descriptor = Vec<(String, String)>;

/// One entry of a request's descriptor: its key (from the configuration) and its value
/// (borrowed from the configuration or the request where it can be).
pub type Entry<'a> = (&'a str, Cow<'a, str>);

/// The default bucket and the descriptors' buckets of one filter configuration.
#[derive(Debug)]
pub struct LocalRateLimiter {
    default: Default,
    /// Configured descriptors with their buckets.
    descriptors: Vec<(Descriptor, Arc<TokenBucket>)>,
    always_consume_default: bool,
}

#[derive(Debug)]
enum Default {
    /// No `token_bucket`: only descriptors limit.
    None,
    /// `max_tokens: 0`: every request is limited.
    Deny,
    Bucket(Arc<TokenBucket>),
}

/// What the limiter decided, and the bucket whose numbers the `x-ratelimit-*` headers report.
#[derive(Debug)]
pub struct Decision {
    pub allowed: bool,
    pub bucket: Option<Arc<TokenBucket>>,
}

impl LocalRateLimiter {
    pub fn new(
        default: Option<&BucketConfig>,
        descriptors: &[LocalDescriptor],
        always_consume_default: bool,
    ) -> Self {
        let default = match default {
            None => Default::None,
            Some(b) if b.max_tokens == 0 => Default::Deny,
            Some(b) => Default::Bucket(Arc::new(TokenBucket::new(b))),
        };
        Self {
            default,
            descriptors: descriptors
                .iter()
                .map(|d| {
                    (
                        d.entries.clone(),
                        Arc::new(TokenBucket::new(&d.token_bucket)),
                    )
                })
                .collect(),
            always_consume_default,
        }
    }

    pub fn has_descriptors(&self) -> bool {
        !self.descriptors.is_empty()
    }

    /// The bucket of the configured descriptor a request's descriptor is (entry for entry).
    pub fn bucket_of(&self, request: &[Entry<'_>]) -> Option<&Arc<TokenBucket>> {
        self.descriptors
            .iter()
            .find(|(e, _)| {
                e.len() == request.len()
                    && e.iter()
                        .zip(request)
                        .all(|((k, v), (rk, rv))| k == rk && v == rv)
            })
            .map(|(_, b)| b)
    }

    /// Envoy's `requestAllowed`, given the buckets of the request's descriptors that are
    /// configured (`bucket_of`): they are consumed slowest-filling first (the first empty one
    /// limits the request), then the default bucket when none matched or
    /// `always_consume_default_token_bucket`.
    pub fn request_allowed(&self, matched: &mut [&Arc<TokenBucket>]) -> Decision {
        matched.sort_by(|a, b| a.fill_rate().total_cmp(&b.fill_rate()));
        for b in matched.iter() {
            if !b.consume() {
                return Decision {
                    allowed: false,
                    bucket: Some(Arc::clone(b)),
                };
            }
        }
        let first = matched.first().map(|b| Arc::clone(b));
        if !matched.is_empty() && !self.always_consume_default {
            return Decision {
                allowed: true,
                bucket: first,
            };
        }
        match &self.default {
            Default::None => Decision {
                allowed: true,
                bucket: first,
            },
            Default::Deny => Decision {
                allowed: false,
                bucket: None,
            },
            Default::Bucket(d) if !d.consume() => Decision {
                allowed: false,
                bucket: Some(Arc::clone(d)),
            },
            Default::Bucket(d) => Decision {
                allowed: true,
                bucket: Some(first.unwrap_or_else(|| Arc::clone(d))),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn bucket(max_tokens: u32, tokens_per_fill: u32, secs: u64) -> BucketConfig {
        BucketConfig {
            max_tokens,
            tokens_per_fill,
            fill_interval: Duration::from_secs(secs),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_bucket_starts_full_and_refills_continuously_up_to_its_maximum() {
        let b = TokenBucket::new(&bucket(2, 2, 5));
        assert!(b.consume() && b.consume());
        assert!(!b.consume());
        assert_eq!(b.remaining_tokens(), 0);
        // 0.4 tokens a second: one token after 2.5 s.
        assert_eq!(b.reset_seconds(), 3);
        assert_eq!(b.retry_after_seconds(), 3);
        tokio::time::advance(Duration::from_millis(1000)).await;
        // 0.4 tokens in: 1.5 s to go.
        assert_eq!(b.reset_seconds(), 2);
        assert_eq!(b.retry_after_seconds(), 2);
        tokio::time::advance(Duration::from_millis(1400)).await;
        assert!(!b.consume());
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(b.consume());
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert!(b.consume() && b.consume() && !b.consume());
        assert_eq!(b.max_tokens(), 2);
    }

    fn descriptor(k: &str, v: &str, b: BucketConfig) -> LocalDescriptor {
        LocalDescriptor {
            entries: vec![(k.into(), v.into())],
            token_bucket: b,
        }
    }

    fn req(k: &'static str, v: &'static str) -> Vec<Entry<'static>> {
        vec![(k, Cow::Borrowed(v))]
    }

    impl LocalRateLimiter {
        /// The decision on a request's descriptors.
        fn decide(&self, request: &[Vec<Entry<'_>>]) -> Decision {
            let mut matched: Vec<_> = request.iter().filter_map(|d| self.bucket_of(d)).collect();
            self.request_allowed(&mut matched)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn descriptors_limit_first_and_the_default_bucket_is_consumed_as_configured() {
        let ds = [descriptor("k", "slow", bucket(1, 1, 10))];
        let l = LocalRateLimiter::new(Some(&bucket(3, 1, 1)), &ds, true);
        let slow = [req("k", "slow")];
        let d = l.decide(&slow);
        assert!(d.allowed);
        // The matched descriptor's bucket is the one reported.
        assert_eq!(d.bucket.unwrap().max_tokens(), 1);
        assert!(!l.decide(&slow).allowed);
        // The default bucket lost one token to the first request.
        assert!(l.decide(&[req("k", "other")]).allowed);
        assert!(l.decide(&[]).allowed);
        assert!(!l.decide(&[]).allowed);

        let l = LocalRateLimiter::new(Some(&bucket(1, 1, 1)), &ds, false);
        assert!(l.decide(&slow).allowed);
        // The default bucket was not touched.
        assert!(l.decide(&[]).allowed);
        assert!(!l.decide(&[]).allowed);
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_default_bucket_only_descriptors_limit_and_zero_tokens_deny() {
        let ds = [descriptor("k", "v", bucket(1, 1, 10))];
        let l = LocalRateLimiter::new(None, &ds, true);
        assert!(l.decide(&[]).allowed);
        assert!(l.decide(&[req("k", "v")]).allowed);
        assert!(!l.decide(&[req("k", "v")]).allowed);
        assert!(l.decide(&[req("k", "w")]).allowed);
        let deny = LocalRateLimiter::new(Some(&bucket(0, 1, 1)), &[], true);
        let d = deny.decide(&[]);
        assert!(!d.allowed && d.bucket.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn the_slowest_matched_descriptor_is_consumed_first() {
        let ds = [
            descriptor("a", "1", bucket(5, 5, 1)),
            descriptor("b", "1", bucket(1, 1, 60)),
        ];
        let l = LocalRateLimiter::new(None, &ds, true);
        let both = [req("a", "1"), req("b", "1")];
        assert!(l.decide(&both).allowed);
        let d = l.decide(&both);
        assert!(!d.allowed);
        assert_eq!(d.bucket.unwrap().max_tokens(), 1);
        // The fast bucket lost only the first request's token.
        assert!((0..4).all(|_| l.decide(&[req("a", "1")]).allowed));
        assert!(!l.decide(&[req("a", "1")]).allowed);
    }
}
