//! The memory's snapshot file (`state_dir/memory.bin`): written periodically
//! (`memory.snapshot_interval_secs`), at graceful shutdown and at
//! `/v1/admin/checkpoint`; read at startup, then the WAL after its `logged_seq` is
//! replayed on top, so a restarted server votes with the experiences it had.
//!
//! ```text
//! magic "ADSMEM02" | input_dim u32 | embed_dim u32 | count u64 | model_version u64 | logged_seq u64
//! count × ( label u32 | trust f32 | priority f32 | origin u64 | embedding [f32; embed_dim] | features [f32; input_dim] )
//! crc32 u32 of everything before it
//! ```
//!
//! `origin` is a pseudo-label's `request_id` (0 for none), by which a label sent
//! after the restart still supersedes it. Version 1 files (no `logged_seq`, no
//! `origin`) still load, as a position of 0.
//!
//! Little-endian, written to a temp file and renamed into place, so a crash leaves the
//! old snapshot or the new one. A file that fails any check is refused whole, with the
//! reason: a memory silently half-restored would vote with a biased sample. The
//! embeddings belong to `model_version`; a server starting on another version
//! re-embeds the features instead of trusting them.

use std::path::Path;

use super::Experience;

const MAGIC: &[u8; 8] = b"ADSMEM02";
const MAGIC_V1: &[u8; 8] = b"ADSMEM01";
const HEADER: usize = 8 + 4 + 4 + 8 + 8 + 8;
const HEADER_V1: usize = 8 + 4 + 4 + 8 + 8;

/// A snapshot read back.
#[derive(Debug)]
pub struct Snapshot {
    /// The model version the embeddings were computed with.
    pub model_version: u64,
    /// The WAL position the experiences reflect: replay starts after it.
    pub logged_seq: u64,
    /// Oldest first.
    pub experiences: Vec<Experience>,
}

/// Why a snapshot cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot access memory snapshot {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("memory snapshot {path} is corrupt: {reason}")]
    Corrupt {
        path: std::path::PathBuf,
        reason: String,
    },
}

/// The shape of the memory a snapshot belongs to.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub model_version: u64,
    pub input_dim: usize,
    pub embed_dim: usize,
}

/// Writes `experiences` (reflecting the log through `logged_seq`) atomically.
pub fn write(
    path: &Path,
    experiences: &[Experience],
    logged_seq: u64,
    shape: Shape,
) -> Result<(), SnapshotError> {
    let Shape {
        model_version,
        input_dim,
        embed_dim,
    } = shape;
    let record = 20 + 4 * (embed_dim + input_dim);
    let mut bytes = Vec::with_capacity(HEADER + record * experiences.len() + 4);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&(input_dim as u32).to_le_bytes());
    bytes.extend_from_slice(&(embed_dim as u32).to_le_bytes());
    bytes.extend_from_slice(&(experiences.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&model_version.to_le_bytes());
    bytes.extend_from_slice(&logged_seq.to_le_bytes());
    for e in experiences {
        bytes.extend_from_slice(&e.label.to_le_bytes());
        bytes.extend_from_slice(&e.trust.to_le_bytes());
        bytes.extend_from_slice(&e.priority.to_le_bytes());
        bytes.extend_from_slice(&e.origin.unwrap_or(0).to_le_bytes());
        for v in e.embedding.iter().chain(&e.features) {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
    }
    let crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    crate::model::store::write_atomic(path, &bytes).map_err(|e| SnapshotError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })
}

/// Where a state dir keeps the memory's snapshot.
pub fn file_in(state_dir: &Path) -> std::path::PathBuf {
    state_dir.join("memory.bin")
}

/// Writes `memory`'s snapshot; returns the log position it reflects.
pub fn save(memory: &super::Memory, shape: Shape, path: &Path) -> Result<u64, SnapshotError> {
    let (experiences, seq) = memory.snapshot();
    write(path, &experiences, seq, shape)?;
    Ok(seq)
}

/// Reads a snapshot, checking it against the serving model's dimensions.
/// `Ok(None)` when there is no snapshot.
pub fn read(
    path: &Path,
    input_dim: usize,
    embed_dim: usize,
) -> Result<Option<Snapshot>, SnapshotError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(SnapshotError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let corrupt = |reason: String| SnapshotError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let v1 = bytes.len() >= 8 && &bytes[..8] == MAGIC_V1;
    let header = if v1 { HEADER_V1 } else { HEADER };
    if bytes.len() < header + 4 || (!v1 && &bytes[..8] != MAGIC) {
        return Err(corrupt(
            "not a memory snapshot (bad magic or too short)".into(),
        ));
    }
    let (body, tail) = bytes.split_at(bytes.len() - 4);
    let stored = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
    if crc32fast::hash(body) != stored {
        return Err(corrupt("checksum mismatch".into()));
    }
    let u32_at = |i: usize| u32::from_le_bytes([body[i], body[i + 1], body[i + 2], body[i + 3]]);
    let u64_at = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&body[i..i + 8]);
        u64::from_le_bytes(b)
    };
    let (d_in, d_emb) = (u32_at(8) as usize, u32_at(12) as usize);
    if (d_in, d_emb) != (input_dim, embed_dim) {
        return Err(corrupt(format!(
            "it holds {d_in}-feature inputs with {d_emb}-wide embeddings, the model has {input_dim} and {embed_dim}"
        )));
    }
    let count = u64_at(16);
    let model_version = u64_at(24);
    let logged_seq = if v1 { 0 } else { u64_at(32) };
    let fixed = if v1 { 12 } else { 20 };
    let record = fixed + 4 * (d_emb + d_in);
    let expected = usize::try_from(count)
        .ok()
        .and_then(|c| c.checked_mul(record))
        .and_then(|n| n.checked_add(header));
    if expected != Some(body.len()) {
        return Err(corrupt(format!(
            "{count} records do not fit its {} bytes",
            body.len()
        )));
    }
    let floats = |at: usize, n: usize| -> Vec<f32> {
        body[at..at + 4 * n]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    let mut experiences = Vec::with_capacity(count as usize);
    for i in 0..count as usize {
        let at = header + i * record;
        let origin = if v1 { 0 } else { u64_at(at + 12) };
        let e = Experience {
            label: u32_at(at),
            trust: f32::from_bits(u32_at(at + 4)),
            priority: f32::from_bits(u32_at(at + 8)),
            embedding: floats(at + fixed, d_emb),
            features: floats(at + fixed + 4 * d_emb, d_in),
            origin: (origin != 0).then_some(origin),
        };
        if e.embedding
            .iter()
            .chain(&e.features)
            .any(|v| !v.is_finite())
        {
            return Err(corrupt(format!("record {i} holds a non-finite value")));
        }
        experiences.push(e);
    }
    Ok(Some(Snapshot {
        model_version,
        logged_seq,
        experiences,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exp(i: u32) -> Experience {
        Experience {
            embedding: vec![i as f32, 1.0],
            features: vec![0.5, -(i as f32), 2.0],
            label: i % 3,
            trust: 0.5,
            priority: 1.0,
            origin: (i % 2 == 1).then_some(100 + i as u64),
        }
    }

    const SHAPE: Shape = Shape {
        model_version: 9,
        input_dim: 3,
        embed_dim: 2,
    };

    #[test]
    fn round_trips_and_refuses_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory.bin");
        assert!(read(&path, 3, 2).unwrap().is_none());
        let all: Vec<_> = (0..5).map(exp).collect();
        write(&path, &all, 77, SHAPE).unwrap();
        let back = read(&path, 3, 2).unwrap().unwrap();
        assert_eq!((back.model_version, back.logged_seq), (9, 77));
        assert_eq!(back.experiences, all);

        assert!(matches!(
            read(&path, 4, 2),
            Err(SnapshotError::Corrupt { .. })
        ));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[40] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let err = read(&path, 3, 2).unwrap_err().to_string();
        assert!(err.contains("checksum"), "{err}");
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        assert!(matches!(
            read(&path, 3, 2),
            Err(SnapshotError::Corrupt { .. })
        ));
    }

    #[test]
    fn a_version_1_snapshot_still_loads_at_position_0() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory.bin");
        let mut bytes = MAGIC_V1.to_vec();
        for v in [3u32, 2] {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        bytes.extend_from_slice(&1u64.to_le_bytes());
        bytes.extend_from_slice(&4u64.to_le_bytes());
        bytes.extend_from_slice(&2u32.to_le_bytes());
        for v in [1.0f32, 0.5, 0.0, 1.0, 1.0, 2.0, 3.0] {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        let back = read(&path, 3, 2).unwrap().unwrap();
        assert_eq!((back.model_version, back.logged_seq), (4, 0));
        let e = &back.experiences[0];
        assert_eq!(
            (e.label, e.trust, e.priority, e.origin),
            (2, 1.0, 0.5, None)
        );
        assert_eq!(
            (e.embedding.clone(), e.features.clone()),
            (vec![0.0, 1.0], vec![1.0, 2.0, 3.0])
        );
    }
}
