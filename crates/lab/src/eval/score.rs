//! The prequential scores, defined exactly as `scripts/quality.py` defines them for
//! River's learners, so the two columns of QUALITY.md are the same measure:
//! - accuracy over every prediction, and over the first 1000;
//! - accuracy in consecutive 1000-sample windows;
//! - Cohen's κ of the predictions against the labels;
//! - recovery after each drift at position P: the pre-drift level is the accuracy on
//!   `[P−500, P)`; recovery is the smallest n ≥ 100 for which the accuracy on the
//!   post-drift part of the trailing window, `[max(P, P+n−500), P+n)`, is within 2
//!   points of that level (`None` if the stream ends first).

use serde::Serialize;

/// Samples per reported window.
pub const WINDOW: usize = 1000;
const RECOVERY_WINDOW: usize = 500;
const RECOVERY_MIN: usize = 100;
const RECOVERY_TOLERANCE: f64 = 0.02;

/// Recovery after one drift.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recovery {
    pub position: usize,
    pub pre_drift_accuracy: f64,
    /// Samples until the accuracy was back; `None` if it never was.
    pub samples: Option<usize>,
}

/// The scores of one run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scores {
    pub samples: usize,
    pub accuracy: f64,
    pub first_1000: f64,
    pub kappa: f64,
    pub windows: Vec<f64>,
    pub recoveries: Vec<Option<Recovery>>,
}

/// Scores `predicted` against `truth` (same length, stream order; labels below
/// `classes`; a prediction may be any value, e.g. `u32::MAX` for "none").
pub fn score(predicted: &[u32], truth: &[u32], classes: usize, drifts: &[usize]) -> Scores {
    assert_eq!(predicted.len(), truth.len(), "one prediction per label");
    let n = truth.len();
    let hits: Vec<u32> = predicted
        .iter()
        .zip(truth)
        .map(|(p, y)| u32::from(p == y))
        .collect();
    let mean = |s: &[u32]| {
        if s.is_empty() {
            0.0
        } else {
            s.iter().map(|&h| f64::from(h)).sum::<f64>() / s.len() as f64
        }
    };
    let windows = hits.chunks(WINDOW).map(mean).collect();
    let observed = mean(&hits);
    let mut pred_counts = vec![0f64; classes];
    let mut true_counts = vec![0f64; classes];
    for (&p, &y) in predicted.iter().zip(truth) {
        if let Some(c) = pred_counts.get_mut(p as usize) {
            *c += 1.0;
        }
        if let Some(c) = true_counts.get_mut(y as usize) {
            *c += 1.0;
        }
    }
    let nn = (n as f64) * (n as f64);
    let expected = if n == 0 {
        0.0
    } else {
        pred_counts
            .iter()
            .zip(&true_counts)
            .map(|(a, b)| a * b)
            .sum::<f64>()
            / nn
    };
    let kappa = if expected >= 1.0 {
        0.0
    } else {
        (observed - expected) / (1.0 - expected)
    };
    let recoveries = drifts.iter().map(|&p| recovery(&hits, p)).collect();
    Scores {
        samples: n,
        accuracy: observed,
        first_1000: mean(&hits[..n.min(WINDOW)]),
        kappa,
        windows,
        recoveries,
    }
}

fn recovery(hits: &[u32], p: usize) -> Option<Recovery> {
    let n = hits.len();
    if p < RECOVERY_WINDOW || p >= n {
        return None;
    }
    let sum = |s: &[u32]| s.iter().map(|&h| f64::from(h)).sum::<f64>();
    let pre = sum(&hits[p - RECOVERY_WINDOW..p]) / RECOVERY_WINDOW as f64;
    let samples = (RECOVERY_MIN..=n - p).find(|&m| {
        let lo = p.max((p + m).saturating_sub(RECOVERY_WINDOW));
        sum(&hits[lo..p + m]) / (p + m - lo) as f64 >= pre - RECOVERY_TOLERANCE
    });
    Some(Recovery {
        position: p,
        pre_drift_accuracy: pre,
        samples,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perfect_predictions_score_one_and_kappa_one() {
        let truth: Vec<u32> = (0..2500).map(|i| i % 3).collect();
        let s = score(&truth, &truth, 3, &[]);
        assert_eq!(s.accuracy, 1.0);
        assert_eq!(s.first_1000, 1.0);
        assert!((s.kappa - 1.0).abs() < 1e-12);
        assert_eq!(s.windows, vec![1.0, 1.0, 1.0]);
    }

    #[test]
    fn always_predicting_the_majority_has_kappa_zero() {
        // 75% class 0: accuracy 0.75, but no agreement beyond chance.
        let truth: Vec<u32> = (0..1000).map(|i| u32::from(i % 4 == 0)).collect();
        let s = score(&vec![0; 1000], &truth, 2, &[]);
        assert!((s.accuracy - 0.75).abs() < 1e-12);
        assert!(s.kappa.abs() < 1e-12, "{}", s.kappa);
    }

    #[test]
    fn kappa_matches_a_hand_computed_table() {
        // Confusion: (0,0)=20 (0,1)=5 (1,0)=10 (1,1)=15 → po 0.7, pe 0.5 → κ 0.4.
        let mut p = Vec::new();
        let mut y = Vec::new();
        for (pp, yy, n) in [(0, 0, 20), (0, 1, 5), (1, 0, 10), (1, 1, 15)] {
            p.extend(std::iter::repeat_n(pp, n));
            y.extend(std::iter::repeat_n(yy, n));
        }
        let s = score(&p, &y, 2, &[]);
        assert!((s.kappa - 0.4).abs() < 1e-12, "{}", s.kappa);
    }

    #[test]
    fn windows_cover_the_tail() {
        let truth = vec![1u32; 1500];
        let mut p = vec![1u32; 1500];
        p[1000..].fill(0);
        assert_eq!(score(&p, &truth, 2, &[]).windows, vec![1.0, 0.0]);
    }

    #[test]
    fn recovery_counts_samples_until_accuracy_is_back() {
        // Right before the drift at 1000 everything is right; 300 wrong after it,
        // then right again. The post-drift accuracy over [1000, 1000+m) reaches 0.98
        // only once the trailing 500 holds at most 10 misses: at m = 790.
        let n = 3000;
        let truth = vec![0u32; n];
        let mut p = vec![0u32; n];
        p[1000..1300].fill(1);
        let s = score(&p, &truth, 2, &[1000]);
        let r = s.recoveries[0].clone().unwrap();
        assert_eq!(r.pre_drift_accuracy, 1.0);
        assert_eq!(r.samples, Some(790));
    }

    #[test]
    fn an_unhurt_stream_recovers_at_the_minimum_and_a_broken_one_never() {
        let truth = vec![0u32; 2000];
        let s = score(&truth, &truth, 2, &[1000]);
        assert_eq!(s.recoveries[0].as_ref().unwrap().samples, Some(100));
        let mut p = truth.clone();
        p[1000..].fill(1);
        let s = score(&p, &truth, 2, &[1000, 100, 5000]);
        assert_eq!(s.recoveries[0].as_ref().unwrap().samples, None);
        // Too early for a pre-drift level, or past the end: not scored.
        assert_eq!(s.recoveries[1], None);
        assert_eq!(s.recoveries[2], None);
    }
}
