//! The refusals only the Open Inference Protocol has, in the `/v1` error shape.
//!
//! Everything else a `/v2` route refuses is an [`ApiError`], so its status code and
//! `{"error", "error_type"}` body are those of `/v1`. What is added here is a body
//! format `/v1` never meets: the protocol's binary tensor extension, which
//! `tritonclient` and the `kserve` SDK use by default, and a compressed body. Both
//! get 415 with a message that says how to send JSON instead.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::http::ApiError;

/// An error from a `/v2` route.
#[derive(Debug)]
pub enum OipError {
    /// Any error `/v1` could give, with its status code.
    Api(ApiError),
    /// A body in a format this server does not read (415).
    UnsupportedBody(String),
}

impl From<ApiError> for OipError {
    fn from(e: ApiError) -> Self {
        Self::Api(e)
    }
}

impl From<crate::engine::EngineError> for OipError {
    fn from(e: crate::engine::EngineError) -> Self {
        Self::Api(e.into())
    }
}

impl IntoResponse for OipError {
    fn into_response(self) -> Response {
        match self {
            Self::Api(e) => e.into_response(),
            Self::UnsupportedBody(message) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                axum::Json(json!({"error": message, "error_type": "validation"})),
            )
                .into_response(),
        }
    }
}
