//! The byte form of an [`Update`], shared by the WAL, the ring and the worker.
//!
//! One fixed little-endian layout, written once by the server and read by the worker
//! (possibly after a restart of either, from the WAL), so it must not depend on
//! struct layout or a serde format's defaults:
//!
//! ```text
//! kind u8 | flags u8 | reserved [u8; 2] | label u32 | weight f32 | n u32 | model_version u64
//! [flags & MEMORY: origin u64 | trust f32 | priority f32]
//! features [f32; n]
//! ```
//!
//! The `MEMORY` block says how the update enters the k-NN memory (its trust, its
//! eviction priority, and the prediction it came from, 0 for none), so that a
//! restarted server rebuilds the memory from the log exactly as the live path built
//! it. Records written before the block existed have `flags` 0 and still decode.
//!
//! 40 bytes + 4 per feature: a 16-feature update is 104 bytes, well inside a ring
//! slot. Integrity is not checked here: the WAL record and the ring slot each carry
//! a CRC over these bytes.

use super::record::{Update, UpdateKind};

/// Bytes of the fixed header.
pub const HEADER_BYTES: usize = 24;
/// Bytes of the memory block.
pub const MEMORY_BYTES: usize = 16;
/// `flags` bit: the memory block follows the header.
const MEMORY: u8 = 1;

/// Why a payload is not an update.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("an update payload is {len} bytes, shorter than its {HEADER_BYTES}-byte header")]
    Short { len: usize },
    #[error("an update payload declares {declared} features but holds {found} bytes of them")]
    Length { declared: usize, found: usize },
    #[error("unknown update kind {0}")]
    Kind(u8),
}

/// The encoded size of an update with `features` features.
#[inline]
pub fn encoded_len(features: usize) -> usize {
    HEADER_BYTES + MEMORY_BYTES + 4 * features
}

/// Appends the encoding of `update` to `out`.
#[inline]
pub fn encode(update: &Update, out: &mut Vec<u8>) {
    out.reserve(encoded_len(update.features.len()));
    out.push(match update.kind {
        UpdateKind::Label => 0,
        UpdateKind::Pseudo => 1,
        UpdateKind::Drift => 2,
    });
    out.extend_from_slice(&[MEMORY, 0, 0]);
    out.extend_from_slice(&update.label.to_le_bytes());
    out.extend_from_slice(&update.weight.to_le_bytes());
    out.extend_from_slice(&(update.features.len() as u32).to_le_bytes());
    out.extend_from_slice(&update.model_version.to_le_bytes());
    out.extend_from_slice(&update.origin.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&update.trust.to_le_bytes());
    out.extend_from_slice(&update.priority.to_le_bytes());
    for v in &update.features {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// Parses an encoded update.
pub fn decode(bytes: &[u8]) -> Result<Update, DecodeError> {
    if bytes.len() < HEADER_BYTES {
        return Err(DecodeError::Short { len: bytes.len() });
    }
    let u32_at =
        |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    let kind = match bytes[0] {
        0 => UpdateKind::Label,
        1 => UpdateKind::Pseudo,
        2 => UpdateKind::Drift,
        other => return Err(DecodeError::Kind(other)),
    };
    let u64_at = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[i..i + 8]);
        u64::from_le_bytes(b)
    };
    let declared = u32_at(12) as usize;
    let weight = f32::from_bits(u32_at(8));
    let (origin, trust, priority, body) = if bytes[1] & MEMORY != 0 {
        if bytes.len() < HEADER_BYTES + MEMORY_BYTES {
            return Err(DecodeError::Short { len: bytes.len() });
        }
        let at = HEADER_BYTES;
        let origin = u64_at(at);
        (
            (origin != 0).then_some(origin),
            f32::from_bits(u32_at(at + 8)),
            f32::from_bits(u32_at(at + 12)),
            &bytes[HEADER_BYTES + MEMORY_BYTES..],
        )
    } else {
        // A record from before the memory block: a label's trust and priority
        // were 1, a pseudo-label's trust its weight's share.
        (
            None,
            weight.min(1.0),
            weight.min(1.0),
            &bytes[HEADER_BYTES..],
        )
    };
    if body.len() != declared.saturating_mul(4) {
        return Err(DecodeError::Length {
            declared,
            found: body.len(),
        });
    }
    Ok(Update {
        kind,
        label: u32_at(4),
        weight,
        model_version: u64_at(16),
        origin,
        trust,
        priority,
        key: None,
        features: body
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trips(kind in 0..3u8, label: u32, weight: f32, version: u64,
                       origin in proptest::option::of(1..u64::MAX), trust: f32, priority: f32,
                       features in proptest::collection::vec(any::<f32>(), 0..64)) {
            let update = Update {
                kind: [UpdateKind::Label, UpdateKind::Pseudo, UpdateKind::Drift][kind as usize],
                features, label, weight, model_version: version, origin, trust, priority,
                key: None,
            };
            let mut bytes = Vec::new();
            encode(&update, &mut bytes);
            prop_assert_eq!(bytes.len(), encoded_len(update.features.len()));
            let back = decode(&bytes).unwrap();
            prop_assert_eq!(back.kind, update.kind);
            prop_assert_eq!(back.label, label);
            prop_assert_eq!(back.weight.to_bits(), weight.to_bits());
            prop_assert_eq!(back.model_version, version);
            prop_assert_eq!(back.origin, origin);
            prop_assert_eq!(back.trust.to_bits(), trust.to_bits());
            prop_assert_eq!(back.priority.to_bits(), priority.to_bits());
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            prop_assert_eq!(bits(&back.features), bits(&update.features));
        }
    }

    #[test]
    fn malformed_payloads_are_refused() {
        assert_eq!(decode(&[0; 5]), Err(DecodeError::Short { len: 5 }));
        let mut bytes = Vec::new();
        encode(
            &Update {
                kind: UpdateKind::Label,
                features: vec![1.0, 2.0],
                label: 1,
                weight: 1.0,
                model_version: 3,
                origin: Some(9),
                trust: 1.0,
                priority: 1.0,
                key: None,
            },
            &mut bytes,
        );
        assert_eq!(
            decode(&bytes[..bytes.len() - 1]),
            Err(DecodeError::Length {
                declared: 2,
                found: 7
            })
        );
        // The memory block announced but cut off.
        let mut short = bytes[..HEADER_BYTES + 4].to_vec();
        short[12..16].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(
            decode(&short),
            Err(DecodeError::Short {
                len: HEADER_BYTES + 4
            })
        );
        bytes[0] = 9;
        assert_eq!(decode(&bytes), Err(DecodeError::Kind(9)));
    }

    #[test]
    fn a_record_from_before_the_memory_block_still_decodes() {
        // kind Pseudo, flags 0, label 2, weight 0.4, one feature, version 7.
        let mut bytes = vec![1, 0, 0, 0];
        bytes.extend_from_slice(&2u32.to_le_bytes());
        bytes.extend_from_slice(&0.4f32.to_le_bytes());
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.extend_from_slice(&7u64.to_le_bytes());
        bytes.extend_from_slice(&1.5f32.to_le_bytes());
        let u = decode(&bytes).unwrap();
        assert_eq!(
            (u.kind, u.label, u.model_version),
            (UpdateKind::Pseudo, 2, 7)
        );
        assert_eq!((u.origin, u.trust, u.priority), (None, 0.4, 0.4));
        assert_eq!(u.features, vec![1.5]);
    }
}
