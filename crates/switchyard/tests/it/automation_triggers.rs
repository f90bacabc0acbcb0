//! The triggers that are not a single event: tracking hits from the event log (contact by GA
//! client id, or none), inactivity timers (restarted, superseded, cancelled), dates relative to
//! a contact field (changed → the old time does nothing), and loop protection between rules
//! that feed each other. Timers are durable jobs; the tests bring their `run_at` forward
//! instead of waiting.

use std::time::Duration;

use platform::with_db;
use reqwest::Method;
use serde_json::{Value, json};

use crate::automation::{Setup, eventually, setup, spawn};
use crate::support::{Backend, TestApp};

const HOST: &str = "track.automation.example.com";

/// One gtag request from browser `cid` with one event line.
async fn gtag(app: &TestApp, cid: &str, event: &[(&str, &str)]) {
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("v", "2")
        .append_pair("tid", "G-TEST123")
        .append_pair("cid", cid)
        .append_pair("sid", "1763800000")
        .append_pair("dl", "https://shop.example.com/checkout")
        .finish();
    let mut line = form_urlencoded::Serializer::new(String::new());
    for (k, v) in event {
        line.append_pair(k, v);
    }
    let resp = app
        .client
        .post(app.url(&format!("/g/collect?{query}")))
        .header("host", HOST)
        .header(
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) Chrome/131.0.0.0 Safari/537.36",
        )
        .body(line.finish())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
}

/// Jobs of `kind` by status.
async fn jobs(app: &TestApp, kind: &str) -> Vec<(String, String)> {
    with_db!(&app.state.db, pool => sqlx::query_as(
        "SELECT status, COALESCE(unique_key, '') FROM jobs WHERE kind = $1 ORDER BY created_at",
    ).bind(kind).fetch_all(pool).await)
    .unwrap()
}

/// Makes every queued job of `kind` due now (timers are minutes or hours away).
async fn bring_forward(app: &TestApp, kind: &str) -> u64 {
    with_db!(&app.state.db, pool => sqlx::query(
        "UPDATE jobs SET run_at = $1 WHERE kind = $2 AND status = 'queued'",
    ).bind(platform::Timestamp::now()).bind(kind).execute(pool).await.map(|r| r.rows_affected()))
    .unwrap()
}

/// Waits until no job of `kind` is queued or running.
async fn jobs_done(app: &TestApp, kind: &str) {
    eventually(&format!("{kind} jobs to finish"), || async {
        let all = jobs(app, kind).await;
        all.iter()
            .all(|(status, _)| status == "succeeded" || status == "dead")
            .then_some(())
    })
    .await;
}

async fn runs(app: &TestApp, s: &Setup, rule: &str) -> Vec<Value> {
    let (status, page) = app
        .get(
            &s.path(&format!("/automations/{rule}/runs?limit=100")),
            &s.owner.token,
        )
        .await;
    assert_eq!(status, 200, "{page}");
    page["data"].as_array().cloned().unwrap_or_default()
}

async fn tags(app: &TestApp, s: &Setup, contact: &str) -> Vec<Value> {
    s.contact(app, contact).await["tags"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Creates a rule expecting a 422 naming `field`.
async fn refused(app: &TestApp, s: &Setup, triggers: Value, field: &str) {
    let (status, err) = app
        .post(
            &s.path("/automations"),
            &s.owner.token,
            json!({"name": "bad", "triggers": triggers, "steps": [{"type": "add_tag", "tag": "x"}]}),
        )
        .await;
    assert_eq!(status, 422, "{err}");
    assert_eq!(err["error"]["code"], "validation_failed", "{err}");
    assert_eq!(err["error"]["details"]["field"], field, "{err}");
}

/// Another workspace sees neither the rule nor its run.
async fn other_workspace_sees_nothing(app: &TestApp, s: &Setup, rule: &str, run: &str) {
    let other = setup(app, &format!("other-{}", &rule[rule.len() - 6..])).await;
    for path in [
        format!("/api/v1/workspaces/{}/automations/{rule}", other.ws),
        format!(
            "/api/v1/workspaces/{}/automations/{rule}/runs/{run}",
            other.ws
        ),
    ] {
        let (status, err) = app.get(&path, &other.owner.token).await;
        assert_eq!(status, 404, "{path}: {err}");
    }
    // Nor with its own token on this workspace's paths.
    let (status, _) = app
        .get(&s.path(&format!("/automations/{rule}")), &other.owner.token)
        .await;
    assert!(status == 403 || status == 404, "{status}");
}

crate::automation_test!(
    a_tracking_hit_starts_one_run_per_rule_and_hit,
    |app| async move {
        let s = setup(&app, "auto-hits").await;
        let t = &s.owner.token;
        let (site_id, _, _) = app.site(&s.owner, &s.ws, HOST).await;
        refused(
            &app,
            &s,
            json!([{"type": "tracking", "event": ""}]),
            "triggers[0].event",
        )
        .await;
        refused(
            &app,
            &s,
            json!([{"type": "tracking", "event": "purchase", "site": "x"}]),
            "triggers[0]",
        )
        .await;
        refused(
            &app,
            &s,
            json!([{"type": "tracking", "event": "purchase", "site_id": "nope"}]),
            "triggers[0]",
        )
        .await;

        let rule = s
        .rule(&app, json!({
            "name": "Big purchase",
            "triggers": [{"type": "tracking", "event": "purchase", "site_id": site_id}],
            "conditions": {"field": "event.params.value", "op": "gte", "value": 10},
            "steps": [{"type": "if", "condition": {"field": "contact.email", "op": "exists"},
                       "then": [{"type": "add_tag", "tag": "buyer"},
                                {"type": "create_note", "body": "Bought for {{event.params.value}} {{event.currency}} on {{event.page.location}}"}]}],
        }))
        .await;
        // A rule for another site's purchases never fires on this one's.
        let elsewhere = s
        .rule(&app, json!({
            "name": "Other site",
            "triggers": [{"type": "tracking", "event": "purchase", "site_id": "site_01jdq9x3k5m2r8t4v6w0y1z2a3"}],
            "steps": [{"type": "add_tag", "tag": "elsewhere"}],
        }))
        .await;
        // "No visit for an hour": page views of a known contact arm its inactivity timer.
        s.rule(&app, json!({
            "name": "No visit for an hour",
            "triggers": [{"type": "inactivity", "minutes": 60, "after": ["tracking:page_view"]}],
            "steps": [{"type": "add_tag", "tag": "gone-quiet"}],
        }))
        .await;
        let (status, known) = app
            .post(
                &s.path("/contacts"),
                t,
                json!({"emails": ["shopper@example.com"], "ga_client_ids": ["111.222"]}),
            )
            .await;
        assert_eq!(status, 201, "{known}");
        let known = known["contact"]["id"].as_str().unwrap().to_owned();

        gtag(
            &app,
            "111.222",
            &[("en", "purchase"), ("epn.value", "25"), ("cu", "EUR")],
        )
        .await;
        gtag(&app, "111.222", &[("en", "purchase"), ("epn.value", "5")]).await; // fails the conditions
        gtag(&app, "111.222", &[("en", "page_view")]).await;
        gtag(&app, "111.222", &[("en", "scroll")]).await; // no rule wants it
        // A visitor nobody knows: looked up three times, then a run without a contact.
        gtag(&app, "999.888", &[("en", "purchase"), ("epn.value", "40")]).await;

        let all = s.settled_runs(&app, &rule, 2).await;
        assert_eq!(all.len(), 2, "{all:?}");
        let with = all
            .iter()
            .find(|r| r["contact_id"] == known.as_str())
            .expect("a run for the known contact");
        let without = all
            .iter()
            .find(|r| r["contact_id"].is_null())
            .expect("a run without a contact");
        assert_eq!(with["trigger"], "tracking:purchase");
        assert!(
            with["event"]["hit_id"]
                .as_str()
                .unwrap()
                .starts_with("hit_"),
            "{with}"
        );
        assert_eq!(with["event"]["site_id"], site_id.as_str());
        let with = s.run(&app, &rule, with["id"].as_str().unwrap()).await;
        assert_eq!(with["status"], "succeeded", "{with}");
        assert_eq!(
            with["steps"][2]["input"]["body"],
            "Bought for 25 EUR on https://shop.example.com/checkout"
        );
        assert!(tags(&app, &s, &known).await.contains(&json!("buyer")));
        let without = s.run(&app, &rule, without["id"].as_str().unwrap()).await;
        assert_eq!(without["status"], "succeeded", "{without}");
        assert_eq!(without["steps"][0]["output"]["branch"], "else");
        assert!(runs(&app, &s, &elsewhere).await.is_empty());

        // The log delivers again (a consumer that died before acknowledging): the hit jobs are
        // unique per hit, and even jobs made anew start no second run (runs are unique per rule
        // and hit).
        jobs_done(&app, "automation.hit").await;
        let hit_jobs = jobs(&app, "automation.hit").await.len();
        assert_eq!(hit_jobs, 4, "one per purchase and page_view hit");
        let timers = jobs(&app, "automation.inactivity").await;
        assert_eq!(timers.len(), 1, "{timers:?}");
        assert!(timers[0].1.ends_with(&format!("{known}:1")), "{timers:?}");
        with_db!(&app.state.db, pool => sqlx::query("UPDATE jobs SET unique_key = NULL WHERE kind = 'automation.hit'")
        .execute(pool).await.map(|_| ())).unwrap();
        let group = format!("redeliver-{}", uuid::Uuid::now_v7().simple());
        let mut sub = app.log.subscribe(&group).await.unwrap();
        let batch = sub
            .next_batch(500, Duration::from_millis(500))
            .await
            .unwrap();
        assert_eq!(batch.len(), 5);
        let engine =
            automation::Engine::new(app.state.db.clone(), automation::Plugins::new(), None);
        let consumer = automation::hits::HitConsumer::new(engine);
        tracking::log::BatchHandler::process(&consumer, &batch)
            .await
            .unwrap();
        tracking::log::BatchHandler::process(&consumer, &batch)
            .await
            .unwrap();
        eventually("the redelivered hits' jobs", || async {
            (jobs(&app, "automation.hit").await.len() == 2 * hit_jobs).then_some(())
        })
        .await;
        jobs_done(&app, "automation.hit").await;
        assert_eq!(runs(&app, &s, &rule).await.len(), 2);
        assert_eq!(
            jobs(&app, "automation.inactivity").await.len(),
            1,
            "a redelivered page view does not restart the timer"
        );
        assert_eq!(
            tags(&app, &s, &known)
                .await
                .iter()
                .filter(|t| *t == "buyer")
                .count(),
            1
        );

        other_workspace_sees_nothing(&app, &s, &rule, with["id"].as_str().unwrap()).await;
    }
);

crate::automation_test!(
    an_inactivity_timer_restarts_supersedes_and_cancels,
    |app| async move {
        let s = setup(&app, "auto-idle").await;
        let base = json!({"type": "inactivity", "minutes": 5, "after": ["custom:message_sent"]});
        refused(
            &app,
            &s,
            json!([{"type": "inactivity", "minutes": 0, "after": ["custom:message_sent"]}]),
            "triggers[0].minutes",
        )
        .await;
        refused(
            &app,
            &s,
            json!([{"type": "inactivity", "minutes": 5, "after": []}]),
            "triggers[0].after",
        )
        .await;
        refused(
            &app,
            &s,
            json!([{"type": "inactivity", "minutes": 5, "after": ["Bad Event"]}]),
            "triggers[0].after[0]",
        )
        .await;
        refused(&app, &s, json!([{"type": "inactivity", "minutes": 5, "after": ["custom:message_sent"], "unless": ["custom:message_sent"]}]), "triggers[0].unless[0]").await;
        refused(
            &app,
            &s,
            json!([base, {"type": "inactivity", "minutes": 9, "after": ["contact.created"]}]),
            "triggers[1]",
        )
        .await;

        let rule = s
        .rule(&app, json!({
            "name": "No reply in 5 minutes",
            "triggers": [{"type": "inactivity", "minutes": 5, "after": ["custom:message_sent"],
                          "unless": ["custom:message_received"]}],
            "conditions": {"field": "contact.tags", "op": "not_contains", "value": "do-not-chase"},
            "steps": [{"type": "add_tag", "tag": "no-reply"},
                      {"type": "create_note", "body": "Silent for {{event.minutes}} minutes"}],
        }))
        .await;
        let silent = s.new_contact(&app, "silent@example.com").await;
        let replied = s.new_contact(&app, "replied@example.com").await;
        let send = |contact: &str, trigger: &str| {
            let body = json!({"trigger": trigger, "contact_id": contact});
            let (app, s) = (&app, &s);
            async move { s.event(app, body).await }
        };
        let timers = || async { jobs(&app, "automation.inactivity").await };

        // Two messages to `silent`: the second restarts the timer, superseding the first job.
        send(&silent, "message_sent").await;
        eventually("the first timer", || async {
            (timers().await.len() == 1).then_some(())
        })
        .await;
        send(&silent, "message_sent").await;
        eventually("the restarted timer", || async {
            (timers().await.len() == 2).then_some(())
        })
        .await;
        // `replied` answers: the timer is cancelled.
        send(&replied, "message_sent").await;
        eventually("replied's timer", || async {
            (timers().await.len() == 3).then_some(())
        })
        .await;
        send(&replied, "message_received").await;
        eventually("the cancel", || async {
            let armed: Option<i64> = with_db!(&app.state.db, pool => sqlx::query_scalar(
            "SELECT generation FROM automation_timers WHERE due_at IS NULL AND generation = 2",
        ).fetch_optional(pool).await)
            .unwrap();
            armed.map(|_| ())
        })
        .await;
        let keys: Vec<String> = timers().await.into_iter().map(|(_, k)| k).collect();
        assert!(
            keys.iter().any(|k| k.ends_with(&format!("{silent}:2"))),
            "{keys:?}"
        );
        // Nothing runs before the time: the jobs are minutes away.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(runs(&app, &s, &rule).await.is_empty());

        assert_eq!(bring_forward(&app, "automation.inactivity").await, 3);
        jobs_done(&app, "automation.inactivity").await;
        let done = s.settled_runs(&app, &rule, 1).await;
        assert_eq!(
            done.len(),
            1,
            "one run: the superseded and the cancelled timers start none: {done:?}"
        );
        assert_eq!(done[0]["contact_id"], silent.as_str());
        assert_eq!(done[0]["trigger"], "inactivity");
        assert_eq!(done[0]["status"], "succeeded");
        let run = s.run(&app, &rule, done[0]["id"].as_str().unwrap()).await;
        assert_eq!(run["steps"][1]["input"]["body"], "Silent for 5 minutes");
        assert!(tags(&app, &s, &silent).await.contains(&json!("no-reply")));
        assert!(!tags(&app, &s, &replied).await.contains(&json!("no-reply")));

        // The next message starts a new timer; the conditions are read when it fires.
        let (status, _) = app
            .post(
                &s.path(&format!("/contacts/{silent}/tags")),
                &s.owner.token,
                json!({"tags": ["do-not-chase"]}),
            )
            .await;
        assert_eq!(status, 200);
        send(&silent, "message_sent").await;
        eventually("the next timer", || async {
            (timers().await.len() == 4).then_some(())
        })
        .await;
        bring_forward(&app, "automation.inactivity").await;
        jobs_done(&app, "automation.inactivity").await;
        assert_eq!(runs(&app, &s, &rule).await.len(), 1);

        other_workspace_sees_nothing(&app, &s, &rule, done[0]["id"].as_str().unwrap()).await;
    }
);

crate::automation_test!(
    a_date_trigger_fires_relative_to_a_contact_field,
    |app| async move {
        let s = setup(&app, "auto-date").await;
        let t = &s.owner.token;
        for (key, kind) in [("appointment_at", "datetime"), ("note_text", "text")] {
            let (status, field) = app
                .post(
                    &s.path("/fields"),
                    t,
                    json!({"entity": "contact", "key": key, "field_type": kind}),
                )
                .await;
            assert_eq!(status, 201, "{field}");
        }
        refused(
            &app,
            &s,
            json!([{"type": "date", "field": "appointment_at"}]),
            "triggers[0].field",
        )
        .await;
        refused(
            &app,
            &s,
            json!([{"type": "date", "field": "custom.nope"}]),
            "triggers[0].field",
        )
        .await;
        refused(
            &app,
            &s,
            json!([{"type": "date", "field": "custom.note_text"}]),
            "triggers[0].field",
        )
        .await;
        refused(
            &app,
            &s,
            json!([{"type": "date", "field": "custom.appointment_at", "time_zone": "Mars/Base"}]),
            "triggers[0].time_zone",
        )
        .await;
        refused(&app, &s, json!([{"type": "date", "field": "custom.appointment_at", "offset_minutes": 10_000_000}]), "triggers[0].offset_minutes").await;

        let rule = s
        .rule(&app, json!({
            "name": "1 hour before the appointment",
            "triggers": [{"type": "date", "field": "custom.appointment_at", "offset_minutes": -60}],
            "steps": [{"type": "add_tag", "tag": "reminded"},
                      {"type": "create_note", "body": "Appointment at {{event.value}}"}],
        }))
        .await;
        let at = |minutes: i64| {
            (chrono::Utc::now() + chrono::Duration::minutes(minutes))
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        };
        let contact = |email: &str, appointment: Option<String>| {
            let mut body = json!({"emails": [email]});
            if let Some(a) = appointment {
                body["custom"] = json!({"appointment_at": a});
            }
            let (app, path, t) = (&app, s.path("/contacts"), t.clone());
            async move {
                let (status, c) = app.post(&path, &t, body).await;
                assert_eq!(status, 201, "{c}");
                c["contact"]["id"].as_str().unwrap().to_owned()
            }
        };
        let dates = || async { jobs(&app, "automation.date").await };
        // Created with the field: due in an hour.
        let soon = contact("soon@example.com", Some(at(120))).await;
        eventually("soon's date job", || async {
            (dates().await.len() == 1).then_some(())
        })
        .await;
        // Already past (30 minutes away, an hour before is gone): not scheduled.
        let late = contact("late@example.com", Some(at(30))).await;
        // Set later, then moved: the first time does nothing when it comes.
        let moved = contact("moved@example.com", None).await;
        let first = at(180);
        let patch = |id: &str, value: String| {
            let (app, path, t) = (&app, s.path(&format!("/contacts/{id}")), t.clone());
            async move {
                let (status, c) = app
                    .call(
                        Method::PATCH,
                        &path,
                        Some(&t),
                        Some(json!({"custom": {"appointment_at": value}})),
                    )
                    .await;
                assert_eq!(status, 200, "{c}");
            }
        };
        patch(&moved, first.clone()).await;
        eventually("moved's first job", || async {
            (dates().await.len() == 2).then_some(())
        })
        .await;
        let second = at(240);
        patch(&moved, second.clone()).await;
        eventually("moved's second job", || async {
            (dates().await.len() == 3).then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(dates().await.len(), 3, "late@ got no job");

        assert_eq!(bring_forward(&app, "automation.date").await, 3);
        jobs_done(&app, "automation.date").await;
        let done = s.settled_runs(&app, &rule, 2).await;
        assert_eq!(done.len(), 2, "{done:?}");
        assert!(done.iter().all(|r| r["status"] == "succeeded"), "{done:?}");
        let of = |id: &str| done.iter().find(|r| r["contact_id"] == id).cloned();
        assert!(of(&soon).is_some() && of(&late).is_none());
        let moved_run = of(&moved).expect("moved's run");
        assert_eq!(moved_run["trigger"], "date:custom.appointment_at");
        let stored = s.contact(&app, &moved).await["custom"]["appointment_at"].clone();
        assert_eq!(moved_run["event"]["value"], stored);
        assert!(tags(&app, &s, &soon).await.contains(&json!("reminded")));
        assert!(!tags(&app, &s, &late).await.contains(&json!("reminded")));

        other_workspace_sees_nothing(&app, &s, &rule, moved_run["id"].as_str().unwrap()).await;
    }
);

crate::automation_test!(
    loop_protection_stops_rules_that_feed_each_other,
    |app| async move {
        let s = setup(&app, "auto-loop").await;
        let ping_pong = |name: &str, on: &str, then: &str| {
            json!({
                "name": name,
                "triggers": [{"type": "event", "event": "contact.tag_added"}],
                "conditions": {"field": "event.tag", "op": "eq", "value": on},
                "steps": [{"type": "remove_tag", "tag": then}, {"type": "add_tag", "tag": then}],
            })
        };
        let ping = s.rule(&app, ping_pong("ping → pong", "ping", "pong")).await;
        let pong = s.rule(&app, ping_pong("pong → ping", "pong", "ping")).await;
        let contact = s.new_contact(&app, "loop@example.com").await;
        let (status, _) = app
            .post(
                &s.path(&format!("/contacts/{contact}/tags")),
                &s.owner.token,
                json!({"tags": ["ping"]}),
            )
            .await;
        assert_eq!(status, 200);

        // ping (depth 0) → pong (1) → ping (2) → pong (3) → ping (4) → pong (5) → ping (6: skipped).
        let ping_runs = s.settled_runs(&app, &ping, 4).await;
        let pong_runs = s.settled_runs(&app, &pong, 3).await;
        let depths = |runs: &[Value]| {
            let mut d: Vec<(i64, String)> = runs
                .iter()
                .map(|r| {
                    (
                        r["depth"].as_i64().unwrap(),
                        r["status"].as_str().unwrap().to_owned(),
                    )
                })
                .collect();
            d.sort();
            d
        };
        let ok = |d: i64| (d, "succeeded".to_owned());
        assert_eq!(
            depths(&ping_runs),
            [ok(0), ok(2), ok(4), (6, "skipped".to_owned())],
            "{ping_runs:?}"
        );
        assert_eq!(depths(&pong_runs), [ok(1), ok(3), ok(5)], "{pong_runs:?}");
        let skipped = ping_runs.iter().find(|r| r["status"] == "skipped").unwrap();
        assert!(
            skipped["error"]
                .as_str()
                .unwrap()
                .contains("loop protection"),
            "{skipped}"
        );
        let skipped = s.run(&app, &ping, skipped["id"].as_str().unwrap()).await;
        assert_eq!(skipped["steps"], json!([]), "a skipped run ran no step");
        // And the chain has stopped.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(runs(&app, &s, &ping).await.len(), 4);
        assert_eq!(runs(&app, &s, &pong).await.len(), 3);
        // A person's change starts at depth 0 again.
        let (status, _) = app
            .call(
                Method::DELETE,
                &s.path(&format!("/contacts/{contact}/tags/pong")),
                Some(&s.owner.token),
                None,
            )
            .await;
        assert!(status == 200 || status == 204, "{status}");
        let (status, _) = app
            .post(
                &s.path(&format!("/contacts/{contact}/tags")),
                &s.owner.token,
                json!({"tags": ["pong"]}),
            )
            .await;
        assert_eq!(status, 200);
        let pong_runs = s.settled_runs(&app, &pong, 4).await;
        assert!(pong_runs.iter().any(|r| r["depth"] == 0), "{pong_runs:?}");

        other_workspace_sees_nothing(&app, &s, &ping, skipped["id"].as_str().unwrap()).await;

        // The OpenAPI document knows the new triggers and the skipped status.
        let doc: Value = app
            .client
            .get(app.url("/api/openapi.json"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let trigger = doc["components"]["schemas"]["Trigger"].to_string();
        for word in [
            "\"tracking\"",
            "\"site_id\"",
            "\"inactivity\"",
            "\"unless\"",
            "\"date\"",
            "\"offset_minutes\"",
        ] {
            assert!(
                trigger.contains(word),
                "{word} missing from the Trigger schema: {trigger}"
            );
        }
        let status = doc["components"]["schemas"]["RunStatus"].to_string();
        assert!(status.contains("skipped"), "{status}");
    }
);
