//! The update path on the server's side: from an accepted update to new weights
//! serving.
//!
//! ```text
//! request path ──offer──▶ [bounded queue] ──▶ wal-writer thread ──append+commit──▶ WAL
//!                                                  │ then
//!                                                  ▼
//!                                   shared-memory ring ──▶ update-worker process
//!                                                                 │ publishes
//!                            swap task ◀── published_version ─────┘ model-v{N}
//!          (load, fence, KL guard, ArcSwap, truncate WAL, prune checkpoints)
//! ```
//!
//! - [`codec`], [`checkpoints`], [`spec`]: the byte form of an update, the
//!   checkpoint directory, a worker's spec; shared with the worker, from the core.
//! - [`pipeline`]: the WAL writer thread, the `UpdateSink` the engine sees.
//! - [`pending_log`]: predictions awaiting a label, kept across restarts.
//! - [`fence`], [`guard`]: which published versions are judged at all, and whether a
//!   judged one may serve; pure, in the core.
//! - [`swap`]: taking published versions into service (gathers what the fence and
//!   the guard read, acts on their answers), and the admin operations on versions:
//!   the sync barrier, rollback, checkpoint.

pub mod config;
pub mod pending_log;
pub mod pipeline;
pub mod swap;

// The parts the worker shares, and the pure rules that judge what it publishes,
// live in the core.
pub use adaptserve_core::update::{
    Checkpoints, Provenance, ServingRecord, Update, UpdateKind, WorkerConfig, WorkerSpec,
    applied_seq, checkpoints, codec, fence, guard, provenance, record, spec,
};
