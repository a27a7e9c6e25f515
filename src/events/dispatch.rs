//! Which due events to send now, and what an attempt's result means for the outbox.
//!
//! The store hands out only the head of each participant's queue; the dispatcher keeps at
//! most one attempt in flight per participant (so a participant's events stay in order while
//! its head is retried, and other participants are not blocked) and at most `capacity` in all.

use std::collections::HashSet;

use super::RetryPolicy;
use crate::domain::ParticipantId;
use crate::store::{AttemptOutcome, DeliveryAttempt, OutboxEvent};

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptResult {
    /// The receiver answered with this status.
    Status(u16),
    /// No answer: connection refused or reset, timed out, bad URL.
    Failed(String),
    /// Not sent: the destination is not allowed (see [`super::Destinations`]). Final: the
    /// event is given up at once.
    Refused(String),
}

/// The sans-IO core of the delivery worker.
#[derive(Debug)]
pub struct Dispatcher {
    policy: RetryPolicy,
    capacity: usize,
    in_flight: HashSet<ParticipantId>,
}

impl Dispatcher {
    /// A dispatcher with at most `capacity` attempts in flight.
    pub fn new(policy: RetryPolicy, capacity: usize) -> Dispatcher {
        Dispatcher {
            policy,
            capacity: capacity.max(1),
            in_flight: HashSet::new(),
        }
    }

    /// The retry policy.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// Attempts in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Is there room for another attempt?
    pub fn has_room(&self) -> bool {
        self.in_flight.len() < self.capacity
    }

    /// Of the due heads `due`, those to send now (their participants become busy).
    pub fn start(&mut self, due: Vec<OutboxEvent>) -> Vec<OutboxEvent> {
        let mut out = Vec::new();
        for event in due {
            if !self.has_room() {
                break;
            }
            if self.in_flight.insert(event.event.participant) {
                out.push(event);
            }
        }
        out
    }

    /// An attempt of `event` ended at `now_ms` with `result`: what the delivery log records
    /// and what becomes of the event. Its participant is free again.
    pub fn finish(
        &mut self,
        event: &OutboxEvent,
        result: AttemptResult,
        now_ms: i64,
    ) -> (DeliveryAttempt, AttemptOutcome) {
        self.in_flight.remove(&event.event.participant);
        let attempt = event.attempts.saturating_add(1);
        let (status, error, refused) = match result {
            AttemptResult::Status(s) => (Some(s), None, false),
            AttemptResult::Failed(e) => (None, Some(e), false),
            AttemptResult::Refused(e) => (None, Some(format!("refused: {e}")), true),
        };
        let delivered = status.is_some_and(|s| (200..300).contains(&s));
        let outcome = if delivered {
            AttemptOutcome::Delivered
        } else if refused {
            AttemptOutcome::GaveUp
        } else {
            self.policy
                .after_failure(event.event.created_at_ms, now_ms, attempt)
        };
        let log = DeliveryAttempt {
            event_id: event.event.id.clone(),
            event: event.event.event.clone(),
            attempt,
            status,
            error,
            at_ms: now_ms,
        };
        (log, outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::AccountId;
    use crate::store::NewOutboxEvent;

    fn event(seq: i64, participant: ParticipantId) -> OutboxEvent {
        OutboxEvent {
            seq,
            event: NewOutboxEvent {
                id: format!("msg_{seq}"),
                account: AccountId::parse("acct").unwrap(),
                participant,
                url: "http://127.0.0.1:1/hook".into(),
                event: "onConnect".into(),
                body: "{}".into(),
                created_at_ms: 0,
            },
            attempts: 0,
            secret: String::new(),
            previous_secret: None,
        }
    }

    #[test]
    fn one_attempt_per_participant_and_bounded_in_all() {
        let (a, b, c) = (
            ParticipantId::random(),
            ParticipantId::random(),
            ParticipantId::random(),
        );
        let mut d = Dispatcher::new(RetryPolicy::default(), 2);
        let started = d.start(vec![event(1, a), event(2, a), event(3, b), event(4, c)]);
        assert_eq!(
            started.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![1, 3]
        );
        assert!(!d.has_room());
        assert!(d.start(vec![event(4, c)]).is_empty(), "full");
        let (log, outcome) = d.finish(&started[0], AttemptResult::Status(204), 10);
        assert_eq!(outcome, AttemptOutcome::Delivered);
        assert_eq!((log.attempt, log.status), (1, Some(204)));
        assert_eq!(d.start(vec![event(4, c)]).len(), 1);
        assert!(
            d.start(vec![event(5, b)]).is_empty(),
            "b is still in flight"
        );
    }

    #[test]
    fn failures_are_retried_later_then_given_up() {
        let a = ParticipantId::random();
        let mut d = Dispatcher::new(RetryPolicy::default(), 4);
        let e = d.start(vec![event(1, a)]).remove(0);
        let (log, outcome) = d.finish(&e, AttemptResult::Status(500), 1_000);
        assert_eq!(log.status, Some(500));
        assert!(matches!(outcome, AttemptOutcome::RetryAt(at) if at >= 2_000));
        let mut late = e.clone();
        late.attempts = 40;
        d.start(vec![late.clone()]);
        let day = 24 * 3600 * 1000;
        let (log, outcome) = d.finish(&late, AttemptResult::Failed("timed out".into()), day);
        assert_eq!(outcome, AttemptOutcome::GaveUp);
        assert_eq!((log.attempt, log.error.as_deref()), (41, Some("timed out")));
    }

    #[test]
    fn a_refused_destination_is_given_up_at_once() {
        let a = ParticipantId::random();
        let mut d = Dispatcher::new(RetryPolicy::default(), 4);
        let e = d.start(vec![event(1, a)]).remove(0);
        let (log, outcome) = d.finish(
            &e,
            AttemptResult::Refused("10.0.0.1 is not public".into()),
            1_000,
        );
        assert_eq!(outcome, AttemptOutcome::GaveUp);
        assert_eq!(log.status, None);
        assert_eq!(
            log.error.as_deref(),
            Some("refused: 10.0.0.1 is not public")
        );
    }
}
