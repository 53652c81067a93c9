//! The versions follower: what the trainer publishes, verified, then served.
//!
//! It reads the `versions` stream (blocking on a link of its own) and takes the
//! newest entry of each read: every version is whole weights, so a replica that
//! was away skips straight to the newest. Before serving, a version must be newer
//! than what serves, come from a fencing token no older than one already seen, and
//! its bytes must match the entry's length and checksum and load under this
//! replica's model shape; a version failing any of these is refused, counted and
//! logged, and the replica serves on. An adopted version is also written to the
//! local checkpoint directory, so a restart serves it without Redis.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use adaptserve_cluster::link::Retry;
use adaptserve_cluster::reply::StreamId;
use adaptserve_cluster::versions::{self, Version};
use adaptserve_cluster::{ClusterError, Link};

use super::Replica;
use crate::model::Mlp;
use crate::update::swap::UpdatePath;

/// How long one read waits for a new version.
const BLOCK: Duration = Duration::from_secs(1);

pub(super) async fn run(
    replica: Arc<Replica>,
    link: Link,
    updates: Arc<UpdatePath>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut after: Option<StreamId> = None;
    let mut newest_token = 0u64;
    let mut retry = Retry::new(Duration::from_millis(100), Duration::from_secs(2));
    loop {
        let read = async {
            match after {
                // First the newest entry, whatever came before.
                None => Ok(versions::latest(&link)
                    .await?
                    .map(|v| vec![(v.id, Ok(v))])
                    .unwrap_or_default()),
                Some(after) => versions::read_after(&link, after, BLOCK).await,
            }
        };
        let read = tokio::select! {
            _ = stop.changed() => return,
            read = read => read,
        };
        let entries = match read {
            Ok(entries) => {
                replica.up();
                retry.reset();
                entries
            }
            Err(e) => {
                replica.down(&e);
                tokio::select! {
                    _ = stop.changed() => return,
                    () = tokio::time::sleep(retry.next_delay()) => continue,
                }
            }
        };
        if after.is_none() {
            after = Some(StreamId::ZERO);
        }
        let mut newest = None;
        for (id, entry) in entries {
            after = Some(id);
            match entry {
                Ok(v) => newest = Some(v),
                Err(e) => {
                    replica
                        .stats
                        .versions_refused
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::error!(%id, error = %e, "a versions entry does not parse; skipped");
                }
            }
        }
        let Some(version) = newest else { continue };
        *replica.stats.trainer_position.lock() = version.position;
        let serving = updates.engine_version();
        if version.version <= serving {
            continue;
        }
        if version.token < newest_token {
            replica
                .stats
                .versions_refused
                .fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                version = version.version,
                token = version.token,
                newest_token,
                "refused a version from a stale trainer's token"
            );
            continue;
        }
        match adopt(&replica, &link, &updates, &version).await {
            Ok(()) => {
                newest_token = version.token;
                replica
                    .stats
                    .versions_adopted
                    .fetch_add(1, Ordering::Relaxed);
            }
            Err(e) if e.is_unreachable() => {
                replica.down(&e);
                // Read it again once Redis answers.
                after = None;
            }
            Err(e) => {
                replica
                    .stats
                    .versions_refused
                    .fetch_add(1, Ordering::Relaxed);
                tracing::error!(version = version.version, error = %e, "refused a published version; serving on");
            }
        }
    }
}

/// Fetches, verifies, keeps and serves `version`.
async fn adopt(
    replica: &Replica,
    link: &Link,
    updates: &UpdatePath,
    version: &Version,
) -> Result<(), ClusterError> {
    let bytes = versions::weights(link, version).await?;
    let store = updates.store().clone();
    let v = version.version;
    let loaded = tokio::task::spawn_blocking(move || -> Result<Mlp, String> {
        let config = crate::model::ModelConfig::from_file(&store.config_path())
            .map_err(|e| e.to_string())?;
        let weights = store.weights_path(v);
        let model =
            Mlp::from_safetensors(config, &bytes, &store.config_path(), Path::new(&weights))
                .map_err(|e| e.to_string())?;
        store.publish_bytes(v, &bytes).map_err(|e| e.to_string())?;
        Ok(model)
    })
    .await
    .map_err(|e| ClusterError::Corrupt {
        version: v,
        reason: e.to_string(),
    })?
    .map_err(|reason| ClusterError::Corrupt { version: v, reason })?;
    let floor = version.learned_of(replica.id);
    updates.adopt(loaded, v, floor).await;
    tracing::info!(
        version = v,
        floor,
        token = version.token,
        "serving the cluster's new version"
    );
    Ok(())
}
