//! `GET /ui`: a live status page for an operator with only a browser.
//!
//! The page polls `/v1/status` and `/health` from the browser and draws what they
//! say, so it shows nothing the JSON does not and cannot drift from it. Everything it
//! needs ships inside the binary (`include_str!`): a server on a closed network, or
//! one whose operator forbids third-party requests, shows the same page. The HTML,
//! CSS and JS are kept in their own files for editing and joined into one response
//! once, on the first request.
//!
//! The route sits outside the `/v1` limits, like `/health`: an operator opens the
//! page precisely when the server is overloaded.

use std::sync::LazyLock;

use axum::http::header;
use axum::response::IntoResponse;

const HTML: &str = include_str!("index.html");
const CSS: &str = include_str!("ui.css");
const JS: &str = include_str!("ui.js");

/// The page with its stylesheet and script inlined at their markers.
static PAGE: LazyLock<String> = LazyLock::new(|| {
    HTML.replacen("<!-- ui.css -->", &format!("<style>\n{CSS}</style>"), 1)
        .replacen("<!-- ui.js -->", &format!("<script>\n{JS}</script>"), 1)
});

/// The browser may fetch from this server only, and nothing but the page's own inline
/// style and script runs: a guard that the page stays self-contained.
const CSP: &str = "default-src 'none'; connect-src 'self'; style-src 'unsafe-inline'; \
                   script-src 'unsafe-inline'; img-src 'self' data:; base-uri 'none'; \
                   form-action 'none'; frame-ancestors 'none'";

/// `GET /ui`: the live status page.
#[utoipa::path(
    get,
    path = "/ui",
    tag = "health",
    responses((status = 200, description = "One self-contained HTML page that polls `/v1/status` and `/health`", content_type = "text/html", body = String))
)]
pub(super) async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // Revalidate every time: after an upgrade the page matches the new server.
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        PAGE.as_str(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stylesheet_and_script_are_inlined_once() {
        assert!(!PAGE.contains("<!-- ui.css -->") && !PAGE.contains("<!-- ui.js -->"));
        assert_eq!(PAGE.matches("<script>").count(), 1);
        assert_eq!(PAGE.matches("<style>").count(), 1);
    }
}
