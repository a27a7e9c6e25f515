//! The outbox's vocabulary: an event waiting for delivery, an attempt and what became of it.
//! The store keeps these durably and maps its rows to them; the dispatcher decides with them.

use crate::domain::{AccountId, ParticipantId};

/// An event to put in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOutboxEvent {
    /// Its id (`webhook-id`), the same on every attempt.
    pub id: String,
    /// The participant's account.
    pub account: AccountId,
    /// The participant it is about (events of one participant are delivered in order).
    pub participant: ParticipantId,
    /// Where it is posted.
    pub url: String,
    /// Its type (`onConnect`, …).
    pub event: String,
    /// The JSON body, exactly as posted.
    pub body: String,
    /// When it happened (epoch milliseconds); retries stop a bounded time after it.
    pub created_at_ms: i64,
}

/// An event waiting in the outbox, at the head of its participant's queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEvent {
    /// Its position in the outbox (order of emission).
    pub seq: i64,
    /// What was stored.
    pub event: NewOutboxEvent,
    /// Attempts made so far.
    pub attempts: u32,
    /// The account's signing secret.
    pub secret: String,
    /// The account's previous secret, while the grace of its rotation lasts (at the time the
    /// event was read): deliveries are signed with both.
    pub previous_secret: Option<String>,
}

/// What became of one delivery attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// Acknowledged with a 2xx: the event leaves the queue.
    Delivered,
    /// Not acknowledged: try again at this time (epoch milliseconds).
    RetryAt(i64),
    /// Not acknowledged and out of time: the event leaves the queue undelivered.
    GaveUp,
}

/// One delivery attempt, as the delivery log shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryAttempt {
    /// The event's id (`webhook-id`).
    pub event_id: String,
    /// The event's type.
    pub event: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// The HTTP status, when the receiver answered.
    pub status: Option<u16>,
    /// What went wrong, when it did.
    pub error: Option<String>,
    /// When the attempt ended (epoch milliseconds).
    pub at_ms: i64,
}
