//! The Hedge rule that sets the ensemble's mix, the blend it sets, and the loss it
//! learns from.
//!
//! The mix `p = Σ w_i·p_i` over the voters that voted (λ, the model's weight, is the
//! first) is learned with Hedge (multiplicative weights) from each voter's loss on
//! *labelled* feedback only: pseudo-labels are the ensemble's own guesses and would
//! only reinforce it. Each weight is kept at or above a floor (fixed share) so that a
//! voter that lost for a long stretch can win back within a few dozen labels after a
//! drift.
//!
//! Both work on fixed-size arrays, one slot per voter in the ensemble's order, so the
//! request path reads the weights and blends without allocating.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::model::argmax;
use parking_lot::Mutex;

/// Writes the weighted mix of the voters that voted (`Some`) into `out`, their
/// weights renormalised over those present.
pub fn blend<const N: usize>(weights: [f32; N], voters: [Option<&[f32]>; N], out: &mut [f32]) {
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

/// The weights of `N` voters, in the ensemble's order, learned by Hedge. Reads are
/// lock-free (the request path); updates, one per labelled feedback, take a short
/// mutex so read-modify-write stays exact. A reader may see weights from two
/// adjacent updates mixed, which only shifts a vote by one update's step.
#[derive(Debug)]
pub struct Hedge<const N: usize> {
    /// The weights as f32 bits; they sum to 1.
    weights: [AtomicU32; N],
    /// Serialises updates; held only for a few float operations, never across await.
    update: Mutex<()>,
    eta: f32,
    floor: f32,
    /// Which voters exist (an absent one's weight stays 0).
    enabled: [bool; N],
}

impl<const N: usize> Hedge<N> {
    /// The first voter (the model) starts at `model_weight`; the other `enabled`
    /// voters share the rest equally. The first always exists.
    pub fn new(model_weight: f32, eta: f32, floor: f32, mut enabled: [bool; N]) -> Self {
        if let Some(first) = enabled.first_mut() {
            *first = true;
        }
        let m = model_weight.clamp(floor, 1.0 - floor);
        let others = enabled.iter().filter(|&&e| e).count() as f32 - 1.0;
        let start: [f32; N] = std::array::from_fn(|i| match i {
            0 => m,
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

    /// The current weights, in the ensemble's order.
    pub fn weights(&self) -> [f32; N] {
        std::array::from_fn(|i| f32::from_bits(self.weights[i].load(Ordering::Relaxed)))
    }

    /// The model's weight λ (the first voter's).
    pub fn lambda(&self) -> f32 {
        self.weights().first().copied().unwrap_or(0.0)
    }

    /// One Hedge step from the losses in `[0, 1]` of the voters that voted on a
    /// labelled sample. Absent voters keep their share; the present ones share theirs
    /// by `w·e^(−η·loss)`, each kept at or above the floor (fixed share), so a voter
    /// that lost for a long stretch can win back within a few dozen labels.
    pub fn update(&self, losses: [Option<f32>; N]) {
        let _guard = self.update.lock();
        let mut w = self.weights();
        let present: Vec<usize> = (0..N)
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

/// 0 if the distribution's top class is `label`, else 1: the loss of the voter's
/// decision. Unlike the absolute loss `1 − p[label]` (tried, and removed: QUALITY.md)
/// it does not favour a voter for being sharp: a k-NN vote is often all on one class,
/// a model's softmax rarely, and the absolute loss handed the vote to the k-NN even
/// where the model decided right more often.
pub fn zero_one_loss(p: &[f32], label: usize) -> f32 {
    if argmax(p).0 == label { 0.0 } else { 1.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The slots of the tests' four voters, in the ensemble's order.
    const MODEL: usize = 0;
    const KNN: usize = 1;
    const LINEAR: usize = 2;
    const FOREST: usize = 3;

    #[test]
    fn the_zero_one_loss_judges_the_decision_not_its_sharpness() {
        // A soft right answer loses nothing; a sharp wrong one loses 1.
        assert_eq!(zero_one_loss(&[0.4, 0.6], 1), 0.0);
        assert_eq!(zero_one_loss(&[1.0, 0.0], 1), 1.0);
        assert_eq!(zero_one_loss(&[0.0, 1.0], 1), zero_one_loss(&[0.4, 0.6], 1));
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
    fn argmax_finds_the_top_class() {
        assert_eq!(argmax(&[0.1, 0.7, 0.2]), (1, 0.7));
    }
}
