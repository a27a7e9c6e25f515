//! The event bus: what control did, in order, for observers (tests, logs). The media plane
//! does not act on it: it is told through the port (`control::port`).

use std::sync::Arc;

use tokio::sync::broadcast;

use crate::domain::{LifecycleEvent, ParticipantId, SessionId};
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
