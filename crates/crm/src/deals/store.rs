//! Pipelines, stages, deals and stage history in the state database, always scoped to a
//! workspace. Every write runs in one transaction with its outbox events and timeline entries.
//!
//! Concurrency: a deal write takes a share lock on its pipeline row and a pipeline change takes
//! an exclusive one (PostgreSQL; SQLite write transactions are serial anyway), so a stage cannot
//! be removed while a deal is being moved into it. A deal change locks the deal row first, so
//! two concurrent moves cannot both leave an open history row.

use std::collections::BTreeMap;

use platform::db::{Conn, Db, Dialect, Tx};
use platform::http::{Page, PageParams};
use platform::id::UserId;
use platform::{ApiError, ApiResult, Scope, Timestamp, with_conn, with_tx};
use serde_json::{Map, Value, json};
use sqlx::QueryBuilder;
use uuid::Uuid;

use super::{
    Board, BoardParams, BoardStage, CurrencyTotal, DEFAULT_PER_STAGE, Deal, DealChange, DealFilter,
    DealStatus, MAX_DEAL_CONTACTS, MAX_PER_STAGE, MAX_STAGES, NewDeal, NewPipeline, Pipeline,
    PipelineChange, Stage, StageInput, StageKind, StageStay, check_currency, check_date,
    check_lost_reason, check_text, currency_exponent, deal_not_found, format_minor, parse_value,
    pipeline_not_found, weighted,
};
use crate::contacts::store::{resolve, resolve_in};
use crate::fields::{self, Entity};
use crate::timeline::{self, kind};
use crate::{CompanyId, ContactId, DealId, PipelineId, StageId, from_json, refs, to_json};

// ---------------------------------------------------------------------------------------------
// Rows

#[derive(sqlx::FromRow)]
struct PipelineRow {
    id: PipelineId,
    name: String,
    created_at: Timestamp,
    updated_at: Timestamp,
}

#[derive(sqlx::FromRow)]
struct StageRow {
    id: StageId,
    pipeline_id: PipelineId,
    name: String,
    position: i32,
    probability: i32,
    kind: String,
}

impl From<StageRow> for Stage {
    fn from(r: StageRow) -> Self {
        Stage {
            id: r.id,
            name: r.name,
            position: r.position,
            probability: r.probability,
            kind: StageKind::parse(&r.kind),
        }
    }
}

#[derive(sqlx::FromRow)]
struct DealRow {
    id: DealId,
    pipeline_id: PipelineId,
    stage_id: StageId,
    title: String,
    value_minor: i64,
    currency: String,
    company_id: Option<CompanyId>,
    owner_id: Option<UserId>,
    status: String,
    lost_reason: Option<String>,
    expected_close_date: Option<String>,
    custom: String,
    stage_entered_at: Timestamp,
    closed_at: Option<Timestamp>,
    created_at: Timestamp,
    updated_at: Timestamp,
}

impl DealRow {
    fn into_deal(self, contact_ids: Vec<ContactId>) -> Deal {
        Deal {
            id: self.id,
            title: self.title,
            pipeline_id: self.pipeline_id,
            stage_id: self.stage_id,
            status: DealStatus::parse(&self.status),
            lost_reason: self.lost_reason,
            value: format_minor(
                i128::from(self.value_minor),
                currency_exponent(&self.currency),
            ),
            currency: self.currency,
            contact_ids,
            company_id: self.company_id,
            owner_id: self.owner_id,
            expected_close_date: self.expected_close_date,
            custom: from_json(&self.custom),
            stage_entered_at: self.stage_entered_at,
            closed_at: self.closed_at,
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}

#[derive(sqlx::FromRow)]
struct StayRow {
    stage_id: StageId,
    stage_name: Option<String>,
    entered_at: Timestamp,
    left_at: Option<Timestamp>,
    actor: Option<String>,
}

const DEAL_COLUMNS: &str = "d.id, d.pipeline_id, d.stage_id, d.title, d.value_minor, d.currency, \
    d.company_id, d.owner_id, d.status, d.lost_reason, d.expected_close_date, d.custom, \
    d.stage_entered_at, d.closed_at, d.created_at, d.updated_at";

// ---------------------------------------------------------------------------------------------
// Pipeline reads

/// Stages of the given pipelines, in order.
async fn stages_of(
    conn: &mut Conn<'_>,
    scope: &Scope,
    pipelines: &[PipelineId],
) -> ApiResult<BTreeMap<PipelineId, Vec<Stage>>> {
    let mut out: BTreeMap<PipelineId, Vec<Stage>> = BTreeMap::new();
    if pipelines.is_empty() {
        return Ok(out);
    }
    let rows: Vec<StageRow> = with_conn!(conn, c => {
        let mut b = QueryBuilder::new(
            "SELECT id, pipeline_id, name, position, probability, kind FROM pipeline_stages
             WHERE workspace_id = ",
        );
        b.push_bind(scope.workspace_id).push(" AND pipeline_id IN (");
        let mut list = b.separated(", ");
        for id in pipelines {
            list.push_bind(*id);
        }
        b.push(") ORDER BY pipeline_id, position, id");
        b.build_query_as().fetch_all(&mut *c).await
    })?;
    for row in rows {
        out.entry(row.pipeline_id)
            .or_default()
            .push(Stage::from(row));
    }
    Ok(out)
}

async fn load_pipeline(
    conn: &mut Conn<'_>,
    scope: &Scope,
    id: PipelineId,
) -> ApiResult<Option<Pipeline>> {
    let row: Option<PipelineRow> = with_conn!(conn, c => sqlx::query_as(
        "SELECT id, name, created_at, updated_at FROM pipelines WHERE workspace_id = $1 AND id = $2",
    ).bind(scope.workspace_id).bind(id).fetch_optional(c).await)?;
    let Some(row) = row else {
        return Ok(None);
    };
    let mut stages = stages_of(conn, scope, &[id]).await?;
    Ok(Some(Pipeline {
        id: row.id,
        name: row.name,
        stages: stages.remove(&id).unwrap_or_default(),
        created_at: row.created_at,
        updated_at: row.updated_at,
    }))
}

/// The stages of one pipeline, in order, inside a transaction.
async fn stage_list(tx: &mut Tx, scope: &Scope, id: PipelineId) -> ApiResult<Vec<Stage>> {
    Ok(stages_of(&mut tx.conn(), scope, &[id])
        .await?
        .remove(&id)
        .unwrap_or_default())
}

/// Locks the pipeline row (PostgreSQL): exclusively for a pipeline change, shared for a deal
/// write. False when the workspace has no such pipeline.
async fn lock_pipeline(
    tx: &mut Tx,
    scope: &Scope,
    id: PipelineId,
    exclusive: bool,
) -> ApiResult<bool> {
    let lock = match (tx.dialect(), exclusive) {
        (Dialect::Postgres, true) => " FOR UPDATE",
        (Dialect::Postgres, false) => " FOR SHARE",
        _ => "",
    };
    let found: Option<PipelineId> = with_tx!(tx, conn => sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT id FROM pipelines WHERE workspace_id = $1 AND id = $2{lock}"
    ))).bind(scope.workspace_id).bind(id).fetch_optional(conn).await)?;
    Ok(found.is_some())
}

pub async fn get_pipeline(db: &Db, scope: &Scope, id: PipelineId) -> ApiResult<Pipeline> {
    let mut pooled = db.acquire().await?;
    load_pipeline(&mut pooled.conn(), scope, id)
        .await?
        .ok_or_else(pipeline_not_found)
}

/// Pipelines, newest first, with their stages.
pub async fn list_pipelines(
    db: &Db,
    scope: &Scope,
    page: &PageParams,
) -> ApiResult<Page<Pipeline>> {
    let limit = page.limit()?;
    let cursor = page.cursor()?;
    let mut pooled = db.acquire().await?;
    let mut conn = pooled.conn();
    let rows: Vec<PipelineRow> = with_conn!(&mut conn, c => sqlx::query_as(
        "SELECT id, name, created_at, updated_at FROM pipelines
         WHERE workspace_id = $1 AND ($2 IS NULL OR id < $2) ORDER BY id DESC LIMIT $3",
    ).bind(scope.workspace_id).bind(cursor).bind(i64::from(limit) + 1).fetch_all(c).await)?;
    let page = Page::from_rows(rows, limit, |r| r.id.uuid());
    let ids: Vec<PipelineId> = page.data.iter().map(|r| r.id).collect();
    let mut stages = stages_of(&mut conn, scope, &ids).await?;
    Ok(page.map(|r| Pipeline {
        stages: stages.remove(&r.id).unwrap_or_default(),
        id: r.id,
        name: r.name,
        created_at: r.created_at,
        updated_at: r.updated_at,
    }))
}

// ---------------------------------------------------------------------------------------------
// Pipeline writes

/// One stage of a validated stage list.
#[derive(Debug)]
struct PlannedStage {
    id: StageId,
    existing: bool,
    name: String,
    probability: i32,
    kind: StageKind,
}

/// Validates a stage list against the pipeline's current stages (none when creating).
fn plan_stages(inputs: &[StageInput], existing: &[Stage]) -> ApiResult<Vec<PlannedStage>> {
    if inputs.is_empty() || inputs.len() > MAX_STAGES {
        return Err(ApiError::invalid_field(
            "stages",
            format!("A pipeline has 1 to {MAX_STAGES} stages."),
        ));
    }
    let mut planned: Vec<PlannedStage> = Vec::with_capacity(inputs.len());
    let mut names: Vec<String> = Vec::with_capacity(inputs.len());
    for (i, input) in inputs.iter().enumerate() {
        let field = |name: &str| format!("stages[{i}].{name}");
        let current = match input.id {
            Some(id) => {
                let stage = existing.iter().find(|s| s.id == id).ok_or_else(|| {
                    ApiError::invalid_field(
                        &field("id"),
                        format!("`{}`: no stage {id} in this pipeline.", field("id")),
                    )
                })?;
                if planned.iter().any(|p| p.id == id) {
                    return Err(ApiError::invalid_field(
                        &field("id"),
                        format!("Stage {id} is listed twice."),
                    ));
                }
                Some(stage)
            }
            None => None,
        };
        let name = match (&input.name, current) {
            (Some(name), _) => check_text(&field("name"), name, 100)?,
            (None, Some(stage)) => stage.name.clone(),
            (None, None) => {
                return Err(ApiError::invalid_field(
                    &field("name"),
                    "A new stage needs a `name`.",
                ));
            }
        };
        let folded = name.to_lowercase();
        if names.contains(&folded) {
            return Err(ApiError::invalid_field(
                &field("name"),
                format!("Two stages are named `{name}`; stage names are unique in a pipeline."),
            ));
        }
        names.push(folded);
        let kind = input
            .kind
            .or(current.map(|s| s.kind))
            .unwrap_or(StageKind::Open);
        let probability = match input.probability {
            Some(p) => i32::try_from(p)
                .ok()
                .filter(|p| (0..=100).contains(p))
                .ok_or_else(|| {
                    ApiError::invalid_field(
                        &field("probability"),
                        format!("`{}` is a percentage from 0 to 100.", field("probability")),
                    )
                })?,
            None => match current {
                Some(stage) => stage.probability,
                None if kind == StageKind::Won => 100,
                None => 0,
            },
        };
        planned.push(PlannedStage {
            id: input.id.unwrap_or_default(),
            existing: current.is_some(),
            name,
            probability,
            kind,
        });
    }
    if !planned.iter().any(|s| s.kind == StageKind::Open) {
        return Err(ApiError::invalid_field(
            "stages",
            "A pipeline needs at least one open stage.",
        ));
    }
    Ok(planned)
}

async fn insert_stage(
    tx: &mut Tx,
    scope: &Scope,
    pipeline: PipelineId,
    position: i32,
    stage: &PlannedStage,
) -> ApiResult<()> {
    with_tx!(tx, conn => sqlx::query(
        "INSERT INTO pipeline_stages (id, workspace_id, pipeline_id, name, position, probability, kind)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    ).bind(stage.id).bind(scope.workspace_id).bind(pipeline).bind(&stage.name).bind(position)
     .bind(stage.probability).bind(stage.kind.as_str()).execute(conn).await.map(|_| ()))?;
    Ok(())
}

fn pipeline_payload(pipeline: &Pipeline) -> Value {
    json!({ "pipeline_id": pipeline.id, "name": pipeline.name, "stages": pipeline.stages })
}

pub async fn create_pipeline(db: &Db, scope: &Scope, req: &NewPipeline) -> ApiResult<Pipeline> {
    let name = check_text("name", &req.name, 200)?;
    let stages = plan_stages(&req.stages, &[])?;
    let id = PipelineId::new();
    let now = Timestamp::now();
    let mut tx = db.begin().await?;
    with_tx!(&mut tx, conn => sqlx::query(
        "INSERT INTO pipelines (id, workspace_id, name, created_at, updated_at) VALUES ($1, $2, $3, $4, $4)",
    ).bind(id).bind(scope.workspace_id).bind(&name).bind(now).execute(conn).await.map(|_| ()))?;
    for (position, stage) in (0..).zip(&stages) {
        insert_stage(&mut tx, scope, id, position, stage).await?;
    }
    let pipeline = load_pipeline(&mut tx.conn(), scope, id)
        .await?
        .ok_or_else(pipeline_not_found)?;
    platform::outbox::publish(
        &mut tx,
        scope.workspace_id,
        "pipeline.created",
        &pipeline_payload(&pipeline),
    )
    .await?;
    tx.commit().await?;
    Ok(pipeline)
}

/// Deals per stage of a pipeline.
async fn deals_per_stage(
    tx: &mut Tx,
    scope: &Scope,
    pipeline: PipelineId,
) -> ApiResult<BTreeMap<StageId, i64>> {
    let rows: Vec<(StageId, i64)> = with_tx!(tx, conn => sqlx::query_as(
        "SELECT stage_id, COUNT(*) FROM deals WHERE workspace_id = $1 AND pipeline_id = $2 GROUP BY stage_id",
    ).bind(scope.workspace_id).bind(pipeline).fetch_all(conn).await)?;
    Ok(rows.into_iter().collect())
}

fn stage_in_use(stage: &Stage, deals: i64, what: &str) -> ApiError {
    ApiError::conflict(
        "stage_in_use",
        format!(
            "Stage `{}` holds {deals} deal(s): move them to another stage before {what}.",
            stage.name
        ),
    )
    .with_details(json!({ "field": "stages", "stage_id": stage.id, "deals": deals }))
}

/// Renames the pipeline and/or replaces its stage list (see [`PipelineChange`]).
pub async fn update_pipeline(
    db: &Db,
    scope: &Scope,
    id: PipelineId,
    req: &PipelineChange,
) -> ApiResult<Pipeline> {
    let name = req
        .name
        .as_deref()
        .map(|n| check_text("name", n, 200))
        .transpose()?;
    let mut tx = db.begin().await?;
    if !lock_pipeline(&mut tx, scope, id, true).await? {
        return Err(pipeline_not_found());
    }
    let current = load_pipeline(&mut tx.conn(), scope, id)
        .await?
        .ok_or_else(pipeline_not_found)?;
    if let Some(inputs) = &req.stages {
        let planned = plan_stages(inputs, &current.stages)?;
        let in_use = deals_per_stage(&mut tx, scope, id).await?;
        for stage in &current.stages {
            let deals = in_use.get(&stage.id).copied().unwrap_or(0);
            match planned.iter().find(|p| p.id == stage.id) {
                None if deals > 0 => return Err(stage_in_use(stage, deals, "removing it")),
                Some(p) if p.kind != stage.kind && deals > 0 => {
                    return Err(stage_in_use(stage, deals, "changing its kind"));
                }
                _ => {}
            }
        }
        for stage in &current.stages {
            if !planned.iter().any(|p| p.id == stage.id) {
                with_tx!(&mut tx, conn => sqlx::query(
                    "DELETE FROM pipeline_stages WHERE workspace_id = $1 AND pipeline_id = $2 AND id = $3",
                ).bind(scope.workspace_id).bind(id).bind(stage.id).execute(conn).await.map(|_| ()))?;
            }
        }
        for (position, stage) in (0..).zip(&planned) {
            if stage.existing {
                with_tx!(&mut tx, conn => sqlx::query(
                    "UPDATE pipeline_stages SET name = $1, position = $2, probability = $3, kind = $4
                     WHERE workspace_id = $5 AND pipeline_id = $6 AND id = $7",
                ).bind(&stage.name).bind(position).bind(stage.probability).bind(stage.kind.as_str())
                 .bind(scope.workspace_id).bind(id).bind(stage.id).execute(conn).await.map(|_| ()))?;
            } else {
                insert_stage(&mut tx, scope, id, position, stage).await?;
            }
        }
    }
    with_tx!(&mut tx, conn => sqlx::query(
        "UPDATE pipelines SET name = $1, updated_at = $2 WHERE workspace_id = $3 AND id = $4",
    ).bind(name.as_deref().unwrap_or(&current.name)).bind(Timestamp::now())
     .bind(scope.workspace_id).bind(id).execute(conn).await.map(|_| ()))?;
    let pipeline = load_pipeline(&mut tx.conn(), scope, id)
        .await?
        .ok_or_else(pipeline_not_found)?;
    platform::outbox::publish(
        &mut tx,
        scope.workspace_id,
        "pipeline.updated",
        &pipeline_payload(&pipeline),
    )
    .await?;
    tx.commit().await?;
    Ok(pipeline)
}

/// Deletes a pipeline with its stages; 409 `pipeline_in_use` while it has deals.
pub async fn delete_pipeline(db: &Db, scope: &Scope, id: PipelineId) -> ApiResult<()> {
    let mut tx = db.begin().await?;
    if !lock_pipeline(&mut tx, scope, id, true).await? {
        return Err(pipeline_not_found());
    }
    let deals: i64 = with_tx!(&mut tx, conn => sqlx::query_scalar(
        "SELECT COUNT(*) FROM deals WHERE workspace_id = $1 AND pipeline_id = $2",
    ).bind(scope.workspace_id).bind(id).fetch_one(conn).await)?;
    if deals > 0 {
        return Err(ApiError::conflict(
            "pipeline_in_use",
            format!("The pipeline has {deals} deal(s): move or delete them first."),
        )
        .with_details(json!({ "deals": deals })));
    }
    with_tx!(&mut tx, conn => sqlx::query("DELETE FROM pipelines WHERE workspace_id = $1 AND id = $2")
        .bind(scope.workspace_id).bind(id).execute(conn).await.map(|_| ()))?;
    platform::outbox::publish(
        &mut tx,
        scope.workspace_id,
        "pipeline.deleted",
        &json!({ "pipeline_id": id }),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Deal reads

/// Adds the linked contacts to deal rows (one query for any number of rows).
async fn hydrate(conn: &mut Conn<'_>, scope: &Scope, rows: Vec<DealRow>) -> ApiResult<Vec<Deal>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let links: Vec<(DealId, ContactId)> = with_conn!(conn, c => {
        let mut b = QueryBuilder::new(
            "SELECT deal_id, contact_id FROM deal_contacts WHERE workspace_id = ",
        );
        b.push_bind(scope.workspace_id).push(" AND deal_id IN (");
        let mut list = b.separated(", ");
        for row in &rows {
            list.push_bind(row.id);
        }
        b.push(") ORDER BY deal_id, contact_id");
        b.build_query_as().fetch_all(&mut *c).await
    })?;
    let mut by_deal: BTreeMap<DealId, Vec<ContactId>> = BTreeMap::new();
    for (deal, contact) in links {
        by_deal.entry(deal).or_default().push(contact);
    }
    Ok(rows
        .into_iter()
        .map(|r| {
            let contacts = by_deal.remove(&r.id).unwrap_or_default();
            r.into_deal(contacts)
        })
        .collect())
}

async fn load_deal(conn: &mut Conn<'_>, scope: &Scope, id: DealId) -> ApiResult<Deal> {
    let row: Option<DealRow> = with_conn!(conn, c => sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {DEAL_COLUMNS} FROM deals d WHERE d.workspace_id = $1 AND d.id = $2"
    ))).bind(scope.workspace_id).bind(id).fetch_optional(c).await)?;
    let row = row.ok_or_else(deal_not_found)?;
    hydrate(conn, scope, vec![row])
        .await?
        .pop()
        .ok_or_else(deal_not_found)
}

pub async fn get_deal(db: &Db, scope: &Scope, id: DealId) -> ApiResult<Deal> {
    let mut pooled = db.acquire().await?;
    load_deal(&mut pooled.conn(), scope, id).await
}

/// Deals matching `filter`, newest first, one page.
pub async fn list_deals(
    db: &Db,
    scope: &Scope,
    filter: &DealFilter,
    page: &PageParams,
) -> ApiResult<Page<Deal>> {
    let limit = page.limit()?;
    let cursor = page.cursor()?;
    // A merged contact's deals moved to its survivor; an unknown id simply matches nothing.
    let contact = match filter.contact_id {
        Some(id) => Some(match resolve(db, scope, id).await {
            Ok(live) => live,
            Err(err) if err.status.is_client_error() => id,
            Err(err) => return Err(err),
        }),
        None => None,
    };
    let mut pooled = db.acquire().await?;
    let mut conn = pooled.conn();
    let rows: Vec<DealRow> = with_conn!(&mut conn, c => {
        let mut b = QueryBuilder::new(format!("SELECT {DEAL_COLUMNS} FROM deals d WHERE d.workspace_id = "));
        b.push_bind(scope.workspace_id);
        if let Some(cursor) = cursor {
            b.push(" AND d.id < ").push_bind(DealId(cursor));
        }
        if let Some(pipeline) = filter.pipeline_id {
            b.push(" AND d.pipeline_id = ").push_bind(pipeline);
        }
        if let Some(stage) = filter.stage_id {
            b.push(" AND d.stage_id = ").push_bind(stage);
        }
        if let Some(status) = filter.status {
            b.push(" AND d.status = ").push_bind(status.as_str());
        }
        if let Some(company) = filter.company_id {
            b.push(" AND d.company_id = ").push_bind(company);
        }
        if let Some(owner) = filter.owner_id {
            b.push(" AND d.owner_id = ").push_bind(owner);
        }
        if let Some(contact) = contact {
            b.push(" AND EXISTS (SELECT 1 FROM deal_contacts dc WHERE dc.deal_id = d.id AND dc.contact_id = ")
                .push_bind(contact).push(")");
        }
        b.push(" ORDER BY d.id DESC LIMIT ").push_bind(i64::from(limit) + 1);
        b.build_query_as().fetch_all(&mut *c).await
    })?;
    let page = Page::from_rows(rows, limit, |r| r.id.uuid());
    let data = hydrate(&mut conn, scope, page.data).await?;
    Ok(Page {
        data,
        next_cursor: page.next_cursor,
    })
}

/// The deal's stays in stages, oldest first.
pub async fn history(db: &Db, scope: &Scope, id: DealId) -> ApiResult<Vec<StageStay>> {
    let mut pooled = db.acquire().await?;
    let mut conn = pooled.conn();
    let found: Option<DealId> = with_conn!(&mut conn, c => sqlx::query_scalar(
        "SELECT id FROM deals WHERE workspace_id = $1 AND id = $2",
    ).bind(scope.workspace_id).bind(id).fetch_optional(c).await)?;
    if found.is_none() {
        return Err(deal_not_found());
    }
    let rows: Vec<StayRow> = with_conn!(&mut conn, c => sqlx::query_as(
        "SELECT h.stage_id, s.name AS stage_name, h.entered_at, h.left_at, h.actor
         FROM deal_stage_history h
         LEFT JOIN pipeline_stages s ON s.id = h.stage_id AND s.workspace_id = h.workspace_id
         WHERE h.workspace_id = $1 AND h.deal_id = $2 ORDER BY h.entered_at, h.id",
    ).bind(scope.workspace_id).bind(id).fetch_all(c).await)?;
    let now = Timestamp::now();
    Ok(rows
        .into_iter()
        .map(|r| StageStay {
            duration_seconds: r
                .left_at
                .unwrap_or(now)
                .seconds_since(r.entered_at)
                .max(0.0)
                .floor() as i64,
            stage_id: r.stage_id,
            stage_name: r.stage_name,
            entered_at: r.entered_at,
            left_at: r.left_at,
            actor: r.actor,
        })
        .collect())
}

/// Sums per currency, accumulated.
#[derive(Default)]
struct Sums {
    count: i64,
    value: i128,
    weighted: i128,
}

fn totals(sums: &BTreeMap<String, Sums>) -> Vec<CurrencyTotal> {
    sums.iter()
        .map(|(currency, s)| {
            let exponent = currency_exponent(currency);
            CurrencyTotal {
                currency: currency.clone(),
                count: s.count,
                value: format_minor(s.value, exponent),
                weighted_value: format_minor(s.weighted, exponent),
            }
        })
        .collect()
}

/// The pipeline's board: every stage in order with its count, totals and newest deals.
pub async fn board(
    db: &Db,
    scope: &Scope,
    id: PipelineId,
    params: &BoardParams,
) -> ApiResult<Board> {
    let per_stage = match params.per_stage {
        None => DEFAULT_PER_STAGE,
        Some(n) if (1..=MAX_PER_STAGE).contains(&n) => n,
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("`per_stage` must be between 1 and {MAX_PER_STAGE}."),
            ));
        }
    };
    let status = params.status.map(DealStatus::as_str);
    let mut pooled = db.acquire().await?;
    let mut conn = pooled.conn();
    let pipeline = load_pipeline(&mut conn, scope, id)
        .await?
        .ok_or_else(pipeline_not_found)?;
    // Counts and sums: one grouped query. Sums are read as text (PostgreSQL's SUM of BIGINT
    // is NUMERIC) and kept exact in i128.
    let sums: Vec<(StageId, String, i64, String)> = with_conn!(&mut conn, c => sqlx::query_as(
        "SELECT stage_id, currency, COUNT(*), CAST(SUM(value_minor) AS TEXT) FROM deals
         WHERE workspace_id = $1 AND pipeline_id = $2 AND ($3 IS NULL OR status = $3)
         GROUP BY stage_id, currency",
    ).bind(scope.workspace_id).bind(id).bind(status).fetch_all(c).await)?;
    // The newest deals of every stage: one windowed query.
    let rows: Vec<DealRow> = with_conn!(&mut conn, c => sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {DEAL_COLUMNS} FROM (
             SELECT x.*, ROW_NUMBER() OVER (PARTITION BY x.stage_id ORDER BY x.id DESC) AS rn
             FROM deals x
             WHERE x.workspace_id = $1 AND x.pipeline_id = $2 AND ($3 IS NULL OR x.status = $3)
         ) d
         WHERE d.rn <= $4 ORDER BY d.id DESC"
    ))).bind(scope.workspace_id).bind(id).bind(status).bind(i64::from(per_stage))
       .fetch_all(c).await)?;
    let mut deals: BTreeMap<StageId, Vec<Deal>> = BTreeMap::new();
    for deal in hydrate(&mut conn, scope, rows).await? {
        deals.entry(deal.stage_id).or_default().push(deal);
    }

    let mut per_stage_sums: BTreeMap<StageId, BTreeMap<String, Sums>> = BTreeMap::new();
    for (stage, currency, count, sum) in sums {
        let sum: i128 = sum.trim().parse().map_err(|_| {
            ApiError::internal(anyhow::anyhow!("unreadable SUM(value_minor): {sum:?}"))
        })?;
        let entry = per_stage_sums
            .entry(stage)
            .or_default()
            .entry(currency)
            .or_default();
        entry.count += count;
        entry.value += sum;
    }
    let mut pipeline_sums: BTreeMap<String, Sums> = BTreeMap::new();
    let mut stages = Vec::with_capacity(pipeline.stages.len());
    for stage in pipeline.stages {
        let mut sums = per_stage_sums.remove(&stage.id).unwrap_or_default();
        for (currency, s) in &mut sums {
            s.weighted = weighted(s.value, stage.probability);
            let all = pipeline_sums.entry(currency.clone()).or_default();
            all.count += s.count;
            all.value += s.value;
            all.weighted += s.weighted;
        }
        stages.push(BoardStage {
            count: sums.values().map(|s| s.count).sum(),
            totals: totals(&sums),
            deals: deals.remove(&stage.id).unwrap_or_default(),
            id: stage.id,
            name: stage.name,
            position: stage.position,
            probability: stage.probability,
            kind: stage.kind,
        });
    }
    Ok(Board {
        pipeline_id: pipeline.id,
        name: pipeline.name,
        stages,
        totals: totals(&pipeline_sums),
    })
}

// ---------------------------------------------------------------------------------------------
// Deal writes

/// Locks the deal row (PostgreSQL) for the rest of the transaction; 404 when missing.
async fn lock_deal(tx: &mut Tx, scope: &Scope, id: DealId) -> ApiResult<()> {
    let lock = if tx.dialect() == Dialect::Postgres {
        " FOR UPDATE"
    } else {
        ""
    };
    let found: Option<DealId> = with_tx!(tx, conn => sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT id FROM deals WHERE workspace_id = $1 AND id = $2{lock}"
    ))).bind(scope.workspace_id).bind(id).fetch_optional(conn).await)?;
    found.map(|_| ()).ok_or_else(deal_not_found)
}

/// Where a deal is before a change.
struct Current {
    stage_id: StageId,
    stage_kind: StageKind,
    status: DealStatus,
    /// The change keeps the deal in its pipeline.
    same_pipeline: bool,
}

/// Decides the stage and status a write leaves the deal in, from what the request asks
/// (`want_stage`, `want_status`) and where the deal is (`current`, `None` when creating).
/// `stages` are the target pipeline's; `reopen_to` is the deal's last open-kind stage there.
fn place(
    stages: &[Stage],
    current: Option<&Current>,
    want_stage: Option<StageId>,
    want_status: Option<DealStatus>,
    reopen_to: Option<StageId>,
) -> ApiResult<(StageId, DealStatus)> {
    let find = |id: StageId| stages.iter().find(|s| s.id == id);
    let first = |kind: StageKind| stages.iter().find(|s| s.kind == kind).map(|s| s.id);
    let first_open = first(StageKind::Open)
        .or(stages.first().map(|s| s.id))
        .ok_or_else(|| ApiError::invalid_field("pipeline_id", "The pipeline has no stages."))?;
    let here = current.filter(|c| c.same_pipeline);
    // The open-kind stage a deal goes to when it has to leave a closed one.
    let open_home = here
        .filter(|c| c.stage_kind == StageKind::Open)
        .map(|c| c.stage_id)
        .or(reopen_to.filter(|id| find(*id).is_some_and(|s| s.kind == StageKind::Open)))
        .unwrap_or(first_open);
    let stage_for = |status: DealStatus| match status {
        DealStatus::Won => first(StageKind::Won).unwrap_or(open_home),
        DealStatus::Lost => first(StageKind::Lost).unwrap_or(open_home),
        DealStatus::Open => open_home,
    };
    let stage_id = match (want_stage, here) {
        (Some(id), _) => id,
        (None, Some(c)) => match want_status {
            Some(status) if status != c.status => stage_for(status),
            _ => c.stage_id,
        },
        (None, None) => stage_for(
            want_status
                .or(current.map(|c| c.status))
                .unwrap_or(DealStatus::Open),
        ),
    };
    let stage = find(stage_id).ok_or_else(|| {
        ApiError::invalid_field(
            "stage_id",
            format!("`stage_id`: {stage_id} is not a stage of the deal's pipeline."),
        )
    })?;
    let status = match (want_status, DealStatus::of_kind(stage.kind)) {
        (Some(wanted), Some(implied)) if wanted != implied => {
            return Err(ApiError::invalid_field(
                "status",
                format!(
                    "`{}` is a {} stage: a deal in it is {}.",
                    stage.name,
                    stage.kind.as_str(),
                    implied.as_str()
                ),
            ));
        }
        (Some(wanted), _) => wanted,
        (None, Some(implied)) => implied,
        // Leaving a won or lost stage for an open one reopens the deal.
        (None, None) => match current {
            Some(c) if c.stage_kind != StageKind::Open => DealStatus::Open,
            Some(c) => c.status,
            None => DealStatus::Open,
        },
    };
    Ok((stage_id, status))
}

/// The live contacts behind `ids` (merges followed), distinct and sorted; unknown → 422.
async fn resolve_contacts(
    tx: &mut Tx,
    scope: &Scope,
    ids: &[ContactId],
) -> ApiResult<Vec<ContactId>> {
    if ids.len() > MAX_DEAL_CONTACTS {
        return Err(ApiError::invalid_field(
            "contact_ids",
            format!("A deal has at most {MAX_DEAL_CONTACTS} contacts."),
        ));
    }
    let mut out = Vec::with_capacity(ids.len());
    for &id in ids {
        let live = resolve_in(tx, scope, id).await.map_err(|err| {
            if err.status.is_client_error() {
                ApiError::invalid_field(
                    "contact_ids",
                    format!("`contact_ids`: no contact {id} in this workspace."),
                )
            } else {
                err
            }
        })?;
        if !out.contains(&live) {
            out.push(live);
        }
    }
    out.sort();
    Ok(out)
}

async fn link_contacts(
    tx: &mut Tx,
    scope: &Scope,
    deal: DealId,
    contacts: &[ContactId],
) -> ApiResult<()> {
    for contact in contacts {
        with_tx!(tx, conn => sqlx::query(
            "INSERT INTO deal_contacts (deal_id, contact_id, workspace_id) VALUES ($1, $2, $3)
             ON CONFLICT (deal_id, contact_id) DO NOTHING",
        ).bind(deal).bind(contact).bind(scope.workspace_id).execute(conn).await.map(|_| ()))?;
    }
    Ok(())
}

/// Opens the deal's stay in `stage` at `at`.
async fn open_stay(
    tx: &mut Tx,
    scope: &Scope,
    deal: DealId,
    stage: StageId,
    at: Timestamp,
) -> ApiResult<()> {
    with_tx!(tx, conn => sqlx::query(
        "INSERT INTO deal_stage_history (id, workspace_id, deal_id, stage_id, entered_at, left_at, actor)
         VALUES ($1, $2, $3, $4, $5, NULL, $6)",
    ).bind(Uuid::now_v7()).bind(scope.workspace_id).bind(deal).bind(stage).bind(at)
     .bind(scope.actor.audit_name()).execute(conn).await.map(|_| ()))?;
    Ok(())
}

/// Closes the deal's current stay at `at`.
async fn close_stay(tx: &mut Tx, scope: &Scope, deal: DealId, at: Timestamp) -> ApiResult<()> {
    with_tx!(tx, conn => sqlx::query(
        "UPDATE deal_stage_history SET left_at = $1
         WHERE workspace_id = $2 AND deal_id = $3 AND left_at IS NULL",
    ).bind(at).bind(scope.workspace_id).bind(deal).execute(conn).await.map(|_| ()))?;
    Ok(())
}

/// The deal's most recent stay in an open-kind stage of `pipeline`, if any.
async fn last_open_stage(
    tx: &mut Tx,
    scope: &Scope,
    deal: DealId,
    pipeline: PipelineId,
) -> ApiResult<Option<StageId>> {
    let found: Option<StageId> = with_tx!(tx, conn => sqlx::query_scalar(
        "SELECT h.stage_id FROM deal_stage_history h
         JOIN pipeline_stages s ON s.id = h.stage_id AND s.workspace_id = h.workspace_id
         WHERE h.workspace_id = $1 AND h.deal_id = $2 AND s.pipeline_id = $3 AND s.kind = 'open'
         ORDER BY h.entered_at DESC, h.id DESC LIMIT 1",
    ).bind(scope.workspace_id).bind(deal).bind(pipeline).fetch_optional(conn).await)?;
    Ok(found)
}

/// The payload every deal event carries.
fn payload(deal: &Deal) -> Value {
    json!({
        "deal_id": deal.id,
        "title": deal.title,
        "pipeline_id": deal.pipeline_id,
        "stage_id": deal.stage_id,
        "status": deal.status,
        "value": deal.value,
        "currency": deal.currency,
        "contact_ids": deal.contact_ids,
        "company_id": deal.company_id,
        "owner_id": deal.owner_id,
    })
}

/// `payload` plus extra keys.
fn payload_with(deal: &Deal, extra: Value) -> Value {
    let mut data = payload(deal);
    if let (Some(data), Value::Object(extra)) = (data.as_object_mut(), extra) {
        data.extend(extra);
    }
    data
}

/// Records `kind` on the timeline of every contact of the deal.
async fn on_timelines(
    tx: &mut Tx,
    scope: &Scope,
    deal: &Deal,
    kind: &str,
    data: &Value,
) -> ApiResult<()> {
    for contact in &deal.contact_ids {
        timeline::record(tx, scope, *contact, kind, data, None).await?;
    }
    Ok(())
}

fn stage_name(stages: &[Stage], id: StageId) -> Option<&str> {
    stages.iter().find(|s| s.id == id).map(|s| s.name.as_str())
}

/// Publishes `deal.won` / `deal.lost` and records them on the contacts' timelines.
async fn closed_events(tx: &mut Tx, scope: &Scope, deal: &Deal, stages: &[Stage]) -> ApiResult<()> {
    let (event, entry) = match deal.status {
        DealStatus::Won => ("deal.won", kind::DEAL_WON),
        DealStatus::Lost => ("deal.lost", kind::DEAL_LOST),
        DealStatus::Open => return Ok(()),
    };
    platform::outbox::publish(
        tx,
        scope.workspace_id,
        event,
        &payload_with(deal, json!({ "lost_reason": deal.lost_reason })),
    )
    .await?;
    let data = json!({
        "deal_id": deal.id,
        "title": deal.title,
        "stage": stage_name(stages, deal.stage_id),
        "value": deal.value,
        "currency": deal.currency,
        "lost_reason": deal.lost_reason,
    });
    on_timelines(tx, scope, deal, entry, &data).await
}

pub async fn create_deal(db: &Db, scope: &Scope, req: &NewDeal) -> ApiResult<Deal> {
    let mut tx = db.begin().await?;
    let deal = create_deal_in(&mut tx, scope, req).await?;
    tx.commit().await?;
    Ok(deal)
}

/// [`create_deal`] in the caller's transaction.
pub async fn create_deal_in(tx: &mut Tx, scope: &Scope, req: &NewDeal) -> ApiResult<Deal> {
    let title = check_text("title", &req.title, 300)?;
    let currency = match &req.currency {
        Some(code) => check_currency(code)?,
        None => "USD".to_owned(),
    };
    let value_minor = match &req.value {
        Some(value) => parse_value("value", value, &currency)?,
        None => 0,
    };
    let expected_close_date = req
        .expected_close_date
        .as_deref()
        .map(|d| check_date("expected_close_date", d))
        .transpose()?;
    let lost_reason = check_lost_reason(req.lost_reason.as_deref())?;

    if !lock_pipeline(tx, scope, req.pipeline_id, false).await? {
        return Err(ApiError::invalid_field(
            "pipeline_id",
            format!(
                "`pipeline_id`: no pipeline {} in this workspace.",
                req.pipeline_id
            ),
        ));
    }
    let stages = stage_list(tx, scope, req.pipeline_id).await?;
    let (stage_id, status) = place(&stages, None, req.stage_id, req.status, None)?;
    if lost_reason.is_some() && status != DealStatus::Lost {
        return Err(lost_reason_only_when_lost());
    }
    let contact_ids = resolve_contacts(tx, scope, &req.contact_ids).await?;
    if let Some(company) = req.company_id {
        refs::company(tx, scope, "company_id", company).await?;
    }
    if let Some(owner) = req.owner_id {
        refs::member(tx, scope, "owner_id", owner).await?;
    }
    let custom = fields::apply(
        tx,
        scope,
        Entity::Deal,
        None,
        &req.custom.clone().unwrap_or_default(),
    )
    .await?;

    let id = DealId::new();
    let now = Timestamp::now();
    let closed_at = (status != DealStatus::Open).then_some(now);
    with_tx!(&mut *tx, conn => sqlx::query(
        "INSERT INTO deals (id, workspace_id, pipeline_id, stage_id, title, value_minor, currency,
            company_id, owner_id, status, lost_reason, expected_close_date, custom,
            stage_entered_at, closed_at, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $14, $14)",
    )
    .bind(id).bind(scope.workspace_id).bind(req.pipeline_id).bind(stage_id).bind(&title)
    .bind(value_minor).bind(&currency).bind(req.company_id).bind(req.owner_id)
    .bind(status.as_str()).bind(&lost_reason).bind(&expected_close_date).bind(to_json(&custom))
    .bind(now).bind(closed_at)
    .execute(conn).await.map(|_| ()))?;
    link_contacts(tx, scope, id, &contact_ids).await?;
    open_stay(tx, scope, id, stage_id, now).await?;
    let deal = load_deal(&mut tx.conn(), scope, id).await?;

    platform::outbox::publish(tx, scope.workspace_id, "deal.created", &payload(&deal)).await?;
    let data = json!({
        "deal_id": deal.id,
        "title": deal.title,
        "stage": stage_name(&stages, deal.stage_id),
        "status": deal.status,
        "value": deal.value,
        "currency": deal.currency,
    });
    on_timelines(tx, scope, &deal, kind::DEAL_CREATED, &data).await?;
    closed_events(tx, scope, &deal, &stages).await?;
    Ok(deal)
}

fn lost_reason_only_when_lost() -> ApiError {
    ApiError::invalid_field("lost_reason", "`lost_reason` is only kept for lost deals.")
}

/// Names of the fields that differ (for `deal.updated`).
fn changed_fields(before: &Deal, after: &Deal) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let mut check = |name: &'static str, differs: bool| {
        if differs {
            changed.push(name);
        }
    };
    check("title", before.title != after.title);
    check("pipeline_id", before.pipeline_id != after.pipeline_id);
    check("stage_id", before.stage_id != after.stage_id);
    check("status", before.status != after.status);
    check("lost_reason", before.lost_reason != after.lost_reason);
    check("value", before.value != after.value);
    check("currency", before.currency != after.currency);
    check("contact_ids", before.contact_ids != after.contact_ids);
    check("company_id", before.company_id != after.company_id);
    check("owner_id", before.owner_id != after.owner_id);
    check(
        "expected_close_date",
        before.expected_close_date != after.expected_close_date,
    );
    check("custom", before.custom != after.custom);
    check("closed_at", before.closed_at != after.closed_at);
    changed
}

/// Changes a deal (see [`DealChange`]); moves, closes and reopens it as asked.
pub async fn update_deal(db: &Db, scope: &Scope, id: DealId, req: &DealChange) -> ApiResult<Deal> {
    let mut tx = db.begin().await?;
    let deal = update_deal_in(&mut tx, scope, id, req).await?;
    tx.commit().await?;
    Ok(deal)
}

/// [`update_deal`] in the caller's transaction.
pub async fn update_deal_in(
    tx: &mut Tx,
    scope: &Scope,
    id: DealId,
    req: &DealChange,
) -> ApiResult<Deal> {
    let title = req
        .title
        .as_deref()
        .map(|t| check_text("title", t, 300))
        .transpose()?;
    let currency = req.currency.as_deref().map(check_currency).transpose()?;
    let expected_close_date = match &req.expected_close_date {
        Some(Some(date)) => Some(Some(check_date("expected_close_date", date)?)),
        Some(None) => Some(None),
        None => None,
    };
    let lost_reason = match &req.lost_reason {
        Some(reason) => Some(check_lost_reason(reason.as_deref())?),
        None => None,
    };

    lock_deal(tx, scope, id).await?;
    let before = load_deal(&mut tx.conn(), scope, id).await?;
    let pipeline_id = req.pipeline_id.unwrap_or(before.pipeline_id);
    let same_pipeline = pipeline_id == before.pipeline_id;
    if !lock_pipeline(tx, scope, pipeline_id, false).await? {
        return Err(ApiError::invalid_field(
            "pipeline_id",
            format!("`pipeline_id`: no pipeline {pipeline_id} in this workspace."),
        ));
    }
    let stages = stage_list(tx, scope, pipeline_id).await?;
    let old_stages = if same_pipeline {
        stages.clone()
    } else {
        stage_list(tx, scope, before.pipeline_id).await?
    };
    let stage_kind = old_stages
        .iter()
        .find(|s| s.id == before.stage_id)
        .map_or(StageKind::Open, |s| s.kind);
    let current = Current {
        stage_id: before.stage_id,
        stage_kind,
        status: before.status,
        same_pipeline,
    };
    let reopen_to =
        if req.status == Some(DealStatus::Open) && same_pipeline && stage_kind != StageKind::Open {
            last_open_stage(tx, scope, id, pipeline_id).await?
        } else {
            None
        };
    let (stage_id, status) = place(&stages, Some(&current), req.stage_id, req.status, reopen_to)?;
    let lost_reason = if status == DealStatus::Lost {
        match lost_reason {
            Some(reason) => reason,
            None if before.status == DealStatus::Lost => before.lost_reason.clone(),
            None => None,
        }
    } else {
        if matches!(lost_reason, Some(Some(_))) {
            return Err(lost_reason_only_when_lost());
        }
        None
    };

    let currency = currency.unwrap_or_else(|| before.currency.clone());
    let value_minor = match &req.value {
        Some(value) => parse_value("value", value, &currency)?,
        // A new currency alone keeps the decimal value, which must fit it.
        None => parse_value("value", &Value::String(before.value.clone()), &currency)?,
    };
    let contact_ids = match &req.contact_ids {
        Some(ids) => Some(resolve_contacts(tx, scope, ids).await?),
        None => None,
    };
    let company_id = match req.company_id {
        Some(Some(company)) => {
            refs::company(tx, scope, "company_id", company).await?;
            Some(company)
        }
        Some(None) => None,
        None => before.company_id,
    };
    let owner_id = match req.owner_id {
        Some(Some(owner)) => {
            refs::member(tx, scope, "owner_id", owner).await?;
            Some(owner)
        }
        Some(None) => None,
        None => before.owner_id,
    };
    let custom: Map<String, Value> = match &req.custom {
        Some(changes) => {
            fields::apply(tx, scope, Entity::Deal, Some(&before.custom), changes).await?
        }
        None => before.custom.clone(),
    };

    let now = Timestamp::now();
    let moved = stage_id != before.stage_id;
    let closed_at = match status {
        DealStatus::Open => None,
        s if s == before.status => before.closed_at,
        _ => Some(now),
    };
    let stage_entered_at = if moved { now } else { before.stage_entered_at };
    with_tx!(&mut *tx, conn => sqlx::query(
        "UPDATE deals SET pipeline_id = $1, stage_id = $2, title = $3, value_minor = $4, currency = $5,
            company_id = $6, owner_id = $7, status = $8, lost_reason = $9, expected_close_date = $10,
            custom = $11, stage_entered_at = $12, closed_at = $13, updated_at = $14
         WHERE workspace_id = $15 AND id = $16",
    )
    .bind(pipeline_id).bind(stage_id).bind(title.as_deref().unwrap_or(&before.title))
    .bind(value_minor).bind(&currency).bind(company_id).bind(owner_id).bind(status.as_str())
    .bind(&lost_reason)
    .bind(expected_close_date.unwrap_or_else(|| before.expected_close_date.clone()))
    .bind(to_json(&custom)).bind(stage_entered_at).bind(closed_at).bind(now)
    .bind(scope.workspace_id).bind(id)
    .execute(conn).await.map(|_| ()))?;
    if let Some(contacts) = &contact_ids {
        with_tx!(&mut *tx, conn => sqlx::query(
            "DELETE FROM deal_contacts WHERE workspace_id = $1 AND deal_id = $2",
        ).bind(scope.workspace_id).bind(id).execute(conn).await.map(|_| ()))?;
        link_contacts(tx, scope, id, contacts).await?;
    }
    if moved {
        close_stay(tx, scope, id, now).await?;
        open_stay(tx, scope, id, stage_id, now).await?;
    }
    let after = load_deal(&mut tx.conn(), scope, id).await?;

    let changed = changed_fields(&before, &after);
    platform::outbox::publish(
        tx,
        scope.workspace_id,
        "deal.updated",
        &payload_with(&after, json!({ "changed": changed })),
    )
    .await?;
    if moved {
        platform::outbox::publish(
            tx,
            scope.workspace_id,
            "deal.stage_changed",
            &payload_with(
                &after,
                json!({
                    "from_stage_id": before.stage_id,
                    "to_stage_id": after.stage_id,
                    "from_pipeline_id": before.pipeline_id,
                }),
            ),
        )
        .await?;
        let data = json!({
            "deal_id": after.id,
            "title": after.title,
            "from_stage": stage_name(&old_stages, before.stage_id),
            "to_stage": stage_name(&stages, after.stage_id),
            "status": after.status,
            "value": after.value,
            "currency": after.currency,
        });
        on_timelines(tx, scope, &after, kind::DEAL_STAGE_CHANGED, &data).await?;
    }
    if after.status != before.status {
        closed_events(tx, scope, &after, &stages).await?;
    }
    Ok(after)
}

/// The open deals of a contact in a pipeline, newest first, in the caller's transaction.
pub async fn open_deals_of_contact_in(
    tx: &mut Tx,
    scope: &Scope,
    contact: ContactId,
    pipeline: PipelineId,
) -> ApiResult<Vec<DealId>> {
    Ok(with_tx!(tx, conn => sqlx::query_scalar(
        "SELECT d.id FROM deals d JOIN deal_contacts dc ON dc.deal_id = d.id AND dc.workspace_id = d.workspace_id
         WHERE d.workspace_id = $1 AND dc.contact_id = $2 AND d.pipeline_id = $3 AND d.status = 'open'
         ORDER BY d.id DESC",
    ).bind(scope.workspace_id).bind(contact).bind(pipeline).fetch_all(conn).await)?)
}

/// Deletes a deal with its contact links, stage history, notes and tasks.
pub async fn delete_deal(db: &Db, scope: &Scope, id: DealId) -> ApiResult<()> {
    let mut tx = db.begin().await?;
    lock_deal(&mut tx, scope, id).await?;
    let deal = load_deal(&mut tx.conn(), scope, id).await?;
    with_tx!(&mut tx, conn => sqlx::query("DELETE FROM deals WHERE workspace_id = $1 AND id = $2")
        .bind(scope.workspace_id).bind(id).execute(conn).await.map(|_| ()))?;
    platform::outbox::publish(&mut tx, scope.workspace_id, "deal.deleted", &payload(&deal)).await?;
    tx.commit().await?;
    Ok(())
}

/// Moves `from`'s deal links to `to` (a contact merge), in the caller's transaction. A deal
/// linked to both keeps one link.
pub(crate) async fn reassign_contact(
    tx: &mut Tx,
    scope: &Scope,
    from: ContactId,
    to: ContactId,
) -> ApiResult<()> {
    with_tx!(tx, conn => sqlx::query(
        "INSERT INTO deal_contacts (deal_id, contact_id, workspace_id)
         SELECT deal_id, $1, workspace_id FROM deal_contacts WHERE workspace_id = $2 AND contact_id = $3
         ON CONFLICT (deal_id, contact_id) DO NOTHING",
    ).bind(to).bind(scope.workspace_id).bind(from).execute(conn).await.map(|_| ()))?;
    with_tx!(tx, conn => sqlx::query(
        "DELETE FROM deal_contacts WHERE workspace_id = $1 AND contact_id = $2",
    ).bind(scope.workspace_id).bind(from).execute(conn).await.map(|_| ()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(kind: StageKind, probability: i32) -> Stage {
        Stage {
            id: StageId::new(),
            name: format!("{kind:?} {probability}"),
            position: 0,
            probability,
            kind,
        }
    }

    #[test]
    fn placement_follows_stage_kinds_and_status() {
        let lead = stage(StageKind::Open, 10);
        let demo = stage(StageKind::Open, 50);
        let won = stage(StageKind::Won, 100);
        let lost = stage(StageKind::Lost, 0);
        let stages = vec![lead.clone(), demo.clone(), won.clone(), lost.clone()];
        use DealStatus::*;

        // Creating: first open stage; a won/lost stage sets the status; status picks a stage.
        assert_eq!(
            place(&stages, None, None, None, None).unwrap(),
            (lead.id, Open)
        );
        assert_eq!(
            place(&stages, None, Some(won.id), None, None).unwrap(),
            (won.id, Won)
        );
        assert_eq!(
            place(&stages, None, None, Some(Lost), None).unwrap(),
            (lost.id, Lost)
        );
        let err = place(&stages, None, Some(won.id), Some(Lost), None).unwrap_err();
        assert_eq!(err.details.unwrap()["field"], "status");
        let err = place(&stages, None, Some(StageId::new()), None, None).unwrap_err();
        assert_eq!(err.details.unwrap()["field"], "stage_id");

        let at = |stage: &Stage, status| Current {
            stage_id: stage.id,
            stage_kind: stage.kind,
            status,
            same_pipeline: true,
        };
        // Status won without a stage: to the first won stage.
        assert_eq!(
            place(&stages, Some(&at(&demo, Open)), None, Some(Won), None).unwrap(),
            (won.id, Won)
        );
        // Reopening from the won stage: back to the last open stage.
        assert_eq!(
            place(
                &stages,
                Some(&at(&won, Won)),
                None,
                Some(Open),
                Some(demo.id)
            )
            .unwrap(),
            (demo.id, Open)
        );
        // Moving out of a won stage into an open one reopens.
        assert_eq!(
            place(&stages, Some(&at(&won, Won)), Some(lead.id), None, None).unwrap(),
            (lead.id, Open)
        );
        // Nothing asked: nothing moves.
        assert_eq!(
            place(&stages, Some(&at(&demo, Open)), None, None, None).unwrap(),
            (demo.id, Open)
        );

        // A pipeline without won stage: won stays where it is.
        let plain = vec![lead.clone(), demo.clone()];
        assert_eq!(
            place(&plain, Some(&at(&demo, Open)), None, Some(Won), None).unwrap(),
            (demo.id, Won)
        );
        assert_eq!(
            place(&plain, Some(&at(&demo, Won)), Some(lead.id), None, None).unwrap(),
            (lead.id, Won)
        );
    }

    #[test]
    fn stage_lists_are_validated() {
        let input = |name: &str, probability: Option<i64>, kind: Option<StageKind>| StageInput {
            id: None,
            name: Some(name.to_owned()),
            probability,
            kind,
        };
        let field = |inputs: Vec<StageInput>| {
            plan_stages(&inputs, &[]).unwrap_err().details.unwrap()["field"].clone()
        };
        assert_eq!(field(vec![]), "stages");
        assert_eq!(
            field(vec![input("Won", None, Some(StageKind::Won))]),
            "stages"
        );
        assert_eq!(
            field(vec![input("A", None, None), input(" a ", None, None)]),
            "stages[1].name"
        );
        assert_eq!(
            field(vec![input("A", Some(150), None)]),
            "stages[0].probability"
        );
        assert_eq!(
            field(vec![StageInput {
                id: Some(StageId::new()),
                ..input("A", None, None)
            }]),
            "stages[0].id"
        );
        let planned = plan_stages(
            &[
                input("A", None, None),
                input("W", None, Some(StageKind::Won)),
            ],
            &[],
        )
        .unwrap();
        assert_eq!(planned[0].probability, 0);
        assert_eq!(planned[1].probability, 100);
    }
}
