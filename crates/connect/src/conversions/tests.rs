//! The adapters against local stand-ins that check each request the way the platform would
//! (path, auth, required fields, hash formats) and answer in the platform's format.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use chrono::Utc;
use serde_json::{Value, json};

use super::data_manager::{DataManagerClient, Destination};
use super::ga4_mp::{Ga4Client, Ga4Credential};
use super::google_auth::GoogleCredential;
use super::meta_capi::{MetaClient, MetaCredential};
use super::normalize::is_sha256_hex;
use super::*;

pub const TEST_KEY: &str = include_str!("testdata/service_account_test_key.pem");
pub const TEST_PUBLIC_KEY: &str = include_str!("testdata/service_account_test_pub.pem");

#[derive(Default)]
struct Counters {
    tokens: AtomicUsize,
    ingests: AtomicUsize,
    metas: AtomicUsize,
    /// The next N ingest calls answer 401 (an expired token).
    unauthorized: AtomicUsize,
}

async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{addr}")
}

fn conversion(id: &str) -> Conversion {
    Conversion {
        event_id: id.into(),
        event_name: "Purchase".into(),
        event_time: Utc::now(),
        value: Some(10.0),
        currency: Some("EUR".into()),
        source_url: Some("https://shop.example.com/".into()),
        user: UserData {
            emails: vec!["dana@example.com".into()],
            phones: vec!["+18005550100".into()],
            user_agent: Some("Mozilla/5.0".into()),
            ..UserData::default()
        },
        click_ids: ClickIds {
            gclid: Some("Cj0-test".into()),
            fbc: Some("fb.1.1.abc".into()),
            ga_client_id: Some("111.222".into()),
            ..ClickIds::default()
        },
        consent: Consent::default(),
    }
}

fn endpoints(base: &str) -> Endpoints {
    Endpoints {
        meta_base_url: base.into(),
        meta_api_version: "v24.0".into(),
        data_manager_base_url: base.into(),
        ga4_base_url: base.into(),
        google_token_url: format!("{base}/token"),
    }
}

/// Meta's checks: token in the query, `data` with the required fields, hashes in lowercase hex.
async fn meta_events(
    State(counters): State<Arc<Counters>>,
    Query(query): Query<std::collections::HashMap<String, String>>,
    axum::Json(body): axum::Json<Value>,
) -> (StatusCode, axum::Json<Value>) {
    counters.metas.fetch_add(1, Ordering::SeqCst);
    let graph_error = |status: StatusCode, code: i64, message: &str| {
        (
            status,
            axum::Json(
                json!({"error": {"message": message, "type": "OAuthException", "code": code, "fbtrace_id": "Atest"}}),
            ),
        )
    };
    if query.get("access_token").map(String::as_str) != Some("meta-token") {
        return graph_error(StatusCode::UNAUTHORIZED, 190, "Invalid OAuth access token.");
    }
    let Some(events) = body["data"].as_array() else {
        return graph_error(StatusCode::BAD_REQUEST, 100, "data is required");
    };
    for event in events {
        for key in ["event_name", "event_time", "action_source", "user_data"] {
            if event.get(key).is_none() {
                return graph_error(StatusCode::BAD_REQUEST, 100, "missing field");
            }
        }
        for email in event["user_data"]["em"].as_array().into_iter().flatten() {
            if !is_sha256_hex(email.as_str().unwrap_or_default()) {
                return graph_error(StatusCode::BAD_REQUEST, 100, "em must be hashed");
            }
        }
        if event["event_id"] == "boom" {
            return graph_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                2,
                "Service temporarily unavailable",
            );
        }
        if event["event_id"] == "bad" {
            return graph_error(StatusCode::BAD_REQUEST, 100, "Invalid parameter");
        }
    }
    (
        StatusCode::OK,
        axum::Json(json!({"events_received": events.len(), "messages": [], "fbtrace_id": "Aok"})),
    )
}

/// Google's token endpoint: checks the JWT bearer assertion (RS256, iss/aud/scope).
async fn token(
    State(counters): State<Arc<Counters>>,
    axum::Form(form): axum::Form<std::collections::HashMap<String, String>>,
) -> (StatusCode, axum::Json<Value>) {
    counters.tokens.fetch_add(1, Ordering::SeqCst);
    let refused = |d: &str| {
        (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "invalid_grant", "error_description": d})),
        )
    };
    match form.get("grant_type").map(String::as_str) {
        Some("urn:ietf:params:oauth:grant-type:jwt-bearer") => {
            let key = jsonwebtoken::DecodingKey::from_rsa_pem(TEST_PUBLIC_KEY.as_bytes())
                .expect("public key");
            let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
            validation.validate_aud = false;
            let Ok(data) = jsonwebtoken::decode::<Value>(
                form.get("assertion")
                    .map(String::as_str)
                    .unwrap_or_default(),
                &key,
                &validation,
            ) else {
                return refused("Invalid JWT Signature.");
            };
            let claims = data.claims;
            if claims["iss"] != "sa@project.iam.gserviceaccount.com"
                || claims["scope"] != google_auth::DATAMANAGER_SCOPE
                || !claims["aud"]
                    .as_str()
                    .unwrap_or_default()
                    .ends_with("/token")
            {
                return refused("bad claims");
            }
        }
        Some("refresh_token") => {
            if form.get("refresh_token").map(String::as_str) != Some("rt-1") {
                return refused("Token has been expired or revoked.");
            }
        }
        _ => return refused("unsupported grant"),
    }
    let n = counters.tokens.load(Ordering::SeqCst);
    (
        StatusCode::OK,
        axum::Json(
            json!({"access_token": format!("ya29.test{n}"), "expires_in": 3599, "token_type": "Bearer"}),
        ),
    )
}

/// Data Manager's checks: bearer token, destinations, HEX encoding, hashed identifiers, and a
/// fail-fast error naming `events[i]` for an event without a click id or user data.
async fn ingest(
    State(counters): State<Arc<Counters>>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> (StatusCode, axum::Json<Value>) {
    counters.ingests.fetch_add(1, Ordering::SeqCst);
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let forced = counters.unauthorized.load(Ordering::SeqCst) > 0;
    if forced {
        counters.unauthorized.fetch_sub(1, Ordering::SeqCst);
    }
    if forced || !auth.starts_with("Bearer ya29.") {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(
                json!({"error": {"code": 401, "status": "UNAUTHENTICATED", "message": "Request had invalid authentication credentials."}}),
            ),
        );
    }
    let invalid = |violations: Vec<Value>| {
        (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": {"code": 400, "status": "INVALID_ARGUMENT",
                "message": "There was a problem with the request.",
                "details": [{"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": violations}]}})),
        )
    };
    if body["encoding"] != "HEX"
        || body["destinations"][0]["productDestinationId"]
            .as_str()
            .is_none()
    {
        return invalid(vec![
            json!({"field": "encoding", "reason": "INVALID_ARGUMENT"}),
        ]);
    }
    let mut violations = Vec::new();
    for (i, event) in body["events"].as_array().into_iter().flatten().enumerate() {
        if event["transactionId"].as_str().is_none() || event["eventTimestamp"].as_str().is_none() {
            violations
                .push(json!({"field": format!("events[{i}]"), "reason": "REQUIRED_FIELD_MISSING"}));
        }
        if event["adIdentifiers"].is_null() && event["userData"].is_null() {
            violations.push(json!({"field": format!("events[{i}].ad_identifiers"), "reason": "REQUIRED_FIELD_MISSING", "description": "no click id or user data"}));
        }
        for id in event["userData"]["userIdentifiers"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let hashed = id["emailAddress"]
                .as_str()
                .or(id["phoneNumber"].as_str())
                .unwrap_or_default();
            if !is_sha256_hex(hashed) {
                violations.push(json!({"field": format!("events[{i}].user_data.user_identifiers"), "reason": "INVALID_SHA256_FORMAT"}));
            }
        }
    }
    if !violations.is_empty() {
        return invalid(violations);
    }
    (StatusCode::OK, axum::Json(json!({"requestId": "req-1"})))
}

async fn mp_collect(Query(query): Query<std::collections::HashMap<String, String>>) -> StatusCode {
    assert_eq!(
        query.get("api_secret").map(String::as_str),
        Some("ga-secret")
    );
    StatusCode::NO_CONTENT
}

async fn mp_debug(axum::Json(body): axum::Json<Value>) -> axum::Json<Value> {
    let name = body["events"][0]["name"].as_str().unwrap_or_default();
    let messages = if name.starts_with('_') {
        vec![
            json!({"fieldPath": "events", "description": format!("Event at index: [0] has invalid name [{name}]."), "validationCode": "NAME_INVALID"}),
        ]
    } else {
        Vec::new()
    };
    axum::Json(json!({"validationMessages": messages}))
}

async fn platforms() -> (String, Arc<Counters>) {
    let counters = Arc::new(Counters::default());
    let router = Router::new()
        .route("/v24.0/{pixel}/events", post(meta_events))
        .route("/token", post(token))
        .route("/v1/events:ingest", post(ingest))
        .route("/mp/collect", post(mp_collect))
        .route("/debug/mp/collect", post(mp_debug))
        .with_state(counters.clone());
    (serve(router).await, counters)
}

fn service_account() -> GoogleCredential {
    GoogleCredential::ServiceAccount {
        client_email: "sa@project.iam.gserviceaccount.com".into(),
        private_key: TEST_KEY.into(),
        private_key_id: Some("k1".into()),
    }
}

fn destination() -> Destination {
    Destination {
        operating_account_id: "2200043144".into(),
        login_account_id: None,
        conversion_action_id: "7683937191".into(),
    }
}

#[tokio::test]
async fn meta_accepts_refuses_and_retries() {
    let (base, counters) = platforms().await;
    let client = MetaClient::new(http_client().expect("client"), &endpoints(&base));
    let credential = MetaCredential {
        pixel_id: "123".into(),
        access_token: "meta-token".into(),
        test_event_code: None,
    };
    let report = client
        .send(&credential, &[conversion("a"), conversion("b")], false)
        .await;
    assert_eq!(report.outcome, Outcome::Accepted, "{}", report.response);
    assert_eq!(report.status, Some(200));
    assert!(!report.request.to_string().contains("meta-token"));

    let report = client.send(&credential, &[conversion("boom")], false).await;
    assert_eq!(report.outcome, Outcome::Transient { retry_after: None });

    let report = client.send(&credential, &[conversion("bad")], false).await;
    let Outcome::Rejected { per_event, .. } = report.outcome else {
        panic!("refused")
    };
    assert_eq!(per_event.len(), 1);

    // A batch refusal names no event.
    let report = client
        .send(&credential, &[conversion("ok"), conversion("bad")], false)
        .await;
    assert!(
        matches!(report.outcome, Outcome::Rejected { ref per_event, .. } if per_event.is_empty())
    );

    // An old event is split off before anything is sent.
    let before = counters.metas.load(Ordering::SeqCst);
    let mut old = conversion("old");
    old.event_time = Utc::now() - chrono::Duration::days(8);
    let report = client
        .send(&credential, &[conversion("ok"), old], false)
        .await;
    assert!(
        matches!(report.outcome, Outcome::Rejected { ref per_event, .. } if per_event.len() == 1 && per_event[0].0 == 1)
    );
    assert_eq!(counters.metas.load(Ordering::SeqCst), before);

    let wrong = MetaCredential {
        access_token: "nope".into(),
        ..credential
    };
    let report = client.send(&wrong, &[conversion("x")], false).await;
    assert!(
        matches!(report.outcome, Outcome::Rejected { ref per_event, .. } if per_event.is_empty())
    );
    assert_eq!(report.status, Some(401));
}

#[tokio::test]
async fn data_manager_uses_a_cached_service_account_token_and_reports_bad_events() {
    let (base, counters) = platforms().await;
    let client = DataManagerClient::new(http_client().expect("client"), &endpoints(&base));
    let credential = service_account();
    let report = client
        .send(&credential, &destination(), &[conversion("a")], false)
        .await;
    assert_eq!(report.outcome, Outcome::Accepted, "{}", report.response);
    let report = client
        .send(&credential, &destination(), &[conversion("b")], true)
        .await;
    assert_eq!(report.outcome, Outcome::Accepted, "{}", report.response);
    assert_eq!(
        counters.tokens.load(Ordering::SeqCst),
        1,
        "the token is cached"
    );

    // An event with neither click id nor user data fails the request; it is named.
    let mut bare = conversion("bare");
    bare.click_ids = ClickIds::default();
    bare.user = UserData::default();
    let report = client
        .send(&credential, &destination(), &[conversion("c"), bare], false)
        .await;
    let Outcome::Rejected { per_event, .. } = report.outcome else {
        panic!("refused: {:?}", report.outcome)
    };
    assert_eq!(per_event.len(), 1);
    assert_eq!(per_event[0].0, 1);

    // A 401 on the cached token refreshes it once.
    counters.unauthorized.store(1, Ordering::SeqCst);
    let report = client
        .send(&credential, &destination(), &[conversion("d")], false)
        .await;
    assert_eq!(report.outcome, Outcome::Accepted, "{}", report.response);
    assert_eq!(counters.tokens.load(Ordering::SeqCst), 2);

    // A refresh token that Google refuses is the credential's fault.
    let oauth = GoogleCredential::OAuth {
        client_id: "cid".into(),
        client_secret: "cs".into(),
        refresh_token: "revoked".into(),
    };
    let report = client
        .send(&oauth, &destination(), &[conversion("e")], false)
        .await;
    assert!(
        matches!(report.outcome, Outcome::Rejected { ref per_event, .. } if per_event.is_empty())
    );
    assert!(
        report.response.contains("invalid_grant"),
        "{}",
        report.response
    );
}

#[tokio::test]
async fn ga4_sends_per_client_and_validates_on_the_debug_endpoint() {
    let (base, _) = platforms().await;
    let client = Ga4Client::new(http_client().expect("client"), &endpoints(&base));
    let credential = Ga4Credential {
        measurement_id: "G-TEST".into(),
        api_secret: "ga-secret".into(),
    };
    let mut anonymous = conversion("anon");
    anonymous.click_ids.ga_client_id = None;
    let report = client
        .send(&credential, &[conversion("a"), anonymous], false)
        .await;
    assert!(
        matches!(report.outcome, Outcome::Rejected { ref per_event, .. } if per_event.len() == 1 && per_event[0].0 == 1)
    );
    assert_eq!(report.status, Some(204));

    let mut bad = conversion("bad");
    bad.event_name = "_bad".into();
    let report = client.send(&credential, &[bad], true).await;
    let Outcome::Rejected { per_event, .. } = report.outcome else {
        panic!("refused")
    };
    assert!(per_event[0].1.contains("NAME_INVALID"));
    let report = client.send(&credential, &[conversion("ok")], true).await;
    assert_eq!(report.outcome, Outcome::Accepted);
}
