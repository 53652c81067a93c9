//! What keeps a bad version out of service: the KL guard (and the fresh-model
//! allowance that skips it), and the fence in front of it, which refuses what a
//! worker being replaced still publishes (on top of a rejected version, or of the
//! version a rollback left) because its generation is no longer live, and what the
//! live worker would train from a parent the server does not know. A test stands in
//! for a worker by writing a checkpoint stamped as that worker would stamp it and
//! announcing it on the live ring, as the worker process does.

use std::time::Duration;

use adaptserve_core::update::{Checkpoints, Provenance, provenance};
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

/// Where a stand-in worker says `version` came from: trained from `parent` (which
/// `parent_generation` published) by a worker of `generation`.
fn stamp(version: u64, parent: u64, generation: u64, parent_generation: u64) -> Provenance {
    Provenance {
        version,
        parent: Some(parent),
        generation,
        parent_generation,
        applied_seq: 20,
    }
}

/// Publishes `weights` as checkpoint `from.version`, stamped with `from`, as a worker
/// would, and announces it on the live ring.
fn publish_as_worker(
    state: &std::path::Path,
    status: &Value,
    weights: &adaptserve_core::model::Mlp,
    from: &Provenance,
) {
    let store = Checkpoints::new(state.join("checkpoints"));
    store.publish(weights, from).unwrap();
    let path = status["ring"]["path"].as_str().unwrap();
    adaptserve_core::ipc::Ring::open(std::path::Path::new(path))
        .unwrap()
        .set_published_version(from.version);
}

/// The generation that published checkpoint `version`.
fn generation_of(state: &std::path::Path, version: u64) -> u64 {
    let store = Checkpoints::new(state.join("checkpoints"));
    provenance(&store.load(version).unwrap()).generation
}

/// The live worker's generation, from a status taken once it runs.
fn live(status: &Value) -> u64 {
    status["ring"]["generation"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_rollback_the_old_workers_late_version_is_refused_by_its_generation() {
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
    // The rollback restarted the worker on a newer generation.
    let old = generation_of(state.path(), left);
    assert!(old >= 1 && live(&status) > old, "{old}: {status}");
    // The old worker's late publication, trained from the version left. Its weights
    // are the left version's, so without the fence it would be swapped in (the
    // fresh-model allowance skips the KL check) and undo the rollback.
    let store = Checkpoints::new(state.path().join("checkpoints"));
    let weights = store.load(left).unwrap();
    let late = left + 100;
    publish_as_worker(
        state.path(),
        &status,
        &weights,
        &stamp(late, left, old, old),
    );
    let status = status_until(&server, |s| {
        s["swaps"]["rejected"].as_u64().unwrap() > rejected_so_far
    })
    .await;
    assert_eq!(status["model_version"], 0, "{status}");
    assert_eq!(status["swaps"]["swapped"], swapped_so_far, "{status}");
    // The same weights trained from the version rolled back to, by the live worker,
    // are learning again.
    let from = stamp(late + 1, 0, live(&status), generation_of(state.path(), 0));
    publish_as_worker(state.path(), &status, &weights, &from);
    let status = status_until(&server, |s| s["model_version"] == late + 1).await;
    assert_eq!(status["swaps"]["swapped"], swapped_so_far + 1, "{status}");
    server.stop().await.unwrap();
}

/// Announces `from` (with version 0's weights) until it serves, and returns the
/// status then. The restarted worker publishes on the same ring, and under load its
/// announcement can overwrite this one before the swap task reads it, or one of its
/// versions can be swapped in first: so it announces again while waiting.
async fn swapped_in(
    server: &TestServer,
    state: &std::path::Path,
    status: &Value,
    from: &Provenance,
) -> Value {
    let same = Checkpoints::new(state.join("checkpoints")).load(0).unwrap();
    publish_as_worker(state, status, &same, from);
    let ring = adaptserve_core::ipc::Ring::open(std::path::Path::new(
        status["ring"]["path"].as_str().unwrap(),
    ))
    .unwrap();
    status_until(server, |s| {
        ring.set_published_version(from.version);
        s["model_version"] == from.version
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_generations_version_is_refused_without_a_comparison_or_a_restart() {
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
    let store = Checkpoints::new(state.path().join("checkpoints"));
    let rejected = *store.versions().last().unwrap();
    assert!(rejected > 0, "{:?}", store.versions());
    // Its rejection restarted the worker on a newer generation.
    let old = generation_of(state.path(), rejected);
    assert!(old >= 1 && live(&status) > old, "{old}: {status}");
    let last_kl = status["swaps"]["last_kl"].as_f64().unwrap();
    assert!(last_kl > 0.0, "{status}");
    // Stand in for the old worker's late publication: trained from the rejected
    // version, and answering every probe exactly as the serving one does (its
    // weights are version 0's), so the KL check alone would let it in.
    let same = store.load(0).unwrap();
    let late = rejected + 100;
    publish_as_worker(
        state.path(),
        &status,
        &same,
        &stamp(late, rejected, old, old),
    );
    let ring_path = status["ring"]["path"].clone();
    let status = status_until(&server, |s| {
        s["swaps"]["rejected"].as_u64().unwrap() > rejected_so_far
    })
    .await;
    assert_eq!(status["swaps"]["swapped"], 0, "{status}");
    assert_eq!(status["model_version"], 0, "{status}");
    // Refused without another restart: the worker and its ring are the same.
    assert_eq!(status["ring"]["path"], ring_path, "{status}");
    // And without a comparison: one would have recorded its KL of 0.
    assert_eq!(
        status["swaps"]["last_kl"].as_f64(),
        Some(last_kl),
        "{status}"
    );
    // The same weights trained from the serving version by the live worker are
    // swapped in.
    let from = stamp(late + 1, 0, live(&status), generation_of(state.path(), 0));
    let status = swapped_in(&server, state.path(), &status, &from).await;
    assert!(
        status["swaps"]["swapped"].as_u64().unwrap() >= 1,
        "{status}"
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_version_from_a_parent_the_server_does_not_know_is_refused_and_the_worker_restarts()
{
    let dir = tempfile::tempdir().unwrap();
    let model = fresh_model(dir.path());
    let state = tempfile::tempdir().unwrap();
    let server = strict_server(state.path(), &model, 0).await;
    let status = settled_worker(&server).await;
    let rejected_so_far = status["swaps"]["rejected"].as_u64().unwrap();
    let store = Checkpoints::new(state.path().join("checkpoints"));
    let rejected = *store.versions().last().unwrap();
    assert!(rejected > 0, "{:?}", store.versions());
    let last_kl = status["swaps"]["last_kl"].as_f64().unwrap();
    // Stamped with the live generation, but trained from the rejected version, which
    // neither serves nor was published by the live worker: version 0's weights, so
    // the KL check alone would let it in.
    let same = store.load(0).unwrap();
    let late = rejected + 100;
    let generation = live(&status);
    let old = generation_of(state.path(), rejected);
    publish_as_worker(
        state.path(),
        &status,
        &same,
        &stamp(late, rejected, generation, old),
    );
    let status = status_until(&server, |s| {
        s["swaps"]["rejected"].as_u64().unwrap() > rejected_so_far
    })
    .await;
    assert_eq!(status["swaps"]["swapped"], 0, "{status}");
    assert_eq!(status["model_version"], 0, "{status}");
    assert_eq!(
        status["swaps"]["last_kl"].as_f64(),
        Some(last_kl),
        "{status}"
    );
    // The live worker's line left the server's: it restarts on a newer generation,
    // and the version's own children (parent of the old live generation) are refused
    // with it.
    status_until(&server, |s| live(s) > generation).await;
    let status = settled_worker(&server).await;
    assert!(live(&status) > generation, "{status}");
    let rejected_so_far = status["swaps"]["rejected"].as_u64().unwrap();
    publish_as_worker(
        state.path(),
        &status,
        &same,
        &stamp(late + 1, late, generation, generation),
    );
    let status = status_until(&server, |s| {
        s["swaps"]["rejected"].as_u64().unwrap() > rejected_so_far
    })
    .await;
    assert_eq!(status["model_version"], 0, "{status}");
    // From the serving version, the new live worker's version is swapped in.
    let from = stamp(late + 2, 0, live(&status), generation_of(state.path(), 0));
    let status = swapped_in(&server, state.path(), &status, &from).await;
    assert!(
        status["swaps"]["swapped"].as_u64().unwrap() >= 1,
        "{status}"
    );
    server.stop().await.unwrap();
}
