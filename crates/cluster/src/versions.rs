//! Published versions: the weights under their own key and an entry on the
//! `versions` stream saying what they are (parent, the trainer's fencing token, a
//! checksum of the bytes) and what they have learned (the position on the label
//! stream, and per replica the highest WAL sequence number), so a trainer resumes
//! from the newest entry, a replica truncates its WAL below what it learned and
//! answers its sync barrier, and every replica verifies the bytes before serving.
//!
//! Publishing is one script that first checks the lease still holds the
//! publisher's token: a trainer that was paused past its lease (and replaced)
//! cannot publish, whatever it believes.

use std::collections::BTreeMap;
use std::time::Duration;

use redis::{Script, Value};

use crate::link::{ClusterError, Link};
use crate::reply::{self, Entry, StreamId};

/// Versions whose weights stay in Redis (older ones are deleted; a replica behind
/// by more takes the newest).
pub const KEEP_WEIGHTS: u64 = 8;

/// One published version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// The entry's id on the stream (`StreamId::ZERO` before publishing).
    pub id: StreamId,
    pub version: u64,
    /// The version it was trained from (its own number for a trainer's seed).
    pub parent: u64,
    /// The publishing trainer's fencing token.
    pub token: u64,
    /// CRC-32 of the weights' bytes.
    pub checksum: u32,
    /// Length of the weights' bytes.
    pub bytes: u64,
    /// The label stream's position learned through.
    pub position: StreamId,
    /// Per replica, the highest WAL sequence number learned.
    pub learned: BTreeMap<u16, u64>,
    /// Client labels learned, over the whole lineage.
    pub labels: u64,
    /// Updates of every kind learned, over the whole lineage.
    pub updates: u64,
    /// Stream entries seen twice and skipped, over the whole lineage.
    pub duplicates: u64,
    /// Updates deliberately not learned (a version the guard rejected).
    pub skipped: u64,
    /// Of those, client labels: read once, not in the weights.
    pub labels_skipped: u64,
    /// The guard's verdict on this version.
    pub verdict: String,
    pub unix_ms: u64,
}

impl Version {
    fn fields(&self) -> Vec<(&'static str, String)> {
        let learned = serde_json::to_string(
            &self
                .learned
                .iter()
                .map(|(r, s)| (r.to_string(), *s))
                .collect::<BTreeMap<_, _>>(),
        )
        .unwrap_or_else(|_| "{}".into());
        vec![
            ("v", self.version.to_string()),
            ("parent", self.parent.to_string()),
            ("token", self.token.to_string()),
            ("crc", self.checksum.to_string()),
            ("len", self.bytes.to_string()),
            ("pos", self.position.to_string()),
            ("learned", learned),
            ("labels", self.labels.to_string()),
            ("updates", self.updates.to_string()),
            ("dups", self.duplicates.to_string()),
            ("skipped", self.skipped.to_string()),
            ("lskipped", self.labels_skipped.to_string()),
            ("verdict", self.verdict.clone()),
            ("ms", self.unix_ms.to_string()),
        ]
    }

    fn from_entry(entry: &Entry) -> Result<Self, ClusterError> {
        let learned: BTreeMap<String, u64> =
            serde_json::from_str(entry.text("learned")?).map_err(|e| {
                ClusterError::garbage(
                    "a JSON map of replica → sequence number",
                    format!("entry {}: {e}", entry.id),
                )
            })?;
        let learned = learned
            .into_iter()
            .map(|(r, s)| {
                r.parse::<u16>().map(|r| (r, s)).map_err(|_| {
                    ClusterError::garbage("a replica id", format!("entry {}: {r:?}", entry.id))
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            id: entry.id,
            version: entry.number("v")?,
            parent: entry.number("parent")?,
            token: entry.number("token")?,
            checksum: entry.number("crc")?,
            bytes: entry.number("len")?,
            position: entry.text("pos")?.parse()?,
            learned,
            labels: entry.number("labels")?,
            updates: entry.number("updates")?,
            duplicates: entry.number("dups")?,
            skipped: entry.number("skipped")?,
            labels_skipped: entry.number("lskipped")?,
            verdict: entry.text("verdict")?.to_string(),
            unix_ms: entry.number("ms")?,
        })
    }

    /// What this version learned of `replica`'s WAL.
    pub fn learned_of(&self, replica: u16) -> u64 {
        self.learned.get(&replica).copied().unwrap_or(0)
    }
}

/// CRC-32 of a version's bytes.
pub fn checksum(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// The newest published version.
pub async fn latest(link: &Link) -> Result<Option<Version>, ClusterError> {
    let value = link
        .query(
            redis::cmd("XREVRANGE")
                .arg(link.keys().versions())
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1),
            Duration::ZERO,
        )
        .await?;
    reply::entries(&value)?
        .first()
        .map(Version::from_entry)
        .transpose()
}

/// Versions published after `after`, waiting up to `block` for the first. An entry
/// that does not parse is returned as its error, in place, so a follower skips it
/// and goes on.
pub async fn read_after(
    link: &Link,
    after: StreamId,
    block: Duration,
) -> Result<Vec<(StreamId, Result<Version, ClusterError>)>, ClusterError> {
    let value = link
        .query(
            redis::cmd("XREAD")
                .arg("COUNT")
                .arg(64)
                .arg("BLOCK")
                .arg(block.as_millis() as u64)
                .arg("STREAMS")
                .arg(link.keys().versions())
                .arg(after.to_string()),
            block,
        )
        .await?;
    Ok(reply::read_entries(&value)?
        .iter()
        .map(|e| (e.id, Version::from_entry(e)))
        .collect())
}

/// The weights of `version`, checked against its length and checksum.
pub async fn weights(link: &Link, version: &Version) -> Result<Vec<u8>, ClusterError> {
    let value = link
        .query(
            redis::cmd("GET").arg(link.keys().weights(version.version)),
            Duration::ZERO,
        )
        .await?;
    let corrupt = |reason: String| ClusterError::Corrupt {
        version: version.version,
        reason,
    };
    let bytes = match value {
        Value::Nil => return Err(corrupt("its weights are gone from Redis".into())),
        Value::BulkString(bytes) => bytes,
        other => {
            return Err(ClusterError::garbage(
                "the bytes of a version's weights",
                reply::short(&other),
            ));
        }
    };
    if bytes.len() as u64 != version.bytes {
        return Err(corrupt(format!(
            "{} bytes, the entry says {}",
            bytes.len(),
            version.bytes
        )));
    }
    let sum = checksum(&bytes);
    if sum != version.checksum {
        return Err(corrupt(format!(
            "checksum {sum:08x}, the entry says {:08x}",
            version.checksum
        )));
    }
    Ok(bytes)
}

/// KEYS: lease, weights, versions. ARGV: the lease's value, weights, then the
/// entry's field/value pairs.
const PUBLISH: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('FENCED the lease is not this one')
end
redis.call('SET', KEYS[2], ARGV[2])
return redis.call('XADD', KEYS[3], 'MAXLEN', '~', '1000', '*', unpack(ARGV, 3))
";

/// Publishes `version` with `weights` if the lease is still `lease` (whose token
/// `version.token` names); returns the entry's id. Also deletes the weights of
/// versions older than [`KEEP_WEIGHTS`].
pub async fn publish(
    link: &Link,
    lease: &crate::lease::Lease,
    version: &Version,
    weights: &[u8],
) -> Result<StreamId, ClusterError> {
    let script = Script::new(PUBLISH);
    let mut invocation = script.prepare_invoke();
    invocation
        .key(link.keys().lease())
        .key(link.keys().weights(version.version))
        .key(link.keys().versions())
        .arg(lease.value())
        .arg(weights);
    for (k, v) in version.fields() {
        invocation.arg(k).arg(v);
    }
    let value = match link.script(&invocation).await {
        Ok(value) => value,
        Err(ClusterError::Refused(e)) if e.contains("FENCED") => {
            return Err(ClusterError::Fenced {
                token: version.token,
            });
        }
        Err(e) => return Err(e),
    };
    let id = std::str::from_utf8(reply::bytes(&value, "a stream id")?)
        .map_err(|_| ClusterError::garbage("a stream id", reply::short(&value)))?
        .parse()?;
    if version.version > KEEP_WEIGHTS {
        let old = version.version - KEEP_WEIGHTS;
        let _ = link
            .query(
                redis::cmd("DEL").arg(link.keys().weights(old)),
                Duration::ZERO,
            )
            .await;
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Version {
        Version {
            id: StreamId { ms: 9, seq: 0 },
            version: 12,
            parent: 11,
            token: 3,
            checksum: 0xdead_beef,
            bytes: 4096,
            position: StreamId { ms: 7, seq: 2 },
            learned: BTreeMap::from([(1, 40), (2, 7)]),
            labels: 30,
            updates: 47,
            duplicates: 0,
            skipped: 0,
            labels_skipped: 0,
            verdict: "close".into(),
            unix_ms: 1_700_000_000_000,
        }
    }

    fn entry_of(v: &Version) -> Entry {
        Entry {
            id: v.id,
            fields: v
                .fields()
                .into_iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.into_bytes()))
                .collect(),
        }
    }

    #[test]
    fn an_entry_reads_back_as_written() {
        let v = sample();
        assert_eq!(Version::from_entry(&entry_of(&v)).unwrap(), v);
        assert_eq!(v.learned_of(1), 40);
        assert_eq!(v.learned_of(9), 0);
    }

    #[test]
    fn a_damaged_entry_names_its_field() {
        let mut entry = entry_of(&sample());
        for (k, v) in &mut entry.fields {
            if k == b"learned" {
                *v = b"{\"one\": 4}".to_vec();
            }
        }
        let err = Version::from_entry(&entry).unwrap_err();
        assert!(err.to_string().contains("replica id"), "{err}");
        let mut entry = entry_of(&sample());
        entry.fields.retain(|(k, _)| k != b"crc");
        let err = Version::from_entry(&entry).unwrap_err();
        assert!(err.to_string().contains("\"crc\""), "{err}");
    }
}
