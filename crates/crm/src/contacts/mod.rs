//! Contacts: one person, however many identifiers they are known by.
//!
//! Identity resolution: a write names identifiers (emails, phones, external ids, GA client ids,
//! Segment anonymous ids). No contact holds any → a new contact. One does → it is updated. Several
//! do → they merge into one: the oldest contact survives (deterministic), the others' identifiers,
//! tags, custom values, deals, notes, tasks and timeline move to it, their fields fill the
//! survivor's gaps, the merge is recorded and their old ids keep resolving to the survivor.

pub mod routes;
pub mod store;

use std::collections::BTreeMap;

use platform::Timestamp;
use platform::id::UserId;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::{CompanyId, ContactId};

/// Where a contact stands, in order: a merge keeps the furthest stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LifecycleStage {
    Subscriber,
    Lead,
    MarketingQualifiedLead,
    SalesQualifiedLead,
    Opportunity,
    Customer,
    Evangelist,
    Other,
}

impl LifecycleStage {
    pub fn as_str(self) -> &'static str {
        match self {
            LifecycleStage::Subscriber => "subscriber",
            LifecycleStage::Lead => "lead",
            LifecycleStage::MarketingQualifiedLead => "marketing_qualified_lead",
            LifecycleStage::SalesQualifiedLead => "sales_qualified_lead",
            LifecycleStage::Opportunity => "opportunity",
            LifecycleStage::Customer => "customer",
            LifecycleStage::Evangelist => "evangelist",
            LifecycleStage::Other => "other",
        }
    }

    pub fn parse(text: &str) -> Option<LifecycleStage> {
        serde_json::from_value(Value::String(text.to_owned())).ok()
    }
}

/// Where a visit came from: the first touch is kept forever, the last touch is replaced by
/// every newer one. Click ids are what offline conversions match on later.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Touch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub medium: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub referrer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub landing_page: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gclid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gbraid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wbraid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fbc: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fbp: Option<String>,
    /// When the touch happened (default: when it was written).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<Timestamp>,
}

/// A contact as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Contact {
    pub id: ContactId,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    /// Lower-cased; the first is the primary one.
    pub emails: Vec<String>,
    /// E.164; the first is the primary one.
    pub phones: Vec<String>,
    /// Ids in the customer's other systems.
    pub external_ids: Vec<String>,
    /// GA client ids (`cid`, the `_ga` cookie's `1234.5678`).
    pub ga_client_ids: Vec<String>,
    /// Segment `anonymousId`s.
    pub anonymous_ids: Vec<String>,
    pub company_id: Option<CompanyId>,
    pub owner_id: Option<UserId>,
    pub lifecycle_stage: LifecycleStage,
    pub lead_score: i64,
    pub first_touch: Option<Touch>,
    pub last_touch: Option<Touch>,
    pub tags: Vec<String>,
    /// Custom field values by key (see `/fields`).
    pub custom: Map<String, Value>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub last_seen_at: Option<Timestamp>,
}

/// Create-or-update a contact (`POST /contacts`, imports, capture) or change one (`PATCH`).
///
/// On upsert, identifier lists are *added to* the contact; on PATCH they *replace* its lists.
/// Absent fields are kept; `null` clears an optional one.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ContactInput {
    #[serde(default, with = "crate::double_option")]
    #[schema(value_type = Option<String>)]
    pub first_name: Option<Option<String>>,
    #[serde(default, with = "crate::double_option")]
    #[schema(value_type = Option<String>)]
    pub last_name: Option<Option<String>>,
    pub emails: Option<Vec<String>>,
    pub phones: Option<Vec<String>>,
    pub external_ids: Option<Vec<String>>,
    pub ga_client_ids: Option<Vec<String>>,
    pub anonymous_ids: Option<Vec<String>>,
    #[serde(default, with = "crate::double_option")]
    #[schema(value_type = Option<CompanyId>)]
    pub company_id: Option<Option<CompanyId>>,
    #[serde(default, with = "crate::double_option")]
    #[schema(value_type = Option<UserId>)]
    pub owner_id: Option<Option<UserId>>,
    pub lifecycle_stage: Option<LifecycleStage>,
    pub lead_score: Option<i64>,
    /// Tags to add (upsert) or the whole tag list (PATCH).
    pub tags: Option<Vec<String>>,
    /// Custom field values by key; `null` clears one.
    pub custom: Option<Map<String, Value>>,
    /// A marketing touch: becomes the first touch if there is none, and the last touch (when
    /// it is newer than the current one).
    pub touch: Option<Touch>,
    /// An earlier touch known for this person (e.g. the landing of the visit that ended in a
    /// form): becomes the first touch when there is none or it is earlier than the current one.
    pub first_touch: Option<Touch>,
    /// When the person was last active (capture sets it from the event time).
    pub last_seen_at: Option<Timestamp>,
}

/// The kinds of identifiers, in the order they are shown.
pub const IDENTIFIER_KINDS: [&str; 5] = [
    "email",
    "phone",
    "external_id",
    "ga_client_id",
    "anonymous_id",
];

/// Identifiers by kind, normalized.
pub type Identifiers = BTreeMap<&'static str, Vec<String>>;

/// Filters of the contact list, export and segments: all given ones must match.
#[derive(
    Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::IntoParams, ToSchema,
)]
#[into_params(parameter_in = Query)]
pub struct ContactFilter {
    /// Text search over name, emails, phones and company name (case-insensitive substring).
    pub q: Option<String>,
    /// Has this tag.
    pub tag: Option<String>,
    pub lifecycle_stage: Option<LifecycleStage>,
    pub owner_id: Option<UserId>,
    pub company_id: Option<CompanyId>,
    /// Holds this email (normalized before matching).
    pub email: Option<String>,
    /// Holds this phone (normalized with the workspace's region before matching).
    pub phone: Option<String>,
    /// A custom field equals a value: `plan:pro` (compared as text).
    pub custom: Option<String>,
    /// First-touch source (e.g. `google`, `facebook`, `newsletter`).
    pub source: Option<String>,
    /// First-touch medium (e.g. `cpc`, `organic`, `email`).
    pub medium: Option<String>,
    /// First-touch campaign.
    pub campaign: Option<String>,
    /// Arrived from an ad click: a gclid, gbraid, wbraid or fbc on the first or last touch.
    pub has_click_id: Option<bool>,
    /// Visited a page whose path matches (`/pricing`, `/blog/*`) within `visited_within_days`.
    pub visited_path: Option<String>,
    /// Window of `visited_path`, 1 to 365 days (default 30).
    pub visited_within_days: Option<u32>,
    /// Active (seen on the site or captured) within this many days, 1 to 3650.
    pub seen_within_days: Option<u32>,
    /// Order: `-created_at` (default, newest first), `created_at`, `-updated_at`, `updated_at`,
    /// `-lead_score`, `lead_score`.
    pub sort: Option<String>,
}
