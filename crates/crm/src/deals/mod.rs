//! Pipelines, their ordered stages, deals and each deal's stage history.
//!
//! A pipeline is an ordered list of stages; each stage has a win probability and a kind (`open`,
//! `won`, `lost`). A deal sits in one stage of one pipeline and has a status (`open`, `won`,
//! `lost`): moving it into a `won` or `lost` stage closes it, setting `status: "won"` moves it
//! to the pipeline's first won stage when there is one, and reopening it clears `closed_at`.
//! Every move closes the deal's current `deal_stage_history` row and opens a new one in the same
//! transaction, so the history is the exact sequence of stays.
//!
//! Values are exact: a decimal string (or JSON number) read in the currency's minor unit
//! (`"1250.50"` EUR → 125050, `"1000"` JPY → 1000) and shown back as a decimal string.

pub mod routes;
pub mod store;

pub use self::routes::routes;

use chrono::NaiveDate;
use platform::id::UserId;
use platform::{ApiError, ApiResult, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

use crate::{CompanyId, ContactId, DealId, PipelineId, StageId};

/// At most this many stages in one pipeline.
pub const MAX_STAGES: usize = 50;
/// At most this many contacts on one deal.
pub const MAX_DEAL_CONTACTS: usize = 100;
/// Deals shown per stage on the board unless `per_stage` says otherwise.
pub const DEFAULT_PER_STAGE: u32 = 50;
pub const MAX_PER_STAGE: u32 = 200;
/// The largest value a deal may carry, in minor units (keeps sums far from overflow).
const MAX_VALUE_MINOR: i64 = 1_000_000_000_000_000;

/// What reaching a stage means for a deal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StageKind {
    Open,
    Won,
    Lost,
}

impl StageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StageKind::Open => "open",
            StageKind::Won => "won",
            StageKind::Lost => "lost",
        }
    }

    pub(crate) fn parse(text: &str) -> StageKind {
        match text {
            "won" => StageKind::Won,
            "lost" => StageKind::Lost,
            _ => StageKind::Open,
        }
    }
}

/// Where a deal stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DealStatus {
    Open,
    Won,
    Lost,
}

impl DealStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DealStatus::Open => "open",
            DealStatus::Won => "won",
            DealStatus::Lost => "lost",
        }
    }

    pub(crate) fn parse(text: &str) -> DealStatus {
        match text {
            "won" => DealStatus::Won,
            "lost" => DealStatus::Lost,
            _ => DealStatus::Open,
        }
    }

    /// The status a stage of this kind implies (`None` for open stages: any status).
    pub(crate) fn of_kind(kind: StageKind) -> Option<DealStatus> {
        match kind {
            StageKind::Open => None,
            StageKind::Won => Some(DealStatus::Won),
            StageKind::Lost => Some(DealStatus::Lost),
        }
    }
}

/// A stage of a pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Stage {
    pub id: StageId,
    pub name: String,
    /// 0-based place in the pipeline.
    pub position: i32,
    /// Win probability in percent (0–100), used for the weighted totals.
    pub probability: i32,
    pub kind: StageKind,
}

/// A sales pipeline with its stages in order.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Pipeline {
    pub id: PipelineId,
    pub name: String,
    pub stages: Vec<Stage>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// One stage of a pipeline write. With `id`, an existing stage is kept (renamed, moved, its
/// probability or kind changed); without, a new stage is added. Its place in the list is its
/// position.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StageInput {
    /// An existing stage of this pipeline (PATCH only).
    pub id: Option<StageId>,
    /// Required for a new stage; unique in the pipeline (case-insensitive).
    pub name: Option<String>,
    /// 0–100; default 100 for `won` stages, else 0 (kept for an existing stage).
    pub probability: Option<i64>,
    /// Default `open` (kept for an existing stage).
    pub kind: Option<StageKind>,
}

/// Create a pipeline.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPipeline {
    pub name: String,
    /// In order; at least one `open` stage.
    pub stages: Vec<StageInput>,
}

/// Change a pipeline: rename it and/or replace its stage list. A stage left out of `stages` is
/// removed (409 `stage_in_use` while deals are in it).
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineChange {
    pub name: Option<String>,
    pub stages: Option<Vec<StageInput>>,
}

/// A deal (opportunity).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Deal {
    pub id: DealId,
    pub title: String,
    pub pipeline_id: PipelineId,
    pub stage_id: StageId,
    pub status: DealStatus,
    /// Why it was lost (only while `status` is `lost`).
    pub lost_reason: Option<String>,
    /// Exact decimal string with the currency's number of decimals, e.g. `"1250.50"`.
    pub value: String,
    /// ISO 4217 code, e.g. `EUR`.
    pub currency: String,
    /// Live contacts linked to the deal.
    pub contact_ids: Vec<ContactId>,
    pub company_id: Option<CompanyId>,
    pub owner_id: Option<UserId>,
    /// `YYYY-MM-DD`.
    pub expected_close_date: Option<String>,
    /// Custom field values by key (see `/fields`, entity `deal`).
    pub custom: Map<String, Value>,
    /// When the deal entered its current stage.
    pub stage_entered_at: Timestamp,
    /// When it was won or lost; `null` while open.
    pub closed_at: Option<Timestamp>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// Create a deal.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDeal {
    pub title: String,
    pub pipeline_id: PipelineId,
    /// A stage of `pipeline_id`; default the first open stage (or, with `status`, the first
    /// stage of that kind).
    pub stage_id: Option<StageId>,
    /// A decimal string or number, e.g. `"1250.50"`; default 0.
    #[schema(value_type = Option<String>, example = "1250.50")]
    pub value: Option<Value>,
    /// ISO 4217 (three letters); default `USD`.
    pub currency: Option<String>,
    /// Contacts to link (merged ids resolve to their survivor).
    #[serde(default)]
    pub contact_ids: Vec<ContactId>,
    pub company_id: Option<CompanyId>,
    pub owner_id: Option<UserId>,
    /// `YYYY-MM-DD`.
    pub expected_close_date: Option<String>,
    pub custom: Option<Map<String, Value>>,
    /// Default `open`, or the kind of the given stage.
    pub status: Option<DealStatus>,
    /// Only with `status: "lost"`.
    pub lost_reason: Option<String>,
}

/// Change a deal: absent fields are kept, `null` clears an optional one.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DealChange {
    pub title: Option<String>,
    /// Moves the deal to another pipeline (to `stage_id`, or that pipeline's first open stage).
    pub pipeline_id: Option<PipelineId>,
    /// Moves the deal: closes its current stay and opens a new one. Into a `won`/`lost` stage
    /// it closes the deal; out of one into an `open` stage it reopens it.
    pub stage_id: Option<StageId>,
    #[schema(value_type = Option<String>, example = "1250.50")]
    pub value: Option<Value>,
    /// Changing the currency alone keeps the decimal value (it must fit the new currency).
    pub currency: Option<String>,
    /// Replaces the linked contacts.
    pub contact_ids: Option<Vec<ContactId>>,
    #[serde(default, with = "crate::double_option")]
    #[schema(value_type = Option<CompanyId>)]
    pub company_id: Option<Option<CompanyId>>,
    #[serde(default, with = "crate::double_option")]
    #[schema(value_type = Option<UserId>)]
    pub owner_id: Option<Option<UserId>>,
    #[serde(default, with = "crate::double_option")]
    #[schema(value_type = Option<String>)]
    pub expected_close_date: Option<Option<String>>,
    /// Custom values to change; `null` clears one.
    pub custom: Option<Map<String, Value>>,
    /// `won` without `stage_id` moves the deal to the pipeline's first won stage (if any),
    /// `lost` likewise; `open` reopens it (back to its last open stage when it sits in a closed
    /// one).
    pub status: Option<DealStatus>,
    #[serde(default, with = "crate::double_option")]
    #[schema(value_type = Option<String>)]
    pub lost_reason: Option<Option<String>>,
}

/// Filters of the deal list: all given ones must match.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DealFilter {
    pub pipeline_id: Option<PipelineId>,
    pub stage_id: Option<StageId>,
    pub status: Option<DealStatus>,
    /// Linked to this contact (a merged id matches its survivor's deals).
    pub contact_id: Option<ContactId>,
    pub company_id: Option<CompanyId>,
    pub owner_id: Option<UserId>,
}

/// One stay of a deal in a stage.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StageStay {
    pub stage_id: StageId,
    /// `null` when the stage has since been removed from the pipeline.
    pub stage_name: Option<String>,
    pub entered_at: Timestamp,
    /// `null` for the current stage.
    pub left_at: Option<Timestamp>,
    /// Whole seconds in the stage (up to now for the current one).
    pub duration_seconds: i64,
    /// Who moved the deal there: a user or API key id, or `system`.
    pub actor: Option<String>,
}

/// `?per_stage=&status=` of the board.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BoardParams {
    /// Newest deals listed per stage, 1 to 200 (default 50); counts and totals cover all.
    pub per_stage: Option<u32>,
    /// Only deals with this status.
    pub status: Option<DealStatus>,
}

/// Sums of one currency.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct CurrencyTotal {
    pub currency: String,
    pub count: i64,
    /// Exact sum, decimal string.
    pub value: String,
    /// Σ value × probability / 100, rounded half up to the currency's minor unit per stage.
    pub weighted_value: String,
}

/// One column of the board.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BoardStage {
    pub id: StageId,
    pub name: String,
    pub position: i32,
    pub probability: i32,
    pub kind: StageKind,
    /// Deals in the stage (all of them, not only those listed).
    pub count: i64,
    /// Per currency, sorted by currency code.
    pub totals: Vec<CurrencyTotal>,
    /// The stage's newest deals, at most `per_stage`.
    pub deals: Vec<Deal>,
}

/// A pipeline's board: stages in order with counts, totals and their newest deals.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Board {
    pub pipeline_id: PipelineId,
    pub name: String,
    pub stages: Vec<BoardStage>,
    /// The whole pipeline, per currency.
    pub totals: Vec<CurrencyTotal>,
}

// ---------------------------------------------------------------------------------------------
// Validation

pub fn pipeline_not_found() -> ApiError {
    ApiError::not_found("pipeline_not_found", "No such pipeline in this workspace.")
}

pub fn deal_not_found() -> ApiError {
    ApiError::not_found("deal_not_found", "No such deal in this workspace.")
}

/// Trimmed text of 1 to `max` characters on one line.
pub(crate) fn check_text(field: &str, text: &str, max: usize) -> ApiResult<String> {
    let text = text.trim();
    if text.is_empty() || text.chars().count() > max || text.contains(['\n', '\r']) {
        return Err(ApiError::invalid_field(
            field,
            format!("`{field}` is 1 to {max} characters on one line."),
        ));
    }
    Ok(text.to_owned())
}

/// `YYYY-MM-DD`.
pub(crate) fn check_date(field: &str, text: &str) -> ApiResult<String> {
    let text = text.trim();
    if text.len() != 10 || NaiveDate::parse_from_str(text, "%Y-%m-%d").is_err() {
        return Err(ApiError::invalid_field(
            field,
            format!("`{field}` is a date like 2026-11-22."),
        ));
    }
    Ok(text.to_owned())
}

/// At most 1,000 characters; empty means none.
pub(crate) fn check_lost_reason(text: Option<&str>) -> ApiResult<Option<String>> {
    let Some(text) = text.map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    if text.chars().count() > 1_000 {
        return Err(ApiError::invalid_field(
            "lost_reason",
            "`lost_reason` is at most 1,000 characters.",
        ));
    }
    Ok(Some(text.to_owned()))
}

/// An ISO 4217 code: three letters, upper-cased.
pub fn check_currency(text: &str) -> ApiResult<String> {
    let code = text.trim().to_ascii_uppercase();
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(ApiError::invalid_field(
            "currency",
            "`currency` is an ISO 4217 code of three letters, e.g. EUR.",
        ));
    }
    Ok(code)
}

/// Decimals of the currency's minor unit (ISO 4217).
pub fn currency_exponent(code: &str) -> u32 {
    match code {
        "JPY" | "KRW" | "CLP" | "VND" | "ISK" | "UGX" | "XAF" | "XOF" | "PYG" | "RWF" | "KMF"
        | "GNF" | "DJF" | "BIF" | "VUV" | "XPF" => 0,
        "BHD" | "KWD" | "OMR" | "JOD" | "TND" | "LYD" | "IQD" => 3,
        _ => 2,
    }
}

/// A decimal string or JSON number, exactly, in the currency's minor unit. Trailing zeros past
/// the currency's decimals are fine (`"1000.00"` JPY); other extra decimals are a 422 on `field`.
pub fn parse_value(field: &str, value: &Value, currency: &str) -> ApiResult<i64> {
    let text = match value {
        Value::String(s) => s.trim().to_owned(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    };
    parse_decimal(field, &text, currency)
}

fn parse_decimal(field: &str, text: &str, currency: &str) -> ApiResult<i64> {
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    let well_formed = !int.is_empty()
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.bytes().all(|b| b.is_ascii_digit())
        && (!text.contains('.') || !frac.is_empty());
    if !well_formed {
        return Err(ApiError::invalid_field(
            field,
            format!("`{field}` is a non-negative decimal like \"1250.50\"."),
        ));
    }
    let exponent = currency_exponent(currency);
    let frac = frac.trim_end_matches('0');
    if frac.len() > exponent as usize {
        let message = match exponent {
            0 => format!("{currency} amounts are whole numbers; `{field}` has decimals."),
            n => format!("{currency} amounts have at most {n} decimals; `{field}` has more."),
        };
        return Err(ApiError::invalid_field(field, message));
    }
    let too_large = || {
        ApiError::invalid_field(
            field,
            format!(
                "`{field}` is too large (at most {}).",
                format_minor(i128::from(MAX_VALUE_MINOR), exponent)
            ),
        )
    };
    let mut minor: i64 = 0;
    let frac_digits = frac
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(exponent as usize);
    for digit in int.bytes().chain(frac_digits) {
        minor = minor
            .checked_mul(10)
            .and_then(|m| m.checked_add(i64::from(digit - b'0')))
            .filter(|m| *m <= MAX_VALUE_MINOR)
            .ok_or_else(too_large)?;
    }
    Ok(minor)
}

/// Minor units back to a decimal string with the currency's decimals.
pub fn format_minor(minor: i128, exponent: u32) -> String {
    if exponent == 0 {
        return minor.to_string();
    }
    let scale = 10_i128.pow(exponent);
    let sign = if minor < 0 { "-" } else { "" };
    let abs = minor.unsigned_abs();
    let scale = scale.unsigned_abs();
    format!(
        "{sign}{}.{:0width$}",
        abs / scale,
        abs % scale,
        width = exponent as usize
    )
}

/// `minor × probability / 100`, rounded half away from zero.
pub(crate) fn weighted(minor: i128, probability: i32) -> i128 {
    let product = minor * i128::from(probability);
    let half = if product < 0 { -50 } else { 50 };
    (product + half) / 100
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_exact_in_minor_units() {
        let v = |text: &str, cur: &str| parse_value("value", &Value::String(text.into()), cur);
        assert_eq!(v("1250.50", "EUR").unwrap(), 125_050);
        assert_eq!(v("1250.5", "EUR").unwrap(), 125_050);
        assert_eq!(v("0.07", "USD").unwrap(), 7);
        assert_eq!(v("1000", "JPY").unwrap(), 1000);
        assert_eq!(v("1000.00", "JPY").unwrap(), 1000);
        assert_eq!(v("1.234", "KWD").unwrap(), 1234);
        for bad in ["1000.5", "", ".5", "5.", "-1", "1e3", "1,5", " "] {
            let err = v(bad, "JPY").unwrap_err();
            assert_eq!(err.details.unwrap()["field"], "value", "{bad}");
        }
        assert!(v("1.001", "EUR").is_err());
        assert!(v("99999999999999999999", "EUR").is_err());
        let number: Value = serde_json::from_str("1250.5").unwrap();
        assert_eq!(parse_value("value", &number, "EUR").unwrap(), 125_050);
        assert_eq!(
            parse_value("value", &serde_json::json!(3), "EUR").unwrap(),
            300
        );
        assert!(parse_value("value", &serde_json::json!(true), "EUR").is_err());
    }

    #[test]
    fn formats_with_the_currency_decimals() {
        assert_eq!(format_minor(125_050, 2), "1250.50");
        assert_eq!(format_minor(7, 2), "0.07");
        assert_eq!(format_minor(1000, 0), "1000");
        assert_eq!(format_minor(1234, 3), "1.234");
        assert_eq!(format_minor(-5, 2), "-0.05");
        assert_eq!(weighted(125_050, 30), 37_515);
        assert_eq!(weighted(1, 50), 1);
        assert_eq!(weighted(1, 49), 0);
        assert_eq!(currency_exponent("JPY"), 0);
        assert_eq!(currency_exponent("BHD"), 3);
        assert_eq!(currency_exponent("EUR"), 2);
    }

    #[test]
    fn currency_codes() {
        assert_eq!(check_currency(" eur ").unwrap(), "EUR");
        assert!(check_currency("EURO").is_err());
        assert!(check_currency("E1R").is_err());
    }
}
