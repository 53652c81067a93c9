//! The seam between the request path and the update path.
//!
//! Every labelled feedback, and every pseudo-label that passes the gate, becomes an
//! [`Update`] offered to an [`UpdateSink`]. The sink assigns it a sequence number and
//! must never block the request path. Today's sink, [`LocalSink`], only sequences and
//! counts: labels already reach the k-NN memory directly and there is no worker yet.
//! The WAL + shared-memory ring sink plugs in here without touching the engine.

use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};

/// What kind of experience an update carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateKind {
    /// A label a client sent: trust 1.0.
    Label,
    /// The server's own confident answer: trust `pseudo_trust`.
    Pseudo,
}

/// One training update for the worker.
#[derive(Debug, Clone)]
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
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("the update sink is closed")]
    Closed,
}

/// Counters every sink reports in `/v1/status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkStats {
    /// Updates accepted and sequenced.
    pub sent: u64,
    /// Updates the worker has applied to the weights.
    pub applied: u64,
    /// Updates that missed the fast path (they stay in the WAL once there is one).
    pub dropped: u64,
}

/// Where updates go. Implementations must not block: they run on the request path.
pub trait UpdateSink: Send + Sync + Debug {
    /// Accepts an update and returns its sequence number.
    fn offer(&self, update: Update) -> Result<u64, SinkError>;
    /// The sink's counters.
    fn stats(&self) -> SinkStats;
}

/// The sink used until the worker exists: sequences and counts updates, and applies
/// none to the weights (the k-NN memory learns from labels directly).
#[derive(Debug, Default)]
pub struct LocalSink {
    next_seq: AtomicU64,
}

impl UpdateSink for LocalSink {
    fn offer(&self, _update: Update) -> Result<u64, SinkError> {
        Ok(self.next_seq.fetch_add(1, Ordering::Relaxed) + 1)
    }

    fn stats(&self) -> SinkStats {
        SinkStats {
            sent: self.next_seq.load(Ordering::Relaxed),
            applied: 0,
            dropped: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_sink_sequences_from_one() {
        let sink = LocalSink::default();
        let u = Update {
            kind: UpdateKind::Label,
            features: vec![0.0],
            label: 0,
            weight: 1.0,
            model_version: 0,
        };
        assert_eq!(sink.offer(u.clone()).unwrap(), 1);
        assert_eq!(sink.offer(u).unwrap(), 2);
        assert_eq!(sink.stats().sent, 2);
    }
}
