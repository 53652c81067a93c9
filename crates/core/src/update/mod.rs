//! What the update path's two processes share: the [`Update`] record and its byte
//! form, the checkpoint directory with each version's metadata, the spec a worker
//! is started with, and the worker's settings.
//!
//! The server's side of the path (the WAL writer, the hot swap) lives in the server
//! crate; the worker's side in the `update-worker` crate. Both stand on this module,
//! so the worker links neither HTTP nor the k-NN index.
//!
//! - [`record`]: one training update.
//! - [`codec`]: its byte form (WAL record = ring payload).
//! - [`checkpoints`]: the checkpoint directory and the serving record.
//! - [`spec`]: what a worker is started with.
//! - [`settings`]: the worker's training and supervision settings.

pub mod checkpoints;
pub mod codec;
pub mod record;
pub mod settings;
pub mod spec;

pub use checkpoints::{Checkpoints, ServingRecord, applied_seq, parent_version};
pub use record::{Update, UpdateKind};
pub use settings::WorkerConfig;
pub use spec::WorkerSpec;
