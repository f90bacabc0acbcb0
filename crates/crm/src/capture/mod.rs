//! Capture: per-site rules that turn tracking events into contacts.
//!
//! A rule matches an event (name, page URL pattern, parameter conditions) and maps its
//! parameters, user properties or ids to contact identifiers, fields and tags. The capture
//! consumer ([`consumer::Capturer`]) reads the event log as its own consumer group, applies the
//! rules and upserts contacts through identity resolution, with the visitor's client id and the
//! visit's attribution (click ids, UTMs, landing page), a `form.submitted` timeline entry and a
//! `form.submitted` domain event carrying the hit id (the event id offline conversions reuse).
//! Hits of visitors already known as contacts become condensed `web.session` timeline entries.

pub mod consumer;
pub mod routes;
pub mod store;

use platform::{ApiError, ApiResult, Timestamp};
use serde::{Deserialize, Serialize};
use tracking::sites::SiteId;
use tracking::{Hit, ParamValue};
use utoipa::ToSchema;

use crate::contacts::LifecycleStage;

platform::typed_id!(
    /// A capture rule.
    RuleId,
    "cap"
);

/// How a condition compares an event parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Equals,
    NotEquals,
    Contains,
    StartsWith,
    Exists,
    NotExists,
}

/// `param` compared with `value` (not needed for `exists` / `not_exists`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// An event parameter (`form_id`), or `user_property:<name>`.
    pub param: String,
    pub op: Op,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// Copies one value of the event to the contact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    /// `param:<name>` (event parameter, e.g. a form field), `user_property:<name>` (GA4 user
    /// property, Segment trait), `user_id`, or `client_id`.
    pub source: String,
    /// `emails`, `phones`, `first_name`, `last_name`, `name` (split at the first space),
    /// `external_ids`, `tags`, or `custom.<key>`.
    pub target: String,
}

/// A capture rule as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Rule {
    pub id: RuleId,
    pub site_id: SiteId,
    pub name: String,
    pub enabled: bool,
    /// The event name to match (`generate_lead`, `form_submit`, `identify`…), or `*`.
    pub event_name: String,
    /// Page path (`/contact*`) or full URL (`https://shop.example.com/thanks*`) pattern; `*`
    /// matches anything.
    pub url_pattern: Option<String>,
    pub conditions: Vec<Condition>,
    pub mappings: Vec<Mapping>,
    /// Tags given to every captured contact.
    pub tags: Vec<String>,
    /// Lifecycle stage given to captured contacts.
    pub lifecycle_stage: Option<LifecycleStage>,
    pub matched_count: i64,
    pub failed_count: i64,
    pub last_matched_at: Option<Timestamp>,
    /// Why the last failed capture failed (e.g. an invalid email typed into the form).
    pub last_error: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// Create or change a rule; on update absent fields are kept.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleInput {
    pub site_id: Option<SiteId>,
    pub name: Option<String>,
    pub enabled: Option<bool>,
    pub event_name: Option<String>,
    #[serde(default, with = "crate::double_option")]
    #[schema(value_type = Option<String>)]
    pub url_pattern: Option<Option<String>>,
    pub conditions: Option<Vec<Condition>>,
    pub mappings: Option<Vec<Mapping>>,
    pub tags: Option<Vec<String>>,
    #[serde(default, with = "crate::double_option")]
    #[schema(value_type = Option<LifecycleStage>)]
    pub lifecycle_stage: Option<Option<LifecycleStage>>,
}

const PLAIN_TARGETS: [&str; 7] = [
    "emails",
    "phones",
    "first_name",
    "last_name",
    "name",
    "external_ids",
    "tags",
];

fn valid_source(source: &str) -> bool {
    matches!(source, "user_id" | "client_id")
        || source
            .strip_prefix("param:")
            .or_else(|| source.strip_prefix("user_property:"))
            .is_some_and(|name| !name.is_empty() && name.len() <= 100)
}

/// Checks the parts of a rule that do not need the database.
pub fn validate(rule: &Rule) -> ApiResult<()> {
    if rule.name.trim().is_empty() || rule.name.len() > 200 {
        return Err(ApiError::invalid_field(
            "name",
            "`name` is 1 to 200 characters.",
        ));
    }
    if rule.event_name.is_empty() || rule.event_name.len() > 100 {
        return Err(ApiError::invalid_field(
            "event_name",
            "`event_name` is an event name (1 to 100 characters) or `*`.",
        ));
    }
    if rule
        .url_pattern
        .as_ref()
        .is_some_and(|p| p.is_empty() || p.len() > 500)
    {
        return Err(ApiError::invalid_field(
            "url_pattern",
            "`url_pattern` is 1 to 500 characters.",
        ));
    }
    if rule.conditions.len() > 20 {
        return Err(ApiError::invalid_field(
            "conditions",
            "At most 20 conditions.",
        ));
    }
    for (i, c) in rule.conditions.iter().enumerate() {
        let needs_value = !matches!(c.op, Op::Exists | Op::NotExists);
        if c.param.is_empty() || c.param.len() > 100 || needs_value != c.value.is_some() {
            return Err(ApiError::invalid_field(
                &format!("conditions[{i}]"),
                "A condition names a parameter, and has a `value` unless its op is exists/not_exists.",
            ));
        }
    }
    if rule.mappings.is_empty() || rule.mappings.len() > 50 {
        return Err(ApiError::invalid_field(
            "mappings",
            "Give 1 to 50 mappings.",
        ));
    }
    for (i, m) in rule.mappings.iter().enumerate() {
        if !valid_source(&m.source) {
            return Err(ApiError::invalid_field(
                &format!("mappings[{i}].source"),
                "`source` is param:<name>, user_property:<name>, user_id or client_id.",
            ));
        }
        let custom_key = m.target.strip_prefix("custom.");
        if !PLAIN_TARGETS.contains(&m.target.as_str()) && custom_key.is_none_or(str::is_empty) {
            return Err(ApiError::invalid_field(
                &format!("mappings[{i}].target"),
                format!(
                    "`target` is one of {} or custom.<key>.",
                    PLAIN_TARGETS.join(", ")
                ),
            ));
        }
    }
    let identifies = rule
        .mappings
        .iter()
        .any(|m| matches!(m.target.as_str(), "emails" | "phones" | "external_ids"));
    if !identifies {
        return Err(ApiError::invalid_field(
            "mappings",
            "Map at least one identifier (emails, phones or external_ids): a contact is found or created by it.",
        ));
    }
    for tag in &rule.tags {
        crate::normalize::tag("tags", tag)?;
    }
    Ok(())
}

/// A value of the hit named by a mapping source or condition parameter, as text.
pub fn lookup(hit: &Hit, source: &str) -> Option<ParamValue> {
    let text = |s: &Option<String>| s.clone().map(ParamValue::String);
    match source {
        "user_id" => text(&hit.user_id),
        "client_id" => text(&hit.client_id),
        _ => {
            if let Some(name) = source.strip_prefix("user_property:") {
                hit.user_properties.get(name).cloned()
            } else {
                let name = source.strip_prefix("param:").unwrap_or(source);
                hit.params.get(name).cloned()
            }
        }
    }
}

/// A parameter value as text (numbers as written; JSON values are not text).
pub fn as_text(value: &ParamValue) -> Option<String> {
    match value {
        ParamValue::String(s) => Some(s.clone()),
        ParamValue::Number(n) => Some(n.to_string()),
        ParamValue::Json(_) => None,
    }
}

/// `*` matches any run of characters; everything else literally (ASCII case-insensitive).
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if pi < p.len() && p[pi].eq_ignore_ascii_case(&t[ti]) {
            pi += 1;
            ti += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

impl Rule {
    /// Does this rule apply to `hit` (on page `path` of URL `url`)?
    pub fn matches(&self, hit: &Hit, path: Option<&str>) -> bool {
        if !self.enabled || (self.event_name != "*" && self.event_name != hit.event_name) {
            return false;
        }
        if let Some(pattern) = &self.url_pattern {
            let target = if pattern.starts_with('/') {
                path
            } else {
                hit.page.location.as_deref()
            };
            if !target.is_some_and(|t| glob(pattern, t)) {
                return false;
            }
        }
        self.conditions.iter().all(|c| {
            let value = lookup(hit, &c.param).and_then(|v| as_text(&v));
            let want = c.value.as_deref().unwrap_or_default();
            match c.op {
                Op::Exists => value.is_some_and(|v| !v.is_empty()),
                Op::NotExists => value.is_none_or(|v| v.is_empty()),
                Op::Equals => value.is_some_and(|v| v == want),
                Op::NotEquals => value.is_none_or(|v| v != want),
                Op::Contains => value.is_some_and(|v| v.contains(want)),
                Op::StartsWith => value.is_some_and(|v| v.starts_with(want)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("/contact*", "/contact"));
        assert!(glob("/contact*", "/Contact/thanks"));
        assert!(glob("*/thanks", "/a/b/thanks"));
        assert!(glob("/a*b*c", "/aXXbYYc"));
        assert!(!glob("/a*b*c", "/aXXbYY"));
        assert!(!glob("/contact", "/contact/x"));
        assert!(glob("*", ""));
    }
}
