//! The shared-memory ring between the server and the update-worker: the fast path of
//! the update path, and the only `unsafe` code in the crate.
//!
//! A single-producer single-consumer queue in a file under `/dev/shm` (mode 0600),
//! mapped by both processes with memmap2. The server's WAL writer thread produces;
//! the worker consumes. The producer never blocks: a full ring counts a drop and the
//! worker later reads the record from the WAL instead. The same mapping carries the
//! worker's side of the conversation (pid, heartbeat, `applied_seq`,
//! `published_version`) and the server's (`produced_seq`, `sync_target`), so the
//! two processes share no other channel.
//!
//! - `header`: the `#[repr(C)]` layout, versioned, a cache line per writer.
//! - `ring`: [`Ring`], [`Producer`], [`Consumer`] and the slot protocol.
//!
//! Why a hand-written ring rather than a crate: the queue's protocol *is* the
//! product here — cross-process, crash-tolerant on either side, checksummed,
//! recoverable by a new consumer mid-stream — and no maintained crate offers that
//! over a file mapping.

mod header;
mod ring;

use std::path::PathBuf;

pub use header::LAYOUT_VERSION;
pub use ring::{Consumer, Producer, Ring, process_start};

/// Why a ring cannot be created or opened.
#[derive(Debug, thiserror::Error)]
pub enum IpcError {
    #[error("ring {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not an adaptserve ring (magic {found:#018x})")]
    BadMagic { path: PathBuf, found: u64 },
    #[error("ring layout version {found}, this build speaks {expected}")]
    VersionMismatch { expected: u32, found: u32 },
    #[error("ring {path} has an impossible layout: {reason}")]
    BadLayout { path: PathBuf, reason: String },
}

/// Why a push did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// Every slot is taken; the drop is counted in the header.
    #[error("the ring is full")]
    Full,
    /// The payload does not fit a slot.
    #[error("a {len}-byte payload does not fit a {max}-byte slot")]
    TooLarge { len: usize, max: usize },
}

/// `/dev/shm` where it exists (memory, never written back to disk), else the
/// temp dir.
pub fn default_dir() -> PathBuf {
    let shm = PathBuf::from("/dev/shm");
    if shm.is_dir() {
        shm
    } else {
        std::env::temp_dir()
    }
}
