//! Alerts: raised by the supervisor, the swap task and the health monitor; delivered
//! to a log, a JSONL audit file and webhooks.
//!
//! - Severities `info < warning < critical < emergency`.
//! - **Cooldown per alert name.** An alert that fired stays quiet for
//!   `cooldown_secs` while it is still active; its resolution is always sent, once.
//! - **Never in the way.** [`Alerts::raise`] takes a short lock (no await) and does a
//!   `try_send` into a bounded queue; one task fans out to the channels, and each
//!   webhook has its own bounded queue and task (`webhook`), so a dead or slow
//!   endpoint slows nothing else. Every drop is counted.
//! - `format`: the payload each receiving tool expects.

pub mod config;
mod format;
mod webhook;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::mpsc;
// The cooldown's clock: std's unless a test pauses tokio's, so the cooldown tests
// step time instead of sleeping through it.
use tokio::time::Instant;

use crate::config::AlertConfig;
pub use format::payload;
pub use webhook::{EndpointStats, retry_after};

/// How bad it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
    Emergency,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Warning => "warning",
            Self::Critical => "critical",
            Self::Emergency => "emergency",
        }
    }
}

/// Firing, or the notice that it stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertStatus {
    Firing,
    Resolved,
}

impl AlertStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Firing => "firing",
            Self::Resolved => "resolved",
        }
    }
}

/// One notification.
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    /// A stable identifier (`worker_down`, `kl_divergence_high`, ...): the cooldown key.
    pub name: String,
    pub severity: Severity,
    pub status: AlertStatus,
    pub summary: String,
    pub details: BTreeMap<String, String>,
    /// When this notice was made, unix ms.
    pub at_ms: u64,
    /// When the alert first fired, unix ms.
    pub started_ms: u64,
}

/// Counters for `/v1/status`.
#[derive(Debug, Default)]
pub struct AlertStats {
    pub raised: AtomicU64,
    pub resolved: AtomicU64,
    /// Firings held back by the cooldown.
    pub suppressed: AtomicU64,
    /// Notices dropped because the dispatch queue was full.
    pub dropped: AtomicU64,
}

struct Active {
    started_ms: u64,
    last_sent: Instant,
}

/// The alert hub. Cheap to share; every method is non-blocking.
pub struct Alerts {
    tx: mpsc::Sender<Arc<Alert>>,
    active: Mutex<HashMap<String, Active>>,
    cooldown: Duration,
    stats: AlertStats,
    endpoints: Vec<Arc<EndpointStats>>,
}

impl std::fmt::Debug for Alerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Alerts")
            .field("cooldown", &self.cooldown)
            .field("webhooks", &self.endpoints.len())
            .finish()
    }
}

impl Alerts {
    /// Starts the dispatch task and one task per webhook (needs a tokio runtime).
    pub fn start(config: &AlertConfig) -> Arc<Self> {
        let (tx, mut rx) = mpsc::channel::<Arc<Alert>>(config.queue);
        let client = reqwest::Client::builder()
            .user_agent(concat!("adaptserve/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        let mut queues = Vec::new();
        let mut endpoints = Vec::new();
        for (index, webhook) in config.webhooks.iter().enumerate() {
            let (etx, erx) = mpsc::channel(config.queue);
            let stats = Arc::new(EndpointStats::default());
            let endpoint = webhook::Endpoint {
                index,
                webhook: webhook.clone(),
                client: client.clone(),
                config: config.clone(),
                stats: stats.clone(),
            };
            tokio::spawn(endpoint.run(erx));
            queues.push((etx, stats.clone()));
            endpoints.push(stats);
        }
        let mut file = config.file.as_ref().and_then(|path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| tracing::error!(path = %path.display(), error = %e, "cannot open the alert file"))
                .ok()
        });
        tokio::spawn(async move {
            while let Some(alert) = rx.recv().await {
                log(&alert);
                if let Some(f) = file.as_mut() {
                    // A small append; the dispatch task is its only writer.
                    let mut line = serde_json::to_vec(&*alert).unwrap_or_default();
                    line.push(b'\n');
                    if let Err(e) = f.write_all(&line) {
                        tracing::error!(error = %e, "cannot append to the alert file");
                    }
                }
                for (queue, stats) in &queues {
                    if queue.try_send(alert.clone()).is_err() {
                        stats.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
        Arc::new(Self {
            tx,
            active: Mutex::new(HashMap::new()),
            cooldown: Duration::from_secs(config.cooldown_secs),
            stats: AlertStats::default(),
            endpoints,
        })
    }

    /// Raises `name`, unless it already fired within the cooldown.
    pub fn raise(
        &self,
        name: &str,
        severity: Severity,
        summary: impl Into<String>,
        details: BTreeMap<String, String>,
    ) {
        let now_ms = crate::update::checkpoints::unix_ms();
        let started_ms = {
            let mut active = self.active.lock();
            match active.get_mut(name) {
                Some(a) if a.last_sent.elapsed() < self.cooldown => {
                    self.stats.suppressed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Some(a) => {
                    a.last_sent = Instant::now();
                    a.started_ms
                }
                None => {
                    active.insert(
                        name.to_string(),
                        Active {
                            started_ms: now_ms,
                            last_sent: Instant::now(),
                        },
                    );
                    now_ms
                }
            }
        };
        self.stats.raised.fetch_add(1, Ordering::Relaxed);
        crate::metrics::record_alert(severity.as_str());
        self.send(Alert {
            name: name.to_string(),
            severity,
            status: AlertStatus::Firing,
            summary: summary.into(),
            details,
            at_ms: now_ms,
            started_ms,
        });
    }

    /// Sends the resolution of `name` if it is active.
    pub fn resolve(&self, name: &str, severity: Severity, summary: impl Into<String>) {
        let Some(active) = self.active.lock().remove(name) else {
            return;
        };
        self.stats.resolved.fetch_add(1, Ordering::Relaxed);
        self.send(Alert {
            name: name.to_string(),
            severity,
            status: AlertStatus::Resolved,
            summary: summary.into(),
            details: BTreeMap::new(),
            at_ms: crate::update::checkpoints::unix_ms(),
            started_ms: active.started_ms,
        });
    }

    /// A one-off notice (`worker_recovered`): sent like a firing alert, subject to
    /// the cooldown, but never tracked as active.
    pub fn notify(&self, name: &str, severity: Severity, summary: impl Into<String>) {
        self.raise(name, severity, summary, BTreeMap::new());
        self.active.lock().remove(name);
    }

    /// Whether `name` is firing.
    pub fn is_active(&self, name: &str) -> bool {
        self.active.lock().contains_key(name)
    }

    /// The names firing now, sorted.
    pub fn active(&self) -> Vec<String> {
        let mut names: Vec<String> = self.active.lock().keys().cloned().collect();
        names.sort();
        names
    }

    /// Hub counters.
    pub fn stats(&self) -> &AlertStats {
        &self.stats
    }

    /// Per-webhook counters, in configuration order.
    pub fn endpoints(&self) -> &[Arc<EndpointStats>] {
        &self.endpoints
    }

    fn send(&self, alert: Alert) {
        if self.tx.try_send(Arc::new(alert)).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn log(alert: &Alert) {
    let (name, summary, status) = (&alert.name, &alert.summary, alert.status.as_str());
    match (alert.status, alert.severity) {
        (AlertStatus::Resolved, _) | (_, Severity::Info) => {
            tracing::info!(alert = %name, status, "{summary}")
        }
        (_, Severity::Warning) => tracing::warn!(alert = %name, status, "{summary}"),
        (_, Severity::Critical | Severity::Emergency) => {
            tracing::error!(alert = %name, severity = alert.severity.as_str(), status, "{summary}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The audit file's lines once there are `n` (polling on the paused clock).
    async fn audit_lines(file: &std::path::Path, n: usize) -> Vec<serde_json::Value> {
        let mut lines = Vec::new();
        for _ in 0..200 {
            lines = std::fs::read_to_string(file)
                .unwrap_or_default()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            if lines.len() == n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(lines.len(), n, "{lines:?}");
        lines
    }

    #[tokio::test(start_paused = true)]
    async fn cooldown_holds_back_repeats_and_resolution_is_sent_once() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("alerts.jsonl");
        let config = AlertConfig {
            file: Some(file.clone()),
            cooldown_secs: 3600,
            ..AlertConfig::default()
        };
        let alerts = Alerts::start(&config);
        alerts.raise("worker_down", Severity::Critical, "down", BTreeMap::new());
        alerts.raise(
            "worker_down",
            Severity::Critical,
            "still down",
            BTreeMap::new(),
        );
        assert!(alerts.is_active("worker_down"));
        alerts.resolve("worker_down", Severity::Critical, "back");
        alerts.resolve("worker_down", Severity::Critical, "back again");
        alerts.raise("kl_high", Severity::Warning, "moved", BTreeMap::new());
        assert_eq!(alerts.active(), vec!["kl_high".to_string()]);
        let s = alerts.stats();
        assert_eq!(
            (
                s.raised.load(Ordering::Relaxed),
                s.suppressed.load(Ordering::Relaxed),
                s.resolved.load(Ordering::Relaxed)
            ),
            (2, 1, 1)
        );
        // The audit trail: firing, resolved, firing.
        let lines = audit_lines(&file, 3).await;
        let (first, second) = (&lines[0], &lines[1]);
        assert_eq!(
            (first["status"].as_str(), first["summary"].as_str()),
            (Some("firing"), Some("down"))
        );
        assert_eq!(second["status"], "resolved");
        assert_eq!(second["started_ms"], first["started_ms"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_repeat_fires_again_once_the_cooldown_has_passed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("alerts.jsonl");
        let config = AlertConfig {
            file: Some(file.clone()),
            cooldown_secs: 60,
            ..AlertConfig::default()
        };
        let alerts = Alerts::start(&config);
        let counts = |a: &Alerts| {
            let s = a.stats();
            (
                s.raised.load(Ordering::Relaxed),
                s.suppressed.load(Ordering::Relaxed),
            )
        };
        alerts.raise("worker_down", Severity::Critical, "down", BTreeMap::new());
        tokio::time::advance(Duration::from_secs(59)).await;
        alerts.raise("worker_down", Severity::Critical, "59 s", BTreeMap::new());
        assert_eq!(counts(&alerts), (1, 1), "59 s is within the cooldown");
        tokio::time::advance(Duration::from_secs(1)).await;
        alerts.raise("worker_down", Severity::Critical, "60 s", BTreeMap::new());
        assert_eq!(counts(&alerts), (2, 1), "60 s is past it");
        // The cooldown runs from the last notice sent, not from the first firing.
        tokio::time::advance(Duration::from_secs(59)).await;
        alerts.raise("worker_down", Severity::Critical, "119 s", BTreeMap::new());
        assert_eq!(counts(&alerts), (2, 2));
        assert!(alerts.is_active("worker_down"));

        let lines = audit_lines(&file, 2).await;
        let summaries: Vec<_> = lines.iter().map(|l| l["summary"].clone()).collect();
        assert_eq!(summaries, vec!["down", "60 s"]);
        assert_eq!(
            lines[1]["started_ms"], lines[0]["started_ms"],
            "a repeat keeps the alert's start"
        );
    }
}
