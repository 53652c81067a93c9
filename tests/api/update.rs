//! The update path end to end: a real update-worker process learning from feedback,
//! the sync barrier, hot swaps, KL rejection, rollback, restart on the same state
//! dir, and the admin token.

use std::time::Duration;

use adaptserve_server::config::{FreshModel, KeyChoice};
use serde_json::{Value, json};

use crate::common::{ADMIN_TOKEN, TestServer, client, sample};

/// Sends `features` with `label` as a labelled example and returns its sequence
/// number.
pub(super) async fn post_label(server: &TestServer, features: Vec<f32>, label: u32) -> u64 {
    let r = client()
        .post(server.url("/v1/feedback"))
        .json(&json!({"features": features, "label": label}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    r.json::<Value>().await.unwrap()["seq"].as_u64().unwrap()
}

/// Sends the synthetic stream's sample `t` as a labelled example and returns its
/// sequence number.
async fn feedback(server: &TestServer, t: u64) -> u64 {
    let (features, label) = sample(t);
    post_label(server, features, label).await
}

/// A fresh model for the synthetic task: it starts knowing nothing.
pub(super) fn fresh_model(dir: &std::path::Path) -> std::path::PathBuf {
    let out = dir.join("fresh");
    adaptserve_core::model::init_model(16, 4, &[64], 5, &out).unwrap();
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
    let store = adaptserve_server::update::Checkpoints::new(state.join("checkpoints"));
    let model_accuracy = |version: u64| {
        // The first version was pruned (five are kept); it is the fresh model.
        let m = if version == v0 {
            adaptserve_core::model::Mlp::load(&dir.path().join("fresh")).unwrap()
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
    // Enough versions kept that the first one survives however many the worker
    // publishes during the first 200 labels (six would prune it at the default 5).
    let server = TestServer::start_with(|c| {
        c.worker.publish_every_ms = 100;
        c.swap.keep_checkpoints = 1_000;
    })
    .await;
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
