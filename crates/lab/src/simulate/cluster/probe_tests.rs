//! The probe's pure parts: reading votes and probabilities, choosing the points,
//! judging whether the labels arrived.

use serde_json::json;

use super::*;

fn point(label: u32, p_before: f64) -> Point {
    Point {
        label,
        confidence_before: 0.5,
        p_before,
        p_last: f64::NAN,
        accepted: true,
    }
}

#[test]
fn the_knn_vote_is_read_where_the_answer_gives_one() {
    let p = json!({"label": 2, "votes": {"model": [0.1, 0.2, 0.7], "knn": [0.1, 0.8, 0.1]}});
    assert_eq!(knn_vote(&p), Some(1));
    assert_eq!(knn_vote(&json!({"knn": {"label": 0}})), Some(0));
    assert_eq!(knn_vote(&json!({"voters": {"knn": 3}})), Some(3));
    assert_eq!(knn_vote(&json!({"label": 2})), None);
    let points = [point(1, 0.9), point(0, 0.0)];
    let q = json!({"votes": {"knn": [0.9, 0.1, 0.0]}});
    assert_eq!(
        reached(&[p.clone(), q.clone()], &points, 0.2),
        (true, "knn_vote")
    );
    assert_eq!(reached(&[q, p], &points, 0.2), (false, "knn_vote"));
}

#[test]
fn without_votes_every_labels_probability_must_rise_by_half_the_share() {
    let p = json!({"label": 2, "probabilities": [0.1, 0.3, 0.5, 0.1]});
    let q = json!({"label": 0, "probabilities": [0.4, 0.3, 0.2, 0.1]});
    // Share 0.16: label 0 of p from 0.02 rose 0.08; label 3 of q from 0.0 rose 0.1.
    let points = [point(0, 0.02), point(3, 0.0)];
    assert_eq!(
        reached(&[p.clone(), q.clone()], &points, 0.16),
        (true, "p_rise")
    );
    // One point short of the rise is not enough.
    let points = [point(0, 0.03), point(3, 0.0)];
    assert!(!reached(&[p.clone(), q.clone()], &points, 0.16).0);
    // Nor a share of nothing, nor an answer missing a point.
    assert!(!reached(&[p.clone(), q], &[point(0, 0.0), point(3, 0.0)], 0.0).0);
    assert!(!reached(&[p], &[point(0, 0.0), point(3, 0.0)], 0.16).0);
}

#[test]
fn the_label_is_the_least_likely_class() {
    let p = json!({"label": 2, "probabilities": [0.2, 0.25, 0.5, 0.05]});
    let a = read_answer(&p).expect("readable");
    assert_eq!(a.least, 3);
    assert!((a.confidence - 0.5).abs() < 1e-9);
    assert!((a.p_least - 0.05).abs() < 1e-9);
    assert!(read_answer(&json!({"label": 0})).is_none());
}

fn answer(confidence: f64) -> Answer {
    Answer {
        confidence,
        least: 1,
        p_least: 0.05,
    }
}

#[test]
fn points_are_those_well_under_the_gate() {
    let answers = [
        answer(0.9),
        answer(0.55),
        answer(0.65),
        answer(0.4),
        answer(0.3),
    ];
    assert_eq!(pick(&answers, 2), [1, 3]);
    assert_eq!(pick(&answers, 4), [1, 3, 4]);
    assert!(pick(&[answer(0.69)], 4).is_empty());
    assert!(pick(&[], 4).is_empty());
}
