//! One training update: what the request path hands the update path, what the WAL
//! logs and the ring carries (in the byte form of [`super::codec`]), what the
//! worker learns from and what the k-NN memory keeps.

/// What kind of experience an update carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateKind {
    /// A label a client sent: trust 1.0.
    Label,
    /// The server's own confident answer: trust `pseudo_trust`.
    Pseudo,
    /// A marker, not an example (no features, weight 0): the server's drift detector
    /// alarmed, so the labels before it describe an old concept. The worker keeps
    /// only its most recent `replay_keep_on_drift` labels for replay, which would
    /// otherwise keep teaching the old concept for `replay_capacity` labels.
    Drift,
}

/// One training update for the worker.
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    pub kind: UpdateKind,
    /// Raw features (the worker owns the standardiser).
    pub features: Vec<f32>,
    pub label: u32,
    /// Sample weight in the loss.
    pub weight: f32,
    /// The model version that saw the input, so stale updates can be told apart.
    pub model_version: u64,
    /// The prediction (`request_id`) this update came from, if any: a label for a
    /// prediction the memory holds as a pseudo-label supersedes it.
    pub origin: Option<u64>,
    /// The experience's vote weight in the memory.
    pub trust: f32,
    /// The experience's eviction tier in the memory.
    pub priority: f32,
    /// The memory key (the embedding) the request computed, so the memory need not
    /// compute it again. Not logged: a replay recomputes it with the serving model.
    /// `None` keeps the update out of the memory.
    pub key: Option<Vec<f32>>,
}

impl Update {
    /// A drift marker (see [`UpdateKind::Drift`]).
    pub fn drift(model_version: u64) -> Self {
        Self {
            kind: UpdateKind::Drift,
            features: Vec::new(),
            label: 0,
            weight: 0.0,
            model_version,
            origin: None,
            trust: 0.0,
            priority: 0.0,
            key: None,
        }
    }
}
