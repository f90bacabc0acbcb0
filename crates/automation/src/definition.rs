//! A rule's definition — triggers, conditions and an ordered list of steps — parsed from JSON
//! with errors that name the field (`steps[2].then[0].tag`), and compiled into a flat program
//! whose positions identify steps in runs (an if/else becomes a branch and a jump).

use crm::{PipelineId, StageId};
use platform::ApiError;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::condition::Condition;
use crate::plugins::Plugins;
use crate::template;

/// Most triggers per rule.
pub const MAX_TRIGGERS: usize = 20;
/// Most steps per rule, counting those inside branches.
pub const MAX_STEPS: usize = 200;
/// Longest wait, in minutes (one year).
pub const MAX_WAIT_MINUTES: u64 = 366 * 24 * 60;

/// What starts a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Trigger {
    /// A domain event of the workspace: `contact.created`, `contact.tag_added`,
    /// `contact.tag_removed`, `form.submitted`, `deal.created`, `deal.stage_changed`,
    /// `task.created`, `note.created`, …
    Event { event: String },
    /// A named custom event sent to the trigger API (`appointment_confirmed`, `deal_won`, …).
    Custom { name: String },
    /// A cron schedule (five fields or `@daily`, …) in an IANA time zone (default `UTC`). Runs
    /// have no contact: use steps that do not need one (webhook, …).
    Schedule {
        cron: String,
        time_zone: Option<String>,
    },
    /// A tracking event from the event log (a GA4, Measurement Protocol or Segment hit), e.g.
    /// `purchase`, of any site of the workspace or of `site_id`. The run's contact is the one
    /// known by the hit's client id (none if nobody is); filter on parameters with conditions
    /// on `event.params.*`.
    Tracking {
        event: String,
        site_id: Option<tracking::sites::SiteId>,
    },
    /// Fires `minutes` after the latest `after` event of a contact unless an `unless` event of
    /// that contact came since. Entries are trigger keys: a domain event type
    /// (`contact.tag_added`, same as `event:contact.tag_added`), `custom:<name>` or
    /// `tracking:<event>`. At most one per rule.
    Inactivity {
        minutes: u64,
        after: Vec<String>,
        #[serde(default)]
        unless: Vec<String>,
    },
    /// Fires `offset_minutes` after (negative: before) the date in a contact's custom field of
    /// type `date` or `datetime` (`custom.appointment_at`); a `date` is midnight in
    /// `time_zone` (default `UTC`). Scheduled when the field is set or changed; a time already
    /// past is not fired.
    Date {
        field: String,
        #[serde(default)]
        offset_minutes: i64,
        time_zone: Option<String>,
    },
}

impl Trigger {
    /// The key of the runs this trigger starts (`automation_runs.trigger_key`).
    pub fn key(&self) -> String {
        match self {
            Trigger::Event { event } => event_key(event),
            Trigger::Custom { name } => custom_key(name),
            Trigger::Schedule { .. } => SCHEDULE_KEY.to_owned(),
            Trigger::Tracking { event, .. } => tracking_key(event),
            Trigger::Inactivity { .. } => INACTIVITY_KEY.to_owned(),
            Trigger::Date { field, .. } => format!("date:{field}"),
        }
    }

    /// The keys under which the trigger index lists the rule: the events it starts runs on, or
    /// (inactivity, date) the events that start, restart or cancel its timers. Schedules are
    /// platform cron schedules, not in the index.
    pub fn index_keys(&self) -> Vec<String> {
        match self {
            Trigger::Event { .. } | Trigger::Custom { .. } | Trigger::Tracking { .. } => {
                vec![self.key()]
            }
            Trigger::Schedule { .. } => Vec::new(),
            Trigger::Inactivity { after, unless, .. } => {
                after.iter().chain(unless).map(|k| timer_key(k)).collect()
            }
            Trigger::Date { .. } => vec![event_key(CONTACT_CREATED), event_key(CONTACT_UPDATED)],
        }
    }

    /// Whether an event with index key `key` (from site `site`, for tracking hits) starts a run
    /// of this trigger directly.
    pub fn starts_on(&self, key: &str, site: Option<tracking::sites::SiteId>) -> bool {
        match self {
            Trigger::Event { .. } | Trigger::Custom { .. } => self.key() == key,
            Trigger::Tracking { site_id, .. } => {
                self.key() == key && site_id.is_none_or(|s| Some(s) == site)
            }
            _ => false,
        }
    }
}

/// The trigger key of schedule runs (schedules are not in the event index).
pub const SCHEDULE_KEY: &str = "schedule";
/// The trigger key of runs started by an inactivity timer.
pub const INACTIVITY_KEY: &str = "inactivity";
const CONTACT_CREATED: &str = "contact.created";
const CONTACT_UPDATED: &str = "contact.updated";
/// Longest inactivity, in minutes (one year).
pub const MAX_INACTIVITY_MINUTES: u64 = MAX_WAIT_MINUTES;
/// Largest date offset, in minutes either way (one year).
pub const MAX_DATE_OFFSET_MINUTES: i64 = 366 * 24 * 60;

pub fn tracking_key(event_name: &str) -> String {
    format!("tracking:{event_name}")
}

/// An inactivity entry as an index key: a bare domain event type means `event:<type>`.
pub fn timer_key(entry: &str) -> String {
    if entry.starts_with("custom:") || entry.starts_with("tracking:") || entry.starts_with("event:")
    {
        entry.to_owned()
    } else {
        event_key(entry)
    }
}

/// Whether `name` is a tracking event name we can match: 1 to 100 characters without control
/// characters or surrounding spaces (GA4 names are letters, digits and `_`; Segment's are free
/// text, `Order Completed`).
pub fn valid_tracking_event(name: &str) -> bool {
    !name.is_empty()
        && name.chars().count() <= 100
        && name.trim() == name
        && !name.chars().any(char::is_control)
}

/// Checks an inactivity entry (after [`timer_key`]).
fn valid_timer_key(key: &str) -> bool {
    if let Some(event) = key.strip_prefix("event:") {
        valid_event_type(event) && !event.starts_with("automation.")
    } else if let Some(name) = key.strip_prefix("custom:") {
        valid_trigger_name(name)
    } else {
        key.strip_prefix("tracking:")
            .is_some_and(valid_tracking_event)
    }
}

pub fn event_key(event_type: &str) -> String {
    format!("event:{event_type}")
}

pub fn custom_key(name: &str) -> String {
    format!("custom:{name}")
}

/// Whether `name` is a valid custom trigger name: 1 to 100 of `a-z 0-9 _ . -`.
pub fn valid_trigger_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-'))
}

fn valid_event_type(event: &str) -> bool {
    event.len() <= 100
        && event.contains('.')
        && event.split('.').all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
}

/// A step, parsed. `If` holds its branches; the rest are single instructions.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    AddTag {
        tag: String,
    },
    RemoveTag {
        tag: String,
    },
    SetField {
        field: String,
        value: Value,
    },
    MoveDealStage(MoveDealStage),
    CreateDeal(CreateDeal),
    CreateTask(CreateTask),
    CreateNote {
        body: String,
    },
    Wait(Wait),
    If {
        condition: Condition,
        then: Vec<Step>,
        otherwise: Vec<Step>,
    },
    /// An external step run by a [`crate::StepPlugin`] through the job queue.
    Plugin {
        kind: String,
        config: Value,
    },
}

impl Step {
    pub fn kind(&self) -> &str {
        match self {
            Step::AddTag { .. } => "add_tag",
            Step::RemoveTag { .. } => "remove_tag",
            Step::SetField { .. } => "set_field",
            Step::MoveDealStage(_) => "move_deal_stage",
            Step::CreateDeal(_) => "create_deal",
            Step::CreateTask(_) => "create_task",
            Step::CreateNote { .. } => "create_note",
            Step::Wait(_) => "wait",
            Step::If { .. } => "if",
            Step::Plugin { kind, .. } => kind,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct TagStep {
    tag: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetFieldStep {
    field: String,
    value: Value,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoteStep {
    body: String,
}

/// Moves the deal of the event (`event.deal_id`), or else the contact's newest open deal in the
/// pipeline, to a stage; with `create_if_missing`, a contact without one gets a new deal there.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoveDealStage {
    pub pipeline_id: PipelineId,
    pub stage_id: StageId,
    #[serde(default)]
    pub create_if_missing: bool,
    /// Title of a created deal (template); default the contact's name.
    pub title: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateDeal {
    pub pipeline_id: PipelineId,
    pub stage_id: Option<StageId>,
    /// Template.
    pub title: String,
    /// Decimal string (template), e.g. `"{{event.variables.amount}}"`.
    pub value: Option<String>,
    pub currency: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTask {
    /// Template.
    pub title: String,
    /// Due this many minutes after the step runs.
    pub due_in_minutes: Option<u32>,
}

/// Waits a duration, or until a date (a template resolving to RFC 3339, e.g.
/// `{{event.variables.appointment_at}}`), minus `minutes_before` if given.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wait {
    pub minutes: Option<u64>,
    pub until: Option<String>,
    pub minutes_before: Option<u64>,
}

/// One instruction of a compiled rule.
#[derive(Debug, Clone, PartialEq)]
pub enum Instr {
    /// Runs a step (never `Step::If`).
    Step { path: String, step: Step },
    /// Evaluates an if/else condition: on to the next position when true, else to `otherwise`.
    Branch {
        path: String,
        condition: Condition,
        otherwise: usize,
    },
    /// The end of a `then` branch skips the `else` branch.
    Jump { to: usize },
}

/// A definition as stored and shown: the JSON the client sent, checked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Definition {
    pub triggers: Vec<Trigger>,
    /// `{"all": […]}`, `{"any": […]}` or one `{"field", "op", "value"}`; absent: always.
    #[schema(value_type = Option<Object>)]
    pub conditions: Option<Value>,
    /// Steps in order (see the docs for each `type`).
    #[schema(value_type = Vec<Object>)]
    pub steps: Vec<Value>,
}

/// A definition ready to run.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub triggers: Vec<Trigger>,
    pub conditions: Option<Condition>,
    pub program: Vec<Instr>,
}

/// Parses triggers given as JSON, naming the failing one.
pub fn parse_triggers(raw: &[Value]) -> Result<Vec<Trigger>, ApiError> {
    if raw.is_empty() {
        return Err(ApiError::invalid_field(
            "triggers",
            "`triggers` needs at least one trigger.",
        ));
    }
    if raw.len() > MAX_TRIGGERS {
        return Err(ApiError::invalid_field(
            "triggers",
            format!("At most {MAX_TRIGGERS} triggers."),
        ));
    }
    let mut out = Vec::new();
    for (i, value) in raw.iter().enumerate() {
        let at = format!("triggers[{i}]");
        let trigger: Trigger = serde_json::from_value(value.clone()).map_err(|e| {
            ApiError::invalid_field(
                &at,
                format!("`{at}`: {e} (supported: `event` with `event`, `custom` with `name`, `schedule` with `cron` and `time_zone`, `tracking` with `event` and `site_id`, `inactivity` with `minutes`, `after` and `unless`, `date` with `field`, `offset_minutes` and `time_zone`)."),
            )
        })?;
        match &trigger {
            Trigger::Event { event } if !valid_event_type(event) => {
                return Err(ApiError::invalid_field(
                    &format!("{at}.event"),
                    format!("`{at}.event`: `{event}` is not an event type like `contact.created`."),
                ));
            }
            Trigger::Event { event } if event.starts_with("automation.") => {
                return Err(ApiError::invalid_field(
                    &format!("{at}.event"),
                    format!("`{at}.event`: use a `custom` trigger for trigger API events."),
                ));
            }
            Trigger::Schedule { cron, time_zone } => {
                platform::cron::CronSpec::parse(cron, time_zone.as_deref().unwrap_or("UTC"))
                    .map_err(|e| {
                        let field = match e {
                            platform::cron::SpecError::TimeZone(_) => "time_zone",
                            platform::cron::SpecError::Cron { .. } => "cron",
                        };
                        ApiError::invalid_field(
                            &format!("{at}.{field}"),
                            format!("`{at}.{field}`: {e}."),
                        )
                    })?;
            }
            Trigger::Custom { name } if !valid_trigger_name(name) => {
                return Err(ApiError::invalid_field(
                    &format!("{at}.name"),
                    format!("`{at}.name`: 1 to 100 of a-z, 0-9, `_`, `.`, `-`."),
                ));
            }
            Trigger::Tracking { event, .. } if !valid_tracking_event(event) => {
                return Err(ApiError::invalid_field(
                    &format!("{at}.event"),
                    format!(
                        "`{at}.event`: a tracking event name like `purchase` (1 to 100 characters)."
                    ),
                ));
            }
            Trigger::Inactivity {
                minutes,
                after,
                unless,
            } => check_inactivity(&at, *minutes, after, unless, &out)?,
            Trigger::Date {
                field,
                offset_minutes,
                time_zone,
            } => {
                if field
                    .strip_prefix("custom.")
                    .is_none_or(|k| k.is_empty() || k.contains('.'))
                {
                    return Err(ApiError::invalid_field(
                        &format!("{at}.field"),
                        format!(
                            "`{at}.field`: a contact custom field of type date or datetime, `custom.<key>`."
                        ),
                    ));
                }
                if offset_minutes.abs() > MAX_DATE_OFFSET_MINUTES {
                    return Err(ApiError::invalid_field(
                        &format!("{at}.offset_minutes"),
                        format!(
                            "`{at}.offset_minutes`: at most {MAX_DATE_OFFSET_MINUTES} either way."
                        ),
                    ));
                }
                if let Some(zone) = time_zone
                    && zone.parse::<chrono_tz::Tz>().is_err()
                {
                    return Err(ApiError::invalid_field(
                        &format!("{at}.time_zone"),
                        format!("`{at}.time_zone`: `{zone}` is not an IANA time zone."),
                    ));
                }
            }
            _ => {}
        }
        if !out.contains(&trigger) {
            out.push(trigger);
        }
    }
    Ok(out)
}

fn check_inactivity(
    at: &str,
    minutes: u64,
    after: &[String],
    unless: &[String],
    earlier: &[Trigger],
) -> Result<(), ApiError> {
    if earlier
        .iter()
        .any(|t| matches!(t, Trigger::Inactivity { .. }))
    {
        return Err(ApiError::invalid_field(
            at,
            format!("`{at}`: a rule has at most one inactivity trigger."),
        ));
    }
    if minutes == 0 || minutes > MAX_INACTIVITY_MINUTES {
        return Err(ApiError::invalid_field(
            &format!("{at}.minutes"),
            format!("`{at}.minutes`: 1 to {MAX_INACTIVITY_MINUTES}."),
        ));
    }
    if after.is_empty() || after.len() > MAX_TRIGGERS || unless.len() > MAX_TRIGGERS {
        return Err(ApiError::invalid_field(
            &format!("{at}.after"),
            format!(
                "`{at}.after`: 1 to {MAX_TRIGGERS} events that start the timer (`unless`: at most {MAX_TRIGGERS})."
            ),
        ));
    }
    for (list, entries) in [("after", after), ("unless", unless)] {
        for (i, entry) in entries.iter().enumerate() {
            let key = timer_key(entry);
            if !valid_timer_key(&key) {
                return Err(ApiError::invalid_field(
                    &format!("{at}.{list}[{i}]"),
                    format!(
                        "`{at}.{list}[{i}]`: `{entry}` is not a domain event type (`contact.tag_added`), `custom:<name>` or `tracking:<event>`."
                    ),
                ));
            }
            if list == "unless" && after.iter().any(|a| timer_key(a) == key) {
                return Err(ApiError::invalid_field(
                    &format!("{at}.{list}[{i}]"),
                    format!("`{at}.{list}[{i}]`: `{entry}` is in `after` too."),
                ));
            }
        }
    }
    Ok(())
}

impl Definition {
    /// The rule's inactivity trigger, if any (at most one).
    pub fn inactivity(&self) -> Option<(u64, &[String], &[String])> {
        self.triggers.iter().find_map(|t| match t {
            Trigger::Inactivity {
                minutes,
                after,
                unless,
            } => Some((*minutes, after.as_slice(), unless.as_slice())),
            _ => None,
        })
    }

    /// Checks everything and returns the compiled form.
    pub fn compile(&self, plugins: &Plugins) -> Result<Compiled, ApiError> {
        let conditions = self
            .conditions
            .as_ref()
            .filter(|c| !c.is_null())
            .map(|c| Condition::parse(c, "conditions"))
            .transpose()?;
        let mut count = 0;
        let steps = parse_steps(&self.steps, "steps", plugins, &mut count)?;
        if steps.is_empty() {
            return Err(ApiError::invalid_field(
                "steps",
                "`steps` needs at least one step.",
            ));
        }
        let mut program = Vec::new();
        compile_into(&steps, "steps", &mut program);
        Ok(Compiled {
            triggers: self.triggers.clone(),
            conditions,
            program,
        })
    }
}

fn field_error(at: &str, message: String) -> ApiError {
    ApiError::invalid_field(at, message)
}

fn parse_steps(
    raw: &[Value],
    at: &str,
    plugins: &Plugins,
    count: &mut usize,
) -> Result<Vec<Step>, ApiError> {
    raw.iter()
        .enumerate()
        .map(|(i, v)| parse_step(v, &format!("{at}[{i}]"), plugins, count))
        .collect()
}

fn checked_template(at: &str, text: &str) -> Result<String, ApiError> {
    template::validate(text).map_err(|e| field_error(at, format!("`{at}`: {e}.")))?;
    Ok(text.to_owned())
}

fn parse_step(
    value: &Value,
    at: &str,
    plugins: &Plugins,
    count: &mut usize,
) -> Result<Step, ApiError> {
    *count += 1;
    if *count > MAX_STEPS {
        return Err(field_error(
            at,
            format!("A rule has at most {MAX_STEPS} steps."),
        ));
    }
    let map = value
        .as_object()
        .ok_or_else(|| field_error(at, format!("`{at}` must be an object with a `type`.")))?;
    let kind = map
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| field_error(&format!("{at}.type"), format!("`{at}.type` is required.")))?;
    let mut rest: Map<String, Value> = map.clone();
    rest.remove("type");
    let rest = Value::Object(rest);
    fn typed<T: serde::de::DeserializeOwned>(value: Value, at: &str) -> Result<T, ApiError> {
        serde_json::from_value(value)
            .map_err(|e| ApiError::invalid_field(at, format!("`{at}`: {e}.")))
    }
    Ok(match kind {
        "add_tag" | "remove_tag" => {
            let s: TagStep = typed(rest, at)?;
            let tag = checked_template(&format!("{at}.tag"), s.tag.trim())?;
            if tag.is_empty() {
                return Err(field_error(
                    &format!("{at}.tag"),
                    format!("`{at}.tag` is empty."),
                ));
            }
            if kind == "add_tag" {
                Step::AddTag { tag }
            } else {
                Step::RemoveTag { tag }
            }
        }
        "set_field" => {
            let s: SetFieldStep = typed(rest, at)?;
            let field = s.field.trim().to_owned();
            let known = matches!(
                field.as_str(),
                "first_name" | "last_name" | "lifecycle_stage" | "lead_score"
            ) || field
                .strip_prefix("custom.")
                .is_some_and(|k| !k.is_empty() && !k.contains('.'));
            if !known {
                return Err(field_error(
                    &format!("{at}.field"),
                    format!(
                        "`{at}.field` is one of first_name, last_name, lifecycle_stage, lead_score or custom.<key>."
                    ),
                ));
            }
            template::validate_value(&s.value, &format!("{at}.value"))
                .map_err(|(f, e)| field_error(&f, format!("`{f}`: {e}.")))?;
            Step::SetField {
                field,
                value: s.value,
            }
        }
        "move_deal_stage" => {
            let s: MoveDealStage = typed(rest, at)?;
            if let Some(title) = &s.title {
                checked_template(&format!("{at}.title"), title)?;
            }
            Step::MoveDealStage(s)
        }
        "create_deal" => {
            let s: CreateDeal = typed(rest, at)?;
            checked_template(&format!("{at}.title"), &s.title)?;
            if let Some(value) = &s.value {
                checked_template(&format!("{at}.value"), value)?;
            }
            Step::CreateDeal(s)
        }
        "create_task" => {
            let s: CreateTask = typed(rest, at)?;
            checked_template(&format!("{at}.title"), &s.title)?;
            Step::CreateTask(s)
        }
        "create_note" => {
            let s: NoteStep = typed(rest, at)?;
            let body = checked_template(&format!("{at}.body"), &s.body)?;
            Step::CreateNote { body }
        }
        "wait" => {
            let s: Wait = typed(rest, at)?;
            match (&s.minutes, &s.until) {
                (Some(m), None) if *m <= MAX_WAIT_MINUTES => {}
                (None, Some(until)) => {
                    checked_template(&format!("{at}.until"), until)?;
                }
                _ => {
                    return Err(field_error(
                        &format!("{at}.minutes"),
                        format!(
                            "`{at}`: give `minutes` (at most {MAX_WAIT_MINUTES}) or `until`, not both."
                        ),
                    ));
                }
            }
            Step::Wait(s)
        }
        "if" => {
            let condition = Condition::parse(
                map.get("condition").unwrap_or(&Value::Null),
                &format!("{at}.condition"),
            )?;
            for key in ["then", "else"] {
                if !matches!(
                    map.get(key),
                    None | Some(Value::Null) | Some(Value::Array(_))
                ) {
                    return Err(field_error(
                        &format!("{at}.{key}"),
                        format!("`{at}.{key}` must be a list of steps."),
                    ));
                }
            }
            if let Some(extra) = map
                .keys()
                .find(|k| !matches!(k.as_str(), "type" | "condition" | "then" | "else"))
            {
                return Err(field_error(
                    &format!("{at}.{extra}"),
                    format!("`{at}.{extra}` is not a key of an `if` step."),
                ));
            }
            let empty = Vec::new();
            let then_raw = map.get("then").and_then(Value::as_array).unwrap_or(&empty);
            let else_raw = map.get("else").and_then(Value::as_array).unwrap_or(&empty);
            let then = parse_steps(then_raw, &format!("{at}.then"), plugins, count)?;
            let otherwise = parse_steps(else_raw, &format!("{at}.else"), plugins, count)?;
            Step::If {
                condition,
                then,
                otherwise,
            }
        }
        other => {
            let Some(plugin) = plugins.get(other) else {
                return Err(field_error(
                    &format!("{at}.type"),
                    format!(
                        "`{at}.type`: unknown step type `{other}` (known: add_tag, remove_tag, set_field, move_deal_stage, create_deal, create_task, create_note, wait, if, {}).",
                        plugins.kinds().join(", ")
                    ),
                ));
            };
            template::validate_value(&rest, at)
                .map_err(|(f, e)| field_error(&f, format!("`{f}`: {e}.")))?;
            plugin.validate(&rest).map_err(|mut e| {
                // Plugins name fields relative to the step; make them absolute.
                if let Some(field) = e
                    .details
                    .as_ref()
                    .and_then(|d| d.get("field"))
                    .and_then(Value::as_str)
                {
                    e.details = Some(serde_json::json!({ "field": format!("{at}.{field}") }));
                }
                e
            })?;
            Step::Plugin {
                kind: other.to_owned(),
                config: rest,
            }
        }
    })
}

fn compile_into(steps: &[Step], at: &str, out: &mut Vec<Instr>) {
    for (i, step) in steps.iter().enumerate() {
        let path = format!("{at}[{i}]");
        match step {
            Step::If {
                condition,
                then,
                otherwise,
            } => {
                let branch = out.len();
                out.push(Instr::Branch {
                    path: path.clone(),
                    condition: condition.clone(),
                    otherwise: 0,
                });
                compile_into(then, &format!("{path}.then"), out);
                let else_start = if otherwise.is_empty() {
                    out.len()
                } else {
                    let jump = out.len();
                    out.push(Instr::Jump { to: 0 });
                    let start = out.len();
                    compile_into(otherwise, &format!("{path}.else"), out);
                    let end = out.len();
                    out[jump] = Instr::Jump { to: end };
                    start
                };
                if let Instr::Branch { otherwise, .. } = &mut out[branch] {
                    *otherwise = else_start;
                }
            }
            other => out.push(Instr::Step {
                path,
                step: other.clone(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn def(steps: Value) -> Definition {
        Definition {
            triggers: vec![Trigger::Custom {
                name: "deal_won".into(),
            }],
            conditions: None,
            steps: steps.as_array().unwrap().clone(),
        }
    }

    #[test]
    fn if_else_compiles_to_branch_and_jump() {
        let compiled = def(json!([
            {"type": "if", "condition": {"field": "contact.tags", "op": "contains", "value": "vip"},
             "then": [{"type": "add_tag", "tag": "a"}],
             "else": [{"type": "add_tag", "tag": "b"}, {"type": "add_tag", "tag": "c"}]},
            {"type": "add_tag", "tag": "d"},
        ]))
        .compile(&Plugins::new())
        .unwrap();
        let p = &compiled.program;
        assert_eq!(p.len(), 6);
        assert!(matches!(&p[0], Instr::Branch { otherwise: 3, .. }));
        assert!(matches!(&p[2], Instr::Jump { to: 5 }));
        assert!(matches!(&p[5], Instr::Step { path, .. } if path == "steps[1]"));
    }

    #[test]
    fn errors_name_the_step_field() {
        let err = def(json!([{"type": "add_tag", "tag": "a"}, {"type": "if", "condition": {"field": "contact.tags", "op": "exists"}, "then": [{"type": "add_tag", "tag": "{{oops"}]}]))
            .compile(&Plugins::new())
            .unwrap_err();
        assert_eq!(err.details.unwrap()["field"], "steps[1].then[0].tag");
        let err = def(json!([{"type": "teleport"}]))
            .compile(&Plugins::new())
            .unwrap_err();
        assert_eq!(err.details.unwrap()["field"], "steps[0].type");
        let err = parse_triggers(&[json!({"type": "event", "event": "Contact"})]).unwrap_err();
        assert_eq!(err.details.unwrap()["field"], "triggers[0].event");
    }
}
