//! Webhooks: what the backend hears about its participants, as plain code without I/O.
//!
//! This module owns the webhook vocabulary and the decisions of delivery; the runtime
//! (`runtime::webhooks`) owns the tasks, the clock and the HTTP client, and the store owns the
//! durable outbox. Files, by concern:
//! - `mod.rs`: [`WebhookKind`], the event types, and [`render`], the one translation of a
//!   [`LifecycleEvent`] into webhook bodies (Bandwidth's exact body for its three).
//! - `signature.rs`: Standard Webhooks signing ([`sign`], [`new_secret`]).
//! - `schedule.rs`: [`RetryPolicy`], exponential backoff with jitter for a bounded time.
//! - `dispatch.rs`: [`Dispatcher`], which due events to send now (one in flight per
//!   participant, bounded concurrency) and what an attempt's result means for the outbox.
//! - `destinations.rs`: [`Destinations`], where deliveries may go (public addresses and the
//!   operator's allowed networks).
//! - `outbox.rs`: [`OutboxEvent`], [`DeliveryAttempt`], [`AttemptOutcome`]: what the store
//!   keeps for delivery, in this module's terms (the store maps its rows to them).
//!
//! It names only `domain`: control raises [`LifecycleEvent`]s (a domain type) and calls
//! [`render`]; nothing here calls back.

mod destinations;
mod dispatch;
mod outbox;
mod schedule;
mod signature;

pub use destinations::{is_public, Destinations, Refusal};
pub use dispatch::{receiver_of, AttemptResult, Concurrency, Dispatcher};
pub use outbox::{AttemptOutcome, DeliveryAttempt, NewOutboxEvent, OutboxEvent};
pub use schedule::RetryPolicy;
pub use signature::{new_secret, sign, sign_all, SECRET_PREFIX};

use serde::Serialize;

use crate::domain::{CallEndReason, LifecycleEvent};
use crate::domain::{ParticipantId, Tag};

/// A webhook event type. The first three are Bandwidth's; the others are patchbay's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WebhookKind {
    /// A device connected (`onConnect`).
    Connect,
    /// A device left: it said `leave`, or a phone hung up (`onLeave`).
    Leave,
    /// A device's connection was lost or ended by the server (`onDisconnect`).
    Disconnect,
    /// The participant started publishing a stream (`onStreamPublished`).
    StreamPublished,
    /// The participant stopped publishing a stream (`onStreamUnpublished`).
    StreamUnpublished,
    /// A phone call was answered (`onCallAnswered`).
    CallAnswered,
    /// A phone call ended, with its reason (`onCallEnded`).
    CallEnded,
    /// A phone pressed a key (`onDtmf`).
    Dtmf,
    /// A session's dominant speaker changed (`onActiveSpeaker`; opt-in per account).
    ActiveSpeaker,
    /// A participant's quality level changed (`onQualityChanged`; opt-in per account).
    QualityChanged,
}

impl WebhookKind {
    /// The `event` field of the body.
    pub fn name(self) -> &'static str {
        match self {
            WebhookKind::Connect => "onConnect",
            WebhookKind::Leave => "onLeave",
            WebhookKind::Disconnect => "onDisconnect",
            WebhookKind::StreamPublished => "onStreamPublished",
            WebhookKind::StreamUnpublished => "onStreamUnpublished",
            WebhookKind::CallAnswered => "onCallAnswered",
            WebhookKind::CallEnded => "onCallEnded",
            WebhookKind::Dtmf => "onDtmf",
            WebhookKind::ActiveSpeaker => "onActiveSpeaker",
            WebhookKind::QualityChanged => "onQualityChanged",
        }
    }

    /// Is it one of Bandwidth's three events (sent even to accounts that want only those)?
    pub fn is_bandwidth(self) -> bool {
        matches!(
            self,
            WebhookKind::Connect | WebhookKind::Leave | WebhookKind::Disconnect
        )
    }
}

/// One webhook to put in the outbox: its type and its JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    /// Its type.
    pub kind: WebhookKind,
    /// The participant it is about.
    pub participant: ParticipantId,
    /// The body, exactly as posted.
    pub body: String,
}

/// The body's common fields, in Bandwidth's order; patchbay's own events add theirs after.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Body<'a> {
    event: &'static str,
    timestamp: String,
    participant_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    device_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tag: Option<&'a str>,
    #[serde(flatten)]
    extra: serde_json::Map<String, serde_json::Value>,
}

/// The webhooks a lifecycle event raises for a participant tagged `tag`, at `at_ms` (epoch
/// milliseconds, rendered as a string like Bandwidth's).
pub fn render(event: &LifecycleEvent, at_ms: i64, tag: Option<&Tag>) -> Vec<Webhook> {
    use serde_json::{json, Map, Value};
    let (participant, kind, device, extra): (_, _, Option<&str>, Map<String, Value>) = match event {
        // A call resumed after its process died: the backend had its onConnect (and a phone's
        // onCallAnswered).
        LifecycleEvent::Connected { resumed: true, .. } | LifecycleEvent::CallResumed { .. } => {
            return Vec::new()
        }
        LifecycleEvent::Connected {
            participant,
            device,
            resumed: false,
        } => (*participant, WebhookKind::Connect, Some(device), Map::new()),
        LifecycleEvent::Disconnected {
            participant,
            device,
            left,
        } => {
            let kind = if *left {
                WebhookKind::Leave
            } else {
                WebhookKind::Disconnect
            };
            (*participant, kind, Some(device), Map::new())
        }
        LifecycleEvent::StreamPublished {
            participant,
            stream,
            alias,
            kinds,
        } => {
            let mut extra = Map::new();
            extra.insert("streamId".into(), json!(stream.as_str()));
            if let Some(alias) = alias {
                extra.insert("alias".into(), json!(alias.as_str()));
            }
            let kinds: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
            extra.insert("mediaTypes".into(), json!(kinds));
            (*participant, WebhookKind::StreamPublished, None, extra)
        }
        LifecycleEvent::StreamUnpublished {
            participant,
            stream,
        } => {
            let mut extra = Map::new();
            extra.insert("streamId".into(), json!(stream.as_str()));
            (*participant, WebhookKind::StreamUnpublished, None, extra)
        }
        LifecycleEvent::CallAnswered { participant, call } => (
            *participant,
            WebhookKind::CallAnswered,
            Some(call),
            Map::new(),
        ),
        LifecycleEvent::CallEnded {
            participant,
            call,
            reason,
        } => {
            let mut extra = Map::new();
            extra.insert("reason".into(), json!(reason.as_str()));
            (*participant, WebhookKind::CallEnded, Some(call), extra)
        }
        LifecycleEvent::PhoneDtmf {
            participant,
            digit,
            duration_ms,
        } => {
            let mut extra = Map::new();
            extra.insert("digit".into(), json!(digit.to_string()));
            extra.insert("durationMs".into(), json!(duration_ms));
            (*participant, WebhookKind::Dtmf, None, extra)
        }
        LifecycleEvent::ActiveSpeaker {
            participant,
            session,
            phone,
        } => {
            let mut extra = Map::new();
            extra.insert("sessionId".into(), json!(session.to_string()));
            extra.insert("phone".into(), json!(phone));
            (*participant, WebhookKind::ActiveSpeaker, None, extra)
        }
        LifecycleEvent::QualityChanged {
            participant,
            session,
            level,
            previous,
        } => {
            let mut extra = Map::new();
            extra.insert("sessionId".into(), json!(session.to_string()));
            extra.insert("level".into(), json!(level.as_str()));
            extra.insert("previousLevel".into(), json!(previous.as_str()));
            (*participant, WebhookKind::QualityChanged, None, extra)
        }
    };
    let body = Body {
        event: kind.name(),
        timestamp: at_ms.to_string(),
        participant_id: participant.to_string(),
        device_id: device,
        tag: tag.map(Tag::as_str),
        extra,
    };
    match serde_json::to_string(&body) {
        Ok(body) => vec![Webhook {
            kind,
            participant,
            body,
        }],
        Err(e) => {
            tracing::error!(error = %e, "cannot render a webhook body");
            Vec::new()
        }
    }
}

/// Why a phone call ended, as `onCallEnded` says it.
impl CallEndReason {
    /// The `reason` field.
    pub fn as_str(self) -> &'static str {
        match self {
            CallEndReason::Hangup => "hangup",
            CallEndReason::Ended => "ended",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn participant() -> ParticipantId {
        "0d0c3ae4-9a32-4e55-8b2a-1f5d0b1f6a11".parse().unwrap()
    }

    #[test]
    fn bandwidth_events_have_bandwidths_exact_body() {
        let p = participant();
        let left = LifecycleEvent::Disconnected {
            participant: p,
            device: "dev-1".into(),
            left: true,
        };
        let tag = Tag::parse("agent").unwrap();
        let hooks = render(&left, 1628786234676, Some(&tag));
        assert_eq!(hooks.len(), 1);
        assert_eq!(hooks[0].kind, WebhookKind::Leave);
        assert_eq!(
            hooks[0].body,
            format!(
                r#"{{"event":"onLeave","timestamp":"1628786234676","participantId":"{p}","deviceId":"dev-1","tag":"agent"}}"#
            )
        );
        let connect = LifecycleEvent::Connected {
            participant: p,
            device: "dev-1".into(),
            resumed: false,
        };
        let resumed = LifecycleEvent::Connected {
            participant: p,
            device: "dev-1".into(),
            resumed: true,
        };
        assert!(
            render(&resumed, 5, None).is_empty(),
            "a resumed call's backend had its onConnect"
        );
        assert_eq!(
            render(&connect, 5, None)[0].body,
            format!(
                r#"{{"event":"onConnect","timestamp":"5","participantId":"{p}","deviceId":"dev-1"}}"#
            ),
            "no tag: the field is omitted"
        );
        let lost = LifecycleEvent::Disconnected {
            participant: p,
            device: "dev-1".into(),
            left: false,
        };
        assert_eq!(render(&lost, 5, None)[0].kind, WebhookKind::Disconnect);
    }

    #[test]
    fn patchbay_events_add_their_fields_after_the_common_ones() {
        let p = participant();
        let dtmf = LifecycleEvent::PhoneDtmf {
            participant: p,
            digit: '#',
            duration_ms: 120,
        };
        let hook = &render(&dtmf, 7, None)[0];
        assert_eq!(hook.kind, WebhookKind::Dtmf);
        assert!(!hook.kind.is_bandwidth());
        assert_eq!(
            hook.body,
            format!(
                r##"{{"event":"onDtmf","timestamp":"7","participantId":"{p}","digit":"#","durationMs":120}}"##
            )
        );
        let ended = LifecycleEvent::CallEnded {
            participant: p,
            call: "call-1".into(),
            reason: CallEndReason::Hangup,
        };
        let body: serde_json::Value =
            serde_json::from_str(&render(&ended, 7, None)[0].body).unwrap();
        assert_eq!(body["event"], "onCallEnded");
        assert_eq!(body["reason"], "hangup");
        assert_eq!(body["deviceId"], "call-1");
        let session = crate::domain::SessionId::parse("0c2e0c2e-0c2e-4c2e-8c2e-0c2e0c2e0c2e")
            .expect("session id");
        let changed = LifecycleEvent::QualityChanged {
            participant: p,
            session,
            level: crate::domain::QualityLevel::Poor,
            previous: crate::domain::QualityLevel::Good,
        };
        let hook = &render(&changed, 9, None)[0];
        assert_eq!(hook.kind, WebhookKind::QualityChanged);
        assert!(!hook.kind.is_bandwidth());
        assert_eq!(
            hook.body,
            format!(
                r#"{{"event":"onQualityChanged","timestamp":"9","participantId":"{p}","level":"poor","previousLevel":"good","sessionId":"{session}"}}"#
            )
        );
    }
}
