//! Assembles and runs the server: load the model, start the memory and the model
//! thread, warm up, serve until `shutdown` resolves, then drain within a bound.
//!
//! `run` takes a bound listener and a shutdown future (mini-redis style) so tests can
//! start a real server on `127.0.0.1:0` and stop it at will.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::engine::{Engine, LocalSink};
use crate::http::{self, AppState};
use crate::knn::{Memory, MemoryConfig};
use crate::model::Mlp;

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

/// Loads the model and builds the engine (model thread, memory, sink).
pub async fn build_engine(config: &Config) -> anyhow::Result<Arc<Engine>> {
    let dir = config.server.model.clone();
    let model = tokio::task::spawn_blocking(move || Mlp::load(&dir))
        .await
        .context("model loading task failed")?
        .with_context(|| {
            format!(
                "cannot load the model from {}",
                config.server.model.display()
            )
        })?;
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

/// Serves on `listener` until `shutdown` resolves, then drains in-flight requests for
/// at most `shutdown_timeout_ms`.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let engine = build_engine(&config).await?;
    engine
        .warm_up()
        .await
        .context("the model failed its warm-up forward pass")?;
    let state = AppState::new(engine.clone(), config.server.clone());
    state.set_ready(true);
    let addr = listener.local_addr().context("listener has no address")?;
    tracing::info!(%addr, model = %config.server.model.display(),
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
    let server = axum::serve(listener, http::router(state)).with_graceful_shutdown(on_shutdown);
    let drain_limit = Duration::from_millis(config.server.shutdown_timeout_ms);
    let drain_deadline = async move {
        match draining_rx.await {
            Ok(()) => tokio::time::sleep(drain_limit).await,
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        result = server => result.context("HTTP server failed")?,
        () = drain_deadline => tracing::warn!(?drain_limit, "in-flight requests did not drain in time"),
    }
    engine.memory().shutdown();
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
