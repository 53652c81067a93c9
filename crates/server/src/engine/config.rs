//! The `[engine]` and `[batcher]` sections: what the request path does with a
//! model's answer (cold start, vote, gate, drift, pending labels) and how the model
//! thread batches. Each setting is defined here once, with its default and its check;
//! README.md's configuration block is tested against these defaults.

use serde::{Deserialize, Serialize};

use adaptserve_core::settings::{InvalidSetting, invalid, positive, unit_interval};

/// What the request path does with a model's answer: cold start, vote, gate.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// Below this many experiences in memory the model answers alone (cold start).
    pub cold_start_threshold: usize,
    /// `max(p)` at or above which an answer becomes a pseudo-labelled experience.
    pub confidence_threshold: f32,
    /// Whether confident answers are learned from at all.
    pub pseudo_labels: bool,
    /// Vote weight (trust) of a pseudo-label, labelled feedback having 1.0; its
    /// update is trained with weight `pseudo_trust × confidence`.
    pub pseudo_trust: f32,
    /// Priority of experiences stored during cold start (they bootstrap the memory).
    pub bootstrap_priority: f32,
    /// Starting weight λ of the model in the vote; Hedge adapts it from labelled feedback.
    pub model_weight: f32,
    /// Hedge learning rate η: how fast λ follows the voters' recent losses. The loss
    /// is each voter's zero-one loss (was its top class right?); the absolute loss
    /// `1 − p[label]`, tried in QUALITY.md, handed the vote to the sharpest voter.
    pub hedge_eta: f32,
    /// Floor on either voter's share, so that a voter that lost for a while can win
    /// back quickly after a drift (fixed-share Hedge).
    pub hedge_floor: f32,
    /// A third voter: an online softmax regression on the standardised input,
    /// trained on every label; Hedge gives it the share it earns. A linear boundary
    /// is learned faster this way than by the mini-batched network. Its standardiser
    /// and step size are its own (`crates/server/src/engine/linear/`).
    pub linear_voter: bool,
    /// A fourth voter: an online random forest of Hoeffding trees on the raw input,
    /// trained on every label; it wins where classes follow axis-aligned rules
    /// (`crates/server/src/engine/forest/`).
    pub forest_voter: bool,
    /// Neighbours consulted per vote.
    pub k: usize,
    /// Age, in experiences, at which a neighbour's vote weight halves. Closeness
    /// weighs by the inverse Euclidean distance between the unit keys, as River's
    /// weighted kNN does.
    pub half_life: f32,
    /// A k-NN search slower than this counts as a failure and the model answers alone.
    pub knn_timeout_us: u64,
    /// Consecutive k-NN failures that open the circuit breaker.
    pub breaker_failures: u32,
    /// How long an open breaker skips the k-NN before one trial search.
    pub breaker_cooldown_ms: u64,
    /// How long a prediction waits for its delayed label.
    pub pending_ttl_secs: u64,
    /// Most predictions awaiting a label; the oldest is dropped (and counted) beyond it.
    pub pending_capacity: usize,
    /// Page-Hinkley tolerance δ on the labelled error rate.
    pub drift_delta: f64,
    /// Page-Hinkley alarm threshold λ_PH.
    pub drift_threshold: f64,
    /// Labelled samples after a drift alarm during which pseudo-labels stay paused.
    pub drift_pause_labels: u64,
    /// On a drift alarm the memory keeps only its most recent `drift_keep`
    /// experiences (mostly the new concept's: the detector fires tens of labels after
    /// the change), so the vote stops answering for the old concept at once instead of
    /// waiting for new experiences to outnumber old ones. 0 keeps everything.
    pub drift_keep: u64,
    /// What answers while the memory is below `cold_start_threshold` if the model is
    /// fresh from `init-model` (untrained): `knn` (default) votes with the neighbours
    /// from the first experience, since a random model is worse than any labelled
    /// neighbour; `model` keeps the cold-start bypass, as for a pretrained model.
    pub fresh_model: FreshModel,
    /// Allows `POST /v1/admin/fault/knn` to make a share of k-NN searches fail, for
    /// chaos testing. Off in production: the route then answers 409.
    pub fault_injection: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            cold_start_threshold: 100,
            confidence_threshold: 0.7,
            pseudo_labels: true,
            pseudo_trust: 0.3,
            bootstrap_priority: 0.9,
            model_weight: 0.5,
            hedge_eta: 0.2,
            hedge_floor: 0.05,
            linear_voter: true,
            forest_voter: true,
            k: 5,
            half_life: 500.0,
            knn_timeout_us: 5_000,
            breaker_failures: 5,
            breaker_cooldown_ms: 1_000,
            pending_ttl_secs: 600,
            pending_capacity: 100_000,
            drift_delta: 0.005,
            drift_threshold: 30.0,
            drift_pause_labels: 200,
            drift_keep: 50,
            fresh_model: FreshModel::Knn,
            fault_injection: false,
        }
    }
}

impl EngineConfig {
    /// Refuses out-of-range settings, naming each as `engine.<key>`.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        let e = self;
        unit_interval("engine.confidence_threshold", e.confidence_threshold)?;
        unit_interval("engine.pseudo_trust", e.pseudo_trust)?;
        unit_interval("engine.bootstrap_priority", e.bootstrap_priority)?;
        unit_interval("engine.model_weight", e.model_weight)?;
        if !(e.hedge_floor >= 0.0 && e.hedge_floor < 0.5) {
            return Err(invalid(
                "engine.hedge_floor",
                format!("must be in [0, 0.5), got {}", e.hedge_floor),
            ));
        }
        if !(e.hedge_eta.is_finite() && e.hedge_eta >= 0.0) {
            return Err(invalid(
                "engine.hedge_eta",
                format!("must be >= 0, got {}", e.hedge_eta),
            ));
        }
        positive("engine.k", e.k)?;
        if !(e.half_life.is_finite() && e.half_life > 0.0) {
            return Err(invalid(
                "engine.half_life",
                format!("must be > 0, got {}", e.half_life),
            ));
        }
        positive("engine.breaker_failures", e.breaker_failures as usize)?;
        positive("engine.pending_capacity", e.pending_capacity)?;
        positive("engine.pending_ttl_secs", e.pending_ttl_secs as usize)?;
        Ok(())
    }
}

/// See [`EngineConfig::fresh_model`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FreshModel {
    Knn,
    Model,
}

/// The model thread's dynamic micro-batcher.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatcherConfig {
    /// Most rows in one forward pass.
    pub max_batch_size: usize,
    /// Longest a request waits for company. The batcher only waits for requests that
    /// are already in flight, so a lone client never pays it.
    pub max_queue_delay_us: u64,
    /// Forward-pass time the adaptive batch size steers towards.
    pub target_latency_us: u64,
    /// Bound of the model thread's queue; a full queue answers 429.
    pub queue_capacity: usize,
    /// How long the idle model thread keeps polling before it parks; 0 parks at
    /// once. Only requests above `inline_max_rows` reach it, so it does not spin by
    /// default.
    pub idle_spin_us: u64,
    /// A request of at most this many rows runs on the HTTP thread that took it (no
    /// thread handoff: each core computes its own connections' requests); larger
    /// ones go to the model thread and batch there. 0 sends everything through the
    /// model thread.
    pub inline_max_rows: usize,
}

impl Default for BatcherConfig {
    fn default() -> Self {
        Self {
            max_batch_size: 64,
            max_queue_delay_us: 200,
            target_latency_us: 1_000,
            queue_capacity: 1_000,
            idle_spin_us: 0,
            inline_max_rows: 4,
        }
    }
}

impl BatcherConfig {
    /// Refuses out-of-range settings, naming each as `batcher.<key>`.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        let b = self;
        positive("batcher.max_batch_size", b.max_batch_size)?;
        positive("batcher.queue_capacity", b.queue_capacity)?;
        positive("batcher.target_latency_us", b.target_latency_us as usize)?;
        Ok(())
    }
}
