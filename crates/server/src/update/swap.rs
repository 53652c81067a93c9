//! Taking published versions into service.
//!
//! [`UpdatePath`] is the server's hub of the update path. Its swap task polls the
//! ring header's `published_version` (one atomic load every `poll_ms`) and takes each
//! new version through three steps:
//! 1. **the fence** ([`super::fence`]): loaded off the async threads, the version's
//!    provenance must name the supervisor's live worker generation and a parent the
//!    server knows. A version the fence refuses is not compared at all; one from a
//!    generation being replaced needs nothing more, one from the live generation
//!    whose parent is unknown restarts the worker from the serving version;
//! 2. **the guard** ([`super::guard`]): the version is compared with the serving
//!    one on a probe set of recent inputs, and [`judge`] reads the comparison. A
//!    rejected version restarts the worker from the serving version, skipping the
//!    updates that produced it; the restart ends the live generation at once, so
//!    whatever the old worker publishes until it is gone is refused by the fence;
//! 3. **the swap**: an accepted version is swapped in with ArcSwap (batches already
//!    holding the old version finish on it), `serving.json` is rewritten, the WAL
//!    is truncated below what the new version has learned and old checkpoints are
//!    pruned.
//!
//! The fence is asked again after the comparison: an operator's restart meanwhile
//! (rejections and rollbacks wait for the versions lock), or a crashed worker's
//! successor going live, ends the generation, and a version no longer live is
//! neither swapped in nor rejected.
//!
//! The rules live in those two pure modules; this one gathers what they read
//! (provenance, the live generation, the probe comparison, label counts) and acts
//! on their answers (swap, restart, counters, logs, alerts). The operations an
//! operator asks for (sync barrier, rollback, checkpoint) are in the `admin` child
//! module, which shares this hub's state.
//!
//! The *settled* sequence number — every update at or below it is either in the
//! serving weights or was deliberately skipped — is published on a `watch` channel,
//! which is what the sync barrier waits on.

mod admin;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use super::checkpoints::{Checkpoints, ServingRecord, provenance};
use super::fence::{Admission, Provenance, admit};
use super::guard::{Evidence, judge};
use super::pipeline::Pipeline;
use crate::alerts::{Alerts, Severity};
use crate::config::SwapConfig;
use crate::engine::{Engine, SinkError};
use crate::model::kl::{Comparison, compare};
use crate::model::{Mlp, ModelError};
use crate::supervisor::{StartPoint, Supervisor};

/// Why an update-path operation failed.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("no update worker is configured, so the weights do not learn")]
    NoWorker,
    #[error("the cluster's trainer cannot be asked to publish: {0}")]
    Cluster(String),
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
    /// Versions rejected by the guard, failing to load or compare, or refused by the
    /// fence.
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
#[derive(Debug, Clone, Copy, serde::Serialize, utoipa::ToSchema)]
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
    /// In a cluster, the trainer that learns in place of a worker.
    remote: std::sync::OnceLock<Arc<dyn RemoteTrainer>>,
}

/// A trainer outside this process (a cluster's): the sync barrier asks it to
/// publish, and its versions arrive through [`UpdatePath::adopt`].
pub trait RemoteTrainer: Send + Sync + std::fmt::Debug {
    /// Asks for a version holding everything this replica has logged so far.
    fn request_sync(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + '_>>;
}

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
            remote: std::sync::OnceLock::new(),
        })
    }

    /// Learns through `trainer` from now on, instead of a worker (cluster mode; set
    /// once).
    pub fn set_remote(&self, trainer: Arc<dyn RemoteTrainer>) {
        let _ = self.remote.set(trainer);
    }

    /// The remote trainer, in a cluster.
    pub fn remote(&self) -> Option<&Arc<dyn RemoteTrainer>> {
        self.remote.get()
    }

    /// Serves `model` (version `version`, checked by the caller: a cluster
    /// replica verifies its checksum and its fencing token), with every update of
    /// this replica's WAL at or below `floor` learned: the serving record, the WAL
    /// truncation and the sync barrier follow, as after a worker's version.
    pub async fn adopt(&self, model: Mlp, version: u64, floor: u64) {
        let _guard = self.versions.lock().await;
        self.engine.swap_model(model);
        self.stats.swaps.fetch_add(1, Ordering::Relaxed);
        // What the weights have learned of this replica, as a worker reports it.
        self.pipeline.ring().set_applied_seq(floor);
        self.commit_serving(version, floor).await;
    }

    /// The version serving now.
    pub fn engine_version(&self) -> u64 {
        self.engine.model().version()
    }

    /// The checkpoint store (a cluster replica keeps the versions it serves there).
    pub fn store(&self) -> &Checkpoints {
        &self.store
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

    /// Loads `version`, asks the fence and the guard, swaps it in or refuses it.
    async fn consider(&self, version: u64) {
        let _guard = self.versions.lock().await;
        let old: Arc<Mlp> = self.engine.model().clone();
        let serving = old.version();
        if serving == version {
            return;
        }
        let store = self.store.clone();
        let new = match tokio::task::spawn_blocking(move || store.load(version)).await {
            Ok(Ok(new)) => new,
            Ok(Err(e)) => return self.unusable(version, serving, e).await,
            Err(e) => {
                tracing::error!(version, error = %e, "the checkpoint loading task failed");
                return;
            }
        };
        let from = provenance(&new);
        if !self.fenced_in(&from, serving).await {
            return;
        }
        let (probe, labels) = self.engine.probe(self.config.probe_size);
        let compared = tokio::task::spawn_blocking(move || {
            compare(&old, &new, &probe, &labels).map(|c| (new, c))
        })
        .await;
        let (new, cmp) = match compared {
            Ok(Ok(compared)) => compared,
            Ok(Err(e)) => return self.unusable(version, serving, e).await,
            Err(e) => {
                tracing::error!(version, error = %e, "the checkpoint comparison task failed");
                return;
            }
        };
        self.stats.record_kl(cmp.kl);
        // A generation that ended while comparing (an operator's restart, a crashed
        // worker's successor): what is no longer live is neither swapped nor rejected.
        if !self.fenced_in(&from, serving).await {
            return;
        }
        let evidence = Evidence {
            kl: cmp.kl,
            new_only: cmp.new_only,
            old_only: cmp.old_only,
            started_fresh: self.engine.started_fresh(),
            labels: self.engine.stats().labels.load(Ordering::Relaxed),
        };
        let rules = self.config.rules();
        let verdict = judge(&evidence, &rules);
        let floor = from.applied_seq.max(self.settled());
        if !verdict.accepts() {
            return self.reject(version, serving, &cmp, floor).await;
        }
        self.engine.swap_model(new);
        self.stats.swaps.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            version,
            kl = cmp.kl,
            ?verdict,
            applied_seq = from.applied_seq,
            "swapped in a new version"
        );
        self.commit_serving(version, floor).await;
    }

    /// Asks the fence about a published version. A refusal is counted; when the live
    /// worker's own line has left the server's, the worker restarts from the serving
    /// version, relearning what that version has not learned.
    async fn fenced_in(&self, from: &Provenance, serving: u64) -> bool {
        let live = self.worker.live_generation();
        let admission = admit(from, live, serving);
        match admission {
            Admission::Admit => return true,
            Admission::NotLive => tracing::info!(
                version = from.version,
                generation = from.generation,
                ?live,
                serving,
                "refused a new version: its worker generation is not the live one (the worker that published it is being, or was, replaced)"
            ),
            Admission::UnknownParent => tracing::warn!(
                version = from.version,
                generation = from.generation,
                parent = ?from.parent,
                parent_generation = from.parent_generation,
                serving,
                "refused a new version: the live worker trained it from a version the server does not know; the worker restarts from the serving version"
            ),
        }
        self.stats.rejections.fetch_add(1, Ordering::Relaxed);
        if admission == Admission::UnknownParent {
            self.restart_worker(serving, self.settled()).await;
        }
        false
    }

    /// A published version that cannot be loaded or compared: rejected, and the
    /// worker restarts from the serving version.
    async fn unusable(&self, version: u64, serving: u64, e: ModelError) {
        tracing::error!(version, error = %e, "a published checkpoint cannot be loaded; rejecting it");
        self.stats.rejections.fetch_add(1, Ordering::Relaxed);
        self.restart_worker(serving, self.settled()).await;
    }

    /// The guard rejected `version`: counted, logged, alerted, and the worker restarts
    /// from the serving version with the updates that produced it (through `floor`)
    /// skipped instead of replayed into the same divergence.
    async fn reject(&self, version: u64, serving: u64, cmp: &Comparison, floor: u64) {
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
    }

    /// Records `version` as serving with `floor` settled: the serving record, the
    /// worker's restart point, the WAL truncation, checkpoint pruning.
    async fn commit_serving(&self, version: u64, floor: u64) {
        // The next worker starts from what serves now, before the slow write below:
        // a worker that dies meanwhile must not restart from the version just left
        // (its versions would name a parent the fence does not know).
        self.worker.advance(StartPoint { version, floor });
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
        self.settled.send_if_modified(|s| {
            let moved = floor > *s;
            *s = (*s).max(floor);
            moved
        });
        self.pipeline.truncate_through(floor);
    }

    /// Records `version` as serving with `floor` settled and restarts the worker from
    /// it: the restart ends the live generation before this returns.
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
}
