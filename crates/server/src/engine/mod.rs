//! The request path: `infer_and_adapt` and labelled feedback.
//!
//! One [`Engine`] owns everything a request touches: the model thread's client, the
//! k-NN memory, the ensemble of voters, the confidence gate, the k-NN circuit
//! breaker, the map of predictions awaiting labels, and the update sink. The HTTP
//! layer only parses and maps errors; everything it calls is here, so benches and
//! tests drive the same code in-process.
//!
//! Nothing on this path does disk I/O or holds a lock across an await: the model
//! answers over a oneshot, the memory search is a short synchronous call, and memory
//! inserts and updates are non-blocking offers to bounded queues.

mod batcher;
pub mod config;
mod ensemble;
mod error;
mod feedback;
mod forest;
mod gate;
pub mod ids;
mod infer;
mod knn_voter;
mod linear;
mod model_voter;
pub mod pending;
mod shared;
mod sink;
#[cfg(test)]
mod testing;
mod vote;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::config::{BatcherConfig, EngineConfig};
use crate::knn::Memory;
use crate::model::Mlp;

pub use crate::model::argmax;
pub use crate::resilience::{BreakerState, CircuitBreaker};
pub use batcher::{BatcherError, BatcherStats, ModelClient, ModelOutput, ModelThread};
pub use ensemble::{Example, Row, VOTERS, VoteReport, Voter, VoterStats, Votes};
pub use error::EngineError;
pub use feedback::{FeedbackReceipt, FeedbackTarget, LabelRef};
pub use forest::ForestVoter;
pub use gate::{ConfidenceGate, PageHinkley};
pub use ids::RequestIds;
pub use infer::{InferPath, InferReply, Prediction, Timings};
pub use knn_voter::knn_distribution;
pub use linear::LinearVoter;
pub use pending::{PendingMap, PendingPrediction};
pub use shared::{RemoteClaim, SharedPending};
pub use sink::{
    LocalSink, Receipt, SinkError, SinkStats, Update, UpdateKind, UpdateSink, feed_memory,
};
pub use vote::{Hedge, blend};

/// Counters of the request path; read by `/v1/status` and the metrics.
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Rows answered by the model alone during cold start.
    pub cold_start: AtomicU64,
    /// Rows answered by the ensemble vote.
    pub ensemble: AtomicU64,
    /// Rows answered by the model alone because the k-NN failed or its breaker was open.
    pub fallback: AtomicU64,
    /// k-NN searches that errored or timed out.
    pub knn_failures: AtomicU64,
    /// Pseudo-labels admitted by the gate.
    pub pseudo_labels: AtomicU64,
    /// Labelled feedbacks accepted.
    pub labels: AtomicU64,
    /// Labelled feedbacks joined to a prediction whose served label was right.
    pub labels_correct: AtomicU64,
    /// Labelled feedbacks joined to a prediction (the denominator of the above).
    pub labels_scored: AtomicU64,
    /// Joined labels whose prediction had become a pseudo-label, and those whose
    /// pseudo-label was right: the measured precision of the pseudo-labels.
    pub pseudo_scored: AtomicU64,
    pub pseudo_correct: AtomicU64,
}

/// Everything `/v1/status` reports about the engine.
#[derive(Debug, Clone)]
pub struct EngineStatus {
    pub model_version: u64,
    pub cold_start: bool,
    pub experiences: usize,
    pub input_dim: usize,
    pub num_classes: usize,
    /// The model's Hedge weight.
    pub lambda: f32,
    /// Each voter's Hedge weight and accuracy.
    pub vote: VoteReport,
    pub breaker: BreakerState,
    pub drift_active: bool,
    pub drifts: u64,
    pub pending: usize,
    /// Heap bytes the pending predictions hold.
    pub pending_bytes: u64,
    pub updates: SinkStats,
}

/// What [`Engine::new`] assembles.
#[derive(Debug)]
pub struct EngineParts {
    pub model: Mlp,
    pub memory: Arc<Memory>,
    pub sink: Arc<dyn UpdateSink>,
    pub ids: RequestIds,
    pub config: EngineConfig,
    pub batcher: BatcherConfig,
    pub max_client_batch: usize,
    /// In a cluster, where predictions made by other replicas are claimed.
    pub shared_pending: Option<Arc<dyn SharedPending>>,
}

/// The serving engine. Shared as `Arc<Engine>` by every request.
#[derive(Debug)]
pub struct Engine {
    config: EngineConfig,
    max_client_batch: usize,
    /// The serving model; the model thread loads it per batch, so a swap (ArcSwap)
    /// lets in-flight batches finish on the old version.
    model: Arc<ArcSwap<Mlp>>,
    client: ModelClient,
    /// Keeps the model thread's owner alive as long as the engine.
    _model_thread: ModelThread,
    memory: Arc<Memory>,
    /// The voters and their Hedge weights.
    ensemble: ensemble::Ensemble,
    gate: ConfidenceGate,
    /// The k-NN breaker: an HNSW problem must never fail a request, and should not
    /// slow every request either, so after `breaker_failures` consecutive errors or
    /// timeouts the model answers alone (`path = "fallback"`) without trying the
    /// search until a trial after `breaker_cooldown_ms` succeeds.
    breaker: CircuitBreaker,
    pending: PendingMap,
    /// In a cluster, the store every replica's predictions are shared through.
    shared_pending: Option<Arc<dyn SharedPending>>,
    sink: Arc<dyn UpdateSink>,
    /// Hands out request ids that never repeat (see `ids`).
    ids: RequestIds,
    stats: EngineStats,
    /// The model was untrained (from `init-model`) when this engine started.
    started_fresh: bool,
    /// The model whose standardiser computed the memory's input keys.
    keyed_with: parking_lot::Mutex<Arc<Mlp>>,
}

/// True when an untrained model lets its neighbours vote from the first label
/// (`fresh_model = "knn"`): no cold-start bypass, and its own vote starts at the floor.
fn neighbours_first(started_fresh: bool, config: &EngineConfig) -> bool {
    started_fresh && config.fresh_model == crate::config::FreshModel::Knn
}

/// A standardiser move (in standard deviations of a feature) that re-keys the memory.
const REKEY_SHIFT: f32 = 0.05;

impl Engine {
    /// Starts the model thread and assembles the engine.
    pub fn new(parts: EngineParts) -> std::io::Result<Self> {
        let EngineParts {
            model,
            memory,
            sink,
            ids,
            config,
            batcher,
            max_client_batch,
            shared_pending,
        } = parts;
        let started_fresh = model.is_fresh();
        let model = Arc::new(ArcSwap::from_pointee(model));
        let keyed_with = parking_lot::Mutex::new(model.load_full());
        let thread = ModelThread::spawn(model.clone(), batcher)?;
        let ensemble = {
            let m = model.load();
            let setup = ensemble::Setup {
                input_dim: m.input_dim(),
                classes: m.num_classes(),
                config: &config,
            };
            // An untrained model starts at the floor: it has to earn its vote.
            let model_weight = if neighbours_first(started_fresh, &config) {
                config.hedge_floor
            } else {
                config.model_weight
            };
            ensemble::Ensemble::new(&setup, model_weight)
        };
        Ok(Self {
            ensemble,
            gate: ConfidenceGate::new(
                config.confidence_threshold,
                config.pseudo_labels,
                config.drift_delta,
                config.drift_threshold,
                config.drift_pause_labels,
            ),
            breaker: CircuitBreaker::new(
                config.breaker_failures,
                Duration::from_millis(config.breaker_cooldown_ms),
            ),
            pending: PendingMap::new(
                Duration::from_secs(config.pending_ttl_secs),
                config.pending_capacity,
            ),
            shared_pending,
            client: thread.client(),
            _model_thread: thread,
            model,
            memory,
            sink,
            max_client_batch,
            ids,
            stats: EngineStats::default(),
            started_fresh,
            keyed_with,
            config,
        })
    }

    /// The serving model.
    pub fn model(&self) -> arc_swap::Guard<Arc<Mlp>> {
        self.model.load()
    }

    /// Puts `model` into service (same shape: the checkpoint store checks it).
    /// Batches that already loaded the old version finish on it.
    pub fn swap_model(&self, model: Mlp) {
        // A checkpoint knows nothing of the server's key space: keep the memory's.
        let key = self.model.load().key_space();
        let model = Arc::new(model.with_key(key));
        self.model.store(model.clone());
        if key == crate::model::KeySpace::Input {
            // Input keys are standardised inputs: once the standardiser has moved,
            // stored keys and new queries no longer share a space. Early on (the
            // first standardiser, estimates from a few hundred rows) that is a large
            // move; later the running estimate barely moves and this stays quiet.
            let mut keyed = self.keyed_with.lock();
            if model.norm_shift(&keyed) > REKEY_SHIFT {
                let n = self.memory.rekey(&|f| model.input_key(f));
                tracing::debug!(rekeyed = n, version = model.version(), "memory re-keyed");
                *keyed = model;
            }
        }
    }

    /// Up to `n` recent inputs (concatenated) with their client labels where known:
    /// the probe set for comparing versions.
    pub fn probe(&self, n: usize) -> (Vec<f32>, Vec<Option<u32>>) {
        self.memory.recent_probe(n)
    }

    /// The k-NN memory.
    pub fn memory(&self) -> &Arc<Memory> {
        &self.memory
    }

    /// The request-path counters.
    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// The k-NN fault switch (chaos testing); see [`Engine::set_knn_fault_rate`].
    pub fn knn_fault(&self) -> &crate::knn::KnnFault {
        self.memory.fault()
    }

    /// Makes `rate` of the k-NN searches fail on purpose. Refused (`false`) unless
    /// the server was started with `engine.fault_injection = true`.
    pub fn set_knn_fault_rate(&self, rate: f64) -> bool {
        if !self.config.fault_injection {
            return false;
        }
        self.memory.set_fault_rate(rate);
        tracing::warn!(rate, "k-NN fault injection set");
        true
    }

    /// Whether the model can serve: its thread is running.
    pub fn model_alive(&self) -> bool {
        self._model_thread.is_alive()
    }

    /// The model thread's counters.
    pub fn batcher_stats(&self) -> &BatcherStats {
        self.client.stats()
    }

    /// The model queue's bound.
    pub fn batcher_capacity(&self) -> usize {
        self.client.capacity()
    }

    /// True if the model was untrained (from `init-model`) when the server started.
    pub fn started_fresh(&self) -> bool {
        self.started_fresh
    }

    /// True while the memory is too small to vote (never for a fresh model with
    /// `fresh_model = "knn"`).
    pub fn in_cold_start(&self) -> bool {
        !neighbours_first(self.started_fresh, &self.config)
            && self.memory.len() < self.config.cold_start_threshold
    }

    /// Predictions dropped from the pending map before a label came.
    pub fn pending_evicted(&self) -> u64 {
        self.pending.evicted()
    }

    /// A consistent-enough snapshot for `/v1/status` (each field is read atomically).
    pub fn status(&self) -> EngineStatus {
        let model = self.model.load();
        let vote = self.ensemble.report();
        EngineStatus {
            model_version: model.version(),
            cold_start: self.in_cold_start(),
            experiences: self.memory.len(),
            input_dim: model.input_dim(),
            num_classes: model.num_classes(),
            lambda: vote.lambda(),
            vote,
            breaker: self.breaker.state(),
            drift_active: self.gate.drift_active(),
            drifts: self.gate.drifts(),
            pending: self.pending.len(),
            pending_bytes: self.pending.heap_bytes(),
            updates: self.sink.stats(),
        }
    }

    /// Runs one forward pass of zeros so the first request does not pay for lazy
    /// initialisation; `/health/ready` turns green only after it.
    pub async fn warm_up(&self) -> Result<(), EngineError> {
        let dim = self.model.load().input_dim();
        let announcement = self.client.announce(1);
        self.client.forward(vec![0.0; dim], 1, announcement).await?;
        Ok(())
    }

    /// The request id allocator.
    pub fn request_ids(&self) -> &RequestIds {
        &self.ids
    }

    /// Puts predictions answered before a restart back in the pending map, each
    /// `age` old (those past the TTL are not kept), their embeddings recomputed by
    /// the serving model. Returns how many were restored.
    pub async fn restore_pending(
        &self,
        mut restored: Vec<(u64, Duration, PendingPrediction)>,
    ) -> Result<usize, EngineError> {
        let ttl = self.pending.ttl();
        restored.retain(|(_, age, _)| *age <= ttl);
        restored.sort_by_key(|(id, _, _)| *id);
        let keep = restored.len().saturating_sub(self.pending.capacity());
        restored.drain(..keep);
        let dim = self.model.load().input_dim();
        restored.retain(|(_, _, p)| p.features.len() == dim);
        let now = std::time::Instant::now();
        let mut count = 0;
        for chunk in restored.chunks_mut(256) {
            let flat: Vec<f32> = chunk
                .iter()
                .flat_map(|(_, _, p)| p.features.iter().copied())
                .collect();
            let announcement = self.client.announce(chunk.len());
            let out = self.client.forward(flat, chunk.len(), announcement).await?;
            let e = out.embed_dim;
            for (i, (id, age, p)) in chunk.iter_mut().enumerate() {
                p.embedding = out.embeddings[i * e..(i + 1) * e].to_vec();
                let at = now.checked_sub(*age).unwrap_or(now);
                self.pending.insert(*id, std::mem::take(p), at);
                count += 1;
            }
        }
        Ok(count)
    }
}

/// Checks that every value is finite, naming the first offender.
/// Refuses a row whose model output is not finite. Finite inputs can still overflow
/// the model (3e38 in every feature does); the NaN that comes out must reach neither
/// the client (JSON writes it as `null`), nor the memory, nor the training log.
fn check_output(
    field: impl Fn() -> String,
    probs: &[f32],
    embedding: &[f32],
) -> Result<(), EngineError> {
    if probs.iter().chain(embedding).all(|v| v.is_finite()) {
        Ok(())
    } else {
        Err(EngineError::Overflow { field: field() })
    }
}

/// Refuses a value that is not finite, or too large for the update-worker to learn
/// from ([`MAX_FEATURE_MAGNITUDE`](adaptserve_core::update::learner::MAX_FEATURE_MAGNITUDE)):
/// every accepted row becomes a training update, as a label or a pseudo-label.
fn check_finite(field: impl Fn() -> String, values: &[f32]) -> Result<(), EngineError> {
    use adaptserve_core::update::learner::MAX_FEATURE_MAGNITUDE;
    match values.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(EngineError::NotFinite {
            field: field(),
            index,
        }),
        None => match values.iter().position(|v| v.abs() > MAX_FEATURE_MAGNITUDE) {
            Some(index) => Err(EngineError::TooLarge {
                field: field(),
                index,
                value: values[index],
                limit: MAX_FEATURE_MAGNITUDE,
            }),
            None => Ok(()),
        },
    }
}
