//! Assembles and runs the server: state dir, serving model, WAL, memory, ring,
//! engine, update-worker and swap task; serves until `shutdown` resolves, then drains
//! within a bound and puts everything away.
//!
//! `run` takes a bound listener and a shutdown future (mini-redis style) so tests can
//! start a real server on `127.0.0.1:0` and stop it at will.
//!
//! Startup order matters for "nothing acknowledged is lost": the WAL is opened (and a
//! torn tail cut) before anything can append, the ring's `produced_seq` starts at the
//! WAL's last record so the worker replays what a previous run left, and the worker
//! starts from the version `serving.json` names. Shutdown runs the other way: stop
//! taking requests, flush and fsync the WAL, stop the worker, snapshot the memory.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::alerts::Alerts;
use crate::config::{Config, FsyncMode};
use crate::engine::{Engine, LocalSink, UpdateSink};
use crate::http::{self, AppState};
use crate::knn::{Experience, Memory, MemoryConfig, snapshot};
use crate::model::Mlp;
use crate::supervisor::{Deps, RingFactory, StartPoint, Supervisor};
use crate::update::pipeline::Pipeline;
use crate::update::swap::{UpdateParts, UpdatePath};
use crate::update::{Checkpoints, ServingRecord, codec};
use crate::wal::{FsyncPolicy, Wal, WalConfig};

/// The memory settings for a model whose embeddings have `dim` dimensions.
pub fn memory_config(config: &Config, dim: usize) -> MemoryConfig {
    let section = &config.memory;
    let defaults = MemoryConfig::default();
    MemoryConfig {
        dim,
        capacity: section.capacity,
        max_age: section.max_age,
        hnsw_crossover: if section.hnsw_crossover == 0 {
            defaults.hnsw_crossover
        } else {
            section.hnsw_crossover
        },
        insert_queue: section.insert_queue,
        ..defaults
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
    let engine = Engine::new(
        model,
        memory,
        Arc::new(LocalSink::default()),
        config.engine.clone(),
        config.batcher.clone(),
        config.server.max_client_batch,
    )
    .context("cannot start the model thread")?;
    Ok(Arc::new(engine))
}

/// A started server's parts, between startup and shutdown.
#[derive(Debug)]
pub struct Server {
    pub engine: Arc<Engine>,
    pub updates: Arc<UpdatePath>,
    stop_swaps: tokio::sync::watch::Sender<bool>,
    memory_file: PathBuf,
}

/// The file holding the memory snapshot.
fn memory_file(state_dir: &Path) -> PathBuf {
    state_dir.join("memory.bin")
}

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
            store
                .publish(&given, version, version, 0)
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

    let wal_config = WalConfig {
        dir: state_dir.join("wal"),
        segment_bytes: config.wal.segment_bytes,
        fsync: match config.wal.fsync {
            FsyncMode::Always => FsyncPolicy::Always,
            FsyncMode::Never => FsyncPolicy::Never,
            FsyncMode::Interval => FsyncPolicy::IntervalMs(config.wal.fsync_interval_ms),
        },
        // Numbers at or below the serving floor are settled; never hand them out again.
        start_after: record.applied_seq,
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

    let memory = Memory::new(memory_config(config, model.embed_dim()))
        .context("cannot start the k-NN memory")?;
    let model = restore_memory(&memory, model, &memory_file(&state_dir)).await?;

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
    let pipeline = Arc::new(
        Pipeline::start(wal, ring, config.wal.queue, config.wal.group_max)
            .context("cannot start the WAL writer")?,
    );
    let engine = Arc::new(
        Engine::new(
            model,
            memory,
            pipeline.clone() as Arc<dyn UpdateSink>,
            config.engine.clone(),
            config.batcher.clone(),
            config.server.max_client_batch,
        )
        .context("cannot start the model thread")?,
    );
    let alerts = Alerts::start(&config.alerts);
    let worker = Supervisor::start(
        config.worker.clone(),
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
        pipeline,
        worker,
        alerts,
        store,
        state_dir: state_dir.clone(),
        config: config.swap.clone(),
        settled: record.applied_seq,
    });
    let (stop_swaps, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(updates.clone().run_swaps(stop_rx));
    Ok(Server {
        engine,
        updates,
        stop_swaps,
        memory_file: memory_file(&state_dir),
    })
}

impl Server {
    /// Puts everything away: no more swaps, the WAL flushed and fsynced, the worker
    /// stopped, the memory snapshotted, the ring removed. Each step runs even if an
    /// earlier one failed; the first failure is returned.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.stop_swaps.send(true);
        let flushed = self.updates.pipeline().shutdown().await;
        self.updates.worker().stop().await;
        let engine = self.engine.clone();
        let file = self.memory_file.clone();
        let saved = tokio::task::spawn_blocking(move || {
            engine.memory().shutdown();
            let model = engine.model();
            snapshot::write(
                &file,
                &engine.memory().snapshot(),
                model.version(),
                model.input_dim(),
                model.embed_dim(),
            )
        })
        .await;
        if let Err(e) = self.updates.pipeline().ring().remove() {
            tracing::warn!(error = %e, "cannot remove the ring file");
        }
        flushed.context("cannot flush the WAL")?;
        saved
            .context("memory snapshot task failed")?
            .context("cannot snapshot the memory")?;
        Ok(())
    }
}

/// Refills the memory from its snapshot. Embeddings written under another model
/// version are recomputed from the stored features. A damaged snapshot is reported
/// and set aside (renamed `.corrupt`): the server starts with an empty memory rather
/// than not at all.
async fn restore_memory(memory: &Arc<Memory>, model: Mlp, file: &Path) -> anyhow::Result<Mlp> {
    let (memory, file) = (memory.clone(), file.to_path_buf());
    tokio::task::spawn_blocking(move || {
        restore_blocking(&memory, &model, &file);
        model
    })
    .await
    .context("memory restore task failed")
}

fn restore_blocking(memory: &Memory, model: &Mlp, file: &Path) {
    let snap = match snapshot::read(file, model.input_dim(), model.embed_dim()) {
        Ok(Some(snap)) => snap,
        Ok(None) => return,
        Err(e) => {
            tracing::error!(error = %e, "the memory snapshot is unusable; starting with an empty memory");
            let _ = std::fs::rename(file, file.with_extension("bin.corrupt"));
            return;
        }
    };
    let mut experiences = snap.experiences;
    if snap.model_version != model.version()
        && let Err(e) = reembed(model, &mut experiences)
    {
        tracing::error!(error = %e, "cannot re-embed the memory snapshot; starting with an empty memory");
        return;
    }
    let mut restored = 0usize;
    for e in experiences {
        // The insert queue is bounded: wait for the indexer rather than drop.
        for _ in 0..10_000 {
            match memory.submit(e.clone()) {
                Ok(()) => {
                    restored += 1;
                    break;
                }
                Err(crate::knn::KnnError::QueueFull { .. }) => {
                    std::thread::sleep(Duration::from_micros(200));
                }
                Err(err) => {
                    tracing::warn!(error = %err, "a snapshot experience was refused");
                    break;
                }
            }
        }
    }
    memory.flush(Duration::from_secs(30));
    tracing::info!(
        restored,
        from_version = snap.model_version,
        "memory restored from its snapshot"
    );
}

/// Recomputes embeddings with `model`, in batches.
fn reembed(model: &Mlp, experiences: &mut [Experience]) -> Result<(), crate::model::ModelError> {
    for chunk in experiences.chunks_mut(256) {
        let inputs: Vec<f32> = chunk
            .iter()
            .flat_map(|e| e.features.iter().copied())
            .collect();
        let out = model.forward(&inputs, chunk.len())?;
        for (i, e) in chunk.iter_mut().enumerate() {
            e.embedding = out.embedding_row(i).to_vec();
        }
    }
    Ok(())
}

/// Serves on `listener` until `shutdown` resolves, then drains in-flight requests for
/// at most `shutdown_timeout_ms` and shuts the update path down.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // Install the recorder before anything records.
    crate::metrics::handle();
    let server = start(&config).await?;
    let engine = server.engine.clone();
    engine
        .warm_up()
        .await
        .context("the model failed its warm-up forward pass")?;
    let state = AppState::new(
        engine.clone(),
        Some(server.updates.clone()),
        config.server.clone(),
    );
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

    let (draining_tx, draining_rx) = tokio::sync::oneshot::channel::<()>();
    let on_shutdown = {
        let state = state.clone();
        async move {
            shutdown.await;
            state.set_ready(false);
            let _ = draining_tx.send(());
        }
    };
    let app = axum::serve(
        listener,
        http::router(state).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(on_shutdown);
    let drain_limit = Duration::from_millis(config.server.shutdown_timeout_ms);
    let drain_deadline = async move {
        match draining_rx.await {
            Ok(()) => tokio::time::sleep(drain_limit).await,
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        result = app => result.context("HTTP server failed")?,
        () = drain_deadline => tracing::warn!(?drain_limit, "in-flight requests did not drain in time"),
    }
    let _ = stop_monitor.send(true);
    server.shutdown().await?;
    tracing::info!("adaptserve stopped");
    Ok(())
}
/// candle sizes its matmul thread pool from `RAYON_NUM_THREADS`, read on every call.
/// On two cores a pool of 2 makes the small matrices of a per-request forward pass
/// ~15× slower (FACTS: 82 µs vs 5.3 µs at batch 1), and the model thread is meant to
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
