//! The cluster run's driver: the load through the load balancer, the chaos plan, the
//! k-NN probes and a once-a-second sampler of every replica, on one tokio runtime;
//! then the end of the run (`finish`) and everything measured, as the single-server
//! [`Outcome`] (so its report and plots apply) plus the cluster's [`Facts`].
//!
//! The sampler reads each replica directly (not through the load balancer, which
//! would show one replica per second): its `/v1/status` for the latency-free figures
//! the report plots (summed or, for versions, the lowest) and its `/v1/cluster` for
//! the versions and Redis as each replica sees them. It also notices a process of
//! ours that exited without the chaos killing it: an unexpected exit, which fails
//! the run and is not restarted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::super::SimulateArgs;
use super::super::load::Scores;
use super::super::run::{Crash, Outcome, Sample};
use super::Endpoints;
use super::chaos::{self, Record, Records};
use super::finish::{self, Sync};
use super::probe::{self, Probe};
use super::schedule;
use super::topology::Topology;
use super::traffic::{self, Refusal, Tally};
use crate::model::Mlp;

/// One replica at one second.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicaSample {
    pub id: u16,
    /// It answered `/v1/cluster` within the second (0.9 s).
    pub up: bool,
    pub serving_version: Option<u64>,
    pub redis: Option<String>,
    /// Its log entries not yet forwarded to Redis.
    pub unsent: Option<u64>,
}

/// The cluster at one second.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterSample {
    pub t: f64,
    pub replicas: Vec<ReplicaSample>,
    /// The trainer's version and labels learned, as the replicas report them (the
    /// largest seen).
    pub trainer_version: Option<u64>,
    pub labels_learned: Option<u64>,
}

/// A process of ours that exited without the chaos killing it.
#[derive(Debug, Clone, Serialize)]
pub struct Exit {
    pub t: f64,
    pub process: String,
    pub status: String,
}

/// What a cluster run measured beyond the single-server [`Outcome`].
#[derive(Debug, Serialize)]
pub struct Facts {
    pub replicas: u16,
    pub lb: String,
    pub plan: Vec<schedule::Planned>,
    /// Faults planned before the end of the load (each must happen and recover).
    pub planned_faults: usize,
    pub chaos: Vec<Record>,
    pub probes: Vec<Probe>,
    pub refusals: Vec<Refusal>,
    /// Accepted labels sent to another replica than their prediction's, and to the
    /// same one.
    pub labels_cross_replica: u64,
    pub labels_same_replica: u64,
    /// Labels with no HTTP answer (possibly accepted).
    pub labels_unanswered: u64,
    /// Label attempts answered 503 and sent again.
    pub labels_retried_503: u64,
    /// Predictions answered per replica (from the load balancer's header).
    pub answered_by: BTreeMap<u16, u64>,
    pub syncs: Vec<Sync>,
    pub version_lag_secs: Option<f64>,
    /// The trainer as the replicas report it after the final sync.
    pub trainer: Value,
    /// Each replica's `GET /v1/cluster` after the final sync.
    pub views: Vec<Value>,
    pub unexpected_exits: Vec<Exit>,
    pub samples: Vec<ClusterSample>,
}

fn ms(h: &Histogram<u64>, q: f64) -> Option<f64> {
    (!h.is_empty()).then(|| h.value_at_quantile(q) as f64 / 1e3)
}

/// GETs `url` as JSON within `timeout`.
pub async fn get_json(http: &reqwest::Client, url: &str, timeout: Duration) -> Option<Value> {
    let r = http.get(url).timeout(timeout).send().await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json().await.ok()
}

/// Each replica's `/v1/status` and `/v1/cluster`, read concurrently.
async fn read_replicas(
    http: &reqwest::Client,
    replicas: &[(u16, String)],
) -> Vec<(u16, Option<Value>, Option<Value>)> {
    let reads: Vec<_> = replicas
        .iter()
        .map(|(id, url)| {
            let (http, url, id) = (http.clone(), url.clone(), *id);
            tokio::spawn(async move {
                let wait = Duration::from_millis(900);
                let (status_url, cluster_url) =
                    (format!("{url}/v1/status"), format!("{url}/v1/cluster"));
                let (status, cluster) = tokio::join!(
                    get_json(&http, &status_url, wait),
                    get_json(&http, &cluster_url, wait)
                );
                (id, status, cluster)
            })
        })
        .collect();
    let mut out = Vec::with_capacity(reads.len());
    for r in reads {
        if let Ok(read) = r.await {
            out.push(read);
        }
    }
    out
}

/// Aborts the run's tasks when dropped: an interrupted run must not restart a
/// process after the topology was stopped.
struct AbortOnDrop(Vec<tokio::task::AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.iter().for_each(tokio::task::AbortHandle::abort);
    }
}

/// Drives the cluster for `args.duration`; `progress` is called each second.
pub async fn drive(
    args: &SimulateArgs,
    ends: &Endpoints,
    topo: Option<Arc<Topology>>,
    frozen: Arc<Mlp>,
    mut progress: impl FnMut(&Sample, &ClusterSample),
) -> anyhow::Result<(Outcome, Facts)> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(30))
        .build()
        .context("cannot build the HTTP client")?;
    let stream = Arc::new(super::super::run::stream_for(args));
    let tally = Arc::new(Tally::default());
    let scores = Arc::new(Mutex::new(Scores::new()));
    let start = Instant::now();
    let end = start + args.duration;
    let load = traffic::spawn(
        args,
        traffic::Shared {
            http: http.clone(),
            lb: ends.lb.clone(),
            stream: stream.clone(),
            tally: tally.clone(),
            scores: scores.clone(),
            frozen: frozen.clone(),
            start,
        },
        end,
    );
    let records: Records = Arc::default();
    let plan = match (&topo, args.chaos) {
        (Some(_), true) => schedule::plan(
            args.seed,
            args.duration,
            ends.replicas.len() as u16,
            args.crash_probability,
        ),
        _ => Vec::new(),
    };
    let chaos_task = topo.clone().filter(|_| !plan.is_empty()).map(|topo| {
        chaos::spawn(
            plan.clone(),
            topo,
            http.clone(),
            start,
            end,
            Duration::from_secs_f64(args.max_recovery_secs),
            records.clone(),
        )
    });
    let probes: Arc<Mutex<Vec<Probe>>> = Arc::default();
    let give_up = (args.max_knn_spread * 2).max(Duration::from_secs(10));
    let probe_task = (ends.replicas.len() >= 2).then(|| {
        probe::spawn(
            probe::Prober {
                http: http.clone(),
                replicas: ends.replicas.clone(),
                anchor: Arc::new(probe::Anchor::of(&stream)),
                frozen: frozen.clone(),
                seed: args.seed,
                start,
                give_up,
            },
            end,
            probes.clone(),
        )
    });

    let _abort = AbortOnDrop(
        [Some(&load), chaos_task.as_ref(), probe_task.as_ref()]
            .into_iter()
            .flatten()
            .map(tokio::task::JoinHandle::abort_handle)
            .collect(),
    );
    let mut samples = Vec::new();
    let mut cluster_samples = Vec::new();
    let mut exits = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    // After the load: until the chaos has judged every recovery and the last
    // probe has its answer, bounded.
    let last_call = end + Duration::from_secs_f64(args.max_recovery_secs) + give_up;
    loop {
        tick.tick().await;
        let now = Instant::now();
        let busy = |task: &Option<tokio::task::JoinHandle<()>>| {
            task.as_ref().is_some_and(|t| !t.is_finished())
        };
        if now >= end && (!(busy(&chaos_task) || busy(&probe_task)) || now >= last_call) {
            break;
        }
        let t = now.duration_since(start).as_secs_f64();
        let reads = read_replicas(&http, &ends.replicas).await;
        let (sample, cluster) = summarise(t, &reads, &mut scores.lock());
        if let Some(topo) = &topo {
            for proc in topo.procs() {
                if let Ok(mut p) = proc.try_lock()
                    && let Some(status) = p.reap()
                {
                    tracing::error!(t, process = p.name, status, "a process exited on its own");
                    exits.push(Exit {
                        t,
                        process: p.name.clone(),
                        status,
                    });
                }
            }
        }
        progress(&sample, &cluster);
        samples.push(sample);
        cluster_samples.push(cluster);
    }
    let _ = load.await;
    // Let in-flight requests and delayed labels finish.
    let drain = Instant::now() + Duration::from_secs(60) + args.label_delay;
    while (tally.counters.in_flight.load(Ordering::Relaxed) > 0
        || tally.labels_in_flight.load(Ordering::Relaxed) > 0)
        && Instant::now() < drain
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for task in [probe_task, chaos_task].into_iter().flatten() {
        if tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .is_err()
        {
            tracing::warn!("a chaos or probe task outlived the run");
        }
    }
    let token = ends.token.as_deref();
    let end_state = finish::finish(&http, &ends.replicas, token, args.max_version_lag).await;

    let s = scores.lock();
    let frac = |a: u64| {
        if s.total_hits.2 == 0 {
            0.0
        } else {
            a as f64 / s.total_hits.2 as f64
        }
    };
    let chaos = records.lock().clone();
    let facts = Facts {
        replicas: ends.replicas.len() as u16,
        lb: ends.lb.clone(),
        planned_faults: plan
            .iter()
            .filter(|p| p.at_secs < args.duration.as_secs_f64())
            .count(),
        plan,
        chaos: chaos.clone(),
        probes: probes.lock().clone(),
        refusals: tally.refusals.lock().clone(),
        labels_cross_replica: tally.cross_replica.load(Ordering::Relaxed),
        labels_same_replica: tally.same_replica.load(Ordering::Relaxed),
        labels_unanswered: tally.unanswered.load(Ordering::Relaxed),
        labels_retried_503: tally.retried_503.load(Ordering::Relaxed),
        answered_by: tally.answered_by.lock().clone(),
        syncs: end_state.syncs,
        version_lag_secs: end_state.version_lag_secs,
        trainer: end_state.trainer,
        views: end_state.views,
        unexpected_exits: exits,
        samples: cluster_samples,
    };
    let c = &tally.counters;
    let outcome = Outcome {
        duration_secs: start.elapsed().as_secs_f64(),
        sent: c.sent.load(Ordering::Relaxed),
        ok: c.ok.load(Ordering::Relaxed),
        failed: c.failed.load(Ordering::Relaxed),
        feedback_ok: c.feedback_ok.load(Ordering::Relaxed),
        feedback_failed: c.feedback_failed.load(Ordering::Relaxed),
        // Filled in from the classification (`checks::tally_refusals`).
        labels_refused_outside_window: 0,
        labels_refused_in_window: 0,
        labels_refused_after_retry: 0,
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
        crashes: chaos
            .iter()
            .map(|r| Crash {
                t: r.t,
                process: r.fault.process(),
                signal: r.fault.signal(),
                pid: u64::from(r.pid),
                recovered_after: r.recovered_after,
            })
            .collect(),
        final_status: json!({ "replicas": end_state.statuses }),
        synced: facts.syncs.iter().all(|s| s.ok),
        knn_fault_rate: 0.0,
        failing_webhook_calls: None,
    };
    Ok((outcome, facts))
}

/// One second of the run from every replica's reads: the single-server [`Sample`]
/// (sums over the replicas; the lowest serving version) and the cluster's own.
fn summarise(
    t: f64,
    reads: &[(u16, Option<Value>, Option<Value>)],
    scores: &mut Scores,
) -> (Sample, ClusterSample) {
    let sum = |f: &dyn Fn(&Value) -> Option<u64>| {
        reads
            .iter()
            .filter_map(|(_, s, _)| s.as_ref().and_then(f))
            .sum::<u64>()
    };
    let views = || reads.iter().filter_map(|(_, _, c)| c.as_ref());
    let acc = |h: (u64, u64, u64), i: usize| (h.2 > 0).then(|| [h.0, h.1][i] as f64 / h.2 as f64);
    let cluster = ClusterSample {
        t,
        replicas: reads
            .iter()
            .map(|(id, status, view)| ReplicaSample {
                id: *id,
                up: view.is_some(),
                serving_version: view.as_ref().and_then(|v| v["serving_version"].as_u64()),
                redis: view
                    .as_ref()
                    .and_then(|v| v["redis"].as_str().map(str::to_string)),
                unsent: status
                    .as_ref()
                    .and_then(|s| s["cluster"]["forward"]["unsent"].as_u64()),
            })
            .collect(),
        trainer_version: views()
            .filter_map(|v| v["trainer"]["version"].as_u64())
            .max(),
        labels_learned: views()
            .filter_map(|v| v["trainer"]["labels_learned"].as_u64())
            .max(),
    };
    let sample = Sample {
        t,
        rss_bytes: sum(&|s| s["rss_bytes"].as_u64()),
        ring_depth: sum(&|s| s["ring"]["depth"].as_u64()),
        queue: reads
            .iter()
            .filter_map(|(_, s, _)| s.as_ref()?["batcher"]["queued"].as_u64())
            .max()
            .unwrap_or(0),
        wal_bytes: sum(&|s| s["wal_bytes"].as_u64()),
        pending_bytes: sum(&|s| s["pending_predictions_bytes"].as_u64()),
        worker_pid: None,
        worker_state: format!(
            "{}/{} answering /v1/cluster",
            cluster.replicas.iter().filter(|r| r.up).count(),
            cluster.replicas.len()
        ),
        restarts: sum(&|s| s["worker"]["restarts"].as_u64()),
        model_version: cluster
            .replicas
            .iter()
            .filter_map(|r| r.serving_version)
            .min()
            .unwrap_or(0),
        experiences: sum(&|s| s["experiences"].as_u64()),
        updates_sent: sum(&|s| s["updates"]["sent"].as_u64()),
        updates_applied: sum(&|s| s["updates"]["applied"].as_u64()),
        p50_ms: ms(&scores.window, 0.5),
        p99_ms: ms(&scores.window, 0.99),
        p999_ms: ms(&scores.window, 0.999),
        accuracy: acc(scores.hits, 0),
        frozen_accuracy: acc(scores.hits, 1),
        requests: scores.hits.2,
    };
    scores.window.reset();
    scores.hits = (0, 0, 0);
    (sample, cluster)
}
