//! The `[wal]` and `[swap]` sections: the server's side of the update path. The
//! worker's own `[worker]` section lives in the core, since the worker reads it too.

use serde::{Deserialize, Serialize};

use adaptserve_core::settings::{InvalidSetting, invalid, positive};

/// When the WAL calls fsync. A feedback is acknowledged (202) once its record is
/// written to the file, before any fsync: a killed *process* loses nothing, since the
/// page cache outlives it. The policy decides what a *machine* crash or power cut
/// can take: up to `fsync_interval_ms` of acknowledged updates with `interval`, every
/// update since the last segment rotation with `never`, nothing with `always` (which
/// makes each feedback wait for the disk).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncMode {
    Always,
    Interval,
    Never,
}

/// The write-ahead log of updates.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WalSection {
    /// See [`FsyncMode`].
    pub fsync: FsyncMode,
    /// With `fsync = "interval"`, the longest acknowledged updates stay only in the
    /// page cache.
    pub fsync_interval_ms: u64,
    /// A segment is closed and a new one started beyond this size; truncation deletes
    /// whole segments, so this is also the granularity of reclaiming space.
    pub segment_bytes: u64,
    /// Bound of the queue between the request path and the WAL writer thread. A full
    /// queue refuses a feedback with 429 and drops a pseudo-label (counted).
    pub queue: usize,
    /// Most records written by one group commit (one write(2), at most one fsync).
    pub group_max: usize,
    /// The pending log (predictions awaiting a label, `state_dir/pending/`) is
    /// written at most this long after a prediction is answered, one write(2) for
    /// all of them: a SIGKILL of the server loses at most this window's
    /// predictions (their labels then answer 404). Its fsync follows `fsync`.
    pub pending_commit_ms: u64,
}

impl Default for WalSection {
    fn default() -> Self {
        Self {
            fsync: FsyncMode::Interval,
            fsync_interval_ms: 100,
            segment_bytes: 8 << 20,
            queue: 8_192,
            group_max: 512,
            // Measured: one write of ~2 KiB every 10 ms at 20k predictions/s; a
            // per-group write would cost a syscall per handful of predictions.
            pending_commit_ms: 10,
        }
    }
}

/// Taking a published checkpoint into service.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SwapConfig {
    /// How often the server looks for a newly published version (one atomic load).
    pub poll_ms: u64,
    /// A new version whose mean `KL(p_old ‖ p_new)` over the probe set exceeds this
    /// is rejected and the worker restarts from the serving version.
    pub kl_reject_threshold: f64,
    /// Recent inputs the KL is measured on.
    pub probe_size: usize,
    /// A server that started from an untrained (`init-model`) model does not
    /// KL-check new versions until it has received this many labels: the weights
    /// have nothing to protect yet, every early version moves far, and with sparse
    /// labels the probe holds too few of them for accuracy to overrule the check,
    /// so each rejection threw the labels learned since away.
    pub unguarded_labels: u64,
    /// Checkpoints kept on disk besides the serving one (rollback targets).
    pub keep_checkpoints: usize,
    /// Longest `POST /v1/admin/sync` waits before answering 503.
    pub sync_timeout_ms: u64,
}

impl Default for SwapConfig {
    fn default() -> Self {
        Self {
            poll_ms: 5,
            kl_reject_threshold: 1.0,
            probe_size: 256,
            unguarded_labels: 1_000,
            keep_checkpoints: 5,
            sync_timeout_ms: 30_000,
        }
    }
}

impl SwapConfig {
    /// The guard's thresholds (the server's swap task and a cluster's trainer).
    pub fn rules(&self) -> adaptserve_core::update::guard::Rules {
        adaptserve_core::update::guard::Rules {
            kl_reject_threshold: self.kl_reject_threshold,
            unguarded_labels: self.unguarded_labels,
        }
    }
}

impl WalSection {
    /// Refuses out-of-range settings, naming each as `wal.<key>`.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        let wal = self;
        positive("wal.segment_bytes", wal.segment_bytes as usize)?;
        positive("wal.queue", wal.queue)?;
        positive("wal.group_max", wal.group_max)?;
        if wal.pending_commit_ms > 60_000 {
            return Err(invalid(
                "wal.pending_commit_ms",
                format!(
                    "must be at most 60000 (a crash loses this window's predictions), got {}",
                    wal.pending_commit_ms
                ),
            ));
        }
        if wal.fsync == FsyncMode::Interval {
            positive("wal.fsync_interval_ms", wal.fsync_interval_ms as usize)?;
        }
        Ok(())
    }
}

impl SwapConfig {
    /// Refuses out-of-range settings, naming each as `swap.<key>`.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        let swap = self;
        positive("swap.poll_ms", swap.poll_ms as usize)?;
        positive("swap.probe_size", swap.probe_size)?;
        positive("swap.sync_timeout_ms", swap.sync_timeout_ms as usize)?;
        if !(swap.kl_reject_threshold.is_finite() && swap.kl_reject_threshold > 0.0) {
            return Err(invalid(
                "swap.kl_reject_threshold",
                format!("must be > 0, got {}", swap.kl_reject_threshold),
            ));
        }
        Ok(())
    }
}
