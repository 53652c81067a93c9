//! The k-NN spread probe: how long a label sent to one replica takes to change
//! another replica's k-NN vote.
//!
//! Each probe sends a labelled example (`POST /v1/feedback {"features": X, "label":
//! L}`) directly to replica A, then asks replica B about X (`POST /v1/infer`) every
//! [`POLL_EVERY`] until B's k-NN voter answers L, and measures the time from A's 202.
//!
//! Why X is an ambiguous point and L its runner-up class. Every `/v1/infer` is also a
//! prediction B may learn from: a confident answer becomes a pseudo-label stored at X
//! itself, and a few of those would outvote the probe's label (pseudo-labels carry
//! less trust, but an exact duplicate's weight is huge whatever its trust). So X is
//! drawn near the middle of the class centres (the mean of the stream's features,
//! plus a small seeded offset so each probe has its own X), the least confident of a
//! few candidates for the frozen model; B is asked about each once before the label
//! and X is kept only if B's answer falls under the confidence gate (0.7 by
//! default), so polling teaches B nothing until the label arrives. L is B's second
//! choice, and X is a close enough call (the top two within half the k-NN voter's
//! share of B's blend, read from B's `/v1/status`) that the voter's vote for L turns
//! the answer even when Hedge gives it a small weight. The label is sent
//! only once B's neighbours vote on X (path `ensemble`): in cold start (too few
//! experiences, as at the start or after a drift alarm prunes the memory) no label
//! could change the vote, and the probe would time the refill instead.
//!
//! What "the k-NN voter answers L" reads: a per-voter vote in the answer when the
//! server gives one (`votes.knn`, `voters.knn` or `knn`); otherwise the answered
//! label, which the voter's vote for L turns (at an exact duplicate its vote is all
//! L) unless its Hedge weight is too small. Each probe records which it read.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::super::stream::SyntheticStream;
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
/// The server's default confidence gate: answers at or above it become pseudo-labels.
const GATE: f64 = 0.7;
/// Samples the centre and spread of the features are taken from.
const ANCHOR_SAMPLES: u64 = 2000;
/// A probe's offset from the centre, in each feature's standard deviations.
const OFFSET_SDS: f64 = 0.15;
/// Candidates scored by the frozen model, and of those asked of replica B.
const CANDIDATES: usize = 20;
const ASKED: usize = 12;

/// One probe.
#[derive(Debug, Clone, Serialize)]
pub struct Probe {
    /// When replica A accepted the label, seconds from the start of the load.
    pub t: f64,
    pub from: u16,
    pub to: u16,
    pub label: u32,
    /// B's answer for X before the label, and its confidence.
    pub before: u32,
    pub before_confidence: f64,
    /// How far the runner-up (the label sent) was behind B's answer.
    pub margin_before: f64,
    /// The k-NN voter's share of B's blend when X was chosen.
    pub knn_share: f64,
    /// B's last answer for X while polling, and its confidence.
    pub last: Option<(u32, f64)>,
    /// A answered 202.
    pub accepted: bool,
    /// Seconds from A's 202 until B's k-NN voter answered the label.
    pub spread_secs: Option<f64>,
    pub polls: u32,
    /// B's path (`ensemble`, `cold_start`, `fallback`) when X was chosen, and the
    /// polls after the label on which the neighbours did not vote.
    pub path_before: String,
    pub polls_without_vote: u32,
    /// `knn_vote` (a per-voter vote in the answer) or `answer` (the answered label).
    pub signal: &'static str,
    pub error: Option<String>,
}

/// Where probes are drawn: the features' mean and standard deviation.
#[derive(Debug, Clone)]
pub struct Anchor {
    mean: Vec<f64>,
    sd: Vec<f64>,
}

impl Anchor {
    /// From the stream's first samples (labels are balanced, so the mean is near
    /// the middle of the class centres in every concept).
    pub fn of(stream: &SyntheticStream) -> Self {
        let rows: Vec<Vec<f32>> = (0..ANCHOR_SAMPLES)
            .map(|t| stream.sample(t).features)
            .collect();
        let d = rows.first().map_or(0, Vec::len);
        let n = rows.len() as f64;
        let mean: Vec<f64> = (0..d)
            .map(|j| rows.iter().map(|r| f64::from(r[j])).sum::<f64>() / n)
            .collect();
        let sd = (0..d)
            .map(|j| {
                (rows
                    .iter()
                    .map(|r| (f64::from(r[j]) - mean[j]).powi(2))
                    .sum::<f64>()
                    / n)
                    .sqrt()
            })
            .collect();
        Self { mean, sd }
    }

    /// A point near the centre.
    fn draw(&self, rng: &mut ChaCha8Rng) -> Vec<f32> {
        self.mean
            .iter()
            .zip(&self.sd)
            .map(|(m, s)| (m + OFFSET_SDS * s * rng.sample::<f64, _>(StandardNormal)) as f32)
            .collect()
    }
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

/// The class the k-NN voter gives for a prediction, and where it was read: a
/// per-voter vote if the answer has one, else the answered label.
pub fn knn_label(p: &Value) -> (Option<u32>, &'static str) {
    for vote in [&p["votes"]["knn"], &p["voters"]["knn"], &p["knn"]] {
        if let Some(label) = argmax_json(vote) {
            return (Some(label), "knn_vote");
        }
    }
    (
        p["label"].as_u64().and_then(|l| u32::try_from(l).ok()),
        "answer",
    )
}

/// B's answer about a candidate X.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Answer {
    label: u32,
    confidence: f64,
    /// The runner-up class, and how far behind the answer it is.
    second: u32,
    margin: f64,
}

/// Reads an answer; `None` without a label and probabilities.
fn read_answer(p: &Value) -> Option<Answer> {
    let probs: Vec<f64> = p["probabilities"]
        .as_array()?
        .iter()
        .map(|x| x.as_f64())
        .collect::<Option<_>>()?;
    let label = u32::try_from(p["label"].as_u64()?).ok()?;
    let confidence = *probs.get(label as usize)?;
    let (second, p2) = probs
        .iter()
        .enumerate()
        .filter(|&(c, _)| c as u32 != label)
        .max_by(|a, b| a.1.total_cmp(b.1))?;
    Some(Answer {
        label,
        confidence,
        second: second as u32,
        margin: confidence - p2,
    })
}

/// Whether `a` is a good X: under the gate, and close enough between its top two
/// classes that the k-NN voter's share of the blend (`knn_share`), all for the
/// runner-up, surely turns the answer (half of it covers a neighbourhood that was
/// already partly for the answer, and the other voters' drift meanwhile).
fn good(a: &Answer, knn_share: f64) -> bool {
    a.confidence < GATE && a.margin < knn_share / 2.0
}

/// The best of the answers asked: the first good one, else the closest call under
/// the gate, else the least confident.
fn pick(answers: &[Answer], knn_share: f64) -> Option<usize> {
    let best = |of: &mut dyn Iterator<Item = (usize, &Answer)>, key: fn(&Answer) -> f64| {
        of.min_by(|a, b| key(a.1).total_cmp(&key(b.1)))
            .map(|(i, _)| i)
    };
    answers
        .iter()
        .position(|a| good(a, knn_share))
        .or_else(|| {
            best(
                &mut answers
                    .iter()
                    .enumerate()
                    .filter(|(_, a)| a.confidence < GATE),
                |a| a.margin,
            )
        })
        .or_else(|| best(&mut answers.iter().enumerate(), |a| a.confidence))
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
            label: 0,
            before: 0,
            before_confidence: f64::NAN,
            margin_before: f64::NAN,
            knn_share: f64::NAN,
            last: None,
            accepted: false,
            spread_secs: None,
            polls: 0,
            path_before: String::new(),
            polls_without_vote: 0,
            signal: "answer",
            error: None,
        };
        let deadline = Instant::now() + self.give_up;
        // The frozen model's least confident candidates, asked of B in that order.
        let mut candidates: Vec<(f32, Vec<f32>)> = (0..CANDIDATES)
            .map(|_| {
                let x = self.anchor.draw(&mut rng);
                let confidence = self
                    .frozen
                    .forward(&x, 1)
                    .ok()
                    .map_or(1.0, |f| adaptserve_core::model::argmax(f.probs_row(0)).1);
                (confidence, x)
            })
            .collect();
        candidates.sort_by(|a, b| a.0.total_cmp(&b.0));
        // Until B's neighbours vote (its memory past the cold-start threshold, or
        // refilled after a drift alarm pruned it), a label cannot change its vote.
        // Asked about throwaway points, so that waiting teaches B nothing at X.
        let warm_by = Instant::now() + WARM_WITHIN;
        loop {
            let throwaway = self.anchor.draw(&mut rng);
            let Some(p) = self.ask(&to.1, &throwaway, warm_by.max(deadline)).await else {
                probe.error = Some(format!("replica {} did not answer", to.0));
                return probe;
            };
            probe.path_before = p["path"].as_str().unwrap_or("").to_string();
            if p["path"] == "ensemble" || Instant::now() >= warm_by {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let deadline = Instant::now() + self.give_up;
        let share = knn_share(&self.http, &to.1).await.unwrap_or(0.0);
        probe.knn_share = share;
        let mut asked: Vec<(Vec<f32>, Answer)> = Vec::new();
        for (_, x) in candidates.into_iter().take(ASKED) {
            let Some(p) = self.ask(&to.1, &x, deadline).await else {
                probe.error = Some(format!("replica {} did not answer", to.0));
                return probe;
            };
            let Some(answer) = read_answer(&p) else {
                probe.error = Some(format!("unreadable answer from replica {}: {p}", to.0));
                return probe;
            };
            asked.push((x, answer));
            if good(&answer, share) {
                break;
            }
        }
        let answers: Vec<Answer> = asked.iter().map(|a| a.1).collect();
        let Some(i) = pick(&answers, share) else {
            probe.error = Some("no candidate".into());
            return probe;
        };
        let (x, before) = asked.swap_remove(i);
        let label = before.second;
        (
            probe.before,
            probe.before_confidence,
            probe.margin_before,
            probe.label,
        ) = (before.label, before.confidence, before.margin, label);
        let accepted = loop {
            let sent = self
                .http
                .post(format!("{}/v1/feedback", from.1))
                .json(&json!({"features": x, "label": label}))
                .timeout(Duration::from_secs(10))
                .send()
                .await;
            match sent {
                Ok(r) if r.status() == 202 => break Instant::now(),
                Ok(r) => {
                    let status = r.status();
                    let body = r.text().await.unwrap_or_default();
                    probe.error = Some(format!("replica {} answered {status}: {body}", from.0));
                    return probe;
                }
                Err(e) if e.is_connect() && Instant::now() < deadline => {
                    tokio::time::sleep(POLL_EVERY).await;
                }
                Err(e) => {
                    probe.error = Some(format!("replica {}: {e}", from.0));
                    return probe;
                }
            }
        };
        probe.accepted = true;
        probe.t = accepted.duration_since(self.start).as_secs_f64();
        let deadline = accepted + self.give_up;
        while Instant::now() < deadline {
            probe.polls += 1;
            if let Some(p) = self.ask(&to.1, &x, deadline).await {
                if p["path"] != "ensemble" {
                    probe.polls_without_vote += 1;
                }
                probe.last = read_answer(&p).map(|a| (a.label, a.confidence));
                let (knn, signal) = knn_label(&p);
                probe.signal = signal;
                if knn == Some(label) {
                    probe.spread_secs = Some(accepted.elapsed().as_secs_f64());
                    return probe;
                }
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
        probe
    }

    /// Asks the replica at `url` about `x`, retrying until `deadline`; the
    /// prediction, or `None` if it never answered.
    async fn ask(&self, url: &str, x: &[f32], deadline: Instant) -> Option<Value> {
        loop {
            let reply = self
                .http
                .post(format!("{url}/v1/infer"))
                .json(&json!({"inputs": [x]}))
                .timeout(Duration::from_secs(5))
                .send()
                .await;
            if let Ok(r) = reply
                && r.status() == 200
                && let Ok(v) = r.json::<Value>().await
            {
                return Some(v["predictions"][0].clone());
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulate::stream::StreamConfig;

    #[test]
    fn the_knn_vote_is_read_where_the_answer_gives_one() {
        let p = json!({"label": 2, "votes": {"model": [0.1, 0.2, 0.7], "knn": [0.1, 0.8, 0.1]}});
        assert_eq!(knn_label(&p), (Some(1), "knn_vote"));
        let p = json!({"label": 2, "knn": {"label": 0}});
        assert_eq!(knn_label(&p), (Some(0), "knn_vote"));
        let p = json!({"label": 2, "voters": {"knn": 3}});
        assert_eq!(knn_label(&p), (Some(3), "knn_vote"));
        // No breakdown: the answered label.
        let p = json!({"label": 2, "probabilities": [0.1, 0.2, 0.7]});
        assert_eq!(knn_label(&p), (Some(2), "answer"));
    }

    #[test]
    fn the_probe_label_is_the_runner_up() {
        let p = json!({"label": 2, "probabilities": [0.1, 0.3, 0.5, 0.1]});
        let a = read_answer(&p).expect("readable");
        assert_eq!((a.label, a.second), (2, 1));
        assert!((a.confidence - 0.5).abs() < 1e-9);
        assert!((a.margin - 0.2).abs() < 1e-9);
        assert!(read_answer(&json!({"label": 0})).is_none());
    }

    fn answer(confidence: f64, margin: f64) -> Answer {
        Answer {
            label: 0,
            confidence,
            second: 1,
            margin,
        }
    }

    #[test]
    fn x_is_a_close_call_the_neighbours_can_turn() {
        // k-NN share 0.2: a margin under 0.1 is good.
        let answers = [answer(0.5, 0.3), answer(0.45, 0.08), answer(0.4, 0.05)];
        assert_eq!(pick(&answers, 0.2), Some(1), "the first good one");
        // None good: the closest call under the gate.
        let answers = [answer(0.5, 0.3), answer(0.8, 0.01), answer(0.6, 0.2)];
        assert_eq!(pick(&answers, 0.2), Some(2));
        // All confident: the least confident (one pseudo-label at X at most).
        let answers = [answer(0.9, 0.8), answer(0.75, 0.5)];
        assert_eq!(pick(&answers, 0.2), Some(1));
        assert_eq!(pick(&[], 0.2), None);
    }

    #[test]
    fn probes_are_drawn_near_the_centre_and_differ() {
        let stream = SyntheticStream::new(StreamConfig::default());
        let anchor = Anchor::of(&stream);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let (a, b) = (anchor.draw(&mut rng), anchor.draw(&mut rng));
        assert_ne!(a, b);
        for x in [&a, &b] {
            for ((v, m), s) in x.iter().zip(&anchor.mean).zip(&anchor.sd) {
                assert!(
                    (f64::from(*v) - m).abs() <= 5.0 * OFFSET_SDS * s + 1e-3,
                    "{v} {m} {s}"
                );
            }
        }
    }
}
