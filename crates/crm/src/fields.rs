//! Custom field definitions per workspace and entity (contact, company, deal), and the
//! validation of values against them on every write. Errors name the field: `custom.<key>`.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use platform::db::{Db, Tx};
use platform::error::ErrorBody;
use platform::http::{Json, Path};
use platform::id::WorkspaceId;
use platform::{ApiError, ApiResult, AppState, Role, Scope, Timestamp, with_db, with_tx};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::{FieldId, from_json, normalize, to_json};

/// What a custom field belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Entity {
    Contact,
    Company,
    Deal,
}

impl Entity {
    pub fn as_str(self) -> &'static str {
        match self {
            Entity::Contact => "contact",
            Entity::Company => "company",
            Entity::Deal => "deal",
        }
    }

    fn parse(text: &str) -> Entity {
        match text {
            "company" => Entity::Company,
            "deal" => Entity::Deal,
            _ => Entity::Contact,
        }
    }
}

/// The type of a custom field, which decides what values it accepts and how they are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    /// Up to 1,000 characters on one line.
    Text,
    /// Up to 100,000 characters.
    LongText,
    /// A JSON number.
    Number,
    /// `{"amount": "1250.50", "currency": "EUR"}`; the amount is a decimal string (exact).
    Money,
    /// `2026-11-22`.
    Date,
    /// RFC 3339, stored in UTC.
    Datetime,
    Boolean,
    /// One of `options`.
    SingleSelect,
    /// A list of distinct `options`.
    MultiSelect,
    /// An `http` or `https` URL.
    Url,
    /// Normalized like contact emails.
    Email,
    /// Normalized to E.164 with the workspace's default region.
    Phone,
}

impl FieldType {
    fn as_str(self) -> &'static str {
        match self {
            FieldType::Text => "text",
            FieldType::LongText => "long_text",
            FieldType::Number => "number",
            FieldType::Money => "money",
            FieldType::Date => "date",
            FieldType::Datetime => "datetime",
            FieldType::Boolean => "boolean",
            FieldType::SingleSelect => "single_select",
            FieldType::MultiSelect => "multi_select",
            FieldType::Url => "url",
            FieldType::Email => "email",
            FieldType::Phone => "phone",
        }
    }

    fn parse(text: &str) -> FieldType {
        serde_json::from_value(Value::String(text.to_owned())).unwrap_or(FieldType::Text)
    }
}

/// A custom field definition.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FieldDefinition {
    pub id: FieldId,
    pub entity: Entity,
    /// The key in `custom`: lower snake case, e.g. `plan_tier`.
    pub key: String,
    pub label: String,
    pub field_type: FieldType,
    /// Allowed values of `single_select` and `multi_select` fields.
    pub options: Vec<String>,
    /// Must have a value when the object is created, and cannot be cleared.
    pub required: bool,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// Create a field definition.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewField {
    pub entity: Entity,
    pub key: String,
    pub label: Option<String>,
    pub field_type: FieldType,
    #[serde(default)]
    pub options: Vec<String>,
    #[serde(default)]
    pub required: bool,
}

/// Change a field definition. The key, entity and type are fixed once created.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FieldChange {
    pub label: Option<String>,
    /// Replaces the options; values already stored keep their old option.
    pub options: Option<Vec<String>>,
    pub required: Option<bool>,
}

#[derive(sqlx::FromRow)]
struct FieldRow {
    id: FieldId,
    entity: String,
    key: String,
    label: String,
    field_type: String,
    options: String,
    required: bool,
    created_at: Timestamp,
    updated_at: Timestamp,
}

impl From<FieldRow> for FieldDefinition {
    fn from(r: FieldRow) -> Self {
        FieldDefinition {
            id: r.id,
            entity: Entity::parse(&r.entity),
            key: r.key,
            label: r.label,
            field_type: FieldType::parse(&r.field_type),
            options: from_json(&r.options),
            required: r.required,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

const COLUMNS: &str =
    "id, entity, key, label, field_type, options, required, created_at, updated_at";

pub fn field_not_found() -> ApiError {
    ApiError::not_found("field_not_found", "No such custom field in this workspace.")
}

fn valid_key(key: &str) -> bool {
    let mut chars = key.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && key.len() <= 63
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn check_options(field_type: FieldType, options: &[String]) -> ApiResult<Vec<String>> {
    let selects = matches!(field_type, FieldType::SingleSelect | FieldType::MultiSelect);
    if !selects {
        if !options.is_empty() {
            return Err(ApiError::invalid_field(
                "options",
                "Only single_select and multi_select fields have options.",
            ));
        }
        return Ok(Vec::new());
    }
    let mut seen = Vec::with_capacity(options.len());
    for option in options {
        let option = option.trim();
        if option.is_empty() || option.len() > 200 || seen.iter().any(|o: &String| o == option) {
            return Err(ApiError::invalid_field(
                "options",
                "Options are distinct, non-empty and at most 200 characters.",
            ));
        }
        seen.push(option.to_owned());
    }
    if seen.is_empty() {
        return Err(ApiError::invalid_field(
            "options",
            "A select field needs at least one option.",
        ));
    }
    Ok(seen)
}

fn check_label(label: &str) -> ApiResult<String> {
    let label = label.trim();
    if label.is_empty() || label.len() > 200 {
        return Err(ApiError::invalid_field(
            "label",
            "`label` is 1 to 200 characters.",
        ));
    }
    Ok(label.to_owned())
}

pub async fn create(db: &Db, scope: &Scope, req: &NewField) -> ApiResult<FieldDefinition> {
    if !valid_key(&req.key) {
        return Err(ApiError::invalid_field(
            "key",
            "`key` is lower snake case starting with a letter, at most 63 characters (e.g. `plan_tier`).",
        ));
    }
    let label = check_label(req.label.as_deref().unwrap_or(&req.key))?;
    let options = check_options(req.field_type, &req.options)?;
    let id = FieldId::new();
    let now = Timestamp::now();
    let result = with_db!(db, pool => sqlx::query(
        "INSERT INTO custom_fields (id, workspace_id, entity, key, label, field_type, options, required, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)",
    ).bind(id).bind(scope.workspace_id).bind(req.entity.as_str()).bind(&req.key).bind(&label)
     .bind(req.field_type.as_str()).bind(to_json(&options)).bind(req.required).bind(now)
     .execute(pool).await.map(|_| ()));
    match result {
        Ok(_) => get(db, scope, id).await,
        Err(err) if platform::error::is_unique_violation(&err) => Err(ApiError::conflict(
            "field_exists",
            format!(
                "A {} field with key `{}` already exists.",
                req.entity.as_str(),
                req.key
            ),
        )),
        Err(err) => Err(err.into()),
    }
}

pub async fn get(db: &Db, scope: &Scope, id: FieldId) -> ApiResult<FieldDefinition> {
    let row: Option<FieldRow> = with_db!(db, pool => sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM custom_fields WHERE workspace_id = $1 AND id = $2"
    ))).bind(scope.workspace_id).bind(id).fetch_optional(pool).await)?;
    row.map(FieldDefinition::from).ok_or_else(field_not_found)
}

pub async fn list(db: &Db, scope: &Scope) -> ApiResult<Vec<FieldDefinition>> {
    let rows: Vec<FieldRow> = with_db!(db, pool => sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM custom_fields WHERE workspace_id = $1 ORDER BY entity, key"
    ))).bind(scope.workspace_id).fetch_all(pool).await)?;
    Ok(rows.into_iter().map(FieldDefinition::from).collect())
}

pub async fn update(
    db: &Db,
    scope: &Scope,
    id: FieldId,
    req: &FieldChange,
) -> ApiResult<FieldDefinition> {
    let current = get(db, scope, id).await?;
    let label = match &req.label {
        Some(label) => check_label(label)?,
        None => current.label,
    };
    let options = match &req.options {
        Some(options) => check_options(current.field_type, options)?,
        None => current.options,
    };
    with_db!(db, pool => sqlx::query(
        "UPDATE custom_fields SET label = $1, options = $2, required = $3, updated_at = $4
         WHERE workspace_id = $5 AND id = $6",
    ).bind(&label).bind(to_json(&options)).bind(req.required.unwrap_or(current.required))
     .bind(Timestamp::now()).bind(scope.workspace_id).bind(id).execute(pool).await.map(|_| ()))?;
    get(db, scope, id).await
}

/// Deletes the definition. Stored values stay in objects' `custom` until they are next written
/// (then they are dropped as unknown), so a deleted field can be recreated without data loss.
pub async fn delete(db: &Db, scope: &Scope, id: FieldId) -> ApiResult<()> {
    let deleted = with_db!(db, pool => sqlx::query(
        "DELETE FROM custom_fields WHERE workspace_id = $1 AND id = $2",
    ).bind(scope.workspace_id).bind(id).execute(pool).await.map(|r| r.rows_affected()))?;
    if deleted == 0 {
        return Err(field_not_found());
    }
    Ok(())
}

async fn definitions(
    tx: &mut Tx,
    scope: &Scope,
    entity: Entity,
) -> ApiResult<Vec<FieldDefinition>> {
    let rows: Vec<FieldRow> = with_tx!(tx, conn => sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM custom_fields WHERE workspace_id = $1 AND entity = $2"
    ))).bind(scope.workspace_id).bind(entity.as_str()).fetch_all(conn).await)?;
    Ok(rows.into_iter().map(FieldDefinition::from).collect())
}

/// Validates `changes` (key → value; `null` clears) against the workspace's definitions and
/// returns the object's new `custom` map: `existing` with the changes applied, every value
/// normalized. Unknown keys, wrong types and missing required fields are 422s naming
/// `custom.<key>`. Pass `existing = None` when creating.
pub async fn apply(
    tx: &mut Tx,
    scope: &Scope,
    entity: Entity,
    existing: Option<&Map<String, Value>>,
    changes: &Map<String, Value>,
) -> ApiResult<Map<String, Value>> {
    let defs = definitions(tx, scope, entity).await?;
    let needs_region = changes.iter().any(|(key, value)| {
        !value.is_null()
            && defs
                .iter()
                .any(|d| &d.key == key && d.field_type == FieldType::Phone)
    });
    let region = if needs_region {
        crate::settings::default_region(tx, scope).await?
    } else {
        crate::settings::DEFAULT_REGION.to_owned()
    };
    let mut result = existing.cloned().unwrap_or_default();
    // Values of deleted definitions do not survive a write.
    result.retain(|key, _| defs.iter().any(|d| &d.key == key));
    for (key, value) in changes {
        let field = format!("custom.{key}");
        let def = defs.iter().find(|d| &d.key == key).ok_or_else(|| {
            ApiError::unprocessable(
                "unknown_custom_field",
                format!(
                    "`{key}` is not a custom field of {}s; define it under /fields first.",
                    entity.as_str()
                ),
            )
            .with_details(serde_json::json!({ "field": field }))
        })?;
        if value.is_null() {
            result.remove(key);
        } else {
            result.insert(key.clone(), check_value(def, &field, value, &region)?);
        }
    }
    // Required: present when creating; never cleared later (objects created before the field
    // became required are not blocked from other changes).
    let missing = |d: &&FieldDefinition| {
        d.required
            && match existing {
                None => !result.contains_key(&d.key),
                Some(_) => changes.get(&d.key).is_some_and(Value::is_null),
            }
    };
    if let Some(missing) = defs.iter().find(missing) {
        let field = format!("custom.{}", missing.key);
        return Err(ApiError::invalid_field(
            &field,
            format!("`{}` ({}) is required.", missing.key, missing.label),
        ));
    }
    Ok(result)
}

/// One value against its definition; returns the normalized value.
pub fn check_value(
    def: &FieldDefinition,
    field: &str,
    value: &Value,
    region: &str,
) -> ApiResult<Value> {
    let wrong = |expected: &str| {
        ApiError::invalid_field(
            field,
            format!("`{}` ({}) must be {expected}.", def.key, def.label),
        )
    };
    let text = |max: usize, what: &str| -> ApiResult<String> {
        match value {
            Value::String(s) if s.chars().count() <= max => Ok(s.clone()),
            _ => Err(wrong(what)),
        }
    };
    Ok(match def.field_type {
        FieldType::Text => {
            let s = text(1_000, "text of at most 1,000 characters on one line")?;
            if s.contains('\n') {
                return Err(wrong("text of at most 1,000 characters on one line"));
            }
            Value::String(s)
        }
        FieldType::LongText => Value::String(text(100_000, "text of at most 100,000 characters")?),
        FieldType::Number => match value {
            Value::Number(n) => Value::Number(n.clone()),
            _ => return Err(wrong("a number")),
        },
        FieldType::Money => {
            let what = "an object like {\"amount\": \"1250.50\", \"currency\": \"EUR\"}";
            let obj = value.as_object().ok_or_else(|| wrong(what))?;
            let amount = match obj.get("amount") {
                Some(Value::String(s)) => s.trim().to_owned(),
                Some(Value::Number(n)) => n.to_string(),
                _ => return Err(wrong(what)),
            };
            let currency = obj
                .get("currency")
                .and_then(Value::as_str)
                .map(|c| c.trim().to_ascii_uppercase())
                .filter(|c| c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase()))
                .ok_or_else(|| wrong(what))?;
            if obj.len() != 2 || !is_decimal(&amount) {
                return Err(wrong(what));
            }
            serde_json::json!({ "amount": amount, "currency": currency })
        }
        FieldType::Date => {
            let s = text(10, "a date like 2026-11-22")?;
            NaiveDate::parse_from_str(&s, "%Y-%m-%d")
                .map_err(|_| wrong("a date like 2026-11-22"))?;
            Value::String(s)
        }
        FieldType::Datetime => {
            let what = "an RFC 3339 date-time like 2026-11-22T14:30:00Z";
            let s = text(64, what)?;
            let t = DateTime::parse_from_rfc3339(&s).map_err(|_| wrong(what))?;
            Value::String(
                t.with_timezone(&Utc)
                    .to_rfc3339_opts(SecondsFormat::AutoSi, true),
            )
        }
        FieldType::Boolean => match value {
            Value::Bool(b) => Value::Bool(*b),
            _ => return Err(wrong("true or false")),
        },
        FieldType::SingleSelect => {
            let s = text(200, "one of the field's options")?;
            if !def.options.contains(&s) {
                return Err(wrong(&format!("one of {}", def.options.join(", "))));
            }
            Value::String(s)
        }
        FieldType::MultiSelect => {
            let what = format!("a list of distinct values among {}", def.options.join(", "));
            let items = value.as_array().ok_or_else(|| wrong(&what))?;
            let mut out: Vec<Value> = Vec::with_capacity(items.len());
            for item in items {
                let s = item.as_str().ok_or_else(|| wrong(&what))?;
                if !def.options.iter().any(|o| o == s) || out.iter().any(|o| o == item) {
                    return Err(wrong(&what));
                }
                out.push(item.clone());
            }
            Value::Array(out)
        }
        FieldType::Url => {
            let what = "an http or https URL";
            let s = text(2_048, what)?;
            let url = url::Url::parse(s.trim()).map_err(|_| wrong(what))?;
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                return Err(wrong(what));
            }
            Value::String(url.to_string())
        }
        FieldType::Email => {
            let s = text(254, "an email address")?;
            Value::String(normalize::email(field, &s)?)
        }
        FieldType::Phone => {
            let s = text(64, "a phone number")?;
            Value::String(normalize::phone(field, &s, region)?)
        }
    })
}

/// `-12`, `1250.5`, `0.75`: digits with an optional sign and fraction, no exponent.
fn is_decimal(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text);
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    !int.is_empty()
        && int.len() <= 18
        && frac.len() <= 6
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.bytes().all(|b| b.is_ascii_digit())
        && (!digits.contains('.') || !frac.is_empty())
}

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_field, list_fields))
        .routes(routes!(get_field, update_field, delete_field))
}

/// Define a custom field (admin).
#[utoipa::path(post, path = "/workspaces/{workspace_id}/fields", tag = "crm",
    params(("workspace_id" = WorkspaceId, Path)), request_body = NewField,
    responses((status = 201, body = FieldDefinition), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create_field(
    State(state): State<AppState>,
    scope: Scope,
    Json(req): Json<NewField>,
) -> ApiResult<(StatusCode, Json<FieldDefinition>)> {
    scope.require(Role::Admin)?;
    Ok((
        StatusCode::CREATED,
        Json(create(&state.db, &scope, &req).await?),
    ))
}

/// The workspace's custom field definitions.
#[utoipa::path(get, path = "/workspaces/{workspace_id}/fields", tag = "crm",
    params(("workspace_id" = WorkspaceId, Path)),
    responses((status = 200, body = Vec<FieldDefinition>), (status = 404, body = ErrorBody)))]
async fn list_fields(
    State(state): State<AppState>,
    scope: Scope,
) -> ApiResult<Json<Vec<FieldDefinition>>> {
    Ok(Json(list(&state.db, &scope).await?))
}

/// One custom field definition.
#[utoipa::path(get, path = "/workspaces/{workspace_id}/fields/{field_id}", tag = "crm",
    params(("workspace_id" = WorkspaceId, Path), ("field_id" = FieldId, Path)),
    responses((status = 200, body = FieldDefinition), (status = 404, body = ErrorBody)))]
async fn get_field(
    State(state): State<AppState>,
    scope: Scope,
    path: Path<(WorkspaceId, FieldId)>,
) -> ApiResult<Json<FieldDefinition>> {
    let Path((_, id)) = path;
    Ok(Json(get(&state.db, &scope, id).await?))
}

/// Change a custom field's label, options or required flag (admin).
#[utoipa::path(patch, path = "/workspaces/{workspace_id}/fields/{field_id}", tag = "crm",
    params(("workspace_id" = WorkspaceId, Path), ("field_id" = FieldId, Path)), request_body = FieldChange,
    responses((status = 200, body = FieldDefinition), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn update_field(
    State(state): State<AppState>,
    scope: Scope,
    path: Path<(WorkspaceId, FieldId)>,
    Json(req): Json<FieldChange>,
) -> ApiResult<Json<FieldDefinition>> {
    let Path((_, id)) = path;
    scope.require(Role::Admin)?;
    Ok(Json(update(&state.db, &scope, id, &req).await?))
}

/// Delete a custom field definition (admin).
#[utoipa::path(delete, path = "/workspaces/{workspace_id}/fields/{field_id}", tag = "crm",
    params(("workspace_id" = WorkspaceId, Path), ("field_id" = FieldId, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete_field(
    State(state): State<AppState>,
    scope: Scope,
    path: Path<(WorkspaceId, FieldId)>,
) -> ApiResult<StatusCode> {
    let Path((_, id)) = path;
    scope.require(Role::Admin)?;
    delete(&state.db, &scope, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
