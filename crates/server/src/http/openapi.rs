//! The OpenAPI 3.1 document of the HTTP API, derived from the code.
//!
//! Each handler carries its `#[utoipa::path]` next to it and each body type derives
//! `ToSchema` next to its serde derive, so the document is rebuilt from what the
//! server actually parses and writes rather than kept by hand beside it. The error
//! responses below are built from real [`ApiError`] values, so their examples are the
//! messages a client gets. The document is served at `GET /openapi.json` and
//! committed as `docs/openapi.json`; a test in `tests/api` keeps the two equal, and
//! `scripts/check_openapi.sh` fuzzes a live server against it (README, "OpenAPI").

use std::sync::LazyLock;

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use utoipa::openapi::example::ExampleBuilder;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Response, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToResponse};

use super::ApiError;
use super::error::ErrorBody;

/// The routes of `router()`, their bodies and their errors.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "adaptserve",
        description = "An online-learning inference server: predictions on `/v1/infer`, \
                       labels on `/v1/feedback`, and the model keeps learning from them \
                       while it serves. Every error has the body `{\"error\", \"error_type\"}`.",
    ),
    paths(
        super::infer::infer,
        super::feedback::feedback,
        super::admin::sync,
        super::admin::checkpoint,
        super::admin::rollback,
        super::admin::restart_worker,
        super::admin::knn_fault,
        super::health::status,
        super::health::cluster,
        super::health::health,
        super::health::live,
        super::health::ready,
        super::metrics,
        serve,
        super::ui::page,
        super::v2::handlers::server_metadata,
        super::v2::handlers::live,
        super::v2::handlers::ready,
        super::v2::handlers::model_metadata,
        super::v2::handlers::model_version_metadata,
        super::v2::handlers::model_ready,
        super::v2::handlers::model_version_ready,
        super::v2::handlers::infer,
        super::v2::handlers::infer_version,
    ),
    components(
        schemas(ErrorBody),
        responses(
            BadJson,
            Invalid,
            PayloadTooLarge,
            UnsupportedMediaType,
            NotFound,
            Overloaded,
            Unavailable,
            Unauthorized,
            Forbidden,
            Conflict,
            Internal,
        )
    ),
    modifiers(&AdminToken),
    tags(
        (name = "serving", description = "Predictions and labels"),
        (name = "admin", description = "Operator actions; bearer token (`--admin-token`)"),
        (name = "status", description = "The server's state"),
        (name = "health", description = "Probes, metrics, this document and the status page"),
        (name = "open inference protocol", description = "KServe v2 / Triton REST routes over the same request path as `/v1/infer`"),
    )
)]
struct ApiDoc;

/// The document. Routes added elsewhere (the `/v2` protocol) join it with
/// `document().merge(...)`.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The document as served and committed: pretty JSON and a final newline.
pub fn to_json(document: &utoipa::openapi::OpenApi) -> String {
    let mut text = document
        .to_pretty_json()
        .expect("an OpenAPI document always serializes");
    text.push('\n');
    text
}

/// The served text, built once.
static SERVED: LazyLock<String> = LazyLock::new(|| to_json(&document()));

/// `GET /openapi.json`: this document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi",
    tag = "health",
    responses((status = 200, description = "This document (OpenAPI 3.1)", content_type = "application/json", body = Object))
)]
pub(super) async fn serve() -> impl IntoResponse {
    ([(CONTENT_TYPE, "application/json")], SERVED.as_str())
}

/// The admin routes' bearer token, `admin_token` in the document.
#[derive(Debug)]
struct AdminToken;

impl Modify for AdminToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The server's `--admin-token` (`ADAPTSERVE_ADMIN_TOKEN`). \
                         Without one configured, every admin route answers 403.",
                    ))
                    .build(),
            ),
        );
    }
}

/// An error response: the common body, with the given errors as examples.
fn error_response(description: &str, examples: &[ApiError]) -> Response {
    let mut content = ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody")));
    if let [only] = examples {
        content = content.example(Some(serde_json::json!(only.body())));
    } else {
        content = content.examples_from_iter(examples.iter().map(|e| {
            (
                e.to_string(),
                ExampleBuilder::new().value(Some(serde_json::json!(e.body()))),
            )
        }));
    }
    ResponseBuilder::new()
        .description(description)
        .content("application/json", content.build())
        .build()
}

/// One reusable error response per status, each named in the routes that give it.
macro_rules! error_responses {
    ($($(#[$doc:meta])* $name:ident => $description:literal, [$($example:expr),+ $(,)?];)*) => {$(
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name;

        impl<'s> ToResponse<'s> for $name {
            fn response() -> (&'s str, RefOr<Response>) {
                (stringify!($name), error_response($description, &[$($example),+]).into())
            }
        }
    )*};
}

error_responses! {
    /// 400.
    BadJson => "The body is not valid JSON", [
        ApiError::MalformedJson("Failed to parse the request body as JSON: EOF while parsing an object at line 1 column 1".into()),
    ];
    /// 422.
    Invalid => "The body is JSON of the wrong shape, or a value is out of range", [
        ApiError::Validation("inputs[0] has 3 values; the model takes 16".into()),
    ];
    /// 413.
    PayloadTooLarge => "The body is larger than `payload_limit_bytes`", [
        ApiError::PayloadTooLarge { limit: 1 << 20 },
    ];
    /// 415.
    UnsupportedMediaType => "The body is not declared `Content-Type: application/json`", [
        ApiError::UnsupportedMediaType,
    ];
    /// 404.
    NotFound => "The thing named does not exist", [
        ApiError::NotFound("unknown or expired request_id 42".into()),
    ];
    /// 429.
    Overloaded => "Too many requests at once, over the client's rate, or a queue is full: retry later", [
        ApiError::Overloaded("too many concurrent requests".into()),
    ];
    /// 503.
    Unavailable => "Cannot serve this now (timed out, shutting down, a store away): retry later", [
        ApiError::Timeout,
        ApiError::Unavailable("the model is unavailable".into()),
    ];
    /// 401.
    Unauthorized => "No bearer token", [
        ApiError::Unauthorized,
    ];
    /// 403.
    Forbidden => "The bearer token is wrong, or no admin token is configured", [
        ApiError::WrongToken,
        ApiError::Forbidden,
    ];
    /// 409.
    Conflict => "The server's state does not allow it (no worker, a checkpoint that cannot be restored)", [
        ApiError::Conflict("no update worker is running".into()),
    ];
    /// 500.
    Internal => "A bug; the detail is in the server's log", [
        ApiError::Internal(String::new()),
    ];
}
