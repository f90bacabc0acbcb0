//! Tracking wire formats: the canonical [`Hit`] and pure parsers for the protocols the gateway
//! accepts — GA4 gtag `/g/collect` ([`ga4`]), the GA4 Measurement Protocol ([`mp`]), the
//! Segment HTTP API ([`segment`]) — plus server-side GTM helpers ([`sgtm`]).
//!
//! Nothing here does I/O: the gateway hands a [`RawRequest`] in and gets hits or a
//! [`ParseError`] back, so every rule of PROTOCOLS.md §1–3 is testable without a server.
//! `docs/hit.md` maps every wire field of every protocol to its place in a `Hit`.

pub mod analytics;
mod encoding;
pub mod enrich;
pub mod error;
pub mod forward;
pub mod ga4;
pub mod gateway;
pub mod hit;
pub mod item;
mod json;
pub mod log;
pub mod mp;
pub mod pipeline;
pub mod raw;
pub mod segment;
pub mod sgtm;
pub mod sites;
mod sqlite;

pub use error::ParseError;
pub use hit::{Hit, HitFields, HitId, ParamValue, Protocol};
pub use item::Item;
pub use raw::RawRequest;

/// Migrations of the tables this crate owns (sites, their hostnames and usage).
pub static MIGRATIONS: platform::db::Migrations = platform::db::Migrations {
    sqlite: sqlx::migrate!("migrations/sqlite"),
    postgres: sqlx::migrate!("migrations/postgres"),
};
