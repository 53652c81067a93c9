//! Starting, stopping and restarting the update-worker process.
//!
//! One task owns the child. It starts the worker from the current start point (the
//! serving version and the floor below which updates count as handled), waits on the
//! child's exit — which the kernel reports the instant it happens — and starts it
//! again after `restart_delay_ms`. Commands restart it from a new start point (after
//! a rejected version or a rollback) or stop it: SIGTERM, then SIGKILL after
//! `stop_grace_ms`. The watchdog with backoff, heartbeat checks and alerts replaces
//! the fixed delay in the supervisor.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};

use super::WorkerSpec;
use crate::config::WorkerConfig;

/// The worker's state, as `/v1/status` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum WorkerState {
    /// Configured off.
    Disabled = 0,
    /// Spawned, not yet heartbeating.
    Starting = 1,
    /// Running.
    Running = 2,
    /// Exited; waiting to be started again.
    Restarting = 3,
    /// Stopped by the server (shutdown).
    Stopped = 4,
    /// The executable cannot be found or started.
    Unavailable = 5,
}

impl WorkerState {
    /// Every state, for one-hot gauges.
    pub const ALL: [WorkerState; 6] = [
        Self::Disabled,
        Self::Starting,
        Self::Running,
        Self::Restarting,
        Self::Stopped,
        Self::Unavailable,
    ];

    /// The name in `/v1/status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disabled => "disabled",
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Restarting => "restarting",
            Self::Stopped => "stopped",
            Self::Unavailable => "unavailable",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Disabled,
            1 => Self::Starting,
            2 => Self::Running,
            3 => Self::Restarting,
            4 => Self::Stopped,
            _ => Self::Unavailable,
        }
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
}

impl WorkerStatus {
    /// The running worker's pid, if any.
    pub fn pid(&self) -> Option<u32> {
        Some(self.pid.load(Ordering::Relaxed)).filter(|&p| p != 0)
    }
    /// The current state.
    pub fn state(&self) -> WorkerState {
        WorkerState::from_u8(self.state.load(Ordering::Relaxed))
    }
    /// Times the worker was started again after exiting on its own.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }
    fn set(&self, state: WorkerState, pid: u32) {
        self.state.store(state as u8, Ordering::Relaxed);
        self.pid.store(pid, Ordering::Relaxed);
    }
}

enum Request {
    Restart(StartPoint),
    Stop(oneshot::Sender<()>),
}

/// The handle to the worker task.
#[derive(Debug)]
pub struct WorkerHandle {
    tx: mpsc::Sender<Request>,
    status: Arc<WorkerStatus>,
    start: Arc<Mutex<StartPoint>>,
    enabled: bool,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Restart(p) => write!(f, "Restart({p:?})"),
            Self::Stop(_) => f.write_str("Stop"),
        }
    }
}

/// The template of every spec the task writes; the start point is filled per spawn.
#[derive(Debug, Clone)]
pub struct SpecTemplate {
    pub ring: PathBuf,
    pub generation: u64,
    pub wal_dir: PathBuf,
    pub checkpoint_dir: PathBuf,
}

impl WorkerHandle {
    /// Starts the task (and the worker) unless `settings.enabled` is false.
    pub fn start(settings: WorkerConfig, template: SpecTemplate, start: StartPoint) -> Self {
        let status = Arc::new(WorkerStatus::default());
        let start = Arc::new(Mutex::new(start));
        // Bound 4: commands are rare (a rejection, a rollback, shutdown); a burst
        // beyond that waits, it is never dropped.
        let (tx, rx) = mpsc::channel(4);
        let enabled = settings.enabled;
        if enabled {
            status.set(WorkerState::Starting, 0);
            let task = Task {
                binary: find_binary(settings.binary.as_deref()),
                settings,
                template,
                status: status.clone(),
                start: start.clone(),
            };
            tokio::spawn(task.run(rx));
        } else {
            status.set(WorkerState::Disabled, 0);
        }
        Self {
            tx,
            status,
            start,
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
        *self.start.lock()
    }

    /// Moves the start point without restarting (a version was swapped in: a crashed
    /// worker should come back from it).
    pub fn advance(&self, point: StartPoint) {
        *self.start.lock() = point;
    }

    /// Stops the running worker and starts one from `point`.
    pub async fn restart_from(&self, point: StartPoint) {
        *self.start.lock() = point;
        let _ = self.tx.send(Request::Restart(point)).await;
    }

    /// Stops the worker (SIGTERM, then SIGKILL) and ends the task.
    pub async fn stop(&self) {
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

/// What the task does after a wait.
enum Next {
    Continue,
    Stop(Option<oneshot::Sender<()>>),
}

/// Waits `delay`, unless a command comes first: a restart cuts the wait short, a stop
/// (or the handle being dropped) ends the task.
async fn next(rx: &mut mpsc::Receiver<Request>, delay: Duration) -> Next {
    tokio::select! {
        () = tokio::time::sleep(delay) => Next::Continue,
        request = rx.recv() => match request {
            Some(Request::Restart(_)) => Next::Continue,
            Some(Request::Stop(ack)) => Next::Stop(Some(ack)),
            None => Next::Stop(None),
        },
    }
}

struct Task {
    binary: Option<PathBuf>,
    settings: WorkerConfig,
    template: SpecTemplate,
    status: Arc<WorkerStatus>,
    start: Arc<Mutex<StartPoint>>,
}

impl Task {
    async fn run(self, mut rx: mpsc::Receiver<Request>) {
        let delay = Duration::from_millis(self.settings.restart_delay_ms);
        loop {
            let mut child = match self.spawn() {
                Ok(child) => child,
                Err(e) => {
                    self.status.set(WorkerState::Unavailable, 0);
                    tracing::error!(error = %e, "cannot start the update-worker; the weights will not learn until it starts");
                    // Retrying a missing executable every few ms would only fill the log.
                    match next(&mut rx, delay.max(Duration::from_secs(1))).await {
                        Next::Continue => continue,
                        Next::Stop(ack) => return self.stopped(ack),
                    }
                }
            };
            tokio::select! {
                exit = child.wait() => {
                    self.status.restarts.fetch_add(1, Ordering::Relaxed);
                    crate::metrics::record_restart("exit");
                    self.status.set(WorkerState::Restarting, 0);
                    match exit {
                        Ok(code) => tracing::warn!(%code, ?delay, "the update-worker exited; restarting it"),
                        Err(e) => tracing::warn!(error = %e, ?delay, "lost the update-worker; restarting it"),
                    }
                    match next(&mut rx, delay).await {
                        Next::Continue => continue,
                        Next::Stop(ack) => return self.stopped(ack),
                    }
                }
                request = rx.recv() => {
                    self.stop_child(&mut child).await;
                    match request {
                        Some(Request::Restart(point)) => {
                            crate::metrics::record_restart("requested");
                            tracing::info!(version = point.version, floor = point.floor, "restarting the update-worker");
                        }
                        Some(Request::Stop(ack)) => return self.stopped(Some(ack)),
                        None => return self.stopped(None),
                    }
                }
            }
        }
    }

    fn stopped(&self, ack: Option<oneshot::Sender<()>>) {
        self.status.set(WorkerState::Stopped, 0);
        if let Some(ack) = ack {
            let _ = ack.send(());
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within `stop_grace_ms`.
    async fn stop_child(&self, child: &mut Child) {
        let grace = Duration::from_millis(self.settings.stop_grace_ms);
        if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
            if tokio::time::timeout(grace, child.wait()).await.is_ok() {
                return;
            }
            tracing::warn!(pid, ?grace, "the update-worker ignored SIGTERM; killing it");
        }
        let _ = child.kill().await;
    }

    fn spawn(&self) -> std::io::Result<Child> {
        let binary = self.binary.as_ref().ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no update-worker executable next to the server (build it with `cargo build --workspace`, or set worker.binary)",
            )
        })?;
        let point = *self.start.lock();
        let spec = WorkerSpec {
            ring: self.template.ring.clone(),
            generation: self.template.generation,
            wal_dir: self.template.wal_dir.clone(),
            checkpoint_dir: self.template.checkpoint_dir.clone(),
            start_version: point.version,
            applied_floor: point.floor,
            parent_pid: std::process::id(),
            settings: self.settings.clone(),
        };
        let child = Command::new(binary)
            .arg("--spec")
            .arg(spec.to_arg())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        self.status
            .set(WorkerState::Running, child.id().unwrap_or(0));
        tracing::info!(
            pid = child.id(),
            version = point.version,
            floor = point.floor,
            "update-worker started"
        );
        Ok(child)
    }
}
