//! Identifier normalization, so the same person typed twice is one identifier: emails trimmed
//! and lower-cased, phones in E.164 (read with the workspace's default region when written
//! without a country code), tags trimmed, company domains bare host names.

use phonenumber::{Mode, country};
use platform::ApiError;

/// `  Ana@Example.COM ` → `ana@example.com`; the same rule as account emails.
pub fn email(field: &str, raw: &str) -> Result<String, ApiError> {
    platform::accounts::users::normalize_email_field(field, raw)
}

/// `(415) 555-2671` with region `US` → `+14155552671`; `+44 20 7946 0958` → `+442079460958`.
/// Refuses numbers that are not valid for their region (wrong length, unassigned prefix).
pub fn phone(field: &str, raw: &str, default_region: &str) -> Result<String, ApiError> {
    let trimmed = raw.trim();
    let bad = || {
        ApiError::invalid_field(
            field,
            format!(
                "`{trimmed}` is not a valid phone number (write it with its country code, e.g. +14155552671, or set the workspace's default region)."
            ),
        )
    };
    // `00` is the international prefix in most of the world; WhatsApp ids come without `+`.
    let text = match trimmed.strip_prefix("00") {
        Some(rest) if !trimmed.starts_with("000") => format!("+{rest}"),
        _ => trimmed.to_owned(),
    };
    // With a `+` the number names its own country. The region must then be left out: the
    // `phonenumber` crate (0.3.9) otherwise strips the region's national prefix after the
    // country code (`+55 11 9…` read with region US loses the `11`).
    let region: Option<country::Id> = if text.starts_with('+') {
        None
    } else {
        default_region.parse().ok()
    };
    let number = phonenumber::parse(region, &text).map_err(|_| bad())?;
    if !phonenumber::is_valid(&number) {
        return Err(bad());
    }
    Ok(number.format().mode(Mode::E164).to_string())
}

/// Is `region` an ISO 3166-1 alpha-2 code the phone metadata knows?
pub fn region(field: &str, raw: &str) -> Result<String, ApiError> {
    let code = raw.trim().to_ascii_uppercase();
    if code.len() == 2 && code.parse::<country::Id>().is_ok() {
        Ok(code)
    } else {
        Err(ApiError::invalid_field(
            field,
            format!("`{raw}` is not an ISO 3166-1 alpha-2 region code (e.g. US, BR, DE)."),
        ))
    }
}

pub const MAX_TAG_LEN: usize = 64;

/// A tag: trimmed, 1 to 64 characters, no control characters.
pub fn tag(field: &str, raw: &str) -> Result<String, ApiError> {
    let value = raw.trim();
    if value.is_empty()
        || value.chars().count() > MAX_TAG_LEN
        || value.chars().any(char::is_control)
    {
        return Err(ApiError::invalid_field(
            field,
            format!("Tags are 1 to {MAX_TAG_LEN} characters without control characters."),
        ));
    }
    Ok(value.to_owned())
}

/// A free identifier (external id, GA client id, anonymous id): trimmed, 1 to 200 characters.
pub fn identifier(field: &str, raw: &str) -> Result<String, ApiError> {
    let value = raw.trim();
    if value.is_empty() || value.len() > 200 || value.chars().any(char::is_control) {
        return Err(ApiError::invalid_field(
            field,
            format!("`{field}` values are 1 to 200 characters without control characters."),
        ));
    }
    Ok(value.to_owned())
}

/// `https://www.Example.com/about` or `Example.com` → `example.com`.
pub fn domain(field: &str, raw: &str) -> Result<String, ApiError> {
    let text = raw.trim();
    let host = if text.contains("://") {
        url::Url::parse(text)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
    } else {
        Some(text.split('/').next().unwrap_or_default().to_owned())
    };
    let host = host
        .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
        .map(|h| h.strip_prefix("www.").map(str::to_owned).unwrap_or(h))
        .filter(|h| {
            h.contains('.')
                && h.len() <= 253
                && h.split('.').all(|l| {
                    !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                })
        });
    host.ok_or_else(|| {
        ApiError::invalid_field(
            field,
            format!("`{text}` is not a domain (e.g. example.com)."),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_name_their_field() {
        assert_eq!(
            email("emails", " Ana@Example.COM").unwrap(),
            "ana@example.com"
        );
        let err = email("custom.work_email", "a b@example.com").unwrap_err();
        assert_eq!(err.details.unwrap()["field"], "custom.work_email");
    }

    #[test]
    fn phones_become_e164() {
        assert_eq!(phone("p", "(415) 555-2671", "US").unwrap(), "+14155552671");
        assert_eq!(
            phone("p", "+44 20 7946 0958", "US").unwrap(),
            "+442079460958"
        );
        assert_eq!(
            phone("p", "0044 20 7946 0958", "US").unwrap(),
            "+442079460958"
        );
        // Brazilian mobile written nationally, read with the workspace's region.
        assert_eq!(
            phone("p", "(11) 96123-4567", "BR").unwrap(),
            "+5511961234567"
        );
        assert_eq!(
            phone("p", "+55 11 96123-4567", "US").unwrap(),
            "+5511961234567"
        );
        for bad in ["", "12", "hello", "+1 555", "+999 1234567"] {
            assert!(phone("p", bad, "US").is_err(), "{bad}");
        }
    }

    #[test]
    fn regions_tags_domains() {
        assert_eq!(region("r", "br").unwrap(), "BR");
        assert!(region("r", "XX").is_err());
        assert!(region("r", "USA").is_err());
        assert_eq!(tag("t", "  VIP ").unwrap(), "VIP");
        assert!(tag("t", " ").is_err());
        assert!(tag("t", &"x".repeat(65)).is_err());
        assert_eq!(
            domain("d", "https://www.Example.com/about").unwrap(),
            "example.com"
        );
        assert_eq!(domain("d", "Acme.io").unwrap(), "acme.io");
        assert!(domain("d", "not a domain").is_err());
    }
}
