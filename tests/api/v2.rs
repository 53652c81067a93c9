//! The Open Inference Protocol routes (`/v2`): metadata, health, inference on the
//! same request path as `/v1/infer`, and each refusal with its status, error shape
//! and no change to the server's state. tests/python/test_oip.py drives the same
//! routes with the real `tritonclient` and `kserve` clients.

use serde_json::{Value, json};

use crate::common::{TestServer, client, sample};

const INFER: &str = "/v2/models/adaptserve/infer";

/// A server whose model does not move: no pseudo-labels, so no training, no swap,
/// no memory; the same rows get the same answer from `/v1` and `/v2`.
async fn still_server() -> TestServer {
    TestServer::start_with(|c| c.engine.pseudo_labels = false).await
}

/// `{"name": "input", ...}` with `rows` flat in row-major order.
fn tensor(datatype: &str, rows: &[Vec<f32>]) -> Value {
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    json!({"name": "input", "shape": [rows.len(), rows[0].len()], "datatype": datatype, "data": flat})
}

async fn get(server: &TestServer, path: &str) -> (u16, Value) {
    let r = client().get(server.url(path)).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// `POST` a JSON body with no `Content-Type`, as tritonclient sends it.
async fn post(server: &TestServer, path: &str, body: &Value) -> (u16, Value) {
    let r = client()
        .post(server.url(path))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The named output's `data` as numbers.
fn output(reply: &Value, name: &str) -> Vec<f64> {
    let outputs = reply["outputs"].as_array().expect("outputs");
    let o = outputs
        .iter()
        .find(|o| o["name"] == name)
        .unwrap_or_else(|| panic!("no output {name}: {reply}"));
    o["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

/// The ids in `parameters.request_ids`.
fn request_ids(reply: &Value) -> Vec<u64> {
    reply["parameters"]["request_ids"]
        .as_str()
        .unwrap_or_else(|| panic!("no request_ids: {reply}"))
        .split(',')
        .map(|id| id.parse().unwrap())
        .collect()
}

#[tokio::test]
async fn metadata_describes_the_one_model() {
    let server = still_server().await;
    let status = server.status().await;
    let version = status["model_version"].to_string();
    let (code, meta) = get(&server, "/v2").await;
    assert_eq!(code, 200);
    assert_eq!(meta["name"], "adaptserve");
    assert_eq!(meta["version"], status["version"]);
    assert_eq!(meta["extensions"], json!([]));

    let (code, model) = get(&server, "/v2/models/adaptserve").await;
    assert_eq!(code, 200, "{model}");
    let dim = status["input_dim"].as_i64().unwrap();
    let classes = status["num_classes"].as_i64().unwrap();
    assert_eq!(
        model,
        json!({
            "name": "adaptserve",
            "versions": [version],
            "platform": "adaptserve",
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, dim]}],
            "outputs": [
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, classes]},
                {"name": "label", "datatype": "INT64", "shape": [-1]},
            ],
        })
    );
    let (code, same) = get(
        &server,
        &format!("/v2/models/adaptserve/versions/{version}"),
    )
    .await;
    assert_eq!((code, &same), (200, &model));

    for path in [
        "/v2/models/resnet",
        "/v2/models/resnet/ready",
        "/v2/models/adaptserve/versions/999",
        "/v2/models/adaptserve/versions/999/ready",
    ] {
        let (code, err) = get(&server, path).await;
        assert_eq!(code, 404, "{path}: {err}");
        assert_eq!(err["error_type"], "not_found", "{path}: {err}");
        assert!(err["error"].is_string(), "{path}: {err}");
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn live_and_ready_answer_by_status_code() {
    let server = still_server().await;
    assert_eq!(
        get(&server, "/v2/health/live").await,
        (200, json!({"live": true}))
    );
    assert_eq!(
        get(&server, "/v2/health/ready").await,
        (200, json!({"ready": true}))
    );
    let ready = json!({"name": "adaptserve", "ready": true});
    assert_eq!(
        get(&server, "/v2/models/adaptserve/ready").await,
        (200, ready.clone())
    );
    let version = server.status().await["model_version"].to_string();
    let path = format!("/v2/models/adaptserve/versions/{version}/ready");
    assert_eq!(get(&server, &path).await, (200, ready));
    // The same verdict as the server's own probe.
    assert_eq!(get(&server, "/health/ready").await.0, 200);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn infer_answers_as_v1_does_flat_or_nested() {
    let server = still_server().await;
    let rows: Vec<Vec<f32>> = (0..3).map(|t| sample(t).0).collect();
    let v1 = server.infer(json!(rows)).await;
    let v1_probs: Vec<f64> = v1["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["probabilities"].as_array().unwrap().clone())
        .map(|v| v.as_f64().unwrap())
        .collect();
    let v1_labels: Vec<f64> = v1["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["label"].as_f64().unwrap())
        .collect();

    let flat = json!({"id": "batch-7", "inputs": [tensor("FP32", &rows)]});
    let mut nested = json!({"inputs": [tensor("FP32", &rows)]});
    nested["inputs"][0]["data"] = json!(rows);
    for body in [flat, nested] {
        let (code, reply) = post(&server, INFER, &body).await;
        assert_eq!(code, 200, "{reply}");
        assert_eq!(reply["model_name"], "adaptserve");
        assert_eq!(reply["model_version"], v1["model_version"].to_string());
        assert_eq!(reply["id"], body.get("id").cloned().unwrap_or(Value::Null));
        assert_eq!(reply["outputs"][0]["shape"], json!([3, 4]));
        assert_eq!(reply["outputs"][0]["datatype"], "FP32");
        assert_eq!(reply["outputs"][1]["shape"], json!([3]));
        assert_eq!(reply["outputs"][1]["datatype"], "INT64");
        assert_eq!(output(&reply, "probabilities"), v1_probs);
        assert_eq!(output(&reply, "label"), v1_labels);
        let ids = request_ids(&reply);
        assert_eq!(ids.len(), 3);
        assert!(reply["parameters"].get("request_id").is_none(), "{reply}");
    }
    // The versioned route answers the same.
    let path = format!(
        "/v2/models/adaptserve/versions/{}/infer",
        v1["model_version"]
    );
    let (code, reply) = post(&server, &path, &json!({"inputs": [tensor("FP32", &rows)]})).await;
    assert_eq!(code, 200, "{reply}");
    assert_eq!(output(&reply, "probabilities"), v1_probs);
    // The monitor's latency and the route label count /v2 as inference.
    let metrics = server.metrics().await;
    assert!(
        metrics.contains(r#"route="/v2/models/{name}/infer",method="POST",status="200""#),
        "{metrics}"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn fp16_inputs_are_rounded_to_half_precision() {
    let server = still_server().await;
    // The task's raw features reach 1e6, beyond FP16; these rows fit, and most of
    // their values are not exact in FP16.
    let dim = server.status().await["input_dim"].as_u64().unwrap() as usize;
    let rows: Vec<Vec<f32>> = (0..2)
        .map(|r| {
            (0..dim)
                .map(|i| 0.1 + (r * dim + i) as f32 * 0.37)
                .collect()
        })
        .collect();
    let rounded: Vec<Vec<f32>> = rows
        .iter()
        .map(|r| r.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect())
        .collect();
    assert_ne!(rows, rounded, "the sample needs values FP16 cannot hold");
    let v1 = server.infer(json!(rounded)).await;
    let (code, reply) = post(&server, INFER, &json!({"inputs": [tensor("FP16", &rows)]})).await;
    assert_eq!(code, 200, "{reply}");
    let v1_probs: Vec<f64> = v1["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["probabilities"].as_array().unwrap().clone())
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(output(&reply, "probabilities"), v1_probs);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn outputs_follow_the_request() {
    let server = still_server().await;
    let rows = vec![sample(3).0];
    let body = json!({"inputs": [tensor("FP32", &rows)], "outputs": [{"name": "label", "parameters": {"binary_data": false}}]});
    let (code, reply) = post(&server, INFER, &body).await;
    assert_eq!(code, 200, "{reply}");
    let names: Vec<&Value> = reply["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| &o["name"])
        .collect();
    assert_eq!(names, [&json!("label")]);
    assert!(
        reply.get("id").is_none(),
        "no id sent, none echoed: {reply}"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn the_request_id_takes_a_delayed_label() {
    let server = TestServer::start().await;
    let (x, y) = sample(5);
    let before = server.status().await;
    let (code, reply) = post(&server, INFER, &json!({"inputs": [tensor("FP32", &[x])]})).await;
    assert_eq!(code, 200, "{reply}");
    let id = reply["parameters"]["request_id"]
        .as_u64()
        .expect("one row, one request_id");
    assert_eq!(request_ids(&reply), [id]);
    let after = server.status().await;
    assert_eq!(
        after["pending_predictions"].as_u64().unwrap(),
        before["pending_predictions"].as_u64().unwrap() + 1,
        "the prediction waits for its label"
    );
    let r = client()
        .post(server.url("/v1/feedback"))
        .json(&json!({"request_id": id, "label": y}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    let labelled = server.status().await;
    assert_eq!(
        labelled["labels"]["received"].as_u64().unwrap(),
        before["labels"]["received"].as_u64().unwrap() + 1
    );
    server.stop().await.unwrap();
}

/// The counters a refused request must leave alone.
async fn footprint(server: &TestServer) -> Value {
    let s = server.status().await;
    json!([
        s["updates"]["sent"],
        s["pending_predictions"],
        s["labels"]["received"],
        s["pseudo_labels"],
        s["experiences"],
        s["request_ids"]["next"],
        s["paths"],
    ])
}

/// A refused request: path, content type (none: as tritonclient sends it), body,
/// status, `error_type`, and words the message must hold.
type Case<'a> = (&'a str, Option<&'a str>, String, u16, &'a str, &'a str);

#[tokio::test]
async fn each_bad_request_is_refused_and_changes_nothing() {
    let server = TestServer::start_with(|c| c.server.payload_limit_bytes = 4096).await;
    let dim = server.status().await["input_dim"].as_u64().unwrap() as usize;
    let ok =
        || json!({"name": "input", "shape": [1, dim], "datatype": "FP32", "data": vec![0.5; dim]});
    let with = |key: &str, value: Value| {
        let mut input = ok();
        input[key] = value;
        json!({"inputs": [input]}).to_string()
    };
    let huge = json!({"inputs": [{"name": "input", "shape": [100, dim], "datatype": "FP32", "data": vec![0.123_456_7; 100 * dim]}]});
    let takes = format!("takes [N, {dim}]");
    let holds = format!(
        "data has {dim} values, but shape [2, {dim}] holds {}",
        2 * dim
    );
    let elements = format!("data[0] has {} elements", dim - 1);
    let cases: Vec<Case> = vec![
        (INFER, None, r#"{"inputs": [{"name": "input""#.into(), 400, "validation", "malformed JSON"),
        (INFER, None, r#"{"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [NaN, 1]}]}"#.into(), 400, "validation", "malformed JSON"),
        (INFER, None, json!({"id": "x"}).to_string(), 422, "validation", "missing field `inputs`"),
        (INFER, None, with("shape", json!([dim])), 422, "validation", &takes),
        (INFER, None, with("shape", json!([1, dim + 1])), 422, "validation", "has shape"),
        (INFER, None, with("shape", json!([2, dim])), 422, "validation", &holds),
        (INFER, None, with("data", json!([vec![0.5; dim - 1]])), 422, "validation", &elements),
        (INFER, None, with("datatype", json!("INT8")), 422, "validation", "datatype INT8; this model takes FP32 or FP16"),
        (INFER, None, with("datatype", json!("BYTES")), 422, "validation", "datatype BYTES"),
        (INFER, None, with("data", json!(std::iter::once(json!("NaN")).chain(vec![json!(0.5); dim - 1]).collect::<Vec<_>>())), 422, "validation", "data[0] is a string, not a number"),
        (INFER, None, with("data", json!(std::iter::once(json!(1e39)).chain(vec![json!(0.5); dim - 1]).collect::<Vec<_>>())), 422, "validation", "does not fit in FP32"),
        (INFER, None, with("datatype", json!("FP16")).replace("\"data\":[0.5", "\"data\":[70000.0"), 422, "validation", "data[0] = 70000.0 does not fit in FP16"),
        (INFER, None, with("name", json!("features")), 422, "validation", "unknown input \"features\""),
        (INFER, None, json!({"inputs": [ok()], "outputs": [{"name": "logits"}]}).to_string(), 422, "validation", "unknown output \"logits\""),
        (INFER, None, json!({"inputs": [ok()], "model_name": "other"}).to_string(), 422, "validation", "the body names model \"other\""),
        (INFER, None, json!({"inputs": [{"name": "input", "shape": [0, dim], "datatype": "FP32", "data": []}]}).to_string(), 422, "validation", "at least one row"),
        (INFER, None, huge.to_string(), 413, "validation", "exceeds the limit of 4096 bytes"),
        (INFER, Some("text/plain"), json!({"inputs": [ok()]}).to_string(), 415, "validation", "Content-Type: application/json"),
        ("/v2/models/resnet/infer", None, json!({"inputs": [ok()]}).to_string(), 404, "not_found", "unknown model \"resnet\""),
        ("/v2/models/resnet/infer", None, "not json".into(), 404, "not_found", "serves one model, \"adaptserve\""),
        ("/v2/models/adaptserve/versions/999/infer", None, json!({"inputs": [ok()]}).to_string(), 404, "not_found", "no version \"999\""),
    ];
    for (path, content_type, body, status, error_type, needle) in cases {
        let before = footprint(&server).await;
        let mut request = client().post(server.url(path)).body(body.clone());
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let r = request.send().await.unwrap();
        let code = r.status().as_u16();
        let err: Value = r.json().await.unwrap_or(Value::Null);
        let shown: String = body.chars().take(120).collect();
        assert_eq!(code, status, "{shown}: {err}");
        assert_eq!(err["error_type"], error_type, "{shown}: {err}");
        let message = err["error"].as_str().unwrap_or_default();
        assert!(
            message.contains(needle),
            "{shown}: {message:?} lacks {needle:?}"
        );
        assert_eq!(footprint(&server).await, before, "{shown} changed state");
    }
    // The binary tensor extension is refused with a way out.
    let before = footprint(&server).await;
    let r = client()
        .post(server.url(INFER))
        .header("inference-header-content-length", "60")
        .body(vec![0u8; 200])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let err: Value = r.json().await.unwrap();
    assert!(
        err["error"].as_str().unwrap().contains("binary_data=False"),
        "{err}"
    );
    assert_eq!(footprint(&server).await, before);
    // Nothing was refused for want of capacity: the server still answers.
    let (code, reply) = post(&server, INFER, &json!({"inputs": [ok()]})).await;
    assert_eq!(code, 200, "{reply}");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_infer_shares_the_rate_limit_of_v1() {
    let server = TestServer::start_with(|c| {
        c.server.rate_limit_per_sec = 0.5;
        c.server.rate_limit_burst = 2.0;
    })
    .await;
    let rows = vec![sample(0).0];
    server.infer(json!(rows)).await;
    server.infer(json!(rows)).await;
    let (code, err) = post(&server, INFER, &json!({"inputs": [tensor("FP32", &rows)]})).await;
    assert_eq!(code, 429, "{err}");
    assert_eq!(err["error_type"], "overloaded");
    // The probes are not limited.
    assert_eq!(get(&server, "/v2/health/ready").await.0, 200);
    server.stop().await.unwrap();
}
