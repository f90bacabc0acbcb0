//! Lenient base64, for the tokens trackers pass around.
//!
//! Preview headers, container-config strings, loader parameters and Basic credentials are
//! written by many hands: some drop the `=` padding, some use the URL-safe alphabet. Each
//! caller checks what the decoded bytes mean, so accepting both forms here costs nothing.

use base64::Engine;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

const LENIENT: GeneralPurposeConfig =
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
const STANDARD: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, LENIENT);
const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, LENIENT);

/// Standard or URL-safe base64, padded or not; `None` if it is neither.
pub(crate) fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    STANDARD
        .decode(text)
        .or_else(|_| URL_SAFE.decode(text))
        .ok()
}

/// Like [`decode_base64`], and the result must be UTF-8.
pub(crate) fn decode_base64_text(text: &str) -> Option<String> {
    decode_base64(text).and_then(|bytes| String::from_utf8(bytes).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_both_alphabets_with_or_without_padding() {
        assert_eq!(
            decode_base64_text("YWJjMTIzOg==").as_deref(),
            Some("abc123:")
        );
        assert_eq!(decode_base64_text("YWJjMTIzOg").as_deref(), Some("abc123:"));
        // 0xfb 0xff encodes to "-_8" URL-safe, "+/8" standard.
        assert_eq!(decode_base64("-_8"), Some(vec![0xfb, 0xff]));
        assert_eq!(decode_base64("+/8="), Some(vec![0xfb, 0xff]));
        assert_eq!(decode_base64("not base64!"), None);
        assert_eq!(decode_base64_text("//8="), None, "not UTF-8");
    }
}
