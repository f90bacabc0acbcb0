//! Automation rules: "when this happens (triggers), if that holds (conditions), do these steps".
//!
//! - **Rules** ([`store`], [`routes`]) are versioned: every change of the definition saves a new
//!   immutable version, and a run keeps executing the version it started with.
//! - **Triggers** are evaluated from the outbox by the consumer [`engine::CONSUMER`]: one
//!   indexed read of `automation_triggers` per event (by trigger key, `event:contact.created` or
//!   `custom:deal_won`) finds every enabled rule, however many there are. Custom events come in
//!   through the trigger API ([`trigger_api`]), which publishes `automation.event_received`.
//!   Tracking hits come from the event log ([`hits`], its own consumer group); inactivity and
//!   date triggers are durable timers ([`timers`]); schedules are platform cron schedules.
//!   Runs carry a causation depth so rules that feed each other stop ([`engine::MAX_DEPTH`]).
//! - **Runs** ([`engine`]) execute a rule's steps compiled into a small program (if/else become
//!   forward jumps). Internal steps (CRM changes, branches) apply in the transaction that moves
//!   the run's cursor, inside a savepoint, so progress and effects commit together and a step
//!   is recorded exactly once (`automation_run_steps` is keyed by run and position). External
//!   steps ([`StepPlugin`]s: `webhook`, `email`, later messaging and conversions) run as jobs
//!   with one idempotency key per (run, step). Waits are delayed jobs.
//! - **Templates** ([`template`]): `{{contact.first_name}}`, `{{event.variables.time | default:"soon"}}`;
//!   lookups only, no code (see `docs/templates.md`).

pub mod condition;
pub mod definition;
pub mod engine;
pub mod hits;
pub mod plugins;
pub mod routes;
pub mod store;
pub mod template;
pub mod timers;
pub mod trigger_api;

pub use engine::Engine;

pub use plugins::{Plugins, StepContext, StepError, StepPlugin};

platform::typed_id!(
    /// An automation rule.
    AutomationId,
    "auto"
);
platform::typed_id!(
    /// One execution of a rule, from one trigger firing.
    RunId,
    "run"
);

/// The outbox event the trigger API publishes (the contract with the `conversions` crate).
pub const EVENT_RECEIVED: &str = "automation.event_received";

/// Migrations of the tables this crate owns.
pub static MIGRATIONS: platform::db::Migrations = platform::db::Migrations {
    sqlite: sqlx::migrate!("migrations/sqlite"),
    postgres: sqlx::migrate!("migrations/postgres"),
};
