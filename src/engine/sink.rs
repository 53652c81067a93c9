//! The seam between the request path and the update path.
//!
//! Every labelled feedback, and every pseudo-label that passes the gate, becomes an
//! [`Update`] handed to an [`UpdateSink`], which gives it a sequence number and must
//! never block the request path. The server's sink is the WAL pipeline
//! (`crate::update::pipeline`); [`LocalSink`] lets benches and engine tests run
//! without one.

use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};

/// What kind of experience an update carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateKind {
    /// A label a client sent: trust 1.0.
    Label,
    /// The server's own confident answer: trust `pseudo_trust`.
    Pseudo,
    /// A marker, not an example (no features, weight 0): the server's drift detector
    /// alarmed, so the labels before it describe an old concept. The worker keeps
    /// only its most recent `replay_keep_on_drift` labels for replay, which would
    /// otherwise keep teaching the old concept for `replay_capacity` labels.
    Drift,
}

/// One training update for the worker.
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    pub kind: UpdateKind,
    /// Raw features (the worker owns the standardiser).
    pub features: Vec<f32>,
    pub label: u32,
    /// Sample weight in the loss.
    pub weight: f32,
    /// The model version that saw the input, so stale updates can be told apart.
    pub model_version: u64,
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

/// Where updates go. Neither method blocks: they run on the request path.
pub trait UpdateSink: Send + Sync + Debug {
    /// Fire and forget (pseudo-labels): queued or refused at once, never awaited.
    fn offer(&self, update: Update) -> Result<(), SinkError>;
    /// Queues an update whose caller waits for its sequence number: a feedback is
    /// acknowledged only once its update is written to the log.
    fn submit(&self, update: Update) -> Result<Receipt, SinkError>;
    /// The sink's counters.
    fn stats(&self) -> SinkStats;
}

/// An in-process sink for benches and tests of the engine alone: sequences and
/// counts updates, applies none to the weights (the k-NN memory learns from labels
/// directly).
#[derive(Debug, Default)]
pub struct LocalSink {
    next_seq: AtomicU64,
}

impl UpdateSink for LocalSink {
    fn offer(&self, _update: Update) -> Result<(), SinkError> {
        self.next_seq.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn submit(&self, _update: Update) -> Result<Receipt, SinkError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _ = tx.send(Ok(self.next_seq.fetch_add(1, Ordering::Relaxed) + 1));
        Ok(rx)
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
    fn local_sink_sequences_from_one_and_acknowledges_at_once() {
        let sink = LocalSink::default();
        let u = Update {
            kind: UpdateKind::Label,
            features: vec![0.0],
            label: 0,
            weight: 1.0,
            model_version: 0,
        };
        sink.offer(u.clone()).unwrap();
        assert_eq!(sink.submit(u).unwrap().try_recv().unwrap(), Ok(2));
        assert_eq!(sink.stats().sent, 2);
    }
}
