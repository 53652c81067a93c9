//! `POST /v1/feedback`: `{request_id, label}` or `{features, label}` → 202.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::{ApiError, AppJson, AppState};
use crate::engine::{FeedbackTarget, LabelRef};

/// Exactly one of `request_id` and `features`, plus a label (index or name).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedbackRequest {
    pub request_id: Option<u64>,
    pub features: Option<Vec<f32>>,
    pub label: LabelRef,
}

/// `{"accepted": true, "seq": N}`.
#[derive(Debug, Serialize)]
pub struct FeedbackResponse {
    pub accepted: bool,
    pub seq: u64,
}

pub(super) async fn feedback(
    State(state): State<Arc<AppState>>,
    AppJson(request): AppJson<FeedbackRequest>,
) -> Result<(StatusCode, AppJson<FeedbackResponse>), ApiError> {
    let target = match (request.request_id, request.features) {
        (Some(id), None) => FeedbackTarget::Request(id),
        (None, Some(features)) => FeedbackTarget::Features(features),
        (Some(_), Some(_)) => {
            return Err(ApiError::Validation(
                "give either request_id or features, not both".into(),
            ));
        }
        (None, None) => {
            return Err(ApiError::Validation(
                "give request_id (a delayed label) or features (a labelled example)".into(),
            ));
        }
    };
    let receipt = state.engine.feedback(target, request.label).await?;
    Ok((
        StatusCode::ACCEPTED,
        AppJson(FeedbackResponse {
            accepted: true,
            seq: receipt.seq,
        }),
    ))
}
