//! The update path end to end: a real update-worker process learning from feedback,
//! the sync barrier, hot swaps, KL rejection, rollback, restart on the same state
//! dir, and the admin token.

use std::time::Duration;

use adaptserve::config::{FreshModel, KeyChoice};
use serde_json::{Value, json};

use crate::common::{ADMIN_TOKEN, TestServer, client, sample};

/// Sends a labelled example and returns its sequence number.
async fn feedback(server: &TestServer, t: u64) -> u64 {
    let (features, label) = sample(t);
    let r = client()
        .post(server.url("/v1/feedback"))
        .json(&json!({"features": features, "label": label}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    r.json::<Value>().await.unwrap()["seq"].as_u64().unwrap()
}

/// A fresh model for the synthetic task: it starts knowing nothing.
fn fresh_model(dir: &std::path::Path) -> std::path::PathBuf {
    let out = dir.join("fresh");
    adaptserve::model::init_model(16, 4, &[64], 5, &out).unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_need_the_token() {
    let server = TestServer::start().await;
    let url = server.url("/v1/admin/sync");
    let r = client().post(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error_type"], "unauthorized");
    let r = client()
        .post(&url)
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = client()
        .post(server.url("/v1/admin/rollback"))
        .header("authorization", format!("Basic {ADMIN_TOKEN}"))
        .json(&json!({"version": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "only a bearer token counts");
    server.stop().await.unwrap();

    let closed = TestServer::start_with(|c| c.server.admin_token = None).await;
    let r = client()
        .post(closed.url("/v1/admin/checkpoint"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "no token configured: admin is closed");
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("no admin token"),
        "{body}"
    );
    closed.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_model_learns_from_a_stream_of_labels() {
    let dir = tempfile::tempdir().unwrap();
    let model = fresh_model(dir.path());
    let state = dir.path().join("state");
    let server = TestServer::start_at(&state, |c| {
        c.server.model = model;
        c.worker.publish_every_ms = 200;
        // The model is random at first: keep its own guesses out of its training
        // and the vote, so what is measured is learning from labels.
        c.engine.pseudo_labels = false;
    })
    .await;
    let start = server.wait_worker().await;
    let v0 = start["model_version"].as_u64().unwrap();
    let http = client();
    let mut hits = Vec::new();
    let mut last_seq = 0;
    for t in 0..4_000u64 {
        let (features, label) = sample(t);
        let reply = server.infer(json!([features])).await;
        let p = &reply["predictions"][0];
        hits.push(p["label"].as_u64() == Some(u64::from(label)));
        let r: Value = http
            .post(server.url("/v1/feedback"))
            .json(&json!({"request_id": p["request_id"], "label": label}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        last_seq = r["seq"].as_u64().unwrap();
    }
    let synced = server.sync().await;
    let status = server.status().await;
    assert_eq!(status["updates"]["sent"], last_seq);
    assert_eq!(
        status["updates"]["applied"], status["updates"]["sent"],
        "{status}"
    );
    assert!(synced["model_version"].as_u64().unwrap() > v0, "{synced}");
    assert_eq!(status["model_version"], synced["model_version"]);
    let accuracy = |h: &[bool]| h.iter().filter(|&&x| x).count() as f64 / h.len() as f64;
    let (first, early, last) = (
        accuracy(&hits[..100]),
        accuracy(&hits[..500]),
        accuracy(&hits[3_000..]),
    );
    eprintln!(
        "learning from scratch: first 100 {first:.3}, first 500 {early:.3}, last 1000 {last:.3}, versions {v0} → {}, swaps {}",
        synced["model_version"], status["swaps"]
    );
    // An untrained model lets its neighbours and the linear voter vote from the first
    // label, so even the first 500 answers are well above chance (0.25); the served
    // answers still improve as the memory fills and the weights learn.
    assert!(
        early > 0.4 && last > first + 0.05 && last >= early && last > 0.85,
        "accuracy of the first 100 {first:.3}, of the first 500 {early:.3}, of the last 1000 {last:.3}"
    );
    assert!(
        status["swaps"]["swapped"].as_u64().unwrap() >= 1,
        "{status}"
    );
    server.stop().await.unwrap();

    // The weights themselves learned, not only the k-NN memory: the model alone,
    // before and after, on 500 samples it never saw.
    let store = adaptserve::update::Checkpoints::new(state.join("checkpoints"));
    let model_accuracy = |version: u64| {
        // The first version was pruned (five are kept); it is the fresh model.
        let m = if version == v0 {
            adaptserve::model::Mlp::load(&dir.path().join("fresh")).unwrap()
        } else {
            store.load(version).unwrap()
        };
        let hits = (10_000..10_500u64)
            .filter(|&t| {
                let (x, y) = sample(t);
                let p = m.forward(&x, 1).unwrap();
                let row = p.probs_row(0);
                let best = (0..row.len())
                    .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                    .unwrap();
                best == y as usize
            })
            .count();
        hits as f64 / 500.0
    };
    let trained = synced["model_version"].as_u64().unwrap();
    let (before, after) = (model_accuracy(v0), model_accuracy(trained));
    eprintln!("model alone on unseen samples: v{v0} {before:.3}, v{trained} {after:.3}");
    assert!(
        after > before + 0.2,
        "model alone: {before:.3} → {after:.3}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_serves_the_same_version_memory_and_log() {
    let state = tempfile::tempdir().unwrap();
    let server = TestServer::start_at(state.path(), |c| c.worker.publish_every_ms = 100).await;
    server.wait_worker().await;
    for t in 0..300 {
        feedback(&server, t).await;
    }
    server.sync().await;
    let before = server.status().await;
    server.stop().await.unwrap();
    assert!(state.path().join("memory.bin").exists());

    let again = TestServer::start_at(state.path(), |_| {}).await;
    let after = again.status().await;
    assert_eq!(after["model_version"], before["model_version"], "{after}");
    assert_eq!(after["experiences"], before["experiences"]);
    assert_eq!(after["updates"]["sent"], before["updates"]["sent"]);
    assert_eq!(
        after["mode"], "normal",
        "300 labels are past the cold start"
    );
    let seq = feedback(&again, 300).await;
    assert_eq!(
        seq,
        before["updates"]["sent"].as_u64().unwrap() + 1,
        "sequence numbers continue"
    );
    again.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_logged_while_the_worker_is_off_are_applied_after_restart() {
    let state = tempfile::tempdir().unwrap();
    let off = TestServer::start_at(state.path(), |c| c.worker.enabled = false).await;
    for t in 0..200 {
        feedback(&off, t).await;
    }
    let (code, body) = off.admin("/v1/admin/sync", json!({})).await;
    assert_eq!(code, 409, "no worker to sync with: {body}");
    assert_eq!(off.status().await["worker"]["state"], "disabled");
    off.stop().await.unwrap();

    let on = TestServer::start_at(state.path(), |c| c.worker.publish_every_ms = 100).await;
    let synced = on.sync().await;
    assert_eq!(synced["applied_seq"], 200, "{synced}");
    let status = on.status().await;
    assert_eq!(status["updates"]["applied"], 200, "{status}");
    assert!(status["model_version"].as_u64().unwrap() > 1);
    on.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_is_restarted_and_loses_nothing() {
    let server = TestServer::start_with(|c| {
        c.worker.publish_every_ms = 100;
        c.worker.train_batch = 8;
    })
    .await;
    let first = server.wait_worker().await;
    let pid = first["worker"]["pid"].as_u64().unwrap() as i32;
    let mut last = 0;
    for t in 0..600 {
        last = feedback(&server, t).await;
        if t == 300 {
            // Mid-stream, mid-batch: the worker is busy with the first 300.
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            )
            .unwrap();
        }
    }
    let synced = server.sync().await;
    assert_eq!(synced["applied_seq"], last, "{synced}");
    let status = server.status().await;
    assert!(
        status["worker"]["restarts"].as_u64().unwrap() >= 1,
        "{status}"
    );
    assert_ne!(status["worker"]["pid"].as_u64().unwrap() as i32, pid);
    assert_eq!(status["updates"]["applied"], status["updates"]["sent"]);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_that_moves_too_far_is_rejected() {
    let server = TestServer::start_with(|c| {
        c.worker.publish_every_ms = 100;
        // Any change at all is too far, and every answer becomes a pseudo-label:
        // the worker learns from the server's own guesses, with no client label to
        // show that the move is learning.
        c.swap.kl_reject_threshold = 1e-12;
        c.engine.confidence_threshold = 0.0;
    })
    .await;
    let v0 = server.wait_worker().await["model_version"].clone();
    for t in 0..400 {
        let (features, _) = sample(t);
        server.infer(json!([features])).await;
    }
    // The barrier still completes: the rejected updates are settled, not lost.
    let synced = server.sync().await;
    assert_eq!(synced["model_version"], v0, "{synced}");
    let status = server.status().await;
    assert!(
        status["updates"]["sent"].as_u64().unwrap() >= 300,
        "{status}"
    );
    assert_eq!(synced["applied_seq"], status["updates"]["sent"]);
    assert!(
        status["swaps"]["rejected"].as_u64().unwrap() >= 1,
        "{status}"
    );
    assert_eq!(status["swaps"]["swapped"], 0);
    assert!(status["swaps"]["last_kl"].as_f64().unwrap() > 0.0);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_restores_a_kept_version_and_refuses_others() {
    let server = TestServer::start_with(|c| c.worker.publish_every_ms = 100).await;
    let v0 = server.wait_worker().await["model_version"]
        .as_u64()
        .unwrap();
    for t in 0..200 {
        feedback(&server, t).await;
    }
    let v1 = server.sync().await["model_version"].as_u64().unwrap();
    assert!(v1 > v0);
    let (code, body) = server
        .admin("/v1/admin/rollback", json!({"version": v0}))
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["model_version"], v0);
    assert_eq!(server.status().await["model_version"], v0);

    let (code, body) = server
        .admin("/v1/admin/rollback", json!({"version": 999}))
        .await;
    assert_eq!(code, 404, "{body}");
    assert!(body["error"].as_str().unwrap().contains("999"), "{body}");
    let (code, _) = server
        .admin("/v1/admin/rollback", json!({"version": "one"}))
        .await;
    assert_eq!(code, 422);
    let (code, _) = server
        .admin("/v1/admin/rollback", json!({"versoin": 1}))
        .await;
    assert_eq!(code, 422);

    // Learning goes on from the restored version.
    for t in 200..300 {
        feedback(&server, t).await;
    }
    let synced = server.sync().await;
    assert!(synced["model_version"].as_u64().unwrap() > v1, "{synced}");
    let (code, body) = server.admin("/v1/admin/checkpoint", json!({})).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["applied_seq"], 300);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_wal_tail_is_cut_and_the_server_starts() {
    let state = tempfile::tempdir().unwrap();
    let server = TestServer::start_at(state.path(), |c| c.worker.enabled = false).await;
    for t in 0..50 {
        feedback(&server, t).await;
    }
    server.stop().await.unwrap();
    // A write the crash interrupted: half a record's worth of garbage at the end.
    let wal = state.path().join("wal");
    let mut segments: Vec<_> = std::fs::read_dir(&wal)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    segments.sort();
    let last = segments.last().expect("a WAL segment");
    let mut bytes = std::fs::read(last).unwrap();
    bytes.extend_from_slice(&[0x5a, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 51, 0, 0]);
    std::fs::write(last, &bytes).unwrap();

    let again = TestServer::start_at(state.path(), |c| c.worker.publish_every_ms = 100).await;
    assert_eq!(again.status().await["updates"]["sent"], 50);
    assert_eq!(feedback(&again, 50).await, 51);
    let synced = again.sync().await;
    assert_eq!(synced["applied_seq"], 51);
    again.stop().await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_model_votes_with_its_neighbours_from_the_first_label() {
    let dir = tempfile::tempdir().unwrap();
    let model = fresh_model(dir.path());
    for (fresh_model, key, expected) in [
        (FreshModel::Knn, KeyChoice::Embedding, "ensemble"),
        (FreshModel::Knn, KeyChoice::Auto, "ensemble"),
        (FreshModel::Model, KeyChoice::Input, "cold_start"),
    ] {
        let server = TestServer::start_with(|c| {
            c.server.model = model.clone();
            c.engine.fresh_model = fresh_model;
            c.engine.pseudo_labels = false;
            c.memory.key = key;
        })
        .await;
        feedback(&server, 3).await;
        let (x, y) = sample(3);
        server.wait_experiences(1).await;
        let body = server.infer(json!([x])).await;
        let p = &body["predictions"][0];
        assert_eq!(p["path"], expected, "{fresh_model:?} {key:?}: {body}");
        if expected == "ensemble" {
            // The one neighbour is the sample itself: its label wins the vote.
            assert_eq!(p["neighbors_used"], 1);
            assert_eq!(p["label"], y);
        }
        server.stop().await.unwrap();
    }
}

/// Unit-scale rows of the 16-feature, 4-class task. On the synthetic stream's raw
/// scales a fresh model answers one class with probability 1, so a version that
/// learned may still answer a probe exactly alike (KL 0), which the KL check rightly
/// lets in; on these rows any training step moves the answers.
fn unit_row(t: u64) -> (Vec<f32>, u32) {
    let x = (0..16u64)
        .map(|j| ((t * 7 + j * 3) % 11) as f32 / 5.0 - 1.0)
        .collect();
    (x, (t % 4) as u32)
}

/// Sends `unit_row(t)` as a labelled example.
async fn send_unit_row(server: &TestServer, t: u64) {
    let (features, label) = unit_row(t);
    let r = client()
        .post(server.url("/v1/feedback"))
        .json(&json!({"features": features, "label": label}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
}

/// A fresh model whose every move is too far: 20 labels are too few for accuracy to
/// overrule the KL check, so only the fresh-model allowance (`unguarded`) lets a
/// version in.
async fn strict_server(
    state: &std::path::Path,
    model: &std::path::Path,
    unguarded: u64,
) -> TestServer {
    let server = TestServer::start_at(state, |c| {
        c.server.model = model.to_path_buf();
        c.worker.publish_every_ms = 100;
        c.swap.kl_reject_threshold = 1e-12;
        c.swap.unguarded_labels = unguarded;
        c.engine.pseudo_labels = false;
    })
    .await;
    server.wait_worker().await;
    for t in 0..20 {
        send_unit_row(&server, t).await;
    }
    server.sync().await;
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_model_is_not_kl_checked_until_it_has_enough_labels() {
    let dir = tempfile::tempdir().unwrap();
    let model = fresh_model(dir.path());
    for (unguarded, allowed) in [(1_000u64, true), (0, false)] {
        let state = tempfile::tempdir().unwrap();
        let server = strict_server(state.path(), &model, unguarded).await;
        let status = server.status().await;
        let (swapped, rejected) = (
            status["swaps"]["swapped"].as_u64().unwrap(),
            status["swaps"]["rejected"].as_u64().unwrap(),
        );
        if allowed {
            assert!(swapped >= 1 && rejected == 0, "{status}");
        } else {
            assert!(swapped == 0 && rejected >= 1, "{status}");
        }
        server.stop().await.unwrap();
    }
}

/// Polls `/v1/status` until `done` holds; panics after 5 s.
async fn status_until(server: &TestServer, done: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..200 {
        let s = server.status().await;
        if done(&s) {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("never reached: {}", server.status().await);
}

/// Each rejection or rollback restarts the worker on a new ring generation, and the
/// sync barrier can return before the last restart has landed: waits until the
/// worker runs on a generation that holds for a while, and returns that status.
async fn settled_worker(server: &TestServer) -> Value {
    loop {
        let first = status_until(server, |s| s["worker"]["state"] == "running").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let second = server.status().await;
        if second["worker"]["state"] == "running"
            && second["ring"]["generation"] == first["ring"]["generation"]
        {
            return second;
        }
    }
}

/// Publishes `weights` as checkpoint `version` trained from `parent`, as a worker
/// would, and announces it on the live ring.
fn publish_as_worker(
    state: &std::path::Path,
    status: &Value,
    weights: &adaptserve::model::Mlp,
    version: u64,
    parent: u64,
) {
    let store = adaptserve::update::Checkpoints::new(state.join("checkpoints"));
    store.publish(weights, version, parent, 20).unwrap();
    let path = status["ring"]["path"].as_str().unwrap();
    adaptserve::ipc::Ring::open(std::path::Path::new(path))
        .unwrap()
        .set_published_version(version);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_rollback_the_version_left_cannot_come_back_through_its_children() {
    let dir = tempfile::tempdir().unwrap();
    let model = fresh_model(dir.path());
    let state = tempfile::tempdir().unwrap();
    // The fresh-model allowance lets every version in.
    let server = strict_server(state.path(), &model, 1_000).await;
    let left = server.status().await["model_version"].as_u64().unwrap();
    assert!(left > 0);
    let (code, body) = server
        .admin("/v1/admin/rollback", json!({"version": 0}))
        .await;
    assert_eq!(code, 200, "{body}");
    let status = settled_worker(&server).await;
    let rejected_so_far = status["swaps"]["rejected"].as_u64().unwrap();
    let swapped_so_far = status["swaps"]["swapped"].as_u64().unwrap();
    // The old worker's late publication, trained from the version left. Its weights
    // are the left version's, so without the rule it would be swapped in (the
    // fresh-model allowance skips the KL check) and undo the rollback.
    let store = adaptserve::update::Checkpoints::new(state.path().join("checkpoints"));
    let weights = store.load(left).unwrap();
    let late = left + 100;
    publish_as_worker(state.path(), &status, &weights, late, left);
    let status = status_until(&server, |s| {
        s["swaps"]["rejected"].as_u64().unwrap() > rejected_so_far
    })
    .await;
    assert_eq!(status["model_version"], 0, "{status}");
    assert_eq!(status["swaps"]["swapped"], swapped_so_far, "{status}");
    // The same weights trained from the version rolled back to are learning again.
    publish_as_worker(state.path(), &status, &weights, late + 1, 0);
    let status = status_until(&server, |s| s["model_version"] == late + 1).await;
    assert_eq!(status["swaps"]["swapped"], swapped_so_far + 1, "{status}");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_trained_on_a_rejected_one_is_refused_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let model = fresh_model(dir.path());
    let state = tempfile::tempdir().unwrap();
    let server = strict_server(state.path(), &model, 0).await;
    let status = settled_worker(&server).await;
    let rejected_so_far = status["swaps"]["rejected"].as_u64().unwrap();
    assert!(
        rejected_so_far >= 1 && status["swaps"]["swapped"] == 0,
        "{status}"
    );
    // Nothing was swapped in, so every version on disk but the serving 0 was
    // published by a worker and rejected; the newest was the last one compared.
    let store = adaptserve::update::Checkpoints::new(state.path().join("checkpoints"));
    let rejected = *store.versions().last().unwrap();
    assert!(rejected > 0, "{:?}", store.versions());
    // Stand in for the old worker's late publication: trained from the rejected
    // version, and answering every probe exactly as the serving one does (its
    // weights are version 0's), so the KL check alone would let it in.
    let same = store.load(0).unwrap();
    let late = rejected + 100;
    publish_as_worker(state.path(), &status, &same, late, rejected);
    let ring_path = status["ring"]["path"].clone();
    let status = status_until(&server, |s| {
        s["swaps"]["rejected"].as_u64().unwrap() > rejected_so_far
    })
    .await;
    assert_eq!(status["swaps"]["swapped"], 0, "{status}");
    assert_eq!(status["model_version"], 0, "{status}");
    // Refused without another restart: the worker and its ring are the same.
    assert_eq!(status["ring"]["path"], ring_path, "{status}");
    // The same weights trained from the serving version are swapped in.
    publish_as_worker(state.path(), &status, &same, late + 1, 0);
    let status = status_until(&server, |s| s["swaps"]["swapped"] == 1).await;
    assert_eq!(status["model_version"], late + 1, "{status}");
    server.stop().await.unwrap();
}
