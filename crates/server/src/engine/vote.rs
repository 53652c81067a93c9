//! The temporal ensemble vote between the model, its neighbours, the linear voter and
//! the forest, and the Hedge rule that sets their mix.
//!
//! A neighbour's vote is `max(sim, 0) · 0.5^(age / half_life) · trust`: similar,
//! recent and labelled experiences count most. Age is measured in experiences, not
//! seconds, so the same stream behaves the same at 10 or 10 000 requests per second.
//!
//! The mix `p = Σ w_i·p_i` over the voters that voted (λ is the model's weight) is
//! learned with Hedge (multiplicative weights) from each voter's loss on *labelled*
//! feedback only: pseudo-labels are the ensemble's own guesses and would only
//! reinforce it. Each weight is kept at or above a floor (fixed share) so that a voter
//! that lost for a long stretch can win back within a few dozen labels after a drift.

use std::sync::atomic::{AtomicU32, Ordering};

use parking_lot::Mutex;

use crate::config::NeighborWeight;
use crate::knn::Neighbor;
use crate::model::argmax;

/// Keeps an exact duplicate's inverse-distance weight finite (it still dominates).
const INVERSE_DISTANCE_EPS: f32 = 1e-3;

/// Accumulates the k-NN class distribution of `neighbors` into `out` (length
/// `num_classes`, overwritten) and returns the total vote weight. A zero total means
/// the neighbours carry no usable vote and `out` is all zeros.
pub fn knn_distribution(
    neighbors: &[Neighbor],
    half_life: f32,
    weighting: NeighborWeight,
    out: &mut [f32],
) -> f32 {
    out.fill(0.0);
    let mut total = 0.0f32;
    for n in neighbors {
        let Some(slot) = out.get_mut(n.label as usize) else {
            // A label beyond the model's classes cannot vote; stored experiences are
            // validated, so this only guards against a model swap to fewer classes.
            continue;
        };
        let decay = 0.5f32.powf(n.age as f32 / half_life);
        let closeness = match weighting {
            NeighborWeight::Similarity => n.similarity.max(0.0),
            // Unit vectors: |a − b| = sqrt(2 − 2·cos).
            NeighborWeight::InverseDistance => {
                1.0 / ((2.0 - 2.0 * n.similarity).max(0.0).sqrt() + INVERSE_DISTANCE_EPS)
            }
        };
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

/// The voters, in the order of [`Hedge::weights`].
pub const MODEL: usize = 0;
pub const KNN: usize = 1;
pub const LINEAR: usize = 2;
pub const FOREST: usize = 3;
/// How many voters there are.
pub const VOTERS: usize = 4;

/// Writes the weighted mix of the voters that voted (`Some`) into `out`, their
/// weights renormalised over those present.
pub fn blend(weights: [f32; VOTERS], voters: [Option<&[f32]>; VOTERS], out: &mut [f32]) {
    out.fill(0.0);
    let total: f32 = weights
        .iter()
        .zip(&voters)
        .filter(|(_, v)| v.is_some())
        .map(|(w, _)| w)
        .sum();
    if total <= 0.0 || !total.is_finite() {
        return;
    }
    for (w, p) in weights.iter().zip(voters) {
        if let Some(p) = p {
            for (o, x) in out.iter_mut().zip(p) {
                *o += w / total * x;
            }
        }
    }
}

/// The voters' weights (model, neighbours, linear, forest), learned by Hedge. Reads are
/// lock-free (the request path); updates, one per labelled feedback, take a short
/// mutex so read-modify-write stays exact. A reader may see weights from two
/// adjacent updates mixed, which only shifts a vote by one update's step.
#[derive(Debug)]
pub struct Hedge {
    /// The weights as f32 bits; they sum to 1.
    weights: [AtomicU32; VOTERS],
    /// Serialises updates; held only for a few float operations, never across await.
    update: Mutex<()>,
    eta: f32,
    floor: f32,
    /// Which voters exist (an absent one's weight stays 0).
    enabled: [bool; VOTERS],
}

impl Hedge {
    /// The model starts at `model_weight`; the other `enabled` voters share the rest
    /// equally. The model and the neighbours always exist.
    pub fn new(model_weight: f32, eta: f32, floor: f32, mut enabled: [bool; VOTERS]) -> Self {
        enabled[MODEL] = true;
        enabled[KNN] = true;
        let m = model_weight.clamp(floor, 1.0 - floor);
        let others = enabled.iter().filter(|&&e| e).count() as f32 - 1.0;
        let start: [f32; VOTERS] = std::array::from_fn(|i| match i {
            MODEL => m,
            _ if enabled[i] => (1.0 - m) / others,
            _ => 0.0,
        });
        Self {
            weights: start.map(|w| AtomicU32::new(w.to_bits())),
            update: Mutex::new(()),
            eta,
            floor,
            enabled,
        }
    }

    /// The current weights of the model, the neighbours, the linear voter and the
    /// forest.
    pub fn weights(&self) -> [f32; VOTERS] {
        std::array::from_fn(|i| f32::from_bits(self.weights[i].load(Ordering::Relaxed)))
    }

    /// The model's weight λ.
    pub fn lambda(&self) -> f32 {
        self.weights()[MODEL]
    }

    /// One Hedge step from the losses in `[0, 1]` of the voters that voted on a
    /// labelled sample. Absent voters keep their share; the present ones share theirs
    /// by `w·e^(−η·loss)`, each kept at or above the floor (fixed share), so a voter
    /// that lost for a long stretch can win back within a few dozen labels.
    pub fn update(&self, losses: [Option<f32>; VOTERS]) {
        let _guard = self.update.lock();
        let mut w = self.weights();
        let present: Vec<usize> = (0..VOTERS)
            .filter(|&i| losses[i].is_some() && self.enabled[i])
            .collect();
        if present.len() < 2 {
            return;
        }
        let mass: f32 = present.iter().map(|&i| w[i]).sum();
        for &i in &present {
            w[i] *= (-self.eta * losses[i].unwrap_or(0.0)).exp();
        }
        let moved: f32 = present.iter().map(|&i| w[i]).sum();
        for &i in &present {
            w[i] = w[i] / moved * mass;
        }
        // Lift the voters below the floor to it, taking the difference from the others
        // in proportion to how far they are above it (so none of them drops below).
        let floor = self.floor.min(mass / present.len() as f32);
        let deficit: f32 = present.iter().map(|&i| (floor - w[i]).max(0.0)).sum();
        let excess: f32 = present.iter().map(|&i| (w[i] - floor).max(0.0)).sum();
        if deficit > 0.0 && excess > 0.0 {
            for &i in &present {
                w[i] = if w[i] < floor {
                    floor
                } else {
                    w[i] - deficit * (w[i] - floor) / excess
                };
            }
        }
        if w.iter().all(|x| x.is_finite()) {
            for (slot, x) in self.weights.iter().zip(w) {
                slot.store(x.to_bits(), Ordering::Relaxed);
            }
        }
    }
}

/// The loss of a voter's distribution on the true label: `1 − p[label]`, in `[0, 1]`.
pub fn loss(p: &[f32], label: usize) -> f32 {
    (1.0 - p.get(label).copied().unwrap_or(0.0)).clamp(0.0, 1.0)
}

/// 0 if the distribution's top class is `label`, else 1: the loss of the voter's
/// decision. Unlike [`loss`] it does not favour a voter for being sharp: a k-NN vote
/// is often all on one class, a model's softmax rarely, and the absolute loss would
/// hand the vote to the k-NN even where the model decides right more often.
pub fn zero_one_loss(p: &[f32], label: usize) -> f32 {
    if argmax(p).0 == label { 0.0 } else { 1.0 }
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
    fn the_zero_one_loss_judges_the_decision_not_its_sharpness() {
        // A soft right answer loses nothing; a sharp wrong one loses 1.
        assert_eq!(zero_one_loss(&[0.4, 0.6], 1), 0.0);
        assert_eq!(zero_one_loss(&[1.0, 0.0], 1), 1.0);
        // The absolute loss would have preferred the sharp voter on a right answer.
        assert!(loss(&[0.4, 0.6], 1) > loss(&[0.0, 1.0], 1));
        assert_eq!(zero_one_loss(&[0.0, 1.0], 1), zero_one_loss(&[0.4, 0.6], 1));
    }

    #[test]
    fn weights_follow_similarity_age_and_trust() {
        let mut out = [0.0; 3];
        // Label 0: sim 1, fresh, labelled -> 1.0. Label 1: sim 1 but one half-life old
        // and pseudo (0.5) -> 0.25. Label 2: negative similarity -> 0.
        let total = knn_distribution(
            &[n(0, 1.0, 0, 1.0), n(1, 1.0, 100, 0.5), n(2, -0.3, 0, 1.0)],
            100.0,
            NeighborWeight::Similarity,
            &mut out,
        );
        assert!((total - 1.25).abs() < 1e-6);
        assert!((out[0] - 0.8).abs() < 1e-6);
        assert!((out[1] - 0.2).abs() < 1e-6);
        assert_eq!(out[2], 0.0);
    }

    #[test]
    fn inverse_distance_lets_the_nearest_neighbour_dominate() {
        let mut out = [0.0; 2];
        // cos 0.98 is distance 0.2 (weight ~5), cos 0.5 is distance 1 (weight ~1):
        // two far neighbours of class 1 lose to one near neighbour of class 0, where
        // the cosine weights would let them win (0.98 < 0.5 + 0.5).
        let neighbours = [n(0, 0.98, 0, 1.0), n(1, 0.5, 0, 1.0), n(1, 0.5, 0, 1.0)];
        knn_distribution(
            &neighbours,
            100.0,
            NeighborWeight::InverseDistance,
            &mut out,
        );
        assert!(out[0] > 0.7, "{out:?}");
        knn_distribution(&neighbours, 100.0, NeighborWeight::Similarity, &mut out);
        assert!(out[0] < 0.5, "{out:?}");
        // An exact duplicate and an opposite key both get a finite weight.
        let total = knn_distribution(
            &[n(0, 1.0, 0, 1.0), n(1, -1.0, 0, 1.0)],
            100.0,
            NeighborWeight::InverseDistance,
            &mut out,
        );
        assert!(total.is_finite() && out[0] > 0.99, "{out:?}");
    }

    #[test]
    fn zero_weight_gives_zero_total() {
        let mut out = [0.5; 2];
        let total = knn_distribution(
            &[n(0, -1.0, 0, 1.0)],
            10.0,
            NeighborWeight::Similarity,
            &mut out,
        );
        assert_eq!(total, 0.0);
        assert_eq!(out, [0.0, 0.0]);
        assert_eq!(
            knn_distribution(&[], 10.0, NeighborWeight::Similarity, &mut out),
            0.0
        );
    }

    #[test]
    fn out_of_range_labels_do_not_vote() {
        let mut out = [0.0; 2];
        let total = knn_distribution(
            &[n(5, 1.0, 0, 1.0), n(1, 0.5, 0, 1.0)],
            10.0,
            NeighborWeight::Similarity,
            &mut out,
        );
        assert!((total - 0.5).abs() < 1e-6);
        assert_eq!(out, [0.0, 1.0]);
    }

    #[test]
    fn blend_mixes_linearly() {
        let mut out = [0.0; 2];
        blend(
            [0.25, 0.75, 0.0, 0.0],
            [Some(&[1.0, 0.0]), Some(&[0.0, 1.0]), None, None],
            &mut out,
        );
        assert_eq!(out, [0.25, 0.75]);
    }

    #[test]
    fn hedge_over_three_voters_follows_the_best_and_spares_the_absent() {
        let h = Hedge::new(0.5, 0.5, 0.05, [true, true, true, false]);
        assert_eq!(h.weights(), [0.5, 0.25, 0.25, 0.0]);
        for _ in 0..50 {
            h.update([Some(1.0), Some(1.0), Some(0.0), None]);
        }
        let w = h.weights();
        assert!(w[LINEAR] > 0.85, "{w:?}");
        assert!((w.iter().sum::<f32>() - 1.0).abs() < 1e-5, "{w:?}");
        assert!(
            w[..FOREST].iter().all(|&x| x >= 0.05 - 1e-6),
            "floor: {w:?}"
        );
        assert_eq!(w[FOREST], 0.0, "no forest, no weight");
        // The linear voter abstains: its share is kept while the other two move.
        let before = h.weights()[LINEAR];
        for _ in 0..20 {
            h.update([Some(0.0), Some(1.0), None, None]);
        }
        let w = h.weights();
        assert!((w[LINEAR] - before).abs() < 1e-5, "{w:?}");
        assert!(w[MODEL] > w[KNN], "{w:?}");
    }

    #[test]
    fn blend_renormalises_over_the_voters_present() {
        let mut out = [0.0; 2];
        blend(
            [0.4, 0.2, 0.2, 0.2],
            [Some(&[1.0, 0.0]), None, Some(&[0.0, 1.0]), None],
            &mut out,
        );
        assert!((out[0] - 2.0 / 3.0).abs() < 1e-6 && (out[1] - 1.0 / 3.0).abs() < 1e-6);
    }

    #[test]
    fn hedge_moves_towards_the_better_voter_and_respects_the_floor() {
        let h = Hedge::new(0.5, 0.5, 0.05, [true, true, false, false]);
        for _ in 0..10 {
            h.update([Some(0.9), Some(0.1), None, None]);
        }
        let after_knn_wins = h.lambda();
        assert!(after_knn_wins < 0.1, "λ = {after_knn_wins}");
        for _ in 0..1000 {
            h.update([Some(1.0), Some(0.0), Some(0.0), None]);
        }
        assert!(
            (h.lambda() - 0.05).abs() < 1e-6,
            "floor holds: {}",
            h.lambda()
        );
        assert_eq!(h.weights()[LINEAR], 0.0, "no linear voter, no weight");
        // After a drift the model becomes the better voter: λ recovers quickly.
        let mut steps = 0;
        while h.lambda() < 0.5 {
            h.update([Some(0.0), Some(1.0), None, None]);
            steps += 1;
        }
        assert!(steps < 20, "recovered in {steps} labels");
    }

    #[test]
    fn argmax_and_loss() {
        assert_eq!(argmax(&[0.1, 0.7, 0.2]), (1, 0.7));
        assert!((loss(&[0.1, 0.7, 0.2], 1) - 0.3).abs() < 1e-6);
        assert_eq!(loss(&[0.1], 4), 1.0);
    }
}
