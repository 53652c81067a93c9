//! The seam between the request path and the update path.
//!
//! Every labelled feedback, and every pseudo-label that passes the gate, becomes an
//! [`Update`] handed to an [`UpdateSink`], which gives it a sequence number and must
//! never block the request path. The server's sink is the WAL pipeline
//! (`crate::update::pipeline`); [`LocalSink`] lets benches and engine tests run
//! without one.
//!
//! The sink, not the request, puts each logged update into the k-NN memory
//! ([`feed_memory`]), in sequence order and only once it is logged: the memory is a
//! view of the log, so a restarted server rebuilds it from a snapshot plus the log
//! after the snapshot's position (with keys recomputed by the serving model, and
//! without what a full insert queue dropped, counted). The vote may see an experience a group
//! commit later than the request made it, which docs/ARCHITECTURE.md allows.

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::knn::{Experience, Memory};
pub use crate::update::{Update, UpdateKind};

/// What the memory does with a logged update: a label or pseudo-label with a key
/// becomes an experience, a drift marker makes it forget all but its newest
/// `drift_keep` experiences (0: forget nothing). `seq` is the update's place in
/// the log, which the memory's snapshot records.
pub fn feed_memory(memory: &Memory, drift_keep: u64, seq: u64, update: Update) {
    match update.kind {
        UpdateKind::Drift => {
            // On a full queue forget at once, out of order, rather than not at all.
            if drift_keep > 0 && memory.forget_logged(drift_keep, seq).is_err() {
                memory.forget_older_than(drift_keep);
            }
        }
        UpdateKind::Label | UpdateKind::Pseudo => {
            if let Some(experience) = Experience::from_update(update) {
                // A full insert queue drops it (counted by the memory).
                let _ = memory.submit_logged(experience, seq);
            }
        }
    }
}

/// Why a sink refused an update.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    #[error("the update log is closed (the server is shutting down)")]
    Closed,
    #[error("the update log's queue is full")]
    Full,
    #[error("the update log cannot be written: {0}")]
    Log(String),
}

/// Counters every sink reports in `/v1/status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkStats {
    /// The last sequence number logged: every update ever accepted, across restarts.
    pub sent: u64,
    /// Updates the worker has applied to the weights.
    pub applied: u64,
    /// Updates the ring could not carry (they stay in the WAL and are replayed).
    pub dropped: u64,
    /// Updates refused before reaching the log (queue full): pseudo-labels and drift
    /// markers only, since a refused feedback is answered 429 rather than
    /// acknowledged.
    pub refused: u64,
}

/// Resolves to an update's sequence number once it is in the log.
pub type Receipt = tokio::sync::oneshot::Receiver<Result<u64, SinkError>>;

/// Where updates go. No method blocks: they run on the request path.
pub trait UpdateSink: Send + Sync + Debug {
    /// Fire and forget (pseudo-labels): queued or refused at once, never awaited.
    fn offer(&self, update: Update) -> Result<(), SinkError>;
    /// Queues an update whose caller waits for its sequence number: a feedback is
    /// acknowledged only once its update is written to the log. A label with an
    /// `origin` is also marked as having answered that prediction, so a restart
    /// cannot join the prediction twice.
    fn submit(&self, update: Update) -> Result<Receipt, SinkError>;
    /// Fire and forget: an encoded pending prediction (`pending::log`), so a restart
    /// can still join its label, with its pseudo-label's update if it became one
    /// (one message for both). A full queue drops the record (counted); returns
    /// whether the update was queued, as [`UpdateSink::offer`] would.
    fn remember(&self, record: Vec<u8>, update: Option<Update>) -> bool;
    /// The sink's counters.
    fn stats(&self) -> SinkStats;
}

/// An in-process sink for benches and tests of the engine alone: sequences updates
/// and feeds the memory, keeps no log and applies nothing to the weights.
#[derive(Debug)]
pub struct LocalSink {
    next_seq: AtomicU64,
    memory: Arc<Memory>,
    drift_keep: u64,
}

impl LocalSink {
    /// A sink feeding `memory` (`drift_keep` as in [`feed_memory`]).
    pub fn new(memory: Arc<Memory>, drift_keep: u64) -> Self {
        Self {
            next_seq: AtomicU64::new(0),
            memory,
            drift_keep,
        }
    }
}

impl UpdateSink for LocalSink {
    fn offer(&self, update: Update) -> Result<(), SinkError> {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed) + 1;
        feed_memory(&self.memory, self.drift_keep, seq, update);
        Ok(())
    }

    fn submit(&self, update: Update) -> Result<Receipt, SinkError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed) + 1;
        feed_memory(&self.memory, self.drift_keep, seq, update);
        let _ = tx.send(Ok(seq));
        Ok(rx)
    }

    fn remember(&self, _record: Vec<u8>, update: Option<Update>) -> bool {
        update.is_some_and(|u| self.offer(u).is_ok())
    }

    fn stats(&self) -> SinkStats {
        SinkStats {
            sent: self.next_seq.load(Ordering::Relaxed),
            ..SinkStats::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_sink_sequences_from_one_acknowledges_at_once_and_feeds_the_memory() {
        let memory = Memory::new(crate::knn::MemoryConfig {
            dim: 2,
            ..Default::default()
        })
        .unwrap();
        let sink = LocalSink::new(memory.clone(), 1);
        let u = |key: Option<Vec<f32>>| Update {
            kind: UpdateKind::Label,
            features: vec![0.0],
            label: 0,
            weight: 1.0,
            model_version: 0,
            origin: None,
            trust: 1.0,
            priority: 1.0,
            key,
        };
        sink.offer(u(Some(vec![1.0, 0.0]))).unwrap();
        assert_eq!(
            sink.submit(u(Some(vec![0.0, 1.0])))
                .unwrap()
                .try_recv()
                .unwrap(),
            Ok(2)
        );
        sink.offer(u(None)).unwrap();
        assert_eq!(sink.stats().sent, 3);
        assert!(memory.flush(std::time::Duration::from_secs(5)));
        assert_eq!(
            memory.len(),
            2,
            "the keyless update stays out of the memory"
        );
        sink.offer(Update::drift(0)).unwrap();
        assert!(memory.flush(std::time::Duration::from_secs(5)));
        assert_eq!(memory.len(), 1, "the drift marker keeps the newest one");
        assert_eq!(
            memory.snapshot().1,
            4,
            "the memory knows the log's position"
        );
    }
}
