//! The exact scan: every live row of the contiguous matrix against the query.
//!
//! Why it exists: below the crossover it beats a graph search (one streaming pass, no
//! pointer chasing, no hashing of visited nodes), it needs no build, and it is exact,
//! which makes it the oracle for HNSW recall.
//!
//! The kernels are written so LLVM vectorises them without `unsafe` or fast-math (a
//! single running sum would serialise on the adds): for the common dimensions the row
//! length is a compile-time constant and the products are summed as a tree down to
//! eight lanes (measured at dim 32: 1.5× faster than eight running lanes); other
//! lengths accumulate into eight independent lanes over `as_chunks::<8>()`. Every dot
//! product of a given length goes through the same kernel, so both backends score a
//! row identically.

use std::sync::Arc;

use super::memory::Shared;
use super::store::{BLOCK, Store};
use super::{Backend, KnnError, KnnIndex, Neighbor, SearchResult};

/// Independent accumulators per kernel: two SSE or one AVX register of f32.
const LANES: usize = 8;

/// Dot product of two equal-length vectors.
#[inline]
pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    match a.len() {
        8 => dot_as::<8>(a, b),
        16 => dot_as::<16>(a, b),
        32 => dot_as::<32>(a, b),
        64 => dot_as::<64>(a, b),
        128 => dot_as::<128>(a, b),
        _ => dot_lanes(a, b),
    }
}

/// [`dot_fixed`] on slices of length `D`.
#[inline(always)]
fn dot_as<const D: usize>(a: &[f32], b: &[f32]) -> f32 {
    match (a.as_chunks::<D>().0.first(), b.as_chunks::<D>().0.first()) {
        (Some(a), Some(b)) => dot_fixed(a, b),
        _ => unreachable!("dot_as is only called with slices of length D: this is a bug"),
    }
}

/// Dot product of a power-of-two length ≥ 8 known at compile time: the products,
/// halved pairwise down to eight lanes, then the lanes' fixed pairwise sum. Of the
/// shapes measured at dim 32 this is the one LLVM vectorises best (full-width
/// multiplies, no long add chain): 1.6× faster than a tree down to one lane.
#[inline(always)]
fn dot_fixed<const D: usize>(a: &[f32; D], b: &[f32; D]) -> f32 {
    let mut p = [0.0f32; D];
    for ((p, x), y) in p.iter_mut().zip(a).zip(b) {
        *p = x * y;
    }
    let mut width = D;
    while width > LANES {
        width /= 2;
        for i in 0..width {
            p[i] += p[i + width];
        }
    }
    let mut lanes = [0.0f32; LANES];
    lanes.copy_from_slice(&p[..LANES]);
    reduce(lanes)
}

/// Dot product of any length: eight running lanes, then the remainder.
#[inline]
fn dot_lanes(a: &[f32], b: &[f32]) -> f32 {
    let (ca, ra) = a.as_chunks::<LANES>();
    let (cb, rb) = b.as_chunks::<LANES>();
    let mut acc = [0.0f32; LANES];
    for (x, y) in ca.iter().zip(cb) {
        for ((s, x), y) in acc.iter_mut().zip(x).zip(y) {
            *s += x * y;
        }
    }
    let rest: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    reduce(acc) + rest
}

/// Squared Euclidean distance; on unit vectors it ranks exactly like the dot product.
#[inline]
pub(super) fn squared_l2(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let (ca, ra) = a.as_chunks::<LANES>();
    let (cb, rb) = b.as_chunks::<LANES>();
    let mut acc = [0.0f32; LANES];
    for (x, y) in ca.iter().zip(cb) {
        for ((s, x), y) in acc.iter_mut().zip(x).zip(y) {
            let d = x - y;
            *s += d * d;
        }
    }
    let rest: f32 = ra.iter().zip(rb).map(|(x, y)| (x - y) * (x - y)).sum();
    reduce(acc) + rest
}

/// Squared Euclidean norm.
#[inline]
pub(super) fn squared_norm(a: &[f32]) -> f32 {
    dot(a, a)
}

/// Pairwise sum of the lanes (fixed order, so results are deterministic).
#[inline]
fn reduce(acc: [f32; LANES]) -> f32 {
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

/// Checks a query and returns the factor that turns its dot products into cosines, or
/// `None` for a zero query (no direction: nothing is similar to it, which the vote
/// treats as "no neighbours" rather than as a k-NN failure).
pub(super) fn query_scale(dim: usize, query: &[f32]) -> Result<Option<f32>, KnnError> {
    if query.len() != dim {
        return Err(KnnError::DimensionMismatch {
            expected: dim,
            found: query.len(),
        });
    }
    let norm2 = squared_norm(query);
    if !norm2.is_finite() {
        return Err(KnnError::InvalidQuery {
            reason: "non-finite value (or overflowing norm)",
        });
    }
    Ok((norm2 > 0.0).then(|| 1.0 / norm2.sqrt()))
}

/// A candidate neighbour: raw dot product (unscaled), id, slot.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Hit {
    pub(super) similarity: f32,
    pub(super) id: u64,
    pub(super) slot: u32,
}

/// The result order: higher similarity first, then the newer experience.
#[inline]
fn better(a: &Hit, b: &Hit) -> bool {
    match a.similarity.total_cmp(&b.similarity) {
        std::cmp::Ordering::Greater => true,
        std::cmp::Ordering::Less => false,
        std::cmp::Ordering::Equal => a.id > b.id,
    }
}

/// The best `k` hits so far, kept sorted. For the small k of a vote (about 10) a sorted
/// array beats a heap: most rows fail the one comparison against the worst kept hit.
#[derive(Debug)]
pub(super) struct TopK {
    k: usize,
    hits: Vec<Hit>,
    /// The worst kept similarity once `k` hits are kept (−∞ before; +∞ for k = 0): a
    /// single float comparison rejects most rows.
    floor: f32,
}

impl TopK {
    pub(super) fn new(k: usize) -> Self {
        // The reservation is only a hint; a huge k grows the vector as hits arrive.
        Self {
            k,
            hits: Vec::with_capacity(k.min(256) + 1),
            floor: if k == 0 {
                f32::INFINITY
            } else {
                f32::NEG_INFINITY
            },
        }
    }

    pub(super) fn push(&mut self, hit: Hit) {
        if hit.similarity < self.floor {
            return;
        }
        if self.hits.len() == self.k && self.hits.last().is_none_or(|worst| !better(&hit, worst)) {
            return;
        }
        let at = self.hits.partition_point(|h| better(h, &hit));
        self.hits.insert(at, hit);
        self.hits.truncate(self.k);
        if self.hits.len() == self.k
            && let Some(worst) = self.hits.last()
        {
            self.floor = worst.similarity;
        }
    }

    /// The hits as neighbours, best first; `scale` turns dot products into cosines.
    pub(super) fn into_neighbors(self, store: &Store, scale: f32) -> Vec<Neighbor> {
        self.hits
            .iter()
            .map(|h| store.neighbor(h.slot, h.similarity * scale))
            .collect()
    }
}

/// Offers every live, unexpired row of `store` to `top`. Common dimensions get a
/// copy of the loop with the row length known at compile time.
///
/// Compiled twice: for the portable x86-64 baseline (SSE2) and for AVX2+FMA, chosen
/// once at run time, so the shipped binary stays portable while the machines we
/// serve on get 8-wide fused multiply-adds in the hot loop.
#[multiversion::multiversion(targets("x86_64+avx2+fma"))]
pub(super) fn scan(store: &Store, query: &[f32], top: &mut TopK) {
    match store.dim() {
        8 => scan_fixed::<8>(store, query, top),
        16 => scan_fixed::<16>(store, query, top),
        32 => scan_fixed::<32>(store, query, top),
        64 => scan_fixed::<64>(store, query, top),
        128 => scan_fixed::<128>(store, query, top),
        dim => {
            let (matrix, ticks) = store.rows();
            let rows = matrix.chunks_exact(dim).zip(ticks);
            scan_rows(rows, store.min_tick(), |row| dot_lanes(query, row), top);
        }
    }
}

/// The scan for a power-of-two `D`: over the interleaved copy, eight rows per step.
#[inline(always)]
fn scan_fixed<const D: usize>(store: &Store, query: &[f32], top: &mut TopK) {
    let (blocks, ticks) = store.blocks();
    let query: &[f32; D] = query
        .try_into()
        .expect("query length checked against dim: this is a bug");
    let min_tick = store.min_tick();
    for (b, (block, ticks)) in blocks
        .chunks_exact(D * BLOCK)
        .zip(ticks.chunks(BLOCK))
        .enumerate()
    {
        // Free and expired slots have ticks below min_tick.
        if ticks.iter().all(|&t| t < min_tick) {
            continue;
        }
        let block: &[[f32; BLOCK]; D] = block
            .as_chunks::<BLOCK>()
            .0
            .try_into()
            .expect("a block holds D columns of eight: this is a bug");
        let scores = dot_block(query, block);
        // Once `top` is full most blocks hold no candidate: one test for all eight.
        if scores.iter().all(|&s| s < top.floor) {
            continue;
        }
        for (lane, (&tick, &similarity)) in ticks.iter().zip(&scores).enumerate() {
            if tick >= min_tick && similarity >= top.floor {
                top.push(Hit {
                    similarity,
                    id: tick,
                    // Slots are below the validated u32 capacity.
                    slot: (b * BLOCK + lane) as u32,
                });
            }
        }
    }
}

/// [`dot_fixed`] of `q` with the eight rows of an interleaved block, lane by lane in
/// exactly `dot_fixed`'s order of operations, so each score is bit-identical to it
/// (the HNSW path and the row-major kernels agree with the scan) while the compiler
/// turns every step into one 8-wide operation across the rows.
#[inline(always)]
fn dot_block<const D: usize>(q: &[f32; D], block: &[[f32; BLOCK]; D]) -> [f32; BLOCK] {
    // After `dot_fixed`'s halving, lane i of the row kernel holds the products at
    // i, i + 8, i + 16, … summed by the same halving; compute each lane on its own
    // (a few registers live, not all D products), then `reduce`'s fixed tree.
    let mut lanes = [[0.0f32; BLOCK]; LANES];
    for (i, lane) in lanes.iter_mut().enumerate() {
        let mut acc = [[0.0f32; BLOCK]; 16];
        let m = D / LANES;
        for (j, acc) in acc[..m].iter_mut().enumerate() {
            let x = q[i + LANES * j];
            for (a, y) in acc.iter_mut().zip(&block[i + LANES * j]) {
                *a = x * y;
            }
        }
        let mut width = m;
        while width > 1 {
            width /= 2;
            let (low, high) = acc.split_at_mut(width);
            for (a, b) in low.iter_mut().zip(&high[..width]) {
                for (a, b) in a.iter_mut().zip(b) {
                    *a += b;
                }
            }
        }
        *lane = acc[0];
    }
    // `reduce`'s tree, applied to whole vectors: the same sums per row, no shuffles.
    let add =
        |a: [f32; BLOCK], b: [f32; BLOCK]| -> [f32; BLOCK] { std::array::from_fn(|r| a[r] + b[r]) };
    let [l0, l1, l2, l3, l4, l5, l6, l7] = lanes;
    add(add(add(l0, l4), add(l1, l5)), add(add(l2, l6), add(l3, l7)))
}

/// The hot loop. The floor test is inlined here so that the (rare) insertion into
/// `top` stays out of it; with a call per row the scan took twice as long.
#[inline(always)]
fn scan_rows<'a, R>(
    rows: impl Iterator<Item = (R, &'a u64)>,
    min_tick: u64,
    similarity: impl Fn(R) -> f32,
    top: &mut TopK,
) {
    for (slot, (row, &tick)) in rows.enumerate() {
        // Free slots have tick 0 and fail this test too.
        if tick < min_tick {
            continue;
        }
        let similarity = similarity(row);
        if similarity >= top.floor {
            // Slots are below the validated u32 capacity.
            let slot = slot as u32;
            top.push(Hit {
                similarity,
                id: tick,
                slot,
            });
        }
    }
}

/// The exact search behind [`ExactIndex`] and the memory's small-size path.
pub(super) fn search(shared: &Shared, query: &[f32], k: usize) -> Result<SearchResult, KnnError> {
    let scale = query_scale(shared.cfg.dim, query)?;
    let mut neighbors = Vec::new();
    if let Some(scale) = scale
        && k > 0
    {
        let store = shared.store.read();
        let mut top = TopK::new(k);
        scan(&store, query, &mut top);
        neighbors = top.into_neighbors(&store, scale);
    }
    Ok(SearchResult {
        neighbors,
        backend: Backend::Exact,
    })
}

/// The exact scan over a memory's store, as a [`KnnIndex`]: what serves below the
/// crossover, and the oracle for recall.
#[derive(Debug, Clone)]
pub struct ExactIndex {
    shared: Arc<Shared>,
}

impl ExactIndex {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

impl KnnIndex for ExactIndex {
    fn backend(&self) -> Backend {
        Backend::Exact
    }

    fn search(&self, query: &[f32], k: usize) -> Result<SearchResult, KnnError> {
        search(&self.shared, query, k)
    }

    fn len(&self) -> usize {
        self.shared.counters.len()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::Experience;
    use super::*;

    #[test]
    fn kernels_match_naive_sums() {
        for dim in [1usize, 7, 8, 9, 16, 32, 33, 64, 100, 128] {
            let a: Vec<f32> = (0..dim)
                .map(|i| ((i * 7 % 11) as f32 - 5.0) / 3.0)
                .collect();
            let b: Vec<f32> = (0..dim)
                .map(|i| ((i * 5 % 13) as f32 - 6.0) / 4.0)
                .collect();
            let naive_dot: f64 = a
                .iter()
                .zip(&b)
                .map(|(x, y)| f64::from(*x) * f64::from(*y))
                .sum();
            let naive_l2: f64 = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
                .sum();
            assert!(
                (f64::from(dot(&a, &b)) - naive_dot).abs() < 1e-4,
                "dot at dim {dim}"
            );
            assert!(
                (f64::from(squared_l2(&a, &b)) - naive_l2).abs() < 1e-4,
                "l2 at dim {dim}"
            );
        }
    }

    #[test]
    fn block_scores_are_bit_identical_to_the_row_kernel() {
        fn check<const D: usize>() {
            let value = |i: usize| ((i * 2_654_435_761 % 1_000_003) as f32 / 1_000_003.0) - 0.5;
            let q: [f32; D] = std::array::from_fn(|d| value(d + 7));
            let rows: [[f32; D]; BLOCK] =
                std::array::from_fn(|r| std::array::from_fn(|d| value(r * 131 + d)));
            let block: [[f32; BLOCK]; D] =
                std::array::from_fn(|d| std::array::from_fn(|r| rows[r][d]));
            let scores = dot_block(&q, &block);
            for (r, row) in rows.iter().enumerate() {
                assert_eq!(
                    scores[r].to_bits(),
                    dot_fixed(&q, row).to_bits(),
                    "dim {D} row {r}"
                );
            }
        }
        check::<8>();
        check::<16>();
        check::<32>();
        check::<64>();
        check::<128>();
    }

    #[test]
    fn query_checks() {
        assert!(matches!(
            query_scale(3, &[1.0, 0.0]),
            Err(KnnError::DimensionMismatch {
                expected: 3,
                found: 2
            })
        ));
        assert!(matches!(
            query_scale(2, &[f32::NAN, 0.0]),
            Err(KnnError::InvalidQuery { .. })
        ));
        assert_eq!(query_scale(2, &[0.0, 0.0]).ok(), Some(None));
        assert_eq!(query_scale(2, &[3.0, 4.0]).ok(), Some(Some(0.2)));
    }

    /// Values on a coarse grid, so equal similarities (ties) actually occur.
    fn grid(dim: usize) -> impl Strategy<Value = Vec<f32>> {
        prop::collection::vec((-4i8..=4).prop_map(|v| f32::from(v) / 4.0), dim)
            .prop_filter("non-zero", |v| v.iter().any(|x| *x != 0.0))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn scan_matches_brute_force(
            (dim, rows, query) in prop_oneof![1usize..20, Just(32usize), Just(64usize)].prop_flat_map(|dim| (
                Just(dim),
                prop::collection::vec((grid(dim), 0u8..4), 0..120),
                grid(dim),
            )),
            capacity in 1usize..100,
            max_age in 0u64..60,
            k in 0usize..25,
        ) {
            let mut store = Store::new(dim, capacity, max_age);
            let mut evicted = Vec::new();
            for (embedding, p) in rows {
                let exp = Experience { embedding, features: vec![], label: 0, trust: 1.0, priority: f32::from(p), origin: None };
                store.insert(exp, &mut evicted);
                store.expire(&mut evicted);
            }
            let mut top = TopK::new(k);
            scan(&store, &query, &mut top);
            let got: Vec<u64> = top.into_neighbors(&store, 1.0).iter().map(|n| n.id).collect();

            // Brute force: every live row, filtered and sorted independently.
            let clock = store.clock();
            let mut all: Vec<(f32, u64)> = store
                .tail(0)
                .filter(|&(id, _)| max_age == 0 || clock - id <= max_age)
                .map(|(id, slot)| (dot(&query, store.row(slot)), id))
                .collect();
            all.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)));
            let want: Vec<u64> = all.iter().take(k).map(|&(_, id)| id).collect();
            prop_assert_eq!(got, want);
        }
    }
}
