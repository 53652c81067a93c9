//! Errors of the request path. Each variant carries what the client needs to fix
//! its request; the HTTP layer maps each to one status code in one match.

use super::batcher::BatcherError;

/// Why `infer_and_adapt` or a feedback could not be served.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("inputs must hold at least one row")]
    EmptyBatch,
    #[error("inputs holds {rows} rows, more than the limit of {max}")]
    BatchTooLarge { rows: usize, max: usize },
    #[error("inputs[{row}] has {found} values, the model expects input_dim = {expected}")]
    WrongDimension {
        row: usize,
        expected: usize,
        found: usize,
    },
    #[error("features has {found} values, the model expects input_dim = {expected}")]
    WrongFeatureDimension { expected: usize, found: usize },
    #[error("{field}[{index}] is not a finite number (NaN, infinity, or beyond f32 range)")]
    NotFinite { field: String, index: usize },
    #[error(
        "{field} is too large for the model: its output is not a finite number; scale the values down"
    )]
    Overflow { field: String },
    #[error(
        "{field}[{index}] is {value:e}, beyond ±{limit:e}, the largest magnitude the model learns from"
    )]
    TooLarge {
        field: String,
        index: usize,
        value: f32,
        limit: f32,
    },
    #[error(
        "label {label} is out of range: the model has {num_classes} classes (0..{num_classes})"
    )]
    LabelOutOfRange { label: u64, num_classes: usize },
    #[error("label {name:?} is not one of the model's label names")]
    UnknownLabelName { name: String },
    #[error("request_id {request_id} is unknown, expired, or already labelled")]
    UnknownRequest { request_id: u64 },
    #[error(
        "request_id {request_id} was answered by replica {replica}, and the cluster store that shares its prediction is unreachable; retry"
    )]
    SharedPendingUnavailable { request_id: u64, replica: u64 },
    #[error(
        "request_id {request_id} was answered by replica {replica}, which may not have shared it yet after a recent Redis outage; retry"
    )]
    SharedPendingSettling { request_id: u64, replica: u64 },
    #[error("the server is overloaded: {what} is full")]
    Overloaded { what: &'static str },
    #[error("the model is unavailable: {reason}")]
    ModelUnavailable { reason: String },
    #[error("updates cannot be accepted: {reason}")]
    UpdatesUnavailable { reason: String },
    #[error("no request id is reserved yet (the reservation is being written); retry")]
    IdsUnavailable,
}

impl From<BatcherError> for EngineError {
    fn from(e: BatcherError) -> Self {
        match e {
            BatcherError::QueueFull { .. } => Self::Overloaded {
                what: "the model queue",
            },
            BatcherError::Stopped => Self::ModelUnavailable {
                reason: "the model thread has stopped".into(),
            },
            BatcherError::Forward { message } => Self::ModelUnavailable { reason: message },
        }
    }
}
