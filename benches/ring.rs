//! Shared-memory ring throughput.
//! - `ring/two_processes`: 64-byte records from this process to a consumer *process*
//!   (this bench binary re-run as a child) that drains the ring; the time runs until
//!   the consumer has taken the last record. The producer retries on Full here, to
//!   measure capacity; the server never retries (it counts the drop).
//! - `ring/same_thread`: a push and a pop on one thread: the protocol's own cost.
//!
//! Run: `cargo bench --bench ring -- --warm-up-time 1 --measurement-time 5`.

use std::hint::black_box;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use adaptserve_core::ipc::{PushError, Ring};
use criterion::{Criterion, Throughput, criterion_group};

const CHILD_ENV: &str = "ADAPTSERVE_RING_BENCH_CHILD";
const PAYLOAD: [u8; 64] = [7; 64];

/// The consumer process: drain until killed.
fn drain(path: &Path) {
    let ring = Arc::new(Ring::open(path).expect("open the ring"));
    let mut consumer = ring.consumer().expect("consumer");
    let mut buf = Vec::with_capacity(64);
    loop {
        match consumer.try_pop(&mut buf) {
            Some(seq) => {
                black_box(seq);
            }
            None => std::hint::spin_loop(),
        }
    }
}

struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn bench_ring(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut group = c.benchmark_group("ring");
    group.throughput(Throughput::Elements(1));

    let path = dir.path().join("bench.ring");
    let ring = Arc::new(Ring::create(&path, 4096, PAYLOAD.len(), 1).expect("create"));
    let _child = ChildGuard(
        Command::new(std::env::current_exe().expect("own path"))
            .env(CHILD_ENV, &path)
            .spawn()
            .expect("spawn the consumer process"),
    );
    let mut producer = ring.producer().expect("producer");
    let mut seq = 0u64;
    group.bench_function("two_processes", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                seq += 1;
                while producer.try_push(seq, &PAYLOAD) == Err(PushError::Full) {
                    std::hint::spin_loop();
                }
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            while ring.depth() > 0 {
                assert!(
                    Instant::now() < deadline,
                    "the consumer process stopped draining"
                );
                std::hint::spin_loop();
            }
            start.elapsed()
        })
    });

    let local =
        Arc::new(Ring::create(&dir.path().join("local.ring"), 4096, 64, 1).expect("create"));
    let mut p = local.producer().expect("producer");
    let mut q = local.consumer().expect("consumer");
    let mut buf = Vec::with_capacity(64);
    let mut s = 0u64;
    group.bench_function("same_thread", |b| {
        b.iter(|| {
            s += 1;
            p.try_push(s, &PAYLOAD).expect("room");
            black_box(q.try_pop(&mut buf))
        })
    });
    group.finish();
}

criterion_group!(benches, bench_ring);

fn main() {
    if let Some(path) = std::env::var_os(CHILD_ENV) {
        drain(Path::new(&path));
        return;
    }
    benches();
    criterion::Criterion::default()
        .configure_from_args()
        .final_summary();
}
