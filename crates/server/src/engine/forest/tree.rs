//! One Hoeffding tree: routing a row to its leaf, growing at the splits its leaves
//! propose, and the drift test that tells the forest to replace it.
//!
//! The tree holds its nodes in one vector (children by index), so a vote is a walk
//! down a few indices with no allocation, and a split appends two leaves in place.

use super::leaf::{Leaf, Verdict};
use crate::engine::gate::PageHinkley;

/// Weight a leaf gathers between split attempts.
const GRACE: f64 = 50.0;

/// Page-Hinkley tolerance and threshold of each tree's drift test.
const TREE_DRIFT_DELTA: f64 = 0.005;
const TREE_DRIFT_THRESHOLD: f64 = 50.0;

#[derive(Debug, Clone)]
pub(super) enum Node {
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
pub(super) struct Tree {
    pub(super) nodes: Vec<Node>,
    pub(super) leaves: usize,
    /// Leaves this tree may grow (see [`LEAF_BUDGET_BYTES`](super::LEAF_BUDGET_BYTES)).
    max_leaves: usize,
    pub(super) detector: PageHinkley,
}

impl Tree {
    pub(super) fn new(classes: usize, features: Vec<usize>, max_leaves: usize) -> Self {
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
    pub(super) fn predict(&self, x: &[f32], out: &mut [f64]) {
        self.leaf_of(x).1.predict(x, out);
    }

    /// The leaf `x` falls in, and its [`Leaf::judge`]ment on `label`: one walk and
    /// one scoring serve both the tree's drift test and the leaf's learning.
    pub(super) fn judge(&self, x: &[f32], label: usize, scratch: &mut [f64]) -> (usize, Verdict) {
        let (i, leaf) = self.leaf_of(x);
        (i, leaf.judge(x, label, scratch))
    }

    /// Learns `label` with weight `w` in leaf `i`, the one `x` falls in, judged by
    /// `verdict`; splits that leaf if it has earned it. `watch` draws a new leaf's
    /// features.
    pub(super) fn learn(
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
