//! Per-session serialization of "read the session, compile, publish".
//!
//! Two recompiles of one session must not interleave, or a table compiled from older state
//! could be published after a newer one. Sessions share a fixed set of stripes (a session's
//! stripe is a function of its id), so memory stays bounded whatever the number of sessions.

use crate::domain::SessionId;

const STRIPES: usize = 64;

/// A fixed set of async locks, one chosen per session.
pub(super) struct Stripes {
    locks: [tokio::sync::Mutex<()>; STRIPES],
}

impl Stripes {
    pub(super) fn new() -> Stripes {
        Stripes {
            locks: std::array::from_fn(|_| tokio::sync::Mutex::new(())),
        }
    }

    /// Waits for `session`'s turn; the turn lasts as long as the guard.
    pub(super) async fn lock(&self, session: SessionId) -> tokio::sync::MutexGuard<'_, ()> {
        let stripe = session.as_uuid().as_u128() % STRIPES as u128;
        self.locks[stripe as usize].lock().await
    }
}
