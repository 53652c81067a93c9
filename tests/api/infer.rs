//! The happy paths of `/v1/infer` and `/v1/feedback`, and cold start → ensemble.

use serde_json::{Value, json};

use crate::common::{TestServer, client, sample};

#[tokio::test]
async fn infer_answers_each_row_with_a_distribution() {
    let server = TestServer::start().await;
    let (a, _) = sample(1);
    let (b, _) = sample(2);
    let body = server.infer(json!([a, b])).await;
    assert_eq!(body["model_version"], 1, "{body}");
    let predictions = body["predictions"].as_array().unwrap();
    assert_eq!(predictions.len(), 2);
    let ids: Vec<u64> = predictions
        .iter()
        .map(|p| p["request_id"].as_u64().unwrap())
        .collect();
    assert_ne!(ids[0], ids[1], "each row gets its own request_id");
    for p in predictions {
        let probs: Vec<f64> = p["probabilities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(probs.len(), 4);
        assert!((probs.iter().sum::<f64>() - 1.0).abs() < 1e-3, "{probs:?}");
        let label = p["label"].as_u64().unwrap() as usize;
        let max = probs.iter().cloned().fold(f64::MIN, f64::max);
        assert_eq!(probs[label], max, "label is the argmax");
        assert!((p["confidence"].as_f64().unwrap() - max).abs() < 1e-6);
        assert_eq!(p["label_name"], format!("class_{label}"));
        assert_eq!(p["path"], "cold_start");
        assert_eq!(p["neighbors_used"], 0);
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn default_model_is_accurate_on_its_task() {
    let server = TestServer::start().await;
    let rows: Vec<(Vec<f32>, u32)> = (0..200).map(sample).collect();
    let inputs: Vec<&Vec<f32>> = rows.iter().map(|(f, _)| f).collect();
    let body = server.infer(json!(inputs)).await;
    let correct = body["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .zip(&rows)
        .filter(|(p, (_, y))| p["label"].as_u64() == Some(*y as u64))
        .count();
    assert!(correct >= 150, "{correct}/200 correct");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn delayed_feedback_joins_once() {
    let server = TestServer::start().await;
    let (x, y) = sample(7);
    let body = server.infer(json!([x])).await;
    let id = body["predictions"][0]["request_id"].as_u64().unwrap();
    let sent_before = server.status().await["updates"]["sent"].as_u64().unwrap();
    let r = client()
        .post(server.url("/v1/feedback"))
        .json(&json!({"request_id": id, "label": y}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let receipt: Value = r.json().await.unwrap();
    assert_eq!(receipt["accepted"], true);
    assert!(receipt["seq"].as_u64().unwrap() > sent_before);
    let status = server.status().await;
    assert_eq!(status["labels"]["scored"], 1, "{status}");
    let again = client()
        .post(server.url("/v1/feedback"))
        .json(&json!({"request_id": id, "label": y}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 404, "a prediction is labelled once");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn labels_by_name_are_accepted() {
    let server = TestServer::start().await;
    let (x, _) = sample(3);
    let r = client()
        .post(server.url("/v1/feedback"))
        .json(&json!({"features": x, "label": "class_2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    server.wait_experiences(1).await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn memory_leaves_cold_start_and_votes() {
    // Threshold 20 keeps the test short; the rule is the same as at 100.
    let server = TestServer::start_with(|c| {
        c.engine.cold_start_threshold = 20;
        c.engine.pseudo_labels = false;
    })
    .await;
    assert_eq!(server.status().await["mode"], "cold_start");
    for t in 100..125 {
        let (x, y) = sample(t);
        let r = client()
            .post(server.url("/v1/feedback"))
            .json(&json!({"features": x, "label": y}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    server.wait_experiences(25).await;
    assert_eq!(server.status().await["mode"], "normal");
    let (x, _) = sample(1000);
    let body = server.infer(json!([x])).await;
    let p = &body["predictions"][0];
    assert_eq!(p["path"], "ensemble", "{body}");
    assert_eq!(p["neighbors_used"], 5, "k = 5 by default");
    let health: Value = client()
        .get(server.url("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["mode"], "normal");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn confident_answers_become_pseudo_labels() {
    let server = TestServer::start_with(|c| c.engine.confidence_threshold = 0.0).await;
    let (x, _) = sample(11);
    let body = server.infer(json!([x])).await;
    assert_eq!(body["predictions"][0]["update_enqueued"], true);
    server.wait_experiences(1).await;
    let status = server.status().await;
    assert_eq!(status["pseudo_labels"], 1);
    assert_eq!(status["updates"]["sent"], 1);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn health_endpoints_answer() {
    let server = TestServer::start().await;
    let c = client();
    assert_eq!(
        c.get(server.url("/health/live"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.get(server.url("/health/ready"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let health: Value = c
        .get(server.url("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for component in ["model", "memory", "worker", "queue", "alerts"] {
        let light = health["components"][component]["status"].as_str().unwrap();
        assert!(["green", "yellow", "red"].contains(&light), "{health}");
    }
    assert_eq!(health["components"]["model"]["status"], "green");
    assert_eq!(health["mode"], "cold_start");
    let status = server.status().await;
    for key in [
        "model_version",
        "mode",
        "experiences",
        "input_dim",
        "num_classes",
        "wal_bytes",
    ] {
        assert!(status.get(key).is_some(), "status lacks {key}: {status}");
    }
    assert_eq!(status["input_dim"], 16);
    assert_eq!(status["num_classes"], 4);
    let missing = c.get(server.url("/nope")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["error_type"], "not_found");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_label_takes_over_the_pseudo_label_of_its_prediction_in_memory() {
    // Every answer becomes a pseudo-label (threshold 0), and one experience ends the
    // cold start.
    let server = TestServer::start_with(|c| {
        c.engine.confidence_threshold = 0.0;
        c.engine.cold_start_threshold = 1;
    })
    .await;
    let (x, _) = sample(1);
    let p = &server.infer(json!([x])).await["predictions"][0];
    assert_eq!(p["update_enqueued"], true, "{p}");
    server.wait_experiences(1).await;
    // The client's label, the other class than the guess: the memory keeps one
    // experience for this input, now with the client's label, not two that disagree.
    let guess = p["label"].as_u64().unwrap();
    let truth = (guess + 1) % 4;
    let r = client()
        .post(server.url("/v1/feedback"))
        .json(&json!({"request_id": p["request_id"], "label": truth}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let s = server.wait_memory_settled().await;
    assert_eq!(s["experiences"], 1, "{s}");
    assert_eq!(s["labels"]["pseudo_scored"], 1, "{s}");
    assert_eq!(
        s["labels"]["pseudo_precision"], 0.0,
        "the guess was wrong: {s}"
    );
    // The neighbours vote now.
    let again = &server.infer(json!([x])).await["predictions"][0];
    assert!(again["neighbors_used"].as_u64().unwrap() >= 1, "{again}");
    let s = server.wait_memory_settled().await;
    // A labelled example sent whole has no prediction to take over: it is added.
    let (y, label) = sample(2);
    let r = client()
        .post(server.url("/v1/feedback"))
        .json(&json!({"features": y, "label": label}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let after = server.wait_memory_settled().await;
    assert_eq!(
        after["experiences"].as_u64().unwrap(),
        s["experiences"].as_u64().unwrap() + 1,
        "{after}"
    );
    server.stop().await.unwrap();
}
