//! `/metrics`: the names, the bounded labels, and the scrape cost.

use serde_json::json;

use crate::common::{TestServer, client, sample};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_cover_the_request_and_update_paths_with_bounded_labels() {
    let server = TestServer::start().await;
    server.wait_worker().await;
    let http = client();
    for t in 0..20 {
        let (features, label) = sample(t);
        http.post(server.url("/v1/infer"))
            .json(&json!({"inputs": [features.clone()]}))
            .send()
            .await
            .unwrap();
        http.post(server.url("/v1/feedback"))
            .json(&json!({"features": features, "label": label}))
            .send()
            .await
            .unwrap();
    }
    http.get(server.url("/no/such/route/12345"))
        .send()
        .await
        .unwrap();
    http.post(server.url("/v1/feedback"))
        .json(&json!({"request_id": 987654321, "label": 0}))
        .send()
        .await
        .unwrap();
    let r = http.get(server.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = r.text().await.unwrap();
    for needle in [
        r#"adaptserve_http_requests_total{route="/v1/infer",method="POST",status="200"}"#,
        r#"adaptserve_http_requests_total{route="/v1/feedback",method="POST",status="202"}"#,
        r#"adaptserve_http_requests_total{route="/v1/feedback",method="POST",status="404"}"#,
        r#"adaptserve_http_requests_total{route="unmatched",method="GET",status="404"}"#,
        r#"adaptserve_http_request_duration_seconds_bucket{route="/v1/infer",le="0.001"}"#,
        r#"adaptserve_infer_rows_total{path="cold_start"}"#,
        "adaptserve_model_batch_rows_bucket",
        "adaptserve_memory_experiences",
        "adaptserve_updates_sent_total",
        "adaptserve_updates_applied_total",
        "adaptserve_ring_depth",
        "adaptserve_model_queue_depth 0",
        "adaptserve_wal_bytes",
        "adaptserve_model_version 1",
        r#"adaptserve_worker_state{state="running"} 1"#,
        "adaptserve_process_resident_memory_bytes",
        "# HELP adaptserve_http_requests_total",
        "# TYPE adaptserve_http_requests_total counter",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    assert!(!text.contains("12345"), "a raw path leaked into a label");
    assert!(
        !text.contains("987654321"),
        "a request id leaked into a label"
    );
    server.stop().await.unwrap();
}

/// Route labels come from the router's matched path, so every route has its own,
/// including one added after the metrics were written (`/v1/admin/fault/knn` was
/// once counted as "other").
#[tokio::test]
async fn every_route_is_labelled_by_its_own_template() {
    let server = TestServer::start_with(|c| c.worker.enabled = false).await;
    let (status, body) = server
        .admin("/v1/admin/fault/knn", json!({"failure_rate": 0.0}))
        .await;
    assert_eq!(status, 409, "fault injection is off: {body}");
    // A wrong method on a known route is still that route (405, or 401 if the
    // token check answers first).
    let wrong_method = client()
        .get(server.url("/v1/admin/fault/knn"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    assert!(matches!(wrong_method, 401 | 405), "{wrong_method}");
    let text = server.metrics().await;
    for needle in [
        r#"adaptserve_http_requests_total{route="/v1/admin/fault/knn",method="POST",status="409"}"#
            .to_string(),
        format!(
            r#"adaptserve_http_requests_total{{route="/v1/admin/fault/knn",method="GET",status="{wrong_method}"}}"#
        ),
        r#"adaptserve_http_request_duration_seconds_count{route="/v1/admin/fault/knn"}"#
            .to_string(),
    ] {
        assert!(text.contains(&needle), "missing {needle} in\n{text}");
    }
    assert!(
        !text.contains(r#"route="other""#),
        "a route fell back to a catch-all label:\n{text}"
    );
    server.stop().await.unwrap();
}
