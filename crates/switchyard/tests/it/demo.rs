//! `switchyard demo` end to end: generated GA4 traffic appended to the event log, ingested by
//! the running server's pipeline, and read back through the analytics API — every count the
//! generator reports must come back exactly.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use switchyard::demo::{DemoOptions, DemoReport, SiteTotals};

use crate::support::{Backend, TestApp};

fn geo_db() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/testdata/geoip/GeoIP2-City-Test.mmdb")
}

fn options(seed: u64) -> DemoOptions {
    DemoOptions {
        sites: 3,
        days: 3,
        visitors_per_day: 12,
        seed,
        email: "demo@example.com".into(),
        password: "demo password for tests".into(),
        workspace: "Demo".into(),
    }
}

async fn get(app: &TestApp, key: &str, path: &str) -> Value {
    let (status, body) = app.get(path, key).await;
    assert_eq!(status, 200, "{path}: {body}");
    body
}

/// `{value: events}` of a breakdown.
fn events_by_value(breakdown: &Value) -> BTreeMap<String, u64> {
    breakdown["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|r| Some((r["value"].as_str()?.to_owned(), r["events"].as_u64()?)))
        .collect()
}

async fn check_site(app: &TestApp, key: &str, base: &str, range: &str, expected: &SiteTotals) {
    let mut summary = Value::Null;
    for _ in 0..200 {
        summary = get(app, key, &format!("{base}/summary?{range}")).await;
        if summary["current"]["events"].as_u64() == Some(expected.events) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let current = &summary["current"];
    assert_eq!(
        current["events"].as_u64(),
        Some(expected.events),
        "{summary}"
    );
    assert_eq!(
        current["visitors"].as_u64(),
        Some(expected.visitors),
        "{summary}"
    );
    assert_eq!(
        current["sessions"].as_u64(),
        Some(expected.sessions),
        "{summary}"
    );
    assert_eq!(
        current["pageviews"].as_u64(),
        Some(expected.pageviews),
        "{summary}"
    );
    let bounce = expected.bounced_sessions as f64 / expected.sessions as f64;
    let stored = current["bounce_rate"].as_f64().expect("bounce_rate");
    assert!((stored - bounce).abs() < 1e-9, "{stored} vs {bounce}");

    let names = get(
        app,
        key,
        &format!("{base}/breakdown?dimension=event&limit=100&{range}"),
    )
    .await;
    assert_eq!(events_by_value(&names), expected.event_names, "{names}");

    // Addresses the test database maps come back as their countries, to the event.
    let countries = get(
        app,
        key,
        &format!("{base}/breakdown?dimension=country&limit=100&{range}"),
    )
    .await;
    assert_eq!(
        events_by_value(&countries),
        expected.mapped_countries,
        "{countries}"
    );

    let series = get(app, key, &format!("{base}/timeseries?interval=day&{range}")).await;
    let total: u64 = series
        .as_array()
        .expect("points")
        .iter()
        .map(|p| p["events"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(total, expected.events, "{series}");

    // Revenue: the `value` of every conversion, summed per event name by the generator.
    let events = get(
        app,
        key,
        &format!("{base}/events?limit=200&filter=event:is:purchase&{range}"),
    )
    .await;
    let revenue: f64 = events["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|e| e["value"].as_f64().unwrap_or(0.0))
        .sum();
    let purchases = expected.event_names.get("purchase").copied().unwrap_or(0);
    assert_eq!(
        events["data"].as_array().map(Vec::len),
        Some(purchases as usize)
    );
    let leads = 150.0
        * expected
            .event_names
            .get("generate_lead")
            .copied()
            .unwrap_or(0) as f64;
    assert!(
        (revenue + leads - expected.revenue).abs() < 0.01,
        "{revenue} + {leads} vs {}",
        expected.revenue
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_traffic_reads_back_exactly() {
    let geo = geo_db();
    let app = TestApp::spawn_with(Backend::Sqlite, |c| c.geoip_database = Some(geo))
        .await
        .expect("sqlite");
    let report: DemoReport =
        switchyard::demo::run(&app.state.db, app.log.as_ref(), &options(9), false)
            .await
            .expect("demo");
    let key = report.api_key.clone().expect("a new workspace gets a key");
    assert_eq!(report.sites.len(), 3);
    assert!(report.totals.conversions > 0, "{:?}", report.totals);
    let enc = |t: platform::Timestamp| {
        form_urlencoded::byte_serialize(t.to_rfc3339().as_bytes()).collect::<String>()
    };
    let range = format!("from={}&to={}", enc(report.from), enc(report.to));
    for (site, expected) in &report.sites {
        let base = format!(
            "/api/v1/workspaces/{}/sites/{}/analytics",
            report.workspace_id, site.site_id
        );
        check_site(&app, &key, &base, &range, expected).await;
    }

    // A second run finds the same user, workspace and sites instead of failing or duplicating.
    let again = switchyard::demo::run(&app.state.db, app.log.as_ref(), &options(10), false)
        .await
        .expect("second demo run");
    assert_eq!(again.workspace_id, report.workspace_id);
    assert!(again.api_key.is_none());
    let ids = |r: &DemoReport| r.sites.iter().map(|s| s.0.site_id).collect::<Vec<_>>();
    assert_eq!(ids(&again), ids(&report));
}
