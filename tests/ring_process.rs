//! The ring across real processes: the consumer is SIGKILLed twice mid-stream and
//! restarted on the same ring, and every update is applied exactly once, in order.
//!
//! The consumer follows the worker's rule — apply `applied + 1` only, skip what is at
//! or below `applied`, read a gap back from the WAL — and keeps its applied log in a
//! file it appends to one line per update (one write(2), which a SIGKILL cannot
//! split). The producer logs every update to a real WAL before pushing it, as the
//! server does, and the ring is small so it fills and drops.
//!
//! `harness = false`: the binary is its own child. Run with
//! `ADAPTSERVE_RING_CHILD=<dir>` it is the consumer; otherwise it is the test.

use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use adaptserve_core::ipc::Ring;
use adaptserve_core::wal::{FsyncPolicy, Wal, WalConfig};

const CHILD_ENV: &str = "ADAPTSERVE_RING_CHILD";
const N: u64 = 200_000;
const PAYLOAD: usize = 64;

fn payload(seq: u64) -> Vec<u8> {
    seq.to_le_bytes().repeat(PAYLOAD / 8)
}

fn main() {
    match std::env::var_os(CHILD_ENV) {
        Some(dir) => consume(Path::new(&dir)),
        None => {
            consumer_killed_mid_stream_loses_and_repeats_nothing();
            println!("test consumer_killed_mid_stream_loses_and_repeats_nothing ... ok");
        }
    }
}

fn read_log(path: &Path) -> Vec<u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| l.parse().expect("the applied log holds whole lines"))
        .collect()
}

/// The consumer's state: its applied log and the ring it reports progress in.
struct Applier {
    ring: Arc<Ring>,
    log: std::fs::File,
    applied: u64,
}

impl Applier {
    fn apply(&mut self, seq: u64, bytes: &[u8]) {
        assert_eq!(seq, self.applied + 1, "applied out of order");
        assert_eq!(bytes, payload(seq), "payload of {seq}");
        self.log
            .write_all(format!("{seq}\n").as_bytes())
            .expect("append to the log");
        self.applied = seq;
        self.ring.set_applied_seq(seq);
    }

    /// Applies `applied + 1 ..= through` from the WAL.
    fn fill_from_wal(&mut self, wal_dir: &Path, through: u64) {
        adaptserve_core::wal::replay(wal_dir, self.applied + 1, |seq, bytes| {
            if seq > through {
                return ControlFlow::Break(());
            }
            if seq == self.applied + 1 {
                self.apply(seq, bytes);
            }
            ControlFlow::Continue(())
        })
        .expect("replay the WAL");
    }
}

/// The child: consume until everything is applied.
fn consume(dir: &Path) {
    let ring = Arc::new(Ring::open(&dir.join("ring")).expect("open the ring"));
    let mut consumer = ring.consumer().expect("consumer");
    let log_path = dir.join("applied.log");
    let applied = read_log(&log_path).last().copied().unwrap_or(0);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .expect("open the applied log");
    let mut state = Applier {
        ring: ring.clone(),
        log,
        applied,
    };
    let wal_dir = dir.join("wal");
    let mut buf = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while state.applied < N {
        assert!(
            Instant::now() < deadline,
            "consumer stalled at {}",
            state.applied
        );
        match consumer.try_pop(&mut buf) {
            Some(seq) if seq <= state.applied => {}
            Some(seq) => {
                if seq > state.applied + 1 {
                    state.fill_from_wal(&wal_dir, seq - 1);
                }
                if seq == state.applied + 1 {
                    state.apply(seq, &buf);
                }
            }
            None => {
                let produced = ring.produced_seq();
                if produced > state.applied {
                    state.fill_from_wal(&wal_dir, produced);
                } else {
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
        }
    }
}

fn spawn_child(dir: &Path) -> Child {
    Command::new(std::env::current_exe().expect("own path"))
        .env(CHILD_ENV, dir)
        .spawn()
        .expect("spawn the consumer")
}

fn wait_applied(ring: &Ring, at_least: u64, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while ring.applied_seq() < at_least {
        assert!(
            Instant::now() < deadline,
            "consumer stuck at {}",
            ring.applied_seq()
        );
        if let Some(status) = child.try_wait().expect("child status") {
            assert!(
                status.success() && ring.applied_seq() >= at_least,
                "consumer exited: {status}"
            );
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn consumer_killed_mid_stream_loses_and_repeats_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let dir_path: PathBuf = dir.path().to_path_buf();
    let (mut wal, _) = Wal::open(WalConfig {
        segment_bytes: 1 << 20,
        fsync: FsyncPolicy::Never,
        ..WalConfig::new(dir.path().join("wal"))
    })
    .expect("open the WAL");
    // Small on purpose: the producer outruns the consumer, so drops and WAL
    // replay are part of what is tested.
    let ring = Arc::new(
        Ring::create(&dir.path().join("ring"), 1024, PAYLOAD, 1).expect("create the ring"),
    );
    let producer_ring = ring.clone();
    let producer = std::thread::spawn(move || {
        let mut p = producer_ring.producer().expect("producer");
        let mut group = Vec::new();
        for seq in 1..=N {
            assert_eq!(wal.append(&payload(seq)).expect("append"), seq);
            group.push(seq);
            if group.len() == 64 || seq == N {
                wal.commit().expect("commit");
                for &s in &group {
                    let _ = p.try_push(s, &payload(s));
                }
                producer_ring.set_produced_seq(seq);
                group.clear();
                // Pace the stream a little so the kills land mid-stream.
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    });

    let mut child = spawn_child(&dir_path);
    wait_applied(&ring, N / 3, &mut child);
    child.kill().expect("SIGKILL the consumer");
    child.wait().expect("reap");
    let mut child = spawn_child(&dir_path);
    wait_applied(&ring, 2 * N / 3, &mut child);
    child.kill().expect("SIGKILL the consumer");
    child.wait().expect("reap");
    let mut child = spawn_child(&dir_path);
    producer.join().expect("producer thread");
    wait_applied(&ring, N, &mut child);
    let status = child.wait().expect("reap");
    assert!(status.success(), "final consumer: {status}");

    let log = read_log(&dir.path().join("applied.log"));
    assert_eq!(log.len() as u64, N, "every update applied exactly once");
    assert!(
        log.iter().copied().eq(1..=N),
        "in order, no gaps, no repeats"
    );
    assert!(
        ring.dropped() > 0,
        "the small ring filled, so the WAL path was exercised"
    );
}
