//! Forwarding: the original request replayed to a stand-in tagging server byte for byte (after
//! it failed twice), GA4 Measurement Protocol calls, and signed HTTP deliveries.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::support::{Backend, TestApp};

const HOST: &str = "fwd.shop.example.com";

#[derive(Default)]
struct Received {
    requests: Mutex<Vec<Value>>,
    /// Answer 500 this many times first.
    fail_first: Mutex<usize>,
}

async fn stand_in(fail_first: usize) -> (String, Arc<Received>) {
    let received = Arc::new(Received {
        fail_first: Mutex::new(fail_first),
        ..Default::default()
    });
    async fn record(State(r): State<Arc<Received>>, req: Request) -> StatusCode {
        let (parts, body) = req.into_parts();
        let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
        let header = |n: &str| {
            parts
                .headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        r.requests.lock().unwrap().push(json!({
            "method": parts.method.as_str(),
            "path": parts.uri.path(),
            "query": parts.uri.query(),
            "body": String::from_utf8_lossy(&body),
            "user_agent": header("user-agent"),
            "cookie": header("cookie"),
            "forwarded_for": header("x-forwarded-for"),
            "webhook_id": header("webhook-id"),
            "webhook_timestamp": header("webhook-timestamp"),
            "webhook_signature": header("webhook-signature"),
        }));
        let mut fail = r.fail_first.lock().unwrap();
        if *fail > 0 {
            *fail -= 1;
            return StatusCode::INTERNAL_SERVER_ERROR;
        }
        StatusCode::NO_CONTENT
    }
    let app = axum::Router::new()
        .fallback(record)
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), received)
}

async fn wait_for(received: &Received, n: usize) -> Vec<Value> {
    for _ in 0..200 {
        let got = received.requests.lock().unwrap().clone();
        if got.len() >= n {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "expected {n} deliveries, got {:?}",
        received.requests.lock().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tagging_server_gets_the_original_request_after_retries() {
    let (tagging, tagging_got) = stand_in(2).await;
    let (ga4, ga4_got) = stand_in(0).await;
    let (hook, hook_got) = stand_in(0).await;
    let app = TestApp::spawn_with(Backend::Sqlite, |c| {
        c.tracking.allow_private_destinations = true;
        c.tracking.trust_forwarded_for = true;
        c.jobs.backoff_base_ms = 20;
        c.jobs.backoff_max_seconds = 1;
        c.jobs.poll_interval_ms = 50;
    })
    .await
    .unwrap();
    let owner = app.signup("fwd@example.com").await;
    let ws = app.workspace(&owner, "Fwd").await;
    let (site, _, _) = app.site(&owner, &ws, HOST).await;
    let base = format!("/api/v1/workspaces/{ws}/sites/{site}/destinations");
    let create = |body: Value| {
        let app = &app;
        let (base, token) = (base.clone(), owner.token.clone());
        async move {
            let (status, created) = app.post(&base, &token, body).await;
            assert_eq!(status, 201, "{created}");
            created
        }
    };
    let sgtm = create(json!({ "kind": "tagging_server", "name": "sGTM", "url": tagging })).await;
    create(json!({ "kind": "ga4", "name": "GA4", "url": ga4, "measurement_id": "G-FWD1234", "api_secret": "s3cret" })).await;
    let http =
        create(json!({ "kind": "http", "name": "Hook", "url": format!("{hook}/hooks/in") })).await;
    let signing_secret = http["signing_secret"].as_str().unwrap().to_owned();
    assert!(signing_secret.starts_with("whsec_"));
    let (status, err) = app
        .post(
            &base,
            &owner.token,
            json!({ "kind": "ga4", "name": "x", "measurement_id": "G-1" }),
        )
        .await;
    assert_eq!(status, 422, "{err}");

    let query = "v=2&tid=G-TEST123&cid=555.666&sid=1732251200&dl=https%3A%2F%2Fshop.example.com%2F&en=page_view";
    let body = "en=scroll&epn.percent_scrolled=90\nen=purchase&cu=EUR&epn.value=10";
    let resp = app
        .client
        .post(app.url(&format!("/g/collect?{query}")))
        .header("host", HOST)
        .header("user-agent", "Mozilla/5.0 Firefox/133.0")
        .header("cookie", "_ga=GA1.1.555.666; FPID=abc")
        .header("x-forwarded-for", "81.2.69.142")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);

    // Two 500s, then the replay lands: three identical requests.
    let got = wait_for(&tagging_got, 3).await;
    for request in &got {
        assert_eq!(request["method"], "POST");
        assert_eq!(request["path"], "/g/collect");
        assert_eq!(request["query"], query);
        assert_eq!(request["body"], body, "byte for byte");
        assert_eq!(request["user_agent"], "Mozilla/5.0 Firefox/133.0");
        assert_eq!(request["cookie"], "_ga=GA1.1.555.666; FPID=abc");
        assert_eq!(request["forwarded_for"], "81.2.69.142");
    }

    let mp = wait_for(&ga4_got, 1).await;
    assert_eq!(mp[0]["path"], "/mp/collect");
    assert_eq!(mp[0]["query"], "measurement_id=G-FWD1234&api_secret=s3cret");
    let mp_body: Value = serde_json::from_str(mp[0]["body"].as_str().unwrap()).unwrap();
    assert_eq!(mp_body["client_id"], "555.666");
    let names: Vec<&str> = mp_body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["scroll", "purchase"]);
    assert_eq!(mp_body["events"][1]["params"]["value"], 10);
    assert_eq!(mp_body["events"][0]["params"]["session_id"], "1732251200");

    let hooks = wait_for(&hook_got, 1).await;
    let h = &hooks[0];
    assert_eq!(h["path"], "/hooks/in");
    let expected = tracking::forward::deliver::sign(
        &signing_secret,
        h["webhook_id"].as_str().unwrap(),
        h["webhook_timestamp"].as_str().unwrap(),
        h["body"].as_str().unwrap().as_bytes(),
    )
    .unwrap();
    assert_eq!(h["webhook_signature"], expected.as_str());
    let record: Value = serde_json::from_str(h["body"].as_str().unwrap()).unwrap();
    assert_eq!(record["hits"].as_array().unwrap().len(), 2);

    // Counters and the last error are visible through the API.
    let id = sgtm["destination"]["id"].as_str().unwrap();
    let mut shown = Value::Null;
    for _ in 0..100 {
        shown = app.get(&format!("{base}/{id}"), &owner.token).await.1;
        if shown["delivered"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(shown["delivered"], 1, "{shown}");
    assert_eq!(shown["failed"], 2, "{shown}");
    assert!(
        shown["last_error"].as_str().unwrap().contains("500"),
        "{shown}"
    );
    // Nothing more arrives later: one delivery per destination and record.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(tagging_got.requests.lock().unwrap().len(), 3);
    assert_eq!(hook_got.requests.lock().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_destinations_are_refused_by_default() {
    let (tagging, tagging_got) = stand_in(0).await;
    let app = TestApp::spawn_with(Backend::Sqlite, |c| c.jobs.poll_interval_ms = 50)
        .await
        .unwrap();
    let owner = app.signup("ssrf@example.com").await;
    let ws = app.workspace(&owner, "Ssrf").await;
    let (site, _, _) = app.site(&owner, &ws, HOST).await;
    let base = format!("/api/v1/workspaces/{ws}/sites/{site}/destinations");
    let (_, created) = app
        .post(
            &base,
            &owner.token,
            json!({ "kind": "tagging_server", "name": "local", "url": tagging }),
        )
        .await;
    let id = created["destination"]["id"].as_str().unwrap().to_owned();
    let resp = app
        .client
        .post(app.url("/g/collect?v=2&tid=G-TEST123&cid=1.2&en=page_view"))
        .header("host", HOST)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let mut shown = Value::Null;
    for _ in 0..100 {
        shown = app.get(&format!("{base}/{id}"), &owner.token).await.1;
        if shown["failed"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(shown["failed"], 1, "{shown}");
    assert!(
        shown["last_error"].as_str().unwrap().contains("private"),
        "{shown}"
    );
    assert!(
        tagging_got.requests.lock().unwrap().is_empty(),
        "nothing was sent"
    );
}
