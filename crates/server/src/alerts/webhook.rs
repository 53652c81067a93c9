//! Delivery to one webhook endpoint: its own bounded queue and task, retries with
//! full-jitter backoff that honour `Retry-After`, and a circuit breaker (both from
//! [`crate::resilience`]).
//!
//! Each endpoint is independent, so a dead Slack webhook cannot delay a working
//! Alertmanager, and nothing here is on the request path: the raiser only does a
//! `try_send`. The URL is a secret (Slack and Discord put the token in it), so logs
//! name an endpoint by its index and its errors are stripped of the URL.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;

use super::Alert;
use super::format::payload;
use crate::config::{AlertConfig, WebhookConfig};
use crate::resilience::{Backoff, CircuitBreaker};

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

/// The breaker's clock: tokio's (std's unless a test pauses it), so a test steps
/// through the breaker's cooldown on the paused clock.
fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
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
        let breaker = CircuitBreaker::new(
            self.config.breaker_failures,
            Duration::from_secs(self.config.breaker_cooldown_secs),
        );
        while let Some(alert) = rx.recv().await {
            // Open: dropped without a request. After the cooldown this delivery is
            // the half-open trial.
            if !breaker.allow(now()) {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if self.deliver(&alert).await {
                breaker.success();
                self.stats.delivered.fetch_add(1, Ordering::Relaxed);
            } else {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                if breaker.failure(now()) {
                    tracing::warn!(
                        endpoint = self.index,
                        cooldown = ?breaker.cooldown(),
                        "webhook circuit breaker open: deliveries dropped until it cools down"
                    );
                }
            }
        }
    }

    /// All attempts at one alert; true if it was delivered.
    async fn deliver(&self, alert: &Alert) -> bool {
        let body = payload(self.webhook.format, alert);
        let max = Duration::from_millis(self.config.retry_max_ms);
        let backoff = Backoff::new(Duration::from_millis(self.config.retry_base_ms), max);
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
                        asked.unwrap_or_else(|| backoff.full_jitter(attempt, &mut rand::rng()));
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
    use crate::alerts::{AlertStatus, Severity};
    use crate::config::{Secret, WebhookFormat};

    /// (failed, dropped, retries) once they reach `want`, polling on the paused clock
    /// (each poll moves it by a millisecond).
    async fn settle(stats: &EndpointStats, want: (u64, u64, u64)) {
        let read = || {
            (
                stats.failed.load(Ordering::Relaxed),
                stats.dropped.load(Ordering::Relaxed),
                stats.retries.load(Ordering::Relaxed),
            )
        };
        for _ in 0..5_000 {
            if read() == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(read(), want);
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_breaker_drops_until_its_cooldown_has_passed_then_sends_one_trial() {
        // Nothing listens on the port: every attempt fails (refused, or timed out if
        // the paused clock gets there first).
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let stats = Arc::new(EndpointStats::default());
        let endpoint = Endpoint {
            index: 0,
            webhook: WebhookConfig {
                url: Secret::new(format!("http://127.0.0.1:{port}/hook")),
                format: WebhookFormat::Generic,
            },
            client: reqwest::Client::new(),
            config: AlertConfig {
                max_attempts: 2,
                retry_base_ms: 10,
                retry_max_ms: 1_000,
                breaker_failures: 2,
                breaker_cooldown_secs: 60,
                timeout_ms: 500,
                ..AlertConfig::default()
            },
            stats: stats.clone(),
        };
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(endpoint.run(rx));
        let alert = Arc::new(Alert {
            name: "worker_down".into(),
            severity: Severity::Critical,
            status: AlertStatus::Firing,
            summary: "down".into(),
            details: Default::default(),
            at_ms: 0,
            started_ms: 0,
        });

        // Two failed deliveries of two attempts each open the breaker.
        tx.send(alert.clone()).await.unwrap();
        settle(&stats, (1, 0, 1)).await;
        tx.send(alert.clone()).await.unwrap();
        settle(&stats, (2, 0, 2)).await;
        tx.send(alert.clone()).await.unwrap();
        settle(&stats, (2, 1, 2)).await;
        // Still open a second before the cooldown ends: dropped, no attempt.
        tokio::time::advance(Duration::from_secs(59)).await;
        tx.send(alert.clone()).await.unwrap();
        settle(&stats, (2, 2, 2)).await;
        // After it, one trial delivery (two attempts); its failure re-opens the
        // breaker, so the next alert is dropped again.
        tokio::time::advance(Duration::from_secs(1)).await;
        tx.send(alert.clone()).await.unwrap();
        settle(&stats, (3, 2, 3)).await;
        tx.send(alert.clone()).await.unwrap();
        settle(&stats, (3, 3, 3)).await;
        assert_eq!(stats.delivered.load(Ordering::Relaxed), 0);
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
