//! The `knn-indexer` thread: the only writer of the store and of the serving graph.
//!
//! Each turn it (1) drains the submit queue into the store, a bounded batch per
//! write-lock hold, so the store is never more than a few milliseconds behind the
//! queue; (2) swaps in a graph the build thread has finished; (3) feeds the serving
//! graph for one short time slice from the store's un-indexed tail (hnsw_rs inserts are
//! slow, and the tail is scanned exactly meanwhile, so falling behind costs latency,
//! never answers); (4) publishes counters and starts a build when the memory crosses
//! `hnsw_crossover` or tombstones pass `rebuild_tombstone_ratio`.
//!
//! Builds run on their own thread (`knn-hnsw-build`) so draining never waits for one.
//! Retired graphs are dropped here, never on a search thread: dropping a 50k-point
//! graph takes milliseconds.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::KnnError;
use super::hnsw::{self, Graph};
use super::memory::{Queued, Shared};
use super::store::Store;

/// Experiences moved into the store per write-lock hold: about 100 µs of work, so a
/// search never waits long behind a batch.
const MAX_BATCH: usize = 256;
/// How long the thread lets experiences gather after the first wakes it. Waking a
/// parked thread costs the submitter ~10 µs; at a few thousand submits per second
/// this turns one wake per submit into one per millisecond. The vote may therefore
/// miss the last millisecond of experiences, which docs/ARCHITECTURE.md allows.
const COALESCE: Duration = Duration::from_millis(1);
/// How long the thread sleeps on an empty queue with no graph work: bounds how late a
/// finished build is swapped in. New experiences and shutdown wake it at once.
const IDLE_WAIT: Duration = Duration::from_millis(20);
/// Time spent feeding the graph per turn: short, so the queue is drained every few
/// milliseconds; long enough to amortise a lock and a copy per chunk.
const FEED_SLICE: Duration = Duration::from_millis(5);
/// Rows copied from the store per read-lock hold when feeding the graph.
const FEED_CHUNK: usize = 16;
/// Graph failures (hnsw_rs panics) after which HNSW is not built again: the exact scan
/// keeps serving, correct if slower.
const MAX_FAILURES: u64 = 3;
/// Graphs smaller than this are not rebuilt for tombstones; it would gain nothing.
const MIN_REBUILD_POINTS: usize = 64;

/// Starts the thread.
pub(super) fn spawn(shared: Arc<Shared>, rx: Receiver<Queued>) -> Result<JoinHandle<()>, KnnError> {
    let indexer = Indexer {
        shared,
        rx,
        batch: Vec::with_capacity(MAX_BATCH),
        evicted: Vec::new(),
        ids: Vec::with_capacity(FEED_CHUNK),
        rows: Vec::new(),
        build: None,
        graveyard: Vec::new(),
    };
    thread::Builder::new()
        .name("knn-indexer".into())
        .spawn(move || indexer.run())
        .map_err(|source| KnnError::Spawn {
            thread: "knn-indexer",
            source,
        })
}

/// A running graph build.
struct Build {
    handle: JoinHandle<Result<Graph, KnnError>>,
    /// Whether it replaces a graph with too many tombstones (counted in `rebuilds`).
    rebuild: bool,
    /// The memory was re-keyed while it ran: its graph indexes old keys.
    stale: bool,
}

struct Indexer {
    shared: Arc<Shared>,
    rx: Receiver<Queued>,
    /// Scratch buffers, reused every turn.
    batch: Vec<Queued>,
    evicted: Vec<u64>,
    ids: Vec<u64>,
    rows: Vec<f32>,
    build: Option<Build>,
    /// Retired graphs still referenced by a search or an index handle; dropped here
    /// once this thread holds the last reference.
    graveyard: Vec<Arc<Graph>>,
}

impl Indexer {
    fn run(mut self) {
        loop {
            let serving = self.shared.graph.load_full();
            let lagging =
                serving.is_some_and(|g| self.shared.store.read().last_id() >= Some(g.upto()));
            let disconnected = self.drain(if lagging { Duration::ZERO } else { IDLE_WAIT });
            if disconnected {
                break;
            }
            self.adopt_build();
            self.feed_graph();
            self.housekeeping();
            self.shared.notify_progress();
        }
        // Shutdown: everything queued is in the store; stop a build and let go.
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(build) = self.build.take() {
            let _cancelled = build.handle.join();
        }
        self.publish();
        self.shared.notify_progress();
    }

    /// Moves queued experiences into the store, waiting up to `wait` for the first.
    /// Returns true once the queue is disconnected and empty.
    fn drain(&mut self, wait: Duration) -> bool {
        let first = if wait.is_zero() {
            self.rx
                .try_recv()
                .map_err(|e| e == TryRecvError::Disconnected)
        } else {
            self.rx
                .recv_timeout(wait)
                .map_err(|e| e == RecvTimeoutError::Disconnected)
        };
        match first {
            Ok(exp) => {
                self.batch.push(exp);
                if !wait.is_zero() {
                    // Woken from idle: let the burst that woke us gather first.
                    // Submits made while this thread sleeps (rather than blocks in
                    // recv) wake nobody, which is most of their cost on the request path.
                    std::thread::sleep(COALESCE);
                }
            }
            Err(disconnected) => return disconnected,
        }
        loop {
            while self.batch.len() < MAX_BATCH {
                match self.rx.try_recv() {
                    Ok(exp) => self.batch.push(exp),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        self.apply();
                        return true;
                    }
                }
            }
            let full = self.batch.len() == MAX_BATCH;
            self.apply();
            if !full {
                return false;
            }
        }
    }

    /// Inserts the batch into the store under one write-lock hold.
    fn apply(&mut self) {
        let n = self.batch.len() as u64;
        let graph = self.shared.graph.load();
        let mut store = self.shared.store.write();
        for item in self.batch.drain(..) {
            match item {
                Queued::Insert { exp, seq } => {
                    store.insert(exp, &mut self.evicted);
                    store.mark_logged(seq);
                }
                Queued::Forget { keep, seq } => {
                    store.forget_all_but(keep);
                    store.mark_logged(seq);
                }
                Queued::Mark { seq } => store.mark_logged(seq),
            }
        }
        store.expire(&mut self.evicted);
        let c = &self.shared.counters;
        c.len.store(store.len(), Ordering::Relaxed);
        c.tick.store(store.clock(), Ordering::Relaxed);
        c.lag
            .store(lag(&store, graph.as_deref()), Ordering::Release);
        c.evicted
            .fetch_add(self.evicted.len() as u64, Ordering::Relaxed);
        drop(store);
        self.evicted.clear();
        c.applied.fetch_add(n, Ordering::AcqRel);
        self.shared.notify_progress();
    }

    /// Swaps in a finished build.
    fn adopt_build(&mut self) {
        if !self.build.as_ref().is_some_and(|b| b.handle.is_finished()) {
            return;
        }
        let Some(build) = self.build.take() else {
            return;
        };
        let c = &self.shared.counters;
        match build.handle.join() {
            Ok(Ok(_)) if build.stale => {
                tracing::info!("dropping a k-NN graph built on keys since recomputed");
            }
            Ok(Ok(graph)) => {
                tracing::info!(
                    points = graph.points(),
                    rebuild = build.rebuild,
                    "k-NN graph built; swapping it in"
                );
                if let Some(old) = self.shared.graph.swap(Some(Arc::new(graph))) {
                    self.graveyard.push(old);
                }
                if build.rebuild {
                    c.rebuilds.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(Err(e)) => self.failed(&e.to_string()),
            Err(_) => self.failed("the graph build thread panicked"),
        }
    }

    /// Feeds the serving graph from the store's un-indexed tail for one time slice.
    fn feed_graph(&mut self) {
        let Some(graph) = self.shared.graph.load_full() else {
            return;
        };
        let dim = self.shared.cfg.dim;
        let deadline = Instant::now() + FEED_SLICE;
        while Instant::now() < deadline {
            self.ids.clear();
            self.rows.clear();
            self.shared.store.read().copy_tail(
                graph.upto(),
                FEED_CHUNK,
                &mut self.ids,
                &mut self.rows,
            );
            let Some(&last) = self.ids.last() else { return };
            if let Err(e) = graph.insert(dim, &self.ids, &self.rows, last + 1) {
                self.failed(&e.to_string());
                return;
            }
        }
    }

    /// Retires the serving graph after a failure; the exact scan serves meanwhile.
    fn failed(&mut self, reason: &str) {
        let failures = self
            .shared
            .counters
            .hnsw_failures
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        tracing::error!(reason, failures, "k-NN graph failed; the exact scan serves");
        if let Some(old) = self.shared.graph.swap(None) {
            self.graveyard.push(old);
        }
    }

    /// Publishes counters, starts or retires graphs, drops dead ones.
    fn housekeeping(&mut self) {
        if self.shared.graph_suspect.swap(false, Ordering::Relaxed) {
            self.failed("hnsw_rs panicked during a search");
        }
        if self.shared.graph_stale.swap(false, Ordering::Relaxed) {
            if let Some(build) = self.build.as_mut() {
                build.stale = true;
            }
            if let Some(old) = self.shared.graph.swap(None) {
                tracing::info!("the memory was re-keyed; rebuilding the k-NN graph");
                self.graveyard.push(old);
            }
        }
        let (len, tombstones, points) = self.publish();
        let shared = self.shared.clone();
        let cfg = &shared.cfg;
        let has_graph = self.shared.graph.load().is_some();
        let failures = self.shared.counters.hnsw_failures.load(Ordering::Relaxed);
        if self.build.is_none() && failures < MAX_FAILURES {
            let too_dead = points >= MIN_REBUILD_POINTS
                && tombstones as f64 > f64::from(cfg.rebuild_tombstone_ratio) * points as f64;
            if !has_graph && len >= cfg.hnsw_crossover {
                self.start_build(false);
            } else if has_graph && too_dead {
                tracing::info!(
                    tombstones,
                    points,
                    "k-NN graph past its tombstone ratio; rebuilding"
                );
                self.start_build(true);
            }
        }
        // Far below the crossover the graph only costs inserts: let it go. The half
        // keeps a memory hovering at the crossover from building over and over.
        if has_graph && self.build.is_none() && len < cfg.hnsw_crossover / 2 {
            if let Some(old) = self.shared.graph.swap(None) {
                self.graveyard.push(old);
            }
            self.publish();
        }
        self.graveyard.retain(|g| Arc::strong_count(g) > 1);
    }

    /// Recomputes the graph-related counters; returns (len, tombstones, graph points).
    fn publish(&self) -> (usize, usize, usize) {
        let graph = self.shared.graph.load_full();
        let store = self.shared.store.read();
        let len = store.len();
        let lag = lag(&store, graph.as_deref());
        drop(store);
        let points = graph.as_ref().map_or(0, |g| g.points());
        // Live rows in the graph are len − lag; every other point is a tombstone.
        let tombstones = points.saturating_sub(len - lag);
        let c = &self.shared.counters;
        c.lag.store(lag, Ordering::Release);
        c.tombstones.store(tombstones, Ordering::Relaxed);
        (len, tombstones, points)
    }

    fn start_build(&mut self, rebuild: bool) {
        let shared = self.shared.clone();
        let spawned = thread::Builder::new()
            .name("knn-hnsw-build".into())
            .spawn(move || hnsw::build(&shared));
        match spawned {
            Ok(handle) => {
                self.build = Some(Build {
                    handle,
                    rebuild,
                    stale: false,
                })
            }
            Err(e) => self.failed(&format!("cannot spawn the graph build thread: {e}")),
        }
    }
}

/// Live rows of `store` that `graph` does not hold yet (all of them without a graph).
fn lag(store: &Store, graph: Option<&Graph>) -> usize {
    match graph {
        Some(g) => store.tail(g.upto()).count(),
        None => store.len(),
    }
}
