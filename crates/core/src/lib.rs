//! # adaptserve-core
//!
//! What the server and the update-worker share, and nothing else: the worker links
//! this crate only, so it carries no HTTP stack, no k-NN index and no plotting. See
//! docs/ARCHITECTURE.md for how the crates fit together.
//!
//! # Layout
//! - [`model`] — MLP load/forward/save in F16/BF16/F32, init, quantize, the online
//!   trainer, the KL comparison of two versions.
//! - [`update`] — the update record and its codec, checkpoints and version metadata,
//!   the worker's spec and settings.
//! - [`wal`] — the write-ahead log of updates: segments, group commit, repair, replay.
//! - [`ipc`] — the shared-memory ring to the update-worker (the only `unsafe`).
//! - [`resilience`] — the one full-jitter backoff and the one circuit breaker.
//! - [`settings`] — the error and range checks every config section shares.
//! - [`shutdown`] — SIGTERM/SIGINT.
//! - [`telemetry`] — logging.

#[allow(unsafe_code)]
pub mod ipc;
pub mod model;
pub mod resilience;
pub mod settings;
pub mod shutdown;
pub mod telemetry;
pub mod update;
pub mod wal;

/// The crate version, reported by `/v1/status` and the worker.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
