//! The orchestrator: every verb of the product goes through [`Control`].
//!
//! Control owns the sequence "check, write the store, recompile the affected session's
//! forwarding table, publish the difference". Adapters (REST now; signaling and the SIP
//! bridge later) call it with domain types and render its results; they never touch the store.
//! After each change to membership or subscriptions, Control recompiles the session with
//! [`forwarding::compile`] and sends a [`RoutingUpdate`] (the table diff) to whoever watches
//! (the media plane), so engines only ever apply differences.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::broadcast;

use crate::domain::{
    AccountId, CallbackUrl, DeviceApiVersion, MediaKinds, Participant, ParticipantId,
    PublishPermissions, Session, SessionId, StreamAlias, StreamId, Subscriptions, Tag,
};
use crate::forwarding::{self, ForwardingTable, Member, PublishedStream, SessionState, TableDiff};
use crate::store::{AccountCredentials, Store, StoreError};
use crate::token::{self, DeviceClaims, TokenError, TokenKeys};

/// Errors of the control layer: the store's answers, plus rules checked here.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("participant is not a member of session {0}")]
    NotAMember(SessionId),
}

/// A change of one session's forwarding table.
#[derive(Debug, Clone)]
pub struct RoutingUpdate {
    pub session: SessionId,
    pub diff: Arc<TableDiff>,
}

/// What control tells the media plane and the device connections.
#[derive(Debug, Clone)]
pub enum ControlEvent {
    /// A session's forwarding table changed.
    Routes(RoutingUpdate),
    /// A participant was deleted: its devices must be disconnected (its token is revoked).
    ParticipantDeleted(ParticipantId),
    /// Something happened to a participant's device or streams (for webhooks and logs).
    Lifecycle(LifecycleEvent),
}

/// A participant's device or stream changed. `device` is the device's `uniqueId`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LifecycleEvent {
    Connected {
        participant: ParticipantId,
        device: String,
    },
    /// `left`: the device said `leave` (Bandwidth's `onLeave`); otherwise the connection was
    /// lost or replaced (`onDisconnect`).
    Disconnected {
        participant: ParticipantId,
        device: String,
        left: bool,
    },
    StreamPublished {
        participant: ParticipantId,
        stream: StreamId,
        alias: Option<StreamAlias>,
        kinds: MediaKinds,
    },
    StreamUnpublished {
        participant: ParticipantId,
        stream: StreamId,
    },
    /// A phone participant pressed a key (RFC 4733 telephone-event from the phone).
    PhoneDtmf {
        participant: ParticipantId,
        digit: char,
    },
}

/// What a new participant is created with.
#[derive(Debug, Clone, Default)]
pub struct NewParticipant {
    pub callback_url: Option<CallbackUrl>,
    pub publish_permissions: Option<PublishPermissions>,
    pub tag: Option<Tag>,
    pub device_api_version: Option<DeviceApiVersion>,
}

/// A device that presented a valid token of an existing participant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedDevice {
    pub claims: DeviceClaims,
    pub participant: Participant,
}

/// Generated API credentials; the password is shown once and only its hash is stored.
#[derive(Debug, Clone)]
pub struct NewCredentials {
    pub account: AccountId,
    pub username: String,
    pub password: String,
}

/// How long a verified credential lookup is reused before the store is asked again.
const CREDENTIAL_CACHE_TTL: Duration = Duration::from_secs(60);

const RECOMPILE_STRIPES: usize = 64;

/// The orchestrator. Cheap to clone; share one per process.
#[derive(Clone)]
pub struct Control {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    tokens: TokenKeys,
    updates: broadcast::Sender<ControlEvent>,
    /// Streams each participant publishes now, as reported by the media plane.
    published: Mutex<HashMap<ParticipantId, Vec<PublishedStream>>>,
    /// The last table published per session, to diff against.
    tables: Mutex<HashMap<SessionId, ForwardingTable>>,
    /// Serializes "read the session, compile, publish" per session (striped), so that a
    /// table compiled from older state is never published after a newer one.
    recompiling: [tokio::sync::Mutex<()>; RECOMPILE_STRIPES],
    /// username → (credentials, fetched at).
    credentials: Mutex<HashMap<String, (AccountCredentials, Instant)>>,
}

impl Control {
    /// Builds the orchestrator on `store`, loading (or creating) the device-token secret.
    pub async fn new(store: Arc<dyn Store>) -> Result<Control, ControlError> {
        let secret = store
            .secret(token::SECRET_NAME, &TokenKeys::generate_secret())
            .await?;
        let (updates, _) = broadcast::channel(4096);
        Ok(Control {
            inner: Arc::new(Inner {
                tokens: TokenKeys::from_secret(&secret),
                store,
                updates,
                published: Mutex::new(HashMap::new()),
                tables: Mutex::new(HashMap::new()),
                recompiling: std::array::from_fn(|_| tokio::sync::Mutex::new(())),
                credentials: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// Routing updates and deletions, in the order they were made.
    pub fn watch(&self) -> broadcast::Receiver<ControlEvent> {
        self.inner.updates.subscribe()
    }

    // ---- accounts -------------------------------------------------------------------------

    /// Creates an account with fresh random API credentials.
    pub async fn create_account(&self, account: AccountId) -> Result<NewCredentials, ControlError> {
        use rand::distr::{Alphanumeric, SampleString};
        let mut rng = rand::rng();
        let username = format!(
            "{account}-{}",
            Alphanumeric.sample_string(&mut rng, 8).to_lowercase()
        );
        let password = Alphanumeric.sample_string(&mut rng, 32);
        self.inner
            .store
            .create_account(&AccountCredentials {
                account: account.clone(),
                username: username.clone(),
                password_sha256: sha256_hex(&password),
            })
            .await?;
        Ok(NewCredentials {
            account,
            username,
            password,
        })
    }

    /// The account whose API credentials these are, if they are right.
    pub async fn authenticate(
        &self,
        username: &str,
        password: &str,
    ) -> Result<Option<AccountId>, ControlError> {
        let cached = {
            let cache = self
                .inner
                .credentials
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            cache
                .get(username)
                .filter(|(_, at)| at.elapsed() < CREDENTIAL_CACHE_TTL)
                .map(|(c, _)| c.clone())
        };
        let creds = match cached {
            Some(c) => c,
            None => {
                let Some(c) = self.inner.store.account_by_username(username).await? else {
                    return Ok(None);
                };
                let mut cache = self
                    .inner
                    .credentials
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                if cache.len() > 10_000 {
                    cache.clear();
                }
                #[allow(clippy::disallowed_methods)]
                // control stamps its credential cache with the clock
                cache.insert(username.to_owned(), (c.clone(), Instant::now()));
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

    // ---- participants ---------------------------------------------------------------------

    /// Creates a participant and mints its device token.
    pub async fn create_participant(
        &self,
        account: &AccountId,
        new: NewParticipant,
    ) -> Result<(Participant, String), ControlError> {
        let participant = Participant {
            id: ParticipantId::random(),
            account: account.clone(),
            callback_url: new.callback_url,
            publish_permissions: new.publish_permissions.unwrap_or(PublishPermissions::ALL),
            tag: new.tag,
            device_api_version: new.device_api_version.unwrap_or_default(),
            session: None,
            subscriptions: Subscriptions::default(),
        };
        self.inner.store.create_participant(&participant).await?;
        #[allow(clippy::disallowed_methods)] // control mints tokens at the current wall-clock time
        let token = self
            .inner
            .tokens
            .mint(account, participant.id, SystemTime::now());
        Ok((participant, token))
    }

    pub async fn participant(
        &self,
        account: &AccountId,
        id: ParticipantId,
    ) -> Result<Participant, ControlError> {
        self.inner
            .store
            .participant(account, id)
            .await?
            .ok_or(StoreError::ParticipantNotFound.into())
    }

    /// Deletes a participant; its token stops working at once.
    pub async fn delete_participant(
        &self,
        account: &AccountId,
        id: ParticipantId,
    ) -> Result<(), ControlError> {
        let session = self.inner.store.delete_participant(account, id).await?;
        self.lock_published().remove(&id);
        let _ = self
            .inner
            .updates
            .send(ControlEvent::ParticipantDeleted(id));
        if let Some(session) = session {
            self.recompile(account, session).await?;
        }
        Ok(())
    }

    /// The one verification of a device token, for the WebSocket and the SIP bridge: a valid
    /// signature, not expired, protocol v3, and the participant still exists.
    pub async fn verify_device_token(
        &self,
        token: &str,
    ) -> Result<VerifiedDevice, DeviceTokenError> {
        let claims = self.inner.tokens.decode(token)?;
        let participant = self
            .inner
            .store
            .participant(&claims.account, claims.participant)
            .await
            .map_err(DeviceTokenError::Store)?
            .ok_or(DeviceTokenError::Token(TokenError::Revoked))?;
        Ok(VerifiedDevice {
            claims,
            participant,
        })
    }

    /// Records a lifecycle event of a device (connected, disconnected) for whoever watches.
    pub fn device_event(&self, event: LifecycleEvent) {
        tracing::info!(?event, "device lifecycle");
        let _ = self.inner.updates.send(ControlEvent::Lifecycle(event));
    }

    /// The media plane reports what a participant publishes now; its session recompiles.
    pub async fn set_published(
        &self,
        account: &AccountId,
        participant: ParticipantId,
        streams: Vec<PublishedStream>,
    ) -> Result<(), ControlError> {
        let events = {
            let mut published = self.lock_published();
            let old = if streams.is_empty() {
                published.remove(&participant)
            } else {
                published.insert(participant, streams.clone())
            }
            .unwrap_or_default();
            stream_events(participant, &old, &streams)
        };
        for event in events {
            self.device_event(event);
        }
        if let Some(session) = self.participant(account, participant).await?.session {
            self.recompile(account, session).await?;
        }
        Ok(())
    }

    fn lock_published(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<ParticipantId, Vec<PublishedStream>>> {
        self.inner
            .published
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    // ---- sessions -------------------------------------------------------------------------

    pub async fn create_session(
        &self,
        account: &AccountId,
        tag: Option<Tag>,
    ) -> Result<Session, ControlError> {
        let session = Session {
            id: SessionId::random(),
            account: account.clone(),
            tag,
        };
        self.inner.store.create_session(&session).await?;
        Ok(session)
    }

    pub async fn session(
        &self,
        account: &AccountId,
        id: SessionId,
    ) -> Result<Session, ControlError> {
        self.inner
            .store
            .session(account, id)
            .await?
            .ok_or(StoreError::SessionNotFound.into())
    }

    pub async fn delete_session(
        &self,
        account: &AccountId,
        id: SessionId,
    ) -> Result<(), ControlError> {
        self.inner.store.delete_session(account, id).await?;
        let _serial = self.recompile_lock(id).lock().await;
        self.publish(id, ForwardingTable::default());
        Ok(())
    }

    pub async fn members(
        &self,
        account: &AccountId,
        session: SessionId,
    ) -> Result<Vec<Participant>, ControlError> {
        Ok(self.inner.store.members(account, session).await?)
    }

    /// Adds a participant to a session (and replaces its rules when given).
    pub async fn add_member(
        &self,
        account: &AccountId,
        session: SessionId,
        participant: ParticipantId,
        subscriptions: Option<Subscriptions>,
    ) -> Result<(), ControlError> {
        self.inner
            .store
            .add_member(account, session, participant, subscriptions.as_ref())
            .await?;
        self.recompile(account, session).await
    }

    pub async fn remove_member(
        &self,
        account: &AccountId,
        session: SessionId,
        participant: ParticipantId,
    ) -> Result<(), ControlError> {
        self.inner
            .store
            .remove_member(account, session, participant)
            .await?;
        self.recompile(account, session).await
    }

    /// A member's subscription rules.
    pub async fn subscriptions(
        &self,
        account: &AccountId,
        session: SessionId,
        participant: ParticipantId,
    ) -> Result<Subscriptions, ControlError> {
        self.session(account, session).await?;
        let p = self.participant(account, participant).await?;
        if p.session != Some(session) {
            return Err(ControlError::NotAMember(session));
        }
        Ok(p.subscriptions)
    }

    /// Replaces the rules of one or several members of a session, atomically.
    pub async fn set_subscriptions(
        &self,
        account: &AccountId,
        session: SessionId,
        changes: &[(ParticipantId, Subscriptions)],
    ) -> Result<(), ControlError> {
        self.inner
            .store
            .set_subscriptions(account, session, changes)
            .await?;
        self.recompile(account, session).await
    }

    /// The session's members and its forwarding table as compiled from their stored rules.
    pub async fn routes(
        &self,
        account: &AccountId,
        session: SessionId,
    ) -> Result<(Vec<Participant>, ForwardingTable), ControlError> {
        let members = self.inner.store.members(account, session).await?;
        let state = SessionState {
            session: Some(session),
            members: members
                .iter()
                .map(|p| Member {
                    id: p.id,
                    publish: p.publish_permissions,
                    subscriptions: p.subscriptions.clone(),
                })
                .collect(),
            streams: {
                let published = self.lock_published();
                members
                    .iter()
                    .filter_map(|m| published.get(&m.id))
                    .flatten()
                    .cloned()
                    .collect()
            },
        };
        Ok((members, forwarding::compile(&state)))
    }

    async fn recompile(&self, account: &AccountId, session: SessionId) -> Result<(), ControlError> {
        let _serial = self.recompile_lock(session).lock().await;
        let (_, table) = self.routes(account, session).await?;
        self.publish(session, table);
        Ok(())
    }

    /// The last forwarding table published for every session with any route or link: what a
    /// watcher that missed updates resynchronizes from.
    pub fn tables_snapshot(&self) -> HashMap<SessionId, ForwardingTable> {
        self.inner
            .tables
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn recompile_lock(&self, session: SessionId) -> &tokio::sync::Mutex<()> {
        let stripe = session.as_uuid().as_u128() % RECOMPILE_STRIPES as u128;
        &self.inner.recompiling[stripe as usize]
    }

    fn publish(&self, session: SessionId, table: ForwardingTable) {
        let diff = {
            let mut tables = self.inner.tables.lock().unwrap_or_else(|e| e.into_inner());
            let old = tables.remove(&session).unwrap_or_default();
            let diff = old.diff(&table);
            if !table.links.is_empty() || !table.routes.is_empty() {
                tables.insert(session, table);
            }
            diff
        };
        if !diff.is_empty() {
            // No receiver is fine: nobody is watching yet.
            let _ = self.inner.updates.send(ControlEvent::Routes(RoutingUpdate {
                session,
                diff: Arc::new(diff),
            }));
        }
    }
}

/// Why a device token was refused.
#[derive(Debug, thiserror::Error)]
pub enum DeviceTokenError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Store(StoreError),
}

/// Publish and unpublish events between two lists of a participant's streams.
fn stream_events(
    participant: ParticipantId,
    old: &[PublishedStream],
    new: &[PublishedStream],
) -> Vec<LifecycleEvent> {
    let gone = old
        .iter()
        .filter(|o| !new.iter().any(|n| n.stream == o.stream));
    let came = new.iter().filter(|n| !old.contains(n));
    gone.map(|o| LifecycleEvent::StreamUnpublished {
        participant,
        stream: o.stream.clone(),
    })
    .chain(came.map(|n| LifecycleEvent::StreamPublished {
        participant,
        stream: n.stream.clone(),
        alias: n.alias.clone(),
        kinds: n.kinds,
    }))
    .collect()
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ParticipantSubscription;
    use crate::store::SqlStore;

    async fn control() -> (Control, AccountId) {
        let store = SqlStore::open("sqlite::memory:").await.unwrap();
        let control = Control::new(Arc::new(store)).await.unwrap();
        let creds = control
            .create_account(AccountId::parse("acct").unwrap())
            .await
            .unwrap();
        (control, creds.account)
    }

    #[tokio::test]
    async fn credentials_authenticate_and_only_hash_is_stored() {
        let (control, _) = control().await;
        let creds = control
            .create_account(AccountId::parse("other").unwrap())
            .await
            .unwrap();
        let stored = control
            .store()
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

    #[tokio::test]
    async fn published_streams_route_and_raise_lifecycle_events() {
        let (control, account) = control().await;
        let s = control.create_session(&account, None).await.unwrap();
        let (a, _) = control
            .create_participant(&account, NewParticipant::default())
            .await
            .unwrap();
        let (b, _) = control
            .create_participant(&account, NewParticipant::default())
            .await
            .unwrap();
        let whole = Subscriptions::new(Some(s.id), vec![]).unwrap();
        control
            .add_member(&account, s.id, a.id, Some(whole.clone()))
            .await
            .unwrap();
        control
            .add_member(&account, s.id, b.id, Some(whole))
            .await
            .unwrap();
        let mut events = control.watch();
        let stream = PublishedStream {
            publisher: b.id,
            stream: StreamId::parse("ms-b").unwrap(),
            alias: Some(StreamAlias::parse("cam").unwrap()),
            kinds: MediaKinds::ALL,
        };
        control
            .set_published(&account, b.id, vec![stream.clone()])
            .await
            .unwrap();
        let (_, table) = control.routes(&account, s.id).await.unwrap();
        assert_eq!(table.publishers_of(a.id).collect::<Vec<_>>(), vec![b.id]);
        assert!(
            table.publishers_of(b.id).next().is_none(),
            "a publishes nothing"
        );
        let mut seen = Vec::new();
        while let Ok(e) = events.try_recv() {
            seen.push(e);
        }
        assert!(seen.iter().any(|e| matches!(e, ControlEvent::Lifecycle(LifecycleEvent::StreamPublished { participant, .. }) if *participant == b.id)));
        assert!(seen
            .iter()
            .any(|e| matches!(e, ControlEvent::Routes(u) if u.diff.routes.upserted.len() == 1)));
        control.set_published(&account, b.id, vec![]).await.unwrap();
        let (_, table) = control.routes(&account, s.id).await.unwrap();
        assert!(table.routes.is_empty());
    }

    #[tokio::test]
    async fn deleting_a_participant_revokes_its_token() {
        let (control, account) = control().await;
        let (p, token) = control
            .create_participant(&account, NewParticipant::default())
            .await
            .unwrap();
        let device = control.verify_device_token(&token).await.unwrap();
        assert_eq!(device.participant.id, p.id);
        control.delete_participant(&account, p.id).await.unwrap();
        assert!(matches!(
            control.verify_device_token(&token).await,
            Err(DeviceTokenError::Token(TokenError::Revoked))
        ));
    }

    #[tokio::test]
    async fn rule_changes_publish_table_diffs() {
        let (control, account) = control().await;
        let mut updates = control.watch();
        let s = control.create_session(&account, None).await.unwrap();
        let (a, _) = control
            .create_participant(&account, NewParticipant::default())
            .await
            .unwrap();
        let (b, _) = control
            .create_participant(&account, NewParticipant::default())
            .await
            .unwrap();
        control
            .add_member(&account, s.id, a.id, None)
            .await
            .unwrap();
        control
            .add_member(&account, s.id, b.id, None)
            .await
            .unwrap();
        let listing = Subscriptions::new(
            None,
            vec![ParticipantSubscription {
                participant: b.id,
                stream_aliases: vec![],
            }],
        )
        .unwrap();
        control
            .set_subscriptions(&account, s.id, &[(a.id, listing.clone())])
            .await
            .unwrap();
        let ControlEvent::Routes(u) = updates.recv().await.unwrap() else {
            panic!("routes")
        };
        assert_eq!(u.session, s.id);
        assert_eq!(u.diff.links.upserted.len(), 1);
        // Setting the same rules again changes nothing and publishes nothing.
        control
            .set_subscriptions(&account, s.id, &[(a.id, listing)])
            .await
            .unwrap();
        control.remove_member(&account, s.id, b.id).await.unwrap();
        let ControlEvent::Routes(u) = updates.recv().await.unwrap() else {
            panic!("routes")
        };
        assert_eq!(
            u.diff.links.removed.len(),
            1,
            "the link to b went away, and nothing came before"
        );
    }
}
