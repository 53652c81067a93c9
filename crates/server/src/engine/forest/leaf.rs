//! A Hoeffding tree's leaf: what it learns from each label, how it answers, and
//! when it has seen enough to split.
//!
//! The leaf is where the forest's statistics live and where its decisions are made
//! (which of its two answers to trust, which split is worth making); the tree only
//! routes a row to its leaf and grows at the split a leaf proposes.

use super::stats::{Gaussian, MIN_SD, argmax, entropy};

/// δ of the Hoeffding bound: the chance that the chosen split is not the best.
const SPLIT_CONFIDENCE: f64 = 0.01;

/// Below this bound two near-equal splits are a tie, and the best is taken.
const TIE_THRESHOLD: f64 = 0.05;

/// Thresholds tried per feature, evenly spaced over the range seen.
const CANDIDATES: usize = 10;

/// A leaf: class weights, and per watched feature a range and a Gaussian per class.
#[derive(Debug, Clone)]
pub(super) struct Leaf {
    pub(super) counts: Vec<f64>,
    /// The features this leaf watches (split candidates and naive Bayes inputs).
    features: Vec<usize>,
    /// `features.len() × classes`, feature-major.
    gaussians: Vec<Gaussian>,
    /// Smallest and largest value seen, per watched feature.
    low: Vec<f64>,
    high: Vec<f64>,
    /// Total weight at the last split attempt (or at birth).
    pub(super) weight_at_attempt: f64,
    /// Weight of the labels the class counts, and naive Bayes, got right.
    majority_right: f64,
    bayes_right: f64,
}

impl Leaf {
    pub(super) fn new(counts: Vec<f64>, features: Vec<usize>) -> Self {
        let classes = counts.len();
        let weight_at_attempt = counts.iter().sum();
        Self {
            gaussians: vec![Gaussian::default(); features.len() * classes],
            low: vec![f64::INFINITY; features.len()],
            high: vec![f64::NEG_INFINITY; features.len()],
            features,
            counts,
            weight_at_attempt,
            majority_right: 0.0,
            bayes_right: 0.0,
        }
    }

    fn classes(&self) -> usize {
        self.counts.len()
    }

    /// Writes the class distribution by the counts alone into `out` (uniform while
    /// empty).
    fn majority(&self, out: &mut [f64]) {
        let total: f64 = self.counts.iter().sum();
        for (o, c) in out.iter_mut().zip(&self.counts) {
            *o = if total > 0.0 {
                c / total
            } else {
                1.0 / self.classes() as f64
            };
        }
    }

    /// Writes naive Bayes' distribution over the watched features into `out`, the
    /// counts as the prior.
    fn bayes(&self, x: &[f32], out: &mut [f64]) {
        let classes = self.classes();
        let total: f64 = self.counts.iter().sum();
        if total <= 0.0 {
            return self.majority(out);
        }
        for (o, &c) in out.iter_mut().zip(&self.counts) {
            *o = ((c + 1e-3) / total).ln();
        }
        for (j, &f) in self.features.iter().enumerate() {
            // A class's spread floors at a small share of the feature's range, so
            // one constant class cannot claim a value with an infinite density.
            let span = self.high[j] - self.low[j];
            let floor = (span * 1e-3).max(MIN_SD);
            // A class this leaf holds no values of for the feature (one inherited at
            // a split) gets the uniform density over the range seen, so the
            // feature's scale favours no class.
            let uniform = -span.max(floor).ln();
            let v = f64::from(x[f]);
            for (c, lp) in out.iter_mut().enumerate() {
                let g = &self.gaussians[j * classes + c];
                *lp += if g.weight > 0.0 {
                    g.log_density(v, floor)
                } else {
                    uniform
                };
            }
        }
        let max = out.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mut sum = 0.0;
        for v in out.iter_mut() {
            *v = (*v - max).exp();
            sum += *v;
        }
        out.iter_mut().for_each(|v| *v /= sum);
    }

    /// Writes the leaf's answer into `out`: naive Bayes or the counts, whichever has
    /// been right more often here.
    pub(super) fn predict(&self, x: &[f32], out: &mut [f64]) {
        if self.bayes_right > self.majority_right {
            self.bayes(x, out)
        } else {
            self.majority(out)
        }
    }

    /// Judges both of the leaf's answers, and the one [`Self::predict`] gives, on
    /// `label` for `x`; `scratch` holds `classes` values.
    pub(super) fn judge(&self, x: &[f32], label: usize, scratch: &mut [f64]) -> Verdict {
        self.majority(scratch);
        let majority = argmax(scratch) == label;
        self.bayes(x, scratch);
        let bayes = argmax(scratch) == label;
        let answer = if self.bayes_right > self.majority_right {
            bayes
        } else {
            majority
        };
        Verdict {
            majority,
            bayes,
            answer,
        }
    }

    /// Learns `label` with weight `w`; `verdict` is [`Self::judge`]'s on this `x` and
    /// `label`, taken before.
    pub(super) fn learn(&mut self, x: &[f32], label: usize, w: f64, verdict: Verdict) {
        if self.counts.iter().sum::<f64>() > 0.0 {
            if verdict.majority {
                self.majority_right += w;
            }
            if verdict.bayes {
                self.bayes_right += w;
            }
        }
        self.counts[label] += w;
        let classes = self.classes();
        for (j, &f) in self.features.iter().enumerate() {
            let v = f64::from(x[f]);
            self.low[j] = self.low[j].min(v);
            self.high[j] = self.high[j].max(v);
            self.gaussians[j * classes + label].add(v, w);
        }
    }

    /// The best split by information gain, if the Hoeffding bound says it is the
    /// best.
    pub(super) fn best_split(&self) -> Option<Candidate> {
        let classes = self.classes();
        // As in MOA's and River's Hoeffding trees, the parent is the leaf's class
        // weight, including what it inherited at birth, while each side of a split
        // is estimated from the values it saw since. The two populations differ in a
        // young leaf, which makes it split a little more eagerly; measuring the parent
        // from the seen values alone cost phishing a point (QUALITY.md, third round).
        let total: f64 = self.counts.iter().sum();
        if self.features.is_empty() || self.counts.iter().filter(|&&c| c > 0.0).count() < 2 {
            return None;
        }
        let parent = entropy(&self.counts);
        // The best split of each feature; "no split" (gain 0) is the floor.
        let mut per_feature: Vec<Candidate> = Vec::new();
        for (j, &feature) in self.features.iter().enumerate() {
            let (lo, hi) = (self.low[j], self.high[j]);
            if hi <= lo {
                continue;
            }
            let mut best: Option<Candidate> = None;
            for i in 1..=CANDIDATES {
                let threshold = lo + (hi - lo) * i as f64 / (CANDIDATES + 1) as f64;
                let left: Vec<f64> = (0..classes)
                    .map(|c| {
                        let g = &self.gaussians[j * classes + c];
                        g.weight * g.below(threshold)
                    })
                    .collect();
                let right: Vec<f64> = (0..classes)
                    .map(|c| (self.gaussians[j * classes + c].weight - left[c]).max(0.0))
                    .collect();
                let (l, r): (f64, f64) = (left.iter().sum(), right.iter().sum());
                if l <= 0.0 || r <= 0.0 {
                    continue;
                }
                let gain = parent - (l * entropy(&left) + r * entropy(&right)) / (l + r);
                if best.as_ref().is_none_or(|b| gain > b.gain) {
                    best = Some(Candidate {
                        gain,
                        feature,
                        threshold,
                        left,
                        right,
                    });
                }
            }
            per_feature.extend(best);
        }
        per_feature.sort_by(|a, b| b.gain.total_cmp(&a.gain));
        let runner_up = per_feature.get(1).map_or(0.0, |s| s.gain);
        let best = per_feature.into_iter().next()?;
        let range = (classes as f64).log2();
        let bound = (range * range * (1.0 / SPLIT_CONFIDENCE).ln() / (2.0 * total)).sqrt();
        (best.gain > 0.0 && (best.gain - runner_up > bound || bound < TIE_THRESHOLD))
            .then_some(best)
    }
}

/// Which of a leaf's answers were right on a label, judged before it learns it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Verdict {
    /// The class counts' answer.
    majority: bool,
    /// Naive Bayes' answer.
    bayes: bool,
    /// The answer the leaf gives (one of the two).
    pub(super) answer: bool,
}

/// A split a leaf could make, and the class weights it would send each way.
#[derive(Debug)]
pub(super) struct Candidate {
    gain: f64,
    pub(super) feature: usize,
    pub(super) threshold: f64,
    pub(super) left: Vec<f64>,
    pub(super) right: Vec<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One label of weight 1 for `leaf`, judged first as the forest does.
    fn teach(leaf: &mut Leaf, x: &[f32], label: usize) {
        let mut scratch = vec![0.0; leaf.classes()];
        let verdict = leaf.judge(x, label, &mut scratch);
        leaf.learn(x, label, 1.0, verdict);
    }

    #[test]
    fn a_pure_leaf_never_splits_and_a_clean_boundary_does() {
        let mut leaf = Leaf::new(vec![0.0, 0.0], vec![0]);
        for i in 0..200 {
            teach(&mut leaf, &[i as f32 / 200.0], 1);
        }
        assert!(leaf.best_split().is_none(), "a pure leaf does not split");
        // Both classes seen, cleanly apart: it splits between them.
        for i in 0..200 {
            teach(&mut leaf, &[2.0 + i as f32 / 200.0], 0);
        }
        let split = leaf.best_split().expect("a clean split");
        assert!((1.0..2.0).contains(&split.threshold), "{}", split.threshold);
    }

    #[test]
    fn a_young_leaf_does_not_favour_a_class_it_holds_no_values_of() {
        // A child inherits class 0's weight, then sees class 1 around 50 000 on a
        // salary-like scale. Naive Bayes must answer class 1 there: the scale of the
        // feature must not hand the vote to the class without values.
        let mut leaf = Leaf::new(vec![30.0, 1.0], vec![0]);
        for i in 0..60 {
            teach(&mut leaf, &[45_000.0 + 200.0 * i as f32], 1);
        }
        let mut p = [0.0; 2];
        leaf.bayes(&[50_000.0], &mut p);
        assert!(p[1] > p[0], "{p:?}");
    }
}
