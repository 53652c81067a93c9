//! The `[cluster]` section: whether this server is a replica of a cluster, and how
//! it reaches the cluster's Redis. Absent (`url` unset), the server is standalone,
//! exactly as without this section.

use serde::{Deserialize, Serialize};

use adaptserve_core::settings::{InvalidSetting, invalid, positive};

/// `[cluster]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// The cluster's Redis, `redis://HOST:PORT`; unset: standalone.
    pub url: Option<String>,
    /// This replica's number, 1..=1023, unique in the cluster and the same across
    /// restarts: it names the replica's WAL on the label stream and is part of
    /// every request id it hands out.
    pub replica_id: u16,
    /// The key prefix: several clusters can share one Redis.
    pub prefix: String,
    /// The URL other replicas and `GET /v1/cluster` show for this one
    /// [default: http://HOST:PORT as bound].
    pub advertise: Option<String>,
    /// Bound on every Redis call, in milliseconds: Redis away costs at most this.
    pub timeout_ms: u64,
    /// WAL records per append to the label stream.
    pub forward_batch: usize,
    /// Label stream entries a replica with an empty or outdated memory seeds it
    /// from.
    pub reseed: usize,
    /// Pending records queued for sharing before new ones are dropped (counted).
    pub share_queue: usize,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            url: None,
            replica_id: 0,
            prefix: "adaptserve".into(),
            advertise: None,
            timeout_ms: 1000,
            forward_batch: 512,
            reseed: 20_000,
            share_queue: 65_536,
        }
    }
}

impl ClusterConfig {
    /// Whether this server is a cluster replica.
    pub fn enabled(&self) -> bool {
        self.url.is_some()
    }

    /// Checks every setting; the replica id only matters in a cluster.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        if let Some(url) = &self.url {
            if !url.starts_with("redis://") && !url.starts_with("rediss://") {
                return Err(invalid(
                    "cluster.url",
                    format!("{url:?} must start with redis:// or rediss://"),
                ));
            }
            if self.replica_id == 0 || u64::from(self.replica_id) > crate::engine::ids::MAX_REPLICA
            {
                return Err(invalid(
                    "cluster.replica_id",
                    format!(
                        "is {}; a replica needs a number in 1..={} (--replica-id)",
                        self.replica_id,
                        crate::engine::ids::MAX_REPLICA
                    ),
                ));
            }
        }
        if self.prefix.is_empty() || self.prefix.contains(['{', '}']) {
            return Err(invalid(
                "cluster.prefix",
                format!("{:?} must be non-empty, without braces", self.prefix),
            ));
        }
        positive("cluster.timeout_ms", self.timeout_ms as usize)?;
        positive("cluster.forward_batch", self.forward_batch)?;
        positive("cluster.reseed", self.reseed)?;
        positive("cluster.share_queue", self.share_queue)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standalone_by_default_and_a_replica_needs_its_number() {
        let standalone = ClusterConfig::default();
        assert!(!standalone.enabled());
        standalone.validate().unwrap();
        let mut replica = ClusterConfig {
            url: Some("redis://127.0.0.1:6379".into()),
            ..ClusterConfig::default()
        };
        let err = replica.validate().unwrap_err().to_string();
        assert!(err.contains("cluster.replica_id"), "{err}");
        replica.replica_id = 3;
        replica.validate().unwrap();
        replica.url = Some("http://127.0.0.1:6379".into());
        let err = replica.validate().unwrap_err().to_string();
        assert!(err.contains("cluster.url"), "{err}");
    }
}
