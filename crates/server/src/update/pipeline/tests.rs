//! The writer thread against a real WAL, ring and memory.

use std::time::Duration;

use super::*;
use crate::engine::pending::log;
use crate::engine::{PendingPrediction, UpdateKind, Votes};
use crate::knn::MemoryConfig;
use crate::wal::{FsyncPolicy, WalConfig};

/// A label without a key (it stays out of the memory).
fn update(i: u32) -> Update {
    Update {
        kind: UpdateKind::Label,
        features: vec![i as f32; 4],
        label: i % 3,
        weight: 1.0,
        model_version: 1,
        origin: None,
        trust: 1.0,
        priority: 1.0,
        key: None,
    }
}

fn memory() -> Arc<Memory> {
    Memory::new(MemoryConfig {
        dim: 2,
        ..Default::default()
    })
    .unwrap()
}

fn pending_log(dir: &std::path::Path) -> (PendingLog, super::super::pending_log::Recovered) {
    PendingLog::open(
        WalConfig {
            fsync: FsyncPolicy::Never,
            ..WalConfig::new(dir.join("pending"))
        },
        Duration::from_millis(5),
        Duration::from_secs(600),
        1000,
    )
    .unwrap()
}

fn start_with(dir: &std::path::Path, ring_slots: usize, memory: Arc<Memory>) -> Pipeline {
    let (wal, _) = Wal::open(WalConfig {
        fsync: FsyncPolicy::Never,
        ..WalConfig::new(dir.join("wal"))
    })
    .unwrap();
    let ring =
        Arc::new(Ring::create(&dir.join("ring"), ring_slots, codec::encoded_len(4), 1).unwrap());
    Pipeline::start(PipelineParts {
        wal,
        pending: pending_log(dir).0,
        ring,
        memory,
        drift_keep: 1,
        memory_floor: 0,
        queue: 64,
        group_max: 16,
        share: None,
    })
    .unwrap()
}

fn start(dir: &std::path::Path, ring_slots: usize) -> Pipeline {
    start_with(dir, ring_slots, memory())
}

#[tokio::test]
async fn acknowledges_in_log_order_then_feeds_the_ring_and_counts_drops() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = start(dir.path(), 4);
    let mut receipts = Vec::new();
    for i in 0..10 {
        receipts.push(pipeline.submit(update(i)).unwrap());
    }
    pipeline.offer(update(10)).unwrap();
    let mut seqs = Vec::new();
    for r in receipts {
        seqs.push(r.await.unwrap().unwrap());
    }
    assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
    assert_eq!(pipeline.barrier().await.unwrap(), 11);
    let ring = pipeline.ring().clone();
    assert_eq!(ring.produced_seq(), 11);
    // Four slots: 1..=4 went through the ring, the rest were counted as drops.
    assert_eq!((ring.depth(), ring.dropped()), (4, 7));
    let mut consumer = ring.consumer().unwrap();
    let mut buf = Vec::new();
    assert_eq!(consumer.try_pop(&mut buf), Some(1));
    assert_eq!(codec::decode(&buf).unwrap(), update(0));
    // The WAL holds all eleven.
    let mut logged = Vec::new();
    crate::wal::replay(&dir.path().join("wal"), 1, |seq, bytes| {
        logged.push((seq, codec::decode(bytes).unwrap()));
        std::ops::ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(logged.len(), 11);
    assert_eq!(logged[10], (11, update(10)));
    let stats = pipeline.stats();
    assert_eq!((stats.sent, stats.dropped), (11, 7));
    assert!(pipeline.wal_bytes() > 0);
}

#[tokio::test]
async fn after_shutdown_updates_are_refused_and_the_log_reopens_complete() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = start(dir.path(), 16);
    for i in 0..5 {
        pipeline.offer(update(i)).unwrap();
    }
    pipeline.flush().await.unwrap();
    pipeline.shutdown().await.unwrap();
    pipeline.shutdown().await.unwrap();
    assert_eq!(pipeline.submit(update(9)).unwrap_err(), SinkError::Closed);
    assert_eq!(pipeline.offer(update(9)).unwrap_err(), SinkError::Closed);
    assert_eq!(pipeline.stats().refused, 1);
    let (wal, _) = Wal::open(WalConfig::new(dir.path().join("wal"))).unwrap();
    assert_eq!(wal.last_seq(), 5);
}

#[tokio::test]
async fn logged_updates_feed_the_memory_in_order_and_labels_answer_their_prediction() {
    let dir = tempfile::tempdir().unwrap();
    let memory = memory();
    let pipeline = start_with(dir.path(), 16, memory.clone());
    let prediction = PendingPrediction {
        features: vec![1.0; 4],
        votes: Votes::model_only(vec![1.0]),
        ..Default::default()
    };
    let keyed = |origin, kind, key: [f32; 2]| Update {
        kind,
        origin: Some(origin),
        key: Some(key.to_vec()),
        trust: if kind == UpdateKind::Label { 1.0 } else { 0.5 },
        ..update(1)
    };
    // Each prediction's record travels with its pseudo-label, in one message.
    for (id, key) in [(7, [1.0, 0.0]), (8, [0.0, 1.0])] {
        let record = log::encode_prediction(id, log::unix_ms(), &prediction);
        assert!(pipeline.remember(record, Some(keyed(id, UpdateKind::Pseudo, key))));
    }
    pipeline.offer(Update::drift(1)).unwrap();
    let seq = pipeline
        .submit(keyed(8, UpdateKind::Label, [0.0, 1.0]))
        .unwrap()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seq, 4);
    assert!(memory.flush(Duration::from_secs(5)));
    let (experiences, logged) = memory.snapshot();
    assert_eq!(logged, 4);
    // The drift kept the newest one (8's pseudo-label), which its label superseded.
    assert_eq!(experiences.len(), 1);
    assert_eq!((experiences[0].trust, experiences[0].origin), (1.0, None));
    // The label was acknowledged after its prediction was marked answered: a
    // restart finds only 7 waiting.
    let (_, recovered) = pending_log(dir.path());
    let ids: Vec<u64> = recovered.predictions.iter().map(|p| p.0).collect();
    assert_eq!(ids, vec![7]);
}

#[tokio::test]
async fn truncation_keeps_what_the_memory_snapshot_does_not_cover() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(WalConfig {
        fsync: FsyncPolicy::Never,
        segment_bytes: 256,
        ..WalConfig::new(dir.path().join("wal"))
    })
    .unwrap();
    let ring =
        Arc::new(Ring::create(&dir.path().join("ring"), 64, codec::encoded_len(4), 1).unwrap());
    let pipeline = Pipeline::start(PipelineParts {
        wal,
        pending: pending_log(dir.path()).0,
        ring,
        memory: memory(),
        drift_keep: 0,
        memory_floor: 0,
        queue: 64,
        group_max: 1,
        share: None,
    })
    .unwrap();
    for i in 0..20 {
        pipeline.submit(update(i)).unwrap().await.unwrap().unwrap();
    }
    pipeline.barrier().await.unwrap();
    let before = pipeline.wal_bytes();
    pipeline.truncate_through(20);
    pipeline.barrier().await.unwrap();
    assert_eq!(pipeline.wal_bytes(), before, "no snapshot covers any of it");
    pipeline.raise_memory_floor(20);
    pipeline.truncate_through(20);
    pipeline.barrier().await.unwrap();
    assert!(pipeline.wal_bytes() < before);
}
