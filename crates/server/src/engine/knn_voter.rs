//! The k-NN memory as a voter: the neighbours' class distribution for a row.
//!
//! A neighbour's vote is `1 / distance · 0.5^(age / half_life) · trust`: near,
//! recent and labelled experiences count most. The inverse distance replaced the
//! cosine similarity once it matched River's weighted kNN on the drift streams
//! (QUALITY.md, second round); the cosine is no longer offered. Age is measured
//! in experiences, not seconds, so the same stream behaves the same at 10 or 10 000
//! requests per second.
//!
//! The voter does not search: the engine does, because the search runs under the
//! k-NN circuit breaker and a timeout, and its failure changes the row's path (the
//! model answers alone, `path = "fallback"`); that is request-path policy, not the
//! vote's. The neighbours found arrive in the [`Row`], and this voter turns them into
//! a distribution. It is the ensemble's required voter: without neighbours (cold
//! start, fallback, or neighbours with no usable weight) the ensemble does not vote
//! and the model answers alone. It learns nothing in place: the memory learns each
//! label from the update log, which feeds it in log order (docs/ARCHITECTURE.md,
//! section 2).

use super::ensemble::{Example, Row, Seat, Setup, Voter};
use crate::knn::Neighbor;

/// The voter's name in `/v1/status`.
const NAME: &str = "knn";

/// Takes the neighbours' seat in the ensemble: always, since they define its vote.
pub(super) fn enlist(setup: &Setup<'_>) -> Seat {
    Seat::new(KnnVoter {
        half_life: setup.config.half_life,
    })
}

/// The neighbours' vote; see the module docs.
#[derive(Debug)]
pub struct KnnVoter {
    /// Age, in experiences, at which a neighbour's weight halves.
    half_life: f32,
}

impl Voter for KnnVoter {
    fn name(&self) -> &'static str {
        NAME
    }

    /// The distribution of the neighbours found for the row; `None` when no search
    /// ran or the neighbours carry no usable weight.
    fn vote(&self, row: &Row<'_>, _counts: bool) -> Option<Vec<f32>> {
        let neighbors = row.neighbors?;
        let mut p = vec![0.0; row.classes()];
        let total = knn_distribution(neighbors, self.half_life, &mut p);
        (total > 0.0).then_some(p)
    }

    /// Nothing: the memory learns the label from the update log.
    fn learn(&self, _example: &Example<'_>) {}

    fn required(&self) -> bool {
        true
    }
}

/// Keeps an exact duplicate's inverse-distance weight finite (it still dominates).
const INVERSE_DISTANCE_EPS: f32 = 1e-3;

/// Accumulates the k-NN class distribution of `neighbors` into `out` (length
/// `num_classes`, overwritten) and returns the total vote weight. A zero total means
/// the neighbours carry no usable vote and `out` is all zeros.
pub fn knn_distribution(neighbors: &[Neighbor], half_life: f32, out: &mut [f32]) -> f32 {
    out.fill(0.0);
    let mut total = 0.0f32;
    for n in neighbors {
        let Some(slot) = out.get_mut(n.label as usize) else {
            // A label beyond the model's classes cannot vote; stored experiences are
            // validated, so this only guards against a model swap to fewer classes.
            continue;
        };
        let decay = 0.5f32.powf(n.age as f32 / half_life);
        // Unit vectors: |a − b| = sqrt(2 − 2·cos).
        let closeness = 1.0 / ((2.0 - 2.0 * n.similarity).max(0.0).sqrt() + INVERSE_DISTANCE_EPS);
        let w = closeness * decay * n.trust;
        if w > 0.0 && w.is_finite() {
            *slot += w;
            total += w;
        }
    }
    if total > 0.0 {
        for v in out.iter_mut() {
            *v /= total;
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(label: u32, similarity: f32, age: u64, trust: f32) -> Neighbor {
        Neighbor {
            id: 0,
            similarity,
            label,
            trust,
            age,
        }
    }

    #[test]
    fn weights_follow_distance_age_and_trust() {
        let mut out = [0.0; 3];
        // Label 0: near (cos 0.98 is distance 0.2), fresh, labelled. Label 1: as near,
        // one half-life old and pseudo (trust 0.5): a quarter of label 0's weight.
        // Label 2: the opposite key (distance 2): the smallest weight, still positive.
        let total = knn_distribution(
            &[n(0, 0.98, 0, 1.0), n(1, 0.98, 100, 0.5), n(2, -1.0, 0, 1.0)],
            100.0,
            &mut out,
        );
        let near = 1.0 / (0.2 + INVERSE_DISTANCE_EPS);
        let far = 1.0 / (2.0 + INVERSE_DISTANCE_EPS);
        assert!((total - (1.25 * near + far)).abs() < 1e-3, "{total}");
        assert!((out[0] / out[1] - 4.0).abs() < 1e-3, "{out:?}");
        assert!((out[2] - far / total).abs() < 1e-6, "{out:?}");
    }

    #[test]
    fn the_nearest_neighbour_dominates() {
        let mut out = [0.0; 2];
        // cos 0.98 is distance 0.2 (weight ~5), cos 0.5 is distance 1 (weight ~1):
        // two far neighbours of class 1 lose to one near neighbour of class 0.
        let neighbours = [n(0, 0.98, 0, 1.0), n(1, 0.5, 0, 1.0), n(1, 0.5, 0, 1.0)];
        knn_distribution(&neighbours, 100.0, &mut out);
        assert!(out[0] > 0.7, "{out:?}");
        // An exact duplicate and an opposite key both get a finite weight.
        let total = knn_distribution(&[n(0, 1.0, 0, 1.0), n(1, -1.0, 0, 1.0)], 100.0, &mut out);
        assert!(total.is_finite() && out[0] > 0.99, "{out:?}");
    }

    #[test]
    fn zero_weight_gives_zero_total() {
        let mut out = [0.5; 2];
        // An experience with no trust carries no vote.
        let total = knn_distribution(&[n(0, 0.9, 0, 0.0)], 10.0, &mut out);
        assert_eq!(total, 0.0);
        assert_eq!(out, [0.0, 0.0]);
        assert_eq!(knn_distribution(&[], 10.0, &mut out), 0.0);
    }

    #[test]
    fn out_of_range_labels_do_not_vote() {
        let mut out = [0.0; 2];
        let total = knn_distribution(&[n(5, 1.0, 0, 1.0), n(1, 0.5, 0, 1.0)], 10.0, &mut out);
        assert!(
            (total - 1.0 / (1.0 + INVERSE_DISTANCE_EPS)).abs() < 1e-6,
            "{total}"
        );
        assert_eq!(out, [0.0, 1.0]);
    }
}
