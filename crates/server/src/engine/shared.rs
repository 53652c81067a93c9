//! Predictions shared beyond this process: in a cluster, a label may reach a
//! replica other than the one that answered, so a feedback by `request_id` first
//! *claims* its prediction from the shared store (the cluster module implements
//! this over Redis). A claim both finds a prediction made elsewhere and makes sure
//! that, cluster-wide, one label joins it.

use std::future::Future;
use std::pin::Pin;

use super::pending::PendingPrediction;

/// What a claim found.
#[derive(Debug)]
pub enum RemoteClaim {
    /// The prediction, with the claim's nonce (to release it if the label cannot
    /// be logged).
    Found(PendingPrediction, String),
    /// Another label claimed it first.
    Answered,
    /// The store has nothing for it (never shipped, expired).
    Absent,
    /// The store cannot be reached now.
    Unreachable,
}

/// The shared store of pending predictions.
pub trait SharedPending: Send + Sync + std::fmt::Debug {
    /// Claims prediction `request_id` for a label.
    fn claim(&self, request_id: u64) -> Pin<Box<dyn Future<Output = RemoteClaim> + Send + '_>>;
    /// Releases a claim (its label was refused), in the background.
    fn release(&self, request_id: u64, nonce: String);
    /// The store was unreachable a short while ago: another replica may still hold
    /// predictions it could not share then, so an absent one is not yet "unknown".
    fn settling(&self) -> bool;
}
