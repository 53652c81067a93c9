//! The shared label log: every replica's updates (labels, pseudo-labels, drift
//! markers, in their WAL byte form) on one stream, each `(replica, seq)` once.
//!
//! A replica's forwarder retries after timeouts and restarts, so the same WAL
//! records are offered again; the append script keeps a high-water mark per replica
//! (the `forwarded` hash) and appends only what is above it, in the same atomic step.
//! It also reports the mark it found, so a forwarder learns when Redis lost its tail
//! (restarted from an AOF older than what it acknowledged) and sends the gap again
//! from its WAL, which keeps everything a published version has not learned.

use std::time::Duration;

use redis::{Script, Value};

use crate::link::{ClusterError, Link};
use crate::reply::{self, Entry, StreamId};

/// One update on the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    pub id: StreamId,
    /// The replica whose WAL it came from.
    pub replica: u16,
    /// Its sequence number in that WAL.
    pub seq: u64,
    /// The update's WAL record (`adaptserve_core::update::codec`).
    pub payload: Vec<u8>,
}

impl Label {
    fn from_entry(entry: Entry) -> Result<Self, ClusterError> {
        Ok(Self {
            replica: entry.number("r")?,
            seq: entry.number("s")?,
            payload: entry.field("u")?.to_vec(),
            id: entry.id,
        })
    }
}

/// What an append found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The replica's high-water mark before the call.
    pub before: u64,
    /// After it: the highest sequence number of this replica on the stream.
    pub after: u64,
    /// Records appended (the rest were there already).
    pub appended: u64,
}

/// KEYS: forwarded hash, labels stream. ARGV: replica, then seq/payload pairs in
/// ascending seq order. Appends the pairs above the mark, raises it, returns
/// `{before, after, appended}`.
const APPEND_ONCE: &str = r"
local before = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local hwm = before
local n = 0
for i = 2, #ARGV, 2 do
  local seq = tonumber(ARGV[i])
  if seq > hwm then
    redis.call('XADD', KEYS[2], '*', 'r', ARGV[1], 's', ARGV[i], 'u', ARGV[i + 1])
    hwm = seq
    n = n + 1
  end
end
if hwm > before then
  redis.call('HSET', KEYS[1], ARGV[1], hwm)
end
return {before, hwm, n}
";

/// Appends `records` (ascending `(seq, payload)`) for `replica`, each at most once
/// ever.
pub async fn append_once(
    link: &Link,
    replica: u16,
    records: &[(u64, Vec<u8>)],
) -> Result<Appended, ClusterError> {
    let script = Script::new(APPEND_ONCE);
    let mut invocation = script.prepare_invoke();
    invocation
        .key(link.keys().forwarded())
        .key(link.keys().labels())
        .arg(replica);
    for (seq, payload) in records {
        invocation.arg(*seq).arg(payload.as_slice());
    }
    let value = link.script(&invocation).await?;
    let parts = reply::array(&value, "the append script's {before, after, appended}")?;
    let [before, after, appended] = parts else {
        return Err(ClusterError::garbage(
            "the append script's {before, after, appended}",
            reply::short(&value),
        ));
    };
    Ok(Appended {
        before: non_negative(reply::int(before, "a sequence number")?)?,
        after: non_negative(reply::int(after, "a sequence number")?)?,
        appended: non_negative(reply::int(appended, "a count")?)?,
    })
}

fn non_negative(i: i64) -> Result<u64, ClusterError> {
    u64::try_from(i).map_err(|_| ClusterError::garbage("a count of zero or more", i))
}

/// The highest sequence number of `replica` on the stream (0: none).
pub async fn forwarded(link: &Link, replica: u16) -> Result<u64, ClusterError> {
    let value = link
        .query(
            redis::cmd("HGET").arg(link.keys().forwarded()).arg(replica),
            Duration::ZERO,
        )
        .await?;
    match value {
        Value::Nil => Ok(0),
        v => non_negative(reply::int(&v, "a sequence number")?),
    }
}

/// Up to `count` entries after `after`, waiting up to `block` for the first.
pub async fn read_after(
    link: &Link,
    after: StreamId,
    count: usize,
    block: Option<Duration>,
) -> Result<Vec<Label>, ClusterError> {
    let mut cmd = redis::cmd("XREAD");
    cmd.arg("COUNT").arg(count);
    if let Some(block) = block {
        cmd.arg("BLOCK").arg(block.as_millis() as u64);
    }
    cmd.arg("STREAMS")
        .arg(link.keys().labels())
        .arg(after.to_string());
    let value = link.query(&cmd, block.unwrap_or_default()).await?;
    reply::read_entries(&value)?
        .into_iter()
        .map(Label::from_entry)
        .collect()
}

/// The newest `count` entries, oldest first: where a replica that is new, or fell
/// behind the trim, seeds its memory from.
pub async fn newest(link: &Link, count: usize) -> Result<Vec<Label>, ClusterError> {
    let value = link
        .query(
            redis::cmd("XREVRANGE")
                .arg(link.keys().labels())
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(count),
            Duration::ZERO,
        )
        .await?;
    let mut labels = reply::entries(&value)?
        .into_iter()
        .map(Label::from_entry)
        .collect::<Result<Vec<_>, _>>()?;
    labels.reverse();
    Ok(labels)
}

/// The id of the oldest entry still on the stream.
pub async fn first_id(link: &Link) -> Result<Option<StreamId>, ClusterError> {
    let value = link
        .query(
            redis::cmd("XRANGE")
                .arg(link.keys().labels())
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(1),
            Duration::ZERO,
        )
        .await?;
    Ok(reply::entries(&value)?.first().map(|e| e.id))
}

/// Deletes the entries below `min`; returns how many.
pub async fn trim_below(link: &Link, min: StreamId) -> Result<u64, ClusterError> {
    let value = link
        .query(
            redis::cmd("XTRIM")
                .arg(link.keys().labels())
                .arg("MINID")
                .arg(min.to_string()),
            Duration::ZERO,
        )
        .await?;
    non_negative(reply::int(&value, "a count of trimmed entries")?)
}
