//! The `/v2` routes: server and model metadata, health, and inference.
//!
//! Inference checks everything it can before it calls the engine (the model's
//! name and version, the body's format, the input tensor, the outputs asked for), so
//! a refused request records no prediction and moves no counter but the error ones.

use std::sync::Arc;

use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};

use super::MODEL_NAME;
use super::error::OipError;
use super::tensor::{self, INPUT, LABEL, PROBABILITIES};
use super::types::{
    InferRequest, InferResponse, Liveness, ModelMetadata, ModelReadiness, Readiness,
    ResponseParameters, ServerMetadata, TensorMetadata,
};
use crate::http::openapi::{
    BadJson, Invalid, NotFound, Overloaded, PayloadTooLarge, Unavailable, UnsupportedMediaType,
};
use crate::http::{ApiError, AppJson, AppState};

/// The header of the protocol's binary tensor extension: the JSON part's length.
const BINARY_HEADER: &str = "inference-header-content-length";

/// `GET /v2`.
#[utoipa::path(
    get,
    path = "/v2",
    operation_id = "v2_server_metadata",
    tag = "open inference protocol",
    responses((status = 200, description = "The server's name, version and extensions (none)", body = ServerMetadata))
)]
pub(super) async fn server_metadata() -> AppJson<ServerMetadata> {
    AppJson(ServerMetadata {
        name: "adaptserve",
        version: crate::VERSION,
        extensions: Vec::new(),
    })
}

/// `GET /v2/health/live`: the process answers, so it is live.
#[utoipa::path(
    get,
    path = "/v2/health/live",
    operation_id = "v2_live",
    tag = "open inference protocol",
    responses((status = 200, description = "The process is up", body = Liveness))
)]
pub(super) async fn live() -> AppJson<Liveness> {
    AppJson(Liveness { live: true })
}

/// `GET /v2/health/ready`: 200 exactly when `/health/ready` is.
#[utoipa::path(
    get,
    path = "/v2/health/ready",
    operation_id = "v2_ready",
    tag = "open inference protocol",
    responses(
        (status = 200, description = "Ready, as `/health/ready`", body = Readiness),
        (status = 503, description = "Not ready", body = Readiness),
    )
)]
pub(super) async fn ready(State(state): State<Arc<AppState>>) -> (StatusCode, AppJson<Readiness>) {
    let ready = state.is_ready();
    (ready_code(ready), AppJson(Readiness { ready }))
}

/// `GET /v2/models/{name}`.
#[utoipa::path(
    get,
    path = "/v2/models/{name}",
    operation_id = "v2_model_metadata",
    tag = "open inference protocol",
    params(("name" = String, Path, description = "The model's name: always `adaptserve`")),
    responses(
        (status = 200, description = "The model's inputs, outputs and version", body = ModelMetadata),
        (status = 404, response = NotFound),
    )
)]
pub(super) async fn model_metadata(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<AppJson<ModelMetadata>, OipError> {
    known_model(&name)?;
    Ok(AppJson(metadata(&state)))
}

/// `GET /v2/models/{name}/versions/{version}`.
#[utoipa::path(
    get,
    path = "/v2/models/{name}/versions/{version}",
    operation_id = "v2_model_version_metadata",
    tag = "open inference protocol",
    params(("name" = String, Path, description = "The model's name: always `adaptserve`"), ("version" = String, Path, description = "The serving model version (`/v1/status`'s `model_version`)")),
    responses(
        (status = 200, description = "The model's inputs, outputs and version", body = ModelMetadata),
        (status = 404, response = NotFound),
    )
)]
pub(super) async fn model_version_metadata(
    State(state): State<Arc<AppState>>,
    Path((name, version)): Path<(String, String)>,
) -> Result<AppJson<ModelMetadata>, OipError> {
    known_model(&name)?;
    serving_version(&state, &version)?;
    Ok(AppJson(metadata(&state)))
}

/// `GET /v2/models/{name}/ready`: 200 when the server is ready, 503 when not.
#[utoipa::path(
    get,
    path = "/v2/models/{name}/ready",
    operation_id = "v2_model_ready",
    tag = "open inference protocol",
    params(("name" = String, Path, description = "The model's name: always `adaptserve`")),
    responses(
        (status = 200, description = "Ready", body = ModelReadiness),
        (status = 404, response = NotFound),
        (status = 503, description = "Not ready", body = ModelReadiness),
    )
)]
pub(super) async fn model_ready(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<(StatusCode, AppJson<ModelReadiness>), OipError> {
    known_model(&name)?;
    Ok(model_readiness(&state))
}

/// `GET /v2/models/{name}/versions/{version}/ready`.
#[utoipa::path(
    get,
    path = "/v2/models/{name}/versions/{version}/ready",
    operation_id = "v2_model_version_ready",
    tag = "open inference protocol",
    params(("name" = String, Path, description = "The model's name: always `adaptserve`"), ("version" = String, Path, description = "The serving model version (`/v1/status`'s `model_version`)")),
    responses(
        (status = 200, description = "Ready", body = ModelReadiness),
        (status = 404, response = NotFound),
        (status = 503, description = "Not ready", body = ModelReadiness),
    )
)]
pub(super) async fn model_version_ready(
    State(state): State<Arc<AppState>>,
    Path((name, version)): Path<(String, String)>,
) -> Result<(StatusCode, AppJson<ModelReadiness>), OipError> {
    known_model(&name)?;
    serving_version(&state, &version)?;
    Ok(model_readiness(&state))
}

/// `POST /v2/models/{name}/infer`.
#[utoipa::path(
    post,
    path = "/v2/models/{name}/infer",
    operation_id = "v2_infer",
    tag = "open inference protocol",
    params(("name" = String, Path, description = "The model's name: always `adaptserve`")),
    request_body = InferRequest,
    responses(
        (status = 200, description = "The requested outputs, and each row's `request_id` for `/v1/feedback`", body = InferResponse),
        (status = 400, response = BadJson),
        (status = 404, response = NotFound),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = Invalid),
        (status = 429, response = Overloaded),
        (status = 503, response = Unavailable),
    )
)]
pub(in crate::http) async fn infer(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    request: Request,
) -> Result<AppJson<InferResponse>, OipError> {
    known_model(&name)?;
    answer(state, request).await
}

/// `POST /v2/models/{name}/versions/{version}/infer`: only the version in service
/// answers.
#[utoipa::path(
    post,
    path = "/v2/models/{name}/versions/{version}/infer",
    operation_id = "v2_infer_version",
    tag = "open inference protocol",
    params(("name" = String, Path, description = "The model's name: always `adaptserve`"), ("version" = String, Path, description = "The serving model version (`/v1/status`'s `model_version`)")),
    request_body = InferRequest,
    responses(
        (status = 200, description = "The requested outputs, and each row's `request_id` for `/v1/feedback`", body = InferResponse),
        (status = 400, response = BadJson),
        (status = 404, response = NotFound),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = Invalid),
        (status = 429, response = Overloaded),
        (status = 503, response = Unavailable),
    )
)]
pub(in crate::http) async fn infer_version(
    State(state): State<Arc<AppState>>,
    Path((name, version)): Path<(String, String)>,
    request: Request,
) -> Result<AppJson<InferResponse>, OipError> {
    known_model(&name)?;
    serving_version(&state, &version)?;
    answer(state, request).await
}

/// Reads and checks the body, runs the rows through the engine (the same call as
/// `/v1/infer`), and shapes the reply as the protocol's output tensors.
async fn answer(
    state: Arc<AppState>,
    request: Request,
) -> Result<AppJson<InferResponse>, OipError> {
    let request = json_body(request)?;
    let AppJson(body) = AppJson::<InferRequest>::from_request(request, &state).await?;
    if let Some(named) = &body.model_name
        && named != MODEL_NAME
    {
        return Err(ApiError::Validation(format!(
            "the body names model \"{named}\", the path \"{MODEL_NAME}\""
        ))
        .into());
    }
    let wanted = tensor::outputs(body.outputs.as_deref()).map_err(ApiError::Validation)?;
    let (input_dim, num_classes) = {
        let model = state.engine.model();
        (model.input_dim(), model.num_classes())
    };
    let rows = tensor::rows(&body.inputs, input_dim).map_err(ApiError::Validation)?;
    let reply = state.engine.infer_and_adapt(rows).await?;
    let ids: Vec<u64> = reply.predictions.iter().map(|p| p.request_id).collect();
    let parameters = ResponseParameters {
        request_id: match ids.as_slice() {
            [one] => Some(*one),
            _ => None,
        },
        request_ids: ids.iter().map(u64::to_string).collect::<Vec<_>>().join(","),
    };
    Ok(AppJson(InferResponse {
        model_name: MODEL_NAME,
        model_version: reply.model_version.to_string(),
        id: body.id,
        parameters,
        outputs: tensor::tensors(&wanted, &reply.predictions, num_classes),
    }))
}

/// The request, ready for the JSON extractor: the protocol's clients send JSON
/// without a `Content-Type` (tritonclient does), so none means JSON here; a declared
/// other type still gets the `/v1` 415. Binary tensors and compressed bodies are
/// refused with a message saying how to send JSON.
fn json_body(mut request: Request) -> Result<Request, OipError> {
    let headers = request.headers();
    if headers.contains_key(BINARY_HEADER) {
        return Err(OipError::UnsupportedBody(
            "binary tensor data (Inference-Header-Content-Length) is not supported: send \
             tensors as JSON (tritonclient and kserve: set_data_from_numpy(array, binary_data=False))"
                .into(),
        ));
    }
    if let Some(encoding) = headers.get(header::CONTENT_ENCODING)
        && encoding != "identity"
    {
        return Err(OipError::UnsupportedBody(format!(
            "Content-Encoding {} is not supported: send the body uncompressed",
            encoding.to_str().unwrap_or("(not text)")
        )));
    }
    if !headers.contains_key(header::CONTENT_TYPE) {
        request.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    Ok(request)
}

/// 404 unless `name` is the one model.
fn known_model(name: &str) -> Result<(), OipError> {
    if name == MODEL_NAME {
        Ok(())
    } else {
        Err(ApiError::NotFound(format!(
            "unknown model \"{name}\": this server serves one model, \"{MODEL_NAME}\""
        ))
        .into())
    }
}

/// 404 unless `version` is the one in service: the weights move on as the server
/// learns, and older versions are not kept for serving.
fn serving_version(state: &AppState, version: &str) -> Result<(), OipError> {
    let serving = state.engine.model().version();
    if version == serving.to_string() {
        Ok(())
    } else {
        Err(ApiError::NotFound(format!(
            "model \"{MODEL_NAME}\" has no version \"{version}\" in service; version {serving} is (only the newest is served)"
        ))
        .into())
    }
}

fn metadata(state: &AppState) -> ModelMetadata {
    let model = state.engine.model();
    let (input_dim, num_classes) = (model.input_dim() as i64, model.num_classes() as i64);
    ModelMetadata {
        name: MODEL_NAME,
        versions: vec![model.version().to_string()],
        platform: "adaptserve",
        inputs: vec![TensorMetadata {
            name: INPUT,
            datatype: "FP32",
            shape: vec![-1, input_dim],
        }],
        outputs: vec![
            TensorMetadata {
                name: PROBABILITIES,
                datatype: "FP32",
                shape: vec![-1, num_classes],
            },
            TensorMetadata {
                name: LABEL,
                datatype: "INT64",
                shape: vec![-1],
            },
        ],
    }
}

fn model_readiness(state: &AppState) -> (StatusCode, AppJson<ModelReadiness>) {
    let ready = state.is_ready();
    (
        ready_code(ready),
        AppJson(ModelReadiness {
            name: MODEL_NAME,
            ready,
        }),
    )
}

/// The protocol reads readiness from the status code alone; 503 when not ready, as
/// `/health/ready` and KServe's own server answer, so a balancer treats both alike.
fn ready_code(ready: bool) -> StatusCode {
    if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}
