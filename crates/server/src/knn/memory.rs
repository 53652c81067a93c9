//! The [`Memory`] facade: what the engine calls on the request path (`submit`,
//! `search`, `len`, `stats`) and at shutdown (`flush`, `shutdown`).
//!
//! Locks: the store sits behind a `parking_lot::RwLock`, not a std one: no poisoning
//! (a panic elsewhere must not take the memory down), a task-fair policy so the indexer's
//! short per-batch write never starves behind a stream of searches, and a cheap
//! uncontended read. No guard is ever held across an `.await`: every method here is
//! sync. The graph is behind an `ArcSwapOption` so searches load it without a lock and
//! a rebuilt graph is swapped in atomically.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use parking_lot::{Condvar, Mutex, RwLock};

use super::exact::{self, ExactIndex, squared_norm};
use super::hnsw::{self, Graph, HnswIndex};
use super::store::Store;
use super::{Backend, Experience, KnnError, KnnFault, MemoryConfig, SearchResult, indexer};

/// A point-in-time view of the memory's counters (each read atomically on its own).
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryStats {
    /// Live experiences in the store.
    pub len: usize,
    /// The store's bound.
    pub capacity: usize,
    /// Which index serves searches now.
    pub backend: Backend,
    /// Live experiences already in the HNSW graph (0 without a graph).
    pub indexed: usize,
    /// Accepted submissions not yet in the store (still in the queue).
    pub pending: usize,
    /// Evicted experiences still in the graph, which searches skip.
    pub tombstones: usize,
    /// Submissions dropped because the queue was full.
    pub dropped_inserts: u64,
    /// Graphs rebuilt because of tombstones (the first build is not counted).
    pub rebuilds: u64,
    /// The memory's clock: experiences inserted so far (a label that took over its
    /// pseudo-label in place is not a new one).
    pub tick: u64,
    /// Experiences taken into the store as new rows (equal to `tick`, the clock
    /// counts them).
    pub inserted_total: u64,
    /// Experiences evicted for capacity or age (including newcomers whose priority was
    /// the lowest of a full store).
    pub evicted_total: u64,
    /// Times the HNSW graph failed (hnsw_rs panicked) and was dropped; after 3 the
    /// exact scan serves for good.
    pub hnsw_failures: u64,
}

/// The memory's counters, written by the indexer and `submit`, read by `stats`.
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) len: AtomicUsize,
    /// Live rows not yet in the graph (all of them without a graph).
    pub(super) lag: AtomicUsize,
    pub(super) tombstones: AtomicUsize,
    pub(super) accepted: AtomicU64,
    pub(super) applied: AtomicU64,
    pub(super) dropped: AtomicU64,
    pub(super) rebuilds: AtomicU64,
    pub(super) tick: AtomicU64,
    pub(super) evicted: AtomicU64,
    pub(super) hnsw_failures: AtomicU64,
}

impl Counters {
    pub(super) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }
}

/// State shared by the facade, the indexer thread, the build thread and index handles.
pub(super) struct Shared {
    pub(super) cfg: MemoryConfig,
    pub(super) store: RwLock<Store>,
    /// The serving graph, if one has been built.
    pub(super) graph: ArcSwapOption<Graph>,
    pub(super) counters: Counters,
    /// Fails a share of searches with `InjectedFault` (chaos testing; off by default).
    pub(super) fault: KnnFault,
    /// Set by a search that caught an hnsw_rs panic; the indexer retires the graph
    /// (a search must not pay for dropping it).
    pub(super) graph_suspect: AtomicBool,
    /// Set when the keys were recomputed: the graph indexes old keys, so the indexer
    /// retires it (not a failure) and builds a new one.
    pub(super) graph_stale: AtomicBool,
    /// Tells the build thread to give up (shutdown).
    pub(super) stop: AtomicBool,
    /// The indexer signals progress on this pair; `flush` waits on it. A std-style
    /// condvar needs a mutex; it guards nothing else.
    progress: Mutex<()>,
    progress_cv: Condvar,
}

impl Shared {
    /// Wakes everyone waiting in [`Shared::wait_until`].
    pub(super) fn notify_progress(&self) {
        // Taking the lock orders this after a waiter's check: no lost wakeup.
        drop(self.progress.lock());
        self.progress_cv.notify_all();
    }

    /// Waits until `done()` or the timeout; returns `done()`.
    pub(super) fn wait_until(&self, timeout: Duration, done: impl Fn() -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut guard = self.progress.lock();
        while !done() {
            if self
                .progress_cv
                .wait_until(&mut guard, deadline)
                .timed_out()
            {
                return done();
            }
        }
        true
    }

    /// The backend a search would use now.
    fn backend(&self) -> Backend {
        if self.counters.len() >= self.cfg.hnsw_crossover && self.graph.load().is_some() {
            Backend::Hnsw
        } else {
            Backend::Exact
        }
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("cfg", &self.cfg)
            .field("counters", &self.counters)
            .field("graph", &self.graph.load().is_some())
            .finish_non_exhaustive()
    }
}

/// What the submit queue carries to the indexer, in order.
#[derive(Debug)]
pub(super) enum Queued {
    /// An experience; `seq` is its logged update's position, 0 if not logged.
    Insert { exp: Experience, seq: u64 },
    /// Forget all but the newest `keep` experiences (a logged drift marker).
    Forget { keep: u64, seq: u64 },
    /// The log up to `seq` has been applied (a restart's replay, at its end).
    Mark { seq: u64 },
}

/// The k-NN memory: a bounded experience buffer searched by an exact scan or an HNSW
/// graph, fed by a background thread. `Send + Sync`; share it as `Arc<Memory>`.
/// Dropping it (or [`Memory::shutdown`]) stops and joins the indexer.
#[derive(Debug)]
pub struct Memory {
    /// Everything the indexer and the index handles share (tests reach in here).
    pub(super) shared: Arc<Shared>,
    /// The queue's sending side; `None` after shutdown. An `ArcSwapOption` so `submit`
    /// loads it without a lock and `shutdown` can drop it (which lets the indexer
    /// drain the queue and exit) through `&self`.
    tx: ArcSwapOption<SyncSender<Queued>>,
    /// The indexer thread, joined once by `shutdown`.
    indexer: Mutex<Option<JoinHandle<()>>>,
}

impl Memory {
    /// Validates `cfg` and starts the `knn-indexer` thread.
    pub fn new(cfg: MemoryConfig) -> Result<Arc<Memory>, KnnError> {
        cfg.validate()?;
        let (tx, rx) = mpsc::sync_channel(cfg.insert_queue);
        let shared = Arc::new(Shared {
            store: RwLock::new(Store::new(cfg.dim, cfg.capacity, cfg.max_age)),
            cfg,
            graph: ArcSwapOption::empty(),
            counters: Counters::default(),
            fault: KnnFault::default(),
            graph_suspect: AtomicBool::new(false),
            graph_stale: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            progress: Mutex::new(()),
            progress_cv: Condvar::new(),
        });
        let handle = indexer::spawn(shared.clone(), rx)?;
        Ok(Arc::new(Memory {
            shared,
            tx: ArcSwapOption::from_pointee(tx),
            indexer: Mutex::new(Some(handle)),
        }))
    }

    /// Queues `exp` for the indexer. Never blocks: a full queue drops the experience,
    /// counts it, and returns [`KnnError::QueueFull`]. The embedding is checked here
    /// (length, finite, non-zero) so a bad one is refused to its caller.
    pub fn submit(&self, exp: Experience) -> Result<(), KnnError> {
        self.check(&exp)?;
        self.enqueue(Queued::Insert { exp, seq: 0 })
    }

    /// The embedding's length, finiteness and direction, and finite trust and
    /// priority.
    fn check(&self, exp: &Experience) -> Result<(), KnnError> {
        let dim = self.shared.cfg.dim;
        if exp.embedding.len() != dim {
            return Err(KnnError::DimensionMismatch {
                expected: dim,
                found: exp.embedding.len(),
            });
        }
        let norm2 = squared_norm(&exp.embedding);
        if !norm2.is_finite() {
            return Err(KnnError::InvalidExperience {
                reason: "non-finite embedding",
            });
        }
        if norm2 <= f32::MIN_POSITIVE {
            return Err(KnnError::InvalidExperience {
                reason: "zero embedding has no direction",
            });
        }
        if !exp.trust.is_finite() || !exp.priority.is_finite() {
            return Err(KnnError::InvalidExperience {
                reason: "non-finite trust or priority",
            });
        }
        Ok(())
    }

    fn enqueue(&self, item: Queued) -> Result<(), KnnError> {
        let tx = self.tx.load();
        let Some(tx) = tx.as_ref() else {
            return Err(KnnError::ShutDown);
        };
        match tx.try_send(item) {
            Ok(()) => {
                self.shared.counters.accepted.fetch_add(1, Ordering::AcqRel);
                Ok(())
            }
            Err(TrySendError::Full(_)) => {
                self.shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
                Err(KnnError::QueueFull {
                    capacity: self.shared.cfg.insert_queue,
                })
            }
            Err(TrySendError::Disconnected(_)) => Err(KnnError::ShutDown),
        }
    }

    /// The `k` nearest live experiences to `query`, best first, none older than
    /// `max_age`. Sync and lock-light: it never waits for a build or an insert batch.
    /// HNSW serves at and above the crossover once its graph is built; if hnsw_rs
    /// panics, this query falls back to the exact scan and the graph is retired.
    pub fn search(&self, query: &[f32], k: usize) -> Result<SearchResult, KnnError> {
        let shared = &*self.shared;
        if shared.fault.fire() {
            return Err(KnnError::InjectedFault);
        }
        if shared.counters.len() >= shared.cfg.hnsw_crossover
            && let Some(graph) = &*shared.graph.load()
        {
            match hnsw::search(shared, graph, query, k) {
                Err(KnnError::IndexUnavailable { reason }) => {
                    tracing::error!(%reason, "HNSW search failed; answering with the exact scan");
                    shared.graph_suspect.store(true, Ordering::Relaxed);
                }
                answer => return answer,
            }
        }
        exact::search(shared, query, k)
    }

    /// Forgets all but the `keep` most recent experiences: after a detected drift
    /// the older ones describe a concept that no longer holds, and a vote among them
    /// would keep answering for it. Searches skip them from now on.
    pub fn forget_older_than(&self, keep: u64) {
        self.shared.store.write().forget_all_but(keep);
    }

    /// Like [`Memory::submit`], for the logged update `seq`: the memory records the
    /// newest such position it has applied, which its snapshot keeps.
    pub fn submit_logged(&self, exp: Experience, seq: u64) -> Result<(), KnnError> {
        self.check(&exp)?;
        self.enqueue(Queued::Insert { exp, seq })
    }

    /// Records, in order with what is queued before it, that the memory reflects
    /// the log up to `seq`.
    pub fn mark_logged(&self, seq: u64) -> Result<(), KnnError> {
        self.enqueue(Queued::Mark { seq })
    }

    /// [`Memory::forget_older_than`] for the logged drift marker `seq`, in order
    /// with the experiences queued before it. A full queue refuses it (counted as a
    /// dropped insert).
    pub fn forget_logged(&self, keep: u64, seq: u64) -> Result<(), KnnError> {
        self.enqueue(Queued::Forget { keep, seq })
    }

    /// Recomputes every live experience's key from its features with `key`, e.g.
    /// after the standardiser behind input keys moved: old keys and new queries would
    /// otherwise live in different spaces. The exact scan sees the new keys at once;
    /// an HNSW graph is retired and rebuilt. Returns the experiences re-keyed.
    pub fn rekey(&self, key: &dyn Fn(&[f32]) -> Option<Vec<f32>>) -> usize {
        let done = self.shared.store.write().rekey(key);
        self.shared.graph_stale.store(true, Ordering::Relaxed);
        done
    }

    /// Live experiences (one atomic load).
    pub fn len(&self) -> usize {
        self.shared.counters.len()
    }

    /// Whether the memory holds no live experience.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The counters (atomic loads only).
    pub fn stats(&self) -> MemoryStats {
        let c = &self.shared.counters;
        let len = c.len();
        let has_graph = self.shared.graph.load().is_some();
        let accepted = c.accepted.load(Ordering::Relaxed);
        let applied = c.applied.load(Ordering::Relaxed);
        let tick = c.tick.load(Ordering::Relaxed);
        MemoryStats {
            len,
            capacity: self.shared.cfg.capacity,
            backend: self.shared.backend(),
            indexed: if has_graph {
                len.saturating_sub(c.lag.load(Ordering::Relaxed))
            } else {
                0
            },
            pending: usize::try_from(accepted.saturating_sub(applied)).unwrap_or(usize::MAX),
            tombstones: if has_graph {
                c.tombstones.load(Ordering::Relaxed)
            } else {
                0
            },
            dropped_inserts: c.dropped.load(Ordering::Relaxed),
            rebuilds: c.rebuilds.load(Ordering::Relaxed),
            tick,
            inserted_total: tick,
            evicted_total: c.evicted.load(Ordering::Relaxed),
            hnsw_failures: c.hnsw_failures.load(Ordering::Relaxed),
        }
    }

    /// Waits until everything submitted before this call is in the store; true if it
    /// is, false on timeout. For tests and shutdown, never the request path.
    pub fn flush(&self, timeout: Duration) -> bool {
        let c = &self.shared.counters;
        let target = c.accepted.load(Ordering::Acquire);
        self.shared
            .wait_until(timeout, || c.applied.load(Ordering::Acquire) >= target)
    }

    /// Like [`Memory::flush`], and also waits until the backend due at this size
    /// serves every stored experience: at or above the crossover, the graph is built
    /// and has no un-indexed tail. For tests and benches that measure HNSW alone.
    pub fn flush_index(&self, timeout: Duration) -> bool {
        let c = &self.shared.counters;
        let target = c.accepted.load(Ordering::Acquire);
        self.shared.wait_until(timeout, || {
            c.applied.load(Ordering::Acquire) >= target
                && (c.len() < self.shared.cfg.hnsw_crossover
                    || (self.shared.graph.load().is_some() && c.lag.load(Ordering::Acquire) == 0))
        })
    }

    /// Test and chaos hook: makes `rate` (in `[0, 1]`) of the searches return
    /// [`KnnError::InjectedFault`]; 1.0 fails them all, 0.0 none.
    pub fn set_fault_rate(&self, rate: f64) {
        self.shared.fault.set_rate(rate);
    }

    /// The fault switch: its rate and the searches it has failed.
    pub fn fault(&self) -> &KnnFault {
        &self.shared.fault
    }

    /// The exact scan over this memory, as a [`KnnIndex`](super::KnnIndex): the oracle
    /// for recall.
    pub fn exact_index(&self) -> ExactIndex {
        ExactIndex::new(self.shared.clone())
    }

    /// The current HNSW graph over this memory, if one is built (it serves only at and
    /// above the crossover, but can be queried directly to measure it).
    pub fn hnsw_index(&self) -> Option<HnswIndex> {
        self.shared
            .graph
            .load_full()
            .map(|graph| HnswIndex::new(self.shared.clone(), graph))
    }

    /// Up to `n` of the newest experiences' raw features (concatenated) and, for
    /// those a client labelled, the label: the probe set on which a new model version
    /// is compared with the serving one.
    pub fn recent_probe(&self, n: usize) -> (Vec<f32>, Vec<Option<u32>>) {
        self.shared.store.read().recent_probe(n)
    }

    /// Every live experience, oldest first, with unit-length embeddings, and the
    /// log position they reflect (see [`Memory::submit_logged`]), read under one
    /// lock: for memory snapshots. Holds the read lock while copying (about a
    /// millisecond per 50k rows at dim 32), so it is not for the request path.
    pub fn snapshot(&self) -> (Vec<Experience>, u64) {
        let store = self.shared.store.read();
        (store.snapshot(), store.logged_seq())
    }

    /// Stops taking experiences, lets the indexer move everything already queued into
    /// the store, and joins it (and any graph build). Searches keep working. Idempotent;
    /// also run on drop.
    pub fn shutdown(&self) {
        // Dropping the only sender disconnects the queue once it is drained.
        self.tx.store(None);
        let handle = self.indexer.lock().take();
        if let Some(handle) = handle
            && handle.join().is_err()
        {
            tracing::error!("the knn-indexer thread panicked");
        }
    }
}

impl Drop for Memory {
    fn drop(&mut self) {
        self.shutdown();
    }
}
