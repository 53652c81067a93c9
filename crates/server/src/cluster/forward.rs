//! The forwarder: this replica's WAL onto the shared label stream.
//!
//! It is the ring's consumer in place of an update-worker, reading with the same
//! [`Feed`] (the ring, and the WAL for whatever the ring dropped), so every record
//! is offered in sequence order. It runs on its own thread: a feed may read WAL
//! segments from disk, which the async threads never do. Batches go through the
//! append-once script; while Redis is away the batch waits and retries with
//! backoff, the ring fills and drops (counted), and the records wait in the WAL,
//! which keeps everything no published version has learned: bounded by disk, never
//! lost. When Redis answers that it holds less of this replica than was sent
//! (restarted from an older AOF), the feed rewinds to what Redis holds and sends
//! the gap again from the WAL.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use adaptserve_cluster::link::Retry;
use adaptserve_cluster::{Link, labels};
use adaptserve_core::update::codec;
use adaptserve_core::update::feed::Feed;

use super::Replica;
use crate::ipc::Consumer;
use crate::update::checkpoints::unix_ms;
use crate::update::pipeline::Pipeline;

/// How long the idle forwarder sleeps between looks at the ring.
const IDLE: Duration = Duration::from_millis(2);
/// How often an idle forwarder behind the WAL asks Redis how far it got.
const LOOK_EVERY: Duration = Duration::from_secs(1);

pub(super) fn spawn(
    replica: Arc<Replica>,
    link: Link,
    consumer: Consumer,
    wal_dir: PathBuf,
    floor: u64,
    pipeline: Arc<Pipeline>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    let handle = tokio::runtime::Handle::current();
    std::thread::Builder::new()
        .name("forwarder".into())
        .spawn(move || {
            let feed = Feed::new(consumer, wal_dir, floor);
            Forwarder {
                replica,
                link,
                feed,
                pipeline,
                batch: Vec::new(),
                rewound_to: None,
            }
            .run(&handle, stop)
        })
        .map(|_| ())
}

struct Forwarder {
    replica: Arc<Replica>,
    link: Link,
    feed: Feed,
    pipeline: Arc<Pipeline>,
    /// Records taken from the feed, not yet on the stream.
    batch: Vec<(u64, Vec<u8>)>,
    /// The mark the feed last rewound to, so a gap the WAL cannot fill (records
    /// truncated as learned, or never logged here) is sent past, not rewound to
    /// forever.
    rewound_to: Option<u64>,
}

impl Forwarder {
    fn run(mut self, handle: &tokio::runtime::Handle, stop: tokio::sync::watch::Receiver<bool>) {
        let max = self.replica.config.forward_batch;
        let stats = self.replica.stats.clone();
        let mut retry = Retry::new(Duration::from_millis(50), Duration::from_secs(2));
        let mut last_look = Instant::now() - LOOK_EVERY;
        while !*stop.borrow() {
            while self.batch.len() < max {
                match self.feed.next_update() {
                    Ok(Some((seq, update))) => {
                        let mut payload =
                            Vec::with_capacity(codec::encoded_len(update.features.len()));
                        codec::encode(&update, &mut payload);
                        self.batch.push((seq, payload));
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::error!(error = %e, "the forwarder cannot read the WAL");
                        break;
                    }
                }
            }
            let logged = self.pipeline.last_seq();
            let forwarded = stats.forwarded_seq.load(Ordering::Relaxed);
            if logged > forwarded || !self.batch.is_empty() {
                let _ = stats.behind_since_ms.compare_exchange(
                    0,
                    unix_ms(),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            } else {
                stats.behind_since_ms.store(0, Ordering::Relaxed);
            }
            if self.batch.is_empty() {
                // Nothing to send but the WAL is ahead of what is known forwarded
                // (just started, above the serving floor): learn Redis's mark.
                if logged > forwarded && last_look.elapsed() >= LOOK_EVERY {
                    last_look = Instant::now();
                    match handle.block_on(labels::forwarded(&self.link, self.replica.id)) {
                        Ok(held) => {
                            self.replica.up();
                            stats.forwarded_seq.fetch_max(held, Ordering::Relaxed);
                        }
                        Err(e) => self.replica.down(&e),
                    }
                }
                std::thread::sleep(IDLE);
                continue;
            }
            match handle.block_on(self.send()) {
                Ok(()) => {
                    self.replica.up();
                    retry.reset();
                }
                Err(e) => {
                    self.replica.down(&e);
                    std::thread::sleep(retry.next_delay());
                }
            }
        }
    }

    /// Appends the batch (or rewinds on a gap); the batch is cleared once Redis
    /// holds it.
    async fn send(&mut self) -> Result<(), adaptserve_cluster::ClusterError> {
        let stats = &self.replica.stats;
        let first = self.batch[0].0;
        let held = labels::forwarded(&self.link, self.replica.id).await?;
        if held + 1 < first && self.rewound_to != Some(held) {
            // Redis holds less than the feed has passed: send the gap from the WAL.
            tracing::warn!(
                held,
                first,
                "Redis lacks records this replica forwarded; resending them from the WAL"
            );
            stats.resent_gaps.fetch_add(1, Ordering::Relaxed);
            self.feed.rewind(held);
            self.rewound_to = Some(held);
            self.batch.clear();
            return Ok(());
        }
        let appended = labels::append_once(&self.link, self.replica.id, &self.batch).await?;
        stats.forwarded_seq.store(appended.after, Ordering::Relaxed);
        stats
            .forwarded
            .fetch_add(appended.appended, Ordering::Relaxed);
        self.batch.clear();
        Ok(())
    }
}
