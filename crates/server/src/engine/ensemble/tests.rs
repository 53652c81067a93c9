//! The ensemble's rules, checked with stand-in voters whose answers are known, and
//! the registry's order, which the status JSON and the pending record rely on.

use super::*;

/// A voter that answers `class` with certainty, or abstains.
#[derive(Debug)]
struct Fixed {
    name: &'static str,
    class: Option<usize>,
    required: bool,
}

impl Voter for Fixed {
    fn name(&self) -> &'static str {
        self.name
    }

    fn vote(&self, row: &Row<'_>, counts: bool) -> Option<Vec<f32>> {
        let class = self.class.filter(|_| counts)?;
        let mut p = vec![0.0; row.classes()];
        p[class] = 1.0;
        Some(p)
    }

    fn learn(&self, _example: &Example<'_>) {}

    fn required(&self) -> bool {
        self.required
    }
}

const NAMES: [&str; 8] = ["a", "b", "c", "d", "e", "f", "g", "h"];

/// An ensemble of [`Fixed`] voters: the first answers class 0, the second is required
/// and answers class `second` (or abstains), the others answer class 1.
fn stand_ins(second: Option<usize>) -> Ensemble {
    let seats = std::array::from_fn(|i| {
        Seat::new(Fixed {
            name: NAMES[i],
            class: match i {
                0 => Some(0),
                1 => second,
                _ => Some(1),
            },
            required: i == 1,
        })
    });
    let config = EngineConfig {
        hedge_eta: 0.5,
        hedge_floor: 0.05,
        ..EngineConfig::default()
    };
    Ensemble::seated(seats, 0.5, &config)
}

fn row(p_model: &[f32]) -> Row<'_> {
    Row {
        features: &[],
        p_model,
        neighbors: None,
    }
}

/// A small shape for the registered voters.
fn setup(config: &EngineConfig) -> Setup<'_> {
    Setup {
        input_dim: 3,
        classes: 2,
        config,
    }
}

#[test]
fn the_registry_seats_the_voters_in_order_and_keeps_an_empty_seat_named() {
    let names = |e: &Ensemble| e.report().voters.map(|v| v.name);
    let all = Ensemble::new(&setup(&EngineConfig::default()), 0.5);
    assert_eq!(names(&all), ["model", "knn", "linear", "forest"]);
    let third = 0.5 / 3.0;
    assert_eq!(
        all.report().voters.map(|v| v.weight),
        [0.5, third, third, third]
    );
    // The linear voter turned off: its seat keeps its name, at weight 0.
    let config = EngineConfig {
        linear_voter: false,
        ..EngineConfig::default()
    };
    let without = Ensemble::new(&setup(&config), 0.5);
    assert_eq!(names(&without), ["model", "knn", "linear", "forest"]);
    assert_eq!(without.report().voters[2].weight, 0.0);
    assert_eq!(without.report().voters[2].accuracy(), None);
}

#[test]
fn hedge_moves_the_weight_to_the_voter_that_is_right() {
    let e = stand_ins(Some(1));
    let before = e.report();
    assert_eq!(before.lambda(), 0.5);
    // Label 1 every time: the model (class 0) is always wrong, the others right.
    for _ in 0..50 {
        let ballot = e.vote(&row(&[1.0, 0.0]));
        e.score(&ballot.votes, 1);
    }
    let after = e.report();
    assert!(after.lambda() < 0.1, "λ = {}", after.lambda());
    assert!(after.lambda() >= 0.05 - 1e-6, "floor: {}", after.lambda());
    for (b, a) in before.voters.iter().zip(&after.voters).skip(1) {
        assert!(
            a.weight > b.weight,
            "{} {} -> {}",
            a.name,
            b.weight,
            a.weight
        );
    }
    assert_eq!(after.voters[0].accuracy(), Some(0.0));
    assert!(after.voters[1..].iter().all(|v| v.accuracy() == Some(1.0)));
    assert!(after.voters.iter().all(|v| v.scored == 50));
    // The blend now follows the voters that were right.
    let ballot = e.vote(&row(&[1.0, 0.0]));
    assert!(ballot.probs[1] > 0.9, "{:?}", ballot.probs);
}

#[test]
fn without_its_required_voter_the_ensemble_leaves_the_answer_to_the_model() {
    let e = stand_ins(None);
    let ballot = e.vote(&row(&[0.3, 0.7]));
    assert_eq!(ballot.probs, [0.3, 0.7]);
    assert_eq!(ballot.votes, Votes::model_only(vec![1.0, 0.0]));
    // A label on such a row scores the model alone and moves no weight.
    let before = e.report();
    e.score(&ballot.votes, 0);
    let after = e.report();
    assert_eq!(
        after.voters.map(|v| v.weight),
        before.voters.map(|v| v.weight)
    );
    assert_eq!(after.voters.map(|v| v.scored)[..2], [1, 0]);
}

#[test]
fn the_status_json_names_every_voter() {
    let e = stand_ins(Some(1));
    let ballot = e.vote(&row(&[1.0, 0.0]));
    e.score(&ballot.votes, 0);
    let report = e.report();
    let weights = report.weights();
    let accuracy = report.accuracies();
    for v in &report.voters {
        assert_eq!(weights[v.name], v.weight);
        assert_eq!(accuracy[v.name], v.accuracy());
    }
    assert_eq!(accuracy["a"], Some(1.0));
    assert_eq!(accuracy["b"], Some(0.0));
    assert_eq!(weights.len(), VOTERS);
}
