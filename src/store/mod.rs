//! Persistence: the [`Store`] trait and its adapters.
//!
//! The store owns durable state: accounts and their API credentials, the device-token secret,
//! sessions, participants, membership and subscription rules, and the webhook outbox (each
//! account's signing secret and event filter, events waiting for delivery, the log of delivery
//! attempts; `webhooks.rs`), and the operator's view: account and session summaries, credential
//! and secret rotation, and the live state each server process records (`operator.rs`). Each
//! trait method is one atomic
//! unit: it commits entirely or not at all, and a method that returned `Ok` has committed, so
//! everything the API acknowledged survives `kill -9` and a restart.
//!
//! Domain rules that span rows are enforced here, atomically, because only the database can
//! serialize concurrent requests (possibly from several patchbay processes on one Postgres):
//! the 20-member cap, one session per participant, and "subscriptions name participants of the
//! same account". Every mutation scoped to a session first takes that session's row lock (an
//! `UPDATE` of the session row, which is a row lock on Postgres and the write lock on SQLite),
//! so concurrent changes to one session are serialized and lock order is always session, then
//! participant.
//!
//! Adapters: SQLite (the embedded default, `sqlite://…`) and PostgreSQL (`postgres://…`),
//! both implemented by [`sql::SqlStore`] on sqlx's runtime-checked queries with a [`sql::Dialect`]
//! for the few differences, and migrations under `migrations/<dialect>/`. `conformance` (behind the
//! feature of that name) is the one suite both adapters must pass.
//!
//! A sick database gets a bounded wait, never an open-ended one: taking a connection from the
//! pool waits at most [`Timeouts::acquire`], one statement (lock waits included) runs at most
//! [`Timeouts::statement`], and the readiness probe ([`Store::ping`]) answers within
//! [`PROBE_TIMEOUT`]. [`StoreError::is_unavailable`] says which failures mean "the database
//! cannot answer now" (unreachable, timed out, locked, shutting down), as opposed to a fault.

#[cfg(feature = "conformance")]
pub mod conformance;
mod operator;
mod placement;
mod sql;
mod webhooks;

use std::time::Duration;

use async_trait::async_trait;

use crate::domain::{
    AccountId, CallbackUrl, Participant, ParticipantId, PublishCredentials, Session, SessionId,
    StoredPhoneCall, SubscribeLayout, Subscriptions, Tag, MAX_SESSION_MEMBERS,
};

pub use operator::{
    AccountSummary, Beat, Beaten, DeviceKind, LiveChange, LiveDevice, LiveQuality, LiveStream,
    OperatorStore, SessionSummary, Writer, STALE_AFTER_MS,
};
pub use placement::{InstanceLoad, InstanceRecord, InstanceStatus, PlacementStore, SessionHost};
pub use sql::{Dialect, PoolStats, RowCounts, SqlStore};
pub use webhooks::epoch_ms;
// The outbox rows are the webhook slice's types: the store maps its rows to them.
pub use crate::webhooks::{AttemptOutcome, DeliveryAttempt, NewOutboxEvent, OutboxEvent};

/// What can go wrong in the store. Variants other than `Backend` and `Corrupt` are answers
/// about the data that the API turns into 4xx responses.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No such account.
    #[error("account not found")]
    AccountNotFound,
    /// The account id or the username is taken.
    #[error("account {0} already exists")]
    AccountExists(AccountId),
    /// No such session in the account.
    #[error("session not found")]
    SessionNotFound,
    /// No such participant in the account.
    #[error("participant not found")]
    ParticipantNotFound,
    /// The participant is not a member of this session.
    #[error("participant is not a member of this session")]
    NotAMember,
    /// The session has [`MAX_SESSION_MEMBERS`] members already.
    #[error("session is full ({MAX_SESSION_MEMBERS} participants)")]
    SessionFull,
    /// The participant is a member of the named session.
    #[error("participant is already a member of session {0}")]
    InAnotherSession(SessionId),
    /// A subscription names a participant that is not in the account.
    #[error("subscription names unknown participant {0}")]
    UnknownPublisher(ParticipantId),
    /// A stored value is not a valid domain value.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The database failed or cannot be reached.
    #[error("database error: {0}")]
    Backend(#[from] sqlx::Error),
    /// The database did not answer the readiness probe within this bound.
    #[error("database did not answer within {0:?}")]
    TimedOut(Duration),
    /// A process's write for its devices was refused: its registration is not the current
    /// one (another process took it for dead, and claimed or removed its row).
    #[error("this process was taken for dead: its writes are refused")]
    Fenced,
}

impl StoreError {
    /// Does this failure mean the database cannot answer now (so retrying later may work)?
    /// True for an unreachable or closed pool, a lost connection, a statement or lock timeout,
    /// a server shutting down or out of connections, and SQLite's busy/locked answers.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::TimedOut(_) => true,
            StoreError::Backend(e) => sql::is_unavailable(e),
            _ => false,
        }
    }
}

/// How long the store waits on a database that does not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Longest wait for a connection from the pool (a refused or unreachable database ends
    /// here: sqlx retries refused connections until this deadline).
    pub acquire: Duration,
    /// Longest run of one statement, waits for locks included (PostgreSQL
    /// `statement_timeout`; SQLite `busy_timeout`).
    pub statement: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            acquire: Duration::from_secs(5),
            statement: Duration::from_secs(5),
        }
    }
}

/// The readiness probe's own bound: [`Store::ping`] answers within it, whether the pool is
/// saturated, the database refuses connections or a lock blocks the probe.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// An account's stored credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountCredentials {
    /// The account.
    pub account: AccountId,
    /// Its API username (unique across accounts).
    pub username: String,
    /// Lower-case hex SHA-256 of the password (passwords are random 192-bit secrets, so a fast
    /// hash is the right tool, as for API keys).
    pub password_sha256: String,
}

/// Durable state. See the module docs for the atomicity and locking contract.
#[async_trait]
pub trait Store: WebhookStore + OperatorStore + PlacementStore {
    /// Does the database answer for every table the server uses, within [`PROBE_TIMEOUT`]?
    async fn ping(&self) -> Result<(), StoreError>;

    /// Stores a new account with its credentials.
    async fn create_account(&self, creds: &AccountCredentials) -> Result<(), StoreError>;
    /// The credentials whose username is `username`, if any.
    async fn account_by_username(
        &self,
        username: &str,
    ) -> Result<Option<AccountCredentials>, StoreError>;
    /// How many accounts exist.
    async fn account_count(&self) -> Result<u64, StoreError>;

    /// The named server secret; `candidate` is stored and returned if none exists yet
    /// (first writer wins, so every process sharing the database uses the same secret).
    async fn secret(&self, name: &str, candidate: &[u8]) -> Result<Vec<u8>, StoreError>;

    /// Stores a new session.
    async fn create_session(&self, session: &Session) -> Result<(), StoreError>;
    /// The session `id` of `account`, if it exists.
    async fn session(
        &self,
        account: &AccountId,
        id: SessionId,
    ) -> Result<Option<Session>, StoreError>;
    /// Deletes the session; its members leave it (and lose their subscriptions).
    /// Returns the members it had.
    async fn delete_session(
        &self,
        account: &AccountId,
        id: SessionId,
    ) -> Result<Vec<ParticipantId>, StoreError>;

    /// Stores a new participant (its `session` must be `None`, its subscriptions empty).
    async fn create_participant(&self, participant: &Participant) -> Result<(), StoreError>;
    /// The participant `id` of `account`, if it exists.
    async fn participant(
        &self,
        account: &AccountId,
        id: ParticipantId,
    ) -> Result<Option<Participant>, StoreError>;
    /// Deletes the participant, its subscriptions, and its entries in others' subscriptions.
    /// Returns the session it was a member of.
    async fn delete_participant(
        &self,
        account: &AccountId,
        id: ParticipantId,
    ) -> Result<Option<SessionId>, StoreError>;

    /// Makes `participant` a member of `session` (at most [`MAX_SESSION_MEMBERS`]), and replaces
    /// its subscriptions with `subscriptions` when given. Re-adding a member is allowed.
    async fn add_member(
        &self,
        account: &AccountId,
        session: SessionId,
        participant: ParticipantId,
        subscriptions: Option<&Subscriptions>,
    ) -> Result<(), StoreError>;
    /// Removes a member from its session, with its subscriptions.
    async fn remove_member(
        &self,
        account: &AccountId,
        session: SessionId,
        participant: ParticipantId,
    ) -> Result<(), StoreError>;
    /// Members of the session, ordered by id, with their subscriptions.
    async fn members(
        &self,
        account: &AccountId,
        session: SessionId,
    ) -> Result<Vec<Participant>, StoreError>;

    /// Replaces the subscriptions of several members of one session at once (all or none).
    async fn set_subscriptions(
        &self,
        account: &AccountId,
        session: SessionId,
        changes: &[(ParticipantId, Subscriptions)],
    ) -> Result<(), StoreError>;

    /// Keeps `layout` as the shape of `participant`'s subscribe connection. A layout of the
    /// same SDK instance with a lower revision than the stored one is ignored (the stored
    /// one is newer); a participant that does not exist (deleted meanwhile) keeps nothing.
    async fn save_subscribe_layout(
        &self,
        participant: ParticipantId,
        layout: &SubscribeLayout,
    ) -> Result<(), StoreError>;
    /// The stored shape of `participant`'s subscribe connection, if any.
    async fn subscribe_layout(
        &self,
        participant: ParticipantId,
    ) -> Result<Option<SubscribeLayout>, StoreError>;
    /// Forgets the layout and the publish credentials of `participant` when they belong to
    /// SDK instance `unique_id` (its device left: the SDK closed its connections).
    async fn forget_subscribe_layout(
        &self,
        participant: ParticipantId,
        unique_id: &str,
    ) -> Result<(), StoreError>;
    /// Keeps the ICE credentials of a device's publish connection (replacing the
    /// participant's previous ones); nothing for a participant that does not exist.
    async fn save_publish_credentials(
        &self,
        credentials: &PublishCredentials,
    ) -> Result<(), StoreError>;
    /// Every stored publish connection's credentials (read once, when a process starts).
    async fn publish_credentials(&self) -> Result<Vec<PublishCredentials>, StoreError>;
    /// Keeps what the SIP bridge needs to take `participant`'s phone call `call` over in
    /// another process (`record`, the bridge's own JSON), replacing the participant's previous
    /// one; nothing for a participant that does not exist.
    async fn save_phone_call(
        &self,
        participant: ParticipantId,
        call: &str,
        record: &str,
    ) -> Result<(), StoreError>;
    /// Every stored phone call.
    async fn phone_calls(&self) -> Result<Vec<StoredPhoneCall>, StoreError>;
    /// Takes `participant`'s stored call `call` for the process taking it over, if it is still
    /// as read (`updated_at_ms`): stamped `now_ms` (later than the read stamp in any case).
    /// Of a process taking a call and one ending it at once ([`Store::end_phone_call`]),
    /// one gets it. Whether this one did.
    async fn take_phone_call(
        &self,
        participant: ParticipantId,
        call: &str,
        updated_at_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError>;
    /// Forgets `participant`'s stored call `call` if it is still as read (`updated_at_ms`),
    /// for the process that ends it: whether this one did.
    async fn end_phone_call(
        &self,
        participant: ParticipantId,
        call: &str,
        updated_at_ms: i64,
    ) -> Result<bool, StoreError>;
    /// Forgets `participant`'s stored call when it is `call` (it ended).
    async fn forget_phone_call(
        &self,
        participant: ParticipantId,
        call: &str,
    ) -> Result<(), StoreError>;
}

/// Where a participant's webhooks go, and what they say about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookTarget {
    /// The participant's account (whose secret signs the deliveries).
    pub account: AccountId,
    /// Its `callbackUrl`; no webhooks without one.
    pub callback_url: Option<CallbackUrl>,
    /// Its tag, repeated in Bandwidth's bodies.
    pub tag: Option<Tag>,
}

/// An account's webhook settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountWebhooks {
    /// The Standard Webhooks signing secret, `whsec_<base64>`.
    pub secret: String,
    /// Send only Bandwidth's three events (`onConnect`, `onLeave`, `onDisconnect`).
    pub bandwidth_only: bool,
    /// Send patchbay's `onActiveSpeaker` (off by default; `bandwidth_only` wins).
    pub active_speaker_events: bool,
    /// Send patchbay's `onQualityChanged` (off by default; `bandwidth_only` wins).
    pub quality_events: bool,
}

/// A webhook event an account receives only when it asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookOptIn {
    /// `onActiveSpeaker`.
    ActiveSpeaker,
    /// `onQualityChanged`.
    QualityChanged,
}

/// Durable webhook state: account settings, the outbox and its delivery log, and the session
/// ages the cleanup reads. See the module docs for the atomicity contract.
#[async_trait]
pub trait WebhookStore: Send + Sync + 'static {
    /// The participant's account, `callbackUrl` and tag, if the participant exists.
    async fn webhook_target(
        &self,
        participant: ParticipantId,
    ) -> Result<Option<WebhookTarget>, StoreError>;
    /// The account's webhook settings; `candidate` becomes its secret if it has none yet
    /// (first writer wins). `AccountNotFound` if there is no such account.
    async fn account_webhooks(
        &self,
        account: &AccountId,
        candidate: &str,
    ) -> Result<AccountWebhooks, StoreError>;
    /// Replaces the account's webhook secret with `secret`; the old one stays valid for
    /// signing until `previous_until_ms` (epoch milliseconds), or not at all (`None`).
    /// `AccountNotFound` if there is no such account.
    async fn rotate_webhook_secret(
        &self,
        account: &AccountId,
        secret: &str,
        previous_until_ms: Option<i64>,
    ) -> Result<(), StoreError>;
    /// Sets whether the account receives only Bandwidth's three events.
    async fn set_webhook_bandwidth_only(
        &self,
        account: &AccountId,
        bandwidth_only: bool,
    ) -> Result<(), StoreError>;
    /// Sets whether the account receives the opt-in event `event`.
    async fn set_webhook_opt_in(
        &self,
        account: &AccountId,
        event: WebhookOptIn,
        on: bool,
    ) -> Result<(), StoreError>;
    /// Appends events to the outbox, in this order, all or none; each is due at once.
    async fn outbox_append(&self, events: &[NewOutboxEvent]) -> Result<(), StoreError>;
    /// At most `limit` events that are due at `now_ms`, first in their participant's queue and
    /// not claimed by another attempt (see [`Store::outbox_claim`]), at most `per_account` of
    /// one account, taken in turns: every account's earliest due
    /// event first (earliest due first), then every account's second, and so on, so one
    /// account's backlog never hides another's events.
    async fn outbox_due(
        &self,
        now_ms: i64,
        limit: u32,
        per_account: u32,
    ) -> Result<Vec<OutboxEvent>, StoreError>;
    /// Claims the outbox events `seqs` for `claimant` until `until_ms`, for one attempt each:
    /// only events still pending, due at `now_ms` (an attempt elsewhere may have rescheduled
    /// one since it was read) and whose claim ended by then are claimed, so of several
    /// processes claiming one event at once exactly one gets it. The seqs claimed. A claim
    /// ends with the attempt's record ([`Store::outbox_attempted`]) or at `until_ms`.
    async fn outbox_claim(
        &self,
        seqs: &[i64],
        claimant: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<Vec<i64>, StoreError>;
    /// How many events are still waiting for delivery.
    async fn outbox_pending(&self) -> Result<u64, StoreError>;
    /// Records attempt number `attempt` of `event` (its status or error) and its outcome, at
    /// once; the event's claim ends. The attempt is logged in any case, but the event changes
    /// only if `claimant` holds its claim (or nobody does): a process whose claim ended and
    /// was taken by another changes nothing of the other's attempt.
    async fn outbox_attempted(
        &self,
        event: &OutboxEvent,
        attempt: &DeliveryAttempt,
        outcome: AttemptOutcome,
        claimant: &str,
    ) -> Result<(), StoreError>;
    /// Deletes delivered and given-up outbox events whose last attempt ended before
    /// `before_ms`, and delivery attempts made before it, at most `limit` rows of each; how
    /// many rows went. Pending events are never deleted.
    async fn prune_webhooks(&self, before_ms: i64, limit: u32) -> Result<u64, StoreError>;
    /// The participant's last `limit` delivery attempts, newest first.
    async fn delivery_log(
        &self,
        account: &AccountId,
        participant: ParticipantId,
        limit: u32,
    ) -> Result<Vec<DeliveryAttempt>, StoreError>;
    /// At most `limit` sessions created before `cutoff_ms` (epoch milliseconds), oldest first.
    async fn sessions_created_before(
        &self,
        cutoff_ms: i64,
        limit: u32,
    ) -> Result<Vec<(AccountId, SessionId)>, StoreError>;
    /// At most `limit` participants created before `cutoff_ms`, oldest first.
    async fn participants_created_before(
        &self,
        cutoff_ms: i64,
        limit: u32,
    ) -> Result<Vec<(AccountId, ParticipantId)>, StoreError>;
}

/// Opens the store a database URL names and brings its schema up to date, with the default
/// [`Timeouts`].
pub async fn open(url: &str) -> Result<SqlStore, StoreError> {
    SqlStore::open(url).await
}

/// Opens the store a database URL names with the given [`Timeouts`].
pub async fn open_with(url: &str, timeouts: Timeouts) -> Result<SqlStore, StoreError> {
    SqlStore::open_with(url, timeouts).await
}
