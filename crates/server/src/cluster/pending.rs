//! Pending predictions shared through Redis (`adaptserve_cluster::pending`): the
//! shipper, and the claim the engine makes for a label by `request_id`.
//!
//! The WAL writer hands each logged pending record to a bounded queue; the shipper
//! drains it in batches of up to [`BATCH`] and ships each batch in one pipelined
//! round trip. While Redis is away a batch is dropped and counted: those
//! predictions still join labels sent to this replica, and a label sent elsewhere
//! is answered 404 (its prediction unknown there) rather than waiting.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

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
        let batch: Vec<(u64, Vec<u8>)> = records
            .drain(..)
            .filter_map(|record| match decode(&record) {
                Ok(Record::Prediction { id, .. }) => Some((id, record)),
                _ => None,
            })
            .collect();
        match pending::ship(&replica.link, &batch, replica.pending_ttl).await {
            Ok(()) => {
                replica.up();
                replica
                    .stats
                    .pending_shipped
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
            }
            Err(e) => {
                replica.down(&e);
                replica
                    .stats
                    .pending_unshipped
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
            }
        }
    }
}

impl SharedPending for Replica {
    fn claim(&self, request_id: u64) -> Pin<Box<dyn Future<Output = RemoteClaim> + Send + '_>> {
        Box::pin(async move {
            match pending::claim(&self.link, request_id, self.pending_ttl).await {
                Ok(Claim::Found(record)) => {
                    self.up();
                    match decode(&record) {
                        Ok(Record::Prediction { prediction, .. }) => {
                            self.stats.claims_remote.fetch_add(1, Ordering::Relaxed);
                            RemoteClaim::Found(prediction, record)
                        }
                        Ok(Record::Answered { .. }) | Err(_) => {
                            tracing::error!(
                                request_id,
                                "the shared pending record does not decode; treated as absent"
                            );
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
                    self.down(&e);
                    self.stats
                        .claims_unreachable
                        .fetch_add(1, Ordering::Relaxed);
                    RemoteClaim::Unreachable
                }
            }
        })
    }

    fn unclaim(&self, request_id: u64, record: Vec<u8>) {
        let (link, ttl) = (self.link.clone(), self.pending_ttl);
        tokio::spawn(async move {
            if let Err(e) = pending::unclaim(&link, request_id, &record, ttl).await {
                tracing::warn!(request_id, error = %e, "cannot put a claimed prediction back");
            }
        });
    }
}
