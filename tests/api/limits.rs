//! Overload and timeouts, provoked deterministically: a client that sends headers
//! and then only part of its body holds its request (and its concurrency permit)
//! open for as long as it likes.

use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::common::{TestServer, client};

/// Opens a `/v1/infer` request whose body never completes.
async fn stalled_request(server: &TestServer) -> TcpStream {
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let head = "POST /v1/infer HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"inputs\": [[";
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.flush().await.unwrap();
    stream
}

async fn infer_status(server: &TestServer) -> (u16, Value) {
    let body = serde_json::json!({"inputs": [vec![0.5f32; 16]]});
    let r = client()
        .post(server.url("/v1/infer"))
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn concurrency_limit_answers_429_and_recovers() {
    let server = TestServer::start_with(|c| c.server.max_concurrency = 1).await;
    let stalled = stalled_request(&server).await;
    // Give the server a moment to route the stalled request and take the permit.
    let mut seen = None;
    for _ in 0..50 {
        let (status, body) = infer_status(&server).await;
        if status == 429 {
            seen = Some(body);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let body = seen.expect("a second request while the permit is held gets 429");
    assert_eq!(body["error_type"], "overloaded");
    // Health stays reachable under overload.
    let live = client()
        .get(server.url("/health/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    drop(stalled);
    let mut recovered = false;
    for _ in 0..50 {
        if infer_status(&server).await.0 == 200 {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        recovered,
        "the permit is released when the client goes away"
    );
}

#[tokio::test]
async fn slow_request_times_out_with_503() {
    let server = TestServer::start_with(|c| c.server.request_timeout_ms = 300).await;
    let mut stream = stalled_request(&server).await;
    let mut response = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 1024];
        loop {
            let n = stream.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            response.extend_from_slice(&buf[..n]);
            if response.windows(4).any(|w| w == b"\r\n\r\n") && response.ends_with(b"}") {
                break;
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the server answered within 10 s");
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("\"error_type\":\"timeout\""), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_client_rate_limit_answers_429_when_on() {
    let server = crate::common::TestServer::start_with(|c| {
        c.server.rate_limit_per_sec = 1.0;
        c.server.rate_limit_burst = 3.0;
    })
    .await;
    let http = crate::common::client();
    let (x, _) = crate::common::sample(0);
    let mut codes = Vec::new();
    for _ in 0..5 {
        let r = http
            .post(server.url("/v1/infer"))
            .json(&serde_json::json!({"inputs": [x.clone()]}))
            .send()
            .await
            .unwrap();
        codes.push(r.status().as_u16());
        if r.status() == 429 {
            let body: serde_json::Value = r.json().await.unwrap();
            assert_eq!(body["error_type"], "overloaded");
            assert!(
                body["error"].as_str().unwrap().contains("rate limit"),
                "{body}"
            );
        }
    }
    assert_eq!(&codes[..3], &[200, 200, 200], "{codes:?}");
    assert_eq!(codes[4], 429, "{codes:?}");
    // Health and metrics are never limited.
    for _ in 0..10 {
        let r = http.get(server.url("/health/live")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    server.stop().await.unwrap();
}

/// A label cut off by the request timeout after its write to the log is still
/// learned whole: every label the server took (answered 202, or answered 503
/// `timeout` and then 404 "already labelled" when sent again) was also scored and
/// counted, and none is left half-done. Before, the timeout dropped the learning and
/// counting that follow the write. A 1 ms timeout with an fsync per commit makes
/// timeouts common; the test keeps going until it has seen some.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_label_cut_off_by_the_timeout_is_learned_whole() {
    let server = TestServer::start_with(|c| {
        c.server.request_timeout_ms = 1;
        c.wal.fsync = adaptserve_server::config::FsyncMode::Always;
    })
    .await;
    let http = client();
    let (mut taken, mut timeouts) = (0u64, 0u64);
    for round in 0..20u64 {
        for i in 0..50u64 {
            let (x, label) = crate::common::sample(round * 50 + i);
            // The prediction itself may time out too (it waits for nothing, rarely).
            let r = http
                .post(server.url("/v1/infer"))
                .json(&serde_json::json!({"inputs": [x]}))
                .send()
                .await
                .unwrap();
            if r.status() != 200 {
                continue;
            }
            let body: Value = r.json().await.unwrap();
            let id = body["predictions"][0]["request_id"].as_u64().unwrap();
            let label_body = serde_json::json!({"request_id": id, "label": label});
            let r = http
                .post(server.url("/v1/feedback"))
                .json(&label_body)
                .send()
                .await
                .unwrap();
            match r.status().as_u16() {
                202 => taken += 1,
                503 => {
                    let body: Value = r.json().await.unwrap();
                    assert_eq!(body["error_type"], "timeout", "{body}");
                    timeouts += 1;
                    // Let the label's own task finish, then ask again.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let again = http
                        .post(server.url("/v1/feedback"))
                        .json(&label_body)
                        .send()
                        .await
                        .unwrap();
                    match again.status().as_u16() {
                        // It was taken the first time.
                        404 => taken += 1,
                        // It was not (cut off before the write): taken now.
                        202 => taken += 1,
                        // Timed out again: its outcome is unknown; leave the run.
                        503 => return server.stop().await.unwrap(),
                        other => panic!("a label sent again answered {other}"),
                    }
                }
                other => panic!("a label answered {other}"),
            }
        }
        if timeouts >= 5 {
            break;
        }
    }
    assert!(
        timeouts > 0,
        "no label timed out at 1 ms with fsync = always"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let status = server.status().await;
    assert_eq!(status["labels"]["received"], taken, "{}", status["labels"]);
    assert_eq!(status["labels"]["scored"], taken, "{}", status["labels"]);
    server.stop().await.unwrap();
}
