//! # adaptserve
//!
//! An online-learning inference server: it serves a classification model over HTTP
//! and keeps improving it while it serves.
//!
//! # Layout
//! - [`alerts`] — severities, cooldown, log/file/webhook channels, retries, breakers.
//! - [`app`] — assembles the server and runs it until shutdown.
//! - [`config`] — the CLI, the TOML file, the typed config sections.
//! - [`eval`] — `adaptserve eval`: prequential accuracy of a CSV stream replayed
//!   test-then-train through the HTTP API.
//! - [`engine`] — the request path: micro-batched model thread, cold start, temporal
//!   vote with adaptive λ, confidence gate, k-NN breaker, delayed-label joins.
//! - [`http`] — axum routes, limits, and the one error shape.
//! - [`ipc`] — the shared-memory ring to the update-worker (the only `unsafe`).
//! - [`knn`] — the experience memory: exact scan and HNSW behind one trait.
//! - [`metrics`] — Prometheus names, buckets, the recorder, scrape-time refresh.
//! - [`model`] — MLP load/forward/save in F16/BF16/F32, init, quantize, training.
//! - [`plot`] — line charts as inline SVG for the HTML reports.
//! - [`resilience`] — the one full-jitter backoff and the one circuit breaker, free of
//!   server types and clocks.
//! - [`monitor`] — health metrics every interval, thresholds, alerts; the p99 histogram.
//! - [`shutdown`] — SIGTERM/SIGINT.
//! - [`simulate`] — the synthetic drifting task shared by the default model and tests.
//! - [`supervisor`] — the update-worker's watchdog: exits, hangs, backoff, suspension, cleanup.
//! - [`telemetry`] — logging.
//! - [`wal`] — the write-ahead log of updates: segments, group commit, repair, replay.
//! - [`update`] — the server's side of the update path: WAL writer, worker process,
//!   hot swap, checkpoints.

pub mod alerts;
pub mod app;
pub mod config;
pub mod engine;
pub mod eval;
pub mod http;
#[allow(unsafe_code)]
pub mod ipc;
pub mod knn;
pub mod metrics;
pub mod model;
pub mod monitor;
pub mod plot;
pub mod resilience;
pub mod shutdown;
pub mod simulate;
pub mod supervisor;
pub mod telemetry;
pub mod update;
pub mod wal;

/// The crate version, reported by `/v1/status` and the worker.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
