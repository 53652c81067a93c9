//! The ring against a `VecDeque`, its file checks, and the repair a new consumer
//! does after a killed one.

use std::collections::VecDeque;
use std::os::unix::fs::PermissionsExt;

use proptest::prelude::*;

use super::*;

fn ring(dir: &Path, capacity: usize, max_payload: usize) -> Arc<Ring> {
    Arc::new(Ring::create(&dir.join("r.ring"), capacity, max_payload, 7).unwrap())
}

#[test]
fn create_then_open_shares_control_fields_and_records() {
    let dir = tempfile::tempdir().unwrap();
    let a = ring(dir.path(), 5, 40);
    assert_eq!((a.capacity(), a.max_payload(), a.generation()), (8, 40, 7));
    let mode = std::fs::metadata(a.path()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let b = Arc::new(Ring::open(a.path()).unwrap());
    assert_eq!(
        (b.capacity(), b.max_payload(), b.server_pid()),
        (8, 40, std::process::id())
    );
    b.set_worker_pid(42);
    b.set_heartbeat_ms(1234);
    b.set_applied_seq(9);
    b.set_published_version(3);
    a.set_produced_seq(11);
    a.request_sync(10);
    a.request_sync(4);
    assert_eq!(
        (
            a.worker_pid(),
            a.heartbeat_ms(),
            a.applied_seq(),
            a.published_version()
        ),
        (42, 1234, 9, 3)
    );
    assert_eq!(
        (b.produced_seq(), b.sync_target()),
        (11, 10),
        "a sync target never goes down"
    );

    let mut p = a.producer().unwrap();
    assert!(a.producer().is_none(), "one producer per mapping");
    let mut c = b.consumer().unwrap();
    p.try_push(1, b"hello").unwrap();
    assert_eq!(a.depth(), 1);
    let mut buf = Vec::new();
    assert_eq!(c.try_pop(&mut buf), Some(1));
    assert_eq!(buf, b"hello");
    assert_eq!(c.try_pop(&mut buf), None);
    assert_eq!(b.depth(), 0);
}

#[test]
fn open_refuses_what_is_not_a_ring() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x");
    std::fs::write(&path, vec![0u8; 4096]).unwrap();
    assert!(matches!(Ring::open(&path), Err(IpcError::BadMagic { .. })));
    std::fs::write(&path, b"short").unwrap();
    assert!(matches!(Ring::open(&path), Err(IpcError::BadLayout { .. })));
    assert!(matches!(
        Ring::open(&dir.path().join("missing")),
        Err(IpcError::Io { .. })
    ));

    let r = ring(dir.path(), 4, 8);
    // Another layout version.
    let mut bytes = std::fs::read(r.path()).unwrap();
    bytes[8] = 99;
    let other = dir.path().join("v99");
    std::fs::write(&other, &bytes).unwrap();
    assert!(matches!(
        Ring::open(&other),
        Err(IpcError::VersionMismatch { found: 99, .. })
    ));
    // Truncated slots.
    std::fs::write(
        &other,
        &std::fs::read(r.path()).unwrap()[..HEADER_SIZE + 10],
    )
    .unwrap();
    assert!(matches!(
        Ring::open(&other),
        Err(IpcError::BadLayout { .. })
    ));
}

#[test]
fn full_counts_drops_and_oversize_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let r = ring(dir.path(), 2, 8);
    let mut p = r.producer().unwrap();
    p.try_push(1, b"a").unwrap();
    p.try_push(2, b"b").unwrap();
    assert_eq!(p.try_push(3, b"c"), Err(PushError::Full));
    assert_eq!(p.try_push(4, b"d"), Err(PushError::Full));
    assert_eq!(r.dropped(), 2);
    // Slots round up to 64 bytes: 8 asked, 40 usable.
    assert_eq!(
        p.try_push(5, &[0; 41]),
        Err(PushError::TooLarge { len: 41, max: 40 })
    );
    let mut c = r.consumer().unwrap();
    let mut buf = Vec::new();
    assert_eq!(c.try_pop(&mut buf), Some(1));
    p.try_push(6, b"e").unwrap();
    assert_eq!(
        (
            c.try_pop(&mut buf),
            c.try_pop(&mut buf),
            c.try_pop(&mut buf)
        ),
        (Some(2), Some(6), None)
    );
}

#[test]
fn a_new_consumer_repairs_a_slot_freed_without_tail_moving() {
    let dir = tempfile::tempdir().unwrap();
    let r = ring(dir.path(), 4, 8);
    let mut p = r.producer().unwrap();
    for seq in 1..=3 {
        p.try_push(seq, &[seq as u8]).unwrap();
    }
    // A consumer died between freeing slot 0 and storing tail = 1.
    r.slot(0).stamp.store(4, Ordering::Release);
    let other = Arc::new(Ring::open(r.path()).unwrap());
    let mut c = other.consumer().unwrap();
    let mut buf = Vec::new();
    assert_eq!(c.try_pop(&mut buf), Some(2));
    assert_eq!(c.try_pop(&mut buf), Some(3));
    // And the ring keeps wrapping afterwards.
    for seq in 4..=20 {
        p.try_push(seq, &[seq as u8]).unwrap();
        assert_eq!(c.try_pop(&mut buf), Some(seq));
        assert_eq!(buf, [seq as u8]);
    }
}

#[test]
fn a_torn_slot_is_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let r = ring(dir.path(), 4, 8);
    let mut p = r.producer().unwrap();
    p.try_push(1, b"good").unwrap();
    p.try_push(2, b"bad!").unwrap();
    p.try_push(3, b"next").unwrap();
    r.slot(1).crc.fetch_xor(1, Ordering::Relaxed);
    let mut c = r.consumer().unwrap();
    let mut buf = Vec::new();
    assert_eq!(c.try_pop(&mut buf), Some(1));
    assert_eq!(c.try_pop(&mut buf), Some(3));
    assert_eq!(c.corrupt(), 1);
}

#[test]
fn wraps_many_times_between_threads() {
    let dir = tempfile::tempdir().unwrap();
    let r = ring(dir.path(), 64, 16);
    let mut p = r.producer().unwrap();
    let mut c = r.consumer().unwrap();
    const N: u64 = 200_000;
    let consumer = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let mut next = 1;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while next <= N {
            assert!(
                std::time::Instant::now() < deadline,
                "consumer stalled at {next}"
            );
            if let Some(seq) = c.try_pop(&mut buf) {
                assert_eq!(seq, next);
                assert_eq!(buf, seq.to_le_bytes());
                next += 1;
            } else {
                std::hint::spin_loop();
            }
        }
    });
    let mut seq = 1;
    while seq <= N {
        if p.try_push(seq, &seq.to_le_bytes()).is_ok() {
            seq += 1;
        } else {
            std::thread::yield_now();
        }
    }
    consumer.join().unwrap();
}

#[derive(Debug, Clone)]
enum Op {
    Push(usize),
    Pop,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![(0usize..=24).prop_map(Op::Push), Just(Op::Pop)]
}

proptest! {
    /// Any interleaving of pushes and pops behaves like a bounded VecDeque whose
    /// full pushes are counted drops.
    #[test]
    fn behaves_like_a_bounded_deque(capacity in 1usize..9, ops in proptest::collection::vec(op(), 0..300)) {
        let dir = tempfile::tempdir().unwrap();
        let r = ring(dir.path(), capacity, 24);
        let cap = r.capacity();
        let mut p = r.producer().unwrap();
        let mut c = r.consumer().unwrap();
        let mut model: VecDeque<(u64, Vec<u8>)> = VecDeque::new();
        let mut drops = 0u64;
        let mut buf = Vec::new();
        for (i, op) in ops.into_iter().enumerate() {
            let seq = i as u64 + 1;
            match op {
                Op::Push(len) => {
                    let payload: Vec<u8> = (0..len).map(|j| (seq as usize * 31 + j) as u8).collect();
                    let pushed = p.try_push(seq, &payload);
                    if model.len() == cap {
                        prop_assert_eq!(pushed, Err(PushError::Full));
                        drops += 1;
                    } else {
                        prop_assert_eq!(pushed, Ok(()));
                        model.push_back((seq, payload));
                    }
                }
                Op::Pop => {
                    let got = c.try_pop(&mut buf);
                    match model.pop_front() {
                        Some((seq, payload)) => {
                            prop_assert_eq!(got, Some(seq));
                            prop_assert_eq!(&buf, &payload);
                        }
                        None => prop_assert_eq!(got, None),
                    }
                }
            }
            prop_assert_eq!(r.depth(), model.len() as u64);
            prop_assert_eq!(r.dropped(), drops);
        }
    }
}
