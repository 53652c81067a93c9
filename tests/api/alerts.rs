//! Webhook delivery against a real local HTTP receiver that answers 200, fails,
//! stalls, and rate-limits with `Retry-After`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use adaptserve_server::alerts::{Alerts, Severity};
use adaptserve_server::config::{AlertConfig, Secret, WebhookConfig, WebhookFormat};
use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use parking_lot::Mutex;
use serde_json::Value;

/// What the receiver saw, per route.
#[derive(Default)]
struct Seen {
    ok: Mutex<Vec<Value>>,
    limited: Mutex<Vec<(Instant, Value)>>,
    fail_hits: AtomicU64,
    slow_hits: AtomicU64,
}

async fn receiver() -> (String, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let (a, b, c, d) = (seen.clone(), seen.clone(), seen.clone(), seen.clone());
    let app = Router::new()
        .route(
            "/ok",
            post(move |axum::Json(v): axum::Json<Value>| async move {
                a.ok.lock().push(v);
                StatusCode::OK
            }),
        )
        .route(
            "/limited",
            post(move |axum::Json(v): axum::Json<Value>| async move {
                let mut calls = b.limited.lock();
                calls.push((Instant::now(), v));
                if calls.len() == 1 {
                    let mut h = HeaderMap::new();
                    h.insert("retry-after", "1".parse().unwrap());
                    (StatusCode::TOO_MANY_REQUESTS, h)
                } else {
                    (StatusCode::OK, HeaderMap::new())
                }
            }),
        )
        .route(
            "/fail",
            post(move || async move {
                c.fail_hits.fetch_add(1, Ordering::Relaxed);
                StatusCode::INTERNAL_SERVER_ERROR
            }),
        )
        .route(
            "/slow",
            post(move || async move {
                d.slow_hits.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_secs(30)).await;
                StatusCode::OK
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, seen)
}

fn hook(base: &str, path: &str, format: WebhookFormat) -> WebhookConfig {
    WebhookConfig {
        url: Secret::new(format!("{base}{path}")),
        format,
    }
}

async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..1_000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never happened: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_retry_honour_retry_after_and_break_without_blocking_each_other() {
    let (base, seen) = receiver().await;
    let config = AlertConfig {
        webhooks: vec![
            hook(&base, "/ok", WebhookFormat::Generic),
            hook(&base, "/limited", WebhookFormat::Slack),
            hook(&base, "/fail", WebhookFormat::Discord),
            hook(&base, "/slow", WebhookFormat::Alertmanager),
        ],
        cooldown_secs: 0,
        max_attempts: 3,
        retry_base_ms: 10,
        retry_max_ms: 5_000,
        breaker_failures: 2,
        breaker_cooldown_secs: 3_600,
        timeout_ms: 300,
        ..AlertConfig::default()
    };
    let alerts = Alerts::start(&config);
    let mut details = BTreeMap::new();
    details.insert("pid".to_string(), "42".to_string());
    alerts.raise(
        "worker_crashed",
        Severity::Critical,
        "the worker died",
        details,
    );

    // The healthy endpoint gets it at once, whatever the others are doing.
    eventually("delivery to /ok", || seen.ok.lock().len() == 1).await;
    let body = seen.ok.lock()[0].clone();
    assert_eq!(
        (body["name"].as_str(), body["severity"].as_str()),
        (Some("worker_crashed"), Some("critical"))
    );
    assert_eq!(body["details"]["pid"], "42");

    // The rate-limited one is retried after the second it asked for, in Slack's shape.
    eventually("the retry to /limited", || seen.limited.lock().len() == 2).await;
    {
        let calls = seen.limited.lock();
        let gap = calls[1].0 - calls[0].0;
        assert!(gap >= Duration::from_millis(950), "retried after {gap:?}");
        assert!(
            calls[1].1["text"]
                .as_str()
                .unwrap()
                .contains("worker_crashed")
        );
    }

    // The failing one: three attempts, then a counted failure.
    let fail = alerts.endpoints()[2].clone();
    eventually("three attempts at /fail", || {
        fail.failed.load(Ordering::Relaxed) == 1
    })
    .await;
    assert_eq!(seen.fail_hits.load(Ordering::Relaxed), 3);
    assert_eq!(fail.retries.load(Ordering::Relaxed), 2);

    // Two more alerts: the second failure opens /fail's breaker, the third is dropped
    // without a request.
    alerts.raise("kl_high", Severity::Warning, "moved", BTreeMap::new());
    eventually("second failure", || {
        fail.failed.load(Ordering::Relaxed) == 2
    })
    .await;
    alerts.raise("queue_full", Severity::Warning, "full", BTreeMap::new());
    eventually("dropped by the open breaker", || {
        fail.dropped.load(Ordering::Relaxed) == 1
    })
    .await;
    assert_eq!(
        seen.fail_hits.load(Ordering::Relaxed),
        6,
        "no request while open"
    );
    eventually("all three at /ok", || seen.ok.lock().len() == 3).await;

    // The stalled endpoint times out per attempt and has delivered nothing.
    let slow = alerts.endpoints()[3].clone();
    assert_eq!(slow.delivered.load(Ordering::Relaxed), 0);
    assert!(seen.slow_hits.load(Ordering::Relaxed) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_webhook_never_slows_or_fails_inference() {
    let (base, seen) = receiver().await;
    let stalled = hook(&base, "/slow", WebhookFormat::Alertmanager);
    let server = crate::common::TestServer::start_with(move |c| {
        // An alert every 50 ms (memory "pressure" with a 1 MiB limit, no cooldown)
        // into a webhook that never answers, behind a queue of 4.
        c.monitor.monitoring_interval_ms = 50;
        c.monitor.memory_limit_bytes = 1 << 20;
        c.alerts.cooldown_secs = 0;
        c.alerts.queue = 4;
        c.alerts.timeout_ms = 30_000;
        c.alerts.webhooks = vec![stalled];
    })
    .await;
    let mut status = serde_json::Value::Null;
    for t in 0..300u64 {
        let (x, _) = crate::common::sample(t);
        server.infer(serde_json::json!([x])).await;
        if t % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
    }
    for _ in 0..300 {
        status = server.status().await;
        if status["alerts"]["webhooks"][0]["dropped"]
            .as_u64()
            .unwrap_or(0)
            > 0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let hook = &status["alerts"]["webhooks"][0];
    assert!(
        hook["dropped"].as_u64().unwrap() > 0,
        "a full webhook queue drops and counts: {status}"
    );
    assert_eq!(hook["delivered"], 0);
    assert!(seen.slow_hits.load(Ordering::Relaxed) >= 1);
    server.stop().await.unwrap();
}
