//! k-NN memory benchmarks at dim 32, k 10, on clustered unit vectors (shaped like real
//! embeddings):
//! - `knn_search/{exact,hnsw}/N`: one search at N live experiences. Where HNSW becomes
//!   faster is the crossover behind `MemoryConfig::hnsw_crossover`'s default.
//! - `knn_insert/hnsw`: one experience through the queue into store and graph, at
//!   10k+ points (the per-element time is the indexer's sustained insert rate).
//! - `tombstones/*`: raw hnsw_rs at 10k points with 20% of ids dead: over-fetch and
//!   filter (what the memory does) against `search_filter`.
//!
//! Recall@10 of HNSW against the exact scan and the build rate are printed per size.
//! Run: `cargo bench --bench knn -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use adaptserve_server::knn::{Experience, KnnError, KnnIndex, Memory, MemoryConfig, synthetic};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use hnsw_rs::prelude::{DistL2, Hnsw};

const DIM: usize = 32;
const K: usize = 10;
const SIZES: [usize; 7] = [1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000];
const QUERIES: usize = 200;
/// Long enough for a 100k-point build on a busy machine.
const PATIENCE: Duration = Duration::from_secs(900);

/// `n` unit vectors around 50 random centres (per-coordinate noise 0.12).
fn clustered(n: usize, seed: u64) -> Vec<Vec<f32>> {
    synthetic::clustered(n, DIM, 50, 0.12, seed)
}

fn submit_all(memory: &Memory, data: impl IntoIterator<Item = Vec<f32>>) {
    for embedding in data {
        let exp = Experience {
            embedding,
            features: Vec::new(),
            label: 0,
            trust: 1.0,
            priority: 1.0,
            origin: None,
        };
        while let Err(e) = memory.submit(exp.clone()) {
            // The queue is smaller than a bench load: wait for the indexer.
            assert!(matches!(e, KnnError::QueueFull { .. }), "submit: {e}");
            thread::sleep(Duration::from_micros(200));
        }
    }
}

/// A memory of `n` experiences with its graph fully built, and held-out queries.
fn loaded(n: usize, capacity: usize) -> (Arc<Memory>, Vec<Vec<f32>>) {
    let cfg = MemoryConfig {
        dim: DIM,
        capacity,
        // The figures are of a full memory, every row searchable.
        max_age: 0,
        hnsw_crossover: 1,
        ..MemoryConfig::default()
    };
    let memory = Memory::new(cfg).expect("valid config");
    let mut data = clustered(n + QUERIES, n as u64);
    let queries = data.split_off(n);
    let started = Instant::now();
    submit_all(&memory, data);
    assert!(memory.flush_index(PATIENCE), "graph not built in time");
    let secs = started.elapsed().as_secs_f64();
    println!(
        "knn n={n}: graph built in {secs:.2} s ({:.0} inserts/s)",
        n as f64 / secs
    );
    (memory, queries)
}

fn recall(memory: &Memory, queries: &[Vec<f32>]) -> f64 {
    let exact = memory.exact_index();
    let hnsw = memory.hnsw_index().expect("graph");
    let ids = |index: &dyn KnnIndex, q: &[f32]| -> Vec<u64> {
        index
            .search(q, K)
            .expect("search")
            .neighbors
            .iter()
            .map(|n| n.id)
            .collect()
    };
    let hits: usize = queries
        .iter()
        .map(|q| {
            let truth = ids(&exact, q);
            ids(&hnsw, q).iter().filter(|id| truth.contains(id)).count()
        })
        .sum();
    hits as f64 / (queries.len() * K) as f64
}

fn search(c: &mut Criterion) {
    let mut group = c.benchmark_group("knn_search");
    for n in SIZES {
        let (memory, queries) = loaded(n, n);
        println!(
            "knn n={n}: recall@{K} of HNSW vs exact = {:.4}",
            recall(&memory, &queries)
        );
        let exact = memory.exact_index();
        let hnsw = memory.hnsw_index().expect("graph");
        for (name, index) in [
            ("exact", &exact as &dyn KnnIndex),
            ("hnsw", &hnsw as &dyn KnnIndex),
        ] {
            group.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                let mut i = 0;
                b.iter(|| {
                    i = (i + 1) % queries.len();
                    black_box(index.search(black_box(&queries[i]), K).expect("search"))
                });
            });
        }
    }
    group.finish();
}

/// The exact scan alone (no graph is built): quick to run when only the scan kernel
/// changed. `cargo bench --bench knn -- exact_scan`
fn exact_scan(c: &mut Criterion) {
    let mut group = c.benchmark_group("exact_scan");
    for n in [1_000, 10_000, 50_000] {
        let memory = Memory::new(MemoryConfig {
            dim: DIM,
            capacity: n,
            max_age: 0,
            hnsw_crossover: usize::MAX,
            ..MemoryConfig::default()
        })
        .expect("valid config");
        let mut data = clustered(n + QUERIES, n as u64);
        let queries = data.split_off(n);
        submit_all(&memory, data);
        assert!(memory.flush(PATIENCE), "rows not stored in time");
        let exact = memory.exact_index();
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % queries.len();
                black_box(exact.search(black_box(&queries[i]), K).expect("search"))
            });
        });
    }
    group.finish();
}

fn insert(c: &mut Criterion) {
    // Capacity well above what the bench inserts, so no eviction or rebuild interferes.
    let (memory, _) = loaded(10_000, 1_000_000);
    let mut fresh = clustered(2_000_000, 99).into_iter();
    let mut group = c.benchmark_group("knn_insert");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    group.bench_function("hnsw", |b| {
        b.iter_custom(|iters| {
            let batch: Vec<Vec<f32>> = fresh.by_ref().take(iters as usize).collect();
            let started = Instant::now();
            submit_all(&memory, batch);
            assert!(memory.flush_index(PATIENCE));
            started.elapsed()
        });
    });
    group.finish();
}

fn tombstones(c: &mut Criterion) {
    let n = 10_000;
    let mut data = clustered(n + QUERIES, 7);
    let queries = data.split_off(n);
    let graph: Hnsw<f32, DistL2> = Hnsw::new(16, n, 16, 100, DistL2);
    for (id, v) in data.iter().enumerate() {
        graph.insert_slice((v.as_slice(), id));
    }
    // Every fifth id is dead: 20%, the rebuild threshold.
    let alive: Vec<bool> = (0..n).map(|id| id % 5 != 0).collect();
    let mut group = c.benchmark_group("tombstones");
    group.bench_function("overfetch_filter", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % queries.len();
            let hits = graph.search(black_box(&queries[i]), K * 5 / 4 + 2, 64);
            black_box(hits.iter().filter(|h| alive[h.d_id]).take(K).count())
        });
    });
    group.bench_function("search_filter", |b| {
        let mut i = 0;
        let keep = |id: &usize| alive[*id];
        b.iter(|| {
            i = (i + 1) % queries.len();
            black_box(
                graph
                    .search_filter(black_box(&queries[i]), K, 64, Some(&keep))
                    .len(),
            )
        });
    });
    group.finish();
}

criterion_group!(benches, exact_scan, search, insert, tombstones);
criterion_main!(benches);
