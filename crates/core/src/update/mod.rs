//! What the update path's two processes share: the [`Update`] record and its byte
//! form, the checkpoint directory with each version's metadata (its generation and
//! parent), the spec a worker is started with, the worker's settings, and the pure
//! rules that decide whether a published version may serve.
//!
//! The server's side of the path (the WAL writer, the hot swap) lives in the server
//! crate; the worker's side in the `update-worker` crate. Both stand on this module,
//! so the worker links neither HTTP nor the k-NN index.
//!
//! - [`record`]: one training update.
//! - [`codec`]: its byte form (WAL record = ring payload).
//! - [`checkpoints`]: the checkpoint directory and the serving record.
//! - [`feed`]: the ring and the WAL read as one in-order, exactly-once stream.
//! - [`learner`]: training on that stream (mini-batches, replay, standardiser);
//!   the update-worker and the cluster trainer both run it.
//! - [`spec`]: what a worker is started with.
//! - [`settings`]: the worker's training and supervision settings.
//! - [`fence`]: which published versions are judged at all (worker generation and
//!   parent); pure.
//! - [`guard`]: whether a judged version may serve (KL, sign test, young model);
//!   pure, so it can run wherever versions are produced.

pub mod checkpoints;
pub mod codec;
pub mod feed;
pub mod fence;
pub mod guard;
pub mod learner;
pub mod record;
pub mod settings;
pub mod spec;

pub use checkpoints::{Checkpoints, ServingRecord, applied_seq, provenance};
pub use fence::Provenance;
pub use record::{Update, UpdateKind};
pub use settings::WorkerConfig;
pub use spec::WorkerSpec;
