//! Who is in the cluster: each replica refreshes its entry in one hash every second
//! (its URL, the version it serves, how far its WAL is forwarded), and the leading
//! trainer its status under one key. `GET /v1/cluster` reads both; an entry not
//! refreshed for [`STALE_MS`] is shown as not alive rather than deleted, so a
//! replica that went away stays visible.

use std::collections::BTreeMap;
use std::time::Duration;

use redis::Value;
use serde::{Deserialize, Serialize};

use crate::link::{ClusterError, Link};
use crate::reply;

/// Milliseconds after which a replica's entry counts as not alive.
pub const STALE_MS: u64 = 5_000;

/// A replica's entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaEntry {
    pub id: u16,
    /// Where it answers, as it advertises itself.
    pub url: String,
    /// The version it serves.
    pub version: u64,
    /// Its WAL's highest sequence number on the label stream.
    pub forwarded_seq: u64,
    /// Its WAL's last sequence number.
    pub logged_seq: u64,
    /// When it last refreshed the entry.
    pub last_seen_ms: u64,
}

/// The leading trainer's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainerStatus {
    /// The trainer's name (`--trainer-id`, or host and pid).
    pub holder: String,
    pub token: u64,
    /// The newest version it published.
    pub version: u64,
    /// The label stream position it has read through.
    pub position: String,
    /// Client labels learned over the lineage (in the published weights).
    pub labels_learned: u64,
    /// Updates of every kind learned over the lineage.
    pub updates_learned: u64,
    /// Stream entries seen twice and skipped.
    pub duplicates: u64,
    /// Updates a rejected version held, not learned.
    pub skipped: u64,
    /// Of those, client labels.
    pub labels_skipped: u64,
    /// Versions the guard rejected.
    pub rejected: u64,
    pub unix_ms: u64,
}

/// Writes `entry` (and nothing else).
pub async fn announce(link: &Link, entry: &ReplicaEntry) -> Result<(), ClusterError> {
    let json = serde_json::to_string(entry).unwrap_or_default();
    link.query(
        redis::cmd("HSET")
            .arg(link.keys().replicas())
            .arg(entry.id)
            .arg(json),
        Duration::ZERO,
    )
    .await
    .map(|_| ())
}

/// Every replica's entry, by id. An entry that does not parse is an error: the hash
/// is the cluster's own.
pub async fn replicas(link: &Link) -> Result<BTreeMap<u16, ReplicaEntry>, ClusterError> {
    let value = link
        .query(
            redis::cmd("HGETALL").arg(link.keys().replicas()),
            Duration::ZERO,
        )
        .await?;
    let pairs: Vec<(&Value, &Value)> = match &value {
        Value::Map(pairs) => pairs.iter().map(|(k, v)| (k, v)).collect(),
        other => {
            let flat = reply::array(other, "a hash of replicas")?;
            flat.chunks(2)
                .filter_map(|kv| match kv {
                    [k, v] => Some((k, v)),
                    _ => None,
                })
                .collect()
        }
    };
    let mut out = BTreeMap::new();
    for (_, v) in pairs {
        let raw = reply::bytes(v, "a replica's entry")?;
        let entry: ReplicaEntry = serde_json::from_slice(raw)
            .map_err(|e| ClusterError::garbage("a replica's entry (JSON)", e))?;
        out.insert(entry.id, entry);
    }
    Ok(out)
}

/// Writes the trainer's status, kept for a minute after its last refresh.
pub async fn set_trainer(link: &Link, status: &TrainerStatus) -> Result<(), ClusterError> {
    let json = serde_json::to_string(status).unwrap_or_default();
    link.query(
        redis::cmd("SET")
            .arg(link.keys().trainer_status())
            .arg(json)
            .arg("EX")
            .arg(60),
        Duration::ZERO,
    )
    .await
    .map(|_| ())
}

/// The trainer's status, if a trainer refreshed it within the minute.
pub async fn trainer(link: &Link) -> Result<Option<TrainerStatus>, ClusterError> {
    match link
        .query(
            redis::cmd("GET").arg(link.keys().trainer_status()),
            Duration::ZERO,
        )
        .await?
    {
        Value::Nil => Ok(None),
        value => serde_json::from_slice(reply::bytes(&value, "the trainer's status")?)
            .map(Some)
            .map_err(|e| ClusterError::garbage("the trainer's status (JSON)", e)),
    }
}

/// Asks the trainer to publish as soon as it has learned everything it has read.
pub async fn request_sync(link: &Link) -> Result<u64, ClusterError> {
    let value = link
        .query(redis::cmd("INCR").arg(link.keys().sync()), Duration::ZERO)
        .await?;
    let n = reply::int(&value, "a counter")?;
    u64::try_from(n).map_err(|_| ClusterError::garbage("a positive counter", n))
}

/// The sync counter (0 if never raised).
pub async fn sync_requests(link: &Link) -> Result<u64, ClusterError> {
    match link
        .query(redis::cmd("GET").arg(link.keys().sync()), Duration::ZERO)
        .await?
    {
        Value::Nil => Ok(0),
        value => {
            let n = reply::int(&value, "a counter")?;
            u64::try_from(n).map_err(|_| ClusterError::garbage("a positive counter", n))
        }
    }
}
