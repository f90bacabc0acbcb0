//! JSON as the sender wrote it: object members in order, duplicates kept.
//!
//! `serde_json::Value` silently keeps the last of two equal keys, but the Measurement Protocol
//! validator must report `NAME_DUPLICATED` for `{"params":{"a":1,"a":2}}`, and a type mismatch
//! (`"params": 5`) must become a validation message rather than a failed deserialisation. So
//! the MP parser and validator read the body into this loose tree and walk it by hand.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum JsonNode {
    Object(Vec<(String, JsonNode)>),
    Array(Vec<JsonNode>),
    /// Null, boolean, number or string.
    Scalar(Value),
}

impl JsonNode {
    /// The member named `key`; the last one when the name repeats (as `serde_json` would).
    pub(crate) fn get(&self, key: &str) -> Option<&JsonNode> {
        self.members()?
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    pub(crate) fn members(&self) -> Option<&[(String, JsonNode)]> {
        match self {
            Self::Object(members) => Some(members),
            _ => None,
        }
    }

    pub(crate) fn elements(&self) -> Option<&[JsonNode]> {
        match self {
            Self::Array(elements) => Some(elements),
            _ => None,
        }
    }

    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Self::Scalar(Value::String(s)) => Some(s),
            _ => None,
        }
    }

    /// Text, or a number rendered as text (senders are loose about ids like `session_id`).
    pub(crate) fn as_text(&self) -> Option<String> {
        match self {
            Self::Scalar(Value::String(s)) => Some(s.clone()),
            Self::Scalar(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        }
    }

    /// An integer given as a JSON number or as a string of digits.
    pub(crate) fn as_i64(&self) -> Option<i64> {
        match self {
            Self::Scalar(Value::Number(n)) => n.as_i64(),
            Self::Scalar(Value::String(s)) => s.trim().parse().ok(),
            _ => None,
        }
    }

    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::Object(_) => "an object",
            Self::Array(_) => "an array",
            Self::Scalar(Value::Null) => "null",
            Self::Scalar(Value::Bool(_)) => "a boolean",
            Self::Scalar(Value::Number(_)) => "a number",
            Self::Scalar(_) => "a string",
        }
    }

    /// Plain JSON; of repeated keys the last one wins.
    pub(crate) fn to_value(&self) -> Value {
        match self {
            Self::Object(members) => Value::Object(
                members
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_value()))
                    .collect::<Map<_, _>>(),
            ),
            Self::Array(elements) => Value::Array(elements.iter().map(Self::to_value).collect()),
            Self::Scalar(value) => value.clone(),
        }
    }
}

impl<'de> Deserialize<'de> for JsonNode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = JsonNode;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<JsonNode, E> {
        Ok(JsonNode::Scalar(Value::Null))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<JsonNode, E> {
        Ok(JsonNode::Scalar(Value::Bool(v)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<JsonNode, E> {
        Ok(JsonNode::Scalar(Value::Number(v.into())))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<JsonNode, E> {
        Ok(JsonNode::Scalar(Value::Number(v.into())))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<JsonNode, E> {
        // JSON text cannot hold NaN or infinity, so `from_f64` only fails on input we never get.
        Ok(JsonNode::Scalar(
            Number::from_f64(v).map_or(Value::Null, Value::Number),
        ))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<JsonNode, E> {
        Ok(JsonNode::Scalar(Value::String(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<JsonNode, E> {
        Ok(JsonNode::Scalar(Value::String(v)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<JsonNode, A::Error> {
        let mut elements = Vec::new();
        while let Some(element) = seq.next_element()? {
            elements.push(element);
        }
        Ok(JsonNode::Array(elements))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<JsonNode, A::Error> {
        let mut members = Vec::new();
        while let Some(member) = map.next_entry::<String, JsonNode>()? {
            members.push(member);
        }
        Ok(JsonNode::Object(members))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keeps_duplicates_and_order() {
        let node: JsonNode =
            serde_json::from_str(r#"{"b":1,"a":"x","b":[true,null,1.5]}"#).unwrap();
        let names: Vec<_> = node
            .members()
            .unwrap()
            .iter()
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(names, ["b", "a", "b"]);
        assert_eq!(node.get("b").unwrap().kind(), "an array");
        assert_eq!(node.to_value(), json!({"a":"x","b":[true,null,1.5]}));
    }

    #[test]
    fn loose_accessors() {
        let node: JsonNode = serde_json::from_str(r#"{"n":17,"s":" 42 ","f":1.5}"#).unwrap();
        assert_eq!(node.get("n").unwrap().as_text().as_deref(), Some("17"));
        assert_eq!(node.get("s").unwrap().as_i64(), Some(42));
        assert_eq!(node.get("f").unwrap().as_i64(), None);
        assert!(node.get("missing").is_none());
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let deep = "[".repeat(100_000);
        assert!(serde_json::from_str::<JsonNode>(&deep).is_err());
    }
}
