//! Control's error vocabulary: what a verb's caller may be told, in control's own words.
//!
//! The store's answers are translated here, once ([`From<StoreError>`]); nothing above control
//! sees a store or database type. Faults of the machinery (`Unavailable`, `Internal`) keep
//! their cause as an opaque source, for logs only.

use crate::domain::{AccountId, ParticipantId, SessionId, MAX_SESSION_MEMBERS};
use crate::store::StoreError;
use crate::token::TokenError;

/// The opaque cause of a fault, kept for logs.
pub type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a verb of [`Control`](super::Control) failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The named thing does not exist (in this account).
    #[error("{}", not_found(.0))]
    NotFound(Resource),
    /// The request contradicts the current state.
    #[error(transparent)]
    Conflict(#[from] Conflict),
    /// The request names something it may not.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// The database cannot be reached now; retrying later may work.
    #[error("database unavailable: {source}")]
    Unavailable {
        /// The store's error, for logs.
        source: Source,
    },
    /// A fault of the server (corrupt data, an unexpected database error).
    #[error("internal error: {source}")]
    Internal {
        /// The cause, for logs.
        source: Source,
    },
}

/// What was not found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// An account.
    Account,
    /// A session (of the account).
    Session,
    /// A participant (of the account).
    Participant,
    /// A participant's membership of a session (named when known).
    Member(Option<SessionId>),
}

fn not_found(resource: &Resource) -> String {
    match resource {
        Resource::Account => "account not found".to_owned(),
        Resource::Session => "session not found".to_owned(),
        Resource::Participant => "participant not found".to_owned(),
        Resource::Member(None) => "participant is not a member of this session".to_owned(),
        Resource::Member(Some(session)) => {
            format!("participant is not a member of session {session}")
        }
    }
}

/// Why a change conflicts with the current state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Conflict {
    /// The session has [`MAX_SESSION_MEMBERS`] members already.
    #[error("session is full ({MAX_SESSION_MEMBERS} participants)")]
    SessionFull,
    /// The participant is a member of the named session.
    #[error(
        "participant is already a member of session {0}; remove it from that session first \
         (a participant belongs to at most one session)"
    )]
    InAnotherSession(SessionId),
    /// The account id or its username is taken.
    #[error("account {0} already exists")]
    AccountExists(AccountId),
}

/// Why a request is invalid in the state it meets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    /// A subscription names a participant that is not in the account.
    #[error("participants: participant {0} does not exist in this account")]
    UnknownPublisher(ParticipantId),
    /// A `callbackUrl` webhooks may not be delivered to (an address that is not public and
    /// not allowed by the operator); the reason.
    #[error("callbackUrl: {0}")]
    CallbackDestination(String),
}

impl ControlError {
    /// Is this a fault of the server rather than an answer about the request?
    pub fn is_fault(&self) -> bool {
        matches!(
            self,
            ControlError::Unavailable { .. } | ControlError::Internal { .. }
        )
    }
}

impl From<StoreError> for ControlError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::AccountNotFound => ControlError::NotFound(Resource::Account),
            StoreError::SessionNotFound => ControlError::NotFound(Resource::Session),
            StoreError::ParticipantNotFound => ControlError::NotFound(Resource::Participant),
            StoreError::NotAMember => ControlError::NotFound(Resource::Member(None)),
            StoreError::SessionFull => Conflict::SessionFull.into(),
            StoreError::InAnotherSession(s) => Conflict::InAnotherSession(s).into(),
            StoreError::AccountExists(a) => Conflict::AccountExists(a).into(),
            StoreError::UnknownPublisher(p) => Invalid::UnknownPublisher(p).into(),
            e if e.is_unavailable() => ControlError::Unavailable {
                source: Box::new(e),
            },
            e @ (StoreError::Corrupt(_)
            | StoreError::Backend(_)
            | StoreError::TimedOut(_)
            | StoreError::Fenced) => ControlError::Internal {
                source: Box::new(e),
            },
        }
    }
}

/// Why a device token was refused.
#[derive(Debug, thiserror::Error)]
pub enum DeviceTokenError {
    /// The token itself is refused (malformed, expired, ..., or its participant is gone).
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The participant could not be looked up: control's `Unavailable` or `Internal`.
    #[error(transparent)]
    Control(#[from] ControlError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_answers_become_control_words_with_the_api_messages() {
        let s = SessionId::random();
        let cases: Vec<(StoreError, String)> = vec![
            (StoreError::AccountNotFound, "account not found".into()),
            (StoreError::SessionNotFound, "session not found".into()),
            (
                StoreError::ParticipantNotFound,
                "participant not found".into(),
            ),
            (
                StoreError::NotAMember,
                "participant is not a member of this session".into(),
            ),
            (
                StoreError::SessionFull,
                format!("session is full ({MAX_SESSION_MEMBERS} participants)"),
            ),
            (
                StoreError::InAnotherSession(s),
                format!(
                    "participant is already a member of session {s}; remove it from that \
                     session first (a participant belongs to at most one session)"
                ),
            ),
        ];
        for (store, message) in cases {
            let e = ControlError::from(store);
            assert!(!e.is_fault(), "{e:?}");
            assert_eq!(e.to_string(), message);
        }
    }

    #[test]
    fn an_unreachable_database_is_unavailable_and_corruption_internal() {
        let timed_out = ControlError::from(StoreError::Backend(sqlx::Error::PoolTimedOut));
        assert!(matches!(timed_out, ControlError::Unavailable { .. }));
        assert!(
            timed_out.to_string().contains("pool timed out"),
            "{timed_out}"
        );
        for cut_off in [
            sqlx::Error::PoolClosed,
            sqlx::Error::Io(std::io::ErrorKind::ConnectionRefused.into()),
        ] {
            let e = ControlError::from(StoreError::Backend(cut_off));
            assert!(matches!(e, ControlError::Unavailable { .. }), "{e:?}");
        }
        let probe = ControlError::from(StoreError::TimedOut(std::time::Duration::from_secs(1)));
        assert!(
            matches!(probe, ControlError::Unavailable { .. }),
            "{probe:?}"
        );
        let other = ControlError::from(StoreError::Backend(sqlx::Error::RowNotFound));
        assert!(matches!(other, ControlError::Internal { .. }), "{other:?}");
        let corrupt = ControlError::from(StoreError::Corrupt("bad uuid".into()));
        assert!(matches!(corrupt, ControlError::Internal { .. }));
        assert!(corrupt.is_fault());
        assert!(corrupt.to_string().contains("bad uuid"));
    }
}
