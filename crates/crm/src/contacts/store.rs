//! Contacts in the state database: identity resolution, merges, reads, lists, tags.
//!
//! Concurrency: on SQLite every write transaction holds the write lock (`BEGIN IMMEDIATE`), so
//! upserts are serial. On PostgreSQL two upserts that introduce the same new identifier race on
//! the `(workspace_id, kind, value)` primary key; the loser's `ON CONFLICT DO NOTHING` waits for
//! the winner's commit, and the check after inserting identifiers then merges the two contacts,
//! so no identifier ever ends up on two contacts and no write is lost.

use std::collections::{BTreeMap, BTreeSet};

use platform::db::{Conn, Db, Dialect, Tx};
use platform::http::{Page, PageParams};
use platform::id::{UserId, WorkspaceId};
use platform::{ApiError, ApiResult, Scope, Timestamp, with_conn, with_tx};
use serde::Serialize;
use serde_json::{Map, Value, json};
use sqlx::QueryBuilder;
use utoipa::ToSchema;

use super::{
    Contact, ContactFilter, ContactInput, IDENTIFIER_KINDS, Identifiers, LifecycleStage, Touch,
};
use crate::fields::{self, Entity};
use crate::timeline::{self, kind};
use crate::{CompanyId, ContactId, from_json, normalize, refs, to_json};

pub fn contact_not_found() -> ApiError {
    ApiError::not_found("contact_not_found", "No such contact in this workspace.")
}

/// The result of an upsert.
#[derive(Debug, Serialize, ToSchema)]
pub struct Upserted {
    pub contact: Contact,
    /// A new contact was created.
    pub created: bool,
    /// Contacts merged into `contact` by this write (their ids now resolve to it).
    pub merged: Vec<ContactId>,
}

#[derive(sqlx::FromRow)]
struct ContactRow {
    id: ContactId,
    first_name: Option<String>,
    last_name: Option<String>,
    company_id: Option<CompanyId>,
    owner_id: Option<UserId>,
    lifecycle_stage: String,
    lead_score: i64,
    first_touch: Option<String>,
    last_touch: Option<String>,
    custom: String,
    created_at: Timestamp,
    updated_at: Timestamp,
    last_seen_at: Option<Timestamp>,
}

const COLUMNS: &str = "c.id, c.first_name, c.last_name, c.company_id, c.owner_id, c.lifecycle_stage, \
    c.lead_score, c.first_touch, c.last_touch, c.custom, c.created_at, c.updated_at, c.last_seen_at";

/// The scalar part of a contact, as written back by [`write_row`].
#[derive(Debug, Clone, PartialEq)]
struct Scalars {
    first_name: Option<String>,
    last_name: Option<String>,
    company_id: Option<CompanyId>,
    owner_id: Option<UserId>,
    lifecycle_stage: LifecycleStage,
    lead_score: i64,
    first_touch: Option<Touch>,
    last_touch: Option<Touch>,
    custom: Map<String, Value>,
    created_at: Timestamp,
    last_seen_at: Option<Timestamp>,
}

impl From<&Contact> for Scalars {
    fn from(c: &Contact) -> Self {
        Scalars {
            first_name: c.first_name.clone(),
            last_name: c.last_name.clone(),
            company_id: c.company_id,
            owner_id: c.owner_id,
            lifecycle_stage: c.lifecycle_stage,
            lead_score: c.lead_score,
            first_touch: c.first_touch.clone(),
            last_touch: c.last_touch.clone(),
            custom: c.custom.clone(),
            created_at: c.created_at,
            last_seen_at: c.last_seen_at,
        }
    }
}

fn touch_json(touch: &Option<Touch>) -> Option<String> {
    touch.as_ref().map(to_json)
}

// ---------------------------------------------------------------------------------------------
// Reads

/// The live contact an id names: itself, or the survivor it was merged into. 404 otherwise.
pub async fn resolve(db: &Db, scope: &Scope, id: ContactId) -> ApiResult<ContactId> {
    let mut pooled = db.acquire().await?;
    resolve_conn(&mut pooled.conn(), scope, id).await
}

/// [`resolve`] inside a transaction.
pub async fn resolve_in(tx: &mut Tx, scope: &Scope, id: ContactId) -> ApiResult<ContactId> {
    resolve_conn(&mut tx.conn(), scope, id).await
}

async fn resolve_conn(conn: &mut Conn<'_>, scope: &Scope, id: ContactId) -> ApiResult<ContactId> {
    // One statement: the id itself if live, else the survivor of its merge if that is live.
    let found: Option<ContactId> = with_conn!(conn, c => sqlx::query_scalar(
        "SELECT id FROM contacts WHERE workspace_id = $1 AND id = $2
         UNION ALL
         SELECT m.survivor_id FROM contact_merges m JOIN contacts s ON s.id = m.survivor_id
         WHERE m.workspace_id = $1 AND m.merged_id = $2 AND s.workspace_id = $1",
    ).bind(scope.workspace_id).bind(id).fetch_optional(c).await)?;
    found.ok_or_else(contact_not_found)
}

/// One contact (following merges).
pub async fn get(db: &Db, scope: &Scope, id: ContactId) -> ApiResult<Contact> {
    let mut pooled = db.acquire().await?;
    let mut conn = pooled.conn();
    let id = resolve_conn(&mut conn, scope, id).await?;
    load_one(&mut conn, scope, id).await
}

/// One live contact by its own id, inside a transaction.
pub async fn get_in(tx: &mut Tx, scope: &Scope, id: ContactId) -> ApiResult<Contact> {
    load_one(&mut tx.conn(), scope, id).await
}

async fn load_one(conn: &mut Conn<'_>, scope: &Scope, id: ContactId) -> ApiResult<Contact> {
    let row: Option<ContactRow> = with_conn!(conn, c => sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM contacts c WHERE c.workspace_id = $1 AND c.id = $2"
    ))).bind(scope.workspace_id).bind(id).fetch_optional(c).await)?;
    let row = row.ok_or_else(contact_not_found)?;
    let mut contacts = hydrate(conn, scope, vec![row]).await?;
    contacts.pop().ok_or_else(contact_not_found)
}

/// Adds identifiers and tags to contact rows (two queries for any number of rows).
async fn hydrate(
    conn: &mut Conn<'_>,
    scope: &Scope,
    rows: Vec<ContactRow>,
) -> ApiResult<Vec<Contact>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<ContactId> = rows.iter().map(|r| r.id).collect();
    let identities: Vec<(ContactId, String, String)> = with_conn!(conn, c => {
        let mut q = QueryBuilder::new(
            "SELECT contact_id, kind, value FROM contact_identities WHERE workspace_id = ",
        );
        q.push_bind(scope.workspace_id).push(" AND contact_id IN (");
        let mut list = q.separated(", ");
        for id in &ids {
            list.push_bind(*id);
        }
        q.push(") ORDER BY contact_id, kind, position, created_at, value");
        q.build_query_as().fetch_all(&mut *c).await
    })?;
    let tags: Vec<(ContactId, String)> = with_conn!(conn, c => {
        let mut q = QueryBuilder::new("SELECT contact_id, tag FROM contact_tags WHERE workspace_id = ");
        q.push_bind(scope.workspace_id).push(" AND contact_id IN (");
        let mut list = q.separated(", ");
        for id in &ids {
            list.push_bind(*id);
        }
        q.push(") ORDER BY contact_id, tag");
        q.build_query_as().fetch_all(&mut *c).await
    })?;
    let mut by_contact: BTreeMap<ContactId, (Identifiers, Vec<String>)> = BTreeMap::new();
    for (id, kind, value) in identities {
        if let Some(k) = IDENTIFIER_KINDS.iter().find(|k| **k == kind) {
            by_contact
                .entry(id)
                .or_default()
                .0
                .entry(k)
                .or_default()
                .push(value);
        }
    }
    for (id, tag) in tags {
        by_contact.entry(id).or_default().1.push(tag);
    }
    Ok(rows
        .into_iter()
        .map(|r| {
            let (mut idents, tags) = by_contact.remove(&r.id).unwrap_or_default();
            let mut take = |k: &str| idents.remove(k).unwrap_or_default();
            Contact {
                id: r.id,
                first_name: r.first_name,
                last_name: r.last_name,
                emails: take("email"),
                phones: take("phone"),
                external_ids: take("external_id"),
                ga_client_ids: take("ga_client_id"),
                anonymous_ids: take("anonymous_id"),
                company_id: r.company_id,
                owner_id: r.owner_id,
                lifecycle_stage: LifecycleStage::parse(&r.lifecycle_stage)
                    .unwrap_or(LifecycleStage::Lead),
                lead_score: r.lead_score,
                first_touch: r
                    .first_touch
                    .as_deref()
                    .and_then(|t| serde_json::from_str(t).ok()),
                last_touch: r
                    .last_touch
                    .as_deref()
                    .and_then(|t| serde_json::from_str(t).ok()),
                tags,
                custom: from_json(&r.custom),
                created_at: r.created_at,
                updated_at: r.updated_at,
                last_seen_at: r.last_seen_at,
            }
        })
        .collect())
}

/// `%`, `_` and `\` taken literally in a LIKE pattern (with `ESCAPE '\'`).
fn like_pattern(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('%');
    for ch in text.to_lowercase().chars() {
        if matches!(ch, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(ch);
    }
    out.push('%');
    out
}

/// A [`ContactFilter`] checked and normalized, ready to become SQL.
struct Prepared {
    dialect: Dialect,
    workspace_id: WorkspaceId,
    email: Option<String>,
    phone: Option<String>,
    q: Option<String>,
    custom: Option<(String, String)>,
    seen_since: Option<Timestamp>,
    visited: Option<(String, Timestamp)>,
    column: &'static str,
    descending: bool,
}

async fn prepare(
    conn: &mut Conn<'_>,
    dialect: Dialect,
    scope: &Scope,
    filter: &ContactFilter,
) -> ApiResult<Prepared> {
    let email = filter
        .email
        .as_deref()
        .map(|e| normalize::email("email", e))
        .transpose()?;
    let phone = match filter.phone.as_deref() {
        Some(p) => {
            let region = region_of(conn, scope).await?;
            Some(normalize::phone("phone", p, &region)?)
        }
        None => None,
    };
    let q = filter.q.as_deref().map(str::trim).filter(|q| !q.is_empty());
    let (column, descending) = match filter.sort.as_deref().unwrap_or("-created_at") {
        "-created_at" => ("id", true),
        "created_at" => ("id", false),
        "-updated_at" => ("updated_at", true),
        "updated_at" => ("updated_at", false),
        "-lead_score" => ("lead_score", true),
        "lead_score" => ("lead_score", false),
        other => {
            return Err(ApiError::bad_request(
                "invalid_sort",
                format!(
                    "`sort={other}`: use created_at, updated_at or lead_score, with `-` for descending."
                ),
            ));
        }
    };

    let custom = filter
        .custom
        .as_deref()
        .map(|c| {
            c.split_once(':')
                .filter(|(k, _)| {
                    !k.is_empty()
                        && k.bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                })
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_query",
                        "`custom` is `key:value`, e.g. `plan:pro`.",
                    )
                })
        })
        .transpose()?;
    let days = |field: &str, value: Option<u32>, max: u32| -> ApiResult<Option<Timestamp>> {
        match value {
            None => Ok(None),
            Some(d) if (1..=max).contains(&d) => Ok(Some(
                Timestamp::now() - std::time::Duration::from_secs(u64::from(d) * 86_400),
            )),
            Some(_) => Err(ApiError::bad_request(
                "invalid_query",
                format!("`{field}` is 1 to {max} days."),
            )),
        }
    };
    let seen_since = days("seen_within_days", filter.seen_within_days, 3_650)?;
    let visited = match &filter.visited_path {
        Some(path) if !path.is_empty() && path.len() <= 500 => {
            let since = days(
                "visited_within_days",
                Some(filter.visited_within_days.unwrap_or(30)),
                365,
            )?;
            // The session entry's data lists its pages as JSON strings: `"/pricing"`.
            let mut pattern = String::from("%\"");
            for ch in path.chars() {
                match ch {
                    '*' => pattern.push('%'),
                    '%' | '_' | '\\' => {
                        pattern.push('\\');
                        pattern.push(ch);
                    }
                    _ => pattern.push(ch),
                }
            }
            pattern.push_str("\"%");
            since.map(|s| (pattern, s))
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_query",
                "`visited_path` is 1 to 500 characters.",
            ));
        }
        None => None,
    };
    if q.is_some_and(|q| q.chars().count() > 200) {
        return Err(ApiError::bad_request(
            "invalid_query",
            "`q` is at most 200 characters.",
        ));
    }
    Ok(Prepared {
        dialect,
        workspace_id: scope.workspace_id,
        email,
        phone,
        q: q.map(str::to_lowercase),
        custom,
        seen_since,
        visited,
        column,
        descending,
    })
}

/// Appends ` AND …` for every condition of the filter to a query over `contacts c`.
macro_rules! push_filters {
    ($b:ident, $p:ident, $f:ident) => {
        if let Some(tag) = &$f.tag {
            $b.push(" AND EXISTS (SELECT 1 FROM contact_tags t WHERE t.contact_id = c.id AND t.tag = ")
                .push_bind(tag.trim().to_owned()).push(")");
        }
        if let Some(stage) = $f.lifecycle_stage {
            $b.push(" AND c.lifecycle_stage = ").push_bind(stage.as_str());
        }
        if let Some(owner) = $f.owner_id {
            $b.push(" AND c.owner_id = ").push_bind(owner);
        }
        if let Some(company) = $f.company_id {
            $b.push(" AND c.company_id = ").push_bind(company);
        }
        if let Some((key, value)) = &$p.custom {
            match $p.dialect {
                Dialect::Sqlite => $b.push(" AND CAST(json_extract(c.custom, ").push_bind(format!("$.{key}")).push(") AS TEXT) = "),
                Dialect::Postgres => $b.push(" AND (c.custom::jsonb ->> ").push_bind(key.clone()).push(") = "),
            };
            $b.push_bind(value.clone());
        }
        for (field, value) in [("source", &$f.source), ("medium", &$f.medium), ("campaign", &$f.campaign)] {
            if let Some(value) = value {
                match $p.dialect {
                    Dialect::Sqlite => $b.push(" AND json_extract(c.first_touch, ").push_bind(format!("$.{field}")).push(") = "),
                    Dialect::Postgres => $b.push(" AND (c.first_touch::jsonb ->> ").push_bind(field).push(") = "),
                };
                $b.push_bind(value.clone());
            }
        }
        if let Some(clicked) = $f.has_click_id {
            // Click ids are ASCII tokens; their JSON keys appear only when set.
            let has = "(coalesce(c.first_touch, '') LIKE '%\"gclid\"%' OR coalesce(c.first_touch, '') LIKE '%\"gbraid\"%'
                OR coalesce(c.first_touch, '') LIKE '%\"wbraid\"%' OR coalesce(c.first_touch, '') LIKE '%\"fbc\"%'
                OR coalesce(c.last_touch, '') LIKE '%\"gclid\"%' OR coalesce(c.last_touch, '') LIKE '%\"gbraid\"%'
                OR coalesce(c.last_touch, '') LIKE '%\"wbraid\"%' OR coalesce(c.last_touch, '') LIKE '%\"fbc\"%')";
            $b.push(if clicked { format!(" AND {has}") } else { format!(" AND NOT {has}") });
        }
        if let Some(since) = $p.seen_since {
            $b.push(" AND c.last_seen_at >= ").push_bind(since);
        }
        if let Some((pattern, since)) = &$p.visited {
            $b.push(" AND EXISTS (SELECT 1 FROM timeline_entries e WHERE e.contact_id = c.id AND e.kind = 'web.session' AND e.occurred_at >= ")
                .push_bind(*since)
                .push(" AND e.data LIKE ")
                .push_bind(pattern.clone())
                .push(" ESCAPE '\\')");
        }
        for (kind, value) in [("email", &$p.email), ("phone", &$p.phone)] {
            if let Some(value) = value {
                // An uncorrelated IN: the planner looks the identifier up once (by its unique
                // index) instead of probing it for every contact in sort order.
                $b.push(" AND c.id IN (SELECT i.contact_id FROM contact_identities i WHERE i.workspace_id = ")
                    .push_bind($p.workspace_id)
                    .push(" AND i.kind = ")
                    .push_bind(kind).push(" AND i.value = ").push_bind(value.clone()).push(")");
            }
        }
        if let Some(q) = &$p.q {
            if $p.dialect == Dialect::Sqlite && q.chars().count() >= 3 {
                // The trigram FTS index: a quoted phrase is a substring match.
                $b.push(" AND c.rowid IN (SELECT rowid FROM contact_search WHERE contact_search MATCH ")
                    .push_bind(format!("\"{}\"", q.replace('"', "\"\"")))
                    .push(")");
            } else {
                // PostgreSQL's trigram index serves LIKE; shorter needles scan.
                $b.push(" AND c.search_text LIKE ").push_bind(like_pattern(q)).push(" ESCAPE '\\'");
            }
        }
    };
}

/// Contacts matching `filter`, in its sort order (newest first by default), one page.
pub async fn list(
    db: &Db,
    scope: &Scope,
    filter: &ContactFilter,
    page: &PageParams,
) -> ApiResult<Page<Contact>> {
    let limit = page.limit()?;
    let cursor = page.cursor()?;
    let mut pooled = db.acquire().await?;
    let mut conn = pooled.conn();
    let p = prepare(&mut conn, db.dialect(), scope, filter).await?;
    let (column, descending) = (p.column, p.descending);
    let dir = if descending { "DESC" } else { "ASC" };
    let rows: Vec<ContactRow> = with_conn!(&mut conn, c => {
        let mut b = QueryBuilder::new(format!("SELECT {COLUMNS} FROM contacts c WHERE c.workspace_id = "));
        b.push_bind(scope.workspace_id);
        if let Some(cursor) = cursor {
            // Keyset paging on (sort column, id), from the cursor row's own values.
            let cmp = if descending { "<" } else { ">" };
            b.push(format!(" AND (c.{column}, c.id) {cmp} (SELECT {column}, id FROM contacts WHERE workspace_id = "))
                .push_bind(scope.workspace_id)
                .push(" AND id = ")
                .push_bind(ContactId(cursor))
                .push(")");
        }
        push_filters!(b, p, filter);
        let order = if column == "id" { format!("c.id {dir}") } else { format!("c.{column} {dir}, c.id {dir}") };
        b.push(format!(" ORDER BY {order} LIMIT ")).push_bind(i64::from(limit) + 1);
        b.build_query_as().fetch_all(&mut *c).await
    })?;
    let page = Page::from_rows(rows, limit, |r| r.id.uuid());
    let data = hydrate(&mut conn, scope, page.data).await?;
    Ok(Page {
        data,
        next_cursor: page.next_cursor,
    })
}

/// How many contacts match `filter` (segments' live counts).
pub async fn count(db: &Db, scope: &Scope, filter: &ContactFilter) -> ApiResult<i64> {
    let mut pooled = db.acquire().await?;
    let mut conn = pooled.conn();
    let p = prepare(&mut conn, db.dialect(), scope, filter).await?;
    let n: i64 = with_conn!(&mut conn, c => {
        let mut b = QueryBuilder::new("SELECT COUNT(*) FROM contacts c WHERE c.workspace_id = ");
        b.push_bind(scope.workspace_id);
        push_filters!(b, p, filter);
        b.build_query_scalar().fetch_one(&mut *c).await
    })?;
    Ok(n)
}

async fn region_of(conn: &mut Conn<'_>, scope: &Scope) -> ApiResult<String> {
    let region: Option<String> = with_conn!(conn, c => sqlx::query_scalar(
        "SELECT default_region FROM crm_settings WHERE workspace_id = $1",
    ).bind(scope.workspace_id).fetch_optional(c).await)?;
    Ok(region.unwrap_or_else(|| crate::settings::DEFAULT_REGION.to_owned()))
}

// ---------------------------------------------------------------------------------------------
// Input validation

/// The input's identifiers, normalized and de-duplicated (order kept).
fn identifiers(input: &ContactInput, region: &str) -> ApiResult<Identifiers> {
    let mut out = Identifiers::new();
    let lists: [(&'static str, &str, &Option<Vec<String>>); 5] = [
        ("email", "emails", &input.emails),
        ("phone", "phones", &input.phones),
        ("external_id", "external_ids", &input.external_ids),
        ("ga_client_id", "ga_client_ids", &input.ga_client_ids),
        ("anonymous_id", "anonymous_ids", &input.anonymous_ids),
    ];
    for (kind, field, list) in lists {
        let Some(list) = list else { continue };
        if list.len() > 50 {
            return Err(ApiError::invalid_field(
                field,
                format!("At most 50 `{field}`."),
            ));
        }
        let mut values: Vec<String> = Vec::with_capacity(list.len());
        for raw in list {
            let value = match kind {
                "email" => normalize::email(field, raw)?,
                "phone" => normalize::phone(field, raw, region)?,
                _ => normalize::identifier(field, raw)?,
            };
            if !values.contains(&value) {
                values.push(value);
            }
        }
        out.insert(kind, values);
    }
    Ok(out)
}

fn name(field: &str, value: &Option<Option<String>>) -> ApiResult<Option<Option<String>>> {
    Ok(match value {
        None => None,
        Some(None) => Some(None),
        Some(Some(text)) => {
            let text = text.trim();
            if text.chars().count() > 200 || text.chars().any(char::is_control) {
                return Err(ApiError::invalid_field(
                    field,
                    format!("`{field}` is at most 200 characters on one line."),
                ));
            }
            Some((!text.is_empty()).then(|| text.to_owned()))
        }
    })
}

fn check_touch(touch: &Touch) -> ApiResult<()> {
    let fields = [
        ("source", &touch.source),
        ("medium", &touch.medium),
        ("campaign", &touch.campaign),
        ("term", &touch.term),
        ("content", &touch.content),
        ("referrer", &touch.referrer),
        ("landing_page", &touch.landing_page),
        ("gclid", &touch.gclid),
        ("gbraid", &touch.gbraid),
        ("wbraid", &touch.wbraid),
        ("fbc", &touch.fbc),
        ("fbp", &touch.fbp),
    ];
    for (field, value) in fields {
        if value.as_ref().is_some_and(|v| v.len() > 2_048) {
            return Err(ApiError::invalid_field(
                &format!("touch.{field}"),
                format!("`touch.{field}` is at most 2,048 bytes."),
            ));
        }
    }
    Ok(())
}

fn tags(field: &str, list: &[String]) -> ApiResult<Vec<String>> {
    if list.len() > 100 {
        return Err(ApiError::invalid_field(
            field,
            "At most 100 tags per request.",
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    for raw in list {
        let tag = normalize::tag(field, raw)?;
        if !out.contains(&tag) {
            out.push(tag);
        }
    }
    Ok(out)
}

/// Applies the input's scalar fields to `current` (or to a blank contact when creating),
/// checking references. Identifiers and tags are handled by the callers.
async fn apply_scalars(
    tx: &mut Tx,
    scope: &Scope,
    current: Option<&Scalars>,
    input: &ContactInput,
    now: Timestamp,
) -> ApiResult<Scalars> {
    let mut s = current.cloned().unwrap_or(Scalars {
        first_name: None,
        last_name: None,
        company_id: None,
        owner_id: None,
        lifecycle_stage: LifecycleStage::Lead,
        lead_score: 0,
        first_touch: None,
        last_touch: None,
        custom: Map::new(),
        created_at: now,
        last_seen_at: None,
    });
    if let Some(v) = name("first_name", &input.first_name)? {
        s.first_name = v;
    }
    if let Some(v) = name("last_name", &input.last_name)? {
        s.last_name = v;
    }
    if let Some(company) = input.company_id {
        if let Some(id) = company {
            refs::company(tx, scope, "company_id", id).await?;
        }
        s.company_id = company;
    }
    if let Some(owner) = input.owner_id {
        if let Some(id) = owner {
            refs::member(tx, scope, "owner_id", id).await?;
        }
        s.owner_id = owner;
    }
    if let Some(stage) = input.lifecycle_stage {
        s.lifecycle_stage = stage;
    }
    if let Some(score) = input.lead_score {
        if !(-1_000_000..=1_000_000).contains(&score) {
            return Err(ApiError::invalid_field(
                "lead_score",
                "`lead_score` is between -1,000,000 and 1,000,000.",
            ));
        }
        s.lead_score = score;
    }
    if let Some(touch) = &input.touch {
        check_touch(touch)?;
        let mut touch = touch.clone();
        touch.at.get_or_insert(now);
        if s.first_touch.is_none() {
            s.first_touch = Some(touch.clone());
        }
        let newer = s
            .last_touch
            .as_ref()
            .and_then(|t| t.at)
            .is_none_or(|at| touch.at.is_some_and(|new| new >= at));
        if newer {
            s.last_touch = Some(touch);
        }
    }
    if let Some(first) = &input.first_touch {
        check_touch(first)?;
        let mut first = first.clone();
        first.at.get_or_insert(now);
        let earlier = s
            .first_touch
            .as_ref()
            .is_none_or(|t| t.at.is_none_or(|at| first.at.is_some_and(|new| new < at)));
        if earlier {
            s.first_touch = Some(first);
        }
    }
    if let Some(seen) = input.last_seen_at {
        s.last_seen_at = Some(s.last_seen_at.map_or(seen, |old| old.max(seen)));
    }
    let changes = input.custom.clone().unwrap_or_default();
    if current.is_none() || !changes.is_empty() {
        s.custom = fields::apply(
            tx,
            scope,
            Entity::Contact,
            current.map(|c| &c.custom),
            &changes,
        )
        .await?;
    }
    Ok(s)
}

// ---------------------------------------------------------------------------------------------
// Writes

/// Serializes the writers of one workspace's contacts on PostgreSQL (a transaction-scoped
/// advisory lock; SQLite's write lock already does this). Identity resolution reads who holds
/// which identifier and then moves identifiers and deletes merged contacts: two such
/// transactions interleaving under READ COMMITTED could each merge the same contact into a
/// different survivor and lose identifiers through the cascades. Workspaces still write in
/// parallel. The two-key form keeps clear of the job queue's single-key lock.
pub(crate) async fn lock_contacts(tx: &mut Tx, scope: &Scope) -> ApiResult<()> {
    if let Tx::Postgres(tx) = tx {
        let bytes = scope.workspace_id.uuid().into_bytes();
        // UUIDv7's last 8 bytes are random: spread across the 32-bit key.
        let key = i32::from_be_bytes([bytes[12], bytes[13], bytes[14], bytes[15]])
            ^ i32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
            .bind(CONTACTS_LOCK_CLASS)
            .bind(key)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// First key of [`lock_contacts`]'s advisory locks ("CRM1").
const CONTACTS_LOCK_CLASS: i32 = 0x4352_4d31;

async fn insert_row(
    tx: &mut Tx,
    scope: &Scope,
    id: ContactId,
    s: &Scalars,
    now: Timestamp,
) -> ApiResult<()> {
    with_tx!(tx, conn => sqlx::query(
        "INSERT INTO contacts (id, workspace_id, first_name, last_name, company_id, owner_id,
            lifecycle_stage, lead_score, first_touch, last_touch, custom, created_at, updated_at, last_seen_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
    )
    .bind(id).bind(scope.workspace_id).bind(&s.first_name).bind(&s.last_name).bind(s.company_id)
    .bind(s.owner_id).bind(s.lifecycle_stage.as_str()).bind(s.lead_score)
    .bind(touch_json(&s.first_touch)).bind(touch_json(&s.last_touch)).bind(to_json(&s.custom))
    .bind(s.created_at).bind(now).bind(s.last_seen_at)
    .execute(conn).await.map(|_| ()))?;
    Ok(())
}

async fn write_row(
    tx: &mut Tx,
    scope: &Scope,
    id: ContactId,
    s: &Scalars,
    now: Timestamp,
) -> ApiResult<()> {
    with_tx!(tx, conn => sqlx::query(
        "UPDATE contacts SET first_name = $1, last_name = $2, company_id = $3, owner_id = $4,
            lifecycle_stage = $5, lead_score = $6, first_touch = $7, last_touch = $8, custom = $9,
            created_at = $10, updated_at = $11, last_seen_at = $12
         WHERE workspace_id = $13 AND id = $14",
    )
    .bind(&s.first_name).bind(&s.last_name).bind(s.company_id).bind(s.owner_id)
    .bind(s.lifecycle_stage.as_str()).bind(s.lead_score)
    .bind(touch_json(&s.first_touch)).bind(touch_json(&s.last_touch)).bind(to_json(&s.custom))
    .bind(s.created_at).bind(now).bind(s.last_seen_at).bind(scope.workspace_id).bind(id)
    .execute(conn).await.map(|_| ()))?;
    Ok(())
}

/// Contacts (other than `except`) holding any of the identifiers, oldest first.
async fn holders(
    tx: &mut Tx,
    scope: &Scope,
    idents: &Identifiers,
    except: Option<ContactId>,
) -> ApiResult<Vec<ContactId>> {
    if idents.values().all(Vec::is_empty) {
        return Ok(Vec::new());
    }
    let found: Vec<ContactId> = with_tx!(tx, conn => {
        let mut b = QueryBuilder::new("SELECT DISTINCT contact_id FROM contact_identities WHERE workspace_id = ");
        b.push_bind(scope.workspace_id).push(" AND (");
        let mut first = true;
        for (kind, values) in idents {
            for value in values {
                if !first {
                    b.push(" OR ");
                }
                first = false;
                b.push("(kind = ").push_bind(*kind).push(" AND value = ").push_bind(value.clone()).push(")");
            }
        }
        b.push(")");
        if let Some(except) = except {
            b.push(" AND contact_id <> ").push_bind(except);
        }
        b.push(" ORDER BY contact_id");
        b.build_query_scalar().fetch_all(&mut *conn).await
    })?;
    Ok(found)
}

/// Gives the identifiers to `id` (appended after its own); ones it already has are skipped.
async fn add_identifiers(
    tx: &mut Tx,
    scope: &Scope,
    id: ContactId,
    idents: &Identifiers,
    now: Timestamp,
) -> ApiResult<()> {
    for (kind, values) in idents {
        for (i, value) in values.iter().enumerate() {
            let position = 1_000 + i32::try_from(i).unwrap_or(0);
            with_tx!(tx, conn => sqlx::query(
                "INSERT INTO contact_identities (workspace_id, kind, value, contact_id, position, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (workspace_id, kind, value) DO NOTHING",
            ).bind(scope.workspace_id).bind(*kind).bind(value).bind(id).bind(position).bind(now)
             .execute(conn).await.map(|_| ()))?;
        }
    }
    Ok(())
}

/// Adds tags; returns the ones that were new.
async fn add_tags(
    tx: &mut Tx,
    scope: &Scope,
    id: ContactId,
    tags: &[String],
    now: Timestamp,
) -> ApiResult<Vec<String>> {
    let mut added = Vec::new();
    for tag in tags {
        let n = with_tx!(tx, conn => sqlx::query(
            "INSERT INTO contact_tags (workspace_id, contact_id, tag, created_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (contact_id, tag) DO NOTHING",
        ).bind(scope.workspace_id).bind(id).bind(tag).bind(now)
         .execute(conn).await.map(|r| r.rows_affected()))?;
        if n > 0 {
            added.push(tag.clone());
        }
    }
    Ok(added)
}

async fn tag_events(
    tx: &mut Tx,
    scope: &Scope,
    id: ContactId,
    added: &[String],
    removed: &[String],
) -> ApiResult<()> {
    for (tags, entry, event) in [
        (added, kind::TAG_ADDED, "contact.tag_added"),
        (removed, kind::TAG_REMOVED, "contact.tag_removed"),
    ] {
        for tag in tags {
            let data = json!({ "contact_id": id, "tag": tag });
            timeline::record(tx, scope, id, entry, &data, None).await?;
            platform::outbox::publish(tx, scope.workspace_id, event, &data).await?;
        }
    }
    Ok(())
}

/// What changed between two versions of a contact, by field: `{field: {from, to}}`.
fn diff(before: &Contact, after: &Contact) -> Map<String, Value> {
    let (a, b) = (
        serde_json::to_value(before).unwrap_or_default(),
        serde_json::to_value(after).unwrap_or_default(),
    );
    let mut out = Map::new();
    let skip = [
        "id",
        "created_at",
        "updated_at",
        "last_seen_at",
        "tags",
        "custom",
    ];
    if let (Value::Object(a), Value::Object(b)) = (&a, &b) {
        for (key, new) in b {
            let old = a.get(key).unwrap_or(&Value::Null);
            if !skip.contains(&key.as_str()) && old != new {
                out.insert(key.clone(), json!({ "from": old, "to": new }));
            }
        }
    }
    let keys: BTreeSet<&String> = before.custom.keys().chain(after.custom.keys()).collect();
    for key in keys {
        let (old, new) = (before.custom.get(key), after.custom.get(key));
        if old != new {
            out.insert(format!("custom.{key}"), json!({ "from": old, "to": new }));
        }
    }
    out
}

async fn updated_events(
    tx: &mut Tx,
    scope: &Scope,
    before: &Contact,
    after: &Contact,
) -> ApiResult<()> {
    let changes = diff(before, after);
    if changes.is_empty() {
        return Ok(());
    }
    let data = json!({ "contact_id": after.id, "changes": changes });
    timeline::record(tx, scope, after.id, kind::UPDATED, &data, None).await?;
    platform::outbox::publish(tx, scope.workspace_id, "contact.updated", &data).await?;
    Ok(())
}

/// Create-or-update by identifiers (identity resolution, merging when the input joins several
/// contacts), in the caller's transaction; publishes the domain events.
pub async fn upsert(tx: &mut Tx, scope: &Scope, input: &ContactInput) -> ApiResult<Upserted> {
    lock_contacts(tx, scope).await?;
    let region = if input.phones.as_ref().is_some_and(|p| !p.is_empty()) {
        crate::settings::default_region(tx, scope).await?
    } else {
        crate::settings::DEFAULT_REGION.to_owned()
    };
    let idents = identifiers(input, &region)?;
    let new_tags = tags("tags", input.tags.as_deref().unwrap_or_default())?;
    let now = Timestamp::now();
    let found = holders(tx, scope, &idents, None).await?;
    let mut merged = Vec::new();
    let (id, created, before) = match found.split_first() {
        None => {
            let id = ContactId::new();
            let scalars = apply_scalars(tx, scope, None, input, now).await?;
            insert_row(tx, scope, id, &scalars, now).await?;
            (id, true, None)
        }
        Some((&survivor, others)) => {
            for &other in others {
                merge_into(tx, scope, survivor, other).await?;
                merged.push(other);
            }
            let before = get_in(tx, scope, survivor).await?;
            let scalars =
                apply_scalars(tx, scope, Some(&Scalars::from(&before)), input, now).await?;
            write_row(tx, scope, survivor, &scalars, now).await?;
            (survivor, false, Some(before))
        }
    };
    add_identifiers(tx, scope, id, &idents, now).await?;
    // A concurrent writer (PostgreSQL) may have taken one of our new identifiers: join it.
    let mut id = id;
    let late = holders(tx, scope, &idents, Some(id)).await?;
    for other in late {
        let (survivor, loser) = if other < id { (other, id) } else { (id, other) };
        merge_into(tx, scope, survivor, loser).await?;
        merged.push(loser);
        id = survivor;
    }
    let added = add_tags(tx, scope, id, &new_tags, now).await?;
    refresh_search(tx, scope, id).await?;
    let contact = get_in(tx, scope, id).await?;
    match &before {
        None => {
            let data = json!({ "contact_id": id, "contact": &contact });
            timeline::record(tx, scope, id, kind::CREATED, &json!({}), None).await?;
            platform::outbox::publish(tx, scope.workspace_id, "contact.created", &data).await?;
        }
        Some(before) => updated_events(tx, scope, before, &contact).await?,
    }
    tag_events(tx, scope, id, &added, &[]).await?;
    Ok(Upserted {
        contact,
        created,
        merged,
    })
}

/// Changes a contact. Identifier and tag lists replace the contact's; an identifier held by
/// another contact is a 409 (`identifier_taken`, with that contact's id): merge them instead.
pub async fn update(
    db: &Db,
    scope: &Scope,
    id: ContactId,
    input: &ContactInput,
) -> ApiResult<Contact> {
    let mut tx = db.begin().await?;
    let after = update_in(&mut tx, scope, id, input).await?;
    tx.commit().await?;
    Ok(after)
}

/// [`update`] in the caller's transaction.
pub async fn update_in(
    tx: &mut Tx,
    scope: &Scope,
    id: ContactId,
    input: &ContactInput,
) -> ApiResult<Contact> {
    lock_contacts(tx, scope).await?;
    let id = resolve_in(tx, scope, id).await?;
    let before = get_in(tx, scope, id).await?;
    let region = if input.phones.as_ref().is_some_and(|p| !p.is_empty()) {
        crate::settings::default_region(tx, scope).await?
    } else {
        crate::settings::DEFAULT_REGION.to_owned()
    };
    let idents = identifiers(input, &region)?;
    let now = Timestamp::now();
    for (kind, values) in &idents {
        for value in values {
            let owner: Option<ContactId> = with_tx!(&mut *tx, conn => sqlx::query_scalar(
                "SELECT contact_id FROM contact_identities WHERE workspace_id = $1 AND kind = $2 AND value = $3",
            ).bind(scope.workspace_id).bind(*kind).bind(value).fetch_optional(conn).await)?;
            if let Some(owner) = owner.filter(|o| *o != id) {
                return Err(ApiError::conflict(
                    "identifier_taken",
                    format!(
                        "`{value}` belongs to contact {owner}; merge the two contacts instead."
                    ),
                )
                .with_details(
                    json!({ "field": format!("{kind}s"), "value": value, "contact_id": owner }),
                ));
            }
        }
        with_tx!(&mut *tx, conn => sqlx::query(
            "DELETE FROM contact_identities WHERE workspace_id = $1 AND contact_id = $2 AND kind = $3",
        ).bind(scope.workspace_id).bind(id).bind(*kind).execute(conn).await.map(|_| ()))?;
        for (i, value) in values.iter().enumerate() {
            with_tx!(&mut *tx, conn => sqlx::query(
                "INSERT INTO contact_identities (workspace_id, kind, value, contact_id, position, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6)",
            ).bind(scope.workspace_id).bind(*kind).bind(value).bind(id)
             .bind(i32::try_from(i).unwrap_or(0)).bind(now).execute(conn).await.map(|_| ()))?;
        }
    }
    let scalars = apply_scalars(tx, scope, Some(&Scalars::from(&before)), input, now).await?;
    write_row(tx, scope, id, &scalars, now).await?;
    let (mut added, mut removed) = (Vec::new(), Vec::new());
    if let Some(list) = &input.tags {
        let wanted = tags("tags", list)?;
        removed = before
            .tags
            .iter()
            .filter(|t| !wanted.contains(t))
            .cloned()
            .collect();
        for tag in &removed {
            remove_tag_row(tx, scope, id, tag).await?;
        }
        added = add_tags(tx, scope, id, &wanted, now).await?;
    }
    refresh_search(tx, scope, id).await?;
    let after = get_in(tx, scope, id).await?;
    updated_events(tx, scope, &before, &after).await?;
    tag_events(tx, scope, id, &added, &removed).await?;
    Ok(after)
}

async fn remove_tag_row(tx: &mut Tx, scope: &Scope, id: ContactId, tag: &str) -> ApiResult<u64> {
    Ok(with_tx!(tx, conn => sqlx::query(
        "DELETE FROM contact_tags WHERE workspace_id = $1 AND contact_id = $2 AND tag = $3",
    ).bind(scope.workspace_id).bind(id).bind(tag).execute(conn).await.map(|r| r.rows_affected()))?)
}

/// Raises the contact's lifecycle stage to `stage` if it is behind (capture never demotes a
/// customer to a lead); marks it seen at `seen`.
pub(crate) async fn raise_lifecycle(
    tx: &mut Tx,
    scope: &Scope,
    id: ContactId,
    stage: LifecycleStage,
) -> ApiResult<()> {
    let current = get_in(tx, scope, id).await?.lifecycle_stage;
    if current < stage && current != LifecycleStage::Other {
        with_tx!(tx, conn => sqlx::query(
            "UPDATE contacts SET lifecycle_stage = $1, updated_at = $2 WHERE workspace_id = $3 AND id = $4",
        ).bind(stage.as_str()).bind(Timestamp::now()).bind(scope.workspace_id).bind(id)
         .execute(conn).await.map(|_| ()))?;
    }
    Ok(())
}

/// Marks the contact as seen at `seen` (never moving the mark back).
pub(crate) async fn seen(
    tx: &mut Tx,
    scope: &Scope,
    id: ContactId,
    seen: Timestamp,
) -> ApiResult<()> {
    with_tx!(tx, conn => sqlx::query(
        "UPDATE contacts SET last_seen_at = $1
         WHERE workspace_id = $2 AND id = $3 AND (last_seen_at IS NULL OR last_seen_at < $1)",
    ).bind(seen).bind(scope.workspace_id).bind(id).execute(conn).await.map(|_| ()))?;
    Ok(())
}

/// The contact holding an identifier, with its creation time, if any.
pub(crate) async fn holder(
    tx: &mut Tx,
    scope: &Scope,
    kind: &str,
    value: &str,
) -> ApiResult<Option<(ContactId, Timestamp)>> {
    Ok(with_tx!(tx, conn => sqlx::query_as(
        "SELECT i.contact_id, c.created_at FROM contact_identities i JOIN contacts c ON c.id = i.contact_id
         WHERE i.workspace_id = $1 AND i.kind = $2 AND i.value = $3",
    ).bind(scope.workspace_id).bind(kind).bind(value).fetch_optional(conn).await)?)
}

/// The contact holding an email or phone (`kind` is `email` or `phone`), normalized like on
/// write, in the caller's transaction; `None` when nobody holds it.
pub async fn find_by_identifier_in(
    tx: &mut Tx,
    scope: &Scope,
    kind: &str,
    raw: &str,
) -> ApiResult<Option<ContactId>> {
    let value = match kind {
        "email" => normalize::email("email", raw)?,
        "phone" => {
            let region = crate::settings::default_region(tx, scope).await?;
            normalize::phone("phone", raw, &region)?
        }
        _ => normalize::identifier(kind, raw)?,
    };
    let kind = IDENTIFIER_KINDS
        .into_iter()
        .find(|k| *k == kind)
        .ok_or_else(|| ApiError::invalid_field(kind, "Unknown identifier kind."))?;
    Ok(holder(tx, scope, kind, &value).await?.map(|(id, _)| id))
}

/// Recomputes the contact's `search_text`: lower-cased names, identifiers (phones also as bare
/// digits) and company name, which the list's `q` searches (FTS5 trigram on SQLite, a trigram
/// index on PostgreSQL).
pub(crate) async fn refresh_search(tx: &mut Tx, scope: &Scope, id: ContactId) -> ApiResult<()> {
    let contact = get_in(tx, scope, id).await?;
    let company: Option<String> = match contact.company_id {
        Some(company) => with_tx!(tx, conn => sqlx::query_scalar(
            "SELECT name FROM companies WHERE workspace_id = $1 AND id = $2",
        ).bind(scope.workspace_id).bind(company).fetch_optional(conn).await)?,
        None => None,
    };
    let mut parts: Vec<String> = Vec::new();
    parts.extend(contact.first_name.clone());
    parts.extend(contact.last_name.clone());
    parts.extend(contact.emails.iter().cloned());
    for phone in &contact.phones {
        parts.push(phone.clone());
        parts.push(phone.trim_start_matches('+').to_owned());
    }
    parts.extend(contact.external_ids.iter().cloned());
    parts.extend(company);
    let text = parts.join(" ").to_lowercase();
    with_tx!(tx, conn => sqlx::query(
        "UPDATE contacts SET search_text = $1 WHERE workspace_id = $2 AND id = $3 AND search_text <> $1",
    ).bind(&text).bind(scope.workspace_id).bind(id).execute(conn).await.map(|_| ()))?;
    Ok(())
}

/// The contacts of a company.
pub(crate) async fn of_company(
    tx: &mut Tx,
    scope: &Scope,
    company: CompanyId,
) -> ApiResult<Vec<ContactId>> {
    Ok(with_tx!(tx, conn => sqlx::query_scalar(
        "SELECT id FROM contacts WHERE workspace_id = $1 AND company_id = $2",
    ).bind(scope.workspace_id).bind(company).fetch_all(conn).await)?)
}

/// Recomputes `search_text` of every contact of a company (after it was renamed).
pub(crate) async fn refresh_company_search(
    tx: &mut Tx,
    scope: &Scope,
    company: CompanyId,
) -> ApiResult<()> {
    for id in of_company(tx, scope, company).await? {
        refresh_search(tx, scope, id).await?;
    }
    Ok(())
}

/// Adds tags to a contact.
pub async fn tag(db: &Db, scope: &Scope, id: ContactId, list: &[String]) -> ApiResult<Contact> {
    let mut tx = db.begin().await?;
    let contact = tag_in(&mut tx, scope, id, list).await?;
    tx.commit().await?;
    Ok(contact)
}

/// [`tag`] in the caller's transaction (automation steps commit with their run).
pub async fn tag_in(
    tx: &mut Tx,
    scope: &Scope,
    id: ContactId,
    list: &[String],
) -> ApiResult<Contact> {
    let wanted = tags("tags", list)?;
    if wanted.is_empty() {
        return Err(ApiError::invalid_field("tags", "Give at least one tag."));
    }
    lock_contacts(tx, scope).await?;
    let id = resolve_in(tx, scope, id).await?;
    let added = add_tags(tx, scope, id, &wanted, Timestamp::now()).await?;
    touch_updated(tx, scope, id).await?;
    tag_events(tx, scope, id, &added, &[]).await?;
    get_in(tx, scope, id).await
}

/// Removes one tag; 404 `tag_not_found` if the contact does not have it.
pub async fn untag(db: &Db, scope: &Scope, id: ContactId, tag: &str) -> ApiResult<()> {
    let mut tx = db.begin().await?;
    if !untag_in(&mut tx, scope, id, tag).await? {
        return Err(ApiError::not_found(
            "tag_not_found",
            "The contact does not have this tag.",
        ));
    }
    tx.commit().await?;
    Ok(())
}

/// Removes one tag in the caller's transaction; `false` (and nothing written) if the contact
/// does not have it.
pub async fn untag_in(tx: &mut Tx, scope: &Scope, id: ContactId, tag: &str) -> ApiResult<bool> {
    lock_contacts(tx, scope).await?;
    let id = resolve_in(tx, scope, id).await?;
    if remove_tag_row(tx, scope, id, tag).await? == 0 {
        return Ok(false);
    }
    touch_updated(tx, scope, id).await?;
    tag_events(tx, scope, id, &[], &[tag.to_owned()]).await?;
    Ok(true)
}

async fn touch_updated(tx: &mut Tx, scope: &Scope, id: ContactId) -> ApiResult<()> {
    with_tx!(tx, conn => sqlx::query("UPDATE contacts SET updated_at = $1 WHERE workspace_id = $2 AND id = $3")
        .bind(Timestamp::now()).bind(scope.workspace_id).bind(id).execute(conn).await.map(|_| ()))?;
    Ok(())
}

/// Deletes a contact with its identifiers, tags, timeline, notes and tasks. Ids merged into it
/// stop resolving.
pub async fn delete(db: &Db, scope: &Scope, id: ContactId) -> ApiResult<()> {
    let mut tx = db.begin().await?;
    lock_contacts(&mut tx, scope).await?;
    let id = resolve_in(&mut tx, scope, id).await?;
    with_tx!(&mut tx, conn => sqlx::query("DELETE FROM contact_merges WHERE workspace_id = $1 AND survivor_id = $2")
        .bind(scope.workspace_id).bind(id).execute(conn).await.map(|_| ()))?;
    with_tx!(&mut tx, conn => sqlx::query("DELETE FROM contacts WHERE workspace_id = $1 AND id = $2")
        .bind(scope.workspace_id).bind(id).execute(conn).await.map(|_| ()))?;
    platform::outbox::publish(
        &mut tx,
        scope.workspace_id,
        "contact.deleted",
        &json!({ "contact_id": id }),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Merges the given contacts into `survivor` (the manual merge). Ids are resolved first, so an
/// already merged id is a no-op.
pub async fn merge(
    db: &Db,
    scope: &Scope,
    survivor: ContactId,
    others: &[ContactId],
) -> ApiResult<Upserted> {
    if others.is_empty() || others.len() > 50 {
        return Err(ApiError::invalid_field(
            "contact_ids",
            "Give 1 to 50 contact ids to merge.",
        ));
    }
    let mut tx = db.begin().await?;
    lock_contacts(&mut tx, scope).await?;
    let survivor = resolve_in(&mut tx, scope, survivor).await?;
    let mut merged = Vec::new();
    for &other in others {
        let other = resolve_in(&mut tx, scope, other).await.map_err(|_| {
            ApiError::invalid_field(
                "contact_ids",
                format!("No contact {other} in this workspace."),
            )
        })?;
        if other != survivor && !merged.contains(&other) {
            merge_into(&mut tx, scope, survivor, other).await?;
            merged.push(other);
        }
    }
    refresh_search(&mut tx, scope, survivor).await?;
    let contact = get_in(&mut tx, scope, survivor).await?;
    tx.commit().await?;
    Ok(Upserted {
        contact,
        created: false,
        merged,
    })
}

/// Folds `loser` into `survivor`: identifiers, tags, deals, notes, tasks and timeline move;
/// the survivor's empty fields take the loser's values (first touch: the earlier one; last
/// touch: the later one; lifecycle: the further one; lead score and last seen: the higher);
/// the loser is deleted and recorded as merged, and ids that pointed at it point at the survivor.
async fn merge_into(
    tx: &mut Tx,
    scope: &Scope,
    survivor: ContactId,
    loser: ContactId,
) -> ApiResult<()> {
    let keep = get_in(tx, scope, survivor).await?;
    let gone = get_in(tx, scope, loser).await?;
    let ws = scope.workspace_id;
    let statements = [
        "UPDATE contact_identities SET contact_id = $1, position = position + 2000
         WHERE workspace_id = $2 AND contact_id = $3",
        "INSERT INTO contact_tags (workspace_id, contact_id, tag, created_at)
         SELECT workspace_id, $1, tag, created_at FROM contact_tags WHERE workspace_id = $2 AND contact_id = $3
         ON CONFLICT (contact_id, tag) DO NOTHING",
        "UPDATE notes SET contact_id = $1 WHERE workspace_id = $2 AND contact_id = $3",
        "UPDATE tasks SET contact_id = $1 WHERE workspace_id = $2 AND contact_id = $3",
        "UPDATE contact_merges SET survivor_id = $1 WHERE workspace_id = $2 AND survivor_id = $3",
    ];
    for sql in statements {
        with_tx!(tx, conn => sqlx::query(sql).bind(survivor).bind(ws).bind(loser)
            .execute(conn).await.map(|_| ()))?;
    }
    timeline::reassign(tx, scope, loser, survivor).await?;
    crate::deals::store::reassign_contact(tx, scope, loser, survivor).await?;

    let (a, b) = (Scalars::from(&keep), Scalars::from(&gone));
    let earlier = |x: &Option<Touch>, y: &Option<Touch>, want_earlier: bool| -> Option<Touch> {
        match (x, y) {
            (Some(x), Some(y)) => {
                let y_wins = match (x.at, y.at) {
                    (Some(xa), Some(ya)) => {
                        if want_earlier {
                            ya < xa
                        } else {
                            ya > xa
                        }
                    }
                    (None, Some(_)) => true,
                    _ => false,
                };
                Some(if y_wins { y.clone() } else { x.clone() })
            }
            (x, y) => x.clone().or_else(|| y.clone()),
        }
    };
    let mut custom = a.custom.clone();
    for (key, value) in &b.custom {
        custom.entry(key.clone()).or_insert_with(|| value.clone());
    }
    let combined = Scalars {
        first_name: a.first_name.clone().or(b.first_name.clone()),
        last_name: a.last_name.clone().or(b.last_name.clone()),
        company_id: a.company_id.or(b.company_id),
        owner_id: a.owner_id.or(b.owner_id),
        lifecycle_stage: if a.lifecycle_stage == LifecycleStage::Other {
            b.lifecycle_stage
        } else if b.lifecycle_stage == LifecycleStage::Other {
            a.lifecycle_stage
        } else {
            a.lifecycle_stage.max(b.lifecycle_stage)
        },
        lead_score: a.lead_score.max(b.lead_score),
        first_touch: earlier(&a.first_touch, &b.first_touch, true),
        last_touch: earlier(&a.last_touch, &b.last_touch, false),
        custom,
        created_at: a.created_at.min(b.created_at),
        last_seen_at: a.last_seen_at.max(b.last_seen_at),
    };
    let now = Timestamp::now();
    write_row(tx, scope, survivor, &combined, now).await?;
    with_tx!(tx, conn => sqlx::query(
        "INSERT INTO contact_merges (merged_id, workspace_id, survivor_id, snapshot, actor, merged_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
    ).bind(loser).bind(ws).bind(survivor).bind(to_json(&gone)).bind(scope.actor.audit_name()).bind(now)
     .execute(conn).await.map(|_| ()))?;
    with_tx!(tx, conn => sqlx::query("DELETE FROM contacts WHERE workspace_id = $1 AND id = $2")
        .bind(ws).bind(loser).execute(conn).await.map(|_| ()))?;
    let data = json!({ "contact_id": survivor, "merged_id": loser, "merged": &gone });
    timeline::record(
        tx,
        scope,
        survivor,
        kind::MERGED,
        &json!({ "merged_id": loser, "emails": gone.emails, "phones": gone.phones }),
        None,
    )
    .await?;
    platform::outbox::publish(tx, ws, "contact.merged", &data).await?;
    Ok(())
}

/// [`upsert`] inside a savepoint of the caller's transaction: a row that fails (bad input) is
/// undone alone and the transaction goes on — for batches and imports.
pub async fn upsert_isolated(
    tx: &mut Tx,
    scope: &Scope,
    input: &ContactInput,
) -> ApiResult<Upserted> {
    with_tx!(tx, conn => sqlx::query("SAVEPOINT contact_upsert").execute(conn).await.map(|_| ()))?;
    match upsert(tx, scope, input).await {
        Ok(done) => {
            with_tx!(tx, conn => sqlx::query("RELEASE SAVEPOINT contact_upsert").execute(conn).await.map(|_| ()))?;
            Ok(done)
        }
        Err(err) => {
            with_tx!(tx, conn => sqlx::query("ROLLBACK TO SAVEPOINT contact_upsert").execute(conn).await.map(|_| ()))?;
            with_tx!(tx, conn => sqlx::query("RELEASE SAVEPOINT contact_upsert").execute(conn).await.map(|_| ()))?;
            Err(err)
        }
    }
}

/// The contact known by a GA client id (`cid`), if any. The narrow lookup other features use to
/// tie a tracking hit to a contact without reading CRM tables (offline conversions).
pub async fn find_by_ga_client_id(
    db: &Db,
    scope: &Scope,
    client_id: &str,
) -> ApiResult<Option<ContactId>> {
    let found: Option<ContactId> = platform::with_db!(db, pool => sqlx::query_scalar(
        "SELECT contact_id FROM contact_identities WHERE workspace_id = $1 AND kind = 'ga_client_id' AND value = $2",
    ).bind(scope.workspace_id).bind(client_id).fetch_optional(pool).await)?;
    Ok(found)
}
