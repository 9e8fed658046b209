//! Request signatures: the spec's `X-Kamiyo-Signature` and the Standard Webhooks headers.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::secret::standard_webhooks_key;

type HmacSha256 = Hmac<Sha256>;

/// Lowercase hex HMAC-SHA256 of the raw body, keyed with the secret string's UTF-8 bytes.
pub fn kamiyo_signature(secret: &str, body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// `v1,` + base64 HMAC-SHA256 of `id.timestamp.body`, keyed with the decoded secret.
pub fn standard_webhooks_signature(
    secret: &str,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    let key = standard_webhooks_key(secret);
    let mut mac = HmacSha256::new_from_slice(&key).expect("any key length");
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Computed independently with Python's hmac module:
    // hmac.new(b"whsec_test", b'{"a":1}', hashlib.sha256).hexdigest()
    #[test]
    fn kamiyo_signature_known_answer() {
        assert_eq!(
            kamiyo_signature("whsec_test", br#"{"a":1}"#),
            "51426af50a41dd7ff2cd3f116594734766d4018d15d6fb07169aee5d2959adf5"
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
