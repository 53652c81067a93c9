//! The Open Inference Protocol's JSON bodies, as plain serde structs.
//!
//! One struct per body, field names as the protocol spells them, so a reader can
//! hold this file next to the protocol's text; each derives its OpenAPI schema. Request bodies ignore fields they do not know, since clients add
//! their own (the `kserve` SDK sends `model_name`, checked when present), and accept
//! the protocol's `parameters` without acting on them.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// `GET /v2`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = OipServerMetadata)]
pub struct ServerMetadata {
    /// Always `"adaptserve"`.
    pub name: &'static str,
    /// The adaptserve release.
    pub version: &'static str,
    /// Protocol extensions supported: none (no binary tensors, no shared memory,
    /// no classification, no model repository).
    pub extensions: Vec<String>,
}

/// `GET /v2/health/live`: always `true` with 200.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = OipLiveness)]
pub struct Liveness {
    pub live: bool,
}

/// `GET /v2/health/ready`: 200 when ready, 503 when not (as `/health/ready`).
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = OipReadiness)]
pub struct Readiness {
    pub ready: bool,
}

/// `GET /v2/models/{name}/ready`: 200 when ready, 503 when not.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = OipModelReadiness)]
pub struct ModelReadiness {
    pub name: &'static str,
    pub ready: bool,
}

/// A tensor's name, type and shape (`-1` for any number of rows).
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = OipTensorMetadata)]
pub struct TensorMetadata {
    pub name: &'static str,
    pub datatype: &'static str,
    pub shape: Vec<i64>,
}

/// `GET /v2/models/{name}`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = OipModelMetadata)]
pub struct ModelMetadata {
    /// Always [`super::MODEL_NAME`].
    pub name: &'static str,
    /// The one version in service: the serving model version, as a string.
    pub versions: Vec<String>,
    /// Always `"adaptserve"`: the model is adaptserve's own MLP and vote.
    pub platform: &'static str,
    /// One input, `input`: FP32 `[-1, input_dim]` (FP16 is accepted too).
    pub inputs: Vec<TensorMetadata>,
    /// `probabilities` FP32 `[-1, num_classes]` and `label` INT64 `[-1]`.
    pub outputs: Vec<TensorMetadata>,
}

/// `POST /v2/models/{name}/infer`.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(as = OipInferRequest)]
pub struct InferRequest {
    /// Echoed in the response.
    #[serde(default)]
    pub id: Option<String>,
    /// Sent by the `kserve` SDK; when present it must name the model in the path.
    #[serde(default)]
    pub model_name: Option<String>,
    /// Accepted and ignored (priority, timeout, sequences: none apply here).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Map<String, Value>>,
    /// Exactly one tensor, `input`.
    pub inputs: Vec<RequestInput>,
    /// The outputs wanted; absent or empty means all of them.
    #[serde(default)]
    pub outputs: Option<Vec<RequestOutput>>,
}

/// One input tensor in the JSON encoding.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(as = OipRequestInput)]
pub struct RequestInput {
    pub name: String,
    /// `[N, input_dim]`.
    pub shape: Vec<i64>,
    /// `FP32` or `FP16`.
    pub datatype: String,
    /// Binary-data and shared-memory parameters are refused; others are ignored.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Map<String, Value>>,
    /// The values, flat in row-major order or nested as `[[...], ...]`. Absent only
    /// when a client sends binary data, which is refused.
    #[serde(default)]
    #[schema(value_type = Option<Vec<serde_json::Value>>)]
    pub data: Option<Value>,
}

/// One requested output.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(as = OipRequestOutput)]
pub struct RequestOutput {
    /// `probabilities` or `label`.
    pub name: String,
    /// `binary_data` is ignored (outputs always come back as JSON); classification
    /// and shared memory are refused.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Map<String, Value>>,
}

/// The answer to `POST /v2/models/{name}/infer`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = OipInferResponse)]
pub struct InferResponse {
    pub model_name: &'static str,
    /// The model version that answered.
    pub model_version: String,
    /// The request's `id`, when it had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub parameters: ResponseParameters,
    /// The requested outputs, in the order asked (all, by default).
    pub outputs: Vec<ResponseOutput>,
}

/// The ids each row's prediction is remembered under, for `POST /v1/feedback`
/// `{"request_id": ..., "label": ...}`. The protocol's parameter values are scalars,
/// so the batch's ids are one comma-separated string.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = OipResponseParameters)]
pub struct ResponseParameters {
    /// The row's id, when the request had one row.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<u64>,
    /// Every row's id, in row order, joined by commas: `"17,18,19"`.
    pub request_ids: String,
}

/// One output tensor in the JSON encoding.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = OipResponseOutput)]
pub struct ResponseOutput {
    pub name: &'static str,
    pub datatype: &'static str,
    pub shape: Vec<usize>,
    /// Flat, row-major.
    pub data: TensorData,
}

/// An output's values.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = OipTensorData)]
#[serde(untagged)]
pub enum TensorData {
    Fp32(Vec<f32>),
    Int64(Vec<i64>),
}
