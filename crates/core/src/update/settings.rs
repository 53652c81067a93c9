//! The update-worker's settings: how it trains, how often it publishes, and how the
//! server supervises it.
//!
//! They live in the core because two processes read them: the server's `[worker]`
//! config section, and the worker, which receives them inside its
//! [`WorkerSpec`](super::WorkerSpec) (hence `Serialize` as well as `Deserialize`), so
//! the worker never re-parses the server's flags.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::settings::{InvalidSetting, invalid, positive};

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

impl WorkerConfig {
    /// Refuses out-of-range settings, naming each as `worker.<key>`.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        positive("worker.ring_capacity", self.ring_capacity)?;
        positive("worker.train_batch", self.train_batch)?;
        positive(
            "worker.publish_every_steps",
            self.publish_every_steps as usize,
        )?;
        positive("worker.heartbeat_ms", self.heartbeat_ms as usize)?;
        positive(
            "worker.watchdog_interval_ms",
            self.watchdog_interval_ms as usize,
        )?;
        positive(
            "worker.max_restart_attempts",
            self.max_restart_attempts as usize,
        )?;
        if self.heartbeat_timeout_ms <= self.heartbeat_ms {
            return Err(invalid(
                "worker.heartbeat_timeout_ms",
                format!(
                    "{} must exceed worker.heartbeat_ms ({}), or every worker looks hung",
                    self.heartbeat_timeout_ms, self.heartbeat_ms
                ),
            ));
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return Err(invalid(
                "worker.learning_rate",
                format!("must be > 0, got {}", self.learning_rate),
            ));
        }
        if !(0.0..=1.0).contains(&self.norm_rate) {
            return Err(invalid(
                "worker.norm_rate",
                format!("must be in [0, 1], got {}", self.norm_rate),
            ));
        }
        Ok(())
    }
}
