//! The device-token keys of this process: the current secret, which mints and verifies, and
//! after a rotation the previous one, which still verifies until its grace period ends.
//!
//! Secrets live in the store (`server_secrets`): the current one under [`SECRET_NAME`], the
//! previous one under [`PREVIOUS_SECRET_NAME`] as eight bytes of its end of validity (epoch
//! milliseconds, big-endian) followed by the secret. `patchbay token-secret rotate` writes
//! both in one transaction; a running process reloads them every few seconds (see
//! [`Control::reload_token_keys`]) and at once when a token fails to verify, so a token minted
//! by another process with the new secret is accepted without waiting.

use std::sync::RwLock;
use std::time::{Duration, SystemTime};

use super::{Control, ControlError};
use crate::domain::{AccountId, ParticipantId};
use crate::token::{DeviceClaims, TokenError, TokenKeys, SECRET_NAME};

/// Where the previous secret is kept during its grace period.
pub const PREVIOUS_SECRET_NAME: &str = "device-token-hs256-previous";

/// The keys as loaded.
struct KeySet {
    /// The current secret's bytes (to tell whether a reload changed anything) and keys.
    current: (Vec<u8>, TokenKeys),
    /// The previous keys and the end of their validity (epoch milliseconds).
    previous: Option<(TokenKeys, i64)>,
}

/// The keys, replaced whole on reload.
pub(super) struct DeviceKeys {
    set: RwLock<KeySet>,
    /// When a failed verification last reloaded the keys (epoch ms), to bound reloads.
    last_forced_reload_ms: std::sync::atomic::AtomicI64,
}

/// Forced reloads (a token that does not verify) happen at most this often.
const FORCED_RELOAD_EVERY_MS: i64 = 1_000;

/// The stored form of a previous secret valid until `until_ms`.
pub(super) fn encode_previous(secret: &[u8], until_ms: i64) -> Vec<u8> {
    let mut v = until_ms.to_be_bytes().to_vec();
    v.extend_from_slice(secret);
    v
}

fn decode_previous(stored: &[u8]) -> Option<(i64, &[u8])> {
    let (until, secret) = stored.split_at_checked(8)?;
    let until = i64::from_be_bytes(until.try_into().ok()?);
    (!secret.is_empty()).then_some((until, secret))
}

impl DeviceKeys {
    pub(super) fn new(current: &[u8], previous: Option<&[u8]>) -> DeviceKeys {
        DeviceKeys {
            set: RwLock::new(KeySet::new(current, previous)),
            last_forced_reload_ms: std::sync::atomic::AtomicI64::new(0),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, KeySet> {
        self.set.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn mint(
        &self,
        account: &AccountId,
        participant: ParticipantId,
        now: SystemTime,
    ) -> String {
        self.read().current.1.mint(account, participant, now)
    }

    /// Verifies with the current keys, then with the previous ones within their grace.
    pub(super) fn decode(&self, token: &str, now_ms: i64) -> Result<DeviceClaims, TokenError> {
        let set = self.read();
        match set.current.1.decode(token) {
            Err(TokenError::BadSignature) => match &set.previous {
                Some((keys, until)) if now_ms < *until => keys.decode(token),
                _ => Err(TokenError::BadSignature),
            },
            other => other,
        }
    }

    fn replace(&self, current: &[u8], previous: Option<&[u8]>) -> bool {
        let mut set = self.set.write().unwrap_or_else(|e| e.into_inner());
        let changed = set.current.0 != current;
        *set = KeySet::new(current, previous);
        changed
    }
}

impl KeySet {
    fn new(current: &[u8], previous: Option<&[u8]>) -> KeySet {
        KeySet {
            current: (current.to_vec(), TokenKeys::from_secret(current)),
            previous: previous
                .and_then(decode_previous)
                .map(|(until, secret)| (TokenKeys::from_secret(secret), until)),
        }
    }
}

impl Control {
    /// Reads the device-token secrets from the store again (after a rotation by another
    /// process or command). Returns whether the current secret changed.
    pub async fn reload_token_keys(&self) -> Result<bool, ControlError> {
        let Some(current) = self.inner.store.secret_value(SECRET_NAME).await? else {
            return Ok(false);
        };
        let previous = self.inner.store.secret_value(PREVIOUS_SECRET_NAME).await?;
        let changed = self.inner.tokens.replace(&current, previous.as_deref());
        if changed {
            tracing::info!("device-token secret rotated: loaded the new one");
        }
        Ok(changed)
    }

    /// Verifies `token`; a bad signature first reloads the keys (at most once a second) in
    /// case another process rotated them.
    pub(super) async fn decode_device_token(
        &self,
        token: &str,
    ) -> Result<DeviceClaims, TokenError> {
        let now = crate::store::epoch_ms();
        match self.inner.tokens.decode(token, now) {
            Err(TokenError::BadSignature) => {
                let last = self
                    .inner
                    .tokens
                    .last_forced_reload_ms
                    .load(std::sync::atomic::Ordering::Relaxed);
                if now - last < FORCED_RELOAD_EVERY_MS {
                    return Err(TokenError::BadSignature);
                }
                self.inner
                    .tokens
                    .last_forced_reload_ms
                    .store(now, std::sync::atomic::Ordering::Relaxed);
                match self.reload_token_keys().await {
                    Ok(true) => self.inner.tokens.decode(token, now),
                    _ => Err(TokenError::BadSignature),
                }
            }
            other => other,
        }
    }

    /// Replaces the device-token secret with a new random one. Tokens signed with the old
    /// one keep verifying for `grace` (zero: they stop at once, for a leaked secret); new
    /// tokens are signed with the new one. Running servers pick it up within seconds.
    pub async fn rotate_token_secret(&self, grace: Duration) -> Result<(), ControlError> {
        let store = &self.inner.store;
        let Some(old) = store.secret_value(SECRET_NAME).await? else {
            return Err(ControlError::Internal {
                source: "no device-token secret to rotate".into(),
            });
        };
        let new = TokenKeys::generate_secret().to_vec();
        let until = crate::store::epoch_ms()
            .saturating_add(i64::try_from(grace.as_millis()).unwrap_or(i64::MAX));
        let previous = (!grace.is_zero()).then(|| encode_previous(&old, until));
        store
            .set_secrets(&[(SECRET_NAME, Some(new)), (PREVIOUS_SECRET_NAME, previous)])
            .await?;
        self.reload_token_keys().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_previous_secret_verifies_only_within_its_grace() {
        let (old, new) = (TokenKeys::generate_secret(), TokenKeys::generate_secret());
        let account = AccountId::parse("acct").unwrap_or_else(|e| panic!("{e}"));
        let p = ParticipantId::random();
        let now = SystemTime::UNIX_EPOCH
            + Duration::from_millis(u64::try_from(crate::store::epoch_ms()).unwrap_or(0));
        let token = TokenKeys::from_secret(&old).mint(&account, p, now);
        let until = crate::store::epoch_ms() + 60_000;
        let keys = DeviceKeys::new(&new, Some(&encode_previous(&old, until)));
        assert_eq!(keys.decode(&token, until - 1).map(|c| c.participant), Ok(p));
        assert_eq!(keys.decode(&token, until), Err(TokenError::BadSignature));
        // Without a previous secret, or a stored value too short to hold one.
        let keys = DeviceKeys::new(&new, Some(&until.to_be_bytes()));
        assert_eq!(
            keys.decode(&token, until - 1),
            Err(TokenError::BadSignature)
        );
        // New tokens are signed with the current secret.
        let fresh = keys.mint(&account, p, now);
        assert!(TokenKeys::from_secret(&new).decode(&fresh).is_ok());
        assert!(TokenKeys::from_secret(&old).decode(&fresh).is_err());
    }
}
