//! `infer_and_adapt` in-process, one row per call, at memory sizes 1k/10k/50k.
//!
//! The memory is filled with real embeddings of the synthetic task (the default
//! model's own), so the k-NN index sees realistic structure. The bench re-executes
//! itself with `RAYON_NUM_THREADS=1`, as the server does.
//!
//! Run: `cargo bench --bench engine`; `BENCH_NO_PSEUDO=1` turns pseudo-labels off and
//! `BENCH_NO_LINEAR=1` the linear voter, to measure what each costs.
//!
//! The memory is filled directly, not through labelled feedback, so in the
//! `infer_and_adapt` group the linear voter and the forest have no label yet and
//! abstain. The `voters` group measures them on their own, trained on 5000 labels of
//! the same stream: one vote (the request path) and one label (the feedback path).

use std::sync::Arc;
use std::time::Duration;

use adaptserve_lab::simulate::stream::SyntheticStream;
use adaptserve_server::app::{build_engine, ensure_single_threaded_kernels};
use adaptserve_server::config::Config;
use adaptserve_server::engine::{Engine, ForestVoter, LinearVoter};
use adaptserve_server::knn::Experience;
use criterion::{BenchmarkId, Criterion};

fn engine_with_memory(rt: &tokio::runtime::Runtime, size: usize) -> Arc<Engine> {
    let mut config = Config::default();
    config.server.model =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/default");
    config.memory.capacity = size;
    // The whole memory is searched: no recency window (the default keeps 2000).
    config.memory.max_age = 0;
    config.engine.pseudo_labels = std::env::var_os("BENCH_NO_PSEUDO").is_none();
    config.engine.linear_voter = std::env::var_os("BENCH_NO_LINEAR").is_none();
    let engine = rt.block_on(build_engine(&config)).expect("engine");
    let stream = SyntheticStream::new(Default::default());
    let model = engine.model();
    let dim = model.input_dim();
    let chunk = 1024;
    let mut t = 0u64;
    while engine.memory().len() < size {
        let samples: Vec<_> = (0..chunk).map(|i| stream.sample(t + i as u64)).collect();
        t += chunk as u64;
        let mut flat = Vec::with_capacity(chunk * dim);
        for s in &samples {
            flat.extend_from_slice(&s.features);
        }
        let out = model.forward(&flat, chunk).expect("forward");
        for (i, s) in samples.into_iter().enumerate() {
            let experience = Experience {
                embedding: out.embedding_row(i).to_vec(),
                features: s.features,
                label: s.label,
                trust: 1.0,
                priority: 1.0,
                origin: None,
            };
            // The insert queue is bounded; back off and retry when it is full.
            let mut experience = Some(experience);
            while let Some(e) = experience.take() {
                if engine.memory().submit(e.clone()).is_err() {
                    engine.memory().flush(Duration::from_secs(30));
                    experience = Some(e);
                }
            }
        }
        engine.memory().flush(Duration::from_secs(60));
    }
    engine
}

fn bench_engine(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let stream = SyntheticStream::new(Default::default());
    let mut group = c.benchmark_group("infer_and_adapt");
    for size in [1_000usize, 10_000, 50_000] {
        let engine = engine_with_memory(&rt, size);
        // Let a background HNSW build (above the crossover) finish before measuring.
        std::thread::sleep(Duration::from_millis(200));
        engine.memory().flush(Duration::from_secs(120));
        eprintln!("memory {size}: {:?}", engine.memory().stats());
        // Fresh inputs (never seen by the memory), generated outside the timing.
        let inputs: Vec<Vec<f32>> = (0..4096u64)
            .map(|i| stream.sample(10_000_000 + i).features)
            .collect();
        let mut next = inputs.iter().cycle();
        group.bench_with_input(BenchmarkId::new("memory", size), &size, |b, _| {
            b.iter(|| {
                let x = next.next().expect("cycle never ends").clone();
                rt.block_on(engine.infer_and_adapt(vec![x])).expect("infer")
            })
        });
    }
    group.finish();
}

fn bench_voters(c: &mut Criterion) {
    let stream = SyntheticStream::new(Default::default());
    let first = stream.sample(0);
    let (dim, classes) = (first.features.len(), stream.config().num_classes);
    let forest = ForestVoter::new(dim, classes);
    let linear = LinearVoter::new(dim, classes);
    for t in 0..5000u64 {
        let s = stream.sample(t);
        linear.vote(&s.features);
        linear.learn(&s.features, s.label as usize, true);
        forest.learn(&s.features, s.label as usize);
    }
    let rows: Vec<_> = (0..4096u64)
        .map(|i| stream.sample(10_000_000 + i))
        .collect();
    let mut group = c.benchmark_group("voters");
    let mut next = rows.iter().cycle();
    group.bench_function("forest/vote", |b| {
        b.iter(|| forest.vote(&next.next().expect("cycle").features))
    });
    group.bench_function("forest/learn", |b| {
        b.iter(|| {
            let s = next.next().expect("cycle");
            forest.learn(&s.features, s.label as usize)
        })
    });
    group.bench_function("linear/vote", |b| {
        b.iter(|| linear.vote(&next.next().expect("cycle").features))
    });
    group.bench_function("linear/learn", |b| {
        b.iter(|| {
            let s = next.next().expect("cycle");
            linear.learn(&s.features, s.label as usize, true)
        })
    });
    group.finish();
}

fn main() {
    ensure_single_threaded_kernels();
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .configure_from_args();
    bench_engine(&mut criterion);
    bench_voters(&mut criterion);
    criterion.final_summary();
}
