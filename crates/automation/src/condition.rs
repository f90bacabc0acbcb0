//! Conditions: AND (`all`) / OR (`any`) groups of comparisons over the run's context —
//! contact fields (`contact.first_name`, `contact.custom.plan`), tags (`contact.tags`), deal
//! fields (`deal.value`) and event parameters (`event.variables.product`).

use platform::ApiError;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::template;

/// Comparison operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Eq,
    Ne,
    /// A list holds the value (tags), or a text contains it.
    Contains,
    NotContains,
    /// Present and not empty.
    Exists,
    NotExists,
    Gt,
    Gte,
    Lt,
    Lte,
    /// Equals one of the values of a list.
    In,
}

/// A parsed condition tree.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    All(Vec<Condition>),
    Any(Vec<Condition>),
    Compare { field: String, op: Op, value: Value },
}

const MAX_DEPTH: usize = 8;

impl Condition {
    /// Parses `{"all": […]}`, `{"any": […]}` or `{"field", "op", "value"}`; errors name the
    /// JSON path under `field`.
    pub fn parse(value: &Value, at: &str) -> Result<Condition, ApiError> {
        Self::parse_depth(value, at, 0)
    }

    fn parse_depth(value: &Value, at: &str, depth: usize) -> Result<Condition, ApiError> {
        if depth > MAX_DEPTH {
            return Err(ApiError::invalid_field(
                at,
                format!("`{at}`: conditions nest at most {MAX_DEPTH} levels."),
            ));
        }
        let map = value.as_object().ok_or_else(|| {
            ApiError::invalid_field(at, format!("`{at}` must be an object: {{\"all\": […]}}, {{\"any\": […]}} or {{\"field\", \"op\", \"value\"}}."))
        })?;
        for (key, make) in [
            ("all", Condition::All as fn(Vec<Condition>) -> Condition),
            ("any", Condition::Any),
        ] {
            if let Some(list) = map.get(key) {
                if map.len() != 1 {
                    return Err(ApiError::invalid_field(
                        at,
                        format!("`{at}`: a `{key}` group has no other keys."),
                    ));
                }
                let items = list.as_array().ok_or_else(|| {
                    ApiError::invalid_field(at, format!("`{at}.{key}` must be a list."))
                })?;
                let parsed = items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| Self::parse_depth(v, &format!("{at}.{key}[{i}]"), depth + 1))
                    .collect::<Result<Vec<_>, _>>()?;
                return Ok(make(parsed));
            }
        }
        let field = map
            .get("field")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                ApiError::invalid_field(
                    &format!("{at}.field"),
                    format!("`{at}.field` is required (e.g. `contact.tags`)."),
                )
            })?
            .trim()
            .to_owned();
        let root = field.split('.').next().unwrap_or("");
        if !matches!(root, "contact" | "event" | "deal") || field.split('.').any(str::is_empty) {
            return Err(ApiError::invalid_field(
                &format!("{at}.field"),
                format!("`{at}.field` must start with `contact.`, `deal.` or `event.`."),
            ));
        }
        let op: Op = serde_json::from_value(map.get("op").cloned().unwrap_or(Value::Null))
            .map_err(|_| {
                ApiError::invalid_field(
                    &format!("{at}.op"),
                    format!("`{at}.op` must be one of eq, ne, contains, not_contains, exists, not_exists, gt, gte, lt, lte, in."),
                )
            })?;
        let value = map.get("value").cloned().unwrap_or(Value::Null);
        if let Some(extra) = map
            .keys()
            .find(|k| !matches!(k.as_str(), "field" | "op" | "value"))
        {
            return Err(ApiError::invalid_field(
                &format!("{at}.{extra}"),
                format!("`{at}.{extra}` is not a condition key."),
            ));
        }
        if op == Op::In && !value.is_array() {
            return Err(ApiError::invalid_field(
                &format!("{at}.value"),
                format!("`{at}.value` must be a list with `in`."),
            ));
        }
        Ok(Condition::Compare { field, op, value })
    }

    pub fn evaluate(&self, context: &Value) -> bool {
        match self {
            Condition::All(items) => items.iter().all(|c| c.evaluate(context)),
            Condition::Any(items) => items.iter().any(|c| c.evaluate(context)),
            Condition::Compare { field, op, value } => {
                compare(template::lookup(context, field), *op, value)
            }
        }
    }
}

fn is_empty(value: Option<&Value>) -> bool {
    match value {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.is_empty(),
        Some(Value::Array(a)) => a.is_empty(),
        Some(Value::Object(o)) => o.is_empty(),
        _ => false,
    }
}

/// Equal as JSON, or as text when the types differ (`"5"` equals `5`); text case-insensitive.
fn loosely_equal(a: &Value, b: &Value) -> bool {
    a == b || template::as_text(a).to_lowercase() == template::as_text(b).to_lowercase()
}

fn number(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn compare(actual: Option<&Value>, op: Op, expected: &Value) -> bool {
    match op {
        Op::Exists => !is_empty(actual),
        Op::NotExists => is_empty(actual),
        Op::Eq => actual.is_some_and(|a| loosely_equal(a, expected)),
        Op::Ne => !actual.is_some_and(|a| loosely_equal(a, expected)),
        Op::Contains => contains(actual, expected),
        Op::NotContains => !contains(actual, expected),
        Op::In => expected
            .as_array()
            .is_some_and(|list| actual.is_some_and(|a| list.iter().any(|e| loosely_equal(a, e)))),
        Op::Gt | Op::Gte | Op::Lt | Op::Lte => {
            let Some(actual) = actual else { return false };
            let ordering = match (number(actual), number(expected)) {
                (Some(a), Some(b)) => a.partial_cmp(&b),
                _ => Some(template::as_text(actual).cmp(&template::as_text(expected))),
            };
            let Some(ordering) = ordering else {
                return false;
            };
            match op {
                Op::Gt => ordering.is_gt(),
                Op::Gte => ordering.is_ge(),
                Op::Lt => ordering.is_lt(),
                _ => ordering.is_le(),
            }
        }
    }
}

fn contains(actual: Option<&Value>, expected: &Value) -> bool {
    match actual {
        Some(Value::Array(items)) => items.iter().any(|i| loosely_equal(i, expected)),
        Some(Value::String(s)) => s
            .to_lowercase()
            .contains(&template::as_text(expected).to_lowercase()),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn groups_and_comparisons() {
        let ctx = json!({
            "contact": {"tags": ["vip", "lead"], "first_name": "Ana", "lead_score": 12},
            "event": {"variables": {"product": "Course"}},
        });
        let c = Condition::parse(
            &json!({"all": [
                {"field": "contact.tags", "op": "contains", "value": "vip"},
                {"any": [
                    {"field": "event.variables.product", "op": "eq", "value": "course"},
                    {"field": "contact.lead_score", "op": "gt", "value": 100},
                ]},
                {"field": "contact.last_name", "op": "not_exists"},
                {"field": "contact.lead_score", "op": "gte", "value": "12"},
            ]}),
            "conditions",
        )
        .unwrap();
        assert!(c.evaluate(&ctx));
        let c = Condition::parse(
            &json!({"field": "contact.tags", "op": "contains", "value": "customer"}),
            "conditions",
        )
        .unwrap();
        assert!(!c.evaluate(&ctx));
    }

    #[test]
    fn errors_name_the_field() {
        let err = Condition::parse(
            &json!({"all": [{"field": "contact.tags", "op": "has"}]}),
            "conditions",
        )
        .unwrap_err();
        assert_eq!(err.details.unwrap()["field"], "conditions.all[0].op");
        let err =
            Condition::parse(&json!({"field": "secret", "op": "eq"}), "conditions").unwrap_err();
        assert_eq!(err.details.unwrap()["field"], "conditions.field");
    }
}
