//! Tests of the whole memory: queue, indexer, backends, rebuilds, recall.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use super::synthetic::clustered;
use super::{Backend, Experience, KnnError, KnnIndex, Memory, MemoryConfig};

/// Generous bound for background work in a debug build on a busy 2-core machine; a
/// test only waits this long when it is about to fail.
const PATIENCE: Duration = Duration::from_secs(120);

fn exp(embedding: Vec<f32>, label: u32, priority: f32) -> Experience {
    Experience {
        embedding,
        features: vec![0.0; 2],
        label,
        trust: 1.0,
        priority,
        origin: None,
    }
}

fn memory(cfg: MemoryConfig) -> Arc<Memory> {
    Memory::new(cfg).expect("valid config")
}

fn ids(m: &dyn KnnIndex, q: &[f32], k: usize) -> Vec<u64> {
    m.search(q, k)
        .expect("search")
        .neighbors
        .iter()
        .map(|n| n.id)
        .collect()
}

/// Mean recall@k of `index` against the exact scan over `queries`.
fn recall(memory: &Memory, index: &dyn KnnIndex, queries: &[Vec<f32>], k: usize) -> f64 {
    let exact = memory.exact_index();
    let mut hit = 0usize;
    for q in queries {
        let truth: HashSet<u64> = ids(&exact, q, k).into_iter().collect();
        hit += ids(index, q, k)
            .iter()
            .filter(|id| truth.contains(id))
            .count();
    }
    hit as f64 / (queries.len() * k) as f64
}

#[test]
fn the_memory_can_be_shared_across_threads() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Memory>();
    shareable::<super::ExactIndex>();
    shareable::<super::HnswIndex>();
}

#[test]
fn search_finds_submitted_experiences_with_ages() {
    let m = memory(MemoryConfig {
        dim: 3,
        ..Default::default()
    });
    for (i, v) in [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 2.0]]
        .into_iter()
        .enumerate()
    {
        m.submit(exp(v.to_vec(), i as u32, 1.0)).expect("queued");
    }
    assert!(m.flush(PATIENCE));
    assert_eq!(m.len(), 3);
    let r = m.search(&[0.0, 0.0, 5.0], 2).expect("search");
    assert_eq!(r.backend, Backend::Exact);
    assert_eq!(r.neighbors.len(), 2);
    let best = r.neighbors[0];
    assert_eq!((best.id, best.label, best.age), (3, 2, 0));
    assert!(
        (best.similarity - 1.0).abs() < 1e-6,
        "cosine, not a raw dot product"
    );
    assert_eq!(r.neighbors[1].similarity, 0.0);
    assert!(
        m.search(&[0.0, 0.0, 1.0], 0)
            .expect("k = 0")
            .neighbors
            .is_empty()
    );
    assert_eq!(
        m.search(&[0.0, 1.0, 0.0], 50)
            .expect("k > len")
            .neighbors
            .len(),
        3
    );
    assert!(
        m.search(&[0.0; 3], 2)
            .expect("zero query")
            .neighbors
            .is_empty()
    );
    let s = m.stats();
    assert_eq!(
        (s.len, s.tick, s.pending, s.backend),
        (3, 3, 0, Backend::Exact)
    );
}

#[test]
fn bad_input_is_refused_not_stored() {
    let m = memory(MemoryConfig {
        dim: 2,
        ..Default::default()
    });
    assert!(matches!(
        m.submit(exp(vec![1.0; 3], 0, 1.0)),
        Err(KnnError::DimensionMismatch {
            expected: 2,
            found: 3
        })
    ));
    assert!(matches!(
        m.submit(exp(vec![0.0, 0.0], 0, 1.0)),
        Err(KnnError::InvalidExperience { .. })
    ));
    assert!(matches!(
        m.submit(exp(vec![f32::NAN, 1.0], 0, 1.0)),
        Err(KnnError::InvalidExperience { .. })
    ));
    assert!(matches!(
        m.submit(exp(vec![1.0, 1.0], 0, f32::INFINITY)),
        Err(KnnError::InvalidExperience { .. })
    ));
    assert!(matches!(
        m.search(&[1.0], 1),
        Err(KnnError::DimensionMismatch { .. })
    ));
    assert!(matches!(
        m.search(&[f32::INFINITY, 0.0], 1),
        Err(KnnError::InvalidQuery { .. })
    ));
    assert!(m.flush(PATIENCE));
    assert_eq!(m.len(), 0);
}

#[test]
fn capacity_and_max_age_bound_what_search_returns() {
    let m = memory(MemoryConfig {
        dim: 2,
        capacity: 50,
        max_age: 10,
        ..Default::default()
    });
    for i in 0..200 {
        m.submit(exp(vec![1.0, i as f32 / 200.0], 0, 1.0))
            .expect("queued");
    }
    assert!(m.flush(PATIENCE));
    let s = m.stats();
    // max_age 10 keeps ticks 190..=200 (ages 10..=0); older ones were evicted.
    assert_eq!((s.len, s.tick, s.evicted_total), (11, 200, 189));
    let r = m.search(&[1.0, 0.0], 100).expect("search");
    assert_eq!(r.neighbors.len(), 11);
    assert!(r.neighbors.iter().all(|n| n.age <= 10 && n.id >= 190));
}

#[test]
fn a_full_queue_drops_and_counts_instead_of_blocking() {
    let m = memory(MemoryConfig {
        dim: 2,
        insert_queue: 4,
        ..Default::default()
    });
    // Hold the store's write lock: the indexer stalls on its first batch (at most a
    // few hundred experiences), then the queue fills and stays full.
    let stall = m.shared.store.write();
    let (done_tx, done_rx) = mpsc::channel();
    let submitter = {
        let m = m.clone();
        thread::spawn(move || {
            let (mut queued, mut full, mut full_in_a_row) = (0usize, 0usize, 0);
            while full_in_a_row < 50 && queued < 100_000 {
                match m.submit(exp(vec![1.0, 0.0], 0, 1.0)) {
                    Ok(()) => (queued, full_in_a_row) = (queued + 1, 0),
                    Err(KnnError::QueueFull { capacity: 4 }) => {
                        (full, full_in_a_row) = (full + 1, full_in_a_row + 1);
                    }
                    Err(e) => panic!("unexpected {e}"),
                }
            }
            done_tx.send((queued, full)).expect("test alive");
        })
    };
    // Watchdog: a blocking submit would never send.
    let (queued, full) = done_rx
        .recv_timeout(PATIENCE)
        .expect("submit blocked on a full queue");
    submitter.join().expect("submitter");
    assert!(full >= 50, "{full} refusals, {queued} queued");
    assert_eq!(m.stats().dropped_inserts, full as u64);
    drop(stall);
    assert!(m.flush(PATIENCE));
    assert_eq!(m.len(), queued);
    assert_eq!(m.stats().pending, 0);
}

#[test]
fn fault_injection_fails_searches_until_cleared() {
    let m = memory(MemoryConfig {
        dim: 2,
        ..Default::default()
    });
    m.submit(exp(vec![1.0, 0.0], 0, 1.0)).expect("queued");
    assert!(m.flush(PATIENCE));
    m.set_fault_rate(1.0);
    assert!(matches!(
        m.search(&[1.0, 0.0], 1),
        Err(KnnError::InjectedFault)
    ));
    m.set_fault_rate(0.0);
    assert_eq!(
        m.search(&[1.0, 0.0], 1).expect("restored").neighbors.len(),
        1
    );
}

#[test]
fn shutdown_drains_the_queue_then_refuses() {
    let m = memory(MemoryConfig {
        dim: 2,
        ..Default::default()
    });
    for _ in 0..100 {
        m.submit(exp(vec![0.5, 0.5], 1, 1.0)).expect("queued");
    }
    m.shutdown();
    assert_eq!(m.len(), 100);
    assert!(matches!(
        m.submit(exp(vec![0.5, 0.5], 1, 1.0)),
        Err(KnnError::ShutDown)
    ));
    assert_eq!(
        m.search(&[1.0, 0.0], 3)
            .expect("search after shutdown")
            .neighbors
            .len(),
        3
    );
    m.shutdown(); // idempotent
}

#[test]
fn hnsw_takes_over_at_the_crossover() {
    let m = memory(MemoryConfig {
        dim: 8,
        hnsw_crossover: 300,
        ..Default::default()
    });
    let data = clustered(400, 8, 10, 0.2, 1);
    for v in &data[..299] {
        m.submit(exp(v.clone(), 0, 1.0)).expect("queued");
    }
    assert!(m.flush_index(PATIENCE));
    assert_eq!(m.stats().backend, Backend::Exact);
    assert!(m.hnsw_index().is_none(), "no graph below the crossover");
    for v in &data[299..] {
        m.submit(exp(v.clone(), 0, 1.0)).expect("queued");
    }
    assert!(m.flush_index(PATIENCE));
    let s = m.stats();
    assert_eq!(
        (s.backend, s.indexed, s.tombstones),
        (Backend::Hnsw, 400, 0)
    );
    assert_eq!(
        m.search(&data[0], 5).expect("search").backend,
        Backend::Hnsw
    );
}

#[test]
fn the_unindexed_tail_is_found() {
    // A graph serves, and an experience that is in the store but not yet in the graph
    // (right after flush(), before the indexer feeds it) must still be found.
    let m = memory(MemoryConfig {
        dim: 8,
        hnsw_crossover: 1,
        ..Default::default()
    });
    let data = clustered(2_000, 8, 20, 0.2, 2);
    for v in &data {
        m.submit(exp(v.clone(), 0, 1.0)).expect("queued");
    }
    assert!(m.flush_index(PATIENCE));
    for (i, v) in clustered(50, 8, 5, 0.5, 3).into_iter().enumerate() {
        m.submit(exp(v.clone(), 7, 1.0)).expect("queued");
        assert!(m.flush(PATIENCE));
        let r = m.search(&v, 1).expect("search");
        assert_eq!(r.backend, Backend::Hnsw);
        assert_eq!(
            r.neighbors[0].id,
            2_001 + i as u64,
            "the newest row is its own nearest"
        );
        assert_eq!(r.neighbors[0].label, 7);
    }
}

#[test]
fn tombstones_are_never_returned_and_a_rebuild_keeps_answers_right() {
    let dim = 16;
    let m = memory(MemoryConfig {
        dim,
        capacity: 1_000,
        hnsw_crossover: 1,
        ..Default::default()
    });
    let mut data = clustered(1_350, dim, 20, 0.25, 4);
    let queries = data.split_off(1_300);
    for v in &data[..1_000] {
        m.submit(exp(v.clone(), 0, 0.5)).expect("queued");
    }
    assert!(m.flush_index(PATIENCE));
    assert_eq!(m.stats().tombstones, 0);
    // 100 higher-priority newcomers evict ids 1..=100: 100 of 1100 points (9%) are
    // tombstones, below the 20% that triggers a rebuild.
    for v in &data[1_000..1_100] {
        m.submit(exp(v.clone(), 1, 0.9)).expect("queued");
    }
    assert!(m.flush_index(PATIENCE));
    let s = m.stats();
    assert_eq!((s.len, s.tombstones, s.rebuilds), (1_000, 100, 0), "{s:?}");
    assert_eq!(m.hnsw_index().expect("graph").graph_points(), 1_100);
    // 200 more evict ids 101..=300: 300 of 1300 points (23%), past 20%.
    for v in &data[1_100..] {
        m.submit(exp(v.clone(), 1, 0.9)).expect("queued");
    }
    assert!(m.flush(PATIENCE));
    let mut saw_tombstones = 0;
    let mut rounds = 0;
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let s = m.stats();
        saw_tombstones += usize::from(s.tombstones > 0);
        for q in queries.iter().chain(&data[..300]) {
            let r = m.search(q, 10).expect("search during the rebuild");
            assert!(
                r.neighbors.iter().all(|n| n.id > 300),
                "a tombstone was returned"
            );
            assert_eq!(r.neighbors.len(), 10);
        }
        assert!(recall(&m, &m.exact_index(), &queries, 10) == 1.0);
        let graph = m.hnsw_index().expect("the old graph serves until the swap");
        assert!(recall(&m, &graph, &queries, 10) >= 0.9);
        rounds += 1;
        if s.rebuilds >= 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no rebuild: {s:?}");
        thread::sleep(Duration::from_millis(5));
    }
    assert!(
        saw_tombstones >= 1,
        "searched {rounds} rounds, never with tombstones present"
    );
    assert!(m.flush_index(PATIENCE));
    let s = m.stats();
    assert_eq!((s.len, s.indexed, s.tombstones), (1_000, 1_000, 0), "{s:?}");
    let graph = m.hnsw_index().expect("rebuilt graph");
    assert_eq!(
        graph.graph_points(),
        1_000,
        "the new graph holds live rows only"
    );
    assert!(recall(&m, &graph, &queries, 10) >= 0.95);
}

/// Recall@10 of HNSW against the exact scan on clustered dim-32 data.
fn check_recall(n: usize) {
    let dim = 32;
    let m = memory(MemoryConfig {
        dim,
        capacity: n,
        // Every point stays searchable: recall, not the window, is measured here.
        max_age: 0,
        hnsw_crossover: 1,
        ..Default::default()
    });
    let mut data = clustered(n + 200, dim, 50, 0.12, 5);
    let queries = data.split_off(n);
    for v in data {
        // A burst larger than the queue outruns the indexer's coalescing sleep: back
        // off on QueueFull (this test is about recall, not the queue's bound).
        while let Err(e) = m.submit(exp(v.clone(), 0, 1.0)) {
            assert!(matches!(e, KnnError::QueueFull { .. }), "{e}");
            assert!(m.flush(PATIENCE));
        }
    }
    assert!(m.flush_index(PATIENCE));
    let graph = m.hnsw_index().expect("graph");
    assert_eq!(graph.graph_points(), n);
    let r = recall(&m, &graph, &queries, 10);
    eprintln!("recall@10 at {n} points: {r:.4}");
    assert!(r >= 0.95, "recall@10 at {n} points: {r}");
}

#[test]
fn hnsw_recall_at_1k_is_at_least_095() {
    check_recall(1_000);
}

#[test]
fn hnsw_recall_at_10k_is_at_least_095() {
    check_recall(10_000);
}

#[test]
fn rekeying_moves_every_key_and_the_graph_is_rebuilt_on_the_new_ones() {
    let dim = 3;
    let m = memory(MemoryConfig {
        dim,
        capacity: 1_000,
        hnsw_crossover: 1,
        ..Default::default()
    });
    // Features (a, b); the old key is (a, b, 1), the new one the mirror (b, a, 1).
    let points: Vec<(f32, f32)> = (0..300)
        .map(|i| ((i as f32 / 10.0).sin(), (i as f32 / 7.0).cos() * 2.0))
        .collect();
    for (i, &(a, b)) in points.iter().enumerate() {
        m.submit(Experience {
            embedding: vec![a, b, 1.0],
            features: vec![a, b],
            label: i as u32 % 3,
            trust: 1.0,
            priority: 1.0,
            origin: None,
        })
        .expect("queued");
    }
    assert!(m.flush_index(PATIENCE));
    let before = m.shared.graph.load_full().expect("a graph at crossover 1");
    assert_eq!(m.rekey(&|f| Some(vec![f[1], f[0], 1.0])), 300);
    // The exact scan sees the new keys at once: the mirrored query finds its point.
    let (a, b) = points[17];
    let hit = m
        .exact_index()
        .search(&[b, a, 1.0], 1)
        .expect("search")
        .neighbors[0];
    assert_eq!(hit.id, 18, "ids are ticks from 1");
    assert!((hit.similarity - 1.0).abs() < 1e-5, "{}", hit.similarity);
    // The graph over the old keys is retired and a new one built.
    let rebuilt = m.shared.wait_until(PATIENCE, || {
        m.shared
            .graph
            .load_full()
            .is_some_and(|g| !Arc::ptr_eq(&g, &before))
    });
    assert!(rebuilt, "the stale graph was replaced");
    assert!(m.flush_index(PATIENCE));
    let queries: Vec<Vec<f32>> = points
        .iter()
        .step_by(7)
        .map(|&(a, b)| vec![b, a, 1.0])
        .collect();
    let hnsw = m.hnsw_index().expect("graph");
    assert!(recall(&m, &hnsw, &queries, 5) >= 0.95);
}

#[test]
fn forgetting_keeps_only_the_most_recent_experiences() {
    let m = memory(MemoryConfig {
        dim: 2,
        capacity: 100,
        ..Default::default()
    });
    for i in 0..50 {
        m.submit(exp(vec![1.0, i as f32 / 50.0], 0, 1.0))
            .expect("queued");
    }
    assert!(m.flush(PATIENCE));
    m.forget_older_than(5);
    // Searches skip the forgotten at once (ticks 46..=50 remain) ...
    let r = m.search(&[1.0, 0.5], 100).expect("search");
    let mut got: Vec<u64> = r.neighbors.iter().map(|n| n.id).collect();
    got.sort_unstable();
    assert_eq!(got, vec![46, 47, 48, 49, 50]);
    // ... and the next insert frees their slots; newcomers are kept.
    m.submit(exp(vec![1.0, 0.0], 1, 1.0)).expect("queued");
    assert!(m.flush(PATIENCE));
    assert_eq!(m.len(), 6);
}
