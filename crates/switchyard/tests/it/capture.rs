//! Capture end to end: a real GA4 form hit through the gateway, the event log and the capture
//! consumer, to a contact with the landing's attribution, a timeline and a `form.submitted` event
//! carrying the hit id; web sessions of a known visitor; failures counted on the rule; a
//! redelivered log changes nothing; the inspector suggests mappings from real traffic.

use std::time::Duration;

use platform::with_db;
use serde_json::{Value, json};

use crate::backend_test;
use crate::support::{TestApp, User};

const HOST: &str = "track.capture.example.com";
const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";

/// One gtag request for visitor `cid` in session `sid`, with one event line.
async fn gtag(app: &TestApp, cid: &str, page: &str, referrer: &str, event: &[(&str, &str)]) {
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("v", "2")
        .append_pair("tid", "G-TEST123")
        .append_pair("cid", cid)
        .append_pair("sid", "1763800000")
        .append_pair("dl", &format!("https://shop.example.com{page}"))
        .append_pair("dr", referrer)
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
        .header("cookie", "_fbp=fb.1.1763800000000.987654321")
        .body(line.finish())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
}

/// Polls `path` until `done` holds for its body.
async fn wait_for(app: &TestApp, user: &User, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    for _ in 0..150 {
        let (status, body) = app.get(path, &user.token).await;
        assert_eq!(status, 200, "{path}: {body}");
        if done(&body) {
            return body;
        }
        last = body;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting on {path}: {last}");
}

fn kinds(timeline: &Value) -> Vec<String> {
    timeline["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .collect()
}

backend_test!(
    form_hit_becomes_a_contact_with_attribution,
    |app| async move {
        let owner = app.signup("capture@example.com").await;
        let ws = app.workspace(&owner, "Capture").await;
        let t = owner.token.as_str();
        let base = format!("/api/v1/workspaces/{ws}");
        let (site_id, _, _) = app.site(&owner, &ws, HOST).await;
        let (status, _) = app
        .post(&format!("{base}/fields"), t, json!({ "entity": "contact", "key": "plan", "field_type": "single_select", "options": ["free", "pro"] }))
        .await;
        assert_eq!(status, 201);

        // Rules are validated: an identifier must be mapped, the site must be ours.
        let rule = json!({
            "site_id": site_id, "name": "Contact form", "event_name": "generate_lead",
            "url_pattern": "/contact*",
            "conditions": [{ "param": "form_id", "op": "equals", "value": "contact" }],
            "mappings": [
                { "source": "param:email", "target": "emails" },
                { "source": "param:phone", "target": "phones" },
                { "source": "param:name", "target": "name" },
                { "source": "param:plan", "target": "custom.plan" },
            ],
            "tags": ["website-lead"], "lifecycle_stage": "marketing_qualified_lead",
        });
        let mut no_identifier = rule.clone();
        no_identifier["mappings"] = json!([{ "source": "param:name", "target": "name" }]);
        let (status, err) = app
            .post(&format!("{base}/capture-rules"), t, no_identifier)
            .await;
        assert_eq!(status, 422, "{err}");
        assert_eq!(err["error"]["details"]["field"], "mappings");
        let other = app.signup("capture-other@example.com").await;
        let other_ws = app.workspace(&other, "Other").await;
        let (status, err) = app
            .post(
                &format!("/api/v1/workspaces/{other_ws}/capture-rules"),
                &other.token,
                rule.clone(),
            )
            .await;
        assert_eq!(status, 422, "{err}");
        assert_eq!(err["error"]["details"]["field"], "site_id");
        let (status, created) = app.post(&format!("{base}/capture-rules"), t, rule).await;
        assert_eq!(status, 201, "{created}");
        let rule_id = created["id"].as_str().unwrap().to_owned();

        // A visit from a Google Ads click, two pages, then the form.
        let cid = "1197596843.1763800000";
        gtag(
            &app,
            cid,
            "/?gclid=Cj0KCQtest&utm_source=google&utm_medium=cpc&utm_campaign=spring",
            "https://www.google.com/",
            &[("en", "page_view")],
        )
        .await;
        gtag(
            &app,
            cid,
            "/contact",
            "https://shop.example.com/",
            &[("en", "page_view")],
        )
        .await;
        // Another form on the same page does not match the rule's condition.
        gtag(
            &app,
            cid,
            "/contact",
            "https://shop.example.com/",
            &[
                ("en", "generate_lead"),
                ("ep.form_id", "newsletter"),
                ("ep.email", "news@example.com"),
            ],
        )
        .await;
        gtag(
            &app,
            cid,
            "/contact/",
            "https://shop.example.com/",
            &[
                ("en", "generate_lead"),
                ("ep.form_id", "contact"),
                ("ep.email", " Lia@Example.com"),
                ("ep.phone", "+1 415 555 2671"),
                ("ep.name", "Lia Souza"),
                ("ep.plan", "pro"),
            ],
        )
        .await;

        let list = wait_for(
            &app,
            &owner,
            &format!("{base}/contacts?email=lia@example.com"),
            |b| b["data"].as_array().is_some_and(|d| !d.is_empty()),
        )
        .await;
        let contact = &list["data"][0];
        let contact_id = contact["id"].as_str().unwrap().to_owned();
        assert_eq!(contact["emails"], json!(["lia@example.com"]));
        assert_eq!(contact["phones"], json!(["+14155552671"]));
        assert_eq!(contact["first_name"], "Lia");
        assert_eq!(contact["last_name"], "Souza");
        assert_eq!(contact["ga_client_ids"], json!([cid]));
        assert_eq!(contact["tags"], json!(["website-lead"]));
        assert_eq!(contact["lifecycle_stage"], "marketing_qualified_lead");
        assert_eq!(contact["custom"]["plan"], "pro");
        // The landing's attribution, though the form was sent two pages later.
        let first = &contact["first_touch"];
        assert_eq!(first["gclid"], "Cj0KCQtest", "{contact}");
        assert_eq!(first["source"], "google");
        assert_eq!(first["medium"], "cpc");
        assert_eq!(first["campaign"], "spring");
        assert!(
            first["landing_page"]
                .as_str()
                .unwrap()
                .contains("gclid=Cj0KCQtest")
        );
        assert_eq!(contact["last_touch"]["fbp"], "fb.1.1763800000000.987654321");
        assert!(contact["last_seen_at"].is_string());
        // The newsletter form made no contact.
        let (_, news) = app
            .get(&format!("{base}/contacts?email=news@example.com"), t)
            .await;
        assert_eq!(news["data"], json!([]));

        // The form is on the timeline and in the outbox, with the hit's id as the event id.
        let records = app.log_records().await;
        let form_hit = records
            .iter()
            .flat_map(|r| r.hits.iter())
            .find(|h| {
                h.event_name == "generate_lead"
                    && h.params.get("form_id").and_then(|v| v.as_str()) == Some("contact")
            })
            .expect("the form hit in the log");
        let timeline_path = format!("{base}/contacts/{contact_id}/timeline");
        let (_, timeline) = app.get(&timeline_path, t).await;
        let form = timeline["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["kind"] == "form.submitted")
            .expect("a form entry");
        assert_eq!(form["data"]["hit_id"], form_hit.id.to_string());
        assert_eq!(form["data"]["params"]["form_id"], "contact");
        let events: Vec<String> = with_db!(&app.state.db, pool => sqlx::query_scalar::<_, String>(
        "SELECT payload FROM outbox_events WHERE event_type = 'form.submitted'"
    ).fetch_all(pool).await)
        .unwrap();
        assert_eq!(events.len(), 1, "{events:?}");
        let event: Value = serde_json::from_str(&events[0]).unwrap();
        assert_eq!(event["event_id"], form_hit.id.to_string());
        assert_eq!(event["contact_id"], contact_id.as_str());

        // The known visitor's next pages grow one web session entry.
        gtag(
            &app,
            cid,
            "/pricing",
            "https://shop.example.com/contact/",
            &[("en", "page_view")],
        )
        .await;
        gtag(
            &app,
            cid,
            "/pricing/enterprise",
            "https://shop.example.com/pricing",
            &[("en", "page_view")],
        )
        .await;
        let timeline = wait_for(&app, &owner, &timeline_path, |b| {
            b["data"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["kind"] == "web.session" && e["data"]["page_views"] == 2)
        })
        .await;
        let session = timeline["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["kind"] == "web.session")
            .unwrap();
        assert_eq!(
            session["data"]["pages"],
            json!(["/pricing", "/pricing/enterprise"])
        );
        assert_eq!(
            kinds(&timeline)
                .iter()
                .filter(|k| *k == "web.session")
                .count(),
            1
        );

        // Segments over attribution, custom fields and web activity, with live counts.
        let segments = format!("{base}/segments");
        for (filter, expected) in [
            (
                json!({ "visited_path": "/pricing*", "visited_within_days": 7 }),
                1,
            ),
            (json!({ "visited_path": "/pricing" }), 1),
            (json!({ "visited_path": "/careers" }), 0),
            (
                json!({ "has_click_id": true, "source": "google", "medium": "cpc" }),
                1,
            ),
            (json!({ "has_click_id": false }), 0),
            (
                json!({ "custom": "plan:pro", "tag": "website-lead", "seen_within_days": 1 }),
                1,
            ),
            (json!({ "custom": "plan:free" }), 0),
        ] {
            let (status, segment) = app
                .post(
                    &segments,
                    t,
                    json!({ "name": "Segment", "filter": filter.clone() }),
                )
                .await;
            assert_eq!(status, 201, "{filter} → {segment}");
            assert_eq!(segment["count"], expected, "{filter}");
            let segment_id = segment["id"].as_str().unwrap();
            let (_, members) = app
                .get(&format!("{segments}/{segment_id}/contacts"), t)
                .await;
            assert_eq!(
                members["data"].as_array().unwrap().len(),
                expected as usize,
                "{filter}"
            );
        }
        let (status, err) = app
            .post(
                &segments,
                t,
                json!({ "name": "Bad", "filter": { "sort": "name" } }),
            )
            .await;
        assert_eq!(status, 422, "{err}");
        assert_eq!(err["error"]["details"]["field"], "filter");
        let (_, all) = app.get(&segments, t).await;
        assert_eq!(all["data"].as_array().unwrap().len(), 7);

        // A mistyped email is counted on the rule with the reason, and makes no contact.
        gtag(
            &app,
            "555.666",
            "/contact",
            "",
            &[
                ("en", "generate_lead"),
                ("ep.form_id", "contact"),
                ("ep.email", "lia at example"),
            ],
        )
        .await;
        let rule = wait_for(
            &app,
            &owner,
            &format!("{base}/capture-rules/{rule_id}"),
            |b| b["failed_count"] == 1,
        )
        .await;
        assert_eq!(rule["matched_count"], 1);
        assert!(
            rule["last_error"].as_str().unwrap().contains("emails"),
            "{rule}"
        );

        // The whole log delivered again (a crash before acknowledging) changes nothing.
        let before = app.get(&timeline_path, t).await.1;
        let capturer = crm::capture::consumer::Capturer::new(
            app.state.db.clone(),
            tracking::enrich::Enricher::new(None).unwrap(),
        );
        let mut sub = app.log.subscribe("capture-replay").await.unwrap();
        loop {
            let batch = sub
                .next_batch(500, Duration::from_millis(200))
                .await
                .unwrap();
            if batch.is_empty() {
                break;
            }
            capturer.process_batch(&batch).await.unwrap();
            sub.ack(&batch).await.unwrap();
        }
        let after = app.get(&timeline_path, t).await.1;
        assert_eq!(before["data"], after["data"]);
        let (_, rule) = app.get(&format!("{base}/capture-rules/{rule_id}"), t).await;
        assert_eq!(
            (
                rule["matched_count"].as_i64(),
                rule["failed_count"].as_i64()
            ),
            (Some(1), Some(1)),
            "{rule}"
        );

        // The inspector shows recent form events and proposes mappings from their values.
        let inspect = wait_for(
            &app,
            &owner,
            &format!("{base}/sites/{site_id}/capture/inspect?event_name=generate_lead"),
            |b| b["events"].as_array().is_some_and(|e| e.len() >= 3),
        )
        .await;
        let suggestions = inspect["suggested_mappings"].as_array().unwrap();
        let target = |source: &str| {
            suggestions
                .iter()
                .find(|s| s["source"] == source)
                .map(|s| s["target"].clone())
        };
        assert_eq!(target("param:email"), Some(json!("emails")), "{inspect}");
        assert_eq!(target("param:phone"), Some(json!("phones")));
        assert_eq!(target("param:name"), Some(json!("name")));
        assert_eq!(inspect["event_names"]["generate_lead"], 3);

        // Another workspace sees neither the rule nor the inspector.
        let (status, _) = app
            .get(
                &format!("/api/v1/workspaces/{other_ws}/capture-rules/{rule_id}"),
                &other.token,
            )
            .await;
        assert_eq!(status, 404);
        let (status, _) = app
            .get(
                &format!("/api/v1/workspaces/{other_ws}/sites/{site_id}/capture/inspect"),
                &other.token,
            )
            .await;
        assert_eq!(status, 404);
    }
);
