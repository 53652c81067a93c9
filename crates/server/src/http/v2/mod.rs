//! The Open Inference Protocol (KServe v2) REST routes, beside `/v1`.
//!
//! Why: KServe, Triton's `tritonclient.http` and the `kserve` SDK all speak this
//! protocol, so a client written for any of them can call adaptserve unchanged.
//! It is a second door onto the same request path, not a second engine:
//! `POST /v2/models/{name}/infer` calls the same `Engine::infer_and_adapt` as
//! `/v1/infer` (the vote, the memory, the pseudo-label gate) and sits behind the same
//! layers (concurrency limit, timeout, rate limit); every error has the `/v1` shape
//! and status code.
//!
//! The server serves one model, named [`MODEL_NAME`] whatever directory it was loaded
//! from, since its weights change while it serves; its version is the serving model
//! version (`/v1/status`'s `model_version`) as a string. Tensors travel in the JSON
//! encoding only; the binary tensor extension is refused with 415.
//!
//! - [`types`]: the JSON bodies, as plain serde structs.
//! - [`tensor`]: an input tensor to rows of features, and the outputs a client asked for.
//! - [`handlers`]: the routes.
//! - [`error`]: the refusals only this protocol has (binary data, encodings).

mod error;
pub(super) mod handlers;
mod tensor;
pub mod types;

use std::sync::Arc;

use axum::Router;
use axum::routing::get;

use super::AppState;

pub(super) use handlers::{infer, infer_version};

/// The one model's name in every `/v2/models/{name}` route.
pub const MODEL_NAME: &str = "adaptserve";

/// The inference route, for the request-path layers in `super::router`.
pub(super) const INFER: &str = "/v2/models/{name}/infer";
/// The inference route naming a version.
pub(super) const INFER_VERSION: &str = "/v2/models/{name}/versions/{version}/infer";

/// The metadata and health routes. Like `/health/*` they sit outside the request
/// limits, so a busy server still answers its probes.
pub(super) fn metadata_routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v2", get(handlers::server_metadata))
        .route("/v2/health/live", get(handlers::live))
        .route("/v2/health/ready", get(handlers::ready))
        .route("/v2/models/{name}", get(handlers::model_metadata))
        .route("/v2/models/{name}/ready", get(handlers::model_ready))
        .route(
            "/v2/models/{name}/versions/{version}",
            get(handlers::model_version_metadata),
        )
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(handlers::model_version_ready),
        )
}
