//! Webhook secrets at rest: XChaCha20-Poly1305 with the operator's `KAMIYO_ENCRYPTION_KEY`.
//!
//! A stored secret is either the plain secret (written before encryption was turned on)
//! or `enc:v1:` + standard base64 of a random 24-byte nonce followed by the ciphertext
//! and its 16-byte tag. A fixed label is the associated data, so a ciphertext made for
//! another purpose with the same key does not open here. Reading never guesses: an
//! encrypted value without a key, or one the key does not open, is an error, never a
//! secret to sign with.

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use thiserror::Error;

/// What marks an encrypted stored secret.
pub const ENCRYPTED_PREFIX: &str = "enc:v1:";
/// Bound to every ciphertext as associated data.
const ASSOCIATED_DATA: &[u8] = b"kamiyo-webhooks/webhook-secret/v1";
const NONCE_BYTES: usize = 24;
const TAG_BYTES: usize = 16;
pub const KEY_BYTES: usize = 32;

/// Why a stored secret cannot be read. No variant carries secret material.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SecretError {
    #[error("a webhook secret is stored encrypted, but KAMIYO_ENCRYPTION_KEY is not set")]
    NoKey,
    #[error(
        "a webhook secret does not decrypt with KAMIYO_ENCRYPTION_KEY: wrong key, or damaged data"
    )]
    WrongKey,
    #[error("a webhook secret is stored encrypted but is not valid enc:v1 data")]
    Malformed,
}

/// True when a stored secret is in the encrypted form.
pub fn is_encrypted(stored: &str) -> bool {
    stored.starts_with(ENCRYPTED_PREFIX)
}

/// A key able to seal and open secrets. Its `Debug` output never shows the key.
#[derive(Clone)]
pub struct SecretBox {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(<key>)")
    }
}

impl SecretBox {
    pub fn new(key: &[u8; KEY_BYTES]) -> SecretBox {
        SecretBox {
            cipher: XChaCha20Poly1305::new(key.into()),
        }
    }

    /// A key given as base64 (standard or URL-safe, padded or not) of exactly 32 bytes.
    /// The message never repeats the value.
    pub fn from_base64(text: &str) -> Result<SecretBox, String> {
        let text = text.trim();
        let bytes = [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
            .iter()
            .find_map(|engine| engine.decode(text).ok())
            .ok_or_else(|| {
                "is not base64; generate a key with `openssl rand -base64 32`".to_string()
            })?;
        let key: [u8; KEY_BYTES] = bytes.as_slice().try_into().map_err(|_| {
            format!(
                "must be base64 of exactly {KEY_BYTES} bytes (got {}); generate one with `openssl rand -base64 32`",
                bytes.len()
            )
        })?;
        Ok(SecretBox::new(&key))
    }

    /// `enc:v1:` + base64(nonce || ciphertext), with a fresh random nonce every time.
    pub fn seal(&self, secret: &str) -> String {
        let mut nonce = [0u8; NONCE_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let sealed = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: secret.as_bytes(),
                    aad: ASSOCIATED_DATA,
                },
            )
            .expect("XChaCha20-Poly1305 encrypts any message that fits in memory");
        let mut raw = Vec::with_capacity(NONCE_BYTES + sealed.len());
        raw.extend_from_slice(&nonce);
        raw.extend_from_slice(&sealed);
        format!("{ENCRYPTED_PREFIX}{}", STANDARD.encode(raw))
    }

    /// The secret inside an `enc:v1:` value.
    pub fn open(&self, stored: &str) -> Result<String, SecretError> {
        let encoded = stored
            .strip_prefix(ENCRYPTED_PREFIX)
            .ok_or(SecretError::Malformed)?;
        let raw = STANDARD
            .decode(encoded)
            .map_err(|_| SecretError::Malformed)?;
        if raw.len() < NONCE_BYTES + TAG_BYTES {
            return Err(SecretError::Malformed);
        }
        let (nonce, sealed) = raw.split_at(NONCE_BYTES);
        let plain = self
            .cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: ASSOCIATED_DATA,
                },
            )
            .map_err(|_| SecretError::WrongKey)?;
        String::from_utf8(plain).map_err(|_| SecretError::Malformed)
    }
}

/// How a store writes and reads the secret column: sealed with the key when one is
/// configured, plain otherwise; plain values always read as they are.
#[derive(Debug, Clone, Default)]
pub struct SecretCodec {
    key: Option<SecretBox>,
}

impl SecretCodec {
    /// No key: secrets are written in plain text.
    pub fn plaintext() -> SecretCodec {
        SecretCodec { key: None }
    }

    pub fn new(key: Option<SecretBox>) -> SecretCodec {
        SecretCodec { key }
    }

    pub fn encrypts(&self) -> bool {
        self.key.is_some()
    }

    /// The text to store for `secret`.
    pub fn encode(&self, secret: &str) -> String {
        match &self.key {
            Some(key) => key.seal(secret),
            None => secret.to_string(),
        }
    }

    /// The secret a stored text holds.
    pub fn decode(&self, stored: &str) -> Result<String, SecretError> {
        if !is_encrypted(stored) {
            return Ok(stored.to_string());
        }
        self.key.as_ref().ok_or(SecretError::NoKey)?.open(stored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> SecretBox {
        SecretBox::new(&[byte; KEY_BYTES])
    }

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw9m0K3hyZ5g4=";

    #[test]
    fn a_sealed_secret_opens_with_its_key_and_hides_the_secret() {
        let k = key(7);
        let sealed = k.seal(SECRET);
        assert!(sealed.starts_with(ENCRYPTED_PREFIX));
        assert!(!sealed.contains("MfKQ9r8G"));
        assert_eq!(k.open(&sealed).unwrap(), SECRET);
        // A fresh nonce each time: the same secret never seals to the same text.
        assert_ne!(k.seal(SECRET), sealed);
    }

    #[test]
    fn a_wrong_key_missing_key_or_damaged_value_is_an_error() {
        let sealed = key(1).seal(SECRET);
        assert_eq!(key(2).open(&sealed), Err(SecretError::WrongKey));
        assert_eq!(
            SecretCodec::plaintext().decode(&sealed),
            Err(SecretError::NoKey)
        );
        let mut flipped = sealed.clone().into_bytes();
        let last = flipped.len() - 3;
        flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).unwrap();
        assert!(key(1).open(&flipped).is_err());
        assert_eq!(key(1).open("enc:v1:!!!"), Err(SecretError::Malformed));
        assert_eq!(key(1).open("enc:v1:AAAA"), Err(SecretError::Malformed));
        for e in [SecretError::NoKey, SecretError::WrongKey] {
            assert!(e.to_string().contains("KAMIYO_ENCRYPTION_KEY"));
        }
    }

    #[test]
    fn plaintext_values_read_as_they_are_with_or_without_a_key() {
        let codec = SecretCodec::new(Some(key(3)));
        assert_eq!(codec.decode(SECRET).unwrap(), SECRET);
        assert_eq!(SecretCodec::plaintext().decode(SECRET).unwrap(), SECRET);
        assert_eq!(SecretCodec::plaintext().encode(SECRET), SECRET);
        let stored = codec.encode(SECRET);
        assert!(is_encrypted(&stored));
        assert_eq!(codec.decode(&stored).unwrap(), SECRET);
    }

    #[test]
    fn keys_must_be_base64_of_32_bytes() {
        let good = STANDARD.encode([9u8; 32]);
        assert!(SecretBox::from_base64(&good).is_ok());
        assert!(SecretBox::from_base64(&URL_SAFE_NO_PAD.encode([250u8; 32])).is_ok());
        let short = SecretBox::from_base64(&STANDARD.encode([9u8; 16])).unwrap_err();
        assert!(short.contains("32 bytes"), "{short}");
        assert!(SecretBox::from_base64("not base64 at all!").is_err());
        assert_eq!(format!("{:?}", key(1)), "SecretBox(<key>)");
    }
}
