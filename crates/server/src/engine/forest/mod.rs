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
//!
//! The code follows those parts: `stats` holds the per-class Gaussians and the
//! split-scoring maths, `leaf` what a leaf learns and answers and when it splits,
//! `tree` the routing, the growth and each tree's drift test, and this module the
//! forest: its trees, their bagging weights, their replacement on drift, and the
//! voter's face to the ensemble. Each can be read, and is tested, without the
//! others' detail.
//!
//! [`GRACE`]: tree::GRACE
//! [`CANDIDATES`]: leaf::CANDIDATES
//! [`SPLIT_CONFIDENCE`]: leaf::SPLIT_CONFIDENCE
//! [`TIE_THRESHOLD`]: leaf::TIE_THRESHOLD

use parking_lot::Mutex;
use rand::SeedableRng;
use rand::seq::index::sample;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Poisson};

use super::ensemble::{Example, Row, Seat, Setup, Voter};

mod leaf;
mod stats;
#[cfg(test)]
mod tests;
mod tree;

use leaf::Leaf;
use stats::Gaussian;
use tree::{Node, Tree};

/// The voter's name in `/v1/status`.
const NAME: &str = "forest";

/// Takes the forest's seat in the ensemble (`engine.forest_voter`).
pub(super) fn enlist(setup: &Setup<'_>) -> Seat {
    if setup.config.forest_voter {
        Seat::new(ForestVoter::new(setup.input_dim, setup.classes))
    } else {
        Seat::empty(NAME)
    }
}

/// Trees in the forest.
const TREES: usize = 10;

/// Mean of the Poisson weight with which each tree learns each label (ARF's 6).
const POISSON_LAMBDA: f64 = 6.0;

/// Leaves per tree at most; a full tree stops splitting and keeps learning its leaves.
const MAX_LEAVES: usize = 256;

/// A budget for the leaves' statistics of one forest: a wide input with many classes
/// gets fewer leaves per tree than [`MAX_LEAVES`], so its memory stays bounded.
const LEAF_BUDGET_BYTES: usize = 32 << 20;

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

impl Voter for ForestVoter {
    fn name(&self) -> &'static str {
        NAME
    }

    /// The trees are walked only for a vote that counts: the forest learns nothing
    /// from an unlabelled row.
    fn vote(&self, row: &Row<'_>, counts: bool) -> Option<Vec<f32>> {
        if counts {
            ForestVoter::vote(self, row.features)
        } else {
            None
        }
    }

    /// Each tree scores itself for its drift test, then learns with a Poisson weight.
    fn learn(&self, example: &Example<'_>) {
        ForestVoter::learn(self, example.features, example.label);
    }
}
