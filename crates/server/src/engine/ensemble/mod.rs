//! The adaptive ensemble: its voters, the Hedge weights that mix them, and what each
//! has earned.
//!
//! Why a trait and a registry: every voter answers the same question (a class
//! distribution for a row, or an abstention) and is judged the same way (Hedge on
//! labelled feedback, its own accuracy in `/v1/status`). With that written once here,
//! a voter has only to vote and learn: a new one is a module implementing [`Voter`]
//! and one line in [`REGISTRY`], and the blend, the Hedge step, the pending record,
//! the per-voter accuracy and the status JSON follow from the registry.
//!
//! Where a vote comes from. Per row the engine gathers what only it can: the model's
//! distribution, from the forward pass the model thread batches across requests, and
//! the neighbours, from the k-NN search it runs under the breaker and a timeout (a
//! failure changes the row's path). Both arrive in the [`Row`] beside the features.
//! The model's and the neighbours' voters read their vote from it; the linear voter
//! and the forest compute theirs from the features. All four answer through the same
//! [`Voter::vote`]. Likewise the model and the memory learn from the update log (the
//! worker trains the network, the log feeds the memory in order), so their
//! [`Voter::learn`] does nothing, while the linear voter and the forest learn in place.
//! A voter's statistics (its Hedge weight, its accuracy on joined labels) are kept by
//! its [`Seat`] here, not by the voter: they are measured the same way for every
//! voter, from outside, and reported as [`VoterStats`].
//!
//! The rules of the vote (docs/ARCHITECTURE.md, section 1):
//!
//! - The first voter, the model, is the base: it votes on every row, and its answer
//!   is the row's when the ensemble does not vote.
//! - The ensemble votes only when every [`Voter::required`] voter votes: the
//!   neighbours, who abstain on cold start and fallback rows (no search) and when
//!   the neighbours found carry no usable weight. Once one abstains, the voters
//!   after it are told their vote will not count; they still see the row (the linear
//!   voter's standardiser counts every row served) but skip the work of a vote, and
//!   only the base's vote is kept.
//! - Hedge learns from labelled feedback only, and only on rows the ensemble voted on
//!   (on the others only the base voted, and Hedge needs two).
//!
//! Cost on the request path: one call per voter, one vector per vote cast (the
//! pending map keeps them for the label) and one for the answer. The ensemble takes
//! no lock of its own: Hedge's weights are atomics, and each voter guards its own
//! state.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use super::vote::{Hedge, blend, zero_one_loss};
use super::{forest, knn_voter, linear, model_voter};
use crate::config::EngineConfig;
use crate::knn::Neighbor;

#[cfg(test)]
mod tests;

/// How a voter takes its seat: built from the setup, or an empty seat when config
/// turns it off.
pub type Enlist = fn(&Setup<'_>) -> Seat;

/// Every voter, in the order of Hedge's weights, the pending record and the status
/// JSON. The model comes first: it is the base (see the module docs). A new voter is a
/// module of `engine` implementing [`Voter`], and a line here.
const REGISTRY: &[Enlist] = &[
    model_voter::enlist,
    knn_voter::enlist,
    linear::enlist,
    forest::enlist,
];

/// How many voters there are.
pub const VOTERS: usize = REGISTRY.len();

/// The base voter's place: the model's.
const BASE: usize = 0;

/// One voter of the ensemble. Called on the request path: an implementation does no
/// I/O and holds no lock beyond its own short one.
pub trait Voter: Send + Sync + std::fmt::Debug {
    /// Its key in `/v1/status`'s `vote.weights` and `vote.accuracy`.
    fn name(&self) -> &'static str;

    /// Its class distribution for `row` (`row.classes()` values), or `None` to
    /// abstain. `counts` is false once the ensemble knows it will not vote on the row:
    /// the voter may still look at the row, but its answer is dropped, so it need not
    /// work one out.
    fn vote(&self, row: &Row<'_>, counts: bool) -> Option<Vec<f32>>;

    /// Learns one labelled example, once per accepted label.
    fn learn(&self, example: &Example<'_>);

    /// True if the ensemble votes only on rows this voter votes on.
    fn required(&self) -> bool {
        false
    }
}

/// What the engine knows of one row when it asks the voters.
#[derive(Debug, Clone, Copy)]
pub struct Row<'a> {
    /// The raw features, validated: finite and of the model's input width.
    pub features: &'a [f32],
    /// The model's distribution from the batched forward pass.
    pub p_model: &'a [f32],
    /// The neighbours the k-NN search found; `None` when no search ran (cold start,
    /// an open breaker) or it failed.
    pub neighbors: Option<&'a [Neighbor]>,
}

impl Row<'_> {
    /// How many classes a vote has.
    pub fn classes(&self) -> usize {
        self.p_model.len()
    }
}

/// A labelled example, as the voters learn it.
#[derive(Debug, Clone, Copy)]
pub struct Example<'a> {
    /// The raw features, validated like a served row's.
    pub features: &'a [f32],
    pub label: usize,
    /// Whether the row was served before its label came (a delayed label joined to
    /// its prediction), and so was seen by [`Voter::vote`]; not so for a labelled
    /// example sent whole.
    pub served: bool,
}

/// What a voter is built for.
#[derive(Debug, Clone, Copy)]
pub struct Setup<'a> {
    pub input_dim: usize,
    pub classes: usize,
    pub config: &'a EngineConfig,
}

/// A voter's place in the ensemble, with what it has earned there. A voter turned off
/// in config keeps an empty seat: its name stays in `/v1/status`, its weight at 0.
#[derive(Debug)]
pub struct Seat {
    name: &'static str,
    voter: Option<Box<dyn Voter>>,
    /// Joined labels on which it voted, and those its own top class got right: which
    /// voter earns its Hedge weight.
    scored: AtomicU64,
    correct: AtomicU64,
}

impl Seat {
    /// `voter`'s seat.
    pub fn new(voter: impl Voter + 'static) -> Self {
        Self::with(voter.name(), Some(Box::new(voter)))
    }

    /// The seat of the voter `name`, turned off in config.
    pub fn empty(name: &'static str) -> Self {
        Self::with(name, None)
    }

    fn with(name: &'static str, voter: Option<Box<dyn Voter>>) -> Self {
        Self {
            name,
            voter,
            scored: AtomicU64::new(0),
            correct: AtomicU64::new(0),
        }
    }
}

/// Each voter's distribution for one row, in registry order; `None` where it did not
/// vote. The base's is always there.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Votes([Option<Vec<f32>>; VOTERS]);

impl Votes {
    /// Voter `voter`'s distribution, if it voted.
    pub fn get(&self, voter: usize) -> Option<&[f32]> {
        self.0.get(voter)?.as_deref()
    }

    /// Every voter's distribution, in registry order.
    pub fn iter(&self) -> impl Iterator<Item = Option<&[f32]>> {
        self.0.iter().map(Option::as_deref)
    }

    /// The buffers of the votes cast: what they hold on the heap.
    pub fn vecs(&self) -> impl Iterator<Item = &Vec<f32>> {
        self.0.iter().flatten()
    }

    /// Only the model voted, with `p`.
    #[cfg(test)]
    pub fn model_only(p: Vec<f32>) -> Self {
        let mut votes = Self::default();
        votes.0[BASE] = Some(p);
        votes
    }
}

impl From<[Option<Vec<f32>>; VOTERS]> for Votes {
    fn from(votes: [Option<Vec<f32>>; VOTERS]) -> Self {
        Self(votes)
    }
}

/// The ensemble's answer for one row.
#[derive(Debug)]
pub struct Ballot {
    /// The class distribution answered.
    pub probs: Vec<f32>,
    /// The votes it came from, kept for the label.
    pub votes: Votes,
}

/// The voters, their Hedge weights and their scores. Shared by every request.
#[derive(Debug)]
pub struct Ensemble {
    seats: [Seat; VOTERS],
    hedge: Hedge<VOTERS>,
}

impl Ensemble {
    /// The registered voters, built for `setup`; the model's weight starts at
    /// `model_weight`, the others share the rest.
    pub fn new(setup: &Setup<'_>, model_weight: f32) -> Self {
        let seats = std::array::from_fn(|i| REGISTRY[i](setup));
        Self::seated(seats, model_weight, setup.config)
    }

    /// An ensemble of `seats`, in their order.
    fn seated(seats: [Seat; VOTERS], model_weight: f32, config: &EngineConfig) -> Self {
        let enabled = seats.each_ref().map(|s| s.voter.is_some());
        Self {
            hedge: Hedge::new(model_weight, config.hedge_eta, config.hedge_floor, enabled),
            seats,
        }
    }

    /// Asks every voter about `row` and answers with the Hedge blend of their votes,
    /// or with the model's distribution when a required voter abstained.
    pub fn vote(&self, row: &Row<'_>) -> Ballot {
        let mut votes: [Option<Vec<f32>>; VOTERS] = Default::default();
        let mut counts = true;
        for (slot, seat) in votes.iter_mut().zip(&self.seats) {
            let Some(voter) = &seat.voter else { continue };
            *slot = voter.vote(row, counts);
            counts &= slot.is_some() || !voter.required();
        }
        if !counts {
            for slot in votes.iter_mut().skip(BASE + 1) {
                *slot = None;
            }
            return Ballot {
                probs: row.p_model.to_vec(),
                votes: Votes(votes),
            };
        }
        let mut probs = vec![0.0; row.classes()];
        blend(
            self.hedge.weights(),
            std::array::from_fn(|i| votes[i].as_deref()),
            &mut probs,
        );
        Ballot {
            probs,
            votes: Votes(votes),
        }
    }

    /// Every voter learns `example`, in registry order.
    pub fn learn(&self, example: &Example<'_>) {
        for voter in self.seats.iter().filter_map(|s| s.voter.as_deref()) {
            voter.learn(example);
        }
    }

    /// Judges the `votes` a prediction was answered from on its true `label`: one
    /// Hedge step, and each voter's score.
    pub fn score(&self, votes: &Votes, label: usize) {
        // The zero-one loss is Hedge's loss and, at 0, a right answer for the score.
        let losses: [Option<f32>; VOTERS] =
            std::array::from_fn(|i| votes.get(i).map(|p| zero_one_loss(p, label)));
        self.hedge.update(losses);
        for (seat, loss) in self.seats.iter().zip(losses) {
            if let Some(loss) = loss {
                seat.scored.fetch_add(1, Ordering::Relaxed);
                if loss == 0.0 {
                    seat.correct.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Each voter's name, weight and score, for `/v1/status`.
    pub fn report(&self) -> VoteReport {
        let weights = self.hedge.weights();
        VoteReport {
            voters: std::array::from_fn(|i| {
                let seat = &self.seats[i];
                VoterStats {
                    name: seat.name,
                    weight: weights[i],
                    scored: seat.scored.load(Ordering::Relaxed),
                    correct: seat.correct.load(Ordering::Relaxed),
                }
            }),
        }
    }
}

/// One voter as `/v1/status` reports it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VoterStats {
    pub name: &'static str,
    /// Its Hedge weight (0 for a voter turned off).
    pub weight: f32,
    /// Joined labels on which it voted, and those its top class got right.
    pub scored: u64,
    pub correct: u64,
}

impl VoterStats {
    /// Its own accuracy on the labels joined while it voted; `None` before the first.
    pub fn accuracy(&self) -> Option<f64> {
        (self.scored > 0).then(|| self.correct as f64 / self.scored as f64)
    }
}

/// The voters as `/v1/status` reports them, in registry order.
#[derive(Debug, Clone)]
pub struct VoteReport {
    pub voters: [VoterStats; VOTERS],
}

impl VoteReport {
    /// The model's weight λ.
    pub fn lambda(&self) -> f32 {
        self.voters[BASE].weight
    }

    /// `{name: weight}`: `vote.weights` of `/v1/status`.
    pub fn weights(&self) -> BTreeMap<&'static str, f32> {
        self.voters.iter().map(|v| (v.name, v.weight)).collect()
    }

    /// `{name: accuracy or null}`: `vote.accuracy` of `/v1/status`.
    pub fn accuracies(&self) -> BTreeMap<&'static str, Option<f64>> {
        self.voters.iter().map(|v| (v.name, v.accuracy())).collect()
    }
}
