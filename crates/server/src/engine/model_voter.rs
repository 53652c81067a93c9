//! The model as a voter: the serving network's class distribution for a row.
//!
//! The voter does not run the model: the engine does, on the model thread, which
//! batches the rows of many requests into one forward pass
//! (docs/ARCHITECTURE.md, section 1). The distribution arrives in the [`Row`], and
//! this voter hands it to the ensemble, where Hedge weighs it against the others like
//! any vote. It is the ensemble's base: it votes on every row, and its answer is the
//! row's when the ensemble does not vote. It learns nothing in place: the update
//! worker trains the network from the update log, and a new version is swapped in
//! whole.

use super::ensemble::{Example, Row, Seat, Setup, Voter};

/// The voter's name in `/v1/status`.
const NAME: &str = "model";

/// Takes the model's seat in the ensemble: always, as its base.
pub(super) fn enlist(_setup: &Setup<'_>) -> Seat {
    Seat::new(ModelVoter)
}

/// The model's vote; see the module docs.
#[derive(Debug)]
pub struct ModelVoter;

impl Voter for ModelVoter {
    fn name(&self) -> &'static str {
        NAME
    }

    /// The forward pass's distribution, on every row.
    fn vote(&self, row: &Row<'_>, _counts: bool) -> Option<Vec<f32>> {
        Some(row.p_model.to_vec())
    }

    /// Nothing: the update worker trains the network from the update log.
    fn learn(&self, _example: &Example<'_>) {}
}
