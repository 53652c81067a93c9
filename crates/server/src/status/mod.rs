//! One typed snapshot of the server's state, collected in one place.
//!
//! `/v1/status` serializes it, `/health` rates its components from it, the
//! Prometheus scrape refreshes its gauges from it, and the health monitor measures
//! its rates between two of them. Before, each walked the engine, the update path
//! and the alerts on its own, and the copies drifted; now a new counter is added
//! here once and every reader sees it.
//!
//! Collecting is mostly atomic loads, plus short reads under the locks of the
//! memory's stats, the pending map, the breaker and the alerts, and one read of
//! `/proc/self/statm`: microseconds, cheap enough for every scrape, status call and
//! monitor tick, and no lock is held across an await.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use utoipa::ToSchema;
use utoipa::openapi::{Object, ObjectBuilder, Type};

use crate::engine::BreakerState;
use crate::state::AppState;
use crate::supervisor::WorkerState;

/// Everything `/v1/status` reports, field for field.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Status {
    pub version: &'static str,
    pub model_version: u64,
    /// `cold_start` while the memory is too small to vote, then `normal`.
    #[schema(schema_with = mode_schema)]
    pub mode: &'static str,
    pub experiences: usize,
    pub input_dim: usize,
    pub num_classes: usize,
    pub uptime_seconds: f64,
    pub worker: Worker,
    pub ring: Ring,
    pub wal_bytes: u64,
    pub rss_bytes: Option<u64>,
    pub alerts: Alerts,
    pub updates: Updates,
    pub swaps: Swaps,
    pub memory: Memory,
    pub vote: Vote,
    pub paths: Paths,
    pub knn_failures: u64,
    pub knn_faults_injected: u64,
    pub pseudo_labels: u64,
    pub labels: Labels,
    pub pending_predictions: usize,
    pub pending_predictions_bytes: u64,
    pub pending_log: PendingLog,
    pub request_ids: RequestIds,
    /// What the server rebuilt from its state dir at start (see `app::restore`).
    #[schema(value_type = Option<Object>)]
    pub recovery: Option<serde_json::Value>,
    pub batcher: Batcher,
    /// This server's part in a cluster (`null` when standalone).
    pub cluster: Option<crate::cluster::ClusterStatus>,
    /// Whether `/health/ready` answers 200: ready, and the model thread alive.
    #[serde(skip)]
    pub ready: bool,
    /// Whether a worker is configured to run (`worker.enabled`).
    #[serde(skip)]
    pub worker_enabled: bool,
}

/// The update-worker.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Worker {
    pub pid: Option<u32>,
    #[serde(serialize_with = "as_str")]
    #[schema(schema_with = worker_state_schema)]
    pub state: WorkerState,
    pub restarts: u64,
    pub failed_attempts: u32,
    pub crash_streak: u32,
}

/// The shared-memory ring of the current worker generation.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Ring {
    pub depth: u64,
    pub capacity: usize,
    /// Updates the ring could not carry, over every generation.
    pub dropped: u64,
    pub generation: u64,
    /// Which file in /dev/shm is live, for an operator looking there.
    #[schema(value_type = String)]
    pub path: std::path::PathBuf,
}

/// Alerts firing and their delivery.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Alerts {
    pub active: Vec<String>,
    pub raised: u64,
    pub resolved: u64,
    pub suppressed: u64,
    pub dropped: u64,
    pub webhooks: Vec<Webhook>,
}

/// One webhook endpoint's deliveries.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Webhook {
    pub delivered: u64,
    pub failed: u64,
    pub retries: u64,
    pub dropped: u64,
}

/// Updates through the WAL to the worker.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Updates {
    pub sent: u64,
    pub applied: u64,
    pub settled: u64,
    pub dropped: u64,
    pub refused: u64,
}

/// Versions taken into service or refused.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Swaps {
    pub swapped: u64,
    pub rejected: u64,
    pub last_kl: f64,
    pub mean_kl_divergence: f64,
}

/// The k-NN memory.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Memory {
    pub backend: String,
    pub capacity: usize,
    pub indexed: usize,
    pub pending: usize,
    pub tombstones: usize,
    pub rebuilds: u64,
    pub dropped_inserts: u64,
    pub evicted: u64,
}

/// The ensemble vote: each voter's weight and accuracy, by name, as the ensemble
/// reports them ([`crate::engine::VoteReport`]).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Vote {
    pub lambda: f32,
    pub weights: std::collections::BTreeMap<&'static str, f32>,
    /// Each voter's own accuracy on the labels joined while it voted.
    pub accuracy: std::collections::BTreeMap<&'static str, Option<f64>>,
    #[serde(serialize_with = "as_str")]
    #[schema(schema_with = breaker_schema)]
    pub breaker: BreakerState,
    pub drift_active: bool,
    pub drifts: u64,
}

/// Which path answered each row.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Paths {
    pub cold_start: u64,
    pub ensemble: u64,
    pub fallback: u64,
}

/// Labels received and how well the server had answered them.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Labels {
    pub received: u64,
    pub scored: u64,
    pub accuracy: Option<f64>,
    pub pseudo_scored: u64,
    pub pseudo_precision: Option<f64>,
}

/// The log of predictions awaiting a label.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PendingLog {
    pub bytes: u64,
    pub dropped: u64,
}

/// Request ids handed out.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RequestIds {
    pub next: u64,
    pub refused: u64,
}

/// The model thread's batcher.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Batcher {
    pub queued: usize,
    pub capacity: usize,
    pub batches: u64,
    pub rows: u64,
    pub rejected: u64,
    pub target_batch: usize,
}

/// A state with a name: written out as the name.
trait Named {
    fn name(&self) -> &'static str;
}

impl Named for WorkerState {
    fn name(&self) -> &'static str {
        self.as_str()
    }
}

impl Named for BreakerState {
    fn name(&self) -> &'static str {
        self.as_str()
    }
}

fn as_str<S: serde::Serializer, T: Named>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(value.name())
}

/// A string schema that takes exactly `names`: the document names each state as
/// `as_str` writes it.
fn names_schema(names: impl IntoIterator<Item = &'static str>) -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(names))
        .build()
}

/// The schema of `mode` (also in `/health`).
pub(crate) fn mode_schema() -> Object {
    names_schema(["cold_start", "normal"])
}

/// The schema of a worker state's name (also in the worker restart reply).
pub(crate) fn worker_state_schema() -> Object {
    names_schema(WorkerState::ALL.map(WorkerState::as_str))
}

fn breaker_schema() -> Object {
    names_schema(
        [
            BreakerState::Closed,
            BreakerState::Open,
            BreakerState::HalfOpen,
        ]
        .map(BreakerState::as_str),
    )
}

fn load(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// `right / of`, or `None` before anything was scored.
fn ratio(right: &AtomicU64, of: &AtomicU64) -> Option<f64> {
    let of = load(of);
    (of > 0).then(|| load(right) as f64 / of as f64)
}

impl Status {
    /// The server's state now.
    pub fn collect(state: &AppState) -> Self {
        let engine = &state.engine;
        let updates = &state.updates;
        let s = engine.status();
        let m = engine.memory().stats();
        let e = engine.stats();
        let b = engine.batcher_stats();
        let w = updates.worker().status();
        let pipeline = updates.pipeline();
        let ring = pipeline.ring();
        let alerts = updates.alerts();
        let alert_stats = alerts.stats();
        let swaps = updates.stats();
        let settled = updates.settled();
        Self {
            version: crate::VERSION,
            model_version: s.model_version,
            mode: if s.cold_start { "cold_start" } else { "normal" },
            experiences: s.experiences,
            input_dim: s.input_dim,
            num_classes: s.num_classes,
            uptime_seconds: state.started.elapsed().as_secs_f64(),
            worker: Worker {
                pid: w.pid(),
                state: w.state(),
                restarts: w.restarts(),
                failed_attempts: w.failed_attempts(),
                crash_streak: w.crash_streak(),
            },
            ring: Ring {
                depth: ring.depth(),
                capacity: ring.capacity(),
                dropped: s.updates.dropped,
                generation: ring.generation(),
                path: ring.path().to_owned(),
            },
            wal_bytes: pipeline.wal_bytes(),
            rss_bytes: crate::metrics::resident_bytes(),
            alerts: Alerts {
                active: alerts.active(),
                raised: load(&alert_stats.raised),
                resolved: load(&alert_stats.resolved),
                suppressed: load(&alert_stats.suppressed),
                dropped: load(&alert_stats.dropped),
                webhooks: alerts
                    .endpoints()
                    .iter()
                    .map(|e| Webhook {
                        delivered: load(&e.delivered),
                        failed: load(&e.failed),
                        retries: load(&e.retries),
                        dropped: load(&e.dropped),
                    })
                    .collect(),
            },
            updates: Updates {
                sent: s.updates.sent,
                applied: s.updates.applied.max(settled),
                settled,
                dropped: s.updates.dropped,
                refused: s.updates.refused,
            },
            swaps: Swaps {
                swapped: load(&swaps.swaps),
                rejected: load(&swaps.rejections),
                last_kl: swaps.last_kl(),
                mean_kl_divergence: swaps.mean_kl(),
            },
            memory: Memory {
                backend: m.backend.to_string(),
                capacity: m.capacity,
                indexed: m.indexed,
                pending: m.pending,
                tombstones: m.tombstones,
                rebuilds: m.rebuilds,
                dropped_inserts: m.dropped_inserts,
                evicted: m.evicted_total,
            },
            vote: Vote {
                lambda: s.lambda,
                weights: s.vote.weights(),
                accuracy: s.vote.accuracies(),
                breaker: s.breaker,
                drift_active: s.drift_active,
                drifts: s.drifts,
            },
            paths: Paths {
                cold_start: load(&e.cold_start),
                ensemble: load(&e.ensemble),
                fallback: load(&e.fallback),
            },
            knn_failures: load(&e.knn_failures),
            knn_faults_injected: engine.knn_fault().injected(),
            pseudo_labels: load(&e.pseudo_labels),
            labels: Labels {
                received: load(&e.labels),
                scored: load(&e.labels_scored),
                accuracy: ratio(&e.labels_correct, &e.labels_scored),
                pseudo_scored: load(&e.pseudo_scored),
                pseudo_precision: ratio(&e.pseudo_correct, &e.pseudo_scored),
            },
            pending_predictions: s.pending,
            pending_predictions_bytes: s.pending_bytes,
            pending_log: PendingLog {
                bytes: pipeline.pending_bytes(),
                dropped: pipeline.pending_dropped(),
            },
            request_ids: RequestIds {
                next: engine.request_ids().peek(),
                refused: engine.request_ids().refused(),
            },
            recovery: state.recovery.get().cloned(),
            batcher: Batcher {
                queued: b.queued.load(Ordering::Relaxed),
                capacity: engine.batcher_capacity(),
                batches: load(&b.batches),
                rows: load(&b.rows),
                rejected: load(&b.rejected),
                target_batch: b.target_batch.load(Ordering::Relaxed),
            },
            cluster: state
                .replica()
                .map(|r| r.status(pipeline.last_seq(), pipeline.unshared())),
            ready: state.is_ready(),
            worker_enabled: updates.worker().enabled(),
        }
    }
}
