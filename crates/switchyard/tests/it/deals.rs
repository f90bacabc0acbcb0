//! Pipelines and deals: stage lists and their validation, the deal lifecycle with exact values,
//! stage history, timeline entries and domain events, the board's totals, custom fields on deals
//! and tenancy.

use platform::with_db;
use reqwest::Method;
use serde_json::{Value, json};

use crate::backend_test;
use crate::support::TestApp;

async fn patch(app: &TestApp, path: &str, token: &str, body: Value) -> (u16, Value) {
    app.call(Method::PATCH, path, Some(token), Some(body)).await
}

async fn delete(app: &TestApp, path: &str, token: &str) -> (u16, Value) {
    app.call(Method::DELETE, path, Some(token), None).await
}

/// Creates a pipeline with `stages` and returns it.
async fn pipeline(app: &TestApp, token: &str, ws: &str, name: &str, stages: Value) -> Value {
    let (status, body) = app
        .post(
            &format!("/api/v1/workspaces/{ws}/pipelines"),
            token,
            json!({ "name": name, "stages": stages }),
        )
        .await;
    assert_eq!(status, 201, "create pipeline: {body}");
    body
}

/// The standard test pipeline: Lead 10 %, Demo 40 %, Proposal 70 %, Won, Lost.
async fn sales_pipeline(app: &TestApp, token: &str, ws: &str) -> Value {
    pipeline(
        app,
        token,
        ws,
        "Sales",
        json!([
            { "name": "Lead", "probability": 10 },
            { "name": "Demo", "probability": 40 },
            { "name": "Proposal", "probability": 70 },
            { "name": "Won", "kind": "won" },
            { "name": "Lost", "kind": "lost" },
        ]),
    )
    .await
}

/// The id of the stage named `name`.
fn stage(pipeline: &Value, name: &str) -> String {
    pipeline["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no stage {name} in {pipeline}"))["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn names(pipeline: &Value) -> Vec<String> {
    pipeline["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect()
}

async fn create_deal(app: &TestApp, token: &str, ws: &str, body: Value) -> Value {
    let (status, deal) = app
        .post(&format!("/api/v1/workspaces/{ws}/deals"), token, body)
        .await;
    assert_eq!(status, 201, "create deal: {deal}");
    deal
}

async fn contact(app: &TestApp, token: &str, ws: &str, email: &str) -> String {
    let (status, body) = app
        .post(
            &format!("/api/v1/workspaces/{ws}/contacts"),
            token,
            json!({ "first_name": "Ana", "emails": [email] }),
        )
        .await;
    assert_eq!(status, 201, "create contact: {body}");
    body["contact"]["id"].as_str().unwrap().to_owned()
}

/// Deal events in the outbox, oldest first: (type, payload).
async fn deal_events(app: &TestApp) -> Vec<(String, Value)> {
    let rows: Vec<(String, String)> = with_db!(&app.state.db, pool => sqlx::query_as(
        "SELECT event_type, payload FROM outbox_events WHERE event_type LIKE 'deal.%' ORDER BY id"
    ).fetch_all(pool).await)
    .unwrap();
    rows.into_iter()
        .map(|(t, p)| (t, serde_json::from_str(&p).unwrap()))
        .collect()
}

fn assert_invalid(status: u16, body: &Value, field: &str) {
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "validation_failed", "{body}");
    assert_eq!(body["error"]["details"]["field"], field, "{body}");
}

backend_test!(pipelines_validate_and_replace_stages, |app| async move {
    let owner = app.signup("pipelines@example.com").await;
    let ws = app.workspace(&owner, "Pipelines").await;
    let t = owner.token.as_str();
    let base = format!("/api/v1/workspaces/{ws}/pipelines");

    for (stages, field) in [
        (json!([]), "stages"),
        (json!([{ "name": "Won", "kind": "won" }]), "stages"),
        (
            json!([{ "name": "Lead" }, { "name": " lead " }]),
            "stages[1].name",
        ),
        (
            json!([{ "name": "Lead", "probability": 150 }]),
            "stages[0].probability",
        ),
        (
            json!([{ "name": "Lead" }, { "name": "Demo", "probability": -1 }]),
            "stages[1].probability",
        ),
        (json!([{ "probability": 10 }]), "stages[0].name"),
    ] {
        let (status, body) = app
            .post(&base, t, json!({ "name": "Bad", "stages": stages }))
            .await;
        assert_invalid(status, &body, field);
    }
    let (status, body) = app
        .post(
            &base,
            t,
            json!({ "name": "  ", "stages": [{ "name": "A" }] }),
        )
        .await;
    assert_invalid(status, &body, "name");
    let (status, body) = app
        .post(
            &base,
            t,
            json!({ "name": "X", "stages": [{ "name": "A", "colour": "red" }] }),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "invalid_body");
    let (_, list) = app.get(&base, t).await;
    assert_eq!(list["data"], json!([]), "nothing was half-created");

    let sales = sales_pipeline(&app, t, &ws).await;
    let id = sales["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("pl_"));
    assert_eq!(names(&sales), ["Lead", "Demo", "Proposal", "Won", "Lost"]);
    let stages = sales["stages"].as_array().unwrap();
    for (i, s) in stages.iter().enumerate() {
        assert_eq!(s["position"], i, "{s}");
        assert!(s["id"].as_str().unwrap().starts_with("stg_"));
    }
    assert_eq!(stages[0]["kind"], "open");
    assert_eq!(stages[3]["kind"], "won");
    assert_eq!(stages[3]["probability"], 100, "won stages default to 100 %");
    assert_eq!(stages[4]["probability"], 0);

    // Members read pipelines; only admins change them.
    let (member, _) = app.api_key(&owner, &ws, "member").await;
    assert_eq!(app.get(&format!("{base}/{id}"), &member).await.0, 200);
    let (status, _) = app
        .post(
            &base,
            &member,
            json!({ "name": "M", "stages": [{ "name": "A" }] }),
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = patch(
        &app,
        &format!("{base}/{id}"),
        &member,
        json!({ "name": "M" }),
    )
    .await;
    assert_eq!(status, 403);

    // Reorder, rename, add.
    let (lead, demo, proposal, won, lost) = (
        stage(&sales, "Lead"),
        stage(&sales, "Demo"),
        stage(&sales, "Proposal"),
        stage(&sales, "Won"),
        stage(&sales, "Lost"),
    );
    let (status, changed) = patch(
        &app,
        &format!("{base}/{id}"),
        t,
        json!({
            "name": "Sales EU",
            "stages": [
                { "id": demo, "name": "Product demo" },
                { "id": lead },
                { "name": "Negotiation", "probability": 80 },
                { "id": proposal, "probability": 75 },
                { "id": won },
                { "id": lost },
            ],
        }),
    )
    .await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["name"], "Sales EU");
    assert_eq!(
        names(&changed),
        [
            "Product demo",
            "Lead",
            "Negotiation",
            "Proposal",
            "Won",
            "Lost"
        ]
    );
    assert_eq!(stage(&changed, "Product demo"), demo, "ids are kept");
    assert_eq!(stage(&changed, "Lead"), lead);
    assert_eq!(changed["stages"][1]["probability"], 10, "kept when absent");
    assert_eq!(changed["stages"][2]["probability"], 80);
    assert_eq!(changed["stages"][3]["probability"], 75);
    assert_eq!(changed["stages"][3]["position"], 3);
    let negotiation = stage(&changed, "Negotiation");
    assert!(negotiation.starts_with("stg_"));

    // A stage id of another pipeline, or listed twice, is refused.
    let other = pipeline(&app, t, &ws, "Other", json!([{ "name": "Only" }])).await;
    let (status, body) = patch(
        &app,
        &format!("{base}/{id}"),
        t,
        json!({ "stages": [{ "id": stage(&other, "Only") }] }),
    )
    .await;
    assert_invalid(status, &body, "stages[0].id");
    let (status, body) = patch(
        &app,
        &format!("{base}/{id}"),
        t,
        json!({ "stages": [{ "id": lead }, { "id": lead, "name": "Again" }] }),
    )
    .await;
    assert_invalid(status, &body, "stages[1].id");

    // A stage holding a deal cannot be removed nor change its kind.
    let deal = create_deal(
        &app,
        t,
        &ws,
        json!({ "title": "Big one", "pipeline_id": id, "stage_id": proposal }),
    )
    .await;
    let keep_all_but_proposal = json!([
        { "id": demo }, { "id": lead }, { "id": negotiation }, { "id": won }, { "id": lost },
    ]);
    let (status, body) = patch(
        &app,
        &format!("{base}/{id}"),
        t,
        json!({ "stages": keep_all_but_proposal }),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "stage_in_use");
    assert_eq!(body["error"]["details"]["stage_id"], proposal.as_str());
    let (status, body) = patch(
        &app,
        &format!("{base}/{id}"),
        t,
        json!({ "stages": [
            { "id": demo }, { "id": lead }, { "id": negotiation },
            { "id": proposal, "kind": "won" }, { "id": won }, { "id": lost },
        ] }),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "stage_in_use");
    let (_, unchanged) = app.get(&format!("{base}/{id}"), t).await;
    assert_eq!(
        unchanged["stages"], changed["stages"],
        "refused changes left no trace"
    );

    // An empty stage goes.
    let (status, fewer) = patch(
        &app,
        &format!("{base}/{id}"),
        t,
        json!({ "stages": [
            { "id": lead }, { "id": demo }, { "id": proposal }, { "id": won }, { "id": lost },
        ] }),
    )
    .await;
    assert_eq!(status, 200, "{fewer}");
    assert_eq!(
        names(&fewer),
        ["Lead", "Product demo", "Proposal", "Won", "Lost"]
    );

    // A pipeline with deals cannot be deleted; once they are gone it can.
    let (status, body) = delete(&app, &format!("{base}/{id}"), t).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "pipeline_in_use");
    let deal_path = format!(
        "/api/v1/workspaces/{ws}/deals/{}",
        deal["id"].as_str().unwrap()
    );
    assert_eq!(delete(&app, &deal_path, t).await.0, 204);
    assert_eq!(delete(&app, &format!("{base}/{id}"), t).await.0, 204);
    let (status, body) = app.get(&format!("{base}/{id}"), t).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "pipeline_not_found");

    let (_, list) = app.get(&format!("{base}?limit=1"), t).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert_eq!(list["data"][0]["name"], "Other");
    assert!(list["next_cursor"].is_null());

    let types: Vec<String> = with_db!(&app.state.db, pool => sqlx::query_scalar(
        "SELECT event_type FROM outbox_events WHERE event_type LIKE 'pipeline.%' ORDER BY id"
    ).fetch_all(pool).await)
    .unwrap();
    assert_eq!(
        types,
        [
            "pipeline.created",
            "pipeline.updated",
            "pipeline.created",
            "pipeline.updated",
            "pipeline.deleted"
        ]
    );
});

backend_test!(deal_lifecycle_history_and_timeline, |app| async move {
    let owner = app.signup("deals@example.com").await;
    let ws = app.workspace(&owner, "Deals").await;
    let t = owner.token.as_str();
    let sales = sales_pipeline(&app, t, &ws).await;
    let pl = sales["id"].as_str().unwrap().to_owned();
    let base = format!("/api/v1/workspaces/{ws}/deals");
    let ana = contact(&app, t, &ws, "ana@example.com").await;

    let deal = create_deal(
        &app,
        t,
        &ws,
        json!({
            "title": "Ana's renewal", "pipeline_id": pl, "value": "1250.50", "currency": "eur",
            "contact_ids": [ana], "expected_close_date": "2026-12-31", "owner_id": owner.id,
        }),
    )
    .await;
    let id = deal["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("deal_"));
    assert_eq!(deal["value"], "1250.50");
    assert_eq!(deal["currency"], "EUR");
    assert_eq!(deal["stage_id"], stage(&sales, "Lead"), "first open stage");
    assert_eq!(deal["status"], "open");
    assert_eq!(deal["contact_ids"], json!([ana]));
    assert_eq!(deal["owner_id"], owner.id.as_str());
    assert_eq!(deal["expected_close_date"], "2026-12-31");
    assert!(deal["closed_at"].is_null());

    // Values are exact in the currency's minor unit.
    let yen = create_deal(
        &app,
        t,
        &ws,
        json!({ "title": "Tokyo", "pipeline_id": pl, "value": "1000", "currency": "JPY" }),
    )
    .await;
    assert_eq!(yen["value"], "1000");
    let usd = create_deal(
        &app,
        t,
        &ws,
        json!({ "title": "Number", "pipeline_id": pl, "value": 99.5 }),
    )
    .await;
    assert_eq!(
        (&usd["value"], &usd["currency"]),
        (&json!("99.50"), &json!("USD"))
    );
    let other = pipeline(&app, t, &ws, "Other", json!([{ "name": "Only" }])).await;
    for (body, field) in [
        (json!({ "value": "1000.5", "currency": "JPY" }), "value"),
        (json!({ "value": "12.345", "currency": "EUR" }), "value"),
        (json!({ "value": "-5" }), "value"),
        (json!({ "value": "1e3" }), "value"),
        (json!({ "value": true }), "value"),
        (json!({ "currency": "EURO" }), "currency"),
        (
            json!({ "contact_ids": ["ct_01jdq9x3k5m2r8t4v6w0y1z2a3"] }),
            "contact_ids",
        ),
        (json!({ "stage_id": stage(&other, "Only") }), "stage_id"),
        (
            json!({ "expected_close_date": "31/12/2026" }),
            "expected_close_date",
        ),
        (json!({ "title": "" }), "title"),
        (
            json!({ "pipeline_id": "pl_01jdq9x3k5m2r8t4v6w0y1z2a3" }),
            "pipeline_id",
        ),
        (
            json!({ "owner_id": "usr_01jdq9x3k5m2r8t4v6w0y1z2a3" }),
            "owner_id",
        ),
        (
            json!({ "company_id": "co_01jdq9x3k5m2r8t4v6w0y1z2a3" }),
            "company_id",
        ),
        (json!({ "lost_reason": "price" }), "lost_reason"),
        (
            json!({ "stage_id": stage(&sales, "Won"), "status": "lost" }),
            "status",
        ),
    ] {
        let mut full = json!({ "title": "Bad", "pipeline_id": pl });
        full.as_object_mut()
            .unwrap()
            .extend(body.as_object().unwrap().clone());
        let (status, err) = app.post(&base, t, full).await;
        assert_invalid(status, &err, field);
    }
    let (status, err) = app
        .post(
            &base,
            t,
            json!({ "title": "X", "pipeline_id": pl, "amount": 1 }),
        )
        .await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (422, Some("invalid_body"))
    );

    // Through two stages, then won.
    let path = format!("{base}/{id}");
    let (status, moved) = patch(&app, &path, t, json!({ "stage_id": stage(&sales, "Demo") })).await;
    assert_eq!(status, 200, "{moved}");
    assert_eq!(moved["stage_id"], stage(&sales, "Demo"));
    assert_eq!(moved["status"], "open");
    let (status, err) = patch(&app, &path, t, json!({ "stage_id": stage(&other, "Only") })).await;
    assert_invalid(status, &err, "stage_id");
    let (status, won) = patch(&app, &path, t, json!({ "status": "won" })).await;
    assert_eq!(status, 200, "{won}");
    assert_eq!(won["status"], "won");
    assert_eq!(
        won["stage_id"],
        stage(&sales, "Won"),
        "to the first won stage"
    );
    assert!(won["closed_at"].is_string());
    assert_eq!(won["value"], "1250.50", "untouched fields are kept");

    let (status, history) = app.get(&format!("{path}/history"), t).await;
    assert_eq!(status, 200, "{history}");
    let stays = history.as_array().unwrap();
    assert_eq!(stays.len(), 3, "{history}");
    let stage_names: Vec<&str> = stays
        .iter()
        .map(|s| s["stage_name"].as_str().unwrap())
        .collect();
    assert_eq!(stage_names, ["Lead", "Demo", "Won"]);
    for pair in stays.windows(2) {
        assert_eq!(pair[0]["left_at"], pair[1]["entered_at"], "{history}");
    }
    for stay in stays {
        assert!(stay["duration_seconds"].as_i64().unwrap() >= 0, "{stay}");
        assert_eq!(stay["actor"], owner.id.as_str());
    }
    assert!(stays[2]["left_at"].is_null(), "the current stay is open");
    let times: Vec<chrono::DateTime<chrono::Utc>> = stays
        .iter()
        .map(|s| s["entered_at"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{history}");

    // The contact's timeline tells the story.
    let (status, timeline) = app
        .get(
            &format!("/api/v1/workspaces/{ws}/contacts/{ana}/timeline"),
            t,
        )
        .await;
    assert_eq!(status, 200, "{timeline}");
    let kinds: Vec<&str> = timeline["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    for kind in ["deal.created", "deal.stage_changed", "deal.won"] {
        assert!(kinds.contains(&kind), "{kind} missing: {kinds:?}");
    }
    let changed = timeline["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "deal.stage_changed" && e["data"]["to_stage"] == "Demo")
        .unwrap_or_else(|| panic!("{timeline}"));
    assert_eq!(changed["data"]["deal_id"], id.as_str());
    assert_eq!(changed["data"]["from_stage"], "Lead");
    assert_eq!(changed["data"]["title"], "Ana's renewal");
    assert_eq!(changed["data"]["value"], "1250.50");

    // Reopen: back to the last open stage, closed_at cleared.
    let (status, reopened) = patch(&app, &path, t, json!({ "status": "open" })).await;
    assert_eq!(status, 200, "{reopened}");
    assert_eq!(reopened["status"], "open");
    assert!(reopened["closed_at"].is_null());
    assert_eq!(reopened["stage_id"], stage(&sales, "Demo"));
    let (_, history) = app.get(&format!("{path}/history"), t).await;
    assert_eq!(history.as_array().unwrap().len(), 4);

    // Lost with a reason (moving into the lost stage), which only lost deals keep.
    let (status, err) = patch(&app, &path, t, json!({ "lost_reason": "price" })).await;
    assert_invalid(status, &err, "lost_reason");
    let (status, lost) = patch(
        &app,
        &path,
        t,
        json!({ "stage_id": stage(&sales, "Lost"), "lost_reason": "Too expensive" }),
    )
    .await;
    assert_eq!(status, 200, "{lost}");
    assert_eq!(lost["status"], "lost");
    assert_eq!(lost["lost_reason"], "Too expensive");
    assert!(lost["closed_at"].is_string());
    // Moving out of a lost stage into an open one reopens the deal.
    let (status, back) = patch(
        &app,
        &path,
        t,
        json!({ "stage_id": stage(&sales, "Proposal"), "value": 2000, "currency": "USD" }),
    )
    .await;
    assert_eq!(status, 200, "{back}");
    assert_eq!(back["status"], "open");
    assert!(back["lost_reason"].is_null());
    assert_eq!(
        (&back["value"], &back["currency"]),
        (&json!("2000.00"), &json!("USD"))
    );
    // A currency alone keeps the decimal value, which must fit it.
    let (status, err) = patch(
        &app,
        &deal_url(&base, &usd),
        t,
        json!({ "currency": "JPY" }),
    )
    .await;
    assert_invalid(status, &err, "value");
    let (status, kwd) = patch(&app, &path, t, json!({ "currency": "KWD" })).await;
    assert_eq!(status, 200, "{kwd}");
    assert_eq!(kwd["value"], "2000.000");

    // Domain events, in the transaction of each change.
    let events = deal_events(&app).await;
    let types: Vec<&str> = events.iter().map(|(t, _)| t.as_str()).collect();
    for kind in [
        "deal.created",
        "deal.updated",
        "deal.stage_changed",
        "deal.won",
        "deal.lost",
    ] {
        assert!(types.contains(&kind), "{kind} missing: {types:?}");
    }
    let (_, first_move) = events
        .iter()
        .find(|(t, p)| t == "deal.stage_changed" && p["deal_id"] == id.as_str())
        .unwrap();
    assert_eq!(first_move["from_stage_id"], stage(&sales, "Lead"));
    assert_eq!(first_move["to_stage_id"], stage(&sales, "Demo"));
    assert_eq!(first_move["pipeline_id"], pl.as_str());
    assert_eq!(first_move["status"], "open");
    assert_eq!(first_move["value"], "1250.50");
    assert_eq!(first_move["currency"], "EUR");
    assert_eq!(first_move["contact_ids"], json!([ana]));

    // Filters and paging.
    let count = |v: &Value| v["data"].as_array().unwrap().len();
    let (_, all) = app.get(&base, t).await;
    assert_eq!(count(&all), 3);
    assert_eq!(all["data"][0]["id"], usd["id"], "newest first");
    let (_, by_contact) = app.get(&format!("{base}?contact_id={ana}"), t).await;
    assert_eq!(count(&by_contact), 1);
    assert_eq!(by_contact["data"][0]["id"], id.as_str());
    let (_, by_stage) = app
        .get(&format!("{base}?stage_id={}", stage(&sales, "Lead")), t)
        .await;
    assert_eq!(count(&by_stage), 2);
    let (_, by_owner) = app.get(&format!("{base}?owner_id={}", owner.id), t).await;
    assert_eq!(count(&by_owner), 1);
    let (_, by_status) = app
        .get(&format!("{base}?status=open&pipeline_id={pl}"), t)
        .await;
    assert_eq!(count(&by_status), 3);
    let (status, _) = app.get(&format!("{base}?status=maybe"), t).await;
    assert_eq!(status, 400);
    let (_, page1) = app.get(&format!("{base}?limit=2"), t).await;
    assert_eq!(count(&page1), 2);
    let cursor = page1["next_cursor"].as_str().unwrap();
    let (_, page2) = app.get(&format!("{base}?limit=2&cursor={cursor}"), t).await;
    assert_eq!(count(&page2), 1);
    assert!(page2["next_cursor"].is_null());

    // Into another pipeline: to its first open stage (or the one given); the history follows.
    let yen_url = deal_url(&base, &yen);
    let (status, err) = patch(
        &app,
        &yen_url,
        t,
        json!({ "pipeline_id": other["id"], "stage_id": stage(&sales, "Demo") }),
    )
    .await;
    assert_invalid(status, &err, "stage_id");
    let (status, moved) = patch(&app, &yen_url, t, json!({ "pipeline_id": other["id"] })).await;
    assert_eq!(status, 200, "{moved}");
    assert_eq!(moved["pipeline_id"], other["id"]);
    assert_eq!(moved["stage_id"], stage(&other, "Only"));
    let (_, history) = app.get(&format!("{yen_url}/history"), t).await;
    let stays: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage_name"].as_str().unwrap())
        .collect();
    assert_eq!(stays, ["Lead", "Only"]);
    let (_, moved_event) = deal_events(&app)
        .await
        .into_iter()
        .rfind(|(t, _)| t == "deal.stage_changed")
        .unwrap();
    assert_eq!(moved_event["from_pipeline_id"], pl.as_str());
    assert_eq!(moved_event["pipeline_id"], other["id"]);

    // Delete.
    let (member, _) = app.api_key(&owner, &ws, "member").await;
    assert_eq!(delete(&app, &path, &member).await.0, 403);
    assert_eq!(
        patch(&app, &path, &member, json!({ "title": "By a member" }))
            .await
            .0,
        200
    );
    assert_eq!(delete(&app, &path, t).await.0, 204);
    let (status, err) = app.get(&path, t).await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (404, Some("deal_not_found"))
    );
    let (status, _) = app.get(&format!("{path}/history"), t).await;
    assert_eq!(status, 404);
    let events = deal_events(&app).await;
    let (last, payload) = events.last().unwrap();
    assert_eq!(last, "deal.deleted");
    assert_eq!(payload["deal_id"], id.as_str());
});

fn deal_url(base: &str, deal: &Value) -> String {
    format!("{base}/{}", deal["id"].as_str().unwrap())
}

backend_test!(board_totals_per_stage_and_currency, |app| async move {
    let owner = app.signup("board@example.com").await;
    let ws = app.workspace(&owner, "Board").await;
    let t = owner.token.as_str();
    let p = pipeline(
        &app,
        t,
        &ws,
        "Board",
        json!([
            { "name": "Lead", "probability": 10 },
            { "name": "Proposal", "probability": 50 },
            { "name": "Won", "kind": "won" },
            { "name": "Empty", "probability": 90 },
        ]),
    )
    .await;
    let pl = p["id"].as_str().unwrap().to_owned();
    let (lead, proposal, won) = (stage(&p, "Lead"), stage(&p, "Proposal"), stage(&p, "Won"));
    for (title, stage_id, value, currency) in [
        ("a", &lead, "1250.50", "EUR"),
        ("b", &lead, "100.25", "EUR"),
        ("c", &lead, "10", "USD"),
        ("d", &proposal, "1000.01", "EUR"),
        ("e", &proposal, "1000", "JPY"),
        ("f", &won, "99.99", "USD"),
    ] {
        create_deal(
            &app,
            t,
            &ws,
            json!({ "title": title, "pipeline_id": pl, "stage_id": stage_id, "value": value, "currency": currency }),
        )
        .await;
    }
    // Another pipeline's deals do not count.
    let other = pipeline(&app, t, &ws, "Other", json!([{ "name": "Only" }])).await;
    create_deal(
        &app,
        t,
        &ws,
        json!({ "title": "elsewhere", "pipeline_id": other["id"], "value": "5" }),
    )
    .await;

    let board_path = format!("/api/v1/workspaces/{ws}/pipelines/{pl}/board");
    let (status, board) = app.get(&board_path, t).await;
    assert_eq!(status, 200, "{board}");
    assert_eq!(board["pipeline_id"], pl.as_str());
    let stages = board["stages"].as_array().unwrap();
    let names: Vec<&str> = stages.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["Lead", "Proposal", "Won", "Empty"]);
    let total = |currency: &str, count: i64, value: &str, weighted: &str| json!({ "currency": currency, "count": count, "value": value, "weighted_value": weighted });
    assert_eq!(stages[0]["count"], 3);
    assert_eq!(
        stages[0]["totals"],
        json!([
            // 1350.75 × 10 % = 135.075 → 135.08 (half up)
            total("EUR", 2, "1350.75", "135.08"),
            total("USD", 1, "10.00", "1.00"),
        ])
    );
    let titles: Vec<&str> = stages[0]["deals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["title"].as_str().unwrap())
        .collect();
    assert_eq!(titles, ["c", "b", "a"], "newest first");
    assert_eq!(stages[1]["count"], 2);
    assert_eq!(
        stages[1]["totals"],
        json!([
            total("EUR", 1, "1000.01", "500.01"),
            total("JPY", 1, "1000", "500"),
        ])
    );
    assert_eq!(stages[2]["count"], 1);
    assert_eq!(
        stages[2]["totals"],
        json!([total("USD", 1, "99.99", "99.99")])
    );
    assert_eq!(stages[2]["deals"][0]["status"], "won");
    assert_eq!(stages[3]["count"], 0);
    assert_eq!(stages[3]["totals"], json!([]));
    assert_eq!(stages[3]["deals"], json!([]));
    assert_eq!(
        board["totals"],
        json!([
            total("EUR", 3, "2350.76", "635.09"),
            total("JPY", 1, "1000", "500"),
            total("USD", 2, "109.99", "100.99"),
        ])
    );

    // per_stage limits the listed deals, not the counts and totals.
    let (status, small) = app.get(&format!("{board_path}?per_stage=1"), t).await;
    assert_eq!(status, 200, "{small}");
    assert_eq!(small["stages"][0]["count"], 3);
    assert_eq!(small["stages"][0]["deals"].as_array().unwrap().len(), 1);
    assert_eq!(small["stages"][0]["deals"][0]["title"], "c");
    assert_eq!(small["stages"][1]["deals"].as_array().unwrap().len(), 1);
    assert_eq!(small["totals"], board["totals"]);
    for bad in ["0", "201", "x"] {
        let (status, err) = app.get(&format!("{board_path}?per_stage={bad}"), t).await;
        assert_eq!(status, 400, "{bad}: {err}");
    }
    let (_, open_only) = app.get(&format!("{board_path}?status=open"), t).await;
    assert_eq!(open_only["stages"][2]["count"], 0);
    assert_eq!(
        open_only["totals"],
        json!([
            total("EUR", 3, "2350.76", "635.09"),
            total("JPY", 1, "1000", "500"),
            total("USD", 1, "10.00", "1.00"),
        ])
    );

    // Moving a deal moves its value.
    let a = &stages[0]["deals"][2];
    let (status, _) = patch(
        &app,
        &format!(
            "/api/v1/workspaces/{ws}/deals/{}",
            a["id"].as_str().unwrap()
        ),
        t,
        json!({ "stage_id": proposal }),
    )
    .await;
    assert_eq!(status, 200);
    let (_, after) = app.get(&board_path, t).await;
    assert_eq!(
        after["stages"][1]["totals"][0],
        total("EUR", 2, "2250.51", "1125.26")
    );
    assert_eq!(after["stages"][0]["count"], 2);
});

backend_test!(custom_fields_on_deals, |app| async move {
    let owner = app.signup("custom-deals@example.com").await;
    let ws = app.workspace(&owner, "Custom").await;
    let t = owner.token.as_str();
    let (status, field) = app
        .post(
            &format!("/api/v1/workspaces/{ws}/fields"),
            t,
            json!({ "entity": "deal", "key": "source_system", "field_type": "single_select", "options": ["web", "phone"] }),
        )
        .await;
    assert_eq!(status, 201, "{field}");
    let p = sales_pipeline(&app, t, &ws).await;
    let base = format!("/api/v1/workspaces/{ws}/deals");

    let (status, err) = app
        .post(
            &base,
            t,
            json!({ "title": "Fax", "pipeline_id": p["id"], "custom": { "source_system": "fax" } }),
        )
        .await;
    assert_invalid(status, &err, "custom.source_system");
    let (status, err) = app
        .post(
            &base,
            t,
            json!({ "title": "Unknown", "pipeline_id": p["id"], "custom": { "nope": 1 } }),
        )
        .await;
    assert_eq!(status, 422, "{err}");
    assert_eq!(err["error"]["details"]["field"], "custom.nope");

    let deal = create_deal(
        &app,
        t,
        &ws,
        json!({ "title": "Web", "pipeline_id": p["id"], "custom": { "source_system": "web" } }),
    )
    .await;
    assert_eq!(deal["custom"], json!({ "source_system": "web" }));
    let path = format!("{base}/{}", deal["id"].as_str().unwrap());
    let (status, err) = patch(
        &app,
        &path,
        t,
        json!({ "custom": { "source_system": "x" } }),
    )
    .await;
    assert_invalid(status, &err, "custom.source_system");
    let (status, changed) = patch(
        &app,
        &path,
        t,
        json!({ "custom": { "source_system": "phone" } }),
    )
    .await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["custom"], json!({ "source_system": "phone" }));
    let (status, cleared) = patch(
        &app,
        &path,
        t,
        json!({ "custom": { "source_system": null } }),
    )
    .await;
    assert_eq!(status, 200, "{cleared}");
    assert_eq!(cleared["custom"], json!({}));
});

backend_test!(merged_contacts_keep_their_deals, |app| async move {
    let owner = app.signup("merge-deals@example.com").await;
    let ws = app.workspace(&owner, "Merge").await;
    let t = owner.token.as_str();
    let p = sales_pipeline(&app, t, &ws).await;
    let a = contact(&app, t, &ws, "a@example.com").await;
    let (status, b) = app
        .post(
            &format!("/api/v1/workspaces/{ws}/contacts"),
            t,
            json!({ "phones": ["+14155552671"] }),
        )
        .await;
    assert_eq!(status, 201, "{b}");
    let b = b["contact"]["id"].as_str().unwrap().to_owned();
    let deal = create_deal(
        &app,
        t,
        &ws,
        json!({ "title": "Both", "pipeline_id": p["id"], "contact_ids": [a, b, a] }),
    )
    .await;
    let mut both = vec![a.clone(), b.clone()];
    both.sort();
    assert_eq!(deal["contact_ids"], json!(both), "distinct");
    // One write naming both identifiers merges them into the older contact.
    let (status, merged) = app
        .post(
            &format!("/api/v1/workspaces/{ws}/contacts"),
            t,
            json!({ "emails": ["a@example.com"], "phones": ["+14155552671"] }),
        )
        .await;
    assert_eq!(status, 200, "{merged}");
    assert_eq!(merged["contact"]["id"], a.as_str());
    let (_, after) = app
        .get(
            &format!(
                "/api/v1/workspaces/{ws}/deals/{}",
                deal["id"].as_str().unwrap()
            ),
            t,
        )
        .await;
    assert_eq!(after["contact_ids"], json!([a]), "{after}");
    // The merged id still finds the deal, and links to the survivor.
    let (_, by_old) = app
        .get(&format!("/api/v1/workspaces/{ws}/deals?contact_id={b}"), t)
        .await;
    assert_eq!(by_old["data"].as_array().unwrap().len(), 1, "{by_old}");
    let later = create_deal(
        &app,
        t,
        &ws,
        json!({ "title": "Later", "pipeline_id": p["id"], "contact_ids": [b] }),
    )
    .await;
    assert_eq!(later["contact_ids"], json!([a]));
});

backend_test!(
    another_workspace_cannot_reach_pipelines_or_deals,
    |app| async move {
        let owner_a = app.signup("deals-a@example.com").await;
        let ws_a = app.workspace(&owner_a, "A").await;
        let owner_b = app.signup("deals-b@example.com").await;
        let ws_b = app.workspace(&owner_b, "B").await;
        let ta = owner_a.token.as_str();
        let tb = owner_b.token.as_str();
        let p = sales_pipeline(&app, ta, &ws_a).await;
        let pl = p["id"].as_str().unwrap().to_owned();
        let ana = contact(&app, ta, &ws_a, "ana-a@example.com").await;
        let deal = create_deal(
            &app,
            ta,
            &ws_a,
            json!({ "title": "A's", "pipeline_id": pl, "value": "10", "contact_ids": [ana] }),
        )
        .await;
        let deal_id = deal["id"].as_str().unwrap().to_owned();

        // Through B's own workspace, A's ids do not exist.
        let b = format!("/api/v1/workspaces/{ws_b}");
        for (path, code) in [
            (format!("{b}/pipelines/{pl}"), "pipeline_not_found"),
            (format!("{b}/pipelines/{pl}/board"), "pipeline_not_found"),
            (format!("{b}/deals/{deal_id}"), "deal_not_found"),
            (format!("{b}/deals/{deal_id}/history"), "deal_not_found"),
        ] {
            let (status, body) = app.get(&path, tb).await;
            assert_eq!(status, 404, "{path}: {body}");
            assert_eq!(body["error"]["code"], code, "{path}");
        }
        for (method, path, body, code) in [
            (
                Method::PATCH,
                format!("{b}/pipelines/{pl}"),
                Some(json!({ "name": "mine" })),
                "pipeline_not_found",
            ),
            (
                Method::DELETE,
                format!("{b}/pipelines/{pl}"),
                None,
                "pipeline_not_found",
            ),
            (
                Method::PATCH,
                format!("{b}/deals/{deal_id}"),
                Some(json!({ "title": "mine" })),
                "deal_not_found",
            ),
            (
                Method::DELETE,
                format!("{b}/deals/{deal_id}"),
                None,
                "deal_not_found",
            ),
        ] {
            let (status, answer) = app.call(method.clone(), &path, Some(tb), body).await;
            assert_eq!(status, 404, "{method} {path}: {answer}");
            assert_eq!(answer["error"]["code"], code);
        }
        // Nor can B point at them from its own objects.
        let (status, err) = app
            .post(
                &format!("{b}/deals"),
                tb,
                json!({ "title": "x", "pipeline_id": pl }),
            )
            .await;
        assert_invalid(status, &err, "pipeline_id");
        let own = sales_pipeline(&app, tb, &ws_b).await;
        let (status, err) = app
            .post(
                &format!("{b}/deals"),
                tb,
                json!({ "title": "x", "pipeline_id": own["id"], "contact_ids": [ana] }),
            )
            .await;
        assert_invalid(status, &err, "contact_ids");
        let (status, err) = app
            .post(
                &format!("{b}/deals"),
                tb,
                json!({ "title": "x", "pipeline_id": own["id"], "stage_id": stage(&p, "Demo") }),
            )
            .await;
        assert_invalid(status, &err, "stage_id");
        let (_, list) = app.get(&format!("{b}/deals?pipeline_id={pl}"), tb).await;
        assert_eq!(list["data"], json!([]));

        // Through A's workspace path, B is not a member.
        let a = format!("/api/v1/workspaces/{ws_a}");
        for path in [
            format!("{a}/pipelines"),
            format!("{a}/pipelines/{pl}"),
            format!("{a}/pipelines/{pl}/board"),
            format!("{a}/deals"),
            format!("{a}/deals/{deal_id}"),
            format!("{a}/deals/{deal_id}/history"),
        ] {
            assert_eq!(app.get(&path, tb).await.0, 404, "{path}");
        }

        // A's objects are untouched.
        let (_, still) = app.get(&format!("{a}/deals/{deal_id}"), ta).await;
        assert_eq!(still, deal);
        let (_, pipeline_still) = app.get(&format!("{a}/pipelines/{pl}"), ta).await;
        assert_eq!(pipeline_still["stages"], p["stages"]);
    }
);
