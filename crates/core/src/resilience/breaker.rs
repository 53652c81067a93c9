//! A closed/open/half-open circuit breaker.
//!
//! A dependency that keeps failing (a sick k-NN index, a dead webhook) should not be
//! tried on every call: each try costs the caller time and the dependency load, and
//! the answer is almost surely another failure. After `failures` consecutive
//! failures the breaker opens and callers skip the dependency. After `cooldown` one
//! call is let through as a trial (half-open): its success closes the breaker, its
//! failure re-opens it for another cooldown. Only one trial is out at a time, so a
//! recovering dependency is probed by one caller, not by every concurrent one.
//!
//! The breaker reads no clock: [`allow`](CircuitBreaker::allow) and
//! [`failure`](CircuitBreaker::failure) take the caller's `now`, so tests step time by
//! hand (or on tokio's paused clock, via `tokio::time::Instant::into_std`) instead of
//! sleeping through a cooldown. Its lock guards a few fields for nanoseconds and is
//! never held across an await.
//!
//! A healthy dependency is the common case and sits on request paths (one k-NN search
//! per row), so a breaker that is closed with no failure counted answers
//! [`allow_with`](CircuitBreaker::allow_with) and
//! [`success`](CircuitBreaker::success) from one atomic flag: no lock shared between
//! cores, and no clock read.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// The breaker's state, as status reports name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls are skipped until the cooldown has passed.
    Open,
    /// The cooldown has passed and a trial call decides.
    HalfOpen,
}

impl BreakerState {
    /// The state's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    consecutive: u32,
    opened_at: Option<Instant>,
    /// Whether the half-open trial is already out, so only one call probes.
    trial_out: bool,
}

/// A circuit breaker, shareable between threads (`&self` methods).
#[derive(Debug)]
pub struct CircuitBreaker {
    failures: u32,
    cooldown: Duration,
    inner: Mutex<Inner>,
    /// Closed with no failure counted: what the lock-free fast paths read. Written
    /// only under the lock.
    healthy: AtomicBool,
}

impl CircuitBreaker {
    /// Opens after `failures` (at least 1) consecutive failures, for `cooldown`.
    pub fn new(failures: u32, cooldown: Duration) -> Self {
        Self {
            failures: failures.max(1),
            cooldown,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                consecutive: 0,
                opened_at: None,
                trial_out: false,
            }),
            healthy: AtomicBool::new(true),
        }
    }

    /// Whether a call may be made at `now`. Once the cooldown has passed, the first
    /// caller gets `true` (the trial) and the breaker is half-open until
    /// [`success`](Self::success) or [`failure`](Self::failure) is reported.
    pub fn allow(&self, now: Instant) -> bool {
        if self.healthy.load(Ordering::Acquire) {
            return true;
        }
        let mut s = self.lock();
        match s.state {
            BreakerState::Closed => true,
            BreakerState::Open
                if s.opened_at
                    .is_none_or(|at| now.saturating_duration_since(at) >= self.cooldown) =>
            {
                s.state = BreakerState::HalfOpen;
                s.trial_out = true;
                true
            }
            BreakerState::Open => false,
            BreakerState::HalfOpen if !s.trial_out => {
                s.trial_out = true;
                true
            }
            BreakerState::HalfOpen => false,
        }
    }

    /// As [`allow`](Self::allow), reading the clock only if the breaker is not
    /// healthy (closed with no failure counted).
    pub fn allow_with(&self, now: impl FnOnce() -> Instant) -> bool {
        self.healthy.load(Ordering::Acquire) || self.allow(now())
    }

    /// Records a successful call: the breaker closes and the failure count restarts.
    pub fn success(&self) {
        if self.healthy.load(Ordering::Acquire) {
            return;
        }
        let mut s = self.lock();
        s.consecutive = 0;
        s.state = BreakerState::Closed;
        s.trial_out = false;
        self.healthy.store(true, Ordering::Release);
    }

    /// Records a failed call at `now`. True if this failure opened the breaker (the
    /// threshold was reached, or a half-open trial failed), for a caller to log.
    pub fn failure(&self, now: Instant) -> bool {
        let mut s = self.lock();
        self.healthy.store(false, Ordering::Release);
        s.consecutive = s.consecutive.saturating_add(1);
        if s.state == BreakerState::HalfOpen || s.consecutive >= self.failures {
            s.state = BreakerState::Open;
            s.opened_at = Some(now);
            s.trial_out = false;
            return true;
        }
        false
    }

    /// The current state. An open breaker reads open until a call is allowed after
    /// its cooldown.
    pub fn state(&self) -> BreakerState {
        self.lock().state
    }

    /// How long the breaker stays open.
    pub fn cooldown(&self) -> Duration {
        self.cooldown
    }

    /// Takes a poisoned lock over: every statement above leaves the fields consistent.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_healthy_breaker_reads_no_clock() {
        let b = CircuitBreaker::new(2, Duration::from_secs(1));
        let no_clock = || -> Instant { panic!("a healthy breaker read the clock") };
        assert!(b.allow_with(no_clock));
        b.success();
        assert!(b.allow_with(no_clock));
        // One failure below the threshold: still closed, but the clock is read.
        let t0 = Instant::now();
        assert!(!b.failure(t0));
        assert!(b.allow_with(|| t0));
        assert_eq!(b.state(), BreakerState::Closed);
        // A success makes it healthy again.
        b.success();
        assert!(b.allow_with(no_clock));
        // Open: refused until the cooldown, with the clock read.
        b.failure(t0);
        b.failure(t0);
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.allow_with(|| t0 + Duration::from_millis(10)));
        assert!(b.allow_with(|| t0 + Duration::from_secs(1)), "the trial");
        b.success();
        assert!(b.allow_with(no_clock));
    }

    #[test]
    fn opens_after_consecutive_failures_and_recovers_through_half_open() {
        let b = CircuitBreaker::new(3, Duration::from_secs(1));
        let t0 = Instant::now();
        assert!(!b.failure(t0));
        assert!(!b.failure(t0));
        b.success();
        b.failure(t0);
        b.failure(t0);
        assert_eq!(
            b.state(),
            BreakerState::Closed,
            "a success resets the count"
        );
        assert!(b.failure(t0), "the third in a row opens it");
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.allow(t0 + Duration::from_millis(500)));
        assert!(!b.allow(t0 + Duration::from_millis(999)));
        let later = t0 + Duration::from_millis(1001);
        assert!(b.allow(later), "one trial after the cooldown");
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(!b.allow(later), "only one trial at a time");
        assert!(b.failure(later), "a failed trial re-opens it");
        assert_eq!(b.state(), BreakerState::Open, "failed trial re-opens");
        assert!(
            !b.allow(later + Duration::from_millis(999)),
            "for a whole new cooldown"
        );
        let again = later + Duration::from_millis(1001);
        assert!(b.allow(again));
        b.success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.allow(again));
        assert!(b.allow(again), "closed: every call goes through");
    }

    #[test]
    fn the_cooldown_is_measured_from_the_failure_that_opened_it() {
        let b = CircuitBreaker::new(1, Duration::from_secs(60));
        let t0 = Instant::now();
        assert!(b.failure(t0 + Duration::from_secs(5)));
        assert!(!b.allow(t0 + Duration::from_secs(64)));
        assert!(b.allow(t0 + Duration::from_secs(65)));
        // A `now` from before the opening (another thread's clock read) is no
        // reason to panic or to let a call through.
        let b = CircuitBreaker::new(1, Duration::from_secs(60));
        b.failure(t0 + Duration::from_secs(5));
        assert!(!b.allow(t0));
        assert_eq!(b.cooldown(), Duration::from_secs(60));
    }

    #[test]
    fn concurrent_callers_send_one_trial() {
        let b = std::sync::Arc::new(CircuitBreaker::new(1, Duration::from_millis(10)));
        let t0 = Instant::now();
        b.failure(t0);
        let now = t0 + Duration::from_millis(10);
        let allowed: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let b = b.clone();
                    s.spawn(move || usize::from(b.allow(now)))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(allowed, 1);
        assert_eq!(b.state(), BreakerState::HalfOpen);
    }
}
