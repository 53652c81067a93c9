//! The third voter: an online softmax regression on the standardised input.
//!
//! Why: a neural network trained in mini-batches learns a linear boundary more slowly
//! than a linear model trained on every label (rotating hyperplanes, SEA, most
//! tabular streams), and the neighbours answer for local structure, not for a plane.
//! It learns in the request path of `/v1/feedback` (one step per label, no I/O), and
//! Hedge gives it the share it earns on labelled feedback.
//!
//! Two choices are made here rather than in config, because no single setting wins:
//!
//! - **Its own standardiser.** A running mean and variance of every row served,
//!   labelled or not, whichever path answered it: exact (1/n) at first, then an
//!   exponential window of about [`NORM_WINDOW`] rows, so it follows a drifting
//!   scale. It votes from the first label, needs nothing from the update worker, and
//!   moves smoothly instead of in steps at each model version. One absurd row cannot
//!   wreck it: once it has [`NORM_WARMUP`] rows, a value more than [`Z_LIMIT`]
//!   deviations beyond the range seen so far is clamped to that before it is
//!   counted. The range, not the mean, because a rare category of a 0/1 feature
//!   sits many deviations from the mean and must count as it is; a feature constant
//!   so far uses its own size (or 1) for the deviation, so it can start to vary.
//!   Standardised values are clamped to ±[`Z_LIMIT`] before they reach the weights.
//! - **Several step rules raced.** A small SGD step wins on noisy planes (SEA,
//!   hyperplanes), a large or AdaGrad step wins with few labels or many classes
//!   (image segments at 1 label in 10); measured on River's streams the spread was up
//!   to 10 points. So the voter trains one weight set per rule in [`STEPS`] on every
//!   label and answers with their mixture, each weighted by `exp(−loss)` of its
//!   recent log loss (half-life [`LOSS_HALF_LIFE`] labels): the Bayes mixture of the
//!   rules, which averages them while they are indistinguishable and follows the
//!   best once it leads by a few nats. (Answering with the leader alone measured the
//!   same, within noise.) That costs `|STEPS| × classes × (dim + 1)` multiply-adds
//!   per vote and per label, a few hundred for a typical tabular stream.
//!
//! One mutex guards the lot; it is held for those few hundred flops and never across
//! an await. The standardiser has a module of its own (`standardiser`).
//!
//! [`NORM_WINDOW`]: standardiser::NORM_WINDOW
//! [`NORM_WARMUP`]: standardiser::NORM_WARMUP
//! [`Z_LIMIT`]: standardiser::Z_LIMIT

use parking_lot::Mutex;

use super::ensemble::{Example, Row, Seat, Setup, Voter};

mod standardiser;

use standardiser::Standardiser;

/// The voter's name in `/v1/status`.
const NAME: &str = "linear";

/// Takes the linear voter's seat in the ensemble (`engine.linear_voter`).
pub(super) fn enlist(setup: &Setup<'_>) -> Seat {
    if setup.config.linear_voter {
        Seat::new(LinearVoter::new(setup.input_dim, setup.classes))
    } else {
        Seat::empty(NAME)
    }
}

/// A step rule for one weight set.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Step {
    /// Plain SGD with this step size.
    Sgd(f32),
    /// AdaGrad: the step size divided by the root of the summed squared gradients.
    AdaGrad(f32),
}

/// The rules raced; see the module docs.
const STEPS: [Step; 4] = [
    Step::Sgd(0.01),
    Step::Sgd(0.05),
    Step::AdaGrad(0.1),
    Step::AdaGrad(0.3),
];

/// Half-life, in labels, of the log loss that picks the answering rule.
const LOSS_HALF_LIFE: f32 = 500.0;

/// Keeps `ln p` finite for a class given probability 0.
const MIN_PROB: f32 = 1e-6;

/// Keeps AdaGrad's step finite when the summed squared gradient is tiny.
const ADAGRAD_EPS: f32 = 1e-6;

/// One weight set and its step rule.
#[derive(Debug)]
struct Learner {
    step: Step,
    /// `classes × width`, row-major.
    weights: Vec<f32>,
    /// AdaGrad's summed squared gradients (empty for SGD).
    grad_sq: Vec<f32>,
    /// Discounted log loss on the labels seen so far.
    loss: f32,
}

impl Learner {
    fn new(step: Step, len: usize) -> Self {
        let grad_sq = match step {
            Step::Sgd(_) => Vec::new(),
            Step::AdaGrad(_) => vec![0.0; len],
        };
        Self {
            step,
            weights: vec![0.0; len],
            grad_sq,
            loss: 0.0,
        }
    }

    fn predict(&self, z: &[f32]) -> Vec<f32> {
        softmax(
            self.weights
                .chunks_exact(z.len())
                .map(|row| row.iter().zip(z).map(|(a, b)| a * b).sum())
                .collect(),
        )
    }

    /// Scores the prediction for `label`, then takes one step on its cross-entropy, in
    /// place. `z` is finite and clamped to ±[`Z_LIMIT`], so every step is bounded
    /// (at most `0.05 × Z_LIMIT` for SGD, the step size for AdaGrad) and the weights
    /// stay finite.
    ///
    /// [`Z_LIMIT`]: standardiser::Z_LIMIT
    fn learn(&mut self, z: &[f32], label: usize, decay: f32) {
        let p = self.predict(z);
        self.loss = self.loss * decay - p[label].max(MIN_PROB).ln();
        for (c, pc) in p.iter().enumerate() {
            let g = pc - if c == label { 1.0 } else { 0.0 };
            let span = c * z.len()..(c + 1) * z.len();
            for (j, (w, x)) in self.weights[span.clone()].iter_mut().zip(z).enumerate() {
                let grad = g * x;
                *w -= match self.step {
                    Step::Sgd(lr) => lr * grad,
                    Step::AdaGrad(lr) => {
                        let acc = &mut self.grad_sq[span.start + j];
                        *acc += grad * grad;
                        lr * grad / (acc.sqrt() + ADAGRAD_EPS)
                    }
                };
            }
        }
    }
}

#[derive(Debug)]
struct State {
    standardiser: Standardiser,
    learners: Vec<Learner>,
    labels: u64,
}

impl State {
    /// The rule with the lowest recent loss.
    #[cfg(test)]
    fn leader(&self) -> &Learner {
        self.learners
            .iter()
            .min_by(|a, b| a.loss.total_cmp(&b.loss))
            .expect("STEPS is not empty")
    }

    /// The rules' predictions mixed with weights `exp(−loss)` of their discounted log
    /// losses: with little to tell the rules apart it averages them; once one leads
    /// by a few nats it answers almost alone.
    fn mixture(&self, z: &[f32]) -> Vec<f32> {
        let best = self
            .learners
            .iter()
            .map(|l| l.loss)
            .fold(f32::INFINITY, f32::min);
        let mut mixed = vec![0.0; self.learners[0].weights.len() / z.len()];
        let mut total = 0.0;
        for learner in &self.learners {
            let w = (best - learner.loss).exp();
            total += w;
            for (m, p) in mixed.iter_mut().zip(learner.predict(z)) {
                *m += w * p;
            }
        }
        for m in mixed.iter_mut() {
            *m /= total;
        }
        mixed
    }
}

/// The linear voter: a standardiser and one softmax regression per step rule.
#[derive(Debug)]
pub struct LinearVoter {
    state: Mutex<State>,
    input_dim: usize,
    classes: usize,
}

impl LinearVoter {
    pub fn new(input_dim: usize, classes: usize) -> Self {
        let len = classes * (input_dim + 1);
        Self {
            state: Mutex::new(State {
                standardiser: Standardiser::new(input_dim),
                learners: STEPS.iter().map(|&s| Learner::new(s, len)).collect(),
                labels: 0,
            }),
            input_dim,
            classes,
        }
    }

    /// Adds `x` (raw, finite features) to the standardiser and returns the voter's
    /// class distribution for it; `None` (abstain) before its first label or for a
    /// row of the wrong width.
    pub fn vote(&self, x: &[f32]) -> Option<Vec<f32>> {
        if x.len() != self.input_dim {
            return None;
        }
        let mut state = self.state.lock();
        state.standardiser.observe(x);
        if state.labels == 0 {
            return None;
        }
        let z = state.standardiser.standardise(x);
        Some(state.mixture(&z))
    }

    /// Adds `x` (raw, finite features) to the standardiser without voting: a row the
    /// ensemble does not vote on still counts in the scale.
    pub fn observe(&self, x: &[f32]) {
        if x.len() == self.input_dim {
            self.state.lock().standardiser.observe(x);
        }
    }

    /// Learns `label` for `x` (raw, finite features). `seen` says whether `x` went
    /// through [`Self::vote`] or [`Self::observe`] already (it was served); a labelled
    /// example sent whole has not, and is added to the standardiser here.
    pub fn learn(&self, x: &[f32], label: usize, seen: bool) {
        if x.len() != self.input_dim || label >= self.classes {
            return;
        }
        let mut state = self.state.lock();
        if !seen {
            state.standardiser.observe(x);
        }
        let z = state.standardiser.standardise(x);
        if !z.iter().all(|v| v.is_finite()) {
            // Only non-finite features could get here; the engine refuses them first.
            return;
        }
        let decay = 0.5f32.powf(1.0 / LOSS_HALF_LIFE);
        for learner in &mut state.learners {
            learner.learn(&z, label, decay);
        }
        state.labels += 1;
    }
}

impl Voter for LinearVoter {
    fn name(&self) -> &'static str {
        NAME
    }

    /// Every row served feeds the standardiser; the mixture is worked out only for a
    /// vote that counts.
    fn vote(&self, row: &Row<'_>, counts: bool) -> Option<Vec<f32>> {
        if counts {
            LinearVoter::vote(self, row.features)
        } else {
            self.observe(row.features);
            None
        }
    }

    /// One step per rule, in place.
    fn learn(&self, example: &Example<'_>) {
        LinearVoter::learn(self, example.features, example.label, example.served);
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
    use super::standardiser::Z_LIMIT;
    use super::*;

    /// A deterministic uniform draw in [-2, 2).
    fn draws(seed: u64) -> impl FnMut() -> f32 {
        let mut next = crate::engine::testing::uniform(seed);
        move || next() * 4.0 - 2.0
    }

    #[test]
    fn abstains_before_its_first_label_and_on_the_wrong_width() {
        let v = LinearVoter::new(2, 4);
        assert_eq!(v.vote(&[0.3, -1.0]), None);
        v.learn(&[0.3, -1.0], 2, true);
        let p = v.vote(&[0.3, -1.0]).unwrap();
        assert_eq!(p.len(), 4);
        assert_eq!(argmax(&p), 2);
        assert_eq!(v.vote(&[0.3]), None);
        v.learn(&[0.3], 1, false);
        v.learn(&[0.3, 1.0], 9, false);
    }

    fn argmax(p: &[f32]) -> usize {
        crate::model::argmax(p).0
    }

    #[test]
    fn learns_a_linear_boundary_online_whatever_the_feature_scale() {
        // Class 1 when x0 + x1/1000 > 0.5: the second feature is 1000 times the first's
        // scale and the boundary is off-centre, which the standardiser absorbs.
        let v = LinearVoter::new(2, 2);
        let mut next = draws(7);
        let mut right = 0;
        for i in 0..3000 {
            let x = [next(), next() * 1000.0];
            let y = usize::from(x[0] + x[1] / 1000.0 > 0.5);
            if let Some(p) = v.vote(&x)
                && i >= 2000
                && argmax(&p) == y
            {
                right += 1;
            }
            v.learn(&x, y, true);
        }
        assert!(right > 950, "{right} of the last 1000");
    }

    /// Prequential accuracy of `v` on a boundary that turns a full circle every
    /// `period` rows, with `noise_every`-th labels flipped (0 = none).
    fn rotating(v: &LinearVoter, period: f32, noise_every: usize) -> f32 {
        let mut next = draws(11);
        let mut right = 0;
        for i in 0..6000 {
            let x = [next(), next()];
            let angle = std::f32::consts::TAU * i as f32 / period;
            let clean = usize::from(x[0] * angle.cos() + x[1] * angle.sin() > 0.0);
            let y = if noise_every > 0 && i % noise_every == 0 {
                1 - clean
            } else {
                clean
            };
            if v.vote(&x).is_some_and(|p| argmax(&p) == clean) {
                right += 1;
            }
            v.learn(&x, y, true);
        }
        right as f32 / 6000.0
    }

    /// A voter racing only `step`.
    fn single(step: Step) -> LinearVoter {
        let v = LinearVoter::new(2, 2);
        v.state.lock().learners = vec![Learner::new(step, 6)];
        v
    }

    #[test]
    fn the_race_answers_with_the_rule_that_fits_the_stream() {
        // A fast-turning boundary needs the large constant step; a still, noisy one
        // is better served by a small or decaying one. The race must lead with the
        // right kind in each, and answer about as well as the best rule alone.
        for (period, noise, fast) in [(1500.0, 0, true), (f32::INFINITY, 4, false)] {
            let v = LinearVoter::new(2, 2);
            let raced = rotating(&v, period, noise);
            let leader = v.state.lock().leader().step;
            let alone: Vec<f32> = STEPS
                .iter()
                .map(|&s| rotating(&single(s), period, noise))
                .collect();
            let best = alone.iter().copied().fold(0.0, f32::max);
            assert!(raced >= best - 0.01, "raced {raced}, alone {alone:?}");
            if fast {
                assert_eq!(leader, Step::Sgd(0.05), "{alone:?}");
            } else {
                assert_ne!(leader, Step::Sgd(0.05), "{alone:?}");
            }
        }
    }

    #[test]
    fn bad_labels_and_widths_change_nothing() {
        let v = LinearVoter::new(1, 2);
        v.learn(&[1.0], 7, false);
        v.learn(&[1.0, 2.0], 1, false);
        assert_eq!(v.vote(&[1.0]), None, "no label was learned");
    }

    /// Accuracy of `v` on class 1 when x0 > 0.3, over 400 fresh rows.
    fn threshold_accuracy(v: &LinearVoter, next: &mut impl FnMut() -> f32) -> f32 {
        let mut right = 0;
        for _ in 0..400 {
            let x = [next()];
            if v.vote(&x)
                .is_some_and(|p| argmax(&p) == usize::from(x[0] > 0.3))
            {
                right += 1;
            }
        }
        right as f32 / 400.0
    }

    #[test]
    fn one_absurd_row_does_not_wreck_the_voter() {
        let v = LinearVoter::new(1, 2);
        let mut next = draws(3);
        for _ in 0..1000 {
            let x = [next()];
            v.vote(&x);
            v.learn(&x, usize::from(x[0] > 0.3), true);
        }
        let before = threshold_accuracy(&v, &mut next);
        assert!(before > 0.9, "{before}");
        // One row of 1e30, served and labelled: the standardiser counts it as a value
        // 10 deviations beyond the largest seen, the weights see it standardised to
        // at most +10, and the voter keeps its accuracy instead of collapsing to the
        // majority class.
        v.vote(&[1e30]);
        v.learn(&[1e30], 0, true);
        let z = v.state.lock().standardiser.standardise(&[1e30]);
        assert_eq!(z, vec![Z_LIMIT, 1.0]);
        let after = threshold_accuracy(&v, &mut next);
        assert!(after > before - 0.05, "{before} -> {after}");
    }
}
