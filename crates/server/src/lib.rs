//! # adaptserve-server
//!
//! The serving process: the request path, the server's side of the update path, the
//! update-worker's supervision, the health monitor, alerts and metrics. It stands on
//! `adaptserve-core` (the model, the update records, the WAL, the ring) and is used by
//! the `adaptserve` binary; docs/ARCHITECTURE.md draws the whole.
//!
//! # Layout
//! - [`app`] — assembles the server, restores its state and runs it until shutdown.
//! - [`cluster`] — this server as a replica of a cluster on Redis Streams: the WAL
//!   forwarder, the versions and experiences followers, shared pending predictions.
//! - [`config`] — composes every section into one `Config`: file, defaults, checks.
//! - [`engine`] — the request path: micro-batched model thread, cold start, the
//!   ensemble vote with adaptive λ, confidence gate, k-NN breaker, delayed-label
//!   joins, request ids.
//! - [`knn`] — the experience memory: exact scan and HNSW behind one trait.
//! - [`http`] — axum routes, limits, and the one error shape.
//! - [`update`] — the server's side of the update path: WAL writer, pending log, hot
//!   swap.
//! - [`supervisor`] — the update-worker's watchdog: exits, hangs, backoff, suspension,
//!   cleanup.
//! - [`monitor`] — health metrics every interval, thresholds, alerts; the p99 histogram.
//! - [`alerts`] — severities, cooldown, log/file/webhook channels, retries, breakers.
//! - [`metrics`] — Prometheus names, buckets, the recorder, scrape-time refresh.
//! - [`state`] — what every handler, the scrape and the monitor can reach.
//! - [`status`] — one typed snapshot of the server, read by `/v1/status`, `/health`,
//!   `/metrics` and the monitor.

pub mod alerts;
pub mod app;
pub mod cluster;
pub mod config;
pub mod engine;
pub mod http;
pub mod knn;
pub mod metrics;
pub mod monitor;
pub mod state;
pub mod status;
pub mod supervisor;
pub mod update;

// The core's modules under the names the server's code has always used.
pub use adaptserve_core::{VERSION, ipc, model, resilience, shutdown, telemetry, wal};
