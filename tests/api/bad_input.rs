//! Every bad input gets its documented status and error shape, and changes nothing:
//! no update is sequenced, no prediction is remembered, no label is counted.

use serde_json::{Value, json};

use crate::common::{TestServer, client, sample};

/// The counters a bad request must leave alone.
async fn footprint(server: &TestServer) -> Value {
    let s = server.status().await;
    json!([
        s["updates"]["sent"],
        s["pending_predictions"],
        s["labels"]["received"],
        s["pseudo_labels"],
        s["experiences"],
    ])
}

/// Posts `body` raw to `path` and checks status, error shape and message.
async fn refused(server: &TestServer, path: &str, body: String, status: u16, needle: &str) {
    let before = footprint(server).await;
    let r = client()
        .post(server.url(path))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), status);
    let err: Value = r.json().await.unwrap();
    assert_eq!(err["error_type"], "validation", "{err}");
    let message = err["error"].as_str().unwrap();
    assert!(message.contains(needle), "{message:?} lacks {needle:?}");
    assert_eq!(
        footprint(server).await,
        before,
        "a refused request changed state"
    );
}

fn row(n: usize) -> Vec<f32> {
    vec![0.5; n]
}

#[tokio::test]
async fn malformed_json_is_400() {
    let s = TestServer::start().await;
    refused(
        &s,
        "/v1/infer",
        r#"{"inputs": [[1.0, 2.0"#.into(),
        400,
        "malformed JSON",
    )
    .await;
}

#[tokio::test]
async fn wrong_dimension_is_422() {
    let s = TestServer::start().await;
    let body = json!({"inputs": [row(16), row(15)]}).to_string();
    refused(
        &s,
        "/v1/infer",
        body,
        422,
        "inputs[1] has 15 values, the model expects input_dim = 16",
    )
    .await;
}

#[tokio::test]
async fn empty_inputs_are_422() {
    let s = TestServer::start().await;
    refused(
        &s,
        "/v1/infer",
        json!({"inputs": []}).to_string(),
        422,
        "at least one row",
    )
    .await;
    refused(
        &s,
        "/v1/infer",
        json!({"inputs": [[]]}).to_string(),
        422,
        "has 0 values",
    )
    .await;
}

#[tokio::test]
async fn missing_inputs_field_is_422() {
    let s = TestServer::start().await;
    refused(
        &s,
        "/v1/infer",
        json!({"input": [row(16)]}).to_string(),
        422,
        "unknown field",
    )
    .await;
}

#[tokio::test]
async fn non_numbers_are_422() {
    let s = TestServer::start().await;
    let mut values: Vec<Value> = row(16).into_iter().map(Value::from).collect();
    values[3] = json!("NaN");
    refused(
        &s,
        "/v1/infer",
        json!({"inputs": [values]}).to_string(),
        422,
        "invalid type",
    )
    .await;
    values[3] = Value::Null;
    refused(
        &s,
        "/v1/infer",
        json!({"inputs": [values]}).to_string(),
        422,
        "invalid type",
    )
    .await;
}

#[tokio::test]
async fn numbers_beyond_f32_are_422() {
    let s = TestServer::start().await;
    let mut text: Vec<String> = row(16).iter().map(|v| v.to_string()).collect();
    text[5] = "1e39".into();
    let body = format!(r#"{{"inputs": [[{}]]}}"#, text.join(","));
    refused(
        &s,
        "/v1/infer",
        body,
        422,
        "inputs[0][5] is not a finite number",
    )
    .await;
}

/// Found by the OpenAPI fuzz (scripts/check_openapi.sh): 3e38 is a finite f32, but
/// a row of them overflowed the model, and the NaN that came out was answered as
/// `"probabilities": [null, ...]`; a row with one such value was answered, and its
/// pseudo-label crash-looped the update-worker. Now a value beyond ±1e18 is refused,
/// and nothing is stored.
#[tokio::test]
async fn values_that_overflow_the_model_are_422() {
    let s = TestServer::start().await;
    let huge = vec![3e38_f32; 16];
    refused(
        &s,
        "/v1/infer",
        json!({"inputs": [row(16), huge]}).to_string(),
        422,
        "inputs[1][0] is 3e38, beyond ±1e18",
    )
    .await;
}

/// The same values in a labelled example were accepted (202): the NaN embedding went
/// into the memory, and the features into the training log, where the update-worker
/// failed on them at every restart.
#[tokio::test]
async fn feedback_features_that_overflow_the_model_are_422() {
    let s = TestServer::start().await;
    refused(
        &s,
        "/v1/feedback",
        json!({"features": vec![3e38_f32; 16], "label": 1}).to_string(),
        422,
        "features[0] is 3e38, beyond ±1e18",
    )
    .await;
}

/// Rows within the accepted range can still overflow a model with large weights; the
/// NaN that comes out is refused (422), never answered as `null` probabilities nor
/// remembered.
#[tokio::test]
async fn a_row_the_model_overflows_on_is_422() {
    use adaptserve_core::model::{Activation, Mlp, ModelConfig, SaveDtype, init::init_params};
    let dir = tempfile::tempdir().unwrap();
    let loud = dir.path().join("loud");
    let config = ModelConfig::mlp(16, &[64, 64, 64], 4, Activation::Relu);
    let mut params = init_params(&config, 1);
    for layer in &mut params.layers {
        layer.weight.fill(6e4);
    }
    let model = Mlp::from_params(config, params, 1, Default::default()).unwrap();
    model
        .save(&loud, SaveDtype::F32, &Default::default())
        .unwrap();
    let s = TestServer::start_with(|c| c.server.model = loud.clone()).await;
    refused(
        &s,
        "/v1/infer",
        json!({"inputs": [row(16), vec![1e18_f32; 16]]}).to_string(),
        422,
        "inputs[1] is too large for the model: its output is not a finite number",
    )
    .await;
    refused(
        &s,
        "/v1/feedback",
        json!({"features": vec![1e18_f32; 16], "label": 1}).to_string(),
        422,
        "features is too large for the model",
    )
    .await;
}

#[tokio::test]
async fn oversized_body_is_413() {
    let s = TestServer::start_with(|c| c.server.payload_limit_bytes = 4096).await;
    let rows: Vec<Vec<f32>> = (0..64).map(|_| row(16)).collect();
    let body = json!({ "inputs": rows }).to_string();
    assert!(body.len() > 4096);
    refused(
        &s,
        "/v1/infer",
        body,
        413,
        "exceeds the limit of 4096 bytes",
    )
    .await;
}

#[tokio::test]
async fn too_many_rows_are_422() {
    let s = TestServer::start_with(|c| c.server.max_client_batch = 4).await;
    let rows: Vec<Vec<f32>> = (0..5).map(|_| row(16)).collect();
    refused(
        &s,
        "/v1/infer",
        json!({ "inputs": rows }).to_string(),
        422,
        "5 rows, more than the limit of 4",
    )
    .await;
}

#[tokio::test]
async fn wrong_content_type_is_415() {
    let s = TestServer::start().await;
    let r = client()
        .post(s.url("/v1/infer"))
        .header("content-type", "text/plain")
        .body(json!({"inputs": [row(16)]}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let err: Value = r.json().await.unwrap();
    assert_eq!(err["error_type"], "validation");
}

#[tokio::test]
async fn unknown_request_id_is_404() {
    let s = TestServer::start().await;
    let before = footprint(&s).await;
    let r = client()
        .post(s.url("/v1/feedback"))
        .json(&json!({"request_id": 987654321u64, "label": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let err: Value = r.json().await.unwrap();
    assert_eq!(err["error_type"], "not_found");
    assert!(
        err["error"].as_str().unwrap().contains("987654321"),
        "{err}"
    );
    assert_eq!(footprint(&s).await, before);
}

#[tokio::test]
async fn out_of_range_label_is_422_and_keeps_the_prediction() {
    // No pseudo-labels: the memory's count then changes only through feedback, and
    // an asynchronous insert from the infer cannot race the footprint comparison.
    let s = TestServer::start_with(|c| c.engine.pseudo_labels = false).await;
    let (x, y) = sample(5);
    let body = s.infer(json!([x])).await;
    let id = body["predictions"][0]["request_id"].as_u64().unwrap();
    let bad = json!({"request_id": id, "label": 4}).to_string();
    refused(
        &s,
        "/v1/feedback",
        bad,
        422,
        "label 4 is out of range: the model has 4 classes",
    )
    .await;
    let negative = json!({"request_id": id, "label": -1}).to_string();
    refused(&s, "/v1/feedback", negative, 422, "label").await;
    let unknown_name = json!({"request_id": id, "label": "class_9"}).to_string();
    refused(
        &s,
        "/v1/feedback",
        unknown_name,
        422,
        "\"class_9\" is not one of the model's label names",
    )
    .await;
    // The refused labels left the prediction waiting: a good label still joins.
    let r = client()
        .post(s.url("/v1/feedback"))
        .json(&json!({"request_id": id, "label": y}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
}

#[tokio::test]
async fn feedback_needs_exactly_one_target() {
    let s = TestServer::start().await;
    let both = json!({"request_id": 1, "features": row(16), "label": 0}).to_string();
    refused(&s, "/v1/feedback", both, 422, "not both").await;
    refused(
        &s,
        "/v1/feedback",
        json!({"label": 0}).to_string(),
        422,
        "give request_id",
    )
    .await;
    refused(
        &s,
        "/v1/feedback",
        json!({"features": row(16)}).to_string(),
        422,
        "missing field `label`",
    )
    .await;
}

#[tokio::test]
async fn feedback_features_are_validated() {
    let s = TestServer::start().await;
    let short = json!({"features": row(3), "label": 0}).to_string();
    refused(
        &s,
        "/v1/feedback",
        short,
        422,
        "features has 3 values, the model expects input_dim = 16",
    )
    .await;
    let mut text: Vec<String> = row(16).iter().map(|v| v.to_string()).collect();
    text[0] = "-3e40".into();
    let overflow = format!(r#"{{"features": [{}], "label": 0}}"#, text.join(","));
    refused(
        &s,
        "/v1/feedback",
        overflow,
        422,
        "features[0] is not a finite number",
    )
    .await;
    refused(
        &s,
        "/v1/feedback",
        "{\"features\": [1,".into(),
        400,
        "malformed JSON",
    )
    .await;
}
