//! Subscription rules as tests write them.

use patchbay::domain::{ParticipantId, ParticipantSubscription, SessionId, Subscriptions};

/// Subscribed to the whole session.
pub fn whole(session: SessionId) -> Subscriptions {
    Subscriptions::new(Some(session), vec![]).expect("rules")
}

/// Subscribed to exactly these participants (all their streams).
pub fn only(ps: &[ParticipantId]) -> Subscriptions {
    Subscriptions::new(
        None,
        ps.iter()
            .map(|&participant| ParticipantSubscription {
                participant,
                stream_aliases: vec![],
            })
            .collect(),
    )
    .expect("rules")
}
