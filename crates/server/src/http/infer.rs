//! `POST /v1/infer`.

use std::sync::Arc;

use axum::extract::State;
use serde::Deserialize;

use super::{ApiError, AppJson, AppState};
use crate::engine::InferReply;

/// `{"inputs": [[f32; input_dim], ...]}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InferRequest {
    pub inputs: Vec<Vec<f32>>,
}

pub(super) async fn infer(
    State(state): State<Arc<AppState>>,
    AppJson(request): AppJson<InferRequest>,
) -> Result<AppJson<InferReply>, ApiError> {
    let reply = state.engine.infer_and_adapt(request.inputs).await?;
    Ok(AppJson(reply))
}
