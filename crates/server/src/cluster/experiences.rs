//! Shared experiences: every other replica's updates, read from the label stream
//! into this replica's k-NN memory, so a label given anywhere changes the vote
//! everywhere.
//!
//! Inserts are idempotent by `(replica, seq)`: per replica, the highest sequence
//! number inserted is kept, and the stream carries each replica's records in order,
//! so anything at or below it is a repeat. That map and the stream position are
//! written beside the memory snapshot each time one is taken, after it: a restart
//! goes on from there, and at worst misses the few entries read between the two,
//! which it would otherwise hold twice. A replica with no position, or whose
//! position the trainer has trimmed away, seeds from the newest entries instead.
//! Drift markers of other replicas are not applied: each replica's own drift
//! detector decides for its memory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use adaptserve_cluster::labels::{self, Label};
use adaptserve_cluster::link::Retry;
use adaptserve_cluster::reply::StreamId;
use adaptserve_cluster::{ClusterError, Link};
use serde::Deserialize;

use super::Replica;
use crate::engine::{Engine, Update, UpdateKind};
use crate::knn::Experience;
use crate::update::codec;

/// Entries per read.
const READ_COUNT: usize = 256;
/// How long one read waits.
const BLOCK: Duration = Duration::from_secs(1);
/// How often the follower checks that its position is still on the stream.
const TRIM_CHECK: Duration = Duration::from_secs(10);

/// How far the memory has read the stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Position {
    /// The last entry read.
    pub stream: StreamId,
    /// Per replica, the highest sequence number inserted.
    pub seen: BTreeMap<u16, u64>,
}

impl Position {
    fn file(state_dir: &Path) -> PathBuf {
        state_dir.join("cluster-memory.json")
    }

    /// The position saved with the last snapshot; the start if none (or unreadable,
    /// which is logged: the memory then seeds from the newest entries).
    pub fn load(state_dir: &Path) -> Self {
        let file = Self::file(state_dir);
        match std::fs::read(&file) {
            Ok(bytes) => {
                #[derive(Deserialize)]
                struct Saved {
                    stream: String,
                    seen: BTreeMap<u16, u64>,
                }
                let parsed = serde_json::from_slice::<Saved>(&bytes)
                    .map_err(|e| e.to_string())
                    .and_then(|s| {
                        s.stream
                            .parse()
                            .map(|stream| Self {
                                stream,
                                seen: s.seen,
                            })
                            .map_err(|e: ClusterError| e.to_string())
                    });
                parsed.unwrap_or_else(|e| {
                    tracing::error!(file = %file.display(), error = %e,
                        "the memory's stream position is unreadable; seeding from the newest entries");
                    Self::default()
                })
            }
            Err(_) => Self::default(),
        }
    }

    /// Writes the position (atomically); a failure is logged, the next snapshot
    /// tries again.
    pub fn save(&self, state_dir: &Path) {
        let json = serde_json::json!({"stream": self.stream.to_string(), "seen": self.seen});
        let file = Self::file(state_dir);
        if let Err(e) = crate::model::store::write_atomic(&file, json.to_string().as_bytes()) {
            tracing::warn!(file = %file.display(), error = %e, "cannot save the memory's stream position");
        }
    }
}

pub(super) async fn run(
    replica: Arc<Replica>,
    link: Link,
    engine: Arc<Engine>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut retry = Retry::new(Duration::from_millis(100), Duration::from_secs(2));
    let mut checked: Option<Instant> = None;
    loop {
        let step = async {
            let at = replica.position.lock().stream;
            let trimmed = if checked.is_none_or(|t| t.elapsed() >= TRIM_CHECK) {
                checked = Some(Instant::now());
                match labels::first_id(&link).await? {
                    Some(first) => at != StreamId::ZERO && first > at,
                    None => false,
                }
            } else {
                false
            };
            if at == StreamId::ZERO || trimmed {
                replica.stats.reseeds.fetch_add(1, Ordering::Relaxed);
                let newest = labels::newest(&link, replica.config.reseed).await?;
                tracing::info!(
                    entries = newest.len(),
                    trimmed,
                    "seeding the memory from the newest shared experiences"
                );
                if newest.is_empty() {
                    // An empty stream: follow it from its start.
                    replica.position.lock().stream = StreamId { ms: 0, seq: 1 };
                    return Ok(Vec::new());
                }
                return Ok(newest);
            }
            labels::read_after(&link, at, READ_COUNT, Some(BLOCK)).await
        };
        let read = tokio::select! {
            _ = stop.changed() => return,
            read = step => read,
        };
        match read {
            Ok(entries) => {
                replica.up();
                retry.reset();
                insert(&replica, &engine, entries).await;
            }
            Err(e) => {
                replica.down(&e);
                tokio::select! {
                    _ = stop.changed() => return,
                    () = tokio::time::sleep(retry.next_delay()) => {}
                }
            }
        }
    }
}

/// Inserts what is new in `entries` into the memory, keyed by the serving model,
/// and moves the position past them.
async fn insert(replica: &Replica, engine: &Arc<Engine>, entries: Vec<Label>) {
    let Some(last) = entries.last().map(|e| e.id) else {
        return;
    };
    let stats = &replica.stats;
    let mut fresh: Vec<Update> = Vec::new();
    let mut seen = replica.position.lock().seen.clone();
    for entry in &entries {
        if entry.replica == replica.id {
            continue;
        }
        stats.experiences_received.fetch_add(1, Ordering::Relaxed);
        let mark = seen.entry(entry.replica).or_insert(0);
        if entry.seq <= *mark {
            stats.experiences_duplicates.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        *mark = entry.seq;
        match codec::decode(&entry.payload) {
            Ok(update) if matches!(update.kind, UpdateKind::Label | UpdateKind::Pseudo) => {
                fresh.push(update)
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(id = %entry.id, error = %e, "an undecodable shared experience; skipped")
            }
        }
    }
    if !fresh.is_empty() {
        let model = engine.model().clone();
        let keyed = tokio::task::spawn_blocking(move || {
            let rows: Vec<&[f32]> = fresh.iter().map(|u| u.features.as_slice()).collect();
            crate::app::restore::keys_of(&model, &rows).map(|keys| (fresh, keys))
        })
        .await;
        match keyed {
            Ok(Ok((fresh, keys))) => {
                for (mut update, key) in fresh.into_iter().zip(keys) {
                    update.key = Some(key);
                    if let Some(experience) = Experience::from_update(update)
                        && engine.memory().submit(experience).is_ok()
                    {
                        stats.experiences_inserted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            // A row that does not fit this model (another replica serving another
            // shape): nothing from this read is inserted, and it is said why.
            Ok(Err(e)) => tracing::error!(error = %e, "cannot key shared experiences; skipped"),
            Err(e) => tracing::error!(error = %e, "shared experience keying task failed"),
        }
    }
    let mut position = replica.position.lock();
    position.stream = last;
    position.seen = seen;
}
