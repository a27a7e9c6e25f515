//! Persistence: the [`Store`] trait and its adapters.
//!
//! The store owns durable state: accounts and their API credentials, the device-token secret,
//! sessions, participants, membership and subscription rules. Each trait method is one atomic
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

#[cfg(feature = "conformance")]
pub mod conformance;
mod sql;

use async_trait::async_trait;

use crate::domain::{
    AccountId, Participant, ParticipantId, Session, SessionId, Subscriptions, MAX_SESSION_MEMBERS,
};

pub use sql::{Dialect, SqlStore};

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
}

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
pub trait Store: Send + Sync + 'static {
    /// Is the database reachable?
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
}

/// Opens the store a database URL names and brings its schema up to date.
pub async fn open(url: &str) -> Result<SqlStore, StoreError> {
    SqlStore::open(url).await
}
