//! `/v1/admin/*`: the sync barrier, checkpoints, rollback. Bearer token only.
//!
//! Every admin route sits behind [`require_token`], applied to the admin router as a
//! whole, so a route added later cannot forget it. No token configured means the
//! routes are closed (403), not open. The comparison with the configured token runs
//! in time independent of where the strings differ.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::openapi::{
    BadJson, Conflict, Forbidden, Internal, Invalid, NotFound, PayloadTooLarge, Unauthorized,
    Unavailable, UnsupportedMediaType,
};
use super::{ApiError, AppJson, AppState};
use crate::update::swap::{SyncReply, UpdateError};

/// Refuses a request without the configured bearer token.
pub(super) async fn require_token(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let Some(expected) = state.config.admin_token.as_ref() else {
        return Err(ApiError::Forbidden);
    };
    let given = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(ApiError::Unauthorized)?;
    if !constant_time_eq(given.trim().as_bytes(), expected.expose().as_bytes()) {
        return Err(ApiError::WrongToken);
    }
    Ok(next.run(request).await)
}

/// Equality whose running time depends only on the lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, &x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i).copied().unwrap_or(!x));
    }
    diff == 0
}

impl From<UpdateError> for ApiError {
    fn from(e: UpdateError) -> Self {
        match e {
            UpdateError::NoWorker => Self::Conflict(e.to_string()),
            UpdateError::SyncTimeout { .. } | UpdateError::Cluster(_) => {
                Self::Unavailable(e.to_string())
            }
            UpdateError::UnknownVersion { .. } => Self::NotFound(e.to_string()),
            UpdateError::Checkpoint { .. } => Self::Conflict(e.to_string()),
            UpdateError::Log(_) => Self::Unavailable(e.to_string()),
            UpdateError::State(reason) => Self::Internal(reason),
        }
    }
}

/// `POST /v1/admin/sync`: returns once every update accepted before the call is in
/// the serving weights.
#[utoipa::path(
    post,
    path = "/v1/admin/sync",
    tag = "admin",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Every update accepted before the call is in the serving weights", body = SyncReply),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 409, response = Conflict),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub(super) async fn sync(
    State(state): State<Arc<AppState>>,
) -> Result<AppJson<SyncReply>, ApiError> {
    Ok(AppJson(state.updates.sync().await?))
}

/// `POST /v1/admin/checkpoint`: the sync barrier, then the WAL fsynced.
#[utoipa::path(
    post,
    path = "/v1/admin/checkpoint",
    tag = "admin",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Synced, and the WAL is on disk", body = SyncReply),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 409, response = Conflict),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub(super) async fn checkpoint(
    State(state): State<Arc<AppState>>,
) -> Result<AppJson<SyncReply>, ApiError> {
    Ok(AppJson(state.updates.checkpoint().await?))
}

/// `{"version": N}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"version": 1}))]
pub(super) struct RollbackRequest {
    /// A model version still kept (a checkpoint in the state dir).
    version: u64,
}

/// `{"model_version": N, "applied_seq": S}`.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct RollbackReply {
    model_version: u64,
    applied_seq: u64,
}

/// `POST /v1/admin/rollback {version}`: serves a kept version again.
#[utoipa::path(
    post,
    path = "/v1/admin/rollback",
    tag = "admin",
    security(("admin_token" = [])),
    request_body = RollbackRequest,
    responses(
        (status = 200, description = "The version is served again", body = RollbackReply),
        (status = 400, response = BadJson),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = Invalid),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub(super) async fn rollback(
    State(state): State<Arc<AppState>>,
    AppJson(request): AppJson<RollbackRequest>,
) -> Result<AppJson<RollbackReply>, ApiError> {
    let reply = state.updates.rollback(request.version).await?;
    Ok(AppJson(RollbackReply {
        model_version: reply.model_version,
        applied_seq: reply.applied_seq,
    }))
}

/// `{"resumed": bool, "state": "..."}`.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct WorkerRestartReply {
    /// True if supervision was suspended and is now resumed; false if a live worker
    /// was restarted.
    resumed: bool,
    /// The worker's state right after, as `/v1/status` names it.
    #[schema(schema_with = crate::status::worker_state_schema)]
    state: &'static str,
}

/// `POST /v1/admin/worker/restart`: resumes a suspended supervisor, or restarts the
/// worker.
#[utoipa::path(
    post,
    path = "/v1/admin/worker/restart",
    tag = "admin",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Supervision resumed, or the worker restarted", body = WorkerRestartReply),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 409, response = Conflict),
    )
)]
pub(super) async fn restart_worker(
    State(state): State<Arc<AppState>>,
) -> Result<AppJson<WorkerRestartReply>, ApiError> {
    let updates = &state.updates;
    let worker = updates.worker();
    if !worker.enabled() {
        return Err(ApiError::from(UpdateError::NoWorker));
    }
    let resumed = worker.resume_or_restart().await;
    Ok(AppJson(WorkerRestartReply {
        resumed,
        state: worker.status().state().as_str(),
    }))
}

/// `{"failure_rate": r}`, `r` in `[0, 1]`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"failure_rate": 0.0}))]
pub(super) struct KnnFaultRequest {
    /// The share of k-NN searches to fail, in `[0, 1]`.
    failure_rate: f64,
}

/// `{"failure_rate": r, "injected": n}`.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct KnnFaultReply {
    failure_rate: f64,
    /// Searches failed on purpose so far.
    injected: u64,
}

/// `POST /v1/admin/fault/knn`: makes a share of k-NN searches fail (chaos testing).
/// 409 unless the server runs with `engine.fault_injection = true`.
#[utoipa::path(
    post,
    path = "/v1/admin/fault/knn",
    tag = "admin",
    security(("admin_token" = [])),
    request_body = KnnFaultRequest,
    responses(
        (status = 200, description = "The failure rate is set", body = KnnFaultReply),
        (status = 400, response = BadJson),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = Invalid),
        (status = 409, response = Conflict),
    )
)]
pub(super) async fn knn_fault(
    State(state): State<Arc<AppState>>,
    AppJson(request): AppJson<KnnFaultRequest>,
) -> Result<AppJson<KnnFaultReply>, ApiError> {
    let rate = request.failure_rate;
    if !(0.0..=1.0).contains(&rate) {
        return Err(ApiError::Validation(format!(
            "failure_rate must be a number in [0, 1], got {rate}"
        )));
    }
    if !state.engine.set_knn_fault_rate(rate) {
        return Err(ApiError::Conflict(
            "fault injection is off: start the server with engine.fault_injection = true".into(),
        ));
    }
    let fault = state.engine.knn_fault();
    Ok(AppJson(KnnFaultReply {
        failure_rate: fault.rate(),
        injected: fault.injected(),
    }))
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }
}
