//! `/health`, `/health/live`, `/health/ready` and `/v1/status`.
//!
//! `/health` rates each component green, yellow or red so an operator sees at a
//! glance what is degraded; it answers 503 only when something is red. A worker that
//! is down is yellow, not red: serving goes on and its updates wait in the WAL.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use serde_json::{Value, json};

use super::{AppJson, AppState};
use crate::engine::BreakerState;
use crate::status::Status;
use crate::supervisor::WorkerState;

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

/// The worker rated: yellow whenever the weights are not learning (serving goes on,
/// the WAL keeps every update for when the worker is back), never red.
fn worker_component(status: &Status) -> Component {
    let w = &status.worker;
    match w.state {
        WorkerState::Running => component(
            Light::Green,
            format!("pid {}, {} restarts", w.pid.unwrap_or(0), w.restarts),
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

pub(super) async fn health(State(state): State<Arc<AppState>>) -> (StatusCode, AppJson<Value>) {
    let status = Status::collect(&state);
    let model = if status.ready {
        component(
            Light::Green,
            format!("version {} loaded", status.model_version),
        )
    } else {
        component(Light::Red, "not ready")
    };
    let memory = match status.vote.breaker {
        BreakerState::Closed => component(
            Light::Green,
            format!(
                "{} experiences, {} index",
                status.experiences, status.memory.backend
            ),
        ),
        BreakerState::HalfOpen | BreakerState::Open => component(
            Light::Yellow,
            format!("k-NN circuit breaker {}", status.vote.breaker.as_str()),
        ),
    };
    let (queued, capacity) = (status.batcher.queued, status.batcher.capacity);
    let queue_light = if queued * 10 >= capacity * 9 {
        Light::Red
    } else if queued * 2 >= capacity {
        Light::Yellow
    } else {
        Light::Green
    };
    let queue = component(queue_light, format!("{queued} of {capacity} queued"));
    let worker = worker_component(&status);
    let alerts = if status.alerts.active.is_empty() {
        component(Light::Green, "none firing")
    } else {
        component(
            Light::Yellow,
            format!("firing: {}", status.alerts.active.join(", ")),
        )
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
        "mode": status.mode,
        "worker": status.worker,
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
    if state.is_ready() {
        (StatusCode::OK, AppJson(json!({"status": "ready"})))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            AppJson(json!({"status": "not_ready"})),
        )
    }
}

pub(super) async fn status(State(state): State<Arc<AppState>>) -> AppJson<Status> {
    AppJson(Status::collect(&state))
}
