//! `POST /v1/feedback`: `{request_id, label}` or `{features, label}` → 202.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::openapi::{
    BadJson, Invalid, NotFound, Overloaded, PayloadTooLarge, Unavailable, UnsupportedMediaType,
};
use super::{ApiError, AppJson, AppState};
use crate::engine::{FeedbackTarget, LabelRef};

/// Exactly one of `request_id` and `features`, plus a label (index or name).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FeedbackRequest {
    /// A delayed label: the `request_id` of an earlier prediction.
    pub request_id: Option<u64>,
    /// A labelled example: the model's `input_dim` numbers, finite and within ±1e18.
    pub features: Option<Vec<f32>>,
    pub label: LabelRef,
}

/// `{"accepted": true, "seq": N}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct FeedbackResponse {
    pub accepted: bool,
    /// The update's sequence number in the WAL.
    pub seq: u64,
}

/// `POST /v1/feedback`: a label, for an earlier prediction or a new example.
#[utoipa::path(
    post,
    path = "/v1/feedback",
    tag = "serving",
    request_body(
        content = FeedbackRequest,
        examples(
            ("delayed_label" = (
                summary = "The true label of an earlier prediction",
                value = json!({"request_id": 1, "label": 2})
            )),
            ("labelled_example" = (
                summary = "A labelled example the server has not seen, label by name",
                value = json!({"features": [0.5, -1.2, 0.3, 0.0, 1.1, -0.4, 0.9, 0.2, -0.7, 0.6, 0.1, -1.0, 0.8, 0.4, -0.3, 0.05], "label": "class_1"})
            )),
        )
    ),
    responses(
        (status = 202, description = "Accepted: the label is in the WAL and the memory", body = FeedbackResponse),
        (status = 400, response = BadJson),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = Invalid),
        (status = 404, response = NotFound),
        (status = 429, response = Overloaded),
        (status = 503, response = Unavailable),
    )
)]
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
    // On a task of its own (on this thread: no hand-off), so that a request dropped
    // by the timeout or a closed connection cannot cut the label off between its
    // write to the log and the learning and counting after it. The client then has
    // 503 `timeout` (the outcome unknown) and the server a label learned whole; sent
    // again, it is answered 404, already labelled.
    let engine = state.engine.clone();
    let receipt = tokio::spawn(async move { engine.feedback(target, request.label).await })
        .await
        .map_err(|e| ApiError::Internal(format!("the feedback task failed: {e}")))??;
    Ok((
        StatusCode::ACCEPTED,
        AppJson(FeedbackResponse {
            accepted: true,
            seq: receipt.seq,
        }),
    ))
}
