//! The OpenAPI document a server serves at `/openapi.json` is the one committed as
//! docs/openapi.json, byte for byte, so a change to a route or a body type that
//! changes the API shows up in review as a change to that file.
//!
//! To regenerate after such a change:
//! `UPDATE_OPENAPI=1 cargo test -p adaptserve --test api openapi` (README, "OpenAPI").

use std::path::PathBuf;

use crate::common::{TestServer, client};

fn committed_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json")
}

#[tokio::test]
async fn openapi_json_is_the_committed_document() {
    let server = TestServer::start().await;
    let response = client()
        .get(server.url("/openapi.json"))
        .send()
        .await
        .expect("GET /openapi.json");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/json",
        "the document is served as JSON"
    );
    let served = response.text().await.expect("body");
    assert_eq!(
        served,
        adaptserve_server::http::openapi::to_json(&adaptserve_server::http::openapi::document()),
        "the server serves document() as pretty JSON"
    );
    let path = committed_path();
    if std::env::var_os("UPDATE_OPENAPI").is_some_and(|v| v == "1") {
        std::fs::write(&path, &served).expect("write docs/openapi.json");
        eprintln!("wrote {}", path.display());
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == served,
        "docs/openapi.json differs from what the server serves; if the API change is \
         intended, regenerate it: UPDATE_OPENAPI=1 cargo test -p adaptserve --test api openapi"
    );
    let document: serde_json::Value = serde_json::from_str(&served).expect("valid JSON");
    assert_eq!(document["openapi"], "3.1.0");
    server.stop().await.unwrap();
}

/// Every route of the router is in the document, with the methods it answers.
#[test]
fn document_lists_every_route() {
    let document = adaptserve_server::http::openapi::document();
    let mut routes: Vec<(String, Vec<&str>)> = document
        .paths
        .paths
        .iter()
        .map(|(path, item)| {
            let mut methods = Vec::new();
            if item.get.is_some() {
                methods.push("get");
            }
            if item.post.is_some() {
                methods.push("post");
            }
            (path.clone(), methods)
        })
        .collect();
    routes.sort();
    let expected = [
        ("/health", "get"),
        ("/health/live", "get"),
        ("/health/ready", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
        ("/ui", "get"),
        ("/v1/admin/checkpoint", "post"),
        ("/v1/admin/fault/knn", "post"),
        ("/v1/admin/rollback", "post"),
        ("/v1/admin/sync", "post"),
        ("/v1/admin/worker/restart", "post"),
        ("/v1/cluster", "get"),
        ("/v1/feedback", "post"),
        ("/v1/infer", "post"),
        ("/v1/status", "get"),
        ("/v2", "get"),
        ("/v2/health/live", "get"),
        ("/v2/health/ready", "get"),
        ("/v2/models/{name}", "get"),
        ("/v2/models/{name}/infer", "post"),
        ("/v2/models/{name}/ready", "get"),
        ("/v2/models/{name}/versions/{version}", "get"),
        ("/v2/models/{name}/versions/{version}/infer", "post"),
        ("/v2/models/{name}/versions/{version}/ready", "get"),
    ]
    .map(|(p, m)| (p.to_string(), vec![m]));
    assert_eq!(routes, expected);
}
