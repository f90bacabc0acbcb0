//! Loads contacts straight into the state database (the server is stopped meanwhile): one
//! transaction, multi-row prepared `INSERT`s of 500 rows, ids as 16-byte UUIDv7 blobs carrying
//! the contact's creation time, timestamps in the app's fixed-width text form (bound as
//! `platform::Timestamp`), `search_text` as the app computes it (the FTS5 triggers of the
//! migration index it as rows go in), an `email` identity per contact, a `phone` for half, tags,
//! a company for 40 %. Then a WAL checkpoint and, unless told otherwise, `ANALYZE`.

use std::path::Path;
use std::time::{Duration, Instant};

use platform::Timestamp;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Sqlite};
use uuid::Uuid;

use crate::data;

const CHUNK: u64 = 500;
const SPAN: Duration = Duration::from_secs(3 * 365 * 86_400);

pub struct Loaded {
    pub contacts: u64,
    pub identities: u64,
    pub tags: u64,
    pub companies: u64,
    pub load_secs: f64,
    pub checkpoint_secs: f64,
    pub analyze_secs: Option<f64>,
    /// A loaded contact in the middle, with its email: the `email=` query looks it up.
    pub probe: Option<(Uuid, String)>,
}

struct Row {
    id: Uuid,
    person: data::Person,
    company: Option<usize>,
    stage: &'static str,
    score: i64,
    created: Timestamp,
    updated: Timestamp,
    search: String,
    tags: Vec<&'static str>,
}

/// Adds `count` contacts to workspace `ws`, numbered from `first_n` (so their identifiers differ
/// from the ones the API phase wrote), created over the three years before yesterday.
pub async fn load(
    path: &Path,
    ws: Uuid,
    first_n: u64,
    count: u64,
    seed: u64,
    analyze: bool,
) -> anyhow::Result<Loaded> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Off)
        .foreign_keys(false)
        .busy_timeout(Duration::from_secs(30))
        .pragma("cache_size", "-1048576")
        .pragma("temp_store", "memory");
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await?;
    let mut rng = StdRng::seed_from_u64(seed ^ 0xb01c_10ad);
    let started = Instant::now();
    let mut tx = pool.begin().await?;

    let n_companies = if count == 0 {
        0
    } else {
        (count / 500).clamp(1, 2_000) as usize
    };
    let now = Timestamp::now();
    let end = now - Duration::from_secs(86_400);
    let start = end - SPAN;
    let companies: Vec<(Uuid, data::Company)> = (0..n_companies)
        .map(|i| {
            let id = v7(start.as_millis() as u64 + i as u64, &mut rng);
            (id, data::company(i, &mut rng))
        })
        .collect();
    for chunk in companies.chunks(CHUNK as usize) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO companies (id, workspace_id, name, domain, custom, created_at, updated_at) ",
        );
        q.push_values(chunk, |mut b, (id, c)| {
            b.push_bind(*id)
                .push_bind(ws)
                .push_bind(c.name.as_str())
                .push_bind(c.domain.as_str())
                .push("'{}'")
                .push_bind(start)
                .push_bind(start);
        });
        q.build().execute(&mut *tx).await?;
    }

    let span_ms = (end.as_millis() - start.as_millis()).max(1) as u64;
    let step = (span_ms / count.max(1)).max(1);
    let (mut identities, mut tags) = (0u64, 0u64);
    let mut probe = None;
    let mut next_report = Instant::now() + Duration::from_secs(10);
    let mut i = 0u64;
    while i < count {
        let rows: Vec<Row> = (i..(i + CHUNK).min(count))
            .map(|k| {
                let created_ms =
                    start.as_millis() as u64 + k * span_ms / count + rng.gen_range(0..step);
                let created = Timestamp::from_millis(created_ms as i64);
                let age = (now.as_millis() as u64).saturating_sub(created_ms).max(1);
                let updated = Timestamp::from_millis((created_ms + rng.gen_range(0..age)) as i64);
                let company =
                    (n_companies > 0 && rng.gen_bool(0.4)).then(|| rng.gen_range(0..n_companies));
                let domain = company.map(|c| companies[c].1.domain.as_str());
                let person = data::person(first_n + k, &mut rng, 0.5, domain);
                let search =
                    data::search_text(&person, company.map(|c| companies[c].1.name.as_str()));
                let tags = data::BULK_TAGS
                    .iter()
                    .filter(|(_, share)| rng.gen_bool(*share))
                    .map(|(tag, _)| *tag)
                    .collect();
                Row {
                    id: v7(created_ms, &mut rng),
                    person,
                    company,
                    stage: data::stage(&mut rng),
                    score: data::lead_score(&mut rng),
                    created,
                    updated,
                    search,
                    tags,
                }
            })
            .collect();
        if probe.is_none() && i + CHUNK > count / 2 {
            let r = &rows[((count / 2) - i).min(rows.len() as u64 - 1) as usize];
            probe = Some((r.id, r.person.email.clone()));
        }

        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO contacts (id, workspace_id, first_name, last_name, company_id, lifecycle_stage, \
             lead_score, custom, created_at, updated_at, search_text) ",
        );
        q.push_values(&rows, |mut b, r| {
            b.push_bind(r.id)
                .push_bind(ws)
                .push_bind(r.person.first)
                .push_bind(r.person.last)
                .push_bind(r.company.map(|c| companies[c].0))
                .push_bind(r.stage)
                .push_bind(r.score)
                .push("'{}'")
                .push_bind(r.created)
                .push_bind(r.updated)
                .push_bind(r.search.as_str());
        });
        q.build().execute(&mut *tx).await?;

        let idents: Vec<(&str, &str, Uuid, Timestamp)> = rows
            .iter()
            .flat_map(|r| {
                std::iter::once(("email", r.person.email.as_str(), r.id, r.created)).chain(
                    r.person
                        .phone
                        .as_deref()
                        .map(|p| ("phone", p, r.id, r.created)),
                )
            })
            .collect();
        identities += idents.len() as u64;
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO contact_identities (workspace_id, kind, value, contact_id, position, created_at) ",
        );
        q.push_values(&idents, |mut b, (kind, value, id, at)| {
            b.push_bind(ws)
                .push_bind(*kind)
                .push_bind(*value)
                .push_bind(*id)
                .push("1000")
                .push_bind(*at);
        });
        q.build().execute(&mut *tx).await?;

        let tag_rows: Vec<(Uuid, &str, Timestamp)> = rows
            .iter()
            .flat_map(|r| r.tags.iter().map(|t| (r.id, *t, r.created)))
            .collect();
        if !tag_rows.is_empty() {
            tags += tag_rows.len() as u64;
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT INTO contact_tags (workspace_id, contact_id, tag, created_at) ",
            );
            q.push_values(&tag_rows, |mut b, (id, tag, at)| {
                b.push_bind(ws)
                    .push_bind(*id)
                    .push_bind(*tag)
                    .push_bind(*at);
            });
            q.build().execute(&mut *tx).await?;
        }
        i += rows.len() as u64;
        if Instant::now() >= next_report {
            eprintln!(
                "  bulk load: {i} / {count} contacts, {:.0}s",
                started.elapsed().as_secs_f64()
            );
            next_report += Duration::from_secs(10);
        }
    }
    tx.commit().await?;
    let load_secs = started.elapsed().as_secs_f64();
    let t = Instant::now();
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&pool)
        .await?;
    let checkpoint_secs = t.elapsed().as_secs_f64();
    let analyze_secs = if analyze {
        let t = Instant::now();
        sqlx::query("ANALYZE").execute(&pool).await?;
        Some(t.elapsed().as_secs_f64())
    } else {
        None
    };
    pool.close().await;
    Ok(Loaded {
        contacts: count,
        identities,
        tags,
        companies: n_companies as u64,
        load_secs,
        checkpoint_secs,
        analyze_secs,
        probe,
    })
}

/// A UUIDv7 at `millis` with random bits from the seeded generator.
fn v7(millis: u64, rng: &mut StdRng) -> Uuid {
    let bytes: [u8; 10] = rng.r#gen();
    uuid::Builder::from_unix_timestamp_millis(millis, &bytes).into_uuid()
}
