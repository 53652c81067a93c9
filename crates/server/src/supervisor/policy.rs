//! The restart policy, apart from processes and clocks so it can be tested alone.
//!
//! Two counts, kept apart so that random chaos never suspends a worker that can start:
//! - **failed attempts**: consecutive workers that died or hung before their first
//!   heartbeat. `max_attempts` of them suspend supervision: the worker cannot come up
//!   (bad checkpoint, missing binary), and retrying forever would only hide it.
//! - **crash streak**: deaths of workers that had started. It only grows the backoff,
//!   and clears after `stable_after` of healthy running (like CrashLoopBackOff).
//!
//! The wait after a failure is a random time in `[0, min(max_backoff,
//! cooldown · 2^(n−1))]` — full jitter ([`Backoff`]), so servers whose workers fail
//! together do not restart them in lockstep — with n the larger count. An intensity
//! limit (`max_crashes` within `crash_window`, OTP-style) also suspends.

use std::collections::VecDeque;
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

use crate::resilience::Backoff;

/// What to do after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Restart after this wait.
    Retry(Duration),
    /// Give up until resumed: too many failed attempts in a row.
    SuspendAttempts,
    /// Give up until resumed: too many crashes within the window.
    SuspendIntensity,
}

/// The policy's limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub cooldown: Duration,
    pub max_backoff: Duration,
    pub max_attempts: u32,
    pub stable_after: Duration,
    pub max_crashes: usize,
    pub crash_window: Duration,
}

/// Failure bookkeeping.
#[derive(Debug, Clone)]
pub struct Policy {
    limits: Limits,
    backoff: Backoff,
    attempts: u32,
    streak: u32,
    crashes: VecDeque<Instant>,
    healthy_since: Option<Instant>,
}

impl Policy {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            backoff: Backoff::new(limits.cooldown, limits.max_backoff),
            attempts: 0,
            streak: 0,
            crashes: VecDeque::new(),
            healthy_since: None,
        }
    }

    /// Consecutive failed attempts.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The current crash streak.
    pub fn streak(&self) -> u32 {
        self.streak
    }

    /// The ceiling of the wait at count `n` (1-based).
    pub fn ceiling(&self, n: u32) -> Duration {
        self.backoff.ceiling(n.saturating_sub(1))
    }

    /// Records a failure of a worker that had (`started`) or had not heartbeated.
    pub fn on_failure(&mut self, started: bool, now: Instant, rng: &mut impl Rng) -> Decision {
        self.healthy_since = None;
        if started {
            self.attempts = 0;
            self.streak += 1;
            self.crashes.push_back(now);
            while self
                .crashes
                .front()
                .is_some_and(|t| now.duration_since(*t) > self.limits.crash_window)
            {
                self.crashes.pop_front();
            }
            if self.crashes.len() >= self.limits.max_crashes {
                return Decision::SuspendIntensity;
            }
        } else {
            self.attempts += 1;
            if self.attempts >= self.limits.max_attempts {
                return Decision::SuspendAttempts;
            }
        }
        let n = self.streak.max(self.attempts).max(1);
        Decision::Retry(self.backoff.full_jitter(n - 1, rng))
    }

    /// Records a fresh heartbeat at `now`: the start succeeded, and after
    /// `stable_after` of health the crash streak clears.
    pub fn on_healthy(&mut self, now: Instant) {
        self.attempts = 0;
        let since = *self.healthy_since.get_or_insert(now);
        if now.duration_since(since) >= self.limits.stable_after {
            self.streak = 0;
        }
    }

    /// Starts over (an operator resumed supervision).
    pub fn reset(&mut self) {
        self.attempts = 0;
        self.streak = 0;
        self.crashes.clear();
        self.healthy_since = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn policy() -> Policy {
        Policy::new(Limits {
            cooldown: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            max_attempts: 3,
            stable_after: Duration::from_secs(60),
            max_crashes: 20,
            crash_window: Duration::from_secs(600),
        })
    }

    fn wait(d: Decision) -> Duration {
        match d {
            Decision::Retry(w) => w,
            other => panic!("expected a retry, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failed_attempts_suspend_but_crashes_of_started_workers_only_back_off() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let p = policy();
        let ceilings: Vec<_> = (1..=6).map(|n| p.ceiling(n).as_millis()).collect();
        assert_eq!(ceilings, vec![100, 200, 400, 800, 1000, 1000]);

        let mut p = policy();
        assert!(wait(p.on_failure(false, Instant::now(), &mut rng)) <= p.ceiling(1));
        assert!(wait(p.on_failure(false, Instant::now(), &mut rng)) <= p.ceiling(2));
        assert_eq!(
            p.on_failure(false, Instant::now(), &mut rng),
            Decision::SuspendAttempts
        );

        // Crashes of workers that started never suspend below the intensity limit,
        // however many; the wait grows to the cap.
        let mut p = policy();
        for n in 1..=10 {
            tokio::time::advance(Duration::from_secs(5)).await;
            let w = wait(p.on_failure(true, Instant::now(), &mut rng));
            assert!(w <= p.ceiling(n));
            // Each restarted worker heartbeats before the next crash.
            p.on_healthy(Instant::now());
        }
        assert_eq!(p.streak(), 10);
        assert_eq!(p.attempts(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_streak_clears_after_stable_after_and_intensity_suspends() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        let mut p = policy();
        p.on_failure(true, Instant::now(), &mut rng);
        p.on_failure(true, Instant::now(), &mut rng);
        p.on_healthy(Instant::now());
        tokio::time::advance(Duration::from_secs(59)).await;
        p.on_healthy(Instant::now());
        assert_eq!(p.streak(), 2, "59 s is not stable yet");
        tokio::time::advance(Duration::from_secs(1)).await;
        p.on_healthy(Instant::now());
        assert_eq!(p.streak(), 0);

        // 20 crashes within 10 minutes suspend; spread over longer they do not.
        let mut p = policy();
        for _ in 0..19 {
            tokio::time::advance(Duration::from_secs(40)).await;
            assert!(matches!(
                p.on_failure(true, Instant::now(), &mut rng),
                Decision::Retry(_)
            ));
        }
        tokio::time::advance(Duration::from_secs(40)).await;
        assert!(
            matches!(
                p.on_failure(true, Instant::now(), &mut rng),
                Decision::Retry(_)
            ),
            "the oldest left the window"
        );
        let mut p = policy();
        for _ in 0..19 {
            p.on_failure(true, Instant::now(), &mut rng);
        }
        assert_eq!(
            p.on_failure(true, Instant::now(), &mut rng),
            Decision::SuspendIntensity
        );
    }

    #[test]
    fn full_jitter_spreads_over_the_whole_range() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let draws: Vec<Duration> = (0..200)
            .map(|_| {
                let mut q = policy();
                let now = Instant::now();
                q.on_failure(true, now, &mut rng);
                q.on_failure(true, now, &mut rng);
                wait(q.on_failure(true, now, &mut rng))
            })
            .collect();
        assert!(draws.iter().all(|d| *d <= Duration::from_millis(400)));
        assert!(draws.iter().any(|d| *d < Duration::from_millis(100)));
        assert!(draws.iter().any(|d| *d > Duration::from_millis(300)));
    }
}
