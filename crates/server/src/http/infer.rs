//! `POST /v1/infer`.

use std::sync::Arc;

use axum::extract::State;
use serde::Deserialize;
use utoipa::ToSchema;

use super::openapi::{
    BadJson, Invalid, Overloaded, PayloadTooLarge, Unavailable, UnsupportedMediaType,
};
use super::{ApiError, AppJson, AppState};
use crate::engine::InferReply;

/// `{"inputs": [[f32; input_dim], ...]}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"inputs": [[0.5, -1.2, 0.3, 0.0, 1.1, -0.4, 0.9, 0.2, -0.7, 0.6, 0.1, -1.0, 0.8, 0.4, -0.3, 0.05]]}))]
pub struct InferRequest {
    /// One row per prediction, each of the model's `input_dim` numbers, finite and
    /// within ±1e18 (`input_dim` is in `/v1/status`).
    pub inputs: Vec<Vec<f32>>,
}

/// `POST /v1/infer`: predicts each row, and remembers it for its delayed label.
#[utoipa::path(
    post,
    path = "/v1/infer",
    tag = "serving",
    request_body = InferRequest,
    responses(
        (status = 200, description = "One prediction per row, in order", body = InferReply),
        (status = 400, response = BadJson),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = Invalid),
        (status = 429, response = Overloaded),
        (status = 503, response = Unavailable),
    )
)]
pub(super) async fn infer(
    State(state): State<Arc<AppState>>,
    AppJson(request): AppJson<InferRequest>,
) -> Result<AppJson<InferReply>, ApiError> {
    let reply = state.engine.infer_and_adapt(request.inputs).await?;
    Ok(AppJson(reply))
}
