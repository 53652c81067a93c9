//! Request ids that never repeat for the life of a state dir, across graceful
//! restarts and crashes.
//!
//! A label is joined to its prediction by `request_id`, so an id handed out twice
//! would join a late label to another prediction's features and learn it as truth.
//! The allocator is a hi/lo scheme: `state_dir/request_ids` durably reserves a block
//! of ids (written to a temp file, fsynced, renamed) before any id of the block is
//! handed out, and a restart continues after the reserved ceiling, so a crash skips
//! at most the rest of one block and never reuses an id. Handing out an id is one
//! atomic add; the next block is reserved on its own thread once half of the current
//! one is used, so the request path does no disk I/O.
//!
//! An id carries the replica that issued it: `replica << COUNTER_BITS | counter`.
//! A standalone server is replica 0, so its ids are the plain counter. Ids stay below
//! 2^53 so JavaScript clients read them exactly.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Bits of the per-replica counter: 2^43 ids (over two years at 100k/s).
pub const COUNTER_BITS: u32 = 43;
/// Replica numbers fit the 10 bits above the counter (ids below 2^53).
pub const MAX_REPLICA: u64 = (1 << 10) - 1;
/// Ids reserved per write of the ceiling: one fsync per million predictions, and a
/// crash wastes at most this many ids.
pub const BLOCK: u64 = 1 << 20;

const MAGIC: &[u8; 8] = b"ADSIDS01";

/// Why the ids cannot be allocated.
#[derive(Debug, thiserror::Error)]
pub enum IdsError {
    #[error("cannot write the request id reservation {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("replica {0} is out of range (0..={MAX_REPLICA})")]
    Replica(u64),
    #[error("the request id counter is exhausted (2^{COUNTER_BITS} ids)")]
    Exhausted,
}

/// What [`RequestIds::open`] found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdsOrigin {
    /// No reservation file: a new state dir.
    Fresh,
    /// Continued after the reserved ceiling.
    Continued { ceiling: u64 },
    /// The file was unreadable; continued after `floor` (the newest id any log
    /// holds) plus a margin, and reported.
    Damaged { reason: String, floor: u64 },
}

/// The allocator. `Send + Sync`; one per engine.
#[derive(Debug)]
pub struct RequestIds {
    replica: u64,
    /// The next counter value to hand out.
    next: AtomicU64,
    /// Counter values below this are durably reserved.
    ceiling: Arc<AtomicU64>,
    /// A reservation is under way.
    reserving: Arc<AtomicBool>,
    /// Where the ceiling is kept; `None` for an engine without a state dir.
    file: Option<PathBuf>,
    /// Requests refused because the reservation had not caught up (counted).
    refused: AtomicU64,
}

impl RequestIds {
    /// Ids from 1 with nothing kept on disk: for benches and engine tests.
    pub fn in_memory() -> Self {
        Self {
            replica: 0,
            next: AtomicU64::new(1),
            ceiling: Arc::new(AtomicU64::new(1 << COUNTER_BITS)),
            reserving: Arc::new(AtomicBool::new(false)),
            file: None,
            refused: AtomicU64::new(0),
        }
    }

    /// Continues after the ceiling kept in `file` (created if missing), reserving
    /// the first block before returning. `floor` is the newest counter value any
    /// other record holds (the pending log): used only if the file is damaged.
    pub fn open(file: &Path, replica: u64, floor: u64) -> Result<(Self, IdsOrigin), IdsError> {
        if replica > MAX_REPLICA {
            return Err(IdsError::Replica(replica));
        }
        let (start, origin) = match std::fs::read(file) {
            Ok(bytes) => match decode(&bytes) {
                Ok(ceiling) => (ceiling, IdsOrigin::Continued { ceiling }),
                // Damaged: anything up to a block past the floor may have been
                // handed out, and predictions past the pending log's capacity are
                // not in it; a wide margin keeps clear of both.
                Err(reason) => (floor + 4 * BLOCK, IdsOrigin::Damaged { reason, floor }),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (1, IdsOrigin::Fresh),
            Err(source) => {
                return Err(IdsError::Io {
                    path: file.to_path_buf(),
                    source,
                });
            }
        };
        let start = start.max(floor + 1).max(1);
        let ceiling = start + BLOCK;
        if ceiling >= 1 << COUNTER_BITS {
            return Err(IdsError::Exhausted);
        }
        write(file, ceiling)?;
        Ok((
            Self {
                replica,
                next: AtomicU64::new(start),
                ceiling: Arc::new(AtomicU64::new(ceiling)),
                reserving: Arc::new(AtomicBool::new(false)),
                file: Some(file.to_path_buf()),
                refused: AtomicU64::new(0),
            },
            origin,
        ))
    }

    /// The replica these ids name.
    pub fn replica(&self) -> u64 {
        self.replica
    }

    /// The next id, or `None` when the reserved block is used up before the next
    /// reservation landed (counted; the caller answers 503 and the client retries).
    pub fn next(&self) -> Option<u64> {
        self.take(1)
    }

    /// The first of `n` consecutive ids (as [`RequestIds::next`]).
    pub fn take(&self, n: u64) -> Option<u64> {
        let first = self.next.fetch_add(n, Ordering::Relaxed);
        let ceiling = self.ceiling.load(Ordering::Acquire);
        if first + n + BLOCK / 2 >= ceiling {
            self.reserve_more();
        }
        if first + n > ceiling {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.replica << COUNTER_BITS | first)
    }

    /// Moves the next id up (by less than `modulus`) to the first one congruent to
    /// `to` modulo `modulus`, so that after a restart new ids continue the pending
    /// map's ring (indexed by `id % capacity`) where the restored ids end: a jump of
    /// a reservation block would otherwise land new ids on the slots of the newest
    /// restored predictions and push them out first. Call before serving.
    pub fn align(&self, to: u64, modulus: u64) {
        if modulus == 0 {
            return;
        }
        let base = self.replica << COUNTER_BITS;
        let next = base | self.next.load(Ordering::Relaxed);
        let skip = (to % modulus + modulus - next % modulus) % modulus;
        self.next.fetch_add(skip, Ordering::Relaxed);
    }

    /// Requests refused for want of a reservation.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// The counter value the next id will carry.
    pub fn peek(&self) -> u64 {
        self.next.load(Ordering::Relaxed)
    }

    /// Writes the next ceiling on a thread of its own, once at a time.
    fn reserve_more(&self) {
        let Some(file) = self.file.clone() else {
            return;
        };
        if self.reserving.swap(true, Ordering::AcqRel) {
            return;
        }
        let (ceiling, reserving) = (self.ceiling.clone(), self.reserving.clone());
        let used = self.next.load(Ordering::Relaxed);
        let spawned = std::thread::Builder::new()
            .name("request-ids".into())
            .spawn(move || {
                let next = ceiling.load(Ordering::Acquire).max(used) + BLOCK;
                match write(&file, next) {
                    Ok(()) => ceiling.store(next, Ordering::Release),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot reserve more request ids");
                        // One try a second, not one thread per request.
                        std::thread::sleep(std::time::Duration::from_secs(1));
                    }
                }
                reserving.store(false, Ordering::Release);
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the request id reservation");
            self.reserving.store(false, Ordering::Release);
        }
    }
}

/// The replica that handed `id` out (0 for a standalone server).
pub fn replica_of(id: u64) -> u64 {
    id >> COUNTER_BITS
}

/// The counter part of `id` (the whole id for replica 0).
pub fn counter_of(id: u64) -> u64 {
    id & ((1 << COUNTER_BITS) - 1)
}

fn write(file: &Path, ceiling: u64) -> Result<(), IdsError> {
    let mut bytes = MAGIC.to_vec();
    bytes.extend_from_slice(&ceiling.to_le_bytes());
    bytes.extend_from_slice(&crc32fast::hash(&bytes).to_le_bytes());
    crate::model::store::write_atomic(file, &bytes).map_err(|e| IdsError::Io {
        path: file.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })
}

fn decode(bytes: &[u8]) -> Result<u64, String> {
    if bytes.len() != 20 || &bytes[..8] != MAGIC {
        return Err(format!(
            "not a request id reservation ({} bytes, bad magic or length)",
            bytes.len()
        ));
    }
    let stored = u32::from_le_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]);
    if crc32fast::hash(&bytes[..16]) != stored {
        return Err("checksum mismatch".into());
    }
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[8..16]);
    Ok(u64::from_le_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn take(ids: &RequestIds, n: u64) -> Vec<u64> {
        (0..n).map(|_| ids.next().expect("reserved")).collect()
    }

    /// Waits for a reservation thread to finish.
    fn settle(ids: &RequestIds) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while ids.reserving.load(Ordering::Acquire) {
            assert!(std::time::Instant::now() < deadline, "reservation hung");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Any sequence of runs, each handing out some ids and then stopping
        /// (gracefully or not: the allocator keeps nothing else), never repeats an id.
        #[test]
        fn ids_never_repeat_across_restarts(runs in proptest::collection::vec(0u64..3 * BLOCK / 4, 1..6)) {
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("request_ids");
            let mut last = 0;
            for n in runs {
                let (ids, _) = RequestIds::open(&file, 0, 0).unwrap();
                // Only the first and last of a run matter: within a run ids rise by 1.
                let first = ids.next().unwrap();
                prop_assert!(first > last, "id {first} after {last}");
                last = first;
                if n > 0 {
                    ids.next.fetch_add(n - 1, Ordering::Relaxed);
                    let id = ids.next().unwrap();
                    prop_assert_eq!(id, first + n);
                    last = id;
                }
                settle(&ids);
            }
        }
    }

    #[test]
    fn a_run_longer_than_a_block_reserves_the_next_in_time() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("request_ids");
        let (ids, origin) = RequestIds::open(&file, 0, 0).unwrap();
        assert_eq!(origin, IdsOrigin::Fresh);
        assert_eq!(take(&ids, 3), vec![1, 2, 3]);
        ids.next.fetch_add(BLOCK / 2, Ordering::Relaxed);
        ids.next().unwrap();
        settle(&ids);
        assert_eq!(ids.ceiling.load(Ordering::Acquire), 1 + 2 * BLOCK);
        ids.next.fetch_add(BLOCK, Ordering::Relaxed);
        assert!(ids.next().is_some(), "the second block serves");
        assert_eq!(ids.refused(), 0);
        settle(&ids);
        let (again, origin) = RequestIds::open(&file, 0, 0).unwrap();
        assert!(matches!(origin, IdsOrigin::Continued { .. }));
        assert!(again.next().unwrap() > BLOCK + BLOCK / 2 + 4);
    }

    #[test]
    fn an_exhausted_block_refuses_rather_than_repeats() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("request_ids");
        let (ids, _) = RequestIds::open(&file, 0, 0).unwrap();
        // Hold the reservation back, as a slow disk would.
        ids.reserving.store(true, Ordering::Release);
        ids.next.store(1 + BLOCK, Ordering::Relaxed);
        assert_eq!(ids.next(), None);
        assert_eq!(ids.refused(), 1);
    }

    #[test]
    fn ids_carry_the_replica_and_stay_exact_in_a_double() {
        let dir = tempfile::tempdir().unwrap();
        let (ids, _) = RequestIds::open(&dir.path().join("ids"), MAX_REPLICA, 0).unwrap();
        let id = ids.next().unwrap();
        assert_eq!(id >> COUNTER_BITS, MAX_REPLICA);
        assert_eq!(counter_of(id), 1);
        assert!(id < 1 << 53 && (id as f64) as u64 == id);
        assert!(matches!(
            RequestIds::open(&dir.path().join("x"), MAX_REPLICA + 1, 0),
            Err(IdsError::Replica(_))
        ));
    }

    #[test]
    fn alignment_continues_the_ring_of_the_restored_ids() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("request_ids");
        let (ids, _) = RequestIds::open(&file, 0, 0).unwrap();
        ids.next.fetch_add(60_000 - 1, Ordering::Relaxed);
        assert_eq!(ids.next(), Some(60_000));
        settle(&ids);
        // A restart jumps a block; aligned, the next id shares 60 001's slot.
        let (again, _) = RequestIds::open(&file, 0, 0).unwrap();
        let unaligned = again.peek();
        again.align(60_001, 100_000);
        let id = again.next().unwrap();
        assert_eq!(id % 100_000, 60_001);
        assert!(id >= unaligned && id < unaligned + 100_000);
        // Already aligned: nothing moves.
        again.align(id + 1, 100_000);
        assert_eq!(again.next(), Some(id + 1));
    }

    #[test]
    fn a_damaged_reservation_continues_far_past_the_floor() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("request_ids");
        std::fs::write(&file, b"garbage").unwrap();
        let (ids, origin) = RequestIds::open(&file, 0, 500).unwrap();
        assert!(matches!(origin, IdsOrigin::Damaged { floor: 500, .. }));
        assert_eq!(ids.next(), Some(500 + 4 * BLOCK));
        // The file is whole again.
        let (_, origin) = RequestIds::open(&file, 0, 0).unwrap();
        assert!(matches!(origin, IdsOrigin::Continued { .. }));
    }
}
