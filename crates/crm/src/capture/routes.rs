//! The capture API: rules under `/workspaces/{workspace_id}/capture-rules`, and the inspector
//! that shows a site's recent events with suggested mappings.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use platform::error::ErrorBody;
use platform::http::{Json, Page, PageParams, Path, Query};
use platform::id::WorkspaceId;
use platform::{ApiError, ApiResult, AppState, Role, Scope, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracking::analytics::AnalyticsStore;
use tracking::analytics::query::{Filter, Query as AnalyticsQuery};
use tracking::sites::SiteId;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{Mapping, Rule, RuleId, RuleInput, store};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_rule, list_rules))
        .routes(routes!(get_rule, update_rule, delete_rule))
        .routes(routes!(inspect))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RuleFilter {
    /// Only this site's rules.
    pub site_id: Option<SiteId>,
}

/// Create a capture rule (admin).
#[utoipa::path(post, path = "/workspaces/{workspace_id}/capture-rules", tag = "contacts",
    params(("workspace_id" = WorkspaceId, Path)), request_body = RuleInput,
    responses((status = 201, body = Rule), (status = 422, body = ErrorBody)))]
async fn create_rule(
    State(state): State<AppState>,
    scope: Scope,
    Json(req): Json<RuleInput>,
) -> ApiResult<(StatusCode, Json<Rule>)> {
    scope.require(Role::Admin)?;
    Ok((
        StatusCode::CREATED,
        Json(store::create(&state.db, &scope, &req).await?),
    ))
}

/// Capture rules, newest first, optionally of one site; with their match and failure counts.
#[utoipa::path(get, path = "/workspaces/{workspace_id}/capture-rules", tag = "contacts",
    params(("workspace_id" = WorkspaceId, Path), RuleFilter, PageParams),
    responses((status = 200, body = Page<Rule>), (status = 404, body = ErrorBody)))]
async fn list_rules(
    State(state): State<AppState>,
    scope: Scope,
    Query(filter): Query<RuleFilter>,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Page<Rule>>> {
    Ok(Json(
        store::list(&state.db, &scope, filter.site_id, &page).await?,
    ))
}

/// One capture rule.
#[utoipa::path(get, path = "/workspaces/{workspace_id}/capture-rules/{rule_id}", tag = "contacts",
    params(("workspace_id" = WorkspaceId, Path), ("rule_id" = RuleId, Path)),
    responses((status = 200, body = Rule), (status = 404, body = ErrorBody)))]
async fn get_rule(
    State(state): State<AppState>,
    scope: Scope,
    path: Path<(WorkspaceId, RuleId)>,
) -> ApiResult<Json<Rule>> {
    let Path((_, id)) = path;
    Ok(Json(store::get(&state.db, &scope, id).await?))
}

/// Change a capture rule (admin); applies to new events within seconds.
#[utoipa::path(patch, path = "/workspaces/{workspace_id}/capture-rules/{rule_id}", tag = "contacts",
    params(("workspace_id" = WorkspaceId, Path), ("rule_id" = RuleId, Path)), request_body = RuleInput,
    responses((status = 200, body = Rule), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn update_rule(
    State(state): State<AppState>,
    scope: Scope,
    path: Path<(WorkspaceId, RuleId)>,
    Json(req): Json<RuleInput>,
) -> ApiResult<Json<Rule>> {
    let Path((_, id)) = path;
    scope.require(Role::Admin)?;
    Ok(Json(store::update(&state.db, &scope, id, &req).await?))
}

/// Delete a capture rule (admin).
#[utoipa::path(delete, path = "/workspaces/{workspace_id}/capture-rules/{rule_id}", tag = "contacts",
    params(("workspace_id" = WorkspaceId, Path), ("rule_id" = RuleId, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete_rule(
    State(state): State<AppState>,
    scope: Scope,
    path: Path<(WorkspaceId, RuleId)>,
) -> ApiResult<StatusCode> {
    let Path((_, id)) = path;
    scope.require(Role::Admin)?;
    store::delete(&state.db, &scope, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InspectQuery {
    /// Only events of this name (e.g. `generate_lead`).
    pub event_name: Option<String>,
    /// How many recent events (1–100, default 20).
    pub limit: Option<u32>,
}

/// One recent event as the inspector shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct InspectedEvent {
    pub hit_id: String,
    pub time: Timestamp,
    pub event_name: String,
    pub page_path: Option<String>,
    #[schema(value_type = Object)]
    pub params: Value,
}

/// A mapping the inspector proposes, with the parameter's example value.
#[derive(Debug, Serialize, ToSchema)]
pub struct SuggestedMapping {
    #[serde(flatten)]
    pub mapping: Mapping,
    pub example: String,
    /// Events (of those shown) that carry this parameter.
    pub seen_in: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Inspection {
    pub events: Vec<InspectedEvent>,
    /// Event names seen, with counts, to pick a rule's `event_name`.
    pub event_names: BTreeMap<String, usize>,
    pub suggested_mappings: Vec<SuggestedMapping>,
}

/// What a parameter's name and value suggest it is.
fn suggest(name: &str, value: &str) -> Option<&'static str> {
    let n = name.to_ascii_lowercase();
    let digits = value.chars().filter(char::is_ascii_digit).count();
    if value.contains('@') && value.contains('.') && !value.contains(' ') {
        Some("emails")
    } else if n.contains("phone")
        || n.contains("whatsapp")
        || n.contains("mobile")
        || n == "tel"
        || (digits >= 8
            && value
                .chars()
                .all(|c| c.is_ascii_digit() || " +-().".contains(c)))
    {
        Some("phones")
    } else if matches!(
        n.as_str(),
        "first_name" | "firstname" | "fname" | "given_name"
    ) {
        Some("first_name")
    } else if matches!(
        n.as_str(),
        "last_name" | "lastname" | "lname" | "family_name" | "surname"
    ) {
        Some("last_name")
    } else if matches!(n.as_str(), "name" | "full_name" | "fullname" | "nome") {
        Some("name")
    } else {
        None
    }
}

/// A site's recent events (from analytics) with their parameters, and mappings suggested from
/// what the values look like — to build a capture rule from real traffic.
#[utoipa::path(get, path = "/workspaces/{workspace_id}/sites/{site_id}/capture/inspect", tag = "contacts",
    params(("workspace_id" = WorkspaceId, Path), ("site_id" = SiteId, Path), InspectQuery),
    responses((status = 200, body = Inspection), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn inspect(
    State(state): State<AppState>,
    Extension(analytics): Extension<Arc<dyn AnalyticsStore>>,
    scope: Scope,
    path: Path<(WorkspaceId, SiteId)>,
    Query(q): Query<InspectQuery>,
) -> ApiResult<Json<Inspection>> {
    let Path((_, site_id)) = path;
    tracking::sites::store::get(&state.db, &scope, site_id).await?;
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_limit",
            "`limit` is 1 to 100.",
        ));
    }
    let now = Timestamp::now();
    let mut filters = Vec::new();
    if let Some(name) = &q.event_name {
        filters.push(Filter::parse(&format!("event:is:{name}"))?);
    }
    let query = AnalyticsQuery {
        site_id,
        from: now - std::time::Duration::from_secs(30 * 86_400),
        to: now + std::time::Duration::from_secs(60),
        filters,
    };
    let rows = analytics
        .events(&query, None, limit)
        .await
        .map_err(ApiError::internal)?;
    let mut event_names: BTreeMap<String, usize> = BTreeMap::new();
    let mut suggestions: BTreeMap<String, SuggestedMapping> = BTreeMap::new();
    let mut events = Vec::with_capacity(rows.len());
    for row in rows {
        *event_names.entry(row.event_name.clone()).or_default() += 1;
        if let Value::Object(params) = &row.params {
            for (name, value) in params {
                let Some(text) = value.as_str() else { continue };
                if let Some(target) = suggest(name, text) {
                    suggestions
                        .entry(name.clone())
                        .and_modify(|s| s.seen_in += 1)
                        .or_insert_with(|| SuggestedMapping {
                            mapping: Mapping {
                                source: format!("param:{name}"),
                                target: target.to_owned(),
                            },
                            example: text.chars().take(100).collect(),
                            seen_in: 1,
                        });
                }
            }
        }
        events.push(InspectedEvent {
            hit_id: row.hit_id.to_string(),
            time: row.time,
            event_name: row.event_name,
            page_path: row.page_path,
            params: row.params,
        });
    }
    Ok(Json(Inspection {
        events,
        event_names,
        suggested_mappings: suggestions.into_values().collect(),
    }))
}
