//! Pending predictions shared through Redis (`adaptserve_cluster::pending`): the
//! shipper, and the claim the engine makes for a label by `request_id`.
//!
//! The WAL writer hands each logged pending record to a bounded queue; the shipper
//! drains it in batches of up to [`BATCH`] and ships each batch in one pipelined
//! round trip. While Redis is away the batch waits and the queue fills (what does
//! not fit is counted by the writer as unshared); those predictions still join
//! labels sent to this replica, and once Redis is back, anywhere. The writer also
//! queues an "answered" record for every label joined here, so a label joined here
//! while Redis was away cannot join a second time on another replica afterwards.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use std::time::Duration;

use adaptserve_cluster::link::Retry;
use adaptserve_cluster::pending::{self, Claim};

use super::Replica;
use crate::engine::pending::log::{Record, decode};
use crate::engine::{RemoteClaim, SharedPending};

/// Records shipped per round trip at most.
const BATCH: usize = 256;

pub(super) async fn ship_loop(
    replica: Arc<Replica>,
    mut queue: tokio::sync::mpsc::Receiver<Vec<u8>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut records = Vec::with_capacity(BATCH);
    loop {
        records.clear();
        let got = tokio::select! {
            _ = stop.changed() => return,
            got = queue.recv_many(&mut records, BATCH) => got,
        };
        if got == 0 {
            return;
        }
        let mut batch: Vec<(u64, Vec<u8>)> = Vec::with_capacity(records.len());
        let mut answered = Vec::new();
        for record in records.drain(..) {
            match decode(&record) {
                Ok(Record::Prediction { id, .. }) => batch.push((id, record)),
                Ok(Record::Answered { id }) => answered.push(id),
                Err(_) => {}
            }
        }
        let mut retry = Retry::new(Duration::from_millis(100), Duration::from_secs(2));
        // Kept and retried while Redis is away: the queue behind it (bounded by
        // `cluster.share_queue`) fills meanwhile and the writer counts what it
        // cannot add. So a prediction made during an outage still reaches the
        // other replicas when Redis is back, and its label joins there.
        loop {
            match pending::ship(&replica.link, &batch, &answered, replica.pending_ttl).await {
                Ok(()) => {
                    replica.up();
                    replica
                        .stats
                        .pending_shipped
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    break;
                }
                Err(e) => {
                    replica.down(&e);
                    tokio::select! {
                        _ = stop.changed() => return,
                        () = tokio::time::sleep(retry.next_delay()) => {}
                        // Another part saw Redis answer: ship now, while labels
                        // for these predictions are told to retry (`settling`).
                        () = replica.back.notified() => {}
                    }
                }
            }
        }
    }
}

impl SharedPending for Replica {
    fn claim(&self, request_id: u64) -> Pin<Box<dyn Future<Output = RemoteClaim> + Send + '_>> {
        Box::pin(async move {
            if !self.stats.redis_up.load(Ordering::Relaxed) {
                // Known away: no label waits out a timeout for it. A label joined
                // here meanwhile is marked answered in Redis once it is back.
                self.stats
                    .claims_unreachable
                    .fetch_add(1, Ordering::Relaxed);
                return RemoteClaim::Unreachable;
            }
            let nonce = format!(
                "{}:{}",
                self.id,
                self.claims.fetch_add(1, Ordering::Relaxed)
            );
            match pending::claim(&self.link, request_id, &nonce, self.pending_ttl).await {
                Ok(Claim::Found(record)) => {
                    self.up();
                    match decode(&record) {
                        Ok(Record::Prediction { prediction, .. }) => {
                            self.stats.claims_remote.fetch_add(1, Ordering::Relaxed);
                            RemoteClaim::Found(prediction, nonce)
                        }
                        Ok(Record::Answered { .. }) | Err(_) => {
                            tracing::error!(
                                request_id,
                                "the shared pending record does not decode; treated as absent"
                            );
                            self.release(request_id, nonce);
                            RemoteClaim::Absent
                        }
                    }
                }
                Ok(Claim::Answered) => {
                    self.up();
                    RemoteClaim::Answered
                }
                Ok(Claim::Absent) => {
                    self.up();
                    RemoteClaim::Absent
                }
                Err(e) => {
                    // The script may still run once Redis answers (a stall): the
                    // claim is in doubt and is released then, so that the label,
                    // refused now, can be sent again.
                    self.down(&e);
                    self.stats
                        .claims_unreachable
                        .fetch_add(1, Ordering::Relaxed);
                    self.doubt(request_id, nonce);
                    RemoteClaim::Unreachable
                }
            }
        })
    }

    fn settling(&self) -> bool {
        let last = self.unreachable_ms.load(Ordering::Relaxed);
        last != 0 && crate::update::checkpoints::unix_ms().saturating_sub(last) < super::SETTLE_MS
    }

    fn release(&self, request_id: u64, nonce: String) {
        let link = self.link.clone();
        tokio::spawn(async move {
            if let Err(e) = pending::release(&link, request_id, &nonce).await {
                tracing::warn!(request_id, error = %e, "cannot release a claim");
            }
        });
    }
}

/// Claims in doubt kept at most; past it the oldest is forgotten (counted), and
/// its label, if the claim did run, is answered 404 when sent again.
const DOUBTS: usize = 4096;

impl Replica {
    /// Keeps a claim whose reply never came, to release once Redis answers.
    fn doubt(&self, request_id: u64, nonce: String) {
        let mut doubts = self.doubts.lock();
        if doubts.len() == DOUBTS {
            doubts.pop_front();
            self.stats.doubts_forgotten.fetch_add(1, Ordering::Relaxed);
        }
        doubts.push_back((request_id, nonce));
    }

    /// Releases the claims in doubt; those Redis does not take now wait for the
    /// next call (the heartbeat's, every second).
    pub(super) async fn release_doubts(&self) {
        let doubts: Vec<_> = self.doubts.lock().drain(..).collect();
        for (i, (request_id, nonce)) in doubts.iter().enumerate() {
            if let Err(e) = pending::release(&self.link, *request_id, nonce).await {
                self.down(&e);
                let mut kept = self.doubts.lock();
                for doubt in doubts[i..].iter().rev() {
                    kept.push_front(doubt.clone());
                }
                return;
            }
        }
    }
}
