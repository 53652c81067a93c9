//! The engine in-process: the k-NN circuit breaker and the fallback path. An HNSW
//! problem must never fail a request.

use std::sync::atomic::Ordering;
use std::time::Duration;

use adaptserve_server::engine::{BreakerState, FeedbackTarget, InferPath, LabelRef};

use crate::common::{sample, test_config};

/// On tokio's paused clock (the breaker reads it), so the cooldown is stepped
/// through rather than slept, and a slow machine cannot end it early.
#[tokio::test(start_paused = true)]
async fn knn_failures_fall_back_open_the_breaker_and_recover() {
    let state = tempfile::tempdir().unwrap();
    let mut config = test_config(state.path());
    config.engine.cold_start_threshold = 20;
    config.engine.breaker_failures = 3;
    config.engine.breaker_cooldown_ms = 200;
    let engine = adaptserve_server::app::build_engine(&config).await.unwrap();
    for t in 0..30 {
        let (x, y) = sample(t);
        engine
            .feedback(FeedbackTarget::Features(x), LabelRef::Index(y as u64))
            .await
            .unwrap();
    }
    assert!(engine.memory().flush(Duration::from_secs(10)));
    let (x, _) = sample(99);
    let reply = engine.infer_and_adapt(vec![x.clone()]).await.unwrap();
    assert_eq!(reply.predictions[0].path, InferPath::Ensemble);

    engine.memory().set_fault_rate(1.0);
    for i in 0..5 {
        let reply = engine.infer_and_adapt(vec![x.clone()]).await.unwrap();
        let p = &reply.predictions[0];
        assert_eq!(p.path, InferPath::Fallback, "request {i} still answered");
        assert_eq!(p.neighbors_used, 0);
        let sum: f32 = p.probabilities.iter().sum();
        assert!((sum - 1.0).abs() < 1e-3);
    }
    // Three failures opened the breaker; the next two skipped the search entirely.
    assert_eq!(engine.stats().knn_failures.load(Ordering::Relaxed), 3);
    assert_eq!(engine.status().breaker, BreakerState::Open);

    engine.memory().set_fault_rate(0.0);
    // Within the 200 ms cooldown the search is still skipped, healthy or not.
    tokio::time::advance(Duration::from_millis(150)).await;
    let reply = engine.infer_and_adapt(vec![x.clone()]).await.unwrap();
    assert_eq!(reply.predictions[0].path, InferPath::Fallback, "still open");
    assert_eq!(engine.status().breaker, BreakerState::Open);
    tokio::time::advance(Duration::from_millis(100)).await;
    let reply = engine.infer_and_adapt(vec![x]).await.unwrap();
    assert_eq!(
        reply.predictions[0].path,
        InferPath::Ensemble,
        "half-open trial succeeded"
    );
    assert_eq!(engine.status().breaker, BreakerState::Closed);
}

#[tokio::test]
async fn hedge_lambda_moves_only_on_labelled_feedback() {
    let state = tempfile::tempdir().unwrap();
    let mut config = test_config(state.path());
    config.engine.cold_start_threshold = 20;
    config.engine.confidence_threshold = 0.0; // every answer becomes a pseudo-label
    let engine = adaptserve_server::app::build_engine(&config).await.unwrap();
    for t in 0..30 {
        let (x, y) = sample(t);
        engine
            .feedback(FeedbackTarget::Features(x), LabelRef::Index(y as u64))
            .await
            .unwrap();
    }
    assert!(engine.memory().flush(Duration::from_secs(10)));
    let lambda0 = engine.status().lambda;
    let mut ids = Vec::new();
    for t in 200..240 {
        let (x, _) = sample(t);
        let reply = engine.infer_and_adapt(vec![x]).await.unwrap();
        ids.push((reply.predictions[0].request_id, t));
    }
    assert_eq!(
        engine.status().lambda,
        lambda0,
        "pseudo-labels never move λ"
    );
    for (id, t) in ids {
        let (_, y) = sample(t);
        engine
            .feedback(FeedbackTarget::Request(id), LabelRef::Index(y as u64))
            .await
            .unwrap();
    }
    assert_ne!(engine.status().lambda, lambda0, "labelled feedback moves λ");
}

#[tokio::test]
async fn a_full_memory_keeps_bootstrap_and_the_newest_pseudo_labels() {
    let state = tempfile::tempdir().unwrap();
    let mut config = test_config(state.path());
    config.memory.capacity = 50;
    config.engine.cold_start_threshold = 10;
    config.engine.confidence_threshold = 0.0; // every answer is learned
    let engine = adaptserve_server::app::build_engine(&config).await.unwrap();
    let inputs: Vec<Vec<f32>> = (0..200).map(|t| sample(t).0).collect();
    for x in &inputs {
        engine.infer_and_adapt(vec![x.clone()]).await.unwrap();
        // One at a time, so exactly the first 10 answers are cold-start bootstrap.
        assert!(engine.memory().flush(Duration::from_secs(10)));
    }
    let kept: Vec<Vec<f32>> = engine
        .memory()
        .snapshot()
        .0
        .into_iter()
        .map(|e| e.features)
        .collect();
    assert_eq!(kept.len(), 50);
    let expected: Vec<Vec<f32>> = inputs[..10].iter().chain(&inputs[160..]).cloned().collect();
    for x in &expected {
        assert!(kept.contains(x), "memory lost an experience it should keep");
    }
}

#[tokio::test]
async fn the_admin_fault_route_is_refused_unless_enabled_and_checks_its_rate() {
    let server = crate::common::TestServer::start().await;
    let (status, body) = server
        .admin(
            "/v1/admin/fault/knn",
            serde_json::json!({"failure_rate": 0.5}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("engine.fault_injection = true"),
        "{body}"
    );
    assert_eq!(server.status().await["knn_faults_injected"], 0);
    server.stop().await.unwrap();

    let server = crate::common::TestServer::start_with(|c| c.engine.fault_injection = true).await;
    for bad in [
        serde_json::json!({"failure_rate": 1.5}),
        serde_json::json!({"failure_rate": -0.1}),
    ] {
        let (status, body) = server.admin("/v1/admin/fault/knn", bad).await;
        assert_eq!(status, 422, "{body}");
        assert!(body["error"].as_str().unwrap().contains("[0, 1]"), "{body}");
    }
    let (status, body) = server
        .admin("/v1/admin/fault/knn", serde_json::json!({"rate": 0.5}))
        .await;
    assert!(
        status == 400 || status == 422,
        "unknown field: {status} {body}"
    );
    // Without a token the route is closed like every admin route.
    let r = crate::common::client()
        .post(server.url("/v1/admin/fault/knn"))
        .json(&serde_json::json!({"failure_rate": 1.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn injected_knn_faults_fall_back_to_the_model_and_are_counted_apart() {
    let server = crate::common::TestServer::start_with(|c| {
        c.engine.fault_injection = true;
        c.engine.cold_start_threshold = 20;
        // Every search fails: keep the breaker closed so each one is attempted.
        c.engine.breaker_failures = 1_000;
    })
    .await;
    let client = crate::common::client();
    for t in 0..40 {
        let (x, y) = sample(t);
        let r = client
            .post(server.url("/v1/feedback"))
            .json(&serde_json::json!({"features": x, "label": y}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    server.wait_experiences(40).await;
    let (status, body) = server
        .admin(
            "/v1/admin/fault/knn",
            serde_json::json!({"failure_rate": 1.0}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["failure_rate"], 1.0);
    for t in 100..110 {
        let (x, _) = sample(t);
        let reply = server.infer(serde_json::json!([x])).await;
        assert_eq!(reply["predictions"][0]["path"], "fallback", "{reply}");
    }
    let status = server.status().await;
    assert_eq!(status["knn_faults_injected"], 10, "{status}");
    assert_eq!(status["knn_failures"], 10, "{status}");
    // Off again: the ensemble answers.
    let (status, _) = server
        .admin(
            "/v1/admin/fault/knn",
            serde_json::json!({"failure_rate": 0.0}),
        )
        .await;
    assert_eq!(status, 200);
    let (x, _) = sample(200);
    let reply = server.infer(serde_json::json!([x])).await;
    assert_eq!(reply["predictions"][0]["path"], "ensemble", "{reply}");
    server.stop().await.unwrap();
}
