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
//! - [`codec`]: the byte form of an update (WAL record = ring payload).
//! - [`checkpoints`]: the checkpoint directory and the serving record.
//! - [`spec`]: what a worker is started with.
//! - [`pipeline`]: the WAL writer thread, the `UpdateSink` the engine sees.
//! - [`pending_log`]: predictions awaiting a label, kept across restarts.
//! - [`fence`]: which published versions are judged at all (worker generation and
//!   parent); pure.
//! - [`guard`]: whether a judged version may serve (KL, sign test, young model); pure.
//! - [`swap`]: taking published versions into service (gathers what the fence and
//!   the guard read, acts on their answers), and the admin operations on versions:
//!   the sync barrier, rollback, checkpoint.

pub mod checkpoints;
pub mod codec;
pub mod fence;
pub mod guard;
pub mod pending_log;
pub mod pipeline;
pub mod spec;
pub mod swap;

pub use checkpoints::{Checkpoints, ServingRecord, applied_seq, provenance};
pub use fence::Provenance;
pub use spec::WorkerSpec;
