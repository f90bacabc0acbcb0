//! Offline conversions end to end over HTTP, against local stand-ins for Meta, Google Data
//! Manager (with its OAuth token endpoint) and GA4 that check each request the way the
//! platform does and answer in its format: credentials sealed and tested, a GA4 purchase hit
//! through the gateway and CRM capture to one Meta and one Data Manager event with the hit's
//! id, `deal.won` to conversions, a 500 retried, a bad event refused on its own, the
//! automation entry point, and no plaintext secret anywhere we can look.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::support::{Backend, TestApp, User};

const KEY: &str =
    include_str!("../../../connect/src/conversions/testdata/service_account_test_key.pem");
const PUBLIC_KEY: &str =
    include_str!("../../../connect/src/conversions/testdata/service_account_test_pub.pem");
const META_TOKEN: &str = "EAAB-plaintext-meta-token-7f3a9c";
const GA4_SECRET: &str = "ga4-plaintext-api-secret-51d0";
const SA_EMAIL: &str = "switchyard@test-project.iam.gserviceaccount.com";
const OAUTH_CLIENT_SECRET: &str = "GOCSPX-plaintext-client-secret-9e1";
const REFRESH_TOKEN: &str = "1//plaintext-refresh-token-04ab";
const WRONG_META_TOKEN: &str = "EAAB-wrong-plaintext-token-c0de";

/// Every secret a test hands to the server (or the stand-ins hand back), and a line from the
/// middle of the service-account key, which a PEM header check alone would not find.
fn secrets() -> Vec<String> {
    let key_line = KEY
        .lines()
        .nth(3)
        .expect("a key body line")
        .trim()
        .to_owned();
    assert!(key_line.len() >= 60, "{key_line}");
    vec![
        META_TOKEN.to_owned(),
        WRONG_META_TOKEN.to_owned(),
        GA4_SECRET.to_owned(),
        OAUTH_CLIENT_SECRET.to_owned(),
        REFRESH_TOKEN.to_owned(),
        "PRIVATE KEY".to_owned(),
        key_line,
        // Google access tokens the stand-in token endpoint issued to the server.
        "ya29.stand-in".to_owned(),
    ]
}

#[derive(Default)]
struct Platforms {
    /// (path, body) of every accepted platform request.
    received: Mutex<Vec<(String, Value)>>,
    /// The next N Meta requests answer 500.
    meta_failures: AtomicUsize,
    tokens: AtomicUsize,
}

fn sha(text: &str) -> String {
    hex_lower(&Sha256::digest(text.as_bytes()))
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn is_sha256(value: &Value) -> bool {
    value
        .as_str()
        .is_some_and(|s| s.len() == 64 && s.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')))
}

fn graph_error(status: StatusCode, code: i64, message: &str) -> (StatusCode, axum::Json<Value>) {
    (
        status,
        axum::Json(
            json!({"error": {"message": message, "type": "OAuthException", "code": code, "fbtrace_id": "Atest"}}),
        ),
    )
}

async fn meta(
    State(p): State<Arc<Platforms>>,
    axum::extract::Path(pixel): axum::extract::Path<String>,
    Query(q): Query<std::collections::HashMap<String, String>>,
    axum::Json(body): axum::Json<Value>,
) -> (StatusCode, axum::Json<Value>) {
    if q.get("access_token").map(String::as_str) != Some(META_TOKEN) {
        return graph_error(StatusCode::UNAUTHORIZED, 190, "Invalid OAuth access token.");
    }
    if pixel != "1234567890" {
        return graph_error(StatusCode::BAD_REQUEST, 100, "Unsupported post request.");
    }
    if p.meta_failures.load(Ordering::SeqCst) > 0 {
        p.meta_failures.fetch_sub(1, Ordering::SeqCst);
        return graph_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            2,
            "An unexpected error has occurred.",
        );
    }
    let Some(events) = body["data"].as_array() else {
        return graph_error(
            StatusCode::BAD_REQUEST,
            100,
            "The parameter data is required",
        );
    };
    for e in events {
        let ok = e["event_name"].is_string()
            && e["event_time"].is_i64()
            && e["action_source"].is_string()
            && e["user_data"].is_object()
            && e["user_data"]["em"]
                .as_array()
                .into_iter()
                .flatten()
                .all(is_sha256)
            && e["user_data"]["ph"]
                .as_array()
                .into_iter()
                .flatten()
                .all(is_sha256)
            && (e["action_source"] != "website" || e["event_source_url"].is_string());
        if !ok || e["event_name"] == "Invalid Event" {
            return graph_error(StatusCode::BAD_REQUEST, 100, "Invalid parameter");
        }
    }
    p.received
        .lock()
        .unwrap()
        .push(("meta".into(), body.clone()));
    (
        StatusCode::OK,
        axum::Json(json!({"events_received": events.len(), "messages": [], "fbtrace_id": "Aok"})),
    )
}

async fn token(
    State(p): State<Arc<Platforms>>,
    axum::Form(form): axum::Form<std::collections::HashMap<String, String>>,
) -> (StatusCode, axum::Json<Value>) {
    let refused = (
        StatusCode::BAD_REQUEST,
        axum::Json(
            json!({"error": "invalid_grant", "error_description": "Invalid JWT Signature."}),
        ),
    );
    if form.get("grant_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    {
        return refused;
    }
    let key = jsonwebtoken::DecodingKey::from_rsa_pem(PUBLIC_KEY.as_bytes()).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.validate_aud = false;
    let Ok(data) = jsonwebtoken::decode::<Value>(
        form.get("assertion")
            .map(String::as_str)
            .unwrap_or_default(),
        &key,
        &validation,
    ) else {
        return refused;
    };
    if data.claims["iss"] != SA_EMAIL
        || data.claims["scope"] != "https://www.googleapis.com/auth/datamanager"
        || !data.claims["aud"]
            .as_str()
            .unwrap_or_default()
            .ends_with("/token")
    {
        return refused;
    }
    let n = p.tokens.fetch_add(1, Ordering::SeqCst);
    (
        StatusCode::OK,
        axum::Json(
            json!({"access_token": format!("ya29.stand-in-{n}"), "expires_in": 3599, "token_type": "Bearer"}),
        ),
    )
}

async fn ingest(
    State(p): State<Arc<Platforms>>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> (StatusCode, axum::Json<Value>) {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !auth.starts_with("Bearer ya29.stand-in-") {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(
                json!({"error": {"code": 401, "status": "UNAUTHENTICATED", "message": "Request had invalid authentication credentials."}}),
            ),
        );
    }
    let mut violations = Vec::new();
    if body["encoding"] != "HEX"
        || body["destinations"][0]["operatingAccount"]["accountType"] != "GOOGLE_ADS"
        || body["destinations"][0]["productDestinationId"] != "7683937191"
    {
        violations.push(json!({"field": "destinations[0]", "reason": "INVALID_DESTINATION"}));
    }
    for (i, e) in body["events"].as_array().into_iter().flatten().enumerate() {
        if !e["transactionId"].is_string() || !e["eventTimestamp"].is_string() {
            violations
                .push(json!({"field": format!("events[{i}]"), "reason": "REQUIRED_FIELD_MISSING"}));
        }
        if e["adIdentifiers"].is_null() && e["userData"].is_null() {
            violations.push(json!({"field": format!("events[{i}].ad_identifiers"), "reason": "REQUIRED_FIELD_MISSING", "description": "An event needs a click id or user identifiers."}));
        }
        for id in e["userData"]["userIdentifiers"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if let Some(v) = id.get("emailAddress").or(id.get("phoneNumber"))
                && !is_sha256(v)
            {
                violations.push(json!({"field": format!("events[{i}].user_data.user_identifiers"), "reason": "INVALID_SHA256_FORMAT"}));
            }
        }
    }
    if !violations.is_empty() {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(
                json!({"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "There was a problem with the request.",
                "details": [{"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": violations}]}}),
            ),
        );
    }
    p.received
        .lock()
        .unwrap()
        .push(("data_manager".into(), body.clone()));
    (
        StatusCode::OK,
        axum::Json(json!({"requestId": "stand-in-request"})),
    )
}

async fn mp_debug(
    Query(q): Query<std::collections::HashMap<String, String>>,
    axum::Json(body): axum::Json<Value>,
) -> axum::Json<Value> {
    let mut messages = Vec::new();
    if !body["client_id"].is_string() {
        messages.push(json!({"fieldPath": "client_id", "description": "client_id is required.", "validationCode": "VALUE_REQUIRED"}));
    }
    if !q.contains_key("measurement_id") {
        messages.push(json!({"fieldPath": "measurement_id", "description": "measurement_id is required.", "validationCode": "VALUE_REQUIRED"}));
    }
    axum::Json(json!({ "validationMessages": messages }))
}

async fn mp_collect(
    State(p): State<Arc<Platforms>>,
    Query(q): Query<std::collections::HashMap<String, String>>,
    axum::Json(body): axum::Json<Value>,
) -> StatusCode {
    // GA4 answers 2xx whatever it thinks; only well-formed requests are kept.
    if q.get("api_secret").map(String::as_str) == Some(GA4_SECRET)
        && q.get("measurement_id").map(String::as_str) == Some("G-TEST123")
        && body["client_id"].is_string()
    {
        p.received.lock().unwrap().push(("ga4".into(), body));
    }
    StatusCode::NO_CONTENT
}

async fn stand_ins() -> (String, Arc<Platforms>) {
    let platforms = Arc::new(Platforms::default());
    let router = Router::new()
        .route("/v24.0/{pixel}/events", post(meta))
        .route("/token", post(token))
        .route("/v1/events:ingest", post(ingest))
        .route("/debug/mp/collect", post(mp_debug))
        .route("/mp/collect", post(mp_collect))
        .with_state(platforms.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (format!("http://{addr}"), platforms)
}

async fn spawn(backend: Backend, base: &str) -> Option<TestApp> {
    let base = base.to_owned();
    TestApp::spawn_with(backend, move |config| {
        config.conversions.meta_base_url = base.clone();
        config.conversions.data_manager_base_url = base.clone();
        config.conversions.ga4_base_url = base.clone();
        config.conversions.google_token_url = format!("{base}/token");
        config.conversions.retry_base_seconds = 0.2;
    })
    .await
}

/// Creates the Meta and Data Manager credentials; returns their ids.
async fn credentials(app: &TestApp, owner: &User, ws: &str) -> (String, String) {
    let path = format!("/api/v1/workspaces/{ws}/conversions/credentials");
    let (status, meta) = app
        .post(&path, &owner.token, json!({ "platform": "meta", "name": "Shop pixel", "pixel_id": "1234567890", "access_token": META_TOKEN }))
        .await;
    assert_eq!(status, 201, "{meta}");
    let (status, dm) = app
        .post(&path, &owner.token, json!({
            "platform": "data_manager", "operating_account_id": "220-004-3144",
            "conversion_action_id": "customers/2200043144/conversionActions/7683937191",
            "service_account_key": { "type": "service_account", "client_email": SA_EMAIL, "private_key": KEY, "private_key_id": "k1" },
        }))
        .await;
    assert_eq!(status, 201, "{dm}");
    (
        meta["id"].as_str().unwrap().to_owned(),
        dm["id"].as_str().unwrap().to_owned(),
    )
}

async fn trigger(app: &TestApp, owner: &User, ws: &str, body: Value) -> String {
    let (status, t) = app
        .post(
            &format!("/api/v1/workspaces/{ws}/conversions/triggers"),
            &owner.token,
            body,
        )
        .await;
    assert_eq!(status, 201, "{t}");
    t["id"].as_str().unwrap().to_owned()
}

/// Polls the conversions list until `done` holds.
async fn wait_conversions(
    app: &TestApp,
    owner: &User,
    ws: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let path = format!("/api/v1/workspaces/{ws}/conversions/events?limit=200");
    let mut last = Vec::new();
    for _ in 0..200 {
        let (status, page) = app.get(&path, &owner.token).await;
        assert_eq!(status, 200, "{page}");
        last = page["data"].as_array().unwrap().clone();
        if done(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for conversions: {last:?}");
}

fn sent_to(platforms: &Platforms, platform: &str) -> Vec<Value> {
    platforms
        .received
        .lock()
        .unwrap()
        .iter()
        .filter(|(p, _)| p == platform)
        .map(|(_, b)| b.clone())
        .collect()
}

#[tokio::test]
async fn credentials_are_sealed_validated_and_tested_sqlite() {
    credentials_are_sealed_validated_and_tested(Backend::Sqlite).await;
}

#[tokio::test]
async fn credentials_are_sealed_validated_and_tested_postgres() {
    credentials_are_sealed_validated_and_tested(Backend::Postgres).await;
}

/// Also the log: the server's whole tracing output (every target at `debug`) while it creates,
/// tests and delivers with each kind of credential, through retries and refusals, must not
/// hold any secret.
async fn credentials_are_sealed_validated_and_tested(backend: Backend) {
    let logs = crate::support::capture_logs();
    let (base, platforms) = stand_ins().await;
    let Some(app) = spawn(backend, &base).await else {
        return;
    };
    let owner = app.signup("conv-creds@example.com").await;
    let ws = app.workspace(&owner, "Conversions").await;
    let t = owner.token.as_str();
    let path = format!("/api/v1/workspaces/{ws}/conversions/credentials");
    let mut responses = Vec::new();

    for (body, field) in [
        (json!({ "platform": "tiktok" }), "platform"),
        (
            json!({ "platform": "meta", "pixel_id": "123" }),
            "access_token",
        ),
        (
            json!({ "platform": "meta", "pixel_id": "abc", "access_token": "x" }),
            "pixel_id",
        ),
        (
            json!({ "platform": "meta", "pixel_id": "1", "access_token": "x", "api_secret": "y" }),
            "api_secret",
        ),
        (
            json!({ "platform": "ga4", "measurement_id": "UA-1", "api_secret": "y" }),
            "measurement_id",
        ),
        (
            json!({ "platform": "data_manager", "operating_account_id": "1", "conversion_action_id": "2" }),
            "service_account_key",
        ),
        (
            json!({ "platform": "data_manager", "operating_account_id": "1", "conversion_action_id": "2",
                 "service_account_key": { "client_email": SA_EMAIL, "private_key": "not a key" } }),
            "service_account_key",
        ),
        (
            json!({ "platform": "data_manager", "operating_account_id": "x1", "conversion_action_id": "2",
                 "oauth": { "client_id": "a", "client_secret": "b", "refresh_token": "c" } }),
            "operating_account_id",
        ),
    ] {
        let (status, err) = app.post(&path, t, body.clone()).await;
        assert_eq!(status, 422, "{body}: {err}");
        assert_eq!(err["error"]["details"]["field"], field, "{body}: {err}");
    }
    let (status, err) = app
        .post(&path, t, json!({ "platform": "meta", "nope": 1 }))
        .await;
    assert!(status == 400 || status == 422, "{err}");

    let (meta_id, dm_id) = credentials(&app, &owner, &ws).await;
    let (status, ga4) = app
        .post(
            &path,
            t,
            json!({ "platform": "ga4", "measurement_id": "G-TEST123", "api_secret": GA4_SECRET }),
        )
        .await;
    assert_eq!(status, 201, "{ga4}");
    assert_eq!(ga4["settings"]["measurement_id"], "G-TEST123");
    assert!(ga4["fingerprint"].as_str().unwrap().starts_with("sha256:"));
    let ga4_id = ga4["id"].as_str().unwrap().to_owned();
    responses.push(ga4);

    let (status, list) = app.get(&path, t).await;
    assert_eq!(status, 200);
    assert_eq!(list["data"].as_array().unwrap().len(), 3);
    responses.push(list);
    let (status, one) = app.get(&format!("{path}/{dm_id}"), t).await;
    assert_eq!(status, 200);
    assert_eq!(one["settings"]["auth"], "service_account");
    assert_eq!(one["settings"]["operating_account_id"], "2200043144");
    assert_eq!(one["settings"]["conversion_action_id"], "7683937191");
    responses.push(one);

    // The test endpoint reaches each platform's validation path and reports its answer.
    for id in [&meta_id, &dm_id, &ga4_id] {
        let (status, answer) = app.post(&format!("{path}/{id}/test"), t, json!({})).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["ok"], true, "{id}: {answer}");
        responses.push(answer);
    }
    // A Meta token the platform refuses is reported, with Meta's words.
    let (_, wrong) = app
        .post(
            &path,
            t,
            json!({ "platform": "meta", "pixel_id": "1234567890", "access_token": WRONG_META_TOKEN }),
        )
        .await;
    responses.push(wrong.clone());
    let (status, answer) = app
        .post(
            &format!("{path}/{}/test", wrong["id"].as_str().unwrap()),
            t,
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["ok"], false);
    assert_eq!(answer["status"], 401);
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("Invalid OAuth"),
        "{answer}"
    );

    responses.push(answer);
    // A refresh token Google refuses (the stand-in only grants service-account assertions).
    let (status, oauth) = app
        .post(&path, t, json!({
            "platform": "data_manager", "operating_account_id": "2200043144",
            "conversion_action_id": "7683937191",
            "oauth": { "client_id": "1234.apps.googleusercontent.com", "client_secret": OAUTH_CLIENT_SECRET, "refresh_token": REFRESH_TOKEN },
        }))
        .await;
    assert_eq!(status, 201, "{oauth}");
    let oauth_id = oauth["id"].as_str().unwrap().to_owned();
    responses.push(oauth);
    let (status, answer) = app
        .post(&format!("{path}/{oauth_id}/test"), t, json!({}))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["ok"], false, "{answer}");
    responses.push(answer);

    // Deliveries with each credential: accepted after a 500 (Meta), accepted (Data Manager
    // with a service account, GA4), refused for the token (Meta) or for the refresh token
    // (Data Manager).
    let (status, contact) = app
        .post(
            &format!("/api/v1/workspaces/{ws}/contacts"),
            t,
            json!({ "emails": ["secret-test@example.com"], "ga_client_ids": ["123456.1763800000"] }),
        )
        .await;
    assert_eq!(status, 201, "{contact}");
    let contact_id: crm::ContactId = contact["contact"]["id"].as_str().unwrap().parse().unwrap();
    platforms.meta_failures.store(1, Ordering::SeqCst);
    let scope = platform::Scope::system(ws.parse().unwrap());
    let wrong_id = wrong["id"].as_str().unwrap().to_owned();
    let mut expected = Vec::new();
    for (credential, outcome) in [
        (&meta_id, "sent"),
        (&dm_id, "sent"),
        (&ga4_id, "sent"),
        (&wrong_id, "failed"),
        (&oauth_id, "failed"),
    ] {
        let trigger_id = trigger(&app, &owner, &ws, json!({ "credential_id": credential, "source": "automation", "event": "step", "platform_event_name": "Lead" })).await;
        let step = conversions::AutomationConversion {
            trigger_id: trigger_id.parse().unwrap(),
            contact_id: Some(contact_id),
            event_name: None,
            value: Some(5.0),
            currency: Some("EUR".into()),
            event_id: format!("secrets-{credential}"),
        };
        let id = conversions::send_from_automation(&app.state.db, &scope, &step)
            .await
            .unwrap();
        expected.push((id.to_string(), outcome));
    }
    let settled = wait_conversions(&app, &owner, &ws, |c| {
        c.len() == expected.len()
            && c.iter()
                .all(|c| c["status"] == "sent" || c["status"] == "failed")
    })
    .await;
    for (id, outcome) in &expected {
        let c = settled.iter().find(|c| c["id"] == id.as_str()).unwrap();
        assert_eq!(c["status"], *outcome, "{c}");
        let (status, detail) = app
            .get(
                &format!("/api/v1/workspaces/{ws}/conversions/events/{id}"),
                t,
            )
            .await;
        assert_eq!(status, 200, "{detail}");
        responses.push(detail);
    }
    let meta_conversion = settled
        .iter()
        .find(|c| c["id"] == expected[0].0.as_str())
        .unwrap();
    assert_eq!(meta_conversion["attempts"], 2, "{meta_conversion}");
    responses.push(json!(settled));

    // A member may read, not write; another workspace sees nothing.
    let (status, _) = app
        .call(
            axum::http::Method::DELETE,
            &format!("{path}/{meta_id}"),
            Some(t),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, gone) = app.get(&format!("{path}/{meta_id}"), t).await;
    assert_eq!(status, 404);
    assert_eq!(gone["error"]["code"], "credential_not_found");

    // No plaintext secret in any response, nor in the database file, nor in the log.
    for response in &responses {
        let text = response.to_string();
        for secret in secrets() {
            assert!(!text.contains(&secret), "{secret} leaked: {text}");
        }
    }
    if backend == Backend::Sqlite {
        assert_no_plaintext_in_state_files(&app);
    }
    drop(app);
    let log = logs.text();
    // The capture saw the paths that handle secrets, at debug, and the dependencies' lines.
    for seen in [
        "credential tested",
        "conversion batch sent",
        "outcome=\"accepted\"",
        "outcome=\"retry\"",
        "outcome=\"rejected\"",
        " DEBUG ",
        "sqlx::query",
    ] {
        assert!(log.contains(seen), "the captured log has no {seen:?}");
    }
    for secret in secrets() {
        let encoded: String = form_urlencoded::byte_serialize(secret.as_bytes()).collect();
        for form in [secret.clone(), encoded] {
            if let Some(at) = log.find(&form) {
                let line = log[..at].rfind('\n').map_or(0, |i| i + 1);
                let end = log[at..].find('\n').map_or(log.len(), |i| at + i);
                panic!("{secret} is in the log: {}", &log[line..end]);
            }
        }
    }
}

fn assert_no_plaintext_in_state_files(app: &TestApp) {
    let dir = app.data_dir();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !name.starts_with("state.db") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        for secret in secrets() {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret} found in {name}"
            );
        }
    }
}

#[tokio::test]
async fn deal_won_to_meta_and_data_manager_sqlite() {
    deal_won_to_meta_and_data_manager(Backend::Sqlite).await;
}

#[tokio::test]
async fn deal_won_to_meta_and_data_manager_postgres() {
    deal_won_to_meta_and_data_manager(Backend::Postgres).await;
}

async fn deal_won_to_meta_and_data_manager(backend: Backend) {
    let (base, platforms) = stand_ins().await;
    let Some(app) = spawn(backend, &base).await else {
        return;
    };
    let owner = app.signup("conv-deals@example.com").await;
    let ws = app.workspace(&owner, "Deals to conversions").await;
    let t = owner.token.as_str();
    let api = format!("/api/v1/workspaces/{ws}");
    let (meta_id, dm_id) = credentials(&app, &owner, &ws).await;
    let meta_trigger = trigger(&app, &owner, &ws, json!({ "credential_id": meta_id, "source": "crm", "event": "deal.won", "platform_event_name": "Purchase" })).await;
    let dm_trigger = trigger(
        &app,
        &owner,
        &ws,
        json!({ "credential_id": dm_id, "source": "crm", "event": "deal.won" }),
    )
    .await;
    let (status, err) = app
        .post(
            &format!("{api}/conversions/triggers"),
            t,
            json!({ "credential_id": meta_id, "source": "crm", "event": "bad event" }),
        )
        .await;
    assert_eq!(status, 422, "{err}");

    let (status, contact) = app
        .post(&format!("{api}/contacts"), t, json!({
            "emails": ["Dana@Example.com"], "phones": ["+18005550100"], "first_name": "Dana",
            "touch": { "source": "google", "medium": "cpc", "gclid": "Cj0-deal-click", "fbc": "fb.1.1763800000000.Abc", "at": "2026-11-01T10:00:00Z" },
        }))
        .await;
    assert_eq!(status, 201, "{contact}");
    let contact_id = contact["contact"]["id"].as_str().unwrap().to_owned();
    let (status, pipeline) = app
        .post(&format!("{api}/pipelines"), t, json!({ "name": "Sales", "stages": [{ "name": "Lead" }, { "name": "Won", "kind": "won" }] }))
        .await;
    assert_eq!(status, 201, "{pipeline}");
    let (status, deal) = app
        .post(&format!("{api}/deals"), t, json!({ "title": "Renewal", "pipeline_id": pipeline["id"], "value": "120.50", "currency": "eur", "contact_ids": [contact_id] }))
        .await;
    assert_eq!(status, 201, "{deal}");
    let deal_id = deal["id"].as_str().unwrap().to_owned();

    // Meta answers 500 twice: the conversion is retried, then delivered.
    platforms.meta_failures.store(2, Ordering::SeqCst);
    let (status, won) = app
        .call(
            axum::http::Method::PATCH,
            &format!("{api}/deals/{deal_id}"),
            Some(t),
            Some(json!({ "status": "won" })),
        )
        .await;
    assert_eq!(status, 200, "{won}");
    let conversions = wait_conversions(&app, &owner, &ws, |c| {
        c.len() == 2 && c.iter().all(|c| c["status"] == "sent")
    })
    .await;
    let event_id = format!("deal.won:{deal_id}");
    for c in &conversions {
        assert_eq!(c["event_id"], event_id.as_str());
        assert_eq!(c["value"], 120.5);
        assert_eq!(c["currency"], "EUR");
        assert_eq!(c["contact_id"], contact_id.as_str());
    }
    let meta_conversion = conversions
        .iter()
        .find(|c| c["platform"] == "meta")
        .unwrap();
    assert_eq!(meta_conversion["trigger_id"], meta_trigger.as_str());
    assert_eq!(meta_conversion["attempts"], 3);
    let (status, detail) = app
        .get(
            &format!(
                "{api}/conversions/events/{}",
                meta_conversion["id"].as_str().unwrap()
            ),
            t,
        )
        .await;
    assert_eq!(status, 200, "{detail}");
    let outcomes: Vec<&str> = detail["attempts_log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["retry", "retry", "accepted"], "{detail}");
    assert_eq!(detail["attempts_log"][0]["response_status"], 500);
    assert!(!detail.to_string().contains(META_TOKEN));
    let dm_conversion = conversions
        .iter()
        .find(|c| c["platform"] == "data_manager")
        .unwrap();
    assert_eq!(dm_conversion["trigger_id"], dm_trigger.as_str());
    assert_eq!(dm_conversion["attempts"], 1);

    // What the platforms got: the same event id, hashed identifiers, click ids in clear.
    let meta_events = sent_to(&platforms, "meta");
    assert_eq!(meta_events.len(), 1);
    let e = &meta_events[0]["data"][0];
    assert_eq!(e["event_id"], event_id.as_str());
    assert_eq!(e["event_name"], "Purchase");
    assert_eq!(e["action_source"], "system_generated");
    assert_eq!(e["user_data"]["em"][0], sha("dana@example.com").as_str());
    assert_eq!(e["user_data"]["ph"][0], sha("18005550100").as_str());
    assert_eq!(e["user_data"]["fn"], sha("dana").as_str());
    assert_eq!(e["user_data"]["fbc"], "fb.1.1763800000000.Abc");
    assert_eq!(
        e["custom_data"],
        json!({ "value": 120.5, "currency": "EUR" })
    );
    let dm_events = sent_to(&platforms, "data_manager");
    assert_eq!(dm_events.len(), 1);
    let e = &dm_events[0]["events"][0];
    assert_eq!(e["transactionId"], event_id.as_str());
    assert_eq!(e["adIdentifiers"]["gclid"], "Cj0-deal-click");
    assert_eq!(
        e["userData"]["userIdentifiers"][0]["emailAddress"],
        sha("dana@example.com").as_str()
    );
    assert_eq!(
        e["userData"]["userIdentifiers"][1]["phoneNumber"],
        sha("+18005550100").as_str()
    );
    assert_eq!(platforms.tokens.load(Ordering::SeqCst), 1);

    // A redelivered deal.won (won again after reopening) adds nothing for the same deal.
    let (status, _) = app
        .call(
            axum::http::Method::PATCH,
            &format!("{api}/deals/{deal_id}"),
            Some(t),
            Some(json!({ "status": "open" })),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = app
        .call(
            axum::http::Method::PATCH,
            &format!("{api}/deals/{deal_id}"),
            Some(t),
            Some(json!({ "status": "won" })),
        )
        .await;
    assert_eq!(status, 200);

    // Automation steps: idempotent on their key; an event without click id or identifiers is
    // refused by Data Manager on its own, the other one in the same batch goes through.
    let scope = platform::Scope::system(ws.parse().unwrap());
    let step = |contact: Option<&str>, key: &str| conversions::AutomationConversion {
        trigger_id: dm_trigger.parse().unwrap(),
        contact_id: contact.map(|c| c.parse().unwrap()),
        event_name: None,
        value: Some(10.0),
        currency: Some("EUR".into()),
        event_id: key.into(),
    };
    let db = &app.state.db;
    let good =
        conversions::send_from_automation(db, &scope, &step(Some(&contact_id), "run-1:step-2"))
            .await
            .unwrap();
    let bad = conversions::send_from_automation(db, &scope, &step(None, "run-2:step-2"))
        .await
        .unwrap();
    let again =
        conversions::send_from_automation(db, &scope, &step(Some(&contact_id), "run-1:step-2"))
            .await
            .unwrap();
    assert_eq!(good, again);
    let conversions = wait_conversions(&app, &owner, &ws, |c| {
        c.len() == 4
            && c.iter()
                .all(|c| c["status"] == "sent" || c["status"] == "failed")
    })
    .await;
    let by_id = |id: String| {
        conversions
            .iter()
            .find(|c| c["id"] == id.as_str())
            .unwrap()
            .clone()
    };
    assert_eq!(by_id(good.to_string())["status"], "sent");
    let failed = by_id(bad.to_string());
    assert_eq!(failed["status"], "failed");
    assert!(
        failed["last_error"]
            .as_str()
            .unwrap()
            .contains("REQUIRED_FIELD_MISSING"),
        "{failed}"
    );
    let (_, detail) = app.get(&format!("{api}/conversions/events/{bad}"), t).await;
    assert_eq!(
        detail["attempts_log"][0]["response_status"], 400,
        "{detail}"
    );

    // Stats per trigger and platform.
    let (status, stats) = app.get(&format!("{api}/conversions/stats"), t).await;
    assert_eq!(status, 200, "{stats}");
    let dm_row = stats["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["trigger_id"] == dm_trigger.as_str())
        .unwrap()
        .clone();
    assert_eq!(
        dm_row,
        json!({ "trigger_id": dm_trigger, "platform": "data_manager", "total": 3, "sent": 2, "failed": 1, "pending": 0 })
    );
    let (status, err) = app
        .get(&format!("{api}/conversions/stats?from=yesterday"), t)
        .await;
    assert_eq!(status, 422, "{err}");

    // Per UTC day: the failed Data Manager conversion (and its attempt) moved to yesterday
    // noon; the rest happened today. Meta's conversion went out three times (500, 500,
    // accepted) and counts as sent once.
    let now = chrono::Utc::now();
    let yesterday = (now - chrono::Duration::days(1)).date_naive();
    let today = now.date_naive();
    let tomorrow = (now + chrono::Duration::days(1)).date_naive();
    let noon = platform::Timestamp::from(yesterday.and_hms_opt(12, 0, 0).unwrap().and_utc());
    for sql in [
        "UPDATE conversion_events SET created_at = $1 WHERE id = $2",
        "UPDATE conversion_attempts SET created_at = $1 WHERE conversion_id = $2",
    ] {
        platform::with_db!(&app.state.db, pool => sqlx::query(sql).bind(noon).bind(bad).execute(pool).await.map(drop))
            .unwrap();
    }
    let (status, stats) = app
        .get(
            &format!("{api}/conversions/stats?from={yesterday}&to={tomorrow}&interval=day"),
            t,
        )
        .await;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(stats["interval"], "day");
    let row = |trigger: &str| {
        stats["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["trigger_id"] == trigger)
            .unwrap_or_else(|| panic!("no row for {trigger}: {stats}"))
            .clone()
    };
    let day = |date: chrono::NaiveDate, generated: i64, sent: i64, accepted: i64, failed: i64| json!({ "date": date.to_string(), "generated": generated, "sent": sent, "accepted": accepted, "failed": failed });
    assert_eq!(
        row(&dm_trigger),
        json!({ "trigger_id": dm_trigger, "platform": "data_manager", "total": 3, "sent": 2, "failed": 1, "pending": 0,
            "series": [day(yesterday, 1, 1, 0, 1), day(today, 2, 2, 2, 0)] })
    );
    assert_eq!(
        row(&meta_trigger),
        json!({ "trigger_id": meta_trigger, "platform": "meta", "total": 1, "sent": 1, "failed": 0, "pending": 0,
            "series": [day(yesterday, 0, 0, 0, 0), day(today, 1, 1, 1, 0)] })
    );
    // Today alone: the failure is outside the window, in totals and series.
    let (_, stats) = app
        .get(
            &format!("{api}/conversions/stats?from={today}&to={tomorrow}&interval=day"),
            t,
        )
        .await;
    let dm_today = stats["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["trigger_id"] == dm_trigger.as_str())
        .unwrap()
        .clone();
    assert_eq!(
        dm_today,
        json!({ "trigger_id": dm_trigger, "platform": "data_manager", "total": 2, "sent": 2, "failed": 0, "pending": 0,
            "series": [day(today, 2, 2, 2, 0)] })
    );
    for (query, field) in [
        (
            format!("from={today}&to={tomorrow}&interval=hour"),
            "interval",
        ),
        (
            format!("from=2020-01-01&to={tomorrow}&interval=day"),
            "from",
        ),
        (format!("from={tomorrow}&to={today}"), "to"),
    ] {
        let (status, err) = app
            .get(&format!("{api}/conversions/stats?{query}"), t)
            .await;
        assert_eq!(status, 422, "{query}: {err}");
        assert_eq!(err["error"]["details"]["field"], field, "{query}: {err}");
    }

    // A disabled trigger takes no automation step.
    let (status, _) = app
        .call(
            axum::http::Method::PATCH,
            &format!("{api}/conversions/triggers/{dm_trigger}"),
            Some(t),
            Some(json!({ "enabled": false })),
        )
        .await;
    assert_eq!(status, 200);
    let err = conversions::send_from_automation(db, &scope, &step(Some(&contact_id), "run-3"))
        .await
        .unwrap_err();
    assert_eq!(err.code, "trigger_disabled");
    if backend == Backend::Sqlite {
        assert_no_plaintext_in_state_files(&app);
    }
}

const HOST: &str = "track.conversions.example.com";
const CHROME: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";

/// One gtag request with one event line.
async fn gtag(app: &TestApp, cid: &str, page: &str, event: &[(&str, &str)]) {
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("v", "2")
        .append_pair("tid", "G-TEST123")
        .append_pair("cid", cid)
        .append_pair("sid", "1763800000")
        .append_pair("dl", &format!("https://shop.example.com{page}"))
        .append_pair("dt", "Shop")
        .finish();
    let mut line = form_urlencoded::Serializer::new(String::new());
    for (k, v) in event {
        line.append_pair(k, v);
    }
    let resp = app
        .client
        .post(app.url(&format!("/g/collect?{query}")))
        .header("host", HOST)
        .header("user-agent", CHROME)
        .header("cookie", "_fbp=fb.1.1763800000000.555")
        .body(line.finish())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
}

#[tokio::test]
async fn purchase_hit_becomes_one_meta_and_one_data_manager_event_with_the_hit_id_sqlite() {
    purchase_hit_to_platforms(Backend::Sqlite).await;
}

#[tokio::test]
async fn purchase_hit_becomes_one_meta_and_one_data_manager_event_with_the_hit_id_postgres() {
    purchase_hit_to_platforms(Backend::Postgres).await;
}

/// A GA4 `purchase` hit through the real gateway, with a `gclid` landing and an email that a
/// capture rule turns into a contact: one Meta event and one Data Manager event, both with the
/// hit's id as their event id, identifiers hashed per platform. An `automation.event_received`
/// (`appointment_confirmed`) for the contact becomes a conversion too.
async fn purchase_hit_to_platforms(backend: Backend) {
    let (base, platforms) = stand_ins().await;
    let Some(app) = spawn(backend, &base).await else {
        return;
    };
    let owner = app.signup("conv-hits@example.com").await;
    let ws = app.workspace(&owner, "Hits to conversions").await;
    let t = owner.token.as_str();
    let api = format!("/api/v1/workspaces/{ws}");
    let (site_id, _, _) = app.site(&owner, &ws, HOST).await;
    let (status, rule) = app
        .post(
            &format!("{api}/capture-rules"),
            t,
            json!({
                "site_id": site_id, "name": "Checkout", "event_name": "purchase",
                "mappings": [{ "source": "param:email", "target": "emails" }],
            }),
        )
        .await;
    assert_eq!(status, 201, "{rule}");
    let (meta_id, dm_id) = credentials(&app, &owner, &ws).await;
    trigger(&app, &owner, &ws, json!({ "credential_id": meta_id, "source": "tracking", "event": "purchase", "platform_event_name": "Purchase", "currency": "EUR" })).await;
    trigger(
        &app,
        &owner,
        &ws,
        json!({ "credential_id": dm_id, "source": "tracking", "event": "purchase", "value": 1.0 }),
    )
    .await;
    let appointment = trigger(&app, &owner, &ws, json!({ "credential_id": meta_id, "source": "crm", "event": "appointment_confirmed", "platform_event_name": "Schedule" })).await;

    let cid = "555000111.1763800000";
    gtag(
        &app,
        cid,
        "/?gclid=Cj0-hit-click&utm_source=google&utm_medium=cpc",
        &[("en", "page_view")],
    )
    .await;
    gtag(
        &app,
        cid,
        "/checkout/done",
        &[
            ("en", "purchase"),
            ("ep.email", " Buyer@Example.com"),
            ("ep.transaction_id", "T-1001"),
            ("epn.value", "49.9"),
            ("cu", "EUR"),
        ],
    )
    .await;

    let conversions = wait_conversions(&app, &owner, &ws, |c| {
        c.len() == 2 && c.iter().all(|c| c["status"] == "sent")
    })
    .await;
    let records = app.log_records().await;
    let hit = records
        .iter()
        .flat_map(|r| r.hits.iter())
        .find(|h| h.event_name == "purchase")
        .expect("the purchase hit");
    let hit_id = hit.id.to_string();
    for c in &conversions {
        assert_eq!(c["event_id"], hit_id.as_str(), "{c}");
    }
    let meta_events = sent_to(&platforms, "meta");
    assert_eq!(meta_events.len(), 1, "{meta_events:?}");
    assert_eq!(meta_events[0]["data"].as_array().unwrap().len(), 1);
    let e = &meta_events[0]["data"][0];
    assert_eq!(e["event_id"], hit_id.as_str());
    assert_eq!(e["event_name"], "Purchase");
    assert_eq!(
        e["custom_data"],
        json!({ "value": 49.9, "currency": "EUR" }),
        "{e}"
    );
    assert_eq!(e["user_data"]["em"][0], sha("buyer@example.com").as_str());
    assert_eq!(e["user_data"]["fbp"], "fb.1.1763800000000.555");
    assert_eq!(
        e["user_data"]["external_id"].as_str().map(str::len),
        Some(64)
    );
    let dm_events = sent_to(&platforms, "data_manager");
    assert_eq!(dm_events.len(), 1, "{dm_events:?}");
    let e = &dm_events[0]["events"][0];
    assert_eq!(e["transactionId"], hit_id.as_str());
    assert_eq!(e["adIdentifiers"]["gclid"], "Cj0-hit-click");
    assert_eq!(e["eventSource"], "WEB");
    assert_eq!(
        e["userData"]["userIdentifiers"][0]["emailAddress"],
        sha("buyer@example.com").as_str()
    );

    // The automation trigger API's event, as the automation crate publishes it.
    let contact_id = conversions[0]["contact_id"].as_str().unwrap().to_owned();
    let mut tx = app.state.db.begin().await.unwrap();
    platform::outbox::publish(
        &mut tx,
        ws.parse::<platform::id::WorkspaceId>().unwrap(),
        "automation.event_received",
        &json!({ "trigger": "appointment_confirmed", "contact_id": contact_id, "variables": { "value": 80, "currency": "usd" }, "event_id": "appt-77" }),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let conversions = wait_conversions(&app, &owner, &ws, |c| {
        c.len() == 3 && c.iter().all(|c| c["status"] == "sent")
    })
    .await;
    let appt = conversions
        .iter()
        .find(|c| c["trigger_id"] == appointment.as_str())
        .unwrap();
    assert_eq!(appt["event_id"], "appt-77");
    assert_eq!(appt["value"], 80.0);
    assert_eq!(appt["currency"], "USD");
    let meta_events = sent_to(&platforms, "meta");
    assert_eq!(
        meta_events.last().unwrap()["data"][0]["event_name"],
        "Schedule"
    );
    assert_eq!(
        meta_events.last().unwrap()["data"][0]["user_data"]["em"][0],
        sha("buyer@example.com").as_str()
    );
}

#[tokio::test]
async fn tracked_conversion_waits_for_a_contact_created_after_the_hit_sqlite() {
    contact_created_after_the_hit(Backend::Sqlite).await;
}

#[tokio::test]
async fn tracked_conversion_waits_for_a_contact_created_after_the_hit_postgres() {
    contact_created_after_the_hit(Backend::Postgres).await;
}

/// The race: a `purchase` hit (no capture rule) from a visitor who becomes a contact only
/// after the hit was read. The conversion, built from the event log a few seconds later,
/// looks the contact up again and carries its email; Meta gets a `website` event with the
/// page, the browser's user agent and the hit's id.
async fn contact_created_after_the_hit(backend: Backend) {
    let (base, platforms) = stand_ins().await;
    let Some(app) = spawn(backend, &base).await else {
        return;
    };
    let owner = app.signup("conv-race@example.com").await;
    let ws = app.workspace(&owner, "Race").await;
    let t = owner.token.as_str();
    let api = format!("/api/v1/workspaces/{ws}");
    app.site(&owner, &ws, HOST).await;
    let (meta_id, dm_id) = credentials(&app, &owner, &ws).await;
    trigger(&app, &owner, &ws, json!({ "credential_id": meta_id, "source": "tracking", "event": "purchase", "platform_event_name": "Purchase" })).await;
    trigger(
        &app,
        &owner,
        &ws,
        json!({ "credential_id": dm_id, "source": "tracking", "event": "purchase" }),
    )
    .await;
    let (status, ga4) = app
        .post(
            &format!("{api}/conversions/credentials"),
            t,
            json!({ "platform": "ga4", "measurement_id": "G-TEST123", "api_secret": GA4_SECRET }),
        )
        .await;
    assert_eq!(status, 201, "{ga4}");
    trigger(&app, &owner, &ws, json!({ "credential_id": ga4["id"], "source": "tracking", "event": "purchase", "platform_event_name": "offline_purchase" })).await;

    let cid = "777000111.1763800000";
    gtag(
        &app,
        cid,
        "/landing?gclid=Cj0-race-click",
        &[("en", "purchase"), ("epn.value", "15"), ("cu", "EUR")],
    )
    .await;
    // Later than the job's first run (2 s after the hit): its first lookup finds no contact.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let (status, contact) = app
        .post(
            &format!("{api}/contacts"),
            t,
            json!({ "emails": ["late@example.com"], "ga_client_ids": [cid] }),
        )
        .await;
    assert_eq!(status, 201, "{contact}");

    let conversions = wait_conversions(&app, &owner, &ws, |c| {
        c.len() == 3 && c.iter().all(|c| c["status"] == "sent")
    })
    .await;
    let hit_id = app
        .log_records()
        .await
        .iter()
        .flat_map(|r| r.hits.iter())
        .find(|h| h.event_name == "purchase")
        .unwrap()
        .id
        .to_string();
    for c in &conversions {
        assert_eq!(c["event_id"], hit_id.as_str());
        assert_eq!(c["contact_id"], contact["contact"]["id"]);
    }
    let meta = &sent_to(&platforms, "meta")[0]["data"][0];
    assert_eq!(meta["event_id"], hit_id.as_str());
    assert_eq!(meta["action_source"], "website");
    assert_eq!(
        meta["event_source_url"],
        "https://shop.example.com/landing?gclid=Cj0-race-click"
    );
    assert_eq!(meta["user_data"]["client_user_agent"], CHROME);
    assert_eq!(meta["user_data"]["em"][0], sha("late@example.com").as_str());
    assert_eq!(meta["user_data"]["fbp"], "fb.1.1763800000000.555");
    assert_eq!(
        meta["custom_data"],
        json!({ "value": 15.0, "currency": "EUR" })
    );
    let dm = &sent_to(&platforms, "data_manager")[0]["events"][0];
    assert_eq!(dm["transactionId"], hit_id.as_str());
    assert_eq!(dm["adIdentifiers"]["gclid"], "Cj0-race-click");
    assert_eq!(
        dm["userData"]["userIdentifiers"][0]["emailAddress"],
        sha("late@example.com").as_str()
    );
    let ga = &sent_to(&platforms, "ga4")[0];
    assert_eq!(ga["client_id"], cid);
    assert_eq!(ga["events"][0]["name"], "offline_purchase");
    assert_eq!(ga["events"][0]["params"]["transaction_id"], hit_id.as_str());
    assert_eq!(ga["events"][0]["params"]["session_id"], "1763800000");
    assert!(!ga.to_string().contains(GA4_SECRET));

    // Meta refuses a whole batch for one invalid event: the batch is split until the culprit
    // is alone; it fails, the others are delivered.
    let meta_trigger = trigger(
        &app,
        &owner,
        &ws,
        json!({ "credential_id": meta_id, "source": "automation", "event": "step" }),
    )
    .await;
    let scope = platform::Scope::system(ws.parse().unwrap());
    let mut ids = Vec::new();
    let before = sent_to(&platforms, "meta").len();
    for (i, name) in ["Lead", "Invalid Event", "Lead", "Lead"].iter().enumerate() {
        let step = conversions::AutomationConversion {
            trigger_id: meta_trigger.parse().unwrap(),
            contact_id: Some(contact["contact"]["id"].as_str().unwrap().parse().unwrap()),
            event_name: Some((*name).to_owned()),
            value: None,
            currency: None,
            event_id: format!("batch-{i}"),
        };
        ids.push(
            conversions::send_from_automation(&app.state.db, &scope, &step)
                .await
                .unwrap()
                .to_string(),
        );
    }
    let conversions = wait_conversions(&app, &owner, &ws, |c| {
        c.len() == 7
            && c.iter()
                .all(|c| c["status"] == "sent" || c["status"] == "failed")
    })
    .await;
    for (i, id) in ids.iter().enumerate() {
        let c = conversions.iter().find(|c| c["id"] == id.as_str()).unwrap();
        let expected = if i == 1 { "failed" } else { "sent" };
        assert_eq!(c["status"], expected, "{c}");
    }
    let delivered: usize = sent_to(&platforms, "meta")[before..]
        .iter()
        .map(|b| b["data"].as_array().unwrap().len())
        .sum();
    assert_eq!(delivered, 3);
}

#[tokio::test]
async fn deal_won_through_an_automation_becomes_a_conversion_sqlite() {
    deal_won_through_an_automation(Backend::Sqlite).await;
}

#[tokio::test]
async fn deal_won_through_an_automation_becomes_a_conversion_postgres() {
    deal_won_through_an_automation(Backend::Postgres).await;
}

/// `deal.won` → an automation rule whose `send_conversion` step names a conversion trigger →
/// one Meta event, its event id the step's idempotency key (run id and step position).
async fn deal_won_through_an_automation(backend: Backend) {
    let (base, platforms) = stand_ins().await;
    let Some(app) = spawn(backend, &base).await else {
        return;
    };
    let owner = app.signup("conv-automation@example.com").await;
    let ws = app.workspace(&owner, "Automation to conversions").await;
    let t = owner.token.as_str();
    let api = format!("/api/v1/workspaces/{ws}");
    let (meta_id, _) = credentials(&app, &owner, &ws).await;
    let conversion_trigger = trigger(&app, &owner, &ws, json!({ "credential_id": meta_id, "source": "automation", "event": "won_deal", "platform_event_name": "Purchase" })).await;

    let step = json!({ "type": "send_conversion", "trigger_id": conversion_trigger,
        "value": "{{event.value}}", "currency": "{{event.currency}}" });
    let (status, bad) = app
        .post(
            &format!("{api}/automations"),
            t,
            json!({ "name": "Bad", "triggers": [{ "type": "event", "event": "deal.won" }],
            "steps": [{ "type": "send_conversion", "trigger_id": "not-an-id" }] }),
        )
        .await;
    assert_eq!(status, 422, "{bad}");
    let (status, bad) = app
        .post(&format!("{api}/automations"), t, json!({ "name": "Bad template", "triggers": [{ "type": "event", "event": "deal.won" }],
            "steps": [{ "type": "send_conversion", "trigger_id": conversion_trigger, "value": "{{event.value" }] }))
        .await;
    assert_eq!(status, 422, "{bad}");
    let (status, rule) = app
        .post(
            &format!("{api}/automations"),
            t,
            json!({ "name": "Won deals to Meta",
            "triggers": [{ "type": "event", "event": "deal.won" }], "steps": [step] }),
        )
        .await;
    assert_eq!(status, 201, "{rule}");
    let rule_id = rule["id"].as_str().unwrap().to_owned();

    let (status, contact) = app
        .post(&format!("{api}/contacts"), t, json!({ "emails": ["Robin@Example.com"], "first_name": "Robin",
            "touch": { "source": "facebook", "medium": "paid", "fbc": "fb.1.1763800000000.Won", "at": "2026-11-01T10:00:00Z" } }))
        .await;
    assert_eq!(status, 201, "{contact}");
    let contact_id = contact["contact"]["id"].as_str().unwrap().to_owned();
    let (status, pipeline) = app
        .post(&format!("{api}/pipelines"), t, json!({ "name": "Sales", "stages": [{ "name": "Lead" }, { "name": "Won", "kind": "won" }] }))
        .await;
    assert_eq!(status, 201, "{pipeline}");
    let (status, deal) = app
        .post(&format!("{api}/deals"), t, json!({ "title": "Retainer", "pipeline_id": pipeline["id"], "value": "980.00", "currency": "EUR", "contact_ids": [contact_id] }))
        .await;
    assert_eq!(status, 201, "{deal}");
    let (status, won) = app
        .call(
            axum::http::Method::PATCH,
            &format!("{api}/deals/{}", deal["id"].as_str().unwrap()),
            Some(t),
            Some(json!({ "status": "won" })),
        )
        .await;
    assert_eq!(status, 200, "{won}");

    let conversions = wait_conversions(&app, &owner, &ws, |c| {
        c.len() == 1 && c[0]["status"] == "sent"
    })
    .await;
    let c = &conversions[0];
    assert_eq!(c["trigger_id"], conversion_trigger.as_str());
    assert_eq!(c["contact_id"], contact_id.as_str());
    assert_eq!(c["value"], 980.0);
    assert_eq!(c["currency"], "EUR");

    // The run records the conversion it made; the event id is the run's step key.
    let (status, runs) = app
        .get(&format!("{api}/automations/{rule_id}/runs"), t)
        .await;
    assert_eq!(status, 200, "{runs}");
    assert_eq!(runs["data"].as_array().unwrap().len(), 1, "{runs}");
    let run_id = runs["data"][0]["id"].as_str().unwrap().to_owned();
    let event_id = c["event_id"].as_str().unwrap();
    assert!(
        event_id.starts_with(&run_id),
        "{event_id} is not of run {run_id}"
    );

    let meta_events = sent_to(&platforms, "meta");
    assert_eq!(meta_events.len(), 1, "{meta_events:?}");
    let e = &meta_events[0]["data"][0];
    assert_eq!(e["event_id"], event_id);
    assert_eq!(e["event_name"], "Purchase");
    assert_eq!(e["user_data"]["em"][0], sha("robin@example.com").as_str());
    assert_eq!(e["user_data"]["fbc"], "fb.1.1763800000000.Won");
    assert_eq!(
        e["custom_data"],
        json!({ "value": 980.0, "currency": "EUR" })
    );
}

#[tokio::test]
async fn a_page_event_id_becomes_the_conversion_event_id_sqlite() {
    page_event_id(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_page_event_id_becomes_the_conversion_event_id_postgres() {
    page_event_id(Backend::Postgres).await;
}

/// A web container that sends one event id to the pixel and to GA4 (`ep.event_id`) gets that id
/// on the server event, so Meta deduplicates the two.
async fn page_event_id(backend: Backend) {
    let (base, platforms) = stand_ins().await;
    let Some(app) = spawn(backend, &base).await else {
        return;
    };
    let owner = app.signup("conv-page-id@example.com").await;
    let ws = app.workspace(&owner, "Page event ids").await;
    let api = format!("/api/v1/workspaces/{ws}");
    app.site(&owner, &ws, HOST).await;
    let (meta_id, _) = credentials(&app, &owner, &ws).await;
    trigger(&app, &owner, &ws, json!({ "credential_id": meta_id, "source": "tracking", "event": "purchase", "platform_event_name": "Purchase" })).await;
    let cid = "555000111.1763800000";
    let (status, contact) = app
        .post(
            &format!("{api}/contacts"),
            &owner.token,
            json!({ "emails": ["pixel@example.com"], "ga_client_ids": [cid] }),
        )
        .await;
    assert_eq!(status, 201, "{contact}");

    gtag(
        &app,
        cid,
        "/checkout",
        &[
            ("en", "purchase"),
            ("ep.event_id", "order-1001.purchase"),
            ("epn.value", "20"),
            ("cu", "EUR"),
        ],
    )
    .await;
    gtag(
        &app,
        cid,
        "/checkout",
        &[("en", "purchase"), ("epn.value", "5"), ("cu", "EUR")],
    )
    .await;
    let conversions = wait_conversions(&app, &owner, &ws, |c| {
        c.len() == 2 && c.iter().all(|c| c["status"] == "sent")
    })
    .await;
    let hit_ids: Vec<String> = app
        .log_records()
        .await
        .iter()
        .flat_map(|r| r.hits.iter())
        .map(|h| h.id.to_string())
        .collect();
    let ids: Vec<&str> = conversions
        .iter()
        .map(|c| c["event_id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"order-1001.purchase"), "{ids:?}");
    let other = ids.iter().find(|id| **id != "order-1001.purchase").unwrap();
    assert!(
        hit_ids.iter().any(|h| h == other),
        "without ep.event_id the hit id is used: {ids:?}"
    );
    let sent: Vec<String> = sent_to(&platforms, "meta")
        .iter()
        .flat_map(|b| b["data"].as_array().cloned().unwrap_or_default())
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        sent.iter().any(|id| id == "order-1001.purchase"),
        "{sent:?}"
    );
    assert_eq!(sent.len(), 2, "{sent:?}");
}

#[tokio::test]
async fn a_form_submission_takes_the_page_event_id_sqlite() {
    form_submission_page_event_id(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_form_submission_takes_the_page_event_id_postgres() {
    form_submission_page_event_id(Backend::Postgres).await;
}

/// A captured form (`form.submitted`) takes the page's event id (`ep.event_id`) like a tracked
/// conversion does, else the hit id. A `purchase` that is both captured and tracked for the
/// same credential reaches it through both paths with one id, so it is one conversion.
async fn form_submission_page_event_id(backend: Backend) {
    let (base, platforms) = stand_ins().await;
    let Some(app) = spawn(backend, &base).await else {
        return;
    };
    let owner = app.signup("conv-form-id@example.com").await;
    let ws = app.workspace(&owner, "Form event ids").await;
    let t = owner.token.as_str();
    let api = format!("/api/v1/workspaces/{ws}");
    let (site_id, _, _) = app.site(&owner, &ws, HOST).await;
    for event in ["purchase", "generate_lead"] {
        let (status, rule) = app
            .post(
                &format!("{api}/capture-rules"),
                t,
                json!({
                    "site_id": site_id, "name": event, "event_name": event,
                    "mappings": [{ "source": "param:email", "target": "emails" }],
                }),
            )
            .await;
        assert_eq!(status, 201, "{rule}");
    }
    let (meta_id, dm_id) = credentials(&app, &owner, &ws).await;
    // Meta: the tracked purchase (from the log, and from the capture's form.submitted).
    trigger(&app, &owner, &ws, json!({ "credential_id": meta_id, "source": "tracking", "event": "purchase", "platform_event_name": "Purchase" })).await;
    // Data Manager: every captured form.
    trigger(
        &app,
        &owner,
        &ws,
        json!({ "credential_id": dm_id, "source": "crm", "event": "form.submitted" }),
    )
    .await;

    let cid = "555000222.1763800000";
    gtag(&app, cid, "/?gclid=Cj0-form-click", &[("en", "page_view")]).await;
    gtag(
        &app,
        cid,
        "/checkout/done",
        &[
            ("en", "purchase"),
            ("ep.email", "form@example.com"),
            ("ep.event_id", "order-2002.purchase"),
            ("epn.value", "30"),
            ("cu", "EUR"),
        ],
    )
    .await;
    gtag(
        &app,
        cid,
        "/contact",
        &[("en", "generate_lead"), ("ep.email", "form@example.com")],
    )
    .await;

    let settled = |c: &[Value]| c.len() == 3 && c.iter().all(|c| c["status"] == "sent");
    wait_conversions(&app, &owner, &ws, settled).await;
    // The log path's job runs 2 s after the hit (and looks the contact up again): give it
    // time to find the purchase already recorded.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let conversions = wait_conversions(&app, &owner, &ws, settled).await;
    let lead_hit = app
        .log_records()
        .await
        .iter()
        .flat_map(|r| r.hits.iter())
        .find(|h| h.event_name == "generate_lead")
        .unwrap()
        .id
        .to_string();
    let mut got: Vec<(String, String)> = conversions
        .iter()
        .map(|c| {
            (
                c["platform"].as_str().unwrap().to_owned(),
                c["event_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    got.sort();
    let mut want = vec![
        ("data_manager".to_owned(), "order-2002.purchase".to_owned()),
        ("data_manager".to_owned(), lead_hit.clone()),
        ("meta".to_owned(), "order-2002.purchase".to_owned()),
    ];
    want.sort();
    assert_eq!(got, want);

    let meta: Vec<Value> = sent_to(&platforms, "meta")
        .iter()
        .flat_map(|b| b["data"].as_array().cloned().unwrap_or_default())
        .collect();
    assert_eq!(meta.len(), 1, "{meta:?}");
    assert_eq!(meta[0]["event_id"], "order-2002.purchase");
    assert_eq!(
        meta[0]["user_data"]["em"][0],
        sha("form@example.com").as_str()
    );
    let mut dm: Vec<String> = sent_to(&platforms, "data_manager")
        .iter()
        .flat_map(|b| b["events"].as_array().cloned().unwrap_or_default())
        .map(|e| {
            assert_eq!(e["adIdentifiers"]["gclid"], "Cj0-form-click", "{e}");
            e["transactionId"].as_str().unwrap().to_owned()
        })
        .collect();
    dm.sort();
    let mut want = vec!["order-2002.purchase".to_owned(), lead_hit];
    want.sort();
    assert_eq!(dm, want);
}
