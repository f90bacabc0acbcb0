//! A real Segment client against our `/v1/*`, unchanged: the official Node library
//! (`@segment/analytics-node`, pinned in `tests/node/package.json`) sends identify, track and page
//! through `tests/node/segment.mjs`, and each call must land in the event log as the library
//! meant it.
//!
//! Needs Node.js 20+ and the packages of `tests/node` (`npm ci --prefix crates/switchyard/tests/node`).
//! `scripts/test` installs them and sets `SWITCHYARD_TEST_NODE` (the node binary) and
//! `SWITCHYARD_REQUIRE_NODE=1`. Without them the test is skipped, unless
//! `SWITCHYARD_REQUIRE_NODE=1` makes that a failure (CI).

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

use crate::support::{Backend, TestApp};

const NODE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/node");

/// The node binary to run the client with, when it and the client's packages are there.
fn node() -> Option<String> {
    let node = std::env::var("SWITCHYARD_TEST_NODE")
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "node".to_owned());
    let runs = Command::new(&node)
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    let missing = if !runs {
        format!("`{node}` (Node.js) cannot be run")
    } else if !Path::new(NODE_DIR)
        .join("node_modules/@segment/analytics-node/package.json")
        .exists()
    {
        format!("the Node packages are not installed (npm ci --prefix {NODE_DIR})")
    } else {
        return Some(node);
    };
    assert!(
        std::env::var("SWITCHYARD_REQUIRE_NODE").as_deref() != Ok("1"),
        "SWITCHYARD_REQUIRE_NODE=1 but {missing}"
    );
    eprintln!("skipped: {missing}");
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analytics_node_calls_land_in_the_log() {
    let Some(node) = node() else { return };
    let app = TestApp::spawn(Backend::Sqlite).await;
    let owner = app.signup("segment-node@example.com").await;
    let ws = app.workspace(&owner, "Segment").await;
    let (site, write_key, _) = app.site(&owner, &ws, "track.shop.example.com").await;

    let base = app.url("");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(node)
            .arg("segment.mjs")
            .args([&base, &write_key])
            .current_dir(NODE_DIR)
            .output()
    })
    .await
    .unwrap()
    .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the Segment client failed ({}):\n{}\n{stdout}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(&stdout).expect("one JSON line from segment.mjs");
    let sent = report["sent"].as_array().unwrap();
    let requests = report["statuses"].as_array().unwrap().len();
    assert_eq!(sent.len(), 3, "{report}");

    // One record per request the library made (flushAt: 2 makes two), all for this site.
    let records = app.log_records().await;
    assert_eq!(records.len(), requests, "{report}");
    for record in &records {
        assert_eq!(record.site_id.to_string(), site);
        assert_eq!(record.request.path, "/v1/batch");
        assert_eq!(
            record.request.user_agent(),
            Some("analytics-node-next/latest")
        );
    }
    let hits: Vec<Value> = records
        .iter()
        .flat_map(|r| r.hits.iter().map(|h| serde_json::to_value(h).unwrap()))
        .collect();
    assert_eq!(hits.len(), 3);

    // Each call the library put on the wire is there once, under the library's own messageId.
    let by_type = |call_type: &str| -> &Value {
        let message_id = &sent
            .iter()
            .find(|s| s["type"] == call_type)
            .unwrap_or_else(|| panic!("no {call_type} sent: {report}"))["messageId"];
        let matching: Vec<&Value> = hits
            .iter()
            .filter(|h| h["segment"]["message_id"] == *message_id)
            .collect();
        assert_eq!(matching.len(), 1, "{call_type} {message_id}: {hits:#?}");
        let hit = matching[0];
        assert_eq!(hit["segment"]["call_type"], call_type);
        assert_eq!(hit["segment"].get("message_id_generated"), None);
        assert_eq!(
            hit["segment"]["context"]["library"]["name"],
            "@segment/analytics-node"
        );
        hit
    };

    let identify = by_type("identify");
    assert_eq!(identify["event_name"], "identify");
    assert_eq!(identify["user_id"], "user-42");
    assert_eq!(identify["user_properties"]["email"], "ana@example.com");
    assert_eq!(identify["user_properties"]["plan"], "pro");

    let track = by_type("track");
    assert_eq!(track["event_name"], "Order Completed");
    assert_eq!(track["user_id"], "user-42");
    assert_eq!(track["params"]["order_id"], "T-1001");
    assert_eq!(track["params"]["revenue"], 99.5);
    assert_eq!(track["currency"], "EUR");
    assert_eq!(
        track["items"],
        json!([{ "item_id": "SKU-1", "item_name": "Runner", "price": 99.5, "quantity": 1 }])
    );
    assert_eq!(track["campaign"]["source"], "newsletter");
    assert_eq!(track["campaign"]["medium"], "email");

    let page = by_type("page");
    assert_eq!(page["event_name"], "page_view");
    assert_eq!(page["client_id"], "anon-7");
    assert_eq!(page.get("user_id"), None);
    assert_eq!(page["segment"]["name"], "Pricing");
    assert_eq!(page["page"]["location"], "https://shop.example.com/pricing");
    assert_eq!(page["page"]["title"], "Pricing");

    // The library stamps `timestamp` and the batch's `sentAt`; the corrected event time is the
    // moment of receipt, give or take the time in flight.
    for hit in [identify, track, page] {
        let at = |key: &str| {
            chrono::DateTime::parse_from_rfc3339(hit[key].as_str().unwrap())
                .unwrap_or_else(|e| panic!("{key}: {e}: {hit}"))
        };
        let skew = (at("received_at") - at("event_time"))
            .num_milliseconds()
            .abs();
        assert!(
            skew < 30_000,
            "event_time {skew} ms from received_at: {hit}"
        );
    }
}
