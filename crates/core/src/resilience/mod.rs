//! Retry and failure-isolation primitives shared by the server's subsystems.
//!
//! Each existed more than once (the supervisor's restart wait, the webhook retries
//! and the memory restore's wait on a full queue each had a backoff; the k-NN vote
//! and the webhooks each had a circuit breaker), and copies drift: one fix or one
//! test reaches only one of them. One implementation here keeps the behaviour and
//! its tests in one place.
//!
//! Nothing here knows about the server, and nothing here reads a clock or sleeps:
//! callers pass the current [`Instant`](std::time::Instant) and do their own waiting
//! (`tokio::time::sleep`, `std::thread::sleep`), so tests drive time by hand or on
//! tokio's paused clock, and the module depends on std and `rand` only.
//!
//! - [`backoff`] — capped exponential backoff with full jitter.
//! - [`breaker`] — a closed/open/half-open circuit breaker.

pub mod backoff;
pub mod breaker;

pub use backoff::Backoff;
pub use breaker::{BreakerState, CircuitBreaker};
