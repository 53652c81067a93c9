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
//!                      (load, KL check, ArcSwap, truncate WAL, prune checkpoints)
//! ```
//!
//! - [`codec`]: the byte form of an update (WAL record = ring payload).
//! - [`checkpoints`]: the checkpoint directory and the serving record.
//! - [`spec`]: what a worker is started with.
//! - [`pipeline`]: the WAL writer thread, the `UpdateSink` the engine sees.
//! - [`pending_log`]: predictions awaiting a label, kept across restarts.
//! - [`swap`]: taking published versions into service, rollback, the sync barrier.

pub mod checkpoints;
pub mod codec;
pub mod pending_log;
pub mod pipeline;
pub mod spec;
pub mod swap;

pub use checkpoints::{Checkpoints, ServingRecord, applied_seq, parent_version};
pub use spec::WorkerSpec;
