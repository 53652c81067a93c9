//! The pending log's records: what a restarted server needs to join a label to a
//! prediction answered before the restart.
//!
//! The WAL writer keeps these in `state_dir/pending/` (a log of the WAL's own
//! segment format, see `crate::update::pipeline`): one record per prediction,
//! logged when it is answered, and one per label that joined a prediction, so a
//! restart neither forgets a prediction nor joins one twice. Little-endian:
//!
//! ```text
//! prediction: 1 u8 | flags u8 | 0 u16 | predicted u32 | id u64 | unix_ms u64 | model_version u64
//!             d u32 | k u32 | features [f32; d] | p_model [f32; k] | p_knn? | p_lin? | p_forest?
//! answered:   2 u8 | 0 u8 | 0 u16 | 0 u32 | id u64 | unix_ms u64
//! ```
//!
//! `flags`: bit 0 the answer became a pseudo-label; bit `i` ≥ 1 says voter `i` of
//! the ensemble's registry voted: bits 1–3 the neighbours, the linear voter and the
//! forest, whose distributions follow, in that order. The model's distribution is
//! always there (it votes on every row). A voter added to the registry takes the next
//! bit, so records written before it read the same. The embedding is not kept: a
//! restart recomputes it with the serving model.

use super::PendingPrediction;
use crate::engine::{VOTERS, Votes};

const PREDICTION: u8 = 1;
const ANSWERED: u8 = 2;
const PSEUDO: u8 = 1;
const HEAD: usize = 24;

// Bit 0 is the pseudo-label's, so `flags` has room for the model and seven more.
const _: () = assert!(VOTERS >= 1 && VOTERS <= 8);

/// The flag saying voter `voter` (≥ 1) voted.
fn voted(voter: usize) -> u8 {
    1 << voter
}

/// Every voter's flag but the model's.
const VOTED: u8 = ((1u16 << VOTERS) - 2) as u8;

/// One decoded record.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// A prediction answered at `unix_ms` (its embedding left empty).
    Prediction {
        id: u64,
        unix_ms: u64,
        prediction: PendingPrediction,
    },
    /// A label joined prediction `id`.
    Answered { id: u64 },
}

/// Why a record cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("a pending record of {0} bytes is too short")]
    Short(usize),
    #[error("unknown pending record tag {0}")]
    Tag(u8),
    #[error("a pending record's {declared} bytes of vectors do not match its {found}")]
    Length { declared: usize, found: usize },
}

/// Milliseconds since the Unix epoch: the records' clock, which outlives a restart
/// (an `Instant` does not).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The record of prediction `id`.
pub fn encode_prediction(id: u64, unix_ms: u64, p: &PendingPrediction) -> Vec<u8> {
    let p_model = p.votes.get(0).unwrap_or_default();
    let k = p_model.len();
    let mut flags = if p.pseudo { PSEUDO } else { 0 };
    for (voter, dist) in p.votes.iter().enumerate().skip(1) {
        if dist.is_some() {
            flags |= voted(voter);
        }
    }
    let floats = p.features.len() + k * (1 + flags.count_ones() as usize);
    let mut out = Vec::with_capacity(HEAD + 16 + 4 * floats);
    head(&mut out, PREDICTION, flags, p.predicted, id, unix_ms);
    out.extend_from_slice(&p.model_version.to_le_bytes());
    out.extend_from_slice(&(p.features.len() as u32).to_le_bytes());
    out.extend_from_slice(&(k as u32).to_le_bytes());
    let dists = p.votes.iter().skip(1).flatten();
    for v in p.features.iter().chain(p_model).chain(dists.flatten()) {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// The record saying a label joined prediction `id`.
pub fn encode_answered(id: u64, unix_ms: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEAD);
    head(&mut out, ANSWERED, 0, 0, id, unix_ms);
    out
}

fn head(out: &mut Vec<u8>, tag: u8, flags: u8, predicted: u32, id: u64, unix_ms: u64) {
    out.extend_from_slice(&[tag, flags, 0, 0]);
    out.extend_from_slice(&predicted.to_le_bytes());
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&unix_ms.to_le_bytes());
}

/// Parses one record.
pub fn decode(bytes: &[u8]) -> Result<Record, RecordError> {
    if bytes.len() < HEAD {
        return Err(RecordError::Short(bytes.len()));
    }
    let u32_at =
        |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    let u64_at = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[i..i + 8]);
        u64::from_le_bytes(b)
    };
    let (tag, flags, id, unix_ms) = (bytes[0], bytes[1], u64_at(8), u64_at(16));
    match tag {
        ANSWERED => return Ok(Record::Answered { id }),
        PREDICTION => {}
        other => return Err(RecordError::Tag(other)),
    }
    if bytes.len() < HEAD + 16 {
        return Err(RecordError::Short(bytes.len()));
    }
    let (d, k) = (u32_at(HEAD + 8) as usize, u32_at(HEAD + 12) as usize);
    let dists = 1 + (flags & VOTED).count_ones() as usize;
    let declared = d
        .checked_add(k.saturating_mul(dists))
        .map_or(usize::MAX, |n| n.saturating_mul(4));
    let body = &bytes[HEAD + 16..];
    if body.len() != declared {
        return Err(RecordError::Length {
            declared,
            found: body.len(),
        });
    }
    let mut floats = body
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]));
    let mut take = |n: usize| floats.by_ref().take(n).collect::<Vec<f32>>();
    let features = take(d);
    let mut votes: [Option<Vec<f32>>; VOTERS] = Default::default();
    for (voter, slot) in votes.iter_mut().enumerate() {
        if voter == 0 || flags & voted(voter) != 0 {
            *slot = Some(take(k));
        }
    }
    Ok(Record::Prediction {
        id,
        unix_ms,
        prediction: PendingPrediction {
            features,
            embedding: Vec::new(),
            votes: Votes::from(votes),
            predicted: u32_at(4),
            pseudo: flags & PSEUDO != 0,
            model_version: u64_at(HEAD),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn dist() -> impl Strategy<Value = Vec<f32>> {
        proptest::collection::vec(0.0f32..1.0, 3)
    }

    proptest! {
        #[test]
        fn predictions_round_trip(id: u64, unix_ms: u64, version: u64, predicted in 0u32..3,
                                  pseudo: bool,
                                  features in proptest::collection::vec(-1e6f32..1e6, 0..20),
                                  p_model in dist(),
                                  others in proptest::collection::vec(
                                      proptest::option::of(dist()), VOTERS - 1)) {
            let mut votes: [Option<Vec<f32>>; VOTERS] = Default::default();
            votes[0] = Some(p_model);
            for (slot, vote) in votes[1..].iter_mut().zip(others) {
                *slot = vote;
            }
            let p = PendingPrediction {
                features, embedding: Vec::new(), votes: Votes::from(votes),
                predicted, pseudo, model_version: version,
            };
            let bytes = encode_prediction(id, unix_ms, &p);
            prop_assert_eq!(decode(&bytes), Ok(Record::Prediction { id, unix_ms, prediction: p }));
            // Any cut is refused, never misread.
            for cut in [0, 1, HEAD - 1, HEAD + 3, bytes.len() - 1] {
                if cut < bytes.len() {
                    prop_assert!(decode(&bytes[..cut]).is_err());
                }
            }
        }
    }

    #[test]
    fn a_prediction_record_keeps_its_layout() {
        // Records outlive the binary that wrote them: a restart after an upgrade must
        // read them as written. Pseudo, the neighbours absent, the linear voter and
        // the forest present: flags 1 | 4 | 8.
        let mut votes: [Option<Vec<f32>>; VOTERS] = Default::default();
        votes[0] = Some(vec![0.25, 0.75]);
        votes[2] = Some(vec![0.5, 0.5]);
        votes[3] = Some(vec![1.0, 0.0]);
        let p = PendingPrediction {
            features: vec![1.5],
            embedding: vec![9.0],
            votes: Votes::from(votes),
            predicted: 1,
            pseudo: true,
            model_version: 7,
        };
        let mut want = vec![PREDICTION, 0b1101, 0, 0];
        want.extend_from_slice(&1u32.to_le_bytes());
        for v in [3u64, 11, 7] {
            want.extend_from_slice(&v.to_le_bytes());
        }
        want.extend_from_slice(&1u32.to_le_bytes());
        want.extend_from_slice(&2u32.to_le_bytes());
        for v in [1.5f32, 0.25, 0.75, 0.5, 0.5, 1.0, 0.0] {
            want.extend_from_slice(&v.to_le_bytes());
        }
        assert_eq!(encode_prediction(3, 11, &p), want);
    }

    #[test]
    fn answered_round_trips_and_unknown_tags_are_refused() {
        assert_eq!(
            decode(&encode_answered(42, 7)),
            Ok(Record::Answered { id: 42 })
        );
        let mut bytes = encode_answered(42, 7);
        bytes[0] = 9;
        assert_eq!(decode(&bytes), Err(RecordError::Tag(9)));
    }
}
