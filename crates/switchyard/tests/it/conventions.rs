//! API conventions: JSON errors for every kind of bad input, request ids, health, metrics and
//! the OpenAPI document.

use reqwest::Method;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::backend_test;

async fn raw(
    app: &crate::support::TestApp,
    method: Method,
    path: &str,
    token: Option<&str>,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> (u16, Value) {
    let mut req = app.client.request(method, app.url(path)).body(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let json = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("{path} answered {status} with non-JSON: {text:?}"));
    (status, json)
}

backend_test!(bad_input_gets_json_4xx, |app| async move {
    let user = app.signup("errors@example.com").await;
    let ws = app.workspace(&user, "Errors").await;
    let t = Some(user.token.as_str());
    let json_ct = Some("application/json");

    // (method, path, content type, body, expected status, expected code)
    type Case<'a> = (Method, String, Option<&'a str>, Vec<u8>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            Method::POST,
            "/api/v1/workspaces".into(),
            json_ct,
            b"{\"name\":".to_vec(),
            400,
            "malformed_json",
        ),
        (
            Method::POST,
            "/api/v1/workspaces".into(),
            json_ct,
            b"{\"name\":42}".to_vec(),
            422,
            "invalid_body",
        ),
        (
            Method::POST,
            "/api/v1/workspaces".into(),
            json_ct,
            b"{\"nom\":\"x\"}".to_vec(),
            422,
            "invalid_body",
        ),
        (
            Method::POST,
            "/api/v1/workspaces".into(),
            Some("text/plain"),
            b"{}".to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            Method::POST,
            "/api/v1/workspaces".into(),
            None,
            Vec::new(),
            415,
            "unsupported_media_type",
        ),
        (
            Method::GET,
            "/api/v1/nothing-here".into(),
            None,
            Vec::new(),
            404,
            "route_not_found",
        ),
        (
            Method::GET,
            "/api/v1/workspaces/not-an-id".into(),
            None,
            Vec::new(),
            404,
            "workspace_not_found",
        ),
        (
            Method::GET,
            "/api/v1/workspaces/usr_01jdq9x3k5m2r8t4v6w0y1z2a3".into(),
            None,
            Vec::new(),
            404,
            "workspace_not_found",
        ),
        (
            Method::DELETE,
            format!("/api/v1/workspaces/{ws}/members/nope"),
            None,
            Vec::new(),
            400,
            "invalid_path_parameter",
        ),
        (
            Method::PUT,
            format!("/api/v1/workspaces/{ws}"),
            json_ct,
            b"{}".to_vec(),
            405,
            "method_not_allowed",
        ),
        (
            Method::GET,
            "/api/v1/workspaces?limit=abc".into(),
            None,
            Vec::new(),
            400,
            "invalid_query",
        ),
    ];
    for (method, path, ct, body, want_status, want_code) in cases {
        let (status, json) = raw(&app, method.clone(), &path, t, ct, body).await;
        assert_eq!(status, want_status, "{method} {path}: {json}");
        assert_eq!(json["error"]["code"], want_code, "{method} {path}: {json}");
        assert!(
            json["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    // Unauthenticated and garbage credentials: 401 JSON.
    let (status, json) = raw(&app, Method::GET, "/api/v1/auth/me", None, None, Vec::new()).await;
    assert_eq!(
        (status, json["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let (status, _) = raw(
        &app,
        Method::GET,
        "/api/v1/auth/me",
        Some("syk_garbage"),
        None,
        Vec::new(),
    )
    .await;
    assert_eq!(status, 401);

    // A declared oversized body is refused from its headers alone, before any of it is sent.
    let head = format!(
        "POST /api/v1/workspaces HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        user.token,
        2 * 1024 * 1024
    );
    let mut conn = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), conn.read(&mut answer))
        .await
        .expect("answered without waiting for the body")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");
    // A client that sends all of it anyway reads the same refusal.
    let answer = crate::support::send_whole_oversized_body(
        app.addr,
        &format!(
            "POST /api/v1/workspaces HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\n\
             content-type: application/json\r\n",
            user.token
        ),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");

    // An oversized body with no declared length (chunked) is cut off as it streams in. The
    // writer runs on its own task: the server stops reading at the limit and answers.
    let conn = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let (mut reader, mut writer) = conn.into_split();
    let head = format!(
        "POST /api/v1/workspaces HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n",
        user.token
    );
    tokio::spawn(async move {
        writer.write_all(head.as_bytes()).await?;
        let chunk = vec![b' '; 64 * 1024];
        for _ in 0..48 {
            writer
                .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .await?;
            writer.write_all(&chunk).await?;
            writer.write_all(b"\r\n").await?;
        }
        writer.write_all(b"0\r\n\r\n").await
    });
    let mut answer = Vec::new();
    let mut buf = vec![0u8; 4096];
    while !String::from_utf8_lossy(&answer).contains("payload_too_large") {
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), reader.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        assert!(
            n > 0,
            "closed without an answer: {}",
            String::from_utf8_lossy(&answer)
        );
        answer.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 413"));

    // None of it created anything.
    let (_, list) = app.get("/api/v1/workspaces", &user.token).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
});

backend_test!(health_metrics_and_request_ids, |app| async move {
    let resp = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let id = resp
        .headers()
        .get("x-request-id")
        .expect("request id")
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(id.len(), 36);
    // A caller's request id is kept.
    let resp = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "trace-me-123")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "trace-me-123");

    let resp = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["database"], "ok");

    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("http_requests_total"), "{metrics}");
    assert!(metrics.contains("route=\"/healthz\""), "{metrics}");

    app.state.db.close().await;
    let resp = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(resp.status(), 503, "not ready once the database is gone");
});

backend_test!(openapi_document_and_docs_page, |app| async move {
    let doc: Value = app
        .client
        .get(app.url("/api/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/api/v1/auth/signup",
        "/api/v1/auth/login",
        "/api/v1/auth/me",
        "/api/v1/workspaces",
        "/api/v1/workspaces/{workspace_id}",
        "/api/v1/workspaces/{workspace_id}/members/{user_id}",
        "/api/v1/workspaces/{workspace_id}/api-keys",
    ] {
        assert!(paths.contains_key(p), "{p} missing from OpenAPI");
    }
    let html = app
        .client
        .get(app.url("/api/docs"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("/api/openapi.json"));
});

backend_test!(idempotency_key_replays_the_first_answer, |app| async move {
    let user = app.signup("idem@example.com").await;
    let send = |key: &'static str, name: &'static str| {
        let app = &app;
        let token = user.token.clone();
        async move {
            let resp = app
                .client
                .post(app.url("/api/v1/workspaces"))
                .bearer_auth(token)
                .header("idempotency-key", key)
                .json(&serde_json::json!({ "name": name }))
                .send()
                .await
                .unwrap();
            let replayed = resp
                .headers()
                .get("idempotent-replayed")
                .map(|v| v.to_str().unwrap().to_owned());
            (
                resp.status().as_u16(),
                replayed,
                resp.json::<Value>().await.unwrap(),
            )
        }
    };
    let first = send("create-1", "Once").await;
    assert_eq!((first.0, first.1.as_deref()), (201, Some("false")));
    let again = send("create-1", "Once").await;
    assert_eq!((again.0, again.1.as_deref()), (201, Some("true")));
    assert_eq!(again.2, first.2, "same body, same id");
    let (_, list) = app.get("/api/v1/workspaces", &user.token).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1, "created once");

    let reused = send("create-1", "Different").await;
    assert_eq!(reused.0, 422);
    assert_eq!(reused.2["error"]["code"], "idempotency_key_reused");

    // Another credential with the same key is another key.
    let other = app.signup("other@example.com").await;
    let resp = app
        .client
        .post(app.url("/api/v1/workspaces"))
        .bearer_auth(&other.token)
        .header("idempotency-key", "create-1")
        .json(&serde_json::json!({ "name": "Once" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["idempotent-replayed"], "false");

    // A failed validation is remembered too (it is the answer), and a new key runs anew.
    let bad = send("create-2", "").await;
    assert_eq!(bad.0, 422);
    assert_eq!(send("create-2", "").await.1.as_deref(), Some("true"));
    assert_eq!(send("create-3", "Twice").await.0, 201);
});
