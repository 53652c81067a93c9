//! The simulation driver: a server, an open-loop load, delayed labels, chaos, and a
//! sampler, all on one tokio runtime.
//!
//! Open loop: request `i` is *scheduled* at `start + i/rate` and its latency is
//! measured from that instant, whether or not earlier requests have answered, so a
//! stalled server shows up as latency rather than as fewer requests (no coordinated
//! omission). The frozen starting model predicts every request in-process, so the
//! adaptive server and the frozen model are scored on exactly the same inputs.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::SimulateArgs;
use super::load::{self, Counters, Scores};
use super::stream::{StreamConfig, SyntheticStream};
use super::target::Target;
use crate::model::Mlp;

/// One second of the run.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub t: f64,
    pub rss_bytes: u64,
    pub ring_depth: u64,
    pub queue: u64,
    pub wal_bytes: u64,
    /// Heap bytes of the predictions awaiting a label (a bounded fill, not a leak).
    pub pending_bytes: u64,
    pub worker_pid: Option<u64>,
    pub worker_state: String,
    pub restarts: u64,
    pub model_version: u64,
    pub experiences: u64,
    pub updates_sent: u64,
    pub updates_applied: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
    pub accuracy: Option<f64>,
    pub frozen_accuracy: Option<f64>,
    pub requests: u64,
}

/// One injected fault.
#[derive(Debug, Clone, Serialize)]
pub struct Crash {
    pub t: f64,
    /// `worker` or `server`.
    pub process: &'static str,
    pub signal: &'static str,
    pub pid: u64,
    pub recovered_after: Option<f64>,
}

/// Everything the run measured.
#[derive(Debug, Serialize)]
pub struct Outcome {
    pub duration_secs: f64,
    pub sent: u64,
    pub ok: u64,
    pub failed: u64,
    pub feedback_ok: u64,
    pub feedback_failed: u64,
    /// Labels refused for predictions answered outside the commit window before
    /// every server crash (see `load`).
    pub labels_refused_outside_window: u64,
    /// Labels refused for predictions answered within it.
    pub labels_refused_in_window: u64,
    /// Labels refused after a first attempt met a dead server.
    pub labels_refused_after_retry: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub accuracy: f64,
    pub frozen_accuracy: f64,
    pub samples: Vec<Sample>,
    pub crashes: Vec<Crash>,
    pub final_status: Value,
    pub synced: bool,
    /// The k-NN fault rate in force (0 when none was injected).
    pub knn_fault_rate: f64,
    /// Alert deliveries the failing webhook sink answered, when there was one.
    pub failing_webhook_calls: Option<u64>,
}

/// The run's synthetic stream: its seed, and an abrupt drift every
/// `--abrupt-every` samples (0: every 30 s of requests at `--rate`).
pub fn stream_for(args: &SimulateArgs) -> SyntheticStream {
    let abrupt_every = if args.abrupt_every == 0 {
        ((args.rate * 30.0) as u64).max(200)
    } else {
        args.abrupt_every
    };
    SyntheticStream::new(StreamConfig {
        seed: args.seed,
        abrupt_every,
        ..StreamConfig::default()
    })
}

async fn get_json(http: &reqwest::Client, url: &str) -> Option<Value> {
    http.get(url).send().await.ok()?.json().await.ok()
}

fn ms(h: &Histogram<u64>, q: f64) -> Option<f64> {
    (!h.is_empty()).then(|| h.value_at_quantile(q) as f64 / 1e3)
}

/// Asks the target to fail `rate` of its k-NN searches; returns the rate in force
/// (0 if the server refused: fault injection off, or no admin token).
async fn set_knn_fault(http: &reqwest::Client, target: &Target, rate: f64) -> f64 {
    let Some(token) = &target.token else {
        tracing::warn!("no admin token: k-NN fault injection skipped");
        return 0.0;
    };
    let reply = http
        .post(format!("{}/v1/admin/fault/knn", target.base))
        .bearer_auth(token)
        .json(&json!({ "failure_rate": rate }))
        .send()
        .await;
    match reply {
        Ok(r) if r.status() == 200 => rate,
        Ok(r) => {
            let status = r.status();
            let body = r.text().await.unwrap_or_default();
            tracing::warn!(%status, body, "the server refused k-NN fault injection; skipped");
            0.0
        }
        Err(e) => {
            tracing::warn!(error = %e, "k-NN fault injection skipped");
            0.0
        }
    }
}

/// Drives the target for `args.duration`; `progress(t, sample)` is called each second.
pub async fn drive(
    args: &SimulateArgs,
    target: &Target,
    frozen: Arc<Mlp>,
    mut progress: impl FnMut(&Sample),
) -> anyhow::Result<Outcome> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(30))
        .build()
        .context("cannot build the HTTP client")?;
    let ready = format!("{}/health/ready", target.base);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !http
        .get(&ready)
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
    {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} never became ready",
            target.base
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let knn_fault_rate = if args.chaos && args.knn_fault_rate > 0.0 {
        set_knn_fault(&http, target, args.knn_fault_rate).await
    } else {
        0.0
    };
    let stream = Arc::new(stream_for(args));
    let counters = Arc::new(Counters::default());
    let scores = Arc::new(Mutex::new(Scores::new()));
    let start = Instant::now();
    let end = start + args.duration;

    // The open-loop generator.
    let server_crashes = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let load = load::spawn(
        args,
        &target.base,
        load::Shared {
            http: http.clone(),
            stream: stream.clone(),
            counters: counters.clone(),
            scores: scores.clone(),
            frozen: frozen.clone(),
            server_crashes: server_crashes.clone(),
        },
        start,
        end,
    );

    // The sampler and the chaos, once a second.
    let mut samples: Vec<Sample> = Vec::new();
    let mut crashes: Vec<Crash> = Vec::new();
    let mut chaos_rng = ChaCha8Rng::seed_from_u64(args.seed ^ 0xc4a05);
    let status_url = format!("{}/v1/status", target.base);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let recovery_grace = Duration::from_secs_f64(args.max_recovery_secs);
    loop {
        tick.tick().await;
        let now = Instant::now();
        let t = now.duration_since(start).as_secs_f64();
        let load_done = now >= end;
        let pending = crashes.iter().any(|c| c.recovered_after.is_none());
        if load_done && (!pending || now >= end + recovery_grace) {
            break;
        }
        let status = get_json(&http, &status_url).await.unwrap_or(Value::Null);
        let sample = {
            let mut s = scores.lock();
            let acc =
                |h: (u64, u64, u64), i: usize| (h.2 > 0).then(|| [h.0, h.1][i] as f64 / h.2 as f64);
            let sample = Sample {
                t,
                rss_bytes: status["rss_bytes"].as_u64().unwrap_or(0),
                ring_depth: status["ring"]["depth"].as_u64().unwrap_or(0),
                queue: status["batcher"]["queued"].as_u64().unwrap_or(0),
                wal_bytes: status["wal_bytes"].as_u64().unwrap_or(0),
                pending_bytes: status["pending_predictions_bytes"].as_u64().unwrap_or(0),
                worker_pid: status["worker"]["pid"].as_u64(),
                worker_state: status["worker"]["state"]
                    .as_str()
                    .unwrap_or("unknown")
                    .to_string(),
                restarts: status["worker"]["restarts"].as_u64().unwrap_or(0),
                model_version: status["model_version"].as_u64().unwrap_or(0),
                experiences: status["experiences"].as_u64().unwrap_or(0),
                updates_sent: status["updates"]["sent"].as_u64().unwrap_or(0),
                updates_applied: status["updates"]["applied"].as_u64().unwrap_or(0),
                p50_ms: ms(&s.window, 0.5),
                p99_ms: ms(&s.window, 0.99),
                p999_ms: ms(&s.window, 0.999),
                accuracy: acc(s.hits, 0),
                frozen_accuracy: acc(s.hits, 1),
                requests: s.hits.2,
            };
            s.window.reset();
            s.hits = (0, 0, 0);
            sample
        };
        for c in crashes
            .iter_mut()
            .filter(|c| c.process == "worker" && c.recovered_after.is_none())
        {
            if sample.worker_state == "running" && sample.worker_pid.is_some_and(|p| p != c.pid) {
                c.recovered_after = Some(t - c.t);
            }
        }
        if args.chaos
            && !load_done
            && sample.worker_state == "running"
            && let Some(pid) = sample.worker_pid
            && chaos_rng.random::<f64>() < args.crash_probability
        {
            let (signal, name) = if chaos_rng.random::<bool>() {
                (nix::sys::signal::Signal::SIGKILL, "SIGKILL")
            } else {
                (nix::sys::signal::Signal::SIGSTOP, "SIGSTOP")
            };
            if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal).is_ok() {
                tracing::info!(t, pid, signal = name, "chaos: signalled the update-worker");
                crashes.push(Crash {
                    t,
                    process: "worker",
                    signal: name,
                    pid,
                    recovered_after: None,
                });
            }
        }
        if args.chaos
            && !load_done
            && target.restartable()
            && chaos_rng.random::<f64>() < args.server_crash_probability
        {
            server_crashes.lock().push(Instant::now());
            let killed = Instant::now();
            match target.kill_and_restart().await {
                Ok(pid) => {
                    let took = killed.elapsed().as_secs_f64();
                    // A new process: the chaos's k-NN faults are set again.
                    if knn_fault_rate > 0.0 {
                        set_knn_fault(&http, target, knn_fault_rate).await;
                    }
                    tracing::info!(
                        t,
                        pid,
                        restart_secs = took,
                        "chaos: SIGKILLed the server and restarted it"
                    );
                    crashes.push(Crash {
                        t,
                        process: "server",
                        signal: "SIGKILL",
                        pid: u64::from(pid),
                        recovered_after: Some(took),
                    });
                }
                Err(e) => {
                    tracing::error!(error = %e, "chaos: the server did not come back");
                    crashes.push(Crash {
                        t,
                        process: "server",
                        signal: "SIGKILL",
                        pid: 0,
                        recovered_after: None,
                    });
                }
            }
        }
        progress(&sample);
        samples.push(sample);
    }
    let _ = load.await;
    // Let in-flight requests and delayed labels finish.
    let drain = Instant::now() + Duration::from_secs(10) + args.label_delay;
    while counters.in_flight.load(Ordering::Relaxed) > 0 && Instant::now() < drain {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(args.label_delay + Duration::from_millis(200)).await;
    let synced = match &target.token {
        Some(token) => http
            .post(format!("{}/v1/admin/sync", target.base))
            .bearer_auth(token)
            .timeout(Duration::from_secs(120))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200),
        None => false,
    };
    let final_status = get_json(&http, &status_url).await.unwrap_or(Value::Null);
    let s = scores.lock();
    let frac = |a: u64| {
        if s.total_hits.2 == 0 {
            0.0
        } else {
            a as f64 / s.total_hits.2 as f64
        }
    };
    Ok(Outcome {
        duration_secs: start.elapsed().as_secs_f64(),
        sent: counters.sent.load(Ordering::Relaxed),
        ok: counters.ok.load(Ordering::Relaxed),
        failed: counters.failed.load(Ordering::Relaxed),
        feedback_ok: counters.feedback_ok.load(Ordering::Relaxed),
        feedback_failed: counters.feedback_failed.load(Ordering::Relaxed),
        labels_refused_outside_window: counters.refused_outside_window.load(Ordering::Relaxed),
        labels_refused_in_window: counters.refused_in_window.load(Ordering::Relaxed),
        labels_refused_after_retry: counters.refused_after_retry.load(Ordering::Relaxed),
        p50_ms: ms(&s.total, 0.5).unwrap_or(0.0),
        p99_ms: ms(&s.total, 0.99).unwrap_or(0.0),
        p999_ms: ms(&s.total, 0.999).unwrap_or(0.0),
        max_ms: if s.total.is_empty() {
            0.0
        } else {
            s.total.max() as f64 / 1e3
        },
        accuracy: frac(s.total_hits.0),
        frozen_accuracy: frac(s.total_hits.1),
        samples,
        crashes,
        final_status,
        synced,
        knn_fault_rate,
        failing_webhook_calls: None,
    })
}
