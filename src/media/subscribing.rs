//! `Subscribing`: the subscribe side of each browser device. Owns, per device, the tracks its
//! subscribe connection carries (m-line, sending or not, accepted or not), the MediaStream ids
//! it sees, its `sdpRevision`, and the one offer that may be pending; changes that arrive while
//! an offer is pending are folded into the next one.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::media::{Direction, MediaKind as RtcKind, Mid};
use str0m::{Input, Rtc};

use super::peers::{builtin_channel, BUILTIN_CHANNELS};
use super::publishing::TrackKey;
use super::{DeviceId, MediaError, StreamMetadata, SubscribeOffer};
use crate::domain::{MediaKind, MediaKinds, ParticipantId, StreamAlias, StreamId};

/// How long a subscribe offer may wait for its answer before it is offered again.
pub const OFFER_TIMEOUT: Duration = Duration::from_secs(10);
/// How many times an unanswered offer is offered again before the device is given up on.
pub const OFFER_RETRIES: u32 = 2;

#[derive(Debug, Clone)]
struct OutTrack {
    mid: Mid,
    /// Sending in the last offer made.
    active: bool,
    /// Accepted by the device at least once (its answer arrived).
    negotiated: bool,
    alias: Option<StreamAlias>,
}

/// One device's subscribe side.
pub(super) struct Subscriber {
    endpoint: String,
    revision: u64,
    pending: Option<SdpPendingOffer>,
    /// The offer `pending` belongs to, to send again if the device reconnects meanwhile.
    pending_offer: Option<SubscribeOffer>,
    /// Changes arrived while an offer was pending: renegotiate when it is answered.
    dirty: bool,
    /// When the pending offer times out, and how many times it was offered again.
    deadline: Option<Instant>,
    retries: u32,
    tracks: BTreeMap<TrackKey, OutTrack>,
    next_track: u64,
    /// The MediaStream id this device sees for each (publisher, stream): its own, because
    /// stream ids are only unique per publisher.
    stream_ids: BTreeMap<(ParticipantId, StreamId), String>,
}

/// What to do about an offer that got no answer in time.
pub(super) enum Overdue {
    /// Send it again (same SDP, so the pending change still fits its answer; a new revision,
    /// since the SDK ignores revisions it has seen).
    Reoffer(SubscribeOffer),
    /// Offered too often: the device does not answer.
    GiveUp,
}

/// What accepting an answer changed.
pub(super) struct Accepted {
    /// Video tracks the device receives for the first time: they need a keyframe.
    pub(super) fresh_video: Vec<TrackKey>,
    /// Changes arrived meanwhile: renegotiate now.
    pub(super) dirty: bool,
}

#[derive(Default)]
pub(super) struct Subscribing {
    by_device: HashMap<DeviceId, Subscriber>,
    /// The deadlines of pending offers, earliest first.
    deadlines: BTreeSet<(Instant, DeviceId)>,
    /// Revisions a device's offers must start above (set before the device is opened).
    floors: HashMap<DeviceId, u64>,
}

impl Subscribing {
    pub(super) fn open(&mut self, device: DeviceId) {
        self.by_device.insert(
            device,
            Subscriber {
                endpoint: uuid::Uuid::new_v4().to_string(),
                revision: self.floors.remove(&device).unwrap_or(0),
                pending: None,
                pending_offer: None,
                dirty: false,
                deadline: None,
                retries: 0,
                tracks: BTreeMap::new(),
                next_track: 0,
                stream_ids: BTreeMap::new(),
            },
        );
    }

    pub(super) fn adopt(&mut self, device: DeviceId, subscriber: Subscriber) {
        if let Some(at) = subscriber.deadline {
            self.deadlines.insert((at, device));
        }
        self.by_device.insert(device, subscriber);
    }

    pub(super) fn remove(&mut self, device: DeviceId) -> Option<Subscriber> {
        let sub = self.by_device.remove(&device)?;
        if let Some(at) = sub.deadline {
            self.deadlines.remove(&(at, device));
        }
        Some(sub)
    }

    /// The next device `device` opened numbers its offers above `revision`: an SDK that
    /// reconnects after a reset ignores revisions it has seen.
    pub(super) fn set_floor(&mut self, device: DeviceId, revision: u64) {
        self.floors.insert(device, revision);
    }

    /// The last revision offered to `device`.
    pub(super) fn revision(&self, device: DeviceId) -> Option<u64> {
        self.by_device.get(&device).map(|s| s.revision)
    }

    /// When the earliest pending offer times out.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|(at, _)| *at)
    }

    /// The pending offers whose time is up at `now`: each is offered again, or given up on
    /// after [`OFFER_RETRIES`] times.
    pub(super) fn overdue(&mut self, now: Instant) -> Vec<(DeviceId, Overdue)> {
        let due: Vec<(Instant, DeviceId)> = self
            .deadlines
            .iter()
            .take_while(|(at, _)| *at <= now)
            .copied()
            .collect();
        let mut out = Vec::new();
        for (at, device) in due {
            self.deadlines.remove(&(at, device));
            let Some(sub) = self.by_device.get_mut(&device) else {
                continue;
            };
            sub.deadline = None;
            let Some(offer) = sub.pending_offer.as_mut() else {
                continue;
            };
            if sub.retries >= OFFER_RETRIES {
                out.push((device, Overdue::GiveUp));
                continue;
            }
            sub.retries += 1;
            sub.revision += 1;
            offer.sdp_revision = sub.revision;
            let offer = offer.clone();
            let at = now + OFFER_TIMEOUT;
            sub.deadline = Some(at);
            self.deadlines.insert((at, device));
            out.push((device, Overdue::Reoffer(offer)));
        }
        out
    }

    /// The offer still waiting for this device's answer, if any.
    pub(super) fn pending_offer(&self, device: DeviceId) -> Option<&SubscribeOffer> {
        self.by_device.get(&device)?.pending_offer.as_ref()
    }

    /// If an offer is pending, notes that another change must follow it, and says so.
    pub(super) fn fold_if_pending(&mut self, device: DeviceId) -> bool {
        match self.by_device.get_mut(&device) {
            Some(s) if s.pending.is_some() => {
                s.dirty = true;
                true
            }
            _ => false,
        }
    }

    /// Brings the subscribe connection `rtc` in line with `desired`: the offer to send, if
    /// anything changed. The caller checked that no offer is pending.
    pub(super) fn renegotiate(
        &mut self,
        device: DeviceId,
        rtc: &mut Rtc,
        desired: &BTreeMap<TrackKey, Option<StreamAlias>>,
        now: Instant,
    ) -> Option<SubscribeOffer> {
        let sub = self.by_device.get_mut(&device)?;
        let first = sub.revision == 0;
        let _ = rtc.handle_input(Input::Timeout(now));
        let mut api = rtc.sdp_api();
        if first {
            for (id, label) in BUILTIN_CHANNELS {
                api.add_channel_with_config(builtin_channel(id, label));
            }
        }
        for (key, alias) in desired {
            match sub.tracks.get_mut(key) {
                Some(track) if track.active => track.alias = alias.clone(),
                Some(track) => {
                    api.set_direction(track.mid, Direction::SendOnly);
                    track.active = true;
                    track.negotiated = false;
                    track.alias = alias.clone();
                }
                None => {
                    sub.next_track += 1;
                    let kind = match key.kind {
                        MediaKind::Audio => RtcKind::Audio,
                        MediaKind::Video => RtcKind::Video,
                    };
                    let track_id =
                        format!("{}-{}", key.kind.as_str().to_lowercase(), sub.next_track);
                    let stream_id = sub
                        .stream_ids
                        .entry((key.publisher, key.stream.clone()))
                        .or_insert_with(|| uuid::Uuid::new_v4().simple().to_string())
                        .clone();
                    let mid = api.add_media(
                        kind,
                        Direction::SendOnly,
                        Some(stream_id),
                        Some(track_id),
                        None,
                    );
                    sub.tracks.insert(
                        key.clone(),
                        OutTrack {
                            mid,
                            active: true,
                            negotiated: false,
                            alias: alias.clone(),
                        },
                    );
                }
            }
        }
        for (key, track) in sub.tracks.iter_mut() {
            if track.active && !desired.contains_key(key) {
                api.set_direction(track.mid, Direction::Inactive);
                track.active = false;
            }
        }
        let (offer, pending) = api.apply()?;
        sub.pending = Some(pending);
        sub.revision += 1;
        let offer = SubscribeOffer {
            sdp_offer: offer.to_sdp_string(),
            sdp_revision: sub.revision,
            endpoint_id: sub.endpoint.clone(),
            stream_metadata: sub.metadata(),
        };
        sub.pending_offer = Some(offer.clone());
        sub.retries = 0;
        let at = now + OFFER_TIMEOUT;
        if let Some(old) = sub.deadline.replace(at) {
            self.deadlines.remove(&(old, device));
        }
        self.deadlines.insert((at, device));
        Some(offer)
    }

    /// The device's answer to its pending offer.
    pub(super) fn accept_answer(
        &mut self,
        device: DeviceId,
        rtc: &mut Rtc,
        answer: SdpAnswer,
    ) -> Result<Accepted, MediaError> {
        let sub = self
            .by_device
            .get_mut(&device)
            .ok_or(MediaError::UnknownDevice)?;
        let pending = sub.pending.take().ok_or(MediaError::NoPendingOffer)?;
        sub.pending_offer = None;
        sub.retries = 0;
        if let Some(at) = sub.deadline.take() {
            self.deadlines.remove(&(at, device));
        }
        rtc.sdp_api()
            .accept_answer(pending, answer)
            .map_err(|e| MediaError::Negotiation(e.to_string()))?;
        let mut fresh_video = Vec::new();
        for (key, track) in sub.tracks.iter_mut() {
            if track.active && !track.negotiated {
                track.negotiated = true;
                if key.kind == MediaKind::Video {
                    fresh_video.push(key.clone());
                }
            }
        }
        Ok(Accepted {
            fresh_video,
            dirty: std::mem::take(&mut sub.dirty),
        })
    }

    /// Of `desired`, the tracks the device's connection carries now (sending and accepted),
    /// with their m-line.
    pub(super) fn flowing(
        &self,
        device: DeviceId,
        desired: &BTreeMap<TrackKey, Option<StreamAlias>>,
    ) -> BTreeMap<TrackKey, Mid> {
        let Some(sub) = self.by_device.get(&device) else {
            return BTreeMap::new();
        };
        desired
            .keys()
            .filter_map(|key| {
                let track = sub.tracks.get(key)?;
                (track.active && track.negotiated).then(|| (key.clone(), track.mid))
            })
            .collect()
    }
}

impl Subscriber {
    /// What the offer says about each stream it sends.
    fn metadata(&self) -> BTreeMap<String, StreamMetadata> {
        let mut out: BTreeMap<String, StreamMetadata> = BTreeMap::new();
        for (key, track) in self.tracks.iter().filter(|(_, t)| t.active) {
            let Some(stream_id) = self.stream_ids.get(&(key.publisher, key.stream.clone())) else {
                continue;
            };
            let entry = out
                .entry(stream_id.clone())
                .or_insert_with(|| StreamMetadata {
                    endpoint_id: format!("{}:{stream_id}", self.endpoint),
                    kinds: MediaKinds::NONE,
                    alias: track.alias.clone(),
                    participant: key.publisher,
                });
            entry.kinds = MediaKinds::from_kinds(entry.kinds.iter().chain([key.kind]));
        }
        out
    }
}
