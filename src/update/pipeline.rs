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
//! A std channel rather than a tokio one: the consumer is a plain thread that blocks
//! on `recv`, and `try_send` from async code never blocks.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::codec;
use crate::engine::{Receipt, SinkError, SinkStats, Update, UpdateSink};
use crate::ipc::{Producer, PushError, Ring};
use crate::wal::Wal;

/// What the writer thread is asked to do, in queue order.
enum Command {
    /// Log an update; `ack` (feedbacks) receives its sequence number.
    Append {
        payload: Vec<u8>,
        ack: Option<oneshot::Sender<Result<u64, SinkError>>>,
    },
    /// Anything else, handled after the group's appends are committed.
    Control(Control),
}

/// The writer's non-append commands.
enum Control {
    /// Answers the last logged sequence number once everything queued before it is
    /// committed: the start of the sync barrier.
    Barrier(oneshot::Sender<u64>),
    /// Deletes WAL segments wholly at or below this sequence number.
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
}

/// The update pipeline's handle: cheap to share, never blocks.
#[derive(Debug)]
pub struct Pipeline {
    tx: SyncSender<Command>,
    shared: Arc<Shared>,
    /// The current ring; replaced (new generation) when the supervisor restarts the
    /// worker.
    ring: ArcSwap<Ring>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Append { .. } => "Append",
            Self::Control(Control::Barrier(_)) => "Barrier",
            Self::Control(Control::Truncate(_)) => "Truncate",
            Self::Control(Control::Flush(_)) => "Flush",
            Self::Control(Control::NewRing(..)) => "NewRing",
            Self::Control(Control::Shutdown(_)) => "Shutdown",
        })
    }
}

impl Pipeline {
    /// Starts the writer thread over an opened WAL and a ring it will produce into.
    /// The ring's `produced_seq` is set to the WAL's last sequence number, so a worker
    /// learns at once of updates logged before this start.
    pub fn start(
        wal: Wal,
        ring: Arc<Ring>,
        queue: usize,
        group_max: usize,
    ) -> std::io::Result<Self> {
        let producer = ring.producer().ok_or_else(|| {
            std::io::Error::other("the ring already has a producer: this is a bug")
        })?;
        ring.set_produced_seq(wal.last_seq());
        let shared = Arc::new(Shared::default());
        shared.last_seq.store(wal.last_seq(), Ordering::Relaxed);
        shared.wal_bytes.store(wal.bytes(), Ordering::Relaxed);
        let (tx, rx) = sync_channel(queue);
        let writer = Writer {
            wal,
            producer,
            shared: shared.clone(),
            group_max,
        };
        let thread = std::thread::Builder::new()
            .name("wal-writer".into())
            .spawn(move || writer.run(rx))?;
        Ok(Self {
            tx,
            shared,
            ring: ArcSwap::new(ring),
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
        match self.tx.try_send(Command::Control(control)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Disconnected(_)) => Err(SinkError::Closed),
            Err(TrySendError::Full(command)) => {
                let tx = self.tx.clone();
                tokio::task::spawn_blocking(move || tx.send(command));
                Ok(())
            }
        }
    }

    fn enqueue(
        &self,
        update: &Update,
        ack: Option<oneshot::Sender<Result<u64, SinkError>>>,
    ) -> Result<(), SinkError> {
        let mut payload = Vec::with_capacity(codec::encoded_len(update.features.len()));
        codec::encode(update, &mut payload);
        match self.tx.try_send(Command::Append { payload, ack }) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(SinkError::Full),
            Err(TrySendError::Disconnected(_)) => Err(SinkError::Closed),
        }
    }
}

impl UpdateSink for Pipeline {
    fn offer(&self, update: Update) -> Result<(), SinkError> {
        let result = self.enqueue(&update, None);
        if result.is_err() {
            self.shared.refused.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    fn submit(&self, update: Update) -> Result<Receipt, SinkError> {
        let (tx, rx) = oneshot::channel();
        self.enqueue(&update, Some(tx))?;
        Ok(rx)
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

/// How long the idle writer sleeps between checks that its handle still exists.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// The writer thread's state.
struct Writer {
    wal: Wal,
    producer: Producer,
    shared: Arc<Shared>,
    group_max: usize,
}

impl Writer {
    fn run(mut self, rx: Receiver<Command>) {
        let mut group = Vec::with_capacity(self.group_max);
        loop {
            let first = match rx.recv_timeout(IDLE_CHECK) {
                Ok(command) => command,
                Err(RecvTimeoutError::Timeout) => {
                    // An idle interval policy still owes its fsync.
                    if let Err(e) = self.wal.commit() {
                        tracing::error!(error = %e, "WAL commit failed");
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            group.push(first);
            while group.len() < self.group_max {
                match rx.try_recv() {
                    Ok(command) => group.push(command),
                    Err(_) => break,
                }
            }
            if self.handle(&mut group) {
                return;
            }
        }
        // Every handle is gone without a Shutdown: still leave the log durable.
        if let Err(e) = self.wal.sync() {
            tracing::error!(error = %e, "final WAL fsync failed");
        }
    }

    /// Handles one group; true when asked to stop.
    fn handle(&mut self, group: &mut Vec<Command>) -> bool {
        let mut appended = Vec::with_capacity(group.len());
        let mut after = Vec::new();
        for command in group.drain(..) {
            match command {
                Command::Append { payload, ack } => match self.wal.append(&payload) {
                    Ok(seq) => appended.push((seq, payload, ack)),
                    Err(e) => {
                        if let Some(ack) = ack {
                            let _ = ack.send(Err(SinkError::Log(e.to_string())));
                        }
                    }
                },
                Command::Control(control) => after.push(control),
            }
        }
        if !appended.is_empty() {
            match self.wal.commit() {
                Ok(()) => {
                    for (seq, payload, ack) in appended {
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
                        if let Some(ack) = ack {
                            let _ = ack.send(Ok(seq));
                        }
                    }
                    let last = self.wal.last_seq();
                    self.producer.ring().set_produced_seq(last);
                    self.shared.last_seq.store(last, Ordering::Relaxed);
                }
                Err(e) => {
                    self.shared.wal_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, records = appended.len(), "WAL commit failed; refusing the updates in it");
                    for (_, _, ack) in appended {
                        if let Some(ack) = ack {
                            let _ = ack.send(Err(SinkError::Log(e.to_string())));
                        }
                    }
                }
            }
        }
        let mut stop = false;
        for control in after {
            match control {
                Control::Barrier(tx) => {
                    let _ = tx.send(self.wal.last_seq());
                }
                Control::Truncate(seq) => match self.wal.truncate_through(seq) {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(segments = n, through = seq, "WAL truncated"),
                    Err(e) => tracing::warn!(error = %e, "WAL truncation failed"),
                },
                Control::Flush(tx) => {
                    let _ = tx.send(self.wal.sync().map_err(|e| e.to_string()));
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
                    let _ = tx.send(self.wal.sync().map_err(|e| e.to_string()));
                    stop = true;
                }
            }
        }
        self.shared
            .wal_bytes
            .store(self.wal.bytes(), Ordering::Relaxed);
        stop
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::UpdateKind;
    use crate::wal::{FsyncPolicy, WalConfig};

    fn update(i: u32) -> Update {
        Update {
            kind: UpdateKind::Label,
            features: vec![i as f32; 4],
            label: i % 3,
            weight: 1.0,
            model_version: 1,
        }
    }

    fn start(dir: &std::path::Path, ring_slots: usize) -> Pipeline {
        let (wal, _) = Wal::open(WalConfig {
            fsync: FsyncPolicy::Never,
            ..WalConfig::new(dir.join("wal"))
        })
        .unwrap();
        let ring = Arc::new(
            Ring::create(&dir.join("ring"), ring_slots, codec::encoded_len(4), 1).unwrap(),
        );
        Pipeline::start(wal, ring, 64, 16).unwrap()
    }

    #[tokio::test]
    async fn acknowledges_in_log_order_then_feeds_the_ring_and_counts_drops() {
        let dir = tempfile::tempdir().unwrap();
        let pipeline = start(dir.path(), 4);
        let mut receipts = Vec::new();
        for i in 0..10 {
            receipts.push(pipeline.submit(update(i)).unwrap());
        }
        pipeline.offer(update(10)).unwrap();
        let mut seqs = Vec::new();
        for r in receipts {
            seqs.push(r.await.unwrap().unwrap());
        }
        assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
        assert_eq!(pipeline.barrier().await.unwrap(), 11);
        let ring = pipeline.ring().clone();
        assert_eq!(ring.produced_seq(), 11);
        // Four slots: 1..=4 went through the ring, the rest were counted as drops.
        assert_eq!((ring.depth(), ring.dropped()), (4, 7));
        let mut consumer = ring.consumer().unwrap();
        let mut buf = Vec::new();
        assert_eq!(consumer.try_pop(&mut buf), Some(1));
        assert_eq!(codec::decode(&buf).unwrap(), update(0));
        // The WAL holds all eleven.
        let mut logged = Vec::new();
        crate::wal::replay(&dir.path().join("wal"), 1, |seq, bytes| {
            logged.push((seq, codec::decode(bytes).unwrap()));
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!(logged.len(), 11);
        assert_eq!(logged[10], (11, update(10)));
        let stats = pipeline.stats();
        assert_eq!((stats.sent, stats.dropped), (11, 7));
        assert!(pipeline.wal_bytes() > 0);
    }

    #[tokio::test]
    async fn after_shutdown_updates_are_refused_and_the_log_reopens_complete() {
        let dir = tempfile::tempdir().unwrap();
        let pipeline = start(dir.path(), 16);
        for i in 0..5 {
            pipeline.offer(update(i)).unwrap();
        }
        pipeline.flush().await.unwrap();
        pipeline.shutdown().await.unwrap();
        pipeline.shutdown().await.unwrap();
        assert_eq!(pipeline.submit(update(9)).unwrap_err(), SinkError::Closed);
        assert_eq!(pipeline.offer(update(9)).unwrap_err(), SinkError::Closed);
        assert_eq!(pipeline.stats().refused, 1);
        let (wal, _) = Wal::open(WalConfig::new(dir.path().join("wal"))).unwrap();
        assert_eq!(wal.last_seq(), 5);
    }
}
