//! What every handler, the metrics scrape and the health monitor can reach: the
//! engine, the update path, the server's settings, readiness.
//!
//! It lives beside the HTTP layer rather than in it, because the monitor and the
//! metrics read it too; they read it through [`crate::status::Status`], the one
//! place that turns it into figures.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::config::ServerConfig;
use crate::engine::Engine;
use crate::update::swap::UpdatePath;

/// What every handler can reach.
#[derive(Debug)]
pub struct AppState {
    /// The request path.
    pub engine: Arc<Engine>,
    /// The update path (WAL, worker, swaps).
    pub updates: Arc<UpdatePath>,
    /// The server's settings (limits, admin token).
    pub config: ServerConfig,
    /// False until the model is loaded and warmed, and again once shutdown begins,
    /// so a load balancer stops sending before the drain.
    pub ready: AtomicBool,
    /// For `uptime_seconds`.
    pub started: Instant,
    /// The health monitor's latency histogram and last result.
    pub monitor: crate::monitor::Monitor,
    /// The per-client rate limit (off unless configured).
    pub rate_limit: crate::http::ratelimit::RateLimiter,
    /// What the server rebuilt from its state dir at start (`/v1/status`'s
    /// `recovery`), set once by the app.
    pub recovery: std::sync::OnceLock<serde_json::Value>,
    /// This server's part in a cluster (set once by the app; `None` inside when
    /// standalone).
    pub cluster: std::sync::OnceLock<Option<Arc<crate::cluster::Replica>>>,
}

impl AppState {
    /// State for `engine`, not yet ready.
    pub fn new(engine: Arc<Engine>, updates: Arc<UpdatePath>, config: ServerConfig) -> Arc<Self> {
        let rate_limit = crate::http::ratelimit::RateLimiter::new(
            config.rate_limit_per_sec,
            config.rate_limit_burst,
        );
        Arc::new(Self {
            engine,
            updates,
            config,
            ready: AtomicBool::new(false),
            started: Instant::now(),
            monitor: crate::monitor::Monitor::default(),
            rate_limit,
            recovery: std::sync::OnceLock::new(),
            cluster: std::sync::OnceLock::new(),
        })
    }

    /// The replica, in a cluster.
    pub fn replica(&self) -> Option<&Arc<crate::cluster::Replica>> {
        self.cluster.get().and_then(Option::as_ref)
    }

    /// Marks the server ready (or not) for `/health/ready`.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Whether `/health/ready` answers 200: marked ready, and the model thread alive.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && self.engine.model_alive()
    }
}
