//! The model thread and its adaptive micro-batcher.
//!
//! The model runs on one dedicated OS thread (TEI's backend pattern): candle's CPU
//! kernels are synchronous and would stall tokio's workers, and one owner of the
//! forward pass lets concurrent requests share a batch. Requests arrive on a bounded
//! channel; each carries a oneshot for its reply.
//!
//! Only jobs above `inline_max_rows` come here: a small one runs on the HTTP thread
//! that took it ([`ModelClient::forward`]), since handing it over and back costs
//! more than its forward pass and each HTTP thread has a core of its own.
//!
//! Batching policy: take the first job, drain whatever else is already queued, and
//! wait up to `max_queue_delay_us` for more *only* while other requests are known to
//! be on their way (announced in [`ModelClient::announce`] before validation ends).
//! A lone client on one keep-alive connection therefore never waits, and a crowd
//! fills batches. The batch-size target adapts AIMD-style to `target_latency_us`:
//! a forward pass slower than the target shrinks it by a quarter, a fast full batch
//! grows it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::oneshot;

use crate::config::BatcherConfig;
use crate::model::{Forward, Mlp};

/// The model's answer for one job: its rows of a batched forward pass.
#[derive(Debug)]
pub struct ModelOutput {
    /// `rows * num_classes` softmax probabilities.
    pub probs: Vec<f32>,
    /// `rows * embed_dim` L2-normalised embeddings.
    pub embeddings: Vec<f32>,
    /// Version of the model that answered.
    pub model_version: u64,
    pub num_classes: usize,
    pub embed_dim: usize,
}

/// Why the model thread could not answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BatcherError {
    #[error("the model queue is full ({capacity} requests waiting)")]
    QueueFull { capacity: usize },
    #[error("the model thread has stopped")]
    Stopped,
    #[error("the forward pass failed: {message}")]
    Forward { message: String },
}

struct Job {
    inputs: Vec<f32>,
    rows: usize,
    reply: oneshot::Sender<Result<ModelOutput, BatcherError>>,
}

/// Counters of the batcher, read by `/v1/status` and the metrics.
#[derive(Debug, Default)]
pub struct BatcherStats {
    /// Forward passes run.
    pub batches: AtomicU64,
    /// Rows run through the model.
    pub rows: AtomicU64,
    /// Jobs run inline on the caller's thread (the lone-request fast path).
    pub inline: AtomicU64,
    /// Jobs refused because the queue was full.
    pub rejected: AtomicU64,
    /// Jobs waiting in the queue.
    pub queued: AtomicUsize,
    /// The current adaptive batch-size target.
    pub target_batch: AtomicUsize,
    /// Duration of the last forward pass, in microseconds.
    pub last_forward_us: AtomicU64,
}

/// The request side of the model thread. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ModelClient {
    tx: SyncSender<Job>,
    /// Requests that have announced themselves but not yet been queued: the batcher
    /// waits for company only while this is non-zero.
    incoming: Arc<AtomicUsize>,
    stats: Arc<BatcherStats>,
    capacity: usize,
    /// The serving model, for the inline fast path.
    model: Arc<ArcSwap<Mlp>>,
    /// Jobs of at most this many rows may run inline; 0 disables the fast path.
    inline_max_rows: usize,
}

/// Marks one announced request; dropping it withdraws the announcement. A small
/// job's is empty: it runs inline and the batcher never waits for it.
#[derive(Debug)]
pub struct Announcement {
    incoming: Option<Arc<AtomicUsize>>,
}

impl Drop for Announcement {
    fn drop(&mut self) {
        if let Some(incoming) = &self.incoming {
            incoming.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl ModelClient {
    /// Tells the batcher that a job of `rows` rows is on its way, so that it is
    /// worth waiting for. A job small enough to run inline touches no shared
    /// counter: it would only make both cores' requests write one cache line.
    pub fn announce(&self, rows: usize) -> Announcement {
        if self.can_run_inline(rows) {
            return Announcement { incoming: None };
        }
        self.incoming.fetch_add(1, Ordering::AcqRel);
        Announcement {
            incoming: Some(self.incoming.clone()),
        }
    }

    /// Runs `rows` rows of raw features through the model. Never blocks the caller's
    /// thread: a full queue is an immediate error.
    pub async fn forward(
        &self,
        inputs: Vec<f32>,
        rows: usize,
        announcement: Announcement,
    ) -> Result<ModelOutput, BatcherError> {
        if self.can_run_inline(rows) {
            drop(announcement);
            return self.run_inline(&inputs, rows);
        }
        let (reply, rx) = oneshot::channel();
        let job = Job {
            inputs,
            rows,
            reply,
        };
        self.stats.queued.fetch_add(1, Ordering::AcqRel);
        let sent = self.tx.try_send(job);
        drop(announcement);
        match sent {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.stats.queued.fetch_sub(1, Ordering::AcqRel);
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                return Err(BatcherError::QueueFull {
                    capacity: self.capacity,
                });
            }
            Err(TrySendError::Disconnected(_)) => {
                self.stats.queued.fetch_sub(1, Ordering::AcqRel);
                return Err(BatcherError::Stopped);
            }
        }
        rx.await.map_err(|_| BatcherError::Stopped)?
    }

    /// The fast path: a small job gains nothing from the model thread. The two
    /// thread handoffs (tens of µs each on a VM) cost ten times its forward pass,
    /// and each HTTP thread is a core of its own, so small jobs run where they
    /// arrive even when others are in flight; batching pays off only for big ones.
    fn can_run_inline(&self, rows: usize) -> bool {
        rows <= self.inline_max_rows
    }

    fn run_inline(&self, inputs: &[f32], rows: usize) -> Result<ModelOutput, BatcherError> {
        let model = self.model.load();
        let forward = model
            .forward(inputs, rows)
            .map_err(|e| BatcherError::Forward {
                message: e.to_string(),
            })?;
        self.stats.inline.fetch_add(1, Ordering::Relaxed);
        self.stats.rows.fetch_add(rows as u64, Ordering::Relaxed);
        crate::metrics::record_batch(rows);
        Ok(slice_rows(&forward, 0, rows, model.version()))
    }

    /// The batcher's counters.
    pub fn stats(&self) -> &BatcherStats {
        &self.stats
    }

    /// Bound of the queue.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// Owns the model thread; dropping it closes the queue and joins the thread.
#[derive(Debug)]
pub struct ModelThread {
    client: Option<ModelClient>,
    handle: Option<JoinHandle<()>>,
}

impl ModelThread {
    /// Spawns the model thread serving whatever model `model` holds at each batch, so
    /// that a hot swap takes effect at the next batch while in-flight ones finish.
    pub fn spawn(model: Arc<ArcSwap<Mlp>>, config: BatcherConfig) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel(config.queue_capacity);
        let stats = Arc::new(BatcherStats::default());
        stats.target_batch.store(1, Ordering::Relaxed);
        let incoming = Arc::new(AtomicUsize::new(0));
        let client = ModelClient {
            tx,
            incoming: incoming.clone(),
            stats: stats.clone(),
            capacity: config.queue_capacity,
            model: model.clone(),
            inline_max_rows: config.inline_max_rows,
        };
        let shared = Shared { incoming, stats };
        let handle = std::thread::Builder::new()
            .name("model".into())
            .spawn(move || run(model, rx, config, shared))?;
        Ok(Self {
            client: Some(client),
            handle: Some(handle),
        })
    }

    /// False once the model thread has exited (it only does when its queue closes,
    /// or if it panicked): `/health/ready` then answers 503.
    pub fn is_alive(&self) -> bool {
        self.handle.as_ref().is_some_and(|h| !h.is_finished())
    }

    /// A handle for request handlers.
    pub fn client(&self) -> ModelClient {
        self.client
            .clone()
            .expect("model client taken before drop: this is a bug")
    }
}

impl Drop for ModelThread {
    fn drop(&mut self) {
        // The thread ends by itself once the last client (ours and those held by
        // request handlers) is dropped and the queue drains, so in-flight jobs are
        // still answered. Joining here could wait on a handler that outlives us.
        self.client.take();
        self.handle.take();
    }
}

/// What the model thread shares with its clients.
struct Shared {
    incoming: Arc<AtomicUsize>,
    stats: Arc<BatcherStats>,
}

fn run(model: Arc<ArcSwap<Mlp>>, rx: Receiver<Job>, config: BatcherConfig, shared: Shared) {
    let Shared { incoming, stats } = shared;
    let max_delay = Duration::from_micros(config.max_queue_delay_us);
    let target_latency = Duration::from_micros(config.target_latency_us);
    let mut target = config.max_batch_size.clamp(1, 8);
    let mut batch: Vec<Job> = Vec::with_capacity(config.max_batch_size);
    let idle_spin = Duration::from_micros(config.idle_spin_us);
    while let Some(first) = next_job(&rx, idle_spin) {
        let deadline = Instant::now() + max_delay;
        let mut rows = first.rows;
        batch.push(first);
        loop {
            while rows < target {
                match rx.try_recv() {
                    Ok(job) => {
                        rows += job.rows;
                        batch.push(job);
                    }
                    Err(_) => break,
                }
            }
            let Some(wait) = wait_for_more(
                rows,
                target,
                incoming.load(Ordering::Acquire),
                deadline,
                Instant::now,
            ) else {
                break;
            };
            match rx.recv_timeout(wait) {
                Ok(job) => {
                    rows += job.rows;
                    batch.push(job);
                }
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        stats.queued.fetch_sub(batch.len(), Ordering::AcqRel);

        let started = Instant::now();
        let current = model.load_full();
        run_batch(&current, &mut batch, rows);
        let elapsed = started.elapsed();

        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats.rows.fetch_add(rows as u64, Ordering::Relaxed);
        crate::metrics::record_batch(rows);
        stats
            .last_forward_us
            .store(elapsed.as_micros() as u64, Ordering::Relaxed);
        target = adapt_target(target, rows, elapsed, target_latency, config.max_batch_size);
        stats.target_batch.store(target, Ordering::Relaxed);
    }
}

/// How long the batch may still wait for more jobs: none once it holds `target`
/// rows, while no request is announced (`incoming`, so a lone client never waits),
/// or past `deadline`; else until the deadline. The clock is read (`now`) only when
/// waiting is possible, and is an argument so the rule is tested without waiting.
fn wait_for_more(
    rows: usize,
    target: usize,
    incoming: usize,
    deadline: Instant,
    now: impl FnOnce() -> Instant,
) -> Option<Duration> {
    if rows >= target || incoming == 0 {
        return None;
    }
    let now = now();
    (now < deadline).then(|| deadline - now)
}

/// Waits for the next job: first polling (yielding the core between polls) for up to
/// `spin`, then blocking. Waking a parked thread costs tens of microseconds on a VM,
/// more than a small forward pass, and a client on a keep-alive connection sends its
/// next request within about one round trip; polling briefly catches it awake. The
/// yield keeps the poll cheap for whoever else needs the core. `None` once closed.
fn next_job(rx: &Receiver<Job>, spin: Duration) -> Option<Job> {
    let started = Instant::now();
    loop {
        match rx.try_recv() {
            Ok(job) => return Some(job),
            Err(TryRecvError::Disconnected) => return None,
            Err(TryRecvError::Empty) if started.elapsed() >= spin => return rx.recv().ok(),
            Err(TryRecvError::Empty) => std::thread::yield_now(),
        }
    }
}

/// AIMD on the batch-size target: shrink by a quarter when a pass overruns the
/// latency target, grow by a quarter (at least one) when a full batch ran in time.
pub(crate) fn adapt_target(
    target: usize,
    rows: usize,
    elapsed: Duration,
    target_latency: Duration,
    max: usize,
) -> usize {
    if elapsed > target_latency {
        (target - target / 4).max(1)
    } else if rows >= target {
        (target + (target / 4).max(1)).min(max)
    } else {
        target
    }
}

fn run_batch(model: &Mlp, batch: &mut Vec<Job>, rows: usize) {
    let result = if batch.len() == 1 {
        model.forward(&batch[0].inputs, rows)
    } else {
        let mut inputs = Vec::with_capacity(rows * model.input_dim());
        for job in batch.iter() {
            inputs.extend_from_slice(&job.inputs);
        }
        model.forward(&inputs, rows)
    };
    let version = model.version();
    match result {
        Ok(forward) => {
            let mut row = 0;
            for job in batch.drain(..) {
                let out = slice_rows(&forward, row, job.rows, version);
                row += job.rows;
                let _ = job.reply.send(Ok(out));
            }
        }
        Err(e) => {
            let message = e.to_string();
            tracing::error!(error = %message, rows, "forward pass failed");
            for job in batch.drain(..) {
                let _ = job.reply.send(Err(BatcherError::Forward {
                    message: message.clone(),
                }));
            }
        }
    }
}

fn slice_rows(forward: &Forward, start: usize, rows: usize, version: u64) -> ModelOutput {
    let k = forward.num_classes;
    let e = forward.embed_dim;
    ModelOutput {
        probs: forward.probs[start * k..(start + rows) * k].to_vec(),
        embeddings: forward.embeddings[start * e..(start + rows) * e].to_vec(),
        model_version: version,
        num_classes: k,
        embed_dim: e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_waits_for_announced_company_until_its_deadline() {
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_micros(500);
        let at = |us| move || t0 + Duration::from_micros(us);
        // Others are on their way: wait out what is left of the delay.
        assert_eq!(
            wait_for_more(1, 8, 2, deadline, at(0)),
            Some(Duration::from_micros(500))
        );
        assert_eq!(
            wait_for_more(3, 8, 1, deadline, at(380)),
            Some(Duration::from_micros(120))
        );
        // At or past the deadline: run what there is.
        assert_eq!(wait_for_more(3, 8, 1, deadline, at(500)), None);
        assert_eq!(wait_for_more(3, 8, 1, deadline, at(900)), None);
        // A full batch, or nobody announced, never waits (nor reads the clock).
        let unread = || -> Instant { panic!("the clock was read") };
        assert_eq!(wait_for_more(8, 8, 5, deadline, unread), None);
        assert_eq!(wait_for_more(9, 8, 5, deadline, unread), None);
        assert_eq!(wait_for_more(1, 8, 0, deadline, unread), None);
    }

    #[test]
    fn target_shrinks_on_overrun_and_grows_when_full() {
        let t = Duration::from_micros(1000);
        assert_eq!(adapt_target(16, 16, Duration::from_micros(2000), t, 64), 12);
        assert_eq!(adapt_target(16, 16, Duration::from_micros(500), t, 64), 20);
        assert_eq!(adapt_target(16, 3, Duration::from_micros(500), t, 64), 16);
        assert_eq!(adapt_target(1, 1, Duration::from_micros(5000), t, 64), 1);
        assert_eq!(adapt_target(60, 60, Duration::from_micros(10), t, 64), 64);
    }
}
