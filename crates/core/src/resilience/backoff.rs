//! Capped exponential backoff with full jitter.
//!
//! The wait before retry `attempt` (0-based) is drawn uniformly from
//! `[0, min(max, base · 2^attempt)]`. The doubling ceiling backs off a failing
//! dependency quickly, the cap bounds the longest wait, and the full jitter (the
//! whole range, not a little noise around the ceiling) spreads out clients that
//! failed together, so they do not come back in lockstep and fail together again.
//!
//! The computation only: it reads no clock and never sleeps, so the caller waits
//! however suits it (`tokio::time::sleep` in a task, `std::thread::sleep` on a
//! thread) and a test passes a seeded `rng`.

use std::time::Duration;

use rand::Rng;

/// Doublings beyond this are not computed: `2^20` times any base worth waiting
/// for is past every cap in use, and the shift must not overflow.
const MAX_DOUBLINGS: u32 = 20;

/// A backoff schedule: `base` doubled per attempt, capped at `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    max: Duration,
}

impl Backoff {
    /// Waits starting from `base` (the first retry's ceiling), never above `max`.
    pub const fn new(base: Duration, max: Duration) -> Self {
        Self { base, max }
    }

    /// The ceiling of the wait before retry `attempt` (0-based):
    /// `min(max, base · 2^attempt)`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        self.base
            .checked_mul(1u32 << attempt.min(MAX_DOUBLINGS))
            .unwrap_or(self.max)
            .min(self.max)
    }

    /// The wait before retry `attempt` (0-based): uniform in `[0, ceiling(attempt)]`.
    pub fn full_jitter(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        self.ceiling(attempt).mul_f64(rng.random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn the_ceiling_doubles_from_base_up_to_the_cap() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let ceilings: Vec<_> = (0..6).map(|n| b.ceiling(n).as_millis()).collect();
        assert_eq!(ceilings, vec![100, 200, 400, 800, 1000, 1000]);
        // Far past the last doubling: capped, no overflow.
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(1));
        let huge = Backoff::new(Duration::from_secs(u64::MAX / 2), Duration::from_secs(60));
        assert_eq!(huge.ceiling(3), Duration::from_secs(60));
        // A base at the cap is a constant ceiling.
        let flat = Backoff::new(Duration::from_micros(200), Duration::from_micros(200));
        assert!((0..30).all(|n| flat.ceiling(n) == Duration::from_micros(200)));
    }

    #[test]
    fn full_jitter_stays_under_a_doubling_ceiling() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let (base, max) = (Duration::from_millis(100), Duration::from_secs(2));
        let b = Backoff::new(base, max);
        for attempt in 0..40 {
            let ceiling = (base * 2u32.pow(attempt.min(10))).min(max);
            for _ in 0..50 {
                assert!(b.full_jitter(attempt, &mut rng) <= ceiling);
            }
        }
        let spread: Vec<_> = (0..100).map(|_| b.full_jitter(5, &mut rng)).collect();
        assert!(spread.iter().any(|d| *d < Duration::from_millis(500)));
        assert!(spread.iter().any(|d| *d > Duration::from_millis(1500)));
    }
}
