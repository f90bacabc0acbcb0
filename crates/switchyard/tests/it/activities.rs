//! Notes and tasks: links to contacts (through merges) and deals, timelines, completion, filters,
//! roles, and the tenancy wall.

use platform::with_db;
use serde_json::{Value, json};

use crate::backend_test;
use crate::support::{TestApp, User};

async fn contact(app: &TestApp, token: &str, ws: &str, body: Value) -> String {
    let (status, c) = app
        .post(&format!("/api/v1/workspaces/{ws}/contacts"), token, body)
        .await;
    assert!(status == 201 || status == 200, "{c}");
    c["contact"]["id"].as_str().expect("contact id").to_owned()
}

async fn timeline_kinds(app: &TestApp, token: &str, ws: &str, contact: &str) -> Vec<Value> {
    let (status, page) = app
        .get(
            &format!("/api/v1/workspaces/{ws}/contacts/{contact}/timeline?limit=200"),
            token,
        )
        .await;
    assert_eq!(status, 200, "{page}");
    page["data"].as_array().expect("entries").clone()
}

fn of_kind<'a>(entries: &'a [Value], kind: &str) -> Vec<&'a Value> {
    entries.iter().filter(|e| e["kind"] == kind).collect()
}

fn ids(page: &Value) -> Vec<String> {
    page["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|n| n["id"].as_str().expect("id").to_owned())
        .collect()
}

async fn event_types(app: &TestApp) -> Vec<String> {
    with_db!(&app.state.db, pool => sqlx::query_scalar::<_, String>(
        "SELECT event_type FROM outbox_events ORDER BY id"
    ).fetch_all(pool).await)
    .unwrap()
}

/// A deal with `contacts`, written straight into the database (the deals API is not this
/// test's subject).
async fn deal(app: &TestApp, ws: &str, contacts: &[&str]) -> String {
    let ws: platform::id::WorkspaceId = ws.parse().unwrap();
    let (pipeline, stage, deal) = (
        uuid::Uuid::now_v7(),
        uuid::Uuid::now_v7(),
        crm::DealId::new(),
    );
    let now = platform::Timestamp::now();
    let contacts: Vec<crm::ContactId> = contacts.iter().map(|c| c.parse().unwrap()).collect();
    with_db!(&app.state.db, pool => {
        sqlx::query("INSERT INTO pipelines (id, workspace_id, name, created_at, updated_at) VALUES ($1, $2, 'Sales', $3, $3)")
            .bind(pipeline).bind(ws).bind(now).execute(pool).await.unwrap();
        sqlx::query("INSERT INTO pipeline_stages (id, workspace_id, pipeline_id, name, position) VALUES ($1, $2, $3, 'New', 0)")
            .bind(stage).bind(ws).bind(pipeline).execute(pool).await.unwrap();
        sqlx::query("INSERT INTO deals (id, workspace_id, pipeline_id, stage_id, title, stage_entered_at, created_at, updated_at)
                     VALUES ($1, $2, $3, $4, 'Big deal', $5, $5, $5)")
            .bind(deal).bind(ws).bind(pipeline).bind(stage).bind(now).execute(pool).await.unwrap();
        for c in &contacts {
            sqlx::query("INSERT INTO deal_contacts (deal_id, contact_id, workspace_id) VALUES ($1, $2, $3)")
                .bind(deal).bind(*c).bind(ws).execute(pool).await.unwrap();
        }
    });
    deal.to_string()
}

/// `user` joins `ws` as `role` through an invite.
async fn join(app: &TestApp, owner: &User, ws: &str, email: &str, role: &str) -> User {
    let user = app.signup(email).await;
    let (status, invite) = app
        .post(
            &format!("/api/v1/workspaces/{ws}/invites"),
            &owner.token,
            json!({ "email": email, "role": role }),
        )
        .await;
    assert_eq!(status, 201, "{invite}");
    let (status, body) = app
        .post(
            "/api/v1/invites/accept",
            &user.token,
            json!({ "token": invite["token"] }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    user
}

backend_test!(notes_on_contacts_and_deals, |app| async move {
    let owner = app.signup("notes@example.com").await;
    let ws = app.workspace(&owner, "Notes").await;
    let t = owner.token.as_str();
    let notes = format!("/api/v1/workspaces/{ws}/notes");
    let ana = contact(&app, t, &ws, json!({ "emails": ["ana@example.com"] })).await;
    let bo = contact(&app, t, &ws, json!({ "emails": ["bo@example.com"] })).await;

    // A note on a contact: authored, on the contact's timeline with an excerpt.
    let body = format!("Called Ana: wants a demo. {}", "x".repeat(300));
    let (status, n1) = app
        .post(&notes, t, json!({ "contact_id": ana, "body": body }))
        .await;
    assert_eq!(status, 201, "{n1}");
    assert!(n1["id"].as_str().unwrap().starts_with("note_"));
    assert_eq!(n1["contact_id"], ana.as_str());
    assert_eq!(n1["deal_id"], Value::Null);
    assert_eq!(n1["author"], owner.id.as_str());
    assert_eq!(n1["body"], body.as_str());
    let entries = timeline_kinds(&app, t, &ws, &ana).await;
    let on_ana = of_kind(&entries, "note");
    assert_eq!(on_ana.len(), 1, "{entries:?}");
    assert_eq!(on_ana[0]["data"]["note_id"], n1["id"]);
    let excerpt = on_ana[0]["data"]["excerpt"].as_str().unwrap();
    assert!(excerpt.starts_with("Called Ana") && excerpt.ends_with('…'));
    assert_eq!(excerpt.chars().count(), 201);
    assert_eq!(on_ana[0]["actor"], owner.id.as_str());

    // What a note needs.
    let cases = [
        (
            json!({ "body": "orphan" }),
            422,
            "note_needs_contact_or_deal",
            "contact_id",
        ),
        (
            json!({ "contact_id": ana, "body": "" }),
            422,
            "validation_failed",
            "body",
        ),
        (
            json!({ "contact_id": ana, "body": "   " }),
            422,
            "validation_failed",
            "body",
        ),
        (
            json!({ "contact_id": ana, "body": "a\u{0}b" }),
            422,
            "validation_failed",
            "body",
        ),
        (
            json!({ "contact_id": ana, "body": "x".repeat(50_001) }),
            422,
            "validation_failed",
            "body",
        ),
        (
            json!({ "contact_id": "ct_01jdq9x3k5m2r8t4v6w0y1z2a3", "body": "x" }),
            422,
            "validation_failed",
            "contact_id",
        ),
        (
            json!({ "deal_id": "deal_01jdq9x3k5m2r8t4v6w0y1z2a3", "body": "x" }),
            422,
            "validation_failed",
            "deal_id",
        ),
    ];
    for (req, want_status, want_code, field) in cases {
        let (status, err) = app.post(&notes, t, req.clone()).await;
        assert_eq!(
            (status, err["error"]["code"].as_str()),
            (want_status, Some(want_code)),
            "{req}: {err}"
        );
        assert_eq!(err["error"]["details"]["field"], field, "{err}");
    }
    let (status, err) = app
        .post(
            &notes,
            t,
            json!({ "contact_id": ana, "body": "x", "pinned": true }),
        )
        .await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (422, Some("invalid_body"))
    );
    let (status, err) = app
        .post(&notes, t, json!({ "contact_id": "nope", "body": "x" }))
        .await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (422, Some("invalid_body"))
    );
    let (status, _) = app
        .post(
            &notes,
            t,
            json!({ "contact_id": ana, "body": "y".repeat(50_000) }),
        )
        .await;
    assert_eq!(status, 201, "50,000 characters is the limit, inclusive");

    // A note on a deal shows on the timeline of each of the deal's contacts.
    let deal_id = deal(&app, &ws, &[&ana, &bo]).await;
    let (status, n2) = app
        .post(
            &notes,
            t,
            json!({ "deal_id": deal_id, "body": "Deal kickoff" }),
        )
        .await;
    assert_eq!(status, 201, "{n2}");
    assert_eq!(n2["deal_id"], deal_id.as_str());
    for who in [&ana, &bo] {
        let entries = timeline_kinds(&app, t, &ws, who).await;
        assert!(
            of_kind(&entries, "note")
                .iter()
                .any(|e| e["data"]["note_id"] == n2["id"]
                    && e["data"]["deal_id"] == deal_id.as_str()),
            "{entries:?}"
        );
    }
    // On the contact and the deal: one entry for Ana, not two.
    let (status, n3) = app
        .post(
            &notes,
            t,
            json!({ "contact_id": ana, "deal_id": deal_id, "body": "Both" }),
        )
        .await;
    assert_eq!(status, 201, "{n3}");
    let entries = timeline_kinds(&app, t, &ws, &ana).await;
    assert_eq!(
        of_kind(&entries, "note")
            .iter()
            .filter(|e| e["data"]["note_id"] == n3["id"])
            .count(),
        1
    );

    // Lists and filters, newest first, with paging.
    let (_, all) = app.get(&notes, t).await;
    assert_eq!(all["data"].as_array().unwrap().len(), 4);
    assert_eq!(ids(&all)[0], n3["id"].as_str().unwrap());
    let (_, by_deal) = app.get(&format!("{notes}?deal_id={deal_id}"), t).await;
    assert_eq!(
        ids(&by_deal),
        [n3["id"].as_str().unwrap(), n2["id"].as_str().unwrap()]
    );
    let (_, by_bo) = app.get(&format!("{notes}?contact_id={bo}"), t).await;
    assert!(ids(&by_bo).is_empty(), "deal notes are filtered by deal_id");
    let (_, page1) = app.get(&format!("{notes}?limit=3"), t).await;
    assert_eq!(page1["data"].as_array().unwrap().len(), 3);
    let cursor = page1["next_cursor"].as_str().expect("more pages");
    let (_, page2) = app
        .get(&format!("{notes}?limit=3&cursor={cursor}"), t)
        .await;
    assert_eq!(ids(&page2), [n1["id"].as_str().unwrap()]);
    assert_eq!(page2["next_cursor"], Value::Null);
    let (status, err) = app.get(&format!("{notes}?contact_id=zzz"), t).await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (400, Some("invalid_query"))
    );

    // A merge moves notes to the survivor, and a merged id still names it.
    let cleo = contact(&app, t, &ws, json!({ "phones": ["+14155552671"] })).await;
    let (status, n4) = app
        .post(
            &notes,
            t,
            json!({ "contact_id": cleo, "body": "Cleo's note" }),
        )
        .await;
    assert_eq!(status, 201, "{n4}");
    let merged = contact(
        &app,
        t,
        &ws,
        json!({ "emails": ["ana@example.com"], "phones": ["+14155552671"] }),
    )
    .await;
    assert_eq!(merged, ana, "Ana is older and survives");
    let (_, by_cleo) = app.get(&format!("{notes}?contact_id={cleo}"), t).await;
    assert!(ids(&by_cleo).contains(&n4["id"].as_str().unwrap().to_owned()));
    let (_, moved) = app
        .get(&format!("{notes}/{}", n4["id"].as_str().unwrap()), t)
        .await;
    assert_eq!(moved["contact_id"], ana.as_str());
    let (status, n5) = app
        .post(
            &notes,
            t,
            json!({ "contact_id": cleo, "body": "To the old id" }),
        )
        .await;
    assert_eq!(status, 201, "{n5}");
    assert_eq!(n5["contact_id"], ana.as_str());

    // Change and delete.
    let n1_path = format!("{notes}/{}", n1["id"].as_str().unwrap());
    let (status, changed) = app
        .call(
            reqwest::Method::PATCH,
            &n1_path,
            Some(t),
            Some(json!({ "body": "Edited" })),
        )
        .await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["body"], "Edited");
    assert_eq!(changed["contact_id"], ana.as_str());
    let (status, err) = app
        .call(
            reqwest::Method::PATCH,
            &n1_path,
            Some(t),
            Some(json!({ "contact_id": null })),
        )
        .await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (422, Some("note_needs_contact_or_deal"))
    );
    let (status, moved) = app
        .call(
            reqwest::Method::PATCH,
            &n1_path,
            Some(t),
            Some(json!({ "contact_id": null, "deal_id": deal_id })),
        )
        .await;
    assert_eq!(status, 200, "{moved}");
    assert_eq!(
        (moved["contact_id"].clone(), moved["deal_id"].clone()),
        (Value::Null, json!(deal_id))
    );
    let (status, _) = app
        .call(reqwest::Method::DELETE, &n1_path, Some(t), None)
        .await;
    assert_eq!(status, 204);
    let (status, err) = app.get(&n1_path, t).await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (404, Some("note_not_found"))
    );
    let (status, err) = app
        .call(reqwest::Method::DELETE, &n1_path, Some(t), None)
        .await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (404, Some("note_not_found"))
    );

    let events = event_types(&app).await;
    let count = |e: &str| events.iter().filter(|x| *x == e).count();
    assert_eq!(count("note.created"), 6);
    assert_eq!(count("note.updated"), 2);
    assert_eq!(count("note.deleted"), 1);

    // Viewers read, and may not write.
    let (viewer_key, _) = app.api_key(&owner, &ws, "viewer").await;
    let (status, _) = app.get(&notes, &viewer_key).await;
    assert_eq!(status, 200);
    let (status, err) = app
        .post(
            &notes,
            &viewer_key,
            json!({ "contact_id": ana, "body": "x" }),
        )
        .await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
});

backend_test!(
    tasks_are_assigned_completed_and_filtered,
    |app| async move {
        let owner = app.signup("tasks@example.com").await;
        let ws = app.workspace(&owner, "Tasks").await;
        let t = owner.token.as_str();
        let tasks = format!("/api/v1/workspaces/{ws}/tasks");
        let member = join(&app, &owner, &ws, "rep@example.com", "member").await;
        let outsider = app.signup("outsider@example.com").await;
        let ana = contact(&app, t, &ws, json!({ "emails": ["ana@example.com"] })).await;

        let (status, call) = app
            .post(
                &tasks,
                t,
                json!({
                    "title": " Call Ana ", "contact_id": ana, "assignee_id": member.id,
                    "due_at": "2026-12-01T09:00:00+01:00",
                }),
            )
            .await;
        assert_eq!(status, 201, "{call}");
        assert!(call["id"].as_str().unwrap().starts_with("task_"));
        assert_eq!(call["title"], "Call Ana");
        assert_eq!(call["done"], false);
        assert_eq!(call["done_at"], Value::Null);
        assert_eq!(call["assignee_id"], member.id.as_str());
        assert_eq!(call["author"], owner.id.as_str());
        let due: chrono::DateTime<chrono::Utc> = call["due_at"].as_str().unwrap().parse().unwrap();
        assert_eq!(due.to_rfc3339(), "2026-12-01T08:00:00+00:00");
        let (status, contract) = app
            .post(
                &tasks,
                &member.token,
                json!({ "title": "Send the contract", "due_at": "2026-11-25T00:00:00Z" }),
            )
            .await;
        assert_eq!(
            status, 201,
            "a member may create tasks, with no contact: {contract}"
        );
        let (status, loose) = app
            .post(&tasks, t, json!({ "title": "Tidy the CRM" }))
            .await;
        assert_eq!(status, 201, "{loose}");

        // Bad input.
        let cases = [
            (
                json!({ "title": "x", "assignee_id": outsider.id }),
                "assignee_id",
            ),
            (json!({ "title": "" }), "title"),
            (json!({ "title": "two\nlines" }), "title"),
            (json!({ "title": "x".repeat(501) }), "title"),
            (json!({ "title": "x", "due_at": "tomorrow" }), "due_at"),
            (json!({ "title": "x", "due_at": "2026-12-01" }), "due_at"),
            (
                json!({ "title": "x", "contact_id": "ct_01jdq9x3k5m2r8t4v6w0y1z2a3" }),
                "contact_id",
            ),
            (
                json!({ "title": "x", "deal_id": "deal_01jdq9x3k5m2r8t4v6w0y1z2a3" }),
                "deal_id",
            ),
        ];
        for (req, field) in cases {
            let (status, err) = app.post(&tasks, t, req.clone()).await;
            assert_eq!(status, 422, "{req}: {err}");
            assert_eq!(err["error"]["code"], "validation_failed");
            assert_eq!(err["error"]["details"]["field"], field, "{err}");
        }
        let (status, err) = app
            .post(&tasks, t, json!({ "title": "x", "done": true }))
            .await;
        assert_eq!(
            (status, err["error"]["code"].as_str()),
            (422, Some("invalid_body"))
        );

        // Done: `done_at` stamped once, `task` then `task.done` on the contact's timeline.
        let call_path = format!("{tasks}/{}", call["id"].as_str().unwrap());
        let patch = |body: Value| app.call(reqwest::Method::PATCH, &call_path, Some(t), Some(body));
        let (status, done) = patch(json!({ "done": true })).await;
        assert_eq!(status, 200, "{done}");
        assert_eq!(done["done"], true);
        let done_at = done["done_at"].as_str().expect("done_at").to_owned();
        let (_, again) = patch(json!({ "done": true })).await;
        assert_eq!(
            again["done_at"],
            done_at.as_str(),
            "completing twice keeps the first time"
        );
        let entries = timeline_kinds(&app, t, &ws, &ana).await;
        let created = of_kind(&entries, "task");
        let completed = of_kind(&entries, "task.done");
        assert_eq!((created.len(), completed.len()), (1, 1), "{entries:?}");
        assert_eq!(created[0]["data"]["task_id"], call["id"]);
        assert_eq!(completed[0]["data"]["task_id"], call["id"]);
        let position = |kind: &str| entries.iter().position(|e| e["kind"] == kind).unwrap();
        assert!(position("task.done") < position("task"), "newest first");

        // Filters.
        let app_ref = &app;
        let list = |query: String| {
            let path = format!("{tasks}?{query}");
            async move {
                let app = app_ref;
                let (status, page) = app.get(&path, t).await;
                assert_eq!(status, 200, "{path}: {page}");
                ids(&page)
            }
        };
        let id = |v: &Value| v["id"].as_str().unwrap().to_owned();
        assert_eq!(
            list(String::new()).await,
            [id(&loose), id(&contract), id(&call)]
        );
        assert_eq!(
            list("status=open".into()).await,
            [id(&loose), id(&contract)]
        );
        assert_eq!(list("status=done".into()).await, [id(&call)]);
        assert_eq!(
            list(format!("assignee_id={}", member.id)).await,
            [id(&call)]
        );
        assert_eq!(list(format!("contact_id={ana}")).await, [id(&call)]);
        assert_eq!(
            list("due_before=2026-11-30T00:00:00Z".into()).await,
            [id(&contract)]
        );
        assert_eq!(
            list("due_before=2026-12-31T00:00:00%2B01:00&status=open".into()).await,
            [id(&contract)]
        );
        assert_eq!(list("limit=1".into()).await, [id(&loose)]);
        for bad in [
            "status=finished",
            "due_before=soon",
            "assignee_id=ws_x",
            "limit=0",
        ] {
            let (status, err) = app.get(&format!("{tasks}?{bad}"), t).await;
            assert_eq!(status, 400, "{bad}: {err}");
        }

        // Reopen, reassign, clear.
        let (status, reopened) = patch(json!({ "done": false, "title": "Call Ana again" })).await;
        assert_eq!(status, 200, "{reopened}");
        assert_eq!(
            (reopened["done"].clone(), reopened["done_at"].clone()),
            (json!(false), Value::Null)
        );
        assert_eq!(reopened["title"], "Call Ana again");
        let (status, err) = patch(json!({ "assignee_id": outsider.id })).await;
        assert_eq!(
            (status, err["error"]["details"]["field"].as_str()),
            (422, Some("assignee_id"))
        );
        let (status, cleared) =
            patch(json!({ "assignee_id": null, "due_at": null, "contact_id": null })).await;
        assert_eq!(status, 200, "{cleared}");
        for field in ["assignee_id", "due_at", "contact_id"] {
            assert_eq!(cleared[field], Value::Null, "{field}");
        }
        let (status, err) = patch(json!({ "due_at": "never" })).await;
        assert_eq!(
            (status, err["error"]["details"]["field"].as_str()),
            (422, Some("due_at"))
        );

        let events = {
            let all = event_types(&app).await;
            let count = |e: &str| all.iter().filter(|x| *x == e).count();
            (
                count("task.created"),
                count("task.completed"),
                count("task.updated"),
            )
        };
        assert_eq!(events, (3, 1, 3));

        // Roles: viewers read only.
        let (viewer_key, _) = app.api_key(&owner, &ws, "viewer").await;
        let (status, page) = app.get(&tasks, &viewer_key).await;
        assert_eq!((status, page["data"].as_array().unwrap().len()), (200, 3));
        let (status, _) = app.post(&tasks, &viewer_key, json!({ "title": "x" })).await;
        assert_eq!(status, 403);
        let (status, _) = app
            .call(
                reqwest::Method::PATCH,
                &call_path,
                Some(&viewer_key),
                Some(json!({ "done": true })),
            )
            .await;
        assert_eq!(status, 403);

        let (status, _) = app
            .call(reqwest::Method::DELETE, &call_path, Some(t), None)
            .await;
        assert_eq!(status, 204);
        let (status, err) = app.get(&call_path, t).await;
        assert_eq!(
            (status, err["error"]["code"].as_str()),
            (404, Some("task_not_found"))
        );
    }
);

backend_test!(
    activities_of_another_workspace_are_invisible,
    |app| async move {
        let a = app.signup("a@example.com").await;
        let ws_a = app.workspace(&a, "A").await;
        let b = app.signup("b@example.com").await;
        let ws_b = app.workspace(&b, "B").await;
        let ana = contact(
            &app,
            &a.token,
            &ws_a,
            json!({ "emails": ["ana@example.com"] }),
        )
        .await;
        let (_, note) = app
            .post(
                &format!("/api/v1/workspaces/{ws_a}/notes"),
                &a.token,
                json!({ "contact_id": ana, "body": "secret" }),
            )
            .await;
        let (_, task) = app
            .post(
                &format!("/api/v1/workspaces/{ws_a}/tasks"),
                &a.token,
                json!({ "title": "secret", "contact_id": ana }),
            )
            .await;
        let (note_id, task_id) = (note["id"].as_str().unwrap(), task["id"].as_str().unwrap());

        // A's ids under B's workspace: not found, whatever the method.
        for (path, code) in [
            (
                format!("/api/v1/workspaces/{ws_b}/notes/{note_id}"),
                "note_not_found",
            ),
            (
                format!("/api/v1/workspaces/{ws_b}/tasks/{task_id}"),
                "task_not_found",
            ),
        ] {
            let (status, err) = app.get(&path, &b.token).await;
            assert_eq!(
                (status, err["error"]["code"].as_str()),
                (404, Some(code)),
                "{path}"
            );
            let change = if code == "note_not_found" {
                json!({ "body": "x" })
            } else {
                json!({ "title": "x" })
            };
            let (status, err) = app
                .call(reqwest::Method::PATCH, &path, Some(&b.token), Some(change))
                .await;
            assert_eq!(
                (status, err["error"]["code"].as_str()),
                (404, Some(code)),
                "PATCH {path}"
            );
            let (status, err) = app
                .call(reqwest::Method::DELETE, &path, Some(&b.token), None)
                .await;
            assert_eq!(
                (status, err["error"]["code"].as_str()),
                (404, Some(code)),
                "DELETE {path}"
            );
        }
        // B's lists do not show A's activities; A's contact cannot be linked from B.
        for kind in ["notes", "tasks"] {
            let (status, page) = app
                .get(
                    &format!("/api/v1/workspaces/{ws_b}/{kind}?contact_id={ana}"),
                    &b.token,
                )
                .await;
            assert_eq!(status, 200);
            assert!(page["data"].as_array().unwrap().is_empty());
            let (status, _) = app
                .get(&format!("/api/v1/workspaces/{ws_a}/{kind}"), &b.token)
                .await;
            assert_eq!(status, 404);
        }
        let (status, err) = app
            .post(
                &format!("/api/v1/workspaces/{ws_b}/notes"),
                &b.token,
                json!({ "contact_id": ana, "body": "x" }),
            )
            .await;
        assert_eq!(
            (status, err["error"]["details"]["field"].as_str()),
            (422, Some("contact_id"))
        );
        // A still has both, unchanged.
        let (status, still) = app
            .get(
                &format!("/api/v1/workspaces/{ws_a}/notes/{note_id}"),
                &a.token,
            )
            .await;
        assert_eq!((status, still["body"].as_str()), (200, Some("secret")));
        let (status, still) = app
            .get(
                &format!("/api/v1/workspaces/{ws_a}/tasks/{task_id}"),
                &a.token,
            )
            .await;
        assert_eq!((status, still["title"].as_str()), (200, Some("secret")));
    }
);

backend_test!(overdue_tasks_are_announced_once, |app| async move {
    let owner = app.signup("due@example.com").await;
    let ws = app.workspace(&owner, "Due").await;
    let base = format!("/api/v1/workspaces/{ws}");
    let (status, task) = app
        .post(
            &format!("{base}/tasks"),
            &owner.token,
            json!({ "title": "Call back", "due_at": "2026-01-01T09:00:00Z" }),
        )
        .await;
    assert_eq!(status, 201, "{task}");
    let (status, later) = app
        .post(
            &format!("{base}/tasks"),
            &owner.token,
            json!({ "title": "Later", "due_at": "2099-01-01T09:00:00Z" }),
        )
        .await;
    assert_eq!(status, 201, "{later}");
    let due_events = || async {
        platform::with_db!(&app.state.db, pool => sqlx::query_scalar::<_, String>(
            "SELECT payload FROM outbox_events WHERE event_type = 'task.due'"
        ).fetch_all(pool).await)
        .unwrap()
    };
    // What the every-minute schedule runs: the overdue task is announced, once.
    let now = platform::Timestamp::now();
    assert_eq!(
        crm::activities::due::notify_due(&app.state.db, now)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        crm::activities::due::notify_due(&app.state.db, now)
            .await
            .unwrap(),
        0
    );
    let events = due_events().await;
    assert_eq!(events.len(), 1);
    let event: Value = serde_json::from_str(&events[0]).unwrap();
    assert_eq!(event["task_id"], task["id"]);
    // A new due time is announced again when it passes; a done task never.
    let task_id = task["id"].as_str().unwrap();
    let (status, _) = app
        .call(
            reqwest::Method::PATCH,
            &format!("{base}/tasks/{task_id}"),
            Some(&owner.token),
            Some(json!({ "due_at": "2026-02-01T09:00:00Z" })),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        crm::activities::due::notify_due(&app.state.db, now)
            .await
            .unwrap(),
        1
    );
    let (status, _) = app
        .call(
            reqwest::Method::PATCH,
            &format!("{base}/tasks/{task_id}"),
            Some(&owner.token),
            Some(json!({ "due_at": "2026-03-01T09:00:00Z", "done": true })),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        crm::activities::due::notify_due(&app.state.db, now)
            .await
            .unwrap(),
        0
    );
    assert_eq!(due_events().await.len(), 2);
});
