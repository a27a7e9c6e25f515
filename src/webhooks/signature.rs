//! Standard Webhooks signing: every delivery carries `webhook-id`, `webhook-timestamp` (epoch
//! seconds) and `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, keyed by
//! the account's secret `whsec_<base64 key>`.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// What every secret starts with.
pub const SECRET_PREFIX: &str = "whsec_";

/// A fresh random secret (a 32-byte key), `whsec_<base64>`.
pub fn new_secret() -> String {
    let key: [u8; 32] = rand::random();
    format!("{SECRET_PREFIX}{}", STANDARD.encode(key))
}

/// The `webhook-signature` header value for this delivery. A secret that is not
/// `whsec_<base64>` is used as raw key bytes.
pub fn sign(secret: &str, id: &str, timestamp_s: i64, body: &str) -> String {
    let encoded = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
    let key = STANDARD
        .decode(encoded)
        .unwrap_or_else(|_| secret.as_bytes().to_vec());
    // HMAC accepts keys of any length.
    let mut mac = match Hmac::<Sha256>::new_from_slice(&key) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(format!("{id}.{timestamp_s}.{body}").as_bytes());
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// The `webhook-signature` header for `secrets` (the current one first): one `v1,` signature
/// each, separated by spaces, as Standard Webhooks allows during a secret rotation.
pub fn sign_all(secrets: &[&str], id: &str, timestamp_s: i64, body: &str) -> String {
    secrets
        .iter()
        .map(|secret| sign(secret, id, timestamp_s, body))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_secrets_give_one_signature_each_current_first() {
        let (new, old) = (
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_b2xkc2VjcmV0",
        );
        let header = sign_all(&[new, old], "msg_1", 1614265330, "{}");
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(
            parts,
            [
                sign(new, "msg_1", 1614265330, "{}"),
                sign(old, "msg_1", 1614265330, "{}")
            ]
        );
        assert_eq!(
            sign_all(&[new], "msg_1", 1, "{}"),
            sign(new, "msg_1", 1, "{}")
        );
    }

    #[test]
    fn signs_id_timestamp_and_body_with_the_decoded_key() {
        // The Standard Webhooks specification's published example.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = r#"{"test": 2432232314}"#;
        assert_eq!(
            sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn new_secrets_are_prefixed_random_keys() {
        let (a, b) = (new_secret(), new_secret());
        assert_ne!(a, b);
        let key = STANDARD
            .decode(a.strip_prefix(SECRET_PREFIX).unwrap())
            .unwrap();
        assert_eq!(key.len(), 32);
    }
}
