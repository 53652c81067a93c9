//! The health monitor: every `monitoring_interval_ms` it computes the health
//! metrics, checks each against its threshold, and raises or resolves an alert.
//!
//! | metric | alert (severity) |
//! |---|---|
//! | `update_rate` (updates applied per minute) | `update_rate_zero` (warning): a backlog and no progress |
//! | `knn_failure_rate` (failed / attempted searches) | `knn_failure_rate_high` (warning) |
//! | `mean_kl_divergence` (swap task) | `kl_divergence_high` (warning) |
//! | `queue_size` (model queue) | `queue_near_full` (warning) |
//! | `memory_usage_ratio` (RSS / limit) | `memory_high` (critical) |
//! | `inference_latency_p99` (`/v1/infer`) | `latency_p99_high` (warning) |
//!
//! Rates and the p99 are over the last interval (differences of counters), not since
//! start, so an alert resolves once the condition has passed. The last result is kept
//! for `/health`.

pub mod config;
pub mod latency;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use serde::Serialize;
use tokio::sync::watch;

use crate::alerts::Severity;
use crate::config::MonitorConfig;
use crate::state::AppState;
use crate::status::Status;
use latency::{LatencyHistogram, Snapshot};

/// One interval's health metrics.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Health {
    /// Updates applied per minute.
    pub update_rate: f64,
    pub update_backlog: u64,
    pub knn_failure_rate: f64,
    pub mean_kl_divergence: f64,
    pub queue_size: usize,
    pub memory_usage_ratio: f64,
    /// `None` when no inference ran in the interval.
    pub inference_latency_p99_ms: Option<f64>,
    /// The names of the checks over their threshold.
    pub breached: Vec<&'static str>,
}

/// The monitor's shared state: the latency histogram the HTTP layer feeds, and the
/// last result.
#[derive(Debug, Default)]
pub struct Monitor {
    pub infer_latency: LatencyHistogram,
    last: ArcSwapOption<Health>,
}

/// Counter values at the start of an interval.
struct Mark {
    at: Instant,
    applied: u64,
    searches: u64,
    failures: u64,
    latency: Snapshot,
}

impl Monitor {
    /// The last interval's metrics, if one has completed.
    pub fn last(&self) -> Option<Arc<Health>> {
        self.last.load_full()
    }

    /// Runs the checks every interval until `stop` turns true.
    pub async fn run(state: Arc<AppState>, config: MonitorConfig, mut stop: watch::Receiver<bool>) {
        let limit = memory_limit(config.memory_limit_bytes);
        let mut tick = tokio::time::interval(Duration::from_millis(config.monitoring_interval_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut mark = Self::mark(&state, &Status::collect(&state));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            let status = Status::collect(&state);
            let now = Self::mark(&state, &status);
            let health = Self::measure(&status, &config, &mark, &now, limit);
            Self::alert(&state, &config, &health);
            state.monitor.last.store(Some(Arc::new(health)));
            mark = now;
        }
    }

    fn mark(state: &AppState, status: &Status) -> Mark {
        Mark {
            at: Instant::now(),
            applied: status.updates.settled,
            // Every search ends as an ensemble answer or a failure.
            searches: status.paths.ensemble + status.knn_failures,
            failures: status.knn_failures,
            latency: state.monitor.infer_latency.snapshot(),
        }
    }

    fn measure(
        status: &Status,
        config: &MonitorConfig,
        before: &Mark,
        now: &Mark,
        limit: Option<u64>,
    ) -> Health {
        let seconds = now.at.duration_since(before.at).as_secs_f64().max(1e-3);
        let searches = now.searches.saturating_sub(before.searches);
        let failures = now.failures.saturating_sub(before.failures);
        let (sent, kl) = (status.updates.sent, status.swaps.mean_kl_divergence);
        let rss = status.rss_bytes.unwrap_or(0);
        let mut health = Health {
            update_rate: now.applied.saturating_sub(before.applied) as f64 * 60.0 / seconds,
            update_backlog: sent.saturating_sub(now.applied),
            knn_failure_rate: if searches == 0 {
                0.0
            } else {
                failures as f64 / searches as f64
            },
            mean_kl_divergence: kl,
            queue_size: status.batcher.queued,
            memory_usage_ratio: limit.map_or(0.0, |l| rss as f64 / l as f64),
            inference_latency_p99_ms: latency::quantile(&before.latency, &now.latency, 0.99)
                .map(|d| d.as_secs_f64() * 1e3),
            breached: Vec::new(),
        };
        let worker_expected = status.worker_enabled;
        let checks = [
            (
                "update_rate_zero",
                worker_expected
                    && health.update_backlog > 0
                    && now.applied == before.applied
                    && before.applied < sent,
            ),
            (
                "knn_failure_rate_high",
                health.knn_failure_rate > config.knn_failure_rate_threshold,
            ),
            (
                "kl_divergence_high",
                health.mean_kl_divergence > config.kl_alert_threshold,
            ),
            (
                "queue_near_full",
                health.queue_size >= config.queue_alert_threshold,
            ),
            (
                "memory_high",
                health.memory_usage_ratio > config.memory_usage_threshold,
            ),
            (
                "latency_p99_high",
                health
                    .inference_latency_p99_ms
                    .is_some_and(|p| p > config.latency_p99_threshold_ms),
            ),
        ];
        health.breached = checks.iter().filter(|(_, b)| *b).map(|(n, _)| *n).collect();
        health
    }

    fn alert(state: &AppState, config: &MonitorConfig, health: &Health) {
        let alerts = state.updates.alerts();
        let describe = |name: &str| -> (Severity, String) {
            match name {
                "update_rate_zero" => (
                    Severity::Warning,
                    format!(
                        "{} updates wait and none was applied in the last interval",
                        health.update_backlog
                    ),
                ),
                "knn_failure_rate_high" => (
                    Severity::Warning,
                    format!(
                        "{:.1}% of k-NN searches failed (threshold {:.1}%)",
                        health.knn_failure_rate * 100.0,
                        config.knn_failure_rate_threshold * 100.0
                    ),
                ),
                "kl_divergence_high" => (
                    Severity::Warning,
                    format!(
                        "new versions move {:.3} nats on average (threshold {})",
                        health.mean_kl_divergence, config.kl_alert_threshold
                    ),
                ),
                "queue_near_full" => (
                    Severity::Warning,
                    format!(
                        "{} requests wait for the model (threshold {})",
                        health.queue_size, config.queue_alert_threshold
                    ),
                ),
                "memory_high" => (
                    Severity::Critical,
                    format!(
                        "the server uses {:.0}% of its memory limit",
                        health.memory_usage_ratio * 100.0
                    ),
                ),
                _ => (
                    Severity::Warning,
                    format!(
                        "inference p99 is {:.1} ms (threshold {} ms)",
                        health.inference_latency_p99_ms.unwrap_or(0.0),
                        config.latency_p99_threshold_ms
                    ),
                ),
            }
        };
        for name in [
            "update_rate_zero",
            "knn_failure_rate_high",
            "kl_divergence_high",
            "queue_near_full",
            "memory_high",
            "latency_p99_high",
        ] {
            let (severity, summary) = describe(name);
            if health.breached.contains(&name) {
                alerts.raise(name, severity, summary, BTreeMap::new());
            } else if alerts.is_active(name) {
                alerts.resolve(
                    name,
                    severity,
                    format!("{name} is back under its threshold"),
                );
            }
        }
    }
}

/// The memory limit: configured, else the cgroup's (v2, then v1), else the RAM.
pub fn memory_limit(configured: u64) -> Option<u64> {
    if configured > 0 {
        return Some(configured);
    }
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
    };
    // cgroup v1 reports "no limit" as a huge number.
    let cgroup = read("/sys/fs/cgroup/memory.max")
        .or_else(|| read("/sys/fs/cgroup/memory/memory.limit_in_bytes"))
        .filter(|&l| l < 1 << 60);
    cgroup.or_else(|| {
        let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
        let kb: u64 = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        Some(kb * 1024)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_memory_limit_is_always_found_on_linux() {
        assert_eq!(memory_limit(12345), Some(12345));
        let found = memory_limit(0).unwrap();
        assert!(found > 64 << 20, "{found}");
    }
}
