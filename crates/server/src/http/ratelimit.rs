//! The optional per-client rate limit (off by default): a token bucket per client
//! IP, refilled at `rate_limit_per_sec` up to `rate_limit_burst`, answering 429
//! when empty.
//!
//! The buckets live in one map behind a `parking_lot` mutex held for a few
//! arithmetic operations and never across an await. The map is bounded: past
//! `MAX_CLIENTS` entries, buckets that have refilled completely (clients that went
//! quiet) are dropped, which forgets nothing a full bucket would not.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

use parking_lot::Mutex;

/// Clients tracked before idle ones are forgotten.
const MAX_CLIENTS: usize = 10_000;

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets per client.
#[derive(Default)]
pub struct RateLimiter {
    per_sec: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("per_sec", &self.per_sec)
            .field("burst", &self.burst)
            .finish()
    }
}

impl RateLimiter {
    /// `per_sec == 0` turns the limit off.
    pub fn new(per_sec: f64, burst: f64) -> Self {
        Self {
            per_sec,
            burst: burst.max(1.0),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Whether the limit is on.
    pub fn enabled(&self) -> bool {
        self.per_sec > 0.0
    }

    /// Takes a token for `client` at `now`; false means 429.
    pub fn allow(&self, client: IpAddr, now: Instant) -> bool {
        if !self.enabled() {
            return true;
        }
        let mut buckets = self.buckets.lock();
        if buckets.len() >= MAX_CLIENTS && !buckets.contains_key(&client) {
            let (rate, burst) = (self.per_sec, self.burst);
            buckets.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
        }
        let bucket = buckets.entry(client).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let refill = now.duration_since(bucket.at).as_secs_f64() * self.per_sec;
        bucket.tokens = (bucket.tokens + refill).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_then_the_rate_per_client() {
        let limiter = RateLimiter::new(2.0, 3.0);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t0 = Instant::now();
        assert!((0..3).all(|_| limiter.allow(a, t0)));
        assert!(!limiter.allow(a, t0), "burst spent");
        assert!(limiter.allow(b, t0), "another client has its own bucket");
        assert!(!limiter.allow(a, t0 + Duration::from_millis(400)));
        assert!(
            limiter.allow(a, t0 + Duration::from_millis(600)),
            "refilled at 2/s"
        );
        assert!(RateLimiter::new(0.0, 0.0).allow(a, t0), "off");
    }
}
