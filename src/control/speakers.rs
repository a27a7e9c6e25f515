//! Who is speaking (issue 21, step 5): each hosted session's dominant speaker as the media
//! plane of this process last reported it, for `GET …/sessions/{s}/activeSpeaker`, and the
//! opt-in `onActiveSpeaker` webhook.
//!
//! The media plane decides (`media::speaker`: RFC 6464 levels of browsers, the measured level
//! of phones' decoded audio, hysteresis, at most one change per second per session) and
//! reports each change; control keeps the last one per session **in this process's memory
//! only**: like the quality view, a session hosted by another process is answered with
//! `hostedElsewhere`, and a restarted process knows no speaker until someone speaks again.
//! Each change is also raised as a lifecycle event ([`LifecycleEvent::ActiveSpeaker`]): it
//! reaches the outbox, like every other event, only for accounts that turned
//! `activeSpeakerEvents` on (see [`Control::record_events`]).

use super::{Control, ControlError, LifecycleEvent};
use crate::domain::{AccountId, ParticipantId, SessionId};
use crate::store::{AccountWebhooks, WebhookOptIn};

/// A session's dominant speaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActiveSpeaker {
    /// The participant.
    pub participant: ParticipantId,
    /// It speaks through a phone (the SIP bridge).
    pub phone: bool,
    /// Since when it is the dominant speaker, epoch milliseconds (this process's clock).
    pub since_ms: i64,
}

/// What `GET …/sessions/{s}/activeSpeaker` answers.
#[derive(Debug, Clone, Copy)]
pub struct SessionSpeaker {
    /// The dominant speaker this process knows of; `None`: nobody has spoken here yet, or
    /// the session is hosted elsewhere.
    pub speaker: Option<ActiveSpeaker>,
    /// The session is hosted by another process of the cluster: ask that one.
    pub hosted_elsewhere: bool,
}

impl Control {
    /// The media plane found `participant` to be `session`'s dominant speaker at `at_ms`
    /// (epoch milliseconds): kept for the REST view, and raised for the webhook.
    pub fn active_speaker_changed(
        &self,
        session: SessionId,
        participant: ParticipantId,
        phone: bool,
        at_ms: i64,
    ) {
        let speaker = ActiveSpeaker {
            participant,
            phone,
            since_ms: at_ms,
        };
        self.inner
            .speakers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(session, speaker);
        tracing::debug!(%session, %participant, phone, "dominant speaker");
        let generation = self.beats().generation;
        let event = LifecycleEvent::ActiveSpeaker {
            participant,
            session,
            phone,
        };
        // Nothing waits for it: the receipt is dropped.
        let _ = self.inner.webhooks.record(&event, generation);
        self.inner
            .events
            .send(super::ControlEvent::Lifecycle(event));
    }

    /// The session is gone: its speaker is forgotten.
    pub(super) fn forget_speaker(&self, session: SessionId) {
        self.inner
            .speakers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&session);
    }

    /// `session`'s dominant speaker, as this process knows it. Not found: the session.
    pub async fn active_speaker(
        &self,
        account: &AccountId,
        session: SessionId,
    ) -> Result<SessionSpeaker, ControlError> {
        self.session(account, session).await?;
        // A session that moved to another process may have left its last speaker here: the
        // host's answer is the one that holds.
        let hosted_elsewhere = self.hosted_elsewhere(session).await?;
        let speaker = if hosted_elsewhere {
            None
        } else {
            self.inner
                .speakers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&session)
                .copied()
        };
        Ok(SessionSpeaker {
            speaker,
            hosted_elsewhere,
        })
    }

    /// Sets whether the account receives the opt-in event `event` (`onActiveSpeaker`,
    /// `onQualityChanged`).
    pub async fn set_webhook_opt_in(
        &self,
        account: &AccountId,
        event: WebhookOptIn,
        on: bool,
    ) -> Result<AccountWebhooks, ControlError> {
        self.inner
            .store
            .set_webhook_opt_in(account, event, on)
            .await?;
        self.forget_webhook_settings(account);
        self.account_webhooks(account).await
    }
}
