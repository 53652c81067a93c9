//! The HTTP API (axum on tokio): routes, shared state, and the layers that bound
//! every request.
//!
//! `router(state)` builds the whole app without a socket, so tests can drive it with
//! `oneshot` as well as over real connections. Layers, outermost first:
//! - a 429 load shedder over a concurrency limit, so overload fails fast instead of
//!   queueing without bound;
//! - a request timeout (503 `timeout`);
//! - the body limit, enforced inside [`AppJson`] so a 413 has the common error shape.

mod admin;
mod error;
mod feedback;
mod health;
mod infer;
pub mod openapi;
pub(crate) mod ratelimit;
mod ui;
pub mod v2;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::DefaultBodyLimit;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::Semaphore;
use tower::ServiceBuilder;
use tower::limit::GlobalConcurrencyLimitLayer;

pub use crate::state::AppState;

pub use error::{ApiError, AppJson, PayloadLimit};

impl PayloadLimit for Arc<AppState> {
    fn payload_limit(&self) -> usize {
        self.config.payload_limit_bytes
    }
}

/// The whole HTTP app.
///
/// The limits guard the request routes only (`/v1` and `/v2` infer, feedback): a
/// liveness probe must not fail because the server is busy, or an orchestrator
/// would restart a healthy, loaded server.
pub fn router(state: Arc<AppState>) -> Router {
    // One semaphore for all request routes: axum layers each route separately, so a
    // per-layer limit would be per route.
    let permits = Arc::new(Semaphore::new(state.config.max_concurrency));
    let limits = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(overload_error))
        .load_shed()
        .layer(GlobalConcurrencyLimitLayer::with_semaphore(permits))
        .timeout(Duration::from_millis(state.config.request_timeout_ms));
    let api = Router::new()
        .route("/v1/infer", post(infer::infer))
        .route("/v1/feedback", post(feedback::feedback))
        .route(v2::INFER, post(v2::infer))
        .route(v2::INFER_VERSION, post(v2::infer_version))
        .layer(limits)
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            rate_limit,
        ));
    // Admin routes: the token check wraps the whole sub-router, and no request
    // timeout, since the sync barrier may legitimately wait for a training step.
    let admin = Router::new()
        .route("/v1/admin/sync", post(admin::sync))
        .route("/v1/admin/checkpoint", post(admin::checkpoint))
        .route("/v1/admin/rollback", post(admin::rollback))
        .route("/v1/admin/worker/restart", post(admin::restart_worker))
        .route("/v1/admin/fault/knn", post(admin::knn_fault))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            admin::require_token,
        ));
    Router::new()
        .merge(api)
        .merge(admin)
        .merge(v2::metadata_routes())
        .route("/v1/status", get(health::status))
        .route("/ui", get(ui::page))
        .route("/v1/cluster", get(health::cluster))
        .route("/health", get(health::health))
        .route("/health/live", get(health::live))
        .route("/health/ready", get(health::ready))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi::serve))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(state.clone(), track))
        .layer(DefaultBodyLimit::max(state.config.payload_limit_bytes))
        .with_state(state)
}

async fn overload_error(err: tower::BoxError) -> Response {
    if err.is::<tower::load_shed::error::Overloaded>() {
        ApiError::Overloaded("too many concurrent requests".into()).into_response()
    } else if err.is::<tower::timeout::error::Elapsed>() {
        ApiError::Timeout.into_response()
    } else {
        ApiError::Internal(err.to_string()).into_response()
    }
}

/// 429 for a client over its rate; a request without a peer address (in-process
/// tests) is not limited.
async fn rate_limit(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if state.rate_limit.enabled()
        && let Some(peer) = request
            .extensions()
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        && !state
            .rate_limit
            .allow(client_of(&request, peer.0.ip(), &state), Instant::now())
    {
        return ApiError::Overloaded(format!(
            "rate limit: at most {} requests per second per client",
            state.config.rate_limit_per_sec
        ))
        .into_response();
    }
    next.run(request).await
}

/// The rate limit's client: the peer, or behind a trusted balancer the last
/// address of `X-Forwarded-For` (the one the balancer itself appended).
fn client_of(
    request: &axum::extract::Request,
    peer: std::net::IpAddr,
    state: &AppState,
) -> std::net::IpAddr {
    if !state.config.trust_forwarded_for {
        return peer;
    }
    request
        .headers()
        .get_all("x-forwarded-for")
        .iter()
        .next_back()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(peer)
}

/// `GET /metrics`: the Prometheus text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "health",
    responses((
        status = 200,
        description = "Every metric, in the Prometheus text format 0.0.4",
        content_type = "text/plain; version=0.0.4; charset=utf-8",
        body = String,
        example = "# TYPE adaptserve_http_requests_total counter\nadaptserve_http_requests_total{route=\"/v1/infer\",method=\"POST\",status=\"200\"} 3\n"
    ))
)]
async fn metrics(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
) -> impl IntoResponse {
    crate::metrics::refresh(&crate::status::Status::collect(&state));
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::handle().render(),
    )
}

/// Counts every request and times it, labelled by the route template the router
/// matched ([`MatchedPath`](axum::extract::MatchedPath)): the router's own record of
/// its routes, so a new route is labelled as written and no second list can drift
/// from it. The label set stays bounded: ids and typos never reach it, and every
/// request no route matched shares one label, `"unmatched"`.
async fn track(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let route: metrics::SharedString = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or(UNMATCHED.into(), |p| Arc::<str>::from(p.as_str()).into());
    let method = match *request.method() {
        axum::http::Method::GET => "GET",
        axum::http::Method::POST => "POST",
        _ => "other",
    };
    let started = Instant::now();
    let response = next.run(request).await;
    let status = crate::metrics::status_label(response.status().as_u16());
    let infer = matches!(&*route, "/v1/infer" | v2::INFER | v2::INFER_VERSION);
    metrics::counter!(crate::metrics::HTTP_REQUESTS, "route" => route.clone(), "method" => method, "status" => status)
        .increment(1);
    let elapsed = started.elapsed();
    metrics::histogram!(crate::metrics::HTTP_DURATION, "route" => route)
        .record(elapsed.as_secs_f64());
    if infer {
        state.monitor.infer_latency.record(elapsed);
    }
    response
}

/// The route label of a request no route matched (the 404 fallback).
const UNMATCHED: &str = "unmatched";

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}
