//! The k-NN circuit breaker.
//!
//! An HNSW problem must never fail a request, and it should not slow every request
//! either: after `failures` consecutive errors or timeouts the breaker opens and the
//! model answers alone (`path = "fallback"`) without trying the search. After
//! `cooldown` one request is let through as a trial (half-open); its success closes
//! the breaker, its failure re-opens it for another cooldown.

use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// The breaker's state as reported in `/v1/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
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
    opened_at: Instant,
    /// Whether the half-open trial is already out, so only one request probes.
    trial_out: bool,
}

/// A closed/open/half-open breaker. Its mutex guards a few fields for nanoseconds
/// and is never held across an await.
#[derive(Debug)]
pub struct CircuitBreaker {
    failures: u32,
    cooldown: Duration,
    inner: Mutex<Inner>,
}

impl CircuitBreaker {
    /// Opens after `failures` consecutive failures, for `cooldown`.
    pub fn new(failures: u32, cooldown: Duration) -> Self {
        Self {
            failures: failures.max(1),
            cooldown,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                consecutive: 0,
                opened_at: Instant::now(),
                trial_out: false,
            }),
        }
    }

    /// Whether a search may be attempted now.
    pub fn allow(&self, now: Instant) -> bool {
        let mut s = self.inner.lock();
        match s.state {
            BreakerState::Closed => true,
            BreakerState::Open if now.duration_since(s.opened_at) >= self.cooldown => {
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

    /// Records a successful search.
    pub fn success(&self) {
        let mut s = self.inner.lock();
        s.consecutive = 0;
        s.state = BreakerState::Closed;
        s.trial_out = false;
    }

    /// Records a failed or timed-out search.
    pub fn failure(&self, now: Instant) {
        let mut s = self.inner.lock();
        s.consecutive = s.consecutive.saturating_add(1);
        if s.state == BreakerState::HalfOpen || s.consecutive >= self.failures {
            s.state = BreakerState::Open;
            s.opened_at = now;
            s.trial_out = false;
        }
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        self.inner.lock().state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_and_recovers_through_half_open() {
        let b = CircuitBreaker::new(3, Duration::from_secs(1));
        let t0 = Instant::now();
        b.failure(t0);
        b.failure(t0);
        b.success();
        b.failure(t0);
        b.failure(t0);
        assert_eq!(
            b.state(),
            BreakerState::Closed,
            "a success resets the count"
        );
        b.failure(t0);
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.allow(t0 + Duration::from_millis(500)));
        let later = t0 + Duration::from_millis(1001);
        assert!(b.allow(later), "one trial after the cooldown");
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(!b.allow(later), "only one trial at a time");
        b.failure(later);
        assert_eq!(b.state(), BreakerState::Open, "failed trial re-opens");
        let again = later + Duration::from_millis(1001);
        assert!(b.allow(again));
        b.success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.allow(again));
    }
}
