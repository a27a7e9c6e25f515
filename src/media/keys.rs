//! The keys the parts of the media plane share: a peer connection's id, a publisher's track,
//! where a track's packets come from and where they go, and a phone's received source. Types
//! only, so that every part can name them without depending on the part that fills them.

use str0m::media::Mid;

use super::DeviceId;
use crate::domain::{MediaKind, ParticipantId, StreamId};

/// A peer connection's id within one engine (ids are not kept across a move between shards).
pub(super) type PeerId = u64;

/// One track of a publisher: the unit subscribers receive.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct TrackKey {
    pub(super) publisher: ParticipantId,
    pub(super) stream: StreamId,
    pub(super) kind: MediaKind,
}

/// Where a track's frames come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum Source {
    /// An m-line of a browser's publish connection.
    Peer { peer: PeerId, mid: Mid },
    /// A local device's (a phone's) one audio stream.
    Local(DeviceId),
}

/// Where a forwarded frame goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum Target {
    /// An m-line of a browser's subscribe connection.
    Peer { peer: PeerId, mid: Mid },
    /// A local device, as one of the sources it mixes.
    Local { device: DeviceId, source: SourceKey },
}

/// Identifies one received track of a local device: the publisher and its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceKey(pub u64);

impl SourceKey {
    pub(super) fn of(publisher: ParticipantId, stream: &StreamId) -> SourceKey {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        publisher.hash(&mut h);
        stream.as_str().hash(&mut h);
        SourceKey(h.finish())
    }
}
