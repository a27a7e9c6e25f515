//! The device token decoder (`token::TokenKeys::decode`, what the WebSocket and the SIP bridge
//! call) with a fixed secret, on arbitrary text and on JWT-like input signed with the right
//! key or a wrong one: header and claims built from the input, so `exp`, `nbf`, `v`, `a` and
//! `p` take every JSON type and size. Nothing may panic; a token signed with another key never
//! decodes; a token that decodes has not expired and carries a time that is a time.
//!
//! Input layout: byte 0 picks the mode (bit 0: raw text; bit 1: wrong key); then, for the
//! JWT-like mode, the rest is split at `0x00` into the header's `alg`, the `a`, `p` and `v`
//! claims, and the `exp` and `nbf` claims (each parsed as JSON when it is, else a string).
#![no_main]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{crypto, Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use patchbay::token::{TokenError, TokenKeys, MAX_TIME_CLAIM};
use serde_json::{json, Map, Value};

const SECRET: &[u8; 32] = b"patchbay-fuzz-device-token-key!!";
const OTHER_SECRET: &[u8; 32] = b"patchbay-fuzz-some-other-secret!";

/// Unpadded base64url, as JWTs use.
fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A claim value from the input: JSON when it parses, else the text as a string; an empty
/// field leaves the claim out.
fn claim(field: &[u8]) -> Option<Value> {
    if field.is_empty() {
        return None;
    }
    let text = String::from_utf8_lossy(field);
    Some(serde_json::from_str(&text).unwrap_or(Value::String(text.into_owned())))
}

fn jwt_like(fields: &[&[u8]], secret: &[u8]) -> String {
    let field = |i: usize| fields.get(i).copied().unwrap_or_default();
    let alg = String::from_utf8_lossy(field(0));
    let alg = if alg.is_empty() { "HS256".into() } else { alg };
    let header = json!({"alg": alg});
    let mut claims = Map::new();
    for (i, name) in ["a", "p", "v", "exp", "nbf"].iter().enumerate() {
        if let Some(v) = claim(field(i + 1)) {
            claims.insert((*name).to_owned(), v);
        }
    }
    let message = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(Value::Object(claims).to_string().as_bytes())
    );
    let signature = crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(secret),
        Algorithm::HS256,
    )
    .expect("HS256 signs anything");
    format!("{message}.{signature}")
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let keys = TokenKeys::from_secret(SECRET);
    let wrong_key = mode & 0x02 != 0;
    let token = if mode & 0x01 != 0 {
        String::from_utf8_lossy(rest).into_owned()
    } else {
        let fields: Vec<&[u8]> = rest.split(|b| *b == 0).collect();
        jwt_like(&fields, if wrong_key { OTHER_SECRET } else { SECRET })
    };
    match keys.decode(&token) {
        Ok(claims) => {
            assert!(
                !wrong_key || mode & 0x01 != 0,
                "a token signed with another key decoded"
            );
            let max = UNIX_EPOCH + Duration::from_secs(MAX_TIME_CLAIM);
            assert!(claims.expires <= max);
            let now = SystemTime::now();
            assert!(
                claims.expires + Duration::from_secs(60) >= now,
                "an expired token decoded"
            );
        }
        Err(e) => {
            if wrong_key && mode & 0x01 == 0 {
                assert!(
                    matches!(e, TokenError::BadSignature | TokenError::Malformed),
                    "{e:?}"
                );
            }
        }
    }
});
