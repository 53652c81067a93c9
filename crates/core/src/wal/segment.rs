//! One segment file: its name, its header, its records, and the scan that finds
//! where the good records end.
//!
//! ```text
//! segment = "ADSWAL01" | first_seq u64 LE | record*
//! record  = len u32 LE | crc32 u32 LE | seq u64 LE | payload[len]
//! ```
//!
//! The CRC (crc32fast, IEEE) covers the seq bytes and the payload, so a record torn
//! by a crash (a short tail) or damaged on disk (a flipped bit) is told apart from a
//! good one, and a record is only good if its seq is its predecessor's plus one.

use std::path::{Path, PathBuf};

/// The segment magic and format version.
pub const MAGIC: &[u8; 8] = b"ADSWAL01";
/// Bytes of the segment header.
pub const HEADER_LEN: usize = 16;
/// Bytes of a record before its payload.
pub const RECORD_HEADER: usize = 16;
/// The largest payload a record may carry. Updates are ~100 bytes; anything near this
/// is a bug, and the bound keeps a corrupt length from looking plausible.
pub const MAX_PAYLOAD: usize = 1 << 20;

/// `{first_seq:020}.wal`: zero-padded so the names sort in sequence order.
pub fn file_name(first_seq: u64) -> String {
    format!("{first_seq:020}.wal")
}

/// The first sequence number a segment file name encodes.
pub fn parse_name(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    let digits = name.strip_suffix(".wal")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// Segment files in `dir`, sorted by first sequence number. Other files are ignored.
pub fn list(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut segments: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter_map(|p| parse_name(&p).map(|seq| (seq, p)))
        .collect();
    segments.sort_unstable_by_key(|(seq, _)| *seq);
    Ok(segments)
}

/// The segment header for `first_seq`.
pub fn header(first_seq: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(MAGIC);
    h[8..].copy_from_slice(&first_seq.to_le_bytes());
    h
}

/// Appends one encoded record to `out`.
pub fn encode_record(seq: u64, payload: &[u8], out: &mut Vec<u8>) {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&seq.to_le_bytes());
    hasher.update(payload);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&hasher.finalize().to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(payload);
}

/// Why the good records of a segment end before its last byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Damage {
    /// The header is missing or not ours.
    BadHeader,
    /// The file ends inside a record: the tail of a write a crash interrupted.
    Torn,
    /// A complete record fails its checksum, declares an impossible length, or
    /// breaks the sequence.
    Corrupt(String),
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::BadHeader => f.write_str("missing or foreign segment header"),
            Self::Torn => f.write_str("torn record at the end (an interrupted write)"),
            Self::Corrupt(reason) => write!(f, "corrupt record: {reason}"),
        }
    }
}

/// What a scan of a segment's bytes found.
#[derive(Debug)]
pub struct Scan {
    /// The sequence number the header declares (0 with a bad header).
    pub first_seq: u64,
    /// Good records.
    pub records: u64,
    /// Byte length of the header plus the good records.
    pub good_len: u64,
    /// Why the good records end before the file does, if they do.
    pub damage: Option<Damage>,
}

impl Scan {
    /// The last good sequence number (`first_seq - 1` when there is none).
    pub fn last_seq(&self) -> u64 {
        (self.first_seq + self.records).saturating_sub(1)
    }
}

/// Walks a segment's bytes, calling `each(seq, payload)` for every good record in
/// order, and reports where and why the good records end.
pub fn scan(bytes: &[u8], mut each: impl FnMut(u64, &[u8]) -> std::ops::ControlFlow<()>) -> Scan {
    if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
        return Scan {
            first_seq: 0,
            records: 0,
            good_len: 0,
            damage: Some(Damage::BadHeader),
        };
    }
    let first_seq = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes: this is a bug"));
    let mut scan = Scan {
        first_seq,
        records: 0,
        good_len: HEADER_LEN as u64,
        damage: None,
    };
    let mut at = HEADER_LEN;
    while at < bytes.len() {
        let rest = &bytes[at..];
        if rest.len() < RECORD_HEADER {
            scan.damage = Some(Damage::Torn);
            break;
        }
        let len =
            u32::from_le_bytes(rest[..4].try_into().expect("4 bytes: this is a bug")) as usize;
        let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes: this is a bug"));
        let seq = u64::from_le_bytes(rest[8..16].try_into().expect("8 bytes: this is a bug"));
        if len > MAX_PAYLOAD {
            scan.damage = Some(Damage::Corrupt(format!(
                "declared length {len} exceeds {MAX_PAYLOAD}"
            )));
            break;
        }
        if rest.len() < RECORD_HEADER + len {
            scan.damage = Some(Damage::Torn);
            break;
        }
        let payload = &rest[RECORD_HEADER..RECORD_HEADER + len];
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&rest[8..16]);
        hasher.update(payload);
        if hasher.finalize() != crc {
            // A checksum failure in the very last record is most likely a torn
            // write whose length field landed but whose payload did not.
            scan.damage = Some(if at + RECORD_HEADER + len == bytes.len() {
                Damage::Torn
            } else {
                Damage::Corrupt("checksum mismatch".into())
            });
            break;
        }
        let expected = first_seq + scan.records;
        if seq != expected {
            scan.damage = Some(Damage::Corrupt(format!(
                "sequence {seq} where {expected} was due"
            )));
            break;
        }
        at += RECORD_HEADER + len;
        scan.records += 1;
        scan.good_len = at as u64;
        if each(seq, payload).is_break() {
            break;
        }
    }
    scan
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ops::ControlFlow;

    fn segment(first: u64, payloads: &[&[u8]]) -> Vec<u8> {
        let mut bytes = header(first).to_vec();
        for (i, p) in payloads.iter().enumerate() {
            encode_record(first + i as u64, p, &mut bytes);
        }
        bytes
    }

    #[test]
    fn names_sort_and_parse() {
        assert_eq!(file_name(42), "00000000000000000042.wal");
        assert_eq!(
            parse_name(Path::new("/x/00000000000000000042.wal")),
            Some(42)
        );
        for bad in [
            "42.wal",
            "0000000000000000004x.wal",
            "00000000000000000042.tmp",
        ] {
            assert_eq!(parse_name(Path::new(bad)), None, "{bad}");
        }
    }

    #[test]
    fn scan_reads_good_records_and_names_the_damage() {
        let bytes = segment(7, &[b"a", b"bb", b""]);
        let mut seen = Vec::new();
        let s = scan(&bytes, |seq, p| {
            seen.push((seq, p.to_vec()));
            ControlFlow::Continue(())
        });
        assert_eq!((s.records, s.last_seq(), s.damage), (3, 9, None));
        assert_eq!(seen[1], (8, b"bb".to_vec()));
        assert_eq!(s.good_len, bytes.len() as u64);

        let torn = scan(&bytes[..bytes.len() - 3], |_, _| ControlFlow::Continue(()));
        assert_eq!((torn.records, torn.damage.clone()), (2, Some(Damage::Torn)));

        let mut flipped = bytes.clone();
        flipped[HEADER_LEN + RECORD_HEADER] ^= 1; // the first payload byte
        let s = scan(&flipped, |_, _| ControlFlow::Continue(()));
        assert_eq!(s.records, 0);
        assert!(
            matches!(s.damage, Some(Damage::Corrupt(_))),
            "{:?}",
            s.damage
        );

        let s = scan(b"garbage!", |_, _| ControlFlow::Continue(()));
        assert_eq!(s.damage, Some(Damage::BadHeader));
    }
}
