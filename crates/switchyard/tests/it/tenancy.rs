//! The tenancy wall, proven route by route from the OpenAPI document.
//!
//! For every operation whose path has `{workspace_id}`, the test fills the path with workspace
//! A's real objects and calls it with workspace B's credentials (a B user session and a B admin
//! API key). Reads must answer 404, writes 404 or 403, and nothing of A may change: every GET
//! route of A is read with A's credentials before and after, and must answer the same.
//! A new route is covered without anyone remembering to add it; a new path parameter fails
//! loudly until a fixture for it is added to `fixtures`.

use std::collections::BTreeMap;

use reqwest::Method;
use serde_json::{Value, json};

use crate::backend_test;
use crate::support::{TestApp, User};

/// One real object of workspace A per path parameter name.
async fn fixtures(app: &TestApp, owner_a: &User, ws_a: &str) -> BTreeMap<&'static str, String> {
    let mut ids = BTreeMap::new();
    ids.insert("workspace_id", ws_a.to_owned());

    let member = app.signup("member-a@example.com").await;
    let (_, invite) = app
        .post(
            &format!("/api/v1/workspaces/{ws_a}/invites"),
            &owner_a.token,
            json!({ "email": "member-a@example.com", "role": "member" }),
        )
        .await;
    let (status, _) = app
        .post(
            "/api/v1/invites/accept",
            &member.token,
            json!({ "token": invite["token"] }),
        )
        .await;
    assert_eq!(status, 200);
    ids.insert("user_id", member.id.clone());

    let (status, pending) = app
        .post(
            &format!("/api/v1/workspaces/{ws_a}/invites"),
            &owner_a.token,
            json!({ "email": "later@example.com" }),
        )
        .await;
    assert_eq!(status, 201);
    ids.insert(
        "invite_id",
        pending["invite"]["id"].as_str().unwrap().to_owned(),
    );

    let (_, key_id) = app.api_key(owner_a, ws_a, "member").await;
    ids.insert("key_id", key_id);

    let (site_id, _, _) = app.site(owner_a, ws_a, "tenancy-a.example.com").await;
    let (status, destination) = app
        .post(
            &format!("/api/v1/workspaces/{ws_a}/sites/{site_id}/destinations"),
            &owner_a.token,
            json!({ "kind": "tagging_server", "name": "sGTM", "url": "https://sgtm.example.com", "enabled": false }),
        )
        .await;
    assert_eq!(status, 201, "{destination}");
    ids.insert(
        "destination_id",
        destination["destination"]["id"]
            .as_str()
            .unwrap()
            .to_owned(),
    );
    ids.insert("site_id", site_id);

    // CRM: a company, a contact with a tag, a custom field.
    let (status, company) = app
        .post(
            &format!("/api/v1/workspaces/{ws_a}/companies"),
            &owner_a.token,
            json!({ "name": "Tenant A Corp", "domain": "tenant-a.example.com" }),
        )
        .await;
    assert_eq!(status, 201, "{company}");
    ids.insert("company_id", company["id"].as_str().unwrap().to_owned());
    let (status, contact) = app
        .post(
            &format!("/api/v1/workspaces/{ws_a}/contacts"),
            &owner_a.token,
            json!({ "emails": ["tenant-a@example.com"], "tags": ["tenancy"], "company_id": company["id"] }),
        )
        .await;
    assert_eq!(status, 201, "{contact}");
    ids.insert(
        "contact_id",
        contact["contact"]["id"].as_str().unwrap().to_owned(),
    );
    ids.insert("tag", "tenancy".to_owned());
    let (status, field) = app
        .post(
            &format!("/api/v1/workspaces/{ws_a}/fields"),
            &owner_a.token,
            json!({ "entity": "contact", "key": "tenancy", "field_type": "text" }),
        )
        .await;
    assert_eq!(status, 201, "{field}");
    ids.insert("field_id", field["id"].as_str().unwrap().to_owned());
    // Deals: a pipeline and a deal of the contact and company (its history and the pipeline's
    // board are GET routes too).
    let (status, pipeline) = app
        .post(
            &format!("/api/v1/workspaces/{ws_a}/pipelines"),
            &owner_a.token,
            json!({ "name": "Tenancy", "stages": [{ "name": "Lead", "probability": 20 }, { "name": "Won", "kind": "won" }] }),
        )
        .await;
    assert_eq!(status, 201, "{pipeline}");
    ids.insert("pipeline_id", pipeline["id"].as_str().unwrap().to_owned());
    let (status, deal) = app
        .post(
            &format!("/api/v1/workspaces/{ws_a}/deals"),
            &owner_a.token,
            json!({
                "title": "Tenant A deal", "pipeline_id": pipeline["id"], "value": "1250.50", "currency": "EUR",
                "contact_ids": [contact["contact"]["id"]], "company_id": company["id"],
            }),
        )
        .await;
    assert_eq!(status, 201, "{deal}");
    ids.insert("deal_id", deal["id"].as_str().unwrap().to_owned());
    let (status, rule) = app
        .post(
            &format!("/api/v1/workspaces/{ws_a}/capture-rules"),
            &owner_a.token,
            json!({
                "site_id": ids["site_id"], "name": "Form", "event_name": "generate_lead",
                "mappings": [{ "source": "param:email", "target": "emails" }],
            }),
        )
        .await;
    assert_eq!(status, 201, "{rule}");
    ids.insert("rule_id", rule["id"].as_str().unwrap().to_owned());
    let (status, segment) = app
        .post(
            &format!("/api/v1/workspaces/{ws_a}/segments"),
            &owner_a.token,
            json!({ "name": "VIP", "filter": { "tag": "tenancy" } }),
        )
        .await;
    assert_eq!(status, 201, "{segment}");
    ids.insert("segment_id", segment["id"].as_str().unwrap().to_owned());
    // Activities: a note on the contact and the deal, a task for the member (due far ahead: a
    // task already due gets `task.due` from the minute schedule, which would change A's jobs in
    // the middle of the walk). Imports: a file uploaded but not started, so no worker changes it
    // during the test.
    let (status, note) = app
        .post(
            &format!("/api/v1/workspaces/{ws_a}/notes"),
            &owner_a.token,
            json!({ "contact_id": contact["contact"]["id"], "deal_id": deal["id"], "body": "Tenancy note" }),
        )
        .await;
    assert_eq!(status, 201, "{note}");
    ids.insert("note_id", note["id"].as_str().unwrap().to_owned());
    let (status, task) = app
        .post(
            &format!("/api/v1/workspaces/{ws_a}/tasks"),
            &owner_a.token,
            json!({
                "title": "Tenancy task", "contact_id": contact["contact"]["id"], "deal_id": deal["id"],
                "assignee_id": member.id, "due_at": "2099-12-01T09:00:00Z",
            }),
        )
        .await;
    assert_eq!(status, 201, "{task}");
    ids.insert("task_id", task["id"].as_str().unwrap().to_owned());
    let upload = app
        .client
        .post(app.url(&format!(
            "/api/v1/workspaces/{ws_a}/imports?file_name=tenancy.csv"
        )))
        .bearer_auth(&owner_a.token)
        .header("content-type", "text/csv")
        .body("Email,First name\ntenant-a@example.com,Ana\n")
        .send()
        .await
        .unwrap();
    assert_eq!(upload.status(), 201);
    let import: Value = upload.json().await.unwrap();
    ids.insert("import_id", import["id"].as_str().unwrap().to_owned());

    // A job far in the future, so no worker touches it during the test.
    let job = platform::jobs::NewJob::new("tenancy.fixture", json!({ "n": 1 }))
        .workspace(ws_a.parse::<platform::id::WorkspaceId>().unwrap())
        .run_at(platform::Timestamp::now() + std::time::Duration::from_secs(86_400));
    let job_id = platform::jobs::enqueue_on(&app.state.db, job)
        .await
        .unwrap();
    ids.insert("job_id", job_id.to_string());

    // A webhook endpoint with one message, disabled so no delivery runs during the test.
    let (endpoint_id, message_id) = crate::webhooks::tenancy_fixture(app, owner_a, ws_a).await;
    ids.insert("endpoint_id", endpoint_id);
    ids.insert("message_id", message_id);
    let (automation_id, run_id) = crate::automation::tenancy_fixture(app, owner_a, ws_a).await;
    ids.insert("automation_id", automation_id);
    ids.insert("run_id", run_id);

    // Conversions: a GA4 credential, a trigger, and a conversion that GA4 refuses locally (no
    // client id), so it settles without any network call.
    let (status, credential) = app
        .post(
            &format!("/api/v1/workspaces/{ws_a}/conversions/credentials"),
            &owner_a.token,
            json!({ "platform": "ga4", "measurement_id": "G-TENANCY", "api_secret": "tenancy-secret" }),
        )
        .await;
    assert_eq!(status, 201, "{credential}");
    let credential_id = credential["id"].as_str().unwrap().to_owned();
    let (status, trigger) = app
        .post(
            &format!("/api/v1/workspaces/{ws_a}/conversions/triggers"),
            &owner_a.token,
            json!({ "credential_id": credential_id, "source": "automation", "event": "tenancy" }),
        )
        .await;
    assert_eq!(status, 201, "{trigger}");
    let trigger_id = trigger["id"].as_str().unwrap().to_owned();
    let conversion_id = conversions::send_from_automation(
        &app.state.db,
        &platform::Scope::system(ws_a.parse().unwrap()),
        &conversions::AutomationConversion {
            trigger_id: trigger_id.parse().unwrap(),
            contact_id: None,
            event_name: None,
            value: None,
            currency: None,
            event_id: "tenancy-1".to_owned(),
        },
    )
    .await
    .unwrap()
    .to_string();
    let conversion_path = format!("/api/v1/workspaces/{ws_a}/conversions/events/{conversion_id}");
    let mut settled = false;
    for _ in 0..200 {
        let (_, conversion) = app.get(&conversion_path, &owner_a.token).await;
        if conversion["status"] == "failed" {
            settled = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(settled, "the tenancy conversion did not settle");
    ids.insert("credential_id", credential_id);
    ids.insert("trigger_id", trigger_id);
    ids.insert("conversion_id", conversion_id);
    settle(app).await;
    ids
}

/// Waits until background work caused by the fixtures is over (every domain event relayed, no
/// job due within the next minute still queued or running), so A's reads before and after B's
/// attempts can only differ because of B.
async fn settle(app: &TestApp) {
    let soon = platform::Timestamp::now() + std::time::Duration::from_secs(60);
    let mut quiet = 0;
    for _ in 0..400 {
        let busy: i64 = platform::with_db!(&app.state.db, pool => sqlx::query_scalar(
            "SELECT (SELECT COUNT(*) FROM outbox_events WHERE relayed_at IS NULL)
                  + (SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'running') AND run_at <= $1)",
        )
        .bind(soon)
        .fetch_one(pool)
        .await)
        .unwrap();
        quiet = if busy == 0 { quiet + 1 } else { 0 };
        if quiet == 3 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("background work of the fixtures did not settle in 20 s");
}

fn fill(path: &str, ids: &BTreeMap<&'static str, String>) -> String {
    let mut out = String::new();
    let mut rest = path;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("closing brace") + start;
        let name = &rest[start + 1..end];
        let value = ids.get(name).unwrap_or_else(|| {
            panic!("tenancy test: no fixture for path parameter {{{name}}} in {path}; add one to `fixtures`")
        });
        out.push_str(value);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Everything A can read, as A sees it.
async fn snapshot(app: &TestApp, token: &str, gets: &[String]) -> Vec<(String, u16, Value)> {
    let mut out = Vec::new();
    for path in gets {
        // The CSV routes (contact export, import error report) are compared as text.
        let (status, mut body) = if path.ends_with(".csv") {
            let response = app
                .client
                .get(app.url(path))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            (status, Value::String(response.text().await.unwrap()))
        } else {
            app.get(path, token).await
        };
        // Reports echo their default window, which moves with the clock; the data must not.
        if let Some(object) = body.as_object_mut() {
            object.remove("from");
            object.remove("to");
        }
        // A deal's current stage stay lasts until now: its duration moves with the clock.
        for stay in body.as_array_mut().into_iter().flatten() {
            if let Some(stay) = stay.as_object_mut()
                && stay.get("left_at").is_some_and(Value::is_null)
            {
                stay.remove("duration_seconds");
            }
        }
        out.push((path.clone(), status, body));
    }
    out
}

backend_test!(
    another_workspace_is_invisible_on_every_route,
    |app| async move {
        let owner_a = app.signup("owner-a@example.com").await;
        let ws_a = app.workspace(&owner_a, "Workspace A").await;
        let owner_b = app.signup("owner-b@example.com").await;
        let ws_b = app.workspace(&owner_b, "Workspace B").await;
        let (key_b, _) = app.api_key(&owner_b, &ws_b, "admin").await;
        let ids = fixtures(&app, &owner_a, &ws_a).await;

        let doc: Value = app
            .client
            .get(app.url("/api/openapi.json"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let mut operations = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            if !path.contains("{workspace_id}") {
                continue;
            }
            for method in item.as_object().unwrap().keys() {
                operations.push((method.to_uppercase(), path.clone()));
            }
        }
        assert!(
            operations.len() >= 12,
            "suspiciously few workspace routes: {operations:?}"
        );

        let gets: Vec<String> = operations
            .iter()
            .filter(|(m, _)| m == "GET")
            .map(|(_, p)| fill(p, &ids))
            .collect();
        let before = snapshot(&app, &owner_a.token, &gets).await;
        for (path, status, body) in &before {
            assert_eq!(*status, 200, "A cannot read its own {path}: {body}");
        }

        // Reads and writes in GET-first order, destructive ones last, so every write meets live
        // objects of A.
        operations.sort_by_key(|(m, _)| match m.as_str() {
            "GET" => 0,
            "POST" => 1,
            "PATCH" | "PUT" => 2,
            _ => 3,
        });
        for credential in [&owner_b.token, &key_b] {
            for (method, template) in &operations {
                let path = fill(template, &ids);
                let method = Method::from_bytes(method.as_bytes()).unwrap();
                let body = (method != Method::GET && method != Method::DELETE).then(|| json!({}));
                let (status, answer) = app
                    .call(method.clone(), &path, Some(credential), body)
                    .await;
                if method == Method::GET {
                    assert_eq!(status, 404, "{method} {template} leaked to B: {answer}");
                } else {
                    assert!(
                        status == 404 || status == 403,
                        "{method} {template} answered {status} to B: {answer}"
                    );
                }
                assert!(
                    answer["error"]["code"].is_string(),
                    "{method} {template}: {answer}"
                );
            }
        }

        let after = snapshot(&app, &owner_a.token, &gets).await;
        assert_eq!(before, after, "B's attempts changed A's data");
    }
);
