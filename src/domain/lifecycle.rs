//! What happens to a participant's devices and streams, as control records it and the
//! webhooks report it: the vocabulary shared by control (which raises these events) and the
//! webhook slice (which renders them), so neither names the other.

use super::{MediaKinds, ParticipantId, StreamAlias, StreamId};

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
    /// The participant became its session's dominant speaker (patchbay's `onActiveSpeaker`,
    /// sent only to accounts that asked for it).
    ActiveSpeaker {
        /// The new dominant speaker.
        participant: ParticipantId,
        /// Its session.
        session: super::SessionId,
        /// The speaker is a phone.
        phone: bool,
    },
    /// The participant's quality level changed and held (patchbay's `onQualityChanged`, sent
    /// only to accounts that asked for it).
    QualityChanged {
        /// The participant.
        participant: ParticipantId,
        /// Its session.
        session: super::SessionId,
        /// The level now.
        level: super::QualityLevel,
        /// The level reported before.
        previous: super::QualityLevel,
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
