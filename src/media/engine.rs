//! [`Engine`]: peers, demultiplexing, negotiation and forwarding. See the module docs of
//! `media` for the drive contract.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::channel::ChannelConfig;
use str0m::config::DtlsCert;
use str0m::format::{Codec, FormatParams};
use str0m::ice::StunMessage;
use str0m::media::{
    Direction, Frequency, KeyframeRequestKind, MediaKind as RtcKind, MediaTime, Mid,
};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};

use super::{DeviceId, PublishAnswer, PublishMetadata, StreamMetadata, SubscribeOffer};
use crate::domain::{
    MediaKind, MediaKinds, ParticipantId, PublishPermissions, SessionId, StreamAlias, StreamId,
};
use crate::forwarding::{ForwardingTable, PublishedStream, TableDiff};

/// How an engine presents itself to devices.
#[derive(Clone)]
pub struct EngineConfig {
    /// The address devices send media to: the ICE host candidate. Datagrams are handed to the
    /// engine as received on it.
    pub public_addr: SocketAddr,
    /// The DTLS certificate shared by every peer connection of the process.
    pub cert: DtlsCert,
}

impl EngineConfig {
    /// A config with a freshly generated certificate.
    pub fn generate(public_addr: SocketAddr) -> Result<EngineConfig, MediaError> {
        let provider = str0m::crypto::from_feature_flags();
        let cert = provider
            .dtls_provider
            .generate_certificate()
            .ok_or_else(|| MediaError::Internal("cannot generate a DTLS certificate".into()))?;
        Ok(EngineConfig { public_addr, cert })
    }
}

/// A datagram to send. `source` is the local (public) address the peer knows us by: the
/// socket to send from. It is the engine's own address except for peers of a device that moved
/// here from another shard, which keep talking to the address they first reached.
#[derive(Debug, Clone)]
pub struct Transmit {
    pub source: SocketAddr,
    pub destination: SocketAddr,
    pub contents: Vec<u8>,
}

/// What the engine tells its driver.
#[derive(Debug, Clone)]
pub enum EngineEvent {
    /// Send this offer to the device (the `sdpOffer` notification).
    SubscribeOffer {
        device: DeviceId,
        offer: SubscribeOffer,
    },
    /// The streams a device publishes changed (control recompiles the session's routes).
    StreamsChanged {
        device: DeviceId,
        participant: ParticipantId,
        streams: Vec<PublishedStream>,
    },
    /// A device's publish or subscribe connection is up (ICE and DTLS done).
    Connected { device: DeviceId, subscribe: bool },
    /// A frame for a local device (a phone): one of the audio tracks it receives.
    LocalMedia {
        device: DeviceId,
        source: SourceKey,
        /// RTP time of the frame (48 kHz for Opus and telephone-event).
        rtp_time: u64,
        /// A telephone-event (RFC 4733) payload rather than Opus.
        dtmf: bool,
        data: std::sync::Arc<[u8]>,
    },
    /// The audio tracks a local device receives now (sources absent from it are gone).
    LocalSources {
        device: DeviceId,
        sources: Vec<SourceKey>,
    },
}

/// Identifies one received track of a local device: the publisher and its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceKey(pub u64);

impl SourceKey {
    fn of(publisher: ParticipantId, stream: &StreamId) -> SourceKey {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        publisher.hash(&mut h);
        stream.as_str().hash(&mut h);
        SourceKey(h.finish())
    }
}

/// Errors answered to a device's request; the engine itself keeps running.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    #[error("unknown device")]
    UnknownDevice,
    #[error("invalid SDP: {0}")]
    BadSdp(String),
    #[error("negotiation failed: {0}")]
    Negotiation(String),
    #[error("no offer is waiting for an answer")]
    NoPendingOffer,
    #[error("invalid stream alias: {0}")]
    BadAlias(String),
    #[error("{0}")]
    Internal(String),
}

type PeerId = u64;

/// A device on its way from one shard's engine to another's: its state and its peer
/// connections, moved as they are (see [`Engine::export_device`]).
pub struct MovedDevice {
    id: DeviceId,
    device: Device,
    peers: Vec<Peer>,
    /// Remote addresses learned for its peers (and whether the peer is the subscribe one).
    paths: Vec<(SocketAddr, bool)>,
}

impl MovedDevice {
    pub fn id(&self) -> DeviceId {
        self.id
    }

    pub fn participant(&self) -> ParticipantId {
        self.device.participant
    }

    /// The remote addresses its peers were reached at.
    pub fn paths(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.paths.iter().map(|(a, _)| *a)
    }
}

struct Peer {
    device: DeviceId,
    subscribe: bool,
    rtc: Rtc,
    ufrag: String,
    timeout: Instant,
}

/// One published MediaStream of a device.
#[derive(Debug, Clone)]
struct Publication {
    alias: Option<StreamAlias>,
    /// The m-lines carrying it, with their kind (only kinds the participant may publish).
    mids: Vec<(Mid, MediaKind)>,
}

impl Publication {
    fn kinds(&self) -> MediaKinds {
        MediaKinds::from_kinds(self.mids.iter().map(|(_, k)| *k))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct TrackKey {
    publisher: ParticipantId,
    stream: StreamId,
    kind: MediaKind,
}

#[derive(Debug, Clone)]
struct OutTrack {
    mid: Mid,
    /// Sending in the last offer made.
    active: bool,
    /// Accepted by the device at least once (its answer arrived).
    negotiated: bool,
    alias: Option<StreamAlias>,
}

struct Device {
    participant: ParticipantId,
    /// A device without WebRTC connections, fed and drained by the driver (a phone call):
    /// its "peers" are ids with no `Rtc`, its tracks need no negotiation.
    local: bool,
    permissions: PublishPermissions,
    publish: Option<PeerId>,
    subscribe: Option<PeerId>,
    publish_endpoint: String,
    subscribe_endpoint: String,
    published: BTreeMap<StreamId, Publication>,
    revision: u64,
    pending: Option<SdpPendingOffer>,
    /// The offer `pending` belongs to, to send again if the device reconnects meanwhile.
    pending_offer: Option<SubscribeOffer>,
    /// Changes arrived while an offer was pending: renegotiate when it is answered.
    dirty: bool,
    tracks: BTreeMap<TrackKey, OutTrack>,
    next_track: u64,
    /// The MediaStream id this device sees for each (publisher, stream): its own, because
    /// stream ids are only unique per publisher.
    stream_ids: BTreeMap<(ParticipantId, StreamId), String>,
}

/// The SFU of one shard. See the module docs.
pub struct Engine {
    config: EngineConfig,
    peers: HashMap<PeerId, Peer>,
    next_peer: PeerId,
    by_addr: HashMap<SocketAddr, PeerId>,
    by_ufrag: HashMap<String, PeerId>,
    devices: HashMap<DeviceId, Device>,
    device_of: HashMap<ParticipantId, DeviceId>,
    tables: HashMap<SessionId, ForwardingTable>,
    session_of: HashMap<ParticipantId, SessionId>,
    /// (publish peer, mid) → (subscribe peer, mid): who gets each incoming track.
    fanout: HashMap<(PeerId, Mid), Vec<(PeerId, Mid)>>,
    /// (subscribe peer, mid) → (publish peer, mid): where keyframe requests go.
    upstream: HashMap<(PeerId, Mid), (PeerId, Mid)>,
    /// (subscribe "peer", mid) of local devices → the device and the source it is.
    local_targets: HashMap<(PeerId, Mid), (DeviceId, SourceKey)>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<EngineEvent>,
    forwarded: u64,
    scratch: Vec<(PeerId, Mid)>,
}

const HEARTBEAT: &str = "__heartbeat__";
/// Audio packets held back at most waiting for a missing one.
const AUDIO_REORDER_PACKETS: usize = 2;
/// Remote addresses remembered per peer (a client may switch paths, e.g. on ICE restart).
const MAX_PATHS_PER_PEER: usize = 8;
const DIAGNOSTICS: &str = "__diagnostics__";
/// The one "m-line" of a local device's published audio.
const LOCAL_AUDIO_MID: &str = "phone";

impl Engine {
    pub fn new(config: EngineConfig) -> Engine {
        Engine {
            config,
            peers: HashMap::new(),
            next_peer: 1,
            by_addr: HashMap::new(),
            by_ufrag: HashMap::new(),
            devices: HashMap::new(),
            device_of: HashMap::new(),
            tables: HashMap::new(),
            session_of: HashMap::new(),
            fanout: HashMap::new(),
            upstream: HashMap::new(),
            local_targets: HashMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            forwarded: 0,
            scratch: Vec::new(),
        }
    }

    /// Media packets forwarded so far (frames written to subscribers).
    pub fn forwarded(&self) -> u64 {
        self.forwarded
    }

    // ---- devices ----------------------------------------------------------------------------

    /// A device connected for `participant`. A previous device of the same participant is
    /// replaced (one live device per participant); it is returned so the driver can close it.
    pub fn add_device(
        &mut self,
        device: DeviceId,
        participant: ParticipantId,
        permissions: PublishPermissions,
        now: Instant,
    ) -> Option<DeviceId> {
        let replaced = self.insert_device(device, participant, permissions, false, now);
        // It may already be wired to receive something (a reconnect, or routes set before).
        self.renegotiate(device, now);
        replaced
    }

    fn insert_device(
        &mut self,
        device: DeviceId,
        participant: ParticipantId,
        permissions: PublishPermissions,
        local: bool,
        now: Instant,
    ) -> Option<DeviceId> {
        let replaced = self.device_of.get(&participant).copied();
        if let Some(old) = replaced {
            self.remove_device(old, now);
        }
        self.devices.insert(
            device,
            Device {
                participant,
                local,
                permissions,
                publish: None,
                subscribe: None,
                publish_endpoint: uuid::Uuid::new_v4().to_string(),
                subscribe_endpoint: uuid::Uuid::new_v4().to_string(),
                published: BTreeMap::new(),
                revision: 0,
                pending: None,
                pending_offer: None,
                dirty: false,
                tracks: BTreeMap::new(),
                next_track: 0,
                stream_ids: BTreeMap::new(),
            },
        );
        self.device_of.insert(participant, device);
        replaced
    }

    /// The device of `participant` on this engine, if it has one.
    pub fn device_of(&self, participant: ParticipantId) -> Option<DeviceId> {
        self.device_of.get(&participant).copied()
    }

    /// The remote addresses the device's peers were reached at.
    pub fn paths_of(&self, device: DeviceId) -> Vec<SocketAddr> {
        let Some(dev) = self.devices.get(&device) else {
            return Vec::new();
        };
        let peers = [dev.publish, dev.subscribe];
        self.by_addr
            .iter()
            .filter(|(_, p)| peers.contains(&Some(**p)))
            .map(|(a, _)| *a)
            .collect()
    }

    /// The subscribe offer still waiting for this device's answer, if any.
    pub fn pending_offer(&self, device: DeviceId) -> Option<SubscribeOffer> {
        self.devices.get(&device)?.pending_offer.clone()
    }

    /// The device left or its connection closed: its peers go away, and so do its streams.
    pub fn remove_device(&mut self, device: DeviceId, _now: Instant) {
        let Some(dev) = self.devices.remove(&device) else {
            return;
        };
        if self.device_of.get(&dev.participant) == Some(&device) {
            self.device_of.remove(&dev.participant);
        }
        for peer in [dev.publish, dev.subscribe].into_iter().flatten() {
            self.remove_peer(peer);
        }
        if !dev.published.is_empty() {
            self.events.push_back(EngineEvent::StreamsChanged {
                device,
                participant: dev.participant,
                streams: Vec::new(),
            });
        }
        self.rebuild_fanout();
    }

    /// A local device for `participant` (a phone call): it publishes one audio stream,
    /// `stream` with `alias`, whose frames the driver writes with [`Engine::write_local`],
    /// and receives the audio tracks its routes give it as [`EngineEvent::LocalMedia`]. A
    /// previous device of the participant is replaced and returned.
    pub fn add_local_device(
        &mut self,
        device: DeviceId,
        participant: ParticipantId,
        stream: StreamId,
        alias: Option<StreamAlias>,
        now: Instant,
    ) -> Option<DeviceId> {
        let replaced =
            self.insert_device(device, participant, PublishPermissions::AUDIO, true, now);
        let publish = self.next_peer;
        let subscribe = self.next_peer + 1;
        self.next_peer += 2;
        let Some(dev) = self.devices.get_mut(&device) else {
            return replaced;
        };
        dev.publish = Some(publish);
        dev.subscribe = Some(subscribe);
        dev.published.insert(
            stream.clone(),
            Publication {
                alias: alias.clone(),
                mids: vec![(Mid::from(LOCAL_AUDIO_MID), MediaKind::Audio)],
            },
        );
        self.events.push_back(EngineEvent::StreamsChanged {
            device,
            participant,
            streams: vec![PublishedStream {
                publisher: participant,
                stream,
                alias,
                kinds: MediaKinds::AUDIO,
            }],
        });
        self.renegotiate(device, now);
        self.rebuild_fanout();
        replaced
    }

    /// An Opus frame (20 ms, RTP time at 48 kHz) of a local device's published stream:
    /// forwarded to its subscribers like a frame received from a browser.
    pub fn write_local(&mut self, device: DeviceId, rtp_time: u64, data: Vec<u8>, now: Instant) {
        let data: std::sync::Arc<[u8]> = data.into();
        let Some(source) = self
            .devices
            .get(&device)
            .filter(|d| d.local)
            .and_then(|d| d.publish)
        else {
            return;
        };
        let mut targets = std::mem::take(&mut self.scratch);
        targets.clear();
        if let Some(t) = self.fanout.get(&(source, Mid::from(LOCAL_AUDIO_MID))) {
            targets.extend_from_slice(t);
        }
        let time = MediaTime::new(rtp_time, Frequency::FORTY_EIGHT_KHZ);
        for &(sub_peer, out_mid) in &targets {
            if let Some(&(local, key)) = self.local_targets.get(&(sub_peer, out_mid)) {
                // Phone to phone: no codec in between.
                self.events.push_back(EngineEvent::LocalMedia {
                    device: local,
                    source: key,
                    rtp_time,
                    dtmf: false,
                    data: data.clone(),
                });
                continue;
            }
            let Some(sub) = self.peers.get_mut(&sub_peer) else {
                continue;
            };
            let Some(writer) = sub.rtc.writer(out_mid) else {
                continue;
            };
            let Some(pt) = writer
                .payload_params()
                .find(|p| p.spec().codec == Codec::Opus)
                .map(|p| p.pt())
            else {
                continue;
            };
            if writer.write(pt, now, time, data.clone()).is_ok() {
                self.forwarded += 1;
            }
            self.drain(sub_peer, now);
        }
        self.scratch = targets;
    }

    /// Takes a device and its peer connections out of this engine, untouched (connections
    /// stay up, streams stay published), to be given to another shard's engine with
    /// [`Engine::import_device`]. Local subscribers of its streams renegotiate.
    pub fn export_device(&mut self, device: DeviceId, now: Instant) -> Option<MovedDevice> {
        let dev = self.devices.remove(&device)?;
        if self.device_of.get(&dev.participant) == Some(&device) {
            self.device_of.remove(&dev.participant);
        }
        let mut peers = Vec::new();
        let mut paths = Vec::new();
        for id in [dev.publish, dev.subscribe].into_iter().flatten() {
            if let Some(peer) = self.peers.remove(&id) {
                self.by_ufrag.retain(|_, p| *p != id);
                self.by_addr.retain(|addr, p| {
                    if *p == id {
                        paths.push((*addr, peer.subscribe));
                    }
                    *p != id
                });
                peers.push(peer);
            }
        }
        let participant = dev.participant;
        self.rebuild_fanout();
        self.renegotiate_subscribers_of(participant, now);
        Some(MovedDevice {
            id: device,
            device: dev,
            peers,
            paths,
        })
    }

    /// Adopts a device exported by another shard's engine. A device of the same participant
    /// already here is replaced and returned (one live device per participant).
    pub fn import_device(&mut self, moved: MovedDevice, now: Instant) -> Option<DeviceId> {
        let MovedDevice {
            id: device,
            device: mut dev,
            peers,
            paths,
        } = moved;
        let participant = dev.participant;
        let replaced = self.device_of.get(&participant).copied();
        if let Some(old) = replaced {
            self.remove_device(old, now);
        }
        dev.publish = None;
        dev.subscribe = None;
        if dev.local {
            dev.publish = Some(self.next_peer);
            dev.subscribe = Some(self.next_peer + 1);
            self.next_peer += 2;
        }
        for peer in peers {
            let id = self.next_peer;
            self.next_peer += 1;
            self.by_ufrag.insert(peer.ufrag.clone(), id);
            for (addr, _) in paths.iter().filter(|(_, sub)| *sub == peer.subscribe) {
                self.by_addr.insert(*addr, id);
            }
            if peer.subscribe {
                dev.subscribe = Some(id);
            } else {
                dev.publish = Some(id);
            }
            self.peers.insert(id, peer);
        }
        self.devices.insert(device, dev);
        self.device_of.insert(participant, device);
        self.rebuild_fanout();
        self.renegotiate(device, now);
        self.renegotiate_subscribers_of(participant, now);
        replaced
    }

    /// The devices here whose participant has links in `session`'s table: the ones that must
    /// live where the session lives.
    pub fn devices_in_session(&self, session: SessionId) -> Vec<DeviceId> {
        let Some(table) = self.tables.get(&session) else {
            return Vec::new();
        };
        let mut out: Vec<DeviceId> = table
            .links
            .iter()
            .flat_map(|(k, _)| [k.subscriber, k.publisher])
            .filter_map(|p| self.device_of.get(&p).copied())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Local subscribers routed from `publisher`'s streams: what they should receive changed
    /// because the publisher's device came or went.
    fn renegotiate_subscribers_of(&mut self, publisher: ParticipantId, now: Instant) {
        let Some(table) = self
            .session_of_member(publisher)
            .and_then(|s| self.tables.get(&s))
        else {
            return;
        };
        let mut subscribers: Vec<ParticipantId> = table
            .routes
            .iter()
            .filter(|(k, _)| k.publisher == publisher)
            .map(|(k, _)| k.subscriber)
            .collect();
        subscribers.dedup();
        for subscriber in subscribers {
            if let Some(&device) = self.device_of.get(&subscriber) {
                self.renegotiate(device, now);
            }
        }
    }

    /// The session whose table mentions `participant`, as subscriber or publisher.
    fn session_of_member(&self, participant: ParticipantId) -> Option<SessionId> {
        if let Some(&s) = self.session_of.get(&participant) {
            return Some(s);
        }
        self.tables
            .iter()
            .find(|(_, t)| t.links.iter().any(|(k, _)| k.publisher == participant))
            .map(|(s, _)| *s)
    }

    /// The device's `offerSdp`: answer its publish connection.
    pub fn handle_publish_offer(
        &mut self,
        device: DeviceId,
        sdp: &str,
        metadata: &PublishMetadata,
        now: Instant,
    ) -> Result<PublishAnswer, MediaError> {
        let offer =
            SdpOffer::from_sdp_string(sdp).map_err(|e| MediaError::BadSdp(e.to_string()))?;
        let mut aliases = BTreeMap::new();
        for (msid, meta) in &metadata.media_streams {
            let alias = meta
                .alias
                .as_deref()
                .map(StreamAlias::parse)
                .transpose()
                .map_err(|e| MediaError::BadAlias(e.to_string()))?;
            aliases.insert(msid.clone(), alias);
        }
        let dev = self.devices.get(&device).ok_or(MediaError::UnknownDevice)?;
        let permissions = dev.permissions;
        let (peer_id, created) = match dev.publish {
            Some(p) => (p, false),
            None => {
                let id = self.new_peer(device, false, peer_config(&self.config, permissions), now);
                (id, true)
            }
        };
        let peer = self
            .peers
            .get_mut(&peer_id)
            .ok_or(MediaError::UnknownDevice)?;
        peer.rtc
            .handle_input(Input::Timeout(now))
            .map_err(|e| MediaError::Internal(e.to_string()))?;
        let answer = match peer.rtc.sdp_api().accept_offer(offer) {
            Ok(a) => a,
            Err(e) => {
                if created {
                    self.remove_peer(peer_id);
                }
                return Err(MediaError::Negotiation(e.to_string()));
            }
        };
        if created {
            open_builtin_channels(&mut peer.rtc);
        }
        // An ICE restart gives the peer a new local ufrag: keep the demux map current.
        let ufrag = peer.rtc.direct_api().local_ice_credentials().ufrag;
        if ufrag != peer.ufrag {
            self.by_ufrag.insert(ufrag.clone(), peer_id);
            peer.ufrag = ufrag;
        }

        // What is published now: every receiving, enabled m-line of a declared stream.
        let mut published: BTreeMap<StreamId, Publication> = BTreeMap::new();
        for line in offer_mids(sdp) {
            let Some(media) = peer.rtc.media(line) else {
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
            let Some(alias) = aliases.get(media.stream_id()) else {
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
        let dev = self
            .devices
            .get_mut(&device)
            .ok_or(MediaError::UnknownDevice)?;
        dev.publish = Some(peer_id);
        let participant = dev.participant;
        let mut stream_metadata = BTreeMap::new();
        for (msid, alias) in &aliases {
            let kinds = StreamId::parse(msid)
                .ok()
                .and_then(|s| published.get(&s))
                .map(Publication::kinds)
                .unwrap_or_default();
            stream_metadata.insert(
                msid.clone(),
                StreamMetadata {
                    endpoint_id: format!("{}:{msid}", dev.publish_endpoint),
                    media_types: kinds.iter().map(MediaKind::as_str).collect(),
                    alias: alias.as_ref().map(|a| a.as_str().to_owned()),
                    participant_id: participant.to_string(),
                },
            );
        }
        let changed = !same_publications(&dev.published, &published);
        dev.published = published;
        let endpoint_id = dev.publish_endpoint.clone();
        if changed {
            let streams = dev
                .published
                .iter()
                .map(|(stream, p)| PublishedStream {
                    publisher: participant,
                    stream: stream.clone(),
                    alias: p.alias.clone(),
                    kinds: p.kinds(),
                })
                .collect();
            self.events.push_back(EngineEvent::StreamsChanged {
                device,
                participant,
                streams,
            });
        }
        self.drain(peer_id, now);
        self.rebuild_fanout();
        Ok(PublishAnswer {
            sdp_answer: answer.to_sdp_string(),
            endpoint_id,
            stream_metadata,
        })
    }

    /// The device's `answerSdp` to the pending subscribe offer.
    pub fn handle_subscribe_answer(
        &mut self,
        device: DeviceId,
        sdp: &str,
        now: Instant,
    ) -> Result<(), MediaError> {
        let answer =
            SdpAnswer::from_sdp_string(sdp).map_err(|e| MediaError::BadSdp(e.to_string()))?;
        let dev = self
            .devices
            .get_mut(&device)
            .ok_or(MediaError::UnknownDevice)?;
        let pending = dev.pending.take().ok_or(MediaError::NoPendingOffer)?;
        dev.pending_offer = None;
        let peer_id = dev.subscribe.ok_or(MediaError::NoPendingOffer)?;
        let peer = self
            .peers
            .get_mut(&peer_id)
            .ok_or(MediaError::UnknownDevice)?;
        peer.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .map_err(|e| MediaError::Negotiation(e.to_string()))?;
        let mut fresh_video = Vec::new();
        for (key, track) in dev.tracks.iter_mut() {
            if track.active && !track.negotiated {
                track.negotiated = true;
                if key.kind == MediaKind::Video {
                    fresh_video.push(key.clone());
                }
            }
        }
        let dirty = std::mem::take(&mut dev.dirty);
        self.drain(peer_id, now);
        self.rebuild_fanout();
        // A new subscriber of a video track needs a keyframe to start decoding.
        for key in fresh_video {
            if let Some((pub_peer, mid)) = self.publisher_track(&key) {
                self.request_keyframe(pub_peer, mid, KeyframeRequestKind::Pli, now);
            }
        }
        if dirty {
            self.renegotiate(device, now);
        }
        Ok(())
    }

    // ---- routes -----------------------------------------------------------------------------

    /// Applies a change of a session's forwarding table; affected subscribers renegotiate.
    pub fn apply_routes(&mut self, session: SessionId, diff: &TableDiff, now: Instant) {
        let table = self.tables.entry(session).or_default();
        diff.apply(table);
        let mut affected = diff.affected_subscribers();
        affected.extend(diff.links.upserted.iter().map(|(k, _)| k.subscriber));
        affected.extend(diff.links.removed.iter().map(|k| k.subscriber));
        for subscriber in &affected {
            let present = !table
                .links
                .range_by(|k| k.subscriber.cmp(subscriber))
                .is_empty()
                || !table
                    .routes
                    .range_by(|k| k.subscriber.cmp(subscriber))
                    .is_empty();
            if present {
                self.session_of.insert(*subscriber, session);
            } else if self.session_of.get(subscriber) == Some(&session) {
                self.session_of.remove(subscriber);
            }
        }
        if table.links.is_empty() && table.routes.is_empty() {
            self.tables.remove(&session);
        }
        self.rebuild_fanout();
        for subscriber in affected {
            if let Some(&device) = self.device_of.get(&subscriber) {
                self.renegotiate(device, now);
            }
        }
    }

    /// Replaces every session's table with `tables` (sessions absent from it lose their
    /// routes): the resynchronization after missed updates. Only differences renegotiate.
    pub fn set_all_routes(&mut self, tables: &HashMap<SessionId, ForwardingTable>, now: Instant) {
        let mut sessions: Vec<SessionId> =
            self.tables.keys().chain(tables.keys()).copied().collect();
        sessions.sort();
        sessions.dedup();
        for session in sessions {
            let empty = ForwardingTable::default();
            let current = self.tables.get(&session).unwrap_or(&empty);
            let wanted = tables.get(&session).unwrap_or(&empty);
            let diff = current.diff(wanted);
            if !diff.is_empty() {
                self.apply_routes(session, &diff, now);
            }
        }
    }

    // ---- network and clock ------------------------------------------------------------------

    /// A datagram arrived from `source`, sent to our public address `destination` (this
    /// engine's, or another shard's for a device that moved here). Returns whether a peer of
    /// this engine took it; the driver may hand a datagram no peer took to another shard.
    pub fn handle_receive(
        &mut self,
        source: SocketAddr,
        destination: SocketAddr,
        data: &[u8],
        now: Instant,
    ) -> bool {
        let Ok(receive) = Receive::new(Protocol::Udp, source, destination, data) else {
            return false;
        };
        let input = Input::Receive(now, receive);
        let peer_id = match self.by_addr.get(&source) {
            Some(&p) => p,
            None => {
                // Only a STUN binding request naming one of our ufrags, and carrying a valid
                // MESSAGE-INTEGRITY for that peer, opens a new path (ufrags travel in clear).
                let Some(local) = StunMessage::parse(data)
                    .ok()
                    .filter(|m| m.is_binding_request())
                    .and_then(|m| m.split_username().map(|(local, _)| local.to_owned()))
                else {
                    return false;
                };
                let Some(&p) = self.by_ufrag.get(&local) else {
                    return false;
                };
                let authentic = self
                    .peers
                    .get(&p)
                    .is_some_and(|peer| peer.rtc.accepts(&input));
                if !authentic {
                    return false;
                }
                if self.by_addr.values().filter(|&&q| q == p).count() >= MAX_PATHS_PER_PEER {
                    self.by_addr.retain(|_, q| *q != p);
                }
                self.by_addr.insert(source, p);
                p
            }
        };
        let Some(peer) = self.peers.get_mut(&peer_id) else {
            self.by_addr.remove(&source);
            return false;
        };
        // A datagram str0m cannot use is dropped; it never ends the call (its source may be
        // spoofed).
        if let Err(e) = peer.rtc.handle_input(input) {
            tracing::debug!(peer = peer_id, error = %e, "dropped an unusable datagram");
        }
        self.drain(peer_id, now);
        true
    }

    /// Time passed: run every peer whose timer is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.timeout <= now)
            .map(|(&id, _)| id)
            .collect();
        for id in due {
            if let Some(peer) = self.peers.get_mut(&id) {
                if peer.rtc.handle_input(Input::Timeout(now)).is_err() {
                    peer.rtc.disconnect();
                }
            }
            self.drain(id, now);
        }
    }

    /// When the engine next needs [`Engine::handle_timeout`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.peers.values().map(|p| p.timeout).min()
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<EngineEvent> {
        self.events.pop_front()
    }

    // ---- internals --------------------------------------------------------------------------

    fn new_peer(
        &mut self,
        device: DeviceId,
        subscribe: bool,
        config: RtcConfig,
        now: Instant,
    ) -> PeerId {
        let mut rtc = config.build(now);
        // Invariant: the configured public address is a unicast host address (checked when the
        // driver starts), so the candidate is valid.
        if let Ok(c) = Candidate::host(self.config.public_addr, "udp") {
            rtc.add_local_candidate(c);
        }
        let ufrag = rtc.direct_api().local_ice_credentials().ufrag;
        let id = self.next_peer;
        self.next_peer += 1;
        self.by_ufrag.insert(ufrag.clone(), id);
        self.peers.insert(
            id,
            Peer {
                device,
                subscribe,
                rtc,
                ufrag,
                timeout: now,
            },
        );
        id
    }

    fn remove_peer(&mut self, id: PeerId) {
        if let Some(mut peer) = self.peers.remove(&id) {
            peer.rtc.disconnect();
            self.by_ufrag.retain(|_, p| *p != id);
            self.by_addr.retain(|_, p| *p != id);
        }
    }

    /// The tracks `participant` should receive now: exactly its routes in the tables, in the
    /// kinds each route carries (what the publisher publishes and may publish). Whether the
    /// publisher's device is on this engine right now does not matter here (it may be moving
    /// between shards); it only decides whether media flows ([`Engine::rebuild_fanout`]).
    fn desired_tracks(
        &self,
        participant: ParticipantId,
    ) -> BTreeMap<TrackKey, Option<StreamAlias>> {
        let mut out = BTreeMap::new();
        let Some(table) = self
            .session_of
            .get(&participant)
            .and_then(|s| self.tables.get(s))
        else {
            return out;
        };
        for (key, route) in table.routes.range_by(|k| k.subscriber.cmp(&participant)) {
            for kind in route.kinds.iter() {
                out.insert(
                    TrackKey {
                        publisher: key.publisher,
                        stream: key.stream.clone(),
                        kind,
                    },
                    route.alias.clone(),
                );
            }
        }
        out
    }

    /// Brings a device's subscribe connection in line with what it should receive: one offer
    /// at a time; changes during a pending offer are folded into the next one.
    fn renegotiate(&mut self, device: DeviceId, now: Instant) {
        let Some(participant) = self.devices.get(&device).map(|d| d.participant) else {
            return;
        };
        let desired = self.desired_tracks(participant);
        let Some(dev) = self.devices.get(&device) else {
            return;
        };
        if dev.local {
            self.set_local_tracks(device, desired);
            return;
        }
        if dev.pending.is_some() {
            if let Some(dev) = self.devices.get_mut(&device) {
                dev.dirty = true;
            }
            return;
        }
        let nothing_to_do = dev.subscribe.is_none() && desired.is_empty();
        if nothing_to_do {
            return;
        }
        let peer_id = match dev.subscribe {
            Some(p) => p,
            None => {
                let config = peer_config(&self.config, MediaKinds::ALL);
                let id = self.new_peer(device, true, config, now);
                if let Some(dev) = self.devices.get_mut(&device) {
                    dev.subscribe = Some(id);
                }
                id
            }
        };
        let (Some(dev), Some(peer)) = (self.devices.get_mut(&device), self.peers.get_mut(&peer_id))
        else {
            return;
        };
        let first = dev.revision == 0;
        let _ = peer.rtc.handle_input(Input::Timeout(now));
        let mut api = peer.rtc.sdp_api();
        if first {
            for (id, label) in [(0, HEARTBEAT), (1, DIAGNOSTICS)] {
                api.add_channel_with_config(builtin_channel(id, label));
            }
        }
        for (key, alias) in &desired {
            match dev.tracks.get_mut(key) {
                Some(track) if track.active => track.alias = alias.clone(),
                Some(track) => {
                    api.set_direction(track.mid, Direction::SendOnly);
                    track.active = true;
                    track.negotiated = false;
                    track.alias = alias.clone();
                }
                None => {
                    dev.next_track += 1;
                    let kind = match key.kind {
                        MediaKind::Audio => RtcKind::Audio,
                        MediaKind::Video => RtcKind::Video,
                    };
                    let track_id =
                        format!("{}-{}", key.kind.as_str().to_lowercase(), dev.next_track);
                    let stream_id = dev
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
                    dev.tracks.insert(
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
        for (key, track) in dev.tracks.iter_mut() {
            if track.active && !desired.contains_key(key) {
                api.set_direction(track.mid, Direction::Inactive);
                track.active = false;
            }
        }
        if let Some((offer, pending)) = api.apply() {
            dev.pending = Some(pending);
            dev.revision += 1;
            let mut stream_metadata: BTreeMap<String, StreamMetadata> = BTreeMap::new();
            for (key, track) in dev.tracks.iter().filter(|(_, t)| t.active) {
                let Some(stream_id) = dev.stream_ids.get(&(key.publisher, key.stream.clone()))
                else {
                    continue;
                };
                let entry =
                    stream_metadata
                        .entry(stream_id.clone())
                        .or_insert_with(|| StreamMetadata {
                            endpoint_id: format!("{}:{stream_id}", dev.subscribe_endpoint),
                            media_types: Vec::new(),
                            alias: track.alias.as_ref().map(|a| a.as_str().to_owned()),
                            participant_id: key.publisher.to_string(),
                        });
                entry.media_types.push(key.kind.as_str());
            }
            let offer = SubscribeOffer {
                sdp_offer: offer.to_sdp_string(),
                sdp_revision: dev.revision,
                endpoint_id: dev.subscribe_endpoint.clone(),
                stream_metadata,
            };
            dev.pending_offer = Some(offer.clone());
            self.events
                .push_back(EngineEvent::SubscribeOffer { device, offer });
        }
        self.drain(peer_id, now);
        self.rebuild_fanout();
    }

    /// A local device receives its desired audio tracks at once: nothing to negotiate.
    fn set_local_tracks(
        &mut self,
        device: DeviceId,
        desired: BTreeMap<TrackKey, Option<StreamAlias>>,
    ) {
        let Some(dev) = self.devices.get_mut(&device) else {
            return;
        };
        let audio: BTreeMap<TrackKey, Option<StreamAlias>> = desired
            .into_iter()
            .filter(|(k, _)| k.kind == MediaKind::Audio)
            .collect();
        dev.tracks.retain(|k, _| audio.contains_key(k));
        for (key, alias) in audio {
            if !dev.tracks.contains_key(&key) {
                dev.next_track += 1;
                dev.tracks.insert(
                    key,
                    OutTrack {
                        mid: Mid::from(format!("l{}", dev.next_track).as_str()),
                        active: true,
                        negotiated: true,
                        alias,
                    },
                );
            }
        }
        let sources = dev
            .tracks
            .keys()
            .map(|k| SourceKey::of(k.publisher, &k.stream))
            .collect();
        self.events
            .push_back(EngineEvent::LocalSources { device, sources });
        self.rebuild_fanout();
    }

    /// Recomputes who receives each incoming track: only desired, negotiated tracks.
    fn rebuild_fanout(&mut self) {
        let mut fanout: HashMap<(PeerId, Mid), Vec<(PeerId, Mid)>> = HashMap::new();
        let mut upstream = HashMap::new();
        let mut local_targets = HashMap::new();
        for (&device, dev) in &self.devices {
            let Some(sub_peer) = dev.subscribe else {
                continue;
            };
            let desired = self.desired_tracks(dev.participant);
            for key in desired.keys() {
                let Some(track) = dev.tracks.get(key).filter(|t| t.active && t.negotiated) else {
                    continue;
                };
                let Some(source) = self.publisher_track(key) else {
                    continue;
                };
                fanout
                    .entry(source)
                    .or_default()
                    .push((sub_peer, track.mid));
                if dev.local {
                    let key_of = SourceKey::of(key.publisher, &key.stream);
                    local_targets.insert((sub_peer, track.mid), (device, key_of));
                } else {
                    upstream.insert((sub_peer, track.mid), source);
                }
            }
        }
        self.fanout = fanout;
        self.upstream = upstream;
        self.local_targets = local_targets;
    }

    /// The publish peer and m-line carrying a track.
    fn publisher_track(&self, key: &TrackKey) -> Option<(PeerId, Mid)> {
        let dev = self.devices.get(self.device_of.get(&key.publisher)?)?;
        let peer = dev.publish?;
        let publication = dev.published.get(&key.stream)?;
        let mid = publication.mids.iter().find(|(_, k)| *k == key.kind)?.0;
        Some((peer, mid))
    }

    fn request_keyframe(
        &mut self,
        peer_id: PeerId,
        mid: Mid,
        kind: KeyframeRequestKind,
        now: Instant,
    ) {
        if let Some(peer) = self.peers.get_mut(&peer_id) {
            if let Some(mut writer) = peer.rtc.writer(mid) {
                if writer.is_request_keyframe_possible(kind) {
                    let _ = writer.request_keyframe(None, kind);
                }
            }
        }
        self.drain(peer_id, now);
    }

    /// Runs a peer's output to completion, then acts on what it said.
    fn drain(&mut self, peer_id: PeerId, now: Instant) {
        let mut media = Vec::new();
        let mut keyframe_requests = Vec::new();
        let Some(peer) = self.peers.get_mut(&peer_id) else {
            return;
        };
        loop {
            match peer.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    peer.timeout = t;
                    break;
                }
                Ok(Output::Transmit(t)) => self.transmits.push_back(Transmit {
                    source: t.source,
                    destination: t.destination,
                    contents: t.contents.into(),
                }),
                Ok(Output::Event(event)) => match event {
                    Event::MediaData(data) => media.push(data),
                    Event::KeyframeRequest(req) => keyframe_requests.push(req),
                    Event::Connected => self.events.push_back(EngineEvent::Connected {
                        device: peer.device,
                        subscribe: peer.subscribe,
                    }),
                    Event::ChannelData(data) if !data.binary && data.data == b"PING" => {
                        if let Some(mut ch) = peer.rtc.channel(data.id) {
                            let _ = ch.write(false, b"PONG");
                        }
                    }
                    _ => {}
                },
                Err(e) => {
                    tracing::debug!(peer = peer_id, error = %e, "peer failed");
                    peer.rtc.disconnect();
                    peer.timeout = now + Duration::from_secs(3600);
                    break;
                }
            }
        }
        for data in media {
            // A reused buffer: no allocation per packet on the forwarding path.
            let mut targets = std::mem::take(&mut self.scratch);
            targets.clear();
            if let Some(t) = self.fanout.get(&(peer_id, data.mid)) {
                targets.extend_from_slice(t);
            }
            for &(sub_peer, out_mid) in &targets {
                if let Some(&(local, source)) = self.local_targets.get(&(sub_peer, out_mid)) {
                    let codec = data.params.spec().codec;
                    if matches!(codec, Codec::Opus | Codec::Tele) {
                        self.events.push_back(EngineEvent::LocalMedia {
                            device: local,
                            source,
                            rtp_time: data.time.rebase(Frequency::FORTY_EIGHT_KHZ).numer(),
                            dtmf: codec == Codec::Tele,
                            data: data.data.clone(),
                        });
                        self.forwarded += 1;
                    }
                    continue;
                }
                let Some(sub) = self.peers.get_mut(&sub_peer) else {
                    continue;
                };
                let Some(writer) = sub.rtc.writer(out_mid) else {
                    continue;
                };
                let Some(pt) = writer.match_params(data.params) else {
                    continue;
                };
                if writer
                    .write(pt, data.network_time, data.time, data.data.clone())
                    .is_ok()
                {
                    self.forwarded += 1;
                }
                self.drain(sub_peer, now);
            }
            self.scratch = targets;
        }
        for req in keyframe_requests {
            if let Some(&(pub_peer, mid)) = self.upstream.get(&(peer_id, req.mid)) {
                self.request_keyframe(pub_peer, mid, req.kind, now);
            }
        }
    }
}

/// The codecs of a peer connection: Opus (+ telephone-event) for audio, VP8 and H.264 for
/// video, each only when `kinds` allows it, so a refused kind's m-lines are rejected.
fn peer_config(config: &EngineConfig, kinds: MediaKinds) -> RtcConfig {
    let mut rtc = Rtc::builder()
        .set_ice_lite(true)
        .set_dtls_cert(config.cert.clone())
        // An SFU should not delay audio waiting for a lost packet: release after at most two
        // (40 ms); the receiving browser's jitter buffer conceals the gap (str0m's default, 15
        // packets, held up to 300 ms of audio behind each loss).
        .set_reordering_size_audio(AUDIO_REORDER_PACKETS)
        .clear_codecs()
        .enable_opus(kinds.audio, false)
        .enable_vp8(kinds.video)
        .enable_h264(kinds.video);
    if kinds.audio {
        rtc.codec_config().add_config(
            110.into(),
            None,
            Codec::Tele,
            Frequency::FORTY_EIGHT_KHZ,
            None,
            FormatParams::parse_line("0-16"),
        );
    }
    rtc
}

fn builtin_channel(id: u16, label: &str) -> ChannelConfig {
    ChannelConfig {
        label: label.to_owned(),
        negotiated: Some(id),
        protocol: "udp".to_owned(),
        ..Default::default()
    }
}

/// The SDK's pre-negotiated channels (ids 0 and 1), created before the association can carry
/// data on them.
fn open_builtin_channels(rtc: &mut Rtc) {
    for (id, label) in [(0, HEARTBEAT), (1, DIAGNOSTICS)] {
        rtc.direct_api()
            .create_data_channel(builtin_channel(id, label));
    }
}

/// The `a=mid` values of an SDP, in order.
fn offer_mids(sdp: &str) -> Vec<Mid> {
    sdp.lines()
        .filter_map(|l| l.trim_end().strip_prefix("a=mid:"))
        .map(|m| Mid::from(m.trim()))
        .collect()
}

fn same_publications(
    a: &BTreeMap<StreamId, Publication>,
    b: &BTreeMap<StreamId, Publication>,
) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|((ka, pa), (kb, pb))| ka == kb && pa.alias == pb.alias && pa.mids == pb.mids)
}

#[cfg(test)]
mod tests {
    #[test]
    fn engine_can_move_to_a_driver_thread() {
        fn is_send<T: Send>() {}
        is_send::<super::Engine>();
    }
}
