//! Automation rules end to end over HTTP: CRUD with versions and duplicates, the trigger API
//! at both paths (the ECOD-style payload creating a lead and running tag + stage + signed
//! webhook steps), if/else both ways, a failed step retried, the email step failing clearly,
//! dry runs, and a wait that resumes after a restart.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use platform::config::Config;
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{Backend, TestApp, User};

/// Test settings: fast polling, loopback receivers allowed.
pub(crate) async fn spawn(backend: Backend) -> Option<TestApp> {
    TestApp::spawn_with(backend, |c: &mut Config| {
        c.jobs.poll_interval_ms = 50;
        c.webhooks.allow_private_destinations = true;
    })
    .await
}

/// One test per backend with [`spawn`]'s settings (the invoking module imports `spawn`).
#[macro_export]
macro_rules! automation_test {
    ($name:ident, |$app:ident| $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn body($app: TestApp) {
                $body.await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let app = spawn(Backend::Sqlite).await.expect("sqlite");
                body(app).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(app) = spawn(Backend::Postgres).await {
                    body(app).await;
                }
            }
        }
    };
}

/// Polls `probe` until it returns `Some`, for up to 20 s.
pub(crate) async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
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

pub(crate) struct Setup {
    pub owner: User,
    pub ws: String,
}

pub(crate) async fn setup(app: &TestApp, name: &str) -> Setup {
    let owner = app.signup(&format!("{name}@example.com")).await;
    let ws = app.workspace(&owner, name).await;
    Setup { owner, ws }
}

impl Setup {
    pub(crate) fn path(&self, rest: &str) -> String {
        format!("/api/v1/workspaces/{}{rest}", self.ws)
    }

    pub(crate) async fn rule(&self, app: &TestApp, body: Value) -> String {
        let (status, rule) = app
            .post(&self.path("/automations"), &self.owner.token, body)
            .await;
        assert_eq!(status, 201, "{rule}");
        rule["id"].as_str().unwrap().to_owned()
    }

    pub(crate) async fn event(&self, app: &TestApp, body: Value) -> Value {
        let (status, accepted) = app
            .post(&self.path("/automations/events"), &self.owner.token, body)
            .await;
        assert_eq!(status, 202, "{accepted}");
        accepted
    }

    /// Waits until the rule has `n` runs that have finished (succeeded, failed or skipped).
    pub(crate) async fn settled_runs(&self, app: &TestApp, rule: &str, n: usize) -> Vec<Value> {
        eventually(&format!("{n} settled run(s)"), || async {
            let (_, page) = app
                .get(
                    &self.path(&format!("/automations/{rule}/runs")),
                    &self.owner.token,
                )
                .await;
            let runs = page["data"].as_array().cloned().unwrap_or_default();
            let finished = |r: &Value| {
                r["status"] == "succeeded" || r["status"] == "failed" || r["status"] == "skipped"
            };
            (runs.len() >= n && runs.iter().all(finished)).then_some(runs)
        })
        .await
    }

    pub(crate) async fn run(&self, app: &TestApp, rule: &str, run: &str) -> Value {
        let (status, run) = app
            .get(
                &self.path(&format!("/automations/{rule}/runs/{run}")),
                &self.owner.token,
            )
            .await;
        assert_eq!(status, 200, "{run}");
        run
    }

    pub(crate) async fn contact(&self, app: &TestApp, id: &str) -> Value {
        let (status, contact) = app
            .get(&self.path(&format!("/contacts/{id}")), &self.owner.token)
            .await;
        assert_eq!(status, 200, "{contact}");
        contact
    }

    pub(crate) async fn new_contact(&self, app: &TestApp, email: &str) -> String {
        let (status, body) = app
            .post(
                &self.path("/contacts"),
                &self.owner.token,
                json!({ "emails": [email], "first_name": "Bea" }),
            )
            .await;
        assert!(status == 200 || status == 201, "{body}");
        body["contact"]["id"]
            .as_str()
            .or(body["id"].as_str())
            .unwrap()
            .to_owned()
    }

    /// A pipeline with stages `New`, `Booked`; returns (pipeline id, booked stage id).
    async fn pipeline(&self, app: &TestApp) -> (String, String) {
        let (status, pipeline) = app
            .post(
                &self.path("/pipelines"),
                &self.owner.token,
                json!({ "name": "Sales", "stages": [{"name": "New"}, {"name": "Booked"}, {"name": "Won", "kind": "won"}] }),
            )
            .await;
        assert_eq!(status, 201, "{pipeline}");
        (
            pipeline["id"].as_str().unwrap().to_owned(),
            pipeline["stages"][1]["id"].as_str().unwrap().to_owned(),
        )
    }
}

crate::backend_test!(rules_crud_versions_and_validation, |app| async move {
    let s = setup(&app, "auto-crud").await;
    let t = &s.owner.token;
    // Validation errors name the field.
    for (body, field) in [
        (
            json!({"name": "x", "triggers": [], "steps": [{"type": "add_tag", "tag": "a"}]}),
            "triggers",
        ),
        (
            json!({"name": "x", "triggers": [{"type": "custom", "name": "deal_won"}],
                "steps": [{"type": "add_tag", "tag": "{{contact.first_name"}]}),
            "steps[0].tag",
        ),
        (
            json!({"name": "x", "triggers": [{"type": "custom", "name": "deal_won"}],
                "steps": [{"type": "if", "condition": {"field": "contact.tags", "op": "has"}, "then": []}]}),
            "steps[0].condition.op",
        ),
        (
            json!({"name": "x", "triggers": [{"type": "cron", "expr": "* * * * *"}],
                "steps": [{"type": "add_tag", "tag": "a"}]}),
            "triggers[0]",
        ),
        (
            json!({"name": "x", "triggers": [{"type": "custom", "name": "deal_won"}],
                "steps": [{"type": "teleport"}]}),
            "steps[0].type",
        ),
        (
            json!({"name": "x", "triggers": [{"type": "custom", "name": "deal_won"}],
                "steps": [{"type": "webhook", "url": "http://x"}]}),
            "steps[0].endpoint_id",
        ),
        (
            json!({"name": "", "triggers": [{"type": "custom", "name": "deal_won"}],
                "steps": [{"type": "add_tag", "tag": "a"}]}),
            "name",
        ),
    ] {
        let (status, err) = app.post(&s.path("/automations"), t, body).await;
        assert_eq!(status, 422, "{err}");
        assert_eq!(err["error"]["code"], "validation_failed");
        assert_eq!(err["error"]["details"]["field"], field, "{err}");
    }

    let id = s
        .rule(
            &app,
            json!({
                "name": "Welcome",
                "triggers": [{"type": "event", "event": "contact.created"}],
                "conditions": {"field": "contact.email", "op": "exists"},
                "steps": [{"type": "add_tag", "tag": "welcome"}],
            }),
        )
        .await;
    let (status, rule) = app.get(&s.path(&format!("/automations/{id}")), t).await;
    assert_eq!(status, 200);
    assert_eq!(
        (rule["version"].clone(), rule["enabled"].clone()),
        (json!(1), json!(true))
    );

    // A new definition is a new version; a rename alone is not.
    let patch = |body: Value| {
        let (app, path, t) = (&app, s.path(&format!("/automations/{id}")), t.clone());
        async move { app.call(Method::PATCH, &path, Some(&t), Some(body)).await }
    };
    let (status, rule) = patch(json!({"steps": [{"type": "add_tag", "tag": "hello"}]})).await;
    assert_eq!(status, 200, "{rule}");
    assert_eq!(rule["version"], 2);
    let (_, rule) = patch(json!({"name": "Welcome 2", "enabled": false})).await;
    assert_eq!(
        (rule["version"].clone(), rule["enabled"].clone()),
        (json!(2), json!(false))
    );
    let (status, err) = patch(json!({"steps": []})).await;
    assert_eq!(
        (status, err["error"]["details"]["field"].clone()),
        (422, json!("steps"))
    );
    let (_, versions) = app
        .get(&s.path(&format!("/automations/{id}/versions")), t)
        .await;
    let versions = versions.as_array().unwrap();
    assert_eq!(versions.len(), 2);
    assert_eq!(versions[1]["definition"]["steps"][0]["tag"], "welcome");

    let (status, copy) = app
        .post(
            &s.path(&format!("/automations/{id}/duplicate")),
            t,
            json!({}),
        )
        .await;
    assert_eq!(status, 201, "{copy}");
    assert_eq!(copy["name"], "Welcome 2 (copy)");
    assert_eq!(copy["enabled"], false);
    assert_eq!(copy["steps"][0]["tag"], "hello");
    assert_ne!(copy["id"], rule["id"]);
    let (_, list) = app.get(&s.path("/automations"), t).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 2);

    let (status, _) = app
        .call(
            Method::DELETE,
            &s.path(&format!("/automations/{id}")),
            Some(t),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, err) = app.get(&s.path(&format!("/automations/{id}")), t).await;
    assert_eq!(
        (status, err["error"]["code"].clone()),
        (404, json!("automation_not_found"))
    );
});

/// Requests a receiver got: headers and body.
type Received = Arc<Mutex<Vec<(axum::http::HeaderMap, String)>>>;

/// A receiver that records every request and answers 200.
async fn receiver() -> (String, Received) {
    let seen: Received = Arc::default();
    async fn record(State(seen): State<Received>, req: Request) -> &'static str {
        let (parts, body) = req.into_parts();
        let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
        seen.lock()
            .unwrap()
            .push((parts.headers, String::from_utf8(body.to_vec()).unwrap()));
        "ok"
    }
    let router = axum::Router::new()
        .fallback(record)
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (format!("http://{addr}/hook"), seen)
}

automation_test!(
    ecod_payload_creates_a_lead_and_runs_tag_stage_and_webhook,
    |app| async move {
        let s = setup(&app, "auto-ecod").await;
        let t = &s.owner.token;
        let (pipeline, booked) = s.pipeline(&app).await;
        let (url, seen) = receiver().await;
        let (status, endpoint) = app
            .post(
                &s.path("/webhooks"),
                t,
                json!({"url": url, "event_types": ["automation.appointment"]}),
            )
            .await;
        assert_eq!(status, 201, "{endpoint}");
        let endpoint_id = endpoint["endpoint"]["id"].as_str().unwrap();
        let rule = s
        .rule(&app, json!({
            "name": "Appointment confirmed",
            "triggers": [{"type": "custom", "name": "appointment_confirmed"}],
            "steps": [
                {"type": "add_tag", "tag": "{{event.variables.service | default:\"appointment\"}}"},
                {"type": "move_deal_stage", "pipeline_id": pipeline, "stage_id": booked,
                 "create_if_missing": true, "title": "{{contact.first_name}} at {{event.variables.time}}"},
                {"type": "webhook", "endpoint_id": endpoint_id, "event_type": "automation.appointment",
                 "data": {"name": "{{contact.first_name}}", "time": "{{event.variables.time}}"}},
            ],
        }))
        .await;

        // The old system's path: x-api-key + x-client-code.
        let (key, _) = app.api_key(&s.owner, &s.ws, "member").await;
        let payload = json!({
            "trigger": "appointment_confirmed",
            "phone": "+55 11 98765-4321",
            "email": "Ana@Example.com",
            "variables": {"time": "14:00", "service": "dentist"},
            "createLeadIfMissing": true,
            "leadData": {"name": "Ana Souza"},
        });
        let legacy = |key: Option<&str>, client: Option<&str>| {
            let mut req = app
                .client
                .post(app.url("/api/crm/automations/events"))
                .json(&payload);
            if let Some(k) = key {
                req = req.header("x-api-key", k);
            }
            if let Some(c) = client {
                req = req.header("x-client-code", c);
            }
            req.send()
        };
        for (k, c) in [
            (None, Some(s.ws.as_str())),
            (Some("syk_wrong"), Some(s.ws.as_str())),
            (Some(key.as_str()), None),
            (Some(key.as_str()), Some("ws_01jdq9x3k5m2r8t4v6w0y1z2a3")),
        ] {
            let resp = legacy(k, c).await.unwrap();
            assert_eq!(resp.status(), 401);
            let body: Value = resp.json().await.unwrap();
            assert_eq!(body["error"]["code"], "unauthorized");
        }
        let resp = legacy(Some(&key), Some(&s.ws)).await.unwrap();
        assert_eq!(resp.status(), 202);
        let accepted: Value = resp.json().await.unwrap();
        assert_eq!(accepted["contact_created"], true, "{accepted}");
        let contact_id = accepted["contact_id"].as_str().unwrap().to_owned();

        let runs = s.settled_runs(&app, &rule, 1).await;
        let run = s.run(&app, &rule, runs[0]["id"].as_str().unwrap()).await;
        assert_eq!(run["status"], "succeeded", "{run}");
        assert_eq!(run["contact_id"], contact_id.as_str());
        let steps = run["steps"].as_array().unwrap();
        assert_eq!(steps.len(), 3, "{run}");
        assert!(steps.iter().all(|st| st["status"] == "succeeded"), "{run}");
        assert_eq!(steps[0]["input"]["tag"], "dentist");
        assert_eq!(steps[2]["kind"], "webhook");

        let contact = s.contact(&app, &contact_id).await;
        assert_eq!(contact["first_name"], "Ana");
        assert_eq!(contact["last_name"], "Souza");
        assert_eq!(contact["emails"], json!(["ana@example.com"]));
        assert!(
            contact["tags"]
                .as_array()
                .unwrap()
                .contains(&json!("dentist"))
        );
        let (_, deals) = app
            .get(&s.path(&format!("/deals?contact_id={contact_id}")), t)
            .await;
        let deals = deals["data"].as_array().unwrap();
        assert_eq!(deals.len(), 1);
        assert_eq!(deals[0]["stage_id"], booked.as_str());
        assert_eq!(deals[0]["title"], "Ana at 14:00");

        let hooks = seen.lock().unwrap().clone();
        assert_eq!(hooks.len(), 1);
        let (headers, body) = &hooks[0];
        let body: Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["type"], "automation.appointment");
        assert_eq!(body["data"], json!({"name": "Ana", "time": "14:00"}));
        assert!(
            headers["webhook-signature"]
                .to_str()
                .unwrap()
                .starts_with("v1,")
        );
        assert!(headers.contains_key("webhook-id"));

        // The same person again over the v1 path: found, not created; a second run.
        let again = s
            .event(
                &app,
                json!({"trigger": "appointment_confirmed", "email": "ana@example.com",
                            "variables": {"time": "15:00"}}),
            )
            .await;
        assert_eq!(again["contact_created"], false);
        assert_eq!(again["contact_id"], contact_id.as_str());
        s.settled_runs(&app, &rule, 2).await;
        let (_, deals) = app
            .get(&s.path(&format!("/deals?contact_id={contact_id}")), t)
            .await;
        assert_eq!(
            deals["data"].as_array().unwrap().len(),
            1,
            "the open deal is moved, not duplicated"
        );

        // Unknown person without createLeadIfMissing: 404; no contact named at all: 422.
        let (status, err) = app
            .post(
                &s.path("/automations/events"),
                t,
                json!({"trigger": "appointment_confirmed", "email": "nobody@example.com"}),
            )
            .await;
        assert_eq!(
            (status, err["error"]["code"].clone()),
            (404, json!("contact_not_found"))
        );
        let (status, err) = app
            .post(
                &s.path("/automations/events"),
                t,
                json!({"trigger": "Bad Name!", "email": "a@example.com"}),
            )
            .await;
        assert_eq!(
            (status, err["error"]["details"]["field"].clone()),
            (422, json!("trigger"))
        );
    }
);

automation_test!(
    if_else_both_paths_retry_email_and_dry_run,
    |app| async move {
        let s = setup(&app, "auto-branch").await;
        let t = &s.owner.token;
        let (pipeline, booked) = s.pipeline(&app).await;
        let rule = s
        .rule(&app, json!({
            "name": "Branch",
            "triggers": [{"type": "custom", "name": "product_purchased"}],
            "steps": [
                {"type": "if", "condition": {"any": [
                    {"field": "event.variables.product", "op": "eq", "value": "course"},
                    {"field": "contact.tags", "op": "contains", "value": "vip"}]},
                 "then": [{"type": "add_tag", "tag": "then-path"}],
                 "else": [{"type": "add_tag", "tag": "else-path"}, {"type": "create_note", "body": "Bought {{event.variables.product}}"}]},
                {"type": "add_tag", "tag": "after"},
            ],
        }))
        .await;
        let a = s.new_contact(&app, "a@example.com").await;
        let b = s.new_contact(&app, "b@example.com").await;
        s.event(&app, json!({"trigger": "product_purchased", "contact_id": a, "variables": {"product": "Course"}})).await;
        s.event(&app, json!({"trigger": "product_purchased", "contact_id": b, "variables": {"product": "book"}})).await;
        let runs = s.settled_runs(&app, &rule, 2).await;
        assert!(runs.iter().all(|r| r["status"] == "succeeded"), "{runs:?}");
        let tags = |c: Value| c["tags"].as_array().unwrap().clone();
        let ta = tags(s.contact(&app, &a).await);
        let tb = tags(s.contact(&app, &b).await);
        assert!(
            ta.contains(&json!("then-path")) && !ta.contains(&json!("else-path")),
            "{ta:?}"
        );
        assert!(
            tb.contains(&json!("else-path")) && !tb.contains(&json!("then-path")),
            "{tb:?}"
        );
        assert!(ta.contains(&json!("after")) && tb.contains(&json!("after")));
        let run_b = runs.iter().find(|r| r["contact_id"] == b.as_str()).unwrap();
        let run_b = s.run(&app, &rule, run_b["id"].as_str().unwrap()).await;
        let kinds: Vec<&str> = run_b["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|st| st["kind"].as_str().unwrap())
            .collect();
        assert_eq!(
            kinds,
            ["if", "add_tag", "create_note", "add_tag"],
            "{run_b}"
        );
        assert_eq!(run_b["steps"][0]["output"]["branch"], "else");
        assert_eq!(run_b["steps"][2]["input"]["body"], "Bought book");

        // The dry run shows the path a sample would take, changing nothing.
        let (status, dry) = app
        .post(&s.path(&format!("/automations/{rule}/dry-run")), t,
              json!({"trigger": "product_purchased", "contact_id": b, "variables": {"product": "course"}}))
        .await;
        assert_eq!(status, 200, "{dry}");
        assert_eq!(
            (
                dry["trigger_matches"].clone(),
                dry["conditions_pass"].clone()
            ),
            (json!(true), json!(true))
        );
        let steps = dry["steps"].as_array().unwrap();
        assert_eq!(steps.len(), 3, "{dry}");
        assert_eq!(steps[0]["branch"], "then");
        let (_, dry) = app
            .post(
                &s.path(&format!("/automations/{rule}/dry-run")),
                t,
                json!({"trigger": "other"}),
            )
            .await;
        assert_eq!(dry["trigger_matches"], false);
        s.settled_runs(&app, &rule, 2).await;

        // A step refused by the CRM fails the run at that step; retried after the cause is fixed,
        // the run goes on from it (earlier steps are not run again).
        let stage_rule = s
        .rule(&app, json!({
            "name": "Stage",
            "triggers": [{"type": "event", "event": "contact.tag_added"}],
            "conditions": {"field": "event.tag", "op": "eq", "value": "move-me"},
            "steps": [{"type": "add_tag", "tag": "stage-rule"},
                      {"type": "move_deal_stage", "pipeline_id": pipeline, "stage_id": booked}],
        }))
        .await;
        let (status, _) = app
            .post(
                &s.path(&format!("/contacts/{a}/tags")),
                t,
                json!({"tags": ["move-me"]}),
            )
            .await;
        assert_eq!(status, 200);
        let runs = s.settled_runs(&app, &stage_rule, 1).await;
        let run_id = runs[0]["id"].as_str().unwrap().to_owned();
        let failed = s.run(&app, &stage_rule, &run_id).await;
        assert_eq!(failed["status"], "failed", "{failed}");
        assert!(
            failed["error"]
                .as_str()
                .unwrap()
                .contains("automation_no_open_deal"),
            "{failed}"
        );
        assert_eq!(failed["steps"][1]["status"], "failed");
        let (status, err) = app
            .post(
                &s.path(&format!("/automations/{rule}/runs/{run_id}/retry")),
                t,
                json!({}),
            )
            .await;
        assert_eq!(
            (status, err["error"]["code"].clone()),
            (404, json!("automation_run_not_found"))
        );
        let (status, deal) = app
            .post(
                &s.path("/deals"),
                t,
                json!({"title": "Deal", "pipeline_id": pipeline, "contact_ids": [a]}),
            )
            .await;
        assert_eq!(status, 201, "{deal}");
        let (status, retried) = app
            .post(
                &s.path(&format!("/automations/{stage_rule}/runs/{run_id}/retry")),
                t,
                json!({}),
            )
            .await;
        assert_eq!(status, 200, "{retried}");
        assert_eq!(retried["status"], "succeeded", "{retried}");
        let steps = retried["steps"].as_array().unwrap();
        assert_eq!(steps.len(), 2);
        assert_eq!(steps[1]["output"]["deal_id"], deal["id"]);
        let (status, err) = app
            .post(
                &s.path(&format!("/automations/{stage_rule}/runs/{run_id}/retry")),
                t,
                json!({}),
            )
            .await;
        assert_eq!(
            (status, err["error"]["code"].clone()),
            (409, json!("automation_run_not_failed"))
        );

        // The email step is stored and fails clearly until messaging brings a channel.
        let email_rule = s
        .rule(&app, json!({
            "name": "Email",
            "triggers": [{"type": "custom", "name": "service_enrolled"}],
            "steps": [{"type": "email", "to": "{{contact.email}}", "subject": "Hi", "body": "Hello {{contact.first_name}}"}],
        }))
        .await;
        s.event(
            &app,
            json!({"trigger": "service_enrolled", "contact_id": a}),
        )
        .await;
        let runs = s.settled_runs(&app, &email_rule, 1).await;
        assert_eq!(runs[0]["status"], "failed");
        assert_eq!(runs[0]["error"], "no email channel configured");
        let run = s
            .run(&app, &email_rule, runs[0]["id"].as_str().unwrap())
            .await;
        assert_eq!(run["steps"][0]["input"]["to"], "a@example.com");
    }
);

automation_test!(a_wait_resumes_after_a_restart, |app| async move {
    let s = setup(&app, "auto-wait").await;
    let rule = s
        .rule(
            &app,
            json!({
                "name": "Reminder",
                "triggers": [{"type": "custom", "name": "appointment_reminder"}],
                "steps": [
                    {"type": "add_tag", "tag": "before"},
                    {"type": "wait", "until": "{{event.variables.at}}"},
                    {"type": "add_tag", "tag": "after"},
                ],
            }),
        )
        .await;
    let contact = s.new_contact(&app, "wait@example.com").await;
    let at = (chrono::Utc::now() + chrono::Duration::seconds(3)).to_rfc3339();
    s.event(
        &app,
        json!({"trigger": "appointment_reminder", "contact_id": contact, "variables": {"at": at}}),
    )
    .await;
    let runs = eventually("the run to park on its wait", || async {
        let (_, page) = app
            .get(
                &s.path(&format!("/automations/{rule}/runs")),
                &s.owner.token,
            )
            .await;
        let runs = page["data"].as_array().cloned().unwrap_or_default();
        (runs.len() == 1 && runs[0]["status"] == "waiting").then_some(runs)
    })
    .await;
    let run_id = runs[0]["id"].as_str().unwrap().to_owned();

    let app = app.restart().await;
    let done = eventually("the run to finish after the restart", || async {
        let run = s.run(&app, &rule, &run_id).await;
        (run["status"] == "succeeded").then_some(run)
    })
    .await;
    let steps = done["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 3);
    assert_eq!(steps[1]["kind"], "wait");
    let tags = s.contact(&app, &contact).await["tags"].clone();
    assert!(tags.as_array().unwrap().contains(&json!("after")), "{tags}");
});

automation_test!(a_cron_rule_fires_on_its_schedule, |app| async move {
    let s = setup(&app, "auto-cron").await;
    let t = &s.owner.token;
    let (url, seen) = receiver().await;
    let (status, endpoint) = app
        .post(
            &s.path("/webhooks"),
            t,
            json!({"url": url, "event_types": ["automation.digest"]}),
        )
        .await;
    assert_eq!(status, 201, "{endpoint}");
    let endpoint_id = endpoint["endpoint"]["id"].as_str().unwrap();
    let (status, err) = app
        .post(
            &s.path("/automations"),
            t,
            json!({"name": "Bad zone",
            "triggers": [{"type": "schedule", "cron": "0 9 * * *", "time_zone": "Mars/Olympus"}],
            "steps": [{"type": "webhook", "endpoint_id": endpoint_id}]}),
        )
        .await;
    assert_eq!(
        (status, err["error"]["details"]["field"].clone()),
        (422, json!("triggers[0].time_zone"))
    );
    let (status, err) = app
        .post(
            &s.path("/automations"),
            t,
            json!({"name": "Bad cron",
            "triggers": [{"type": "schedule", "cron": "61 * * * *"}],
            "steps": [{"type": "webhook", "endpoint_id": endpoint_id}]}),
        )
        .await;
    assert_eq!(
        (status, err["error"]["details"]["field"].clone()),
        (422, json!("triggers[0].cron"))
    );

    let rule = s
        .rule(&app, json!({
            "name": "Every minute in São Paulo",
            "triggers": [{"type": "schedule", "cron": "* * * * *", "time_zone": "America/Sao_Paulo"}],
            "steps": [{"type": "webhook", "endpoint_id": endpoint_id, "event_type": "automation.digest",
                       "data": {"at": "{{event.at}}"}}],
        }))
        .await;
    // Move the scheduler's clock past the next slot instead of waiting for it.
    let fired = platform::cron::tick(
        &app.state.db,
        platform::Timestamp::now() + Duration::from_secs(61),
    )
    .await
    .unwrap();
    assert!(fired >= 1);
    // The slot's job is due at the slot itself: bring it forward to now.
    platform::with_db!(&app.state.db, pool => sqlx::query(
        "UPDATE jobs SET run_at = $1 WHERE kind = 'automation.cron' AND status = 'queued'",
    )
    .bind(platform::Timestamp::now())
    .execute(pool)
    .await
    .map(|r| r.rows_affected()))
    .unwrap();
    let runs = eventually("the scheduled run to succeed", || async {
        let runs = s.settled_runs(&app, &rule, 1).await;
        (runs[0]["status"] == "succeeded").then_some(runs)
    })
    .await;
    assert_eq!(runs[0]["trigger"], "schedule");
    assert_eq!(runs[0]["contact_id"], Value::Null);
    eventually("the scheduled webhook", || async {
        (!seen.lock().unwrap().is_empty()).then_some(())
    })
    .await;
    let body: Value = serde_json::from_str(&seen.lock().unwrap()[0].1).unwrap();
    assert_eq!(body["type"], "automation.digest");
    assert!(
        body["data"]["at"].as_str().unwrap().ends_with('Z'),
        "{body}"
    );

    // Disabled, the rule's schedule is gone: later slots start nothing.
    let (status, _) = app
        .call(
            Method::PATCH,
            &s.path(&format!("/automations/{rule}")),
            Some(t),
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(status, 200);
    platform::cron::tick(
        &app.state.db,
        platform::Timestamp::now() + Duration::from_secs(300),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, page) = app
        .get(&s.path(&format!("/automations/{rule}/runs")), t)
        .await;
    assert_eq!(page["data"].as_array().unwrap().len(), 1);
});

/// For the tenancy walk: an automation of `ws_a` with one run.
pub async fn tenancy_fixture(app: &TestApp, owner_a: &User, ws_a: &str) -> (String, String) {
    let s = Setup {
        owner: owner_a.clone(),
        ws: ws_a.to_owned(),
    };
    let rule = s
        .rule(
            app,
            json!({
                "name": "Tenancy",
                "triggers": [{"type": "custom", "name": "tenancy_check"}],
                "steps": [{"type": "add_tag", "tag": "tenancy"}],
            }),
        )
        .await;
    s.event(app, json!({"trigger": "tenancy_check", "email": "tenancy-auto@example.com", "createLeadIfMissing": true}))
        .await;
    let runs = s.settled_runs(app, &rule, 1).await;
    // The run's own domain events (the tag) are still being relayed: wait until the workspace's
    // jobs stop changing, so the tenancy walk's snapshots compare settled data.
    let jobs = s.path("/jobs?limit=200");
    // Settled = the same list on three polls in a row (the relay polls every 500 ms).
    let mut last = Value::Null;
    let mut same = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while same < 2 {
        let (_, page) = app.get(&jobs, &owner_a.token).await;
        same = if page == last { same + 1 } else { 0 };
        assert!(
            Instant::now() < deadline,
            "the workspace's jobs never settled"
        );
        last = page;
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    (rule, runs[0]["id"].as_str().unwrap().to_owned())
}
