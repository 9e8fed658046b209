//! Per-API-key rate limiting of the user API: one token bucket per key, in memory.
//!
//! Buckets are keyed by the SHA-256 of the key (the form the database holds), never the
//! key itself. The limit is per process: N `serve --role api` processes behind a load
//! balancer let a key through at up to N times the rate. Full buckets carry no
//! information, so they are dropped whenever the map grows past `PRUNE_AT`; memory stays
//! bounded by the keys active in the last few seconds.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::RateLimit;

/// Map size beyond which full (idle) buckets are dropped.
const PRUNE_AT: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Token buckets keyed by API key hash.
#[derive(Debug)]
pub struct RateLimiter {
    limit: RateLimit,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    pub fn new(limit: RateLimit) -> RateLimiter {
        RateLimiter {
            limit,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token from the bucket of `key_hash`; `Err` with how long until one is
    /// available when the bucket is empty.
    pub fn check(&self, key_hash: &str, now: Instant) -> Result<(), Duration> {
        if !self.limit.enabled() {
            return Ok(());
        }
        let rate = f64::from(self.limit.per_second);
        let burst = f64::from(self.limit.burst.max(1));
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= PRUNE_AT && !buckets.contains_key(key_hash) {
            buckets.retain(|_, b| refill(b, now, rate, burst) < burst);
        }
        let bucket = buckets.entry(key_hash.to_string()).or_insert(Bucket {
            tokens: burst,
            updated: now,
        });
        let tokens = refill(bucket, now, rate, burst);
        bucket.updated = now.max(bucket.updated);
        if tokens >= 1.0 {
            bucket.tokens = tokens - 1.0;
            Ok(())
        } else {
            bucket.tokens = tokens;
            Err(Duration::from_secs_f64((1.0 - tokens) / rate))
        }
    }
}

/// The bucket's tokens at `now`.
fn refill(b: &Bucket, now: Instant, rate: f64, burst: f64) -> f64 {
    let elapsed = now.saturating_duration_since(b.updated).as_secs_f64();
    (b.tokens + elapsed * rate).min(burst)
}

/// `Retry-After` in whole seconds, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_second: u32, burst: u32) -> RateLimiter {
        RateLimiter::new(RateLimit { per_second, burst })
    }

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let l = limiter(2, 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.check("a", t0).is_ok());
        }
        let wait = l.check("a", t0).unwrap_err();
        assert!(wait <= Duration::from_millis(500), "{wait:?}");
        assert_eq!(retry_after_secs(wait), 1);
        // Another key has its own bucket.
        assert!(l.check("b", t0).is_ok());
        // Half a second later one token is back, and only one.
        let t1 = t0 + Duration::from_millis(500);
        assert!(l.check("a", t1).is_ok());
        assert!(l.check("a", t1).is_err());
        // Long idle: the bucket refills to the burst, not beyond.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(l.check("a", t2).is_ok());
        }
        assert!(l.check("a", t2).is_err());
    }

    #[test]
    fn zero_disables_and_idle_buckets_are_pruned() {
        let off = limiter(0, 0);
        let t0 = Instant::now();
        for _ in 0..1000 {
            assert!(off.check("a", t0).is_ok());
        }
        let l = limiter(1000, 1);
        for i in 0..PRUNE_AT {
            l.check(&format!("k{i}"), t0).unwrap();
        }
        l.check("late", t0 + Duration::from_secs(1)).unwrap();
        assert!(l.buckets.lock().unwrap().len() < 10);
    }

    #[test]
    fn retry_after_is_whole_seconds_of_at_least_one() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }
}
