//! The `[server]` section: what the process serves, where it binds and keeps its
//! state, and the HTTP limits. Defined here once, with defaults and checks;
//! README.md's configuration block is tested against these defaults.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use adaptserve_core::settings::{InvalidSetting, invalid, positive};

/// A secret string (admin token, webhook URL): redacted from `Debug` and logs.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The secret itself; call only where it is used, never to log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Written out (a config dump, a status page) as `<redacted>`, never as itself.
impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("<redacted>")
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// HTTP server settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Model directory served at startup.
    pub model: PathBuf,
    /// Bind address.
    pub host: String,
    /// Bind port; 0 picks a free one (tests).
    pub port: u16,
    /// Where the WAL, checkpoints and memory snapshots live.
    pub state_dir: PathBuf,
    /// Bearer token for the admin routes; `None` closes them (403).
    pub admin_token: Option<Secret>,
    /// Largest accepted request body. 1 MiB holds ~20k floats as JSON, far more
    /// than `max_client_batch` rows of a tabular model, and bounds parse cost.
    pub payload_limit_bytes: usize,
    /// Most rows in one `/v1/infer` request, so one client cannot monopolise a batch.
    pub max_client_batch: usize,
    /// Requests handled at once before new ones get 429. Sized well above what two
    /// cores can batch so that bursts queue briefly instead of failing.
    pub max_concurrency: usize,
    /// Per-client (by IP) requests per second on `/v1/infer` and `/v1/feedback`
    /// before 429; 0 turns the limit off.
    pub rate_limit_per_sec: f64,
    /// Requests a quiet client may send at once.
    pub rate_limit_burst: f64,
    /// Behind a load balancer that appends the client's address to
    /// `X-Forwarded-For` (HAProxy `option forwardfor`), the rate limit's client is
    /// that header's last address instead of the balancer's. Off unless every
    /// request comes through such a balancer: a client could forge it otherwise.
    pub trust_forwarded_for: bool,
    /// A request still running after this long gets 503 (`timeout`).
    pub request_timeout_ms: u64,
    /// How long graceful shutdown waits for in-flight requests.
    pub shutdown_timeout_ms: u64,
    /// Threads serving HTTP, each a single-threaded runtime that keeps the
    /// connections it accepts (`app/serve.rs` says why); 0 is one per core.
    pub http_threads: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            model: PathBuf::from("models/default"),
            host: "127.0.0.1".into(),
            port: 8080,
            state_dir: PathBuf::from("state"),
            admin_token: None,
            payload_limit_bytes: 1 << 20,
            max_client_batch: 256,
            max_concurrency: 1024,
            rate_limit_per_sec: 0.0,
            rate_limit_burst: 50.0,
            trust_forwarded_for: false,
            request_timeout_ms: 10_000,
            shutdown_timeout_ms: 10_000,
            http_threads: 0,
        }
    }
}

impl ServerConfig {
    /// Refuses out-of-range settings, naming each as `server.<key>`.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        let s = self;
        positive("server.payload_limit_bytes", s.payload_limit_bytes)?;
        positive("server.max_client_batch", s.max_client_batch)?;
        positive("server.max_concurrency", s.max_concurrency)?;
        positive("server.request_timeout_ms", s.request_timeout_ms as usize)?;
        if !(s.rate_limit_per_sec.is_finite() && s.rate_limit_per_sec >= 0.0) {
            return Err(invalid(
                "server.rate_limit_per_sec",
                format!("must be >= 0 (0 = off), got {}", s.rate_limit_per_sec),
            ));
        }
        if s.rate_limit_per_sec > 0.0 && (s.rate_limit_burst.is_nan() || s.rate_limit_burst < 1.0) {
            return Err(invalid(
                "server.rate_limit_burst",
                format!(
                    "must be >= 1 when the rate limit is on, got {}",
                    s.rate_limit_burst
                ),
            ));
        }
        if s.admin_token
            .as_ref()
            .is_some_and(|t| t.expose().is_empty())
        {
            return Err(invalid("admin_token", "must not be empty".into()));
        }
        Ok(())
    }
}
