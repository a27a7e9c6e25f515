//! Lifecycle events into the webhook outbox, account webhook settings, the delivery log, and
//! the cleanup of old sessions.
//!
//! Every [`LifecycleEvent`] control records goes, in order, on one feed ([`WebhookFeed`]) that
//! the runtime drains in batches into [`Control::record_events`]: that verb renders the
//! webhooks of participants with a `callbackUrl` and appends them to the outbox, with the
//! changes the events make to this process's live state, in one write fenced by this
//! process's registration (a process taken for dead writes nothing more); only then do they
//! count as emitted. Each event comes with a [`Recorded`] receipt: a verb
//! whose acknowledgment must not outrun its event (a device's connect, its `leave`) waits for
//! it, so that a crash after the acknowledgment loses nothing. Until the runtime takes the
//! feed, nothing is recorded and every receipt is ready (unit tests, commands).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::{Control, ControlError, LifecycleEvent};
use crate::domain::{AccountId, ParticipantId};
use crate::store::{
    AccountWebhooks, AttemptOutcome, DeliveryAttempt, NewOutboxEvent, OutboxEvent, WebhookTarget,
};
use crate::webhooks;

/// Why a device of an expired session is disconnected (its close reason).
pub const SESSION_EXPIRED: &str = "session expired";

/// How many rows of each webhook table one prune deletes at a time.
const PRUNE_BATCH: u32 = 1000;

/// How many expired sessions are read from the store at a time.
pub const EXPIRE_BATCH: u32 = 100;

/// Lifecycle events in the order control recorded them, for [`Control::record_events`].
pub type WebhookFeed = mpsc::UnboundedReceiver<FeedItem>;

/// One event on the feed, and the receipt to answer once it is in the outbox (`true`) or
/// could not be written in time (`false`: the recorder keeps trying).
#[derive(Debug)]
pub struct FeedItem {
    /// The event.
    pub event: LifecycleEvent,
    /// Answered once, by the recorder.
    pub recorded: Option<oneshot::Sender<bool>>,
    /// This process's generation when the event was raised: each time it is taken for dead
    /// and closes its devices, the generation grows, and the events raised before are not
    /// recorded ([`Control::is_stale`]).
    pub generation: u64,
}

/// What [`Control::record_events`] did with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recording {
    /// The events are in the outbox (this many webhooks) and the live state.
    Written(usize),
    /// Refused: this process was taken for dead (its devices are being closed). Nothing of
    /// the batch is written, and nothing should be: the process that took it for dead wrote
    /// its devices' ends.
    Fenced,
}

/// The receipt of one event: whether it reached the outbox (see the module docs).
#[derive(Debug)]
pub struct Recorded(Option<oneshot::Receiver<bool>>);

impl Recorded {
    /// A receipt that is ready: nothing was recorded, or it was recorded before.
    pub(super) fn ready() -> Recorded {
        Recorded(None)
    }

    /// Waits for the recorder's answer: `true` once the event is in the outbox (or when
    /// nothing records events), `false` if the database could not take it within the
    /// recorder's bound. Never longer than that bound, unless the recorder is stuck.
    pub async fn wait(self) -> bool {
        match self.0 {
            None => true,
            Some(answer) => answer.await.unwrap_or(false),
        }
    }
}

/// How long an account's webhook settings are reused before they are read again.
const SETTINGS_TTL_MS: i64 = 5_000;

/// The sending end of the feed, once someone drains it.
#[derive(Default)]
pub(super) struct Recorder {
    feed: Mutex<Option<mpsc::UnboundedSender<FeedItem>>>,
    /// Each account's webhook settings, with when they were read (epoch milliseconds).
    settings: Mutex<HashMap<AccountId, (AccountWebhooks, i64)>>,
    /// Events put on the feed, and events the runtime finished recording: a graceful stop
    /// waits until they are equal.
    raised: AtomicU64,
    settled: AtomicU64,
    /// Where a connected participant's webhooks go, remembered from its first event so that
    /// the events after its deletion (its devices' disconnection, then a phone's call end and
    /// its streams' end) still reach its backend. Kept [`LINGER_MS`] after a disconnection
    /// (the time it went, epoch milliseconds).
    targets: Mutex<HashMap<ParticipantId, (WebhookTarget, Option<i64>)>>,
}

/// How long a disconnected participant's webhook target is remembered: the events that follow
/// a disconnection (`onCallEnded`, `onStreamUnpublished`) come within moments of it.
const LINGER_MS: i64 = 60_000;

impl Recorder {
    pub(super) fn record(&self, event: &LifecycleEvent, generation: u64) -> Recorded {
        let feed = self.feed.lock().unwrap_or_else(|e| e.into_inner());
        let Some(feed) = feed.as_ref() else {
            return Recorded(None);
        };
        let (tx, rx) = oneshot::channel();
        let item = FeedItem {
            event: event.clone(),
            recorded: Some(tx),
            generation,
        };
        if feed.send(item).is_ok() {
            self.raised.fetch_add(1, Ordering::SeqCst);
            Recorded(Some(rx))
        } else {
            Recorded(None)
        }
    }
}

fn participant_of(event: &LifecycleEvent) -> ParticipantId {
    match event {
        LifecycleEvent::Connected { participant, .. }
        | LifecycleEvent::Disconnected { participant, .. }
        | LifecycleEvent::StreamPublished { participant, .. }
        | LifecycleEvent::StreamUnpublished { participant, .. }
        | LifecycleEvent::CallAnswered { participant, .. }
        | LifecycleEvent::CallResumed { participant, .. }
        | LifecycleEvent::CallEnded { participant, .. }
        | LifecycleEvent::PhoneDtmf { participant, .. }
        | LifecycleEvent::ActiveSpeaker { participant, .. }
        | LifecycleEvent::QualityChanged { participant, .. } => *participant,
    }
}

impl Control {
    /// The runtime finished recording one event of the feed (in the outbox, or given up on).
    pub fn event_settled(&self) {
        self.inner.webhooks.settled.fetch_add(1, Ordering::SeqCst);
    }

    /// Events raised that the runtime has not finished recording yet.
    pub fn events_unsettled(&self) -> u64 {
        let raised = self.inner.webhooks.raised.load(Ordering::SeqCst);
        raised.saturating_sub(self.inner.webhooks.settled.load(Ordering::SeqCst))
    }

    /// Starts recording lifecycle events for webhooks: from now on every event goes, in order,
    /// on the returned feed. A second call replaces the feed.
    pub fn webhook_feed(&self) -> WebhookFeed {
        let (tx, rx) = mpsc::unbounded_channel();
        *self
            .inner
            .webhooks
            .feed
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(tx);
        rx
    }

    /// Appends the webhooks `events` raise (those of participants with a `callbackUrl`) to
    /// the outbox, in order, and applies what they change in this process's live state, in
    /// one write stamped `at_ms` (epoch milliseconds in the database's clock: see
    /// [`Control::lease_ms`]), fenced by this process's registration
    /// (see [`crate::store::Writer`]). All or none: on an error nothing of the batch is
    /// written. `generation`: the events' ([`FeedItem::generation`]); events of an earlier
    /// generation than this process's are not written (`Fenced`). Before this process's
    /// first heartbeat it is `Unavailable` (try again).
    pub async fn record_events(
        &self,
        events: &[&LifecycleEvent],
        generation: u64,
        at_ms: i64,
    ) -> Result<Recording, ControlError> {
        let epoch = {
            let beats = self.beats();
            if beats.generation != generation {
                // Raised before a fence: the process that took this one for dead wrote what
                // they were about.
                return Ok(Recording::Fenced);
            }
            beats.epoch
        };
        let Some(epoch) = epoch else {
            return Err(ControlError::Unavailable {
                source: "this process is not registered yet (its first heartbeat)".into(),
            });
        };
        let mut rows: Vec<NewOutboxEvent> = Vec::new();
        let mut live = Vec::new();
        for event in events {
            live.extend(super::operator::live_change(event));
            let participant = participant_of(event);
            let Some(target) = self.webhook_target(participant, event, at_ms).await? else {
                continue;
            };
            let Some(url) = target.callback_url.as_ref() else {
                continue;
            };
            let settings = self.cached_webhook_settings(&target.account, at_ms).await?;
            rows.extend(
                webhooks::render(event, at_ms, target.tag.as_ref())
                    .into_iter()
                    .filter(|w| w.kind.is_bandwidth() || !settings.bandwidth_only)
                    .filter(|w| match w.kind {
                        webhooks::WebhookKind::ActiveSpeaker => settings.active_speaker_events,
                        webhooks::WebhookKind::QualityChanged => settings.quality_events,
                        _ => true,
                    })
                    .map(|w| NewOutboxEvent {
                        id: format!("msg_{}", uuid::Uuid::new_v4().simple()),
                        account: target.account.clone(),
                        participant: w.participant,
                        url: url.as_str().to_owned(),
                        event: w.kind.name().to_owned(),
                        body: w.body,
                        created_at_ms: at_ms,
                    }),
            );
        }
        let writer = crate::store::Writer {
            instance: &self.inner.instance,
            epoch,
            now_ms: at_ms,
        };
        match self
            .inner
            .store
            .record_events(&writer, &rows, &live, at_ms)
            .await
        {
            Ok(()) => Ok(Recording::Written(rows.len())),
            Err(crate::store::StoreError::Fenced) => {
                self.fenced_by_store(generation, epoch);
                Ok(Recording::Fenced)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The account's webhook settings, read at most every [`SETTINGS_TTL_MS`] (a change made
    /// through this process is seen at once; one made elsewhere within that time).
    async fn cached_webhook_settings(
        &self,
        account: &AccountId,
        at_ms: i64,
    ) -> Result<AccountWebhooks, ControlError> {
        let cached = self
            .inner
            .webhooks
            .settings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(account)
            .filter(|(_, read)| (at_ms - read).abs() < SETTINGS_TTL_MS)
            .map(|(s, _)| s.clone());
        if let Some(settings) = cached {
            return Ok(settings);
        }
        let settings = self.account_webhooks(account).await?;
        self.inner
            .webhooks
            .settings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(account.clone(), (settings.clone(), at_ms));
        Ok(settings)
    }

    /// The participant's webhook target: remembered while it has devices (and shortly after),
    /// else from the store.
    async fn webhook_target(
        &self,
        participant: ParticipantId,
        event: &LifecycleEvent,
        at_ms: i64,
    ) -> Result<Option<WebhookTarget>, ControlError> {
        let remembered = {
            let mut targets = self
                .inner
                .webhooks
                .targets
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            targets.retain(|_, (_, gone)| gone.is_none_or(|gone| at_ms - gone < LINGER_MS));
            targets.get(&participant).map(|(t, _)| t.clone())
        };
        let target = match remembered {
            Some(t) => Some(t),
            None => self.inner.store.webhook_target(participant).await?,
        };
        let mut targets = self
            .inner
            .webhooks
            .targets
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match (event, &target) {
            (LifecycleEvent::Connected { .. }, Some(t)) => {
                targets.insert(participant, (t.clone(), None));
            }
            (LifecycleEvent::Disconnected { .. }, _) => {
                if let Some((_, gone)) = targets.get_mut(&participant) {
                    *gone = Some(at_ms);
                }
            }
            _ => {}
        }
        Ok(target)
    }

    /// The account's webhook settings (its signing secret is created if it has none).
    pub async fn account_webhooks(
        &self,
        account: &AccountId,
    ) -> Result<AccountWebhooks, ControlError> {
        Ok(self
            .inner
            .store
            .account_webhooks(account, &webhooks::new_secret())
            .await?)
    }

    /// Sets whether the account receives only Bandwidth's three events.
    pub async fn set_webhook_bandwidth_only(
        &self,
        account: &AccountId,
        bandwidth_only: bool,
    ) -> Result<AccountWebhooks, ControlError> {
        self.inner
            .store
            .set_webhook_bandwidth_only(account, bandwidth_only)
            .await?;
        self.forget_webhook_settings(account);
        self.account_webhooks(account).await
    }

    /// The account's settings changed through this process: read them again at once.
    pub(super) fn forget_webhook_settings(&self, account: &AccountId) {
        self.inner
            .webhooks
            .settings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(account);
    }

    /// At most `limit` outbox events due at `now_ms`, each first in its participant's queue,
    /// at most `per_account` of one account, accounts taking turns.
    pub async fn outbox_due(
        &self,
        now_ms: i64,
        limit: u32,
        per_account: u32,
    ) -> Result<Vec<OutboxEvent>, ControlError> {
        Ok(self
            .inner
            .store
            .outbox_due(now_ms, limit, per_account)
            .await?)
    }

    /// Claims the outbox events `seqs` for one attempt each by this process, until `until_ms`
    /// (see [`crate::store::WebhookStore::outbox_claim`]): the seqs it got. Several processes
    /// on one database deliver each attempt once.
    pub async fn outbox_claim(
        &self,
        seqs: &[i64],
        now_ms: i64,
        until_ms: i64,
    ) -> Result<Vec<i64>, ControlError> {
        Ok(self
            .inner
            .store
            .outbox_claim(seqs, &self.inner.instance, now_ms, until_ms)
            .await?)
    }

    /// Records a delivery attempt of `event` and what becomes of the event.
    pub async fn outbox_attempted(
        &self,
        event: &OutboxEvent,
        attempt: &DeliveryAttempt,
        outcome: AttemptOutcome,
    ) -> Result<(), ControlError> {
        Ok(self
            .inner
            .store
            .outbox_attempted(event, attempt, outcome, &self.inner.instance)
            .await?)
    }

    /// The participant's last `limit` delivery attempts, newest first.
    pub async fn delivery_log(
        &self,
        account: &AccountId,
        participant: ParticipantId,
        limit: u32,
    ) -> Result<Vec<DeliveryAttempt>, ControlError> {
        // The participant must exist in the account (a 404 otherwise).
        self.participant(account, participant).await?;
        Ok(self
            .inner
            .store
            .delivery_log(account, participant, limit)
            .await?)
    }

    /// Replaces the account's webhook secret with a new random one, returned (`whsec_…`).
    /// For `grace`, deliveries carry a signature with the old secret too (Standard Webhooks
    /// allows several in one header), so receivers can switch without losing an event; zero
    /// ends the old secret at once (a leaked one).
    pub async fn rotate_webhook_secret(
        &self,
        account: &AccountId,
        grace: Duration,
    ) -> Result<String, ControlError> {
        let secret = webhooks::new_secret();
        let until = (!grace.is_zero()).then(|| {
            crate::store::epoch_ms()
                .saturating_add(i64::try_from(grace.as_millis()).unwrap_or(i64::MAX))
        });
        self.inner
            .store
            .rotate_webhook_secret(account, &secret, until)
            .await?;
        Ok(secret)
    }

    /// Deletes the delivered and given-up webhook events, and the delivery attempts, older than
    /// `retention` at `now_ms` (epoch milliseconds), [`PRUNE_BATCH`] rows at a time; events
    /// still waiting for delivery stay. Returns how many rows went.
    pub async fn prune_webhooks(
        &self,
        retention: Duration,
        now_ms: i64,
    ) -> Result<u64, ControlError> {
        let before =
            now_ms.saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
        let mut total = 0;
        loop {
            let n = self.inner.store.prune_webhooks(before, PRUNE_BATCH).await?;
            total += n;
            if n < u64::from(PRUNE_BATCH) {
                return Ok(total);
            }
        }
    }

    /// Deletes the sessions created more than `max_age` before `now_ms` (epoch milliseconds),
    /// as `DELETE` of each would: members leave (phones in them are hung up, browsers lose
    /// their routes). All of them, [`EXPIRE_BATCH`] at a time, so a backlog never outgrows
    /// the cleanup's period. Returns how many were deleted.
    pub async fn expire_sessions(
        &self,
        max_age: Duration,
        now_ms: i64,
    ) -> Result<usize, ControlError> {
        let cutoff = now_ms.saturating_sub(i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX));
        let mut deleted = 0;
        loop {
            let old = self
                .inner
                .store
                .sessions_created_before(cutoff, EXPIRE_BATCH)
                .await?;
            let full = old.len() >= EXPIRE_BATCH as usize;
            let before = deleted;
            for (account, session) in old {
                let members = match self.members(&account, session).await {
                    Ok(m) => m,
                    Err(ControlError::NotFound(_)) => continue,
                    Err(e) => return Err(e),
                };
                match self.delete_session(&account, session).await {
                    Ok(()) => deleted += 1,
                    Err(ControlError::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
                // Its members' devices go with it: browsers are closed (the connection loop
                // reports onLeave: a server action), phones are hung up.
                for member in members {
                    self.disconnect_participant(member.id, SESSION_EXPIRED);
                    self.ring(super::Ring::SessionExpired(member.id));
                }
                tracing::info!(%account, %session, "session expired");
            }
            // A batch that deleted nothing would come back the same: stop rather than spin.
            if !full || deleted == before {
                return Ok(deleted);
            }
        }
    }

    /// Deletes every participant created more than `max_age` before `now_ms` (the optional
    /// `--participant-max-age`), as `DELETE …/participants/{id}` does: its devices are
    /// disconnected (onDisconnect), its calls hung up, its subscriptions pruned. Returns how
    /// many.
    pub async fn expire_participants(
        &self,
        max_age: Duration,
        now_ms: i64,
    ) -> Result<usize, ControlError> {
        let cutoff = now_ms.saturating_sub(i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX));
        let mut deleted = 0;
        loop {
            let old = self
                .inner
                .store
                .participants_created_before(cutoff, EXPIRE_BATCH)
                .await?;
            let full = old.len() >= EXPIRE_BATCH as usize;
            let before = deleted;
            let mut failed = None;
            for (account, participant) in old {
                match self.delete_participant(&account, participant).await {
                    Ok(()) => {
                        deleted += 1;
                        tracing::info!(%account, %participant, "participant expired");
                    }
                    Err(ControlError::NotFound(_)) => {}
                    // One that cannot be deleted now does not hold up the others.
                    Err(e) => {
                        tracing::warn!(%account, %participant, error = %e, "cannot delete an expired participant");
                        failed = Some(e);
                    }
                }
            }
            if let (Some(e), 0) = (failed, deleted - before) {
                return Err(e);
            }
            if !full || deleted == before {
                return Ok(deleted);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::test_control;
    use super::EXPIRE_BATCH;
    use crate::control::ControlError;

    /// A backlog larger than one batch goes in one cleanup, not one batch a period.
    #[tokio::test]
    async fn every_expired_session_goes_in_one_cleanup() {
        let (control, account) = test_control().await;
        let count = EXPIRE_BATCH as usize * 2 + 7;
        let mut sessions = Vec::new();
        for _ in 0..count {
            sessions.push(control.create_session(&account, None).await.unwrap().id);
        }
        let later = crate::store::epoch_ms() + 1000;
        let deleted = control
            .expire_sessions(Duration::ZERO, later)
            .await
            .unwrap();
        assert_eq!(deleted, count);
        for id in sessions {
            assert!(matches!(
                control.session(&account, id).await,
                Err(ControlError::NotFound(_))
            ));
        }
        assert_eq!(
            control
                .expire_sessions(Duration::ZERO, later)
                .await
                .unwrap(),
            0
        );
    }
}
