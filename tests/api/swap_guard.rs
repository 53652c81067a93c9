//! What keeps a bad version out of service: the KL check (and the fresh-model
//! allowance that skips it), and the lineage rule that refuses what the old worker
//! trains on top of a rejected version, or of the version a rollback left, before
//! its restart lands. A test stands in for that old worker by writing a checkpoint
//! and announcing it on the live ring, as the worker process does.

use std::time::Duration;

use serde_json::{Value, json};

use super::update::{fresh_model, post_label};
use crate::common::TestServer;

/// Unit-scale rows of the 16-feature task, labelled with `model`'s own answers.
///
/// On the synthetic stream's raw scales a fresh model answers one class with
/// probability 1, so a version that learned may still answer a probe exactly alike
/// (KL 0), which the KL check rightly lets in; on these rows any training step moves
/// the answers. And labelled with the serving model's own answers, no version can
/// answer them better, so accuracy never overrules the check.
fn unit_rows(model: &std::path::Path, n: u64) -> Vec<(Vec<f32>, u32)> {
    let rows: Vec<Vec<f32>> = (0..n)
        .map(|t| {
            (0..16u64)
                .map(|j| ((t * 7 + j * 3) % 11) as f32 / 5.0 - 1.0)
                .collect()
        })
        .collect();
    let fresh = adaptserve_core::model::Mlp::load(model).unwrap();
    let flat: Vec<f32> = rows.concat();
    let answers = fresh.forward(&flat, rows.len()).unwrap();
    rows.into_iter()
        .enumerate()
        .map(|(i, x)| {
            let p = answers.probs_row(i);
            let label = (0..p.len()).fold(0, |b, c| if p[c] > p[b] { c } else { b });
            (x, label as u32)
        })
        .collect()
}

/// A fresh model whose every move is too far, taught rows it already answers: only
/// the fresh-model allowance (`unguarded`) lets a version in.
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
    for (features, label) in unit_rows(model, 20) {
        post_label(&server, features, label).await;
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
    weights: &adaptserve_core::model::Mlp,
    version: u64,
    parent: u64,
) {
    let store = adaptserve_server::update::Checkpoints::new(state.join("checkpoints"));
    store.publish(weights, version, parent, 20).unwrap();
    let path = status["ring"]["path"].as_str().unwrap();
    adaptserve_core::ipc::Ring::open(std::path::Path::new(path))
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
    let store = adaptserve_server::update::Checkpoints::new(state.path().join("checkpoints"));
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
    let store = adaptserve_server::update::Checkpoints::new(state.path().join("checkpoints"));
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
    // The same weights trained from the serving version are swapped in. (The
    // restarted worker publishes on the same ring, and under load its announcement
    // can overwrite this one before the swap task reads it, or one of its versions
    // can be swapped in first: announce again while waiting for this version.)
    publish_as_worker(state.path(), &status, &same, late + 1, 0);
    let ring = adaptserve_core::ipc::Ring::open(std::path::Path::new(
        status["ring"]["path"].as_str().unwrap(),
    ))
    .unwrap();
    let status = status_until(&server, |s| {
        ring.set_published_version(late + 1);
        s["model_version"] == late + 1
    })
    .await;
    assert!(
        status["swaps"]["swapped"].as_u64().unwrap() >= 1,
        "{status}"
    );
    server.stop().await.unwrap();
}
