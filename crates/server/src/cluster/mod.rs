//! A cluster replica: this server as one of several behind a load balancer, with
//! Redis Streams between them and one trainer (`adaptserve-cluster` holds the
//! protocol and the trainer; docs/ARCHITECTURE.md section 5 draws it).
//!
//! The request path is unchanged and never waits on Redis: a prediction is
//! answered, a label acknowledged after the local WAL write, as standalone. What
//! changes is around it, each part a task that backs off while Redis is away:
//! - `forward`: the WAL goes to the shared label stream, each `(replica, seq)`
//!   once, instead of to a local update-worker (there is none);
//! - `follow`: versions the trainer publishes are verified and swapped in; the WAL
//!   is truncated below what they learned, and the sync barrier settles;
//! - `experiences`: every other replica's updates reach this one's k-NN memory;
//! - `pending`: predictions are shared so that a label joins on any replica, and
//!   claimed once cluster-wide;
//! - `ratelimit`: the per-client rate limit counted cluster-wide;
//! - here: the heartbeat into the replica registry, the status, `GET /v1/cluster`.

pub mod config;
mod experiences;
mod follow;
mod forward;
mod pending;
mod ratelimit;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use adaptserve_cluster::reply::StreamId;
use adaptserve_cluster::{ClusterError, Link, LinkConfig, registry};
use serde::Serialize;

use crate::engine::Engine;
use crate::ipc::Consumer;
use crate::update::swap::{RemoteTrainer, UpdatePath};

pub use config::ClusterConfig;

/// The alert raised while Redis is away, resolved when it answers again.
pub const REDIS_ALERT: &str = "cluster_redis_unreachable";

/// Counters and gauges every part of the replica updates; read by the status.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    /// Whether the last call to Redis succeeded.
    redis_up: AtomicBool,
    /// Redis calls that failed (every part).
    redis_errors: AtomicU64,
    /// The highest WAL sequence number on the label stream.
    forwarded_seq: AtomicU64,
    /// Records appended by this replica (not counting ones already there).
    forwarded: AtomicU64,
    /// Unix ms since which the forwarder has had records to send (0: caught up).
    behind_since_ms: AtomicU64,
    /// Times the forwarder found Redis missing records it had acknowledged, and
    /// sent them again from the WAL.
    resent_gaps: AtomicU64,
    /// Other replicas' updates read from the stream.
    experiences_received: AtomicU64,
    /// Of those, inserted into the memory.
    experiences_inserted: AtomicU64,
    /// Entries skipped as already inserted.
    experiences_duplicates: AtomicU64,
    /// Times the memory re-seeded from the newest entries.
    reseeds: AtomicU64,
    /// Versions adopted, and refused (damaged, wrong shape, stale token).
    versions_adopted: AtomicU64,
    versions_refused: AtomicU64,
    /// The newest version the trainer announced.
    trainer_version: AtomicU64,
    /// The label stream position the newest published version has learned through.
    trainer_position: parking_lot::Mutex<StreamId>,
    /// Pending records shipped.
    pending_shipped: AtomicU64,
    /// Labels whose prediction came from another replica through the store.
    claims_remote: AtomicU64,
    /// Claims that could not reach the store.
    claims_unreachable: AtomicU64,
    /// Claims in doubt forgotten before Redis came back (the queue was full).
    doubts_forgotten: AtomicU64,
}

/// This server's part in a cluster.
#[derive(Debug)]
pub struct Replica {
    id: u16,
    config: ClusterConfig,
    link: Link,
    link_config: LinkConfig,
    stats: Arc<Stats>,
    /// How long a shared pending record lives (the pending TTL).
    pending_ttl: Duration,
    /// Where the experiences follower keeps its position.
    state_dir: PathBuf,
    /// The experiences follower's position, for the snapshot hook.
    position: Arc<parking_lot::Mutex<experiences::Position>>,
    /// Where Redis going away and coming back is announced (set at start).
    alerts: std::sync::OnceLock<Arc<crate::alerts::Alerts>>,
    /// Claims made so far: each claim's nonce is this replica's id and this count.
    claims: AtomicU64,
    /// Claims whose reply never came, released once Redis answers.
    doubts: parking_lot::Mutex<std::collections::VecDeque<(u64, String)>>,
    /// Unix ms of the last call that found Redis unreachable (0: never).
    unreachable_ms: AtomicU64,
    /// Woken when Redis answers again, so the pending shipper stops backing off.
    back: tokio::sync::Notify,
}

/// How long after Redis was last seen unreachable a label for another replica's
/// prediction that the store lacks is answered "retry" rather than "unknown": that
/// replica's shipper may still be draining what it held during the outage (woken
/// when Redis answers, it sends `cluster.share_queue` records in a few round trips).
const SETTLE_MS: u64 = 10_000;

/// What the replica's tasks run on, once the engine and the update path exist.
#[derive(Debug)]
pub struct Parts {
    pub engine: Arc<Engine>,
    pub updates: Arc<UpdatePath>,
    /// The ring's consumer end: the forwarder reads the WAL's records from it.
    pub consumer: Consumer,
    pub wal_dir: PathBuf,
    /// The serving version's floor: the forwarder starts above it.
    pub floor: u64,
    /// Where this replica answers.
    pub advertise: String,
    /// The pending records the WAL writer logs, to share.
    pub share: tokio::sync::mpsc::Receiver<Vec<u8>>,
    /// Resolves when the server shuts down.
    pub stop: tokio::sync::watch::Receiver<bool>,
}

impl Replica {
    /// The replica's link to Redis (lazy: Redis may be away). Starts nothing.
    pub fn new(
        config: &ClusterConfig,
        pending_ttl: Duration,
        state_dir: PathBuf,
    ) -> Result<Arc<Self>, ClusterError> {
        let url = config.url.clone().unwrap_or_default();
        let link_config = LinkConfig {
            url,
            prefix: config.prefix.clone(),
            timeout: Duration::from_millis(config.timeout_ms),
        };
        let link = Link::open(&link_config)?;
        let position = experiences::Position::load(&state_dir);
        let stats = Stats::default();
        // Up until a call says otherwise, so that the first failure alerts.
        stats.redis_up.store(true, Ordering::Relaxed);
        Ok(Arc::new(Self {
            id: config.replica_id,
            config: config.clone(),
            link,
            link_config,
            stats: Arc::new(stats),
            pending_ttl,
            state_dir,
            position: Arc::new(parking_lot::Mutex::new(position)),
            alerts: std::sync::OnceLock::new(),
            claims: AtomicU64::new(0),
            doubts: parking_lot::Mutex::new(std::collections::VecDeque::new()),
            unreachable_ms: AtomicU64::new(0),
            back: tokio::sync::Notify::new(),
        }))
    }

    /// This replica's number.
    pub fn id(&self) -> u16 {
        self.id
    }

    /// Starts the forwarder, the followers, the shipper and the heartbeat.
    pub fn start(self: &Arc<Self>, parts: Parts) -> Result<(), ClusterError> {
        let Parts {
            engine,
            updates,
            consumer,
            wal_dir,
            floor,
            advertise,
            share,
            stop,
        } = parts;
        updates.set_remote(self.clone());
        let _ = self.alerts.set(updates.alerts().clone());
        {
            // After each memory snapshot: how far the memory has read the stream.
            let (position, dir) = (self.position.clone(), self.state_dir.clone());
            updates
                .pipeline()
                .set_after_snapshot(Box::new(move || position.lock().save(&dir)));
        }
        forward::spawn(
            self.clone(),
            Link::open(&self.link_config)?,
            consumer,
            wal_dir,
            floor,
            updates.pipeline().clone(),
            stop.clone(),
        )
        .map_err(|e| ClusterError::Unreachable(format!("cannot start the forwarder: {e}")))?;
        tokio::spawn(follow::run(
            self.clone(),
            Link::open(&self.link_config)?,
            updates.clone(),
            stop.clone(),
        ));
        tokio::spawn(experiences::run(
            self.clone(),
            Link::open(&self.link_config)?,
            engine.clone(),
            stop.clone(),
        ));
        tokio::spawn(pending::ship_loop(self.clone(), share, stop.clone()));
        tokio::spawn(self.clone().heartbeat(engine, updates, advertise, stop));
        Ok(())
    }

    /// Shares the HTTP layer's rate limit with the cluster (when the limit is on).
    pub fn share_rate_limit(
        self: &Arc<Self>,
        state: Arc<crate::state::AppState>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) {
        if state.rate_limit.enabled() {
            tokio::spawn(ratelimit::run(self.clone(), state, stop));
        }
    }

    /// Every second: the registry entry (which is also the liveness probe of
    /// Redis), and the trainer's newest version.
    async fn heartbeat(
        self: Arc<Self>,
        engine: Arc<Engine>,
        updates: Arc<UpdatePath>,
        advertise: String,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            let entry = registry::ReplicaEntry {
                id: self.id,
                url: advertise.clone(),
                version: engine.model().version(),
                forwarded_seq: self.stats.forwarded_seq.load(Ordering::Relaxed),
                logged_seq: updates.pipeline().last_seq(),
                last_seen_ms: crate::update::checkpoints::unix_ms(),
            };
            let result = async {
                registry::announce(&self.link, &entry).await?;
                registry::trainer(&self.link).await
            }
            .await;
            match result {
                Ok(trainer) => {
                    self.up();
                    self.release_doubts().await;
                    if let Some(t) = trainer {
                        self.stats
                            .trainer_version
                            .store(t.version, Ordering::Relaxed);
                    }
                }
                Err(e) => self.down(&e),
            }
        }
    }

    /// A call to Redis succeeded.
    pub(crate) fn up(&self) {
        if !self.stats.redis_up.swap(true, Ordering::Relaxed) {
            tracing::info!("Redis is reachable");
            self.back.notify_waiters();
            if let Some(alerts) = self.alerts.get() {
                alerts.resolve(
                    REDIS_ALERT,
                    crate::alerts::Severity::Critical,
                    "the cluster's Redis answers again; the WAL backlog drains",
                );
            }
        }
    }

    /// A call to Redis failed with `e`.
    pub(crate) fn down(&self, e: &ClusterError) {
        self.stats.redis_errors.fetch_add(1, Ordering::Relaxed);
        if e.is_unreachable() {
            self.unreachable_ms
                .store(crate::update::checkpoints::unix_ms(), Ordering::Relaxed);
            if self.stats.redis_up.swap(false, Ordering::Relaxed) {
                tracing::warn!(error = %e, "Redis is unreachable; serving on, labels wait in the WAL");
                if let Some(alerts) = self.alerts.get() {
                    alerts.raise(
                        REDIS_ALERT,
                        crate::alerts::Severity::Critical,
                        format!(
                            "replica {}: the cluster's Redis is unreachable ({e}); serving on, labels wait in the WAL",
                            self.id
                        ),
                        std::collections::BTreeMap::new(),
                    );
                }
            }
        } else {
            tracing::error!(error = %e, "Redis answered something unusable");
        }
    }

    /// The replica's part of `/v1/status`.
    /// `unshared`: pending records the writer could not queue for shipping.
    pub fn status(&self, logged_seq: u64, unshared: u64) -> ClusterStatus {
        let s = &self.stats;
        let forwarded_seq = s.forwarded_seq.load(Ordering::Relaxed);
        let behind = s.behind_since_ms.load(Ordering::Relaxed);
        let now = crate::update::checkpoints::unix_ms();
        ClusterStatus {
            replica_id: self.id,
            redis_up: s.redis_up.load(Ordering::Relaxed),
            redis_errors: s.redis_errors.load(Ordering::Relaxed),
            forward: ForwardStatus {
                unsent: logged_seq.saturating_sub(forwarded_seq),
                oldest_unsent_ms: if behind == 0 {
                    0
                } else {
                    now.saturating_sub(behind)
                },
                forwarded_seq,
                forwarded: s.forwarded.load(Ordering::Relaxed),
                resent_gaps: s.resent_gaps.load(Ordering::Relaxed),
            },
            trainer_version: s.trainer_version.load(Ordering::Relaxed),
            trainer_position: s.trainer_position.lock().to_string(),
            versions_adopted: s.versions_adopted.load(Ordering::Relaxed),
            versions_refused: s.versions_refused.load(Ordering::Relaxed),
            experiences: ExperienceStatus {
                received: s.experiences_received.load(Ordering::Relaxed),
                inserted: s.experiences_inserted.load(Ordering::Relaxed),
                duplicates: s.experiences_duplicates.load(Ordering::Relaxed),
                reseeds: s.reseeds.load(Ordering::Relaxed),
            },
            pending: SharingStatus {
                shipped: s.pending_shipped.load(Ordering::Relaxed),
                unshipped: unshared,
                claimed_remote: s.claims_remote.load(Ordering::Relaxed),
                claims_unreachable: s.claims_unreachable.load(Ordering::Relaxed),
                doubts_forgotten: s.doubts_forgotten.load(Ordering::Relaxed),
            },
        }
    }

    /// `GET /v1/cluster`: every replica's entry and the trainer's status, from Redis.
    pub async fn view(&self, serving_version: u64) -> Result<ClusterView, ClusterError> {
        let replicas = registry::replicas(&self.link).await?;
        let trainer = registry::trainer(&self.link).await?;
        let now = crate::update::checkpoints::unix_ms();
        let replicas: Vec<_> = replicas
            .values()
            .map(|r| ReplicaView {
                id: r.id,
                url: r.url.clone(),
                version: r.version,
                forwarded_seq: r.forwarded_seq,
                logged_seq: r.logged_seq,
                last_seen_ms: r.last_seen_ms,
                alive: now.saturating_sub(r.last_seen_ms) < registry::STALE_MS,
            })
            .collect();
        Ok(ClusterView {
            replica_id: self.id,
            redis: "up",
            serving_version,
            replicas,
            trainer,
        })
    }
}

/// `GET /v1/cluster`: the cluster as Redis has it, seen from one replica.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ClusterView {
    /// The replica answering.
    pub replica_id: u16,
    /// Always `up`: with Redis away the route answers 503 instead.
    #[schema(value_type = String, example = "up")]
    pub redis: &'static str,
    /// The model version this replica serves.
    pub serving_version: u64,
    pub replicas: Vec<ReplicaView>,
    /// The leading trainer's last report (`null` before any trainer reported).
    #[schema(value_type = Option<Object>)]
    pub trainer: Option<registry::TrainerStatus>,
}

/// One replica in the registry.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ReplicaView {
    pub id: u16,
    /// Where it answers, as it advertises itself.
    pub url: String,
    /// The version it serves.
    pub version: u64,
    pub forwarded_seq: u64,
    pub logged_seq: u64,
    /// When it last refreshed its entry (Unix ms).
    pub last_seen_ms: u64,
    /// Whether it refreshed its entry recently enough to count as alive.
    pub alive: bool,
}

impl RemoteTrainer for Replica {
    fn request_sync(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move {
            match registry::request_sync(&self.link).await {
                Ok(_) => {
                    self.up();
                    Ok(())
                }
                Err(e) => {
                    self.down(&e);
                    Err(e.to_string())
                }
            }
        })
    }
}

/// The replica's part of `/v1/status`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ClusterStatus {
    pub replica_id: u16,
    pub redis_up: bool,
    pub redis_errors: u64,
    pub forward: ForwardStatus,
    /// The newest version the trainer announced.
    pub trainer_version: u64,
    /// The label stream position the serving version has learned through.
    pub trainer_position: String,
    pub versions_adopted: u64,
    pub versions_refused: u64,
    pub experiences: ExperienceStatus,
    pub pending: SharingStatus,
}

/// How far the WAL is on the label stream.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ForwardStatus {
    /// WAL records not yet on the stream.
    pub unsent: u64,
    /// How long the forwarder has had records to send (0: caught up), ms.
    pub oldest_unsent_ms: u64,
    pub forwarded_seq: u64,
    pub forwarded: u64,
    pub resent_gaps: u64,
}

/// Other replicas' updates in this memory.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ExperienceStatus {
    pub received: u64,
    pub inserted: u64,
    pub duplicates: u64,
    pub reseeds: u64,
}

/// Shared pending predictions.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SharingStatus {
    pub shipped: u64,
    pub unshipped: u64,
    pub claimed_remote: u64,
    pub claims_unreachable: u64,
    /// Claims whose reply never came and that were forgotten before Redis was
    /// back to release them.
    pub doubts_forgotten: u64,
}
