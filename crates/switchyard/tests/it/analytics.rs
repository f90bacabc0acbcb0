//! End to end: hits through the gateway, the pipeline, and back out of every analytics endpoint.

use std::time::Duration;

use serde_json::Value;

use crate::support::{Backend, TestApp, User, clickhouse_analytics_url};

const HOST: &str = "stats.shop.example.com";
const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";
const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1";

fn geo_db() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/testdata/geoip/GeoIP2-City-Test.mmdb")
}

/// One gtag request: `cid`, GA4 session `sid`, page, referrer, and the events of its body.
async fn hit(
    app: &TestApp,
    cid: &str,
    sid: &str,
    page: &str,
    referrer: &str,
    (ua, ip): (&str, &str),
    events: &str,
) {
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("v", "2")
        .append_pair("tid", "G-TEST123")
        .append_pair("cid", cid)
        .append_pair("sid", sid)
        .append_pair("dl", &format!("https://shop.example.com{page}"))
        .append_pair("dr", referrer)
        .append_pair("dt", "Shop")
        .finish();
    let resp = app
        .client
        .post(app.url(&format!("/g/collect?{query}")))
        .header("host", HOST)
        .header("user-agent", ua)
        .header("x-forwarded-for", ip)
        .body(events.to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    // Funnels order events by their millisecond: keep separate requests apart.
    tokio::time::sleep(Duration::from_millis(5)).await;
}

async fn get(app: &TestApp, user: &User, path: &str) -> Value {
    let (status, body) = app.get(path, &user.token).await;
    assert_eq!(status, 200, "{path}: {body}");
    body
}

/// Waits until the pipeline has stored `events` events.
async fn settle(app: &TestApp, user: &User, base: &str, events: i64) {
    let mut last = Value::Null;
    for _ in 0..100 {
        last = get(app, user, &format!("{base}/summary")).await;
        if last["current"]["events"] == events {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the pipeline did not store {events} events in time: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_to_dashboard_sqlite() {
    gateway_to_dashboard(Backend::Sqlite, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_to_dashboard_postgres() {
    gateway_to_dashboard(Backend::Postgres, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_to_dashboard_clickhouse() {
    if let Some(url) = clickhouse_analytics_url() {
        gateway_to_dashboard(Backend::Sqlite, Some(url)).await;
    }
}

/// The embedded store answering from its rollups (`exact_below=0`: even six events).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_to_dashboard_from_rollups_sqlite() {
    gateway_to_dashboard(Backend::Sqlite, Some(ROLLED_UP.into())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_to_dashboard_from_rollups_postgres() {
    gateway_to_dashboard(Backend::Postgres, Some(ROLLED_UP.into())).await;
}

/// Marks an embedded analytics store that reads rollups whenever they can answer.
const ROLLED_UP: &str = "rollups";

/// `c.analytics_url` for `analytics_url` ([`ROLLED_UP`]: the embedded store in the data
/// directory, rollups always).
fn analytics_url(c: &platform::config::Config, analytics_url: Option<String>) -> Option<String> {
    match analytics_url.as_deref() {
        Some(ROLLED_UP) => Some(format!(
            "sqlite://{}?exact_below=0",
            c.data_dir.join("analytics.db").display()
        )),
        _ => analytics_url,
    }
}

/// `analytics_url`: where analytics are stored (`None`: the embedded SQLite file).
async fn gateway_to_dashboard(backend: Backend, analytics_url: Option<String>) {
    let geo = geo_db();
    let rolled_up = analytics_url.as_deref() == Some(ROLLED_UP);
    let Some(app) = TestApp::spawn_with(backend, |c| {
        c.tracking.trust_forwarded_for = true;
        c.geoip_database = Some(geo);
        c.analytics_url = self::analytics_url(c, analytics_url).map(Into::into);
    })
    .await
    else {
        return;
    };
    let owner = app.signup("dash@example.com").await;
    let ws = app.workspace(&owner, "Dash").await;
    let (site, _, _) = app.site(&owner, &ws, HOST).await;
    let base = format!("/api/v1/workspaces/{ws}/sites/{site}/analytics");

    // Visitor A: from Google search, two pages, engaged, in London.
    hit(
        &app,
        "1.1",
        "100",
        "/",
        "https://www.google.com/",
        (CHROME, "81.2.69.142"),
        "en=page_view&seg=1\nen=scroll",
    )
    .await;
    hit(
        &app,
        "1.1",
        "100",
        "/pricing",
        "https://shop.example.com/",
        (CHROME, "81.2.69.142"),
        "en=page_view&seg=1",
    )
    .await;
    // Visitor B: a paid click (gclid), one page, bounced, on an iPhone.
    hit(
        &app,
        "2.2",
        "200",
        "/?gclid=abc&utm_source=google&utm_medium=cpc&utm_campaign=winter",
        "",
        (IPHONE, "2001:218::1"),
        "en=page_view",
    )
    .await;
    // Visitor C: from a newsletter, buys.
    hit(
        &app,
        "3.3",
        "300",
        "/checkout?utm_source=newsletter&utm_medium=email",
        "",
        (CHROME, "81.2.69.142"),
        "en=page_view\nen=purchase&cu=EUR&epn.value=42.5&ep.coupon=WINTER",
    )
    .await;
    // A bot: stored, but never counted.
    hit(
        &app,
        "9.9",
        "900",
        "/",
        "",
        ("Mozilla/5.0 (compatible; Googlebot/2.1)", "81.2.69.142"),
        "en=page_view",
    )
    .await;

    settle(&app, &owner, &base, 6).await;
    let summary = get(&app, &owner, &format!("{base}/summary")).await;
    let current = &summary["current"];
    assert_eq!(current["visitors"], 3, "{summary}");
    assert_eq!(current["sessions"], 3);
    assert_eq!(current["pageviews"], 4);
    assert_eq!(current["events"], 6);
    // Six events: exact counting unless the store was told to read rollups regardless (then the
    // sketch is exact at this size, but the response must still say it is an estimate).
    assert_eq!(current["visitors_estimated"], rolled_up, "{summary}");
    // B bounced (one page, not engaged); A engaged; C saw one page but purchased… and was not
    // marked engaged, so it bounces by GA4's definition too: 2 of 3.
    let bounce = current["bounce_rate"].as_f64().unwrap();
    assert!((bounce - 2.0 / 3.0).abs() < 1e-9, "{bounce}");
    assert_eq!(summary["previous"]["events"], 0);

    let pages = get(&app, &owner, &format!("{base}/breakdown?dimension=page")).await;
    assert_eq!(pages["rows"][0]["value"], "/", "{pages}");
    assert_eq!(pages["rows"][0]["visitors"], 2);
    assert_eq!(pages["rows"][0]["visitors_estimated"], rolled_up);
    let channels = get(&app, &owner, &format!("{base}/breakdown?dimension=channel")).await;
    let channel_of = |name: &str| {
        channels["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["value"] == name)
            .map(|r| r["visitors"].clone())
    };
    assert_eq!(channel_of("Organic Search"), Some(1.into()), "{channels}");
    assert_eq!(channel_of("Paid Search"), Some(1.into()), "{channels}");
    assert_eq!(channel_of("Email"), Some(1.into()), "{channels}");
    let countries = get(&app, &owner, &format!("{base}/breakdown?dimension=country")).await;
    assert_eq!(countries["rows"][0]["value"], "GB", "{countries}");
    assert_eq!(countries["rows"][0]["visitors"], 2);
    let devices = get(&app, &owner, &format!("{base}/breakdown?dimension=device")).await;
    assert_eq!(devices["rows"].as_array().unwrap().len(), 2, "{devices}");
    let coupons = get(
        &app,
        &owner,
        &format!("{base}/breakdown?dimension=param:coupon"),
    )
    .await;
    assert!(
        coupons["rows"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["value"] == "WINTER"),
        "{coupons}"
    );

    // Filters narrow every widget.
    let gb = get(
        &app,
        &owner,
        &format!("{base}/summary?filter=country:is:GB"),
    )
    .await;
    assert_eq!(gb["current"]["visitors"], 2);
    let not_gb = get(
        &app,
        &owner,
        &format!("{base}/summary?filter=country:is_not:GB"),
    )
    .await;
    assert_eq!(not_gb["current"]["visitors"], 1);
    let pricing = get(
        &app,
        &owner,
        &format!("{base}/summary?filter=page:contains:pric"),
    )
    .await;
    assert_eq!(pricing["current"]["pageviews"], 1);

    let series = get(&app, &owner, &format!("{base}/timeseries?interval=day")).await;
    let total: i64 = series
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["events"].as_i64().unwrap())
        .sum();
    assert_eq!(total, 6, "{series}");
    let sessions: i64 = series
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["sessions"].as_i64().unwrap())
        .sum();
    assert_eq!(sessions, 3, "{series}");
    assert!(
        series
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["visitors_estimated"] == rolled_up),
        "{series}"
    );
    let realtime = get(&app, &owner, &format!("{base}/realtime")).await;
    assert_eq!(realtime["visitors"], 3);

    entry_exit(&app, &owner, &base).await;
    funnels(&app, &owner, &base).await;

    let first = get(&app, &owner, &format!("{base}/events?limit=4")).await;
    assert_eq!(first["data"].as_array().unwrap().len(), 4);
    let cursor = first["next_cursor"].as_str().unwrap();
    let second = get(
        &app,
        &owner,
        &format!("{base}/events?limit=4&cursor={cursor}"),
    )
    .await;
    assert_eq!(second["data"].as_array().unwrap().len(), 2);
    assert!(second["next_cursor"].is_null());

    for (path, code) in [
        (
            format!("{base}/breakdown?dimension=nope"),
            "invalid_dimension",
        ),
        (
            format!("{base}/summary?filter=country:like:GB"),
            "invalid_filter",
        ),
        (
            format!("{base}/summary?from=2026-12-01&to=2026-11-01"),
            "invalid_query",
        ),
        (
            format!("{base}/timeseries?interval=minute"),
            "invalid_query",
        ),
    ] {
        let (status, err) = app.get(&path, &owner.token).await;
        assert_eq!(status, 400, "{path}");
        assert_eq!(err["error"]["code"], code, "{path}");
    }
}

fn rows(v: &Value) -> Vec<(Value, i64, i64)> {
    v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["value"].clone(),
                r["visitors"].as_i64().unwrap(),
                r["events"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// Entry and exit pages (each event carries its session's first and last page view), over the
/// three visitors of `gateway_to_dashboard`: A `/` → `/pricing` (engaged), B `/`, C `/checkout`
/// then a purchase with coupon WINTER.
async fn entry_exit(app: &TestApp, owner: &User, base: &str) {
    let entry = get(
        app,
        owner,
        &format!("{base}/breakdown?dimension=entry_page"),
    )
    .await;
    assert_eq!(
        rows(&entry),
        vec![("/".into(), 2, 4), ("/checkout".into(), 1, 2)],
        "{entry}"
    );
    let exit = get(app, owner, &format!("{base}/breakdown?dimension=exit_page")).await;
    assert_eq!(
        rows(&exit),
        vec![
            ("/pricing".into(), 1, 3),
            ("/checkout".into(), 1, 2),
            ("/".into(), 1, 1)
        ],
        "{exit}"
    );
    let entered_home = get(
        app,
        owner,
        &format!("{base}/summary?filter=entry_page:is:/"),
    )
    .await;
    assert_eq!(entered_home["current"]["visitors"], 2, "{entered_home}");
    assert_eq!(entered_home["current"]["events"], 4);
    let left_elsewhere = get(
        app,
        owner,
        &format!("{base}/breakdown?dimension=page&filter=exit_page:is_not:/pricing"),
    )
    .await;
    assert_eq!(
        rows(&left_elsewhere),
        vec![("/checkout".into(), 1, 2), ("/".into(), 1, 1)],
        "{left_elsewhere}"
    );
}

/// Funnels over the same three visitors, on every store.
async fn funnels(app: &TestApp, owner: &User, base: &str) {
    // A short range, so events are ordered by their millisecond (see the endpoint's doc).
    let now = chrono::Utc::now();
    let range = format!(
        "from={}&to={}",
        (now - chrono::Duration::hours(1)).format("%Y-%m-%dT%H:%M:%SZ"),
        (now + chrono::Duration::hours(1)).format("%Y-%m-%dT%H:%M:%SZ")
    );
    let funnel = |steps: &str| format!("{base}/funnel?{range}&{steps}");
    let f = get(
        app,
        owner,
        &funnel("step=page:/&step=page:/pricing&step=event:purchase"),
    )
    .await;
    let visitors: Vec<i64> = f["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["visitors"].as_i64().unwrap())
        .collect();
    assert_eq!(visitors, vec![2, 1, 0], "{f}");
    assert_eq!(f["steps"][1]["step"], "page:/pricing");
    assert_eq!(f["steps"][1]["conversion"], 0.5);
    assert_eq!(f["steps"][2]["from_previous"], 0.0);
    assert_eq!(f["window_seconds"], 86_400);
    let bought = get(
        app,
        owner,
        &funnel("step=page:/checkout&step=event:purchase:coupon=WINTER&window=60"),
    )
    .await;
    assert_eq!(bought["steps"][1]["visitors"], 1, "{bought}");
    assert_eq!(bought["steps"][1]["conversion"], 1.0);
    let other_coupon = get(
        app,
        owner,
        &funnel("step=page:/checkout&step=event:purchase:coupon=SUMMER"),
    )
    .await;
    assert_eq!(other_coupon["steps"][1]["visitors"], 0, "{other_coupon}");
    // Out of order does not count: A saw /pricing after /, and nobody came back to /.
    let backwards = get(app, owner, &funnel("step=page:/pricing&step=page:/")).await;
    assert_eq!(backwards["steps"][0]["visitors"], 1, "{backwards}");
    assert_eq!(backwards["steps"][1]["visitors"], 0, "{backwards}");
    let empty = get(app, owner, &format!("{base}/funnel")).await;
    assert_eq!(empty["steps"], serde_json::json!([]), "{empty}");
    for path in [
        funnel(&["step=page:/"; 11].join("&")),
        funnel("step=page:/&step=click:x"),
        funnel("step=page:/&step=page:/a&window=0"),
    ] {
        let (status, err) = app.get(&path, &owner.token).await;
        assert_eq!(status, 400, "{path}");
        assert_eq!(err["error"]["code"], "invalid_funnel", "{path}");
    }
}

#[tokio::test]
async fn redelivering_the_whole_log_adds_nothing() {
    redelivering_the_whole_log(None).await;
}

/// Rollups count a redelivered hit once too.
#[tokio::test]
async fn redelivering_the_whole_log_adds_nothing_to_rollups() {
    redelivering_the_whole_log(Some(ROLLED_UP.into())).await;
}

#[tokio::test]
async fn redelivering_the_whole_log_adds_nothing_clickhouse() {
    if let Some(url) = clickhouse_analytics_url() {
        redelivering_the_whole_log(Some(url)).await;
    }
}

async fn redelivering_the_whole_log(analytics_url: Option<String>) {
    let rolled_up = analytics_url.as_deref() == Some(ROLLED_UP);
    let app = TestApp::spawn_with(Backend::Sqlite, |c| {
        c.analytics_url = self::analytics_url(c, analytics_url).map(Into::into)
    })
    .await
    .expect("SQLite is always available");
    let owner = app.signup("replay@example.com").await;
    let ws = app.workspace(&owner, "Replay").await;
    let (site, _, _) = app.site(&owner, &ws, HOST).await;
    let base = format!("/api/v1/workspaces/{ws}/sites/{site}/analytics");
    for i in 0..5 {
        hit(
            &app,
            &format!("{i}.1"),
            "1",
            "/",
            "",
            (CHROME, "127.0.0.1"),
            "en=page_view\nen=scroll",
        )
        .await;
    }
    settle(&app, &owner, &base, 10).await;

    // Run the whole log through a second pipeline over the same store.
    let pipeline = tracking::pipeline::Pipeline::new(
        app.analytics.clone(),
        tracking::enrich::Enricher::new(None).unwrap(),
    );
    let mut sub = app.log.subscribe("replay").await.unwrap();
    let batch = sub
        .next_batch(1000, Duration::from_millis(200))
        .await
        .unwrap();
    assert_eq!(batch.len(), 5);
    pipeline.process_batch(&batch).await.unwrap();
    pipeline.process_batch(&batch).await.unwrap();
    let summary = get(&app, &owner, &format!("{base}/summary")).await;
    assert_eq!(summary["current"]["events"], 10);
    assert_eq!(summary["current"]["sessions"], 5);
    assert_eq!(summary["current"]["visitors"], 5);
    assert_eq!(summary["current"]["pageviews"], 5);
    assert_eq!(summary["current"]["visitors_estimated"], rolled_up);
    let entry = get(
        &app,
        &owner,
        &format!("{base}/breakdown?dimension=entry_page"),
    )
    .await;
    assert_eq!(rows(&entry), vec![("/".into(), 5, 10)], "{entry}");
}

/// Time series in a DST zone and a quarter-hour zone, by hour, day, week and month: the embedded
/// store (raw rows, exact) and ClickHouse give the counts worked out here bucket by bucket.
#[tokio::test]
async fn timeseries_buckets_in_the_site_zone_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = tracking::analytics::sqlite::SqliteAnalytics::open_with(
        &dir.path().join("analytics.db"),
        i64::MAX,
    )
    .await
    .unwrap();
    timeseries_buckets_in_the_site_zone(&store).await;
}

#[tokio::test]
async fn timeseries_buckets_in_the_site_zone_clickhouse() {
    if let Some(url) = clickhouse_analytics_url() {
        let store = tracking::analytics::open(&url).await.unwrap();
        timeseries_buckets_in_the_site_zone(store.as_ref()).await;
    }
}

async fn timeseries_buckets_in_the_site_zone(store: &dyn tracking::analytics::AnalyticsStore) {
    use platform::Timestamp;
    use tracking::analytics::query::buckets;
    use tracking::analytics::{AnalyticsEvent, Filter, Interval, Query};

    let ts = |s: &str| Timestamp::from(s.parse::<chrono::DateTime<chrono::Utc>>().unwrap());
    let site = tracking::sites::SiteId::new();
    let workspace = platform::id::WorkspaceId::new();
    // An event every 37 minutes around Berlin's 2026 DST changes (29 March, 25 October), from
    // seven visitors in sessions of about four hours; every third one from GB.
    let mut events = Vec::new();
    for (from, to) in [
        ("2026-03-20T00:00:00Z", "2026-04-05T00:00:00Z"),
        ("2026-10-20T00:00:00Z", "2026-11-05T00:00:00Z"),
    ] {
        let (mut t, end) = (ts(from).as_millis(), ts(to).as_millis());
        while t < end {
            let n = events.len() as i64;
            events.push(AnalyticsEvent {
                event_name: if n % 4 == 0 { "click" } else { "page_view" }.into(),
                visitor: format!("v{}", n % 7),
                session: format!("v{}:{}", n % 7, t / 14_400_000),
                page_path: Some("/".into()),
                country: (n % 3 == 0).then(|| "GB".into()),
                params: serde_json::json!({}),
                ..bare_event(site, workspace, t)
            });
            t += 37 * 60_000;
        }
    }
    store.insert(&events).await.unwrap();

    let (berlin, kathmandu) = ("Europe/Berlin", "Asia/Kathmandu");
    let cases = [
        (
            berlin,
            Interval::Hour,
            "2026-03-28T20:10:00Z",
            "2026-03-29T05:00:00Z",
        ),
        (
            berlin,
            Interval::Hour,
            "2026-10-24T22:00:00Z",
            "2026-10-25T03:00:00Z",
        ),
        (
            berlin,
            Interval::Day,
            "2026-03-25T10:30:00Z",
            "2026-04-03T00:00:00Z",
        ),
        (
            berlin,
            Interval::Day,
            "2026-10-22T00:00:00Z",
            "2026-10-29T00:00:00Z",
        ),
        (
            berlin,
            Interval::Week,
            "2026-03-01T00:00:00Z",
            "2026-11-15T00:00:00Z",
        ),
        (
            berlin,
            Interval::Month,
            "2026-01-01T00:00:00Z",
            "2026-12-31T00:00:00Z",
        ),
        (
            kathmandu,
            Interval::Day,
            "2026-03-26T00:00:00Z",
            "2026-04-02T00:00:00Z",
        ),
        (
            kathmandu,
            Interval::Hour,
            "2026-03-26T00:00:00Z",
            "2026-03-26T06:00:00Z",
        ),
    ];
    for (zone, interval, from, to) in cases {
        for filters in [Vec::new(), vec![Filter::parse("country:is:GB").unwrap()]] {
            let query = Query {
                site_id: site,
                from: ts(from),
                to: ts(to),
                filters,
            };
            let b = buckets(query.from, query.to, interval, zone.parse().unwrap()).unwrap();
            let got = store.timeseries(&query, &b).await.unwrap();
            let expected: Vec<(Timestamp, i64, i64, i64, i64)> = b
                .iter()
                .map(|(start, end)| {
                    let (lo, hi) = ((*start).max(query.from), (*end).min(query.to));
                    let inside: Vec<&AnalyticsEvent> = events
                        .iter()
                        .filter(|e| e.time >= lo && e.time < hi)
                        .filter(|e| query.filters.is_empty() || e.country.is_some())
                        .collect();
                    let distinct = |f: fn(&AnalyticsEvent) -> &str| {
                        inside
                            .iter()
                            .map(|e| f(e))
                            .collect::<std::collections::HashSet<_>>()
                            .len() as i64
                    };
                    (
                        *start,
                        distinct(|e| &e.visitor),
                        distinct(|e| &e.session),
                        inside
                            .iter()
                            .filter(|e| e.event_name == "page_view")
                            .count() as i64,
                        inside.len() as i64,
                    )
                })
                .collect();
            let got: Vec<(Timestamp, i64, i64, i64, i64)> = got
                .iter()
                .map(|p| (p.start, p.visitors, p.sessions, p.pageviews, p.events))
                .collect();
            assert_eq!(got, expected, "{zone} {interval:?} {from}..{to} {query:?}");
        }
    }
}

/// A batch that is partly stored already (a redelivery overlapping new hits, and a hit twice in
/// the batch itself) adds only its new events, to the raw rows and to the rollups alike.
#[tokio::test]
async fn a_partly_stored_batch_adds_only_its_new_events() {
    use platform::Timestamp;
    use tracking::analytics::sqlite::SqliteAnalytics;
    use tracking::analytics::{AnalyticsStore, Query};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("analytics.db");
    let site = tracking::sites::SiteId::new();
    let workspace = platform::id::WorkspaceId::new();
    let hour = 500_000 * 3_600_000;
    let events = ten_events(site, workspace, hour);
    let rolled_up = SqliteAnalytics::open_with(&path, 0).await.unwrap();
    rolled_up.insert(&events[..6]).await.unwrap();
    let mut again = events[3..].to_vec();
    again.push(events[9].clone());
    rolled_up.insert(&again).await.unwrap();
    rolled_up.insert(&events).await.unwrap();

    let query = Query {
        site_id: site,
        from: Timestamp::from_millis(hour),
        to: Timestamp::from_millis(hour + 3_600_000),
        filters: Vec::new(),
    };
    let from_rollups = rolled_up.summary(&query).await.unwrap();
    assert!(from_rollups.visitors_estimated);
    let raw = SqliteAnalytics::open(&path).await.unwrap();
    let exact = raw.summary(&query).await.unwrap();
    assert!(!exact.visitors_estimated);
    for summary in [&from_rollups, &exact] {
        assert_eq!(
            (
                summary.events,
                summary.pageviews,
                summary.sessions,
                summary.visitors
            ),
            (10, 5, 3, 3),
            "{summary:?}"
        );
    }
    assert!((from_rollups.bounce_rate - 1.0 / 3.0).abs() < 1e-9);
    assert!((exact.bounce_rate - 1.0 / 3.0).abs() < 1e-9);
    // Sessions of 9, 6 and 6 minutes.
    assert!((from_rollups.avg_session_seconds - 420.0).abs() < 1e-9);
    assert!((exact.avg_session_seconds - 420.0).abs() < 1e-9);
    let stored = raw.events(&query, None, 100).await.unwrap();
    assert_eq!(stored.len(), 10);
}

/// Ten events a minute apart from `hour` (ms): three visitors with a session each (9, 6 and 6
/// minutes long), five page views on four paths.
fn ten_events(
    site: tracking::sites::SiteId,
    workspace: platform::id::WorkspaceId,
    hour: i64,
) -> Vec<tracking::analytics::AnalyticsEvent> {
    (0..10i64)
        .map(|n| tracking::analytics::AnalyticsEvent {
            event_name: if n % 2 == 0 { "page_view" } else { "scroll" }.into(),
            visitor: format!("v{}", n % 3),
            session: format!("v{}:1", n % 3),
            page_host: Some(HOST.into()),
            page_path: Some(format!("/p{}", n % 4)),
            device: Some("desktop".into()),
            params: serde_json::json!({"n": n}),
            ..bare_event(site, workspace, hour + n * 60_000)
        })
        .collect()
}

/// A database whose rollups are missing (one from before they existed, or built by an older
/// version) gets them rebuilt from its raw events when it is opened; on a multi-threaded
/// runtime, as the server runs it (the store's writer then blocks in place).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollups_are_rebuilt_from_the_raw_events_on_open() {
    use platform::Timestamp;
    use tracking::analytics::sqlite::SqliteAnalytics;
    use tracking::analytics::{AnalyticsStore, Query};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("analytics.db");
    let site = tracking::sites::SiteId::new();
    let hour = 500_000 * 3_600_000;
    let query = Query {
        site_id: site,
        from: Timestamp::from_millis(hour),
        to: Timestamp::from_millis(hour + 3_600_000),
        filters: Vec::new(),
    };
    let store = SqliteAnalytics::open_with(&path, 0).await.unwrap();
    store
        .insert(&ten_events(site, platform::id::WorkspaceId::new(), hour))
        .await
        .unwrap();
    let built = store.summary(&query).await.unwrap();
    assert_eq!((built.events, built.sessions, built.visitors), (10, 3, 3));
    drop(store);

    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    for sql in [
        "DELETE FROM rollups",
        "DELETE FROM sessions",
        "DELETE FROM meta",
    ] {
        sqlx::query(sql).execute(&pool).await.unwrap();
    }
    pool.close().await;

    let reopened = SqliteAnalytics::open_with(&path, 0).await.unwrap();
    let rebuilt = reopened.summary(&query).await.unwrap();
    assert!(rebuilt.visitors_estimated);
    assert_eq!(rebuilt, built);
}

/// An event of `site` at `ms` with a fresh hit id and nothing else set; tests fill in what they
/// need with `..bare_event(…)`.
fn bare_event(
    site: tracking::sites::SiteId,
    workspace: platform::id::WorkspaceId,
    ms: i64,
) -> tracking::analytics::AnalyticsEvent {
    tracking::analytics::AnalyticsEvent {
        hit_id: tracking::HitId::new(),
        site_id: site,
        workspace_id: workspace,
        time: platform::Timestamp::from_millis(ms),
        event_name: String::new(),
        visitor: String::new(),
        session: String::new(),
        engaged: false,
        page_host: None,
        page_path: None,
        page_title: None,
        referrer_host: None,
        source: None,
        medium: None,
        campaign: None,
        term: None,
        content: None,
        channel: None,
        country: None,
        region: None,
        city: None,
        device: None,
        browser: None,
        os: None,
        value: None,
        currency: None,
        params: serde_json::Value::Null,
        bot: false,
    }
}
