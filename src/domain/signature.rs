//! Request signatures: the spec's `X-Kamiyo-Signature` and the Standard Webhooks headers.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::secret::with_standard_webhooks_key;

type HmacSha256 = Hmac<Sha256>;

/// Lowercase hex HMAC-SHA256 of the raw body, keyed with the secret string's UTF-8 bytes.
pub fn kamiyo_signature(secret: &str, body: &[u8]) -> String {
    ascii(&kamiyo_signature_ascii(secret, body))
}

/// `kamiyo_signature` as its 64 ASCII bytes: a request's header is built from it with one
/// copy, where the `String` took an allocation and a `char` at a time.
pub fn kamiyo_signature_ascii(secret: &str, body: &[u8]) -> [u8; 64] {
    kamiyo_finish(kamiyo_mac(secret), body)
}

/// `v1,` + base64 HMAC-SHA256 of `id.timestamp.body`, keyed with the decoded secret.
pub fn standard_webhooks_signature(
    secret: &str,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    ascii(&standard_webhooks_signature_ascii(
        secret, msg_id, timestamp, body,
    ))
}

/// Bytes of `v1,` and the base64 of a SHA-256 digest.
pub const STANDARD_SIGNATURE_LEN: usize = 3 + 44;

/// `standard_webhooks_signature` as its ASCII bytes, built on the stack.
pub fn standard_webhooks_signature_ascii(
    secret: &str,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> [u8; STANDARD_SIGNATURE_LEN] {
    standard_finish(standard_mac(secret), msg_id, timestamp, body)
}

/// Both HMACs of one webhook secret with the key already taken in. Keying an HMAC hashes
/// two blocks (and the Standard Webhooks key is base64-decoded first); a request's two
/// signatures from these start from a copy of the keyed state instead. Same signatures
/// as the functions above.
#[derive(Clone)]
pub struct SigningKeys {
    kamiyo: HmacSha256,
    standard: HmacSha256,
}

impl SigningKeys {
    pub fn new(secret: &str) -> SigningKeys {
        SigningKeys {
            kamiyo: kamiyo_mac(secret),
            standard: standard_mac(secret),
        }
    }

    /// As [`kamiyo_signature_ascii`].
    pub fn kamiyo_ascii(&self, body: &[u8]) -> [u8; 64] {
        kamiyo_finish(self.kamiyo.clone(), body)
    }

    /// As [`standard_webhooks_signature_ascii`].
    pub fn standard_ascii(
        &self,
        msg_id: &str,
        timestamp: i64,
        body: &[u8],
    ) -> [u8; STANDARD_SIGNATURE_LEN] {
        standard_finish(self.standard.clone(), msg_id, timestamp, body)
    }
}

fn kamiyo_mac(secret: &str) -> HmacSha256 {
    HmacSha256::new_from_slice(secret.as_bytes()).expect("any key length")
}

fn kamiyo_finish(mut mac: HmacSha256, body: &[u8]) -> [u8; 64] {
    mac.update(body);
    let mut out = [0u8; 64];
    hex::encode_to_slice(mac.finalize().into_bytes(), &mut out).expect("64 hex digits");
    out
}

fn standard_mac(secret: &str) -> HmacSha256 {
    with_standard_webhooks_key(secret, |key| {
        HmacSha256::new_from_slice(key).expect("any key length")
    })
}

fn standard_finish(
    mut mac: HmacSha256,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> [u8; STANDARD_SIGNATURE_LEN] {
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(itoa::Buffer::new().format(timestamp).as_bytes());
    mac.update(b".");
    mac.update(body);
    let mut out = [0u8; STANDARD_SIGNATURE_LEN];
    out[..3].copy_from_slice(b"v1,");
    STANDARD
        .encode_slice(mac.finalize().into_bytes(), &mut out[3..])
        .expect("44 base64 digits");
    out
}

fn ascii(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::secret::standard_webhooks_key;

    // Computed independently with Python's hmac module:
    // hmac.new(b"whsec_test", b'{"a":1}', hashlib.sha256).hexdigest()
    #[test]
    fn kamiyo_signature_known_answer() {
        assert_eq!(
            kamiyo_signature("whsec_test", br#"{"a":1}"#),
            "51426af50a41dd7ff2cd3f116594734766d4018d15d6fb07169aee5d2959adf5"
        );
    }

    /// A secret whose key does not fit the stack buffer, or is not base64, signs with
    /// the same key as `standard_webhooks_key` gives.
    #[test]
    fn long_and_raw_secrets_sign_with_the_key_standard_webhooks_key_gives() {
        let long = format!("whsec_{}", STANDARD.encode([7u8; 100]));
        let raw = "whsec_not base64!";
        for secret in [long.as_str(), raw] {
            let key = standard_webhooks_key(secret);
            let mut mac = HmacSha256::new_from_slice(&key).unwrap();
            mac.update(b"m.1.{}");
            let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
            assert_eq!(standard_webhooks_signature(secret, "m", 1, b"{}"), expected);
        }
    }

    /// Keys made once sign every message as the one-off functions do, however often they
    /// are used, for plain, long and non-base64 secrets.
    #[test]
    fn reused_signing_keys_sign_as_the_functions_do() {
        let long = format!("whsec_{}", STANDARD.encode([7u8; 100]));
        for secret in [
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            long.as_str(),
            "whsec_not base64!",
        ] {
            let keys = SigningKeys::new(secret);
            for (id, ts, body) in [
                (
                    "msg_p5jXN8AQM9LWM0D4loKWxJek",
                    1614265330,
                    &br#"{"test": 2432232314}"#[..],
                ),
                ("42", 1, &b"{}"[..]),
                ("7", 1_700_000_000, &[b'x'; 300][..]),
            ] {
                assert_eq!(
                    keys.kamiyo_ascii(body),
                    kamiyo_signature_ascii(secret, body)
                );
                assert_eq!(
                    keys.standard_ascii(id, ts, body),
                    standard_webhooks_signature_ascii(secret, id, ts, body)
                );
            }
        }
        assert_eq!(
            ascii(
                &SigningKeys::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").standard_ascii(
                    "msg_p5jXN8AQM9LWM0D4loKWxJek",
                    1614265330,
                    br#"{"test": 2432232314}"#
                )
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    // The Standard Webhooks specification's published example.
    #[test]
    fn standard_webhooks_known_answer() {
        assert_eq!(
            standard_webhooks_signature(
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }
}
