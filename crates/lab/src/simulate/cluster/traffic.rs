//! The open-loop load through the load balancer: the single-server run's stream,
//! schedule and scoring (request `i` sent at `start + i/rate`, its latency measured
//! from then; its label sent back `--label-delay` later for `--label-fraction` of
//! them; each answer scored against the frozen model in-process), with what a
//! cluster adds:
//!
//! - The label goes back through the load balancer too, so it often reaches another
//!   replica than the one that answered: HAProxy names the replica of each answer
//!   (`X-Served-By`), and the run counts the labels that crossed.
//! - A refused label (404) is recorded with when its prediction was answered and by
//!   which replica; whether a kill explains it is decided at the end
//!   (`checks::classify`), once every recovery has been measured.
//! - A label with no HTTP answer at all is counted apart: the replica may have
//!   accepted it before the connection broke, so it is neither accepted nor refused.
//!
//! Only what accepted nothing is retried: a refused connection (nothing reached a
//! replica) and a label answered 503 (the replica could not reach the cluster's
//! store, and says to retry), each for up to [`RETRY_FOR`]. HAProxy itself retries
//! a request that met a dead replica.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::super::SimulateArgs;
use super::super::load::{Counters, Scores};
use super::super::stream::SyntheticStream;
use super::topology::served_by;
use crate::model::Mlp;

/// Most requests in flight before new ones count as failed (the simulator's own
/// memory bound when nothing answers).
const MAX_IN_FLIGHT: u64 = 20_000;
/// How long a refused connection to the load balancer is retried.
const RETRY_FOR: Duration = Duration::from_secs(60);

/// A label the cluster refused (404).
#[derive(Debug, Clone, Serialize)]
pub struct Refusal {
    pub request_id: u64,
    /// When its prediction was answered, in seconds from the start.
    pub answered_t: f64,
    /// The replica that answered the prediction, if the load balancer said.
    pub answered_by: Option<u16>,
    /// When the label was sent.
    pub label_t: f64,
    /// The replica that refused it.
    pub refused_by: Option<u16>,
}

/// What the load measured, shared by its tasks.
#[derive(Default)]
pub struct Tally {
    /// Requests and labels: sent, answered, failed, in flight, accepted.
    pub counters: Counters,
    /// Accepted labels that went to another replica than their prediction's.
    pub cross_replica: AtomicU64,
    /// Accepted labels that went to the same replica.
    pub same_replica: AtomicU64,
    /// Labels that got no HTTP answer (possibly accepted).
    pub unanswered: AtomicU64,
    pub refusals: Mutex<Vec<Refusal>>,
    /// Predictions answered per replica.
    pub answered_by: Mutex<BTreeMap<u16, u64>>,
    /// Label attempts answered 503 and sent again.
    pub retried_503: AtomicU64,
    /// Labels waiting for their delay or their answer.
    pub labels_in_flight: AtomicU64,
}

/// Everything a request task needs.
#[derive(Clone)]
pub struct Shared {
    pub http: reqwest::Client,
    pub lb: String,
    pub stream: Arc<SyntheticStream>,
    pub tally: Arc<Tally>,
    pub scores: Arc<Mutex<Scores>>,
    pub frozen: Arc<Mlp>,
    pub start: Instant,
}

/// Starts the generator: requests from `start` until `end`.
pub fn spawn(args: &SimulateArgs, shared: Shared, end: Instant) -> tokio::task::JoinHandle<()> {
    let (rate, fraction, delay, seed) =
        (args.rate, args.label_fraction, args.label_delay, args.seed);
    tokio::spawn(async move {
        let mut labels = ChaCha8Rng::seed_from_u64(seed ^ 0x1abe1);
        for i in 0u64.. {
            let at = shared.start + Duration::from_secs_f64(i as f64 / rate);
            if at >= end {
                break;
            }
            tokio::time::sleep_until(at).await;
            let counters = &shared.tally.counters;
            counters.sent.fetch_add(1, Ordering::Relaxed);
            if counters.in_flight.load(Ordering::Relaxed) >= MAX_IN_FLIGHT {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let feedback = labels.random::<f64>() < fraction;
            counters.in_flight.fetch_add(1, Ordering::Relaxed);
            let shared = shared.clone();
            tokio::spawn(async move {
                one(&shared, i, at, feedback.then_some(delay)).await;
            });
        }
    })
}

/// Request `i`, scheduled at `at`, and its label after `label_after`.
async fn one(shared: &Shared, i: u64, at: Instant, label_after: Option<Duration>) {
    let tally = &shared.tally;
    let counters = &tally.counters;
    let sample = shared.stream.sample(i);
    let body = json!({"inputs": [sample.features]});
    let reply = post(&shared.http, &format!("{}/v1/infer", shared.lb), &body).await;
    let (answer, by) = match reply {
        Some(r) if r.status() == 200 => {
            let by = served_by(r.headers().get("x-served-by").and_then(|h| h.to_str().ok()));
            (r.json::<Value>().await.ok(), by)
        }
        _ => (None, None),
    };
    let answered_t = shared.start.elapsed().as_secs_f64();
    let latency_us = at.elapsed().as_micros().max(1) as u64;
    counters.in_flight.fetch_sub(1, Ordering::Relaxed);
    let Some(answer) = answer else {
        counters.failed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    counters.ok.fetch_add(1, Ordering::Relaxed);
    if let Some(by) = by {
        *tally.answered_by.lock().entry(by).or_default() += 1;
    }
    let p = &answer["predictions"][0];
    let hit = p["label"].as_u64() == Some(u64::from(sample.label));
    shared.scores.lock().record(
        latency_us,
        hit,
        super::super::load::frozen_hit(&shared.frozen, &sample.features, sample.label),
    );
    let (Some(delay), Some(id)) = (label_after, p["request_id"].as_u64()) else {
        return;
    };
    tally.labels_in_flight.fetch_add(1, Ordering::Relaxed);
    tokio::time::sleep(delay).await;
    label(shared, id, sample.label, answered_t, by).await;
    tally.labels_in_flight.fetch_sub(1, Ordering::Relaxed);
}

/// Sends the label of prediction `id` (answered at `answered_t` by `by`).
async fn label(shared: &Shared, id: u64, label: u32, answered_t: f64, by: Option<u16>) {
    let tally = &shared.tally;
    let counters = &tally.counters;
    let label_t = shared.start.elapsed().as_secs_f64();
    let body = json!({"request_id": id, "label": label});
    let url = format!("{}/v1/feedback", shared.lb);
    // A 503 accepted nothing (the cluster store is unreachable, or no replica is
    // up) and says to retry: a client retries it, and so does the run.
    let since = Instant::now();
    let mut sent = post(&shared.http, &url, &body).await;
    while sent.as_ref().is_some_and(|r| r.status() == 503) && since.elapsed() < RETRY_FOR {
        tally.retried_503.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(250)).await;
        sent = post(&shared.http, &url, &body).await;
    }
    let Some(r) = sent else {
        counters.feedback_failed.fetch_add(1, Ordering::Relaxed);
        tally.unanswered.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let to = served_by(r.headers().get("x-served-by").and_then(|h| h.to_str().ok()));
    match r.status().as_u16() {
        202 => {
            counters.feedback_ok.fetch_add(1, Ordering::Relaxed);
            if let (Some(by), Some(to)) = (by, to) {
                let crossed = if by == to {
                    &tally.same_replica
                } else {
                    &tally.cross_replica
                };
                crossed.fetch_add(1, Ordering::Relaxed);
            }
        }
        404 => {
            let body = r.text().await.unwrap_or_default();
            tracing::warn!(request_id = id, answered_by = ?by, refused_by = ?to, body, "a label was refused");
            tally.refusals.lock().push(Refusal {
                request_id: id,
                answered_t,
                answered_by: by,
                label_t,
                refused_by: to,
            });
        }
        status => {
            let body = r.text().await.unwrap_or_default();
            tracing::warn!(request_id = id, status, body, "a label failed");
            counters.feedback_failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// POSTs `body`, retrying a refused connection for up to [`RETRY_FOR`]; `None`
/// when no HTTP answer came.
async fn post(http: &reqwest::Client, url: &str, body: &Value) -> Option<reqwest::Response> {
    let since = Instant::now();
    loop {
        match http.post(url).json(body).send().await {
            Ok(r) => return Some(r),
            Err(e) if e.is_connect() && since.elapsed() < RETRY_FOR => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => {
                tracing::debug!(error = %e, url, "no answer");
                return None;
            }
        }
    }
}
