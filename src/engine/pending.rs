//! Predictions awaiting their delayed label, keyed by `request_id`.
//!
//! `/v1/feedback {request_id, label}` joins a label to what the server saw and said:
//! the features, the embedding, and each voter's distribution (for the Hedge update).
//! The map is bounded twice, by a TTL and by a capacity, so that clients who never
//! send labels cannot grow it; the oldest entry goes first and each eviction is
//! counted. Entries are inserted in id order, so a FIFO of ids is also an age order.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// What a later label needs from its prediction.
#[derive(Debug, Clone)]
pub struct PendingPrediction {
    /// Raw features, as the client sent them.
    pub features: Vec<f32>,
    /// The model's embedding of them.
    pub embedding: Vec<f32>,
    /// The model's distribution.
    pub p_model: Vec<f32>,
    /// The neighbours' distribution, when they voted.
    pub p_knn: Option<Vec<f32>>,
    /// The label the server answered.
    pub predicted: u32,
    /// Model version that answered.
    pub model_version: u64,
}

#[derive(Debug)]
struct Inner {
    map: HashMap<u64, (Instant, PendingPrediction)>,
    order: VecDeque<u64>,
    evicted: u64,
}

/// A bounded TTL map. One parking_lot mutex: every operation is O(1) amortised and
/// short, never held across an await, and contention is one insert per prediction.
#[derive(Debug)]
pub struct PendingMap {
    ttl: Duration,
    capacity: usize,
    inner: Mutex<Inner>,
}

impl PendingMap {
    /// A map keeping entries for `ttl`, at most `capacity` of them.
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            ttl,
            capacity: capacity.max(1),
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                order: VecDeque::new(),
                evicted: 0,
            }),
        }
    }

    /// Stores a prediction, first expiring old entries and making room.
    pub fn insert(&self, id: u64, prediction: PendingPrediction, now: Instant) {
        let mut s = self.inner.lock();
        self.expire(&mut s, now);
        while s.map.len() >= self.capacity {
            let Some(oldest) = s.order.pop_front() else {
                break;
            };
            if s.map.remove(&oldest).is_some() {
                s.evicted += 1;
            }
        }
        s.map.insert(id, (now, prediction));
        s.order.push_back(id);
    }

    /// Removes and returns the prediction if it is known and not expired. A label is
    /// joined once: a second feedback for the same id finds nothing.
    pub fn take(&self, id: u64, now: Instant) -> Option<PendingPrediction> {
        let mut s = self.inner.lock();
        let (at, prediction) = s.map.remove(&id)?;
        (now.duration_since(at) <= self.ttl).then_some(prediction)
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.inner.lock().map.len()
    }

    /// True when no prediction awaits a label.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries dropped for capacity or age before a label came.
    pub fn evicted(&self) -> u64 {
        self.inner.lock().evicted
    }

    fn expire(&self, s: &mut Inner, now: Instant) {
        while let Some(&front) = s.order.front() {
            match s.map.get(&front) {
                // Taken already: just drop the stale id from the queue.
                None => {
                    s.order.pop_front();
                }
                Some((at, _)) if now.duration_since(*at) > self.ttl => {
                    s.map.remove(&front);
                    s.order.pop_front();
                    s.evicted += 1;
                }
                Some(_) => break,
            }
        }
        // Ids taken out of order leave holes in the queue; compact when they dominate
        // so the queue stays proportional to the map.
        if s.order.len() > 2 * s.map.len() + 1024 {
            let map = &s.map;
            let kept: VecDeque<u64> = s
                .order
                .iter()
                .copied()
                .filter(|id| map.contains_key(id))
                .collect();
            s.order = kept;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(label: u32) -> PendingPrediction {
        PendingPrediction {
            features: vec![1.0],
            embedding: vec![1.0],
            p_model: vec![1.0],
            p_knn: None,
            predicted: label,
            model_version: 0,
        }
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
    fn queue_stays_bounded_when_ids_are_taken_out_of_order() {
        let m = PendingMap::new(Duration::from_secs(100), 10_000);
        let now = Instant::now();
        m.insert(0, p(0), now); // never taken: pins the queue's front
        for id in 1..10_000 {
            m.insert(id, p(0), now);
            assert!(m.take(id, now).is_some());
        }
        let order_len = m.inner.lock().order.len();
        assert!(order_len < 3_000, "queue holds {order_len} ids for 1 entry");
    }
}
