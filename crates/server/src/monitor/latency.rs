//! A lock-free latency histogram for the monitor's p99: one atomic increment per
//! request, log-spaced buckets, percentiles from the difference of two snapshots.
//!
//! The Prometheus histogram cannot be read back in-process, and a per-request lock
//! or sample buffer would put contention on the request path; 48 counters at ~25%
//! width per bucket give a p99 accurate to a quarter, which is what an alert needs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const BUCKETS: usize = 48;
/// The upper bound of bucket 0; each next bound is 1.25× the previous (10 µs …
/// about 355 ms; the last bucket takes everything slower).
const FIRST_US: f64 = 10.0;
const GROWTH: f64 = 1.25;

fn upper_us(i: usize) -> f64 {
    FIRST_US * GROWTH.powi(i as i32)
}

/// Counts of requests per latency bucket.
#[derive(Debug)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; BUCKETS],
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// Counts at one instant.
pub type Snapshot = [u64; BUCKETS];

impl LatencyHistogram {
    /// Counts one request.
    pub fn record(&self, elapsed: Duration) {
        let us = elapsed.as_secs_f64() * 1e6;
        let i = if us <= FIRST_US {
            0
        } else {
            ((us / FIRST_US).ln() / GROWTH.ln()).ceil() as usize
        };
        self.buckets[i.min(BUCKETS - 1)].fetch_add(1, Ordering::Relaxed);
    }

    /// The counts now.
    pub fn snapshot(&self) -> Snapshot {
        std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed))
    }
}

/// The `q` quantile (0..1) of the requests between `before` and `after`, as the
/// upper bound of its bucket; `None` without requests.
pub fn quantile(before: &Snapshot, after: &Snapshot, q: f64) -> Option<Duration> {
    let counts: Vec<u64> = after
        .iter()
        .zip(before)
        .map(|(a, b)| a.saturating_sub(*b))
        .collect();
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = (q * total as f64).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, c) in counts.iter().enumerate() {
        seen += c;
        if seen >= rank {
            return Some(Duration::from_secs_f64(upper_us(i) / 1e6));
        }
    }
    Some(Duration::from_secs_f64(upper_us(BUCKETS - 1) / 1e6))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p99_of_an_interval_is_within_a_bucket() {
        let h = LatencyHistogram::default();
        let before = h.snapshot();
        assert_eq!(quantile(&before, &h.snapshot(), 0.99), None);
        for _ in 0..990 {
            h.record(Duration::from_micros(100));
        }
        for _ in 0..10 {
            h.record(Duration::from_millis(20));
        }
        let after = h.snapshot();
        let p50 = quantile(&before, &after, 0.5).unwrap();
        let p99 = quantile(&before, &after, 0.99).unwrap();
        let p999 = quantile(&before, &after, 0.999).unwrap();
        assert!(
            p50 >= Duration::from_micros(100) && p50 < Duration::from_micros(125),
            "{p50:?}"
        );
        assert!(p99 < Duration::from_micros(125), "{p99:?}");
        assert!(
            p999 >= Duration::from_millis(20) && p999 < Duration::from_millis(25),
            "{p999:?}"
        );
        // Only the interval counts.
        for _ in 0..100 {
            h.record(Duration::from_secs(5));
        }
        assert!(quantile(&after, &h.snapshot(), 0.5).unwrap() > Duration::from_millis(300));
    }
}
