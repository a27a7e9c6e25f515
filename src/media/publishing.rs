//! `Publishing`: what each device of the engine publishes. Owns device → its publish
//! endpoint id and its published MediaStreams (alias, and the m-lines carrying each kind).

use super::keys::TrackKey;
use std::collections::{BTreeMap, HashMap};

use str0m::media::{MediaKind as RtcKind, Mid};
use str0m::Rtc;

use super::{DeclaredStreams, DeviceId};
use crate::domain::{
    MediaKind, MediaKinds, ParticipantId, PublishPermissions, StreamAlias, StreamId,
};
use crate::forwarding::PublishedStream;

/// One published MediaStream of a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Publication {
    pub(super) alias: Option<StreamAlias>,
    /// The m-lines carrying it, with their kind (only kinds the participant may publish).
    pub(super) mids: Vec<(Mid, MediaKind)>,
}

impl Publication {
    pub(super) fn kinds(&self) -> MediaKinds {
        MediaKinds::from_kinds(self.mids.iter().map(|(_, k)| *k))
    }
}

/// What one device publishes.
pub(super) struct Published {
    pub(super) participant: ParticipantId,
    /// The endpoint id of its publish connection.
    pub(super) endpoint: String,
    pub(super) streams: BTreeMap<StreamId, Publication>,
}

impl Published {
    /// Its tracks, each with the m-line carrying it.
    pub(super) fn tracks(&self) -> impl Iterator<Item = (TrackKey, Mid)> + '_ {
        self.streams.iter().flat_map(move |(stream, p)| {
            p.mids.iter().map(move |(mid, kind)| {
                (
                    TrackKey {
                        publisher: self.participant,
                        stream: stream.clone(),
                        kind: *kind,
                    },
                    *mid,
                )
            })
        })
    }

    /// Its streams as control records them.
    pub(super) fn streams(&self) -> Vec<PublishedStream> {
        self.streams
            .iter()
            .map(|(stream, p)| PublishedStream {
                publisher: self.participant,
                stream: stream.clone(),
                alias: p.alias.clone(),
                kinds: p.kinds(),
            })
            .collect()
    }
}

#[derive(Default)]
pub(super) struct Publishing {
    by_device: HashMap<DeviceId, Published>,
}

impl Publishing {
    /// A device that publishes nothing yet.
    pub(super) fn open(&mut self, device: DeviceId, participant: ParticipantId) {
        self.by_device.insert(
            device,
            Published {
                participant,
                endpoint: uuid::Uuid::new_v4().to_string(),
                streams: BTreeMap::new(),
            },
        );
    }

    /// Adopts what a device published on another engine.
    pub(super) fn adopt(&mut self, device: DeviceId, published: Published) {
        self.by_device.insert(device, published);
    }

    pub(super) fn remove(&mut self, device: DeviceId) -> Option<Published> {
        self.by_device.remove(&device)
    }

    pub(super) fn get(&self, device: DeviceId) -> Option<&Published> {
        self.by_device.get(&device)
    }

    /// Replaces what `device` publishes. Returns the previous publications if they differ.
    pub(super) fn set(
        &mut self,
        device: DeviceId,
        streams: BTreeMap<StreamId, Publication>,
    ) -> Option<Published> {
        let published = self.by_device.get_mut(&device)?;
        if published.streams == streams {
            return None;
        }
        let old = std::mem::replace(&mut published.streams, streams);
        Some(Published {
            participant: published.participant,
            endpoint: published.endpoint.clone(),
            streams: old,
        })
    }
}

/// What a publish connection carries after its offer was accepted: every receiving, enabled
/// m-line (in the offer's order) of a declared stream, in a kind the participant may publish.
pub(super) fn publications(
    rtc: &Rtc,
    mids: &[Mid],
    declared: &DeclaredStreams,
    permissions: PublishPermissions,
) -> BTreeMap<StreamId, Publication> {
    let mut published: BTreeMap<StreamId, Publication> = BTreeMap::new();
    for &line in mids {
        let Some(media) = rtc.media(line) else {
            continue;
        };
        if media.disabled() || !media.direction().is_receiving() {
            continue;
        }
        let kind = match media.kind() {
            RtcKind::Audio => MediaKind::Audio,
            RtcKind::Video => MediaKind::Video,
        };
        if !permissions.contains(kind) {
            continue;
        }
        let Some(alias) = declared.get(media.stream_id()) else {
            continue;
        };
        let Ok(stream) = StreamId::parse(media.stream_id()) else {
            continue;
        };
        published
            .entry(stream)
            .or_insert_with(|| Publication {
                alias: alias.clone(),
                mids: Vec::new(),
            })
            .mids
            .push((line, kind));
    }
    published
}
