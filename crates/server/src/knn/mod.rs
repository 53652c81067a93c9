//! The k-NN memory of past experiences: the part of the vote that asks "which past
//! experiences looked like this input, and what were they?".
//!
//! # Why it is built this way
//! - **Nothing inserts on the request path.** An hnsw_rs insert costs hundreds of
//!   microseconds; a request must never pay that. [`Memory::submit`] only pushes onto a
//!   bounded queue (a full queue drops and counts). One background thread,
//!   `knn-indexer`, moves experiences into the store in batches and then feeds the
//!   graph in short time slices.
//! - **Two indexes behind one trait ([`KnnIndex`]).** A graph search visits a few
//!   hundred nodes, paying hashing, allocation and pointer chasing for each; an exact
//!   scan streams a contiguous matrix through SIMD registers at a few nanoseconds a
//!   row. Below [`MemoryConfig::hnsw_crossover`] live experiences the scan is both
//!   faster and exact, so it serves; above it HNSW serves. At dim 32 the crossover is
//!   near 60k experiences (`benches/knn.rs`). The scan is also the oracle that HNSW
//!   recall is measured against, in a test (≥ 0.95 at 1k and 10k) and in the bench.
//! - **Tombstones instead of deletes.** hnsw_rs cannot delete a point. An evicted
//!   experience stays in the graph and search drops hits that are no longer in the
//!   store, over-fetching to make up for them. When tombstones pass
//!   [`MemoryConfig::rebuild_tombstone_ratio`] of the graph, a background thread builds
//!   a fresh graph from the live rows and the indexer swaps it in atomically; searches
//!   keep using the old graph meanwhile and never wait for a build.
//! - **No gap between store and graph.** The graph lags the store. Rows not yet in the
//!   graph (the "tail") are scanned exactly and merged, so a vote misses only what is
//!   still in the submit queue.
//!
//! # Layout
//! - `config`: [`MemoryConfig`], its defaults and their reasons, validation.
//! - `store`: the experience buffer: matrix and parallel arrays, eviction, expiry.
//! - `exact`: the SIMD-friendly scan, the top-k selection, [`ExactIndex`].
//! - `hnsw`: the hnsw_rs graph, tombstone filtering, the tail merge, (re)builds,
//!   [`HnswIndex`].
//! - `indexer`: the background thread that drains the queue and feeds the graph.
//! - `memory`: the [`Memory`] facade the engine uses, and [`MemoryStats`].
//! - [`synthetic`]: seeded clustered embeddings for the tests and benches.
//! - [`snapshot`]: the memory's file at shutdown and restart.

mod config;
mod exact;
mod fault;
mod hnsw;
mod indexer;
mod memory;
pub mod snapshot;
mod store;
pub mod synthetic;
#[cfg(test)]
mod tests;

use std::fmt;

pub use config::{KeyChoice, MemoryConfig};
pub use exact::ExactIndex;
pub use fault::KnnFault;
pub use hnsw::HnswIndex;
pub use memory::{Memory, MemoryStats};

/// One past experience, as the engine hands it to [`Memory::submit`].
#[derive(Debug, Clone, PartialEq)]
pub struct Experience {
    /// The model's embedding of the input, `dim` values. The memory normalises it to
    /// unit length on insertion, so similarity is a dot product.
    pub embedding: Vec<f32>,
    /// The (standardised) input features: kept so a snapshot can re-embed the memory
    /// under a new model; never searched.
    pub features: Vec<f32>,
    /// The class this experience votes for.
    pub label: u32,
    /// How much its vote counts: 1.0 for labelled feedback, `pseudo_trust` for
    /// pseudo-labels.
    pub trust: f32,
    /// Eviction rank: when the buffer is full the lowest priority goes first, then the
    /// oldest.
    pub priority: f32,
    /// The prediction (its `request_id`) this experience came from, if any. A later
    /// experience with the same origin, i.e. the client's label for a prediction
    /// the server had learned as a pseudo-label, supersedes it in place: the guess
    /// and the truth for one input must not vote twice, nor the guess at all once
    /// the truth is known. Not kept in snapshots (request ids restart).
    pub origin: Option<u64>,
}

impl Experience {
    /// The experience a label or pseudo-label with a key becomes in the memory; a
    /// drift marker, or an update without a key, becomes none.
    pub fn from_update(update: crate::update::Update) -> Option<Self> {
        use crate::update::UpdateKind;
        let embedding = update.key.filter(|_| update.kind != UpdateKind::Drift)?;
        Some(Self {
            embedding,
            features: update.features,
            label: update.label,
            trust: update.trust,
            priority: update.priority,
            origin: update.origin,
        })
    }
}

/// One search hit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Neighbor {
    /// The experience's id: its insertion tick, unique and increasing.
    pub id: u64,
    /// Cosine similarity to the query, in [-1, 1].
    pub similarity: f32,
    /// The experience's label.
    pub label: u32,
    /// The experience's trust.
    pub trust: f32,
    /// Experiences inserted after this one, at search time (0 = the newest).
    pub age: u64,
}

/// Which index answered a search.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// The exact scan over the contiguous matrix.
    Exact,
    /// The hnsw_rs graph, merged with an exact scan of the un-indexed tail.
    Hnsw,
}

impl Backend {
    /// The name used in `/v1/status` and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Exact => "exact",
            Backend::Hnsw => "hnsw",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The answer to a search.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchResult {
    /// At most `k` neighbours, best first (similarity descending, newer first on ties).
    pub neighbors: Vec<Neighbor>,
    /// Which index answered.
    pub backend: Backend,
}

/// Everything that can go wrong in the memory.
#[derive(Debug, thiserror::Error)]
pub enum KnnError {
    /// A query or embedding does not have the memory's dimension.
    #[error("vector has {found} dimensions, the memory expects {expected}")]
    DimensionMismatch {
        /// The memory's `dim`.
        expected: usize,
        /// The length received.
        found: usize,
    },
    /// A query that cannot be searched (e.g. a non-finite value).
    #[error("invalid query: {reason}")]
    InvalidQuery {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An experience that cannot be stored (e.g. a zero or non-finite embedding).
    #[error("invalid experience: {reason}")]
    InvalidExperience {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The insert queue is full; the experience was dropped and counted.
    #[error("the memory's insert queue is full ({capacity} experiences); experience dropped")]
    QueueFull {
        /// The queue bound (`insert_queue`).
        capacity: usize,
    },
    /// The memory has been shut down and takes no more experiences.
    #[error("the memory is shut down")]
    ShutDown,
    /// A failure injected on purpose ([`Memory::set_fault_rate`]).
    #[error("injected k-NN fault")]
    InjectedFault,
    /// The HNSW graph failed (hnsw_rs panicked) or a build was cancelled.
    #[error("HNSW index unavailable: {reason}")]
    IndexUnavailable {
        /// What happened.
        reason: String,
    },
    /// A [`MemoryConfig`] field is out of range.
    #[error("invalid memory config `{field}`: {reason}")]
    InvalidConfig {
        /// The field.
        field: &'static str,
        /// Why it is rejected.
        reason: String,
    },
    /// A background thread could not be started.
    #[error("cannot spawn the {thread} thread")]
    Spawn {
        /// The thread's name.
        thread: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// One trait over the two index implementations, so the memory can pick one per query
/// and tests and benches can compare them (the exact scan is the recall oracle).
///
/// Both search the same store and apply the same rules: only live experiences, none
/// older than `max_age`, similarity = cosine, best first.
pub trait KnnIndex: Send + Sync {
    /// Which implementation this is.
    fn backend(&self) -> Backend;
    /// The `k` most similar live experiences, best first. `k` larger than the memory
    /// returns everything eligible; `k == 0` returns nothing.
    fn search(&self, query: &[f32], k: usize) -> Result<SearchResult, KnnError>;
    /// Live experiences this index can return.
    fn len(&self) -> usize;
    /// Whether there is nothing to find.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
