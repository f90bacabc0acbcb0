//! The first-party loader (cache, validators, obfuscated paths), hidden collect paths and the
//! sGTM preview passthrough, against local stand-ins for Google's servers.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde_json::{Value, json};

use crate::support::{Backend, TestApp};

const HOST: &str = "load.shop.example.com";

#[derive(Default)]
struct Upstream {
    full: AtomicUsize,
    not_modified: AtomicUsize,
}

/// A stand-in for www.googletagmanager.com: the script names the id it was asked for, carries an
/// ETag, and answers 304 to a matching `If-None-Match`.
async fn start_upstream() -> (String, Arc<Upstream>) {
    let counts = Arc::new(Upstream::default());
    async fn script(
        State(counts): State<Arc<Upstream>>,
        headers: HeaderMap,
        req: Request,
    ) -> impl IntoResponse {
        if headers.get("if-none-match").and_then(|v| v.to_str().ok()) == Some("\"v1\"") {
            counts.not_modified.fetch_add(1, Ordering::SeqCst);
            return (
                StatusCode::NOT_MODIFIED,
                [("etag", "\"v1\"")],
                String::new(),
            )
                .into_response();
        }
        counts.full.fetch_add(1, Ordering::SeqCst);
        let body = format!(
            "/* {} {} */",
            req.uri().path(),
            req.uri().query().unwrap_or("")
        );
        (
            StatusCode::OK,
            [
                ("etag", "\"v1\""),
                ("content-type", "application/javascript"),
            ],
            body,
        )
            .into_response()
    }
    let app = axum::Router::new()
        .route("/gtm.js", axum::routing::get(script))
        .route("/gtag/js", axum::routing::get(script))
        .with_state(counts.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), counts)
}

/// A stand-in sGTM preview server that tells what it received.
async fn start_preview() -> String {
    async fn echo(headers: HeaderMap, req: Request) -> impl IntoResponse {
        let (parts, body) = req.into_parts();
        let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
        let seen = json!({
            "path": parts.uri.path(),
            "query": parts.uri.query(),
            "preview": headers.get("x-gtm-server-preview").and_then(|v| v.to_str().ok()),
            "forwarded_for": headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()),
            "body": String::from_utf8_lossy(&body),
        });
        (
            StatusCode::OK,
            [("x-preview-server", "yes")],
            axum::Json(seen),
        )
    }
    let app = axum::Router::new().fallback(echo);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

async fn site_with_loader(app: &TestApp, preview: Option<&str>) {
    let owner = app.signup("loader@example.com").await;
    let ws = app.workspace(&owner, "Loader").await;
    let (status, body) = app
        .post(
            &format!("/api/v1/workspaces/{ws}/sites"),
            &owner.token,
            json!({
                "name": "Shop",
                "hostnames": [HOST],
                "measurement_ids": ["G-TEST123"],
                "web_container_id": "GTM-MCKP7JK",
                "loader": { "script_path": "/1z6ztxquqcp.js", "collect_path": "/k9/c" },
                "preview_server_url": preview,
            }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

async fn get(app: &TestApp, path: &str, etag: Option<&str>) -> reqwest::Response {
    let mut req = app.client.get(app.url(path)).header("host", HOST);
    if let Some(etag) = etag {
        req = req.header("if-none-match", etag);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn loader_is_cached_revalidated_and_served_from_hidden_paths() {
    let (upstream, counts) = start_upstream().await;
    let app = TestApp::spawn_with(Backend::Sqlite, |c| {
        c.tracking.loader_upstream = upstream.clone();
        c.tracking.loader_cache_seconds = 60;
    })
    .await
    .unwrap();
    site_with_loader(&app, None).await;

    let first = get(&app, "/gtm.js?id=GTM-MCKP7JK&l=dataLayer", None).await;
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["content-type"], "application/javascript");
    assert_eq!(first.headers()["cache-control"], "public, max-age=60");
    let etag = first.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(
        first.text().await.unwrap(),
        "/* /gtm.js id=GTM-MCKP7JK&l=dataLayer */"
    );
    let again = get(&app, "/gtm.js?id=GTM-MCKP7JK&l=dataLayer", None).await;
    assert_eq!(again.status(), 200);
    assert_eq!(
        counts.full.load(Ordering::SeqCst),
        1,
        "the second answer came from the cache"
    );
    assert_eq!(
        get(&app, "/gtm.js?id=GTM-MCKP7JK&l=dataLayer", Some(&etag))
            .await
            .status(),
        304
    );

    // A container that is not the site's is refused: the gateway is no open proxy.
    let foreign = get(&app, "/gtm.js?id=GTM-OTHER1", None).await;
    assert_eq!(foreign.status(), 403);
    assert_eq!(
        foreign.json::<Value>().await.unwrap()["error"]["code"],
        "container_not_allowed"
    );
    assert_eq!(get(&app, "/gtag/js?id=G-TEST123", None).await.status(), 200);

    // Stape-style hidden id under the site's own path; the decoy parameter is dropped.
    let hidden = get(
        &app,
        "/1z6ztxquqcp.js?42poe=aWQ9R1RNLU1DS1A3Sks%3D&page=1",
        None,
    )
    .await;
    assert_eq!(hidden.status(), 200);
    assert_eq!(hidden.text().await.unwrap(), "/* /gtm.js id=GTM-MCKP7JK */");
    // No id at all: the site's own container.
    let bare = get(&app, "/1z6ztxquqcp.js", None).await;
    assert_eq!(bare.status(), 200);

    // Unknown paths on a site host, and any path on an unknown host, are plain JSON 404s.
    let missing = get(&app, "/nothing.js", None).await;
    assert_eq!(missing.status(), 404);
    assert_eq!(
        missing.json::<Value>().await.unwrap()["error"]["code"],
        "route_not_found"
    );
}

#[tokio::test]
async fn stale_loader_is_revalidated_and_survives_upstream_failure() {
    let (upstream, counts) = start_upstream().await;
    let app = TestApp::spawn_with(Backend::Sqlite, |c| {
        c.tracking.loader_upstream = upstream.clone();
        c.tracking.loader_cache_seconds = 0;
    })
    .await
    .unwrap();
    site_with_loader(&app, None).await;
    assert_eq!(
        get(&app, "/gtm.js?id=GTM-MCKP7JK", None).await.status(),
        200
    );
    assert_eq!(
        get(&app, "/gtm.js?id=GTM-MCKP7JK", None).await.status(),
        200
    );
    assert_eq!(counts.full.load(Ordering::SeqCst), 1);
    assert_eq!(
        counts.not_modified.load(Ordering::SeqCst),
        1,
        "revalidated with the ETag"
    );
}

#[tokio::test]
async fn hidden_collect_path_is_stored_in_ga4_form() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    site_with_loader(&app, None).await;
    let resp = app
        .client
        .post(app.url("/k9/c?v=2&tid=G-TEST123&cid=1.2&dl=https%3A%2F%2Fshop.example.com%2F"))
        .header("host", HOST)
        .header("user-agent", "Mozilla/5.0 Firefox/133.0")
        .body("en=page_view")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let records = app.log_records().await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].request.path, "/g/collect");
    assert_eq!(records[0].hits[0].event_name, "page_view");
}

#[tokio::test]
async fn preview_requests_go_to_the_preview_server_synchronously() {
    let preview = start_preview().await;
    let app = TestApp::spawn(Backend::Sqlite).await;
    site_with_loader(&app, Some(&preview)).await;
    // `env-7|<auth>|<creation ms in hex>…` in base64, as the tag manager hands it out.
    use base64::Engine;
    let now_ms = chrono::Utc::now().timestamp_millis();
    let fresh = format!("env-7|YWJj|{now_ms:011x}ffee");
    let token = base64::engine::general_purpose::STANDARD.encode(fresh);
    let token = token.as_str();
    let resp = app
        .client
        .post(app.url("/g/collect?v=2&tid=G-TEST123&cid=1.2&en=page_view"))
        .header("host", HOST)
        .header("x-gtm-server-preview", token)
        .body("en=scroll")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-preview-server"], "yes");
    let seen: Value = resp.json().await.unwrap();
    assert_eq!(seen["path"], "/g/collect");
    assert_eq!(seen["query"], "v=2&tid=G-TEST123&cid=1.2&en=page_view");
    assert_eq!(seen["preview"], token);
    assert_eq!(seen["forwarded_for"], "127.0.0.1");
    assert_eq!(seen["body"], "en=scroll");
    assert!(
        app.log_records().await.is_empty(),
        "debug traffic is not logged"
    );

    let bad = app
        .client
        .post(app.url("/g/collect?v=2&tid=G-TEST123&en=page_view"))
        .header("host", HOST)
        .header("x-gtm-server-preview", "!!not base64!!")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(
        bad.json::<Value>().await.unwrap()["error"]["code"],
        "invalid_preview_token"
    );

    // A token minted long ago (2024) is refused rather than sent to the preview server.
    let old_token = base64::engine::general_purpose::STANDARD.encode("env-7|abc|192db0abc123ff");
    let stale = app
        .client
        .post(app.url("/g/collect?v=2&tid=G-TEST123&en=page_view"))
        .header("host", HOST)
        .header("x-gtm-server-preview", old_token)
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), 400);
    assert_eq!(
        stale.json::<Value>().await.unwrap()["error"]["code"],
        "preview_token_expired"
    );
}
