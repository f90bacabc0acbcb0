//! Cron schedules: one fire per slot with concurrent schedulers, DST in a real zone, validation
//! and updates.

use std::time::Duration;

use axum::http::StatusCode;
use chrono::DateTime;
use platform::cron::{self, NewSchedule, ScheduleError, ScheduleUpdate};
use platform::db::Db;
use platform::time::Timestamp;
use platform::{ApiError, with_db};
use serde_json::json;

use crate::harness::{TestDb, backend_tests, count, workspace};

backend_tests!(
    cron_fires_once_per_slot_with_two_schedulers,
    cron_follows_dst_in_a_real_zone,
    cron_validates_and_updates,
);

fn at(text: &str) -> Timestamp {
    Timestamp::from(DateTime::parse_from_rfc3339(text).unwrap().to_utc())
}

/// Both schedulers tick at every step from `from` to `to`, concurrently; returns slots fired.
async fn tick_both(a: &Db, b: &Db, from: Timestamp, to: Timestamp, step: Duration) -> usize {
    let mut fired = 0;
    let mut now = from;
    while now <= to {
        let (x, y) = tokio::join!(cron::tick(a, now), cron::tick(b, now));
        fired += x.unwrap() + y.unwrap();
        now = now + step;
    }
    fired
}

/// The `run_at` of the jobs of `kind`, in order, as RFC 3339.
async fn fired_slots(db: &Db, kind: &str) -> Vec<String> {
    let slots: Vec<Timestamp> = with_db!(db, pool => sqlx::query_scalar(
        "SELECT run_at FROM jobs WHERE kind = $1 ORDER BY run_at",
    )
    .bind(kind)
    .fetch_all(pool)
    .await)
    .unwrap();
    slots
        .iter()
        .map(|t| t.as_datetime().format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .collect()
}

async fn cron_fires_once_per_slot_with_two_schedulers(t: &TestDb) {
    let ws = workspace(&t.db).await;
    let start = at("2026-05-01T00:00:00Z");
    let every_five = NewSchedule::new("rollups", "*/5 * * * *", "UTC", "rollup.build", json!({}));
    cron::create_schedule(&t.db, every_five, start)
        .await
        .unwrap();
    let berlin = NewSchedule::new(
        "digest",
        "*/10 * * * *",
        "Europe/Berlin",
        "digest.send",
        json!({ "w": 1 }),
    )
    .workspace(ws);
    cron::create_schedule(&t.db, berlin, start).await.unwrap();

    let other = t.open_another().await;
    let end = at("2026-05-01T00:59:59Z");
    let fired = tick_both(
        &t.db,
        &other,
        start + Duration::from_secs(1),
        end,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(fired, 11 + 5, "every slot fired by exactly one scheduler");
    assert_eq!(fired_slots(&t.db, "rollup.build").await.len(), 11);
    let digests = fired_slots(&t.db, "digest.send").await;
    assert_eq!(
        digests.first().map(String::as_str),
        Some("2026-05-01T00:10:00Z")
    );
    assert_eq!(
        count(
            &t.db,
            "SELECT COUNT(*) FROM jobs WHERE workspace_id IS NOT NULL"
        )
        .await,
        5
    );

    // Down for five hours: the overdue slot fires once, the next is in the future.
    let later = at("2026-05-01T06:00:30Z");
    let (x, y) = tokio::join!(cron::tick(&t.db, later), cron::tick(&other, later));
    assert_eq!(x.unwrap() + y.unwrap(), 2);
    let next: Vec<Timestamp> =
        with_db!(&t.db, pool => sqlx::query_scalar("SELECT next_run_at FROM schedules")
        .fetch_all(pool)
        .await)
        .unwrap();
    assert!(next.iter().all(|n| *n > later));
}

async fn cron_follows_dst_in_a_real_zone(t: &TestDb) {
    let other = t.open_another().await;
    // Spring forward, New York 2026-03-08: 02:30 does not exist; it fires at 03:00 EDT.
    let spring = NewSchedule::new(
        "spring",
        "30 2 * * *",
        "America/New_York",
        "spring",
        json!({}),
    );
    let s = cron::create_schedule(&t.db, spring, at("2026-03-07T12:00:00Z"))
        .await
        .unwrap();
    assert_eq!(s.next_run_at, at("2026-03-08T07:00:00Z"));
    assert_eq!(
        cron::tick(&t.db, at("2026-03-08T06:59:59Z")).await.unwrap(),
        0
    );
    assert_eq!(
        cron::tick(&t.db, at("2026-03-08T07:00:00Z")).await.unwrap(),
        1
    );
    assert_eq!(fired_slots(&t.db, "spring").await, ["2026-03-08T07:00:00Z"]);
    let s = cron::get_schedule(&t.db, None, s.id).await.unwrap();
    assert_eq!(
        s.next_run_at,
        at("2026-03-09T06:30:00Z"),
        "02:30 EDT the next day"
    );
    cron::delete_schedule(&t.db, None, s.id).await.unwrap();

    // Fall back, 2026-11-01: 01:30 happens twice; a daily job runs once, at the first.
    let created = at("2026-11-01T04:00:00Z");
    let daily = NewSchedule::new(
        "fall-daily",
        "30 1 * * *",
        "America/New_York",
        "fall.daily",
        json!({}),
    );
    cron::create_schedule(&t.db, daily, created).await.unwrap();
    let interval = NewSchedule::new(
        "fall-30m",
        "*/30 * * * *",
        "America/New_York",
        "fall.30m",
        json!({}),
    );
    cron::create_schedule(&t.db, interval, created)
        .await
        .unwrap();
    let step = Duration::from_secs(600);
    let fired = tick_both(
        &t.db,
        &other,
        created + step,
        at("2026-11-01T08:00:00Z"),
        step,
    )
    .await;
    assert_eq!(
        fired_slots(&t.db, "fall.daily").await,
        ["2026-11-01T05:30:00Z"]
    );
    // An interval schedule follows elapsed time through both passes of 01:xx.
    assert_eq!(
        fired_slots(&t.db, "fall.30m").await,
        [
            "2026-11-01T04:30:00Z",
            "2026-11-01T05:00:00Z",
            "2026-11-01T05:30:00Z",
            "2026-11-01T06:00:00Z",
            "2026-11-01T06:30:00Z",
            "2026-11-01T07:00:00Z",
            "2026-11-01T07:30:00Z",
            "2026-11-01T08:00:00Z",
        ]
    );
    assert_eq!(fired, 1 + 8);
}

fn api(err: ScheduleError) -> ApiError {
    ApiError::from(err)
}

async fn cron_validates_and_updates(t: &TestDb) {
    let db = &t.db;
    let now = at("2026-05-01T00:00:00Z");
    let bad = NewSchedule::new("bad", "*/5 * * *", "UTC", "k", json!({}));
    let err = api(cron::create_schedule(db, bad, now).await.unwrap_err());
    assert_eq!(
        (err.status, err.code.as_ref()),
        (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed")
    );
    assert_eq!(err.details, Some(json!({ "field": "cron" })));
    assert!(
        err.message
            .starts_with("invalid cron expression `*/5 * * *`"),
        "{}",
        err.message
    );
    let zone = NewSchedule::new("bad", "@daily", "Europe/Atlantis", "k", json!({}));
    let err = api(cron::create_schedule(db, zone, now).await.unwrap_err());
    assert_eq!(err.details, Some(json!({ "field": "time_zone" })));
    assert!(err.message.contains("unknown time zone `Europe/Atlantis`"));

    let hourly = || NewSchedule::new("cleanup", "@hourly", "UTC", "cleanup", json!({ "v": 1 }));
    let s = cron::create_schedule(db, hourly(), now).await.unwrap();
    assert_eq!(s.next_run_at, at("2026-05-01T01:00:00Z"));
    let err = api(cron::create_schedule(db, hourly(), now).await.unwrap_err());
    assert_eq!(
        (err.status, err.code.as_ref()),
        (StatusCode::CONFLICT, "schedule_name_taken")
    );
    let ws = workspace(db).await;
    cron::create_schedule(db, hourly().workspace(ws), now)
        .await
        .expect("names are per owner");

    // Another owner cannot see or change it.
    let err = cron::update_schedule(db, Some(ws), s.id, ScheduleUpdate::default(), now)
        .await
        .unwrap_err();
    assert!(matches!(err, ScheduleError::NotFound));

    let change = ScheduleUpdate {
        cron: Some("15 3 * * *".into()),
        time_zone: Some("Asia/Tokyo".into()),
        payload: Some(json!({ "v": 2 })),
        ..Default::default()
    };
    let s = cron::update_schedule(db, None, s.id, change, now)
        .await
        .unwrap();
    assert_eq!(s.next_run_at, at("2026-05-01T18:15:00Z"), "03:15 JST");
    assert_eq!(s.payload, json!({ "v": 2 }));
    let bad_update = ScheduleUpdate {
        cron: Some("nope".into()),
        ..Default::default()
    };
    assert!(matches!(
        cron::update_schedule(db, None, s.id, bad_update, now)
            .await
            .unwrap_err(),
        ScheduleError::Spec(_)
    ));

    // Disabled schedules do not fire; re-enabling starts from now, not from missed slots.
    let off = ScheduleUpdate {
        enabled: Some(false),
        ..Default::default()
    };
    cron::update_schedule(db, None, s.id, off, now)
        .await
        .unwrap();
    assert_eq!(
        cron::tick(db, at("2026-05-03T00:00:00Z")).await.unwrap(),
        1,
        "only the workspace copy"
    );
    let on = ScheduleUpdate {
        enabled: Some(true),
        ..Default::default()
    };
    let back = at("2026-05-03T00:00:00Z");
    let s = cron::update_schedule(db, None, s.id, on, back)
        .await
        .unwrap();
    assert_eq!(s.next_run_at, at("2026-05-03T18:15:00Z"));

    cron::delete_schedule(db, None, s.id).await.unwrap();
    assert!(matches!(
        cron::delete_schedule(db, None, s.id).await.unwrap_err(),
        ScheduleError::NotFound
    ));
}
