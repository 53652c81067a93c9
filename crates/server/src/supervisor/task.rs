//! The task that owns one worker process at a time: spawns it, watches its exit and
//! heartbeat, stops it, cleans up after it, and waits out the backoff before the
//! next. The [`Supervisor`](super::Supervisor) handle talks to it through a bounded
//! request channel; this file is the loop behind it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::cleanup;
use super::handoff::Handoff;
use super::policy::{Decision, Policy};
use super::{Deps, Request, WorkerState, WorkerStatus};
use crate::alerts::Severity;
use crate::config::WorkerConfig;
use crate::update::WorkerSpec;
use crate::update::checkpoints::unix_ms;

/// How one worker's life ended.
enum End {
    Exited(String),
    StartupTimeout,
    Hung,
    Requested,
    SpawnFailed(String),
}

/// What the task does after a wait.
enum Next {
    Continue,
    Stop(Option<oneshot::Sender<()>>),
}

pub(super) struct Task {
    pub(super) binary: Option<PathBuf>,
    pub(super) policy: Policy,
    pub(super) settings: WorkerConfig,
    pub(super) deps: Deps,
    pub(super) status: Arc<WorkerStatus>,
    pub(super) handoff: Arc<Mutex<Handoff>>,
}

impl Task {
    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        let mut first = true;
        loop {
            if !first {
                self.clean_up().await;
            }
            first = false;
            let (end, pid, started) = match self.spawn() {
                Ok(child) => {
                    let pid = child.id().unwrap_or(0);
                    match self.watch(child, &mut rx).await {
                        Ok((end, started)) => (end, pid, started),
                        Err(ack) => return self.stopped(ack),
                    }
                }
                Err(e) => (End::SpawnFailed(e.to_string()), 0, false),
            };
            let (reason, detail) = match &end {
                End::Requested => continue,
                End::Exited(code) => ("exit", format!("exited ({code})")),
                End::StartupTimeout => (
                    "startup_timeout",
                    format!(
                        "did not heartbeat within {} ms of starting",
                        self.settings.startup_timeout_ms
                    ),
                ),
                End::Hung => (
                    "hang",
                    format!(
                        "stopped heartbeating for over {} ms; killed",
                        self.settings.heartbeat_timeout_ms
                    ),
                ),
                End::SpawnFailed(e) => ("spawn_failed", format!("could not be started: {e}")),
            };
            self.status.restarts.fetch_add(1, Ordering::Relaxed);
            crate::metrics::record_restart(reason);
            let decision = self
                .policy
                .on_failure(started, Instant::now(), &mut rand::rng());
            self.publish_counts();
            let mut details = BTreeMap::new();
            details.insert("pid".to_string(), pid.to_string());
            details.insert("reason".to_string(), reason.to_string());
            details.insert(
                "failed_attempts".to_string(),
                self.policy.attempts().to_string(),
            );
            details.insert("crash_streak".to_string(), self.policy.streak().to_string());
            self.deps.alerts.raise(
                "worker_crashed",
                Severity::Critical,
                format!("the update-worker {detail}; serving continues, learning waits"),
                details,
            );
            match decision {
                Decision::Retry(wait) => {
                    self.status.set(WorkerState::Restarting, 0);
                    tracing::warn!(
                        reason,
                        ?wait,
                        attempts = self.policy.attempts(),
                        streak = self.policy.streak(),
                        "update-worker failed; restarting after backoff"
                    );
                    match wait_or_request(&mut rx, wait).await {
                        Next::Continue => {}
                        Next::Stop(ack) => return self.stopped(ack),
                    }
                }
                Decision::SuspendAttempts | Decision::SuspendIntensity => {
                    self.status.set(WorkerState::Suspended, 0);
                    let why = if decision == Decision::SuspendAttempts {
                        format!("failed to start {} times in a row", self.policy.attempts())
                    } else {
                        format!(
                            "crashed {} times within {} s",
                            self.settings.max_crashes,
                            self.settings.crash_window_ms / 1000
                        )
                    };
                    tracing::error!(%why, "update-worker supervision suspended");
                    self.deps.alerts.raise(
                        "worker_suspended",
                        Severity::Emergency,
                        format!(
                            "the update-worker {why}; supervision is suspended and the model no longer learns (serving goes on). POST /v1/admin/worker/restart resumes it"
                        ),
                        BTreeMap::new(),
                    );
                    loop {
                        match rx.recv().await {
                            Some(Request::Resume(ack)) => {
                                let _ = ack.send(true);
                                break;
                            }
                            // A new start point is already recorded; stay suspended.
                            Some(Request::Restart) => {}
                            Some(Request::Stop(ack)) => return self.stopped(Some(ack)),
                            None => return self.stopped(None),
                        }
                    }
                    self.policy.reset();
                    self.publish_counts();
                    self.deps.alerts.resolve(
                        "worker_suspended",
                        Severity::Emergency,
                        "supervision resumed by an operator",
                    );
                    tracing::info!("update-worker supervision resumed");
                }
            }
        }
    }

    fn publish_counts(&self) {
        self.status
            .attempts
            .store(self.policy.attempts(), Ordering::Relaxed);
        self.status
            .streak
            .store(self.policy.streak(), Ordering::Relaxed);
    }

    /// Watches one worker until it ends; the flag says whether it had heartbeated.
    /// `Err` carries a stop request.
    async fn watch(
        &mut self,
        mut child: Child,
        rx: &mut mpsc::Receiver<Request>,
    ) -> Result<(End, bool), Option<oneshot::Sender<()>>> {
        let pid = child.id().unwrap_or(0);
        let spawned_ms = unix_ms();
        let spawned = Instant::now();
        let mut running = false;
        let mut tick =
            tokio::time::interval(Duration::from_millis(self.settings.watchdog_interval_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                exit = child.wait() => {
                    let code = exit.map_or_else(|e| e.to_string(), |s| s.to_string());
                    return Ok((End::Exited(code), running));
                }
                _ = tick.tick() => {
                    let beat = self.deps.pipeline.ring().heartbeat_ms();
                    match judge(&self.settings, running, beat, spawned_ms, unix_ms(), spawned.elapsed()) {
                        Beat::Starting => {}
                        Beat::Started => {
                            running = true;
                            self.status.set(WorkerState::Running, pid);
                            self.policy.on_healthy(Instant::now());
                            self.publish_counts();
                            if self.deps.alerts.is_active("worker_crashed") {
                                self.deps.alerts.resolve("worker_crashed", Severity::Critical, "the update-worker is running again");
                                self.deps.alerts.notify("worker_recovered", Severity::Info, format!("the update-worker is running again (pid {pid})"));
                            }
                        }
                        Beat::StartupTimeout => {
                            let _ = child.kill().await;
                            return Ok((End::StartupTimeout, false));
                        }
                        Beat::Hung => {
                            // A stopped or deadlocked process cannot be asked: kill it.
                            let _ = child.kill().await;
                            return Ok((End::Hung, true));
                        }
                        Beat::Healthy => {
                            self.policy.on_healthy(Instant::now());
                            self.publish_counts();
                        }
                    }
                }
                request = rx.recv() => match request {
                    Some(Request::Restart) => {
                        self.stop_child(&mut child).await;
                        crate::metrics::record_restart("requested");
                        tracing::info!(point = ?self.handoff.lock().start(), "restarting the update-worker on request");
                        return Ok((End::Requested, running));
                    }
                    Some(Request::Resume(ack)) => {
                        // Not suspended: an operator's restart of a live worker.
                        let _ = ack.send(false);
                        self.stop_child(&mut child).await;
                        crate::metrics::record_restart("operator");
                        return Ok((End::Requested, running));
                    }
                    Some(Request::Stop(ack)) => {
                        self.stop_child(&mut child).await;
                        return Err(Some(ack));
                    }
                    None => {
                        self.stop_child(&mut child).await;
                        return Err(None);
                    }
                },
            }
        }
    }

    /// A new ring generation for the next worker, and the dead one's temp files.
    async fn clean_up(&self) {
        let next = self.deps.pipeline.ring().generation() + 1;
        match self.deps.rings.create(next) {
            Ok(ring) => {
                if let Err(e) = self.deps.pipeline.replace_ring(ring).await {
                    tracing::error!(error = %e, "cannot switch to a new ring generation; keeping the old ring");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot create a new ring generation; keeping the old ring")
            }
        }
        let removed = cleanup::remove_temp_files(&self.deps.checkpoint_dir);
        if removed > 0 {
            tracing::info!(removed, "removed a dead worker's checkpoint temp files");
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
        let ring = self.deps.pipeline.ring();
        let generation = ring.generation();
        let Some((point, ticket)) = self.handoff.lock().begin(generation) else {
            // The new ring could not be made (see `clean_up`): the old one's worker
            // was replaced, and a worker on its generation could publish nothing
            // that serves. A failed start, retried after the backoff.
            return Err(std::io::Error::other(format!(
                "no new ring generation after a replaced worker's generation {generation}"
            )));
        };
        let spec = WorkerSpec {
            ring: ring.path().to_path_buf(),
            generation,
            wal_dir: self.deps.wal_dir.clone(),
            checkpoint_dir: self.deps.checkpoint_dir.clone(),
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
        let live = self.handoff.lock().went_live(ticket, generation);
        self.status
            .set(WorkerState::Starting, child.id().unwrap_or(0));
        tracing::info!(
            pid = child.id(),
            version = point.version,
            floor = point.floor,
            generation,
            live,
            "update-worker started"
        );
        Ok(child)
    }
}

/// What one watchdog tick makes of the worker's heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Beat {
    /// No heartbeat since it was spawned, within the startup timeout.
    Starting,
    /// Its first heartbeat: the start succeeded.
    Started,
    /// Heartbeating.
    Healthy,
    /// No heartbeat within `startup_timeout_ms` of the spawn.
    StartupTimeout,
    /// Its last heartbeat is older than `heartbeat_timeout_ms`.
    Hung,
}

/// Judges the ring's heartbeat `beat_ms` (wall-clock ms, as the worker writes it) at
/// `now_ms`, for a worker spawned at `spawned_ms`, `since_spawn` ago, that had
/// (`running`) or had not heartbeated yet. The times come in as arguments so the rule
/// is tested without a process or a clock. A beat older than the spawn is the
/// previous worker's, so it does not count as a start.
fn judge(
    settings: &WorkerConfig,
    running: bool,
    beat_ms: u64,
    spawned_ms: u64,
    now_ms: u64,
    since_spawn: Duration,
) -> Beat {
    if !running {
        if beat_ms >= spawned_ms {
            Beat::Started
        } else if since_spawn > Duration::from_millis(settings.startup_timeout_ms) {
            Beat::StartupTimeout
        } else {
            Beat::Starting
        }
    } else if now_ms.saturating_sub(beat_ms) > settings.heartbeat_timeout_ms {
        Beat::Hung
    } else {
        Beat::Healthy
    }
}

/// Waits `delay` unless a request comes first: a restart or resume cuts it short, a
/// stop (or the handle going away) ends the task.
async fn wait_or_request(rx: &mut mpsc::Receiver<Request>, delay: Duration) -> Next {
    tokio::select! {
        () = tokio::time::sleep(delay) => Next::Continue,
        request = rx.recv() => match request {
            Some(Request::Restart) => Next::Continue,
            Some(Request::Resume(ack)) => {
                let _ = ack.send(false);
                Next::Continue
            }
            Some(Request::Stop(ack)) => Next::Stop(Some(ack)),
            None => Next::Stop(None),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_first_heartbeat_starts_a_worker_and_a_stale_one_means_hung() {
        let settings = WorkerConfig {
            startup_timeout_ms: 10_000,
            heartbeat_timeout_ms: 2_000,
            ..WorkerConfig::default()
        };
        let judge = |running, beat, now, since_spawn_ms| {
            judge(
                &settings,
                running,
                beat,
                1_000_000,
                now,
                Duration::from_millis(since_spawn_ms),
            )
        };
        // The ring still holds the previous worker's beat: not a start, until the
        // startup timeout runs out (strictly after it).
        assert_eq!(judge(false, 999_990, 1_000_050, 50), Beat::Starting);
        assert_eq!(judge(false, 999_990, 1_010_000, 10_000), Beat::Starting);
        assert_eq!(
            judge(false, 999_990, 1_010_001, 10_001),
            Beat::StartupTimeout
        );
        // A beat at or after the spawn is this worker's.
        assert_eq!(judge(false, 1_000_000, 1_000_050, 50), Beat::Started);
        assert_eq!(judge(false, 1_000_400, 1_020_000, 20_000), Beat::Started);
        // Running: healthy while the beat is at most the timeout old, hung after.
        assert_eq!(judge(true, 1_005_000, 1_007_000, 7_000), Beat::Healthy);
        assert_eq!(judge(true, 1_005_000, 1_007_001, 7_001), Beat::Hung);
        // A beat ahead of our clock (the wall clock stepped back) is no hang.
        assert_eq!(judge(true, 1_005_000, 1_004_000, 4_000), Beat::Healthy);
    }

    #[tokio::test(start_paused = true)]
    async fn the_backoff_wait_runs_its_course_unless_a_request_cuts_it_short() {
        let (tx, mut rx) = mpsc::channel(4);
        let started = Instant::now();
        assert!(matches!(
            wait_or_request(&mut rx, Duration::from_secs(60)).await,
            Next::Continue
        ));
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(60) && waited < Duration::from_millis(60_010),
            "{waited:?}"
        );

        // A restart request ends the wait early; a resume is answered "not suspended".
        let wait = tokio::spawn(async move {
            let next = wait_or_request(&mut rx, Duration::from_secs(60)).await;
            (matches!(next, Next::Continue), rx)
        });
        tokio::task::yield_now().await;
        let started = Instant::now();
        tx.send(Request::Restart).await.unwrap();
        let (continued, mut rx) = wait.await.unwrap();
        assert!(continued);
        assert!(started.elapsed() < Duration::from_secs(1), "cut short");

        let (ack, answer) = oneshot::channel();
        tx.send(Request::Resume(ack)).await.unwrap();
        assert!(matches!(
            wait_or_request(&mut rx, Duration::from_secs(60)).await,
            Next::Continue
        ));
        assert!(!answer.await.unwrap());

        // A stop ends the task, and so does the handle going away.
        let (ack, _stopped) = oneshot::channel();
        tx.send(Request::Stop(ack)).await.unwrap();
        assert!(matches!(
            wait_or_request(&mut rx, Duration::from_secs(60)).await,
            Next::Stop(Some(_))
        ));
        drop(tx);
        assert!(matches!(
            wait_or_request(&mut rx, Duration::from_secs(60)).await,
            Next::Stop(None)
        ));
    }
}
