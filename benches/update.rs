//! Update-to-effect: from a labelled feedback to new weights serving.
//!
//! Each iteration sends one labelled example (`POST /v1/feedback`) and then waits on
//! the sync barrier (`POST /v1/admin/sync`), which returns once that update is in the
//! serving weights: WAL append, ring, a training step in the worker process, an FP16
//! checkpoint written and published, the server's load, KL check and swap. A real
//! server on a real socket with a real worker process.
//!
//! The worker binary must exist next to the bench's target dir:
//! `cargo build --release --workspace && cargo bench --bench update`.

use std::time::{Duration, Instant};

use adaptserve_lab::simulate::stream::SyntheticStream;
use adaptserve_server::config::{Config, Secret};
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::{Value, json};

const TOKEN: &str = "bench";

fn bench_update_to_effect(c: &mut Criterion) {
    adaptserve_server::app::ensure_single_threaded_kernels();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let state = tempfile::tempdir().expect("temp dir");
    let mut config = Config::default();
    config.server.model = concat!(env!("CARGO_MANIFEST_DIR"), "/models/default").into();
    config.server.port = 0;
    config.server.state_dir = state.path().to_path_buf();
    config.server.admin_token = Some(Secret::new(TOKEN));
    config.worker.publish_every_ms = 50;
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = rt.spawn(adaptserve_server::app::run(config, listener, async move {
        let _ = stop_rx.await;
    }));
    let http = reqwest::Client::new();
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            assert!(
                Instant::now() < deadline,
                "the worker never started (is target/release/update-worker built?)"
            );
            if let Ok(r) = http.get(format!("{base}/v1/status")).send().await
                && let Ok(s) = r.json::<Value>().await
                && s["worker"]["state"] == "running"
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let stream = SyntheticStream::new(Default::default());
    let mut t = 0u64;
    let mut group = c.benchmark_group("update_to_effect");
    group.sample_size(30);
    group.bench_function("feedback_then_sync", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let s = stream.sample(t);
                    t += 1;
                    let start = Instant::now();
                    let r = http
                        .post(format!("{base}/v1/feedback"))
                        .json(&json!({"features": s.features, "label": s.label}))
                        .send()
                        .await
                        .expect("feedback");
                    assert_eq!(r.status(), 202);
                    let r = http
                        .post(format!("{base}/v1/admin/sync"))
                        .bearer_auth(TOKEN)
                        .send()
                        .await
                        .expect("sync");
                    assert_eq!(r.status(), 200, "{:?}", r.text().await);
                    total += start.elapsed();
                }
                total
            })
        })
    });
    group.finish();
    let _ = stop_tx.send(());
    let _ = rt.block_on(server);
}

criterion_group!(benches, bench_update_to_effect);
criterion_main!(benches);
