//! Encryption of secrets at rest (platform tokens, SMTP passwords, webhook secrets).
//!
//! AES-256-GCM with a random 96-bit nonce per value. The stored form is
//! `v1.` + base64url(nonce ‖ ciphertext ‖ tag). Callers pass a `context` (for example
//! `"smtp_password:ws_…"`) as associated data, so a ciphertext copied into another row or
//! another workspace fails to open instead of decrypting there.

use std::io::Write;
use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rand::RngCore;

const VERSION: &str = "v1.";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretBoxError {
    #[error("the key must be base64 of exactly 32 bytes")]
    BadKey,
    #[error("the sealed value is malformed")]
    Malformed,
    #[error("the sealed value does not open with this key and context")]
    Rejected,
}

#[derive(Clone)]
pub struct SecretBox {
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox([REDACTED])")
    }
}

impl SecretBox {
    pub fn from_bytes(key: &[u8; 32]) -> Self {
        Self {
            cipher: Aes256Gcm::new(key.into()),
        }
    }

    pub fn from_base64(text: &str) -> Result<Self, SecretBoxError> {
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|_| SecretBoxError::BadKey)?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| SecretBoxError::BadKey)?;
        Ok(Self::from_bytes(&key))
    }

    /// Reads the key file at `path`, creating it (mode 0600) with a fresh random key when it is
    /// missing. Returns the box and whether the file was created.
    pub fn load_or_create_key_file(path: &Path) -> anyhow::Result<(Self, bool)> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let sb = Self::from_base64(&text)
                    .with_context(|| format!("secret key file {} is invalid", path.display()))?;
                Ok((sb, false))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                rand::rngs::OsRng.fill_bytes(&mut key);
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create_new(true);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::OpenOptionsExt;
                    options.mode(0o600);
                }
                let mut file = options
                    .open(path)
                    .with_context(|| format!("cannot create secret key file {}", path.display()))?;
                file.write_all(STANDARD.encode(key).as_bytes())?;
                file.sync_all()?;
                Ok((Self::from_bytes(&key), true))
            }
            Err(e) => {
                Err(e).with_context(|| format!("cannot read secret key file {}", path.display()))
            }
        }
    }

    pub fn seal(&self, plaintext: &[u8], context: &str) -> String {
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let sealed = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: context.as_bytes(),
                },
            )
            .expect("AES-GCM encryption cannot fail for in-memory buffers");
        let mut out = Vec::with_capacity(12 + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        format!("{VERSION}{}", URL_SAFE_NO_PAD.encode(out))
    }

    pub fn open(&self, sealed: &str, context: &str) -> Result<Vec<u8>, SecretBoxError> {
        let body = sealed
            .strip_prefix(VERSION)
            .ok_or(SecretBoxError::Malformed)?;
        let bytes = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| SecretBoxError::Malformed)?;
        if bytes.len() < 12 + 16 {
            return Err(SecretBoxError::Malformed);
        }
        let (nonce, ciphertext) = bytes.split_at(12);
        self.cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| SecretBoxError::Rejected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_and_opens_bound_to_context() {
        let sb = SecretBox::from_bytes(&[7u8; 32]);
        let sealed = sb.seal(b"EAAB-token", "meta:ws_1");
        assert!(sealed.starts_with("v1."));
        assert!(!sealed.contains("EAAB"));
        assert_eq!(sb.open(&sealed, "meta:ws_1").unwrap(), b"EAAB-token");
        assert_eq!(sb.open(&sealed, "meta:ws_2"), Err(SecretBoxError::Rejected));
        let other = SecretBox::from_bytes(&[8u8; 32]);
        assert_eq!(
            other.open(&sealed, "meta:ws_1"),
            Err(SecretBoxError::Rejected)
        );
        assert_eq!(sb.open("v1.abc", "x"), Err(SecretBoxError::Malformed));
        assert_eq!(sb.open("nope", "x"), Err(SecretBoxError::Malformed));
        // Two seals of one value differ (fresh nonce).
        assert_ne!(sb.seal(b"x", "c"), sb.seal(b"x", "c"));
    }

    #[test]
    fn key_file_is_created_private_and_reused() {
        let dir = std::env::temp_dir().join(format!("sy-key-{}", uuid::Uuid::now_v7()));
        let path = dir.join("secret.key");
        let (a, created) = SecretBox::load_or_create_key_file(&path).unwrap();
        assert!(created);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (b, created) = SecretBox::load_or_create_key_file(&path).unwrap();
        assert!(!created);
        assert_eq!(b.open(&a.seal(b"s", "c"), "c").unwrap(), b"s");
        assert!(matches!(
            SecretBox::from_base64("c2hvcnQ="),
            Err(SecretBoxError::BadKey)
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
