//! Companies (accounts): a name, an optional domain unique in the workspace, custom fields.
//! Contacts and deals point at them; deleting a company unlinks them.

use axum::extract::State;
use axum::http::StatusCode;
use platform::db::Db;
use platform::error::ErrorBody;
use platform::http::{Json, Page, PageParams, Path, Query};
use platform::id::WorkspaceId;
use platform::{ApiError, ApiResult, AppState, Role, Scope, Timestamp, with_db, with_tx};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::fields::{self, Entity};
use crate::{CompanyId, from_json, normalize, to_json};

/// A company as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Company {
    pub id: CompanyId,
    pub name: String,
    /// Bare host name (`example.com`), unique in the workspace.
    pub domain: Option<String>,
    pub custom: Map<String, Value>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// Create or change a company; on update absent fields are kept, `null` clears.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompanyInput {
    pub name: Option<String>,
    #[serde(default, with = "crate::double_option")]
    #[schema(value_type = Option<String>)]
    pub domain: Option<Option<String>>,
    pub custom: Option<Map<String, Value>>,
}

#[derive(sqlx::FromRow)]
struct CompanyRow {
    id: CompanyId,
    name: String,
    domain: Option<String>,
    custom: String,
    created_at: Timestamp,
    updated_at: Timestamp,
}

impl From<CompanyRow> for Company {
    fn from(r: CompanyRow) -> Self {
        Company {
            id: r.id,
            name: r.name,
            domain: r.domain,
            custom: from_json(&r.custom),
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

const COLUMNS: &str = "id, name, domain, custom, created_at, updated_at";

pub fn company_not_found() -> ApiError {
    ApiError::not_found("company_not_found", "No such company in this workspace.")
}

fn check_name(name: &str) -> ApiResult<String> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(ApiError::invalid_field(
            "name",
            "`name` is 1 to 200 characters.",
        ));
    }
    Ok(name.to_owned())
}

fn domain_taken(domain: &str) -> ApiError {
    ApiError::conflict(
        "domain_taken",
        format!("Another company of this workspace has the domain `{domain}`."),
    )
    .with_details(json!({ "field": "domain" }))
}

pub async fn create(db: &Db, scope: &Scope, req: &CompanyInput) -> ApiResult<Company> {
    let name = check_name(
        req.name
            .as_deref()
            .ok_or_else(|| ApiError::invalid_field("name", "`name` is required."))?,
    )?;
    let domain = req
        .domain
        .clone()
        .flatten()
        .map(|d| normalize::domain("domain", &d))
        .transpose()?;
    let id = CompanyId::new();
    let now = Timestamp::now();
    let mut tx = db.begin().await?;
    let custom = fields::apply(
        &mut tx,
        scope,
        Entity::Company,
        None,
        &req.custom.clone().unwrap_or_default(),
    )
    .await?;
    let inserted = with_tx!(&mut tx, conn => sqlx::query(
        "INSERT INTO companies (id, workspace_id, name, domain, custom, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $6)",
    ).bind(id).bind(scope.workspace_id).bind(&name).bind(&domain).bind(to_json(&custom)).bind(now)
     .execute(conn).await.map(|_| ()));
    if let Err(err) = inserted {
        return Err(
            match (&domain, platform::error::is_unique_violation(&err)) {
                (Some(d), true) => domain_taken(d),
                _ => err.into(),
            },
        );
    }
    platform::outbox::publish(
        &mut tx,
        scope.workspace_id,
        "company.created",
        &json!({ "company_id": id, "name": name, "domain": domain }),
    )
    .await?;
    tx.commit().await?;
    get(db, scope, id).await
}

pub async fn get(db: &Db, scope: &Scope, id: CompanyId) -> ApiResult<Company> {
    let row: Option<CompanyRow> = with_db!(db, pool => sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM companies WHERE workspace_id = $1 AND id = $2"
    ))).bind(scope.workspace_id).bind(id).fetch_optional(pool).await)?;
    row.map(Company::from).ok_or_else(company_not_found)
}

pub async fn list(db: &Db, scope: &Scope, page: &PageParams) -> ApiResult<Page<Company>> {
    let limit = page.limit()?;
    let cursor = page.cursor()?;
    let rows: Vec<CompanyRow> = with_db!(db, pool => sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM companies WHERE workspace_id = $1 AND ($2 IS NULL OR id < $2)
         ORDER BY id DESC LIMIT $3"
    ))).bind(scope.workspace_id).bind(cursor).bind(i64::from(limit) + 1).fetch_all(pool).await)?;
    Ok(Page::from_rows(rows, limit, |r| r.id.uuid()).map(Company::from))
}

pub async fn update(
    db: &Db,
    scope: &Scope,
    id: CompanyId,
    req: &CompanyInput,
) -> ApiResult<Company> {
    let current = get(db, scope, id).await?;
    let name = match &req.name {
        Some(name) => check_name(name)?,
        None => current.name,
    };
    let domain = match &req.domain {
        Some(Some(d)) => Some(normalize::domain("domain", d)?),
        Some(None) => None,
        None => current.domain,
    };
    let mut tx = db.begin().await?;
    let custom = match &req.custom {
        Some(changes) => {
            fields::apply(
                &mut tx,
                scope,
                Entity::Company,
                Some(&current.custom),
                changes,
            )
            .await?
        }
        None => current.custom,
    };
    let updated = with_tx!(&mut tx, conn => sqlx::query(
        "UPDATE companies SET name = $1, domain = $2, custom = $3, updated_at = $4
         WHERE workspace_id = $5 AND id = $6",
    ).bind(&name).bind(&domain).bind(to_json(&custom)).bind(Timestamp::now())
     .bind(scope.workspace_id).bind(id).execute(conn).await.map(|_| ()));
    if let Err(err) = updated {
        return Err(
            match (&domain, platform::error::is_unique_violation(&err)) {
                (Some(d), true) => domain_taken(d),
                _ => err.into(),
            },
        );
    }
    crate::contacts::store::refresh_company_search(&mut tx, scope, id).await?;
    platform::outbox::publish(
        &mut tx,
        scope.workspace_id,
        "company.updated",
        &json!({ "company_id": id, "name": name, "domain": domain }),
    )
    .await?;
    tx.commit().await?;
    get(db, scope, id).await
}

pub async fn delete(db: &Db, scope: &Scope, id: CompanyId) -> ApiResult<()> {
    let mut tx = db.begin().await?;
    let members = crate::contacts::store::of_company(&mut tx, scope, id).await?;
    let deleted = with_tx!(&mut tx, conn => sqlx::query("DELETE FROM companies WHERE workspace_id = $1 AND id = $2")
        .bind(scope.workspace_id).bind(id).execute(conn).await.map(|r| r.rows_affected()))?;
    if deleted == 0 {
        return Err(company_not_found());
    }
    for contact in members {
        crate::contacts::store::refresh_search(&mut tx, scope, contact).await?;
    }
    platform::outbox::publish(
        &mut tx,
        scope.workspace_id,
        "company.deleted",
        &json!({ "company_id": id }),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_company, list_companies))
        .routes(routes!(get_company, update_company, delete_company))
}

/// Create a company.
#[utoipa::path(post, path = "/workspaces/{workspace_id}/companies", tag = "companies",
    params(("workspace_id" = WorkspaceId, Path)), request_body = CompanyInput,
    responses((status = 201, body = Company), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create_company(
    State(state): State<AppState>,
    scope: Scope,
    Json(req): Json<CompanyInput>,
) -> ApiResult<(StatusCode, Json<Company>)> {
    scope.require(Role::Member)?;
    Ok((
        StatusCode::CREATED,
        Json(create(&state.db, &scope, &req).await?),
    ))
}

/// Companies of the workspace, newest first.
#[utoipa::path(get, path = "/workspaces/{workspace_id}/companies", tag = "companies",
    params(("workspace_id" = WorkspaceId, Path), PageParams),
    responses((status = 200, body = Page<Company>), (status = 404, body = ErrorBody)))]
async fn list_companies(
    State(state): State<AppState>,
    scope: Scope,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Page<Company>>> {
    Ok(Json(list(&state.db, &scope, &page).await?))
}

/// One company.
#[utoipa::path(get, path = "/workspaces/{workspace_id}/companies/{company_id}", tag = "companies",
    params(("workspace_id" = WorkspaceId, Path), ("company_id" = CompanyId, Path)),
    responses((status = 200, body = Company), (status = 404, body = ErrorBody)))]
async fn get_company(
    State(state): State<AppState>,
    scope: Scope,
    path: Path<(WorkspaceId, CompanyId)>,
) -> ApiResult<Json<Company>> {
    let Path((_, id)) = path;
    Ok(Json(get(&state.db, &scope, id).await?))
}

/// Change a company.
#[utoipa::path(patch, path = "/workspaces/{workspace_id}/companies/{company_id}", tag = "companies",
    params(("workspace_id" = WorkspaceId, Path), ("company_id" = CompanyId, Path)), request_body = CompanyInput,
    responses((status = 200, body = Company), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn update_company(
    State(state): State<AppState>,
    scope: Scope,
    path: Path<(WorkspaceId, CompanyId)>,
    Json(req): Json<CompanyInput>,
) -> ApiResult<Json<Company>> {
    let Path((_, id)) = path;
    scope.require(Role::Member)?;
    Ok(Json(update(&state.db, &scope, id, &req).await?))
}

/// Delete a company; its contacts and deals are unlinked, not deleted.
#[utoipa::path(delete, path = "/workspaces/{workspace_id}/companies/{company_id}", tag = "companies",
    params(("workspace_id" = WorkspaceId, Path), ("company_id" = CompanyId, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete_company(
    State(state): State<AppState>,
    scope: Scope,
    path: Path<(WorkspaceId, CompanyId)>,
) -> ApiResult<StatusCode> {
    let Path((_, id)) = path;
    scope.require(Role::Admin)?;
    delete(&state.db, &scope, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
