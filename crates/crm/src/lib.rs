//! The CRM: contacts that collect every identifier they are known by (emails, phones, external
//! ids, GA client ids, Segment anonymous ids) and merge when one request joins two of them;
//! custom fields validated on write; tags; companies; pipelines, deals and their stage history;
//! notes and tasks; and one timeline per contact.
//!
//! Every store function takes a [`Scope`](platform::Scope) and filters on its workspace; every
//! change publishes its domain event into the outbox in the same transaction.

pub mod activities;
pub mod capture;
pub mod companies;
pub mod contacts;
pub mod deals;
pub mod fields;
pub mod import;
pub mod normalize;
pub mod refs;
pub mod segments;
pub mod settings;
pub mod timeline;

use platform::AppState;
use utoipa_axum::router::OpenApiRouter;

platform::typed_id!(
    /// A contact: one person, however many identifiers they have.
    ContactId,
    "ct"
);
platform::typed_id!(
    /// A company (account) contacts and deals belong to.
    CompanyId,
    "co"
);
platform::typed_id!(
    /// A custom field definition.
    FieldId,
    "fld"
);
platform::typed_id!(
    /// A sales pipeline.
    PipelineId,
    "pl"
);
platform::typed_id!(
    /// A stage of a pipeline.
    StageId,
    "stg"
);
platform::typed_id!(
    /// A deal (opportunity).
    DealId,
    "deal"
);
platform::typed_id!(
    /// A note on a contact or deal.
    NoteId,
    "note"
);
platform::typed_id!(
    /// A task on a contact or deal.
    TaskId,
    "task"
);
platform::typed_id!(
    /// One entry of a contact's timeline.
    EntryId,
    "tle"
);

/// Migrations of the tables this crate owns.
pub static MIGRATIONS: platform::db::Migrations = platform::db::Migrations {
    sqlite: sqlx::migrate!("migrations/sqlite"),
    postgres: sqlx::migrate!("migrations/postgres"),
};

/// Every CRM route, to nest under `/api/v1`.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(settings::routes())
        .merge(capture::routes::routes())
        .merge(fields::routes())
        .merge(companies::routes())
        .merge(contacts::routes::routes())
        .merge(timeline::routes())
        .merge(segments::routes())
        .merge(deals::routes())
        .merge(activities::routes())
        .merge(import::routes())
}

/// Writes a value as JSON text for a TEXT column.
pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned())
}

/// Reads a JSON TEXT column; a corrupt value reads as the type's default.
pub(crate) fn from_json<T: serde::de::DeserializeOwned + Default>(text: &str) -> T {
    serde_json::from_str(text).unwrap_or_default()
}

/// `null` clears a field; absence keeps it (`Option<Option<T>>` in PATCH bodies).
pub(crate) mod double_option {
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Option<T>>, D::Error> {
        Option::<T>::deserialize(d).map(Some)
    }
}
