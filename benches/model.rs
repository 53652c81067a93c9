//! Forward-pass latency of the default architecture (16 → [64, 32] → 4, ReLU, with a
//! standardiser: the shipped `models/default`), at batch 1 (one request) and 32 (a full micro-batch), for a model
//! loaded from an F16 file and one loaded from an F32 file with the same weights.
//! Both run in f32 after loading, so they should match: the F16 file is a storage
//! saving, not a speed trade.
//!
//! Run with `RAYON_NUM_THREADS=1 cargo bench --bench model`. candle reads that
//! variable on every matmul and tiny matrices are ~15x slower with a 2-thread pool
//! (docs/ARCHITECTURE.md, section 3); if it is unset, this binary re-executes itself with it set, as the
//! server does.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::Path;

use adaptserve_core::model::{Mlp, SaveDtype, init_model};
use criterion::{BenchmarkId, Criterion, Throughput};

fn forward(c: &mut Criterion) {
    let tmp = tempfile::tempdir().expect("temp dir");
    // The shipped model (FP16, with its standardiser); a seeded fresh model of the same
    // shape if models/default has not been generated.
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default");
    let f16_model = Mlp::load(&shipped).unwrap_or_else(|e| {
        eprintln!("{e}; benchmarking a fresh model of the default shape instead");
        let dir = tmp.path().join("fresh");
        init_model(16, 4, &[64, 32], 42, &dir).expect("init_model");
        Mlp::load(&dir).expect("load the fresh model")
    });
    let f32_dir = tmp.path().join("f32");
    f16_model
        .save(&f32_dir, SaveDtype::F32, &BTreeMap::new())
        .expect("save F32");
    let f32_model = Mlp::load(&f32_dir).expect("load F32");

    let stream = adaptserve_lab::simulate::stream::SyntheticStream::new(Default::default());
    let inputs: Vec<f32> = stream.iter(0).take(32).flat_map(|s| s.features).collect();

    let mut group = c.benchmark_group("forward");
    for (name, model) in [("f16_file", &f16_model), ("f32_file", &f32_model)] {
        for rows in [1usize, 32] {
            group.throughput(Throughput::Elements(rows as u64));
            group.bench_with_input(BenchmarkId::new(name, rows), &rows, |b, &rows| {
                let x = &inputs[..rows * 16];
                b.iter(|| model.forward(black_box(x), rows).expect("forward"));
            });
        }
    }
    group.finish();
}

fn main() {
    adaptserve_server::app::ensure_single_threaded_kernels();
    let mut criterion = Criterion::default().configure_from_args();
    forward(&mut criterion);
    criterion.final_summary();
}
