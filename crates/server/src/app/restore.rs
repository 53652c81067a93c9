//! What a starting server rebuilds from its state dir, and the memory snapshots that
//! keep that rebuild short.
//!
//! - **The k-NN memory** is the newest snapshot (`memory.bin`) plus every update the
//!   WAL holds after the snapshot's position, fed through the same queue and in the
//!   same order as the live path fed them (labels, pseudo-labels, drift markers), so
//!   it comes back as it was: the memory is a view of the log. Keys are recomputed
//!   by the serving model (a snapshot's own are kept when its version serves).
//! - **Snapshots** are written every `memory.snapshot_interval_secs` off the request
//!   path; each lets the WAL be truncated up to its position.
//!
//! Damage never stops a start: an unreadable snapshot is set aside (`.corrupt`) and
//! the memory is rebuilt from whatever the WAL still holds; an undecodable WAL record
//! is skipped and counted.

use std::collections::HashSet;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::engine::{Update, UpdateKind};
use crate::knn::snapshot::Snapshot;
use crate::knn::{Experience, KnnError, Memory, snapshot};
use crate::model::Mlp;
use crate::resilience::Backoff;
use crate::update::codec;

/// The memory snapshot found at start, read before the WAL is opened: its position
/// is a floor for the WAL's numbering (a machine crash can take a WAL tail the
/// fsynced snapshot already covers, and numbers below it would be skipped by the
/// next replay).
#[derive(Debug)]
pub enum SnapshotOnDisk {
    /// No snapshot yet.
    None,
    Usable(Snapshot),
    /// Unreadable: set aside as `memory.bin.corrupt` and reported.
    Damaged,
}

impl SnapshotOnDisk {
    /// The log position the snapshot reflects (0 without one).
    pub fn position(&self) -> u64 {
        match self {
            Self::Usable(snap) => snap.logged_seq,
            Self::None | Self::Damaged => 0,
        }
    }
}

/// Reads the snapshot in `file` for a model of this shape, setting a damaged one
/// aside.
pub fn read_snapshot(file: &Path, input_dim: usize, embed_dim: usize) -> SnapshotOnDisk {
    match snapshot::read(file, input_dim, embed_dim) {
        Ok(None) => SnapshotOnDisk::None,
        Ok(Some(snap)) => SnapshotOnDisk::Usable(snap),
        Err(e) => {
            tracing::error!(error = %e, "the memory snapshot is unusable; rebuilding the memory from the WAL alone");
            let _ = std::fs::rename(file, file.with_extension("bin.corrupt"));
            SnapshotOnDisk::Damaged
        }
    }
}

/// What the memory was rebuilt from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryRestore {
    /// Experiences read from the snapshot.
    pub from_snapshot: usize,
    /// The snapshot's log position (0: none, or unusable).
    pub snapshot_seq: u64,
    /// WAL records replayed after it.
    pub replayed: u64,
    /// WAL records that could not be decoded (skipped).
    pub undecodable: u64,
    /// The snapshot was unusable and set aside.
    pub snapshot_damaged: bool,
    /// How long the rebuild took.
    pub millis: u64,
    /// The predictions (`request_id`s) the replayed labels answered: a crash
    /// between a label's WAL commit and its pending log record must not bring its
    /// prediction back.
    pub labelled: HashSet<u64>,
    /// The largest `request_id` an update in the replayed WAL came from.
    pub max_origin: u64,
}

/// Rebuilds `memory` from `snapshot` and the WAL in `wal_dir` after its position.
/// `drift_keep` is `engine.drift_keep`. Blocking: run it off the async threads.
pub fn memory(
    memory: &Memory,
    model: &Mlp,
    snapshot: SnapshotOnDisk,
    wal_dir: &Path,
    drift_keep: u64,
) -> anyhow::Result<MemoryRestore> {
    let started = Instant::now();
    let mut out = MemoryRestore::default();
    match snapshot {
        SnapshotOnDisk::None => {}
        SnapshotOnDisk::Usable(snap) => {
            let mut experiences = snap.experiences;
            if snap.model_version != model.version() {
                reembed(model, &mut experiences).context("cannot re-embed the memory snapshot")?;
            }
            out.from_snapshot = experiences.len();
            out.snapshot_seq = snap.logged_seq;
            for e in experiences {
                push(|| memory.submit_logged(e.clone(), snap.logged_seq));
            }
        }
        SnapshotOnDisk::Damaged => out.snapshot_damaged = true,
    }
    let mut position = out.snapshot_seq;
    // The WAL after the snapshot, in chunks: keys are computed a batch at a time.
    let mut chunk: Vec<(u64, Update)> = Vec::with_capacity(CHUNK);
    let mut failed = None;
    crate::wal::replay(wal_dir, out.snapshot_seq + 1, |seq, bytes| {
        position = seq;
        match codec::decode(bytes) {
            Ok(update) => {
                if let Some(origin) = update.origin {
                    out.max_origin = out.max_origin.max(origin);
                    if update.kind == UpdateKind::Label {
                        out.labelled.insert(origin);
                    }
                }
                chunk.push((seq, update));
            }
            Err(e) => {
                out.undecodable += 1;
                tracing::error!(seq, error = %e, "WAL record cannot be decoded; the memory skips it");
                return ControlFlow::Continue(());
            }
        }
        out.replayed += 1;
        if chunk.len() == CHUNK
            && let Err(e) = apply(memory, model, drift_keep, &mut chunk)
        {
            failed = Some(e);
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    })
    .context("cannot replay the WAL into the memory")?;
    if let Some(e) = failed {
        return Err(e);
    }
    apply(memory, model, drift_keep, &mut chunk)?;
    // The position moves on even when nothing after the snapshot entered the
    // memory, so the next snapshot does not send a restart back over it.
    push(|| memory.mark_logged(position));
    memory.flush(Duration::from_secs(60));
    out.millis = started.elapsed().as_millis() as u64;
    tracing::info!(
        from_snapshot = out.from_snapshot,
        snapshot_seq = out.snapshot_seq,
        replayed = out.replayed,
        experiences = memory.len(),
        ms = out.millis,
        "memory restored"
    );
    Ok(out)
}

/// Records whose keys are computed in one forward pass.
const CHUNK: usize = 256;

/// Keys the chunk's labels and pseudo-labels with `model`, then feeds the chunk to
/// the memory in log order.
fn apply(
    memory: &Memory,
    model: &Mlp,
    drift_keep: u64,
    chunk: &mut Vec<(u64, Update)>,
) -> anyhow::Result<()> {
    let dim = model.input_dim();
    let keyed: Vec<usize> = (0..chunk.len())
        .filter(|&i| chunk[i].1.kind != UpdateKind::Drift && chunk[i].1.features.len() == dim)
        .collect();
    let rows: Vec<&[f32]> = keyed
        .iter()
        .map(|&i| chunk[i].1.features.as_slice())
        .collect();
    let keys = keys_of(model, &rows).context("cannot key the WAL's experiences")?;
    for (&i, key) in keyed.iter().zip(keys) {
        chunk[i].1.key = Some(key);
    }
    for (seq, update) in chunk.drain(..) {
        match update.kind {
            UpdateKind::Drift => {
                if drift_keep > 0 {
                    push(|| memory.forget_logged(drift_keep, seq));
                }
            }
            UpdateKind::Label | UpdateKind::Pseudo => {
                if let Some(e) = crate::knn::Experience::from_update(update) {
                    push(|| memory.submit_logged(e.clone(), seq));
                }
            }
        }
    }
    Ok(())
}

/// The wait while the insert queue is full. Once the queue stays full the mean wait
/// (half the 400 µs cap) is the fixed 200 µs poll this replaced, so a restore tries
/// (and counts refused inserts) about as often as before; and the longest wait is far
/// shorter than the indexer takes to drain a full queue, so the replay never idles
/// the indexer.
const QUEUE_FULL: Backoff = Backoff::new(Duration::from_micros(200), Duration::from_micros(400));

/// Retries `submit` while the insert queue is full: a restore waits for the indexer
/// rather than drop. Any other refusal is logged and skipped.
fn push(mut submit: impl FnMut() -> Result<(), KnnError>) {
    let mut attempt = 0;
    loop {
        match submit() {
            Ok(()) => return,
            Err(KnnError::QueueFull { .. }) => {
                std::thread::sleep(QUEUE_FULL.full_jitter(attempt, &mut rand::rng()));
                attempt = attempt.saturating_add(1);
            }
            Err(e) => {
                tracing::warn!(error = %e, "an experience was refused while restoring the memory");
                return;
            }
        }
    }
}

/// Recomputes embeddings with `model`, in batches.
fn reembed(model: &Mlp, experiences: &mut [Experience]) -> Result<(), crate::model::ModelError> {
    for chunk in experiences.chunks_mut(CHUNK) {
        let rows: Vec<&[f32]> = chunk.iter().map(|e| e.features.as_slice()).collect();
        let keys = keys_of(model, &rows)?;
        for (e, key) in chunk.iter_mut().zip(keys) {
            e.embedding = key;
        }
    }
    Ok(())
}

/// The memory keys `model` gives `rows` (one input each), in one forward pass.
pub(crate) fn keys_of(
    model: &Mlp,
    rows: &[&[f32]],
) -> Result<Vec<Vec<f32>>, crate::model::ModelError> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let inputs: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    let out = model.forward(&inputs, rows.len())?;
    Ok((0..rows.len())
        .map(|i| out.embedding_row(i).to_vec())
        .collect())
}

/// Snapshots the memory every `every` until `stop` turns true.
pub async fn snapshot_loop(
    engine: Arc<crate::engine::Engine>,
    pipeline: Arc<crate::update::pipeline::Pipeline>,
    file: PathBuf,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let (engine, file, pipeline) = (engine.clone(), file.clone(), pipeline.clone());
        let written = tokio::task::spawn_blocking(move || {
            pipeline.save_memory_snapshot(&engine.model(), &file)
        })
        .await;
        match written {
            Ok(Ok(_)) => {}
            // The WAL keeps everything after the last good snapshot meanwhile.
            Ok(Err(e)) => tracing::error!(error = %e, "periodic memory snapshot failed"),
            Err(e) => tracing::error!(error = %e, "periodic memory snapshot task failed"),
        }
    }
}
