//! Typed, prefixed identifiers (`ws_01jd…`, `ct_01jd…`).
//!
//! Every id is a UUIDv7 underneath (time-ordered, so primary keys stay append-mostly and lists
//! sort by creation), stored as a native `uuid` in PostgreSQL and a 16-byte blob in SQLite. Its
//! text form is a type prefix, an underscore and the 26-character lower-case Crockford base32 of
//! the UUID (the TypeID convention), so a contact id can never be passed where a deal id is
//! expected, neither in Rust nor over the wire.

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

/// Why a text id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("expected an id starting with `{expected}_`")]
    WrongPrefix { expected: &'static str },
    #[error("the id is not valid base32")]
    Malformed,
}

/// Encodes a UUID as 26 lower-case Crockford base32 characters.
pub fn encode_uuid(uuid: Uuid) -> String {
    ulid::Ulid::from(uuid).to_string().to_ascii_lowercase()
}

/// Decodes 26 Crockford base32 characters (any case) into a UUID.
pub fn decode_uuid(text: &str) -> Result<Uuid, IdError> {
    if text.len() != 26 {
        return Err(IdError::Malformed);
    }
    ulid::Ulid::from_string(text)
        .map(Uuid::from)
        .map_err(|_| IdError::Malformed)
}

/// Parses `prefix_base32` into a UUID, checking the prefix.
pub fn parse_prefixed(text: &str, prefix: &'static str) -> Result<Uuid, IdError> {
    let rest = text
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('_'))
        .ok_or(IdError::WrongPrefix { expected: prefix })?;
    decode_uuid(rest)
}

/// Declares a typed id: `typed_id!(ContactId, "ct");`
#[macro_export]
macro_rules! typed_id {
    ($(#[$meta:meta])* $name:ident, $prefix:literal) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, sqlx::Type)]
        #[sqlx(transparent)]
        pub struct $name(pub ::uuid::Uuid);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            /// A new, time-ordered id.
            pub fn new() -> Self {
                Self(::uuid::Uuid::now_v7())
            }

            pub fn uuid(&self) -> ::uuid::Uuid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                write!(f, "{}_{}", $prefix, $crate::id::encode_uuid(self.0))
            }
        }

        impl ::std::fmt::Debug for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                ::std::fmt::Display::fmt(self, f)
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::id::IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $crate::id::parse_prefixed(s, $prefix).map(Self)
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = <::std::borrow::Cow<'de, str>>::deserialize(d)?;
                text.parse().map_err(::serde::de::Error::custom)
            }
        }

        impl ::utoipa::PartialSchema for $name {
            fn schema() -> ::utoipa::openapi::RefOr<::utoipa::openapi::schema::Schema> {
                ::utoipa::openapi::ObjectBuilder::new()
                    .schema_type(::utoipa::openapi::schema::Type::String)
                    .examples([::serde_json::json!(concat!($prefix, "_01jdq9x3k5m2r8t4v6w0y1z2a3"))])
                    .description(Some(concat!("Identifier with the `", $prefix, "_` prefix.")))
                    .into()
            }
        }

        impl ::utoipa::ToSchema for $name {}
    };
}

typed_id!(
    /// A workspace: an agency's client account, the unit of tenancy.
    WorkspaceId,
    "ws"
);
typed_id!(UserId, "usr");
typed_id!(SessionId, "ses");
typed_id!(ApiKeyId, "key");
typed_id!(InviteId, "inv");
typed_id!(JobId, "job");
typed_id!(EventId, "evt");
typed_id!(ScheduleId, "sch");

/// Opaque list cursor: the id of the last item of the previous page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor(pub Uuid);

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c1{}", encode_uuid(self.0))
    }
}

impl FromStr for Cursor {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s.strip_prefix("c1").ok_or(IdError::Malformed)?;
        decode_uuid(rest).map(Cursor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_checks_prefix() {
        let id = WorkspaceId::new();
        let text = id.to_string();
        assert!(text.starts_with("ws_"));
        assert_eq!(text.len(), 3 + 26);
        assert_eq!(text.parse::<WorkspaceId>().unwrap(), id);
        assert_eq!(
            text.parse::<UserId>(),
            Err(IdError::WrongPrefix { expected: "usr" })
        );
        assert_eq!("ws_nothex".parse::<WorkspaceId>(), Err(IdError::Malformed));
        assert_eq!(
            "ws_".parse::<WorkspaceId>(),
            Err(IdError::Malformed),
            "empty body"
        );
    }

    #[test]
    fn text_form_sorts_like_creation_order() {
        let a = JobId::new();
        let b = JobId::new();
        assert!(a < b);
        assert!(a.to_string() < b.to_string());
    }

    #[test]
    fn serde_uses_text_form() {
        let id = UserId::new();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{id}\""));
        let back: UserId = serde_json::from_str(&json).unwrap();
        assert_eq!(back, id);
        assert!(serde_json::from_str::<UserId>("\"ws_01jdq9x3k5m2r8t4v6w0y1z2a3\"").is_err());
    }
}
