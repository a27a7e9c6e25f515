//! Which due events to send now, and what an attempt's result means for the outbox.
//!
//! The store hands out only the head of each participant's queue; the dispatcher keeps at
//! most one attempt in flight per participant (so a participant's events stay in order while
//! its head is retried, and other participants are not blocked) and at most a total in all.
//! An account, and a receiver, may go beyond a share of the places only while a share of them
//! stays free: alone, an account uses all but a share; beside an account whose receivers hang,
//! another account's events still find a free place at once.

use std::collections::{HashMap, HashSet};

use super::RetryPolicy;
use super::{AttemptOutcome, DeliveryAttempt, OutboxEvent};
use crate::domain::{AccountId, ParticipantId};

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

/// How many attempts may be in flight at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Concurrency {
    /// In all.
    pub total: usize,
    /// For one account, and, separately, to one receiver (scheme, host and port of the URL),
    /// beyond which they take only places that leave this many free.
    pub share: usize,
}

/// The sans-IO core of the delivery worker.
#[derive(Debug)]
pub struct Dispatcher {
    policy: RetryPolicy,
    limits: Concurrency,
    in_flight: HashSet<ParticipantId>,
    per_account: HashMap<AccountId, usize>,
    per_receiver: HashMap<String, usize>,
}

/// The receiver an event goes to, as the share counts it: the URL's origin (an unparsable URL
/// counts as itself; its attempt fails without connecting).
pub fn receiver_of(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => u.origin().ascii_serialization(),
        Err(_) => url.to_owned(),
    }
}

/// One attempt fewer under `key`; a count that reaches zero is removed.
fn release<K, Q>(counts: &mut HashMap<K, usize>, key: &Q)
where
    K: std::borrow::Borrow<Q> + std::hash::Hash + Eq,
    Q: std::hash::Hash + Eq + ?Sized,
{
    if let Some(n) = counts.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            counts.remove(key);
        }
    }
}

impl Dispatcher {
    /// A dispatcher within `limits` (each at least 1; the share at most the total).
    pub fn new(policy: RetryPolicy, limits: Concurrency) -> Dispatcher {
        let total = limits.total.max(1);
        Dispatcher {
            policy,
            limits: Concurrency {
                total,
                share: limits.share.clamp(1, total),
            },
            in_flight: HashSet::new(),
            per_account: HashMap::new(),
            per_receiver: HashMap::new(),
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
        self.in_flight.len() < self.limits.total
    }

    /// Of the due heads in `due`, those to send now, taken out of it (their participants
    /// become busy): in the order given, skipping a participant with an attempt in flight, and
    /// an account or a receiver beyond its share unless more than a share of places would still
    /// be free. What is left stays in `due`, in order.
    pub fn start(&mut self, due: &mut Vec<OutboxEvent>) -> Vec<OutboxEvent> {
        let mut out = Vec::new();
        if !self.has_room() {
            return out;
        }
        let mut left = Vec::with_capacity(due.len());
        for event in due.drain(..) {
            let e = &event.event;
            let receiver = receiver_of(&e.url);
            let share = self.limits.share;
            // Beyond its share, an account (or receiver) takes only places that leave a share
            // free for the others.
            let beyond_share = self
                .per_account
                .get(&e.account)
                .is_some_and(|n| *n >= share)
                || self
                    .per_receiver
                    .get(&receiver)
                    .is_some_and(|n| *n >= share);
            let free = self.limits.total.saturating_sub(self.in_flight.len());
            if !self.has_room()
                || self.in_flight.contains(&e.participant)
                || beyond_share && free <= share
            {
                left.push(event);
                continue;
            }
            self.in_flight.insert(e.participant);
            *self.per_account.entry(e.account.clone()).or_default() += 1;
            *self.per_receiver.entry(receiver).or_default() += 1;
            out.push(event);
        }
        *due = left;
        out
    }

    /// `event`, given by [`Dispatcher::start`], is not sent after all (another process
    /// claimed it, or the claim could not be made): its participant is free again.
    pub fn abandon(&mut self, event: &OutboxEvent) {
        self.release(event);
    }

    fn release(&mut self, event: &OutboxEvent) {
        if self.in_flight.remove(&event.event.participant) {
            release(&mut self.per_account, &event.event.account);
            release(&mut self.per_receiver, &receiver_of(&event.event.url));
        }
    }

    /// An attempt of `event` ended at `now_ms` with `result`: what the delivery log records
    /// and what becomes of the event. Its participant is free again.
    pub fn finish(
        &mut self,
        event: &OutboxEvent,
        result: AttemptResult,
        now_ms: i64,
    ) -> (DeliveryAttempt, AttemptOutcome) {
        self.release(event);
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
    use crate::webhooks::NewOutboxEvent;

    fn event(seq: i64, participant: ParticipantId) -> OutboxEvent {
        sent_to(seq, participant, "acct", "http://127.0.0.1:1/hook")
    }

    fn sent_to(seq: i64, participant: ParticipantId, account: &str, url: &str) -> OutboxEvent {
        OutboxEvent {
            seq,
            event: NewOutboxEvent {
                id: format!("msg_{seq}"),
                account: AccountId::parse(account).unwrap(),
                participant,
                url: url.into(),
                event: "onConnect".into(),
                body: "{}".into(),
                created_at_ms: 0,
            },
            attempts: 0,
            secret: String::new(),
            previous_secret: None,
        }
    }

    fn limits(total: usize, share: usize) -> Concurrency {
        Concurrency { total, share }
    }

    #[test]
    fn beyond_its_share_an_account_or_receiver_leaves_a_share_free() {
        let mut d = Dispatcher::new(RetryPolicy::default(), limits(6, 2));
        let hanging: Vec<OutboxEvent> = (0..5)
            .map(|i| {
                let url = format!("http://a{i}.example/h");
                sent_to(i, ParticipantId::random(), "a", &url)
            })
            .collect();
        let mut due = hanging.clone();
        let started = d.start(&mut due);
        assert_eq!(started.len(), 4, "alone, account a uses all but a share");
        assert_eq!(due.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![4]);
        let other = sent_to(10, ParticipantId::random(), "b", "http://b.example/h");
        let same_host = sent_to(11, ParticipantId::random(), "c", "http://b.example:80/x");
        let third = sent_to(12, ParticipantId::random(), "c", "HTTP://B.example/y");
        due.extend([other.clone(), same_host, third]);
        let started: Vec<i64> = d.start(&mut due).iter().map(|e| e.seq).collect();
        assert_eq!(started, vec![10, 11], "b and c find the free share");
        assert_eq!(due.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![4, 12]);
        let (_, outcome) = d.finish(&hanging[0], AttemptResult::Failed("timed out".into()), 1);
        assert!(matches!(outcome, AttemptOutcome::RetryAt(_)));
        assert!(
            d.start(&mut due).is_empty(),
            "a is beyond its share and b.example at its share, with one place free"
        );
        d.finish(&other, AttemptResult::Status(204), 2);
        let started: Vec<i64> = d.start(&mut due).iter().map(|e| e.seq).collect();
        assert_eq!(started, vec![12], "b.example is within its share again");
        assert_eq!(d.in_flight(), 5);
    }

    #[test]
    fn one_attempt_per_participant_and_bounded_in_all() {
        let (a, b, c) = (
            ParticipantId::random(),
            ParticipantId::random(),
            ParticipantId::random(),
        );
        let mut d = Dispatcher::new(RetryPolicy::default(), limits(2, 2));
        let started = d.start(&mut vec![
            event(1, a),
            event(2, a),
            event(3, b),
            event(4, c),
        ]);
        assert_eq!(
            started.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![1, 3]
        );
        assert!(!d.has_room());
        assert!(d.start(&mut vec![event(4, c)]).is_empty(), "full");
        let (log, outcome) = d.finish(&started[0], AttemptResult::Status(204), 10);
        assert_eq!(outcome, AttemptOutcome::Delivered);
        assert_eq!((log.attempt, log.status), (1, Some(204)));
        assert_eq!(d.start(&mut vec![event(4, c)]).len(), 1);
        assert!(
            d.start(&mut vec![event(5, b)]).is_empty(),
            "b is still in flight"
        );
    }

    #[test]
    fn failures_are_retried_later_then_given_up() {
        let a = ParticipantId::random();
        let mut d = Dispatcher::new(RetryPolicy::default(), limits(4, 4));
        let e = d.start(&mut vec![event(1, a)]).remove(0);
        let (log, outcome) = d.finish(&e, AttemptResult::Status(500), 1_000);
        assert_eq!(log.status, Some(500));
        assert!(matches!(outcome, AttemptOutcome::RetryAt(at) if at >= 2_000));
        let mut late = e.clone();
        late.attempts = 40;
        d.start(&mut vec![late.clone()]);
        let day = 24 * 3600 * 1000;
        let (log, outcome) = d.finish(&late, AttemptResult::Failed("timed out".into()), day);
        assert_eq!(outcome, AttemptOutcome::GaveUp);
        assert_eq!((log.attempt, log.error.as_deref()), (41, Some("timed out")));
    }

    #[test]
    fn a_refused_destination_is_given_up_at_once() {
        let a = ParticipantId::random();
        let mut d = Dispatcher::new(RetryPolicy::default(), limits(4, 4));
        let e = d.start(&mut vec![event(1, a)]).remove(0);
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
