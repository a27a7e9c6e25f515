//! `Subscribing`: the subscribe side of each browser device. Owns, per device, the tracks its
//! subscribe connection carries (m-line, sending or not, accepted or not), the MediaStream ids
//! it sees, its `sdpRevision`, the one offer that may be pending (changes that arrive while an
//! offer is pending are folded into the next one), and the connection's *layout*: its m-lines
//! in order with the mids the device knows them by.
//!
//! # Resumption
//! Every offer comes with the layout it gives the device ([`SubscribeLayout`]), which the
//! runtime has stored. A device whose SDK instance was offered a layout by another process (a
//! restart) is opened with it ([`Subscribing::prepare`]): its first offer rebuilds the same
//! m-lines in the same order (tracks no longer wanted as `inactive`), numbered above every
//! revision the SDK may have seen. str0m picks its own mids, so the offer and the answer are
//! translated between str0m's mids and the device's, and the MID header extension is left out
//! of such a connection's offers: the device demultiplexes by the SSRCs the offer signals
//! (str0m writes its own mid into that extension, which the device would not know).
//!
//! # The engine's side
//! [`Subscribing::offer`] makes a device's subscribe connection when it first has something
//! to carry and hands the offer to the engine's events, [`Subscribing::handle_answer`] gives
//! the device's answer to that connection, and [`Subscribing::targets`] says which fan-out
//! targets the negotiated tracks are. The other parts it works on are lent to it for each call
//! as [`Parts`].

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::media::{Direction, MediaKind as RtcKind, Mid};
use str0m::{Input, Rtc};

use super::config::EngineConfig;
use super::demux::Demux;
use super::devices::Devices;
use super::keys::{PeerId, Target, TrackKey};
use super::output::EngineEvent;
use super::peers::{builtin_channel, Peers, BUILTIN_CHANNELS};
use super::{DeviceId, MediaError, StreamMetadata, SubscribeOffer};
use crate::domain::{
    LayoutLine, LineContent, MediaKind, MediaKinds, ParticipantId, StreamAlias, StreamId,
    SubscribeLayout,
};

/// The parts of the engine a subscribe negotiation works on, lent for one call.
pub(super) struct Parts<'a> {
    pub(super) config: &'a EngineConfig,
    pub(super) demux: &'a mut Demux,
    pub(super) peers: &'a mut Peers,
    pub(super) devices: &'a mut Devices,
    /// The engine's events (the queue is the packet path's, `Relay`'s).
    pub(super) events: &'a mut VecDeque<EngineEvent>,
}

/// How long a subscribe offer may wait for its answer before it is offered again.
pub const OFFER_TIMEOUT: Duration = Duration::from_secs(10);
/// How many times an unanswered offer is offered again before the device is given up on.
pub const OFFER_RETRIES: u32 = 2;
/// How far above a stored layout's revision a resumed connection numbers its offers: the
/// layout is stored after its offer left, so the device may have seen a few revisions more
/// than the store holds (one offer is pending at a time, and each needs an answer).
pub(super) const RESUME_REVISION_STEP: u64 = 100;

/// How long a resumed connection keeps sending the tracks it was sending before the restart,
/// waiting for their publishers to come back (their SDKs restart their publish connections
/// once the browser declares the old path failed), before it renegotiates them `inactive`:
/// the application sees no stream go and come back.
pub(super) const RESUME_HOLD: Duration = Duration::from_secs(30);

/// The RTP header extension that carries a packet's mid (RFC 8843).
const MID_EXTENSION: &str = "urn:ietf:params:rtp-hdrext:sdes:mid";

#[derive(Debug, Clone)]
struct OutTrack {
    mid: Mid,
    /// Sending in the last offer made.
    active: bool,
    /// Accepted by the device at least once (its answer arrived).
    negotiated: bool,
    alias: Option<StreamAlias>,
}

/// One m-line of a subscribe connection.
#[derive(Debug, Clone)]
struct Line {
    /// The mid the device knows it by; `None` until the offer that adds it is made.
    wire: Option<String>,
    /// str0m's mid for it; `None` until the offer that adds it is made.
    rtc: Option<String>,
    /// What it carries.
    content: LineContent,
}

/// How a device's subscribe side starts: the SDK instance, and what that instance was
/// offered before (by this process or another).
#[derive(Debug, Default)]
struct Opening {
    unique_id: String,
    floor: u64,
    layout: Option<SubscribeLayout>,
}

/// One device's subscribe side.
pub(super) struct Subscriber {
    endpoint: String,
    /// The SDK instance (`uniqueId`) the connection belongs to.
    unique_id: String,
    revision: u64,
    /// The first offer was made (the data channels are negotiated).
    started: bool,
    /// The connection's m-lines, in order, as offered.
    lines: Vec<Line>,
    /// A layout to rebuild at the first offer (a resumed connection).
    resume: Option<SubscribeLayout>,
    /// Mids differ between str0m and the device: offers and answers are translated, and the
    /// MID header extension is not offered.
    translated: bool,
    /// Tracks a resumed connection keeps sending until [`RESUME_HOLD`] passed, though no
    /// route wants them (yet): their publishers are still coming back.
    held: BTreeSet<TrackKey>,
    /// When `held` is released.
    held_until: Option<Instant>,
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
    /// When resumed connections release the tracks they hold, earliest first.
    releases: BTreeSet<(Instant, DeviceId)>,
    /// How a device's subscribe side starts (set before the device is opened).
    openings: HashMap<DeviceId, Opening>,
}

impl Subscribing {
    pub(super) fn open(&mut self, device: DeviceId) {
        let opening = self.openings.remove(&device).unwrap_or_default();
        let stored = opening
            .layout
            .as_ref()
            .filter(|l| !opening.unique_id.is_empty() && l.unique_id == opening.unique_id);
        let revision = stored
            .map(|l| l.revision.saturating_add(RESUME_REVISION_STEP))
            .unwrap_or(0)
            .max(opening.floor);
        let resume = stored.cloned();
        self.by_device.insert(
            device,
            Subscriber {
                endpoint: uuid::Uuid::new_v4().to_string(),
                unique_id: opening.unique_id,
                revision,
                started: false,
                lines: Vec::new(),
                translated: resume.is_some(),
                resume,
                held: BTreeSet::new(),
                held_until: None,
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
        if let Some(at) = subscriber.held_until {
            self.releases.insert((at, device));
        }
        self.by_device.insert(device, subscriber);
    }

    pub(super) fn remove(&mut self, device: DeviceId) -> Option<Subscriber> {
        let sub = self.by_device.remove(&device)?;
        if let Some(at) = sub.deadline {
            self.deadlines.remove(&(at, device));
        }
        if let Some(at) = sub.held_until {
            self.releases.remove(&(at, device));
        }
        Some(sub)
    }

    /// The next device `device` opened numbers its offers above `revision`: an SDK that
    /// reconnects after a reset ignores revisions it has seen.
    pub(super) fn set_floor(&mut self, device: DeviceId, revision: u64) {
        self.openings.entry(device).or_default().floor = revision;
    }

    /// The next device `device` opened belongs to SDK instance `unique_id`, which was offered
    /// `layout` before (stored; `None`: nothing known). A layout of another instance is
    /// ignored: that instance has a connection of its own.
    pub(super) fn prepare(
        &mut self,
        device: DeviceId,
        unique_id: String,
        layout: Option<SubscribeLayout>,
    ) {
        let opening = self.openings.entry(device).or_default();
        opening.unique_id = unique_id;
        opening.layout = layout;
    }

    /// Whether `device` has a connection to resume (offer it even with nothing to send: the
    /// device's connection must be brought back to this process).
    pub(super) fn resuming(&self, device: DeviceId) -> bool {
        self.by_device
            .get(&device)
            .is_some_and(|s| s.resume.is_some())
    }

    /// The layout `device` was last offered.
    pub(super) fn layout(&self, device: DeviceId) -> Option<SubscribeLayout> {
        self.by_device.get(&device).map(Subscriber::layout)
    }

    /// The last revision offered to `device`.
    pub(super) fn revision(&self, device: DeviceId) -> Option<u64> {
        self.by_device.get(&device).map(|s| s.revision)
    }

    /// When the earliest pending offer times out.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let offer = self.deadlines.first().map(|(at, _)| *at);
        let release = self.releases.first().map(|(at, _)| *at);
        match (offer, release) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// What is due at `now`: each pending offer whose time is up is offered again
    /// ([`EngineEvent::SubscribeOffer`], a new revision of the same SDP, since the SDK ignores
    /// revisions it has seen), or given up on after [`OFFER_RETRIES`] times
    /// ([`EngineEvent::Unanswered`]), into `events`. Returns the devices whose resumed
    /// connection's held tracks are released now: the engine renegotiates them.
    pub(super) fn overdue(
        &mut self,
        events: &mut VecDeque<EngineEvent>,
        now: Instant,
    ) -> Vec<DeviceId> {
        let due: Vec<(Instant, DeviceId)> = self
            .deadlines
            .iter()
            .take_while(|(at, _)| *at <= now)
            .copied()
            .collect();
        let mut out = Vec::new();
        let released: Vec<(Instant, DeviceId)> = self
            .releases
            .iter()
            .take_while(|(at, _)| *at <= now)
            .copied()
            .collect();
        for (at, device) in released {
            self.releases.remove(&(at, device));
            if let Some(sub) = self.by_device.get_mut(&device) {
                sub.held_until = None;
                sub.held.clear();
                out.push(device);
            }
        }
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
                events.push_back(EngineEvent::Unanswered { device });
                continue;
            }
            sub.retries += 1;
            sub.revision += 1;
            offer.sdp_revision = sub.revision;
            let offer = offer.clone();
            let at = now + OFFER_TIMEOUT;
            sub.deadline = Some(at);
            self.deadlines.insert((at, device));
            tracing::debug!(
                device = device.0,
                revision = offer.sdp_revision,
                "subscribe offer unanswered: offering it again"
            );
            let layout = sub.layout();
            events.push_back(EngineEvent::SubscribeOffer {
                device,
                offer,
                layout,
            });
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
        let _ = rtc.handle_input(Input::Timeout(now));
        let mut api = rtc.sdp_api();
        if !sub.started {
            sub.started = true;
            match sub.resume.take() {
                Some(layout) => {
                    sub.rebuild(&mut api, layout, desired);
                    if !sub.held.is_empty() {
                        let at = now + RESUME_HOLD;
                        sub.held_until = Some(at);
                        self.releases.insert((at, device));
                    }
                }
                None => {
                    for (id, label) in BUILTIN_CHANNELS {
                        api.add_channel_with_config(builtin_channel(id, label));
                    }
                    sub.lines.push(Line {
                        wire: None,
                        rtc: None,
                        content: LineContent::Channels,
                    });
                }
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
                None => sub.add_track(&mut api, key, alias.clone(), true, None),
            }
        }
        for (key, track) in sub.tracks.iter_mut() {
            if track.active && !desired.contains_key(key) && !sub.held.contains(key) {
                api.set_direction(track.mid, Direction::Inactive);
                track.active = false;
            }
        }
        let (offer, pending) = api.apply()?;
        let sdp = sub.outgoing(&offer.to_sdp_string());
        sub.pending = Some(pending);
        sub.revision += 1;
        let offer = SubscribeOffer {
            sdp_offer: sdp,
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
        sdp: &str,
    ) -> Result<Accepted, MediaError> {
        let sub = self
            .by_device
            .get_mut(&device)
            .ok_or(MediaError::UnknownDevice)?;
        if sub.pending.is_none() {
            return Err(MediaError::NoPendingOffer);
        }
        let answer = SdpAnswer::from_sdp_string(&sub.incoming(sdp))
            .map_err(|e| MediaError::BadSdp(e.to_string()))?;
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

    /// Brings a browser's subscribe connection in line with `desired` by one offer at a time
    /// (changes during a pending offer are folded into the next one); the connection is made
    /// when it first has something to carry (or a connection to resume). The offer goes to the
    /// engine's events. Returns the connection if it was run, for the caller to drain.
    pub(super) fn offer(
        &mut self,
        parts: &mut Parts<'_>,
        device: DeviceId,
        desired: &BTreeMap<TrackKey, Option<StreamAlias>>,
        now: Instant,
    ) -> Option<PeerId> {
        let existing = parts.devices.get(device)?.subscribe_peer();
        let wanted = existing.is_some() || !desired.is_empty() || self.resuming(device);
        if self.fold_if_pending(device) || !wanted {
            return None;
        }
        let peer_id = match existing {
            Some(p) => p,
            None => {
                let id = parts.peers.open(
                    parts.config,
                    parts.demux,
                    device,
                    true,
                    MediaKinds::ALL,
                    now,
                );
                if let Some(dev) = parts.devices.get_mut(device) {
                    dev.set_peer(true, Some(id));
                }
                id
            }
        };
        if let Some(peer) = parts.peers.get_mut(peer_id) {
            if let Some(offer) = self.renegotiate(device, &mut peer.rtc, desired, now) {
                if let Some(layout) = self.layout(device) {
                    parts.events.push_back(EngineEvent::SubscribeOffer {
                        device,
                        offer,
                        layout,
                    });
                }
            }
        }
        Some(peer_id)
    }

    /// The device's answer to its pending offer, given to its subscribe connection. Returns
    /// the connection, for the caller to drain, and what accepting the answer changed.
    pub(super) fn handle_answer(
        &mut self,
        parts: &mut Parts<'_>,
        device: DeviceId,
        sdp: &str,
    ) -> Result<(PeerId, Accepted), MediaError> {
        let dev = parts.devices.get(device).ok_or(MediaError::UnknownDevice)?;
        let peer_id = dev.subscribe_peer().ok_or(MediaError::NoPendingOffer)?;
        let peer = parts
            .peers
            .get_mut(peer_id)
            .ok_or(MediaError::UnknownDevice)?;
        let accepted = self.accept_answer(device, &mut peer.rtc, sdp)?;
        Ok((peer_id, accepted))
    }

    /// A browser's fan-out targets: of the desired tracks, those its subscribe connection
    /// carries.
    pub(super) fn targets(
        &self,
        devices: &Devices,
        device: DeviceId,
        desired: &BTreeMap<TrackKey, Option<StreamAlias>>,
    ) -> BTreeMap<TrackKey, Target> {
        let Some(peer) = devices.get(device).and_then(|d| d.subscribe_peer()) else {
            return BTreeMap::new();
        };
        self.flowing(device, desired)
            .into_iter()
            .map(|(key, mid)| (key, Target::Peer { peer, mid }))
            .collect()
    }
}

impl Subscriber {
    /// Re-creates the m-lines of `layout`, in its order and under its mids: tracks `desired`
    /// still wants send, the others are `inactive`.
    fn rebuild(
        &mut self,
        api: &mut str0m::change::SdpApi<'_>,
        layout: SubscribeLayout,
        desired: &BTreeMap<TrackKey, Option<StreamAlias>>,
    ) {
        for line in layout.lines {
            match line.content {
                LineContent::Channels => {
                    for (id, label) in BUILTIN_CHANNELS {
                        api.add_channel_with_config(builtin_channel(id, label));
                    }
                    self.lines.push(Line {
                        wire: Some(line.mid),
                        rtc: None,
                        content: LineContent::Channels,
                    });
                }
                LineContent::Track {
                    kind,
                    publisher,
                    stream,
                    msid,
                    track_id,
                    sending,
                } => {
                    let key = TrackKey {
                        publisher,
                        stream: stream.clone(),
                        kind,
                    };
                    if self.tracks.contains_key(&key) {
                        continue; // a layout names a track once; a stored one might not
                    }
                    self.stream_ids.insert((publisher, stream), msid);
                    let alias = desired.get(&key).cloned().flatten();
                    let wanted = desired.contains_key(&key);
                    if sending && !wanted {
                        self.held.insert(key.clone());
                    }
                    let active = wanted || sending;
                    self.add_track(api, &key, alias, active, Some((line.mid, track_id)));
                }
            }
        }
        self.next_track = self.lines.len() as u64;
    }

    /// Adds an m-line for `key` (sending when `active`), under the device's mid and track id
    /// of `known` when it had one.
    fn add_track(
        &mut self,
        api: &mut str0m::change::SdpApi<'_>,
        key: &TrackKey,
        alias: Option<StreamAlias>,
        active: bool,
        known: Option<(String, String)>,
    ) {
        let kind = match key.kind {
            MediaKind::Audio => RtcKind::Audio,
            MediaKind::Video => RtcKind::Video,
        };
        let (wire, track_id) = match known {
            Some((mid, track_id)) => (Some(mid), track_id),
            None => {
                self.next_track += 1;
                let track_id = format!("{}-{}", key.kind.as_str().to_lowercase(), self.next_track);
                (None, track_id)
            }
        };
        let stream_id = self
            .stream_ids
            .entry((key.publisher, key.stream.clone()))
            .or_insert_with(|| uuid::Uuid::new_v4().simple().to_string())
            .clone();
        let direction = if active {
            Direction::SendOnly
        } else {
            Direction::Inactive
        };
        let mid = api.add_media(
            kind,
            direction,
            Some(stream_id.clone()),
            Some(track_id.clone()),
            None,
        );
        self.tracks.insert(
            key.clone(),
            OutTrack {
                mid,
                active,
                negotiated: false,
                alias,
            },
        );
        self.lines.push(Line {
            wire,
            rtc: None,
            content: LineContent::Track {
                kind: key.kind,
                publisher: key.publisher,
                stream: key.stream.clone(),
                msid: stream_id,
                track_id,
                // Kept in `tracks`; filled in by `layout()`.
                sending: false,
            },
        });
    }

    /// str0m's offer as the device must see it: each m-line gets the mid the device knows
    /// (new m-lines keep str0m's, unless the device knows that mid for another line), and a
    /// translated connection offers no MID header extension.
    fn outgoing(&mut self, sdp: &str) -> String {
        let rtc_mids = section_mids(sdp);
        let mut map = HashMap::new();
        for (line, rtc) in self.lines.iter_mut().zip(&rtc_mids) {
            let wire = match &line.wire {
                Some(w) => w.clone(),
                None => rtc.clone(),
            };
            line.wire = Some(wire.clone());
            line.rtc = Some(rtc.clone());
            map.insert(rtc.clone(), wire);
        }
        // A new line whose str0m mid the device knows for another line gets a fresh one.
        let mut used: BTreeSet<String> = BTreeSet::new();
        let mut n = 0u32;
        for (line, rtc) in self.lines.iter_mut().zip(&rtc_mids) {
            let wire = line.wire.clone().unwrap_or_default();
            if used.insert(wire.clone()) {
                continue;
            }
            let fresh = loop {
                n += 1;
                let candidate = format!("r{n}");
                if !used.contains(&candidate) && !map.values().any(|w| *w == candidate) {
                    break candidate;
                }
            };
            used.insert(fresh.clone());
            line.wire = Some(fresh.clone());
            map.insert(rtc.clone(), fresh);
        }
        if map.iter().any(|(rtc, wire)| rtc != wire) {
            self.translated = true;
        }
        if !self.translated {
            return sdp.to_string();
        }
        rewrite_mids(sdp, &map, true)
    }

    /// The device's answer as str0m must see it (the reverse of [`Subscriber::outgoing`]).
    fn incoming(&self, sdp: &str) -> String {
        if !self.translated {
            return sdp.to_string();
        }
        let map: HashMap<String, String> = self
            .lines
            .iter()
            .filter_map(|line| Some((line.wire.clone()?, line.rtc.clone()?)))
            .collect();
        rewrite_mids(sdp, &map, false)
    }

    /// The layout the device was last offered.
    fn layout(&self) -> SubscribeLayout {
        SubscribeLayout {
            unique_id: self.unique_id.clone(),
            revision: self.revision,
            lines: self
                .lines
                .iter()
                .filter_map(|l| {
                    let mut content = l.content.clone();
                    if let LineContent::Track {
                        kind,
                        publisher,
                        stream,
                        sending,
                        ..
                    } = &mut content
                    {
                        let key = TrackKey {
                            publisher: *publisher,
                            stream: stream.clone(),
                            kind: *kind,
                        };
                        *sending = self.tracks.get(&key).is_some_and(|t| t.active);
                    }
                    Some(LayoutLine {
                        mid: l.wire.clone()?,
                        content,
                    })
                })
                .collect(),
        }
    }

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

/// The mid of each m-section of `sdp`, in order (an m-section without one gets "").
fn section_mids(sdp: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in sdp.lines() {
        let line = line.trim_end();
        if line.starts_with("m=") {
            out.push(String::new());
        } else if let (Some(mid), Some(last)) = (line.strip_prefix("a=mid:"), out.last_mut()) {
            *last = mid.trim().to_string();
        }
    }
    out
}

/// `sdp` with every mid of `map` replaced (in `a=mid` and the BUNDLE group), and without the
/// MID header extension when `strip_mid_extension`. Lines keep their order and CRLF endings;
/// anything else passes through untouched (a device's garbage is str0m's to refuse).
fn rewrite_mids(sdp: &str, map: &HashMap<String, String>, strip_mid_extension: bool) -> String {
    let mapped = |m: &str| map.get(m).cloned().unwrap_or_else(|| m.to_string());
    let mut out = String::with_capacity(sdp.len());
    for line in sdp.split_inclusive('\n') {
        let body = line.trim_end_matches(['\r', '\n']);
        let ending = &line[body.len()..];
        if let Some(mid) = body.strip_prefix("a=mid:") {
            out.push_str("a=mid:");
            out.push_str(&mapped(mid.trim()));
        } else if let Some(mids) = body.strip_prefix("a=group:BUNDLE") {
            out.push_str("a=group:BUNDLE");
            for mid in mids.split_whitespace() {
                out.push(' ');
                out.push_str(&mapped(mid));
            }
        } else if strip_mid_extension
            && body.starts_with("a=extmap:")
            && body.contains(MID_EXTENSION)
        {
            continue;
        } else {
            out.push_str(body);
        }
        out.push_str(ending);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mids_are_rewritten_in_mid_lines_and_the_bundle_group_only() {
        let sdp = "v=0\r\na=group:BUNDLE x y\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
                   a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\na=mid:x\r\n\
                   m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:y\r\na=msid:x y\r\n";
        let map: HashMap<String, String> = [("x", "0"), ("y", "1")]
            .into_iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let out = rewrite_mids(sdp, &map, true);
        assert_eq!(section_mids(&out), ["0", "1"]);
        assert!(out.contains("a=group:BUNDLE 0 1\r\n"));
        assert!(out.contains("a=msid:x y\r\n"), "only mids are touched");
        assert!(!out.contains("sdes:mid"));
        assert_eq!(
            rewrite_mids(sdp, &map, false).lines().count(),
            sdp.lines().count()
        );
    }

    /// A device's answer goes through the translation before str0m parses it: garbage passes
    /// through unchanged (str0m refuses it with a clear error), and nothing panics.
    #[test]
    fn garbage_passes_through_the_translation() {
        let map: HashMap<String, String> = [("0".to_string(), "abc".to_string())].into();
        for garbage in [
            "",
            "\r\n\r\n",
            "a=mid:",
            "a=group:BUNDLE",
            "m=\na=mid:0\na=mid:0",
            "a=mid:0ü\r\na=group:BUNDLE 0 ü 0\r",
            "\u{0}\u{feff}a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid",
        ] {
            let out = rewrite_mids(garbage, &map, true);
            assert!(out.len() <= garbage.len() + 8 * garbage.matches('0').count());
            let _ = section_mids(&out);
        }
    }
}
