//! The byte form of an [`Update`], shared by the WAL, the ring and the worker.
//!
//! One fixed little-endian layout, written once by the server and read by the worker
//! (possibly after a restart of either, from the WAL), so it must not depend on
//! struct layout or a serde format's defaults:
//!
//! ```text
//! kind u8 | reserved [u8; 3] | label u32 | weight f32 | n u32 | model_version u64 | features [f32; n]
//! ```
//!
//! 24 bytes + 4 per feature: a 16-feature update is 88 bytes, well inside a ring
//! slot. Integrity is not checked here: the WAL record and the ring slot each carry
//! a CRC over these bytes.

use crate::engine::{Update, UpdateKind};

/// Bytes before the features.
pub const HEADER_BYTES: usize = 24;

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
pub fn encoded_len(features: usize) -> usize {
    HEADER_BYTES + 4 * features
}

/// Appends the encoding of `update` to `out`.
pub fn encode(update: &Update, out: &mut Vec<u8>) {
    out.reserve(encoded_len(update.features.len()));
    out.push(match update.kind {
        UpdateKind::Label => 0,
        UpdateKind::Pseudo => 1,
        UpdateKind::Drift => 2,
    });
    out.extend_from_slice(&[0; 3]);
    out.extend_from_slice(&update.label.to_le_bytes());
    out.extend_from_slice(&update.weight.to_le_bytes());
    out.extend_from_slice(&(update.features.len() as u32).to_le_bytes());
    out.extend_from_slice(&update.model_version.to_le_bytes());
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
    let declared = u32_at(12) as usize;
    let body = &bytes[HEADER_BYTES..];
    if body.len() != declared.saturating_mul(4) {
        return Err(DecodeError::Length {
            declared,
            found: body.len(),
        });
    }
    let mut version = [0u8; 8];
    version.copy_from_slice(&bytes[16..24]);
    Ok(Update {
        kind,
        label: u32_at(4),
        weight: f32::from_bits(u32_at(8)),
        model_version: u64::from_le_bytes(version),
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
                       features in proptest::collection::vec(any::<f32>(), 0..64)) {
            let update = Update {
                kind: [UpdateKind::Label, UpdateKind::Pseudo, UpdateKind::Drift][kind as usize],
                features, label, weight, model_version: version,
            };
            let mut bytes = Vec::new();
            encode(&update, &mut bytes);
            prop_assert_eq!(bytes.len(), encoded_len(update.features.len()));
            let back = decode(&bytes).unwrap();
            prop_assert_eq!(back.kind, update.kind);
            prop_assert_eq!(back.label, label);
            prop_assert_eq!(back.weight.to_bits(), weight.to_bits());
            prop_assert_eq!(back.model_version, version);
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
        bytes[0] = 9;
        assert_eq!(decode(&bytes), Err(DecodeError::Kind(9)));
    }
}
