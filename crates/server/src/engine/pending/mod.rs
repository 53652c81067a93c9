//! Predictions awaiting their delayed label, keyed by `request_id`.
//!
//! `/v1/feedback {request_id, label}` joins a label to what the server saw and said:
//! the features, the embedding, and each voter's distribution (for the Hedge update
//! and the voters' scores).
//! The map is bounded twice, by a TTL and by a capacity, so that clients who never
//! send labels cannot grow it; the oldest entry goes first and each eviction is
//! counted.
//!
//! Request ids are handed out in order, so the map is a ring indexed by `id %
//! capacity`: a slot's previous tenant is exactly the prediction `capacity` ids
//! older, the one a capacity bound evicts. Its table is allocated once, at start, and
//! never rehashes: a hash map under this insert/remove churn grows its table in one
//! step when tombstones pile up (a 17 MB jump of resident memory at the default
//! capacity, mid-run, seen in the soak), and it hashes on every request.

pub mod log;

use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::Votes;

/// What a later label needs from its prediction.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PendingPrediction {
    /// Raw features, as the client sent them.
    pub features: Vec<f32>,
    /// The model's embedding of them.
    pub embedding: Vec<f32>,
    /// Each voter's distribution, where it voted (the model's always).
    pub votes: Votes,
    /// The label the server answered.
    pub predicted: u32,
    /// Whether the confidence gate admitted the answer as a pseudo-label (its
    /// experience or update may still have been dropped by a full queue).
    pub pseudo: bool,
    /// Model version that answered.
    pub model_version: u64,
}

/// One occupied slot (boxed, so an empty slot costs one pointer).
#[derive(Debug)]
struct Entry {
    id: u64,
    at: Instant,
    prediction: PendingPrediction,
}

#[derive(Debug)]
struct Inner {
    slots: Vec<Option<Box<Entry>>>,
    len: usize,
    evicted: u64,
    /// The TTL sweep's cursor: every id below it has been taken, evicted or expired
    /// (or was never stored).
    oldest: u64,
    /// The largest id stored so far.
    newest: u64,
    /// Heap bytes the entries hold (see [`heap_bytes`]).
    bytes: u64,
}

/// A bounded TTL map. One parking_lot mutex: every operation is O(1) amortised and
/// short, never held across an await, and contention is one insert per prediction.
#[derive(Debug)]
pub struct PendingMap {
    ttl: Duration,
    inner: Mutex<Inner>,
}

impl PendingMap {
    /// A map keeping entries for `ttl`, at most `capacity` of them.
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        let mut slots = Vec::new();
        slots.resize_with(capacity.max(1), || None);
        Self {
            ttl,
            inner: Mutex::new(Inner {
                slots,
                len: 0,
                evicted: 0,
                oldest: 0,
                newest: 0,
                bytes: 0,
            }),
        }
    }

    /// Stores a prediction, first expiring old entries. The entry `capacity` ids
    /// older, if still waiting, makes room (counted). An id older than its slot's
    /// tenant is not stored (counted too): only a retried feedback can bring one.
    pub fn insert(&self, id: u64, prediction: PendingPrediction, now: Instant) {
        let mut s = self.inner.lock();
        self.expire(&mut s, now);
        let at = slot_of(&s, id);
        if let Some((tenant_id, held)) = s.slots[at]
            .as_ref()
            .map(|e| (e.id, heap_bytes(&e.prediction)))
        {
            if tenant_id > id {
                s.evicted += 1;
                return;
            }
            s.len -= 1;
            s.bytes -= held;
            if tenant_id != id {
                s.evicted += 1;
            }
        }
        s.bytes += heap_bytes(&prediction);
        s.slots[at] = Some(Box::new(Entry {
            id,
            at: now,
            prediction,
        }));
        s.len += 1;
        s.newest = s.newest.max(id);
    }

    /// Removes and returns the prediction if it is known and not expired. A label is
    /// joined once: a second feedback for the same id finds nothing.
    pub fn take(&self, id: u64, now: Instant) -> Option<PendingPrediction> {
        let mut s = self.inner.lock();
        let at = slot_of(&s, id);
        if s.slots[at].as_ref().is_none_or(|e| e.id != id) {
            return None;
        }
        let entry = s.slots[at].take()?;
        s.len -= 1;
        s.bytes -= heap_bytes(&entry.prediction);
        (now.duration_since(entry.at) <= self.ttl).then_some(entry.prediction)
    }

    /// How long an entry waits for its label.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// How many entries the map holds at most.
    pub fn capacity(&self) -> usize {
        self.inner.lock().slots.len()
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.inner.lock().len
    }

    /// True when no prediction awaits a label.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Heap bytes the entries hold: what a full map adds to the resident size, so
    /// that a fill can be told from a leak (the soak's memory check).
    pub fn heap_bytes(&self) -> u64 {
        self.inner.lock().bytes
    }

    /// Entries dropped for capacity or age before a label came.
    pub fn evicted(&self) -> u64 {
        self.inner.lock().evicted
    }

    /// Drops entries older than the TTL, oldest first, stopping at the first young
    /// one. Ids older than `capacity` behind the newest are already overwritten or
    /// will be, so the cursor skips them.
    fn expire(&self, s: &mut Inner, now: Instant) {
        let capacity = s.slots.len() as u64;
        s.oldest = s.oldest.max(s.newest.saturating_sub(capacity - 1));
        while s.oldest <= s.newest {
            let at = slot_of(s, s.oldest);
            match &s.slots[at] {
                Some(e) if e.id == s.oldest => {
                    if now.duration_since(e.at) <= self.ttl {
                        break;
                    }
                    s.bytes -= heap_bytes(&e.prediction);
                    s.slots[at] = None;
                    s.len -= 1;
                    s.evicted += 1;
                }
                // Taken, never stored, or already replaced by a newer id.
                _ => {}
            }
            s.oldest += 1;
        }
    }
}

/// An entry's heap bytes: the boxed entry and each vector's buffer, each allocation
/// with glibc's 16-byte chunk header.
fn heap_bytes(p: &PendingPrediction) -> u64 {
    const ALLOC: usize = 16;
    let vec = |v: &Vec<f32>| {
        if v.capacity() == 0 {
            0
        } else {
            v.capacity() * 4 + ALLOC
        }
    };
    let bytes = std::mem::size_of::<Entry>()
        + ALLOC
        + vec(&p.features)
        + vec(&p.embedding)
        + p.votes.vecs().map(vec).sum::<usize>();
    bytes as u64
}

fn slot_of(s: &Inner, id: u64) -> usize {
    (id % s.slots.len() as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(label: u32) -> PendingPrediction {
        PendingPrediction {
            features: vec![1.0],
            embedding: vec![1.0],
            votes: Votes::model_only(vec![1.0]),
            predicted: label,
            pseudo: false,
            model_version: 0,
        }
    }

    #[test]
    fn heap_bytes_follow_the_entries() {
        let m = PendingMap::new(Duration::from_secs(10), 2);
        let now = Instant::now();
        m.insert(1, p(0), now);
        let one = m.heap_bytes();
        assert!(one > std::mem::size_of::<Entry>() as u64);
        m.insert(2, p(0), now);
        assert_eq!(m.heap_bytes(), 2 * one);
        m.insert(3, p(0), now); // evicts 1
        assert_eq!(m.heap_bytes(), 2 * one);
        m.take(2, now);
        m.insert(4, p(0), now + Duration::from_secs(11)); // 3 expires
        assert_eq!(m.heap_bytes(), one);
        m.take(4, now);
        assert_eq!(m.heap_bytes(), 0);
    }

    #[test]
    fn take_once_then_gone() {
        let m = PendingMap::new(Duration::from_secs(10), 10);
        let now = Instant::now();
        m.insert(1, p(3), now);
        assert_eq!(m.take(1, now).map(|x| x.predicted), Some(3));
        assert!(m.take(1, now).is_none());
        assert!(m.take(2, now).is_none(), "unknown id");
    }

    #[test]
    fn expired_entries_are_not_returned_and_are_swept() {
        let m = PendingMap::new(Duration::from_secs(10), 10);
        let t0 = Instant::now();
        m.insert(1, p(0), t0);
        assert!(m.take(1, t0 + Duration::from_secs(11)).is_none());
        m.insert(2, p(0), t0);
        m.insert(3, p(0), t0 + Duration::from_secs(20));
        assert_eq!(m.len(), 1, "entry 2 expired on insert");
        assert_eq!(m.evicted(), 1);
    }

    #[test]
    fn capacity_evicts_the_oldest() {
        let m = PendingMap::new(Duration::from_secs(100), 3);
        let now = Instant::now();
        for id in 0..5 {
            m.insert(id, p(0), now);
        }
        assert_eq!(m.len(), 3);
        assert_eq!(m.evicted(), 2);
        assert!(m.take(0, now).is_none());
        assert!(m.take(1, now).is_none());
        assert!(m.take(4, now).is_some());
    }

    #[test]
    fn ids_taken_out_of_order_leave_the_rest_intact() {
        let m = PendingMap::new(Duration::from_secs(100), 10_000);
        let now = Instant::now();
        m.insert(0, p(7), now); // never taken until the end
        for id in 1..10_000 {
            m.insert(id, p(0), now);
            assert!(m.take(id, now).is_some());
        }
        assert_eq!(m.len(), 1);
        assert_eq!(m.evicted(), 0);
        assert_eq!(m.take(0, now).map(|x| x.predicted), Some(7));
        assert!(m.is_empty());
    }

    #[test]
    fn a_slot_keeps_its_newer_tenant_and_a_retry_can_put_an_entry_back() {
        let m = PendingMap::new(Duration::from_secs(100), 4);
        let now = Instant::now();
        m.insert(5, p(1), now);
        // Id 1 shares slot 1 with id 5 but is older: not stored, counted.
        m.insert(1, p(2), now);
        assert_eq!(m.evicted(), 1);
        assert_eq!(m.take(5, now).map(|x| x.predicted), Some(1));
        // A refused feedback puts its prediction back under the same id.
        m.insert(5, p(3), now);
        assert_eq!(m.len(), 1);
        assert_eq!(m.take(5, now).map(|x| x.predicted), Some(3));
    }

    #[test]
    fn the_sweep_expires_in_id_order_across_wraps() {
        let m = PendingMap::new(Duration::from_secs(10), 8);
        let t0 = Instant::now();
        for id in 1..=6 {
            m.insert(id, p(0), t0);
        }
        m.take(3, t0);
        // Twenty seconds on: all five left are expired by the next insert.
        m.insert(7, p(0), t0 + Duration::from_secs(20));
        assert_eq!(m.len(), 1);
        assert_eq!(m.evicted(), 5);
        for id in 8..=20 {
            m.insert(id, p(0), t0 + Duration::from_secs(21));
        }
        // Capacity 8: ids 13..=20 stay, 7..=12 were pushed out (6 more evictions).
        assert_eq!(m.len(), 8);
        assert_eq!(m.evicted(), 11);
        assert!(m.take(12, t0 + Duration::from_secs(21)).is_none());
        assert!(m.take(13, t0 + Duration::from_secs(21)).is_some());
    }
}
