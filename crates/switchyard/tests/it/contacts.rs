//! The contacts API: identity resolution and merges (including a chain of three), normalization,
//! custom field validation, tags, search, companies, the batch endpoint, domain events.

use platform::with_db;
use reqwest::Method;
use serde_json::{Value, json};

use crate::backend_test;
use crate::support::TestApp;

async fn upsert(app: &TestApp, token: &str, ws: &str, body: Value) -> (u16, Value) {
    app.post(&format!("/api/v1/workspaces/{ws}/contacts"), token, body)
        .await
}

fn id(v: &Value) -> String {
    v["contact"]["id"].as_str().expect("contact id").to_owned()
}

async fn event_types(app: &TestApp) -> Vec<String> {
    with_db!(&app.state.db, pool => sqlx::query_scalar::<_, String>(
        "SELECT event_type FROM outbox_events ORDER BY id"
    ).fetch_all(pool).await)
    .unwrap()
}

backend_test!(
    identity_resolution_merges_a_chain_of_three,
    |app| async move {
        let owner = app.signup("crm@example.com").await;
        let ws = app.workspace(&owner, "CRM").await;
        let t = owner.token.as_str();

        // Three people as far as we know: an email, a phone, a GA client id.
        let (status, a) = upsert(
        &app,
        t,
        &ws,
        json!({
            "emails": ["  Ana@Example.COM "],
            "touch": { "source": "google", "medium": "cpc", "gclid": "Cj0KCQ", "at": "2026-11-01T10:00:00Z" },
        }),
    )
    .await;
        assert_eq!(status, 201, "{a}");
        assert_eq!(a["created"], true);
        assert_eq!(a["contact"]["emails"], json!(["ana@example.com"]));
        let (status, b) = upsert(
        &app,
        t,
        &ws,
        json!({
            "first_name": "Ana", "phones": ["+1 (415) 555-2671"], "lifecycle_stage": "customer",
            "touch": { "source": "facebook", "medium": "paid_social", "fbc": "fb.1.1700000000.abc", "at": "2026-11-05T10:00:00Z" },
            "tags": ["vip"], "lead_score": 40,
        }),
    )
    .await;
        assert_eq!(status, 201, "{b}");
        let (status, c) = upsert(
        &app,
        t,
        &ws,
        json!({ "ga_client_ids": ["1234567.7654321"], "last_name": "Silva", "tags": ["newsletter"] }),
    )
    .await;
        assert_eq!(status, 201, "{c}");
        let (a_id, b_id, c_id) = (id(&a), id(&b), id(&c));
        assert!(a_id.starts_with("ct_"));

        // The same email again, differently written: the same contact, updated.
        let (status, again) = upsert(&app, t, &ws, json!({ "emails": ["ANA@example.com"] })).await;
        assert_eq!(status, 200, "{again}");
        assert_eq!(id(&again), a_id);
        assert_eq!(again["created"], false);

        // One form submission joins the email and the phone (written nationally): A and B merge,
        // the oldest (A) survives and takes B's name, stage, score, tags and touches.
        let (status, ab) = upsert(
            &app,
            t,
            &ws,
            json!({ "emails": ["ana@example.com"], "phones": ["(415) 555-2671"] }),
        )
        .await;
        assert_eq!(status, 200, "{ab}");
        assert_eq!(id(&ab), a_id);
        assert_eq!(ab["merged"], json!([b_id]));
        let contact = &ab["contact"];
        assert_eq!(contact["first_name"], "Ana");
        assert_eq!(contact["phones"], json!(["+14155552671"]));
        assert_eq!(contact["lifecycle_stage"], "customer");
        assert_eq!(contact["lead_score"], 40);
        assert_eq!(contact["tags"], json!(["vip"]));
        assert_eq!(contact["first_touch"]["gclid"], "Cj0KCQ");
        assert_eq!(contact["last_touch"]["fbc"], "fb.1.1700000000.abc");

        // Then the phone and the GA client id: C joins too (a chain of three).
        let (status, abc) = upsert(
            &app,
            t,
            &ws,
            json!({ "phones": ["+14155552671"], "ga_client_ids": ["1234567.7654321"] }),
        )
        .await;
        assert_eq!(status, 200, "{abc}");
        assert_eq!(id(&abc), a_id);
        assert_eq!(abc["merged"], json!([c_id]));
        let contact = &abc["contact"];
        assert_eq!(contact["last_name"], "Silva");
        assert_eq!(contact["emails"], json!(["ana@example.com"]));
        assert_eq!(contact["ga_client_ids"], json!(["1234567.7654321"]));
        assert_eq!(contact["tags"], json!(["newsletter", "vip"]));

        // Old ids keep resolving to the survivor; the list has one contact.
        for old in [&b_id, &c_id] {
            let (status, got) = app
                .get(&format!("/api/v1/workspaces/{ws}/contacts/{old}"), t)
                .await;
            assert_eq!(status, 200, "{got}");
            assert_eq!(got["id"], a_id.as_str());
        }
        let (_, list) = app
            .get(&format!("/api/v1/workspaces/{ws}/contacts"), t)
            .await;
        assert_eq!(list["data"].as_array().unwrap().len(), 1, "{list}");

        // The timeline tells the story, with both merges and B's and C's history moved over.
        let (status, timeline) = app
            .get(
                &format!("/api/v1/workspaces/{ws}/contacts/{c_id}/timeline"),
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
        assert_eq!(
            kinds.iter().filter(|k| **k == "contact.merged").count(),
            2,
            "{kinds:?}"
        );
        assert_eq!(
            kinds.iter().filter(|k| **k == "contact.created").count(),
            3,
            "{kinds:?}"
        );
        assert!(kinds.contains(&"tag.added"), "{kinds:?}");
        assert!(
            timeline["data"]
                .as_array()
                .unwrap()
                .iter()
                .all(|e| e["contact_id"] == a_id.as_str())
        );

        // A manual merge of a fourth contact into A, and of an already merged id (a no-op).
        let (_, d) = upsert(&app, t, &ws, json!({ "external_ids": ["crm-42"] })).await;
        let d_id = id(&d);
        let (status, merged) = app
            .post(
                &format!("/api/v1/workspaces/{ws}/contacts/{a_id}/merge"),
                t,
                json!({ "contact_ids": [d_id, b_id] }),
            )
            .await;
        assert_eq!(status, 200, "{merged}");
        assert_eq!(merged["merged"], json!([d_id]));
        assert_eq!(merged["contact"]["external_ids"], json!(["crm-42"]));

        // Every change is a domain event.
        let events = event_types(&app).await;
        assert_eq!(events.iter().filter(|e| *e == "contact.created").count(), 4);
        assert_eq!(events.iter().filter(|e| *e == "contact.merged").count(), 3);
        assert!(events.iter().any(|e| e == "contact.tag_added"));
    }
);

backend_test!(identifiers_are_normalized_and_validated, |app| async move {
    let owner = app.signup("norm@example.com").await;
    let ws = app.workspace(&owner, "Norm").await;
    let t = owner.token.as_str();

    // Phones without a country code are read with the workspace's region.
    let (status, settings) = app
        .call(
            Method::PUT,
            &format!("/api/v1/workspaces/{ws}/crm/settings"),
            Some(t),
            Some(json!({ "default_region": "br" })),
        )
        .await;
    assert_eq!(status, 200, "{settings}");
    assert_eq!(settings["default_region"], "BR");
    let (status, c) = upsert(&app, t, &ws, json!({ "phones": ["(11) 96123-4567"] })).await;
    assert_eq!(status, 201, "{c}");
    assert_eq!(c["contact"]["phones"], json!(["+5511961234567"]));

    let stranger = app.signup("stranger@example.com").await;
    for (body, field) in [
        (json!({ "emails": ["not-an-email"] }), "emails"),
        (json!({ "phones": ["12"] }), "phones"),
        (json!({ "tags": [" "] }), "tags"),
        (json!({ "first_name": "x".repeat(201) }), "first_name"),
        (json!({ "lead_score": 5_000_000 }), "lead_score"),
        (json!({ "owner_id": stranger.id }), "owner_id"),
    ] {
        let (status, err) = upsert(&app, t, &ws, body.clone()).await;
        assert_eq!(status, 422, "{body} → {err}");
        assert_eq!(err["error"]["details"]["field"], field, "{err}");
    }
    // Unknown fields and wrong types are refused before anything runs.
    let (status, err) = upsert(&app, t, &ws, json!({ "emails": "a@b.co" })).await;
    assert_eq!(status, 422, "{err}");
    let (status, _) = upsert(&app, t, &ws, json!({ "nickname": "x" })).await;
    assert_eq!(status, 422);
    // Nothing was written by the failures.
    let (_, list) = app
        .get(&format!("/api/v1/workspaces/{ws}/contacts"), t)
        .await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);

    // PATCH replaces lists; an identifier of another contact is a 409 naming that contact.
    let c_id = id(&c);
    let (_, other) = upsert(&app, t, &ws, json!({ "emails": ["other@example.com"] })).await;
    let (status, err) = app
        .call(
            Method::PATCH,
            &format!("/api/v1/workspaces/{ws}/contacts/{c_id}"),
            Some(t),
            Some(json!({ "emails": ["Other@Example.com"] })),
        )
        .await;
    assert_eq!(status, 409, "{err}");
    assert_eq!(err["error"]["code"], "identifier_taken");
    assert_eq!(err["error"]["details"]["contact_id"], id(&other).as_str());
    let (status, patched) = app
        .call(
            Method::PATCH,
            &format!("/api/v1/workspaces/{ws}/contacts/{c_id}"),
            Some(t),
            Some(json!({ "emails": ["mine@example.com"], "phones": [], "first_name": "Bia" })),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["emails"], json!(["mine@example.com"]));
    assert_eq!(patched["phones"], json!([]));
    // The field change is on the timeline with who made it.
    let (_, timeline) = app
        .get(
            &format!("/api/v1/workspaces/{ws}/contacts/{c_id}/timeline"),
            t,
        )
        .await;
    let update = timeline["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "contact.updated")
        .expect("an update entry");
    assert_eq!(update["actor"], owner.id.as_str());
    assert_eq!(update["data"]["changes"]["first_name"]["to"], "Bia");
    assert_eq!(
        update["data"]["changes"]["emails"]["to"],
        json!(["mine@example.com"])
    );
});

backend_test!(custom_fields_are_validated_on_write, |app| async move {
    let owner = app.signup("fields@example.com").await;
    let ws = app.workspace(&owner, "Fields").await;
    let t = owner.token.as_str();
    let fields = format!("/api/v1/workspaces/{ws}/fields");
    for def in [
        json!({ "entity": "contact", "key": "plan", "field_type": "single_select", "options": ["free", "pro"] }),
        json!({ "entity": "contact", "key": "interests", "field_type": "multi_select", "options": ["seo", "ads", "crm"] }),
        json!({ "entity": "contact", "key": "budget", "field_type": "money" }),
        json!({ "entity": "contact", "key": "seats", "field_type": "number" }),
        json!({ "entity": "contact", "key": "birthday", "field_type": "date" }),
        json!({ "entity": "contact", "key": "appointment_at", "field_type": "datetime" }),
        json!({ "entity": "contact", "key": "consent", "field_type": "boolean" }),
        json!({ "entity": "contact", "key": "website", "field_type": "url" }),
        json!({ "entity": "contact", "key": "work_email", "field_type": "email" }),
        json!({ "entity": "contact", "key": "office_phone", "field_type": "phone" }),
        json!({ "entity": "contact", "key": "bio", "field_type": "long_text" }),
        json!({ "entity": "contact", "key": "nickname", "field_type": "text" }),
    ] {
        let (status, body) = app.post(&fields, t, def.clone()).await;
        assert_eq!(status, 201, "{def} → {body}");
    }
    // Definitions are validated too.
    let (status, err) = app
        .post(
            &fields,
            t,
            json!({ "entity": "contact", "key": "plan", "field_type": "text" }),
        )
        .await;
    assert_eq!(status, 409, "{err}");
    for (def, field) in [
        (
            json!({ "entity": "contact", "key": "Bad Key", "field_type": "text" }),
            "key",
        ),
        (
            json!({ "entity": "contact", "key": "tier", "field_type": "single_select" }),
            "options",
        ),
        (
            json!({ "entity": "contact", "key": "age", "field_type": "number", "options": ["x"] }),
            "options",
        ),
    ] {
        let (status, err) = app.post(&fields, t, def).await;
        assert_eq!(status, 422, "{err}");
        assert_eq!(err["error"]["details"]["field"], field);
    }

    let good = json!({
        "plan": "pro", "interests": ["seo", "crm"], "budget": { "amount": "1250.50", "currency": "eur" },
        "seats": 12, "birthday": "1990-04-01", "appointment_at": "2026-11-23T10:30:00-03:00",
        "consent": true, "website": "https://ana.example.com", "work_email": " Ana@Work.example.com",
        "office_phone": "+44 20 7946 0958", "bio": "Line one\nLine two", "nickname": "Aninha",
    });
    let (status, created) = upsert(
        &app,
        t,
        &ws,
        json!({ "emails": ["ana@example.com"], "custom": good }),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let custom = &created["contact"]["custom"];
    assert_eq!(
        custom["budget"],
        json!({ "amount": "1250.50", "currency": "EUR" })
    );
    assert_eq!(custom["appointment_at"], "2026-11-23T13:30:00Z");
    assert_eq!(custom["work_email"], "ana@work.example.com");
    assert_eq!(custom["office_phone"], "+442079460958");
    assert_eq!(custom["website"], "https://ana.example.com/");

    for (key, bad) in [
        ("plan", json!("enterprise")),
        ("interests", json!(["seo", "seo"])),
        ("interests", json!("seo")),
        ("budget", json!({ "amount": "1e5", "currency": "EUR" })),
        ("budget", json!({ "amount": "10", "currency": "euro" })),
        ("seats", json!("12")),
        ("birthday", json!("01/04/1990")),
        ("appointment_at", json!("tomorrow")),
        ("consent", json!("yes")),
        ("website", json!("javascript:alert(1)")),
        ("work_email", json!("nope")),
        ("office_phone", json!("123")),
        ("nickname", json!("two\nlines")),
    ] {
        let (status, err) = upsert(
            &app,
            t,
            &ws,
            json!({ "emails": ["ana@example.com"], "custom": { key: bad } }),
        )
        .await;
        assert_eq!(status, 422, "{key}={bad} → {err}");
        assert_eq!(
            err["error"]["details"]["field"],
            format!("custom.{key}"),
            "{err}"
        );
    }
    let (status, err) = upsert(&app, t, &ws, json!({ "custom": { "shoe_size": 42 } })).await;
    assert_eq!(status, 422);
    assert_eq!(err["error"]["code"], "unknown_custom_field");
    assert_eq!(err["error"]["details"]["field"], "custom.shoe_size");

    // `null` clears a value; other values stay.
    let (_, cleared) = upsert(
        &app,
        t,
        &ws,
        json!({ "emails": ["ana@example.com"], "custom": { "nickname": null } }),
    )
    .await;
    assert!(cleared["contact"]["custom"].get("nickname").is_none());
    assert_eq!(cleared["contact"]["custom"]["plan"], "pro");

    // A required field must be there on create, and cannot be cleared.
    let (status, _) = app
        .post(&fields, t, json!({ "entity": "contact", "key": "source_code", "field_type": "text", "required": true }))
        .await;
    assert_eq!(status, 201);
    let (status, err) = upsert(&app, t, &ws, json!({ "emails": ["new@example.com"] })).await;
    assert_eq!(status, 422, "{err}");
    assert_eq!(err["error"]["details"]["field"], "custom.source_code");
    let (status, err) = upsert(
        &app,
        t,
        &ws,
        json!({ "emails": ["ana@example.com"], "custom": { "source_code": null } }),
    )
    .await;
    assert_eq!(status, 422, "{err}");
    let (status, _) = upsert(
        &app,
        t,
        &ws,
        json!({ "emails": ["new@example.com"], "custom": { "source_code": "fb-1" } }),
    )
    .await;
    assert_eq!(status, 201);
});

backend_test!(tags_search_companies_and_batches, |app| async move {
    let owner = app.signup("tags@example.com").await;
    let ws = app.workspace(&owner, "Tags").await;
    let t = owner.token.as_str();
    let base = format!("/api/v1/workspaces/{ws}");

    // Companies: domain normalized and unique in the workspace.
    let (status, acme) = app
        .post(
            &format!("{base}/companies"),
            t,
            json!({ "name": "Acme Corp", "domain": "https://www.Acme.io/about" }),
        )
        .await;
    assert_eq!(status, 201, "{acme}");
    assert_eq!(acme["domain"], "acme.io");
    let acme_id = acme["id"].as_str().unwrap().to_owned();
    let (status, err) = app
        .post(
            &format!("{base}/companies"),
            t,
            json!({ "name": "Acme again", "domain": "acme.io" }),
        )
        .await;
    assert_eq!(status, 409, "{err}");
    assert_eq!(err["error"]["code"], "domain_taken");

    let (_, ana) = upsert(&app, t, &ws, json!({ "first_name": "Ana", "last_name": "Silva", "emails": ["ana@acme.io"], "company_id": acme_id, "tags": ["lead"] })).await;
    let (_, bob) = upsert(
        &app,
        t,
        &ws,
        json!({ "first_name": "Bob", "emails": ["bob_1@example.com"], "tags": ["lead", "vip"] }),
    )
    .await;
    let (_, _cid) = upsert(
        &app,
        t,
        &ws,
        json!({ "first_name": "Carla", "phones": ["+14155550100"] }),
    )
    .await;
    let ana_id = id(&ana);

    let names = |v: &Value| -> Vec<String> {
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["first_name"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    for (query, expected) in [
        ("tag=lead", vec!["Bob", "Ana"]),
        ("tag=vip", vec!["Bob"]),
        ("q=silva", vec!["Ana"]),
        ("q=ACME", vec!["Ana"]),
        ("q=bob_", vec!["Bob"]),
        ("q=%25", vec![]),
        ("q=5550100", vec!["Carla"]),
        ("email=ANA@acme.io", vec!["Ana"]),
        ("phone=(415)%20555-0100", vec!["Carla"]),
        (&format!("company_id={acme_id}"), vec!["Ana"]),
        ("lifecycle_stage=lead&limit=2", vec!["Carla", "Bob"]),
    ] {
        let (status, list) = app.get(&format!("{base}/contacts?{query}"), t).await;
        assert_eq!(status, 200, "{query}: {list}");
        assert_eq!(names(&list), expected, "{query}");
    }
    let (status, err) = app
        .get(&format!("{base}/contacts?lifecycle_stage=boss"), t)
        .await;
    assert_eq!(status, 400, "{err}");

    // Sorting, with keyset paging that follows the sort.
    for (who, score) in [(&ana, 30), (&bob, 80)] {
        let (status, _) = app
            .call(
                Method::PATCH,
                &format!("{base}/contacts/{}", id(who)),
                Some(t),
                Some(json!({ "lead_score": score })),
            )
            .await;
        assert_eq!(status, 200);
    }
    let (_, page1) = app
        .get(&format!("{base}/contacts?sort=-lead_score&limit=2"), t)
        .await;
    assert_eq!(names(&page1), vec!["Bob", "Ana"]);
    let cursor = page1["next_cursor"].as_str().unwrap();
    let (_, page2) = app
        .get(
            &format!("{base}/contacts?sort=-lead_score&limit=2&cursor={cursor}"),
            t,
        )
        .await;
    assert_eq!(names(&page2), vec!["Carla"]);
    assert_eq!(page2["next_cursor"], Value::Null);
    let (_, asc) = app
        .get(&format!("{base}/contacts?sort=lead_score"), t)
        .await;
    assert_eq!(names(&asc), vec!["Carla", "Ana", "Bob"]);
    let (status, err) = app.get(&format!("{base}/contacts?sort=name"), t).await;
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["error"]["code"], "invalid_sort");

    // Tags: add (idempotent), remove, 404 for a tag the contact does not have.
    let (status, tagged) = app
        .post(
            &format!("{base}/contacts/{ana_id}/tags"),
            t,
            json!({ "tags": ["vip", " lead "] }),
        )
        .await;
    assert_eq!(status, 200, "{tagged}");
    assert_eq!(tagged["tags"], json!(["lead", "vip"]));
    let (status, _) = app
        .call(
            Method::DELETE,
            &format!("{base}/contacts/{ana_id}/tags/lead"),
            Some(t),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, err) = app
        .call(
            Method::DELETE,
            &format!("{base}/contacts/{ana_id}/tags/lead"),
            Some(t),
            None,
        )
        .await;
    assert_eq!(status, 404, "{err}");
    assert_eq!(err["error"]["code"], "tag_not_found");
    let events = event_types(&app).await;
    assert_eq!(
        events
            .iter()
            .filter(|e| *e == "contact.tag_removed")
            .count(),
        1
    );

    // Deleting the company unlinks its contacts.
    let (status, _) = app
        .call(
            Method::DELETE,
            &format!("{base}/companies/{acme_id}"),
            Some(t),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (_, got) = app.get(&format!("{base}/contacts/{ana_id}"), t).await;
    assert_eq!(got["company_id"], Value::Null);

    // Batch: items resolve like single upserts; a bad item is reported in place.
    let (status, batch) = app
        .post(
            &format!("{base}/contacts/batch"),
            t,
            json!({ "contacts": [
                { "emails": ["ana@acme.io"], "tags": ["batch"] },
                { "emails": ["broken"] },
                { "emails": ["dora@example.com"] },
                { "emails": ["dora@example.com"], "first_name": "Dora" },
                { "unknown": 1 },
            ] }),
        )
        .await;
    assert_eq!(status, 200, "{batch}");
    assert_eq!(
        (
            batch["created"].as_u64(),
            batch["updated"].as_u64(),
            batch["failed"].as_u64()
        ),
        (Some(1), Some(2), Some(2)),
        "{batch}"
    );
    assert_eq!(batch["items"][0]["contact_id"], ana_id.as_str());
    assert_eq!(batch["items"][1]["error"]["details"]["field"], "emails");
    assert_eq!(
        batch["items"][2]["contact_id"],
        batch["items"][3]["contact_id"]
    );
    let (_, dora) = app
        .get(&format!("{base}/contacts?email=dora@example.com"), t)
        .await;
    assert_eq!(names(&dora), vec!["Dora"]);

    // Viewers read but do not write.
    let (viewer_key, _) = app.api_key(&owner, &ws, "viewer").await;
    let (status, _) = app.get(&format!("{base}/contacts"), &viewer_key).await;
    assert_eq!(status, 200);
    let (status, _) = upsert(
        &app,
        &viewer_key,
        &ws,
        json!({ "emails": ["x@example.com"] }),
    )
    .await;
    assert_eq!(status, 403);

    // Delete: the contact and ids merged into it are gone.
    let (status, _) = app
        .call(
            Method::DELETE,
            &format!("{base}/contacts/{ana_id}"),
            Some(t),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, _) = app.get(&format!("{base}/contacts/{ana_id}"), t).await;
    assert_eq!(status, 404);
    let _ = bob;
});

backend_test!(
    concurrent_upserts_of_one_person_make_one_contact,
    |app| async move {
        let owner = app.signup("race@example.com").await;
        let ws = app.workspace(&owner, "Race").await;
        // Sixteen forms at once, all naming one new email, each with its own phone.
        let mut tasks = Vec::new();
        for i in 0..16 {
            let (client, url, token) = (
                app.client.clone(),
                app.url(&format!("/api/v1/workspaces/{ws}/contacts")),
                owner.token.clone(),
            );
            tasks.push(tokio::spawn(async move {
            let resp = client
                .post(url)
                .bearer_auth(token)
                .json(&json!({ "emails": ["same@example.com"], "phones": [format!("+1415555{:04}", 1000 + i)] }))
                .send()
                .await
                .unwrap();
            resp.status().as_u16()
        }));
        }
        for task in tasks {
            let status = task.await.unwrap();
            assert!(status == 200 || status == 201, "status {status}");
        }
        let (_, list) = app
            .get(&format!("/api/v1/workspaces/{ws}/contacts"), &owner.token)
            .await;
        let data = list["data"].as_array().unwrap();
        assert_eq!(data.len(), 1, "{list}");
        assert_eq!(data[0]["emails"], json!(["same@example.com"]));
        assert_eq!(data[0]["phones"].as_array().unwrap().len(), 16);
    }
);
