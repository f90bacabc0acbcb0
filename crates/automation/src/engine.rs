//! Runs: the outbox consumer that starts them, the executor that moves them forward, and the
//! jobs that resume waits and run external steps.
//!
//! A run's `cursor` is the position of its next instruction (see [`crate::definition::Instr`]).
//! Each move forward is one transaction that locks the run, records the step in
//! `automation_run_steps` (primary key: run and position, so a step is recorded — and applied —
//! once) and advances the cursor. Internal steps apply inside that transaction, in a savepoint:
//! a step refused by the CRM (a 4xx) is rolled back alone and recorded as the run's failure.
//! Waits and external steps park the run (`waiting`) and enqueue a job, unique per (run,
//! position, retry), which picks the run up again.

use std::sync::Arc;
use std::time::Duration;

use crm::contacts::ContactInput;
use crm::deals::{DealChange, NewDeal};
use crm::{ContactId, DealId};
use futures::future::BoxFuture;
use platform::db::{Db, Dialect, Tx};
use platform::http::{Page, PageParams};
use platform::id::WorkspaceId;
use platform::jobs::{JobContext, JobError, JobHandler, JobRegistry, NewJob};
use platform::outbox::{Consumer, Consumers, OutboxEvent};
use platform::{ApiError, ApiResult, Scope, Timestamp, with_db, with_tx};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::sync::Notify;
use utoipa::ToSchema;

use crate::definition::{self, Compiled, Instr, Step};
use crate::plugins::{Plugins, StepContext, StepError};
use crate::{AutomationId, EVENT_RECEIVED, RunId, hits, store, template, timers};

/// The outbox consumer's name.
pub const CONSUMER: &str = "automation";
/// Job: run one external (plugin) step.
pub const STEP_JOB: &str = "automation.step";
/// Job: resume a run after a wait.
pub const RESUME_JOB: &str = "automation.resume";
/// The queue external steps run on (the worker must serve it).
pub const QUEUE: &str = "automation";

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    /// Parked on a wait or an external step.
    Waiting,
    Succeeded,
    Failed,
    /// Not started: loop protection (see [`MAX_DEPTH`]); `error` says why.
    Skipped,
}

/// The deepest run a chain of rules may start: an event raised by a run at depth `d` starts
/// runs at depth `d + 1`; a run deeper than this is recorded as `skipped` instead.
pub const MAX_DEPTH: u32 = 5;

impl RunStatus {
    fn parse(text: &str) -> RunStatus {
        match text {
            "waiting" => RunStatus::Waiting,
            "succeeded" => RunStatus::Succeeded,
            "failed" => RunStatus::Failed,
            "skipped" => RunStatus::Skipped,
            _ => RunStatus::Running,
        }
    }
}

/// A step's record in a run.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RunStep {
    /// Position in the compiled rule (if/else branches and their steps included).
    pub position: i32,
    /// Where the step is in the definition, e.g. `steps[1].then[0]`.
    pub path: Option<String>,
    /// The step type (`add_tag`, `if`, `wait`, `webhook`, …).
    pub kind: String,
    /// `succeeded`, `failed`, `waiting` (a wait) or `queued` (an external step's job).
    pub status: String,
    /// The step's settings with templates rendered.
    #[schema(value_type = Object)]
    pub input: Value,
    #[schema(value_type = Option<Object>)]
    pub output: Option<Value>,
    pub error: Option<String>,
    pub attempts: i32,
    /// For a wait: when the run goes on.
    pub resume_at: Option<Timestamp>,
    pub started_at: Timestamp,
    pub finished_at: Option<Timestamp>,
    /// Milliseconds from start to finish.
    pub duration_ms: Option<i64>,
}

/// A run as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Run {
    pub id: RunId,
    pub automation_id: AutomationId,
    /// The rule version this run executes.
    pub version: i32,
    pub status: RunStatus,
    pub contact_id: Option<ContactId>,
    /// `event:contact.created` or `custom:deal_won`.
    pub trigger: String,
    /// The event that fired the rule.
    #[schema(value_type = Object)]
    pub event: Value,
    /// How many runs led to the trigger event (0: a person, an API client or a hit).
    pub depth: i32,
    /// Position of the next step.
    pub cursor: i32,
    pub error: Option<String>,
    pub started_at: Timestamp,
    pub updated_at: Timestamp,
    pub finished_at: Option<Timestamp>,
    /// Present when one run is fetched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<RunStep>>,
}

#[derive(sqlx::FromRow)]
struct RunRow {
    id: RunId,
    workspace_id: WorkspaceId,
    automation_id: AutomationId,
    version: i32,
    status: String,
    contact_id: Option<ContactId>,
    trigger_key: String,
    event: String,
    cursor: i32,
    retries: i32,
    error: Option<String>,
    started_at: Timestamp,
    updated_at: Timestamp,
    finished_at: Option<Timestamp>,
    depth: i32,
}

const RUN_COLUMNS: &str = "id, workspace_id, automation_id, version, status, contact_id, \
     trigger_key, event, cursor, retries, error, started_at, updated_at, finished_at, depth";

impl RunRow {
    fn into_api(self) -> Run {
        Run {
            id: self.id,
            automation_id: self.automation_id,
            version: self.version,
            status: RunStatus::parse(&self.status),
            contact_id: self.contact_id,
            trigger: self.trigger_key,
            event: serde_json::from_str(&self.event).unwrap_or(Value::Null),
            depth: self.depth,
            cursor: self.cursor,
            error: self.error,
            started_at: self.started_at,
            updated_at: self.updated_at,
            finished_at: self.finished_at,
            steps: None,
        }
    }
}

#[derive(sqlx::FromRow)]
struct StepRow {
    position: i32,
    kind: String,
    status: String,
    input: String,
    output: Option<String>,
    error: Option<String>,
    attempts: i32,
    resume_at: Option<Timestamp>,
    started_at: Timestamp,
    finished_at: Option<Timestamp>,
}

impl StepRow {
    fn into_api(self) -> RunStep {
        let input: Value = serde_json::from_str(&self.input).unwrap_or(Value::Null);
        RunStep {
            position: self.position,
            path: input.get("path").and_then(Value::as_str).map(str::to_owned),
            kind: self.kind,
            status: self.status,
            input: input.get("config").cloned().unwrap_or(Value::Null),
            output: self.output.and_then(|o| serde_json::from_str(&o).ok()),
            error: self.error,
            attempts: self.attempts,
            resume_at: self.resume_at,
            duration_ms: self
                .finished_at
                .map(|f| f.as_millis() - self.started_at.as_millis()),
            started_at: self.started_at,
            finished_at: self.finished_at,
        }
    }
}

pub fn run_not_found() -> ApiError {
    ApiError::not_found(
        "automation_run_not_found",
        "No such run of this automation.",
    )
}

/// The automation engine: shared by the consumer, the jobs and the API.
#[derive(Clone)]
pub struct Engine {
    db: Db,
    plugins: Arc<Plugins>,
    wakeup: Option<Arc<Notify>>,
    /// Domain event types some enabled rule (any workspace) triggers on: the consumer only
    /// asks for these, so events no rule wants cost no delivery job. Refreshed after every rule
    /// change in this process and every [`WATCH_REFRESH`] from the database (other processes).
    /// `None` until first read: everything is wanted until then.
    watched: Arc<std::sync::RwLock<Option<std::collections::HashSet<String>>>>,
    /// The tracking event names each workspace's rules want (see [`hits`]).
    pub(crate) tracking_wanted: Arc<tracking::log::WantedEvents>,
}

/// How often the watched event types are re-read (the longest a rule created through another
/// process waits before its events are relayed to it).
pub const WATCH_REFRESH: Duration = Duration::from_secs(2);

/// The job payload of a resume or an external step.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StepJob {
    workspace_id: WorkspaceId,
    run_id: RunId,
    position: i32,
}

/// What one move forward did.
enum Moved {
    /// Go on with the next instruction.
    Continue,
    /// The run finished, failed or parked.
    Stop,
}

impl Engine {
    pub fn new(db: Db, plugins: Plugins, wakeup: Option<Arc<Notify>>) -> Engine {
        Engine {
            db,
            plugins: Arc::new(plugins),
            wakeup,
            watched: Arc::default(),
            tracking_wanted: Arc::new(hits::wanted_cache()),
        }
    }

    /// Re-reads which domain event types enabled rules trigger on.
    pub async fn refresh_watched(&self) -> ApiResult<()> {
        let keys: Vec<String> = with_db!(&self.db, pool => sqlx::query_scalar(
            "SELECT DISTINCT trigger_key FROM automation_triggers WHERE trigger_key LIKE 'event:%'",
        ).fetch_all(pool).await)?;
        let types = keys
            .into_iter()
            .filter_map(|k| k.strip_prefix("event:").map(str::to_owned))
            .collect();
        if let Ok(mut watched) = self.watched.write() {
            *watched = Some(types);
        }
        self.tracking_wanted.clear();
        Ok(())
    }

    /// Keeps the watched event types fresh until `shutdown` (the worker role runs this).
    pub async fn watch(self, shutdown: tokio_util::sync::CancellationToken) {
        loop {
            if let Err(err) = self.refresh_watched().await {
                tracing::warn!(error = %err, "cannot read the automation trigger index");
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(WATCH_REFRESH) => {}
            }
        }
    }

    fn wants(&self, event_type: &str) -> bool {
        event_type == EVENT_RECEIVED
            || self
                .watched
                .read()
                .map(|w| w.as_ref().is_none_or(|set| set.contains(event_type)))
                .unwrap_or(true)
    }

    pub fn plugins(&self) -> &Plugins {
        &self.plugins
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Registers the outbox consumer and the job handlers.
    pub fn install(&self, registry: &mut JobRegistry, consumers: &mut Consumers) {
        consumers.register(TriggerConsumer {
            engine: self.clone(),
        });
        registry.register(
            STEP_JOB,
            ExternalStep {
                engine: self.clone(),
            },
        );
        registry.register(
            store::CRON_JOB,
            Cron {
                engine: self.clone(),
            },
        );
        registry.register(
            RESUME_JOB,
            Resume {
                engine: self.clone(),
            },
        );
        hits::install(self, registry);
        timers::install(self, registry);
    }

    pub(crate) fn wake(&self) {
        if let Some(w) = &self.wakeup {
            w.notify_one();
        }
    }

    // -----------------------------------------------------------------------------------------
    // Triggers

    /// Starts the runs an outbox event triggers, and moves each as far as it goes now.
    pub async fn on_event(&self, event: &OutboxEvent) -> ApiResult<()> {
        let Some(workspace) = event.workspace_id else {
            return Ok(());
        };
        let (key, trigger_event_id) = if event.event_type == EVENT_RECEIVED {
            let Some(name) = event.payload.get("trigger").and_then(Value::as_str) else {
                return Ok(());
            };
            let id = event
                .payload
                .get("event_id")
                .and_then(Value::as_str)
                .map_or_else(|| event.id.to_string(), str::to_owned);
            (definition::custom_key(name), id)
        } else {
            (
                definition::event_key(&event.event_type),
                event.id.to_string(),
            )
        };
        self.fire(&Fired {
            workspace,
            key,
            trigger_event_id,
            event: event_context(&event.event_type, &event.id.to_string(), &event.payload),
            payload: event.payload.clone(),
            contact: contact_of(&event.payload),
            site: None,
            at: event.created_at,
            depth: event.causation_depth,
        })
        .await
    }

    /// Starts the runs an event starts directly (one indexed read of the rules by its key),
    /// moves each as far as it goes now, and moves the timers of inactivity and date triggers.
    pub(crate) async fn fire(&self, fired: &Fired) -> ApiResult<()> {
        let rules = store::rules_for(&self.db, fired.workspace, &fired.key).await?;
        if rules.is_empty() {
            return Ok(());
        }
        let scope = Scope::system(fired.workspace);
        let context = self.context(&scope, fired.contact, &fired.event).await?;
        let live_contact = contact_id_in(&context);
        for (automation, version, definition) in rules {
            let compiled = match definition.compile(&self.plugins) {
                Ok(c) => c,
                Err(err) => {
                    tracing::warn!(%automation, error = %err, "automation does not compile; skipped");
                    continue;
                }
            };
            if let Some(contact) = live_contact {
                timers::on_event(self, &scope, automation, &compiled.triggers, fired, contact)
                    .await?;
            }
            if !compiled
                .triggers
                .iter()
                .any(|t| t.starts_on(&fired.key, fired.site))
            {
                continue;
            }
            if let Some(conditions) = &compiled.conditions
                && !conditions.evaluate(&context)
            {
                continue;
            }
            let run = self
                .start_run(
                    &scope,
                    automation,
                    version,
                    live_contact.or(fired.contact),
                    &fired.key,
                    &fired.trigger_event_id,
                    &fired.event,
                    fired.depth,
                )
                .await?;
            self.advance(&scope, run).await?;
        }
        Ok(())
    }

    /// Starts the run of a schedule slot (once per rule and slot) and moves it forward.
    pub async fn on_schedule(
        &self,
        workspace: WorkspaceId,
        automation: AutomationId,
        slot: Timestamp,
        job: platform::id::JobId,
    ) -> ApiResult<()> {
        let scope = Scope::system(workspace);
        let rule = match store::get(&self.db, &scope, automation).await {
            Ok(rule) => rule,
            Err(e) if e.status.is_client_error() => return Ok(()), // deleted since
            Err(e) => return Err(e),
        };
        if !rule.enabled {
            return Ok(());
        }
        let definition = definition::Definition {
            triggers: rule.triggers,
            conditions: rule.conditions,
            steps: rule.steps,
        };
        let Ok(compiled) = definition.compile(&self.plugins) else {
            return Ok(());
        };
        let event = json!({"type": "schedule", "id": format!("schedule:{}", slot.to_rfc3339()), "at": slot});
        let context = json!({"contact": null, "event": &event, "deal": null});
        if let Some(conditions) = &compiled.conditions
            && !conditions.evaluate(&context)
        {
            return Ok(());
        }
        let run = self
            .start_run(
                &scope,
                automation,
                rule.version,
                None,
                definition::SCHEDULE_KEY,
                // The job's id, not its `run_at`: a retried job keeps its id but not its time.
                &format!("schedule:{job}"),
                &event,
                0,
            )
            .await?;
        self.advance(&scope, run).await
    }

    /// Inserts the run (once per rule and trigger event) and returns its id. A run deeper than
    /// [`MAX_DEPTH`] is inserted as `skipped`, finished, with the reason as its error.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn start_run(
        &self,
        scope: &Scope,
        automation: AutomationId,
        version: i32,
        contact: Option<ContactId>,
        key: &str,
        trigger_event_id: &str,
        event: &Value,
        depth: u32,
    ) -> ApiResult<RunId> {
        let now = Timestamp::now();
        let (status, error, finished) = if depth > MAX_DEPTH {
            tracing::warn!(%automation, depth, "automation loop protection: run skipped");
            (
                "skipped",
                Some(format!(
                    "loop protection: the trigger event was raised by a chain of {depth} automation runs (at most {MAX_DEPTH})"
                )),
                Some(now),
            )
        } else {
            ("running", None, None)
        };
        let inserted: Option<RunId> = with_db!(&self.db, pool => sqlx::query_scalar(
            "INSERT INTO automation_runs (id, workspace_id, automation_id, version, status, contact_id,
                trigger_key, trigger_event_id, event, cursor, started_at, updated_at, error, finished_at, depth)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 0, $10, $10, $11, $12, $13)
             ON CONFLICT (automation_id, trigger_event_id) DO NOTHING RETURNING id",
        ).bind(RunId::new()).bind(scope.workspace_id).bind(automation).bind(version).bind(status)
         .bind(contact).bind(key).bind(trigger_event_id).bind(event.to_string()).bind(now)
         .bind(&error).bind(finished).bind(i32::try_from(depth).unwrap_or(i32::MAX))
         .fetch_optional(pool).await)?;
        if let Some(id) = inserted {
            metrics_run_started();
            return Ok(id);
        }
        let existing: RunId = with_db!(&self.db, pool => sqlx::query_scalar(
            "SELECT id FROM automation_runs WHERE automation_id = $1 AND trigger_event_id = $2",
        ).bind(automation).bind(trigger_event_id).fetch_one(pool).await)?;
        Ok(existing)
    }

    /// The context templates and conditions see: `contact` (with `email` and `phone`, the
    /// primary ones), `event`, and `deal` when the event names one.
    pub(crate) async fn context(
        &self,
        scope: &Scope,
        contact: Option<ContactId>,
        event: &Value,
    ) -> ApiResult<Value> {
        let contact = match contact {
            Some(id) => match crm::contacts::store::get(&self.db, scope, id).await {
                Ok(c) => Some(c),
                Err(e) if e.status.is_client_error() => None,
                Err(e) => return Err(e),
            },
            None => None,
        };
        let deal = match event
            .get("deal_id")
            .and_then(Value::as_str)
            .and_then(|d| d.parse::<DealId>().ok())
        {
            Some(id) => match crm::deals::store::get_deal(&self.db, scope, id).await {
                Ok(d) => serde_json::to_value(d).unwrap_or(Value::Null),
                Err(e) if e.status.is_client_error() => Value::Null,
                Err(e) => return Err(e),
            },
            None => Value::Null,
        };
        Ok(json!({
            "contact": contact.map(contact_value).unwrap_or(Value::Null),
            "event": event,
            "deal": deal,
        }))
    }

    async fn context_in(&self, tx: &mut Tx, scope: &Scope, run: &RunRow) -> ApiResult<Value> {
        let event: Value = serde_json::from_str(&run.event).unwrap_or(Value::Null);
        let contact = match run.contact_id {
            Some(id) => match crm::contacts::store::resolve_in(tx, scope, id).await {
                Ok(live) => Some(crm::contacts::store::get_in(tx, scope, live).await?),
                Err(e) if e.status.is_client_error() => None,
                Err(e) => return Err(e),
            },
            None => None,
        };
        Ok(json!({
            "contact": contact.map(contact_value).unwrap_or(Value::Null),
            "event": event,
            "deal": Value::Null,
            "run": {"id": run.id, "automation_id": run.automation_id},
        }))
    }

    // -----------------------------------------------------------------------------------------
    // The executor

    /// Moves a running run forward until it finishes, fails or parks.
    pub(crate) async fn advance(&self, scope: &Scope, run: RunId) -> ApiResult<()> {
        loop {
            match self.step_once(scope, run).await? {
                Moved::Continue => continue,
                Moved::Stop => return Ok(()),
            }
        }
    }

    async fn step_once(&self, scope: &Scope, run_id: RunId) -> ApiResult<Moved> {
        let mut tx = self.db.begin().await?;
        let Some(run) = lock_run(&mut tx, scope, run_id).await? else {
            return Ok(Moved::Stop);
        };
        if run.status != "running" {
            return Ok(Moved::Stop);
        }
        let compiled = match self.compiled(&mut tx, scope, &run).await? {
            Ok(c) => c,
            Err(message) => {
                finish(&mut tx, &run, "failed", Some(&message)).await?;
                tx.commit().await?;
                return Ok(Moved::Stop);
            }
        };
        let position = run.cursor;
        let Some(instr) = compiled.program.get(position as usize) else {
            finish(&mut tx, &run, "succeeded", None).await?;
            tx.commit().await?;
            return Ok(Moved::Stop);
        };
        let moved = match instr {
            Instr::Jump { to } => {
                set_cursor(&mut tx, &run, *to as i32, "running").await?;
                Moved::Continue
            }
            Instr::Branch {
                path,
                condition,
                otherwise,
            } => {
                let context = self.context_in(&mut tx, scope, &run).await?;
                let result = condition.evaluate(&context);
                let now = Timestamp::now();
                insert_step(
                    &mut tx,
                    &run,
                    position,
                    "if",
                    "succeeded",
                    &json!({"path": path, "config": {}}),
                    Some(
                        &json!({"result": result, "branch": if result { "then" } else { "else" }}),
                    ),
                    None,
                    now,
                )
                .await?;
                let next = if result {
                    position + 1
                } else {
                    *otherwise as i32
                };
                set_cursor(&mut tx, &run, next, "running").await?;
                Moved::Continue
            }
            Instr::Step { path, step } => self.run_step(&mut tx, scope, &run, path, step).await?,
        };
        tx.commit().await?;
        if matches!(moved, Moved::Stop) {
            self.wake();
        }
        Ok(moved)
    }

    async fn compiled(
        &self,
        tx: &mut Tx,
        scope: &Scope,
        run: &RunRow,
    ) -> ApiResult<Result<Compiled, String>> {
        let definition = store::version_in(tx, scope, run.automation_id, run.version).await?;
        Ok(definition.compile(&self.plugins).map_err(|e| {
            format!(
                "the rule's version {} no longer compiles: {}",
                run.version, e.message
            )
        }))
    }

    async fn run_step(
        &self,
        tx: &mut Tx,
        scope: &Scope,
        run: &RunRow,
        path: &str,
        step: &Step,
    ) -> ApiResult<Moved> {
        let position = run.cursor;
        let context = self.context_in(tx, scope, run).await?;
        let now = Timestamp::now();
        match step {
            Step::Wait(wait) => {
                let resume_at = match wait_until(wait, &context, now) {
                    Ok(t) => t,
                    Err(message) => {
                        let input = json!({"path": path, "config": {}});
                        insert_step(
                            tx,
                            run,
                            position,
                            "wait",
                            "failed",
                            &input,
                            None,
                            Some(&message),
                            now,
                        )
                        .await?;
                        finish(tx, run, "failed", Some(&message)).await?;
                        return Ok(Moved::Stop);
                    }
                };
                let input = json!({"path": path, "config": {"resume_at": resume_at}});
                insert_step(
                    tx, run, position, "wait", "waiting", &input, None, None, now,
                )
                .await?;
                with_tx!(&mut *tx, conn => sqlx::query(
                    "UPDATE automation_run_steps SET resume_at = $1 WHERE run_id = $2 AND position = $3",
                ).bind(resume_at).bind(run.id).bind(position).execute(conn).await.map(|_| ()))?;
                set_cursor(tx, run, position, "waiting").await?;
                let job = NewJob::new(
                    RESUME_JOB,
                    json!(StepJob {
                        workspace_id: run.workspace_id,
                        run_id: run.id,
                        position
                    }),
                )
                .workspace(run.workspace_id)
                .run_at(resume_at)
                .unique_key(format!(
                    "automation:resume:{}:{position}:{}",
                    run.id, run.retries
                ));
                platform::jobs::enqueue(tx, job).await?;
                Ok(Moved::Stop)
            }
            Step::Plugin { kind, config } => {
                let rendered = template::render_value(config, &context);
                let input = json!({"path": path, "config": rendered, "context": context});
                insert_step(tx, run, position, kind, "queued", &input, None, None, now).await?;
                set_cursor(tx, run, position, "waiting").await?;
                let job = NewJob::new(
                    STEP_JOB,
                    json!(StepJob {
                        workspace_id: run.workspace_id,
                        run_id: run.id,
                        position
                    }),
                )
                .workspace(run.workspace_id)
                .queue(QUEUE)
                .unique_key(format!(
                    "automation:step:{}:{position}:{}",
                    run.id, run.retries
                ));
                platform::jobs::enqueue(tx, job).await?;
                Ok(Moved::Stop)
            }
            internal => {
                savepoint(tx, "SAVEPOINT automation_step").await?;
                // The step's domain events carry the depth of the runs they may start.
                let depth = u32::try_from(run.depth).unwrap_or(0).saturating_add(1);
                let applied = platform::outbox::with_causation_depth(
                    depth,
                    apply_internal(tx, scope, run, internal, &context),
                )
                .await;
                match applied {
                    Ok((input, output)) => {
                        savepoint(tx, "RELEASE SAVEPOINT automation_step").await?;
                        let input = json!({"path": path, "config": input});
                        insert_step(
                            tx,
                            run,
                            position,
                            internal.kind(),
                            "succeeded",
                            &input,
                            Some(&output),
                            None,
                            now,
                        )
                        .await?;
                        set_cursor(tx, run, position + 1, "running").await?;
                        Ok(Moved::Continue)
                    }
                    Err(err) if err.status.is_client_error() => {
                        savepoint(tx, "ROLLBACK TO SAVEPOINT automation_step").await?;
                        savepoint(tx, "RELEASE SAVEPOINT automation_step").await?;
                        let message = format!("{}: {}", err.code, err.message);
                        let input =
                            json!({"path": path, "config": step_config(internal, &context)});
                        insert_step(
                            tx,
                            run,
                            position,
                            internal.kind(),
                            "failed",
                            &input,
                            None,
                            Some(&message),
                            now,
                        )
                        .await?;
                        finish(tx, run, "failed", Some(&message)).await?;
                        Ok(Moved::Stop)
                    }
                    Err(err) => Err(err),
                }
            }
        }
    }

    /// Resumes a run parked on the wait at `position`.
    async fn resume(&self, job: &StepJob) -> ApiResult<()> {
        let scope = Scope::system(job.workspace_id);
        let mut tx = self.db.begin().await?;
        let Some(run) = lock_run(&mut tx, &scope, job.run_id).await? else {
            return Ok(());
        };
        if run.status != "waiting" || run.cursor != job.position {
            return Ok(());
        }
        let done = with_tx!(&mut tx, conn => sqlx::query(
            "UPDATE automation_run_steps SET status = 'succeeded', finished_at = $1
             WHERE run_id = $2 AND position = $3 AND status = 'waiting'",
        ).bind(Timestamp::now()).bind(run.id).bind(job.position).execute(conn).await.map(|r| r.rows_affected()))?;
        if done == 0 {
            return Ok(());
        }
        set_cursor(&mut tx, &run, job.position + 1, "running").await?;
        tx.commit().await?;
        self.advance(&scope, run.id).await
    }

    /// Runs the external step at `position` through its plugin.
    async fn external(&self, job: &StepJob, context: &JobContext) -> Result<(), JobError> {
        let scope = Scope::system(job.workspace_id);
        let Some(run) = load_run(&self.db, &scope, job.run_id)
            .await
            .map_err(job_error)?
        else {
            return Ok(());
        };
        let step: Option<(String, String, String)> = with_db!(&self.db, pool => sqlx::query_as(
            "SELECT kind, status, input FROM automation_run_steps WHERE run_id = $1 AND position = $2",
        ).bind(run.id).bind(job.position).fetch_optional(pool).await)?;
        let Some((kind, status, input)) = step else {
            return Ok(());
        };
        if run.status != "waiting" || run.cursor != job.position || status != "queued" {
            return Ok(()); // already done (a redelivered job) or the run moved on
        }
        let input: Value = serde_json::from_str(&input).unwrap_or(Value::Null);
        let outcome = match self.plugins.get(&kind) {
            None => Err(StepError::Permanent(format!(
                "no step plugin `{kind}` is registered in this process"
            ))),
            Some(plugin) => {
                let ctx = StepContext {
                    workspace_id: run.workspace_id,
                    automation_id: run.automation_id,
                    run_id: run.id,
                    position: job.position.max(0) as u32,
                    idempotency_key: format!("{}:{}", run.id, job.position),
                    config: input.get("config").cloned().unwrap_or(Value::Null),
                    context: input.get("context").cloned().unwrap_or(Value::Null),
                    attempt: context.attempt,
                    db: self.db.clone(),
                };
                plugin.run(&ctx).await
            }
        };
        let now = Timestamp::now();
        let (output, error) = match outcome {
            Ok(output) => (Some(output), None),
            Err(StepError::Retry(message)) if !context.is_last_attempt() => {
                with_db!(&self.db, pool => sqlx::query(
                    "UPDATE automation_run_steps SET attempts = $1, error = $2
                     WHERE run_id = $3 AND position = $4 AND status = 'queued'",
                ).bind(context.attempt as i32).bind(&message).bind(run.id).bind(job.position)
                 .execute(pool).await.map(|_| ()))?;
                return Err(JobError::retry(anyhow::anyhow!(message)));
            }
            Err(err) => (None, Some(err.message().to_owned())),
        };
        let mut tx = self.db.begin().await?;
        let Some(run) = lock_run(&mut tx, &scope, job.run_id)
            .await
            .map_err(job_error)?
        else {
            return Ok(());
        };
        let updated = with_tx!(&mut tx, conn => sqlx::query(
            "UPDATE automation_run_steps SET status = $1, output = $2, error = $3, attempts = $4, finished_at = $5
             WHERE run_id = $6 AND position = $7 AND status = 'queued'",
        ).bind(if error.is_none() { "succeeded" } else { "failed" })
         .bind(output.as_ref().map(Value::to_string)).bind(&error).bind(context.attempt as i32)
         .bind(now).bind(run.id).bind(job.position)
         .execute(conn).await.map(|r| r.rows_affected()))?;
        if updated == 0 || run.status != "waiting" || run.cursor != job.position {
            return Ok(());
        }
        match &error {
            None => set_cursor(&mut tx, &run, job.position + 1, "running")
                .await
                .map_err(job_error)?,
            Some(message) => finish(&mut tx, &run, "failed", Some(message))
                .await
                .map_err(job_error)?,
        }
        tx.commit().await?;
        if error.is_none() {
            self.advance(&scope, run.id).await.map_err(job_error)?;
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // The runs API

    pub async fn list_runs(
        &self,
        scope: &Scope,
        automation: AutomationId,
        page: &PageParams,
    ) -> ApiResult<Page<Run>> {
        store::get(&self.db, scope, automation).await?;
        let limit = page.limit()?;
        let cursor = page.cursor()?.map(RunId);
        let rows: Vec<RunRow> = with_db!(&self.db, pool => sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {RUN_COLUMNS} FROM automation_runs
             WHERE workspace_id = $1 AND automation_id = $2 AND ($3 IS NULL OR id < $3)
             ORDER BY id DESC LIMIT $4"
        ))).bind(scope.workspace_id).bind(automation).bind(cursor).bind(i64::from(limit) + 1)
          .fetch_all(pool).await)?;
        Ok(Page::from_rows(rows, limit, |r| r.id.uuid()).map(RunRow::into_api))
    }

    pub async fn get_run(
        &self,
        scope: &Scope,
        automation: AutomationId,
        id: RunId,
    ) -> ApiResult<Run> {
        let run = load_run(&self.db, scope, id)
            .await?
            .filter(|r| r.automation_id == automation)
            .ok_or_else(run_not_found)?;
        let steps: Vec<StepRow> = with_db!(&self.db, pool => sqlx::query_as(
            "SELECT position, kind, status, input, output, error, attempts, resume_at, started_at, finished_at
             FROM automation_run_steps WHERE workspace_id = $1 AND run_id = $2 ORDER BY started_at, position",
        ).bind(scope.workspace_id).bind(id).fetch_all(pool).await)?;
        let mut run = run.into_api();
        run.steps = Some(steps.into_iter().map(StepRow::into_api).collect());
        Ok(run)
    }

    /// Retries a failed run from its failed step (the step's record is replaced).
    pub async fn retry_run(
        &self,
        scope: &Scope,
        automation: AutomationId,
        id: RunId,
    ) -> ApiResult<Run> {
        let mut tx = self.db.begin().await?;
        let run = lock_run(&mut tx, scope, id)
            .await?
            .filter(|r| r.automation_id == automation)
            .ok_or_else(run_not_found)?;
        if run.status != "failed" {
            return Err(ApiError::conflict(
                "automation_run_not_failed",
                "Only a failed run can be retried.",
            ));
        }
        with_tx!(&mut tx, conn => sqlx::query(
            "DELETE FROM automation_run_steps WHERE run_id = $1 AND position = $2 AND status = 'failed'",
        ).bind(id).bind(run.cursor).execute(conn).await.map(|_| ()))?;
        with_tx!(&mut tx, conn => sqlx::query(
            "UPDATE automation_runs SET status = 'running', error = NULL, finished_at = NULL,
                retries = retries + 1, updated_at = $1 WHERE id = $2",
        ).bind(Timestamp::now()).bind(id).execute(conn).await.map(|_| ()))?;
        tx.commit().await?;
        self.advance(scope, id).await?;
        self.get_run(scope, automation, id).await
    }

    /// Evaluates a rule against a sample event without changing anything.
    pub async fn dry_run(
        &self,
        scope: &Scope,
        automation: AutomationId,
        sample: &DryRunRequest,
    ) -> ApiResult<DryRun> {
        let rule = store::get(&self.db, scope, automation).await?;
        let definition = definition::Definition {
            triggers: rule.triggers.clone(),
            conditions: rule.conditions.clone(),
            steps: rule.steps.clone(),
        };
        let compiled = definition.compile(&self.plugins)?;
        let (key, event_type, payload) = match (&sample.trigger, &sample.event_type) {
            (Some(name), None) => {
                let mut payload = sample.data.clone().unwrap_or_default();
                payload.insert("trigger".into(), json!(name));
                payload.insert(
                    "variables".into(),
                    sample.variables.clone().unwrap_or(json!({})),
                );
                if let Some(c) = sample.contact_id {
                    payload.insert("contact_id".into(), json!(c));
                }
                (
                    definition::custom_key(name),
                    EVENT_RECEIVED.to_owned(),
                    payload,
                )
            }
            (None, Some(event_type)) => {
                let mut payload = sample.data.clone().unwrap_or_default();
                if let Some(c) = sample.contact_id {
                    payload.insert("contact_id".into(), json!(c));
                }
                (
                    definition::event_key(event_type),
                    event_type.clone(),
                    payload,
                )
            }
            _ => {
                return Err(ApiError::invalid_field(
                    "trigger",
                    "Give either `trigger` (a custom event name) or `event_type` (a domain event).",
                ));
            }
        };
        if let Some(c) = sample.contact_id {
            crm::contacts::store::resolve(&self.db, scope, c).await?;
        }
        let payload = Value::Object(payload);
        let event = event_context(&event_type, "evt_dry_run", &payload);
        let context = self.context(scope, contact_of(&payload), &event).await?;
        let trigger_matches = compiled.triggers.iter().any(|t| t.starts_on(&key, None));
        let conditions_pass = compiled
            .conditions
            .as_ref()
            .is_none_or(|c| c.evaluate(&context));
        let mut steps = Vec::new();
        if trigger_matches && conditions_pass {
            let mut pc = 0usize;
            while let Some(instr) = compiled.program.get(pc) {
                match instr {
                    Instr::Jump { to } => pc = *to,
                    Instr::Branch {
                        path,
                        condition,
                        otherwise,
                    } => {
                        let result = condition.evaluate(&context);
                        steps.push(
                            json!({"position": pc, "path": path, "type": "if", "result": result,
                                          "branch": if result { "then" } else { "else" }}),
                        );
                        pc = if result { pc + 1 } else { *otherwise };
                    }
                    Instr::Step { path, step } => {
                        let external = matches!(step, Step::Plugin { .. });
                        steps.push(json!({"position": pc, "path": path, "type": step.kind(),
                                          "input": step_config(step, &context),
                                          "runs": if external { "job queue" } else { "in the run's transaction" }}));
                        pc += 1;
                    }
                }
            }
        }
        Ok(DryRun {
            trigger_matches,
            conditions_pass,
            context,
            steps,
        })
    }
}

/// A sample event for a dry run: `trigger` (custom event name) or `event_type` (domain event).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DryRunRequest {
    pub trigger: Option<String>,
    pub event_type: Option<String>,
    pub contact_id: Option<ContactId>,
    #[schema(value_type = Option<Object>)]
    pub variables: Option<Value>,
    /// Other fields of the event (`tag`, `deal_id`, …).
    #[schema(value_type = Option<Object>)]
    pub data: Option<Map<String, Value>>,
}

/// What a rule would do with a sample event.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DryRun {
    pub trigger_matches: bool,
    pub conditions_pass: bool,
    /// The context templates and conditions saw.
    #[schema(value_type = Object)]
    pub context: Value,
    /// The steps that would run, in order, with rendered settings and branch results (as the
    /// context is now: earlier steps' effects are not applied).
    #[schema(value_type = Vec<Object>)]
    pub steps: Vec<Value>,
}

/// An event that may start runs or move timers: a domain event, a trigger API event, a
/// tracking hit.
pub(crate) struct Fired {
    pub workspace: WorkspaceId,
    /// Its key in the trigger index (`event:contact.created`, `custom:deal_won`,
    /// `tracking:purchase`).
    pub key: String,
    /// What makes a run unique per rule (the outbox event's id, the trigger API's `event_id`,
    /// the hit's id).
    pub trigger_event_id: String,
    /// The event as templates and conditions see it.
    pub event: Value,
    /// The outbox payload (date triggers read the changed field from it).
    pub payload: Value,
    pub contact: Option<ContactId>,
    /// The site of a tracking hit.
    pub site: Option<tracking::sites::SiteId>,
    /// When it happened (timers count from here).
    pub at: Timestamp,
    /// Its causation depth (see [`MAX_DEPTH`]).
    pub depth: u32,
}

/// The event as templates see it: the payload's fields plus `type` and `id`.
fn event_context(event_type: &str, id: &str, payload: &Value) -> Value {
    let mut map = payload.as_object().cloned().unwrap_or_default();
    map.insert("type".into(), json!(event_type));
    map.entry("id").or_insert_with(|| json!(id));
    Value::Object(map)
}

/// The contact an event is about: `contact_id`, `contact.id`, the first of `contact_ids`, or
/// the contact of a note or task.
fn contact_of(payload: &Value) -> Option<ContactId> {
    let candidates = [
        payload.get("contact_id"),
        payload.get("contact").and_then(|c| c.get("id")),
        payload.get("contact_ids").and_then(|c| c.get(0)),
        payload.get("note").and_then(|n| n.get("contact_id")),
        payload.get("task").and_then(|t| t.get("contact_id")),
    ];
    candidates
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .find_map(|s| s.parse().ok())
}

pub(crate) fn contact_id_in(context: &Value) -> Option<ContactId> {
    context
        .get("contact")
        .and_then(|c| c.get("id"))
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
}

fn contact_value(contact: crm::contacts::Contact) -> Value {
    let email = contact.emails.first().cloned();
    let phone = contact.phones.first().cloned();
    let mut value = serde_json::to_value(contact).unwrap_or(Value::Null);
    if let Some(map) = value.as_object_mut() {
        map.insert("email".into(), json!(email));
        map.insert("phone".into(), json!(phone));
    }
    value
}

fn metrics_run_started() {
    tracing::debug!("automation run started");
}

async fn savepoint(tx: &mut Tx, statement: &'static str) -> ApiResult<()> {
    with_tx!(tx, conn => sqlx::query(statement).execute(conn).await.map(|_| ()))?;
    Ok(())
}

async fn lock_run(tx: &mut Tx, scope: &Scope, id: RunId) -> ApiResult<Option<RunRow>> {
    let lock = match tx.dialect() {
        Dialect::Postgres => " FOR UPDATE",
        Dialect::Sqlite => "",
    };
    Ok(
        with_tx!(tx, conn => sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {RUN_COLUMNS} FROM automation_runs WHERE workspace_id = $1 AND id = $2{lock}"
    ))).bind(scope.workspace_id).bind(id).fetch_optional(conn).await)?,
    )
}

async fn load_run(db: &Db, scope: &Scope, id: RunId) -> ApiResult<Option<RunRow>> {
    Ok(
        with_db!(db, pool => sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {RUN_COLUMNS} FROM automation_runs WHERE workspace_id = $1 AND id = $2"
    ))).bind(scope.workspace_id).bind(id).fetch_optional(pool).await)?,
    )
}

async fn set_cursor(tx: &mut Tx, run: &RunRow, cursor: i32, status: &str) -> ApiResult<()> {
    with_tx!(tx, conn => sqlx::query(
        "UPDATE automation_runs SET cursor = $1, status = $2, updated_at = $3 WHERE id = $4",
    ).bind(cursor).bind(status).bind(Timestamp::now()).bind(run.id).execute(conn).await.map(|_| ()))?;
    Ok(())
}

async fn finish(tx: &mut Tx, run: &RunRow, status: &str, error: Option<&str>) -> ApiResult<()> {
    let now = Timestamp::now();
    with_tx!(tx, conn => sqlx::query(
        "UPDATE automation_runs SET status = $1, error = $2, updated_at = $3, finished_at = $3 WHERE id = $4",
    ).bind(status).bind(error).bind(now).bind(run.id).execute(conn).await.map(|_| ()))?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn insert_step(
    tx: &mut Tx,
    run: &RunRow,
    position: i32,
    kind: &str,
    status: &str,
    input: &Value,
    output: Option<&Value>,
    error: Option<&str>,
    started_at: Timestamp,
) -> ApiResult<()> {
    let finished = matches!(status, "succeeded" | "failed").then(Timestamp::now);
    with_tx!(tx, conn => sqlx::query(
        "INSERT INTO automation_run_steps (run_id, position, workspace_id, kind, status, input, output,
            error, attempts, started_at, finished_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 1, $9, $10)",
    ).bind(run.id).bind(position).bind(run.workspace_id).bind(kind).bind(status)
     .bind(input.to_string()).bind(output.map(Value::to_string)).bind(error)
     .bind(started_at).bind(finished)
     .execute(conn).await.map(|_| ()))?;
    Ok(())
}

/// When a wait ends.
fn wait_until(
    wait: &definition::Wait,
    context: &Value,
    now: Timestamp,
) -> Result<Timestamp, String> {
    let before = Duration::from_secs(wait.minutes_before.unwrap_or(0) * 60);
    match (&wait.minutes, &wait.until) {
        (Some(minutes), _) => Ok(now + Duration::from_secs(minutes * 60)),
        (None, Some(until)) => {
            let text = template::render(until, context);
            let at = chrono::DateTime::parse_from_rfc3339(text.trim())
                .map_err(|_| format!("wait `until` is not an RFC 3339 date: `{text}`"))?;
            let at = Timestamp::from(at.with_timezone(&chrono::Utc));
            let target = at - before;
            Ok(if target < now { now } else { target })
        }
        (None, None) => Ok(now),
    }
}

/// A step's settings with templates rendered, for the record and the dry run.
fn step_config(step: &Step, context: &Value) -> Value {
    let r = |t: &str| template::render(t, context);
    match step {
        Step::AddTag { tag } | Step::RemoveTag { tag } => json!({"tag": r(tag)}),
        Step::SetField { field, value } => {
            json!({"field": field, "value": template::render_value(value, context)})
        }
        Step::MoveDealStage(s) => json!({"pipeline_id": s.pipeline_id, "stage_id": s.stage_id,
            "create_if_missing": s.create_if_missing, "title": s.title.as_deref().map(r)}),
        Step::CreateDeal(s) => json!({"pipeline_id": s.pipeline_id, "stage_id": s.stage_id,
            "title": r(&s.title), "value": s.value.as_deref().map(r), "currency": s.currency}),
        Step::CreateTask(s) => json!({"title": r(&s.title), "due_in_minutes": s.due_in_minutes}),
        Step::CreateNote { body } => json!({"body": r(body)}),
        Step::Wait(w) => json!({"minutes": w.minutes, "until": w.until.as_deref().map(r),
            "minutes_before": w.minutes_before}),
        Step::Plugin { config, .. } => template::render_value(config, context),
        Step::If { .. } => json!({}),
    }
}

fn needs_contact(run: &RunRow) -> ApiResult<ContactId> {
    run.contact_id.ok_or_else(|| {
        ApiError::unprocessable(
            "automation_no_contact",
            "This step needs a contact, and the trigger event names none.",
        )
    })
}

/// Applies an internal step in the run's transaction; returns (input, output).
async fn apply_internal(
    tx: &mut Tx,
    scope: &Scope,
    run: &RunRow,
    step: &Step,
    context: &Value,
) -> ApiResult<(Value, Value)> {
    use crm::contacts::store as contacts;
    let input = step_config(step, context);
    let r = |t: &str| template::render(t, context);
    let output = match step {
        Step::AddTag { tag } => {
            let contact = contacts::tag_in(tx, scope, needs_contact(run)?, &[r(tag)]).await?;
            json!({"contact_id": contact.id, "tags": contact.tags})
        }
        Step::RemoveTag { tag } => {
            let removed = contacts::untag_in(tx, scope, needs_contact(run)?, &r(tag)).await?;
            json!({"removed": removed})
        }
        Step::SetField { field, value } => {
            let value = template::render_value(value, context);
            let mut input = ContactInput::default();
            let text = || match &value {
                Value::Null => None,
                v => Some(template::as_text(v)),
            };
            match field.as_str() {
                "first_name" => input.first_name = Some(text()),
                "last_name" => input.last_name = Some(text()),
                "lifecycle_stage" => {
                    let stage = crm::contacts::LifecycleStage::parse(&template::as_text(&value))
                        .ok_or_else(|| {
                            ApiError::invalid_field("value", "Not a lifecycle stage.")
                        })?;
                    input.lifecycle_stage = Some(stage);
                }
                "lead_score" => {
                    let score = template::as_text(&value)
                        .trim()
                        .parse::<i64>()
                        .map_err(|_| {
                            ApiError::invalid_field("value", "`lead_score` is a whole number.")
                        })?;
                    input.lead_score = Some(score);
                }
                other => {
                    let key = other.strip_prefix("custom.").unwrap_or(other);
                    let mut custom = Map::new();
                    custom.insert(key.to_owned(), value.clone());
                    input.custom = Some(custom);
                }
            }
            let contact = contacts::update_in(tx, scope, needs_contact(run)?, &input).await?;
            json!({"contact_id": contact.id})
        }
        Step::MoveDealStage(s) => {
            let contact = needs_contact(run)?;
            let live = contacts::resolve_in(tx, scope, contact).await?;
            let from_event = context
                .get("event")
                .and_then(|e| e.get("deal_id"))
                .and_then(Value::as_str)
                .and_then(|d| d.parse::<DealId>().ok());
            let target = match from_event {
                Some(deal) => Some(deal),
                None => crm::deals::store::open_deals_of_contact_in(tx, scope, live, s.pipeline_id)
                    .await?
                    .first()
                    .copied(),
            };
            match target {
                Some(deal) => {
                    let change = DealChange {
                        pipeline_id: Some(s.pipeline_id),
                        stage_id: Some(s.stage_id),
                        ..DealChange::default()
                    };
                    let deal = crm::deals::store::update_deal_in(tx, scope, deal, &change).await?;
                    json!({"deal_id": deal.id, "stage_id": deal.stage_id, "created": false})
                }
                None if s.create_if_missing => {
                    let title = s
                        .title
                        .as_deref()
                        .map(r)
                        .filter(|t| !t.trim().is_empty())
                        .unwrap_or_else(|| default_deal_title(context));
                    let deal = crm::deals::store::create_deal_in(
                        tx,
                        scope,
                        &new_deal(title, s.pipeline_id, Some(s.stage_id), None, None, live),
                    )
                    .await?;
                    json!({"deal_id": deal.id, "stage_id": deal.stage_id, "created": true})
                }
                None => {
                    return Err(ApiError::unprocessable(
                        "automation_no_open_deal",
                        "The contact has no open deal in this pipeline (set `create_if_missing`).",
                    ));
                }
            }
        }
        Step::CreateDeal(s) => {
            let live = contacts::resolve_in(tx, scope, needs_contact(run)?).await?;
            let value = s.value.as_deref().map(r).filter(|v| !v.trim().is_empty());
            let deal = crm::deals::store::create_deal_in(
                tx,
                scope,
                &new_deal(
                    r(&s.title),
                    s.pipeline_id,
                    s.stage_id,
                    value,
                    s.currency.clone(),
                    live,
                ),
            )
            .await?;
            json!({"deal_id": deal.id})
        }
        Step::CreateTask(s) => {
            let due_at = s
                .due_in_minutes
                .map(|m| (Timestamp::now() + Duration::from_secs(u64::from(m) * 60)).to_rfc3339());
            let task = crm::activities::tasks::create_in(
                tx,
                scope,
                &crm::activities::tasks::NewTask {
                    title: r(&s.title),
                    contact_id: Some(needs_contact(run)?),
                    deal_id: None,
                    due_at,
                    assignee_id: None,
                },
            )
            .await?;
            json!({"task_id": task.id})
        }
        Step::CreateNote { body } => {
            let note = crm::activities::notes::create_in(
                tx,
                scope,
                &crm::activities::notes::NewNote {
                    contact_id: Some(needs_contact(run)?),
                    deal_id: None,
                    body: r(body),
                },
            )
            .await?;
            json!({"note_id": note.id})
        }
        Step::Wait(_) | Step::If { .. } | Step::Plugin { .. } => {
            return Err(ApiError::internal(anyhow::anyhow!(
                "`{}` is not an internal step",
                step.kind()
            )));
        }
    };
    Ok((input, output))
}

fn default_deal_title(context: &Value) -> String {
    let name = template::render("{{contact.first_name}} {{contact.last_name}}", context);
    let name = name.trim();
    if name.is_empty() {
        template::render(r#"{{contact.email | default:"New deal"}}"#, context)
    } else {
        name.to_owned()
    }
}

fn new_deal(
    title: String,
    pipeline_id: crm::PipelineId,
    stage_id: Option<crm::StageId>,
    value: Option<String>,
    currency: Option<String>,
    contact: ContactId,
) -> NewDeal {
    NewDeal {
        title,
        pipeline_id,
        stage_id,
        value: value.map(Value::String),
        currency,
        contact_ids: vec![contact],
        company_id: None,
        owner_id: None,
        expected_close_date: None,
        custom: None,
        status: None,
        lost_reason: None,
    }
}

/// The outbox consumer that evaluates triggers.
struct TriggerConsumer {
    engine: Engine,
}

impl Consumer for TriggerConsumer {
    fn name(&self) -> &str {
        CONSUMER
    }

    /// Trigger API events, and the domain event types some enabled rule triggers on; which
    /// rules an event triggers is one indexed query per event in `handle`.
    fn wants(&self, event_type: &str) -> bool {
        self.engine.wants(event_type)
    }

    fn handle<'a>(
        &'a self,
        event: &'a OutboxEvent,
        _job: &'a JobContext,
    ) -> BoxFuture<'a, Result<(), JobError>> {
        Box::pin(async move {
            self.engine
                .on_event(event)
                .await
                .map_err(|e| JobError::retry(anyhow::anyhow!("{e}")))
        })
    }
}

struct ExternalStep {
    engine: Engine,
}

impl JobHandler for ExternalStep {
    fn run<'a>(&'a self, job: &'a JobContext) -> BoxFuture<'a, Result<(), JobError>> {
        Box::pin(async move {
            let payload: StepJob = job.payload_as()?;
            self.engine.external(&payload, job).await
        })
    }
}

fn job_error(err: ApiError) -> JobError {
    JobError::retry(anyhow::anyhow!("{err}"))
}

struct Resume {
    engine: Engine,
}

/// The `automation.cron` job: one slot of a rule's schedule (`run_at` is the slot).
struct Cron {
    engine: Engine,
}

#[derive(Deserialize)]
struct CronJob {
    automation_id: AutomationId,
}

impl JobHandler for Cron {
    fn run<'a>(&'a self, job: &'a JobContext) -> BoxFuture<'a, Result<(), JobError>> {
        Box::pin(async move {
            let payload: CronJob = job.payload_as()?;
            let Some(workspace) = job.workspace_id else {
                return Err(JobError::permanent(anyhow::anyhow!(
                    "a rule schedule without a workspace"
                )));
            };
            self.engine
                .on_schedule(workspace, payload.automation_id, job.run_at, job.id)
                .await
                .map_err(job_error)
        })
    }
}

impl JobHandler for Resume {
    fn run<'a>(&'a self, job: &'a JobContext) -> BoxFuture<'a, Result<(), JobError>> {
        Box::pin(async move {
            let payload: StepJob = job.payload_as()?;
            self.engine
                .resume(&payload)
                .await
                .map_err(|e| JobError::retry(anyhow::anyhow!("{e}")))
        })
    }
}
