//! The restart policy, apart from processes and clocks so it can be tested alone.
//!
//! After the n-th consecutive failure the supervisor waits a random time in
//! `[0, min(max_backoff, cooldown · 2^(n−1))]` — full jitter, so that a fleet of
//! servers whose workers fail together does not restart them in lockstep — and after
//! `max_attempts` consecutive failures it stops trying (suspends) until told to
//! resume. A worker that stays healthy for `stable_after` clears the count.

use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

/// What to do after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Restart after this wait.
    Retry(Duration),
    /// Give up until resumed.
    Suspend,
}

/// Consecutive-failure bookkeeping.
#[derive(Debug, Clone)]
pub struct Policy {
    cooldown: Duration,
    max_backoff: Duration,
    max_attempts: u32,
    stable_after: Duration,
    failures: u32,
    healthy_since: Option<Instant>,
}

impl Policy {
    pub fn new(
        cooldown: Duration,
        max_backoff: Duration,
        max_attempts: u32,
        stable_after: Duration,
    ) -> Self {
        Self {
            cooldown,
            max_backoff,
            max_attempts,
            stable_after,
            failures: 0,
            healthy_since: None,
        }
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The ceiling of the wait after failure `n` (1-based).
    pub fn ceiling(&self, n: u32) -> Duration {
        self.cooldown
            .checked_mul(1u32 << n.saturating_sub(1).min(20))
            .unwrap_or(self.max_backoff)
            .min(self.max_backoff)
    }

    /// Records a failure and decides.
    pub fn on_failure(&mut self, rng: &mut impl Rng) -> Decision {
        self.healthy_since = None;
        self.failures += 1;
        if self.failures >= self.max_attempts {
            return Decision::Suspend;
        }
        Decision::Retry(self.ceiling(self.failures).mul_f64(rng.random::<f64>()))
    }

    /// Records that the worker is healthy at `now` (its heartbeat is fresh); clears
    /// the failure count once it has been so for `stable_after`.
    pub fn on_healthy(&mut self, now: Instant) {
        let since = *self.healthy_since.get_or_insert(now);
        if self.failures > 0 && now.duration_since(since) >= self.stable_after {
            self.failures = 0;
        }
    }

    /// Starts over (an operator resumed supervision).
    pub fn reset(&mut self) {
        self.failures = 0;
        self.healthy_since = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn policy() -> Policy {
        Policy::new(
            Duration::from_millis(100),
            Duration::from_secs(1),
            5,
            Duration::from_secs(60),
        )
    }

    #[test]
    fn waits_double_under_a_cap_with_full_jitter_then_suspend() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let p = policy();
        let ceilings: Vec<_> = (1..=6).map(|n| p.ceiling(n).as_millis()).collect();
        assert_eq!(ceilings, vec![100, 200, 400, 800, 1000, 1000]);
        let mut p = policy();
        for n in 1..=4 {
            match p.on_failure(&mut rng) {
                Decision::Retry(wait) => assert!(wait <= p.ceiling(n), "failure {n}: {wait:?}"),
                Decision::Suspend => panic!("suspended after {n}"),
            }
        }
        assert_eq!(p.on_failure(&mut rng), Decision::Suspend);
        p.reset();
        assert!(matches!(p.on_failure(&mut rng), Decision::Retry(_)));
        // Full jitter really spreads: over many draws both halves of the range occur.
        let draws: Vec<Duration> = (0..200)
            .map(|_| {
                let mut q = policy();
                q.on_failure(&mut rng);
                q.on_failure(&mut rng);
                match q.on_failure(&mut rng) {
                    Decision::Retry(d) => d,
                    Decision::Suspend => panic!(),
                }
            })
            .collect();
        assert!(draws.iter().any(|d| *d < Duration::from_millis(200)));
        assert!(draws.iter().any(|d| *d > Duration::from_millis(300)));
    }

    #[tokio::test(start_paused = true)]
    async fn the_count_clears_only_after_stable_after_of_health() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        let mut p = policy();
        p.on_failure(&mut rng);
        p.on_failure(&mut rng);
        p.on_healthy(Instant::now());
        tokio::time::advance(Duration::from_secs(59)).await;
        p.on_healthy(Instant::now());
        assert_eq!(p.failures(), 2, "59 s is not stable yet");
        // A failure restarts the clock.
        p.on_failure(&mut rng);
        p.on_healthy(Instant::now());
        tokio::time::advance(Duration::from_secs(30)).await;
        p.on_healthy(Instant::now());
        assert_eq!(p.failures(), 3);
        tokio::time::advance(Duration::from_secs(30)).await;
        p.on_healthy(Instant::now());
        assert_eq!(p.failures(), 0);
    }
}
