//! Outbound signed webhooks, end to end: real domain events (a contact created over the API)
//! reach a local receiver, signed the Standard Webhooks way and checked here with a verifier
//! written from the spec (not the server's signer); retries on a shortened schedule; endpoints
//! disabled on 410 and after failing for the (shortened) window, with the
//! `webhook.endpoint_disabled` event delivered to another endpoint; rotation; resend and
//! recover; the SSRF refusal; tenancy.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use platform::config::Config;
use reqwest::Method;
use serde_json::{Value, json};

use crate::backend_test;
use crate::support::{Backend, TestApp, User};

// ---- an independent Standard Webhooks verifier (spec §8: "{id}.{ts}.{body}", HMAC-SHA256,
// key = base64 after `whsec_`, header = space-separated `v1,<base64>`) ----

fn expected_signature(secret: &str, id: &str, timestamp: &str, body: &str) -> String {
    use hmac::Mac;
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").expect("whsec_ prefix"))
        .expect("base64 key");
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// Whether some `v1` entry of the header is `secret`'s signature, and the timestamp is within
/// 5 minutes of now.
fn verifies(secret: &str, hook: &Hook) -> bool {
    let ts: i64 = hook.timestamp.parse().expect("integer timestamp");
    let now = chrono::Utc::now().timestamp();
    if (now - ts).abs() > 300 {
        return false;
    }
    let expected = expected_signature(secret, &hook.id, &hook.timestamp, &hook.body);
    hook.signature.split(' ').any(|entry| entry == expected)
}

#[test]
fn the_test_verifier_matches_the_protocol_vectors() {
    assert_eq!(
        expected_signature(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "1614265330",
            r#"{"test": 2432232314}"#
        ),
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    );
    assert_eq!(
        expected_signature(
            "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            "1649367553",
            r#"{"email":"test@example.com","username":"test_user"}"#
        ),
        "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
    );
}

// ---- a local receiver ----

#[derive(Debug, Clone)]
struct Hook {
    at: Instant,
    path: String,
    id: String,
    timestamp: String,
    signature: String,
    content_type: String,
    body: String,
}

impl Hook {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("JSON body")
    }
}

#[derive(Default)]
struct Receiver {
    hooks: Mutex<Vec<Hook>>,
    /// Statuses to answer first, in order; then `otherwise`.
    plan: Mutex<VecDeque<u16>>,
    otherwise: Mutex<u16>,
}

impl Receiver {
    fn hooks(&self) -> Vec<Hook> {
        self.hooks.lock().unwrap().clone()
    }

    fn answer(&self, status: u16) {
        *self.otherwise.lock().unwrap() = status;
    }
}

/// A receiver answering `plan` first, then `otherwise`; returns its base URL.
async fn receiver(plan: &[u16], otherwise: u16) -> (String, Arc<Receiver>) {
    let received = Arc::new(Receiver {
        plan: Mutex::new(plan.iter().copied().collect()),
        otherwise: Mutex::new(otherwise),
        ..Default::default()
    });
    async fn record(State(r): State<Arc<Receiver>>, req: Request) -> impl IntoResponse {
        let (parts, body) = req.into_parts();
        let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
        let header = |n: &str| {
            parts
                .headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        r.hooks.lock().unwrap().push(Hook {
            at: Instant::now(),
            path: parts.uri.path().to_owned(),
            id: header("webhook-id"),
            timestamp: header("webhook-timestamp"),
            signature: header("webhook-signature"),
            content_type: header("content-type"),
            body: String::from_utf8(body.to_vec()).unwrap(),
        });
        let status = r
            .plan
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(*r.otherwise.lock().unwrap());
        let status = StatusCode::from_u16(status).unwrap();
        // Failures answer a long body: the attempts log keeps 1 KB of it.
        let body = if status.is_success() {
            "ok".to_owned()
        } else {
            "é".repeat(2000)
        };
        (status, body)
    }
    let app = axum::Router::new()
        .fallback(record)
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), received)
}

// ---- harness ----

/// Test settings: fast polling, loopback receivers allowed, a schedule of short delays.
async fn spawn(backend: Backend, tweak: fn(&mut Config)) -> Option<TestApp> {
    TestApp::spawn_with(backend, |c| {
        c.jobs.poll_interval_ms = 50;
        c.webhooks.allow_private_destinations = true;
        c.webhooks.retry_schedule_seconds = vec![0.0, 0.3, 0.3, 0.3];
        tweak(c);
    })
    .await
}

/// Like `backend_test!`, with a configuration tweak on top of [`spawn`]'s.
macro_rules! webhook_test {
    ($name:ident, $tweak:expr, |$app:ident| $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn body($app: TestApp) {
                $body.await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let app = spawn(Backend::Sqlite, $tweak).await.expect("sqlite");
                body(app).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(app) = spawn(Backend::Postgres, $tweak).await {
                    body(app).await;
                }
            }
        }
    };
}

fn keep(_: &mut Config) {}

/// Polls `probe` until it returns `Some`, for up to 20 s.
async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn hooks_at_least(r: &Receiver, n: usize) -> Vec<Hook> {
    eventually(&format!("{n} webhook(s)"), || async {
        let hooks = r.hooks();
        (hooks.len() >= n).then_some(hooks)
    })
    .await
}

struct Setup {
    owner: User,
    ws: String,
}

async fn setup(app: &TestApp, name: &str) -> Setup {
    let owner = app.signup(&format!("{name}@example.com")).await;
    let ws = app.workspace(&owner, name).await;
    Setup { owner, ws }
}

impl Setup {
    fn base(&self) -> String {
        format!("/api/v1/workspaces/{}/webhooks", self.ws)
    }

    /// Creates an endpoint; returns (id, secret).
    async fn endpoint(&self, app: &TestApp, url: &str, types: Value) -> (String, String) {
        let (status, body) = app
            .post(
                &self.base(),
                &self.owner.token,
                json!({ "url": url, "description": "test", "event_types": types }),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        (
            body["endpoint"]["id"].as_str().unwrap().to_owned(),
            body["secret"].as_str().unwrap().to_owned(),
        )
    }

    async fn contact(&self, app: &TestApp, email: &str) -> String {
        let (status, body) = app
            .post(
                &format!("/api/v1/workspaces/{}/contacts", self.ws),
                &self.owner.token,
                json!({ "emails": [email] }),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["contact"]["id"].as_str().unwrap().to_owned()
    }

    async fn messages(&self, app: &TestApp, endpoint: &str) -> Vec<Value> {
        let (status, body) = app
            .get(
                &format!("{}/{endpoint}/messages", self.base()),
                &self.owner.token,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["data"].as_array().unwrap().clone()
    }

    /// Waits until the endpoint's message about `event_type` has `status`.
    async fn message_with_status(
        &self,
        app: &TestApp,
        endpoint: &str,
        event_type: &str,
        status: &str,
    ) -> Value {
        eventually(&format!("a {status} {event_type} message"), || async {
            self.messages(app, endpoint)
                .await
                .into_iter()
                .find(|m| m["event_type"] == event_type && m["status"] == status)
        })
        .await
    }

    async fn attempts(&self, app: &TestApp, endpoint: &str, message: &str) -> Vec<Value> {
        let (status, body) = app
            .get(
                &format!("{}/{endpoint}/messages/{message}/attempts", self.base()),
                &self.owner.token,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let mut attempts = body["data"].as_array().unwrap().clone();
        attempts.reverse(); // oldest first
        attempts
    }

    async fn endpoint_state(&self, app: &TestApp, endpoint: &str) -> Value {
        let (status, body) = app
            .get(&format!("{}/{endpoint}", self.base()), &self.owner.token)
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }
}

// ---- tests ----

webhook_test!(domain_events_arrive_signed, keep, |app| async move {
    let s = setup(&app, "signed").await;
    // The first attempt fails: the retry carries the same webhook-id.
    let (url, got) = receiver(&[500], 204).await;
    let (endpoint, secret) = s
        .endpoint(&app, &format!("{url}/hooks/in"), json!(["contact.*"]))
        .await;
    assert!(secret.starts_with("whsec_"), "{secret}");
    let shown = s.endpoint_state(&app, &endpoint).await;
    assert!(shown.get("secret").is_none(), "{shown}");
    assert!(
        !shown.to_string().contains(&secret[6..]),
        "the secret never shows again"
    );
    assert_eq!(shown["event_types"], json!(["contact.*"]));

    let contact = s.contact(&app, "a@example.com").await;
    let hooks = hooks_at_least(&got, 2).await;
    let message = s
        .message_with_status(&app, &endpoint, "contact.created", "delivered")
        .await;
    let message_id = message["id"].as_str().unwrap();
    assert!(message_id.starts_with("msg_"));
    for hook in &hooks {
        assert_eq!(hook.path, "/hooks/in");
        assert_eq!(hook.id, message_id, "webhook-id is the message id, stable");
        assert!(!hook.timestamp.is_empty() && !hook.signature.is_empty());
        assert!(hook.content_type.starts_with("application/json"));
        assert!(verifies(&secret, hook), "signature of {hook:?}");
        assert!(!verifies("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", hook));
        // Same body on every attempt.
        assert_eq!(hook.body, hooks[0].body);
    }
    let payload = hooks[0].json();
    assert_eq!(payload["type"], "contact.created");
    assert_eq!(payload["data"]["contact_id"], contact.as_str());
    assert!(payload["timestamp"].as_str().unwrap().ends_with('Z'));
    assert_eq!(message["payload"], payload);
    assert_eq!(message["attempts"], 2);
    assert!(message["next_attempt_at"].is_null());

    // A tampered body does not verify.
    let mut forged = hooks[1].clone();
    forged.body = forged.body.replace("contact.created", "contact.deleted");
    assert!(!verifies(&secret, &forged));

    let attempts = s.attempts(&app, &endpoint, message_id).await;
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!(attempts[0]["status"], "failed");
    assert_eq!(attempts[0]["response_status_code"], 500);
    assert!(attempts[0]["error"].as_str().unwrap().contains("500"));
    assert_eq!(attempts[1]["status"], "succeeded");
    assert_eq!(attempts[1]["response_status_code"], 204);
    assert!(attempts[1]["error"].is_null());
    for a in &attempts {
        assert!(a["latency_ms"].as_i64().unwrap() >= 0);
        assert!(a["url"].as_str().unwrap().ends_with("/hooks/in"));
    }
    assert_eq!(attempts[0]["attempt"], 1);
    assert_eq!(attempts[1]["attempt"], 2);
});

webhook_test!(filters_pick_event_types, keep, |app| async move {
    let s = setup(&app, "filters").await;
    let (deals_url, deals_got) = receiver(&[], 204).await;
    let (all_url, all_got) = receiver(&[], 204).await;
    let (deals, _) = s.endpoint(&app, &deals_url, json!(["deal.*"])).await;
    let (all, _) = s.endpoint(&app, &all_url, json!(["*"])).await;

    s.contact(&app, "filtered@example.com").await;
    let (status, pipeline) = app
        .post(
            &format!("/api/v1/workspaces/{}/pipelines", s.ws),
            &s.owner.token,
            json!({ "name": "Sales", "stages": [{ "name": "Lead" }, { "name": "Won", "kind": "won" }] }),
        )
        .await;
    assert_eq!(status, 201, "{pipeline}");
    let (status, deal) = app
        .post(
            &format!("/api/v1/workspaces/{}/deals", s.ws),
            &s.owner.token,
            json!({ "title": "Big one", "pipeline_id": pipeline["id"] }),
        )
        .await;
    assert_eq!(status, 201, "{deal}");

    // The catch-all endpoint sees the contact, the pipeline and the deal.
    let seen = eventually("every event at the catch-all endpoint", || async {
        let types: Vec<String> = all_got
            .hooks()
            .iter()
            .map(|h| h.json()["type"].as_str().unwrap().to_owned())
            .collect();
        // Deliveries are concurrent jobs: the three may arrive in any order.
        (types.iter().any(|t| t == "contact.created")
            && types.iter().any(|t| t.starts_with("pipeline."))
            && types.iter().any(|t| t == "deal.created"))
        .then_some(types)
    })
    .await;
    assert!(seen.iter().any(|t| t.starts_with("pipeline.")), "{seen:?}");
    let got = hooks_at_least(&deals_got, 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let types: Vec<String> = deals_got
        .hooks()
        .iter()
        .map(|h| h.json()["type"].as_str().unwrap().to_owned())
        .collect();
    assert!(types.iter().all(|t| t.starts_with("deal.")), "{types:?}");
    assert!(types.contains(&"deal.created".to_owned()), "{types:?}");
    assert_eq!(got[0].json()["data"]["deal_id"], deal["id"]);
    let messages = s.messages(&app, &deals).await;
    assert!(
        messages
            .iter()
            .all(|m| m["event_type"].as_str().unwrap().starts_with("deal.")),
        "{messages:?}"
    );
    assert!(
        s.messages(&app, &all)
            .await
            .iter()
            .any(|m| m["event_type"] == "contact.created")
    );
    // Filter by status.
    let (status, delivered) = app
        .get(
            &format!("{}/{all}/messages?status=delivered&limit=1", s.base()),
            &s.owner.token,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(delivered["data"].as_array().unwrap().len(), 1);
    assert!(delivered["next_cursor"].is_string(), "{delivered}");
});

webhook_test!(
    retries_follow_the_schedule,
    |c| c.webhooks.retry_schedule_seconds = vec![0.0, 0.3, 0.6, 0.9, 0.3],
    |app| async move {
        let s = setup(&app, "retries").await;
        let (url, got) = receiver(&[500, 503, 502], 200).await;
        let (endpoint, secret) = s.endpoint(&app, &url, json!(["contact.created"])).await;
        s.contact(&app, "retry@example.com").await;
        let message = s
            .message_with_status(&app, &endpoint, "contact.created", "delivered")
            .await;
        let hooks = got.hooks();
        assert_eq!(hooks.len(), 4, "three failures, then a success");
        for (i, min) in [(1, 0.3), (2, 0.6), (3, 0.9)] {
            let gap = hooks[i].at.duration_since(hooks[i - 1].at).as_secs_f64();
            assert!(
                gap >= min - 0.05,
                "attempt {} came {gap:.3}s after the previous",
                i + 1
            );
            assert_eq!(hooks[i].id, hooks[0].id);
            assert!(verifies(&secret, &hooks[i]));
        }
        assert_eq!(message["attempts"], 4);
        let attempts = s
            .attempts(&app, &endpoint, message["id"].as_str().unwrap())
            .await;
        let codes: Vec<i64> = attempts
            .iter()
            .map(|a| a["response_status_code"].as_i64().unwrap())
            .collect();
        assert_eq!(codes, [500, 503, 502, 200]);
        for failed in &attempts[..3] {
            let excerpt = failed["response"].as_str().unwrap();
            assert!(
                excerpt.len() <= 1024 && excerpt.len() >= 1000,
                "{}",
                excerpt.len()
            );
            assert!(excerpt.starts_with('é'));
        }
        assert_eq!(attempts[3]["response"], "ok");
        // A success ends the failure run.
        let shown = s.endpoint_state(&app, &endpoint).await;
        assert!(shown["failing_since"].is_null(), "{shown}");
        assert!(shown["last_success_at"].is_string());
        assert_eq!(shown["enabled"], true);
    }
);

webhook_test!(
    exhausted_messages_fail,
    |c| c.webhooks.retry_schedule_seconds = vec![0.0, 0.2, 0.2],
    |app| async move {
        let s = setup(&app, "exhausted").await;
        let (url, got) = receiver(&[], 500).await;
        let (endpoint, _) = s.endpoint(&app, &url, json!(["contact.created"])).await;
        s.contact(&app, "exhausted@example.com").await;
        let message = s
            .message_with_status(&app, &endpoint, "contact.created", "failed")
            .await;
        assert_eq!(message["attempts"], 3);
        assert!(message["failed_at"].is_string());
        assert!(message["next_attempt_at"].is_null());
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(got.hooks().len(), 3, "no attempt after the last one");
        // The default 5-day window is far: the endpoint stays enabled, failing.
        let shown = s.endpoint_state(&app, &endpoint).await;
        assert_eq!(shown["enabled"], true, "{shown}");
        assert!(shown["failing_since"].is_string(), "{shown}");
    }
);

webhook_test!(
    failing_endpoints_are_disabled,
    |c| {
        c.webhooks.retry_schedule_seconds = vec![0.0, 0.5, 0.5, 0.5, 0.5];
        c.webhooks.disable_after_seconds = 1;
    },
    |app| async move {
        let s = setup(&app, "disabled").await;
        let (watch_url, watch_got) = receiver(&[], 204).await;
        let (url, got) = receiver(&[], 500).await;
        let (watcher, _) = s.endpoint(&app, &watch_url, json!(["webhook.*"])).await;
        let (endpoint, _) = s.endpoint(&app, &url, json!(["contact.created"])).await;
        s.contact(&app, "always-failing@example.com").await;

        let shown = eventually("the endpoint disabled", || async {
            let shown = s.endpoint_state(&app, &endpoint).await;
            (shown["enabled"] == false).then_some(shown)
        })
        .await;
        assert_eq!(shown["disabled_reason"], "failing", "{shown}");
        let message = s
            .message_with_status(&app, &endpoint, "contact.created", "failed")
            .await;
        let attempts = message["attempts"].as_i64().unwrap();
        assert!((3..=5).contains(&attempts), "{message}");

        // The domain event says so, and reaches the endpoint that subscribed to it.
        let hooks = hooks_at_least(&watch_got, 1).await;
        let event = hooks[0].json();
        assert_eq!(event["type"], "webhook.endpoint_disabled");
        assert_eq!(event["data"]["endpoint_id"], endpoint.as_str());
        assert_eq!(event["data"]["reason"], "failing");
        assert!(event["data"]["failing_since"].is_string());
        s.message_with_status(&app, &watcher, "webhook.endpoint_disabled", "delivered")
            .await;

        // Disabled: new events are not sent to it.
        let before = got.hooks().len();
        s.contact(&app, "after-disable@example.com").await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(got.hooks().len(), before);
        assert_eq!(s.messages(&app, &endpoint).await.len(), 1);

        // Enabling it again starts its health afresh.
        let (status, enabled) = app
            .call(
                Method::PATCH,
                &format!("{}/{endpoint}", s.base()),
                Some(&s.owner.token),
                Some(json!({ "enabled": true })),
            )
            .await;
        assert_eq!(status, 200, "{enabled}");
        assert!(enabled["disabled_reason"].is_null() && enabled["failing_since"].is_null());
    }
);

webhook_test!(gone_disables_at_once, keep, |app| async move {
    let s = setup(&app, "gone").await;
    let (watch_url, watch_got) = receiver(&[], 204).await;
    let (url, got) = receiver(&[], 410).await;
    s.endpoint(&app, &watch_url, json!(["webhook.endpoint_disabled"]))
        .await;
    let (endpoint, _) = s.endpoint(&app, &url, json!(["contact.created"])).await;
    s.contact(&app, "gone@example.com").await;
    let message = s
        .message_with_status(&app, &endpoint, "contact.created", "failed")
        .await;
    assert_eq!(message["attempts"], 1, "no retry after 410");
    let shown = s.endpoint_state(&app, &endpoint).await;
    assert_eq!(shown["enabled"], false);
    assert_eq!(shown["disabled_reason"], "gone");
    let hooks = hooks_at_least(&watch_got, 1).await;
    assert_eq!(hooks[0].json()["data"]["reason"], "gone");
    assert_eq!(hooks[0].json()["data"]["endpoint_id"], endpoint.as_str());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(got.hooks().len(), 1);
    // A disabled endpoint cannot resend or recover.
    let (status, body) = app
        .post(
            &format!(
                "{}/{endpoint}/messages/{}/resend",
                s.base(),
                message["id"].as_str().unwrap()
            ),
            &s.owner.token,
            json!({}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
});

webhook_test!(rotation_signs_with_both_secrets, keep, |app| async move {
    let s = setup(&app, "rotation").await;
    let (url, got) = receiver(&[], 204).await;
    let (endpoint, old) = s.endpoint(&app, &url, json!(["contact.created"])).await;
    s.contact(&app, "before@example.com").await;
    let first = hooks_at_least(&got, 1).await.remove(0);
    assert_eq!(first.signature.split(' ').count(), 1);
    assert!(verifies(&old, &first));

    let (status, rotated) = app
        .call(
            Method::POST,
            &format!("{}/{endpoint}/rotate-secret", s.base()),
            Some(&s.owner.token),
            None,
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    let new = rotated["secret"].as_str().unwrap().to_owned();
    assert!(new.starts_with("whsec_") && new != old);
    let until = chrono::DateTime::parse_from_rfc3339(
        rotated["previous_secret_expires_at"].as_str().unwrap(),
    )
    .unwrap();
    let hours =
        (until.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_minutes() as f64 / 60.0;
    assert!((23.9..=24.1).contains(&hours), "{hours}");
    let shown = s.endpoint_state(&app, &endpoint).await;
    assert_eq!(
        shown["previous_secret_expires_at"],
        rotated["previous_secret_expires_at"]
    );

    s.contact(&app, "during@example.com").await;
    let second = hooks_at_least(&got, 2).await.remove(1);
    let signatures: Vec<&str> = second.signature.split(' ').collect();
    assert_eq!(signatures.len(), 2, "{}", second.signature);
    let only = |signature: &str| Hook {
        signature: signature.to_owned(),
        ..second.clone()
    };
    assert!(verifies(&new, &only(signatures[0])));
    assert!(!verifies(&old, &only(signatures[0])));
    assert!(verifies(&old, &only(signatures[1])));
    assert!(!verifies(&new, &only(signatures[1])));

    // A chosen secret is accepted if well formed.
    let chosen = format!("whsec_{}", STANDARD.encode([7u8; 32]));
    let (status, body) = app
        .post(
            &format!("{}/{endpoint}/rotate-secret", s.base()),
            &s.owner.token,
            json!({ "secret": chosen }),
        )
        .await;
    assert_eq!(
        (status, body["secret"].as_str()),
        (200, Some(chosen.as_str()))
    );
    let (status, body) = app
        .post(
            &format!("{}/{endpoint}/rotate-secret", s.base()),
            &s.owner.token,
            json!({ "secret": "whsec_c2hvcnQ=" }),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["details"]["field"], "secret");
});

webhook_test!(
    resend_and_recover_redeliver,
    |c| c.webhooks.retry_schedule_seconds = vec![0.0, 0.2],
    |app| async move {
        let s = setup(&app, "recover").await;
        let started = chrono::Utc::now() - chrono::Duration::seconds(5);
        let (url, got) = receiver(&[], 500).await;
        let (endpoint, secret) = s.endpoint(&app, &url, json!(["contact.created"])).await;
        s.contact(&app, "one@example.com").await;
        s.contact(&app, "two@example.com").await;
        let failed = eventually("two failed messages", || async {
            let messages = s.messages(&app, &endpoint).await;
            (messages.len() == 2 && messages.iter().all(|m| m["status"] == "failed"))
                .then_some(messages)
        })
        .await;
        assert_eq!(got.hooks().len(), 4);
        got.answer(204);

        // Resend one: delivered, same webhook-id, one more attempt.
        let one = failed[1]["id"].as_str().unwrap().to_owned();
        let (status, resent) = app
            .post(
                &format!("{}/{endpoint}/messages/{one}/resend", s.base()),
                &s.owner.token,
                json!({}),
            )
            .await;
        assert_eq!(status, 202, "{resent}");
        assert_eq!(resent["status"], "pending");
        let hooks = hooks_at_least(&got, 5).await;
        assert_eq!(hooks[4].id, one);
        assert!(verifies(&secret, &hooks[4]));
        let message = eventually("the resent message delivered", || async {
            let (_, m) = app
                .get(
                    &format!("{}/{endpoint}/messages/{one}", s.base()),
                    &s.owner.token,
                )
                .await;
            (m["status"] == "delivered").then_some(m)
        })
        .await;
        assert_eq!(message["attempts"], 3);

        // Recover the rest: only the one still failed is sent.
        let (status, body) = app
            .post(
                &format!("{}/{endpoint}/recover", s.base()),
                &s.owner.token,
                json!({ "since": started.to_rfc3339() }),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["recovered"], 1);
        let hooks = hooks_at_least(&got, 6).await;
        let two = failed[0]["id"].as_str().unwrap();
        assert_eq!(hooks[5].id, two);
        eventually("every message delivered", || async {
            let messages = s.messages(&app, &endpoint).await;
            messages
                .iter()
                .all(|m| m["status"] == "delivered")
                .then_some(())
        })
        .await;
        let attempts = s.attempts(&app, &endpoint, two).await;
        assert_eq!(attempts.len(), 3);
        assert_eq!(attempts[2]["status"], "succeeded");

        // Nothing failed any more; a bad time is a 422 naming it.
        let (status, body) = app
            .post(
                &format!("{}/{endpoint}/recover", s.base()),
                &s.owner.token,
                json!({ "since": started.to_rfc3339() }),
            )
            .await;
        assert_eq!((status, body["recovered"].as_i64()), (202, Some(0)));
        let (status, body) = app
            .post(
                &format!("{}/{endpoint}/recover", s.base()),
                &s.owner.token,
                json!({ "since": "yesterday" }),
            )
            .await;
        assert_eq!(status, 422);
        assert_eq!(body["error"]["details"]["field"], "since");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(got.hooks().len(), 6, "nothing sent twice");
    }
);

backend_test!(private_addresses_are_refused, |app| async move {
    let s = setup(&app, "ssrf").await;
    for url in [
        "http://127.0.0.1:9/hook",
        "http://localhost:8080/hook",
        "http://[::1]/hook",
        "https://10.1.2.3/hook",
        "http://169.254.169.254/latest/meta-data",
    ] {
        let (status, body) = app
            .post(&s.base(), &s.owner.token, json!({ "url": url }))
            .await;
        assert_eq!(status, 422, "{url}: {body}");
        assert_eq!(body["error"]["details"]["field"], "url", "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("private"),
            "{body}"
        );
    }
    for (body, field) in [
        (json!({ "url": "ftp://example.com/x" }), "url"),
        (json!({ "url": "not a url" }), "url"),
        (
            json!({ "url": "https://hooks.example.com/in", "event_types": [] }),
            "event_types",
        ),
        (
            json!({ "url": "https://hooks.example.com/in", "event_types": ["deal.*", "Deal!"] }),
            "event_types",
        ),
        (
            json!({ "url": "https://hooks.example.com/in", "secret": "nope" }),
            "secret",
        ),
    ] {
        let (status, answer) = app.post(&s.base(), &s.owner.token, body.clone()).await;
        assert_eq!(status, 422, "{body}: {answer}");
        assert_eq!(answer["error"]["details"]["field"], field, "{answer}");
    }
    // A public name is accepted (every delivery checks it again), and cannot be moved to a
    // private address later.
    let (status, created) = app
        .post(
            &s.base(),
            &s.owner.token,
            json!({ "url": "https://hooks.example.com/in" }),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["endpoint"]["event_types"], json!(["*"]));
    let id = created["endpoint"]["id"].as_str().unwrap();
    let (status, body) = app
        .call(
            Method::PATCH,
            &format!("{}/{id}", s.base()),
            Some(&s.owner.token),
            Some(json!({ "url": "http://127.0.0.1/x" })),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["details"]["field"], "url");
});

/// The fixture of `tenancy.rs` (`endpoint_id`, `message_id`): an endpoint with one message (a
/// contact created while it was enabled), then disabled, so the message and its attempts stay
/// as they are while the tenancy test runs.
pub async fn tenancy_fixture(app: &TestApp, owner_a: &User, ws_a: &str) -> (String, String) {
    let (status, endpoint) = app
        .post(
            &format!("/api/v1/workspaces/{ws_a}/webhooks"),
            &owner_a.token,
            json!({ "url": "https://hooks.tenancy-a.invalid/in", "event_types": ["contact.created"] }),
        )
        .await;
    assert_eq!(status, 201, "{endpoint}");
    let endpoint_id = endpoint["endpoint"]["id"].as_str().unwrap().to_owned();
    let (status, contact) = app
        .post(
            &format!("/api/v1/workspaces/{ws_a}/contacts"),
            &owner_a.token,
            json!({ "emails": ["webhook-a@example.com"] }),
        )
        .await;
    assert_eq!(status, 201, "{contact}");
    let messages = format!("/api/v1/workspaces/{ws_a}/webhooks/{endpoint_id}/messages");
    let mut message_id = None;
    for _ in 0..200 {
        let (_, page) = app.get(&messages, &owner_a.token).await;
        if let Some(id) = page["data"][0]["id"].as_str() {
            message_id = Some(id.to_owned());
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let message_id = message_id.expect("the webhook message of the new contact");
    let (status, disabled) = app
        .call(
            Method::PATCH,
            &format!("/api/v1/workspaces/{ws_a}/webhooks/{endpoint_id}"),
            Some(&owner_a.token),
            Some(json!({ "enabled": false })),
        )
        .await;
    assert_eq!(status, 200, "{disabled}");
    (endpoint_id, message_id)
}

backend_test!(other_workspaces_get_404, |app| async move {
    let a = setup(&app, "tenant-a").await;
    let b = setup(&app, "tenant-b").await;
    let (endpoint, message) = tenancy_fixture(&app, &a.owner, &a.ws).await;
    let reads = [
        a.base(),
        format!("{}/{endpoint}", a.base()),
        format!("{}/{endpoint}/messages", a.base()),
        format!("{}/{endpoint}/messages/{message}", a.base()),
        format!("{}/{endpoint}/messages/{message}/attempts", a.base()),
    ];
    let mut before = Vec::new();
    for path in &reads {
        before.push(app.get(path, &a.owner.token).await);
    }
    assert_eq!(before[3].1["status"], "failed", "{}", before[3].1);
    let since = json!({ "since": "2020-01-01T00:00:00Z" });
    let routes = |ws: &str| {
        let base = format!("/api/v1/workspaces/{ws}/webhooks");
        vec![
            (Method::GET, format!("{base}/{endpoint}"), None),
            (
                Method::PATCH,
                format!("{base}/{endpoint}"),
                Some(json!({ "enabled": false })),
            ),
            (Method::DELETE, format!("{base}/{endpoint}"), None),
            (
                Method::POST,
                format!("{base}/{endpoint}/rotate-secret"),
                Some(json!({})),
            ),
            (Method::GET, format!("{base}/{endpoint}/messages"), None),
            (
                Method::GET,
                format!("{base}/{endpoint}/messages/{message}"),
                None,
            ),
            (
                Method::GET,
                format!("{base}/{endpoint}/messages/{message}/attempts"),
                None,
            ),
            (
                Method::POST,
                format!("{base}/{endpoint}/messages/{message}/resend"),
                Some(json!({})),
            ),
            (
                Method::POST,
                format!("{base}/{endpoint}/recover"),
                Some(since.clone()),
            ),
        ]
    };
    // B's own workspace path with A's ids, and A's workspace path with B's credentials.
    for ws in [&b.ws, &a.ws] {
        for (method, path, body) in routes(ws) {
            let (status, answer) = app
                .call(method.clone(), &path, Some(&b.owner.token), body)
                .await;
            assert_eq!(status, 404, "{method} {path}: {answer}");
        }
    }
    let (status, _) = app
        .get(
            &format!("/api/v1/workspaces/{}/webhooks", a.ws),
            &b.owner.token,
        )
        .await;
    assert_eq!(status, 404);
    let (status, listed) = app
        .get(
            &format!("/api/v1/workspaces/{}/webhooks", b.ws),
            &b.owner.token,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(listed["data"], json!([]));
    // A is untouched, and its disabled endpoint's message stays as it was.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    for (path, seen) in reads.iter().zip(&before) {
        assert_eq!(&app.get(path, &a.owner.token).await, seen, "{path}");
    }
    let shown = a.endpoint_state(&app, &endpoint).await;
    assert_eq!(shown["disabled_reason"], "manual");
    assert!(shown["previous_secret_expires_at"].is_null());

    // Members read, admins write.
    let (member_key, _) = app.api_key(&a.owner, &a.ws, "member").await;
    let (status, _) = app.get(&a.base(), &member_key).await;
    assert_eq!(status, 200);
    let (status, _) = app
        .get(
            &format!("{}/{endpoint}/messages/{message}/attempts", a.base()),
            &member_key,
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = app
        .post(
            &a.base(),
            &member_key,
            json!({ "url": "https://hooks.example.com/m" }),
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = app
        .post(
            &format!("{}/{endpoint}/rotate-secret", a.base()),
            &member_key,
            json!({}),
        )
        .await;
    assert_eq!(status, 403);
});

// Disabling an endpoint fails its pending messages while attempts of those messages are being
// recorded: both must take the endpoint and message rows in one order, or PostgreSQL aborts one
// of them as a deadlock (seen as a 500 on the PATCH).
webhook_test!(
    disabling_while_attempts_are_recorded,
    |c| c.webhooks.retry_schedule_seconds = vec![0.0; 40],
    |app| async move {
        let s = setup(&app, "toggle").await;
        let (url, receiver) = receiver(&[], 500).await;
        let (id, _) = s.endpoint(&app, &url, json!(["contact.created"])).await;
        let path = format!("{}/{id}", s.base());
        for round in 0..12 {
            for n in 0..3 {
                s.contact(&app, &format!("toggle-{round}-{n}@example.com"))
                    .await;
            }
            hooks_at_least(&receiver, round + 1).await;
            for enabled in [false, true] {
                let (status, body) = app
                    .call(
                        Method::PATCH,
                        &path,
                        Some(&s.owner.token),
                        Some(json!({ "enabled": enabled })),
                    )
                    .await;
                assert_eq!(status, 200, "round {round}, enabled={enabled}: {body}");
            }
        }
    }
);
