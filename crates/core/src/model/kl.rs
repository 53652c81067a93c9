//! How far a new version moved from the serving one: `KL(p_old ‖ p_new)`, averaged
//! over a probe set of recent inputs.
//!
//! KL rather than accuracy because most of the probe has no labels (the client labels
//! it has are counted separately by [`compare`]), and rather than a weight
//! distance because what matters is what clients see: a version that changed many
//! weights but answers the same is harmless, one that changed a few weights and flips
//! confident answers is not. Probabilities are clamped at 1e-7 so a class the new
//! model rules out costs a large but finite amount.

use super::{Mlp, ModelError};

/// The floor on probabilities inside the logarithm.
const P_FLOOR: f32 = 1e-7;

/// Mean `KL(p_old ‖ p_new)` in nats over the `rows` rows of `inputs`; 0 for no rows.
pub fn mean_kl(old: &Mlp, new: &Mlp, inputs: &[f32], rows: usize) -> Result<f64, ModelError> {
    if rows == 0 {
        return Ok(0.0);
    }
    let (p, q) = (old.forward(inputs, rows)?, new.forward(inputs, rows)?);
    let total: f64 = (0..rows).map(|i| kl(p.probs_row(i), q.probs_row(i))).sum();
    Ok(total / rows as f64)
}

/// How two versions compare on a probe set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Comparison {
    /// Mean `KL(p_old ‖ p_new)` in nats.
    pub kl: f64,
    /// Probe rows with a client label.
    pub labelled: usize,
    /// Accuracy of the old and the new version on those rows.
    pub old_accuracy: f64,
    pub new_accuracy: f64,
    /// Labelled rows only the new version answers right, and only the old one: the
    /// rows a sign test between the two weighs.
    pub new_only: usize,
    pub old_only: usize,
}

/// [`mean_kl`] plus both versions' accuracy on the rows that have a label.
pub fn compare(
    old: &Mlp,
    new: &Mlp,
    inputs: &[f32],
    labels: &[Option<u32>],
) -> Result<Comparison, ModelError> {
    let rows = labels.len();
    let mut out = Comparison {
        kl: 0.0,
        labelled: 0,
        old_accuracy: 0.0,
        new_accuracy: 0.0,
        new_only: 0,
        old_only: 0,
    };
    if rows == 0 {
        return Ok(out);
    }
    let (p, q) = (old.forward(inputs, rows)?, new.forward(inputs, rows)?);
    let (mut old_hits, mut new_hits) = (0usize, 0usize);
    for (i, label) in labels.iter().enumerate() {
        out.kl += kl(p.probs_row(i), q.probs_row(i));
        if let Some(y) = label {
            out.labelled += 1;
            let old_right = argmax(p.probs_row(i)) == *y as usize;
            let new_right = argmax(q.probs_row(i)) == *y as usize;
            old_hits += usize::from(old_right);
            new_hits += usize::from(new_right);
            out.new_only += usize::from(new_right && !old_right);
            out.old_only += usize::from(old_right && !new_right);
        }
    }
    out.kl /= rows as f64;
    if out.labelled > 0 {
        out.old_accuracy = old_hits as f64 / out.labelled as f64;
        out.new_accuracy = new_hits as f64 / out.labelled as f64;
    }
    Ok(out)
}

fn argmax(p: &[f32]) -> usize {
    p.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 { (i, v) } else { best }
        })
        .0
}

/// `KL(p ‖ q)` of two distributions over the same classes.
pub fn kl(p: &[f32], q: &[f32]) -> f64 {
    p.iter()
        .zip(q)
        .filter(|(p, _)| **p > 0.0)
        .map(|(&p, &q)| {
            let (p, q) = (f64::from(p.max(P_FLOOR)), f64::from(q.max(P_FLOOR)));
            p * (p / q).ln()
        })
        .sum::<f64>()
        .max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kl_is_zero_for_equal_distributions_and_grows_with_disagreement() {
        assert!(kl(&[0.5, 0.5], &[0.5, 0.5]).abs() < 1e-12);
        let small = kl(&[0.6, 0.4], &[0.5, 0.5]);
        let large = kl(&[0.99, 0.01], &[0.01, 0.99]);
        assert!(small > 0.0 && large > small * 50.0, "{small} {large}");
        assert!(kl(&[1.0, 0.0], &[0.0, 1.0]).is_finite());
    }

    #[test]
    fn a_model_has_zero_kl_to_itself_and_positive_kl_to_another() {
        let dir = tempfile::tempdir().unwrap();
        crate::model::init_model(3, 2, &[4], 1, &dir.path().join("a")).unwrap();
        crate::model::init_model(3, 2, &[4], 2, &dir.path().join("b")).unwrap();
        let a = Mlp::load(&dir.path().join("a")).unwrap();
        let b = Mlp::load(&dir.path().join("b")).unwrap();
        let x = [0.5, -1.0, 2.0, 3.0, 0.0, -2.0];
        assert_eq!(mean_kl(&a, &a, &x, 2).unwrap(), 0.0);
        assert!(mean_kl(&a, &b, &x, 2).unwrap() > 0.0);
        assert_eq!(mean_kl(&a, &b, &[], 0).unwrap(), 0.0);
        let same = compare(&a, &a, &x, &[Some(0), None]).unwrap();
        assert_eq!((same.kl, same.labelled), (0.0, 1));
        assert_eq!(same.old_accuracy, same.new_accuracy);
        assert_eq!((same.new_only, same.old_only), (0, 0));
        let other = compare(&a, &b, &x, &[None, None]).unwrap();
        assert_eq!(other.labelled, 0);
        assert!((other.kl - mean_kl(&a, &b, &x, 2).unwrap()).abs() < 1e-12);
    }
}
