//! A UTC instant that stores the same way on both backends' terms.
//!
//! PostgreSQL keeps it as `timestamptz`. SQLite has no time type, and sqlx's own encoding of
//! `DateTime` uses a variable number of fractional digits, so text comparisons (`run_at <= $1`)
//! and `ORDER BY` would be wrong; we write a fixed-width RFC 3339 form with microseconds and a
//! `Z` instead, which sorts lexically in time order and stays readable in the `sqlite3` shell.
//! Microseconds are PostgreSQL's precision, so a value round-trips exactly on both.

use std::ops::{Add, Sub};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArgumentBuffer, PgTypeInfo, PgValueRef};
use sqlx::sqlite::{SqliteArgumentsBuffer, SqliteTypeInfo, SqliteValueRef};
use sqlx::{Decode, Encode, Postgres, Sqlite, Type};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(DateTime<Utc>);

impl Timestamp {
    pub fn now() -> Self {
        Self::from(Utc::now())
    }

    pub fn as_datetime(&self) -> DateTime<Utc> {
        self.0
    }

    /// Milliseconds since the Unix epoch (analytics stores keep integer times).
    pub fn as_millis(&self) -> i64 {
        self.0.timestamp_millis()
    }

    /// The instant `ms` milliseconds after the Unix epoch (the epoch itself when out of range).
    pub fn from_millis(ms: i64) -> Self {
        Self::from(DateTime::from_timestamp_millis(ms).unwrap_or_default())
    }

    /// Microseconds since the Unix epoch: the whole value (see the module's documentation), as
    /// binary encodings store it.
    pub fn as_micros(&self) -> i64 {
        self.0.timestamp_micros()
    }

    /// The instant `us` microseconds after the Unix epoch, or `None` out of chrono's range.
    pub fn from_micros(us: i64) -> Option<Self> {
        DateTime::from_timestamp_micros(us).map(Self)
    }

    pub fn to_rfc3339(&self) -> String {
        self.0.to_rfc3339_opts(SecondsFormat::Micros, true)
    }

    /// Seconds from `earlier` to `self`, negative when `earlier` is later.
    pub fn seconds_since(&self, earlier: Timestamp) -> f64 {
        (self.0 - earlier.0).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6
    }
}

impl From<DateTime<Utc>> for Timestamp {
    fn from(value: DateTime<Utc>) -> Self {
        Self(value.trunc_subsecs(6))
    }
}

impl Add<Duration> for Timestamp {
    type Output = Timestamp;
    fn add(self, rhs: Duration) -> Timestamp {
        let delta = chrono::Duration::from_std(rhs).unwrap_or(chrono::Duration::MAX);
        Timestamp::from(
            self.0
                .checked_add_signed(delta)
                .unwrap_or(DateTime::<Utc>::MAX_UTC),
        )
    }
}

impl Sub<Duration> for Timestamp {
    type Output = Timestamp;
    fn sub(self, rhs: Duration) -> Timestamp {
        let delta = chrono::Duration::from_std(rhs).unwrap_or(chrono::Duration::MAX);
        Timestamp::from(
            self.0
                .checked_sub_signed(delta)
                .unwrap_or(DateTime::<Utc>::MIN_UTC),
        )
    }
}

impl utoipa::PartialSchema for Timestamp {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                utoipa::openapi::KnownFormat::DateTime,
            )))
            .into()
    }
}
impl utoipa::ToSchema for Timestamp {}

impl Type<Sqlite> for Timestamp {
    fn type_info() -> SqliteTypeInfo {
        <String as Type<Sqlite>>::type_info()
    }
    fn compatible(ty: &SqliteTypeInfo) -> bool {
        <String as Type<Sqlite>>::compatible(ty) || <DateTime<Utc> as Type<Sqlite>>::compatible(ty)
    }
}

impl Encode<'_, Sqlite> for Timestamp {
    fn encode_by_ref(&self, buf: &mut SqliteArgumentsBuffer) -> Result<IsNull, BoxDynError> {
        Encode::<Sqlite>::encode(self.to_rfc3339(), buf)
    }
}

impl<'r> Decode<'r, Sqlite> for Timestamp {
    fn decode(value: SqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        Ok(Self::from(<DateTime<Utc> as Decode<Sqlite>>::decode(
            value,
        )?))
    }
}

impl Type<Postgres> for Timestamp {
    fn type_info() -> PgTypeInfo {
        <DateTime<Utc> as Type<Postgres>>::type_info()
    }
}

impl Encode<'_, Postgres> for Timestamp {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        Encode::<Postgres>::encode_by_ref(&self.0, buf)
    }
}

impl<'r> Decode<'r, Postgres> for Timestamp {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        Ok(Self::from(<DateTime<Utc> as Decode<Postgres>>::decode(
            value,
        )?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_is_fixed_width_and_sorts() {
        let a = Timestamp::from(
            DateTime::parse_from_rfc3339("2026-11-22T02:20:56Z")
                .unwrap()
                .to_utc(),
        );
        let b = a + Duration::from_micros(500_000);
        assert_eq!(a.to_rfc3339(), "2026-11-22T02:20:56.000000Z");
        assert_eq!(b.to_rfc3339(), "2026-11-22T02:20:56.500000Z");
        assert!(a.to_rfc3339() < b.to_rfc3339());
    }

    #[test]
    fn truncates_to_microseconds() {
        let t = DateTime::parse_from_rfc3339("2026-01-01T00:00:00.123456789Z")
            .unwrap()
            .to_utc();
        assert_eq!(
            Timestamp::from(t).to_rfc3339(),
            "2026-01-01T00:00:00.123456Z"
        );
    }
}
