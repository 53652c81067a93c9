//! Taking published versions into service, and the admin operations on versions.
//!
//! [`UpdatePath`] is the server's hub of the update path. Its swap task polls the
//! ring header's `published_version` (one atomic load every `poll_ms`); a new
//! version is loaded and compared with the serving one on a probe set of recent
//! inputs off the async threads. Above `kl_reject_threshold` — unless it also
//! answers the probe's client-labelled rows more accurately beyond chance (a sign
//! test over the rows where the two disagree), which is what learning looks like —
//! it is rejected and the worker restarts from the serving version,
//! skipping the updates that produced the rejected one; otherwise it is swapped in with ArcSwap (batches already holding the
//! old version finish on it), `serving.json` is rewritten, the WAL is truncated below
//! what the new version has learned and old checkpoints are pruned.
//!
//! A rejection restarts the worker, but the restart is not instant: until the old
//! worker is gone it may publish again, on top of the version just rejected. Such a
//! descendant carries the rejected change with it, whatever its own KL says (it is
//! compared with the serving version and may happen to answer the probe alike), so
//! it is refused by lineage, without a comparison and without a second restart. A
//! rollback treats the version it steps away from the same way: the old worker's
//! next version, trained from it, would otherwise undo the rollback. Ancestry is
//! traced through the checkpoints on disk; where a link is pruned, the version is
//! compared like any other.
//!
//! The *settled* sequence number — every update at or below it is either in the
//! serving weights or was deliberately skipped — is published on a `watch` channel,
//! which is what the sync barrier waits on.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use super::checkpoints::{Checkpoints, ServingRecord, applied_seq, parent_version};
use super::pipeline::Pipeline;
use crate::alerts::{Alerts, Severity};
use crate::config::SwapConfig;
use crate::engine::{Engine, SinkError};
use crate::model::kl::compare;
use crate::model::{Mlp, ModelError};
use crate::supervisor::{StartPoint, Supervisor};

/// The one-sided significance at which a new version's accuracy on the labelled
/// probe rows overrules the KL check.
const SIGN_TEST_P: f64 = 0.05;

/// Labelled probe rows on which the two versions must disagree before the sign test
/// is heard at all. The labelled rows are the newest labels, which the new version
/// has just trained on, so a handful won says little; ten is still within reach
/// right after a drift alarm (the soak's 0.73 against 0.32 on 22 rows is about 10
/// against 1).
const MIN_DISAGREEMENTS: usize = 10;

/// True when a version right on `new_only` labelled rows where the serving one is
/// wrong, and wrong on `old_only` where it is right, is better beyond chance: a
/// one-sided sign test over the rows where the two disagree. The rows where both are
/// right or both wrong say nothing about which is better.
///
/// A fixed row count did not do: right after a drift alarm the memory, and so the
/// probe, keeps only its newest experiences, and a version that had learned the new
/// concept (0.73 against 0.32 on 22 labelled rows, in the 1-hour soak) was rejected
/// for having fewer than 32 rows, its updates thrown away with it.
fn significantly_better(new_only: usize, old_only: usize) -> bool {
    let n = new_only + old_only;
    if new_only <= old_only || n < MIN_DISAGREEMENTS {
        return false;
    }
    // P(X >= new_only) for X ~ Binomial(n, 1/2), term by term: C(n, k) / 2^n, in
    // logarithms so that 2^-n cannot underflow (it would past 1074 rows, and a zero
    // tail would call any lead significant).
    let mut ln_term = n as f64 * 0.5f64.ln();
    let mut tail = 0.0;
    for k in 0..=n {
        if k >= new_only {
            tail += ln_term.exp();
        }
        ln_term += ((n - k) as f64 / (k + 1) as f64).ln();
    }
    tail < SIGN_TEST_P
}

/// Why an update-path operation failed.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("no update worker is configured, so the weights do not learn")]
    NoWorker,
    #[error(
        "updates up to seq {target} were not applied within {timeout_ms} ms (applied through {settled})"
    )]
    SyncTimeout {
        target: u64,
        settled: u64,
        timeout_ms: u64,
    },
    #[error("version {version} is not on disk (kept: {available:?})")]
    UnknownVersion { version: u64, available: Vec<u64> },
    #[error("checkpoint v{version} cannot be loaded: {source}")]
    Checkpoint { version: u64, source: ModelError },
    #[error("the update log: {0}")]
    Log(#[from] SinkError),
    #[error("cannot write server state: {0}")]
    State(String),
}

/// Counters of swaps and rejections, for `/v1/status` and the metrics.
#[derive(Debug, Default)]
pub struct SwapStats {
    /// Versions taken into service.
    pub swaps: AtomicU64,
    /// Versions rejected by the KL check, failing to load, or descended from a
    /// rejected version.
    pub rejections: AtomicU64,
    /// The KL of the last version compared, as f64 bits.
    last_kl: AtomicU64,
    /// An exponential mean of the KLs compared, as f64 bits (the health metric).
    mean_kl: AtomicU64,
}

impl SwapStats {
    /// KL of the last version compared.
    pub fn last_kl(&self) -> f64 {
        f64::from_bits(self.last_kl.load(Ordering::Relaxed))
    }

    /// Exponential mean (weight 0.2 on the newest) of the KLs compared.
    pub fn mean_kl(&self) -> f64 {
        f64::from_bits(self.mean_kl.load(Ordering::Relaxed))
    }

    fn record_kl(&self, kl: f64) {
        let compared = self.swaps.load(Ordering::Relaxed) + self.rejections.load(Ordering::Relaxed);
        let mean = if compared == 0 {
            kl
        } else {
            0.8 * self.mean_kl() + 0.2 * kl
        };
        self.last_kl.store(kl.to_bits(), Ordering::Relaxed);
        self.mean_kl.store(mean.to_bits(), Ordering::Relaxed);
    }
}

/// What `/v1/admin/sync` and `/v1/admin/checkpoint` answer.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct SyncReply {
    pub model_version: u64,
    pub applied_seq: u64,
}

/// What [`UpdatePath::new`] assembles.
#[derive(Debug)]
pub struct UpdateParts {
    pub engine: Arc<Engine>,
    pub pipeline: Arc<Pipeline>,
    pub worker: Supervisor,
    pub alerts: Arc<Alerts>,
    pub store: Checkpoints,
    pub state_dir: PathBuf,
    pub config: SwapConfig,
    /// The serving record's floor.
    pub settled: u64,
}

/// The server's side of the update path.
#[derive(Debug)]
pub struct UpdatePath {
    engine: Arc<Engine>,
    pipeline: Arc<Pipeline>,
    worker: Supervisor,
    alerts: Arc<Alerts>,
    store: Checkpoints,
    state_dir: PathBuf,
    config: SwapConfig,
    settled: watch::Sender<u64>,
    /// Serialises swaps and rollbacks (an admin-path lock, never on the request path).
    versions: tokio::sync::Mutex<()>,
    stats: SwapStats,
    /// Recently rejected versions, whose descendants are refused too.
    rejected: parking_lot::Mutex<Rejected>,
}

/// How many refused lines [`Rejected`] remembers. A worker restarted after a
/// rejection or a rollback publishes from the serving version, so only the few
/// versions the old worker published before it died can descend from an entry; the
/// newest 64 entries cover many restarts' worth.
const REMEMBERED_REJECTIONS: usize = 64;

/// The rejected versions (and versions rolled back from) that may still have
/// descendants in flight, oldest entry first. Kept in the order they were entered,
/// not by number: a rollback enters the version it left, usually older than every
/// version rejected since, and it must not be the first one forgotten.
#[derive(Debug, Default, Clone)]
struct Rejected(std::collections::VecDeque<u64>);

impl Rejected {
    /// Remembers `version` as rejected, forgetting the oldest entries beyond the bound.
    fn insert(&mut self, version: u64) {
        self.0.retain(|&v| v != version);
        self.0.push_back(version);
        while self.0.len() > REMEMBERED_REJECTIONS {
            self.0.pop_front();
        }
    }

    /// An operator rolled back from `from` to `to`. `to` serves, so what is trained
    /// from it is learning again, even if it was rejected once. What the old worker
    /// trains from `from` would undo the rollback if it were swapped in, so that line
    /// is refused like a rejected one.
    fn rolled_back(&mut self, from: u64, to: u64) {
        self.0.retain(|&v| v != to);
        if from != to {
            self.insert(from);
        }
    }

    /// True when a checkpoint trained from `parent` inherits a rejected change.
    fn taints(&self, parent: Option<u64>) -> bool {
        parent.is_some_and(|p| self.0.contains(&p))
    }

    /// True when `model` descends from a rejected version. The swap task looks only
    /// at the newest published version, so the versions between it and the serving
    /// one may never have been considered: their parents are read from the
    /// checkpoints on disk, back to a version no newer than `serving`. A link that
    /// is missing (pruned, or no provenance) ends the walk as untainted, and the
    /// version is compared like any other.
    fn descends(&self, store: &Checkpoints, model: &Mlp, serving: u64) -> bool {
        let mut parent = parent_version(model);
        for _ in 0..MAX_LINEAGE_WALK {
            let Some(p) = parent else {
                return false;
            };
            if self.taints(Some(p)) {
                return true;
            }
            if p <= serving {
                return false;
            }
            parent = store.load(p).ok().and_then(|m| parent_version(&m));
        }
        false
    }
}

/// Ancestors [`Rejected::descends`] reads at most.
const MAX_LINEAGE_WALK: usize = 64;

impl UpdatePath {
    /// Assembles the hub.
    pub fn new(parts: UpdateParts) -> Arc<Self> {
        Arc::new(Self {
            engine: parts.engine,
            pipeline: parts.pipeline,
            worker: parts.worker,
            alerts: parts.alerts,
            store: parts.store,
            state_dir: parts.state_dir,
            config: parts.config,
            settled: watch::Sender::new(parts.settled),
            versions: tokio::sync::Mutex::new(()),
            stats: SwapStats::default(),
            rejected: parking_lot::Mutex::new(Rejected::default()),
        })
    }

    /// The WAL pipeline.
    pub fn pipeline(&self) -> &Arc<Pipeline> {
        &self.pipeline
    }

    /// The worker handle.
    pub fn worker(&self) -> &Supervisor {
        &self.worker
    }

    /// The alert hub.
    pub fn alerts(&self) -> &Arc<Alerts> {
        &self.alerts
    }

    /// Swap counters.
    pub fn stats(&self) -> &SwapStats {
        &self.stats
    }

    /// Every update at or below this is in the serving weights or was skipped.
    pub fn settled(&self) -> u64 {
        *self.settled.borrow()
    }

    /// Polls for published versions until `stop` flips to true.
    pub async fn run_swaps(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut seen = self.pipeline.ring().published_version();
        let mut tick = tokio::time::interval(Duration::from_millis(self.config.poll_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            // The ring is reloaded each tick: the supervisor replaces it per restart.
            let published = self.pipeline.ring().published_version();
            if published > seen {
                seen = published;
                self.consider(published).await;
            }
        }
    }

    /// Loads `version`, checks it against the serving one, swaps or rejects it.
    async fn consider(&self, version: u64) {
        let _guard = self.versions.lock().await;
        let old: Arc<Mlp> = self.engine.model().clone();
        if old.version() == version {
            return;
        }
        let (probe, labels) = self.engine.probe(self.config.probe_size);
        let store = self.store.clone();
        let rejected = self.rejected.lock().clone();
        let compared = tokio::task::spawn_blocking(move || {
            let new = store.load(version)?;
            if rejected.descends(&store, &new, old.version()) {
                return Ok((new, None));
            }
            let comparison = compare(&old, &new, &probe, &labels)?;
            Ok::<_, ModelError>((new, Some(comparison)))
        })
        .await;
        let serving = self.engine.model().version();
        let (new, cmp) = match compared {
            Ok(Ok((new, Some(cmp)))) => (new, cmp),
            Ok(Ok((new, None))) => {
                // The worker asked to restart is still publishing on top of a
                // rejected version; its replacement will learn these updates again.
                self.rejected.lock().insert(version);
                self.stats.rejections.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    version,
                    parent = parent_version(&new),
                    serving,
                    "refused a new version: it descends from a rejected version or one rolled back from (the worker that trained it is being replaced)"
                );
                return;
            }
            Ok(Err(e)) => {
                tracing::error!(version, error = %e, "a published checkpoint cannot be loaded; rejecting it");
                self.rejected.lock().insert(version);
                self.stats.rejections.fetch_add(1, Ordering::Relaxed);
                self.restart_worker(serving, self.settled()).await;
                return;
            }
            Err(e) => {
                tracing::error!(version, error = %e, "the checkpoint comparison task failed");
                return;
            }
        };
        self.stats.record_kl(cmp.kl);
        let applied = applied_seq(&new);
        let floor = applied.max(self.settled());
        // A large move that also answers recent client labels better is learning
        // (a fresh model's first versions move a lot, and so does every version right
        // after a drift); a large move that does not is what the check exists to stop.
        let learned = significantly_better(cmp.new_only, cmp.old_only);
        let young = self.engine.started_fresh()
            && self.engine.stats().labels.load(Ordering::Relaxed) < self.config.unguarded_labels;
        if cmp.kl > self.config.kl_reject_threshold && !learned && !young {
            self.rejected.lock().insert(version);
            self.stats.rejections.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                version,
                serving,
                kl = cmp.kl,
                threshold = self.config.kl_reject_threshold,
                labelled = cmp.labelled,
                old_accuracy = cmp.old_accuracy,
                new_accuracy = cmp.new_accuracy,
                new_only = cmp.new_only,
                old_only = cmp.old_only,
                "rejected a new version: it moved too far from the serving one without answering labels better; the worker restarts from the serving version"
            );
            let mut details = std::collections::BTreeMap::new();
            details.insert("version".to_string(), version.to_string());
            details.insert("serving".to_string(), serving.to_string());
            details.insert("kl".to_string(), format!("{:.4}", cmp.kl));
            self.alerts.raise(
                "model_rejected",
                Severity::Warning,
                format!(
                    "version {version} moved {:.3} nats from version {serving} (threshold {}); rejected, the worker restarts from {serving}",
                    cmp.kl, self.config.kl_reject_threshold
                ),
                details,
            );
            self.restart_worker(serving, floor).await;
            return;
        }
        self.engine.swap_model(new);
        self.stats.swaps.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            version,
            kl = cmp.kl,
            applied_seq = applied,
            "swapped in a new version"
        );
        self.commit_serving(version, floor).await;
    }

    /// Records `version` as serving with `floor` settled: the serving record, the
    /// worker's restart point, the WAL truncation, checkpoint pruning.
    async fn commit_serving(&self, version: u64, floor: u64) {
        let record = ServingRecord {
            version,
            applied_seq: floor,
        };
        let (state_dir, store, keep) = (
            self.state_dir.clone(),
            self.store.clone(),
            self.config.keep_checkpoints,
        );
        let written = tokio::task::spawn_blocking(move || {
            let written = record.write(&state_dir);
            store.prune(keep + 1, &[version]);
            written
        })
        .await;
        if !matches!(written, Ok(Ok(()))) {
            tracing::error!(
                version,
                "cannot write serving.json; a restart would serve an older version"
            );
        }
        self.worker.advance(StartPoint { version, floor });
        self.settled.send_if_modified(|s| {
            let moved = floor > *s;
            *s = (*s).max(floor);
            moved
        });
        self.pipeline.truncate_through(floor);
    }

    async fn restart_worker(&self, version: u64, floor: u64) {
        let record = ServingRecord {
            version,
            applied_seq: floor,
        };
        let state_dir = self.state_dir.clone();
        let _ = tokio::task::spawn_blocking(move || record.write(&state_dir)).await;
        self.settled.send_if_modified(|s| {
            let moved = floor > *s;
            *s = (*s).max(floor);
            moved
        });
        self.worker
            .restart_from(StartPoint { version, floor })
            .await;
    }

    /// The barrier: returns once every update accepted before the call is in the
    /// serving weights (or was skipped with a rejected version).
    pub async fn sync(&self) -> Result<SyncReply, UpdateError> {
        if !self.worker.enabled() {
            return Err(UpdateError::NoWorker);
        }
        let target = self.pipeline.barrier().await?;
        let mut settled = self.settled.subscribe();
        if *settled.borrow() < target {
            self.pipeline.ring().request_sync(target);
            let timeout = Duration::from_millis(self.config.sync_timeout_ms);
            let waited = tokio::time::timeout(timeout, settled.wait_for(|s| *s >= target)).await;
            if !matches!(waited, Ok(Ok(_))) {
                return Err(UpdateError::SyncTimeout {
                    target,
                    settled: self.settled(),
                    timeout_ms: self.config.sync_timeout_ms,
                });
            }
        }
        Ok(SyncReply {
            model_version: self.engine.model().version(),
            applied_seq: self.settled(),
        })
    }

    /// Serves `version` again and restarts the worker from it; updates already
    /// settled stay settled, later ones are learned on top of the restored weights.
    pub async fn rollback(&self, version: u64) -> Result<SyncReply, UpdateError> {
        let _guard = self.versions.lock().await;
        let available = self.store.versions();
        if !available.contains(&version) {
            return Err(UpdateError::UnknownVersion { version, available });
        }
        let store = self.store.clone();
        let model = tokio::task::spawn_blocking(move || store.load(version))
            .await
            .map_err(|e| UpdateError::State(e.to_string()))?
            .map_err(|source| UpdateError::Checkpoint { version, source })?;
        let previous = self.engine.model().version();
        self.engine.swap_model(model);
        self.rejected.lock().rolled_back(previous, version);
        let floor = self.settled();
        tracing::info!(version, floor, "rolled back");
        self.commit_serving(version, floor).await;
        self.worker
            .restart_from(StartPoint { version, floor })
            .await;
        Ok(SyncReply {
            model_version: version,
            applied_seq: floor,
        })
    }

    /// The sync barrier (when a worker runs), then an fsync of the WAL: afterwards
    /// the serving weights hold every update accepted before the call and the log is
    /// on disk.
    pub async fn checkpoint(&self) -> Result<SyncReply, UpdateError> {
        let reply = match self.sync().await {
            Ok(reply) => reply,
            Err(UpdateError::NoWorker) => SyncReply {
                model_version: self.engine.model().version(),
                applied_seq: self.settled(),
            },
            Err(e) => return Err(e),
        };
        self.pipeline.flush().await?;
        // And the memory, so a restart replays nothing before this point.
        let (engine, pipeline) = (self.engine.clone(), self.pipeline.clone());
        let file = crate::knn::snapshot::file_in(&self.state_dir);
        let saved = tokio::task::spawn_blocking(move || {
            engine.memory().flush(std::time::Duration::from_secs(10));
            pipeline.save_memory_snapshot(&engine.model(), &file)
        })
        .await;
        match saved {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "memory snapshot at checkpoint failed"),
            Err(e) => tracing::warn!(error = %e, "memory snapshot task failed"),
        }
        Ok(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_descendant_of_a_rejected_version_is_tainted_and_taints_its_own() {
        let mut rejected = Rejected::default();
        assert!(!rejected.taints(Some(3)) && !rejected.taints(None));
        rejected.insert(3);
        // The old worker's next version was trained from 3; the restarted worker's
        // first version from the serving one, 2.
        assert!(rejected.taints(Some(3)));
        assert!(!rejected.taints(Some(2)));
        // A checkpoint without provenance cannot be traced, so it is compared.
        assert!(!rejected.taints(None));
        // `consider` enters a refused 4 too, so its own descendant 5 is refused.
        rejected.insert(4);
        assert!(rejected.taints(Some(4)));
        // A rollback from 6 to 3 serves 3: its children are learning again, 4 stays
        // refused, and the old worker's next version, trained from 6, is refused.
        rejected.rolled_back(6, 3);
        assert!(!rejected.taints(Some(3)));
        assert!(rejected.taints(Some(4)));
        assert!(rejected.taints(Some(6)));
        // Rolling back to the serving version itself refuses nothing new.
        rejected.rolled_back(3, 3);
        assert!(!rejected.taints(Some(3)));
    }

    #[test]
    fn a_descendant_is_found_through_versions_never_considered() {
        let dir = tempfile::tempdir().unwrap();
        let store = Checkpoints::new(dir.path().join("checkpoints"));
        // Only the checkpoints' provenance matters here, not their weights.
        crate::model::init_model(2, 2, &[3], 7, &dir.path().join("m")).unwrap();
        let m = crate::model::Mlp::load(&dir.path().join("m")).unwrap();
        store.init(m.config()).unwrap();
        // Serving 2. The old worker published 3 (rejected), then 4 and 5 on top of
        // it; the swap task saw only 5. The restarted worker publishes 6 and 7 from 2.
        for (v, parent) in [(2, 1), (3, 2), (4, 3), (5, 4), (6, 2), (7, 6)] {
            store.publish(&m, v, parent, v * 10).unwrap();
        }
        let mut rejected = Rejected::default();
        rejected.insert(3);
        let descends = |v: u64, r: &Rejected| r.descends(&store, &store.load(v).unwrap(), 2);
        assert!(descends(4, &rejected), "a direct child");
        assert!(
            descends(5, &rejected),
            "through 4, which was never considered"
        );
        assert!(
            !descends(6, &rejected),
            "the restarted worker's first version"
        );
        assert!(!descends(7, &rejected), "through 6, back to the serving 2");
        // With 4 pruned, 5's line cannot be traced: it is compared instead.
        std::fs::remove_file(store.dir().join("model-v4.safetensors")).unwrap();
        assert!(!descends(5, &rejected));
    }

    #[test]
    fn a_sign_test_decides_when_accuracy_overrules_the_kl_check() {
        // Nine rows for the new version and none against (p = 1/512) are still too
        // few disagreements to be heard; ten are.
        assert!(!significantly_better(9, 0));
        assert!(significantly_better(10, 0));
        // The soak's case: on 22 rows, 0.73 against 0.32 is about 10 rows against 1
        // (p = 0.006).
        assert!(significantly_better(10, 1));
        // Ten disagreements, 8 against 2: p = 0.055, not enough.
        assert!(!significantly_better(8, 2));
        // A lead that chance explains: 9 against 6 (p = 0.30).
        assert!(!significantly_better(9, 6));
        assert!(!significantly_better(0, 0));
        assert!(!significantly_better(3, 7));
        // Large counts stay finite: 140 against 116 of 256 (p = 0.075) is not enough,
        // 145 against 111 (p = 0.02) is.
        assert!(!significantly_better(140, 116));
        assert!(significantly_better(145, 111));
        // Past 1074 rows 2^-n underflows; the tail must not. 1520 against 1480 is a
        // lead of 40 in 3000 (p = 0.24).
        assert!(!significantly_better(1_520, 1_480));
        assert!(significantly_better(1_560, 1_440));
        assert!(!significantly_better(538, 537), "n = 1075, where 2^-n is 0");
    }

    #[test]
    fn the_rejected_set_forgets_its_oldest_beyond_the_bound() {
        let mut rejected = Rejected::default();
        for v in 1..=(REMEMBERED_REJECTIONS as u64 + 10) {
            rejected.insert(v);
        }
        assert_eq!(rejected.0.len(), REMEMBERED_REJECTIONS);
        assert!(!rejected.taints(Some(10)));
        assert!(rejected.taints(Some(11)));
        assert!(rejected.taints(Some(REMEMBERED_REJECTIONS as u64 + 10)));
    }

    #[test]
    fn a_rollback_is_remembered_however_many_newer_versions_were_rejected() {
        // Version 5 served while 64 newer ones were rejected; then a rollback from 5
        // to 2. The line of 5 must stay refused although 5 is the smallest entry.
        let mut rejected = Rejected::default();
        for v in 6..6 + REMEMBERED_REJECTIONS as u64 {
            rejected.insert(v);
        }
        rejected.rolled_back(5, 2);
        assert!(rejected.taints(Some(5)));
        assert!(!rejected.taints(Some(6)), "the oldest rejection made room");
    }
}
