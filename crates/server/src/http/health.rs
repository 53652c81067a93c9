//! `/health`, `/health/live`, `/health/ready` and `/v1/status`.
//!
//! `/health` rates each component green, yellow or red so an operator sees at a
//! glance what is degraded; it answers 503 only when something is red. A worker that
//! is down is yellow, not red: serving goes on and its updates wait in the WAL.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use super::openapi::{NotFound, Unavailable};
use super::{AppJson, AppState};
use crate::cluster::ClusterView;
use crate::engine::BreakerState;
use crate::status::Status;
use crate::supervisor::WorkerState;

/// Traffic-light rating of a component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Light {
    Green,
    Yellow,
    Red,
}

/// One component's rating and why.
#[derive(Debug, Serialize, ToSchema)]
pub struct Component {
    status: Light,
    detail: String,
}

/// The body of `GET /health`.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthReport {
    /// The worst component's light.
    status: Light,
    /// As in `/v1/status`: `cold_start` or `normal`.
    #[schema(schema_with = crate::status::mode_schema)]
    mode: &'static str,
    worker: crate::status::Worker,
    /// The health monitor's last interval (`null` before its first tick).
    health_metrics: Option<crate::monitor::Health>,
    /// By name: `model`, `memory`, `queue`, `alerts`, and `worker` (standalone) or
    /// `cluster` (a cluster replica).
    components: BTreeMap<&'static str, Component>,
}

/// The body of `GET /health/live`: `{"status": "alive"}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Liveness {
    status: Alive,
}

/// The only answer of a live process.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Alive {
    Alive,
}

/// The body of `GET /health/ready`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    status: Ready,
}

/// Whether the server takes traffic.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Ready {
    Ready,
    NotReady,
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

/// `GET /health`: each component rated green, yellow or red.
#[utoipa::path(
    get,
    path = "/health",
    tag = "health",
    responses(
        (status = 200, description = "Nothing is red (yellow components still serve)", body = HealthReport),
        (status = 503, description = "A component is red: the model is not ready or the queue is nearly full", body = HealthReport),
    )
)]
pub(super) async fn health(
    State(state): State<Arc<AppState>>,
) -> (StatusCode, AppJson<HealthReport>) {
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
    let components = BTreeMap::from([
        ("model", model),
        ("memory", memory),
        ("queue", queue),
        (worker_name, worker),
        ("alerts", alerts),
    ]);
    let body = HealthReport {
        status: overall,
        mode: status.mode,
        worker: status.worker,
        health_metrics: state.monitor.last().map(|h| (*h).clone()),
        components,
    };
    (code, AppJson(body))
}

/// `GET /health/live`: the process answers (no check of anything else).
#[utoipa::path(
    get,
    path = "/health/live",
    tag = "health",
    responses((status = 200, description = "The process is up", body = Liveness, example = json!({"status": "alive"})))
)]
pub(super) async fn live() -> AppJson<Liveness> {
    AppJson(Liveness {
        status: Alive::Alive,
    })
}

/// `GET /health/ready`: whether to send traffic here.
#[utoipa::path(
    get,
    path = "/health/ready",
    tag = "health",
    responses(
        (status = 200, description = "Ready, and the model thread alive", body = Readiness, example = json!({"status": "ready"})),
        (status = 503, description = "Starting, shutting down, or the model thread died", body = Readiness, example = json!({"status": "not_ready"})),
    )
)]
pub(super) async fn ready(State(state): State<Arc<AppState>>) -> (StatusCode, AppJson<Readiness>) {
    if state.is_ready() {
        (
            StatusCode::OK,
            AppJson(Readiness {
                status: Ready::Ready,
            }),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            AppJson(Readiness {
                status: Ready::NotReady,
            }),
        )
    }
}

/// `GET /v1/cluster`: every replica and the trainer, as Redis has them.
#[utoipa::path(
    get,
    path = "/v1/cluster",
    tag = "status",
    responses(
        (status = 200, description = "The replicas and the trainer, as Redis has them", body = ClusterView),
        (status = 404, response = NotFound),
        (status = 503, response = Unavailable),
    )
)]
pub(super) async fn cluster(
    State(state): State<Arc<AppState>>,
) -> Result<AppJson<ClusterView>, super::error::ApiError> {
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

/// `GET /v1/status`: every counter and state, as one snapshot.
#[utoipa::path(
    get,
    path = "/v1/status",
    tag = "status",
    responses((status = 200, description = "The server's state now", body = Status))
)]
pub(super) async fn status(State(state): State<Arc<AppState>>) -> AppJson<Status> {
    AppJson(Status::collect(&state))
}
