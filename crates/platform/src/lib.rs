//! Switchyard's shared foundation: typed ids, the API error, configuration, storage on SQLite
//! or PostgreSQL, tenancy, authentication, the job queue, the outbox and HTTP conventions.

pub mod accounts;
pub mod auth;
pub mod config;
pub mod cron;
pub mod db;
pub mod error;
pub mod http;
pub mod id;
pub mod idempotency;
pub mod jobs;
pub mod maintenance;
pub mod outbox;
pub mod secret_box;
pub mod state;
pub mod tenancy;
pub mod time;

pub use error::{ApiError, ApiResult};
pub use state::AppState;
pub use tenancy::{Actor, Role, Scope};
pub use time::Timestamp;

/// Migrations of the tables the platform owns (accounts, jobs, outbox, schedules).
pub static MIGRATIONS: db::Migrations = db::Migrations {
    sqlite: sqlx::migrate!("migrations/sqlite"),
    postgres: sqlx::migrate!("migrations/postgres"),
};
