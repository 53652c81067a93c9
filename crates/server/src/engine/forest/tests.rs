//! The forest's own tests: a whole forest learning, forgetting and staying bounded
//! on synthetic streams (the leaf's and the statistics' tests sit beside them).

use super::*;

use crate::engine::testing::uniform as draws;

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
