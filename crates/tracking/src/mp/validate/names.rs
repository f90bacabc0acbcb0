//! GA4's naming rules for events, parameters and user properties, and its reserved names.
//!
//! The reserved lists are GA's published ones as far as we know them; PROTOCOLS.md marks the
//! exact lists UNCONFIRMED. All three kinds of name share the prefixes `google_`, `ga_` and
//! `firebase_`.

use super::{MAX_NAME_CHARS, MAX_USER_PROPERTY_NAME_CHARS, Messages, ValidationCode};

const RESERVED_PREFIXES: &[&str] = &["google_", "ga_", "firebase_"];

const RESERVED_EVENT_NAMES: &[&str] = &[
    "ad_activeview",
    "ad_click",
    "ad_exposure",
    "ad_impression",
    "ad_query",
    "ad_reward",
    "adunit_exposure",
    "app_background",
    "app_clear_data",
    "app_exception",
    "app_install",
    "app_remove",
    "app_store_refund",
    "app_store_subscription_cancel",
    "app_store_subscription_convert",
    "app_store_subscription_renew",
    "app_update",
    "app_upgrade",
    "dynamic_link_app_open",
    "dynamic_link_app_update",
    "dynamic_link_first_open",
    "error",
    "first_open",
    "first_visit",
    "in_app_purchase",
    "notification_dismiss",
    "notification_foreground",
    "notification_open",
    "notification_receive",
    "notification_send",
    "os_update",
    "session_start",
    "session_start_with_rollout",
    "user_engagement",
];

const RESERVED_PARAM_NAMES: &[&str] = &["firebase_conversion"];

const RESERVED_USER_PROPERTY_NAMES: &[&str] = &[
    "first_open_after_install",
    "first_open_time",
    "first_visit_time",
    "last_deep_link_referrer",
    "user_id",
];

/// The rules one kind of name follows.
pub(super) struct NameRules {
    what: &'static str,
    max_chars: usize,
    reserved: &'static [&'static str],
}

pub(super) const EVENT_NAME: NameRules = NameRules {
    what: "name",
    max_chars: MAX_NAME_CHARS,
    reserved: RESERVED_EVENT_NAMES,
};
pub(super) const PARAM_NAME: NameRules = NameRules {
    what: "parameter name",
    max_chars: MAX_NAME_CHARS,
    reserved: RESERVED_PARAM_NAMES,
};
pub(super) const USER_PROPERTY_NAME: NameRules = NameRules {
    what: "user property name",
    max_chars: MAX_USER_PROPERTY_NAME_CHARS,
    reserved: RESERVED_USER_PROPERTY_NAMES,
};

pub(super) fn check_name(out: &mut Messages, path: &str, at: &str, name: &str, rules: &NameRules) {
    let what = rules.what;
    let invalid = |reason: &str| format!("{at} has invalid {what} [{name}]. {reason}");
    if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        out.push(
            path,
            ValidationCode::NameInvalid,
            invalid("Names must start with an alphabetic character."),
        );
    } else if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        out.push(
            path,
            ValidationCode::NameInvalid,
            invalid("Names may only contain alphanumeric characters and underscores."),
        );
    } else if name.len() > rules.max_chars {
        out.push(
            path,
            ValidationCode::NameInvalid,
            invalid(&format!(
                "Names may be at most {} characters long.",
                rules.max_chars
            )),
        );
    } else if rules.reserved.contains(&name)
        || RESERVED_PREFIXES.iter().any(|p| name.starts_with(p))
    {
        out.push(
            path,
            ValidationCode::NameReserved,
            format!("{at} has {what} [{name}] which is reserved."),
        );
    }
}
