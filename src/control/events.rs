//! The event bus: what control did, in order, for observers (tests, logs). The media plane
//! does not act on it: it is told through the port (`control::port`).

use std::sync::Arc;

use tokio::sync::broadcast;

use crate::domain::{MediaKinds, ParticipantId, SessionId, StreamAlias, StreamId};
use crate::forwarding::TableDiff;

/// A change of one session's forwarding table.
#[derive(Debug, Clone)]
pub struct RoutingUpdate {
    /// The session whose table changed.
    pub session: SessionId,
    /// What changed, shared by every receiver.
    pub diff: Arc<TableDiff>,
}

/// What control did, as observers see it.
#[derive(Debug, Clone)]
pub enum ControlEvent {
    /// A session's forwarding table changed.
    Routes(RoutingUpdate),
    /// A participant was deleted: its devices must be disconnected (its token is revoked).
    ParticipantDeleted(ParticipantId),
    /// A participant's devices must be disconnected (browsers closed, phones hung up), for
    /// this reason; the participant itself stays (its session expired).
    Disconnect {
        /// Whose devices.
        participant: ParticipantId,
        /// Why, as the device is told.
        reason: &'static str,
    },
    /// Something happened to a participant's device or streams (for webhooks and logs).
    Lifecycle(LifecycleEvent),
    /// The process stops: the media plane lets every device go (browsers are closed with
    /// 1001 "server shutting down").
    Shutdown,
}

/// A participant's device or stream changed. `device` is the device's `uniqueId`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LifecycleEvent {
    /// A device connected.
    Connected {
        /// Its participant.
        participant: ParticipantId,
        /// Its `uniqueId`.
        device: String,
        /// The device was connected to a process that died, and its call resumes here: the
        /// backend was told `onConnect` already, so no webhook is sent (the live state is
        /// still recorded).
        resumed: bool,
    },
    /// `left`: the device said `leave` (Bandwidth's `onLeave`); otherwise the connection was
    /// lost or replaced (`onDisconnect`).
    Disconnected {
        /// Its participant.
        participant: ParticipantId,
        /// Its `uniqueId`.
        device: String,
        /// It said `leave` first.
        left: bool,
    },
    /// A participant started publishing a stream.
    StreamPublished {
        /// The publisher.
        participant: ParticipantId,
        /// The stream.
        stream: StreamId,
        /// Its alias, when the device declared one.
        alias: Option<StreamAlias>,
        /// What it carries (audio, video).
        kinds: MediaKinds,
    },
    /// A participant stopped publishing a stream.
    StreamUnpublished {
        /// The publisher.
        participant: ParticipantId,
        /// The stream.
        stream: StreamId,
    },
    /// A phone call was answered. `call` is the call's device id (as in `Connected`).
    CallAnswered {
        /// The phone's participant.
        participant: ParticipantId,
        /// The call's device id.
        call: String,
    },
    /// A phone call another process answered was taken over by this one (no webhook: the
    /// backend had its `onCallAnswered`); it marks the device as a phone in the live state.
    CallResumed {
        /// The phone's participant.
        participant: ParticipantId,
        /// The call's device id.
        call: String,
    },
    /// A phone call ended.
    CallEnded {
        /// The phone's participant.
        participant: ParticipantId,
        /// The call's device id.
        call: String,
        /// Why.
        reason: CallEndReason,
    },
    /// A phone participant pressed a key (RFC 4733 telephone-event from the phone).
    PhoneDtmf {
        /// The phone's participant.
        participant: ParticipantId,
        /// The key: `0`-`9`, `*`, `#` or `A`-`D`.
        digit: char,
        /// How long it was held, in milliseconds (from the RFC 4733 event's duration).
        duration_ms: u32,
    },
}

/// Why a phone call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallEndReason {
    /// The phone hung up (BYE from the phone).
    Hangup,
    /// The server ended it (participant deleted or out of its session, shutdown, failure).
    Ended,
}

/// How many events a slow observer may lag behind before it misses some.
const CAPACITY: usize = 4096;

/// Fan-out of [`ControlEvent`]s to every watcher, in the order they were sent.
pub(super) struct EventBus {
    sender: broadcast::Sender<ControlEvent>,
}

impl EventBus {
    pub(super) fn new() -> EventBus {
        let (sender, _) = broadcast::channel(CAPACITY);
        EventBus { sender }
    }

    pub(super) fn watch(&self) -> broadcast::Receiver<ControlEvent> {
        self.sender.subscribe()
    }

    /// Sends to whoever watches; nobody watching (yet) is fine.
    pub(super) fn send(&self, event: ControlEvent) {
        let _ = self.sender.send(event);
    }
}
