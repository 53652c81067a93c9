//! A consumer's input: every update exactly once, in sequence order. The
//! update-worker trains on it; a cluster replica's forwarder ships it to Redis.
//!
//! The ring is the fast path and may skip (a full ring drops; a restarted worker
//! re-reads a slot its predecessor read but never freed). The WAL is the truth. So the
//! feed hands out sequence number `delivered + 1` and nothing else: a ring record at
//! or below `delivered` is a duplicate and is skipped; one above `delivered + 1` shows
//! a gap, which is read back from the WAL first; and when the ring is empty but the
//! header's `produced_seq` is ahead, the tail of the WAL is read too. At-least-once
//! delivery plus this rule is exactly-once application.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::path::PathBuf;

use crate::ipc::Consumer;
use crate::update::Update;
use crate::update::codec;
use crate::wal::WalError;

/// Most updates read back from the WAL in one go, to bound the worker's memory.
const REPLAY_CHUNK: u64 = 4_096;

/// In-order, exactly-once updates from the ring and the WAL.
#[derive(Debug)]
pub struct Feed {
    consumer: Consumer,
    wal_dir: PathBuf,
    /// The last sequence number handed out (or skipped as undecodable).
    delivered: u64,
    /// Updates read from the WAL, waiting their turn.
    pending: VecDeque<(u64, Update)>,
    buf: Vec<u8>,
    /// Updates read back from the WAL rather than the ring.
    pub replayed: u64,
    /// Ring records skipped as already delivered.
    pub duplicates: u64,
}

impl Feed {
    /// Starts after `delivered`.
    pub fn new(consumer: Consumer, wal_dir: PathBuf, delivered: u64) -> Self {
        Self {
            consumer,
            wal_dir,
            delivered,
            pending: VecDeque::new(),
            buf: Vec::new(),
            replayed: 0,
            duplicates: 0,
        }
    }

    /// The last sequence number handed out.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// Goes back to hand out `delivered + 1` next: what was handed out after it is
    /// read again from the WAL (a cluster forwarder whose Redis lost records).
    pub fn rewind(&mut self, delivered: u64) {
        if delivered < self.delivered {
            self.delivered = delivered;
            self.pending.clear();
        }
    }

    /// The next update, if one is available now.
    pub fn next_update(&mut self) -> Result<Option<(u64, Update)>, WalError> {
        loop {
            if let Some(next) = self.pending.pop_front() {
                return Ok(Some(next));
            }
            let Some(seq) = self.consumer.try_pop(&mut self.buf) else {
                let produced = self.consumer.ring().produced_seq();
                if produced > self.delivered {
                    self.replay_through(produced)?;
                    if !self.pending.is_empty() {
                        continue;
                    }
                }
                return Ok(None);
            };
            if seq <= self.delivered {
                self.duplicates += 1;
                continue;
            }
            if seq > self.delivered + 1 {
                // The ring skipped some: take them from the WAL, then come back for
                // the ring's record (re-read from the WAL too, which is simpler than
                // holding it aside and costs one record).
                self.replay_through(seq)?;
                continue;
            }
            self.delivered = seq;
            match codec::decode(&self.buf) {
                Ok(update) => return Ok(Some((seq, update))),
                Err(e) => tracing::error!(seq, error = %e, "skipping an undecodable update"),
            }
        }
    }

    /// Reads `delivered+1 ..= min(through, delivered+REPLAY_CHUNK)` from the WAL into
    /// `pending`, advancing `delivered` past what it read.
    fn replay_through(&mut self, through: u64) -> Result<(), WalError> {
        let from = self.delivered + 1;
        let last = through.min(self.delivered + REPLAY_CHUNK);
        let mut expected = from;
        let pending = &mut self.pending;
        crate::wal::replay(&self.wal_dir, from, |seq, payload| {
            if seq > last {
                return ControlFlow::Break(());
            }
            if expected == from && seq > from {
                // Only possible if segments this worker still needed were deleted;
                // going on beats stalling forever on records that cannot come back.
                tracing::error!(
                    from,
                    first = seq,
                    "updates are missing from the WAL; skipping them"
                );
                expected = seq;
            }
            if seq == expected {
                expected += 1;
                match codec::decode(payload) {
                    Ok(update) => pending.push_back((seq, update)),
                    Err(e) => {
                        tracing::error!(seq, error = %e, "skipping an undecodable WAL record")
                    }
                }
            }
            ControlFlow::Continue(())
        })?;
        if pending.is_empty() && expected == from {
            // Nothing readable yet: the record may still be in the writer's hands
            // (a torn tail at this instant); try again on the next poll.
            return Ok(());
        }
        self.replayed += expected - from;
        self.delivered = expected - 1;
        Ok(())
    }
}
