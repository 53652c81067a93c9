//! The optional per-client rate limit (off by default): a token bucket per client
//! IP, refilled at `rate_limit_per_sec` up to `rate_limit_burst`, answering 429
//! when empty.
//!
//! The buckets live in one map behind a `parking_lot` mutex held for a few
//! arithmetic operations and never across an await. The map is bounded: past
//! `MAX_CLIENTS` entries, buckets that have refilled completely (clients that went
//! quiet) are dropped, which forgets nothing a full bucket would not.
//!
//! In a cluster the limit is the cluster's, shared through Redis without a request
//! ever waiting on it: each bucket also counts the requests it let through, a task
//! adds those counts to a per-client counter of the current second in Redis every
//! 100 ms ([`RateLimiter::take_unsynced`]), and a client whose cluster-wide count
//! for the second is past `per_sec + burst` is refused on every replica until the
//! second ends ([`RateLimiter::mark_over`]). So the cluster lets a client through at
//! most one sync interval's worth of requests past the limit; with Redis away each
//! replica falls back to its own bucket.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

use parking_lot::Mutex;

/// Clients tracked before idle ones are forgotten.
const MAX_CLIENTS: usize = 10_000;

struct Bucket {
    tokens: f64,
    at: Instant,
    /// Requests let through since the last share with the cluster.
    unsynced: u32,
    /// The Unix second in which the cluster-wide count is over the limit (0: none).
    over_in: u64,
}

/// Token buckets per client.
#[derive(Default)]
pub struct RateLimiter {
    per_sec: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
    /// Whether a cluster shares the counts (then `unsynced` is kept).
    shared: std::sync::atomic::AtomicBool,
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
            shared: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Counts requests for a cluster-wide share from now on.
    pub fn share(&self) {
        self.shared
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Requests a cluster-wide second may carry per client: the burst plus a
    /// second's refill.
    pub fn window_limit(&self) -> u64 {
        (self.per_sec + self.burst).ceil() as u64
    }

    /// Each client's requests let through since the last call, reset to 0.
    pub fn take_unsynced(&self) -> Vec<(IpAddr, u32)> {
        let mut buckets = self.buckets.lock();
        buckets
            .iter_mut()
            .filter(|(_, b)| b.unsynced > 0)
            .map(|(ip, b)| (*ip, std::mem::take(&mut b.unsynced)))
            .collect()
    }

    /// The cluster counted `client` over the limit in Unix second `second`.
    pub fn mark_over(&self, client: IpAddr, second: u64) {
        if let Some(bucket) = self.buckets.lock().get_mut(&client) {
            bucket.over_in = bucket.over_in.max(second);
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
            unsynced: 0,
            over_in: 0,
        });
        let shared = self.shared.load(std::sync::atomic::Ordering::Relaxed);
        if shared && bucket.over_in != 0 && bucket.over_in == unix_second() {
            return false;
        }
        let refill = now.duration_since(bucket.at).as_secs_f64() * self.per_sec;
        bucket.tokens = (bucket.tokens + refill).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            if shared {
                bucket.unsynced = bucket.unsynced.saturating_add(1);
            }
            true
        } else {
            false
        }
    }
}

/// The current Unix second: the cluster's rate windows.
pub fn unix_second() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
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

    #[test]
    fn a_shared_limiter_counts_for_the_cluster_and_obeys_its_verdict() {
        let limiter = RateLimiter::new(100.0, 10.0);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        assert!(limiter.allow(a, t0));
        assert!(
            limiter.take_unsynced().is_empty(),
            "not shared: nothing kept"
        );
        limiter.share();
        assert!((0..3).all(|_| limiter.allow(a, t0)));
        assert_eq!(limiter.take_unsynced(), vec![(a, 3)]);
        assert!(limiter.take_unsynced().is_empty(), "taken once");
        assert_eq!(limiter.window_limit(), 110);
        // Over the limit cluster-wide this second: refused though tokens remain.
        let second = unix_second();
        limiter.mark_over(a, second);
        assert!(!limiter.allow(a, t0) || unix_second() != second);
        // A verdict on a past second does not hold now.
        limiter.mark_over(a, 0);
        let later = RateLimiter::new(100.0, 10.0);
        later.share();
        assert!(later.allow(a, t0));
        later.mark_over(a, unix_second() - 5);
        assert!(later.allow(a, t0));
    }
}
