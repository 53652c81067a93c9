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

/// A replica's link to the cluster rated in place of the worker: yellow while
/// Redis is away (serving goes on; labels wait in the WAL and reach the local
/// memory), never red.
fn cluster_component(c: &crate::cluster::ClusterStatus) -> Component {
    if c.redis_up {
        component(
            Light::Green,
            format!(
                "replica {}, Redis up, {} updates unsent",
                c.replica_id, c.forward.unsent
            ),
        )
    } else {
        component(
            Light::Yellow,
            format!(
                "replica {}: Redis is unreachable; serving on, {} updates wait in the WAL",
                c.replica_id, c.forward.unsent
            ),
        )
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
    let (worker_name, worker) = match &status.cluster {
        Some(cluster) => ("cluster", cluster_component(cluster)),
        None => ("worker", worker_component(&status)),
    };
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
    let mut components = serde_json::Map::new();
    components.insert("model".into(), json!(model));
    components.insert("memory".into(), json!(memory));
    components.insert("queue".into(), json!(queue));
    components.insert(worker_name.into(), json!(worker));
    components.insert("alerts".into(), json!(alerts));
    let body = json!({
        "status": overall,
        "mode": status.mode,
        "worker": status.worker,
        "health_metrics": state.monitor.last().map(|h| json!(*h)),
        "components": components,
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

/// `GET /v1/cluster`: every replica and the trainer, as Redis has them.
pub(super) async fn cluster(
    State(state): State<Arc<AppState>>,
) -> Result<AppJson<Value>, super::error::ApiError> {
    let Some(replica) = state.replica() else {
        return Err(super::error::ApiError::NotFound(
            "this server is standalone, not a cluster replica (start it with --cluster)".into(),
        ));
    };
    replica
        .view(state.engine.model().version())
        .await
        .map(AppJson)
        .map_err(|e| super::error::ApiError::Unavailable(e.to_string()))
}

pub(super) async fn status(State(state): State<Arc<AppState>>) -> AppJson<Status> {
    AppJson(Status::collect(&state))
}
