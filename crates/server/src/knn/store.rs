//! The experience buffer: one contiguous row-major embedding matrix plus parallel
//! arrays, addressed by slot, with slots reused after eviction.
//!
//! Why this shape: the exact scan streams the matrix front to back (cache- and
//! SIMD-friendly), and eviction only marks a slot free, so no row ever moves and the
//! write lock is held for microseconds. Two ordered indexes give O(log n) eviction
//! (`by_priority`: lowest priority, then oldest) and O(log n) id lookups and tail
//! ranges (`by_id`, ids being insertion ticks).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use super::exact::squared_norm;
use super::{Experience, Neighbor};

/// The tick of a free slot. Live experiences have ticks from 1, so a single `tick >=
/// min_tick` comparison skips free and expired slots alike.
pub(super) const FREE: u64 = 0;

/// Rows per block of the interleaved copy (one AVX register of f32).
pub(super) const BLOCK: usize = 8;

/// The buffer. Written only by the indexer thread (under the memory's write lock),
/// read by searches and graph builders.
pub(super) struct Store {
    /// Floats per row.
    dim: usize,
    /// Most live rows; the matrix never grows past it.
    capacity: usize,
    /// Rows older than this many ticks are expired; 0 = never.
    max_age: u64,
    /// Experiences inserted so far; the newest one got this tick.
    clock: u64,
    /// Rows below this tick are expired whatever their age (see [`Store::forget_before`]).
    floor: u64,
    /// `slots × dim` floats, unit-length rows. Reserved up front (virtual memory only)
    /// so it never reallocates while the write lock is held.
    embeddings: Vec<f32>,
    /// The same rows interleaved eight at a time, `[block][d][lane]` (slot `s` is lane
    /// `s % 8` of block `s / 8`; unused lanes are zero): the exact scan gets eight
    /// rows' dot products from one pass of 8-wide multiplies, with no horizontal sum
    /// per row. Twice the matrix's memory, for a scan several times faster.
    blocked: Vec<f32>,
    /// Per slot: the experience's tick (= its id), or [`FREE`].
    ticks: Vec<u64>,
    /// Per slot: label.
    labels: Vec<u32>,
    /// Per slot: trust.
    trusts: Vec<f32>,
    /// Per slot: priority (kept to find its `by_priority` key on removal).
    priorities: Vec<f32>,
    /// Per slot: the input features, for snapshots; never scanned.
    features: Vec<Box<[f32]>>,
    /// Free slots, reused before the matrix grows.
    free: Vec<u32>,
    /// Live id → slot, in insertion order: lookups of graph hits, the un-indexed tail,
    /// and expiry (the oldest is first).
    by_id: BTreeMap<u64, u32>,
    /// Eviction order: (priority key, id), lowest first.
    by_priority: BTreeSet<(u32, u64)>,
    /// Per slot: the origin of a pseudo-label, by which a label can find it (see
    /// [`Experience::origin`]); `None` for everything else.
    origins: Vec<Option<u64>>,
    /// Origin → slot of the live pseudo-labels that have one, so a label can find the
    /// pseudo-label it supersedes.
    by_origin: HashMap<u64, u32>,
    /// The log position of the newest logged update applied (an experience or a
    /// forget): a snapshot of this store plus the log after it is the memory.
    logged_seq: u64,
}

/// Maps an f32 priority to a u32 whose unsigned order is the float's total order.
fn priority_key(priority: f32) -> u32 {
    let bits = priority.to_bits();
    if bits >> 31 == 1 {
        !bits
    } else {
        bits | (1 << 31)
    }
}

impl Store {
    /// An empty store; `capacity × dim` has been validated.
    pub(super) fn new(dim: usize, capacity: usize, max_age: u64) -> Self {
        Self {
            dim,
            capacity,
            max_age,
            clock: 0,
            floor: 1,
            embeddings: Vec::with_capacity(capacity * dim),
            blocked: Vec::with_capacity(capacity.div_ceil(BLOCK) * BLOCK * dim),
            ticks: Vec::with_capacity(capacity),
            labels: Vec::with_capacity(capacity),
            trusts: Vec::with_capacity(capacity),
            priorities: Vec::with_capacity(capacity),
            features: Vec::with_capacity(capacity),
            free: Vec::new(),
            by_id: BTreeMap::new(),
            by_priority: BTreeSet::new(),
            origins: Vec::with_capacity(capacity),
            by_origin: HashMap::new(),
            logged_seq: 0,
        }
    }

    /// See the field.
    pub(super) fn logged_seq(&self) -> u64 {
        self.logged_seq
    }

    /// Records that the logged update `seq` has been applied.
    pub(super) fn mark_logged(&mut self, seq: u64) {
        self.logged_seq = self.logged_seq.max(seq);
    }

    /// Forgets all but the `keep` most recent experiences (see
    /// `Memory::forget_older_than`).
    pub(super) fn forget_all_but(&mut self, keep: u64) {
        let floor = self.clock.saturating_sub(keep) + 1;
        self.forget_before(floor);
    }

    /// Live experiences.
    pub(super) fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Experiences inserted so far (the current tick).
    pub(super) fn clock(&self) -> u64 {
        self.clock
    }

    /// Floats per row.
    pub(super) fn dim(&self) -> usize {
        self.dim
    }

    /// The oldest tick still eligible for search: `tick >= min_tick()` is live and
    /// young enough.
    pub(super) fn min_tick(&self) -> u64 {
        let by_age = if self.max_age == 0 {
            1
        } else {
            self.clock.saturating_sub(self.max_age).max(1)
        };
        by_age.max(self.floor)
    }

    /// Expires every experience older than `tick` from now on: searches skip them at
    /// once, and the next insert batch frees their slots.
    pub(super) fn forget_before(&mut self, tick: u64) {
        self.floor = self.floor.max(tick);
    }

    /// The matrix (all slots ever used) and the per-slot ticks, for the scan.
    pub(super) fn rows(&self) -> (&[f32], &[u64]) {
        (&self.embeddings, &self.ticks)
    }

    /// The interleaved copy of the matrix (see `blocked`) and the per-slot ticks; the
    /// ticks of block `b` are `ticks[8b..8b + 8]` (fewer in the last block).
    pub(super) fn blocks(&self) -> (&[f32], &[u64]) {
        (&self.blocked, &self.ticks)
    }

    /// Copies the row in `slot` into the interleaved matrix, adding its block if new.
    fn write_blocked(&mut self, slot: usize) {
        let (block, lane) = (slot / BLOCK, slot % BLOCK);
        let start = block * BLOCK * self.dim;
        if self.blocked.len() < start + BLOCK * self.dim {
            self.blocked.resize(start + BLOCK * self.dim, 0.0);
        }
        let row = &self.embeddings[slot * self.dim..(slot + 1) * self.dim];
        for (d, &x) in row.iter().enumerate() {
            self.blocked[start + d * BLOCK + lane] = x;
        }
    }

    /// The embedding in `slot`.
    pub(super) fn row(&self, slot: u32) -> &[f32] {
        let start = slot as usize * self.dim;
        &self.embeddings[start..start + self.dim]
    }

    /// The tick of `slot` ([`FREE`] if free).
    pub(super) fn tick(&self, slot: u32) -> u64 {
        self.ticks[slot as usize]
    }

    /// The slot of a live experience.
    pub(super) fn slot_of(&self, id: u64) -> Option<u32> {
        self.by_id.get(&id).copied()
    }

    /// Live experiences with id ≥ `from`, oldest first: the graph's un-indexed tail.
    pub(super) fn tail(&self, from: u64) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.by_id.range(from..).map(|(&id, &slot)| (id, slot))
    }

    /// The newest live id, if any.
    pub(super) fn last_id(&self) -> Option<u64> {
        self.by_id.last_key_value().map(|(&id, _)| id)
    }

    /// The neighbour record for a hit in `slot` with cosine `similarity`.
    pub(super) fn neighbor(&self, slot: u32, similarity: f32) -> Neighbor {
        let s = slot as usize;
        let tick = self.ticks[s];
        Neighbor {
            id: tick,
            similarity: similarity.clamp(-1.0, 1.0),
            label: self.labels[s],
            trust: self.trusts[s],
            age: self.clock - tick,
        }
    }

    /// Appends up to `max` live rows with id ≥ `from` to `ids`/`rows` (oldest first);
    /// returns how many. Used to feed a graph without holding the lock while inserting.
    pub(super) fn copy_tail(
        &self,
        from: u64,
        max: usize,
        ids: &mut Vec<u64>,
        rows: &mut Vec<f32>,
    ) -> usize {
        let mut n = 0;
        for (id, slot) in self.tail(from).take(max) {
            ids.push(id);
            rows.extend_from_slice(self.row(slot));
            n += 1;
        }
        n
    }

    /// Overwrites row `slot` of the matrix with `key · scale` (the interleaved copy is
    /// the caller's to update).
    fn set_row(&mut self, slot: usize, key: &[f32], scale: f32) {
        let start = slot * self.dim;
        for (dst, src) in self.embeddings[start..start + self.dim].iter_mut().zip(key) {
            *dst = src * scale;
        }
    }

    /// Recomputes every live row's key from its stored features with `key` (a row
    /// whose new key is unusable keeps its old one). Returns the rows re-keyed.
    pub(super) fn rekey(&mut self, key: &dyn Fn(&[f32]) -> Option<Vec<f32>>) -> usize {
        let slots: Vec<usize> = self.by_id.values().map(|&s| s as usize).collect();
        let mut done = 0;
        for s in slots {
            let Some(new) = key(&self.features[s]) else {
                continue;
            };
            let norm2 = squared_norm(&new);
            if new.len() != self.dim || !norm2.is_finite() || norm2 <= 0.0 {
                continue;
            }
            self.set_row(s, &new, 1.0 / norm2.sqrt());
            self.write_blocked(s);
            done += 1;
        }
        done
    }

    /// Stores `exp` (its embedding already validated: right length, finite, non-zero)
    /// under the next tick, evicting the lowest-priority, oldest experience when full;
    /// the newcomer itself is the one dropped if its priority is the lowest. Evicted
    /// ids are appended to `evicted`. Returns the new id if it was kept. An `exp`
    /// whose origin a live, unexpired pseudo-label shares supersedes that one instead
    /// (same id): one already expired (past `max_age`, or forgotten after a drift but
    /// not yet freed) would take the label down with it.
    pub(super) fn insert(&mut self, exp: Experience, evicted: &mut Vec<u64>) -> Option<u64> {
        if let Some(origin) = exp.origin
            && let Some(slot) = self.by_origin.remove(&origin)
            && self.ticks[slot as usize] >= self.min_tick()
        {
            return Some(self.supersede(slot, &exp));
        }
        self.clock += 1;
        let id = self.clock;
        let key = priority_key(exp.priority);
        if self.by_id.len() >= self.capacity {
            let &(lowest_key, lowest_id) = self
                .by_priority
                .first()
                .expect("a full store has a lowest priority: this is a bug");
            if key < lowest_key {
                evicted.push(id);
                return None;
            }
            self.remove(lowest_id);
            evicted.push(lowest_id);
        }
        // Only a pseudo-label (trust below 1) can be superseded: a label is final.
        let findable = exp.origin.filter(|_| exp.trust < 1.0);
        let inv_norm = 1.0 / squared_norm(&exp.embedding).sqrt();
        let slot = match self.free.pop() {
            Some(slot) => {
                let s = slot as usize;
                self.set_row(s, &exp.embedding, inv_norm);
                self.ticks[s] = id;
                self.labels[s] = exp.label;
                self.trusts[s] = exp.trust;
                self.priorities[s] = exp.priority;
                self.features[s] = exp.features.into_boxed_slice();
                self.origins[s] = findable;
                slot
            }
            None => {
                let slot = u32::try_from(self.ticks.len())
                    .expect("slots fit u32 (validated capacity): this is a bug");
                self.embeddings
                    .extend(exp.embedding.iter().map(|x| x * inv_norm));
                self.ticks.push(id);
                self.labels.push(exp.label);
                self.trusts.push(exp.trust);
                self.priorities.push(exp.priority);
                self.features.push(exp.features.into_boxed_slice());
                self.origins.push(findable);
                slot
            }
        };
        if let Some(origin) = findable {
            self.by_origin.insert(origin, slot);
        }
        self.write_blocked(slot as usize);
        self.by_id.insert(id, slot);
        self.by_priority.insert((key, id));
        Some(id)
    }

    /// Gives the live experience in `slot` the label, trust and priority of `exp`,
    /// which has the same origin: the same input, so its key and age stay. Returns
    /// its id.
    fn supersede(&mut self, slot: u32, exp: &Experience) -> u64 {
        let s = slot as usize;
        let id = self.ticks[s];
        self.by_priority
            .remove(&(priority_key(self.priorities[s]), id));
        self.by_priority.insert((priority_key(exp.priority), id));
        self.labels[s] = exp.label;
        self.trusts[s] = exp.trust;
        self.priorities[s] = exp.priority;
        self.origins[s] = None;
        id
    }

    /// Evicts every experience older than `max_age`: it can never be returned again,
    /// and left in place it would dilute the graph and the scan. Evicted ids are
    /// appended to `evicted`.
    pub(super) fn expire(&mut self, evicted: &mut Vec<u64>) {
        let min_tick = self.min_tick();
        while let Some((&id, _)) = self.by_id.first_key_value() {
            if id >= min_tick {
                break;
            }
            self.remove(id);
            evicted.push(id);
        }
    }

    /// Frees the slot of live experience `id`.
    fn remove(&mut self, id: u64) {
        let slot = self
            .by_id
            .remove(&id)
            .expect("removing a live id: this is a bug");
        let s = slot as usize;
        self.by_priority
            .remove(&(priority_key(self.priorities[s]), id));
        self.ticks[s] = FREE;
        self.features[s] = Box::default();
        if let Some(origin) = self.origins[s].take() {
            self.by_origin.remove(&origin);
        }
        self.free.push(slot);
    }

    /// The raw features of the `n` newest live experiences, concatenated, newest
    /// first, with each one's label if a client gave it (trust 1.0).
    pub(super) fn recent_probe(&self, n: usize) -> (Vec<f32>, Vec<Option<u32>>) {
        let mut features = Vec::new();
        let mut labels = Vec::new();
        for &slot in self.by_id.values().rev().take(n) {
            let s = slot as usize;
            features.extend_from_slice(&self.features[s]);
            labels.push((self.trusts[s] >= 1.0).then_some(self.labels[s]));
        }
        (features, labels)
    }

    /// Every live experience, oldest first (embeddings unit-length).
    pub(super) fn snapshot(&self) -> Vec<Experience> {
        self.by_id
            .values()
            .map(|&slot| {
                let s = slot as usize;
                Experience {
                    embedding: self.row(slot).to_vec(),
                    features: self.features[s].to_vec(),
                    label: self.labels[s],
                    trust: self.trusts[s],
                    priority: self.priorities[s],
                    origin: self.origins[s],
                }
            })
            .collect()
    }
}

impl fmt::Debug for Store {
    // The matrix is megabytes; show the shape only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("dim", &self.dim)
            .field("capacity", &self.capacity)
            .field("len", &self.len())
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
