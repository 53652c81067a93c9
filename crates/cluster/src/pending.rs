//! Predictions awaiting a label, shared through Redis so that a label joins its
//! prediction on whichever replica the load balancer sends it to.
//!
//! The replica that answered ships each prediction's pending record (the same
//! bytes its pending log keeps) under `pending:{id}` with the pending TTL, in
//! pipelined batches, off the request path. A label is *claimed*: one script takes
//! the record and leaves a tombstone in its place (same expiry), so a second label
//! for the same id, on any replica, finds the tombstone and is refused as already
//! answered. A label joined on the replica that holds its prediction without a
//! claim (the record not shipped yet, or Redis away) is marked answered by that
//! replica's shipper, after the record itself and never before it: shipping a
//! record writes only where no key exists, so a tombstone always wins.

use std::time::Duration;

use redis::{Script, Value};

use crate::link::{ClusterError, Link};
use crate::reply;

/// What a tombstone holds: never a pending record, which is at least 24 bytes.
const TOMBSTONE: &[u8] = b"answered";

/// What a claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The prediction's record; the label is this caller's to join.
    Found(Vec<u8>),
    /// Another label claimed it first.
    Answered,
    /// Redis holds nothing for it (not shipped yet, never, or expired).
    Absent,
}

/// KEYS: pending:{id}. ARGV: tombstone.
const CLAIM: &str = r"
local v = redis.call('GET', KEYS[1])
if v == false then
  return false
end
if v == ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'KEEPTTL')
return v
";

/// Ships `(id, record)` pairs with `ttl`, never over an existing key, and marks
/// the `answered` ids (labels joined on the replica that holds them) as claimed.
pub async fn ship(
    link: &Link,
    records: &[(u64, Vec<u8>)],
    answered: &[u64],
    ttl: Duration,
) -> Result<(), ClusterError> {
    let mut pipe = redis::pipe();
    for id in answered {
        pipe.cmd("SET")
            .arg(link.keys().pending(*id))
            .arg(TOMBSTONE)
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .ignore();
    }
    for (id, record) in records {
        pipe.cmd("SET")
            .arg(link.keys().pending(*id))
            .arg(record.as_slice())
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .ignore();
    }
    link.pipe(&pipe).await.map(|_| ())
}

/// Claims the prediction `id` for a label.
pub async fn claim(link: &Link, id: u64) -> Result<Claim, ClusterError> {
    let script = Script::new(CLAIM);
    let mut invocation = script.prepare_invoke();
    invocation.key(link.keys().pending(id)).arg(TOMBSTONE);
    match link.script(&invocation).await? {
        Value::Nil => Ok(Claim::Absent),
        Value::Int(0) => Ok(Claim::Answered),
        value => Ok(Claim::Found(
            reply::bytes(&value, "a pending record")?.to_vec(),
        )),
    }
}

/// Puts a claimed record back (its label could not be logged), so the label can be
/// sent again anywhere.
pub async fn unclaim(
    link: &Link,
    id: u64,
    record: &[u8],
    ttl: Duration,
) -> Result<(), ClusterError> {
    link.query(
        redis::cmd("SET")
            .arg(link.keys().pending(id))
            .arg(record)
            .arg("PX")
            .arg(ttl.as_millis() as u64),
        Duration::ZERO,
    )
    .await
    .map(|_| ())
}
