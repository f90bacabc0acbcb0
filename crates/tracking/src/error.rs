//! The one error type every tracking parser returns.
//!
//! Each variant has a stable machine `code()` (what the gateway puts in its JSON error and what
//! metrics are labelled with) and a human message (`Display`). The parsers never decide HTTP
//! status codes: GA4 answers 204 to nearly everything, Segment answers 400 only for size and
//! JSON errors, so that mapping belongs to the gateway.

use std::fmt;

/// Why a tracking request could not be turned into hits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("method {method} is not accepted here (expected {allowed})")]
    MethodNotAllowed {
        method: String,
        allowed: &'static str,
    },
    #[error("missing required parameter `{name}`{}", At(*event))]
    MissingParameter { name: String, event: Option<usize> },
    #[error("invalid parameter `{name}`{}: {reason}", At(*event))]
    InvalidParameter {
        name: String,
        event: Option<usize>,
        reason: String,
    },
    #[error("unsupported protocol version `v={found}` (only v=2 is accepted)")]
    UnsupportedVersion { found: String },
    #[error("{count} events in one request (at most {max})")]
    TooManyEvents { count: usize, max: usize },
    #[error("{} is {len} bytes long (at most {max})", Line(*line))]
    LineTooLong {
        /// `None` for the URL query string, `Some(i)` for the i-th body line (0-based).
        line: Option<usize>,
        len: usize,
        max: usize,
    },
    #[error("request body is {len} bytes (at most {max})")]
    PayloadTooLarge { len: usize, max: usize },
    #[error("call{} is {len} bytes (Segment allows at most {max} per call)", At(*event))]
    CallTooLarge {
        event: Option<usize>,
        len: usize,
        max: usize,
    },
    #[error("batch is {len} bytes (Segment allows at most {max} per batch)")]
    BatchTooLarge { len: usize, max: usize },
    #[error("body is not valid JSON: {reason}")]
    InvalidJson { reason: String },
    #[error("no write key: send `writeKey` in the body or HTTP Basic auth with it as the user")]
    MissingWriteKey,
    #[error("no tracking endpoint at `{path}`")]
    UnknownEndpoint { path: String },
}

impl ParseError {
    /// Stable, machine-readable code, e.g. `missing_parameter`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::MissingParameter { .. } => "missing_parameter",
            Self::InvalidParameter { .. } => "invalid_parameter",
            Self::UnsupportedVersion { .. } => "unsupported_version",
            Self::TooManyEvents { .. } => "too_many_events",
            Self::LineTooLong { .. } => "line_too_long",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::CallTooLarge { .. } => "call_too_large",
            Self::BatchTooLarge { .. } => "batch_too_large",
            Self::InvalidJson { .. } => "invalid_json",
            Self::MissingWriteKey => "missing_write_key",
            Self::UnknownEndpoint { .. } => "unknown_endpoint",
        }
    }

    /// The wire parameter the error is about, when there is one (for `details.field`).
    pub fn parameter(&self) -> Option<&str> {
        match self {
            Self::MissingParameter { name, .. } | Self::InvalidParameter { name, .. } => Some(name),
            Self::UnsupportedVersion { .. } => Some("v"),
            _ => None,
        }
    }

    pub(crate) fn missing(name: &str, event: Option<usize>) -> Self {
        Self::MissingParameter {
            name: name.to_owned(),
            event,
        }
    }

    pub(crate) fn invalid(name: &str, event: Option<usize>, reason: impl Into<String>) -> Self {
        Self::InvalidParameter {
            name: name.to_owned(),
            event,
            reason: reason.into(),
        }
    }
}

/// Renders " in event N" after a message when the error concerns one event of a batch.
struct At(Option<usize>);

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(index) => write!(f, " in event at index {index}"),
            None => Ok(()),
        }
    }
}

struct Line(Option<usize>);

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(index) => write!(f, "body line {index}"),
            None => f.write_str("the query string"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_parameter_and_event() {
        let err = ParseError::missing("en", Some(2));
        assert_eq!(err.code(), "missing_parameter");
        assert_eq!(err.parameter(), Some("en"));
        assert_eq!(
            err.to_string(),
            "missing required parameter `en` in event at index 2"
        );
        let err = ParseError::LineTooLong {
            line: None,
            len: 20_000,
            max: 16_384,
        };
        assert_eq!(
            err.to_string(),
            "the query string is 20000 bytes long (at most 16384)"
        );
        assert_eq!(
            ParseError::UnsupportedVersion { found: "1".into() }.parameter(),
            Some("v")
        );
    }
}
