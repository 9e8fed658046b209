//! Webhook signing secrets and API keys: generation, masking and hashing.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

pub const SECRET_PREFIX: &str = "whsec_";
pub const API_KEY_PREFIX: &str = "kmy_";

fn random_32() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes
}

/// A new signing secret: `whsec_` + standard base64 of 32 random bytes.
pub fn generate_webhook_secret() -> String {
    format!("{SECRET_PREFIX}{}", STANDARD.encode(random_32()))
}

/// The secret without its `whsec_` prefix.
fn secret_body(secret: &str) -> &str {
    secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret)
}

/// What list and get show instead of the secret: enough to tell two secrets apart.
pub fn secret_hint(secret: &str) -> String {
    let shown: String = secret_body(secret).chars().take(4).collect();
    format!("{SECRET_PREFIX}{shown}…")
}

/// The key bytes of a Standard Webhooks secret (the base64 after `whsec_`).
pub fn standard_webhooks_key(secret: &str) -> Vec<u8> {
    let body = secret_body(secret);
    STANDARD
        .decode(body)
        .unwrap_or_else(|_| body.as_bytes().to_vec())
}

/// Calls `f` with `standard_webhooks_key(secret)`, decoded on the stack when it fits
/// (every secret this service generates does): signing needs it for every request.
pub fn with_standard_webhooks_key<T>(secret: &str, f: impl FnOnce(&[u8]) -> T) -> T {
    let mut buf = [0u8; 64];
    match STANDARD.decode_slice(secret_body(secret), &mut buf) {
        Ok(n) => f(&buf[..n]),
        Err(_) => f(&standard_webhooks_key(secret)),
    }
}

/// A new API key: `kmy_` + URL-safe base64 of 32 random bytes (256 bits of entropy).
pub fn generate_api_key() -> String {
    format!("{API_KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(random_32()))
}

/// The only form in which an API key is stored. Keys carry 256 random bits, so a fast
/// hash is enough: there is nothing to brute-force.
pub fn hash_api_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_have_the_documented_shape() {
        let s = generate_webhook_secret();
        assert!(s.starts_with("whsec_"));
        assert_eq!(STANDARD.decode(&s[6..]).unwrap().len(), 32);
        assert_ne!(s, generate_webhook_secret());
        assert_eq!(standard_webhooks_key(&s).len(), 32);
    }

    #[test]
    fn hint_does_not_reveal_the_secret() {
        let s = generate_webhook_secret();
        let h = secret_hint(&s);
        assert!(h.starts_with("whsec_"));
        assert!(h.chars().count() < 12);
        assert!(!h.contains(&s[6..16]));
    }

    #[test]
    fn api_keys_are_long_random_and_hashed() {
        let k = generate_api_key();
        assert!(k.starts_with("kmy_"));
        assert_eq!(URL_SAFE_NO_PAD.decode(&k[4..]).unwrap().len(), 32);
        assert_eq!(hash_api_key(&k).len(), 64);
        assert_ne!(hash_api_key(&k), hash_api_key(&generate_api_key()));
    }
}
