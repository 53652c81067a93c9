//! The watchdog of the update-worker process.
//!
//! One task owns the child. It learns of an exit the instant the kernel reports it
//! (the child's wait), and of a hang from the heartbeat the worker writes into the
//! ring header (checked every `watchdog_interval_ms`; older than
//! `heartbeat_timeout_ms` means hung, answered with SIGKILL). After a failure it:
//! 1. raises a critical alert (`worker_crashed`) naming the exit status or "hung";
//! 2. cleans up: a new ring generation (the WAL writer switches to it; the new worker
//!    replays from the WAL whatever the old ring held) and the dead worker's
//!    checkpoint temp files;
//! 3. backs off `cooldown · 2^(n−1)` with full jitter, capped (`policy`: failed
//!    starts and crashes of started workers are counted apart);
//! 4. respawns, and counts the start as good only once the new worker heartbeats
//!    within `startup_timeout_ms`.
//!
//! After `max_restart_attempts` consecutive failed starts, or `max_crashes` within
//! `crash_window_ms`, it suspends and raises an emergency alert; serving goes on
//! without learning until `POST /v1/admin/worker/restart` resumes it. A recovery
//! resolves `worker_crashed` and sends an info `worker_recovered`. The worker sets its own parent-death signal (`prctl(PR_SET_PDEATHSIG)` as
//! its first act, then checks its parent is still the server), so it never outlives
//! the server — without an `unsafe` `pre_exec` here.
//!
//! Each worker runs on its own ring generation, which it stamps into every checkpoint
//! it publishes. The supervisor names the *live* generation, the only one whose
//! versions the swap task admits: a replacement asked for (rejection, rollback,
//! operator, shutdown) ends it at once, before the old worker has stopped, and a
//! replaced generation is never run again (`handoff`).

pub mod cleanup;
mod handoff;
pub mod policy;
mod task;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

use crate::alerts::Alerts;
use crate::config::WorkerConfig;
use crate::ipc::Ring;
use crate::update::pipeline::Pipeline;
use handoff::Handoff;
use policy::{Limits, Policy};
use task::Task;

/// The worker's state, as `/v1/status` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum WorkerState {
    /// Configured off.
    Disabled = 0,
    /// Spawned, not yet heartbeating.
    Starting = 1,
    /// Heartbeating.
    Running = 2,
    /// Failed; waiting out the backoff.
    Restarting = 3,
    /// Stopped by the server (shutdown).
    Stopped = 4,
    /// Too many consecutive failures; waiting for an operator.
    Suspended = 5,
}

impl WorkerState {
    /// Every state, for one-hot gauges.
    pub const ALL: [WorkerState; 6] = [
        Self::Disabled,
        Self::Starting,
        Self::Running,
        Self::Restarting,
        Self::Stopped,
        Self::Suspended,
    ];

    /// The name in `/v1/status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disabled => "disabled",
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Restarting => "restarting",
            Self::Stopped => "stopped",
            Self::Suspended => "suspended",
        }
    }

    fn from_u8(v: u8) -> Self {
        Self::ALL
            .into_iter()
            .find(|s| *s as u8 == v)
            .unwrap_or(Self::Suspended)
    }
}

/// Where a (re)started worker begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartPoint {
    /// The checkpoint version it loads.
    pub version: u64,
    /// Updates at or below this are treated as handled.
    pub floor: u64,
}

/// What `/v1/status` shows of the worker.
#[derive(Debug, Default)]
pub struct WorkerStatus {
    pid: AtomicU32,
    state: AtomicU8,
    restarts: AtomicU64,
    attempts: AtomicU32,
    streak: AtomicU32,
}

impl WorkerStatus {
    /// The live worker's pid, if any.
    pub fn pid(&self) -> Option<u32> {
        Some(self.pid.load(Ordering::Relaxed)).filter(|&p| p != 0)
    }
    /// The current state.
    pub fn state(&self) -> WorkerState {
        WorkerState::from_u8(self.state.load(Ordering::Relaxed))
    }
    /// Failures answered with a restart, ever.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }
    /// Consecutive failed starts now.
    pub fn failed_attempts(&self) -> u32 {
        self.attempts.load(Ordering::Relaxed)
    }
    /// Crashes of started workers since the last stable period.
    pub fn crash_streak(&self) -> u32 {
        self.streak.load(Ordering::Relaxed)
    }
    fn set(&self, state: WorkerState, pid: u32) {
        self.state.store(state as u8, Ordering::Relaxed);
        self.pid.store(pid, Ordering::Relaxed);
    }
}

enum Request {
    Restart,
    Resume(oneshot::Sender<bool>),
    Stop(oneshot::Sender<()>),
}

/// Makes the ring of each generation.
#[derive(Debug, Clone)]
pub struct RingFactory {
    /// `/dev/shm` or the temp dir.
    pub dir: PathBuf,
    /// Distinguishes this server's rings: `<pid>-<n>`.
    pub tag: String,
    pub capacity: usize,
    pub max_payload: usize,
}

impl RingFactory {
    /// Creates the ring of `generation`.
    pub fn create(&self, generation: u64) -> Result<Arc<Ring>, crate::ipc::IpcError> {
        let path = self.dir.join(format!(
            "{}{}-g{generation}.ring",
            cleanup::RING_PREFIX,
            self.tag
        ));
        Ring::create(&path, self.capacity, self.max_payload, generation).map(Arc::new)
    }
}

/// What the supervisor works with.
#[derive(Debug, Clone)]
pub struct Deps {
    pub pipeline: Arc<Pipeline>,
    pub rings: RingFactory,
    pub wal_dir: PathBuf,
    pub checkpoint_dir: PathBuf,
    pub alerts: Arc<Alerts>,
}

/// The handle to the supervisor task.
#[derive(Debug)]
pub struct Supervisor {
    tx: mpsc::Sender<Request>,
    status: Arc<WorkerStatus>,
    handoff: Arc<Mutex<Handoff>>,
    enabled: bool,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Restart => "Restart",
            Self::Resume(_) => "Resume",
            Self::Stop(_) => "Stop",
        })
    }
}

impl Supervisor {
    /// Starts supervising (and the first worker) unless `settings.enabled` is false.
    pub fn start(settings: WorkerConfig, deps: Deps, start: StartPoint) -> Self {
        let status = Arc::new(WorkerStatus::default());
        let handoff = Arc::new(Mutex::new(Handoff::new(start)));
        // Bound 4: requests are rare (a rejection, a rollback, an operator, shutdown);
        // a burst beyond that waits, it is never dropped.
        let (tx, rx) = mpsc::channel(4);
        let enabled = settings.enabled;
        if enabled {
            status.set(WorkerState::Starting, 0);
            let task = Task {
                binary: find_binary(settings.binary.as_deref()),
                policy: Policy::new(Limits {
                    cooldown: Duration::from_millis(settings.cooldown_ms),
                    max_backoff: Duration::from_millis(settings.max_backoff_ms),
                    max_attempts: settings.max_restart_attempts,
                    stable_after: Duration::from_millis(settings.stable_after_ms),
                    max_crashes: settings.max_crashes,
                    crash_window: Duration::from_millis(settings.crash_window_ms),
                }),
                settings,
                deps,
                status: status.clone(),
                handoff: handoff.clone(),
            };
            tokio::spawn(task.run(rx));
        } else {
            status.set(WorkerState::Disabled, 0);
        }
        Self {
            tx,
            status,
            handoff,
            enabled,
        }
    }

    /// The worker's state for `/v1/status`.
    pub fn status(&self) -> &WorkerStatus {
        &self.status
    }

    /// Whether a worker is configured at all.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Where the next worker will start.
    pub fn start_point(&self) -> StartPoint {
        self.handoff.lock().start()
    }

    /// The ring generation whose published versions may serve: the running worker's,
    /// unless its replacement has been asked for (then none until the next worker
    /// has started). `None` too when no worker is configured.
    pub fn live_generation(&self) -> Option<u64> {
        self.handoff.lock().live()
    }

    /// Moves the start point without restarting (a version was swapped in: a
    /// restarted worker should come back from it).
    pub fn advance(&self, point: StartPoint) {
        self.handoff.lock().advance(point);
    }

    /// Stops the running worker and starts one from `point` (not a failure). The
    /// running worker's generation stops being live before this returns.
    pub async fn restart_from(&self, point: StartPoint) {
        self.handoff.lock().replace(Some(point));
        let _ = self.tx.send(Request::Restart).await;
    }

    /// Resumes a suspended supervisor (true), or restarts a live worker (false).
    pub async fn resume_or_restart(&self) -> bool {
        self.handoff.lock().replace(None);
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Request::Resume(tx)).await.is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    /// Stops the worker (SIGTERM, then SIGKILL) and ends supervision.
    pub async fn stop(&self) {
        self.handoff.lock().replace(None);
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Request::Stop(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// `update-worker` next to the running executable, or one directory up (test
/// binaries live in `target/<profile>/deps/`, the worker in `target/<profile>/`).
fn find_binary(configured: Option<&Path>) -> Option<PathBuf> {
    if let Some(path) = configured {
        return Some(path.to_path_buf());
    }
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [
        dir.join("update-worker"),
        dir.parent()?.join("update-worker"),
    ]
    .into_iter()
    .find(|p| p.is_file())
}
