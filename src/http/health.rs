//! `/health`, `/health/live`, `/health/ready` and `/v1/status`.
//!
//! `/health` rates each component green, yellow or red so an operator sees at a
//! glance what is degraded; it answers 503 only when something is red. A worker that
//! is down is yellow, not red: serving goes on and its updates wait in the WAL.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use serde_json::{Value, json};

use super::{AppJson, AppState};
use crate::engine::BreakerState;

/// Traffic-light rating of a component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Light {
    Green,
    Yellow,
    Red,
}

#[derive(Debug, Serialize)]
struct Component {
    status: Light,
    detail: String,
}

fn component(status: Light, detail: impl Into<String>) -> Component {
    Component {
        status,
        detail: detail.into(),
    }
}

/// `{"pid", "state", "restarts"}` of the update-worker.
fn worker_json(state: &AppState) -> Value {
    match &state.updates {
        Some(u) => {
            let w = u.worker().status();
            json!({"pid": w.pid(), "state": w.state().as_str(), "restarts": w.restarts(), "failed_attempts": w.failed_attempts(), "crash_streak": w.crash_streak()})
        }
        None => json!({"pid": null, "state": "disabled", "restarts": 0}),
    }
}

/// The worker rated: yellow whenever the weights are not learning (serving goes on,
/// the WAL keeps every update for when the worker is back), never red.
fn worker_component(state: &AppState) -> Component {
    use crate::supervisor::WorkerState;
    let Some(u) = &state.updates else {
        return component(Light::Yellow, "no update path: weights do not train");
    };
    let w = u.worker().status();
    match w.state() {
        WorkerState::Running => component(
            Light::Green,
            format!("pid {}, {} restarts", w.pid().unwrap_or(0), w.restarts()),
        ),
        other => component(
            Light::Yellow,
            format!(
                "{}: weights do not train until it runs; updates wait in the WAL",
                other.as_str()
            ),
        ),
    }
}

/// Active alerts and delivery counters.
fn alerts_json(state: &AppState) -> Value {
    let Some(u) = &state.updates else {
        return Value::Null;
    };
    let a = u.alerts();
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let s = a.stats();
    let webhooks: Vec<Value> = a
        .endpoints()
        .iter()
        .map(|e| json!({"delivered": load(&e.delivered), "failed": load(&e.failed), "retries": load(&e.retries), "dropped": load(&e.dropped)}))
        .collect();
    json!({
        "active": a.active(),
        "raised": load(&s.raised),
        "resolved": load(&s.resolved),
        "suppressed": load(&s.suppressed),
        "dropped": load(&s.dropped),
        "webhooks": webhooks,
    })
}

/// `{"depth", "capacity", "dropped", "generation"}` of the shared-memory ring.
fn ring_json(state: &AppState) -> Value {
    match &state.updates {
        Some(u) => {
            let r = u.pipeline().ring();
            let dropped = crate::engine::UpdateSink::stats(u.pipeline().as_ref()).dropped;
            // The path says which shared-memory file is live (one per worker
            // generation), for an operator looking at /dev/shm.
            json!({"depth": r.depth(), "capacity": r.capacity(), "dropped": dropped, "generation": r.generation(), "path": r.path()})
        }
        None => json!({"depth": 0, "capacity": 0, "dropped": 0}),
    }
}

pub(super) async fn health(State(state): State<Arc<AppState>>) -> (StatusCode, AppJson<Value>) {
    let engine = &state.engine;
    let status = engine.status();
    let model = if state.is_ready() && engine.model_alive() {
        component(
            Light::Green,
            format!("version {} loaded", status.model_version),
        )
    } else {
        component(Light::Red, "not ready")
    };
    let memory_stats = engine.memory().stats();
    let memory = match status.breaker {
        BreakerState::Closed => component(
            Light::Green,
            format!(
                "{} experiences, {} index",
                memory_stats.len, memory_stats.backend
            ),
        ),
        BreakerState::HalfOpen | BreakerState::Open => component(
            Light::Yellow,
            format!("k-NN circuit breaker {}", status.breaker.as_str()),
        ),
    };
    let queued = engine.batcher_stats().queued.load(Ordering::Relaxed);
    let capacity = engine.batcher_capacity();
    let queue_light = if queued * 10 >= capacity * 9 {
        Light::Red
    } else if queued * 2 >= capacity {
        Light::Yellow
    } else {
        Light::Green
    };
    let queue = component(queue_light, format!("{queued} of {capacity} queued"));
    let worker = worker_component(&state);
    let alerts = match state.updates.as_ref().map(|u| u.alerts().active()) {
        Some(active) if !active.is_empty() => {
            component(Light::Yellow, format!("firing: {}", active.join(", ")))
        }
        _ => component(Light::Green, "none firing"),
    };
    let overall = [
        model.status,
        memory.status,
        queue.status,
        worker.status,
        alerts.status,
    ]
    .into_iter()
    .max()
    .unwrap_or(Light::Green);
    let code = if overall == Light::Red {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let body = json!({
        "status": overall,
        "mode": mode(status.cold_start),
        "worker": worker_json(&state),
        "health_metrics": state.monitor.last().map(|h| json!(*h)),
        "components": {
            "model": model,
            "memory": memory,
            "queue": queue,
            "worker": worker,
            "alerts": alerts,
        },
    });
    (code, AppJson(body))
}

pub(super) async fn live() -> AppJson<Value> {
    AppJson(json!({"status": "alive"}))
}

pub(super) async fn ready(State(state): State<Arc<AppState>>) -> (StatusCode, AppJson<Value>) {
    if state.is_ready() && state.engine.model_alive() {
        (StatusCode::OK, AppJson(json!({"status": "ready"})))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            AppJson(json!({"status": "not_ready"})),
        )
    }
}

pub(super) async fn status(State(state): State<Arc<AppState>>) -> AppJson<Value> {
    let engine = &state.engine;
    let s = engine.status();
    let m = engine.memory().stats();
    let e = engine.stats();
    let b = engine.batcher_stats();
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let scored = load(&e.labels_scored);
    let ratio = |right: &std::sync::atomic::AtomicU64, of: &std::sync::atomic::AtomicU64| {
        let of = load(of);
        (of > 0).then(|| load(right) as f64 / of as f64)
    };
    AppJson(json!({
        "version": crate::VERSION,
        "model_version": s.model_version,
        "mode": mode(s.cold_start),
        "experiences": s.experiences,
        "input_dim": s.input_dim,
        "num_classes": s.num_classes,
        "uptime_seconds": state.started.elapsed().as_secs_f64(),
        "worker": worker_json(&state),
        "ring": ring_json(&state),
        "wal_bytes": state.updates.as_ref().map_or(0, |u| u.pipeline().wal_bytes()),
        "rss_bytes": crate::metrics::resident_bytes(),
        "alerts": alerts_json(&state),
        "updates": {
            "sent": s.updates.sent,
            "applied": state.updates.as_ref().map_or(s.updates.applied, |u| s.updates.applied.max(u.settled())),
            "settled": state.updates.as_ref().map(|u| u.settled()),
            "dropped": s.updates.dropped,
            "refused": s.updates.refused,
        },
        "swaps": state.updates.as_ref().map(|u| {
            let st = u.stats();
            json!({
                "swapped": st.swaps.load(Ordering::Relaxed),
                "rejected": st.rejections.load(Ordering::Relaxed),
                "last_kl": st.last_kl(),
                "mean_kl_divergence": st.mean_kl(),
            })
        }),
        "memory": {
            "backend": m.backend.to_string(),
            "capacity": m.capacity,
            "indexed": m.indexed,
            "pending": m.pending,
            "tombstones": m.tombstones,
            "rebuilds": m.rebuilds,
            "dropped_inserts": m.dropped_inserts,
            "evicted": m.evicted_total,
        },
        "vote": {
            "lambda": s.lambda,
            // Each voter's Hedge weight, and its own accuracy on the labels joined
            // while it voted, keyed by its name.
            "weights": s.vote.weights_json(),
            "accuracy": s.vote.accuracy_json(),
            "breaker": s.breaker.as_str(),
            "drift_active": s.drift_active,
            "drifts": s.drifts,
        },
        "paths": {
            "cold_start": load(&e.cold_start),
            "ensemble": load(&e.ensemble),
            "fallback": load(&e.fallback),
        },
        "knn_failures": load(&e.knn_failures),
        "knn_faults_injected": engine.knn_fault().injected(),
        "pseudo_labels": load(&e.pseudo_labels),
        "labels": {
            "received": load(&e.labels),
            "scored": scored,
            "accuracy": ratio(&e.labels_correct, &e.labels_scored),
            "pseudo_scored": load(&e.pseudo_scored),
            "pseudo_precision": ratio(&e.pseudo_correct, &e.pseudo_scored),
        },
        "pending_predictions": s.pending,
        "pending_predictions_bytes": s.pending_bytes,
        "pending_log": state.updates.as_ref().map(|u| json!({
            "bytes": u.pipeline().pending_bytes(),
            "dropped": u.pipeline().pending_dropped(),
        })),
        "request_ids": {
            "next": engine.request_ids().peek(),
            "refused": engine.request_ids().refused(),
        },
        "recovery": state.recovery.get(),
        "batcher": {
            "queued": b.queued.load(Ordering::Relaxed),
            "capacity": engine.batcher_capacity(),
            "batches": load(&b.batches),
            "rows": load(&b.rows),
            "rejected": load(&b.rejected),
            "target_batch": b.target_batch.load(Ordering::Relaxed),
        },
    }))
}

fn mode(cold_start: bool) -> &'static str {
    if cold_start { "cold_start" } else { "normal" }
}
