//! Wire adapters between Switchyard and other systems: the Standard Webhooks signer and
//! verifier, the SSRF guard for user-supplied URLs, and outbound signed webhooks (endpoints per
//! workspace that receive domain events, with retries, an attempts log, resend and recover).

pub mod conversions;
pub mod ssrf;
pub mod standard_webhooks;
pub mod webhooks;

/// Migrations of the tables this crate owns (webhook endpoints, messages, attempts).
pub static MIGRATIONS: platform::db::Migrations = platform::db::Migrations {
    sqlite: sqlx::migrate!("migrations/sqlite"),
    postgres: sqlx::migrate!("migrations/postgres"),
};
