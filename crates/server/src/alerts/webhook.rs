//! Delivery to one webhook endpoint: its own bounded queue and task, retries with
//! full-jitter backoff that honour `Retry-After`, and a circuit breaker.
//!
//! Each endpoint is independent, so a dead Slack webhook cannot delay a working
//! Alertmanager, and nothing here is on the request path: the raiser only does a
//! `try_send`. The URL is a secret (Slack and Discord put the token in it), so logs
//! name an endpoint by its index and its errors are stripped of the URL.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::mpsc;

use super::Alert;
use super::format::payload;
use crate::config::{AlertConfig, WebhookConfig};

/// Counters of one endpoint.
#[derive(Debug, Default)]
pub struct EndpointStats {
    pub delivered: AtomicU64,
    /// Deliveries that failed after every attempt (or with a permanent 4xx).
    pub failed: AtomicU64,
    /// Attempts beyond the first.
    pub retries: AtomicU64,
    /// Alerts dropped: queue full, or the breaker open.
    pub dropped: AtomicU64,
}

/// The random wait before retry `attempt` (0-based): uniform in
/// `[0, min(max, base · 2^attempt)]` ("full jitter"), so retrying clients spread out.
pub fn full_jitter(attempt: u32, base: Duration, max: Duration, rng: &mut impl Rng) -> Duration {
    let ceiling = base
        .checked_mul(1u32 << attempt.min(20))
        .unwrap_or(max)
        .min(max);
    ceiling.mul_f64(rng.random::<f64>())
}

/// `Retry-After` as delta-seconds (the form rate limiters send), capped at `max`.
pub fn retry_after(headers: &reqwest::header::HeaderMap, max: Duration) -> Option<Duration> {
    let secs: u64 = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs).min(max))
}

/// One endpoint's delivery task.
pub(super) struct Endpoint {
    pub index: usize,
    pub webhook: WebhookConfig,
    pub client: reqwest::Client,
    pub config: AlertConfig,
    pub stats: Arc<EndpointStats>,
}

/// What one attempt came to.
enum Outcome {
    Delivered,
    Retry(Option<Duration>),
    Permanent(String),
}

impl Endpoint {
    pub async fn run(self, mut rx: mpsc::Receiver<Arc<Alert>>) {
        let mut consecutive_failures = 0u32;
        let mut open_until: Option<Instant> = None;
        let cooldown = Duration::from_secs(self.config.breaker_cooldown_secs);
        while let Some(alert) = rx.recv().await {
            if let Some(until) = open_until {
                if Instant::now() < until {
                    self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                // Half-open: this delivery is the trial.
                open_until = None;
            }
            if self.deliver(&alert).await {
                consecutive_failures = 0;
                self.stats.delivered.fetch_add(1, Ordering::Relaxed);
            } else {
                consecutive_failures += 1;
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                if consecutive_failures >= self.config.breaker_failures {
                    open_until = Some(Instant::now() + cooldown);
                    tracing::warn!(
                        endpoint = self.index,
                        ?cooldown,
                        "webhook circuit breaker open: deliveries dropped until it cools down"
                    );
                }
            }
        }
    }

    /// All attempts at one alert; true if it was delivered.
    async fn deliver(&self, alert: &Alert) -> bool {
        let body = payload(self.webhook.format, alert);
        let base = Duration::from_millis(self.config.retry_base_ms);
        let max = Duration::from_millis(self.config.retry_max_ms);
        for attempt in 0..self.config.max_attempts {
            if attempt > 0 {
                self.stats.retries.fetch_add(1, Ordering::Relaxed);
            }
            match self.attempt(&body, max).await {
                Outcome::Delivered => return true,
                Outcome::Permanent(reason) => {
                    tracing::warn!(endpoint = self.index, alert = %alert.name, %reason, "webhook refused the alert; not retrying");
                    return false;
                }
                Outcome::Retry(asked) => {
                    if attempt + 1 == self.config.max_attempts {
                        break;
                    }
                    let wait =
                        asked.unwrap_or_else(|| full_jitter(attempt, base, max, &mut rand::rng()));
                    tokio::time::sleep(wait).await;
                }
            }
        }
        tracing::warn!(endpoint = self.index, alert = %alert.name, attempts = self.config.max_attempts, "webhook delivery failed");
        false
    }

    async fn attempt(&self, body: &serde_json::Value, max: Duration) -> Outcome {
        let sent = self
            .client
            .post(self.webhook.url.expose())
            .timeout(Duration::from_millis(self.config.timeout_ms))
            .json(body)
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => Outcome::Delivered,
            Ok(r)
                if r.status() == reqwest::StatusCode::TOO_MANY_REQUESTS
                    || r.status().is_server_error() =>
            {
                tracing::debug!(endpoint = self.index, status = %r.status(), "webhook asked to retry");
                Outcome::Retry(retry_after(r.headers(), max))
            }
            Ok(r) => Outcome::Permanent(format!("status {}", r.status())),
            Err(e) => {
                tracing::debug!(endpoint = self.index, error = %e.without_url(), "webhook unreachable");
                Outcome::Retry(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn full_jitter_stays_under_a_doubling_ceiling() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let (base, max) = (Duration::from_millis(100), Duration::from_secs(2));
        for attempt in 0..40 {
            let ceiling = (base * 2u32.pow(attempt.min(10))).min(max);
            for _ in 0..50 {
                assert!(full_jitter(attempt, base, max, &mut rng) <= ceiling);
            }
        }
        let spread: Vec<_> = (0..100)
            .map(|_| full_jitter(5, base, max, &mut rng))
            .collect();
        assert!(spread.iter().any(|d| *d < Duration::from_millis(500)));
        assert!(spread.iter().any(|d| *d > Duration::from_millis(1500)));
    }

    #[test]
    fn retry_after_reads_seconds_and_is_capped() {
        let mut h = reqwest::header::HeaderMap::new();
        assert_eq!(retry_after(&h, Duration::from_secs(5)), None);
        h.insert(reqwest::header::RETRY_AFTER, "2".parse().unwrap());
        assert_eq!(
            retry_after(&h, Duration::from_secs(5)),
            Some(Duration::from_secs(2))
        );
        h.insert(reqwest::header::RETRY_AFTER, "600".parse().unwrap());
        assert_eq!(
            retry_after(&h, Duration::from_secs(5)),
            Some(Duration::from_secs(5))
        );
        h.insert(reqwest::header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h, Duration::from_secs(5)), None);
    }
}
