//! API credentials: creating an account's credentials and checking them on every request,
//! with a short-lived cache so that a busy client does not cost a database read per request.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{Control, ControlError};
use crate::domain::AccountId;
use crate::store::AccountCredentials;

/// How long a verified credential lookup is reused before the store is asked again: also how
/// long rotated credentials may keep working on a running server (`patchbay account rotate`).
pub const CREDENTIAL_CACHE_TTL: Duration = Duration::from_secs(5);

/// Above this many cached usernames the cache starts over (bounds memory under a flood of
/// unknown names).
const CREDENTIAL_CACHE_MAX: usize = 10_000;

/// Generated API credentials; the password is shown once and only its hash is stored.
#[derive(Debug, Clone)]
pub struct NewCredentials {
    /// The account they belong to.
    pub account: AccountId,
    /// The API username.
    pub username: String,
    /// The password in clear; only its SHA-256 is stored.
    pub password: String,
    /// The secret that signs the account's webhooks (`whsec_<base64>`).
    pub webhook_secret: String,
}

/// username → (credentials, fetched at).
#[derive(Default)]
pub(super) struct CredentialCache {
    entries: Mutex<HashMap<String, (AccountCredentials, Instant)>>,
}

impl CredentialCache {
    fn get(&self, username: &str) -> Option<AccountCredentials> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(username)
            .filter(|(_, at)| at.elapsed() < CREDENTIAL_CACHE_TTL)
            .map(|(c, _)| c.clone())
    }

    fn put(&self, username: &str, creds: AccountCredentials) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() > CREDENTIAL_CACHE_MAX {
            entries.clear();
        }
        // Control is async orchestration, not a sans-IO engine: a cache stamp may read the clock.
        #[allow(clippy::disallowed_methods)]
        let at = Instant::now();
        entries.insert(username.to_owned(), (creds, at));
    }
}

/// Rotated API credentials, shown once.
#[derive(Debug, Clone)]
pub struct RotatedCredentials {
    /// The account.
    pub account: AccountId,
    /// The new API username.
    pub username: String,
    /// The new password in clear; only its SHA-256 is stored.
    pub password: String,
}

fn generate(account: &AccountId) -> (String, String) {
    use rand::distr::{Alphanumeric, SampleString};
    let mut rng = rand::rng();
    let username = format!(
        "{account}-{}",
        Alphanumeric.sample_string(&mut rng, 8).to_lowercase()
    );
    (username, Alphanumeric.sample_string(&mut rng, 32))
}

impl Control {
    /// Replaces an account's API credentials with fresh random ones: the old ones stop working
    /// (on a running server, once its credential cache forgets them: within
    /// [`CREDENTIAL_CACHE_TTL`]). The webhook secret is unchanged.
    pub async fn rotate_credentials(
        &self,
        account: AccountId,
    ) -> Result<RotatedCredentials, ControlError> {
        let (username, password) = generate(&account);
        self.inner
            .store
            .replace_credentials(&AccountCredentials {
                account: account.clone(),
                username: username.clone(),
                password_sha256: sha256_hex(&password),
            })
            .await?;
        Ok(RotatedCredentials {
            account,
            username,
            password,
        })
    }

    /// Creates an account with fresh random API credentials.
    pub async fn create_account(&self, account: AccountId) -> Result<NewCredentials, ControlError> {
        let (username, password) = generate(&account);
        self.inner
            .store
            .create_account(&AccountCredentials {
                account: account.clone(),
                username: username.clone(),
                password_sha256: sha256_hex(&password),
            })
            .await?;
        let webhooks = self
            .inner
            .store
            .account_webhooks(&account, &crate::webhooks::new_secret())
            .await?;
        Ok(NewCredentials {
            account,
            username,
            password,
            webhook_secret: webhooks.secret,
        })
    }

    /// The account whose API credentials these are, if they are right.
    pub async fn authenticate(
        &self,
        username: &str,
        password: &str,
    ) -> Result<Option<AccountId>, ControlError> {
        let creds = match self.inner.credentials.get(username) {
            Some(c) => c,
            None => {
                let Some(c) = self.inner.store.account_by_username(username).await? else {
                    return Ok(None);
                };
                self.inner.credentials.put(username, c.clone());
                c
            }
        };
        let given = sha256_hex(password);
        let ok: bool = given
            .as_bytes()
            .ct_eq(creds.password_sha256.as_bytes())
            .into();
        Ok(ok.then_some(creds.account))
    }
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::{SqlStore, Store};

    #[tokio::test]
    async fn credentials_authenticate_and_only_hash_is_stored() {
        let store: Arc<dyn Store> = Arc::new(SqlStore::open("sqlite::memory:").await.unwrap());
        let control = Control::new(store.clone()).await.unwrap();
        let creds = control
            .create_account(AccountId::parse("other").unwrap())
            .await
            .unwrap();
        let stored = store
            .account_by_username(&creds.username)
            .await
            .unwrap()
            .unwrap();
        assert_ne!(stored.password_sha256, creds.password);
        assert_eq!(
            control
                .authenticate(&creds.username, &creds.password)
                .await
                .unwrap(),
            Some(creds.account)
        );
        assert_eq!(
            control
                .authenticate(&creds.username, "wrong")
                .await
                .unwrap(),
            None
        );
        assert_eq!(
            control
                .authenticate("nobody", &creds.password)
                .await
                .unwrap(),
            None
        );
    }
}
