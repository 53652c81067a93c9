//! The connection to Redis and what can go wrong with it.
//!
//! One [`Link`] is one multiplexed connection, connected lazily (a replica starts
//! and serves with Redis away) and reconnected by the `redis` crate's connection
//! manager. Every call is bounded by [`LinkConfig::timeout`], so a Redis that is
//! stopped (SIGSTOP, a full network buffer) costs a bounded wait, never a hang.
//! Blocking reads (`XREAD BLOCK`) hold their connection, so each follower has a
//! link of its own.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::keys::Keys;

/// Why a cluster operation failed. Each names what to do about it: wait for Redis,
/// look at what answered, or step down.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    #[error("Redis is unreachable: {0}")]
    Unreachable(String),
    #[error("Redis refused the command: {0}")]
    Refused(String),
    #[error("Redis answered something that is not {what}: {detail}")]
    Garbage { what: &'static str, detail: String },
    #[error("this trainer's lease (token {token}) is gone: another trainer leads")]
    Fenced { token: u64 },
    #[error("version {version} is damaged: {reason}")]
    Corrupt { version: u64, reason: String },
    #[error("the cluster URL {url:?} is not usable: {reason}")]
    BadUrl { url: String, reason: String },
}

impl ClusterError {
    /// A reply of the wrong shape.
    pub fn garbage(what: &'static str, detail: impl std::fmt::Display) -> Self {
        Self::Garbage {
            what,
            detail: detail.to_string(),
        }
    }

    /// Whether waiting for Redis would help (as opposed to a reply that was wrong).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Unreachable(_))
    }
}

impl From<redis::RedisError> for ClusterError {
    fn from(e: redis::RedisError) -> Self {
        if e.is_io_error()
            || e.is_timeout()
            || e.is_connection_refusal()
            || e.is_connection_dropped()
            || e.is_unrecoverable_error()
        {
            Self::Unreachable(e.to_string())
        } else if e.to_string().to_ascii_lowercase().contains("loading") {
            // A restarted Redis replaying its AOF: up soon, not wrong.
            Self::Unreachable(e.to_string())
        } else {
            Self::Refused(e.to_string())
        }
    }
}

/// Whether an error says the connection was gone (as opposed to a timeout). A
/// refusal counts: after Redis restarts, the connection manager hands the last
/// reconnect attempt's refusal to the next call, though a retry now connects.
fn is_dropped(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "broken pipe",
        "connection reset",
        "connection closed",
        "dropped",
        "terminated",
    ]
    .iter()
    .any(|s| m.contains(s))
}

/// The connection's own response timeout beyond the call's: longer than any
/// blocking read.
const BACKSTOP: Duration = Duration::from_secs(30);

/// How to reach Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkConfig {
    /// `redis://HOST:PORT[/DB]`.
    pub url: String,
    /// The key prefix naming this cluster.
    pub prefix: String,
    /// The bound on every call, and on connecting.
    pub timeout: Duration,
}

impl LinkConfig {
    /// The default prefix and a 1-second bound.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: "adaptserve".into(),
            timeout: Duration::from_secs(1),
        }
    }
}

/// A connection to the cluster's Redis. Cheap to clone (clones share the socket).
#[derive(Clone)]
pub struct Link {
    conn: ConnectionManager,
    keys: Keys,
    timeout: Duration,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("keys", &self.keys)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Link {
    /// A link that connects on first use: never waits for Redis. Fails only on a
    /// URL that can never work. Must be called inside a tokio runtime.
    pub fn open(config: &LinkConfig) -> Result<Self, ClusterError> {
        let bad = |reason: String| ClusterError::BadUrl {
            url: config.url.clone(),
            reason,
        };
        if !config.url.starts_with("redis://") && !config.url.starts_with("rediss://") {
            return Err(bad("it must start with redis://".into()));
        }
        let client = redis::Client::open(config.url.as_str()).map_err(|e| bad(e.to_string()))?;
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.timeout))
            // Each call is bounded below by `query`'s own timeout, which knows how
            // long a blocking read may wait; this is only a backstop.
            .set_response_timeout(Some(config.timeout + BACKSTOP))
            // The callers retry on their own schedule; the manager reconnects in the
            // background and fails fast meanwhile.
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, manager)
            .map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            conn,
            keys: Keys::new(&config.prefix),
            timeout: config.timeout,
        })
    }

    /// The key names.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Runs `cmd`, bounded by the timeout (plus `extra`, for a blocking read). A
    /// command that fails on a dropped connection (Redis restarted since the last
    /// call) is sent once more on the new one: every plain command the cluster
    /// sends is safe to repeat. Scripts are not retried here; their callers decide.
    pub async fn query(
        &self,
        cmd: &redis::Cmd,
        extra: Duration,
    ) -> Result<redis::Value, ClusterError> {
        match self.query_once(cmd, extra).await {
            Err(ClusterError::Unreachable(e)) if is_dropped(&e) => {
                self.query_once(cmd, extra).await
            }
            other => other,
        }
    }

    async fn query_once(
        &self,
        cmd: &redis::Cmd,
        extra: Duration,
    ) -> Result<redis::Value, ClusterError> {
        let mut conn = self.conn.clone();
        match tokio::time::timeout(self.timeout + extra, cmd.query_async(&mut conn)).await {
            Ok(result) => result.map_err(ClusterError::from),
            Err(_) => Err(ClusterError::Unreachable(format!(
                "no answer within {:?}",
                self.timeout + extra
            ))),
        }
    }

    /// Runs a pipeline, bounded by the timeout.
    pub async fn pipe(&self, pipe: &redis::Pipeline) -> Result<Vec<redis::Value>, ClusterError> {
        let mut conn = self.conn.clone();
        match tokio::time::timeout(self.timeout, pipe.query_async(&mut conn)).await {
            Ok(result) => result.map_err(ClusterError::from),
            Err(_) => Err(ClusterError::Unreachable(format!(
                "no answer within {:?}",
                self.timeout
            ))),
        }
    }

    /// Runs a Lua script (loaded on first use), bounded by the timeout.
    pub async fn script(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<redis::Value, ClusterError> {
        let mut conn = self.conn.clone();
        match tokio::time::timeout(self.timeout, invocation.invoke_async(&mut conn)).await {
            Ok(result) => result.map_err(ClusterError::from),
            Err(_) => Err(ClusterError::Unreachable(format!(
                "no answer within {:?}",
                self.timeout
            ))),
        }
    }

    /// `PING`: whether Redis answers now.
    pub async fn ping(&self) -> Result<(), ClusterError> {
        match self.query(&redis::cmd("PING"), Duration::ZERO).await? {
            redis::Value::SimpleString(s) if s == "PONG" => Ok(()),
            other => Err(ClusterError::garbage("PONG", format!("{other:?}"))),
        }
    }
}

/// Waits between attempts at Redis: the core's full-jitter [`Backoff`], counting
/// its own attempts.
///
/// [`Backoff`]: adaptserve_core::resilience::backoff::Backoff
#[derive(Debug)]
pub struct Retry {
    backoff: adaptserve_core::resilience::backoff::Backoff,
    attempt: u32,
    rng: rand::rngs::StdRng,
}

impl Retry {
    /// Waits from `base` up to `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        use rand::SeedableRng;
        Self {
            backoff: adaptserve_core::resilience::backoff::Backoff::new(base, max),
            attempt: 0,
            rng: rand::rngs::StdRng::from_os_rng(),
        }
    }

    /// The wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let wait = self.backoff.full_jitter(self.attempt, &mut self.rng);
        self.attempt = self.attempt.saturating_add(1);
        wait
    }

    /// An attempt succeeded: start again from `base`.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_url_that_can_never_work_is_refused_at_once() {
        let err = Link::open(&LinkConfig::new("http://localhost:6379")).unwrap_err();
        assert!(matches!(err, ClusterError::BadUrl { .. }), "{err}");
        assert!(err.to_string().contains("redis://"));
    }

    #[tokio::test]
    async fn a_closed_port_is_unreachable_within_the_bound() {
        // Port 1 on loopback: nothing listens there.
        let mut config = LinkConfig::new("redis://127.0.0.1:1");
        config.timeout = Duration::from_millis(300);
        let link = Link::open(&config).unwrap();
        let started = std::time::Instant::now();
        let err = link.ping().await.unwrap_err();
        assert!(err.is_unreachable(), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
