//! The WAL writer thread: the one owner of the WAL, the pending log and the ring's
//! producer. It takes commands in queue order, appends a group of updates, commits
//! them with one write, then hands each to the ring and to the k-NN memory and
//! acknowledges it; between groups it commits the pending log when due. The
//! [`Pipeline`](super::Pipeline) handle only ever sends it commands.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};

use super::{Command, Control, Shared};
use crate::engine::{SinkError, UpdateKind, feed_memory};
use crate::ipc::{Producer, PushError};
use crate::knn::Memory;
use crate::update::pending_log::PendingLog;
use crate::wal::Wal;

/// How long the idle writer sleeps between checks that its handle still exists.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// How long the writer, having just handled commands, waits for more before
/// checking again; it parks for this long instead of until woken.
pub(super) const LINGER: std::time::Duration = std::time::Duration::from_millis(2);

/// How senders wake the writer thread.
#[derive(Debug, Default)]
pub(super) struct Waker {
    pub(super) thread: std::sync::OnceLock<std::thread::Thread>,
    /// The writer is in a long sleep (no traffic lately): a record must wake it.
    pub(super) idle: std::sync::atomic::AtomicBool,
    /// The handle is being dropped: the writer looks every [`LINGER`] for the
    /// channel to close, instead of sleeping long.
    pub(super) closing: std::sync::atomic::AtomicBool,
}

impl Waker {
    /// Something waits on the writer: wake it now (cheap when it is awake).
    pub(super) fn wake(&self) {
        if let Some(thread) = self.thread.get() {
            thread.unpark();
        }
    }

    /// A record nobody waits on: wake the writer only from a long sleep; while
    /// traffic flows it looks every [`LINGER`] anyway.
    pub(super) fn nudge(&self) {
        if self.idle.load(Ordering::SeqCst) && self.idle.swap(false, Ordering::SeqCst) {
            self.wake();
        }
    }
}

/// The writer thread's state.
pub(super) struct Writer {
    pub(super) wal: Wal,
    pub(super) pending: PendingLog,
    pub(super) producer: Producer,
    pub(super) memory: Arc<Memory>,
    pub(super) drift_keep: u64,
    pub(super) shared: Arc<Shared>,
    pub(super) group_max: usize,
    pub(super) share: Option<tokio::sync::mpsc::Sender<Vec<u8>>>,
}

impl Writer {
    pub(super) fn run(mut self, rx: Receiver<Command>) {
        let mut group = Vec::with_capacity(self.group_max);
        // Commands were handled a moment ago: look again after LINGER rather than
        // sleeping until woken.
        let mut lingering = false;
        loop {
            let mut gone = false;
            while group.len() < self.group_max {
                match rx.try_recv() {
                    Ok(command) => group.push(command),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        gone = true;
                        break;
                    }
                }
            }
            if !group.is_empty() {
                if self.handle(&mut group) {
                    return;
                }
                lingering = true;
                continue;
            }
            if gone {
                break;
            }
            // Nothing queued: an interval fsync policy may still owe its fsync, and
            // the pending log its commit.
            if let Err(e) = self.wal.commit() {
                tracing::error!(error = %e, "WAL commit failed");
            }
            self.commit_pending(false);
            let until_due = self.pending.due().map_or(IDLE_CHECK, |due| {
                due.saturating_duration_since(Instant::now())
                    .min(IDLE_CHECK)
            });
            if lingering || self.shared.waker.closing.load(Ordering::SeqCst) {
                lingering = false;
                std::thread::park_timeout(until_due.min(LINGER));
                continue;
            }
            // A long sleep: from now on a record wakes the writer. One queued before
            // the flag went up woke nobody, so look once more first.
            self.shared.waker.idle.store(true, Ordering::SeqCst);
            match rx.try_recv() {
                Ok(command) => group.push(command),
                Err(TryRecvError::Empty) => std::thread::park_timeout(until_due),
                Err(TryRecvError::Disconnected) => break,
            }
            self.shared.waker.idle.store(false, Ordering::SeqCst);
        }
        // Every handle is gone without a Shutdown: still leave the log durable.
        if let Err(e) = self.wal.sync().and_then(|()| self.pending.sync()) {
            tracing::error!(error = %e, "final WAL fsync failed");
        }
    }

    /// Writes the pending log if due (or `force`); a failure is logged and counted
    /// as lost predictions: serving goes on.
    fn commit_pending(&mut self, force: bool) {
        if let Err(e) = self.pending.commit(force) {
            self.shared.pending_dropped.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, "pending log commit failed");
        }
        self.shared
            .pending_bytes
            .store(self.pending.bytes(), Ordering::Relaxed);
    }

    /// Handles one group; true when asked to stop.
    fn handle(&mut self, group: &mut Vec<Command>) -> bool {
        let mut appended = Vec::with_capacity(group.len());
        let mut after = Vec::new();
        for command in group.drain(..) {
            match command {
                Command::Append {
                    payload,
                    update,
                    ack,
                } => match self.wal.append(&payload) {
                    Ok(seq) => appended.push((seq, payload, update, ack)),
                    Err(e) => {
                        if let Some(ack) = ack {
                            let _ = ack.send(Err(SinkError::Log(e.to_string())));
                        }
                    }
                },
                Command::Remember { record, update } => {
                    self.shared.remembering.fetch_sub(1, Ordering::Relaxed);
                    match self.pending.append_prediction(&record) {
                        Ok(()) => {
                            if let Some(share) = &self.share
                                && share.try_send(record).is_err()
                            {
                                self.shared.unshared.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(e) => {
                            self.shared.pending_dropped.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(error = %e, "a pending prediction was not logged");
                        }
                    }
                    if let Some((payload, update)) = update {
                        match self.wal.append(&payload) {
                            Ok(seq) => appended.push((seq, payload, update, None)),
                            Err(e) => tracing::warn!(error = %e, "a pseudo-label was not logged"),
                        }
                    }
                }
                Command::Control(control) => after.push(control),
            }
        }
        if !appended.is_empty() {
            match self.wal.commit() {
                Ok(()) => {
                    let mut acks = Vec::new();
                    let mut answered = false;
                    for (seq, payload, update, ack) in appended {
                        match self.producer.try_push(seq, &payload) {
                            // Full is counted in the ring header; the worker replays
                            // the record from the WAL.
                            Ok(()) => {}
                            Err(PushError::Full) => {
                                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => {
                                tracing::warn!(seq, error = %e, "update not sent through the ring")
                            }
                        }
                        if let (UpdateKind::Label, Some(id)) = (update.kind, update.origin) {
                            answered = true;
                            // In a cluster, the other replicas learn it was answered.
                            if let Some(share) = &self.share {
                                let record = crate::engine::pending::log::encode_answered(
                                    id,
                                    crate::engine::pending::log::unix_ms(),
                                );
                                if share.try_send(record).is_err() {
                                    self.shared.unshared.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            if let Err(e) = self.pending.append_answered(id) {
                                tracing::warn!(id, error = %e, "pending log: answer not logged");
                            }
                        }
                        feed_memory(&self.memory, self.drift_keep, seq, update);
                        if let Some(ack) = ack {
                            acks.push((seq, ack));
                        }
                    }
                    // A label is acknowledged only once its prediction is marked
                    // answered, so a restart cannot join it again.
                    if answered {
                        self.commit_pending(true);
                    }
                    for (seq, ack) in acks {
                        let _ = ack.send(Ok(seq));
                    }
                    let last = self.wal.last_seq();
                    self.producer.ring().set_produced_seq(last);
                    self.shared.last_seq.store(last, Ordering::Relaxed);
                }
                Err(e) => {
                    self.shared.wal_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, records = appended.len(), "WAL commit failed; refusing the updates in it");
                    for (_, _, _, ack) in appended {
                        if let Some(ack) = ack {
                            let _ = ack.send(Err(SinkError::Log(e.to_string())));
                        }
                    }
                }
            }
        }
        // Published before any control is answered, so a barrier's caller sees the
        // log's size as of the barrier.
        self.shared
            .wal_bytes
            .store(self.wal.bytes(), Ordering::Relaxed);
        let mut stop = false;
        for control in after {
            match control {
                Control::Barrier(tx) => {
                    let _ = tx.send(self.wal.last_seq());
                }
                Control::Truncate(seq) => match self
                    .wal
                    .truncate_through(seq.min(self.shared.memory_floor.load(Ordering::Relaxed)))
                {
                    Ok(0) => {}
                    Ok(n) => {
                        self.shared
                            .wal_bytes
                            .store(self.wal.bytes(), Ordering::Relaxed);
                        tracing::debug!(segments = n, through = seq, "WAL truncated")
                    }
                    Err(e) => tracing::warn!(error = %e, "WAL truncation failed"),
                },
                Control::Flush(tx) => {
                    let synced = self.wal.sync().and_then(|()| self.pending.sync());
                    let _ = tx.send(synced.map_err(|e| e.to_string()));
                }
                Control::NewRing(ring, tx) => {
                    let switched = match ring.producer() {
                        Some(producer) => {
                            ring.set_produced_seq(self.wal.last_seq());
                            self.producer = producer;
                            Ok(())
                        }
                        None => {
                            Err("the new ring already has a producer: this is a bug".to_string())
                        }
                    };
                    let _ = tx.send(switched);
                }
                Control::Shutdown(tx) => {
                    let synced = self.wal.sync().and_then(|()| self.pending.sync());
                    let _ = tx.send(synced.map_err(|e| e.to_string()));
                    stop = true;
                }
            }
        }
        self.commit_pending(false);
        self.shared
            .wal_bytes
            .store(self.wal.bytes(), Ordering::Relaxed);
        stop
    }
}
