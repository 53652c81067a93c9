//! The hnsw_rs graph: what serves above the crossover.
//!
//! - **Distance.** Rows are unit length, so squared L2 ranks exactly like cosine; it is
//!   never negative (hnsw_rs asserts that) and never NaN for finite input. `DistDot`
//!   would panic on a query that is not exactly unit length, and `DistCosine`
//!   recomputes both norms in f64 on every evaluation. The similarities we return are
//!   recomputed from the store with the same kernel as the exact scan, so both
//!   backends rank and score identically.
//! - **Tombstones.** hnsw_rs has no delete. An evicted id stays in the graph; a hit is
//!   kept only if its id is still in the store. Search over-fetches by the current
//!   tombstone share instead of using `search_filter`, because the filter would have to
//!   consult the store's lock from inside the graph walk, and it is slower: at 10k
//!   points with 20% dead, 350 µs against 143 µs for over-fetch and filter
//!   (`benches/knn.rs`, group `tombstones`).
//! - **The tail.** `upto` says every live id below it is in the graph; the rows at or
//!   above it are scanned exactly and merged, so a lagging graph never hides them.
//! - **Panics.** Every call into hnsw_rs goes through `catch_unwind` and becomes
//!   [`KnnError::IndexUnavailable`]; inputs are validated before (dimension, finite),
//!   and `hnsw_m ≤ 255` is validated because hnsw_rs exits the process above 256.

use std::any::Any;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use hnsw_rs::prelude::{Distance, Hnsw};

use super::exact::{Hit, TopK, dot, query_scale, squared_l2};
use super::memory::Shared;
use super::{Backend, KnnError, KnnIndex, MemoryConfig, SearchResult};

/// Layers hnsw_rs may use: its own maximum. Level draws are geometric, so the cap only
/// matters for memories far beyond any configured capacity.
const MAX_LAYERS: usize = 16;

/// Rows a build copies from the store per read-lock hold: short holds, and a stop
/// check every few milliseconds of inserts.
const BUILD_CHUNK: usize = 64;

/// Squared Euclidean distance between unit vectors (= 2 − 2·cosine).
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct UnitL2;

impl Distance<f32> for UnitL2 {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        squared_l2(a, b)
    }
}

/// One hnsw_rs graph plus how far it covers the store.
pub(super) struct Graph {
    hnsw: Hnsw<'static, f32, UnitL2>,
    /// Every live experience with an id below this is in the graph. Written by one
    /// thread at a time (the builder, then the indexer after the handoff), after the
    /// inserts it covers (Release); read by searches before they walk (Acquire).
    upto: AtomicU64,
    /// Points inserted, tombstones included.
    points: AtomicUsize,
}

/// Turns a caught panic into an error.
fn panicked(what: &str, payload: Box<dyn Any + Send>) -> KnnError {
    let detail = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned());
    KnnError::IndexUnavailable {
        reason: format!("hnsw_rs panicked during {what}: {detail}"),
    }
}

impl Graph {
    pub(super) fn new(cfg: &MemoryConfig) -> Self {
        Self {
            hnsw: Hnsw::new(
                cfg.hnsw_m,
                cfg.capacity,
                MAX_LAYERS,
                cfg.hnsw_ef_construction,
                UnitL2,
            ),
            upto: AtomicU64::new(0),
            points: AtomicUsize::new(0),
        }
    }

    /// See the field.
    pub(super) fn upto(&self) -> u64 {
        self.upto.load(Ordering::Acquire)
    }

    /// Points in the graph, tombstones included.
    pub(super) fn points(&self) -> usize {
        self.points.load(Ordering::Relaxed)
    }

    /// Inserts `ids[i]` with row `i` of `rows` (unit length, `dim` each, from the store)
    /// and then declares every live id below `upto` covered.
    pub(super) fn insert(
        &self,
        dim: usize,
        ids: &[u64],
        rows: &[f32],
        upto: u64,
    ) -> Result<(), KnnError> {
        debug_assert_eq!(ids.len() * dim, rows.len());
        catch_unwind(AssertUnwindSafe(|| {
            for (&id, row) in ids.iter().zip(rows.chunks_exact(dim)) {
                // Ids are u64 ticks; usize is 64 bits on every target we build for.
                self.hnsw.insert_slice((row, id as usize));
                self.points.fetch_add(1, Ordering::Relaxed);
            }
        }))
        .map_err(|p| panicked("insert", p))?;
        self.upto.store(upto, Ordering::Release);
        Ok(())
    }

    /// Ids of (about) the `fetch` nearest points; `query` is checked by the caller.
    fn nearest(&self, query: &[f32], fetch: usize, ef: usize) -> Result<Vec<u64>, KnnError> {
        catch_unwind(AssertUnwindSafe(|| {
            self.hnsw
                .search(query, fetch, ef)
                .iter()
                .map(|n| n.d_id as u64)
                .collect()
        }))
        .map_err(|p| panicked("search", p))
    }
}

impl fmt::Debug for Graph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Graph")
            .field("points", &self.points())
            .field("upto", &self.upto())
            .finish_non_exhaustive()
    }
}

/// How many graph hits to ask for so that about `k` survive tombstone filtering.
fn over_fetch(k: usize, tombstones: usize, points: usize) -> usize {
    // Past 3/4 dead the graph is being rebuilt; asking for 4k is the most we pay.
    let dead = (tombstones as f64 / points.max(1) as f64).min(0.75);
    (k as f64 / (1.0 - dead)).ceil() as usize + 2
}

/// HNSW search merged with an exact scan of the un-indexed tail.
pub(super) fn search(
    shared: &Shared,
    graph: &Graph,
    query: &[f32],
    k: usize,
) -> Result<SearchResult, KnnError> {
    let empty = || {
        Ok(SearchResult {
            neighbors: Vec::new(),
            backend: Backend::Hnsw,
        })
    };
    let Some(scale) = query_scale(shared.cfg.dim, query)? else {
        return empty();
    };
    if k == 0 {
        return empty();
    }
    // Read before the walk: ids below it are in the graph now; the rest is the tail.
    let upto = graph.upto();
    let points = graph.points();
    let mut fetch = over_fetch(
        k,
        shared.counters.tombstones.load(Ordering::Relaxed),
        points,
    );
    let mut widened = false;
    loop {
        // The walk runs without the store lock: the indexer may write meanwhile.
        let ids = graph.nearest(query, fetch, shared.cfg.hnsw_ef_search.max(fetch))?;
        let store = shared.store.read();
        let min_tick = store.min_tick();
        let mut top = TopK::new(k);
        let mut live = 0;
        for &id in &ids {
            // Ids at or above `upto` are scanned with the tail below; skipping them here
            // keeps each experience from being counted twice.
            if id >= upto {
                live += 1;
                continue;
            }
            // A missing id is a tombstone (evicted); an old one is past max_age.
            if let Some(slot) = store.slot_of(id)
                && store.tick(slot) >= min_tick
            {
                top.push(Hit {
                    similarity: dot(query, store.row(slot)),
                    id,
                    slot,
                });
                live += 1;
            }
        }
        // Unlucky: the hits were mostly tombstones. Look once more, four times wider.
        if live < k && ids.len() == fetch && fetch < points && !widened {
            widened = true;
            fetch = (fetch * 4).min(points);
            continue;
        }
        for (id, slot) in store.tail(upto) {
            if store.tick(slot) >= min_tick {
                top.push(Hit {
                    similarity: dot(query, store.row(slot)),
                    id,
                    slot,
                });
            }
        }
        let neighbors = top.into_neighbors(&store, scale);
        return Ok(SearchResult {
            neighbors,
            backend: Backend::Hnsw,
        });
    }
}

/// Builds a graph over the store's live rows, oldest first, on the calling (build)
/// thread. There is no atomic snapshot: rows are copied a chunk at a time under short
/// read locks, so a row evicted before its chunk is skipped and one evicted after is a
/// tombstone like any other. It keeps catching up until it holds every row that
/// existed when it started and is at least as fresh as the serving graph, then returns
/// for the indexer to swap in; the indexer feeds it from there.
pub(super) fn build(shared: &Shared) -> Result<Graph, KnnError> {
    let dim = shared.cfg.dim;
    let graph = Graph::new(&shared.cfg);
    let start_clock = shared.store.read().clock();
    let mut ids = Vec::with_capacity(BUILD_CHUNK);
    let mut rows = Vec::with_capacity(BUILD_CHUNK * dim);
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            return Err(KnnError::IndexUnavailable {
                reason: "graph build cancelled by shutdown".into(),
            });
        }
        ids.clear();
        rows.clear();
        shared
            .store
            .read()
            .copy_tail(graph.upto(), BUILD_CHUNK, &mut ids, &mut rows);
        let Some(&last) = ids.last() else {
            break; // caught up with the store
        };
        graph.insert(dim, &ids, &rows, last + 1)?;
        let serving = shared.graph.load().as_ref().map(|g| g.upto());
        if last >= start_clock && serving.is_none_or(|upto| graph.upto() >= upto) {
            break;
        }
    }
    Ok(graph)
}

/// The HNSW graph over a memory's store, as a [`KnnIndex`]. Hits are merged with an
/// exact scan of rows the graph does not hold yet.
#[derive(Debug, Clone)]
pub struct HnswIndex {
    shared: Arc<Shared>,
    graph: Arc<Graph>,
}

impl HnswIndex {
    pub(super) fn new(shared: Arc<Shared>, graph: Arc<Graph>) -> Self {
        Self { shared, graph }
    }

    /// Points in this graph, tombstones included.
    pub fn graph_points(&self) -> usize {
        self.graph.points()
    }
}

impl KnnIndex for HnswIndex {
    fn backend(&self) -> Backend {
        Backend::Hnsw
    }

    fn search(&self, query: &[f32], k: usize) -> Result<SearchResult, KnnError> {
        search(&self.shared, &self.graph, query, k)
    }

    fn len(&self) -> usize {
        self.shared.counters.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_fetch_grows_with_tombstones() {
        assert_eq!(over_fetch(10, 0, 1000), 12);
        assert_eq!(over_fetch(10, 200, 1000), 15);
        assert_eq!(over_fetch(10, 990, 1000), 42);
        assert_eq!(over_fetch(10, 0, 0), 12);
    }

    #[test]
    fn unit_l2_ranks_like_cosine() {
        let q = [0.6f32, 0.8];
        let near = [0.8f32, 0.6];
        let far = [1.0f32, 0.0];
        assert!(UnitL2.eval(&q, &near) < UnitL2.eval(&q, &far));
        let cos = dot(&q, &near);
        assert!((UnitL2.eval(&q, &near) - (2.0 - 2.0 * cos)).abs() < 1e-6);
    }
}
