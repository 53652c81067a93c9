//! The health monitor: thresholds raise alerts, and an alert resolves once its
//! condition has passed.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{TestServer, client, sample};

async fn health(server: &TestServer) -> Value {
    client()
        .get(server.url("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn until(server: &TestServer, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..500 {
        let h = health(server).await;
        if check(&h) {
            return h;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never: {what}: {}", health(server).await);
}

fn firing(h: &Value, name: &str) -> bool {
    h["components"]["alerts"]["detail"]
        .as_str()
        .is_some_and(|d| d.contains(name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thresholds_raise_alerts_that_resolve_when_the_condition_passes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("alerts.jsonl");
    let alert_file = file.clone();
    let server = TestServer::start_with(move |c| {
        c.monitor.monitoring_interval_ms = 100;
        // Every inference is "slow", and any RSS is "pressure".
        c.monitor.latency_p99_threshold_ms = 0.000_001;
        c.monitor.memory_limit_bytes = 1 << 20;
        c.alerts.file = Some(alert_file);
        c.alerts.cooldown_secs = 0;
    })
    .await;
    for t in 0..20 {
        let (x, _) = sample(t);
        server.infer(json!([x])).await;
    }
    let h = until(&server, "latency and memory alerts", |h| {
        firing(h, "latency_p99_high") && firing(h, "memory_high")
    })
    .await;
    assert_eq!(h["components"]["alerts"]["status"], "yellow");
    let m = &h["health_metrics"];
    for key in [
        "update_rate",
        "knn_failure_rate",
        "mean_kl_divergence",
        "queue_size",
        "memory_usage_ratio",
    ] {
        assert!(m[key].is_number(), "{key} in {m}");
    }
    assert!(m["memory_usage_ratio"].as_f64().unwrap() > 1.0);
    assert_eq!(h["mode"], "cold_start");
    assert!(h["worker"]["state"].is_string());

    // No inference in an interval: no p99, the latency alert resolves; memory stays.
    let h = until(&server, "latency resolved", |h| {
        !firing(h, "latency_p99_high")
    })
    .await;
    assert!(firing(&h, "memory_high"));
    let lines: Vec<Value> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let of = |status: &str| {
        lines
            .iter()
            .any(|a| a["name"] == "latency_p99_high" && a["status"] == status)
    };
    assert!(of("firing") && of("resolved"), "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|a| a["name"] == "memory_high" && a["severity"] == "critical")
    );
    server.stop().await.unwrap();
}
