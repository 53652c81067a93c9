//! Predictions awaiting a label, shared through Redis so that a label joins its
//! prediction on whichever replica the load balancer sends it to.
//!
//! The replica that answered ships each prediction's pending record (the same
//! bytes its pending log keeps) under `pending:{id}` with the pending TTL, in
//! pipelined batches, off the request path. A label *claims* it: one script reads
//! the record and sets `answered:{id}` to the claimer's nonce, unless it is set
//! already, so one label joins each prediction cluster-wide. The record itself
//! stays, so a claim can be undone: when the label could not be logged, or when
//! the claim's reply never came (Redis stalled: the script may run after the
//! replica gave up), the replica releases it with its nonce once Redis answers, and
//! the label can be sent again. A label joined on the replica that holds the
//! prediction without a claim (Redis away) is marked answered by that replica's
//! shipper when Redis is back.

use std::time::Duration;

use redis::{Script, Value};

use crate::link::{ClusterError, Link};
use crate::reply;

/// The mark of a label joined where the prediction was made, without a claim.
const LOCAL: &[u8] = b"local";

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

/// KEYS: answered:{id}, pending:{id}. ARGV: nonce, ttl ms.
const CLAIM: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
local v = redis.call('GET', KEYS[2])
if v == false then
  return false
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return v
";

/// KEYS: answered:{id}. ARGV: nonce. Undoes this nonce's claim, nobody else's.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Ships `(id, record)` pairs with `ttl`, never over an existing record, and marks
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
            .arg(link.keys().answered(*id))
            .arg(LOCAL)
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

/// Claims the prediction `id` for a label, under `nonce` (unique to this claim).
pub async fn claim(
    link: &Link,
    id: u64,
    nonce: &str,
    ttl: Duration,
) -> Result<Claim, ClusterError> {
    let script = Script::new(CLAIM);
    let mut invocation = script.prepare_invoke();
    invocation
        .key(link.keys().answered(id))
        .key(link.keys().pending(id))
        .arg(nonce)
        .arg(ttl.as_millis() as u64);
    match link.script(&invocation).await? {
        Value::Nil => Ok(Claim::Absent),
        Value::Int(0) => Ok(Claim::Answered),
        value => Ok(Claim::Found(
            reply::bytes(&value, "a pending record")?.to_vec(),
        )),
    }
}

/// Undoes the claim made under `nonce` (if it was made at all), so the label can
/// be sent again.
pub async fn release(link: &Link, id: u64, nonce: &str) -> Result<(), ClusterError> {
    let script = Script::new(RELEASE);
    let mut invocation = script.prepare_invoke();
    invocation.key(link.keys().answered(id)).arg(nonce);
    link.script(&invocation).await.map(|_| ())
}
