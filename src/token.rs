//! Device tokens: the JWT a participant's device (browser or phone leg) presents to join.
//!
//! HS256 (jsonwebtoken on aws-lc-rs, the binary's one crypto library) with a 256-bit server
//! secret that lives in the store (so it survives restarts and is shared by every process on
//! one database). Claims (reference §2, §10): `a` account, `p`
//! participant, `v` = `"v3"` (the browser SDK refuses anything else), `exp` epoch seconds.
//! The header carries no `typ`, which keeps a token within 186 characters for the longest
//! account id: the transfer helper's `User-To-User` value must fit in 256 characters.
//!
//! This module checks what the token says; whether the participant still exists (deleting it
//! revokes its token) is checked by `control::Control::verify_device_token`, the one
//! verification entry point for the WebSocket and the SIP bridge.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::domain::{AccountId, ParticipantId};

/// How long a minted token stays valid: longer than Bandwidth's 9-hour session lifetime.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// The name of the secret in the store.
pub const SECRET_NAME: &str = "device-token-hs256";

/// The longest token patchbay mints (checked by a test with the longest account id).
pub const MAX_TOKEN_LEN: usize = 186;

/// The largest `exp` or `nbf` accepted: the last second of the year 9999. Anything later is
/// not a time a token could mean, and would not fit every platform's clock.
pub const MAX_TIME_CLAIM: u64 = 253_402_300_799;

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a JWT, no `exp`, an `exp` or `nbf` that is not a time (see [`MAX_TIME_CLAIM`]), or
    /// claims that are not a valid account and participant id.
    #[error("token is malformed")]
    Malformed,
    /// Not signed with this installation's secret, or not HS256.
    #[error("token signature is invalid")]
    BadSignature,
    /// `exp` is past, beyond a 5-second leeway.
    #[error("token has expired")]
    Expired,
    /// `nbf` is in the future, beyond a 5-second leeway.
    #[error("token is not valid yet")]
    NotYetValid,
    /// `v` is not `"v3"` (compared case-insensitively).
    #[error("token is not for device protocol v3")]
    WrongVersion,
    /// The token is sound but its participant has been deleted (decided by `control`, not by
    /// [`TokenKeys::decode`]).
    #[error("token's participant no longer exists")]
    Revoked,
}

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceClaims {
    /// The `a` claim: the account that owns the participant.
    pub account: AccountId,
    /// The `p` claim: the participant whose device may join with this token.
    pub participant: ParticipantId,
    /// The `exp` claim, at whole-second precision.
    pub expires: SystemTime,
}

#[derive(Serialize, Deserialize)]
struct WireClaims {
    a: String,
    p: String,
    v: String,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<u64>,
}

/// Signing and verification keys for device tokens.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKeys(..)")
    }
}

impl TokenKeys {
    /// Keys for the installation's HS256 secret (normally the 32 bytes stored under
    /// [`SECRET_NAME`]). Verification requires `exp`, honours `nbf` when present, and allows
    /// 5 seconds of clock skew on both.
    pub fn from_secret(secret: &[u8]) -> TokenKeys {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        TokenKeys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// A fresh random secret for a new installation.
    pub fn generate_secret() -> [u8; 32] {
        rand::random()
    }

    /// Mints a v3 device token for `participant`, valid for [`TOKEN_LIFETIME`] from `now`.
    pub fn mint(&self, account: &AccountId, participant: ParticipantId, now: SystemTime) -> String {
        let exp = (now + TOKEN_LIFETIME)
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let claims = WireClaims {
            a: account.as_str().to_owned(),
            p: participant.to_string(),
            v: "v3".to_owned(),
            exp,
            nbf: None,
        };
        let header = Header {
            typ: None,
            ..Header::new(Algorithm::HS256)
        };
        // Invariant: HS256 over a plain struct of strings and an integer cannot fail to encode.
        jsonwebtoken::encode(&header, &claims, &self.encoding)
            .expect("HS256 encoding of plain claims")
    }

    /// Checks signature, expiry, `nbf` and version, and parses the claims. Never panics,
    /// whatever the token holds.
    pub fn decode(&self, token: &str) -> Result<DeviceClaims, TokenError> {
        use jsonwebtoken::errors::ErrorKind;
        let data = jsonwebtoken::decode::<WireClaims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => {
                    TokenError::BadSignature
                }
                _ => TokenError::Malformed,
            })?;
        let c = data.claims;
        if c.exp > MAX_TIME_CLAIM || c.nbf.is_some_and(|nbf| nbf > MAX_TIME_CLAIM) {
            return Err(TokenError::Malformed);
        }
        let expires = UNIX_EPOCH
            .checked_add(Duration::from_secs(c.exp))
            .ok_or(TokenError::Malformed)?;
        if !c.v.eq_ignore_ascii_case("v3") {
            return Err(TokenError::WrongVersion);
        }
        Ok(DeviceClaims {
            account: AccountId::parse(&c.a).map_err(|_| TokenError::Malformed)?,
            participant: ParticipantId::parse(&c.p).map_err(|_| TokenError::Malformed)?,
            expires,
        })
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests mint and check tokens at the real time
mod tests {
    use super::*;

    fn keys() -> TokenKeys {
        TokenKeys::from_secret(&TokenKeys::generate_secret())
    }

    #[test]
    fn round_trip() {
        let k = keys();
        let a = AccountId::parse("9900000").unwrap();
        let p = ParticipantId::random();
        let t = k.mint(&a, p, SystemTime::now());
        let c = k.decode(&t).unwrap();
        assert_eq!((c.account, c.participant), (a, p));
    }

    #[test]
    fn longest_account_id_fits_in_186_characters() {
        let k = keys();
        let a = AccountId::parse(&"x".repeat(AccountId::MAX_LEN)).unwrap();
        let t = k.mint(&a, ParticipantId::random(), SystemTime::now());
        assert!(
            t.len() <= MAX_TOKEN_LEN,
            "{} > {MAX_TOKEN_LEN}: {t}",
            t.len()
        );
        assert_eq!(t.split('.').count(), 3);
        assert!(
            t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)),
            "URL-safe"
        );
    }

    /// The exact bytes of a token: `{"alg":"HS256"}` header, claims in this order, HMAC-SHA256
    /// (the expected value was computed independently, with Python's `hmac`), so a change of
    /// JWT library cannot change what SDKs and stored tokens see.
    #[test]
    fn tokens_are_byte_for_byte_stable() {
        let k = TokenKeys::from_secret(&[7u8; 32]);
        let a = AccountId::parse("acct").unwrap();
        let p = ParticipantId::parse("0f8e2c1a-3b4d-4e5f-8a9b-0c1d2e3f4a5b").unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            k.mint(&a, p, now),
            "eyJhbGciOiJIUzI1NiJ9.eyJhIjoiYWNjdCIsInAiOiIwZjhlMmMxYS0zYjRkLTRlNWYtOGE5Yi0wYzFkMmUzZjRhNWIiLCJ2IjoidjMiLCJleHAiOjE3MDAwODY0MDB9.s6803o86z-FJIGZsl4RxvKhl894yvzxG-uyYDqJXvAk"
        );
    }

    #[test]
    fn refusals_are_precise() {
        let k = keys();
        let a = AccountId::parse("acct").unwrap();
        let old = k.mint(
            &a,
            ParticipantId::random(),
            SystemTime::now() - TOKEN_LIFETIME - Duration::from_secs(60),
        );
        assert_eq!(k.decode(&old), Err(TokenError::Expired));
        let other = keys().mint(&a, ParticipantId::random(), SystemTime::now());
        assert_eq!(k.decode(&other), Err(TokenError::BadSignature));
        assert_eq!(k.decode("garbage"), Err(TokenError::Malformed));
        assert_eq!(k.decode("a.b.c"), Err(TokenError::Malformed));
    }

    /// Signs arbitrary claims with `k`'s secret, as a forger who holds the secret would.
    fn sign(secret: &[u8], claims: &serde_json::Value) -> String {
        let header = Header {
            typ: None,
            ..Header::new(Algorithm::HS256)
        };
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(secret)).unwrap()
    }

    fn now_secs() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn claims(exp: serde_json::Value) -> serde_json::Value {
        serde_json::json!({"a": "acct", "p": ParticipantId::random().to_string(), "v": "v3", "exp": exp})
    }

    #[test]
    fn absurd_expiries_are_refused_without_panicking() {
        let secret = TokenKeys::generate_secret();
        let k = TokenKeys::from_secret(&secret);
        for exp in [
            serde_json::json!(1u64 << 63),
            serde_json::json!(u64::MAX),
            serde_json::json!(MAX_TIME_CLAIM + 1),
            serde_json::json!(1e300),
            serde_json::json!(-1),
            serde_json::json!("soon"),
        ] {
            let t = sign(&secret, &claims(exp.clone()));
            assert_eq!(k.decode(&t), Err(TokenError::Malformed), "exp {exp}");
        }
        let t = sign(&secret, &claims(serde_json::json!(MAX_TIME_CLAIM)));
        assert!(k.decode(&t).is_ok(), "the year 9999 is still a time");
    }

    #[test]
    fn nbf_is_honoured() {
        let secret = TokenKeys::generate_secret();
        let k = TokenKeys::from_secret(&secret);
        let with_nbf = |nbf: serde_json::Value| {
            let mut c = claims(serde_json::json!(now_secs() + 3600));
            c["nbf"] = nbf;
            sign(&secret, &c)
        };
        let later = with_nbf(serde_json::json!(now_secs() + 600));
        assert_eq!(k.decode(&later), Err(TokenError::NotYetValid));
        assert_eq!(
            TokenError::NotYetValid.to_string(),
            "token is not valid yet"
        );
        assert!(k
            .decode(&with_nbf(serde_json::json!(now_secs() - 10)))
            .is_ok());
        assert!(
            k.decode(&with_nbf(serde_json::json!(now_secs() + 2)))
                .is_ok(),
            "leeway"
        );
        assert_eq!(
            k.decode(&with_nbf(serde_json::json!(u64::MAX))),
            Err(TokenError::NotYetValid)
        );
        assert_eq!(
            k.decode(&with_nbf(serde_json::json!("now"))),
            Err(TokenError::Malformed)
        );
    }

    proptest::proptest! {
        #[test]
        fn decoding_arbitrary_claims_never_panics(
            exp in proptest::prelude::any::<u64>(),
            nbf in proptest::option::of(proptest::prelude::any::<u64>()),
            exp_f in proptest::prelude::any::<f64>(),
            a in ".{0,20}",
            v in "(v3|V3|v2|.{0,4})",
        ) {
            let secret = [7u8; 32];
            let k = TokenKeys::from_secret(&secret);
            let p = ParticipantId::random().to_string();
            let mut c = serde_json::json!({"a": a, "p": p, "v": v, "exp": exp});
            if let Some(nbf) = nbf {
                c["nbf"] = serde_json::json!(nbf);
            }
            let _ = k.decode(&sign(&secret, &c));
            c["exp"] = serde_json::json!(exp_f);
            let _ = k.decode(&sign(&secret, &c));
        }

        #[test]
        fn decoding_arbitrary_text_never_panics(t in ".{0,300}") {
            let _ = keys().decode(&t);
        }
    }
}
