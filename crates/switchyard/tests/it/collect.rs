//! The tracking gateway over HTTP: GA4 gtag, Measurement Protocol, Segment, CORS, gzip, limits,
//! usage — and what lands in the event log (SQLite, and NATS JetStream when available).

use std::io::Write;

use serde_json::{Value, json};

use crate::backend_test;
use crate::support::{Backend, TestApp, nats_log_url};

const HOST: &str = "track.shop.example.com";
const UA: &str = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";

/// A realistic gtag hit: shared parameters in the URL, two events in the body.
const GA4_QUERY: &str = "v=2&tid=G-TEST123&gtm=45je4bk0v9&_p=1732251234567&cid=1234567890.1732251200\
    &ul=en-us&sr=1920x1080&sid=1732251200&sct=3&seg=1&_s=2\
    &dl=https%3A%2F%2Fshop.example.com%2Fshoes%3Futm_source%3Dgoogle%26gclid%3DCj0KCQ\
    &dr=https%3A%2F%2Fwww.google.com%2F&dt=Shoes&gcs=G111";
const GA4_BODY: &str = "en=page_view&_ee=1\nen=add_to_cart&cu=EUR&epn.value=59.9&ep.coupon=WINTER&pr1=idSKU1~nmRunner~pr59.9~qt1\n";

async fn ga4_post(app: &TestApp, host: &str, query: &str, body: &str) -> reqwest::Response {
    app.client
        .post(app.url(&format!("/g/collect?{query}")))
        .header("host", host)
        .header("user-agent", UA)
        .header("content-type", "text/plain;charset=UTF-8")
        .header("origin", "https://shop.example.com")
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

async fn setup(app: &TestApp) -> (crate::support::User, String, String, String, String) {
    let owner = app.signup("collect@example.com").await;
    let ws = app.workspace(&owner, "Collect").await;
    let (site, write_key, secret) = app.site(&owner, &ws, HOST).await;
    (owner, ws, site, write_key, secret)
}

async fn ga4_lands_in_the_log(app: TestApp) {
    let (_, _, site, _, _) = setup(&app).await;
    let resp = ga4_post(&app, HOST, GA4_QUERY, GA4_BODY).await;
    assert_eq!(resp.status(), 204);
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://shop.example.com"
    );
    assert_eq!(resp.headers()["access-control-allow-credentials"], "true");

    let records = app.log_records().await;
    assert_eq!(
        records.len(),
        1,
        "one record per request: {:?}",
        records.iter().map(|r| r.id).collect::<Vec<_>>()
    );
    let record = &records[0];
    assert_eq!(record.site_id.to_string(), site);
    assert!(!record.bot);
    assert_eq!(record.request.path, "/g/collect");
    assert_eq!(
        record.request.query, GA4_QUERY,
        "the query is kept byte for byte"
    );
    assert_eq!(&record.request.body[..], GA4_BODY.as_bytes());
    assert_eq!(record.request.user_agent(), Some(UA));
    assert_eq!(record.hits.len(), 2);
    let (view, cart) = (&record.hits[0], &record.hits[1]);
    assert_eq!(view.event_name, "page_view");
    assert_eq!(cart.event_name, "add_to_cart");
    for hit in [view, cart] {
        assert_eq!(hit.measurement_id.as_deref(), Some("G-TEST123"));
        assert_eq!(hit.client_id.as_deref(), Some("1234567890.1732251200"));
    }
    let hit = serde_json::to_value(cart).unwrap();
    assert_eq!(
        hit["page"]["location"],
        "https://shop.example.com/shoes?utm_source=google&gclid=Cj0KCQ"
    );
    assert_eq!(hit["params"]["coupon"], "WINTER");
    assert_eq!(hit["params"]["value"], 59.9);
    assert_eq!(hit["items"][0]["item_id"], "SKU1");
}

backend_test!(ga4_hits_land_in_the_log_as_canonical_hits, |app| {
    ga4_lands_in_the_log(app)
});

#[tokio::test]
async fn ga4_hits_land_in_nats() {
    let Some(url) = nats_log_url() else { return };
    let app = TestApp::spawn_with(Backend::Sqlite, |c| c.event_log_url = Some(url))
        .await
        .unwrap();
    ga4_lands_in_the_log(app).await;
}

backend_test!(ga4_bad_requests_get_precise_answers, |app| async move {
    setup(&app).await;
    let cases = [
        (
            HOST,
            "v=2&tid=G-TEST123&cid=1.2",
            "_et=5",
            400,
            "missing_parameter",
        ),
        (
            HOST,
            "v=1&tid=G-TEST123&en=page_view",
            "",
            400,
            "unsupported_version",
        ),
        (
            HOST,
            "v=2&tid=G-OTHER99&en=page_view",
            "",
            400,
            "unknown_measurement_id",
        ),
        (
            "unknown.example.org",
            "v=2&tid=G-NOBODY1&en=page_view",
            "",
            404,
            "unknown_site",
        ),
    ];
    for (host, query, body, status, code) in cases {
        let query = if body.is_empty() {
            query.to_owned()
        } else {
            query.replace("&en=page_view", "")
        };
        let resp = ga4_post(&app, host, &query, body).await;
        assert_eq!(resp.status().as_u16(), status, "{query}");
        let json: Value = resp.json().await.unwrap();
        assert_eq!(json["error"]["code"], code, "{query}: {json}");
    }
    // The GA4 id alone routes a hit that came to another host (a shared collector domain).
    let resp = ga4_post(
        &app,
        "collector.example.net",
        "v=2&tid=G-TEST123&cid=1.2&en=page_view",
        "",
    )
    .await;
    assert_eq!(resp.status(), 204);
    assert_eq!(
        app.log_records().await.len(),
        1,
        "only the good hit is stored"
    );
});

backend_test!(gzip_bodies_bots_and_preflight, |app| async move {
    setup(&app).await;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(GA4_BODY.as_bytes()).unwrap();
    let resp = app
        .client
        .post(app.url(&format!("/g/collect?{GA4_QUERY}")))
        .header("host", HOST)
        .header("user-agent", "Mozilla/5.0 (compatible; bingbot/2.0)")
        .header("content-encoding", "gzip")
        .body(gz.finish().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let records = app.log_records().await;
    assert_eq!(
        &records[0].request.body[..],
        GA4_BODY.as_bytes(),
        "stored decoded"
    );
    assert!(records[0].bot, "bot flagged, still kept");

    let allowed = app
        .client
        .request(reqwest::Method::OPTIONS, app.url("/g/collect"))
        .header("host", HOST)
        .header("origin", "https://shop.example.com")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), 204);
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://shop.example.com"
    );
    let refused = app
        .client
        .request(reqwest::Method::OPTIONS, app.url("/g/collect"))
        .header("host", HOST)
        .header("origin", "https://evil.example.com")
        .send()
        .await
        .unwrap();
    assert!(
        refused
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
});

backend_test!(measurement_protocol_checks_the_secret, |app| async move {
    let (_, _, _, _, secret) = setup(&app).await;
    let body = json!({
        "client_id": "123.456",
        "user_id": "u1",
        "events": [{ "name": "purchase", "params": {
            "session_id": "1700000000", "engagement_time_msec": 100, "currency": "EUR",
            "value": 12.5, "transaction_id": "T1",
            "items": [{ "item_id": "SKU1", "price": 12.5, "quantity": 1 }] } }]
    });
    let send = |query: String| {
        let app = &app;
        let body = body.clone();
        async move {
            app.client
                .post(app.url(&format!("/mp/collect?{query}")))
                .header("host", HOST)
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    let wrong = send("measurement_id=G-TEST123&api_secret=nope".into()).await;
    assert_eq!(wrong.status(), 403);
    assert_eq!(
        wrong.json::<Value>().await.unwrap()["error"]["code"],
        "invalid_api_secret"
    );
    let missing = send("measurement_id=G-TEST123".into()).await;
    assert_eq!(missing.status(), 403);
    let ok = send(format!("measurement_id=G-TEST123&api_secret={secret}")).await;
    assert_eq!(ok.status(), 204);

    let records = app.log_records().await;
    assert_eq!(records.len(), 1);
    let hit = serde_json::to_value(&records[0].hits[0]).unwrap();
    assert_eq!(hit["event_name"], "purchase");
    assert_eq!(hit["client_id"], "123.456");
    assert_eq!(hit["user_id"], "u1");

    // The debug endpoint validates without storing and without a secret.
    let debug: Value = app
        .client
        .post(app.url("/debug/mp/collect?measurement_id=G-TEST123"))
        .header("host", HOST)
        .json(&json!({ "client_id": "1.2", "events": [{ "name": "_bad name" }] }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        debug["validationMessages"][0]["validationCode"], "NAME_INVALID",
        "{debug}"
    );
    assert_eq!(app.log_records().await.len(), 1);
});

backend_test!(
    segment_calls_with_basic_auth_and_body_keys,
    |app| async move {
        let (_, _, site, write_key, _) = setup(&app).await;
        let track = json!({
            "userId": "u-42", "event": "Order Completed", "messageId": "m-1",
            "properties": { "revenue": 99.5, "currency": "EUR" },
            "context": { "campaign": { "source": "newsletter", "medium": "email" } }
        });
        let resp = app
            .client
            .post(app.url("/v1/track"))
            .basic_auth(&write_key, Some(""))
            .json(&track)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.json::<Value>().await.unwrap(),
            json!({ "success": true })
        );

        let batch = json!({
            "writeKey": write_key,
            "batch": [
                { "type": "identify", "userId": "u-42", "traits": { "email": "ana@example.com" } },
                { "type": "page", "anonymousId": "anon-1", "name": "Home" }
            ],
            "context": { "library": { "name": "test", "version": "1" } }
        });
        let resp = app
            .client
            .post(app.url("/v1/batch"))
            .json(&batch)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);

        for (body, status, code) in [
            (
                json!({ "writeKey": "swk_nope", "userId": "u", "event": "x" }),
                401,
                "invalid_write_key",
            ),
            (
                json!({ "writeKey": write_key, "event": "x" }),
                400,
                "missing_parameter",
            ),
        ] {
            let resp = app
                .client
                .post(app.url("/v1/track"))
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status().as_u16(), status);
            assert_eq!(resp.json::<Value>().await.unwrap()["error"]["code"], code);
        }
        let resp = app
            .client
            .post(app.url("/v1/track"))
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400);

        let records = app.log_records().await;
        assert_eq!(records.len(), 2);
        assert!(records.iter().all(|r| r.site_id.to_string() == site));
        let names: Vec<&str> = records
            .iter()
            .flat_map(|r| r.hits.iter().map(|h| h.event_name.as_str()))
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
        assert_eq!(names[0], "Order Completed");
    }
);

#[tokio::test]
async fn limits_refuse_with_retry_after_and_usage_counts() {
    let app = TestApp::spawn_with(Backend::Sqlite, |c| {
        c.tracking.per_ip_requests_per_second = 3
    })
    .await
    .unwrap();
    let (owner, ws, site, _, _) = setup(&app).await;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let resp = ga4_post(&app, HOST, GA4_QUERY, GA4_BODY).await;
        if resp.status() == 429 {
            assert!(resp.headers().get("retry-after").is_some());
        }
        statuses.push(resp.status().as_u16());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 204).count(),
        3,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        3,
        "{statuses:?}"
    );
    assert_eq!(app.log_records().await.len(), 3);

    app.usage.flush(&app.state.db).await.unwrap();
    let (status, usage) = app
        .get(
            &format!("/api/v1/workspaces/{ws}/sites/{site}/usage"),
            &owner.token,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(usage[0]["accepted_requests"], 3, "{usage}");
    assert_eq!(usage[0]["accepted_events"], 6, "{usage}");
    assert_eq!(usage[0]["rejected"]["rate_limited"], 3, "{usage}");

    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(&format!("tracking_events_total{{site=\"{site}\"}} 6")),
        "{metrics}"
    );
    let value = |series: &str| -> f64 {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(series))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series}in {metrics}"))
    };
    // `/g/collect` bypasses the router (switchyard::server::Connection) and is counted all the
    // same. At least: tests that share a process (`cargo test`) share the recorder.
    for status in [204, 429] {
        let series = format!(
            "http_requests_total{{method=\"POST\",route=\"/g/collect\",status=\"{status}\"}} "
        );
        let count = value(&series);
        assert!(count >= 3.0, "{series}{count}");
    }
    // The event log's own health: records per commit, commit and fsync durations. The three
    // accepted requests were committed and synced before they were answered. (At least, again:
    // `cargo test` shares the recorder between tests.)
    assert!(value("event_log_commit_records_sum ") >= 3.0);
    assert!(value("event_log_commit_duration_seconds_count ") >= 1.0);
    assert!(value("event_log_fsync_duration_seconds_count ") >= 1.0);
    assert!(metrics.contains("event_log_queued "), "{metrics}");
    // Histograms, not summaries: buckets add up across instances. Each request above took less
    // than a minute, so the last finite bucket counts them all.
    let bucket =
        |series: &str, le: &str| value(&format!("{}le=\"{le}\"}} ", series.trim_end_matches('}')));
    let collected = "http_request_duration_seconds_bucket{method=\"POST\",route=\"/g/collect\",status=\"204\",}";
    assert!(bucket(collected, "60") >= 3.0, "{metrics}");
    assert_eq!(bucket(collected, "60"), bucket(collected, "+Inf"));
    assert!(
        bucket("event_log_commit_records_bucket{}", "4096") >= 1.0,
        "{metrics}"
    );
    assert!(!metrics.contains("quantile="), "{metrics}");
}

#[tokio::test]
async fn oversized_tracking_bodies_are_refused() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    setup(&app).await;
    let huge = "en=page_view&ep.x=".to_owned() + &"a".repeat(2 * 1024 * 1024);
    let resp = ga4_post(&app, HOST, "v=2&tid=G-TEST123&cid=1.2", &huge).await;
    assert_eq!(resp.status(), 413);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"]["code"],
        "payload_too_large"
    );

    // All of a refused body is still taken (and discarded): the client reads its 413.
    let answer = crate::support::send_whole_oversized_body(
        app.addr,
        &format!(
            "POST /g/collect?v=2&tid=G-TEST123&cid=1.2 HTTP/1.1\r\nhost: {HOST}\r\n\
             content-type: text/plain\r\n"
        ),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");
}

#[tokio::test]
async fn truncated_addresses_never_reach_the_log() {
    let app = TestApp::spawn_with(Backend::Sqlite, |c| c.tracking.trust_forwarded_for = true)
        .await
        .unwrap();
    let (owner, ws, site, _, _) = setup(&app).await;
    let (status, body) = app
        .call(
            reqwest::Method::PATCH,
            &format!("/api/v1/workspaces/{ws}/sites/{site}"),
            Some(&owner.token),
            Some(json!({ "truncate_ip": true })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let resp = app
        .client
        .post(app.url(&format!("/g/collect?{GA4_QUERY}")))
        .header("host", HOST)
        .header("user-agent", UA)
        .header("x-forwarded-for", "81.2.69.142")
        .body(GA4_BODY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let records = app.log_records().await;
    let stored = serde_json::to_string(&records[0]).unwrap();
    assert!(!stored.contains("81.2.69.142"), "{stored}");
    assert_eq!(
        records[0].request.client_ip.unwrap().to_string(),
        "81.2.69.0"
    );
}

/// `tracking.event_log_commit_interval_us` reaches the embedded log's writer, and a paced log
/// still answers every request once its hit is stored: requests sent together, some of them
/// waiting out the interval behind a shared commit, all get 204 and are all in the log.
#[tokio::test]
async fn the_commit_interval_setting_reaches_the_embedded_log() {
    let logs = crate::support::capture_logs();
    let app = TestApp::spawn_with(Backend::Sqlite, |c| {
        c.tracking.event_log_commit_interval_us = 5_000;
    })
    .await
    .unwrap();
    assert!(
        logs.text().contains("commit_interval_us=5000"),
        "the log was not opened with the configured interval: {}",
        logs.text()
    );
    setup(&app).await;
    let sent = 40;
    let answers =
        futures::future::join_all((0..sent).map(|_| ga4_post(&app, HOST, GA4_QUERY, GA4_BODY)))
            .await;
    for answer in answers {
        assert_eq!(answer.status(), 204);
    }
    assert_eq!(app.log_records().await.len(), sent);
}
