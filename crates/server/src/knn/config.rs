//! The memory's settings, which are also the `[memory]` section of the server's
//! config file: one type, so a setting has one default and one check. Every bound
//! has a reason, written on its field; the numbers behind the HNSW defaults are
//! measured by `benches/knn.rs` (dim 32, k 10).

use serde::{Deserialize, Serialize};

use super::KnnError;
use crate::model::{KeySpace, Mlp};

/// Settings of a [`Memory`](super::Memory), validated by
/// [`Memory::new`](super::Memory::new) and, as `[memory]`, at startup.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryConfig {
    /// Length of every embedding: the model's last hidden layer, so not a setting:
    /// the server fills it from the model it loads. Checked on every submit and
    /// search, so hnsw_rs never sees a vector of another length.
    #[serde(skip)]
    pub dim: usize,
    /// Bound of the experience buffer. It bounds RAM (the matrix, and a copy per row in
    /// the graph) and the exact scan's cost; on drifting streams a few thousand recent
    /// experiences vote better than a large memory anyway.
    pub capacity: usize,
    /// Experiences older than this many insertions are left out of search results and
    /// evicted, because stale neighbours vote for a concept that may have drifted away.
    /// 0 = no limit. A recent window beats a large memory on drifting streams
    /// (QUALITY.md): the default keeps the last 1000.
    pub max_age: u64,
    /// Live size at and above which HNSW serves; below it the exact scan does, because
    /// it is faster there (measured crossover, see the default) and exact. In a
    /// config file 0 still means the default, as it always has.
    #[serde(deserialize_with = "crossover_or_default")]
    pub hnsw_crossover: usize,
    /// hnsw_rs `max_nb_connection`: graph degree per layer. 16 reaches recall@10 ≥ 0.95
    /// at dim 32; higher costs memory and insert time. hnsw_rs exits the process above
    /// 256, so it is capped at 255.
    pub hnsw_m: usize,
    /// Candidate list width while inserting: the graph's quality against insert cost.
    /// 100 builds at 2-5k inserts/s at dim 32; 200 (with M 24) raised recall at low
    /// `ef_search` but tripled the build time and searched no faster.
    pub hnsw_ef_construction: usize,
    /// Candidate list width while searching: recall against search latency. 48 keeps
    /// recall@10 ≥ 0.95 up to 50k clustered points at dim 32 (32 gives 0.966 at 50k;
    /// 64 costs a third more). A search uses at least the over-fetched `k`.
    pub hnsw_ef_search: usize,
    /// Fraction of the graph's points that may be tombstones before a background
    /// rebuild. Tombstones cost over-fetch and recall; a rebuild costs a full build on
    /// the background thread. 0.2 keeps the over-fetch small between rebuilds.
    pub rebuild_tombstone_ratio: f32,
    /// Bound of the submit queue between the request path and the indexer. A full
    /// queue drops the experience (counted) instead of blocking a request; the bound
    /// caps the memory the queue can hold when the indexer falls behind.
    pub insert_queue: usize,
    /// What the memory compares: the model's `embedding`, the standardised `input`
    /// (see [`KeySpace`]), or `auto` (default): `input` when `--model` is fresh from
    /// `init-model`, whose hidden layer means nothing yet and moves with every
    /// update, and `embedding` for a pretrained model.
    pub key: KeyChoice,
    /// A snapshot of the memory is written this often (and at shutdown): a restart
    /// rebuilds the memory from the newest snapshot plus the WAL after it, so this
    /// bounds the replay, and the WAL is kept back to the snapshot's position.
    pub snapshot_interval_secs: u64,
}

/// `hnsw_crossover = 0` in a config file: the measured default, as configs written
/// before the default was spelled out meant it.
fn crossover_or_default<'de, D: serde::Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let value = usize::deserialize(d)?;
    Ok(if value == 0 {
        MemoryConfig::default().hnsw_crossover
    } else {
        value
    })
}

/// See [`MemoryConfig::key`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyChoice {
    Auto,
    Embedding,
    Input,
}

impl KeyChoice {
    /// The key space for a server started with `--model` = `given`.
    pub fn resolve(self, given: &Mlp) -> KeySpace {
        match self {
            Self::Auto if given.is_fresh() => KeySpace::Input,
            Self::Auto | Self::Embedding => KeySpace::Embedding,
            Self::Input => KeySpace::Input,
        }
    }
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            dim: 32,
            capacity: 50_000,
            max_age: 1_000,
            // Measured by benches/knn.rs (dim 32, k 10, clustered data, 2 shared
            // cores), medians: the scan costs about 5 µs per 1000 rows (53 µs at 10k,
            // 240 µs at 50k, 494 µs at 100k). hnsw_rs spends about 300 ns of
            // bookkeeping per visited node whatever the dimension, so at ef_search 48
            // a graph search costs 153 µs at 10k, 267 µs at 50k, 362 µs at 100k. They
            // cross near 60k. The default capacity is therefore served by the scan,
            // which also saves the graph's background inserts and rebuilds. Above
            // ~80k, recall@10 at ef 48 falls below 0.95 (0.91 at 100k): raise
            // `hnsw_ef_search` with the capacity.
            hnsw_crossover: 60_000,
            hnsw_m: 16,
            hnsw_ef_construction: 100,
            hnsw_ef_search: 48,
            rebuild_tombstone_ratio: 0.2,
            // About a second of pseudo-labels at full load.
            insert_queue: 8_192,
            key: KeyChoice::Auto,
            snapshot_interval_secs: 30,
        }
    }
}

/// Most matrix cells the store will reserve (2^31 floats, 8 GiB): a typo in
/// `capacity` or `dim` should be an error, not an abort on allocation.
const MAX_CELLS: usize = 1 << 31;

impl MemoryConfig {
    /// Checks every field; the first problem is returned with its field name.
    pub fn validate(&self) -> Result<(), KnnError> {
        let bad =
            |field: &'static str, reason: String| Err(KnnError::InvalidConfig { field, reason });
        if self.dim == 0 {
            return bad("memory.dim", "must be at least 1".into());
        }
        if self.capacity == 0 {
            return bad("memory.capacity", "must be at least 1".into());
        }
        // Slots are u32 in the store's indexes.
        if u32::try_from(self.capacity).is_err() {
            return bad(
                "memory.capacity",
                format!("{} exceeds {}", self.capacity, u32::MAX),
            );
        }
        match self.capacity.checked_mul(self.dim) {
            Some(cells) if cells <= MAX_CELLS => {}
            _ => {
                return bad(
                    "memory.capacity",
                    format!("capacity × dim exceeds {MAX_CELLS} floats"),
                );
            }
        }
        if self.hnsw_crossover == 0 {
            return bad(
                "memory.hnsw_crossover",
                "must be at least 1 (usize::MAX disables HNSW)".into(),
            );
        }
        if !(2..=255).contains(&self.hnsw_m) {
            return bad(
                "memory.hnsw_m",
                format!("{} is outside 2..=255", self.hnsw_m),
            );
        }
        if self.hnsw_ef_construction == 0 || self.hnsw_ef_search == 0 {
            let field = if self.hnsw_ef_search == 0 {
                "memory.hnsw_ef_search"
            } else {
                "memory.hnsw_ef_construction"
            };
            return bad(field, "must be at least 1".into());
        }
        let ratio = self.rebuild_tombstone_ratio;
        if !(ratio > 0.0 && ratio < 1.0) {
            return bad(
                "memory.rebuild_tombstone_ratio",
                format!("{ratio} is outside (0, 1)"),
            );
        }
        if self.insert_queue == 0 {
            return bad("memory.insert_queue", "must be at least 1".into());
        }
        if self.snapshot_interval_secs == 0 {
            return bad("memory.snapshot_interval_secs", "must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        assert!(MemoryConfig::default().validate().is_ok());
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases: Vec<(&str, MemoryConfig)> = vec![
            (
                "memory.dim",
                MemoryConfig {
                    dim: 0,
                    ..Default::default()
                },
            ),
            (
                "memory.capacity",
                MemoryConfig {
                    capacity: 0,
                    ..Default::default()
                },
            ),
            (
                "memory.capacity",
                MemoryConfig {
                    capacity: usize::MAX / 2,
                    ..Default::default()
                },
            ),
            (
                "memory.hnsw_crossover",
                MemoryConfig {
                    hnsw_crossover: 0,
                    ..Default::default()
                },
            ),
            (
                "memory.hnsw_m",
                MemoryConfig {
                    hnsw_m: 300,
                    ..Default::default()
                },
            ),
            (
                "memory.hnsw_ef_search",
                MemoryConfig {
                    hnsw_ef_search: 0,
                    ..Default::default()
                },
            ),
            (
                "memory.rebuild_tombstone_ratio",
                MemoryConfig {
                    rebuild_tombstone_ratio: f32::NAN,
                    ..Default::default()
                },
            ),
            (
                "memory.insert_queue",
                MemoryConfig {
                    insert_queue: 0,
                    ..Default::default()
                },
            ),
        ];
        for (expected, cfg) in cases {
            match cfg.validate() {
                Err(KnnError::InvalidConfig { field, .. }) => assert_eq!(field, expected),
                other => panic!("{expected}: expected InvalidConfig, got {other:?}"),
            }
        }
    }
}
