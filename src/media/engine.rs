//! [`Engine`]: the coordinator of the parts (see the module docs of `media` for the map of
//! parts, the drive contract and the three paths through it). It owns no map and no queue of
//! its own (the packet path, `Relay`, holds the output queues); every verb is a short sequence
//! of calls into the parts.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use str0m::media::{KeyframeRequestKind, Mid};
use str0m::net::Receive;
use str0m::Input;

use super::config::EngineConfig;
use super::demux::Demux;
use super::devices::{self, Device, Devices, Leg};
use super::error::MediaError;
use super::fanout::Fanout;
use super::ingress::{self, NewPath};
use super::keys::{PeerId, Source, TrackKey};
use super::local::{self, LocalDevice, LocalDevices};
use super::moving::{self, MovedDevice};
use super::output::{EngineEvent, Transmit, Transport};
use super::peers::Peers;
use super::publishing::{self, Publishing};
use super::quality::QualitySamples;
use super::rebuild;
use super::relay::{Packet, Parts, Relay};
use super::routes::HostedRoutes;
use super::speaker::Speakers;
use super::subscribing::{self, Subscribing};
use super::MediaCounters;
use super::{DeclaredStreams, DeviceId, PublishAnswer, SubscribeOffer};
use crate::domain::{
    ParticipantId, ParticipantQuality, PublishPermissions, SessionId, StreamAlias, StreamId,
    SubscribeLayout,
};
use crate::forwarding::{ForwardingTable, TableDiff};

/// The SFU of one shard. See the module docs.
pub struct Engine {
    config: EngineConfig,
    demux: Demux,
    peers: Peers,
    devices: Devices,
    publishing: Publishing,
    subscribing: Subscribing,
    local: LocalDevices,
    routes: HostedRoutes,
    fanout: Fanout,
    speakers: Speakers,
    /// The packet path, with the output queues and counters.
    relay: Relay,
}

impl Engine {
    /// An engine with no device, no peer and no session yet.
    pub fn new(config: EngineConfig) -> Engine {
        Engine {
            relay: Relay::new(config.subscriber_bwe),
            config,
            demux: Demux::default(),
            peers: Peers::default(),
            devices: Devices::default(),
            publishing: Publishing::default(),
            subscribing: Subscribing::default(),
            local: LocalDevices::default(),
            routes: HostedRoutes::default(),
            fanout: Fanout::default(),
            speakers: Speakers::default(),
        }
    }

    /// Media packets forwarded so far (frames written to subscribers).
    pub fn forwarded(&self) -> u64 {
        self.relay.counters.forwarded_packets
    }

    /// What this engine counted so far (plain integers: the driver publishes them).
    pub fn counters(&self) -> MediaCounters {
        self.relay.counters
    }

    /// The subscribers' loss and RTT samples since the last call (for the driver's histograms).
    pub fn take_quality_samples(&mut self) -> QualitySamples {
        self.relay.samples.take()
    }

    /// What `participant`'s device here measured, if it has one here.
    pub fn quality(&self, participant: ParticipantId, now: Instant) -> Option<ParticipantQuality> {
        let mut one = self.qualities_of(Some(participant), now);
        one.pop().map(|(_, q)| q)
    }

    /// What every device here (`only`: that participant's) measured, by participant.
    pub fn qualities_of(
        &self,
        only: Option<ParticipantId>,
        now: Instant,
    ) -> Vec<(ParticipantId, ParticipantQuality)> {
        let (leg, session) = (|d| self.local.leg(d, now), |p| self.routes.session_of(p));
        devices::quality_reports(&self.devices, &self.peers, only, leg, session, now)
    }

    /// A device connected for `participant`. A previous device of the same participant is
    /// replaced (one live device per participant); it is returned so the driver can close it.
    pub fn add_device(
        &mut self,
        device: DeviceId,
        participant: ParticipantId,
        permissions: PublishPermissions,
        now: Instant,
    ) -> Option<DeviceId> {
        let replaced = self.replace_participant_device(participant, now);
        self.devices
            .insert(device, Device::browser(participant, permissions));
        self.publishing.open(device, participant);
        self.subscribing.open(device);
        // It may already be wired to receive something (a reconnect, or routes set before).
        self.renegotiate(device, now);
        replaced
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
        let replaced = self.replace_participant_device(participant, now);
        self.devices.insert(device, Device::local(participant));
        self.local.add(device, LocalDevice::default());
        self.publishing.open(device, participant);
        let (publishing, mut parts) = self.publishing();
        publishing.set_publications(&mut parts, device, local::publication(stream, alias));
        self.renegotiate(device, now);
        replaced
    }

    /// An Opus frame (20 ms, RTP time at 48 kHz) of a local device's published stream:
    /// forwarded to its subscribers like a packet received from a browser (the engine gives it
    /// the sequence number a publisher's RTP would carry). `level`: the frame's audio level
    /// as RFC 6464 has it (-dBov, 0 to 127), when its driver measured it: it counts for the
    /// session's dominant speaker and is sent on as the audio-level header extension.
    pub fn write_local(
        &mut self,
        device: DeviceId,
        rtp_time: u64,
        data: Vec<u8>,
        level: Option<u8>,
        now: Instant,
    ) {
        if !self.devices.get(device).is_some_and(Device::is_local) {
            return;
        }
        let payload: Arc<[u8]> = data.into();
        if let Some(packet) = self.local.packet(device, rtp_time, &payload, level, now) {
            self.forward(&packet, now);
        }
    }

    /// A local device's leg (a phone call's RTP) as its driver measured it, for the quality
    /// view ([`Engine::qualities_of`]).
    pub fn report_local_leg(&mut self, device: DeviceId, leg: Leg, now: Instant) {
        self.local.set_leg(device, leg, now);
    }

    /// The device left or its connection closed: its peers go away, and so do its streams.
    pub fn remove_device(&mut self, device: DeviceId, _now: Instant) {
        let Some(dev) = self.devices.remove(device) else {
            return;
        };
        for peer in dev.peers() {
            self.peers.close(&mut self.demux, peer);
        }
        self.speakers.forget(dev.participant);
        let published = self
            .publishing
            .withdraw_publications(&mut self.fanout, device);
        if published.is_some_and(|p| !p.streams.is_empty()) {
            self.relay.events.push_back(EngineEvent::StreamsChanged {
                device,
                participant: dev.participant,
                streams: Vec::new(),
            });
        }
        self.subscribing.remove(device);
        self.local.remove(device);
        self.fanout.set_targets(device, BTreeMap::new());
    }

    /// Takes a device and its peer connections out of this engine, untouched (connections
    /// stay up, streams stay published), to be given to another shard's engine with
    /// [`Engine::import_device`]. Local subscribers of its streams renegotiate.
    pub fn export_device(&mut self, device: DeviceId, now: Instant) -> Option<MovedDevice> {
        let moved = MovedDevice::take(self.moving(), device)?;
        self.renegotiate_subscribers_of(moved.participant(), now);
        Some(moved)
    }

    /// Adopts a device exported by another shard's engine. A device of the same participant
    /// already here is replaced and returned (one live device per participant).
    pub fn import_device(&mut self, moved: MovedDevice, now: Instant) -> Option<DeviceId> {
        let participant = moved.participant();
        let replaced = self.replace_participant_device(participant, now);
        let device = moved.put(self.moving());
        self.renegotiate(device, now);
        self.renegotiate_subscribers_of(participant, now);
        replaced
    }

    /// The devices here whose participant has links in `session`'s table: the ones that must
    /// live where the session lives.
    pub fn devices_in_session(&self, session: SessionId) -> Vec<DeviceId> {
        let mut out: Vec<DeviceId> = self
            .routes
            .participants_in(session)
            .into_iter()
            .filter_map(|p| self.devices.of_participant(p))
            .collect();
        out.sort();
        out
    }

    /// The device of `participant` on this engine, if it has one.
    pub fn device_of(&self, participant: ParticipantId) -> Option<DeviceId> {
        self.devices.of_participant(participant)
    }

    /// The remote addresses the device's peers were reached at.
    pub fn paths_of(&self, device: DeviceId) -> Vec<SocketAddr> {
        let Some(dev) = self.devices.get(device) else {
            return Vec::new();
        };
        dev.peers()
            .flat_map(|p| self.demux.paths(p).iter().copied())
            .collect()
    }

    /// The last subscribe revision offered to `device`.
    pub fn subscribe_revision(&self, device: DeviceId) -> Option<u64> {
        self.subscribing.revision(device)
    }

    /// Device `device`, when it is added, numbers its subscribe offers above `revision` (a
    /// device that replaces one the same SDK instance saw offers from).
    pub fn continue_revisions(&mut self, device: DeviceId, revision: u64) {
        self.subscribing.set_floor(device, revision);
    }

    /// Device `device`, when it is added, belongs to SDK instance `unique_id`, whose subscribe
    /// connection was last offered `layout` (by this process or another, as stored): its
    /// first offer resumes that connection (see `media::subscribing`).
    pub fn resume_subscriber(
        &mut self,
        device: DeviceId,
        unique_id: String,
        layout: Option<SubscribeLayout>,
    ) {
        self.subscribing.prepare(device, unique_id, layout);
    }

    /// The subscribe offer still waiting for this device's answer, if any.
    pub fn pending_offer(&self, device: DeviceId) -> Option<SubscribeOffer> {
        self.subscribing.pending_offer(device).cloned()
    }

    /// The device's publish offer: answer its publish connection. `declared` is the
    /// MediaStreams the device declares (msid → alias); m-lines of other streams are accepted
    /// but publish nothing.
    pub fn handle_publish_offer(
        &mut self,
        device: DeviceId,
        sdp: &str,
        declared: &DeclaredStreams,
        now: Instant,
    ) -> Result<PublishAnswer, MediaError> {
        let (publishing, mut parts) = self.publishing();
        let (peer, answer) = publishing.accept_offer(&mut parts, device, sdp, declared, now)?;
        self.drain_peer(peer, now);
        Ok(answer)
    }

    /// The device's answer to the pending subscribe offer.
    pub fn handle_subscribe_answer(
        &mut self,
        device: DeviceId,
        sdp: &str,
        now: Instant,
    ) -> Result<(), MediaError> {
        let (subscribing, mut parts) = self.subscribing();
        let (peer_id, accepted) = subscribing.handle_answer(&mut parts, device, sdp)?;
        self.drain_peer(peer_id, now);
        self.refresh_targets(device);
        // A new subscriber of a video track needs a keyframe to start decoding.
        for key in accepted.fresh_video {
            if let Some(Source::Peer { peer, mid }) = self.fanout.source_of(&key) {
                self.request_keyframe(peer, mid, KeyframeRequestKind::Pli, now);
            }
        }
        if accepted.dirty {
            self.renegotiate(device, now);
        }
        Ok(())
    }

    /// Applies a change of a session's forwarding table; affected subscribers renegotiate.
    pub fn apply_routes(&mut self, session: SessionId, diff: &TableDiff, now: Instant) {
        for subscriber in self.routes.apply(session, diff) {
            if let Some(device) = self.devices.of_participant(subscriber) {
                self.renegotiate(device, now);
            }
        }
        if !self.routes.tables().contains_key(&session) {
            self.speakers.forget_session(session);
        }
    }

    /// Replaces every session's table with `tables` (sessions absent from it lose their
    /// routes). Only differences renegotiate. The runtime does not call it (routing diffs reach
    /// each shard in order through its inbox, so none is missed); the engine tests check that
    /// resynchronizing from whole tables converges.
    pub fn set_all_routes(&mut self, tables: &HashMap<SessionId, ForwardingTable>, now: Instant) {
        // Each diff touches its own session's table only: computed at once, they are the
        // diffs applying them one by one would find.
        for (session, diff) in self.routes.diffs_to(tables) {
            self.apply_routes(session, &diff, now);
        }
    }

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
        self.handle_receive_on(Transport::Udp, source, destination, data, now)
    }

    /// [`Engine::handle_receive`] for a packet that came over `transport` (for ICE over TCP:
    /// one frame's payload; `source` is the connection's remote address, `destination` our
    /// TCP address).
    pub fn handle_receive_on(
        &mut self,
        transport: Transport,
        source: SocketAddr,
        destination: SocketAddr,
        data: &[u8],
        now: Instant,
    ) -> bool {
        let Ok(receive) = Receive::new(transport.protocol(), source, destination, data) else {
            return false;
        };
        let input = Input::Receive(now, receive);
        let peer_id = match self.demux.lookup(source) {
            Some(p) => p,
            None => match ingress::new_path(self.ingress(), data, &input) {
                NewPath::Peer(p) => {
                    self.demux.learn(source, p);
                    p
                }
                NewPath::Refuse(trans_id, pwd) => {
                    let refusal = ingress::refusal(transport, source, destination, trans_id, &pwd);
                    if let Some(transmit) = refusal {
                        self.relay.counters.refused_checks += 1;
                        self.relay.transmits.push_back(transmit);
                    }
                    return true;
                }
                NewPath::Nothing => return false,
            },
        };
        let Some(peer) = self.peers.get_mut(peer_id) else {
            self.demux.forget_addr(source);
            return false;
        };
        // A datagram str0m cannot use is dropped; it never ends the call (its source may be
        // spoofed).
        if let Err(e) = peer.rtc.handle_input(input) {
            self.relay.counters.unusable_datagrams += 1;
            tracing::debug!(peer = peer_id, error = %e, "dropped an unusable datagram");
        }
        self.drain_peer(peer_id, now);
        true
    }

    /// Time passed: run every peer whose timer is due, and offer again what is unanswered.
    pub fn handle_timeout(&mut self, now: Instant) {
        for device in self.subscribing.overdue(&mut self.relay.events, now) {
            self.renegotiate(device, now);
        }
        for id in self.peers.due(now) {
            if let Some(peer) = self.peers.get_mut(id) {
                if peer.rtc.handle_input(Input::Timeout(now)).is_err() {
                    peer.rtc.disconnect();
                }
            }
            self.drain_peer(id, now);
        }
    }

    /// When the engine next needs [`Engine::handle_timeout`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.peers.next_timeout(), self.subscribing.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next datagram to send, in the order produced; `None` when the queue is empty.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.relay.transmits.pop_front()
    }

    /// The next event for the driver, in the order produced; `None` when the queue is empty.
    pub fn poll_event(&mut self) -> Option<EngineEvent> {
        self.relay.events.pop_front()
    }

    /// Checks that the incrementally maintained fan-out equals one rebuilt from scratch from
    /// the routes, the negotiated tracks and the publications (for tests).
    #[doc(hidden)]
    pub fn check_fanout(&self) -> Result<(), String> {
        rebuild::check(rebuild::Parts {
            devices: &self.devices,
            routes: &self.routes,
            publishing: &self.publishing,
            subscribing: &self.subscribing,
            fanout: &self.fanout,
        })
    }

    /// Removes the live device of `participant`, if any, and returns it.
    fn replace_participant_device(
        &mut self,
        participant: ParticipantId,
        now: Instant,
    ) -> Option<DeviceId> {
        let old = self.devices.of_participant(participant)?;
        self.remove_device(old, now);
        Some(old)
    }

    /// Local subscribers routed from `publisher`'s streams: what they should receive changed
    /// because the publisher's device came or went.
    fn renegotiate_subscribers_of(&mut self, publisher: ParticipantId, now: Instant) {
        for subscriber in self.routes.subscribers_of(publisher) {
            if let Some(device) = self.devices.of_participant(subscriber) {
                self.renegotiate(device, now);
            }
        }
    }

    /// Brings a device's subscriptions in line with its routes: a local device's tracks at
    /// once; a browser's by one offer at a time (changes during a pending offer are folded
    /// into the next one). The fan-out follows what is negotiated.
    fn renegotiate(&mut self, device: DeviceId, now: Instant) {
        let Some(dev) = self.devices.get(device) else {
            return;
        };
        let desired = self.routes.desired_tracks(dev.participant);
        if dev.is_local() {
            let (targets, sources) = self.local.set_tracks(device, &desired);
            self.fanout.set_targets(device, targets);
            self.relay
                .events
                .push_back(EngineEvent::LocalSources { device, sources });
            return;
        }
        let (subscribing, mut parts) = self.subscribing();
        if let Some(peer) = subscribing.offer(&mut parts, device, &desired, now) {
            self.drain_peer(peer, now);
        }
        self.set_targets(device, &desired);
    }

    /// The fan-out follows a browser's negotiated tracks (after an answer).
    fn refresh_targets(&mut self, device: DeviceId) {
        let Some(dev) = self.devices.get(device) else {
            return;
        };
        let desired = self.routes.desired_tracks(dev.participant);
        self.set_targets(device, &desired);
    }

    fn set_targets(&mut self, device: DeviceId, desired: &BTreeMap<TrackKey, Option<StreamAlias>>) {
        let targets = self.subscribing.targets(&self.devices, device, desired);
        self.fanout.set_targets(device, targets);
    }

    /// The parts a datagram from an unknown address is looked up in.
    fn ingress(&self) -> ingress::Parts<'_> {
        ingress::Parts {
            config: &self.config,
            demux: &self.demux,
            peers: &self.peers,
            devices: &self.devices,
        }
    }

    /// The parts a publish negotiation works on, lent to `Publishing`.
    fn publishing(&mut self) -> (&mut Publishing, publishing::Parts<'_>) {
        let parts = publishing::Parts {
            config: &self.config,
            demux: &mut self.demux,
            peers: &mut self.peers,
            devices: &mut self.devices,
            fanout: &mut self.fanout,
            events: &mut self.relay.events,
        };
        (&mut self.publishing, parts)
    }

    /// The parts a subscribe negotiation works on, lent to `Subscribing`.
    fn subscribing(&mut self) -> (&mut Subscribing, subscribing::Parts<'_>) {
        let parts = subscribing::Parts {
            config: &self.config,
            demux: &mut self.demux,
            peers: &mut self.peers,
            devices: &mut self.devices,
            events: &mut self.relay.events,
        };
        (&mut self.subscribing, parts)
    }

    /// The parts a device moving between shards is taken out of or put into.
    fn moving(&mut self) -> moving::Parts<'_> {
        moving::Parts {
            demux: &mut self.demux,
            peers: &mut self.peers,
            devices: &mut self.devices,
            publishing: &mut self.publishing,
            subscribing: &mut self.subscribing,
            local: &mut self.local,
            fanout: &mut self.fanout,
        }
    }

    /// The other parts, lent to the packet path.
    fn relay(&mut self) -> (&mut Relay, Parts<'_>) {
        let parts = Parts {
            peers: &mut self.peers,
            fanout: &self.fanout,
            devices: &self.devices,
            routes: &self.routes,
            speakers: &mut self.speakers,
        };
        (&mut self.relay, parts)
    }

    /// [`Relay::drain_peer`].
    fn drain_peer(&mut self, peer: PeerId, now: Instant) {
        let (relay, mut parts) = self.relay();
        relay.drain_peer(&mut parts, peer, now);
    }

    /// [`Relay::forward`].
    fn forward(&mut self, packet: &Packet<'_>, now: Instant) {
        let (relay, mut parts) = self.relay();
        relay.forward(&mut parts, packet, now);
    }

    /// [`Relay::request_keyframe`].
    fn request_keyframe(
        &mut self,
        peer: PeerId,
        mid: Mid,
        kind: KeyframeRequestKind,
        now: Instant,
    ) -> bool {
        let (relay, mut parts) = self.relay();
        relay.request_keyframe(&mut parts, peer, mid, kind, now)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn engine_can_move_to_a_driver_thread() {
        fn is_send<T: Send>() {}
        is_send::<super::Engine>();
    }
}
