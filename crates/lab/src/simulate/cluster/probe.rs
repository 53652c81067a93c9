//! The k-NN spread probe: how long a label sent to one replica takes to change
//! another replica's k-NN vote.
//!
//! Each probe sends [`POINTS`] labelled examples (`POST /v1/feedback {"features":
//! X, "label": L}`) directly to replica A, then asks replica B about those points
//! (one `POST /v1/infer` with every X) every [`POLL_EVERY`] until B's k-NN vote
//! shows each label, and measures the time from A's last 202.
//!
//! Why these points. Every `/v1/infer` is also a prediction B may learn from: a
//! confident answer becomes a pseudo-label stored at X itself, and a few of those
//! would outvote the probe's label (pseudo-labels carry less trust, but an exact
//! duplicate's weight is huge whatever its trust). So each X is drawn near the
//! middle of the class centres (the mean of the stream's features, plus a small
//! seeded offset so each has its own), among the frozen model's least confident
//! candidates, and kept only if B's answer is well under the confidence gate (0.6,
//! the gate being 0.7 by default): polling then teaches B nothing at X. (A point
//! chosen at 0.74 took 100 polls' pseudo-labels and never showed its label.) The label sent is X's least likely
//! class in B's answer, so little of the blend is for it before, and the k-NN
//! voter's vote, all for it once the label is in B's memory (an exact duplicate
//! outweighs every other neighbour), moves it by the voter's whole share. The labels
//! are sent only once B's neighbours vote (path `ensemble`): in cold start (too few
//! experiences, as at the start or after a drift alarm prunes the memory) no label
//! could change the vote, and the probe would time the refill instead.
//!
//! What "B's k-NN vote shows the label" reads: the per-voter vote in the answer when
//! the server gives one (`votes.knn`, `voters.knn` or `knn`: the label is its top
//! class). `/v1/infer` gives none today, so it reads the label's probability in the
//! blend: it must have risen by half the k-NN voter's share of B's blend (Hedge's
//! weight, from B's `/v1/status`), for every point in the same answer. Measured
//! against probes whose labels were never sent, one point alone rose that far by
//! chance in 4 of 10 (the blend drifts as versions swap and the other voters learn),
//! after 0.6 to 8 s; the real labels rose by about the whole share at the first
//! poll. Requiring every point at once is what keeps chance out: none of 10
//! unlabelled four-point probes arrived, all of 49 labelled ones did. The weak spot
//! is a small share (Hedge gives the voter 0.05 at times): the rise it needs is then
//! within the blend's drift, which a per-voter vote would not leave to chance. Each
//! probe records what it read.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::time::Instant;

pub use super::anchor::Anchor;
use crate::model::Mlp;

/// First probe, seconds after the start of the load (the memory needs neighbours).
const FIRST_AT: Duration = Duration::from_secs(5);
/// Between two probes' starts.
pub const EVERY: Duration = Duration::from_secs(15);
/// How long a probe waits for replica B's neighbours to vote before it sends its
/// label anyway.
const WARM_WITHIN: Duration = Duration::from_secs(60);
/// Between two asks of replica B.
const POLL_EVERY: Duration = Duration::from_millis(200);
/// The server's default confidence gate is 0.7: answers at or above it become
/// pseudo-labels. A point is chosen under this, with room for the blend to drift
/// while it is polled.
const CHOOSE_UNDER: f64 = 0.6;
/// Rounds of candidates asked before a probe makes do with fewer points (at least
/// [`MIN_POINTS`]).
const ROUNDS: usize = 3;
const MIN_POINTS: usize = 2;
/// Points per probe.
const POINTS: usize = 4;
/// Candidates scored by the frozen model per round, and of those (the least
/// confident) asked of replica B, in one request.
const CANDIDATES: usize = 32;
const ASKED: usize = 12;

/// One labelled point of a probe.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    pub label: u32,
    /// B's confidence in its answer for X before the label.
    pub confidence_before: f64,
    /// The label's probability in B's answer before the label, and in its last
    /// answer while polling.
    pub p_before: f64,
    pub p_last: f64,
    /// A answered 202.
    pub accepted: bool,
}

/// One probe.
#[derive(Debug, Clone, Serialize)]
pub struct Probe {
    /// When replica A accepted the last label, seconds from the start of the load.
    pub t: f64,
    pub from: u16,
    pub to: u16,
    pub points: Vec<Point>,
    /// Labels A answered 202 (each one the trainer must learn).
    pub labels_accepted: u64,
    /// The k-NN voter's share of B's blend when the points were chosen.
    pub knn_share: f64,
    /// B's path (`ensemble`, `cold_start`, `fallback`) before the labels, and the
    /// polls after them on which the neighbours did not vote.
    pub path_before: String,
    pub polls_without_vote: u32,
    /// Seconds from A's last 202 until B's k-NN vote showed every label.
    pub spread_secs: Option<f64>,
    pub polls: u32,
    /// What was read: `knn_vote` (a per-voter vote in the answer) or `p_rise` (each
    /// label's probability in the answer); see `reached`.
    pub signal: &'static str,
    pub error: Option<String>,
}

fn argmax_json(v: &Value) -> Option<u32> {
    if let Some(label) = v.as_u64().or_else(|| v["label"].as_u64()) {
        return u32::try_from(label).ok();
    }
    let probs: Vec<f64> = v
        .as_array()?
        .iter()
        .map(|x| x.as_f64())
        .collect::<Option<_>>()?;
    let best = probs
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))?
        .0;
    u32::try_from(best).ok()
}

/// The class of a per-voter k-NN vote in a prediction (`votes.knn`, `voters.knn`
/// or `knn`), if the server gives one.
pub fn knn_vote(p: &Value) -> Option<u32> {
    [&p["votes"]["knn"], &p["voters"]["knn"], &p["knn"]]
        .into_iter()
        .find_map(argmax_json)
}

/// The answer's class probabilities.
fn probabilities(p: &Value) -> Option<Vec<f64>> {
    p["probabilities"]
        .as_array()?
        .iter()
        .map(Value::as_f64)
        .collect()
}

/// B's answer about a candidate X.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Answer {
    confidence: f64,
    /// The least likely class (the label the probe sends), and its probability.
    least: u32,
    p_least: f64,
}

/// Reads an answer; `None` without probabilities.
fn read_answer(p: &Value) -> Option<Answer> {
    let probs = probabilities(p)?;
    let confidence = probs.iter().copied().fold(f64::NAN, f64::max);
    let (least, p_least) = probs.iter().enumerate().min_by(|a, b| a.1.total_cmp(b.1))?;
    Some(Answer {
        confidence,
        least: least as u32,
        p_least: *p_least,
    })
}

/// Up to `n` of the answers, in order, whose confidence is under [`CHOOSE_UNDER`]:
/// polling X then stores nothing there.
fn pick(answers: &[Answer], n: usize) -> Vec<usize> {
    (0..answers.len())
        .filter(|&i| answers[i].confidence < CHOOSE_UNDER)
        .take(n)
        .collect()
}

/// Whether one answer from B (a prediction per point, in order) shows every
/// point's label in the k-NN vote, and what it read: the per-voter votes when the
/// answer has them (`knn_vote`); otherwise each label's probability, risen from its
/// value before by at least half the k-NN voter's share of the blend (`p_rise`).
fn reached(predictions: &[Value], points: &[Point], knn_share: f64) -> (bool, &'static str) {
    if predictions.len() != points.len() || points.is_empty() {
        return (false, "p_rise");
    }
    if predictions.iter().all(|p| knn_vote(p).is_some()) {
        let all = predictions
            .iter()
            .zip(points)
            .all(|(p, point)| knn_vote(p) == Some(point.label));
        return (all, "knn_vote");
    }
    let all = predictions.iter().zip(points).all(|(p, point)| {
        probabilities(p)
            .and_then(|probs| probs.get(point.label as usize).copied())
            .is_some_and(|q| q - point.p_before >= knn_share / 2.0)
    });
    (knn_share > 0.0 && all, "p_rise")
}

/// The k-NN voter's share of replica B's blend, from its `/v1/status`.
async fn knn_share(http: &reqwest::Client, url: &str) -> Option<f64> {
    let status: Value = http
        .get(format!("{url}/v1/status"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let weights = status["vote"]["weights"].as_object()?;
    let total: f64 = weights.values().filter_map(Value::as_f64).sum();
    (total > 0.0).then(|| weights.get("knn")?.as_f64().map(|k| k / total))?
}

/// What every probe shares.
#[derive(Clone)]
pub struct Prober {
    pub http: reqwest::Client,
    /// `(id, url)` of each replica.
    pub replicas: Vec<(u16, String)>,
    pub anchor: Arc<Anchor>,
    pub frozen: Arc<Mlp>,
    pub seed: u64,
    pub start: Instant,
    /// How long a probe waits for the vote before it gives up.
    pub give_up: Duration,
}

/// Probes from [`FIRST_AT`] every [`EVERY`] (one at a time) until `end`; each
/// result joins `out`.
pub fn spawn(
    prober: Prober,
    end: Instant,
    out: Arc<Mutex<Vec<Probe>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut at = prober.start + FIRST_AT;
        for k in 0u64.. {
            if at >= end {
                break;
            }
            tokio::time::sleep_until(at).await;
            let probe = prober.one(k).await;
            // A slow probe skips the slots it overran rather than bunching the next.
            at += EVERY;
            while at < Instant::now() {
                at += EVERY;
            }
            match &probe.error {
                Some(e) => tracing::warn!(k, error = e, "k-NN probe failed"),
                None => {
                    tracing::info!(k, spread_secs = ?probe.spread_secs, from = probe.from, to = probe.to, "k-NN probe")
                }
            }
            out.lock().push(probe);
        }
    })
}

impl Prober {
    async fn one(&self, k: u64) -> Probe {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ 0x9b0be ^ k.wrapping_mul(0x9E37_79B9));
        let n = self.replicas.len();
        let a = rng.random_range(0..n);
        let b = (a + rng.random_range(1..n.max(2))) % n;
        let (from, to) = (&self.replicas[a], &self.replicas[b]);
        let mut probe = Probe {
            t: 0.0,
            from: from.0,
            to: to.0,
            points: Vec::new(),
            labels_accepted: 0,
            knn_share: f64::NAN,
            path_before: String::new(),
            polls_without_vote: 0,
            spread_secs: None,
            polls: 0,
            signal: "p_rise",
            error: None,
        };
        // Until B's neighbours vote (its memory past the cold-start threshold, or
        // refilled after a drift alarm pruned it), a label cannot change its vote.
        // Asked about throwaway points, so that waiting teaches B nothing at X.
        let warm_by = Instant::now() + WARM_WITHIN;
        loop {
            let throwaway = self.anchor.draw(&mut rng);
            let Some(p) = self.ask(&to.1, &[throwaway], warm_by).await else {
                probe.error = Some(format!("replica {} did not answer", to.0));
                return probe;
            };
            probe.path_before = p[0]["path"].as_str().unwrap_or("").to_string();
            if p[0]["path"] == "ensemble" || Instant::now() >= warm_by {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let share = knn_share(&self.http, &to.1).await.unwrap_or(0.0);
        probe.knn_share = share;
        // Rounds of the frozen model's least confident candidates, until enough of
        // them are under the gate for B too.
        let mut xs: Vec<Vec<f32>> = Vec::new();
        for _ in 0..ROUNDS {
            let candidates = self.candidates(&mut rng);
            let Some(asked) = self
                .ask(&to.1, &candidates, Instant::now() + self.give_up)
                .await
            else {
                probe.error = Some(format!("replica {} did not answer", to.0));
                return probe;
            };
            let Some(answers) = asked.iter().map(read_answer).collect::<Option<Vec<_>>>() else {
                probe.error = Some(format!("unreadable answers from replica {}", to.0));
                return probe;
            };
            for i in pick(&answers, POINTS - xs.len()) {
                xs.push(candidates[i].clone());
                probe.points.push(Point {
                    label: answers[i].least,
                    confidence_before: answers[i].confidence,
                    p_before: answers[i].p_least,
                    p_last: f64::NAN,
                    accepted: false,
                });
            }
            if xs.len() == POINTS {
                break;
            }
        }
        if xs.len() < MIN_POINTS {
            probe.error = Some(format!(
                "replica {} was confident (>= {CHOOSE_UNDER}) about all but {} of {} points",
                to.0,
                xs.len(),
                ROUNDS * ASKED
            ));
            return probe;
        }
        let mut accepted = Instant::now();
        for (x, point) in xs.iter().zip(probe.points.iter_mut()) {
            match self.label(&from.1, x, point.label).await {
                Ok(()) => {
                    point.accepted = true;
                    probe.labels_accepted += 1;
                    accepted = Instant::now();
                }
                Err(e) => {
                    probe.error = Some(format!("replica {}: {e}", from.0));
                    return probe;
                }
            }
        }
        probe.t = accepted.duration_since(self.start).as_secs_f64();
        let deadline = accepted + self.give_up;
        while Instant::now() < deadline {
            probe.polls += 1;
            if let Some(predictions) = self.ask(&to.1, &xs, deadline).await {
                if predictions.iter().any(|p| p["path"] != "ensemble") {
                    probe.polls_without_vote += 1;
                }
                for (p, point) in predictions.iter().zip(probe.points.iter_mut()) {
                    point.p_last = probabilities(p)
                        .and_then(|probs| probs.get(point.label as usize).copied())
                        .unwrap_or(f64::NAN);
                }
                let (yes, signal) = reached(&predictions, &probe.points, share);
                probe.signal = signal;
                if yes {
                    probe.spread_secs = Some(accepted.elapsed().as_secs_f64());
                    return probe;
                }
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
        probe
    }

    /// The frozen model's [`ASKED`] least confident of [`CANDIDATES`] fresh draws.
    fn candidates(&self, rng: &mut ChaCha8Rng) -> Vec<Vec<f32>> {
        let mut scored: Vec<(f32, Vec<f32>)> = (0..CANDIDATES)
            .map(|_| {
                let x = self.anchor.draw(rng);
                let confidence = self
                    .frozen
                    .forward(&x, 1)
                    .ok()
                    .map_or(1.0, |f| adaptserve_core::model::argmax(f.probs_row(0)).1);
                (confidence, x)
            })
            .collect();
        scored.sort_by(|a, b| a.0.total_cmp(&b.0));
        scored.into_iter().take(ASKED).map(|(_, x)| x).collect()
    }

    /// Sends the labelled example `(x, label)` to the replica at `url`, retrying a
    /// refused connection (a replica the chaos restarts) for the give-up time.
    async fn label(&self, url: &str, x: &[f32], label: u32) -> anyhow::Result<()> {
        let deadline = Instant::now() + self.give_up;
        loop {
            let sent = self
                .http
                .post(format!("{url}/v1/feedback"))
                .json(&json!({"features": x, "label": label}))
                .timeout(Duration::from_secs(10))
                .send()
                .await;
            match sent {
                Ok(r) if r.status() == 202 => return Ok(()),
                Ok(r) => {
                    let status = r.status();
                    let body = r.text().await.unwrap_or_default();
                    anyhow::bail!("answered {status}: {body}");
                }
                Err(e) if e.is_connect() && Instant::now() < deadline => {
                    tokio::time::sleep(POLL_EVERY).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Asks the replica at `url` about `xs` in one request, retrying until
    /// `deadline`; its predictions, or `None` if it never answered.
    async fn ask(&self, url: &str, xs: &[Vec<f32>], deadline: Instant) -> Option<Vec<Value>> {
        loop {
            let reply = self
                .http
                .post(format!("{url}/v1/infer"))
                .json(&json!({ "inputs": xs }))
                .timeout(Duration::from_secs(5))
                .send()
                .await;
            if let Ok(r) = reply
                && r.status() == 200
                && let Ok(v) = r.json::<Value>().await
                && let Some(predictions) = v["predictions"].as_array()
                && predictions.len() == xs.len()
            {
                return Some(predictions.clone());
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }
}

#[cfg(test)]
#[path = "probe_tests.rs"]
mod tests;
