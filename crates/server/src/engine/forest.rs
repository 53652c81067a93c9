//! The fourth voter: an online random forest of Hoeffding trees on the raw input.
//!
//! Why: the other voters are smooth. The network and the softmax regression draw
//! soft boundaries, and the neighbours answer by distance. A stream whose classes
//! follow axis-aligned rules on a few features (River's Phishing and Agrawal: mostly
//! −1/0/1 codes and salary bands) is where River's adaptive random forest beats all
//! three, and on Phishing it was right on ~40 of 1250 samples where our blend was
//! wrong, as often as the reverse. Hedge gives the forest the share it earns, so on a
//! plane or a moving RBF it costs a little request time, not accuracy.
//!
//! The forest follows the adaptive random forest (Gomes et al., 2017) in the parts
//! that matter here, in this project's own form:
//!
//! - **Hoeffding trees.** A leaf keeps, per candidate feature and class, a weighted
//!   Gaussian of the values it saw. Every [`GRACE`] weight it scores [`CANDIDATES`]
//!   thresholds per feature by information gain, estimating each side's class counts
//!   from the Gaussians, and splits when the best split beats the runner-up by the
//!   Hoeffding bound (confidence [`SPLIT_CONFIDENCE`]) or the bound falls below
//!   [`TIE_THRESHOLD`]. Trees are scale-free: no standardiser is needed.
//! - **Randomness for diversity.** Each leaf watches a random √d of the features, and
//!   each tree learns every label with a Poisson([`POISSON_LAMBDA`]) weight (online
//!   bagging; 0 skips it).
//! - **Leaves answer adaptively.** A leaf answers with its class counts or with naive
//!   Bayes over its Gaussians, whichever has been right more often on the labels it
//!   saw (River's `nba`): naive Bayes is far better in a young leaf.
//! - **Drift.** Each tree runs its own Page-Hinkley test on its errors; when it
//!   alarms the tree is replaced by a new one, while the other trees keep answering.
//!   The engine's own alarm leaves the forest alone: a tree whose concept is gone
//!   alarms by itself within a few dozen labels, one whose part of the input did not
//!   change keeps its knowledge.
//!
//! Bounds: at most [`MAX_LEAVES`] leaves per tree, fewer for a wide input with many
//! classes (the leaves' statistics of the forest stay within [`LEAF_BUDGET_BYTES`]),
//! and [`TREES`] trees, so the memory is fixed; a vote walks [`TREES`] root-to-leaf
//! paths. One mutex guards the forest, held for the vote or the learning step, never
//! across an await.

use parking_lot::Mutex;
use rand::SeedableRng;
use rand::seq::index::sample;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Poisson};

use super::gate::PageHinkley;

/// Trees in the forest.
const TREES: usize = 10;

/// Mean of the Poisson weight with which each tree learns each label (ARF's 6).
const POISSON_LAMBDA: f64 = 6.0;

/// Weight a leaf gathers between split attempts.
const GRACE: f64 = 50.0;

/// δ of the Hoeffding bound: the chance that the chosen split is not the best.
const SPLIT_CONFIDENCE: f64 = 0.01;

/// Below this bound two near-equal splits are a tie, and the best is taken.
const TIE_THRESHOLD: f64 = 0.05;

/// Thresholds tried per feature, evenly spaced over the range seen.
const CANDIDATES: usize = 10;

/// Leaves per tree at most; a full tree stops splitting and keeps learning its leaves.
const MAX_LEAVES: usize = 256;

/// Page-Hinkley tolerance and threshold of each tree's drift test.
const TREE_DRIFT_DELTA: f64 = 0.005;
const TREE_DRIFT_THRESHOLD: f64 = 50.0;

/// A budget for the leaves' statistics of one forest: a wide input with many classes
/// gets fewer leaves per tree than [`MAX_LEAVES`], so its memory stays bounded.
const LEAF_BUDGET_BYTES: usize = 32 << 20;

/// `ln √(2π)`.
const LN_SQRT_2PI: f64 = 0.918_938_533_204_672_7;

/// The smallest standard deviation a Gaussian may have (a feature constant within a
/// class would otherwise give a zero-width density).
const MIN_SD: f64 = 1e-6;

/// A weighted running mean and variance (West's update).
#[derive(Debug, Clone, Default)]
struct Gaussian {
    weight: f64,
    mean: f64,
    /// Weighted sum of squared deviations.
    m2: f64,
}

impl Gaussian {
    fn add(&mut self, x: f64, w: f64) {
        self.weight += w;
        let delta = x - self.mean;
        self.mean += w * delta / self.weight;
        self.m2 += w * delta * (x - self.mean);
    }

    fn sd(&self) -> f64 {
        if self.weight > 1.0 {
            (self.m2 / (self.weight - 1.0)).max(0.0).sqrt()
        } else {
            0.0
        }
    }

    /// The share of this class's weight at or below `t`.
    fn below(&self, t: f64) -> f64 {
        let sd = self.sd();
        if sd < MIN_SD {
            return if self.mean <= t { 1.0 } else { 0.0 };
        }
        normal_cdf((t - self.mean) / sd)
    }

    /// `ln` of the density at `x`, with the deviation floored at `floor`.
    fn log_density(&self, x: f64, floor: f64) -> f64 {
        let sd = self.sd().max(floor);
        let z = (x - self.mean) / sd;
        -0.5 * z * z - sd.ln() - LN_SQRT_2PI
    }
}

/// Φ(z), from the complementary error function (Abramowitz–Stegun 7.1.26, error
/// below 1.5e-7, ample for ranking splits).
fn normal_cdf(z: f64) -> f64 {
    let x = z.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * x);
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erfc = poly * (-x * x).exp();
    if z >= 0.0 {
        1.0 - 0.5 * erfc
    } else {
        0.5 * erfc
    }
}

/// Entropy, in bits, of the class weights `counts`.
fn entropy(counts: &[f64]) -> f64 {
    let total: f64 = counts.iter().sum();
    if total <= 0.0 {
        return 0.0;
    }
    counts
        .iter()
        .filter(|&&c| c > 0.0)
        .map(|&c| {
            let p = c / total;
            -p * p.log2()
        })
        .sum()
}

/// A leaf: class weights, and per watched feature a range and a Gaussian per class.
#[derive(Debug, Clone)]
struct Leaf {
    counts: Vec<f64>,
    /// The features this leaf watches (split candidates and naive Bayes inputs).
    features: Vec<usize>,
    /// `features.len() × classes`, feature-major.
    gaussians: Vec<Gaussian>,
    /// Smallest and largest value seen, per watched feature.
    low: Vec<f64>,
    high: Vec<f64>,
    /// Total weight at the last split attempt (or at birth).
    weight_at_attempt: f64,
    /// Weight of the labels the class counts, and naive Bayes, got right.
    majority_right: f64,
    bayes_right: f64,
}

impl Leaf {
    fn new(counts: Vec<f64>, features: Vec<usize>) -> Self {
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
    fn predict(&self, x: &[f32], out: &mut [f64]) {
        if self.bayes_right > self.majority_right {
            self.bayes(x, out)
        } else {
            self.majority(out)
        }
    }

    /// Judges both of the leaf's answers, and the one [`Self::predict`] gives, on
    /// `label` for `x`; `scratch` holds `classes` values.
    fn judge(&self, x: &[f32], label: usize, scratch: &mut [f64]) -> Verdict {
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
    fn learn(&mut self, x: &[f32], label: usize, w: f64, verdict: Verdict) {
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
    fn best_split(&self) -> Option<Candidate> {
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
struct Verdict {
    /// The class counts' answer.
    majority: bool,
    /// Naive Bayes' answer.
    bayes: bool,
    /// The answer the leaf gives (one of the two).
    answer: bool,
}

/// A split a leaf could make, and the class weights it would send each way.
#[derive(Debug)]
struct Candidate {
    gain: f64,
    feature: usize,
    threshold: f64,
    left: Vec<f64>,
    right: Vec<f64>,
}

#[derive(Debug, Clone)]
enum Node {
    Split {
        feature: usize,
        threshold: f64,
        left: usize,
        right: usize,
    },
    Leaf(Box<Leaf>),
}

/// One Hoeffding tree and its drift test.
#[derive(Debug, Clone)]
struct Tree {
    nodes: Vec<Node>,
    leaves: usize,
    /// Leaves this tree may grow (see [`LEAF_BUDGET_BYTES`]).
    max_leaves: usize,
    detector: PageHinkley,
}

impl Tree {
    fn new(classes: usize, features: Vec<usize>, max_leaves: usize) -> Self {
        Self {
            nodes: vec![Node::Leaf(Box::new(Leaf::new(
                vec![0.0; classes],
                features,
            )))],
            leaves: 1,
            max_leaves,
            detector: PageHinkley::new(TREE_DRIFT_DELTA, TREE_DRIFT_THRESHOLD),
        }
    }

    /// The leaf `x` falls in, and its index.
    fn leaf_of(&self, x: &[f32]) -> (usize, &Leaf) {
        let mut i = 0;
        loop {
            match &self.nodes[i] {
                Node::Split {
                    feature,
                    threshold,
                    left,
                    right,
                } => {
                    i = if f64::from(x[*feature]) <= *threshold {
                        *left
                    } else {
                        *right
                    };
                }
                Node::Leaf(leaf) => return (i, leaf),
            }
        }
    }

    /// Writes the distribution of the leaf `x` falls in into `out`.
    fn predict(&self, x: &[f32], out: &mut [f64]) {
        self.leaf_of(x).1.predict(x, out);
    }

    /// The leaf `x` falls in, and its [`Leaf::judge`]ment on `label`: one walk and
    /// one scoring serve both the tree's drift test and the leaf's learning.
    fn judge(&self, x: &[f32], label: usize, scratch: &mut [f64]) -> (usize, Verdict) {
        let (i, leaf) = self.leaf_of(x);
        (i, leaf.judge(x, label, scratch))
    }

    /// Learns `label` with weight `w` in leaf `i`, the one `x` falls in, judged by
    /// `verdict`; splits that leaf if it has earned it. `watch` draws a new leaf's
    /// features.
    fn learn(
        &mut self,
        i: usize,
        x: &[f32],
        label: usize,
        w: f64,
        verdict: Verdict,
        watch: &mut impl FnMut() -> Vec<usize>,
    ) {
        let Node::Leaf(leaf) = &mut self.nodes[i] else {
            return;
        };
        leaf.learn(x, label, w, verdict);
        let total: f64 = leaf.counts.iter().sum();
        if total - leaf.weight_at_attempt < GRACE || self.leaves >= self.max_leaves {
            return;
        }
        leaf.weight_at_attempt = total;
        if let Some(split) = leaf.best_split() {
            let at = self.nodes.len();
            for counts in [split.left, split.right] {
                self.nodes
                    .push(Node::Leaf(Box::new(Leaf::new(counts, watch()))));
            }
            self.nodes[i] = Node::Split {
                feature: split.feature,
                threshold: split.threshold,
                left: at,
                right: at + 1,
            };
            self.leaves += 1;
        }
    }
}

fn argmax(p: &[f64]) -> usize {
    p.iter()
        .enumerate()
        .fold((0, f64::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 { (i, v) } else { best }
        })
        .0
}

#[derive(Debug)]
struct Forest {
    trees: Vec<Tree>,
    rng: ChaCha8Rng,
    poisson: Poisson<f64>,
    labels: u64,
    /// Trees replaced after their own drift alarm.
    replaced: u64,
    /// One tree's distribution, reused so a vote or a label allocates nothing here.
    scratch: Vec<f64>,
}

/// What a new tree is built for.
#[derive(Debug, Clone, Copy)]
struct Shape {
    dim: usize,
    classes: usize,
    /// Features each leaf watches: ⌈√d⌉.
    watched: usize,
    max_leaves: usize,
}

impl Shape {
    fn new(dim: usize, classes: usize) -> Self {
        let watched = ((dim as f64).sqrt().ceil() as usize).min(dim);
        let leaf_bytes = watched * classes * std::mem::size_of::<Gaussian>()
            + classes * 8
            + watched * 24
            + std::mem::size_of::<Leaf>()
            + 2 * std::mem::size_of::<Node>();
        let max_leaves = (LEAF_BUDGET_BYTES / (TREES * leaf_bytes)).clamp(1, MAX_LEAVES);
        Self {
            dim,
            classes,
            watched,
            max_leaves,
        }
    }
}

impl Forest {
    fn fresh_tree(&mut self, shape: Shape) -> Tree {
        let features = sample(&mut self.rng, shape.dim, shape.watched).into_vec();
        Tree::new(shape.classes, features, shape.max_leaves)
    }
}

/// The forest voter; see the module docs.
#[derive(Debug)]
pub struct ForestVoter {
    state: Mutex<Forest>,
    shape: Shape,
}

impl ForestVoter {
    pub fn new(input_dim: usize, classes: usize) -> Self {
        let shape = Shape::new(input_dim, classes);
        let mut forest = Forest {
            trees: Vec::with_capacity(TREES),
            // Fixed seed: the same stream grows the same forest.
            rng: ChaCha8Rng::seed_from_u64(0x0f0e_5700),
            poisson: Poisson::new(POISSON_LAMBDA).expect("λ is positive"),
            labels: 0,
            replaced: 0,
            scratch: vec![0.0; classes],
        };
        for _ in 0..TREES {
            let tree = forest.fresh_tree(shape);
            forest.trees.push(tree);
        }
        Self {
            state: Mutex::new(forest),
            shape,
        }
    }

    /// The trees' mean class distribution for `x` (raw, finite features); `None`
    /// (abstain) before the first label or for a row of the wrong width.
    pub fn vote(&self, x: &[f32]) -> Option<Vec<f32>> {
        let Shape { dim, classes, .. } = self.shape;
        if x.len() != dim || dim == 0 || !x.iter().all(|v| v.is_finite()) {
            return None;
        }
        let mut guard = self.state.lock();
        let Forest {
            trees,
            labels,
            scratch,
            ..
        } = &mut *guard;
        if *labels == 0 {
            return None;
        }
        let mut mean = vec![0.0f32; classes];
        let share = 1.0 / trees.len() as f64;
        for tree in trees.iter() {
            tree.predict(x, scratch);
            for (m, p) in mean.iter_mut().zip(scratch.iter()) {
                *m += (p * share) as f32;
            }
        }
        Some(mean)
    }

    /// Learns `label` for `x` (raw, finite features): each tree first scores itself
    /// for its drift test (replaced on an alarm), then learns with a Poisson weight.
    pub fn learn(&self, x: &[f32], label: usize) {
        let shape = self.shape;
        if x.len() != shape.dim || label >= shape.classes || shape.dim == 0 {
            return;
        }
        if !x.iter().all(|v| v.is_finite()) {
            return;
        }
        let mut guard = self.state.lock();
        let forest = &mut *guard;
        for t in 0..forest.trees.len() {
            let (mut leaf, mut verdict) = forest.trees[t].judge(x, label, &mut forest.scratch);
            let wrong = !verdict.answer;
            if forest.labels > 0 && forest.trees[t].detector.observe(f64::from(u8::from(wrong))) {
                forest.trees[t] = forest.fresh_tree(shape);
                forest.replaced += 1;
                (leaf, verdict) = forest.trees[t].judge(x, label, &mut forest.scratch);
            }
            let k = forest.poisson.sample(&mut forest.rng);
            if k >= 1.0 {
                let Forest { trees, rng, .. } = forest;
                let mut watch = || sample(rng, shape.dim, shape.watched).into_vec();
                trees[t].learn(leaf, x, label, k, verdict, &mut watch);
            }
        }
        forest.labels += 1;
    }

    /// Trees replaced after their own drift test alarmed.
    #[cfg(test)]
    fn replaced(&self) -> u64 {
        self.state.lock().replaced
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::engine::testing::uniform as draws;

    /// One label of weight 1 for `leaf`, judged first as the forest does.
    fn teach(leaf: &mut Leaf, x: &[f32], label: usize) {
        let mut scratch = vec![0.0; leaf.classes()];
        let verdict = leaf.judge(x, label, &mut scratch);
        leaf.learn(x, label, 1.0, verdict);
    }

    fn argmax32(p: &[f32]) -> usize {
        crate::model::argmax(p).0
    }

    /// Accuracy over the last 1000 of `n` test-then-train samples of `concept`.
    fn prequential(
        v: &ForestVoter,
        n: usize,
        dim: usize,
        next: &mut impl FnMut() -> f32,
        mut concept: impl FnMut(&[f32]) -> usize,
    ) -> f32 {
        let mut right = 0;
        for i in 0..n {
            let x: Vec<f32> = (0..dim).map(|_| next()).collect();
            let y = concept(&x);
            let p = v.vote(&x);
            if let Some(p) = &p {
                let sum: f32 = p.iter().sum();
                assert!(
                    p.iter().all(|q| q.is_finite() && *q >= 0.0) && (sum - 1.0).abs() < 1e-4,
                    "{p:?}"
                );
            }
            if i + 1000 >= n && p.is_some_and(|p| argmax32(&p) == y) {
                right += 1;
            }
            v.learn(&x, y);
        }
        right as f32 / 1000.0
    }

    #[test]
    fn the_normal_cdf_is_accurate() {
        for (z, want) in [
            (0.0, 0.5),
            (1.0, 0.841_344_7),
            (-1.96, 0.024_997_9),
            (3.0, 0.998_650_1),
        ] {
            assert!((normal_cdf(z) - want).abs() < 1e-6, "Φ({z})");
        }
    }

    #[test]
    fn abstains_before_its_first_label_and_on_the_wrong_width() {
        let v = ForestVoter::new(3, 2);
        assert_eq!(v.vote(&[0.1, 0.2, 0.3]), None);
        v.learn(&[0.1, 0.2, 0.3], 1);
        let p = v.vote(&[0.1, 0.2, 0.3]).unwrap();
        assert_eq!(p.len(), 2);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        assert_eq!(v.vote(&[0.1]), None);
        // Wrong width, a label beyond the classes, a non-finite value: ignored.
        v.learn(&[0.1], 0);
        v.learn(&[0.1, 0.2, 0.3], 7);
        v.learn(&[f32::NAN, 0.2, 0.3], 0);
        assert_eq!(v.state.lock().labels, 1);
        // A degenerate shape builds and abstains instead of panicking.
        let empty = ForestVoter::new(0, 2);
        empty.learn(&[], 0);
        assert_eq!(empty.vote(&[]), None);
    }

    #[test]
    fn learns_an_axis_aligned_rule_that_no_plane_fits() {
        // Class 1 inside a band of one feature and above a cut of another: a rule a
        // tree expresses in three splits and a linear model cannot.
        let v = ForestVoter::new(4, 2);
        let mut next = draws(11);
        let acc = prequential(&v, 6000, 4, &mut next, |x| {
            usize::from((0.3..0.6).contains(&x[0]) && x[2] > 0.5)
        });
        assert!(acc > 0.95, "accuracy {acc}");
        for tree in &v.state.lock().trees {
            assert!(tree.leaves >= 4, "a tree with {} leaves", tree.leaves);
        }
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

    #[test]
    fn a_noisy_but_still_concept_keeps_its_trees() {
        // One label in four flipped, for 20 000 labels: errors stay near 25% and a
        // tree's drift test must not throw trained trees away.
        let v = ForestVoter::new(2, 2);
        let mut next = draws(21);
        let mut noise = draws(22);
        let acc = prequential(&v, 20_000, 2, &mut next, |x| {
            usize::from(x[0] > 0.5) ^ usize::from(noise() < 0.25)
        });
        assert!(acc > 0.7, "{acc}");
        assert!(v.replaced() <= 2, "{} trees replaced", v.replaced());
    }

    #[test]
    fn a_wide_input_with_many_classes_gets_fewer_leaves() {
        let narrow = Shape::new(16, 4);
        assert_eq!(narrow.max_leaves, MAX_LEAVES);
        let wide = Shape::new(784, 1000);
        assert!(wide.max_leaves < MAX_LEAVES / 10, "{}", wide.max_leaves);
        let leaf_stats = wide.watched * wide.classes * std::mem::size_of::<Gaussian>();
        assert!(TREES * wide.max_leaves * leaf_stats <= LEAF_BUDGET_BYTES);
    }

    #[test]
    fn replaces_trees_after_an_abrupt_drift() {
        // The rule flips to its opposite: every tree's error jumps, each test alarms
        // and the forest relearns from fresh trees.
        let v = ForestVoter::new(2, 2);
        let mut next = draws(5);
        let before = prequential(&v, 4000, 2, &mut next, |x| usize::from(x[0] > 0.5));
        assert!(before > 0.95, "{before}");
        assert_eq!(v.replaced(), 0, "no false alarms on a still concept");
        let after = prequential(&v, 4000, 2, &mut next, |x| usize::from(x[0] <= 0.5));
        assert!(
            v.replaced() >= TREES as u64 / 2,
            "{} replaced",
            v.replaced()
        );
        assert!(after > 0.95, "{after}");
    }

    #[test]
    fn growth_is_bounded() {
        // A rule finer than any tree can hold keeps every tree splitting until the
        // leaf cap stops it.
        let v = ForestVoter::new(1, 2);
        let mut next = draws(3);
        prequential(&v, 40_000, 1, &mut next, |x| ((x[0] * 2000.0) as usize) % 2);
        let leaves: Vec<usize> = v.state.lock().trees.iter().map(|t| t.leaves).collect();
        assert!(leaves.contains(&MAX_LEAVES), "{leaves:?}");
        for tree in &v.state.lock().trees {
            assert!(tree.leaves <= MAX_LEAVES);
            assert_eq!(tree.nodes.len(), 2 * tree.leaves - 1);
        }
    }
}
