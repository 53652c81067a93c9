//! The operations on versions behind the admin routes: the sync barrier, rollback,
//! checkpoint.
//!
//! A child module of [`super`] so that it shares the hub's state without widening
//! it, and apart from the swap task because it answers an operator, not the worker.
//! A rollback needs no rule of its own in the swap task: it restarts the worker
//! from the version rolled back to, which ends the live generation at once, so the
//! old worker's next version (trained from the version left, which would undo the
//! rollback) is refused by the fence.

use std::time::Duration;

use super::{SyncReply, UpdateError, UpdatePath};
use crate::supervisor::StartPoint;

/// How often a cluster replica's sync asks the trainer again while it waits.
const REASK: Duration = Duration::from_millis(250);

impl UpdatePath {
    /// The barrier: returns once every update accepted before the call is in the
    /// serving weights (or was skipped with a rejected version).
    pub async fn sync(&self) -> Result<SyncReply, UpdateError> {
        let remote = self.remote.get();
        if !self.worker.enabled() && remote.is_none() {
            return Err(UpdateError::NoWorker);
        }
        let target = self.pipeline.barrier().await?;
        let mut settled = self.settled.subscribe();
        if *settled.borrow() < target {
            match remote {
                // The forwarder ships the WAL through `target`; the trainer learns
                // it and publishes; the follower adopts the version and settles.
                Some(trainer) => trainer.request_sync().await.map_err(UpdateError::Cluster)?,
                None => self.pipeline.ring().request_sync(target),
            }
            let timeout = Duration::from_millis(self.config.sync_timeout_ms);
            let settles = async {
                loop {
                    let step = match remote {
                        Some(_) => REASK,
                        None => timeout,
                    };
                    let done = tokio::time::timeout(step, settled.wait_for(|s| *s >= target))
                        .await
                        .map(|waited| waited.is_ok());
                    match (done, remote) {
                        (Ok(settled), _) => return settled,
                        // The trainer may have published before the forwarder
                        // reached `target`: ask again rather than wait for its
                        // next periodic version.
                        (Err(_), Some(trainer)) => {
                            let _ = trainer.request_sync().await;
                        }
                        (Err(_), None) => return false,
                    }
                }
            };
            let waited = tokio::time::timeout(timeout, settles).await;
            if !matches!(waited, Ok(true)) {
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
        self.engine.swap_model(model);
        let floor = self.settled();
        tracing::info!(version, floor, "rolled back");
        self.commit_serving(version, floor).await;
        // Ends the live generation before the versions lock is released: whatever
        // the old worker still publishes, trained from the version left, is refused
        // by the fence.
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
