//! The WAL writer thread: the server's [`UpdateSink`].
//!
//! The request path only ever does a `try_send` into a bounded queue; one OS thread
//! owns the WAL and the ring's producer end. Per wake-up it drains up to
//! `group_max` queued updates, appends them, commits them with a single write(2)
//! (group commit, at most one fsync under the policy), and only then pushes each to
//! the ring and answers the feedbacks waiting on it. So an update reaches the worker
//! only after it is in the log, and a 202 means "in the log": a SIGKILL of the server
//! after that loses nothing (the page cache outlives the process), and the fsync
//! policy bounds what a machine crash can take (see `FsyncMode`).
//!
//! After the commit the writer also hands each logged update to the k-NN memory
//! (`engine::feed_memory`), so the memory holds what the log holds, in log order
//! (less what a full insert queue drops, counted), and keeps the pending log (`super::pending_log`): predictions arrive here
//! as fire-and-forget records, and a label that joined one is marked answered
//! there before the label is acknowledged.
//!
//! A std channel rather than a tokio one: the consumer is a plain thread, and
//! `try_send` from async code never blocks. The thread does not sleep on the channel,
//! though, since then every send would wake it, one futex call and one context
//! switch per request on a machine with two cores. It sleeps on its own park, and
//! only what someone waits for wakes it at once: a feedback's append, a control. A
//! prediction's record and its pseudo-label (nobody waits on them) are collected
//! every [`writer::LINGER`] while requests flow, and wake it only from a long idle
//! (`writer::Waker::nudge`). So a steady stream of predictions costs the writer about
//! 1000 / LINGER-ms wake-ups a second, not one per request; a prediction reaches the
//! pending log's buffer within `LINGER` and the disk within `LINGER` plus
//! `wal.pending_commit_ms`.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::codec;
use super::pending_log::PendingLog;
use crate::engine::{Receipt, SinkError, SinkStats, Update, UpdateSink};
use crate::ipc::Ring;
use crate::knn::Memory;
use crate::knn::snapshot::{self, SnapshotError};
use crate::model::Mlp;
use crate::wal::Wal;

/// What the writer thread is asked to do, in queue order.
enum Command {
    /// Log an update; `ack` (feedbacks) receives its sequence number. The update
    /// itself (already encoded in `payload`) goes on to the memory.
    Append {
        payload: Vec<u8>,
        update: Update,
        ack: Option<oneshot::Sender<Result<u64, SinkError>>>,
    },
    /// Keep a pending prediction's record in the pending log, then log its
    /// pseudo-label's update (encoded), if it became one.
    Remember {
        record: Vec<u8>,
        update: Option<(Vec<u8>, Update)>,
    },
    /// Anything else, handled after the group's appends are committed.
    Control(Control),
}

/// The writer's non-append commands.
enum Control {
    /// Answers the last logged sequence number once everything queued before it is
    /// committed: the start of the sync barrier.
    Barrier(oneshot::Sender<u64>),
    /// Deletes WAL segments wholly at or below this sequence number (and at or
    /// below the memory snapshot's position).
    Truncate(u64),
    /// Commits and fsyncs everything queued before it.
    Flush(oneshot::Sender<Result<(), String>>),
    /// Produce into this ring from now on (a new generation for a new worker).
    NewRing(Arc<Ring>, oneshot::Sender<Result<(), String>>),
    /// Flush, then stop the thread.
    Shutdown(oneshot::Sender<Result<(), String>>),
}

/// Counters the writer thread publishes for `/v1/status` and the metrics.
#[derive(Debug, Default)]
struct Shared {
    /// Wakes the writer thread.
    waker: writer::Waker,
    /// The last sequence number committed to the WAL.
    last_seq: AtomicU64,
    /// Bytes of WAL on disk.
    wal_bytes: AtomicU64,
    /// Pseudo-labels refused because the queue was full.
    refused: AtomicU64,
    /// Commits that failed (each failing the updates in it).
    wal_errors: AtomicU64,
    /// Updates the ring could not carry, over every ring generation.
    dropped: AtomicU64,
    /// The log position the newest memory snapshot on disk reflects: the WAL after
    /// it is what rebuilds the memory, so truncation keeps it.
    memory_floor: AtomicU64,
    /// Pending predictions not logged: the queue was full, or the log failed.
    pending_dropped: AtomicU64,
    /// Bytes of pending log on disk.
    pending_bytes: AtomicU64,
    /// Pending predictions queued and not yet taken by the writer.
    remembering: std::sync::atomic::AtomicUsize,
    /// Pending records not handed to the cluster's shipper (its queue was full).
    unshared: AtomicU64,
}

/// The update pipeline's handle: cheap to share, never blocks.
#[derive(Debug)]
pub struct Pipeline {
    tx: SyncSender<Command>,
    shared: Arc<Shared>,
    /// The current ring; replaced (new generation) when the supervisor restarts the
    /// worker.
    ring: ArcSwap<Ring>,
    /// Most pending predictions queued at once: half the queue, so that predictions
    /// never crowd labels out of it (a label finds room or is refused as before).
    remember_budget: usize,
    /// Held while a memory snapshot is captured and written, so that two writers
    /// (the periodic one, a checkpoint, shutdown) never interleave and a snapshot
    /// never replaces a newer one.
    snapshot_lock: Mutex<()>,
    /// The memory the writer feeds, for its snapshots.
    memory: Arc<Memory>,
    /// Called after each memory snapshot is written, under the snapshot lock (a
    /// cluster replica records there how far its memory has read the shared
    /// stream, so a restart neither misses nor repeats what the snapshot holds).
    after_snapshot: std::sync::OnceLock<Hook>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        // Dropped without a shutdown: the writer notices the closed channel soon,
        // syncs and ends.
        self.shared.waker.closing.store(true, Ordering::SeqCst);
        self.shared.waker.wake();
    }
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Append { .. } => "Append",
            Self::Remember { .. } => "Remember",
            Self::Control(Control::Barrier(_)) => "Barrier",
            Self::Control(Control::Truncate(_)) => "Truncate",
            Self::Control(Control::Flush(_)) => "Flush",
            Self::Control(Control::NewRing(..)) => "NewRing",
            Self::Control(Control::Shutdown(_)) => "Shutdown",
        })
    }
}

/// A callback, shown by name only.
struct Hook(Box<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hook")
    }
}

/// What [`Pipeline::start`] runs on.
#[derive(Debug)]
pub struct PipelineParts {
    /// The opened WAL.
    pub wal: Wal,
    /// The opened pending log.
    pub pending: PendingLog,
    /// The ring to produce into.
    pub ring: Arc<Ring>,
    /// The k-NN memory every logged update goes on to.
    pub memory: Arc<Memory>,
    /// Experiences a drift marker keeps (`engine.drift_keep`).
    pub drift_keep: u64,
    /// The log position the memory snapshot on disk reflects.
    pub memory_floor: u64,
    /// The queue's bound (`wal.queue`).
    pub queue: usize,
    /// Commands handled per commit at most (`wal.group_max`).
    pub group_max: usize,
    /// In a cluster, where each pending record also goes once logged (to be
    /// shared with the other replicas); bounded, a full queue drops and counts.
    pub share: Option<tokio::sync::mpsc::Sender<Vec<u8>>>,
}

impl Pipeline {
    /// Starts the writer thread. The ring's `produced_seq` is set to the WAL's last
    /// sequence number, so a worker learns at once of updates logged before this
    /// start.
    pub fn start(parts: PipelineParts) -> std::io::Result<Self> {
        let PipelineParts {
            wal,
            pending,
            ring,
            memory,
            drift_keep,
            memory_floor,
            queue,
            group_max,
            share,
        } = parts;
        let producer = ring.producer().ok_or_else(|| {
            std::io::Error::other("the ring already has a producer: this is a bug")
        })?;
        ring.set_produced_seq(wal.last_seq());
        let shared = Arc::new(Shared::default());
        shared.last_seq.store(wal.last_seq(), Ordering::Relaxed);
        shared.wal_bytes.store(wal.bytes(), Ordering::Relaxed);
        shared.memory_floor.store(memory_floor, Ordering::Relaxed);
        shared
            .pending_bytes
            .store(pending.bytes(), Ordering::Relaxed);
        let (tx, rx) = sync_channel(queue);
        let writer = Writer {
            wal,
            pending,
            producer,
            memory: memory.clone(),
            drift_keep,
            shared: shared.clone(),
            group_max,
            share,
        };
        let thread = std::thread::Builder::new()
            .name("wal-writer".into())
            .spawn(move || writer.run(rx))?;
        let _ = shared.waker.thread.set(thread.thread().clone());
        Ok(Self {
            tx,
            shared,
            ring: ArcSwap::new(ring),
            remember_budget: (queue / 2).max(1),
            snapshot_lock: Mutex::new(()),
            memory,
            after_snapshot: std::sync::OnceLock::new(),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// The ring this pipeline produces into now.
    pub fn ring(&self) -> Arc<Ring> {
        self.ring.load_full()
    }

    /// Switches production to `ring` once everything queued before the call is in
    /// the old one. The new ring inherits the sync target and learns the WAL's last
    /// sequence number, so the worker that attaches to it replays what it must.
    pub async fn replace_ring(&self, ring: Arc<Ring>) -> Result<(), SinkError> {
        ring.request_sync(self.ring.load().sync_target());
        let (tx, rx) = oneshot::channel();
        self.send_control(Control::NewRing(ring.clone(), tx))?;
        rx.await
            .map_err(|_| SinkError::Closed)?
            .map_err(SinkError::Log)?;
        self.ring.store(ring);
        Ok(())
    }

    /// The last sequence number committed.
    pub fn last_seq(&self) -> u64 {
        self.shared.last_seq.load(Ordering::Relaxed)
    }

    /// Bytes of WAL on disk.
    pub fn wal_bytes(&self) -> u64 {
        self.shared.wal_bytes.load(Ordering::Relaxed)
    }

    /// Commits that failed.
    pub fn wal_errors(&self) -> u64 {
        self.shared.wal_errors.load(Ordering::Relaxed)
    }

    /// Pending predictions that could not be logged.
    pub fn pending_dropped(&self) -> u64 {
        self.shared.pending_dropped.load(Ordering::Relaxed)
    }

    /// Pending records the cluster's shipper had no room for.
    pub fn unshared(&self) -> u64 {
        self.shared.unshared.load(Ordering::Relaxed)
    }

    /// Bytes of pending log on disk.
    pub fn pending_bytes(&self) -> u64 {
        self.shared.pending_bytes.load(Ordering::Relaxed)
    }

    /// Captures the memory and writes its snapshot to `file` under `model`'s shape,
    /// under the snapshot lock; returns the log position it reflects, at or below
    /// which WAL records are then no longer needed to rebuild the memory. For the
    /// periodic snapshot, the checkpoint and shutdown alike. Blocking.
    pub fn save_memory_snapshot(&self, model: &Mlp, file: &Path) -> Result<u64, SnapshotError> {
        let _one_at_a_time = self.snapshot_lock.lock();
        let shape = snapshot::Shape {
            model_version: model.version(),
            input_dim: model.input_dim(),
            embed_dim: model.embed_dim(),
        };
        let seq = snapshot::save(&self.memory, shape, file)?;
        self.raise_memory_floor(seq);
        if let Some(Hook(after)) = self.after_snapshot.get() {
            after();
        }
        Ok(seq)
    }

    /// Sets what runs after each memory snapshot (once).
    pub fn set_after_snapshot(&self, f: Box<dyn Fn() + Send + Sync>) {
        let _ = self.after_snapshot.set(Hook(f));
    }

    /// A snapshot reflecting the log through `seq` is on disk.
    fn raise_memory_floor(&self, seq: u64) {
        self.shared.memory_floor.fetch_max(seq, Ordering::Relaxed);
    }

    /// The last sequence number logged once everything queued before this call is
    /// committed.
    pub async fn barrier(&self) -> Result<u64, SinkError> {
        let (tx, rx) = oneshot::channel();
        self.send_control(Control::Barrier(tx))?;
        rx.await.map_err(|_| SinkError::Closed)
    }

    /// Commits and fsyncs everything queued before this call.
    pub async fn flush(&self) -> Result<(), SinkError> {
        let (tx, rx) = oneshot::channel();
        self.send_control(Control::Flush(tx))?;
        rx.await
            .map_err(|_| SinkError::Closed)?
            .map_err(SinkError::Log)
    }

    /// Asks the writer to delete WAL segments wholly at or below `seq` (best effort:
    /// a full queue skips it, the next swap asks again).
    pub fn truncate_through(&self, seq: u64) {
        let _ = self.tx.try_send(Command::Control(Control::Truncate(seq)));
        self.shared.waker.wake();
    }

    /// Commits and fsyncs everything queued, stops the writer and joins it. Later
    /// updates are refused with [`SinkError::Closed`]. Idempotent.
    pub async fn shutdown(&self) -> Result<(), SinkError> {
        let (tx, rx) = oneshot::channel();
        if self.send_control(Control::Shutdown(tx)).is_ok() {
            rx.await
                .map_err(|_| SinkError::Closed)?
                .map_err(SinkError::Log)?;
        }
        let thread = self.thread.lock().take();
        if let Some(thread) = thread {
            // The thread has answered and is returning; joining takes microseconds.
            tokio::task::spawn_blocking(move || thread.join())
                .await
                .ok()
                .and_then(|r| r.ok())
                .ok_or_else(|| SinkError::Log("the wal-writer thread panicked".into()))?;
        }
        Ok(())
    }

    /// Control messages must not be lost to a momentarily full queue: when it is
    /// full, a blocking-pool thread waits for room (the writer drains thousands of
    /// records per millisecond) instead of an async thread.
    fn send_control(&self, control: Control) -> Result<(), SinkError> {
        let sent = self.tx.try_send(Command::Control(control));
        self.shared.waker.wake();
        match sent {
            Ok(()) => Ok(()),
            Err(TrySendError::Disconnected(_)) => Err(SinkError::Closed),
            Err(TrySendError::Full(command)) => {
                let tx = self.tx.clone();
                // A send that fails finds the writer gone: the caller's reply
                // channel then reports it closed.
                let shared = self.shared.clone();
                tokio::task::spawn_blocking(move || {
                    let _ = tx.send(command);
                    shared.waker.wake();
                });
                Ok(())
            }
        }
    }

    fn enqueue(
        &self,
        update: Update,
        ack: Option<oneshot::Sender<Result<u64, SinkError>>>,
    ) -> Result<(), SinkError> {
        let (payload, update) = encoded(update);
        let waited_on = ack.is_some();
        match self.tx.try_send(Command::Append {
            payload,
            update,
            ack,
        }) {
            Ok(()) => {
                if waited_on {
                    self.shared.waker.wake();
                } else {
                    self.shared.waker.nudge();
                }
                Ok(())
            }
            Err(TrySendError::Full(_)) => Err(SinkError::Full),
            Err(TrySendError::Disconnected(_)) => Err(SinkError::Closed),
        }
    }
}

impl UpdateSink for Pipeline {
    fn offer(&self, update: Update) -> Result<(), SinkError> {
        let result = self.enqueue(update, None);
        if result.is_err() {
            self.shared.refused.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    fn submit(&self, update: Update) -> Result<Receipt, SinkError> {
        let (tx, rx) = oneshot::channel();
        self.enqueue(update, Some(tx))?;
        Ok(rx)
    }

    fn remember(&self, record: Vec<u8>, update: Option<Update>) -> bool {
        let queued = &self.shared.remembering;
        if queued.fetch_add(1, Ordering::Relaxed) >= self.remember_budget {
            // Over the budget the record is dropped; the update is offered alone.
            queued.fetch_sub(1, Ordering::Relaxed);
            self.shared.pending_dropped.fetch_add(1, Ordering::Relaxed);
            return update.is_some_and(|u| self.offer(u).is_ok());
        }
        let with_update = update.is_some();
        let update = update.map(encoded);
        match self.tx.try_send(Command::Remember { record, update }) {
            Ok(()) => {
                self.shared.waker.nudge();
                with_update
            }
            Err(_) => {
                queued.fetch_sub(1, Ordering::Relaxed);
                self.shared.pending_dropped.fetch_add(1, Ordering::Relaxed);
                if with_update {
                    self.shared.refused.fetch_add(1, Ordering::Relaxed);
                }
                false
            }
        }
    }

    fn stats(&self) -> SinkStats {
        SinkStats {
            sent: self.last_seq(),
            applied: self.ring.load().applied_seq(),
            dropped: self.shared.dropped.load(Ordering::Relaxed),
            refused: self.shared.refused.load(Ordering::Relaxed),
        }
    }
}

/// An update with its WAL record (encoded on the caller's thread, not the writer's).
fn encoded(update: Update) -> (Vec<u8>, Update) {
    let mut payload = Vec::with_capacity(codec::encoded_len(update.features.len()));
    codec::encode(&update, &mut payload);
    (payload, update)
}

mod writer;

use writer::Writer;

#[cfg(test)]
mod tests;
