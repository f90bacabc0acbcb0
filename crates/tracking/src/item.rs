//! E-commerce items, parsed from gtag's `pr<N>` strings or from MP/Segment JSON objects.
//!
//! Field names follow GA4's item schema (`item_id`, `price`…) because GA4 MP is one of the
//! destinations and the analytics rollups speak GA4. Whatever does not fit a named field goes
//! to `params` under the name it arrived with, so no item attribute is dropped.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};

use crate::hit::ParamValue;

/// One e-commerce item.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// gtag `id`; MP `item_id`; Segment `product_id`, else `sku`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item_id: Option<String>,
    /// gtag `nm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item_name: Option<String>,
    /// gtag `br`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item_brand: Option<String>,
    /// gtag `ca`, `c2`…`c5`: `item_category`, `item_category2`…`item_category5`, in order, with
    /// empty strings where a level is missing so the positions stay meaningful.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub item_categories: Vec<String>,
    /// gtag `va`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item_variant: Option<String>,
    /// gtag `pr` (unit price).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<Number>,
    /// gtag `qt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantity: Option<Number>,
    /// gtag `cp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coupon: Option<String>,
    /// gtag `ds` (monetary discount).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discount: Option<Number>,
    /// gtag `af`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affiliation: Option<String>,
    /// gtag `li`, `ln`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item_list_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item_list_name: Option<String>,
    /// gtag `lp` (position in the list); MP `index`; Segment `position`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<Number>,
    /// gtag `lo`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location_id: Option<String>,
    /// gtag `cn`, `cs`, `pi`, `pn` (promotion fields).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creative_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creative_slot: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promotion_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promotion_name: Option<String>,
    /// Custom item parameters (gtag `k0<name>~v0<value>`, other JSON keys), unknown gtag
    /// two-letter fields under their two-letter key, and named fields whose value did not parse
    /// (e.g. a non-numeric `pr`) under their wire key, as text.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, ParamValue>,
}

/// Where a named item field is stored.
enum Slot {
    Text(fn(&mut Item) -> &mut Option<String>),
    Number(fn(&mut Item) -> &mut Option<Number>),
    Category(usize),
}

/// gtag's two-letter item keys.
fn gtag_slot(key: &str) -> Option<Slot> {
    Some(match key {
        "id" => Slot::Text(|i| &mut i.item_id),
        "nm" => Slot::Text(|i| &mut i.item_name),
        "br" => Slot::Text(|i| &mut i.item_brand),
        "ca" => Slot::Category(0),
        "c2" => Slot::Category(1),
        "c3" => Slot::Category(2),
        "c4" => Slot::Category(3),
        "c5" => Slot::Category(4),
        "va" => Slot::Text(|i| &mut i.item_variant),
        "pr" => Slot::Number(|i| &mut i.price),
        "qt" => Slot::Number(|i| &mut i.quantity),
        "cp" => Slot::Text(|i| &mut i.coupon),
        "ds" => Slot::Number(|i| &mut i.discount),
        "af" => Slot::Text(|i| &mut i.affiliation),
        "li" => Slot::Text(|i| &mut i.item_list_id),
        "ln" => Slot::Text(|i| &mut i.item_list_name),
        "lp" => Slot::Number(|i| &mut i.index),
        "lo" => Slot::Text(|i| &mut i.location_id),
        "cn" => Slot::Text(|i| &mut i.creative_name),
        "cs" => Slot::Text(|i| &mut i.creative_slot),
        "pi" => Slot::Text(|i| &mut i.promotion_id),
        "pn" => Slot::Text(|i| &mut i.promotion_name),
        _ => return None,
    })
}

/// GA4 item JSON keys (MP `items[]`), plus Segment's product keys that mean the same thing.
fn json_slot(key: &str) -> Option<Slot> {
    Some(match key {
        "item_id" | "product_id" => Slot::Text(|i| &mut i.item_id),
        "item_name" | "name" => Slot::Text(|i| &mut i.item_name),
        "item_brand" | "brand" => Slot::Text(|i| &mut i.item_brand),
        "item_category" | "category" => Slot::Category(0),
        "item_category2" => Slot::Category(1),
        "item_category3" => Slot::Category(2),
        "item_category4" => Slot::Category(3),
        "item_category5" => Slot::Category(4),
        "item_variant" | "variant" => Slot::Text(|i| &mut i.item_variant),
        "price" => Slot::Number(|i| &mut i.price),
        "quantity" => Slot::Number(|i| &mut i.quantity),
        "coupon" => Slot::Text(|i| &mut i.coupon),
        "discount" => Slot::Number(|i| &mut i.discount),
        "affiliation" => Slot::Text(|i| &mut i.affiliation),
        "item_list_id" => Slot::Text(|i| &mut i.item_list_id),
        "item_list_name" => Slot::Text(|i| &mut i.item_list_name),
        "index" | "position" => Slot::Number(|i| &mut i.index),
        "location_id" => Slot::Text(|i| &mut i.location_id),
        "creative_name" => Slot::Text(|i| &mut i.creative_name),
        "creative_slot" => Slot::Text(|i| &mut i.creative_slot),
        "promotion_id" => Slot::Text(|i| &mut i.promotion_id),
        "promotion_name" => Slot::Text(|i| &mut i.promotion_name),
        _ => return None,
    })
}

impl Item {
    /// Parses gtag's `pr<N>` value: `~`-separated fields, each a two-letter key then its value,
    /// e.g. `idSKU1~nmShirt~pr9.99~qt1~k0color~v0blue`.
    ///
    /// The custom-parameter form `k<d><name>` / `v<d><value>` (one digit) is UNCONFIRMED
    /// (PROTOCOLS.md §1.1); a `k` without its `v` keeps its name with an empty value.
    pub fn from_gtag(text: &str) -> Self {
        let mut item = Item::default();
        let mut custom_names: BTreeMap<char, String> = BTreeMap::new();
        let mut custom_values: BTreeMap<char, String> = BTreeMap::new();
        for field in text.split('~').filter(|f| !f.is_empty()) {
            // Keys are ASCII; a field whose first two bytes are not a char boundary is kept whole.
            let Some((key, value)) = field.split_at_checked(2) else {
                item.params
                    .insert(field.to_owned(), ParamValue::String(String::new()));
                continue;
            };
            let mut chars = key.chars();
            match (chars.next(), chars.next()) {
                (Some('k'), Some(d)) if d.is_ascii_digit() => {
                    custom_names.insert(d, value.to_owned());
                }
                (Some('v'), Some(d)) if d.is_ascii_digit() => {
                    custom_values.insert(d, value.to_owned());
                }
                _ => item.set_text(gtag_slot(key), key, value),
            }
        }
        for (digit, name) in custom_names {
            let value = custom_values.remove(&digit).unwrap_or_default();
            item.params.insert(name, ParamValue::String(value));
        }
        // A value without a name: keep it under its wire key rather than dropping it.
        for (digit, value) in custom_values {
            item.params
                .insert(format!("v{digit}"), ParamValue::String(value));
        }
        item
    }

    /// Builds an item from a GA4 item object (MP) or a Segment product object.
    pub fn from_json(object: &Map<String, Value>) -> Self {
        let mut item = Item::default();
        for (key, value) in object {
            match (json_slot(key), value) {
                (Some(slot), Value::String(text)) => item.set_text(Some(slot), key, text),
                (Some(Slot::Number(field)), Value::Number(n)) => {
                    *field(&mut item) = Some(n.clone())
                }
                (Some(Slot::Text(field)), Value::Number(n)) => {
                    *field(&mut item) = Some(n.to_string());
                }
                (Some(Slot::Category(level)), Value::Number(n)) => {
                    item.set_category(level, n.to_string());
                }
                _ => {
                    item.params
                        .insert(key.clone(), ParamValue::from_json(value.clone()));
                }
            }
        }
        // Segment products carry `sku` beside `product_id`; use it only when there is no id.
        if item.item_id.is_none()
            && let Some(ParamValue::String(sku)) = item.params.get("sku")
        {
            item.item_id = Some(sku.clone());
        }
        item
    }

    fn set_text(&mut self, slot: Option<Slot>, key: &str, value: &str) {
        match slot {
            Some(Slot::Text(field)) => *field(self) = Some(value.to_owned()),
            Some(Slot::Category(level)) => self.set_category(level, value.to_owned()),
            Some(Slot::Number(field)) => match ParamValue::parse_number(value) {
                Some(ParamValue::Number(n)) => *field(self) = Some(n),
                _ => {
                    self.params
                        .insert(key.to_owned(), ParamValue::String(value.to_owned()));
                }
            },
            None => {
                self.params
                    .insert(key.to_owned(), ParamValue::String(value.to_owned()));
            }
        }
    }

    fn set_category(&mut self, level: usize, value: String) {
        if self.item_categories.len() <= level {
            self.item_categories.resize(level + 1, String::new());
        }
        self.item_categories[level] = value;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_the_gtag_item_format() {
        let item = Item::from_gtag(
            "idSKU_12345~nmBlue Shirt~brExample~caApparel~c2Shirts~vaBlue~pr29.99~qt2~cpSUMMER~ds5~lp3~k0color~v0navy~k1fit~v1slim",
        );
        assert_eq!(item.item_id.as_deref(), Some("SKU_12345"));
        assert_eq!(item.item_name.as_deref(), Some("Blue Shirt"));
        assert_eq!(item.item_brand.as_deref(), Some("Example"));
        assert_eq!(item.item_categories, vec!["Apparel", "Shirts"]);
        assert_eq!(item.item_variant.as_deref(), Some("Blue"));
        assert_eq!(item.price.as_ref().and_then(Number::as_f64), Some(29.99));
        assert_eq!(item.quantity, Some(2.into()));
        assert_eq!(item.coupon.as_deref(), Some("SUMMER"));
        assert_eq!(item.discount, Some(5.into()));
        assert_eq!(item.index, Some(3.into()));
        assert_eq!(item.params["color"], ParamValue::String("navy".into()));
        assert_eq!(item.params["fit"], ParamValue::String("slim".into()));
    }

    #[test]
    fn keeps_what_it_cannot_model() {
        let item = Item::from_gtag("idA~prfree~zzodd~c3Deep~x~v7orphan~~é");
        assert_eq!(item.price, None);
        assert_eq!(item.params["pr"], ParamValue::String("free".into()));
        assert_eq!(item.params["zz"], ParamValue::String("odd".into()));
        assert_eq!(item.params["x"], ParamValue::String(String::new()));
        assert_eq!(item.params["v7"], ParamValue::String("orphan".into()));
        assert_eq!(item.item_categories, vec!["", "", "Deep"]);
        // "é" is two bytes: split at 2 is a boundary, so it is an unknown key with no value.
        assert_eq!(item.params["é"], ParamValue::String(String::new()));
    }

    #[test]
    fn multibyte_field_never_panics() {
        let item = Item::from_gtag("€5~a");
        assert!(item.params.contains_key("€5"));
    }

    #[test]
    fn parses_ga4_and_segment_json_items() {
        let mp = json!({"item_id":"SKU1","item_name":"Shirt","price":12.5,"quantity":1,
            "item_category":"Apparel","item_category2":"Men","color":"blue"});
        let item = Item::from_json(mp.as_object().unwrap());
        assert_eq!(item.item_id.as_deref(), Some("SKU1"));
        assert_eq!(item.price.as_ref().and_then(Number::as_f64), Some(12.5));
        assert_eq!(item.item_categories, vec!["Apparel", "Men"]);
        assert_eq!(item.params["color"], ParamValue::String("blue".into()));

        let segment = json!({"sku":"45790-32","name":"Monopoly","price":"19","quantity":1,
            "position":3,"url":"https://www.example.com/product/path"});
        let item = Item::from_json(segment.as_object().unwrap());
        assert_eq!(item.item_id.as_deref(), Some("45790-32"));
        assert_eq!(item.price, Some(19.into()), "numeric strings are parsed");
        assert_eq!(item.index, Some(3.into()));
        assert!(item.params.contains_key("url"));
    }
}
