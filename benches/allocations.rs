//! Heap allocations per request on the request path, counted by a wrapping global
//! allocator (issue 17's per-request report; BENCHMARKS.md has the figures).
//!
//! The default config and model with a memory of 2000 labelled experiences (the
//! request-path script's setup): one `/v1/infer` row through the engine
//! (`infer_and_adapt`), its JSON body parsed and its reply written as the HTTP
//! layer does, and one `/v1/feedback` by `request_id`. Counts are means over
//! `ROUNDS` calls after a warm-up, so caches and pools have their steady size.
//!
//! Run: `cargo bench --bench allocations` (prints a table; no timing).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use adaptserve_lab::simulate::stream::SyntheticStream;
use adaptserve_server::app::{build_engine, ensure_single_threaded_kernels};
use adaptserve_server::config::Config;
use adaptserve_server::engine::{FeedbackTarget, LabelRef};

/// The system allocator, counting calls and bytes. A global allocator can only be
/// written as an `unsafe impl`: the one `unsafe` here forwards each call unchanged.
struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` above, with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        // SAFETY: as for `alloc`; `ptr` and `layout` are the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

const WARM: usize = 2000;
const ROUNDS: u64 = 2000;

/// Allocations and bytes made by `f`, per call, over `ROUNDS` calls.
fn counted(mut f: impl FnMut(u64)) -> (f64, f64) {
    let (a0, b0) = (
        ALLOCS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    );
    for i in 0..ROUNDS {
        f(i);
    }
    let (a1, b1) = (
        ALLOCS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    );
    (
        (a1 - a0) as f64 / ROUNDS as f64,
        (b1 - b0) as f64 / ROUNDS as f64,
    )
}

/// `/v1/infer`'s body, as the HTTP layer reads it.
#[derive(serde::Deserialize)]
struct InferBody {
    #[allow(dead_code)] // read by serde only
    inputs: Vec<Vec<f32>>,
}

fn main() {
    ensure_single_threaded_kernels();
    // One thread, as an HTTP thread runs its requests (background threads such as
    // the indexer still allocate meanwhile: their share is in the counts).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut config = Config::default();
    config.server.model =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/default");
    let engine = rt.block_on(build_engine(&config)).expect("engine");
    let stream = SyntheticStream::new(Default::default());
    for t in 0..WARM as u64 {
        let s = stream.sample(t);
        rt.block_on(engine.feedback(
            FeedbackTarget::Features(s.features),
            LabelRef::Index(s.label.into()),
        ))
        .expect("a warm-up label");
    }
    engine.memory().flush(Duration::from_secs(60));
    let rows: Vec<Vec<f32>> = (0..ROUNDS)
        .map(|i| stream.sample(1_000_000 + i).features)
        .collect();
    // Warm-up: the same calls once each, outside the counts.
    let mut ids = Vec::with_capacity(ROUNDS as usize * 2);
    for row in &rows {
        let reply = rt
            .block_on(engine.infer_and_adapt(vec![row.clone()]))
            .expect("infer");
        ids.push(reply.predictions[0].request_id);
    }

    let (infer, infer_bytes) = counted(|i| {
        let row = rows[i as usize].clone();
        let reply = rt
            .block_on(engine.infer_and_adapt(vec![row]))
            .expect("infer");
        ids.push(reply.predictions[0].request_id);
    });
    let bodies: Vec<Vec<u8>> = rows
        .iter()
        .map(|r| serde_json::to_vec(&serde_json::json!({ "inputs": [r] })).expect("json"))
        .collect();
    let reply = rt
        .block_on(engine.infer_and_adapt(vec![rows[0].clone()]))
        .expect("infer");
    let (json, json_bytes) = counted(|i| {
        let body: InferBody = serde_json::from_slice(&bodies[i as usize]).expect("parse");
        std::hint::black_box(body);
        std::hint::black_box(serde_json::to_vec(&reply).expect("write"));
    });
    let mut labelled = ids.into_iter().skip(ROUNDS as usize);
    let (feedback, feedback_bytes) = counted(|i| {
        let id = labelled.next().expect("an id per round");
        rt.block_on(engine.feedback(FeedbackTarget::Request(id), LabelRef::Index(i % 4)))
            .expect("feedback");
    });
    println!("allocations per call (mean of {ROUNDS}, memory of {WARM} labelled rows)");
    println!("| call | allocations | bytes |");
    println!("|---|---|---|");
    println!("| `infer_and_adapt`, one row | {infer:.1} | {infer_bytes:.0} |");
    println!("| `/v1/infer` JSON: parse the body, write the reply | {json:.1} | {json_bytes:.0} |");
    println!("| `feedback` by `request_id` | {feedback:.1} | {feedback_bytes:.0} |");
}
