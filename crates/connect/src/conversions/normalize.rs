//! Normalization and hashing of user data, as each platform specifies it (PROTOCOLS.md §4 for
//! Meta, §11 "Format user data" for Google Data Manager). Every hashed value is SHA-256 of the
//! normalized UTF-8 string, lowercase hex. A function returns `None` when nothing usable is
//! left after normalizing, so an empty string is never hashed and sent.

use sha2::{Digest, Sha256};

/// SHA-256 of `text`, lowercase hex.
pub fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// True for a value that is already a SHA-256 hex digest (the Meta SDK leaves those untouched,
/// so a caller may hand over pre-hashed identifiers).
pub fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn hashed(normalized: String) -> Option<String> {
    if normalized.is_empty() {
        None
    } else if is_sha256_hex(&normalized) {
        Some(normalized)
    } else {
        Some(sha256_hex(&normalized))
    }
}

/// Digits of a phone number with its country code: `+`, spaces, `-`, `()`, `.` and a leading
/// international `00` removed. Numbers reach us in E.164 from the CRM; a number without a
/// country code cannot be completed here and is sent as it is.
fn phone_digits(raw: &str) -> String {
    let trimmed = raw.trim();
    let digits: String = trimmed.chars().filter(char::is_ascii_digit).collect();
    if !trimmed.starts_with('+') && digits.starts_with("00") {
        digits[2..].to_owned()
    } else {
        digits
    }
}

/// Meta Conversions API (`user_data`).
pub mod meta {
    use super::{hashed, phone_digits};

    /// `em`: trimmed, lowercase.
    pub fn email(raw: &str) -> Option<String> {
        let normalized = raw.trim().to_lowercase();
        if super::is_sha256_hex(&normalized) {
            return Some(normalized);
        }
        normalized.contains('@').then_some(normalized)
    }

    /// `ph`: digits only, with the country code, no `+` and no leading `00`.
    pub fn phone(raw: &str) -> Option<String> {
        let digits = phone_digits(raw);
        (digits.len() >= 7).then_some(digits)
    }

    /// `fn`, `ln`: lowercase, trimmed, without punctuation (letters of any script are kept).
    pub fn name(raw: &str) -> Option<String> {
        let normalized: String = raw
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || c.is_whitespace())
            .collect();
        Some(normalized.trim().to_owned()).filter(|s| !s.is_empty())
    }

    /// `ct`: lowercase letters only (digits, spaces, `.`, `-`, `()` and other punctuation go).
    pub fn city(raw: &str) -> Option<String> {
        let normalized: String = raw
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphabetic())
            .collect();
        Some(normalized).filter(|s| !s.is_empty())
    }

    /// `st`: lowercase without punctuation or spaces (a US state is its 2-letter code).
    pub fn state(raw: &str) -> Option<String> {
        city(raw)
    }

    /// `zp`: lowercase without spaces; a US ZIP+4 is cut to its first five digits.
    pub fn zip(raw: &str, country: Option<&str>) -> Option<String> {
        let normalized: String = raw
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        let is_us = country.is_some_and(|c| c.trim().eq_ignore_ascii_case("us"));
        let normalized = if is_us {
            normalized
                .split('-')
                .next()
                .unwrap_or_default()
                .chars()
                .take(5)
                .collect()
        } else {
            normalized
        };
        Some(normalized).filter(|s| !s.is_empty())
    }

    /// `country`: ISO 3166-1 alpha-2, lowercase.
    pub fn country(raw: &str) -> Option<String> {
        let normalized = raw.trim().to_lowercase();
        (normalized.len() == 2 && normalized.chars().all(|c| c.is_ascii_lowercase()))
            .then_some(normalized)
    }

    /// `ge`: `f` or `m`.
    pub fn gender(raw: &str) -> Option<String> {
        match raw.trim().to_lowercase().chars().next() {
            Some('f') => Some("f".to_owned()),
            Some('m') => Some("m".to_owned()),
            _ => None,
        }
    }

    /// `db`: `YYYYMMDD` from `YYYY-MM-DD` (or already `YYYYMMDD`).
    pub fn date_of_birth(raw: &str) -> Option<String> {
        let digits: String = raw.trim().chars().filter(char::is_ascii_digit).collect();
        (digits.len() == 8).then_some(digits)
    }

    /// `external_id`: trimmed; hashed the same way the pixel hashes it.
    pub fn external_id(raw: &str) -> Option<String> {
        Some(raw.trim().to_owned()).filter(|s| !s.is_empty())
    }

    /// Normalizes with `normalize`, then hashes (a value already hashed is kept).
    pub fn hash(raw: &str, normalize: impl Fn(&str) -> Option<String>) -> Option<String> {
        normalize(raw).and_then(hashed)
    }
}

/// Google Data Manager (`userData.userIdentifiers[]`).
pub mod google {
    use super::{hashed, phone_digits};

    /// `emailAddress`: lowercase, every whitespace removed; for `gmail.com` and
    /// `googlemail.com` every `.` before the `@` removed too.
    pub fn email(raw: &str) -> Option<String> {
        let normalized: String = raw
            .to_lowercase()
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        if super::is_sha256_hex(&normalized) {
            return Some(normalized);
        }
        let (local, domain) = normalized.rsplit_once('@')?;
        if local.is_empty() || domain.is_empty() {
            return None;
        }
        if domain == "gmail.com" || domain == "googlemail.com" {
            Some(format!("{}@{domain}", local.replace('.', "")))
        } else {
            Some(normalized)
        }
    }

    /// `phoneNumber`: E.164, `+` then the country code and digits.
    pub fn phone(raw: &str) -> Option<String> {
        let digits = phone_digits(raw);
        (digits.len() >= 7).then(|| format!("+{digits}"))
    }

    /// `givenName` / `familyName`: lowercase, trimmed, no punctuation, and common prefixes
    /// (Mr., Mrs., Ms., Dr.) and suffixes (Jr., Sr., II, III) dropped.
    pub fn name(raw: &str) -> Option<String> {
        const AFFIXES: &[&str] = &["mr", "mrs", "ms", "miss", "dr", "jr", "sr", "ii", "iii"];
        let lowered = raw.trim().to_lowercase();
        let words: Vec<String> = lowered
            .split_whitespace()
            .map(|w| {
                w.chars()
                    .filter(|c| c.is_alphanumeric())
                    .collect::<String>()
            })
            .filter(|w| !w.is_empty())
            .collect();
        let kept: Vec<&str> = words
            .iter()
            .map(String::as_str)
            .filter(|w| words.len() == 1 || !AFFIXES.contains(w))
            .collect();
        Some(kept.join(" ")).filter(|s| !s.is_empty())
    }

    /// `regionCode`: ISO 3166-1 alpha-2, trimmed, uppercase; **not hashed**.
    pub fn region_code(raw: &str) -> Option<String> {
        let code = raw.trim().to_uppercase();
        (code.len() == 2 && code.chars().all(|c| c.is_ascii_uppercase())).then_some(code)
    }

    /// `postalCode`: trimmed; US codes keep 5 digits or 5+4; **not hashed**.
    pub fn postal_code(raw: &str) -> Option<String> {
        Some(raw.trim().to_owned()).filter(|s| !s.is_empty())
    }

    /// Normalizes with `normalize`, then hashes (a value already hashed is kept).
    pub fn hash(raw: &str, normalize: impl Fn(&str) -> Option<String>) -> Option<String> {
        normalize(raw).and_then(hashed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PROTOCOLS.md §4 prints some vectors shortened to `prefix…suffix`; the full digests were
    /// recomputed and must agree with the printed ends.
    fn check(digest: Option<String>, prefix: &str, suffix: &str, full: &str) {
        let digest = digest.expect("a hash");
        assert!(
            digest.starts_with(prefix) && digest.ends_with(suffix),
            "{digest}"
        );
        assert_eq!(digest, full);
    }

    #[test]
    fn meta_vectors_from_protocols() {
        check(
            meta::hash("  Person@Example.com ", meta::email),
            "542d2401",
            "3083345",
            "542d240129883c019e106e3b1b2d3f3cb3537c43c425364de8e951d5a3083345",
        );
        assert_eq!(
            meta::phone("+44 844 412 4653").as_deref(),
            Some("448444124653")
        );
        assert_eq!(
            meta::phone("0044 (844) 412-4653").as_deref(),
            Some("448444124653")
        );
        check(
            meta::hash("+44 844 412 4653", meta::phone),
            "dc008fda",
            "48546383",
            "dc008fda46e2e64002cf2f82a4906236282d431c4f75e5b60bfe79fc48546383",
        );
        check(
            meta::hash(" John ", meta::name),
            "96d9632f",
            "607a",
            "96d9632f363564cc3032521409cf22a852f2032eec099ed5967c0d000cec607a",
        );
        check(
            meta::hash("Female", meta::gender),
            "252f10c8",
            "f111",
            "252f10c83610ebca1a059c0bae8255eba2f95be4d1d7bcfa89d7248a82d9f111",
        );
        check(
            meta::hash("m", meta::gender),
            "62c66a7a",
            "3c5a",
            "62c66a7a5dd70c3146618063c344e531e6d4b59e379808443ce962b3abd63c5a",
        );
        check(
            meta::hash("1990-01-02", meta::date_of_birth),
            "19bb8a16",
            "a085",
            "19bb8a164e99b8549f5f5c9e810115de44d02402f68aefe2df61b4fddacfa085",
        );
        check(
            meta::hash("Paris 75", meta::city),
            "1670f2e4",
            "3c57",
            "1670f2e42fefa5044d59a65349e47c566009488fc57d7b4376dd5787b59e3c57",
        );
        check(
            meta::hash("CA", meta::state),
            "69590970",
            "1126",
            "6959097001d10501ac7d54c0bdb8db61420f658f2922cc26e46d536119a31126",
        );
        check(
            meta::hash(" US", meta::country),
            "79adb2a2",
            "4621",
            "79adb2a2fce5c6ba215fe5f27f532d4e7edbac4b6a5e09e1ef3a08084a904621",
        );
    }

    #[test]
    fn meta_field_rules() {
        assert_eq!(
            meta::city("St. Louis-Park (MO)").as_deref(),
            Some("stlouisparkmo")
        );
        assert_eq!(
            meta::zip("94107-1234", Some("US")).as_deref(),
            Some("94107")
        );
        assert_eq!(
            meta::zip("SW1A 1AA", Some("GB")).as_deref(),
            Some("sw1a1aa")
        );
        assert_eq!(meta::name("O'Brien").as_deref(), Some("obrien"));
        assert_eq!(meta::name("Zoë").as_deref(), Some("zoë"));
        assert_eq!(meta::country("USA"), None);
        assert_eq!(meta::gender("x"), None);
        assert_eq!(meta::email("not-an-email"), None);
        assert_eq!(meta::phone("12"), None);
        // Already hashed values pass through untouched.
        let digest = sha256_hex("person@example.com");
        assert_eq!(
            meta::hash(&digest.to_uppercase(), meta::email),
            Some(digest)
        );
    }

    #[test]
    fn google_vectors_from_protocols() {
        assert_eq!(
            google::hash("Dana@Example.com", google::email).as_deref(),
            Some("07e2f1394b0ea80e2adca010ea8318df697001a005ba7452720edda4b0ce57b3")
        );
        assert_eq!(
            google::phone("+1 (800) 555-0100").as_deref(),
            Some("+18005550100")
        );
        assert_eq!(
            google::hash("+1 800 555 0100", google::phone).as_deref(),
            Some("fb4f73a6ec5fdb7077d564cdd22c3554b43ce49168550c3b12c547b78c517b30")
        );
        // The same bytes in Base64, as the guide prints them.
        use base64::Engine;
        let b64 = |hex_digest: &str| {
            base64::engine::general_purpose::STANDARD.encode(hex::decode(hex_digest).expect("hex"))
        };
        assert_eq!(
            b64("07e2f1394b0ea80e2adca010ea8318df697001a005ba7452720edda4b0ce57b3"),
            "B+LxOUsOqA4q3KAQ6oMY32lwAaAFunRScg7dpLDOV7M="
        );
        assert_eq!(
            b64("fb4f73a6ec5fdb7077d564cdd22c3554b43ce49168550c3b12c547b78c517b30"),
            "+09zpuxf23B31WTN0iw1VLQ85JFoVQw7EsVHt4xRezA="
        );
    }

    #[test]
    fn google_field_rules() {
        assert_eq!(
            google::email(" Jane.Doe @GoogleMail.com").as_deref(),
            Some("janedoe@googlemail.com")
        );
        assert_eq!(
            google::email("jane.doe@example.com").as_deref(),
            Some("jane.doe@example.com")
        );
        assert_eq!(google::name(" Mrs. Jane ").as_deref(), Some("jane"));
        assert_eq!(google::name("Smith Jr.").as_deref(), Some("smith"));
        assert_eq!(google::region_code(" fr ").as_deref(), Some("FR"));
        assert_eq!(google::postal_code(" 94107 ").as_deref(), Some("94107"));
        // Meta drops the `+`, Google keeps it: the same number hashes differently.
        assert_ne!(
            meta::hash("+18005550100", meta::phone),
            google::hash("+18005550100", google::phone)
        );
    }
}
