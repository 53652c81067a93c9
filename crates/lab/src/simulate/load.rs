//! The open-loop load: one request scheduled every `1/rate` seconds, its label sent
//! back after `--label-delay` for `--label-fraction` of them, each scored against
//! the frozen model.
//!
//! While our own server restarts after a chaos SIGKILL its port refuses
//! connections; a request then retries until the server is back (at most
//! [`RETRY_FOR`]), so the outage shows as latency, as an open loop should show a
//! stall, rather than as failed requests. A label that comes back 404 is classified
//! against the server crashes: refused for a prediction answered within the commit
//! window of a crash (allowed: the pending log had not written it yet), refused
//! after a retry (ambiguous: the first attempt may have been logged before the
//! kill), or refused outside the window (a prediction the server forgot: the check
//! `pre_crash_labels_refused`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::SimulateArgs;
use super::stream::SyntheticStream;
use crate::model::Mlp;

/// Most requests in flight before the client itself counts new ones as failed: a
/// bound on the simulator's own memory when the server stops answering.
const MAX_IN_FLIGHT: u64 = 20_000;
/// How long a request retries a refused connection: a debug build's restart with
/// a full memory to rebuild takes seconds, well inside this.
const RETRY_FOR: Duration = Duration::from_secs(60);

/// Counters the load tasks share.
#[derive(Default)]
pub struct Counters {
    pub sent: AtomicU64,
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    pub in_flight: AtomicU64,
    pub feedback_ok: AtomicU64,
    pub feedback_failed: AtomicU64,
    /// Labels refused (404) for predictions answered outside the commit window
    /// before every server crash: forgotten predictions.
    pub refused_outside_window: AtomicU64,
    /// Labels refused for predictions answered within the window of a crash.
    pub refused_in_window: AtomicU64,
    /// Labels refused after their first attempt met a dead server.
    pub refused_after_retry: AtomicU64,
}

/// Latency and accuracy, per window and in total (a short lock per request).
pub struct Scores {
    pub window: Histogram<u64>,
    pub total: Histogram<u64>,
    pub hits: (u64, u64, u64),
    pub total_hits: (u64, u64, u64),
}

impl Scores {
    /// One answer: its latency, whether it was right, and whether the frozen
    /// model would have been.
    pub fn record(&mut self, latency_us: u64, hit: bool, frozen_hit: bool) {
        let _ = self.window.record(latency_us);
        let _ = self.total.record(latency_us);
        for hits in [&mut self.hits, &mut self.total_hits] {
            hits.0 += u64::from(hit);
            hits.1 += u64::from(frozen_hit);
            hits.2 += 1;
        }
    }

    pub fn new() -> Self {
        // 1 µs .. 10 min at 3 significant digits.
        let h =
            || Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds: this is a bug");
        Self {
            window: h(),
            total: h(),
            hits: (0, 0, 0),
            total_hits: (0, 0, 0),
        }
    }
}

/// Whether the frozen copy of the model answers `features` with `label`: the baseline every
/// answer's accuracy is held against.
pub fn frozen_hit(frozen: &crate::model::Mlp, features: &[f32], label: u32) -> bool {
    frozen
        .forward(features, 1)
        .ok()
        .is_some_and(|f| crate::model::argmax(f.probs_row(0)).0 == label as usize)
}

/// What every request task shares.
#[derive(Clone)]
pub struct Shared {
    pub http: reqwest::Client,
    pub stream: Arc<SyntheticStream>,
    pub counters: Arc<Counters>,
    pub scores: Arc<Mutex<Scores>>,
    pub frozen: Arc<Mlp>,
    /// When the chaos SIGKILLed the server, each taken just before the signal.
    pub server_crashes: Arc<Mutex<Vec<Instant>>>,
}

/// Starts the generator: requests from `start` until `end`.
pub fn spawn(
    args: &SimulateArgs,
    base: &str,
    shared: Shared,
    start: Instant,
    end: Instant,
) -> tokio::task::JoinHandle<()> {
    let base = base.to_string();
    let (rate, fraction, delay, seed) =
        (args.rate, args.label_fraction, args.label_delay, args.seed);
    let window = Duration::from_millis(args.commit_window_ms);
    tokio::spawn(async move {
        let mut labels = ChaCha8Rng::seed_from_u64(seed ^ 0x1abe1);
        for i in 0u64.. {
            let at = start + Duration::from_secs_f64(i as f64 / rate);
            if at >= end {
                break;
            }
            tokio::time::sleep_until(at).await;
            let counters = &shared.counters;
            counters.sent.fetch_add(1, Ordering::Relaxed);
            if counters.in_flight.load(Ordering::Relaxed) >= MAX_IN_FLIGHT {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let feedback = labels.random::<f64>() < fraction;
            counters.in_flight.fetch_add(1, Ordering::Relaxed);
            let (shared, base) = (shared.clone(), base.clone());
            tokio::spawn(async move {
                one(&shared, &base, i, at, feedback.then_some(delay), window).await;
            });
        }
    })
}

/// Request `i`, scheduled at `at`, and its label after `label_after`.
async fn one(
    shared: &Shared,
    base: &str,
    i: u64,
    at: Instant,
    label_after: Option<Duration>,
    window: Duration,
) {
    let counters = &shared.counters;
    let sample = shared.stream.sample(i);
    let body = json!({"inputs": [sample.features]});
    let reply = post(&shared.http, &format!("{base}/v1/infer"), &body, at).await;
    let answer = match reply {
        Some((r, _)) if r.status() == 200 => r.json::<Value>().await.ok(),
        _ => None,
    };
    let answered_at = Instant::now();
    let latency_us = at.elapsed().as_micros().max(1) as u64;
    counters.in_flight.fetch_sub(1, Ordering::Relaxed);
    let Some(answer) = answer else {
        counters.failed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    counters.ok.fetch_add(1, Ordering::Relaxed);
    let p = &answer["predictions"][0];
    let hit = p["label"].as_u64() == Some(u64::from(sample.label));
    shared.scores.lock().record(
        latency_us,
        hit,
        frozen_hit(&shared.frozen, &sample.features, sample.label),
    );
    let (Some(delay), Some(id)) = (label_after, p["request_id"].as_u64()) else {
        return;
    };
    tokio::time::sleep(delay).await;
    let body = json!({"request_id": id, "label": sample.label});
    let sent = post(
        &shared.http,
        &format!("{base}/v1/feedback"),
        &body,
        Instant::now(),
    )
    .await;
    match sent {
        Some((r, _)) if r.status() == 202 => {
            counters.feedback_ok.fetch_add(1, Ordering::Relaxed);
        }
        Some((r, retried)) if r.status() == 404 => {
            // An answer read just after the kill instant was still written by
            // the killed server, so the window reaches both ways.
            let crashed_soon_after = shared.server_crashes.lock().iter().any(|&c| {
                c.saturating_duration_since(answered_at) < window
                    && answered_at.saturating_duration_since(c) < window
            });
            let counter = if retried {
                &counters.refused_after_retry
            } else if crashed_soon_after {
                &counters.refused_in_window
            } else {
                tracing::warn!(
                    request_id = id,
                    "a label for a prediction answered outside the commit window was refused"
                );
                &counters.refused_outside_window
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        _ => {
            counters.feedback_failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// POSTs `body`, retrying while the connection is refused or cut (our server is
/// restarting) for up to [`RETRY_FOR`] after `since`. Returns the response and
/// whether an attempt before it met a dead server.
async fn post(
    http: &reqwest::Client,
    url: &str,
    body: &Value,
    since: Instant,
) -> Option<(reqwest::Response, bool)> {
    let mut retried = false;
    loop {
        match http.post(url).json(body).send().await {
            Ok(r) => return Some((r, retried)),
            Err(e) if (e.is_connect() || e.is_request()) && since.elapsed() < RETRY_FOR => {
                retried = true;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(_) => return None,
        }
    }
}
