//! One error shape for every route: `{"error": "...", "error_type": "..."}`.
//!
//! [`ApiError`] is the only thing handlers return on failure, and its status code is
//! chosen in one exhaustive match. [`AppJson`] replaces axum's `Json` extractor so that
//! a rejected body (bad JSON, wrong types, too large, wrong content type) gets the same
//! shape as every other error. Internal details go to the log, not to the client.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::engine::EngineError;

/// Every error a client can receive.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not valid JSON.
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    /// The body is JSON of the wrong shape or types, or fails validation.
    #[error("{0}")]
    Validation(String),
    /// The body exceeds `payload_limit_bytes`.
    #[error("request body exceeds the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// The body is not declared as JSON.
    #[error("expected a request with Content-Type: application/json")]
    UnsupportedMediaType,
    /// The thing named does not exist (an unknown or expired `request_id`).
    #[error("{0}")]
    NotFound(String),
    /// Too many requests at once, or a bounded queue is full.
    #[error("{0}")]
    Overloaded(String),
    /// The request did not finish within `request_timeout_ms`.
    #[error("the request timed out")]
    Timeout,
    /// The server cannot serve this right now (model not loaded, shutting down).
    #[error("{0}")]
    Unavailable(String),
    /// An admin route without a bearer token.
    #[error("missing bearer token: send Authorization: Bearer <admin token>")]
    Unauthorized,
    /// An admin route with a bearer token that is not the configured one.
    #[error("the bearer token is not valid for this server")]
    WrongToken,
    /// The request conflicts with the server's state (no worker to sync with, a
    /// checkpoint that cannot be restored).
    #[error("{0}")]
    Conflict(String),
    /// An admin route while no admin token is configured.
    #[error("admin routes are disabled: no admin token is configured")]
    Forbidden,
    /// A bug. The detail is logged; the client sees a generic message.
    #[error("internal error")]
    Internal(String),
}

/// The body of every error response.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"error": "the request timed out", "error_type": "timeout"}))]
pub struct ErrorBody {
    /// What went wrong, for a person.
    pub error: String,
    /// What went wrong, for a program: one of a fixed set of names.
    #[schema(schema_with = error_type_schema)]
    pub error_type: &'static str,
}

/// Every `error_type` a client can see, as [`ApiError::status_and_type`] names them.
pub const ERROR_TYPES: [&str; 9] = [
    "validation",
    "not_found",
    "overloaded",
    "timeout",
    "unavailable",
    "unauthorized",
    "forbidden",
    "conflict",
    "internal",
];

fn error_type_schema() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::Type::String)
        .enum_values(Some(ERROR_TYPES))
        .build()
}

impl ApiError {
    /// The status code and `error_type` of each variant, in one exhaustive match.
    pub fn status_and_type(&self) -> (StatusCode, &'static str) {
        match self {
            Self::MalformedJson(_) => (StatusCode::BAD_REQUEST, "validation"),
            Self::Validation(_) => (StatusCode::UNPROCESSABLE_ENTITY, "validation"),
            Self::PayloadTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "validation"),
            Self::UnsupportedMediaType => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "validation"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::Overloaded(_) => (StatusCode::TOO_MANY_REQUESTS, "overloaded"),
            Self::Timeout => (StatusCode::SERVICE_UNAVAILABLE, "timeout"),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::WrongToken => (StatusCode::FORBIDDEN, "forbidden"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Self::Forbidden => (StatusCode::FORBIDDEN, "forbidden"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, _) = self.status_and_type();
        if let Self::Internal(detail) = &self {
            tracing::error!(%detail, "internal error");
        }
        (status, axum::Json(self.body())).into_response()
    }
}

impl ApiError {
    /// The JSON body this error is answered with.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: self.to_string(),
            error_type: self.status_and_type().1,
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::EmptyBatch
            | EngineError::BatchTooLarge { .. }
            | EngineError::WrongDimension { .. }
            | EngineError::WrongFeatureDimension { .. }
            | EngineError::NotFinite { .. }
            | EngineError::Overflow { .. }
            | EngineError::TooLarge { .. }
            | EngineError::LabelOutOfRange { .. }
            | EngineError::UnknownLabelName { .. } => Self::Validation(e.to_string()),
            EngineError::UnknownRequest { .. } => Self::NotFound(e.to_string()),
            EngineError::Overloaded { .. } => Self::Overloaded(e.to_string()),
            EngineError::ModelUnavailable { reason } => {
                tracing::error!(%reason, "model unavailable");
                Self::Unavailable("the model is unavailable".into())
            }
            EngineError::UpdatesUnavailable { reason } => {
                tracing::error!(%reason, "update log unavailable");
                Self::Unavailable("updates cannot be accepted right now; retry later".into())
            }
            EngineError::IdsUnavailable
            | EngineError::SharedPendingUnavailable { .. }
            | EngineError::SharedPendingSettling { .. } => Self::Unavailable(e.to_string()),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::JsonDataError(e) => Self::Validation(e.body_text()),
            JsonRejection::JsonSyntaxError(e) => Self::MalformedJson(e.body_text()),
            JsonRejection::MissingJsonContentType(_) => Self::UnsupportedMediaType,
            JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                // The limit itself is filled in by the extractor, which knows it.
                Self::PayloadTooLarge { limit: 0 }
            }
            other => Self::MalformedJson(other.body_text()),
        }
    }
}

/// `axum::Json`, with rejections turned into [`ApiError`].
#[derive(Debug, Clone, Copy, Default)]
pub struct AppJson<T>(pub T);

impl<S, T> FromRequest<S> for AppJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync + PayloadLimit,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(match ApiError::from(rejection) {
                ApiError::PayloadTooLarge { .. } => ApiError::PayloadTooLarge {
                    limit: state.payload_limit(),
                },
                other => other,
            }),
        }
    }
}

impl<T: Serialize> IntoResponse for AppJson<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// State that knows the body limit, so a 413 can say what it is.
pub trait PayloadLimit {
    /// The configured body limit in bytes.
    fn payload_limit(&self) -> usize;
}

#[cfg(test)]
mod tests {
    use super::{ApiError, ERROR_TYPES};

    /// The document's list of `error_type`s holds every one a variant has.
    #[test]
    fn every_error_type_is_documented() {
        let all = [
            ApiError::MalformedJson(String::new()),
            ApiError::Validation(String::new()),
            ApiError::PayloadTooLarge { limit: 1 },
            ApiError::UnsupportedMediaType,
            ApiError::NotFound(String::new()),
            ApiError::Overloaded(String::new()),
            ApiError::Timeout,
            ApiError::Unavailable(String::new()),
            ApiError::Unauthorized,
            ApiError::WrongToken,
            ApiError::Conflict(String::new()),
            ApiError::Forbidden,
            ApiError::Internal(String::new()),
        ];
        for error in &all {
            let (_, error_type) = error.status_and_type();
            assert!(
                ERROR_TYPES.contains(&error_type),
                "{error_type} is not listed"
            );
        }
        for listed in ERROR_TYPES {
            assert!(
                all.iter().any(|e| e.status_and_type().1 == listed),
                "{listed} is listed but no error has it"
            );
        }
    }
}
