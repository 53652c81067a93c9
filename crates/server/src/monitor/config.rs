//! Settings of the health monitor: how often it looks, and where each health metric
//! turns into an alert.

use serde::{Deserialize, Serialize};

use adaptserve_core::settings::{InvalidSetting, invalid, positive};

/// The health monitor's interval and thresholds.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MonitorConfig {
    /// How often the health metrics are computed and checked.
    pub monitoring_interval_ms: u64,
    /// `mean_kl_divergence` (nats) above which `kl_divergence_high` fires.
    pub kl_alert_threshold: f64,
    /// Model-queue depth at or above which `queue_near_full` fires (the queue's bound,
    /// `batcher.queue_capacity`, is 1000 by default).
    pub queue_alert_threshold: usize,
    /// Share of k-NN searches failing in an interval above which `knn_failure_rate_high` fires.
    pub knn_failure_rate_threshold: f64,
    /// RSS over the memory limit above which `memory_high` fires.
    pub memory_usage_threshold: f64,
    /// The memory limit in bytes; 0 takes the cgroup's limit, else the machine's RAM.
    pub memory_limit_bytes: u64,
    /// p99 of `/v1/infer` latency over an interval above which `latency_p99_high` fires.
    pub latency_p99_threshold_ms: f64,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        Self {
            monitoring_interval_ms: 10_000,
            kl_alert_threshold: 0.2,
            queue_alert_threshold: 900,
            knn_failure_rate_threshold: 0.01,
            memory_usage_threshold: 0.9,
            memory_limit_bytes: 0,
            latency_p99_threshold_ms: 100.0,
        }
    }
}

impl MonitorConfig {
    /// Refuses out-of-range settings, naming each as `monitor.<key>`.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        let m = self;
        positive(
            "monitor.monitoring_interval_ms",
            m.monitoring_interval_ms as usize,
        )?;
        for (setting, value) in [
            (
                "monitor.knn_failure_rate_threshold",
                m.knn_failure_rate_threshold,
            ),
            ("monitor.memory_usage_threshold", m.memory_usage_threshold),
        ] {
            if !(value > 0.0 && value <= 1.0) {
                return Err(invalid(setting, format!("must be in (0, 1], got {value}")));
            }
        }
        for (setting, value) in [
            ("monitor.kl_alert_threshold", m.kl_alert_threshold),
            (
                "monitor.latency_p99_threshold_ms",
                m.latency_p99_threshold_ms,
            ),
        ] {
            if !(value.is_finite() && value > 0.0) {
                return Err(invalid(setting, format!("must be > 0, got {value}")));
            }
        }
        Ok(())
    }
}
