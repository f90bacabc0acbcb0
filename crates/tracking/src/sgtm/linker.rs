//! The `_gl` cross-domain linker: `1*<fingerprint>*<name>*<value>*<name>*<value>…`.
//!
//! Google documents no format; this follows analytics-debugger/google-tag-linker
//! (PROTOCOLS.md §2). Values are standard base64 of the cookie value with `=` padding written
//! as `.`; `_ga`/`_ga_<ID>` values have lost their `GA1.1.`/`GS1.1.` prefix before encoding.
//! The fingerprint binds a link to one browser and one minute: CRC-32 over
//! `userAgent*tzOffsetMinutes*language*floor(nowMs/60000)*<name*value pairs>`, in base36.

use platform::Timestamp;

use crate::encoding::decode_base64_text;
use crate::error::ParseError;

/// The only linker version seen in the wild.
pub const LINKER_VERSION: &str = "1";

/// A parsed `_gl` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Linker {
    /// Base36 CRC-32, as sent.
    pub fingerprint: String,
    pub entries: Vec<LinkerEntry>,
}

/// One carried cookie, name and value as they appear in the linker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkerEntry {
    /// `_ga`, `_ga_<ID>`, `_gcl_aw`, `_gcl_dc`, `_gcl_gb`, `_gcl_gf`, `_gcl_ha`, `_fplc`.
    pub name: String,
    /// Base64 with `.` for padding, exactly as in the link (the fingerprint covers this form).
    pub encoded: String,
}

impl LinkerEntry {
    /// The cookie value (for `_ga`/`_ga_<ID>`, without its `GA1.1.`/`GS1.1.` prefix); `None` if
    /// the encoded form is not base64 of UTF-8 text.
    pub fn value(&self) -> Option<String> {
        decode_base64_text(&self.encoded.replace('.', "="))
    }
}

/// The browser facts the fingerprint is computed over; all are what the *browser* reports
/// (`navigator.userAgent`, `Date#getTimezoneOffset()` — minutes, positive west of UTC —
/// and `navigator.language`), which a server sees only if the page sends them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkerBrowser<'a> {
    pub user_agent: &'a str,
    pub timezone_offset_minutes: i32,
    pub language: &'a str,
}

impl Linker {
    /// Parses the value of a `_gl` parameter (already percent-decoded).
    pub fn parse(value: &str) -> Result<Self, ParseError> {
        let invalid = |reason: &str| ParseError::invalid("_gl", None, reason);
        let mut parts = value.trim().split('*');
        if parts.next() != Some(LINKER_VERSION) {
            return Err(invalid("unsupported linker version (expected `1*…`)"));
        }
        let fingerprint = parts
            .next()
            .filter(|f| !f.is_empty())
            .ok_or_else(|| invalid("missing fingerprint"))?
            .to_owned();
        let rest: Vec<&str> = parts.collect();
        if !rest.len().is_multiple_of(2) {
            return Err(invalid("a cookie name without a value"));
        }
        let entries = rest
            .chunks_exact(2)
            .map(|pair| match pair {
                [name, encoded] if !name.is_empty() => Ok(LinkerEntry {
                    name: (*name).to_owned(),
                    encoded: (*encoded).to_owned(),
                }),
                _ => Err(invalid("an empty cookie name")),
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            fingerprint,
            entries,
        })
    }

    /// Finds `_gl` in a URL's query string or fragment (`?_gl=…` or `#_gl=…`) and parses it.
    pub fn from_url(url: &str) -> Option<Result<Self, ParseError>> {
        let (before_fragment, fragment) = url.split_once('#').unwrap_or((url, ""));
        let query = before_fragment.split_once('?').map_or("", |(_, q)| q);
        [query, fragment].into_iter().find_map(|part| {
            form_urlencoded::parse(part.as_bytes())
                .find(|(key, _)| key == "_gl")
                .map(|(_, value)| Self::parse(&value))
        })
    }

    /// The decoded value of the cookie `name`, if the link carries it.
    pub fn get(&self, name: &str) -> Option<String> {
        self.entries
            .iter()
            .find(|e| e.name == name)
            .and_then(LinkerEntry::value)
    }

    /// The fingerprint this link would have if made by `browser` during `minute`
    /// (`floor(unix_ms / 60000)`).
    pub fn fingerprint_at(&self, browser: &LinkerBrowser<'_>, minute: i64) -> String {
        let pairs: Vec<&str> = self
            .entries
            .iter()
            .flat_map(|e| [e.name.as_str(), e.encoded.as_str()])
            .collect();
        fingerprint(browser, minute, &pairs.join("*"))
    }

    /// Whether the fingerprint matches `browser` for a minute from `max_age_minutes` before
    /// `now` to one after it (one minute of clock skew either way). How much age gtag itself
    /// tolerates is UNCONFIRMED; a couple of minutes is what a click-through takes.
    pub fn verify(
        &self,
        browser: &LinkerBrowser<'_>,
        now: Timestamp,
        max_age_minutes: u32,
    ) -> bool {
        let minute = now.as_datetime().timestamp_millis().div_euclid(60_000);
        (minute - i64::from(max_age_minutes)..=minute + 1)
            .any(|m| self.fingerprint_at(browser, m) == self.fingerprint)
    }
}

/// CRC-32 (zlib's) in base36 over `ua*tz*language*minute*pairs`.
///
/// The reference implementation feeds `charCodeAt(i) & 0xff` of each UTF-16 unit to the CRC,
/// not UTF-8 bytes; we do the same so non-ASCII user agents or languages still match.
pub fn fingerprint(browser: &LinkerBrowser<'_>, minute: i64, pairs: &str) -> String {
    let text = format!(
        "{}*{}*{}*{}*{}",
        browser.user_agent, browser.timezone_offset_minutes, browser.language, minute, pairs
    );
    // Truncation to the low byte is the point: it is what the JavaScript does.
    let bytes: Vec<u8> = text
        .encode_utf16()
        .map(|unit| (unit & 0xff) as u8)
        .collect();
    base36(crc32fast::hash(&bytes))
}

fn base36(mut n: u32) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.iter().rev().map(|&b| char::from(b)).collect()
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;

    use super::*;

    const UA: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36";
    /// Made by a browser with `UA`, offset -60 (CET), `en-US`, at 2024-11-11T11:29:27.890Z
    /// (minute 28855409). The fingerprint was computed independently with Python's
    /// `zlib.crc32`.
    const GL: &str = "1*1gakcm9*_ga*MTM2MDM4NDg1MS4xNjYxODIxMjQy*_ga_8XK2T5PQ1M*MTczMTMyNDAwMC41LjEuMTczMTMyNDU2Ny4wLjAuMA..";

    fn browser() -> LinkerBrowser<'static> {
        LinkerBrowser {
            user_agent: UA,
            timezone_offset_minutes: -60,
            language: "en-US",
        }
    }

    fn at(text: &str) -> Timestamp {
        Timestamp::from(DateTime::parse_from_rfc3339(text).unwrap().to_utc())
    }

    #[test]
    fn decodes_the_documented_ga_value() {
        let linker = Linker::parse(GL).unwrap();
        assert_eq!(linker.fingerprint, "1gakcm9");
        assert_eq!(linker.entries[0].encoded, "MTM2MDM4NDg1MS4xNjYxODIxMjQy");
        assert_eq!(linker.get("_ga").as_deref(), Some("1360384851.1661821242"));
        assert_eq!(
            linker.get("_ga_8XK2T5PQ1M").as_deref(),
            Some("1731324000.5.1.1731324567.0.0.0"),
            "`.` padding decodes"
        );
        assert_eq!(linker.get("_gcl_aw"), None);
    }

    #[test]
    fn fingerprint_matches_the_reference_crc() {
        let linker = Linker::parse(GL).unwrap();
        assert_eq!(linker.fingerprint_at(&browser(), 28_855_409), "1gakcm9");
        assert!(linker.verify(&browser(), at("2024-11-11T11:29:59Z"), 2));
        assert!(linker.verify(&browser(), at("2024-11-11T11:31:10Z"), 2));
        assert!(
            !linker.verify(&browser(), at("2024-11-11T11:32:10Z"), 2),
            "too old"
        );
        assert!(
            linker.verify(&browser(), at("2024-11-11T11:28:30Z"), 0),
            "skew"
        );
        let other = LinkerBrowser {
            language: "de-DE",
            ..browser()
        };
        assert!(!linker.verify(&other, at("2024-11-11T11:29:59Z"), 2));
        // The JavaScript's low-byte-of-UTF-16 input, computed with Python as well.
        let odd = LinkerBrowser {
            user_agent: "Mozïlla",
            timezone_offset_minutes: 0,
            language: "fr-FR",
        };
        assert_eq!(fingerprint(&odd, 28_855_409, ""), "1s0q2xk");
    }

    #[test]
    fn found_in_query_or_fragment() {
        let url = format!("https://shop.example.com/landing?utm_source=x&_gl={GL}#top");
        assert_eq!(
            Linker::from_url(&url).unwrap().unwrap().fingerprint,
            "1gakcm9"
        );
        let url = format!(
            "https://shop.example.com/landing#_gl={}",
            GL.replace('*', "%2A")
        );
        assert_eq!(Linker::from_url(&url).unwrap().unwrap().entries.len(), 2);
        assert!(Linker::from_url("https://shop.example.com/?a=1#b").is_none());
    }

    #[test]
    fn malformed_links_are_errors() {
        for bad in ["", "2*abc*_ga*x", "1", "1**_ga*x", "1*abc*_ga", "1*abc**x"] {
            let err = Linker::parse(bad).unwrap_err();
            assert_eq!(
                (err.code(), err.parameter()),
                ("invalid_parameter", Some("_gl")),
                "{bad}"
            );
        }
        let linker = Linker::parse("1*abc*_ga*!!!").unwrap();
        assert_eq!(linker.get("_ga"), None, "undecodable value, not a panic");
        assert_eq!(Linker::parse("1*abc").unwrap().entries, []);
    }

    #[test]
    fn base36_edges() {
        assert_eq!(base36(0), "0");
        assert_eq!(base36(35), "z");
        assert_eq!(base36(36), "10");
        assert_eq!(base36(u32::MAX), "1z141z3");
    }
}
