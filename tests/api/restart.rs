//! A restart forgets nothing it told a client: request ids never repeat, a label
//! for a prediction answered before a SIGKILL joins that prediction (and only it),
//! and the k-NN memory comes back whole, with or without a snapshot, and past a
//! damaged snapshot or pending log. Real server processes, real signals.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::{Value, json};

use super::crash::{remove_rings, spawn_server_with};
use crate::common::{ADMIN_TOKEN, client, default_model, sample};

/// No worker (the memory and the pending log are what is tested), no expiry in the
/// memory and no forgetting at a drift (every labelled experience stays to be
/// checked; the pipeline's unit tests replay drift markers), no periodic snapshot
/// (only the ones a test asks for), the default pending commit window.
const CONFIG: &str = "[worker]\nenabled = false\n[engine]\ndrift_keep = 0\n\
    [memory]\nmax_age = 0\nsnapshot_interval_secs = 3600\n";

/// Predictions answered at least this long before a SIGKILL must survive it: the
/// pending log's commit window (`wal.pending_commit_ms`, 10 ms) plus scheduling
/// slack for a debug build on two busy cores.
const WINDOW: Duration = Duration::from_millis(300);

struct Server {
    child: Child,
    addr: String,
    http: reqwest::Client,
}

/// A failed assertion must not leave a server running.
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(state: &Path) -> Self {
        let (child, addr) = spawn_server_with(state, CONFIG);
        Self {
            child,
            addr,
            http: client(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn status(&self) -> Value {
        self.http
            .get(self.url("/v1/status"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// One row; returns its request id.
    async fn infer(&self, features: &[f32]) -> u64 {
        let r = self
            .http
            .post(self.url("/v1/infer"))
            .json(&json!({"inputs": [features]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.unwrap();
        body["predictions"][0]["request_id"].as_u64().unwrap()
    }

    /// `POST /v1/feedback`; returns the status code.
    async fn feedback(&self, body: Value) -> u16 {
        let r = self
            .http
            .post(self.url("/v1/feedback"))
            .json(&body)
            .send()
            .await
            .unwrap();
        r.status().as_u16()
    }

    /// Waits until the memory has applied everything it accepted.
    async fn settle(&self) -> Value {
        for _ in 0..400 {
            let s = self.status().await;
            if s["memory"]["pending"] == 0 {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the memory never settled");
    }

    /// `/v1/admin/checkpoint`: the memory snapshot is written.
    async fn checkpoint(&self) {
        let r = self
            .http
            .post(self.url("/v1/admin/checkpoint"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }

    fn kill(mut self) -> u32 {
        let pid = self.child.id();
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        pid
    }

    /// SIGTERM, and the server drains and exits 0.
    fn terminate(mut self) -> u32 {
        let pid = self.child.id();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{status}");
        pid
    }
}

/// The memory as the snapshot on disk has it: (features, label, trust) per experience,
/// sorted, so two memories compare as multisets.
fn memory_on_disk(state: &Path) -> Vec<(Vec<u32>, u32, u32)> {
    let model = adaptserve_core::model::Mlp::load(&default_model()).unwrap();
    let snap = adaptserve_server::knn::snapshot::read(
        &state.join("memory.bin"),
        model.input_dim(),
        model.embed_dim(),
    )
    .unwrap()
    .expect("a snapshot");
    let mut all: Vec<_> = snap
        .experiences
        .iter()
        .map(|e| {
            (
                e.features.iter().map(|f| f.to_bits()).collect(),
                e.label,
                e.trust.to_bits(),
            )
        })
        .collect();
    all.sort();
    all
}

fn bits(features: &[f32]) -> Vec<u32> {
    features.iter().map(|f| f.to_bits()).collect()
}

/// One answered prediction, as the client saw it.
#[derive(Clone)]
struct Answered {
    id: u64,
    t: u64,
    at: Instant,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_for_predictions_answered_before_a_sigkill_join_them_and_ids_never_repeat() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let a = Arc::new(Server::start(&state));

    // Four clients predict rows of the stream until the kill.
    let answered = Arc::new(Mutex::new(Vec::<Answered>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..4u64 {
        let (a, answered, stop) = (a.clone(), answered.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut t = c * 1_000_000;
            while !stop.load(Ordering::Relaxed) {
                let features = sample(t).0;
                let Ok(r) = a
                    .http
                    .post(a.url("/v1/infer"))
                    .json(&json!({"inputs": [features]}))
                    .send()
                    .await
                else {
                    break;
                };
                let Ok(body) = r.json::<Value>().await else {
                    break;
                };
                let id = body["predictions"][0]["request_id"].as_u64().unwrap();
                answered.lock().push(Answered {
                    id,
                    t,
                    at: Instant::now(),
                });
                t += 1;
            }
        }));
    }
    // Some labels come back before the crash (every third prediction so far).
    tokio::time::sleep(Duration::from_millis(700)).await;
    let early: Vec<Answered> = answered.lock().iter().step_by(3).cloned().collect();
    let mut joined_before = HashSet::new();
    for p in &early {
        let code = a
            .feedback(json!({"request_id": p.id, "label": sample(p.t).1}))
            .await;
        assert_eq!(code, 202);
        joined_before.insert(p.id);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let a = Arc::try_unwrap({
        stop.store(true, Ordering::Relaxed);
        for task in tasks.drain(..) {
            // The clients stop on their own; the kill below ends any in flight.
            let _ = tokio::time::timeout(Duration::from_secs(20), task).await;
        }
        a
    })
    .unwrap_or_else(|_| panic!("clients still hold the server"));
    let killed_at = Instant::now();
    let first = a.kill();
    let answered = answered.lock().clone();
    assert!(
        answered.len() > 100,
        "only {} predictions before the kill",
        answered.len()
    );

    let b = Server::start(&state);
    let mut must = 0;
    let mut in_window = (0, 0);
    let mut joined = joined_before.len();
    for p in &answered {
        let code = b
            .feedback(json!({"request_id": p.id, "label": sample(p.t).1}))
            .await;
        if joined_before.contains(&p.id) {
            assert_eq!(code, 404, "prediction {} was joined twice", p.id);
        } else if killed_at.duration_since(p.at) >= WINDOW {
            assert_eq!(code, 202, "prediction {} was forgotten", p.id);
            must += 1;
            joined += 1;
        } else {
            assert!(code == 202 || code == 404, "{code}");
            in_window.0 += usize::from(code == 202);
            in_window.1 += 1;
            joined += usize::from(code == 202);
        }
    }
    assert!(must > 50, "only {must} predictions outside the window");
    let max_before = answered.iter().map(|p| p.id).max().unwrap();
    // A label for an id never handed out is a 404 and joins nothing.
    assert_eq!(
        b.feedback(json!({"request_id": max_before + 5_000_000, "label": 0}))
            .await,
        404
    );
    // New ids after a SIGKILL, and after a graceful restart, are all new.
    let mut after_kill = Vec::new();
    for t in 0..20 {
        after_kill.push(b.infer(&sample(9_000_000 + t).0).await);
    }
    assert!(
        after_kill.iter().all(|id| *id > max_before),
        "{after_kill:?}"
    );
    b.settle().await;
    let second = b.terminate();
    let c = Server::start(&state);
    let after_term = c.infer(&sample(9_500_000).0).await;
    assert!(after_term > *after_kill.iter().max().unwrap());
    // The graceful restart kept the predictions of the run before it too.
    assert_eq!(
        c.feedback(json!({"request_id": after_kill[0], "label": sample(9_000_000).1}))
            .await,
        202
    );
    joined += 1;
    c.settle().await;
    let third = c.terminate();

    // What the memory learned: every client label, each with its own prediction's
    // features and nothing else.
    let truth: HashMap<Vec<u32>, u32> = answered
        .iter()
        .map(|p| p.t)
        .chain([9_000_000])
        .map(|t| {
            let (features, label) = sample(t);
            (bits(&features), label)
        })
        .collect();
    let labelled: Vec<_> = memory_on_disk(&state)
        .into_iter()
        .filter(|e| f32::from_bits(e.2) >= 1.0)
        .collect();
    for (features, label, _) in &labelled {
        assert_eq!(
            truth.get(features),
            Some(label),
            "a label joined features it was not sent for"
        );
    }
    assert_eq!(labelled.len(), joined, "in the window: {in_window:?}");
    remove_rings(&[first, second, third]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_survives_a_sigkill_with_and_without_a_snapshot_and_past_damage() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let a = Server::start(&state);
    let mut pending = Vec::new();
    for t in 0..300u64 {
        let (features, label) = sample(t);
        assert_eq!(
            a.feedback(json!({"features": features, "label": label}))
                .await,
            202
        );
        // Confident answers become pseudo-labels too.
        pending.push((a.infer(&sample(100_000 + t).0).await, 100_000 + t));
    }
    a.settle().await;
    a.checkpoint().await;
    let snapshot = memory_on_disk(&state);
    // 100 more labels after the snapshot: only the WAL has them.
    for t in 300..400u64 {
        let (features, label) = sample(t);
        assert_eq!(
            a.feedback(json!({"features": features, "label": label}))
                .await,
            202
        );
    }
    let before = a.settle().await["experiences"].as_u64().unwrap();
    assert!(before >= 400, "{before}");
    let first = a.kill();

    // With a snapshot: the snapshot plus the WAL after it.
    let b = Server::start(&state);
    let status = b.settle().await;
    assert_eq!(status["experiences"].as_u64().unwrap(), before);
    let recovery = &status["recovery"]["memory"];
    assert_eq!(
        recovery["from_snapshot"].as_u64().unwrap(),
        snapshot.len() as u64
    );
    assert!(recovery["replayed"].as_u64().unwrap() >= 100, "{recovery}");
    b.checkpoint().await;
    let with_snapshot = memory_on_disk(&state);
    let added: Vec<_> = (300..400u64)
        .map(|t| {
            let (features, label) = sample(t);
            (bits(&features), label, 1.0f32.to_bits())
        })
        .collect();
    let mut expected = snapshot.clone();
    expected.extend(added);
    expected.sort();
    assert_eq!(with_snapshot, expected);
    let second = b.kill();

    // Without one: the WAL alone rebuilds the same memory.
    std::fs::remove_file(state.join("memory.bin")).unwrap();
    let c = Server::start(&state);
    let status = c.settle().await;
    assert_eq!(status["experiences"].as_u64().unwrap(), before);
    assert_eq!(status["recovery"]["memory"]["from_snapshot"], 0);
    c.checkpoint().await;
    assert_eq!(memory_on_disk(&state), with_snapshot);
    let third = c.kill();

    // Damage: a corrupt snapshot and a pending log cut mid-record. Both are
    // reported, the memory is rebuilt from the WAL, and the predictions before the
    // damage still join.
    let snap = state.join("memory.bin");
    let mut bytes = std::fs::read(&snap).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&snap, bytes).unwrap();
    let segment = std::fs::read_dir(state.join("pending"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .max()
        .unwrap();
    let len = std::fs::metadata(&segment).unwrap().len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap();
    file.set_len(len - 7).unwrap();
    drop(file);
    let d = Server::start(&state);
    let status = d.settle().await;
    assert_eq!(status["recovery"]["memory"]["snapshot_damaged"], true);
    assert_eq!(status["experiences"].as_u64().unwrap(), before);
    assert!(
        !status["recovery"]["pending"]["repaired"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{status}"
    );
    let (id, t) = pending[0];
    assert_eq!(
        d.feedback(json!({"request_id": id, "label": sample(t).1}))
            .await,
        202
    );
    let experiences = d.settle().await["experiences"].as_u64().unwrap();
    d.checkpoint().await;
    let covered = d.status().await["updates"]["sent"].as_u64().unwrap();
    let fourth = d.kill();

    // A machine crash can take a WAL tail the fsynced snapshot covers: numbering
    // continues after the snapshot's position, never under it.
    std::fs::remove_dir_all(state.join("wal")).unwrap();
    let e = Server::start(&state);
    assert_eq!(
        e.settle().await["experiences"].as_u64().unwrap(),
        experiences
    );
    let (features, label) = sample(500);
    let r = e
        .http
        .post(e.url("/v1/feedback"))
        .json(&json!({"features": features, "label": label}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let seq = r.json::<Value>().await.unwrap()["seq"].as_u64().unwrap();
    assert!(
        seq > covered,
        "seq {seq} reused a number the snapshot covers ({covered})"
    );
    let fifth = e.kill();
    remove_rings(&[first, second, third, fourth, fifth]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_label_in_the_wal_wins_over_a_prediction_the_pending_log_still_holds() {
    use adaptserve_server::engine::{Update, UpdateKind};
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let a = Server::start(&state);
    let (features, label) = sample(7);
    let id = a.infer(&features).await;
    let other = a.infer(&sample(8).0).await;
    a.settle().await;
    let first = a.terminate();
    // A crash between the label's WAL commit and its answered record, written by
    // hand: the label is in the WAL, the pending log still holds the prediction.
    let (mut wal, _) =
        adaptserve_core::wal::Wal::open(adaptserve_core::wal::WalConfig::new(state.join("wal")))
            .unwrap();
    let mut payload = Vec::new();
    adaptserve_server::update::codec::encode(
        &Update {
            kind: UpdateKind::Label,
            features,
            label,
            weight: 1.0,
            model_version: 1,
            origin: Some(id),
            trust: 1.0,
            priority: 1.0,
            key: None,
        },
        &mut payload,
    );
    wal.append(&payload).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let b = Server::start(&state);
    assert_eq!(
        b.feedback(json!({"request_id": id, "label": label})).await,
        404,
        "the prediction was joined twice"
    );
    assert_eq!(
        b.feedback(json!({"request_id": other, "label": sample(8).1}))
            .await,
        202
    );
    let second = b.kill();
    remove_rings(&[first, second]);
}
