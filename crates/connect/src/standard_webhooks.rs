//! Standard Webhooks (standardwebhooks.com, the scheme Svix uses), symmetric flavour: signing
//! for what we send and verification for what we receive.
//!
//! - Secrets are `whsec_` + base64 of the key bytes; the key is the decoded part.
//! - The signed content is `"{webhook-id}.{webhook-timestamp}.{raw body}"`; a signature is
//!   `v1,` + base64 of its HMAC-SHA256.
//! - `webhook-signature` is a space-separated list: during a secret rotation one signature per
//!   secret is sent, and a receiver accepts the message when any `v1` entry matches one of its
//!   secrets (compared in constant time).
//! - Receivers refuse timestamps more than [`TOLERANCE`] away from their clock (replays).

use std::fmt;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

pub const HEADER_ID: &str = "webhook-id";
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
pub const HEADER_SIGNATURE: &str = "webhook-signature";
/// The secret prefix of the symmetric scheme.
pub const SECRET_PREFIX: &str = "whsec_";
/// How far a timestamp may be from the receiver's clock, either way.
pub const TOLERANCE: Duration = Duration::from_secs(5 * 60);
/// Key sizes accepted for secrets we are handed (the spec asks for 24 to 64 bytes).
pub const MIN_KEY_BYTES: usize = 24;
pub const MAX_KEY_BYTES: usize = 64;
/// Key size of the secrets we generate.
pub const GENERATED_KEY_BYTES: usize = 32;

type HmacSha256 = Hmac<Sha256>;

/// A symmetric signing secret. Its `Debug` never shows the key; [`Secret::expose`] gives the
/// `whsec_…` text, for the one response that hands it out.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    key: Vec<u8>,
}

/// Why a secret's text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("the secret is not base64 after the `whsec_` prefix")]
    NotBase64,
    #[error("the secret's key must be {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes")]
    Length,
    #[error("the secret is empty")]
    Empty,
}

impl Secret {
    /// A new random secret of [`GENERATED_KEY_BYTES`].
    pub fn generate() -> Secret {
        let mut key = vec![0u8; GENERATED_KEY_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut key);
        Secret { key }
    }

    pub fn from_bytes(key: impl Into<Vec<u8>>) -> Secret {
        Secret { key: key.into() }
    }

    /// Reads `whsec_<base64>` (the prefix is optional, as the reference libraries allow). Any
    /// non-empty key is accepted; [`Secret::parse_strict`] also checks the spec's key size.
    pub fn parse(text: &str) -> Result<Secret, SecretError> {
        let encoded = text.trim();
        let encoded = encoded.strip_prefix(SECRET_PREFIX).unwrap_or(encoded);
        let key = STANDARD
            .decode(encoded)
            .map_err(|_| SecretError::NotBase64)?;
        if key.is_empty() {
            return Err(SecretError::Empty);
        }
        Ok(Secret { key })
    }

    /// [`Secret::parse`], and the key must be [`MIN_KEY_BYTES`] to [`MAX_KEY_BYTES`] long: for
    /// secrets a user chooses.
    pub fn parse_strict(text: &str) -> Result<Secret, SecretError> {
        let secret = Secret::parse(text)?;
        if !(MIN_KEY_BYTES..=MAX_KEY_BYTES).contains(&secret.key.len()) {
            return Err(SecretError::Length);
        }
        Ok(secret)
    }

    /// The `whsec_…` text.
    pub fn expose(&self) -> String {
        format!("{SECRET_PREFIX}{}", STANDARD.encode(&self.key))
    }

    fn mac(&self, id: &str, timestamp: &str, body: &[u8]) -> HmacSha256 {
        // HMAC takes keys of any length.
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC accepts any key length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// This secret's `v1,<base64>` signature of one message.
    pub fn signature(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mac = self.mac(id, &timestamp.to_string(), body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([REDACTED])")
    }
}

/// The `webhook-signature` value: one `v1,…` signature per secret, space-separated, in the
/// order given (current secret first during a rotation).
pub fn sign<'a>(
    secrets: impl IntoIterator<Item = &'a Secret>,
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    secrets
        .into_iter()
        .map(|s| s.signature(id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Why a received message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("`webhook-id` must be non-empty and contain no `.`")]
    InvalidId,
    #[error("`webhook-timestamp` is not an integer number of seconds")]
    InvalidTimestamp,
    #[error("`webhook-timestamp` is too old")]
    TimestampTooOld,
    #[error("`webhook-timestamp` is too far in the future")]
    TimestampTooNew,
    #[error("no signature in `webhook-signature` matches")]
    NoMatchingSignature,
}

/// Checks a received message against the receiver's secrets at `now` (unix seconds): the
/// timestamp within [`TOLERANCE`], and some `v1` signature made with one of the secrets.
pub fn verify(
    secrets: &[Secret],
    id: &str,
    timestamp: &str,
    signature_header: &str,
    body: &[u8],
    now: i64,
) -> Result<(), VerifyError> {
    if id.is_empty() || id.contains('.') {
        return Err(VerifyError::InvalidId);
    }
    let sent: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| VerifyError::InvalidTimestamp)?;
    let tolerance = TOLERANCE.as_secs() as i64;
    if sent < now.saturating_sub(tolerance) {
        return Err(VerifyError::TimestampTooOld);
    }
    if sent > now.saturating_add(tolerance) {
        return Err(VerifyError::TimestampTooNew);
    }
    let candidates: Vec<Vec<u8>> = signature_header
        .split_ascii_whitespace()
        .filter_map(|entry| entry.strip_prefix("v1,"))
        .filter_map(|b64| STANDARD.decode(b64).ok())
        .collect();
    for secret in secrets {
        let mac = secret.mac(id, timestamp.trim(), body);
        // `verify_slice` compares in constant time.
        if candidates
            .iter()
            .any(|c| mac.clone().verify_slice(c).is_ok())
        {
            return Ok(());
        }
    }
    Err(VerifyError::NoMatchingSignature)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PROTOCOLS.md §8: the published Standard Webhooks / Svix vector.
    const V1: (&str, &str, i64, &str, &str) = (
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        r#"{"test": 2432232314}"#,
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    );
    /// PROTOCOLS.md §8: from the reference Rust library's tests.
    const V2: (&str, &str, i64, &str, &str) = (
        "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
        "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
        1649367553,
        r#"{"email":"test@example.com","username":"test_user"}"#,
        "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=",
    );

    #[test]
    fn signatures_match_the_protocol_vectors() {
        for (secret, id, ts, body, expected) in [V1, V2] {
            let secret = Secret::parse(secret).unwrap();
            assert_eq!(sign([&secret], id, ts, body.as_bytes()), expected);
            verify(
                &[secret],
                id,
                &ts.to_string(),
                expected,
                body.as_bytes(),
                ts,
            )
            .unwrap();
        }
    }

    #[test]
    fn several_secrets_give_several_signatures_and_each_verifies() {
        let a = Secret::parse(V1.0).unwrap();
        let b = Secret::parse(V2.0).unwrap();
        let header = sign([&a, &b], "msg_1", 1700000000, b"{}");
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], a.signature("msg_1", 1700000000, b"{}"));
        assert_eq!(parts[1], b.signature("msg_1", 1700000000, b"{}"));
        for secret in [a, b] {
            verify(&[secret], "msg_1", "1700000000", &header, b"{}", 1700000000).unwrap();
        }
        let other = Secret::generate();
        assert_eq!(
            verify(&[other], "msg_1", "1700000000", &header, b"{}", 1700000000),
            Err(VerifyError::NoMatchingSignature)
        );
    }

    #[test]
    fn verification_refuses_tampering_and_stale_timestamps() {
        let (secret, id, ts, body, sig) = V1;
        let secrets = [Secret::parse(secret).unwrap()];
        let ts_text = ts.to_string();
        assert_eq!(
            verify(&secrets, id, &ts_text, sig, b"{\"test\": 1}", ts),
            Err(VerifyError::NoMatchingSignature)
        );
        assert_eq!(
            verify(&secrets, "msg_other", &ts_text, sig, body.as_bytes(), ts),
            Err(VerifyError::NoMatchingSignature)
        );
        assert_eq!(
            verify(&secrets, id, &ts_text, sig, body.as_bytes(), ts + 301),
            Err(VerifyError::TimestampTooOld)
        );
        assert_eq!(
            verify(&secrets, id, &ts_text, sig, body.as_bytes(), ts - 301),
            Err(VerifyError::TimestampTooNew)
        );
        assert!(verify(&secrets, id, &ts_text, sig, body.as_bytes(), ts + 299).is_ok());
        assert_eq!(
            verify(&secrets, id, "soon", sig, body.as_bytes(), ts),
            Err(VerifyError::InvalidTimestamp)
        );
        // Other schemes and garbage next to a good signature do not hurt.
        let mixed = format!("v1a,AAAA v1,!!notbase64 {sig}");
        assert!(verify(&secrets, id, &ts_text, &mixed, body.as_bytes(), ts).is_ok());
    }

    #[test]
    fn secrets_round_trip_and_hide_in_debug() {
        let secret = Secret::generate();
        let text = secret.expose();
        assert!(text.starts_with("whsec_"));
        assert_eq!(Secret::parse_strict(&text).unwrap(), secret);
        assert_eq!(format!("{secret:?}"), "Secret([REDACTED])");
        assert_eq!(Secret::parse("whsec_***"), Err(SecretError::NotBase64));
        assert_eq!(Secret::parse("whsec_"), Err(SecretError::Empty));
        assert_eq!(
            Secret::parse_strict("whsec_c2hvcnQ="),
            Err(SecretError::Length)
        );
        // The prefix is optional on input.
        assert_eq!(
            Secret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap(),
            Secret::parse(V1.0).unwrap()
        );
    }
}
