//! Settings of the update path: the WAL, the update-worker and the hot swap.
//!
//! They live apart from the request-path sections because a different process reads
//! half of them: [`WorkerConfig`] travels to the update-worker inside its spec, so it
//! is `Serialize` as well as `Deserialize`, and the worker never re-parses the
//! server's flags.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid, positive};

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
#[derive(Debug, Clone, Deserialize)]
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

/// The update-worker process: where it is, how it trains, how often it publishes.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// Whether to run a worker at all. Without one the model's weights never change
    /// (the k-NN memory still learns) and updates accumulate in the WAL.
    pub enabled: bool,
    /// The `update-worker` executable; by default it is looked for next to the
    /// server's own executable (and one directory up, for test binaries in `deps/`).
    pub binary: Option<PathBuf>,
    /// Slots of the shared-memory ring. 4096 updates is ~2 s of a 2k/s update stream:
    /// enough to ride out a checkpoint write, small enough to stay in L2/L3.
    pub ring_capacity: usize,
    /// Rows per training step (fewer when `batch_timeout_ms` passes first).
    pub train_batch: usize,
    /// Longest the first update of a batch waits for the batch to fill.
    pub batch_timeout_ms: u64,
    /// Publish a checkpoint after this many training steps ...
    pub publish_every_steps: u64,
    /// ... or this long after the last publish, whichever comes first (if anything
    /// was trained since).
    pub publish_every_ms: u64,
    /// AdamW step size of online training. 1e-2 learned best on the drift streams of
    /// QUALITY.md (1e-3 left a fresh model 1.5 to 8 points behind); a version that
    /// swings too far is still caught by the KL check.
    pub learning_rate: f64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// Recent labelled experiences kept for replay, to resist forgetting.
    pub replay_capacity: usize,
    /// Replayed labelled experiences added to each training batch.
    pub replay_per_batch: usize,
    /// Extra steps after each batch, each on `train_batch` labels drawn from the
    /// replay buffer. When labels are scarce (1 in 10) most of a batch is
    /// pseudo-labels, and one pass over each label learns too little from it.
    pub replay_steps: usize,
    /// At the server's drift alarm the replay buffer keeps only this many of its most
    /// recent labels: replaying the old concept slowed recovery after an abrupt drift
    /// by about `replay_capacity` labels. `replay_capacity` or more turns this off.
    pub replay_keep_on_drift: usize,
    /// Floor of the running standardiser's update rate; 1/n before that, so early
    /// statistics converge fast and later ones follow drift.
    pub norm_rate: f64,
    /// Heartbeat period written into the ring header.
    pub heartbeat_ms: u64,
    /// How often the supervisor looks at the heartbeat (one atomic load). Exit is
    /// seen at once from the child's wait, independently of this.
    pub watchdog_interval_ms: u64,
    /// A running worker whose heartbeat is older than this is hung: SIGKILL.
    pub heartbeat_timeout_ms: u64,
    /// A new worker must heartbeat within this, or the start counts as a failure.
    pub startup_timeout_ms: u64,
    /// Backoff after the n-th consecutive failure: a random wait in
    /// `[0, min(max_backoff_ms, cooldown_ms · 2^(n−1))]` (full jitter).
    pub cooldown_ms: u64,
    pub max_backoff_ms: u64,
    /// Consecutive failed *starts* (no heartbeat) after which supervision is
    /// suspended (emergency alert; serving goes on; `POST /v1/admin/worker/restart`
    /// resumes). Deaths of workers that had started only grow the backoff.
    pub max_restart_attempts: u32,
    /// A worker healthy for this long clears the crash streak.
    pub stable_after_ms: u64,
    /// This many crashes within `crash_window_ms` also suspend (an intensity limit).
    pub max_crashes: usize,
    pub crash_window_ms: u64,
    /// How long a stopping worker gets between SIGTERM and SIGKILL.
    pub stop_grace_ms: u64,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            binary: None,
            ring_capacity: 4_096,
            train_batch: 32,
            batch_timeout_ms: 20,
            publish_every_steps: 50,
            publish_every_ms: 2_000,
            learning_rate: 1e-2,
            weight_decay: 1e-4,
            replay_capacity: 2_000,
            replay_per_batch: 32,
            replay_steps: 4,
            replay_keep_on_drift: 50,
            norm_rate: 1e-3,
            heartbeat_ms: 1_000,
            watchdog_interval_ms: 100,
            heartbeat_timeout_ms: 5_000,
            startup_timeout_ms: 10_000,
            cooldown_ms: 5_000,
            max_backoff_ms: 60_000,
            max_restart_attempts: 3,
            stable_after_ms: 60_000,
            max_crashes: 20,
            crash_window_ms: 600_000,
            stop_grace_ms: 3_000,
        }
    }
}

/// Taking a published checkpoint into service.
#[derive(Debug, Clone, Deserialize)]
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

/// Range checks of the update-path sections.
pub(super) fn validate(
    wal: &WalSection,
    worker: &WorkerConfig,
    swap: &SwapConfig,
) -> Result<(), ConfigError> {
    positive("wal.segment_bytes", wal.segment_bytes as usize)?;
    positive("wal.queue", wal.queue)?;
    positive("wal.group_max", wal.group_max)?;
    if wal.pending_commit_ms > 60_000 {
        return Err(super::invalid(
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
    positive("worker.ring_capacity", worker.ring_capacity)?;
    positive("worker.train_batch", worker.train_batch)?;
    positive(
        "worker.publish_every_steps",
        worker.publish_every_steps as usize,
    )?;
    positive("worker.heartbeat_ms", worker.heartbeat_ms as usize)?;
    positive(
        "worker.watchdog_interval_ms",
        worker.watchdog_interval_ms as usize,
    )?;
    positive(
        "worker.max_restart_attempts",
        worker.max_restart_attempts as usize,
    )?;
    if worker.heartbeat_timeout_ms <= worker.heartbeat_ms {
        return Err(invalid(
            "worker.heartbeat_timeout_ms",
            format!(
                "{} must exceed worker.heartbeat_ms ({}), or every worker looks hung",
                worker.heartbeat_timeout_ms, worker.heartbeat_ms
            ),
        ));
    }
    if !(worker.learning_rate.is_finite() && worker.learning_rate > 0.0) {
        return Err(invalid(
            "worker.learning_rate",
            format!("must be > 0, got {}", worker.learning_rate),
        ));
    }
    if !(0.0..=1.0).contains(&worker.norm_rate) {
        return Err(invalid(
            "worker.norm_rate",
            format!("must be in [0, 1], got {}", worker.norm_rate),
        ));
    }
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
