//! The template language of step settings: `{{ path.to.value }}` lookups into the run's context
//! (`contact`, `event`, `deal`), with one filter, `| default:"text"`, for a missing or empty
//! value. Nothing else: no expressions, no loops, no function calls, so a template can never run
//! code. See `docs/templates.md`.

use serde_json::Value;

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq)]
enum Piece<'a> {
    Text(&'a str),
    Lookup {
        path: Vec<&'a str>,
        default: Option<String>,
    },
}

/// Longest template accepted, in bytes.
pub const MAX_TEMPLATE: usize = 20_000;

fn parse(text: &str) -> Result<Vec<Piece<'_>>, String> {
    if text.len() > MAX_TEMPLATE {
        return Err(format!("a template is at most {MAX_TEMPLATE} bytes"));
    }
    let mut pieces = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        if start > 0 {
            pieces.push(Piece::Text(&rest[..start]));
        }
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| "`{{` without a closing `}}`".to_owned())?;
        pieces.push(parse_tag(after[..end].trim())?);
        rest = &after[end + 2..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest));
    }
    Ok(pieces)
}

fn parse_tag(tag: &str) -> Result<Piece<'_>, String> {
    let (path, filter) = match tag.split_once('|') {
        Some((path, filter)) => (path.trim(), Some(filter.trim())),
        None => (tag, None),
    };
    let default = match filter {
        None => None,
        Some(filter) => {
            let arg = filter
                .strip_prefix("default:")
                .map(str::trim)
                .ok_or_else(|| format!("unknown filter `{filter}`: only `default:\"…\"` exists"))?;
            let quoted = arg
                .strip_prefix('"')
                .and_then(|a| a.strip_suffix('"'))
                .ok_or_else(|| "the default value is written in double quotes".to_owned())?;
            if quoted.contains('"') {
                return Err("the default value cannot contain `\"`".to_owned());
            }
            Some(quoted.to_owned())
        }
    };
    if path.is_empty() {
        return Err("empty `{{ }}`".to_owned());
    }
    let segments: Vec<&str> = path.split('.').collect();
    let valid = |s: &&str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    };
    if !segments.iter().all(valid) {
        return Err(format!(
            "`{path}` is not a path: use names and indexes separated by dots (contact.emails.0)"
        ));
    }
    if !matches!(segments[0], "contact" | "event" | "deal" | "run") {
        return Err(format!(
            "`{path}` must start with `contact.`, `event.`, `deal.` or `run.`"
        ));
    }
    Ok(Piece::Lookup {
        path: segments,
        default,
    })
}

/// Checks a template's syntax (when a rule is saved).
pub fn validate(text: &str) -> Result<(), String> {
    parse(text).map(|_| ())
}

/// Looks up a dotted path (`contact.emails.0`) in `context`.
pub fn lookup<'v>(context: &'v Value, path: &str) -> Option<&'v Value> {
    lookup_segments(context, &path.split('.').collect::<Vec<_>>())
}

fn lookup_segments<'v>(context: &'v Value, path: &[&str]) -> Option<&'v Value> {
    let mut current = context;
    for segment in path {
        current = match current {
            Value::Object(map) => map.get(*segment)?,
            Value::Array(items) => items.get(segment.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(current)
}

/// A value as text: strings as they are, `null` as empty, anything else as JSON.
pub fn as_text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Renders `text` against `context`. A template that does not parse renders as written (rules
/// are validated on save, so this only happens with hand-edited rows).
pub fn render(text: &str, context: &Value) -> String {
    let Ok(pieces) = parse(text) else {
        return text.to_owned();
    };
    let mut out = String::with_capacity(text.len());
    for piece in pieces {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Lookup { path, default } => {
                let value = lookup_segments(context, &path)
                    .map(as_text)
                    .unwrap_or_default();
                match default {
                    Some(d) if value.is_empty() => out.push_str(&d),
                    _ => out.push_str(&value),
                }
            }
        }
    }
    out
}

/// Renders every string inside a JSON value (objects and arrays recursively).
pub fn render_value(value: &Value, context: &Value) -> Value {
    match value {
        Value::String(s) => Value::String(render(s, context)),
        Value::Array(items) => {
            Value::Array(items.iter().map(|v| render_value(v, context)).collect())
        }
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), render_value(v, context)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Validates every string inside a JSON value; the error names the JSON path under `field`.
pub fn validate_value(value: &Value, field: &str) -> Result<(), (String, String)> {
    match value {
        Value::String(s) => validate(s).map_err(|e| (field.to_owned(), e)),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, v)| validate_value(v, &format!("{field}[{i}]"))),
        Value::Object(map) => map
            .iter()
            .try_for_each(|(k, v)| validate_value(v, &format!("{field}.{k}"))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx() -> Value {
        json!({
            "contact": {"first_name": "Ana", "emails": ["ana@example.com"], "custom": {"plan": "pro"}, "lead_score": 7},
            "event": {"variables": {"time": "14:00", "empty": ""}},
        })
    }

    #[test]
    fn looks_up_paths_and_defaults() {
        let c = ctx();
        assert_eq!(render("Hi {{contact.first_name}}!", &c), "Hi Ana!");
        assert_eq!(render("{{ contact.emails.0 }}", &c), "ana@example.com");
        assert_eq!(render("at {{event.variables.time}}", &c), "at 14:00");
        assert_eq!(render("{{contact.lead_score}}", &c), "7");
        assert_eq!(render("{{contact.last_name}}", &c), "");
        assert_eq!(
            render(r#"{{contact.last_name | default:"friend"}}"#, &c),
            "friend"
        );
        assert_eq!(render(r#"{{event.variables.empty|default:"x"}}"#, &c), "x");
        assert_eq!(render(r#"{{contact.first_name | default:"x"}}"#, &c), "Ana");
        assert_eq!(render("no tags", &c), "no tags");
    }

    #[test]
    fn refuses_anything_but_lookups() {
        for bad in [
            "{{",
            "{{ }}",
            "{{contact.first_name | upcase}}",
            "{{ contact.first_name + 1 }}",
            "{{ system.env }}",
            "{{ contact..x }}",
            "{{ contact.x | default:x }}",
        ] {
            assert!(validate(bad).is_err(), "{bad}");
        }
        assert!(validate("plain {{contact.custom.plan}} text").is_ok());
    }
}
