//! What the server tells a worker it starts: the [`WorkerSpec`], passed as one JSON
//! argument (`update-worker --spec '{...}'`).
//!
//! One argument rather than a flag per field: the worker is only ever started by the
//! server, the whole spec is versioned with the crate, and a spec that fails to parse
//! is refused at once with the field named.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::settings::WorkerConfig;

/// Everything a worker needs to start.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSpec {
    /// The shared-memory ring file.
    pub ring: PathBuf,
    /// The ring generation this spec was written for; a worker refuses another one.
    /// It stamps this generation into every checkpoint it publishes: the server
    /// admits only the versions of the generation it names live (`fence`).
    pub generation: u64,
    /// The WAL directory, read to replay what the ring did not carry.
    pub wal_dir: PathBuf,
    /// The checkpoint directory, where it starts from and publishes to.
    pub checkpoint_dir: PathBuf,
    /// The version it starts from (the serving one).
    pub start_version: u64,
    /// Updates at or below this sequence number are treated as applied even if the
    /// start version has not learned them: after a rejected or rolled-back version the
    /// server skips the updates that produced it instead of replaying them into the
    /// same divergence.
    pub applied_floor: u64,
    /// The server's pid: the worker exits when its parent is no longer this process.
    pub parent_pid: u32,
    /// Training and publishing settings.
    pub settings: WorkerConfig,
}

impl WorkerSpec {
    /// The JSON argument.
    pub fn to_arg(&self) -> String {
        serde_json::to_string(self).expect("a worker spec serialises: this is a bug")
    }

    /// Parses the JSON argument.
    pub fn from_arg(arg: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(arg)
    }
}
