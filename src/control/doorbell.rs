//! The doorbell between serving processes that share one database (issue 20).
//!
//! A change made through one process may concern devices connected to another: a member added
//! or its rules changed, a session deleted, a participant deleted, a session expired. The
//! process that made it rings ([`Ring`]): "re-read session S", "participant P is gone". A ring
//! carries no state; the process that hears it reads the store, as it would after its own
//! change. So a ring lost (the listener reconnecting, a notification that could not be sent)
//! costs a re-read at the next resynchronization ([`Control::resync`]), not a wrong table
//! for good (except a lost [`Ring::SessionExpired`], which is not caught up).
//!
//! The bus is behind [`Doorbell`]: the runtime's PostgreSQL adapter sends rings with `NOTIFY`
//! and hears them with `LISTEN`; on SQLite (one serving process per file) nothing rings.

use super::{Control, ControlError, SESSION_EXPIRED};
use crate::domain::{AccountId, ParticipantId, SessionId};

/// What one process tells the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ring {
    /// Re-read this session's members and recompile its table.
    Session {
        /// Its account.
        account: AccountId,
        /// The session.
        session: SessionId,
    },
    /// The participant was deleted: its devices end.
    ParticipantDeleted(ParticipantId),
    /// The participant's session expired: its devices are closed (it stays).
    SessionExpired(ParticipantId),
}

/// Where rings go. Ringing never waits: the bus sends in the background.
pub trait Doorbell: Send + Sync + 'static {
    /// Tells the other processes.
    fn ring(&self, ring: Ring);
}

/// Why a ring's text could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unreadable ring {0:?}")]
pub struct UnreadableRing(pub String);

impl Ring {
    /// The ring as text: `session <account> <session>`, `deleted <participant>`,
    /// `expired <participant>`.
    pub fn encode(&self) -> String {
        match self {
            Ring::Session { account, session } => format!("session {account} {session}"),
            Ring::ParticipantDeleted(p) => format!("deleted {p}"),
            Ring::SessionExpired(p) => format!("expired {p}"),
        }
    }

    /// Reads [`Ring::encode`]'s text.
    pub fn decode(text: &str) -> Result<Ring, UnreadableRing> {
        let bad = || UnreadableRing(text.chars().take(200).collect());
        let words: Vec<&str> = text.split(' ').collect();
        match words.as_slice() {
            ["session", account, session] => Ok(Ring::Session {
                account: AccountId::parse(account).map_err(|_| bad())?,
                session: session.parse().map_err(|_| bad())?,
            }),
            ["deleted", p] => Ok(Ring::ParticipantDeleted(p.parse().map_err(|_| bad())?)),
            ["expired", p] => Ok(Ring::SessionExpired(p.parse().map_err(|_| bad())?)),
            _ => Err(bad()),
        }
    }
}

impl Control {
    /// Attaches the bus to the other processes (once, at build); false if one is attached.
    pub fn attach_doorbell(&self, doorbell: std::sync::Arc<dyn Doorbell>) -> bool {
        self.inner.doorbell.set(doorbell).is_ok()
    }

    /// Tells the other processes, if any listen.
    pub(super) fn ring(&self, ring: Ring) {
        if let Some(doorbell) = self.inner.doorbell.get() {
            doorbell.ring(ring);
        }
    }

    /// Another process rang: this process re-reads what the ring names and acts on its own
    /// devices, as after its own change (without ringing again).
    pub async fn hear(&self, ring: Ring) -> Result<(), ControlError> {
        tracing::debug!(?ring, "doorbell");
        match ring {
            Ring::Session { account, session } => self.reread_session(&account, session).await,
            Ring::ParticipantDeleted(participant) => {
                // Its devices here end: their events are recorded by this process.
                let _ = self.participant_gone(participant);
                Ok(())
            }
            Ring::SessionExpired(participant) => {
                self.disconnect_participant(participant, SESSION_EXPIRED);
                Ok(())
            }
        }
    }

    /// Re-reads the session and recompiles its table here; a session that is gone is
    /// forgotten (its routes withdrawn).
    async fn reread_session(
        &self,
        account: &AccountId,
        session: SessionId,
    ) -> Result<(), ControlError> {
        match self.session(account, session).await {
            Ok(_) => self.compile_here(account, session, true).await,
            Err(ControlError::NotFound(_)) => {
                self.forget_session(session).await;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Catches up with every ring this process may have missed: for each participant with a
    /// device here, one that is gone ends its devices, and the session of one that exists is
    /// re-read; so is every session this process keeps a table for (one deleted is
    /// forgotten). Run when the listener lost its connection, and periodically. A lost
    /// `SessionExpired` is not caught up: the members' devices stay connected, in no session.
    pub async fn resync(&self) -> Result<(), ControlError> {
        let participants: std::collections::BTreeSet<ParticipantId> = self
            .inner
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .participants();
        let mut sessions = std::collections::BTreeSet::new();
        for participant in participants {
            match self.inner.store.webhook_target(participant).await? {
                None => self.hear(Ring::ParticipantDeleted(participant)).await?,
                Some(target) => match self.participant(&target.account, participant).await {
                    Ok(p) => sessions.extend(p.session.map(|s| (target.account, s))),
                    Err(ControlError::NotFound(_)) => {
                        self.hear(Ring::ParticipantDeleted(participant)).await?
                    }
                    Err(e) => return Err(e),
                },
            }
        }
        // The sessions this process keeps tables for too: one deleted, or one a member left,
        // through another process is re-read (or forgotten) here.
        let hosted: Vec<(AccountId, SessionId)> = self
            .inner
            .hosted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(s, a)| (a.clone(), *s))
            .collect();
        sessions.extend(hosted);
        for (account, session) in sessions {
            self.reread_session(&account, session).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rings_read_back_as_written() {
        let p = ParticipantId::random();
        for ring in [
            Ring::Session {
                account: AccountId::parse("acct").unwrap(),
                session: SessionId::random(),
            },
            Ring::ParticipantDeleted(p),
            Ring::SessionExpired(p),
        ] {
            assert_eq!(Ring::decode(&ring.encode()), Ok(ring));
        }
    }

    #[test]
    fn unreadable_rings_are_refused() {
        for text in [
            "",
            "session",
            "session acct",
            "session acct not-a-uuid",
            "deleted x",
            "expired",
            "who knows",
            "deleted 00000000-0000-0000-0000-000000000000 extra",
        ] {
            assert!(Ring::decode(text).is_err(), "{text:?}");
        }
    }
}
