//! `GET /ui`: the status page is served whole from the binary, names no outside
//! address, and polls routes that exist. (scripts/check_ui.sh drives it in a real
//! headless Chromium and compares what it displays with `/v1/status`.)

use crate::common::{TestServer, client};

/// The elements scripts/check_ui.py reads; renaming one breaks the browser check.
const IDS: &[&str] = &[
    "overall",
    "disconnected",
    "version",
    "model-version",
    "mode",
    "voters",
    "worker-state",
    "worker-restarts",
    "ring-depth",
    "wal-bytes",
    "infer-rate",
    "p99",
    "components",
    "accuracy",
    "accuracy-chart",
];

/// Every value of `attr="..."` in `html`.
fn attribute_values<'a>(html: &'a str, attr: &str) -> Vec<&'a str> {
    let needle = format!("{attr}=\"");
    html.match_indices(&needle)
        .map(|(at, _)| {
            let rest = &html[at + needle.len()..];
            &rest[..rest.find('"').expect("closed attribute")]
        })
        .collect()
}

#[tokio::test]
async fn the_status_page_is_self_contained_html() {
    let server = TestServer::start_with(|c| c.worker.enabled = false).await;
    let r = client().get(server.url("/ui")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let headers = r.headers().clone();
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert!(headers.contains_key("cache-control"), "{headers:?}");
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"));
    let page = r.text().await.unwrap();

    assert!(page.starts_with("<!doctype html>"));
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "the page names an outside address"
    );
    assert!(!page.contains("@import"), "the stylesheet imports another");
    for attr in ["src", "href", "action"] {
        for value in attribute_values(&page, attr) {
            assert!(
                !value.starts_with("//") && !value.contains(':'),
                "{attr}=\"{value}\" leaves the server"
            );
        }
    }
    // The stylesheet and the script are inlined, not fetched.
    assert_eq!(page.matches("<style>").count(), 1);
    assert_eq!(page.matches("<script>").count(), 1);
    assert!(attribute_values(&page, "src").is_empty());
    for id in IDS {
        assert!(page.contains(&format!("id=\"{id}\"")), "no element #{id}");
    }
    server.stop().await.unwrap();
}

/// The page fetches `getJson("...")` paths relative to `/ui`; each must answer JSON.
#[tokio::test]
async fn the_routes_the_page_polls_exist() {
    let server = TestServer::start_with(|c| c.worker.enabled = false).await;
    let page = client()
        .get(server.url("/ui"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let polled: Vec<&str> = page
        .match_indices("getJson(\"")
        .map(|(at, m)| {
            let rest = &page[at + m.len()..];
            &rest[..rest.find('"').unwrap()]
        })
        .collect();
    assert_eq!(polled, ["v1/status", "health"]);
    for path in polled {
        let r = client()
            .get(server.url(&format!("/{path}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "/{path}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert!(body.is_object(), "/{path}: {body}");
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn the_status_page_refuses_other_methods_and_paths() {
    let server = TestServer::start_with(|c| c.worker.enabled = false).await;
    let http = client();
    let r = http.post(server.url("/ui")).body("x").send().await.unwrap();
    assert_eq!(r.status(), 405);
    let r = http.get(server.url("/ui/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["error"].is_object() || body["error"].is_string(),
        "{body}"
    );
    server.stop().await.unwrap();
}
