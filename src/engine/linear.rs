//! The third voter: an online softmax regression on the standardised input.
//!
//! Why: a neural network trained in mini-batches learns a linear boundary more slowly
//! than a linear model trained on every label (rotating hyperplanes, SEA, most
//! tabular streams), and the neighbours answer for local structure, not for a plane.
//! This voter costs `classes × (input_dim + 1)` multiply-adds per row, learns in the
//! request path of `/v1/feedback` (one SGD step per label, no I/O), and Hedge gives it
//! the share it earns on labelled feedback.
//!
//! Its input is the serving model's standardised features with a 1 appended (the
//! bias), i.e. [`crate::model::Mlp::input_key`]; it abstains until the model has a
//! standardiser, since raw features can span 1e-3 to 1e6.

use parking_lot::RwLock;

/// Softmax regression weights, `classes × (dim + 1)` row-major.
#[derive(Debug)]
pub struct LinearVoter {
    weights: RwLock<Vec<f32>>,
    classes: usize,
    /// Input length including the bias.
    width: usize,
    lr: f32,
}

impl LinearVoter {
    pub fn new(input_dim: usize, classes: usize, lr: f32) -> Self {
        Self {
            weights: RwLock::new(vec![0.0; classes * (input_dim + 1)]),
            classes,
            width: input_dim + 1,
            lr,
        }
    }

    /// The class distribution for `z` (standardised input plus the bias 1), or `None`
    /// for an input of the wrong width.
    pub fn predict(&self, z: &[f32]) -> Option<Vec<f32>> {
        if z.len() != self.width {
            return None;
        }
        let w = self.weights.read();
        Some(softmax(self.logits(&w, z)))
    }

    /// One SGD step on the cross-entropy of `label` at `z`. A step that would make a
    /// weight non-finite (an absurd input) is not taken.
    pub fn learn(&self, z: &[f32], label: usize) {
        if z.len() != self.width || label >= self.classes {
            return;
        }
        let mut w = self.weights.write();
        let p = softmax(self.logits(&w, z));
        let mut next = w.clone();
        for (c, pc) in p.iter().enumerate() {
            let g = pc - if c == label { 1.0 } else { 0.0 };
            for (wi, x) in next[c * self.width..(c + 1) * self.width].iter_mut().zip(z) {
                *wi -= self.lr * g * x;
            }
        }
        if next.iter().all(|v| v.is_finite()) {
            *w = next;
        }
    }

    fn logits(&self, w: &[f32], z: &[f32]) -> Vec<f32> {
        w.chunks_exact(self.width)
            .map(|row| row.iter().zip(z).map(|(a, b)| a * b).sum())
            .collect()
    }
}

fn softmax(mut logits: Vec<f32>) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut total = 0.0;
    for v in logits.iter_mut() {
        *v = (*v - max).exp();
        total += *v;
    }
    for v in logits.iter_mut() {
        *v /= total;
    }
    logits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untrained_is_uniform_and_the_wrong_width_abstains() {
        let v = LinearVoter::new(2, 4, 0.1);
        assert_eq!(v.predict(&[0.3, -1.0, 1.0]).unwrap(), vec![0.25; 4]);
        assert_eq!(v.predict(&[0.3, 1.0]), None);
    }

    #[test]
    fn learns_a_linear_boundary_online() {
        // Class 1 when x0 + x1 > 0, one pass of 2000 points.
        let v = LinearVoter::new(2, 2, 0.1);
        let mut state = 7u64;
        let mut next = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
            ((state >> 33) as f32 / (1u64 << 31) as f32) * 4.0 - 2.0
        };
        let mut right = 0;
        for i in 0..2000 {
            let z = [next(), next(), 1.0];
            let y = usize::from(z[0] + z[1] > 0.0);
            let p = v.predict(&z).unwrap();
            if i >= 1000 && (p[1] > 0.5) == (y == 1) {
                right += 1;
            }
            v.learn(&z, y);
        }
        assert!(right > 950, "{right} of the last 1000");
    }

    #[test]
    fn an_absurd_input_changes_nothing() {
        let v = LinearVoter::new(1, 2, 0.1);
        v.learn(&[f32::INFINITY, 1.0], 1);
        v.learn(&[1.0, 1.0], 7);
        assert_eq!(v.predict(&[1.0, 1.0]).unwrap(), vec![0.5, 0.5]);
    }
}
