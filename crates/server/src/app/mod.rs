//! Assembles and runs the server: state dir, serving model, WAL, memory, ring,
//! engine, update-worker and swap task; serves until `shutdown` resolves, then drains
//! within a bound and puts everything away.
//!
//! `run` takes a bound listener and a shutdown future (mini-redis style) so tests can
//! start a real server on `127.0.0.1:0` and stop it at will.
//!
//! Startup order matters for "nothing acknowledged is lost": the WAL and the pending
//! log are opened (and a torn tail cut) before anything can append, request ids
//! continue after the reserved ceiling, the memory is rebuilt from its snapshot and
//! the WAL after it (`restore`), predictions still awaiting a label are put back,
//! the ring's `produced_seq` starts at the WAL's last record so the worker replays
//! what a previous run left, and the worker starts from the version `serving.json`
//! names. Shutdown runs the other way: stop taking requests, flush and fsync the
//! logs, stop the worker, snapshot the memory.

pub mod config;
pub mod restore;
mod serve;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::alerts::Alerts;
use crate::config::{Config, FsyncMode};
use crate::engine::ids::{self, IdsOrigin};
use crate::engine::{Engine, EngineParts, LocalSink, RequestIds, UpdateSink};
use crate::http::{self, AppState};
use crate::knn::{Memory, MemoryConfig, snapshot};
use crate::model::Mlp;
use crate::supervisor::{Deps, RingFactory, StartPoint, Supervisor};
use crate::update::pending_log::PendingLog;
use crate::update::pipeline::{Pipeline, PipelineParts};
use crate::update::swap::{UpdateParts, UpdatePath};
use crate::update::{Checkpoints, ServingRecord, codec};
use crate::wal::{FsyncPolicy, Wal, WalConfig};

/// The memory settings for a model whose embeddings have `dim` dimensions.
pub fn memory_config(config: &Config, dim: usize) -> MemoryConfig {
    MemoryConfig {
        dim,
        ..config.memory.clone()
    }
}

async fn load_model_dir(dir: PathBuf) -> anyhow::Result<Mlp> {
    tokio::task::spawn_blocking(move || {
        Mlp::load(&dir).with_context(|| format!("cannot load the model from {}", dir.display()))
    })
    .await
    .context("model loading task failed")?
}

/// The engine alone, over the `--model` directory, with an in-process update sink:
/// for benches and tests of the request path without a state dir or worker.
pub async fn build_engine(config: &Config) -> anyhow::Result<Arc<Engine>> {
    let model = load_model_dir(config.server.model.clone()).await?;
    let key = config.memory.key.resolve(&model);
    let model = model.with_key(key);
    let memory = Memory::new(memory_config(config, model.embed_dim()))
        .context("cannot start the k-NN memory")?;
    let engine = Engine::new(EngineParts {
        shared_pending: None,
        model,
        memory: memory.clone(),
        sink: Arc::new(LocalSink::new(memory, config.engine.drift_keep)),
        ids: RequestIds::in_memory(),
        config: config.engine.clone(),
        batcher: config.batcher.clone(),
        max_client_batch: config.server.max_client_batch,
    })
    .context("cannot start the model thread")?;
    Ok(Arc::new(engine))
}

/// A started server's parts, between startup and shutdown.
#[derive(Debug)]
pub struct Server {
    pub engine: Arc<Engine>,
    /// This server's part in a cluster, if it is a replica.
    pub cluster: Option<Arc<crate::cluster::Replica>>,
    pub updates: Arc<UpdatePath>,
    /// Stops the swap and snapshot tasks.
    stop_tasks: tokio::sync::watch::Sender<bool>,
    memory_file: PathBuf,
    /// What was rebuilt from the state dir, for `/v1/status`.
    pub recovery: serde_json::Value,
}

/// Pending log segments: about 15k predictions each, so whole segments free up
/// soon after their predictions expire or are pushed out.
const PENDING_SEGMENT_BYTES: u64 = 4 << 20;

/// Distinguishes the rings of several servers in one process (tests).
static RING_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Loads the serving model from the state dir (seeding it from `--model` on first
/// start), opens the WAL, restores the memory, and starts the pipeline, the engine,
/// the worker and the swap task.
pub async fn start(config: &Config) -> anyhow::Result<Server> {
    let state_dir = config.server.state_dir.clone();
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("cannot create the state dir {}", state_dir.display()))?;
    let given = load_model_dir(config.server.model.clone()).await?;
    let store = Checkpoints::new(state_dir.join("checkpoints"));
    store
        .init(given.config())
        .with_context(|| format!("cannot use the state dir {}", state_dir.display()))?;
    let record = match ServingRecord::read(&state_dir)? {
        Some(record) => record,
        None => {
            let version = given.version();
            // Written by the server, not a worker: no generation (0), which the swap
            // task's fence never admits, but it serves and workers start from it.
            let seed = crate::update::Provenance {
                version,
                parent: Some(version),
                generation: crate::update::fence::UNKNOWN_GENERATION,
                parent_generation: crate::update::fence::UNKNOWN_GENERATION,
                applied_seq: 0,
            };
            store
                .publish(&given, &seed)
                .context("cannot seed the checkpoint directory")?;
            let record = ServingRecord {
                version,
                applied_seq: 0,
            };
            record.write(&state_dir)?;
            record
        }
    };
    let model = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.load(record.version))
            .await
            .context("model loading task failed")?
            .with_context(|| format!("cannot load the serving checkpoint v{}", record.version))?
            .with_key(config.memory.key.resolve(&given))
    };
    tracing::info!(
        version = record.version,
        applied_seq = record.applied_seq,
        "serving checkpoint loaded"
    );

    // The snapshot first: its position is a floor for the WAL's numbering.
    let snapshot_on_disk = {
        let (file, dims) = (
            snapshot::file_in(&state_dir),
            (model.input_dim(), model.embed_dim()),
        );
        tokio::task::spawn_blocking(move || restore::read_snapshot(&file, dims.0, dims.1))
            .await
            .context("memory snapshot reading task failed")?
    };
    let fsync = match config.wal.fsync {
        FsyncMode::Always => FsyncPolicy::Always,
        FsyncMode::Never => FsyncPolicy::Never,
        FsyncMode::Interval => FsyncPolicy::IntervalMs(config.wal.fsync_interval_ms),
    };
    let wal_config = WalConfig {
        dir: state_dir.join("wal"),
        segment_bytes: config.wal.segment_bytes,
        fsync,
        // Numbers at or below the serving floor are settled, and those at or below
        // the memory snapshot's position are in it: never hand them out again.
        start_after: record.applied_seq.max(snapshot_on_disk.position()),
    };
    let (wal, report) = tokio::task::spawn_blocking(move || Wal::open(wal_config))
        .await
        .context("WAL opening task failed")?
        .context("cannot open the WAL")?;
    for repair in &report.repaired {
        tracing::warn!(segment = %repair.segment.display(), offset = repair.offset,
            cut_bytes = repair.cut_bytes, reason = %repair.reason, "WAL repaired: cut at the last good record");
    }
    tracing::info!(
        segments = report.segments,
        last_seq = report.last_seq,
        pending = report.last_seq.saturating_sub(record.applied_seq),
        "WAL opened"
    );

    let pending_config = WalConfig {
        dir: state_dir.join("pending"),
        segment_bytes: PENDING_SEGMENT_BYTES,
        fsync,
        start_after: 0,
    };
    let (commit, ttl, capacity) = (
        Duration::from_millis(config.wal.pending_commit_ms),
        Duration::from_secs(config.engine.pending_ttl_secs),
        config.engine.pending_capacity,
    );
    let (pending_log, mut recovered) = tokio::task::spawn_blocking(move || {
        PendingLog::open(pending_config, commit, ttl, capacity)
    })
    .await
    .context("pending log opening task failed")?
    .context("cannot open the pending log")?;
    for repair in &recovered.report.repaired {
        tracing::warn!(segment = %repair.segment.display(), offset = repair.offset,
            cut_bytes = repair.cut_bytes, reason = %repair.reason, "pending log repaired: cut at the last good record");
    }
    let memory = Memory::new(memory_config(config, model.embed_dim()))
        .context("cannot start the k-NN memory")?;
    let (model, restored) = {
        let (memory, wal_dir) = (memory.clone(), state_dir.join("wal"));
        let drift_keep = config.engine.drift_keep;
        tokio::task::spawn_blocking(move || {
            restore::memory(&memory, &model, snapshot_on_disk, &wal_dir, drift_keep)
                .map(|r| (model, r))
        })
        .await
        .context("memory restore task failed")??
    };
    // A crash between a label's WAL commit and its answered record: the WAL wins.
    recovered
        .predictions
        .retain(|(id, _, _)| !restored.labelled.contains(id));
    // The newest request id any log holds.
    let newest_id = recovered.max_id.max(restored.max_origin);
    // A replica's ids carry its number, so they are unique across the cluster.
    let replica = if config.cluster.enabled() {
        Some(
            crate::cluster::Replica::new(
                &config.cluster,
                Duration::from_secs(config.engine.pending_ttl_secs),
                state_dir.clone(),
            )
            .context("cannot set up the cluster link")?,
        )
    } else {
        None
    };
    let (request_ids, ids_origin) = RequestIds::open(
        &state_dir.join("request_ids"),
        u64::from(config.cluster.replica_id) * u64::from(replica.is_some()),
        ids::counter_of(newest_id),
    )
    .context("cannot reserve request ids")?;
    match &ids_origin {
        IdsOrigin::Damaged { reason, floor } => tracing::error!(%reason, floor,
            "the request id reservation was unreadable; continuing far past the newest logged id"),
        origin => tracing::info!(?origin, next = request_ids.peek(), "request ids reserved"),
    }

    let shm = crate::ipc::default_dir();
    for stale in crate::supervisor::cleanup::remove_dead_rings(&shm) {
        tracing::info!(ring = %stale.display(), "removed the ring of a server that is gone");
    }
    let rings = RingFactory {
        dir: shm,
        tag: format!(
            "{}-{}",
            std::process::id(),
            RING_COUNTER.fetch_add(1, Ordering::Relaxed)
        ),
        capacity: config.worker.ring_capacity,
        max_payload: codec::encoded_len(model.input_dim()),
    };
    let ring = rings
        .create(1)
        .context("cannot create the shared-memory ring")?;
    let (share_tx, share_rx) = match &replica {
        Some(_) => {
            let (tx, rx) = tokio::sync::mpsc::channel(config.cluster.share_queue);
            (Some(tx), Some(rx))
        }
        None => (None, None),
    };
    let pipeline = Arc::new(
        Pipeline::start(PipelineParts {
            wal,
            pending: pending_log,
            ring,
            memory: memory.clone(),
            drift_keep: config.engine.drift_keep,
            memory_floor: restored.snapshot_seq,
            queue: config.wal.queue,
            group_max: config.wal.group_max,
            share: share_tx,
        })
        .context("cannot start the WAL writer")?,
    );
    let engine = Arc::new(
        Engine::new(EngineParts {
            model,
            memory,
            sink: pipeline.clone() as Arc<dyn UpdateSink>,
            ids: request_ids,
            config: config.engine.clone(),
            batcher: config.batcher.clone(),
            max_client_batch: config.server.max_client_batch,
            shared_pending: replica
                .clone()
                .map(|r| r as Arc<dyn crate::engine::SharedPending>),
        })
        .context("cannot start the model thread")?,
    );
    let waiting = recovered.predictions.len();
    let rejoinable = engine
        .restore_pending(std::mem::take(&mut recovered.predictions))
        .await
        .context("cannot restore the pending predictions")?;
    // New ids continue the pending map's ring where the restored ones end, so
    // they push out the oldest restored predictions first, as without a restart.
    engine
        .request_ids()
        .align(newest_id + 1, config.engine.pending_capacity as u64);
    tracing::info!(
        waiting,
        rejoinable,
        undecodable = recovered.undecodable,
        next_id = engine.request_ids().peek(),
        "pending predictions restored"
    );
    let alerts = Alerts::start(&config.alerts);
    // A replica runs no worker: the cluster's trainer learns from every replica.
    let mut worker_config = config.worker.clone();
    worker_config.enabled &= replica.is_none();
    let worker = Supervisor::start(
        worker_config,
        Deps {
            pipeline: pipeline.clone(),
            rings,
            wal_dir: state_dir.join("wal"),
            checkpoint_dir: store.dir().to_path_buf(),
            alerts: alerts.clone(),
        },
        StartPoint {
            version: record.version,
            floor: record.applied_seq,
        },
    );
    let updates = UpdatePath::new(UpdateParts {
        engine: engine.clone(),
        pipeline: pipeline.clone(),
        worker,
        alerts,
        store,
        state_dir: state_dir.clone(),
        config: config.swap.clone(),
        settled: record.applied_seq,
    });
    let (stop_tasks, stop_rx) = tokio::sync::watch::channel(false);
    if let (Some(replica), Some(share)) = (&replica, share_rx) {
        let consumer = updates
            .pipeline()
            .ring()
            .consumer()
            .context("the ring already has a consumer: this is a bug")?;
        let advertise = config
            .cluster
            .advertise
            .clone()
            .unwrap_or_else(|| format!("http://{}:{}", config.server.host, config.server.port));
        replica
            .start(crate::cluster::Parts {
                engine: engine.clone(),
                updates: updates.clone(),
                consumer,
                wal_dir: state_dir.join("wal"),
                floor: record.applied_seq,
                advertise,
                share,
                stop: stop_rx.clone(),
            })
            .context("cannot start the cluster replica")?;
        tracing::info!(replica = replica.id(), "cluster replica started");
    }
    tokio::spawn(updates.clone().run_swaps(stop_rx.clone()));
    tokio::spawn(restore::snapshot_loop(
        engine.clone(),
        pipeline,
        snapshot::file_in(&state_dir),
        Duration::from_secs(config.memory.snapshot_interval_secs),
        stop_rx,
    ));
    let recovery = serde_json::json!({
        "request_ids": match &ids_origin {
            IdsOrigin::Fresh => serde_json::json!({"origin": "fresh"}),
            IdsOrigin::Continued { ceiling } => serde_json::json!({"origin": "continued", "after": ceiling}),
            IdsOrigin::Damaged { reason, floor } => serde_json::json!({"origin": "damaged", "reason": reason, "floor": floor}),
        },
        "pending": {
            "waiting": waiting,
            "restored": rejoinable,
            "undecodable": recovered.undecodable,
            "repaired": recovered.report.repaired.iter().map(|r| r.reason.clone()).collect::<Vec<_>>(),
        },
        "memory": {
            "from_snapshot": restored.from_snapshot,
            "snapshot_seq": restored.snapshot_seq,
            "replayed": restored.replayed,
            "undecodable": restored.undecodable,
            "snapshot_damaged": restored.snapshot_damaged,
            "ms": restored.millis,
        },
    });
    Ok(Server {
        engine,
        cluster: replica,
        updates,
        stop_tasks,
        memory_file: snapshot::file_in(&state_dir),
        recovery,
    })
}

impl Server {
    /// Puts everything away: no more swaps, the WAL flushed and fsynced, the worker
    /// stopped, the memory snapshotted, the ring removed. Each step runs even if an
    /// earlier one failed; the first failure is returned.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.stop_tasks.send(true);
        let flushed = self.updates.pipeline().shutdown().await;
        self.updates.worker().stop().await;
        let engine = self.engine.clone();
        let file = self.memory_file.clone();
        let pipeline = self.updates.pipeline().clone();
        let saved = tokio::task::spawn_blocking(move || {
            // Everything queued reaches the store first, so the snapshot reflects
            // the whole log.
            engine.memory().shutdown();
            pipeline.save_memory_snapshot(&engine.model(), &file)
        })
        .await;
        if let Err(e) = self.updates.pipeline().ring().remove() {
            tracing::warn!(error = %e, "cannot remove the ring file");
        }
        flushed.context("cannot flush the WAL")?;
        saved.context("memory snapshot task failed")??;
        Ok(())
    }
}

/// Serves on `listener` until `shutdown` resolves, then drains in-flight requests for
/// at most `shutdown_timeout_ms` and shuts the update path down.
pub async fn run(
    mut config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // Install the recorder before anything records.
    crate::metrics::handle();
    if config.cluster.enabled() && config.cluster.advertise.is_none() {
        // The port as bound (0 in a config picks one).
        let addr = listener.local_addr().context("listener has no address")?;
        config.cluster.advertise = Some(format!("http://{addr}"));
    }
    let server = start(&config).await?;
    let engine = server.engine.clone();
    engine
        .warm_up()
        .await
        .context("the model failed its warm-up forward pass")?;
    let state = AppState::new(
        engine.clone(),
        server.updates.clone(),
        config.server.clone(),
    );
    let _ = state.cluster.set(server.cluster.clone());
    if let Some(replica) = &server.cluster {
        replica.share_rate_limit(state.clone(), server.stop_tasks.subscribe());
    }
    let _ = state.recovery.set(server.recovery.clone());
    state.set_ready(true);
    let (stop_monitor, monitor_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(crate::monitor::Monitor::run(
        state.clone(),
        config.monitor.clone(),
        monitor_rx,
    ));
    let addr = listener.local_addr().context("listener has no address")?;
    tracing::info!(%addr, state_dir = %config.server.state_dir.display(),
        model_version = engine.model().version(), "adaptserve listening");

    let mut front = serve::Front::start(
        listener,
        http::router(state.clone()),
        serve::threads(config.server.http_threads),
    )?;
    shutdown.await;
    state.set_ready(false);
    front.stop();
    let drain_limit = Duration::from_millis(config.server.shutdown_timeout_ms);
    tokio::select! {
        result = front.finished() => result?,
        () = tokio::time::sleep(drain_limit) => {
            tracing::warn!(?drain_limit, "in-flight requests did not drain in time");
            front.abort();
            front.finished().await?;
        }
    }
    let _ = stop_monitor.send(true);
    server.shutdown().await?;
    tracing::info!("adaptserve stopped");
    Ok(())
}
/// candle sizes its matmul thread pool from `RAYON_NUM_THREADS`, read on every call.
/// On two cores a pool of 2 makes the small matrices of a per-request forward pass
/// ~15× slower (docs/ARCHITECTURE.md: 82 µs vs 5.3 µs at batch 1), and the model thread is meant to
/// be one core anyway. Setting the variable from inside a running process is unsound
/// once threads exist, so when it is unset the binary re-executes itself with it set:
/// same pid, same arguments, before any thread starts. Returns only if it is already
/// set (or when exec fails, which is logged and costs speed, not correctness).
pub fn ensure_single_threaded_kernels() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os("RAYON_NUM_THREADS").is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("RAYON_NUM_THREADS", "1")
        .exec();
    eprintln!("warning: could not re-exec with RAYON_NUM_THREADS=1 ({err}); continuing");
}
