//! Sites in the state database, always scoped to a workspace.

use platform::db::{Db, Tx};
use platform::http::{Page, PageParams};
use platform::{ApiError, ApiResult, Scope, Timestamp, with_db, with_tx};
use serde::Serialize;
use utoipa::ToSchema;

use super::{LoaderSettings, Site, SiteId, SiteRequest, validate};

pub const WRITE_KEY_PREFIX: &str = "swk_";
pub const MP_SECRET_PREFIX: &str = "mps_";

#[derive(sqlx::FromRow)]
struct SiteRow {
    id: SiteId,
    name: String,
    hostnames: String,
    measurement_ids: String,
    web_container_id: Option<String>,
    tagging_server_url: Option<String>,
    preview_server_url: Option<String>,
    allowed_origins: String,
    loader: String,
    write_key: String,
    time_zone: String,
    truncate_ip: bool,
    created_at: Timestamp,
    updated_at: Timestamp,
}

const COLUMNS: &str = "id, name, hostnames, measurement_ids, web_container_id, tagging_server_url, \
     preview_server_url, allowed_origins, loader, write_key, time_zone, truncate_ip, created_at, updated_at";

fn json_list(text: &str) -> Vec<String> {
    serde_json::from_str(text).unwrap_or_default()
}

impl From<SiteRow> for Site {
    fn from(r: SiteRow) -> Site {
        Site {
            id: r.id,
            name: r.name,
            hostnames: json_list(&r.hostnames),
            measurement_ids: json_list(&r.measurement_ids),
            web_container_id: r.web_container_id,
            tagging_server_url: r.tagging_server_url,
            preview_server_url: r.preview_server_url,
            allowed_origins: json_list(&r.allowed_origins),
            loader: serde_json::from_str(&r.loader).unwrap_or_default(),
            write_key: r.write_key,
            time_zone: r.time_zone,
            truncate_ip: r.truncate_ip,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

pub fn site_not_found() -> ApiError {
    ApiError::not_found("site_not_found", "No such site in this workspace.")
}

/// A new site; `mp_api_secret` is shown only now.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedSite {
    pub site: Site,
    /// Secret for `POST /mp/collect?api_secret=…`; stored hashed, shown once.
    pub mp_api_secret: String,
}

fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "[]".to_owned())
}

/// Replaces the site's hostnames; a hostname another site serves is a 409.
async fn set_hostnames(
    tx: &mut Tx,
    scope: &Scope,
    id: SiteId,
    hostnames: &[String],
) -> ApiResult<()> {
    with_tx!(tx, conn => sqlx::query("DELETE FROM site_hostnames WHERE site_id = $1")
        .bind(id).execute(conn).await.map(|_| ()))?;
    for host in hostnames {
        let inserted = with_tx!(tx, conn => sqlx::query(
            "INSERT INTO site_hostnames (hostname, site_id, workspace_id) VALUES ($1, $2, $3)
             ON CONFLICT (hostname) DO NOTHING",
        ).bind(host).bind(id).bind(scope.workspace_id).execute(conn).await.map(|r| r.rows_affected()))?;
        if inserted == 0 {
            return Err(ApiError::conflict(
                "hostname_taken",
                format!("`{host}` is already served by another site."),
            )
            .with_details(serde_json::json!({ "field": "hostnames", "hostname": host })));
        }
    }
    Ok(())
}

pub async fn create(db: &Db, scope: &Scope, req: &SiteRequest) -> ApiResult<CreatedSite> {
    let req = validate(req)?;
    let name = req
        .name
        .clone()
        .ok_or_else(|| ApiError::invalid_field("name", "`name` is required."))?;
    let id = SiteId::new();
    let now = Timestamp::now();
    let write_key = platform::auth::new_token(WRITE_KEY_PREFIX);
    let mp_api_secret = platform::auth::new_token(MP_SECRET_PREFIX);
    let hostnames = req.hostnames.clone().unwrap_or_default();
    let mut tx = db.begin().await?;
    with_tx!(&mut tx, conn => sqlx::query(
        "INSERT INTO sites (id, workspace_id, name, hostnames, measurement_ids, web_container_id,
            tagging_server_url, preview_server_url, allowed_origins, loader, write_key, mp_secret_hash,
            time_zone, truncate_ip, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $15)",
    )
    .bind(id).bind(scope.workspace_id).bind(&name).bind(to_json(&hostnames))
    .bind(to_json(&req.measurement_ids.clone().unwrap_or_default()))
    .bind(req.web_container_id.clone().flatten())
    .bind(req.tagging_server_url.clone().flatten())
    .bind(req.preview_server_url.clone().flatten())
    .bind(to_json(&req.allowed_origins.clone().unwrap_or_default()))
    .bind(to_json(&req.loader.clone().unwrap_or_default()))
    .bind(&write_key).bind(platform::auth::token_hash(&mp_api_secret))
    .bind(req.time_zone.clone().unwrap_or_else(|| "UTC".to_owned()))
    .bind(req.truncate_ip.unwrap_or(false)).bind(now)
    .execute(conn).await.map(|_| ()))?;
    set_hostnames(&mut tx, scope, id, &hostnames).await?;
    let site = get_in(&mut tx, scope, id).await?;
    tx.commit().await?;
    Ok(CreatedSite {
        site,
        mp_api_secret,
    })
}

async fn get_in(tx: &mut Tx, scope: &Scope, id: SiteId) -> ApiResult<Site> {
    let row: Option<SiteRow> = with_tx!(tx, conn => sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM sites WHERE workspace_id = $1 AND id = $2"
    ))).bind(scope.workspace_id).bind(id).fetch_optional(conn).await)?;
    row.map(Site::from).ok_or_else(site_not_found)
}

pub async fn get(db: &Db, scope: &Scope, id: SiteId) -> ApiResult<Site> {
    let row: Option<SiteRow> = with_db!(db, pool => sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM sites WHERE workspace_id = $1 AND id = $2"
    ))).bind(scope.workspace_id).bind(id).fetch_optional(pool).await)?;
    row.map(Site::from).ok_or_else(site_not_found)
}

pub async fn list(db: &Db, scope: &Scope, page: &PageParams) -> ApiResult<Page<Site>> {
    let limit = page.limit()?;
    let cursor = page.cursor()?;
    let rows: Vec<SiteRow> = with_db!(db, pool => sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM sites WHERE workspace_id = $1 AND ($2 IS NULL OR id < $2)
         ORDER BY id DESC LIMIT $3"
    ))).bind(scope.workspace_id).bind(cursor).bind(i64::from(limit) + 1).fetch_all(pool).await)?;
    Ok(Page::from_rows(rows, limit, |r| r.id.uuid()).map(Site::from))
}

pub async fn update(db: &Db, scope: &Scope, id: SiteId, req: &SiteRequest) -> ApiResult<Site> {
    let req = validate(req)?;
    let mut tx = db.begin().await?;
    let current = get_in(&mut tx, scope, id).await?;
    let hostnames = req.hostnames.clone().unwrap_or(current.hostnames.clone());
    let loader: LoaderSettings = req.loader.clone().unwrap_or(current.loader.clone());
    with_tx!(&mut tx, conn => sqlx::query(
        "UPDATE sites SET name = $1, hostnames = $2, measurement_ids = $3, web_container_id = $4,
            tagging_server_url = $5, preview_server_url = $6, allowed_origins = $7, loader = $8,
            time_zone = $9, truncate_ip = $10, updated_at = $11
         WHERE workspace_id = $12 AND id = $13",
    )
    .bind(req.name.clone().unwrap_or(current.name))
    .bind(to_json(&hostnames))
    .bind(to_json(&req.measurement_ids.clone().unwrap_or(current.measurement_ids)))
    .bind(req.web_container_id.clone().unwrap_or(current.web_container_id))
    .bind(req.tagging_server_url.clone().unwrap_or(current.tagging_server_url))
    .bind(req.preview_server_url.clone().unwrap_or(current.preview_server_url))
    .bind(to_json(&req.allowed_origins.clone().unwrap_or(current.allowed_origins)))
    .bind(to_json(&loader))
    .bind(req.time_zone.clone().unwrap_or(current.time_zone))
    .bind(req.truncate_ip.unwrap_or(current.truncate_ip))
    .bind(Timestamp::now())
    .bind(scope.workspace_id).bind(id)
    .execute(conn).await.map(|_| ()))?;
    if req.hostnames.is_some() {
        set_hostnames(&mut tx, scope, id, &hostnames).await?;
    }
    let site = get_in(&mut tx, scope, id).await?;
    tx.commit().await?;
    Ok(site)
}

pub async fn delete(db: &Db, scope: &Scope, id: SiteId) -> ApiResult<()> {
    let deleted = with_db!(db, pool => sqlx::query("DELETE FROM sites WHERE workspace_id = $1 AND id = $2")
        .bind(scope.workspace_id).bind(id).execute(pool).await.map(|r| r.rows_affected()))?;
    if deleted == 0 {
        return Err(site_not_found());
    }
    Ok(())
}

pub async fn rotate_write_key(db: &Db, scope: &Scope, id: SiteId) -> ApiResult<Site> {
    let key = platform::auth::new_token(WRITE_KEY_PREFIX);
    let changed = with_db!(db, pool => sqlx::query(
        "UPDATE sites SET write_key = $1, updated_at = $2 WHERE workspace_id = $3 AND id = $4",
    ).bind(&key).bind(Timestamp::now()).bind(scope.workspace_id).bind(id)
     .execute(pool).await.map(|r| r.rows_affected()))?;
    if changed == 0 {
        return Err(site_not_found());
    }
    get(db, scope, id).await
}

/// Replaces the Measurement Protocol secret and returns the new one (shown once).
pub async fn rotate_mp_secret(db: &Db, scope: &Scope, id: SiteId) -> ApiResult<String> {
    let secret = platform::auth::new_token(MP_SECRET_PREFIX);
    let changed = with_db!(db, pool => sqlx::query(
        "UPDATE sites SET mp_secret_hash = $1, updated_at = $2 WHERE workspace_id = $3 AND id = $4",
    ).bind(platform::auth::token_hash(&secret)).bind(Timestamp::now()).bind(scope.workspace_id).bind(id)
     .execute(pool).await.map(|r| r.rows_affected()))?;
    if changed == 0 {
        return Err(site_not_found());
    }
    Ok(secret)
}

/// One day of a site's traffic counters.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageDay {
    /// UTC day, `YYYY-MM-DD`.
    pub day: String,
    pub accepted_requests: i64,
    pub accepted_events: i64,
    /// Refused requests by reason code.
    pub rejected: std::collections::BTreeMap<String, i64>,
}

pub async fn usage(
    db: &Db,
    scope: &Scope,
    id: SiteId,
    from: &str,
    to: &str,
) -> ApiResult<Vec<UsageDay>> {
    get(db, scope, id).await?;
    let rows: Vec<(String, String, i64)> = with_db!(db, pool => sqlx::query_as(
        "SELECT day, metric, count FROM site_usage
         WHERE workspace_id = $1 AND site_id = $2 AND day >= $3 AND day <= $4 ORDER BY day",
    ).bind(scope.workspace_id).bind(id).bind(from).bind(to).fetch_all(pool).await)?;
    let mut days: Vec<UsageDay> = Vec::new();
    for (day, metric, count) in rows {
        if days.last().is_none_or(|d| d.day != day) {
            days.push(UsageDay {
                day: day.clone(),
                accepted_requests: 0,
                accepted_events: 0,
                rejected: Default::default(),
            });
        }
        let Some(entry) = days.last_mut() else {
            continue;
        };
        match metric.as_str() {
            "accepted_requests" => entry.accepted_requests += count,
            "accepted_events" => entry.accepted_events += count,
            other => {
                let reason = other.strip_prefix("rejected.").unwrap_or(other);
                *entry.rejected.entry(reason.to_owned()).or_default() += count;
            }
        }
    }
    Ok(days)
}
